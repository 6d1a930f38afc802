//! The ssd tier: values in a few large files opened O_DIRECT, one record per object.
//!
//! * Space: each file has an offset allocator over everything after its superblock; a
//!   record (header block + value padded to a block, see [`record`]) takes one extent.
//! * Writes come only as whole objects ([`Tier::store_objects`]: demotion from dram). A
//!   record (header block, then the value) goes down in one write, packed with the records
//!   that lie end to end with it, so the device sees large sequential writes and no record
//!   costs a second, dependent one. A crash can therefore leave a valid header over a value
//!   that is not all there; such a record can only be among the writes in flight, which are
//!   all in the newest [`WRITE_WAVE_BYTES`] of records, and quick recovery re-checks those.
//! * Reads verify: the header must check out and the value must hash to the checksum it
//!   names, or the read fails with `Corrupt` (the engine then drops the object).
//! * Frees: a record's space comes back only after its header block is overwritten with
//!   zeros (a tombstone), so a removed object cannot come back at restart and a stale header
//!   never sits over space that is being reused. Retired extents wait in a queue for
//!   [`Tier::reclaim_retired`], which tombstones them in one batch and frees them.
//! * Recovery ([`recovery`]): on open, the files' records are scanned and offered to the
//!   engine, which indexes them.

mod io;
mod psync;
pub mod record;
mod recovery;
mod uring;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_epoch::Guard;
use parking_lot::Mutex;
use strata_proto::{Error, ErrorCode, Result};
use xxhash_rust::xxh3::xxh3_64;

pub use io::{
    BufPool, IoBuf, IoDone, IoEngine, IoEngineKind, IoKind, IoOp, IoStats, SSD_IO_DURATION,
};
use record::file_name;
pub use record::{record_len, RecordHeader, Superblock, BLOCK};
pub use recovery::{scan_file, RecoveryMode, ScannedRecord};

use super::{
    Extent, Fresh, ObjectWrite, PinnedRead, PinnedWrite, RecoveredObject, SegmentAllocators,
    SharedFile, Tier, TierKind,
};
use crate::alloc::AllocStats;

use psync::PsyncEngine;
use uring::UringEngine;

/// Which dram victims are written to ssd when evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Admission {
    /// Every victim.
    #[default]
    AdmitAll,
    /// Only victims read at least once after they were put (their second use): a block
    /// written once and never asked for again is dropped rather than cost an ssd write.
    SecondHit,
}

impl std::str::FromStr for Admission {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Admission, String> {
        match s {
            "admit-all" => Ok(Admission::AdmitAll),
            "second-hit" => Ok(Admission::SecondHit),
            other => Err(format!(
                "{other:?} is not an admission filter: admit-all or second-hit"
            )),
        }
    }
}

/// Settings of an ssd tier.
#[derive(Clone, Debug)]
pub struct SsdOptions {
    /// Directory of the tier's files (created if missing; one server at a time).
    pub dir: PathBuf,
    pub engine: IoEngineKind,
    /// Operations in flight per batch (io_uring ring size).
    pub queue_depth: u32,
    pub recovery: RecoveryMode,
    pub admission: Admission,
}

impl SsdOptions {
    /// The defaults for a tier in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SsdOptions {
        SsdOptions {
            dir: dir.into(),
            engine: IoEngineKind::Auto,
            queue_depth: 32,
            recovery: RecoveryMode::Quick,
            admission: Admission::AdmitAll,
        }
    }
}

/// The ssd tier's figures for stats and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IoFigures {
    /// `io_uring` or `psync`.
    pub engine: &'static str,
    /// Whether the files are open O_DIRECT (false only on filesystems that refuse it).
    pub direct: bool,
    pub queue_depth: u32,
    pub read_ops: u64,
    pub read_bytes: u64,
    /// Sum of per-op latencies, for a mean.
    pub read_ns: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub write_ns: u64,
    /// Failed operations.
    pub errors: u64,
    /// Ops in flight now.
    pub in_flight: u64,
    /// Reads whose record failed its checksum.
    pub corrupt_records: u64,
    /// Records indexed at open.
    pub recovered_records: u64,
    /// Records found at open and left out (torn, failing verification, superseded).
    pub skipped_records: u64,
}

/// The ssd tier.
pub struct SsdTier {
    index: u8,
    dir: PathBuf,
    file_ids: Vec<u64>,
    file_sizes: Vec<u64>,
    /// The files again, read-only: what same-host clients are given to read values from.
    readers: Vec<File>,
    engine: Box<dyn IoEngine>,
    direct: bool,
    allocators: Arc<SegmentAllocators>,
    /// Extents whose readers have unpinned, waiting for their tombstone.
    unpinned: Arc<Mutex<Vec<Extent>>>,
    /// After tombstones failed (a full or failing disk): when to try again, and the wait
    /// after the next failure. Every placement reclaims, so without it a full disk meant
    /// a failed write and a warning per extent per put.
    tombstone_retry: Mutex<(Option<std::time::Instant>, std::time::Duration)>,
    /// Tombstones are failing (`tombstone_retry` has a next try): read without the lock
    /// by [`Tier::retiring`], which placement asks often.
    tombstones_failing: std::sync::atomic::AtomicBool,
    sequence: AtomicU64,
    /// Held by [`SsdTier::write_records`]: one writer at a time (see [`WRITE_WAVE_BYTES`]).
    writing: Mutex<()>,
    admission: Admission,
    buffers: BufPool,
    recovered: Mutex<Vec<RecoveredObject>>,
    corrupt: AtomicU64,
    recovered_count: u64,
    skipped_count: u64,
    /// Holds the directory's lock for the tier's lifetime.
    _lock: File,
}

/// Bytes of records one engine call writes at most (a wave; a single larger record is a
/// wave of its own). A wave completes before the next starts and writers take turns, so
/// at any instant every write in flight belongs to the newest `WRITE_WAVE_BYTES` of records
/// in sequence order: the records quick recovery re-checks (`recovery`).
pub const WRITE_WAVE_BYTES: u64 = 64 << 20;
/// Records that lie end to end on disk are packed into one write of at most this size.
const MAX_WRITE_BYTES: u64 = 4 << 20;

/// Records that lie end to end in one file, written together.
struct Run {
    /// Indices into the objects, in disk order.
    members: Vec<usize>,
    bytes: u64,
}

/// The objects whose `results` are still `Ok`, in disk order, cut into runs of records that
/// lie end to end, each at most [`MAX_WRITE_BYTES`] (or one record).
fn contiguous_runs(objects: &[ObjectWrite<'_>], results: &[Result<()>]) -> Vec<Run> {
    let mut order: Vec<usize> = (0..objects.len()).filter(|&i| results[i].is_ok()).collect();
    order.sort_by_key(|&i| {
        let e = objects[i].extent.extent();
        (e.segment, e.offset)
    });
    let mut runs: Vec<Run> = Vec::new();
    let mut end = (u16::MAX, 0); // (file, offset) just past the last run
    for i in order {
        let e = objects[i].extent.extent();
        let len = record_len(e.len);
        match runs.last_mut() {
            Some(run) if end == (e.segment, e.offset) && run.bytes + len <= MAX_WRITE_BYTES => {
                run.members.push(i);
                run.bytes += len;
            }
            _ => runs.push(Run {
                members: vec![i],
                bytes: len,
            }),
        }
        end = (e.segment, e.offset + len);
    }
    runs
}

/// The first wait before tombstones that failed are tried again; it doubles per failure.
const TOMBSTONE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest wait between tries.
const TOMBSTONE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("ssd {what}: {e}"))
}

fn corrupt(what: String) -> Error {
    Error::new(ErrorCode::Corrupt, what)
}

/// Opens (creating if needed) a tier file, O_DIRECT where the filesystem allows it.
fn open_file(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    if direct {
        opts.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    crate::private_files::open_private(&mut opts, path)
}

/// Opens a tier file read-only, as `open_file` opened it (O_DIRECT or not): a descriptor
/// same-host clients may hold without being able to write the tier.
fn open_reader(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    open_with(opts, path, direct)
}

fn open_with(mut opts: OpenOptions, path: &Path, direct: bool) -> std::io::Result<File> {
    if direct {
        opts.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    opts.open(path)
}

/// Builds the engine `kind` asks for over `files`. With `Auto`, a kernel that refuses
/// io_uring (too old, or disabled by seccomp or sysctl) gets psync; the second value says why.
pub fn open_engine(
    kind: IoEngineKind,
    files: Vec<File>,
    queue_depth: u32,
) -> std::io::Result<(Box<dyn IoEngine>, Option<String>)> {
    match kind {
        IoEngineKind::Psync => Ok((Box::new(PsyncEngine::new(files)), None)),
        IoEngineKind::IoUring => Ok((Box::new(UringEngine::new(files, queue_depth)?), None)),
        IoEngineKind::Auto => match UringEngine::probe(queue_depth) {
            Ok(()) => Ok((Box::new(UringEngine::new(files, queue_depth)?), None)),
            Err(e) => Ok((
                Box::new(PsyncEngine::new(files)),
                Some(format!("io_uring unavailable ({e}); using psync")),
            )),
        },
    }
}

impl SsdTier {
    /// Opens the tier at `opts.dir` with `capacity` bytes in files of at most `file_size`
    /// bytes, recovering what the files hold as `opts.recovery` says.
    pub fn open(
        index: u8,
        capacity: u64,
        file_size: u64,
        opts: &SsdOptions,
    ) -> std::io::Result<SsdTier> {
        // The files hold users' values in plain bytes: only the server's user may read them.
        for change in crate::private_files::private_dir(&opts.dir)? {
            tracing::warn!("ssd tier: {change}");
        }
        let lock = crate::private_files::open_private(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &opts.dir.join("LOCK"),
        )?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another strata-server (its LOCK is held)",
                        opts.dir.display()
                    ),
                )
            },
        )?;
        let file_size = (file_size / BLOCK * BLOCK).max(2 * BLOCK);
        let mut sizes = Vec::new();
        let mut remaining = capacity / BLOCK * BLOCK;
        while remaining >= 2 * BLOCK {
            let size = remaining.min(file_size);
            sizes.push(size);
            remaining -= size;
        }
        let mut direct = true;
        let mut files = Vec::new();
        for (i, _) in sizes.iter().enumerate() {
            let path = opts.dir.join(file_name(i));
            let file = match open_file(&path, direct) {
                Err(e)
                    if direct
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    tracing::warn!(
                        "{} does not support O_DIRECT; the ssd tier goes through the page cache",
                        opts.dir.display()
                    );
                    direct = false;
                    open_file(&path, false)?
                }
                other => other?,
            };
            files.push(file);
        }
        // Files beyond the configured count (the capacity shrank) are not ours any more.
        for i in sizes.len().. {
            let path = opts.dir.join(file_name(i));
            if !path.exists() {
                break;
            }
            std::fs::remove_file(&path)?;
        }
        let lens: Vec<u64> = files
            .iter()
            .map(|f| f.metadata().map(|m| m.len()))
            .collect::<std::io::Result<_>>()?;
        let readers = (0..sizes.len())
            .map(|i| open_reader(&opts.dir.join(file_name(i)), direct))
            .collect::<std::io::Result<_>>()?;
        let (engine, fallback) = open_engine(opts.engine, files, opts.queue_depth)?;
        if let Some(why) = fallback {
            tracing::warn!("ssd tier: {why}");
        }
        // Enough for a wave of writes in flight and their successors being filled.
        let buffers = BufPool::new(WRITE_WAVE_BYTES as usize);
        let mut tier = SsdTier {
            index,
            dir: opts.dir.clone(),
            file_ids: vec![0; sizes.len()],
            file_sizes: sizes.clone(),
            readers,
            engine,
            direct,
            allocators: Arc::new(SegmentAllocators::new(Vec::new())),
            unpinned: Arc::new(Mutex::new(Vec::new())),
            tombstone_retry: Mutex::new((None, TOMBSTONE_RETRY_FIRST)),
            tombstones_failing: std::sync::atomic::AtomicBool::new(false),
            sequence: AtomicU64::new(1),
            writing: Mutex::new(()),
            admission: opts.admission,
            buffers,
            recovered: Mutex::new(Vec::new()),
            corrupt: AtomicU64::new(0),
            recovered_count: 0,
            skipped_count: 0,
            _lock: lock,
        };
        let files = recovery::TierFiles {
            index: tier.index,
            dir: &tier.dir,
            sizes: &tier.file_sizes,
            engine: &*tier.engine,
        };
        let found = recovery::recover(files, &lens, opts.recovery)?;
        tier.file_ids = found.file_ids;
        tier.sequence = found.next_sequence.into();
        tier.recovered_count = found.objects.len() as u64;
        tier.skipped_count = found.skipped;
        *tier.recovered.get_mut() = found.objects;
        tier.allocators = Arc::new(SegmentAllocators::new(found.allocators));
        tracing::info!(
            dir = %tier.dir.display(),
            capacity,
            files = sizes.len(),
            engine = tier.engine.name(),
            queue_depth = tier.engine.queue_depth(),
            direct,
            recovered = tier.recovered_count,
            skipped = tier.skipped_count,
            "ssd tier open"
        );
        Ok(tier)
    }

    /// The I/O engine's name (`io_uring` or `psync`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The directory of the tier's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes whole objects: each record (header block, then the value) in one write with
    /// its neighbours on disk, in waves of at most [`WRITE_WAVE_BYTES`] (see the module doc).
    fn write_records(&self, objects: &[ObjectWrite<'_>]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = objects
            .iter()
            .map(|o| {
                if o.value.len() as u64 == o.extent.extent().len
                    && o.extent.extent().tier == self.index
                {
                    return Ok(());
                }
                let msg = format!(
                    "ssd write of {} bytes into an extent of {} bytes",
                    o.value.len(),
                    o.extent.extent().len
                );
                Err(Error::new(ErrorCode::Internal, msg))
            })
            .collect();
        let runs = contiguous_runs(objects, &results);
        // One writer at a time: what recovery re-checks is the newest wave of all writers.
        let _writing = self.writing.lock();
        let mut first = 0;
        while first < runs.len() {
            let mut end = first + 1;
            let mut bytes = runs[first].bytes;
            while end < runs.len() && bytes + runs[end].bytes <= WRITE_WAVE_BYTES {
                bytes += runs[end].bytes;
                end += 1;
            }
            let wave = &runs[first..end];
            // Made one at a time as the engine takes them, so copying and checksumming the
            // next run overlaps the device writing the last.
            let mut ops = wave.iter().map(|run| self.run_write(objects, run));
            self.engine.run_each(&mut ops, &mut |k, done| {
                if let Err(e) = &done.result {
                    for &i in &wave[k].members {
                        results[i] = Err(io_error(
                            "write",
                            std::io::Error::new(e.kind(), e.to_string()),
                        ));
                    }
                }
                self.buffers.put(done.buf);
            });
            first = end;
        }
        results
    }

    /// The one write of `run`'s records, each header block stamped with the next sequence.
    fn run_write(&self, objects: &[ObjectWrite<'_>], run: &Run) -> IoOp {
        let start = objects[run.members[0]].extent.extent();
        let file = start.segment as usize;
        let mut buf = self.buffers.take(run.bytes as usize);
        let mut bytes = &mut buf.as_mut_slice()[..run.bytes as usize];
        for &i in &run.members {
            let o = &objects[i];
            let extent = o.extent.extent();
            let (record, rest) = bytes.split_at_mut(record_len(extent.len) as usize);
            let (head, value) = record.split_at_mut(BLOCK as usize);
            RecordHeader {
                file_id: self.file_ids[file],
                sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
                value_len: extent.len,
                value_checksum: o.checksum.unwrap_or_else(|| xxh3_64(o.value)),
                key: o.key.to_vec(),
            }
            .encode(head);
            // The buffer goes to the disk, not to a core: stream it past the cache.
            strata_copy::copy(&mut value[..o.value.len()], o.value);
            value[o.value.len()..].fill(0);
            bytes = rest;
        }
        IoOp::write(file, start.offset, run.bytes as usize, buf)
    }

    /// Reads and verifies whole records into `dsts` (each exactly its extent's length), all
    /// in one submission; each is checked and copied out as soon as it has arrived, while
    /// the others are still on their way.
    pub fn read_records(&self, items: &mut [(Extent, &mut [u8])]) -> Vec<Result<()>> {
        let ops: Vec<IoOp> = items
            .iter()
            .map(|(extent, _)| {
                let len = record_len(extent.len) as usize;
                IoOp::read(
                    extent.segment as usize,
                    extent.offset,
                    len,
                    self.buffers.take(len),
                )
            })
            .collect();
        let mut results: Vec<Result<()>> = (0..items.len()).map(|_| Ok(())).collect();
        self.engine.run_each(&mut ops.into_iter(), &mut |i, done| {
            let (extent, dst) = &mut items[i];
            results[i] = done
                .result
                .map_err(|e| io_error("read", e))
                .and_then(|()| self.verify(extent, done.buf.as_slice(), dst));
            self.buffers.put(done.buf);
        });
        results
    }

    /// Checks a record read from `extent` and copies its value out.
    fn verify(&self, extent: &Extent, record: &[u8], dst: &mut [u8]) -> Result<()> {
        let at = || {
            format!(
                "record at {} of {}",
                extent.offset,
                file_name(extent.segment as usize)
            )
        };
        // Where the damage is (file, offset) goes to the server's log and metrics only:
        // the caller, possibly a remote client, learns that its value failed the check.
        let fail = |what: String| {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("ssd: {what}");
            Err(corrupt(
                "the stored bytes failed their check; the object was dropped (the server's \
                 log says where)"
                    .into(),
            ))
        };
        let file_id = self.file_ids[extent.segment as usize];
        let head = match RecordHeader::decode(record, file_id) {
            Ok(h) => h,
            Err(e) => return fail(format!("{}: header is {e:?}", at())),
        };
        if head.value_len != extent.len || dst.len() as u64 != extent.len {
            return fail(format!(
                "{}: header says {} bytes, the index {}",
                at(),
                head.value_len,
                extent.len
            ));
        }
        let value = &record[BLOCK as usize..BLOCK as usize + extent.len as usize];
        if xxh3_64(value) != head.value_checksum {
            return fail(format!("{}: value does not match its checksum", at()));
        }
        strata_copy::copy(dst, value);
        Ok(())
    }

    /// Writes tombstones over the headers of `extents`; returns those it could not, and
    /// the first error.
    fn tombstone(&self, extents: Vec<Extent>) -> (Vec<Extent>, Option<std::io::Error>) {
        let ops = extents
            .iter()
            .map(|e| {
                IoOp::write(
                    e.segment as usize,
                    e.offset,
                    BLOCK as usize,
                    IoBuf::new(BLOCK as usize),
                )
            })
            .collect();
        let mut failed = Vec::new();
        let mut first = None;
        for (e, d) in extents.into_iter().zip(self.engine.run(ops)) {
            match d.result {
                Err(err) if !self.header_is_hole(&e) => {
                    first.get_or_insert(err);
                    failed.push(e);
                }
                _ => self
                    .allocators
                    .free_retired(e.segment, e.block, record_len(e.len)),
            }
        }
        (failed, first)
    }

    /// Whether the header block of `extent` was never written (a hole of the sparse file):
    /// then no header can be there, and its space needs no tombstone. False when unsure.
    fn header_is_hole(&self, extent: &Extent) -> bool {
        let file = &self.readers[extent.segment as usize];
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(extent.offset)) {
            Ok(next_data) => next_data >= extent.offset + BLOCK,
            Err(rustix::io::Errno::NXIO) => true,
            Err(_) => false,
        }
    }

    /// Pushes the files' contents to stable storage (O_DIRECT bypasses the page cache, not
    /// the device's own cache).
    pub fn sync(&self) -> std::io::Result<()> {
        for i in 0..self.file_sizes.len() {
            let f = File::open(self.dir.join(file_name(i)))?;
            f.sync_data()?;
        }
        Ok(())
    }
}

impl Tier for SsdTier {
    fn kind(&self) -> TierKind {
        TierKind::Ssd
    }

    fn capacity(&self) -> u64 {
        self.allocators.capacity()
    }

    fn used(&self) -> u64 {
        self.allocators.used()
    }

    fn retiring(&self) -> u64 {
        let retiring = self.allocators.retiring();
        if !self.tombstones_failing.load(Ordering::Relaxed) {
            return retiring;
        }
        // While tombstones fail, unpinned extents wait for the disk, not for readers: a
        // put must not wait for them (it would hold its thread for the whole put timeout).
        let held: u64 = self.unpinned.lock().iter().map(|e| record_len(e.len)).sum();
        retiring.saturating_sub(held)
    }

    fn max_value_len(&self) -> u64 {
        // A file holds its superblock, then one record of header + value.
        self.file_sizes.iter().max().map_or(0, |s| s - 2 * BLOCK)
    }

    fn allocate(&self, len: u64) -> Option<Fresh> {
        let (segment, a) = self.allocators.allocate(record_len(len))?;
        Some(Fresh::new(Extent {
            tier: self.index,
            segment,
            block: a.block.raw(),
            offset: a.offset + BLOCK, // The allocator's space starts after the superblock.
            len,
        }))
    }

    fn retire(&self, extent: Extent, guard: &Guard) {
        self.allocators.start_retiring(record_len(extent.len));
        let unpinned = Arc::clone(&self.unpinned);
        guard.defer(move || unpinned.lock().push(extent));
        guard.flush();
    }

    fn discard_unwritten(&self, extent: Extent, _guard: &Guard) {
        // A record is written whole, with its neighbours: a write that failed may still
        // have put some of its records on disk, valid headers included. So the space is
        // tombstoned before it is reused, as for a removal (no reader holds it: no epoch
        // wait). Where the header block never reached the disk (a hole, as on a full
        // disk), `tombstone` frees it without a write.
        self.allocators.start_retiring(record_len(extent.len));
        self.unpinned.lock().push(extent);
    }

    fn reclaim_retired(&self) {
        let now = std::time::Instant::now();
        if self.tombstone_retry.lock().0.is_some_and(|at| now < at) {
            return;
        }
        let batch = std::mem::take(&mut *self.unpinned.lock());
        if batch.is_empty() {
            return;
        }
        let (failed, error) = self.tombstone(batch);
        let mut retry = self.tombstone_retry.lock();
        self.tombstones_failing
            .store(error.is_some(), Ordering::Relaxed);
        match error {
            None => *retry = (None, TOMBSTONE_RETRY_FIRST),
            Some(err) => {
                // Their space stays retired (a header left in place would come back at
                // recovery) until a later try succeeds.
                tracing::warn!(
                    "ssd: {} tombstones failed ({err}); their space is held, next try in {:?}",
                    failed.len(),
                    retry.1
                );
                *retry = (Some(now + retry.1), (retry.1 * 2).min(TOMBSTONE_RETRY_MAX));
            }
        }
        drop(retry);
        self.unpinned.lock().extend(failed);
    }

    fn alloc_stats(&self) -> (usize, AllocStats) {
        self.allocators.stats()
    }

    fn bookkeeping_bytes(&self) -> usize {
        self.allocators.heap_bytes()
    }

    fn accepts_puts(&self) -> bool {
        false
    }

    fn admits(&self, hits: u8) -> bool {
        match self.admission {
            Admission::AdmitAll => true,
            Admission::SecondHit => hits >= 1,
        }
    }

    fn io_figures(&self) -> Option<IoFigures> {
        let s = self.engine.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(IoFigures {
            engine: self.engine.name(),
            direct: self.direct,
            queue_depth: self.engine.queue_depth(),
            read_ops: get(&s.read_ops),
            read_bytes: get(&s.read_bytes),
            read_ns: get(&s.read_ns),
            write_ops: get(&s.write_ops),
            write_bytes: get(&s.write_bytes),
            write_ns: get(&s.write_ns),
            errors: get(&s.errors),
            in_flight: get(&s.in_flight),
            corrupt_records: get(&self.corrupt),
            recovered_records: self.recovered_count,
            skipped_records: self.skipped_count,
        })
    }

    fn take_recovered(&self) -> Vec<RecoveredObject> {
        std::mem::take(&mut *self.recovered.lock())
    }

    fn shared_files(&self) -> Vec<SharedFile<'_>> {
        use std::os::fd::AsFd;
        self.readers
            .iter()
            .zip(&self.file_sizes)
            .enumerate()
            .map(|(i, (file, &size))| SharedFile {
                segment: i as u32,
                size,
                value_offset: BLOCK,
                align: BLOCK as u32,
                fd: file.as_fd(),
            })
            .collect()
    }

    fn host_bytes<'a>(&'a self, _extent: PinnedRead<'a>) -> Option<&'a [u8]> {
        None
    }

    fn read(&self, extent: PinnedRead<'_>, dst: &mut [u8]) -> Result<()> {
        self.read_records(&mut [(extent.extent(), dst)])
            .pop()
            .expect("one result per record")
    }

    fn write(&self, _extent: &mut PinnedWrite<'_>, _offset: u64, _src: &[u8]) -> Result<()> {
        Err(Error::new(
            ErrorCode::Internal,
            "the ssd tier takes whole objects (demotion), not pieces of a put",
        ))
    }

    fn store_objects(&self, objects: &mut [ObjectWrite<'_>]) -> Vec<Result<()>> {
        self.write_records(objects)
    }
}

impl Drop for SsdTier {
    fn drop(&mut self) {
        // Tombstone what has already been unpinned, so removals made before a clean
        // shutdown stay removed: one last try even while backing off.
        self.tombstone_retry.lock().0 = None;
        self.reclaim_retired();
        if let Err(e) = self.sync() {
            tracing::warn!("ssd: syncing {} at close: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests;

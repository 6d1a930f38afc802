//! The I/O engine under the ssd tier: a small trait with two implementations.
//!
//! * [`UringEngine`](super::uring::UringEngine): io_uring, a batch of operations submitted
//!   together and kept up to the queue depth in flight; each is handed back as it completes,
//!   so the caller's work on one (a checksum, a copy) overlaps the others' transfers.
//! * [`PsyncEngine`](super::psync::PsyncEngine): plain `pread`/`pwrite`, one operation after
//!   the other in the caller's thread; the fallback where io_uring is unavailable.
//!
//! Buffers are owned: an [`IoOp`] moves its [`IoBuf`] into the engine and [`IoDone`] hands it
//! back after completion. The kernel writes into a buffer while an io_uring read is in
//! flight, so nothing else may own it meanwhile; making the engine the owner is what makes
//! that safe without trusting every caller.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::record::BLOCK;

/// A heap buffer aligned to [`BLOCK`] whose length is a multiple of it, as O_DIRECT needs.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an IoBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for IoBuf {}
// SAFETY: shared access only reads, like &[u8].
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A zeroed buffer of at least `len` bytes (rounded up to a block; at least one block).
    pub fn new(len: usize) -> IoBuf {
        let len = len.max(1).div_ceil(BLOCK as usize) * BLOCK as usize;
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        IoBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK as usize).expect("block-aligned layout")
    }

    /// Its size in bytes (a multiple of [`BLOCK`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer has at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `len` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Buffers kept for reuse, so a steady stream of reads and writes of similar sizes does not
/// fault fresh pages in for every operation. At most `keep_bytes` are kept; past that the
/// buffer given back longest ago goes, so the pool follows the sizes in use now (a pool
/// full of write buffers too large to serve reads would make every read fault in fresh
/// pages).
pub struct BufPool {
    /// The kept buffers, oldest first, and their bytes.
    free: Mutex<(std::collections::VecDeque<IoBuf>, usize)>,
    keep_bytes: usize,
}

impl BufPool {
    pub fn new(keep_bytes: usize) -> BufPool {
        BufPool {
            free: Mutex::new((std::collections::VecDeque::new(), 0)),
            keep_bytes,
        }
    }

    /// A buffer of at least `len` bytes; its contents are unspecified.
    pub fn take(&self, len: usize) -> IoBuf {
        let mut guard = self.free.lock();
        let (free, kept) = &mut *guard;
        // The smallest kept buffer that fits, if it is no more than twice the need.
        let best = (0..free.len())
            .filter(|&i| free[i].len() >= len && free[i].len() <= len.saturating_mul(2))
            .min_by_key(|&i| free[i].len());
        if let Some(buf) = best.and_then(|i| free.remove(i)) {
            *kept -= buf.len();
            return buf;
        }
        drop(guard);
        // Sizes are rounded to powers of two so buffers are reusable across values.
        IoBuf::new(len.next_power_of_two().max(BLOCK as usize))
    }

    /// Gives a buffer back; the oldest kept ones go while the pool holds too many bytes.
    pub fn put(&self, buf: IoBuf) {
        let mut guard = self.free.lock();
        let (free, kept) = &mut *guard;
        *kept += buf.len();
        free.push_back(buf);
        while *kept > self.keep_bytes {
            let Some(old) = free.pop_front() else { break };
            *kept -= old.len();
        }
    }

    /// Bytes kept now.
    pub fn kept_bytes(&self) -> usize {
        self.free.lock().1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// One operation: transfer the first `len` bytes of `buf` at `offset` of file `file`.
pub struct IoOp {
    pub kind: IoKind,
    /// Index of the file in the engine's file list.
    pub file: usize,
    /// A multiple of [`BLOCK`].
    pub offset: u64,
    /// A multiple of [`BLOCK`], at most `buf.len()`.
    pub len: usize,
    pub buf: IoBuf,
}

impl IoOp {
    pub fn read(file: usize, offset: u64, len: usize, buf: IoBuf) -> IoOp {
        IoOp {
            kind: IoKind::Read,
            file,
            offset,
            len,
            buf,
        }
    }

    pub fn write(file: usize, offset: u64, len: usize, buf: IoBuf) -> IoOp {
        IoOp {
            kind: IoKind::Write,
            file,
            offset,
            len,
            buf,
        }
    }

    /// Why the engine must refuse this op, if it must.
    pub(crate) fn check(&self, files: usize) -> io::Result<()> {
        let aligned = |n: u64| n % BLOCK == 0;
        if self.file >= files {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no file {} (the engine has {files})", self.file),
            ));
        }
        if !aligned(self.offset) || !aligned(self.len as u64) || self.len > self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at {} into a {}-byte buffer is not block-aligned or overruns it",
                    self.len,
                    self.offset,
                    self.buf.len()
                ),
            ));
        }
        Ok(())
    }
}

/// A finished op: its buffer back, and whether all of its bytes were transferred.
pub struct IoDone {
    pub buf: IoBuf,
    pub result: io::Result<()>,
}

impl IoDone {
    /// An op handed back without being run, failed with `why`.
    pub(crate) fn failed(op: IoOp, why: io::Error) -> IoDone {
        IoDone {
            buf: op.buf,
            result: Err(why),
        }
    }
}

/// Counters every engine keeps, read by the tier's stats.
pub struct IoStats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_ns: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub write_ns: AtomicU64,
    pub errors: AtomicU64,
    /// Operations submitted and not yet completed, now.
    pub in_flight: AtomicU64,
    /// Per-op latencies, for the metrics' histograms (no-ops unless the store was opened
    /// inside `Metrics::scope`).
    read_latency: metrics::Histogram,
    write_latency: metrics::Histogram,
}

/// Name of the histogram of ssd operation latencies the tier records (by `op`: read,
/// write); the server's metrics catalog exports it under this name.
pub const SSD_IO_DURATION: &str = "strata_ssd_io_duration_seconds";

impl Default for IoStats {
    /// Zeroed counters; latency handles from the metrics recorder in scope.
    fn default() -> IoStats {
        IoStats {
            read_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            read_ns: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            write_ns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            read_latency: metrics::histogram!(SSD_IO_DURATION, "op" => "read"),
            write_latency: metrics::histogram!(SSD_IO_DURATION, "op" => "write"),
        }
    }
}

impl IoStats {
    /// Records one completed op of `bytes` that took `took` from submission.
    pub fn record(&self, kind: IoKind, bytes: usize, took: Duration, ok: bool) {
        let (ops, total, ns, latency) = match kind {
            IoKind::Read => (
                &self.read_ops,
                &self.read_bytes,
                &self.read_ns,
                &self.read_latency,
            ),
            IoKind::Write => (
                &self.write_ops,
                &self.write_bytes,
                &self.write_ns,
                &self.write_latency,
            ),
        };
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ops.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
        ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        latency.record(took.as_secs_f64());
    }
}

/// Runs batches of block I/O on a fixed set of files.
pub trait IoEngine: Send + Sync {
    /// `io_uring` or `psync`, for logs and stats.
    fn name(&self) -> &'static str;
    /// Most operations in flight at once.
    fn queue_depth(&self) -> u32;
    /// Runs `ops`, pulling the next one only when the queue has room (so making it, a copy
    /// or a checksum, overlaps the transfers in flight), and hands each back to `done` with
    /// its position in `ops` as soon as it has completed, in completion order. Every op is
    /// handed back exactly once. An op that cannot be done (bad alignment, unknown
    /// file, device error, short transfer) fails alone; the others still run.
    fn run_each(&self, ops: &mut dyn Iterator<Item = IoOp>, done: &mut dyn FnMut(usize, IoDone));
    /// [`IoEngine::run_each`], collected in the order of `ops`.
    fn run_iter(&self, ops: &mut dyn Iterator<Item = IoOp>) -> Vec<IoDone> {
        let mut out: Vec<Option<IoDone>> = Vec::new();
        self.run_each(ops, &mut |i, d| {
            if out.len() <= i {
                out.resize_with(i + 1, || None);
            }
            out[i] = Some(d);
        });
        out.into_iter()
            .map(|d| d.expect("every op is handed back"))
            .collect()
    }
    /// [`IoEngine::run_each`] over a list, collected in its order.
    fn run(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        self.run_iter(&mut ops.into_iter())
    }
    /// The engine's counters.
    fn stats(&self) -> &IoStats;
}

/// Which engine to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoEngineKind {
    /// io_uring where the kernel allows it, psync otherwise.
    #[default]
    Auto,
    IoUring,
    Psync,
}

impl std::str::FromStr for IoEngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<IoEngineKind, String> {
        match s {
            "auto" => Ok(IoEngineKind::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoEngineKind::IoUring),
            "psync" => Ok(IoEngineKind::Psync),
            other => Err(format!(
                "{other:?} is not an I/O engine: auto, io_uring or psync"
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::OpenOptionsExt;

    /// Opens `n` files of `size` bytes in `dir`, O_DIRECT.
    pub(crate) fn direct_files(dir: &std::path::Path, n: usize, size: u64) -> Vec<File> {
        (0..n)
            .map(|i| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                    .open(dir.join(format!("f{i}")))
                    .unwrap();
                f.set_len(size).unwrap();
                f
            })
            .collect()
    }

    fn filled(len: usize, seed: u8) -> IoBuf {
        let mut b = IoBuf::new(len);
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = seed.wrapping_add((i / 4096) as u8).wrapping_mul(31) ^ (i as u8);
        }
        b
    }

    /// The suite both engines pass.
    fn engine_suite(make: impl Fn(Vec<File>) -> Box<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = make(direct_files(dir.path(), 2, 8 << 20));
        // More ops than any queue depth, over both files, of mixed sizes.
        let ops: Vec<IoOp> = (0..40)
            .map(|i| {
                let len = 4096 * (1 + i % 5);
                IoOp::write(
                    i % 2,
                    (i as u64 / 2) * (64 << 10),
                    len,
                    filled(len, i as u8),
                )
            })
            .collect();
        let wrote: Vec<Vec<u8>> = ops
            .iter()
            .map(|o| o.buf.as_slice()[..o.len].to_vec())
            .collect();
        for d in engine.run(ops) {
            d.result.unwrap();
        }
        let reads: Vec<IoOp> = (0..40)
            .map(|i| {
                let len = 4096 * (1 + i % 5);
                IoOp::read(i % 2, (i as u64 / 2) * (64 << 10), len, IoBuf::new(len))
            })
            .collect();
        for (i, d) in engine.run(reads).into_iter().enumerate() {
            d.result.unwrap();
            assert_eq!(&d.buf.as_slice()[..wrote[i].len()], &wrote[i][..], "op {i}");
        }
        let s = engine.stats();
        assert_eq!(s.write_ops.load(Ordering::Relaxed), 40);
        assert_eq!(s.read_ops.load(Ordering::Relaxed), 40);
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);

        // Bad ops fail alone, with a typed error, and hand their buffers back.
        let bad = vec![
            IoOp::read(0, 100, 4096, IoBuf::new(4096)),
            IoOp::read(7, 0, 4096, IoBuf::new(4096)),
            IoOp::read(0, 0, 8192, IoBuf::new(4096)),
            IoOp::read(0, 8 << 20, 4096, IoBuf::new(4096)), // past the end: short read
            IoOp::read(1, 0, 4096, IoBuf::new(4096)),
        ];
        let done = engine.run(bad);
        assert_eq!(done.len(), 5);
        for d in &done[..4] {
            assert!(d.result.is_err());
        }
        done[4].result.as_ref().unwrap();
        assert_eq!(&done[4].buf.as_slice()[..4096], &wrote[1][..4096]);
        assert!(engine.run(Vec::new()).is_empty());

        // Each op comes back once, under its own position, whatever the completion order.
        let mut seen = vec![0u32; 16];
        let mut ops = (0..16).map(|i| {
            let len = 4096 * (1 + (15 - i) % 4);
            IoOp::read(i % 2, i as u64 * 4096, len, IoBuf::new(len))
        });
        engine.run_each(&mut ops, &mut |i, d| {
            d.result.unwrap();
            seen[i] += 1;
        });
        assert_eq!(seen, vec![1; 16]);
    }

    #[test]
    fn psync_engine_passes_the_suite() {
        engine_suite(|files| Box::new(super::super::psync::PsyncEngine::new(files)));
    }

    /// Whether io_uring works here. Where it does not, the caller skips its io_uring part
    /// with the reason printed, unless `STRATA_REQUIRE_EXTERNAL=1` (CI, whose kernel
    /// allows io_uring), where this fails the test: a skip there would hide that the
    /// engine went untested.
    pub(crate) fn io_uring_here() -> bool {
        let Err(e) = super::super::uring::UringEngine::probe(8) else {
            return true;
        };
        let required = std::env::var("STRATA_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "io_uring is unavailable here ({e}) and STRATA_REQUIRE_EXTERNAL=1: run where the \
             kernel allows io_uring, or unset the variable to skip"
        );
        eprintln!("skipped: io_uring unavailable here ({e})");
        false
    }

    #[test]
    fn io_uring_engine_passes_the_suite() {
        if !io_uring_here() {
            return;
        }
        engine_suite(|files| Box::new(super::super::uring::UringEngine::new(files, 8).unwrap()));
    }

    #[test]
    fn buffers_are_aligned_and_pooled() {
        let b = IoBuf::new(1);
        assert_eq!(b.len(), 4096);
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        let pool = BufPool::new(1 << 20);
        let b = pool.take(5000);
        assert_eq!(b.len(), 8192);
        let p = b.as_slice().as_ptr();
        pool.put(b);
        assert_eq!(pool.take(6000).as_slice().as_ptr(), p, "reused");
        assert_eq!(pool.take(100 << 10).len(), 128 << 10);
        // Buffers too large for the reads of now (over twice their size) make way for the
        // ones those reads give back, within the pool's bytes.
        for _ in 0..2 {
            pool.put(IoBuf::new(512 << 10));
        }
        let small: Vec<IoBuf> = (0..8).map(|_| pool.take(100 << 10)).collect();
        let reused: Vec<*const u8> = small.iter().map(|b| b.as_slice().as_ptr()).collect();
        for b in small {
            pool.put(b);
        }
        assert_eq!(pool.kept_bytes(), 1 << 20, "within its bytes");
        for _ in 0..8 {
            let b = pool.take(100 << 10);
            assert!(reused.contains(&b.as_slice().as_ptr()), "reused");
        }
    }
}

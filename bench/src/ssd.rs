//! `strata-bench ssd`: the ssd tier's demotion writes and reads, with each I/O engine, next
//! to the raw O_DIRECT throughput of the same file (the ceiling).
//!
//! * `strata-ssd` write: whole objects stored through the tier (`Tier::store_objects`, what
//!   demotion does) in batches of [`DEMOTION_BATCH_BYTES`], as the engine's eviction
//!   batches its victims: each record (header block and value) copied into an aligned
//!   buffer with its neighbours on disk and written with them.
//! * `strata-ssd` read: the same objects read back through the tier in batches of the queue
//!   depth (`SsdTier::read_records`): record in, header and checksum verified, value copied
//!   out. The figures are per batch for latency, per value for throughput.
//! * `raw-odirect`: the same file, block size (the value size) and queue depth, as one
//!   continuous stream of O_DIRECT operations with the queue kept full (io_uring), and no
//!   headers, checksums or copies: what the device gives.
//!
//! Every pass starts on a fresh, sparse file: the raw pass runs first on the io_uring
//! tier's file, which the tier then resets, so both fill the same holes. With `rounds`
//! the whole sequence repeats, and each tier row carries `vs_raw`: its throughput over the
//! raw pass of the same round (a ratio measured back to back, which this noisy disk needs).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use strata_engine::tier::ssd::{
    open_engine, record_len, IoBuf, IoEngineKind, IoOp, RecoveryMode, SsdOptions, SsdTier, BLOCK,
};
use strata_engine::tier::{Extent, Fresh, ObjectWrite, Tier};

use crate::report::{histogram, Record, Report};

/// Bytes of victims the engine's eviction demotes in one `store_objects` call (its
/// `DEMOTION_BATCH_BYTES`): the write batch of the tier pass.
pub const DEMOTION_BATCH_BYTES: u64 = 32 << 20;

/// What to run.
pub struct SsdParams {
    /// Bytes written (and then read) per pass.
    pub total: u64,
    pub sizes: Vec<u64>,
    pub queue_depth: u32,
    /// Where the files go (a temporary directory inside it).
    pub dir: Option<PathBuf>,
    /// Times the whole sequence runs.
    pub rounds: u32,
}

impl SsdParams {
    pub fn full() -> SsdParams {
        SsdParams {
            total: 1 << 30,
            sizes: vec![1 << 20, 4 << 20],
            queue_depth: 8,
            dir: None,
            rounds: 1,
        }
    }

    pub fn quick() -> SsdParams {
        SsdParams {
            total: 32 << 20,
            sizes: vec![1 << 20],
            queue_depth: 8,
            dir: None,
            rounds: 1,
        }
    }
}

pub fn run(p: &SsdParams, report: &mut Report) {
    let base = match &p.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir for the ssd files");
    for round in 0..p.rounds {
        for &size in &p.sizes {
            let n = (p.total / size).max(p.queue_depth as u64);
            let mut raw = RawFigures::default();
            for kind in [IoEngineKind::IoUring, IoEngineKind::Psync] {
                let dir = base.path().join(format!("{kind:?}-{size}"));
                if kind == IoEngineKind::IoUring {
                    // The ceiling first, on the tier's own file, which the tier then resets
                    // (recovery none): both write into the same fresh, sparse file.
                    drop(open_tier(&dir, kind, size, n, p.queue_depth).expect("ssd tier"));
                    raw = raw_pass(
                        &dir.join("strata-000.ssd"),
                        size,
                        n,
                        p.queue_depth,
                        round,
                        report,
                    );
                }
                if let Err(e) = tier_pass(&dir, kind, size, n, p.queue_depth, round, raw, report) {
                    eprintln!("ssd {kind:?}: {e}");
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

fn values(size: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|v| {
            (0..size as usize)
                .map(|i| ((i as u64).wrapping_mul(0x9E37_79B1) >> 7) as u8 ^ v as u8)
                .collect()
        })
        .collect()
}

/// The tier's write and read passes; `raw` is the same round's raw write and read
/// throughput (bytes/s), for `vs_raw`.
#[allow(clippy::too_many_arguments)]
fn tier_pass(
    dir: &Path,
    kind: IoEngineKind,
    size: u64,
    n: u64,
    qd: u32,
    round: u32,
    raw: RawFigures,
    report: &mut Report,
) -> std::io::Result<()> {
    let tier = open_tier(dir, kind, size, n, qd)?;
    let engine = tier.engine_name();
    let per_write = (DEMOTION_BATCH_BYTES / size).max(1) as usize;
    let sources = values(size, per_write);
    let fresh: Vec<Fresh> = (0..n)
        .map(|_| tier.allocate(size).expect("the file holds every value"))
        .collect();
    let extents: Vec<Extent> = fresh.iter().map(|f| f.extent()).collect();
    let (elapsed, lat) = write_all(&tier, fresh, &sources, per_write)?;
    let vs_raw = |elapsed: Duration, raw: f64| {
        let ratio = (n * size) as f64 / elapsed.as_secs_f64() / raw;
        (ratio * 1000.0).round() / 1000.0
    };
    let write_record = |phase: &'static str, elapsed: Duration, lat: &Histogram<u64>, raw: f64| {
        Record::new("ssd", "strata-ssd", "write", phase)
            .size(size)
            .batch(per_write as u32)
            .timed(n, n * size, elapsed, Some(lat))
            .with("engine", engine)
            .with("queue_depth", qd)
            .with("round", round)
            .with("vs_raw", vs_raw(elapsed, raw))
    };
    report.add(write_record("demote", elapsed, &lat, raw.write));

    let mut lat = histogram();
    let mut bufs: Vec<Vec<u8>> = (0..qd).map(|_| vec![0u8; size as usize]).collect();
    let started = Instant::now();
    for batch in extents.chunks(qd as usize) {
        let mut items: Vec<_> = batch
            .iter()
            .zip(bufs.iter_mut())
            .map(|(e, b)| (*e, &mut b[..]))
            .collect();
        let t = Instant::now();
        for r in tier.read_records(&mut items) {
            r.map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        lat.record(t.elapsed().as_nanos() as u64).ok();
    }
    let elapsed = started.elapsed();
    // The last batch read back what was written there (object j holds source j mod the
    // write batch); the tier verified every record's checksum on the way.
    let last = (n as usize - 1) / qd as usize * qd as usize;
    for (k, buf) in bufs.iter().take(n as usize - last).enumerate() {
        assert!(
            *buf == sources[(last + k) % per_write],
            "read back other bytes than written"
        );
    }
    report.add(
        Record::new("ssd", "strata-ssd", "read", "cold")
            .size(size)
            .batch(qd)
            .timed(n, n * size, elapsed, Some(&lat))
            .with("engine", engine)
            .with("queue_depth", qd)
            .with("round", round)
            .with("vs_raw", vs_raw(elapsed, raw.read)),
    );

    // A tier that has been full once: every extent freed (tombstoned) and allocated again,
    // so the writes land on blocks the file already has, as demotion's do from then on.
    for e in extents {
        tier.retire(e, &crossbeam_epoch::pin());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while tier.retiring() > 0 && Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        tier.reclaim_retired();
    }
    let fresh: Vec<Fresh> = (0..n)
        .map(|_| {
            tier.allocate(size)
                .ok_or_else(|| std::io::Error::other("space not freed"))
        })
        .collect::<std::io::Result<_>>()?;
    let (elapsed, lat) = write_all(&tier, fresh, &sources, per_write)?;
    report.add(write_record("demote-reused", elapsed, &lat, raw.rewrite));
    Ok(())
}

/// Stores one object per extent of `fresh` in batches of `per_write`, cycling through
/// `sources`; returns the time taken and each batch's latency.
fn write_all(
    tier: &SsdTier,
    mut fresh: Vec<Fresh>,
    sources: &[Vec<u8>],
    per_write: usize,
) -> std::io::Result<(Duration, Histogram<u64>)> {
    // As demotion does: the checksum recorded at commit goes into the record.
    let checksums: Vec<u64> = sources
        .iter()
        .map(|v| xxhash_rust::xxh3::xxh3_64(v))
        .collect();
    let mut lat = histogram();
    let guard = crossbeam_epoch::pin();
    let started = Instant::now();
    while !fresh.is_empty() {
        let batch: Vec<_> = fresh.drain(..fresh.len().min(per_write)).collect();
        let mut objects: Vec<ObjectWrite<'_>> = batch
            .into_iter()
            .zip(sources.iter().zip(&checksums))
            .map(|(e, (v, sum))| ObjectWrite {
                extent: e.pin(&guard),
                key: b"model@tp_rank:0@0123456789abcdef",
                value: v,
                checksum: Some(*sum),
            })
            .collect();
        let t = Instant::now();
        for r in tier.store_objects(&mut objects) {
            r.map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        lat.record(t.elapsed().as_nanos() as u64).ok();
    }
    Ok((started.elapsed(), lat))
}

/// A tier in `dir` just large enough for `n` values of `size`, started empty.
fn open_tier(
    dir: &Path,
    kind: IoEngineKind,
    size: u64,
    n: u64,
    qd: u32,
) -> std::io::Result<SsdTier> {
    let opts = SsdOptions {
        engine: kind,
        queue_depth: qd,
        recovery: RecoveryMode::None,
        ..SsdOptions::new(dir)
    };
    let capacity = BLOCK + n * record_len(size);
    SsdTier::open(1, capacity, capacity, &opts)
}

/// The raw passes' throughput, bytes/s (0 where a pass failed).
#[derive(Clone, Copy, Default)]
struct RawFigures {
    write: f64,
    read: f64,
    rewrite: f64,
}

/// The ceiling: `n` blocks of `size` at the tier's record offsets, as one stream with the
/// queue kept `qd` deep.
fn raw_pass(
    path: &Path,
    size: u64,
    n: u64,
    qd: u32,
    round: u32,
    report: &mut Report,
) -> RawFigures {
    let times = match raw_odirect(path, size, n, qd) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return RawFigures::default();
        }
    };
    for (op, phase, elapsed) in [
        ("write", "demote", times.write),
        ("read", "cold", times.read),
        ("write", "demote-reused", times.rewrite),
    ] {
        report.add(
            Record::new("ssd", "raw-odirect", op, phase)
                .size(size)
                .batch(qd)
                .timed(n, n * size, elapsed, None)
                .with("engine", "io_uring")
                .with("queue_depth", qd)
                .with("round", round),
        );
    }
    let rate = |e: Duration| (n * size) as f64 / e.as_secs_f64();
    RawFigures {
        write: rate(times.write),
        read: rate(times.read),
        rewrite: rate(times.rewrite),
    }
}

/// How long each raw pass took.
pub(crate) struct RawTimes {
    /// Into the fresh, sparse file: every write allocates its blocks.
    pub write: Duration,
    pub read: Duration,
    /// The same blocks written again: the file has them already.
    pub rewrite: Duration,
}

/// What the disk under `path` gives: `n` blocks of `size` written, read, then written
/// again, O_DIRECT through io_uring with the queue kept `qd` deep, no headers, checksums or
/// copies.
pub(crate) fn raw_odirect(path: &Path, size: u64, n: u64, qd: u32) -> Result<RawTimes, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .map_err(|e| format!("raw O_DIRECT on {}: {e}", path.display()))?;
    let (engine, _) = open_engine(IoEngineKind::IoUring, vec![file], qd)
        .map_err(|e| format!("raw O_DIRECT needs io_uring: {e}"))?;
    let offset = |i: u64| BLOCK + i * record_len(size) + BLOCK;
    let mut fill = IoBuf::new(size as usize);
    fill.as_mut_slice().fill(0xa5);
    let mut elapsed = [Duration::ZERO; 3];
    for (pass, write) in [true, false, true].into_iter().enumerate() {
        let ops: Vec<IoOp> = (0..n)
            .map(|i| {
                let mut buf = IoBuf::new(size as usize);
                if write {
                    buf.as_mut_slice().copy_from_slice(fill.as_slice());
                    IoOp::write(0, offset(i), size as usize, buf)
                } else {
                    IoOp::read(0, offset(i), size as usize, buf)
                }
            })
            .collect();
        let started = Instant::now();
        let done = engine.run(ops);
        elapsed[pass] = started.elapsed();
        if let Some(e) = done.into_iter().find_map(|d| d.result.err()) {
            return Err(format!("raw O_DIRECT: {e}"));
        }
    }
    Ok(RawTimes {
        write: elapsed[0],
        read: elapsed[1],
        rewrite: elapsed[2],
    })
}

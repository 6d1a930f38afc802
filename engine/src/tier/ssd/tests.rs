//! The ssd tier on its own, under both I/O engines.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crossbeam_epoch as epoch;
use strata_proto::ErrorCode;

use super::*;

const MIB: u64 = 1 << 20;

fn engines() -> Vec<IoEngineKind> {
    let mut kinds = vec![IoEngineKind::Psync];
    if super::io::tests::io_uring_here() {
        kinds.push(IoEngineKind::IoUring);
    }
    kinds
}

fn options(dir: &Path, engine: IoEngineKind) -> SsdOptions {
    SsdOptions {
        engine,
        queue_depth: 8,
        ..SsdOptions::new(dir)
    }
}

fn value(key: &str, len: usize) -> Vec<u8> {
    let seed = xxh3_64(key.as_bytes());
    (0..len)
        .map(|i| (seed.rotate_left(i as u32 % 64) as u8) ^ (i as u8))
        .collect()
}

/// Stores `keys` (value lengths from `len_of`) and returns their extents.
fn store(tier: &SsdTier, keys: &[&str], len_of: impl Fn(usize) -> usize) -> Vec<Extent> {
    let values: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| value(k, len_of(i)))
        .collect();
    let guard = epoch::pin();
    let mut objects: Vec<ObjectWrite<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| ObjectWrite {
            extent: tier.allocate(v.len() as u64).expect("space").pin(&guard),
            key: k.as_bytes(),
            value: v,
            checksum: None,
        })
        .collect();
    let extents = objects.iter().map(|o| o.extent.extent()).collect();
    for r in tier.store_objects(&mut objects) {
        r.unwrap();
    }
    extents
}

fn read(tier: &SsdTier, extent: &Extent) -> strata_proto::Result<Vec<u8>> {
    let mut out = vec![0u8; extent.len as usize];
    let read = tier.read_records(&mut [(*extent, &mut out[..])]).pop();
    read.expect("one result per record").map(|()| out)
}

/// Retires `extent` and waits (bounded) for its tombstone and free.
fn free(tier: &SsdTier, extent: Extent) {
    tier.retire(extent, &epoch::pin());
    let started = Instant::now();
    while tier.retiring() > 0 && started.elapsed() < Duration::from_secs(5) {
        epoch::pin().flush();
        tier.reclaim_retired();
    }
    assert_eq!(tier.retiring(), 0, "retired extent never came back");
}

fn data_file(dir: &Path, i: usize) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(file_name(i)))
        .unwrap()
}

#[test]
fn objects_round_trip_and_a_flipped_byte_is_corrupt() {
    for kind in engines() {
        let dir = tempfile::tempdir().unwrap();
        let tier = SsdTier::open(1, 64 * MIB, 16 * MIB, &options(dir.path(), kind)).unwrap();
        assert_eq!(
            tier.engine_name(),
            if kind == IoEngineKind::Psync {
                "psync"
            } else {
                "io_uring"
            }
        );
        let keys = ["a", "b", "c", "d", "e"];
        let writes_before = tier.io_figures().unwrap().write_ops;
        let extents = store(&tier, &keys, |i| [1, 4095, 4096, 4097, 3 * MIB as usize][i]);
        // Allocation goes round the 4 files, so a and e lie end to end in the first one.
        let writes = tier.io_figures().unwrap().write_ops - writes_before;
        assert_eq!(
            writes, 4,
            "{kind:?}: one write per record, neighbours packed"
        );
        for (k, e) in keys.iter().zip(&extents) {
            assert_eq!(
                read(&tier, e).unwrap(),
                value(k, e.len as usize),
                "{kind:?} {k}"
            );
        }
        // Damage one byte of d's value on disk: reads fail Corrupt and say so in stats.
        let d = extents[3];
        let f = data_file(dir.path(), d.segment as usize);
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, d.offset + BLOCK + 100).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], d.offset + BLOCK + 100)
            .unwrap();
        f.sync_data().unwrap();
        let err = read(&tier, &d).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
        assert_eq!(tier.io_figures().unwrap().corrupt_records, 1);
        // Its neighbours are untouched.
        assert_eq!(read(&tier, &extents[2]).unwrap(), value("c", 4096));
        assert_eq!(
            read(&tier, &extents[4]).unwrap(),
            value("e", 3 * MIB as usize)
        );
        let figures = tier.io_figures().unwrap();
        assert!(figures.read_ops >= 8, "{figures:?}");
        assert_eq!(figures.in_flight, 0);
    }
}

#[test]
fn reopening_recovers_records_and_skips_torn_removed_and_superseded_ones() {
    for kind in engines() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), kind);
        let (kept, torn_at) = {
            let tier = SsdTier::open(1, 32 * MIB, 8 * MIB, &opts).unwrap();
            let extents = store(&tier, &["k0", "k1", "k2", "gone", "dup"], |i| {
                (i + 1) * 70_000
            });
            // A second record of "dup" written later, while the first one's tombstone never
            // made it (a crash in between): the later one must win.
            store(&tier, &["dup"], |_| 7);
            free(&tier, extents[3]);
            // A torn record: its value is written, its header only half (damaged).
            let torn = tier.allocate(10_000).unwrap().into_extent();
            let f = data_file(dir.path(), torn.segment as usize);
            f.write_all_at(&value("torn", 10_000), torn.offset + BLOCK)
                .unwrap();
            let mut head = vec![0u8; BLOCK as usize];
            RecordHeader {
                file_id: tier.file_ids[torn.segment as usize],
                sequence: 999,
                value_len: 10_000,
                value_checksum: xxh3_64(&value("torn", 10_000)),
                key: b"torn".to_vec(),
            }
            .encode(&mut head);
            head[30] ^= 0xff; // Half-written: the header checksum no longer matches.
            f.write_all_at(&head, torn.offset).unwrap();
            f.sync_data().unwrap();
            (vec![extents[0], extents[1], extents[2], extents[4]], torn)
        };

        let tier = SsdTier::open(1, 32 * MIB, 8 * MIB, &opts).unwrap();
        let mut got = tier.take_recovered();
        got.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&[u8]> = got.iter().map(|r| &*r.key).collect();
        assert_eq!(keys, [&b"dup"[..], b"k0", b"k1", b"k2"], "{kind:?}");
        let dup = &got[0];
        assert_eq!(dup.extent.len, 7, "the later record of dup wins");
        assert_ne!(dup.extent.offset, kept[3].offset);
        for r in &got {
            let key = std::str::from_utf8(&r.key).unwrap();
            assert_eq!(
                read(&tier, &r.extent).unwrap(),
                value(key, r.extent.len as usize)
            );
            assert_eq!(r.checksum, xxh3_64(&read(&tier, &r.extent).unwrap()));
        }
        let figures = tier.io_figures().unwrap();
        assert_eq!(figures.recovered_records, 4);
        assert_eq!(
            figures.skipped_records, 2,
            "the torn record and the older dup"
        );
        // Used space is exactly the recovered records; the torn one's space is free again.
        let used: u64 = got.iter().map(|r| record_len(r.extent.len)).sum();
        assert_eq!(tier.used(), used);
        let mut again = Vec::new();
        while let Some(e) = tier.allocate(10_000) {
            again.push(e.into_extent());
        }
        assert!(
            again
                .iter()
                .any(|e| e.segment == torn_at.segment && e.offset == torn_at.offset),
            "the torn record's space is handed out again"
        );
        // The next records continue the sequence.
        let last = got.iter().map(|r| r.sequence).max().unwrap();
        assert!(tier.sequence.load(Ordering::Relaxed) > last);
    }
}

/// Overwrites 16 bytes of the value of the record at `extent` on disk.
fn damage_value(dir: &Path, extent: &Extent) {
    let f = data_file(dir, extent.segment as usize);
    f.write_all_at(&[0xee; 16], extent.offset + BLOCK + 4000)
        .unwrap();
    f.sync_data().unwrap();
}

#[test]
fn quick_recovery_leaves_out_a_newest_record_torn_by_a_crash() {
    for kind in engines() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), kind);
        let newest = {
            let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
            store(&tier, &["older", "newer"], |_| 50_000);
            // A write in flight when the server was killed: its header landed, its value
            // only in part.
            store(&tier, &["in-flight"], |_| 50_000)[0]
        };
        damage_value(dir.path(), &newest);
        let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
        let mut keys: Vec<Box<[u8]>> = tier.take_recovered().into_iter().map(|r| r.key).collect();
        keys.sort();
        assert_eq!(keys, [&b"newer"[..], b"older"].map(Box::from), "{kind:?}");
        let figures = tier.io_figures().unwrap();
        assert_eq!(figures.skipped_records, 1, "{kind:?}");
        // Its space is free again, and its header is gone: it stays out after a restart.
        assert_eq!(tier.used(), 2 * record_len(50_000));
        drop(tier);
        let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
        assert_eq!(tier.take_recovered().len(), 2);
        assert_eq!(tier.io_figures().unwrap().skipped_records, 0);
    }
}

#[test]
fn a_failed_writes_space_is_tombstoned_before_reuse_or_freed_at_once_if_never_written() {
    for kind in engines() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), kind);
        {
            let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
            // A failed write that had put one whole record on disk (header and value).
            let landed = store(&tier, &["landed"], |_| 50_000)[0];
            // And one whose write never reached the disk: its header block is a hole.
            let never = tier.allocate(50_000).unwrap().into_extent();
            let guard = epoch::pin();
            tier.discard_unwritten(landed, &guard);
            tier.discard_unwritten(never, &guard);
            drop(guard);
            assert!(tier.retiring() > 0, "{kind:?}: held until tombstoned");
            tier.reclaim_retired();
            assert_eq!((tier.used(), tier.retiring()), (0, 0), "{kind:?}");
        }
        // The record that landed does not come back: its header was tombstoned.
        let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
        assert!(tier.take_recovered().is_empty(), "{kind:?}");
    }
}

#[test]
fn recovery_modes_none_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), IoEngineKind::Psync);
    let size = 128 * MIB;
    // "bad" is damaged after a whole wave of newer records was written: no crash can have
    // torn it, so quick trusts its header (the damage is caught when read).
    let newer = (WRITE_WAVE_BYTES / (4 * MIB) + 1) as usize;
    let damaged = {
        let tier = SsdTier::open(1, size, 32 * MIB, &opts).unwrap();
        let e = store(&tier, &["good", "bad"], |_| 50_000);
        let names: Vec<String> = (0..newer).map(|i| format!("newer-{i}")).collect();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        for chunk in names.chunks(4) {
            store(&tier, chunk, |_| 4 * MIB as usize - BLOCK as usize);
        }
        e[1]
    };
    damage_value(dir.path(), &damaged);

    let tier = SsdTier::open(1, size, 32 * MIB, &opts).unwrap();
    assert_eq!(tier.take_recovered().len(), 2 + newer);
    assert_eq!(
        read(&tier, &damaged).unwrap_err().code(),
        ErrorCode::Corrupt
    );
    drop(tier);
    // verify reads every value: the damaged one is left out and tombstoned.
    opts.recovery = RecoveryMode::Verify;
    let tier = SsdTier::open(1, size, 32 * MIB, &opts).unwrap();
    let got = tier.take_recovered();
    assert_eq!(got.len(), 1 + newer);
    assert!(got.iter().all(|r| &*r.key != b"bad"));
    drop(tier);
    opts.recovery = RecoveryMode::Quick;
    let tier = SsdTier::open(1, size, 32 * MIB, &opts).unwrap();
    assert_eq!(
        tier.take_recovered().len(),
        1 + newer,
        "verify's verdict is on disk"
    );
    drop(tier);
    // none starts empty.
    opts.recovery = RecoveryMode::None;
    let tier = SsdTier::open(1, size, 32 * MIB, &opts).unwrap();
    assert!(tier.take_recovered().is_empty());
    assert_eq!(tier.used(), 0);
}

#[test]
fn one_server_per_directory_and_a_resized_tier_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), IoEngineKind::Psync);
    let tier = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts).unwrap();
    store(&tier, &["x"], |_| 1000);
    let err = SsdTier::open(1, 16 * MIB, 16 * MIB, &opts)
        .err()
        .expect("locked");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(tier);
    // Files of another size are not trusted: they start empty, loudly.
    let tier = SsdTier::open(1, 8 * MIB, 8 * MIB, &opts).unwrap();
    assert!(tier.take_recovered().is_empty());
    // And the offline scanner reads the files the tier writes.
    store(&tier, &["y"], |_| 5000);
    drop(tier);
    let (sb, records) = scan_file(&dir.path().join(file_name(0)), true).unwrap();
    assert_eq!(sb.file_size, 8 * MIB);
    assert_eq!(records.len(), 1);
    assert!(records[0].intact);
    assert_eq!(records[0].header.key, b"y");
}

#[test]
fn the_tiers_directory_and_files_are_private_to_the_servers_user() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ssd");
    // An existing directory left open is tightened; files the tier creates are 0600
    // whatever the umask (this process's is usually 022).
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tier = SsdTier::open(2, 8 * MIB, 4 * MIB, &options(&dir, IoEngineKind::Psync)).unwrap();
    store(&tier, &["a", "b"], |_| 5000);
    drop(tier);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 3, "LOCK and two tier files, found {files}");
}

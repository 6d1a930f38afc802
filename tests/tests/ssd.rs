//! End to end, the ssd tier: a real server process with a small dram tier over an ssd
//! tier, clients that write three times dram, a crash (SIGKILL) and a restart, a torn
//! record and a damaged one.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use strata_client::{Client, ErrorCode};
use strata_engine::tier::ssd::{record_len, scan_file, RecordHeader, BLOCK};
use strata_tests::{block_value, ssd_files, ServerProcess};

const MIB: usize = 1 << 20;
const DRAM: &str = "32MiB";
/// Three times the dram tier, in 1 MiB values.
const OBJECTS: u64 = 96;

const ARGS: &[&str] = &[
    "--dram-capacity",
    DRAM,
    "--ssd-capacity",
    "256MiB",
    "--device-plugin",
    "off",
];

fn key(i: u64) -> Vec<u8> {
    format!("qwen@tp_rank:0@{i:016x}").into_bytes()
}

/// The number a [`key`] was made from.
fn index_of(key: &[u8]) -> u64 {
    u64::from_str_radix(std::str::from_utf8(&key[15..]).unwrap(), 16).unwrap()
}

/// Puts [`OBJECTS`] 1 MiB values: three times dram, so most of them end up on ssd.
async fn put_three_times_dram(client: &Client) {
    for i in 0..OBJECTS {
        client
            .put_from(&key(i), &block_value(i, MIB))
            .await
            .unwrap();
    }
}

/// Overwrites 64 bytes in the middle of the value of the record at `offset` of `file`.
fn damage(file: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&[0x5a; 64], offset + BLOCK + 4096).unwrap();
    f.sync_all().unwrap();
}

fn ssd_dir(server: &ServerProcess) -> PathBuf {
    server.data_dir.join("ssd")
}

/// Every record on disk, by key: (file, offset, value length).
fn records_on_disk(dir: &Path) -> BTreeMap<Vec<u8>, (PathBuf, u64, u64)> {
    let mut out = BTreeMap::new();
    for file in ssd_files(dir) {
        let (_, records) = scan_file(&file, false).unwrap();
        for r in records {
            out.insert(r.header.key, (file.clone(), r.offset, r.header.value_len));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_dram_survives_a_crash_and_damage_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", ARGS);
    let addr = server.addr.to_string();
    let client = Client::connect(server.client_config()).await.unwrap();
    put_three_times_dram(&client).await;
    // Everything reads back byte-identical, part of it straight from the ssd files.
    for i in 0..OBJECTS {
        let got = client.get(&key(i)).await.unwrap();
        assert!(got[..] == block_value(i, MIB)[..], "object {i} differs");
    }
    let moved = client.transport_stats();
    assert!(
        moved.ssd_file_gets >= OBJECTS / 2 && moved.quic_gets == 0,
        "ssd values are read from the files, none through the server: {moved:?}"
    );
    let stats = client.stats().await.unwrap();
    let ssd = stats
        .tiers
        .iter()
        .find(|t| t.kind == "ssd")
        .expect("an ssd tier");
    assert!(ssd.objects >= OBJECTS / 2, "{stats:?}");
    assert!(stats.demotions >= OBJECTS / 2, "{stats:?}");
    assert!(ssd.write_bytes >= ssd.objects * MIB as u64);
    assert!(!ssd.io_engine.is_empty());
    assert_eq!(stats.objects, OBJECTS, "nothing was dropped");

    // Crash. What was on ssd must all come back.
    let on_ssd = records_on_disk(&ssd_dir(&server));
    assert!(on_ssd.len() as u64 >= OBJECTS / 2);
    drop(client);
    server.kill_hard();

    // A torn record from the crash: a value with a half-written header, in free space.
    let (torn_file, torn_at) = free_gap(&on_ssd, &ssd_files(&ssd_dir(&server))[0]);
    let torn_key = b"qwen@tp_rank:0@torn".to_vec();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&torn_file)
        .unwrap();
    let value = block_value(999, 8192);
    f.write_all_at(&value, torn_at + BLOCK).unwrap();
    let mut head = vec![0u8; BLOCK as usize];
    let (sb, _) = scan_file(&torn_file, false).unwrap();
    RecordHeader {
        file_id: sb.file_id,
        sequence: u64::MAX / 2,
        value_len: 8192,
        value_checksum: xxh3(&value),
        key: torn_key.clone(),
    }
    .encode(&mut head);
    head[48..].fill(0); // Its checksum and key never reached the disk.
    f.write_all_at(&head, torn_at).unwrap();
    f.sync_all().unwrap();

    let server = ServerProcess::start_in(dir.path(), &addr, ARGS);
    let client = Client::connect(server.client_config()).await.unwrap();
    for (k, (_, _, len)) in &on_ssd {
        let i = index_of(k);
        let got = client.get(k).await.unwrap();
        assert_eq!(got.len() as u64, *len);
        assert!(
            got[..] == block_value(i, MIB)[..],
            "object {i} differs after the crash"
        );
    }
    // Each was read once since the restart; a second read promotes one into dram (there
    // is room: dram restarted empty), and from then on it is read through shared memory.
    let (hot, _) = on_ssd.iter().next_back().unwrap();
    client.get(hot).await.unwrap();
    let before = client.transport_stats();
    let got = client.get(hot).await.unwrap();
    assert_eq!(got.len(), MIB);
    let after = client.transport_stats();
    assert_eq!(
        after.shm_gets,
        before.shm_gets + 1,
        "promoted objects are read directly {after:?} {:?}",
        client.stats().await.unwrap()
    );
    assert_eq!(client.stats().await.unwrap().promotions, 1);

    let torn = client.get(&torn_key).await.unwrap_err();
    assert_eq!(
        torn.code(),
        ErrorCode::NotFound,
        "a torn record is never indexed"
    );
    assert_eq!(
        client.stats().await.unwrap().corrupt,
        0,
        "none returned corrupt"
    );

    // Damage a record that is on ssd now: reads say Corrupt, then the object is gone.
    let now = records_on_disk(&ssd_dir(&server));
    let (victim, (file, offset, _)) = now.iter().next().unwrap();
    damage(file, *offset);
    let err = match client.get(victim).await {
        Ok(v) => panic!(
            "damaged object served ({} bytes): {:?}",
            v.len(),
            client.stats().await.unwrap()
        ),
        Err(e) => e,
    };
    assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
    // The client learns that its value was damaged, not the server's files.
    assert!(
        !err.message().contains(".ssd") && !err.message().contains("record at"),
        "{err}"
    );
    let gone = client.get(victim).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
    assert_eq!(client.stats().await.unwrap().corrupt, 1);
}

/// A file and block offset with two free blocks, past every record of `file`.
fn free_gap(records: &BTreeMap<Vec<u8>, (PathBuf, u64, u64)>, file: &Path) -> (PathBuf, u64) {
    let end = records
        .values()
        .filter(|(f, _, _)| f == file)
        .map(|(_, at, len)| at + record_len(*len))
        .max()
        .unwrap_or(BLOCK);
    let size = std::fs::metadata(file).unwrap().len();
    assert!(end + 3 * BLOCK <= size, "no room after the last record");
    (file.to_path_buf(), end)
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_on_shutdown_carries_dram_over_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = ARGS
        .iter()
        .copied()
        .chain(["--persist-on-shutdown"])
        .collect();
    let mut server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", &args);
    let addr = server.addr.to_string();
    let client = Client::connect(server.client_config()).await.unwrap();
    for i in 0..8 {
        client
            .put_from(&key(i), &block_value(i, MIB))
            .await
            .unwrap();
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.tiers[0].objects, 8, "all in dram before the shutdown");
    drop(client);
    assert!(server.terminate().success());

    let server = ServerProcess::start_in(dir.path(), &addr, &args);
    let client = Client::connect(server.client_config()).await.unwrap();
    for i in 0..8 {
        let got = client.get(&key(i)).await.unwrap();
        assert!(got[..] == block_value(i, MIB)[..], "object {i} differs");
    }
    // Without the flag, what is only in dram is gone after a restart.
    drop(client);
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", ARGS);
    let client = Client::connect(server.client_config()).await.unwrap();
    client
        .put_from(&key(0), &block_value(0, MIB))
        .await
        .unwrap();
    drop(client);
    assert!(server.terminate().success());
    let server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", ARGS);
    let client = Client::connect(server.client_config()).await.unwrap();
    let gone = client.get(&key(0)).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
}

/// Same-host clients read ssd values from the tier's files themselves; the server counts
/// each lease as a read, moves twice-read objects up (the reader then copies the server's
/// copy instead of reading the record again), and a QUIC-only client still reads
/// through the server. A record damaged on disk is caught by the reader's own checksum,
/// on a get or a leased read: never served, reported `Corrupt` by the server, then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_reads_of_ssd_values_go_to_the_files_and_damage_is_caught_by_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", ARGS);
    let client = Client::connect(server.client_config()).await.unwrap();
    put_three_times_dram(&client).await;
    let on_ssd = records_on_disk(&ssd_dir(&server));
    assert!(on_ssd.len() as u64 >= OBJECTS / 2, "{}", on_ssd.len());
    let mut cold = on_ssd.iter();
    let (damaged, (file, offset, _)) = cold.next().unwrap();
    let (hot, _) = cold.next().unwrap();

    // First read of an ssd value: from its file, not through the server.
    let before = client.transport_stats();
    let got = client.get(hot).await.unwrap();
    assert!(got[..] == block_value(index_of(hot), MIB)[..]);
    let after = client.transport_stats();
    assert_eq!(after.ssd_file_gets, before.ssd_file_gets + 1, "{after:?}");
    assert_eq!(after.quic_gets, before.quic_gets, "{after:?}");
    // The second read (the lease counted the first as a hit) moves it into dram, and the
    // client copies the server's fresh copy rather than read the record again; the third
    // reads the dram copy under a lease of its own.
    for _ in 0..2 {
        let got = client.get(hot).await.unwrap();
        assert!(got[..] == block_value(index_of(hot), MIB)[..]);
    }
    let last = client.transport_stats();
    assert_eq!(last.ssd_file_gets, after.ssd_file_gets, "{last:?}");
    assert_eq!(last.shm_gets, after.shm_gets + 2, "{last:?}");
    assert_eq!(client.stats().await.unwrap().promotions, 1);

    // A client that may not use shared memory reads through the server, same bytes.
    let mut config = server.client_config();
    config.transport = strata_client::Transport::Quic;
    let quic = Client::connect(config).await.unwrap();
    let (other, _) = cold.next().unwrap();
    let got = quic.get(other).await.unwrap();
    assert!(got[..] == block_value(index_of(other), MIB)[..]);
    assert_eq!(quic.transport_stats().quic_gets, 1);

    // Damage a value never read yet (its lease does not promote it, so the reader is the
    // first to look at the bytes).
    damage(file, *offset);
    let err = match client.get(damaged).await {
        Ok(v) => panic!("a damaged value was served ({} bytes)", v.len()),
        Err(e) => e,
    };
    assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
    assert_eq!(client.stats().await.unwrap().corrupt, 1);
    let gone = client.get(damaged).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);

    // The same through a lease taken first and read later (an engine loading a prefix):
    // the reader's failed check reaches the server, which drops the record.
    let (leased_key, (file, offset, _)) = cold.next().unwrap();
    let lease = client.get_locations(&[leased_key]).await.remove(0).unwrap();
    damage(file, *offset);
    let mut buf = vec![0u8; MIB];
    let err = match client.read_leased(&lease, &mut buf).await {
        Ok(n) => panic!("a damaged value was served ({n} bytes)"),
        Err(e) => e,
    };
    assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
    assert_eq!(client.stats().await.unwrap().corrupt, 2);
    let gone = client.get(leased_key).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
}

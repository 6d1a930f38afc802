//! `strata-bench client`: the Rust client's half of the Python package's benchmark
//! (`python/bench/compare.py`). Against a server the caller names, it makes the calls an engine
//! makes (a batch load of 16 values into one buffer, `batch_exists` and `prefix_len` of
//! 1024 keys) one after another from one thread, timed per call, exactly as compare.py
//! times the same calls through the Python package: the two reports compare call for call.

use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, Transport};

use crate::harness::runtime;
use crate::report::{histogram, Record, Report};

/// What to run.
pub struct ClientOpsParams {
    pub server: String,
    pub ca: Option<std::path::PathBuf>,
    pub transport: Transport,
    /// Seconds per timed loop.
    pub seconds: f64,
    /// Values in each batch load, and their size.
    pub values: usize,
    pub value_size: usize,
    /// Keys in each lookup; prefix_len groups them `ranks` to a position.
    pub lookup_keys: usize,
    pub ranks: usize,
    /// prefix_len leases what it matches (as an engine's lookup before its load does).
    pub lease: bool,
    /// Names the keys; python/bench/compare.py passes its own.
    pub key_prefix: String,
}

/// The keys of the batch load and of the lookups, as python/bench/compare.py names them.
pub fn keys(p: &ClientOpsParams) -> (Vec<String>, Vec<String>) {
    let load = (0..p.values)
        .map(|i| format!("{}load-{i}", p.key_prefix))
        .collect();
    let lookup = (0..p.lookup_keys)
        .map(|i| format!("{}lookup-{i}", p.key_prefix))
        .collect();
    (load, lookup)
}

/// Byte `j` of load value `i` (python/bench/compare.py fills and checks the same).
fn byte(i: usize, j: usize) -> u8 {
    (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8
}

pub fn run(p: &ClientOpsParams, report: &mut Report) {
    // The Python package's runtime has this many workers.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let rt = runtime(workers);
    let config = ClientConfig {
        server: p.server.clone(),
        ca_cert: p.ca.clone(),
        transport: p.transport,
        transfer_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let client = rt.block_on(Client::connect(config)).expect("connect");
    let transport = rt.block_on(client.transport()).expect("transport");
    let phase = match transport {
        Transport::Shm => "shm",
        Transport::Tcp => "tcp",
        _ => "quic",
    };
    let (load_keys, lookup_keys) = keys(p);
    // Stored if absent (a put of an existing key is success): the same bytes compare.py puts.
    let values: Vec<Vec<u8>> = (0..p.values)
        .map(|i| (0..p.value_size).map(|j| byte(i, j)).collect())
        .collect();
    let items: Vec<(&String, &Vec<u8>)> = load_keys.iter().zip(&values).collect();
    let tiny = [1u8; 16];
    let lookups: Vec<(&String, &[u8])> = lookup_keys.iter().map(|k| (k, &tiny[..])).collect();
    rt.block_on(async {
        for r in client.batch_put_from(&items).await {
            r.expect("storing the load values");
        }
        for r in client.batch_put_from(&lookups).await {
            r.expect("storing the lookup keys");
        }
    });

    let mut pool = vec![0u8; p.values * p.value_size];
    // As a long-lived engine client finds them: the segments prefaulted into this process
    // and the destination touched, by one untimed load.
    rt.block_on(async {
        client.shm_prefaulted().await.expect("prefault");
        let mut bufs: Vec<&mut [u8]> = pool.chunks_mut(p.value_size).collect();
        for r in client.batch_get_into(&load_keys, &mut bufs).await {
            r.expect("warm-up load");
        }
    });
    let bound = Duration::from_secs_f64(p.seconds);
    let mut lat = histogram();
    let (mut calls, start) = (0u64, Instant::now());
    while start.elapsed() < bound {
        let mut bufs: Vec<&mut [u8]> = pool.chunks_mut(p.value_size).collect();
        let t = Instant::now();
        let got = rt.block_on(client.batch_get_into(&load_keys, &mut bufs));
        let _ = lat.record(t.elapsed().as_nanos() as u64);
        for r in got {
            assert_eq!(r.expect("load"), p.value_size);
        }
        calls += 1;
    }
    let elapsed = start.elapsed();
    for (i, chunk) in pool.chunks(p.value_size).enumerate() {
        assert!(
            chunk.iter().enumerate().all(|(j, &b)| b == byte(i, j)),
            "value {i} arrived wrong"
        );
    }
    let bytes = calls * (p.values * p.value_size) as u64;
    report.add(
        Record::new("python", "strata-rust", "batch_get_into", phase)
            .size(p.value_size as u64)
            .batch(p.values as u32)
            .timed(calls, bytes, elapsed, Some(&lat)),
    );

    let groups: Vec<&[String]> = lookup_keys.chunks(p.ranks.max(1)).collect();
    // ping: the bare round trip under both, so a lookup's gap can be told from it.
    for op in ["ping", "batch_exists", "prefix_len"] {
        let mut lat = histogram();
        let (mut calls, start) = (0u64, Instant::now());
        while start.elapsed() < bound {
            let t = Instant::now();
            let found = rt.block_on(async {
                match op {
                    "ping" => {
                        client.ping().await.expect("ping");
                        p.lookup_keys
                    }
                    "batch_exists" => {
                        let answers = client.batch_exists(&lookup_keys).await;
                        answers.into_iter().filter(|a| *a == Ok(true)).count()
                    }
                    _ if p.lease => {
                        let matched = client.prefix_len_leased(&groups).await;
                        matched.expect("prefix_len").len * p.ranks.max(1)
                    }
                    _ => client.prefix_len(&groups).await.expect("prefix_len") * p.ranks.max(1),
                }
            });
            let _ = lat.record(t.elapsed().as_nanos() as u64);
            assert_eq!(
                found, p.lookup_keys,
                "{op} found {found} of the stored keys"
            );
            calls += 1;
        }
        let keys = if op == "ping" { 0 } else { p.lookup_keys };
        report.add(
            Record::new("python", "strata-rust", op, phase)
                .batch(keys as u32)
                .timed(calls, 0, start.elapsed(), Some(&lat)),
        );
    }
    rt.block_on(client.close());
}

//! `strata-bench shm`: the shared-memory transport (a server and its same-host clients in
//! this process), next to a plain memcpy of the same sizes and to the QUIC transport.
//!
//! The memcpy ceiling copies from a working set as large as the gets' (32 values), into
//! the same per-task buffers, so both pay the same cache misses. The gets run three ways:
//! * `lease-per-get`: the client caches no lease, so every get_into makes its get_locations
//!   round trip (batch 1), or one per 32 values (batch 32, `batch_get_into`);
//! * `lease-verified`: the same, also checking each value's checksum as it copies
//!   (`verify_shm_checksums`, off by default);
//! * `cached-lease`: the default client, whose lease cache skips the round trip while a
//!   lease from an earlier get still holds (a block read again within the lease TTL).
//!
//! The memcpy ceiling is measured per batch size: a batch of 32 fills 32 destination
//! buffers, which costs memory traffic a single reused buffer does not.
//!
//! Latencies are per call: one value at batch 1, 32 values at batch 32.

use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Mutex;

use strata_client::{Client, ClientConfig, Transport};

use crate::ceiling::fastest;
use crate::engine::{pattern, round3};
use crate::harness::{runtime, serve, timed};
use crate::report::{Record, Report};

/// What to run.
pub struct ShmParams {
    pub seconds: f64,
    pub sizes: Vec<u64>,
    pub concurrency: Vec<usize>,
    pub batches: Vec<usize>,
    /// Pause after connecting, for the clients' background prefault of the segments to
    /// finish, so the loops measure the steady state rather than page faults.
    pub settle: Duration,
}

impl ShmParams {
    pub fn full() -> ShmParams {
        ShmParams {
            seconds: 2.0,
            sizes: vec![1 << 20, 4 << 20, 16 << 20],
            concurrency: vec![1, 2],
            batches: vec![1, 32],
            settle: Duration::from_secs(5),
        }
    }

    pub fn quick() -> ShmParams {
        ShmParams {
            seconds: 0.1,
            sizes: vec![1 << 20],
            concurrency: vec![1],
            batches: vec![1, 4],
            settle: Duration::ZERO,
        }
    }
}

/// Values in the read working set (and memcpy sources).
const WORKING_SET: usize = 32;

struct Clients {
    /// Shared memory, default settings (lease cache on).
    cached: Client,
    /// Shared memory, no lease cache: every get leases anew.
    uncached: Client,
    /// As `uncached`, verifying each value's checksum as it is copied.
    verified: Client,
    quic: Client,
}

pub fn run(p: &ShmParams, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_rt = runtime(2);
    let client_rt = runtime(2);
    let tls = crate::harness::loopback_tls(dir.path());
    let served = serve(&server_rt, 3 << 30, tls, Some(dir.path().join("shm.sock")));
    let base = ClientConfig {
        server: served.addr.to_string(),
        ca_cert: Some(served.cert.clone()),
        transfer_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let clients = client_rt.block_on(async {
        let connect = |transport, location_cache_capacity, verify_shm_checksums| {
            let config = ClientConfig {
                transport,
                location_cache_capacity,
                verify_shm_checksums,
                ..base.clone()
            };
            async move { Client::connect(config).await.expect("connect") }
        };
        Clients {
            cached: connect(Transport::Shm, 1 << 20, false).await,
            uncached: connect(Transport::Shm, 0, false).await,
            verified: connect(Transport::Shm, 0, true).await,
            quic: connect(Transport::Quic, 1 << 20, false).await,
        }
    });

    std::thread::sleep(p.settle);
    for &size in &p.sizes {
        for &c in &p.concurrency {
            round(p, &client_rt, &clients, size, c, report);
        }
    }
    served.stop(&server_rt);
}

/// Per-task buffers for `batch` values of `size` bytes, touched so no page faults are
/// timed.
fn buffers(tasks: usize, batch: usize, size: u64) -> Arc<Vec<Mutex<Vec<Vec<u8>>>>> {
    Arc::new(
        (0..tasks)
            .map(|_| Mutex::new((0..batch).map(|_| vec![1u8; size as usize]).collect()))
            .collect(),
    )
}

fn round(
    p: &ShmParams,
    rt: &tokio::runtime::Runtime,
    clients: &Clients,
    size: u64,
    c: usize,
    report: &mut Report,
) {
    let value = pattern(size);
    let keys: Arc<Vec<String>> = Arc::new(
        (0..WORKING_SET)
            .map(|i| format!("get-{size}-{c}-{i}"))
            .collect(),
    );
    rt.block_on(async {
        // Each round starts from an empty tier: values of the sizes before would leave it
        // fragmented for this size (the allocator does not compact).
        clients.quic.remove_all(true).await.expect("remove_all");
        let items: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_bytes(), &value[..])).collect();
        for r in clients.cached.batch_put_from(&items).await {
            r.expect("warm put");
        }
    });

    // The ceiling: memcpy from as many distinct sources as the gets read, into as many
    // destinations as a call of that batch size fills; the faster of libc's and strata's
    // copy (`crate::ceiling`).
    let sources: Arc<Vec<Vec<u8>>> = Arc::new((0..WORKING_SET).map(|_| pattern(size)).collect());
    let mut ceilings = Vec::new();
    for &batch in &p.batches {
        let memcpy = fastest(size as usize, |way| {
            let (sources, bufs) = (Arc::clone(&sources), buffers(c, batch, size));
            let (n, t, h) = timed(rt, c, p.seconds, move |task, i| {
                let (sources, bufs) = (Arc::clone(&sources), Arc::clone(&bufs));
                async move {
                    let first = task * 7 + i as usize * batch;
                    for (j, dst) in bufs[task].lock().await.iter_mut().enumerate() {
                        way.copy(dst, &sources[(first + j) % WORKING_SET]);
                    }
                }
            });
            let ops = n * batch as u64;
            Record::new("shm", "memcpy", "copy", "ceiling")
                .size(size)
                .concurrency(c as u32)
                .batch(batch as u32)
                .timed(ops, ops * size, t, Some(&h))
        });
        ceilings.push((batch, memcpy.bytes_per_s()));
        report.add(memcpy);
    }
    let ceiling = |batch: usize| {
        ceilings
            .iter()
            .find(|(b, _)| *b == batch)
            .map_or(1.0, |(_, rate)| *rate)
    };

    // QUIC, the transport shm replaces on this host.
    let gets = |client: &Client, batch: usize| {
        let (cl, keys, bufs) = (client.clone(), Arc::clone(&keys), buffers(c, batch, size));
        timed(rt, c, p.seconds, move |task, i| {
            let (cl, keys, bufs) = (cl.clone(), Arc::clone(&keys), Arc::clone(&bufs));
            async move {
                let mut held = bufs[task].lock().await;
                let first = task * 7 + i as usize * batch;
                let names: Vec<String> = (0..batch)
                    .map(|j| keys[(first + j) % WORKING_SET].clone())
                    .collect();
                if batch == 1 {
                    let n = cl.get_into(names[0].as_bytes(), &mut held[0]).await;
                    assert_eq!(n.expect("get_into") as u64, size);
                } else {
                    let mut slices: Vec<&mut [u8]> =
                        held.iter_mut().map(|b| b.as_mut_slice()).collect();
                    for r in cl.batch_get_into(&names, &mut slices).await {
                        assert_eq!(r.expect("batch_get_into") as u64, size);
                    }
                }
            }
        })
    };
    let (n, t, h) = gets(&clients.quic, 1);
    let quic_get = Record::new("shm", "strata-quic", "get", "warm")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));
    let quic_rate = quic_get.bytes_per_s().max(1.0);
    report.add(quic_get);

    let read_ways = [
        (&clients.uncached, "lease-per-get"),
        (&clients.verified, "lease-verified"),
    ];
    for (batch, (client, phase)) in p
        .batches
        .iter()
        .flat_map(|&b| read_ways.iter().map(move |w| (b, *w)))
    {
        let (n, t, h) = gets(client, batch);
        let ops = n * batch as u64;
        let get = Record::new("shm", "strata-shm", "get", phase)
            .size(size)
            .concurrency(c as u32)
            .batch(batch as u32)
            .timed(ops, ops * size, t, Some(&h));
        let (vs_memcpy, vs_quic) = (
            get.bytes_per_s() / ceiling(batch),
            get.bytes_per_s() / quic_rate,
        );
        report.add(
            get.with("vs_memcpy", round3(vs_memcpy))
                .with("vs_quic", round3(vs_quic)),
        );
    }
    let (n, t, h) = gets(&clients.cached, 1);
    let get = Record::new("shm", "strata-shm", "get", "cached-lease")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));
    let (vs_memcpy, vs_quic) = (
        get.bytes_per_s() / ceiling(1),
        get.bytes_per_s() / quic_rate,
    );
    report.add(
        get.with("vs_memcpy", round3(vs_memcpy))
            .with("vs_quic", round3(vs_quic)),
    );

    // Puts of distinct keys: every one writes (the store evicts as it fills).
    let value = bytes::Bytes::from(value);
    let puts = |client: &Client, batch: usize, label: &'static str| {
        let (cl, v) = (client.clone(), value.clone());
        timed(rt, c, p.seconds, move |task, i| {
            let (cl, v) = (cl.clone(), v.clone());
            async move {
                let keys: Vec<String> = (0..batch)
                    .map(|j| format!("put-{label}-{size}-{c}-{task}-{i}-{j}"))
                    .collect();
                if batch == 1 {
                    cl.put_from(keys[0].as_bytes(), &v).await.expect("put");
                } else {
                    let items: Vec<(String, bytes::Bytes)> =
                        keys.into_iter().map(|k| (k, v.clone())).collect();
                    for r in cl.batch_put_from(&items).await {
                        r.expect("batch put");
                    }
                }
            }
        })
    };
    let (n, t, h) = puts(&clients.quic, 1, "quic");
    let quic_put = Record::new("shm", "strata-quic", "put", "cold")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));
    let quic_rate = quic_put.bytes_per_s().max(1.0);
    report.add(quic_put);
    for &batch in &p.batches {
        let (n, t, h) = puts(&clients.cached, batch, "shm");
        let ops = n * batch as u64;
        let put = Record::new("shm", "strata-shm", "put", "cold")
            .size(size)
            .concurrency(c as u32)
            .batch(batch as u32)
            .timed(ops, ops * size, t, Some(&h));
        let (vs_memcpy, vs_quic) = (
            put.bytes_per_s() / ceiling(batch),
            put.bytes_per_s() / quic_rate,
        );
        report.add(
            put.with("vs_memcpy", round3(vs_memcpy))
                .with("vs_quic", round3(vs_quic)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick run completes through shared memory, with its ceilings beside it.
    #[test]
    fn quick_run_measures_shm_next_to_memcpy_and_quic() {
        let mut report = Report::new();
        run(&ShmParams::quick(), &mut report);
        let recs = report.records();
        let has = |system: &str, op: &str| recs.iter().any(|r| r.system == system && r.op == op);
        assert!(has("memcpy", "copy"));
        assert!(has("strata-shm", "get") && has("strata-shm", "put"));
        assert!(has("strata-quic", "get") && has("strata-quic", "put"));
        for r in recs {
            assert!(r.ops > 0, "{:?}", r.to_json());
        }
        let batched = recs
            .iter()
            .find(|r| r.system == "strata-shm" && r.op == "get" && r.batch == 4)
            .expect("a batched get");
        assert!(batched.extra["vs_memcpy"].as_f64().unwrap() > 0.0);
    }
}

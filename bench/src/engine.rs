//! `strata-bench engine`: the in-process store against a plain memcpy, in one run.
//!
//! * put / get_into of 4 KiB, 1 MiB and 16 MiB values over a working set larger than the
//!   CPU caches, next to memcpy of the same sizes over the same number of buffers;
//! * batch_exists and prefix_len over 1024 keys (keys/s, one thread);
//! * a pressure run writing 3x the dram capacity: put p50/p99 before and during eviction,
//!   evictions and failed puts;
//! * index memory per object at 1M objects, counted by the allocator.

use std::hint::black_box;
use std::time::{Duration, Instant};

use strata_engine::{PutOptions, Store, StoreConfig, TierConfig};

use crate::ceiling::fastest;
use crate::heap;
use crate::report::{histogram, Record, Report};

/// Sizes and time bounds of one run.
#[derive(Clone, Debug)]
pub struct EngineParams {
    pub value_sizes: Vec<u64>,
    /// Bytes of values per size in the copy workloads (larger than the last-level cache).
    pub working_set: u64,
    /// Time bound of each timed loop.
    pub seconds: f64,
    /// Objects in the key-rate workloads.
    pub lookup_objects: usize,
    pub pressure_capacity: u64,
    pub pressure_value: u64,
    pub index_objects: usize,
}

impl EngineParams {
    pub fn full() -> EngineParams {
        EngineParams {
            value_sizes: vec![4 << 10, 1 << 20, 16 << 20],
            working_set: 512 << 20,
            seconds: 2.0,
            lookup_objects: 131_072,
            pressure_capacity: 256 << 20,
            pressure_value: 1 << 20,
            index_objects: 1_000_000,
        }
    }

    /// Small and fast: for the smoke test and a quick look.
    pub fn quick() -> EngineParams {
        EngineParams {
            value_sizes: vec![4 << 10, 1 << 20],
            working_set: 8 << 20,
            seconds: 0.1,
            lookup_objects: 4096,
            pressure_capacity: 8 << 20,
            pressure_value: 256 << 10,
            index_objects: 20_000,
        }
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("bench@tp_rank:0@{i:064x}").into_bytes()
}

fn store(capacity: u64, alignment: u64) -> Store {
    let mut tier = TierConfig::dram(capacity);
    tier.alignment = alignment;
    tier.populate = true; // Page faults are not what is measured.
    Store::open(StoreConfig {
        tiers: vec![tier],
        ..StoreConfig::default()
    })
    .expect("opening the bench store")
}

pub(crate) fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Runs `op(i)` for i = 0, 1, 2, ... until `max_ops` or `seconds` pass; returns
/// (ops, elapsed, latency histogram in ns).
fn timed_loop(
    max_ops: u64,
    seconds: f64,
    mut op: impl FnMut(u64),
) -> (u64, Duration, hdrhistogram::Histogram<u64>) {
    let mut h = histogram();
    let bound = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0;
    while n < max_ops {
        let t = Instant::now();
        op(n);
        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        n += 1;
        if n % 16 == 0 && start.elapsed() > bound {
            break;
        }
    }
    (n, start.elapsed(), h)
}

pub fn run(p: &EngineParams, report: &mut Report) {
    for &size in &p.value_sizes {
        copy_workloads(p, size, report);
    }
    key_rates(p, report);
    pressure(p, report);
    index_memory(p, report);
}

fn copy_workloads(p: &EngineParams, size: u64, report: &mut Report) {
    let count = (p.working_set / size).max(4) as usize;
    let value = pattern(size);
    let mut out = vec![1u8; size as usize];

    // The ceiling: memcpy over the same number of distinct, touched buffers, the faster
    // of libc's and strata's copy (`crate::ceiling`).
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|_| vec![1u8; size as usize]).collect();
    let memcpy_write = fastest(size as usize, |way| {
        let (n, t, h) = timed_loop(count as u64, p.seconds, |i| {
            way.copy(&mut bufs[i as usize], &value);
            black_box(&bufs[i as usize]);
        });
        Record::new("engine", "memcpy", "copy", "write")
            .size(size)
            .timed(n, n * size, t, Some(&h))
    });
    let memcpy_read = fastest(size as usize, |way| {
        let (n, t, h) = timed_loop(u64::MAX, p.seconds, |i| {
            way.copy(&mut out, &bufs[(i % count as u64) as usize]);
            black_box(&out);
        });
        Record::new("engine", "memcpy", "copy", "read")
            .size(size)
            .timed(n, n * size, t, Some(&h))
    });
    drop(bufs);

    let s = store(count as u64 * size + (64 << 20), 4096);
    let keys: Vec<Vec<u8>> = (0..count).map(key).collect();
    let (n, t, h) = timed_loop(count as u64, 1e6, |i| {
        s.put(&keys[i as usize], &value, PutOptions::default())
            .expect("bench put");
    });
    let put = Record::new("engine", "strata-embedded", "put", "cold")
        .size(size)
        .timed(n, n * size, t, Some(&h));
    let (n, t, h) = timed_loop(u64::MAX, p.seconds, |i| {
        s.get_into(&keys[(i % count as u64) as usize], &mut out)
            .expect("bench get");
        black_box(&out);
    });
    let get = Record::new("engine", "strata-embedded", "get_into", "warm")
        .size(size)
        .timed(n, n * size, t, Some(&h));
    assert_eq!(out, value, "bench read back wrong bytes");

    let put_ratio = put.bytes_per_s() / memcpy_write.bytes_per_s();
    let get_ratio = get.bytes_per_s() / memcpy_read.bytes_per_s();
    report.add(memcpy_write);
    report.add(
        put.with("vs_memcpy", round3(put_ratio))
            .with("objects", count),
    );
    report.add(memcpy_read);
    report.add(
        get.with("vs_memcpy", round3(get_ratio))
            .with("objects", count),
    );
}

fn key_rates(p: &EngineParams, report: &mut Report) {
    let n = p.lookup_objects;
    let s = store(n as u64 * 64 + (16 << 20), 64);
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    for k in &keys {
        s.put(k, &[7u8; 64], PutOptions::default())
            .expect("bench put");
    }
    const BATCH: usize = 1024;
    // Two key distributions for both ops, so they compare: "hot" cycles over 16 batches
    // (16K keys, index entries mostly in cache); "spread" draws 64 batches from the whole
    // index (64K keys, most lookups miss the CPU caches).
    for (phase, batches, stride) in [("hot", 16usize, 1usize), ("spread", 64, 104_729)] {
        let sets: Vec<Vec<&[u8]>> = (0..batches)
            .map(|b| {
                (0..BATCH)
                    .map(|j| &keys[(b * BATCH * stride + j * stride) % n][..])
                    .collect()
            })
            .collect();
        let (ops, t, h) = timed_loop(u64::MAX, p.seconds, |i| {
            let r = s.batch_exists(&sets[i as usize % batches]);
            debug_assert!(r.iter().all(|x| matches!(x, Ok(true))));
            black_box(r);
        });
        report.add(
            Record::new("engine", "strata-embedded", "batch_exists", phase)
                .batch(BATCH as u32)
                .timed(ops * BATCH as u64, 0, t, Some(&h))
                .with("unit", "keys"),
        );
        // The same keys as a 1024-block prompt whose every block is stored.
        let chains: Vec<Vec<[&[u8]; 1]>> = sets
            .iter()
            .map(|set| set.iter().map(|k| [*k]).collect())
            .collect();
        for lease in [false, true] {
            let (ops, t, h) = timed_loop(u64::MAX, p.seconds, |i| {
                let m = s
                    .prefix_len(&chains[i as usize % batches], lease)
                    .expect("bench prefix_len");
                assert_eq!(m.len, BATCH);
            });
            report.add(
                Record::new("engine", "strata-embedded", "prefix_len", phase)
                    .batch(BATCH as u32)
                    .timed(ops * BATCH as u64, 0, t, Some(&h))
                    .with("unit", "keys")
                    .with("lease", lease),
            );
        }
    }
}

fn pressure(p: &EngineParams, report: &mut Report) {
    let cap = p.pressure_capacity;
    let size = p.pressure_value;
    let s = store(cap, 4096);
    let value = pattern(size);
    let total = (3 * cap / size) as usize;
    let (mut before, mut during) = (histogram(), histogram());
    let (mut before_ns, mut during_ns) = (0u64, 0u64);
    let mut failed = 0u64;
    for i in 0..total {
        let written = i as u64 * size;
        let t = Instant::now();
        let ok = s.put(&key(i), &value, PutOptions::default()).is_ok();
        let ns = t.elapsed().as_nanos().max(1) as u64;
        failed += u64::from(!ok);
        // Below the watermark nothing is evicted; past the capacity every put needs room.
        if written + size <= cap * 85 / 100 {
            let _ = before.record(ns);
            before_ns += ns;
        } else if written >= cap {
            let _ = during.record(ns);
            during_ns += ns;
        }
    }
    let st = s.stats();
    let p99_ratio =
        during.value_at_quantile(0.99) as f64 / before.value_at_quantile(0.99).max(1) as f64;
    let phase = |name: &'static str, h: &hdrhistogram::Histogram<u64>, ns: u64| {
        Record::new("engine", "strata-embedded", "put", name)
            .size(size)
            .timed(h.len(), h.len() * size, Duration::from_nanos(ns), Some(h))
    };
    report.add(phase("no-eviction", &before, before_ns));
    report.add(
        phase("eviction", &during, during_ns)
            .with("evictions", st.counters.evictions)
            .with("failed", failed)
            .with("written_x_capacity", 3)
            .with("p99_vs_no_eviction", round3(p99_ratio)),
    );
}

fn index_memory(p: &EngineParams, report: &mut Report) {
    let n = p.index_objects;
    let s = store(n as u64 * 64 + (16 << 20), 64);
    let heap_before = heap::live_bytes();
    let start = Instant::now();
    for i in 0..n {
        s.put(&key(i), &[1u8; 64], PutOptions::default())
            .expect("bench put");
    }
    let elapsed = start.elapsed();
    let heap = (heap::live_bytes() - heap_before) as f64 / n as f64;
    let st = s.stats();
    let key_len = st.key_bytes as f64 / n as f64;
    report.add(
        Record::new("engine", "strata-embedded", "put", "index")
            .size(64)
            .timed(n as u64, n as u64 * 64, elapsed, None)
            .with("objects", n)
            .with("index_bytes_per_object", round3(heap - key_len))
            .with("key_bytes_per_object", round3(key_len))
            .with(
                "stats_index_bytes_per_object",
                round3(st.index_bytes_per_object),
            ),
    );
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick run completes and reports every measurement the brief's format needs.
    #[test]
    fn quick_run_reports_every_measurement() {
        let mut report = Report::new();
        run(&EngineParams::quick(), &mut report);
        let recs = report.records();
        let has = |system: &str, op: &str, phase: &str| {
            recs.iter()
                .any(|r| r.system == system && r.op == op && r.phase == phase)
        };
        assert!(has("memcpy", "copy", "read") && has("memcpy", "copy", "write"));
        assert!(
            has("strata-embedded", "get_into", "warm") && has("strata-embedded", "put", "cold")
        );
        assert!(
            has("strata-embedded", "batch_exists", "spread")
                && has("strata-embedded", "prefix_len", "spread")
        );
        assert!(
            has("strata-embedded", "put", "eviction") && has("strata-embedded", "put", "index")
        );
        for r in recs {
            let j = r.to_json();
            for field in crate::report::FIELDS {
                assert!(j.get(field).is_some(), "{field} missing in {j}");
            }
            assert!(r.ops > 0, "{j}");
        }
        let pressure = recs.iter().find(|r| r.phase == "eviction").unwrap();
        assert_eq!(
            pressure.extra["failed"], 0,
            "no put may fail under pressure"
        );
        assert!(pressure.extra["evictions"].as_u64().unwrap() > 0);
    }
}

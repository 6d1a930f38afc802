//! Writers, readers, removers, leasers and the eviction thread at once, bounded in time and
//! count. Every value read is checked against content derived from its key, so a torn value,
//! a value read from reused memory or a foreign value fails the test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata_engine::{ErrorCode, PutOptions, Store, StoreConfig, TierConfig};

const CAPACITY: u64 = 8 << 20;
const KEYS: u64 = 400;
const RUN_FOR: Duration = Duration::from_secs(3);
const MAX_OPS_PER_THREAD: u64 = 200_000;

fn key(i: u64) -> Vec<u8> {
    format!(
        "model@tp_rank:{}@{:016x}",
        i % 4,
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
    .into_bytes()
}

/// Length and bytes follow from the key alone: every put of a key writes the same value.
fn value_len(i: u64) -> usize {
    1 + (i.wrapping_mul(7919) % (96 * 1024)) as usize
}

fn fill(i: u64, buf: &mut [u8]) {
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn concurrent_operations_never_return_wrong_bytes() {
    let mut tier = TierConfig::dram(CAPACITY);
    tier.alignment = 64;
    tier.segment_size = 2 << 20;
    let config = StoreConfig {
        tiers: vec![tier],
        maintenance_interval: Some(Duration::from_millis(1)),
        lease_ttl: Duration::from_millis(20),
        shards: 16,
        ..StoreConfig::default()
    };
    let store = Store::open(config).unwrap();
    let verified = AtomicU64::new(0);
    let started = Instant::now();
    let over = |ops: u64| ops >= MAX_OPS_PER_THREAD || started.elapsed() > RUN_FOR;

    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = &store;
            s.spawn(move || {
                let mut rng = Rng(0x1234 + t);
                let mut buf = vec![0u8; 96 * 1024];
                let mut ops = 0;
                while !over(ops) {
                    let i = rng.below(KEYS);
                    let v = &mut buf[..value_len(i)];
                    fill(i, v);
                    match store.put(
                        &key(i),
                        v,
                        PutOptions {
                            pin: i % 97 == 0,
                            ..Default::default()
                        },
                    ) {
                        Ok(()) => {}
                        // LeaseExpired: a forced remove cancelled the reservation mid-put.
                        Err(e) => assert!(
                            matches!(
                                e.code(),
                                ErrorCode::AlreadyExists
                                    | ErrorCode::Busy
                                    | ErrorCode::NoSpace
                                    | ErrorCode::LeaseExpired
                            ),
                            "put: {e}"
                        ),
                    }
                    ops += 1;
                    if ops % 64 == 0 {
                        let used = store.stats().tiers[0].used;
                        assert!(used <= CAPACITY, "used {used} over capacity");
                    }
                }
            });
        }
        for t in 0..2u64 {
            let (store, verified) = (&store, &verified);
            s.spawn(move || {
                let mut rng = Rng(0x9876 + t);
                let mut buf = vec![0u8; 96 * 1024];
                let mut expect = vec![0u8; 96 * 1024];
                let mut ops = 0;
                while !over(ops) {
                    let i = rng.below(KEYS);
                    let k = key(i);
                    if ops % 8 == 0 {
                        // Whole prefix lookups and leases race with everything else too.
                        let groups: Vec<[Vec<u8>; 1]> =
                            (i..i + 4).map(|j| [key(j % KEYS)]).collect();
                        store.prefix_len(&groups, ops % 16 == 0).unwrap();
                    }
                    match store.get_into(&k, &mut buf) {
                        Ok(n) => {
                            assert_eq!(n, value_len(i), "length of key {i}");
                            fill(i, &mut expect[..n]);
                            assert!(buf[..n] == expect[..n], "wrong bytes for key {i}");
                            verified.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => assert_eq!(e.code(), ErrorCode::NotFound, "get: {e}"),
                    }
                    ops += 1;
                }
            });
        }
        {
            let store = &store;
            s.spawn(move || {
                let mut rng = Rng(0x5555);
                let mut ops = 0;
                while !over(ops) {
                    let i = rng.below(KEYS);
                    if let Err(e) = store.remove(&key(i), i % 3 == 0) {
                        assert!(
                            matches!(
                                e.code(),
                                ErrorCode::NotFound | ErrorCode::Leased | ErrorCode::Busy
                            ),
                            "remove: {e}"
                        );
                    }
                    ops += 1;
                    std::thread::yield_now();
                }
            });
        }
    });

    let st = store.stats();
    eprintln!(
        "verified reads: {}, {:?}",
        verified.load(Ordering::Relaxed),
        st.counters
    );
    assert!(
        verified.load(Ordering::Relaxed) > 100,
        "too few verified reads: {st:?}"
    );
    assert!(st.counters.evictions > 0, "the run never evicted: {st:?}");
    // Nothing leaks: every reservation ended, and a forced clear returns all the space.
    assert_eq!(st.pending, 0);
    store.remove_all(true);
    assert!(store.reclaim(Duration::from_secs(10)));
    let st = store.stats();
    assert_eq!((st.objects, st.tiers[0].used), (0, 0), "{st:?}");
}

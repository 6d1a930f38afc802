//! Random operation sequences against a simple model of the contract.
//!
//! Checked after every step: a key is visible only after put_end and then holds exactly the
//! bytes written (no torn or foreign value); used bytes never exceed capacity; leased and
//! pinned objects are never evicted; a put fails with NoSpace only when nothing evictable is
//! left; revoked, dropped and expired reservations give their space back.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use strata_engine::{
    Clock, ErrorCode, ManualClock, PutOptions, Store, StoreConfig, TierConfig, WriteReservation,
};

const CAPACITY: u64 = 256 * 1024;
const KEYS: u8 = 12;
const LEASE: Duration = Duration::from_secs(10);
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
enum Op {
    Put { key: u8, len: u32, pin: bool },
    Start { key: u8, len: u32 },
    End { key: u8 },
    Revoke { key: u8 },
    Get { key: u8 },
    Lease { key: u8 },
    Remove { key: u8, force: bool },
    Prefix { keys: Vec<u8>, lease: bool },
    Advance { ms: u32 },
    Maintain,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    let len = 1u32..48 * 1024;
    prop_oneof![
        4 => (key.clone(), len.clone(), prop::bool::weighted(0.1)).prop_map(|(key, len, pin)| Op::Put { key, len, pin }),
        2 => (key.clone(), len).prop_map(|(key, len)| Op::Start { key, len }),
        2 => key.clone().prop_map(|key| Op::End { key }),
        1 => key.clone().prop_map(|key| Op::Revoke { key }),
        3 => key.clone().prop_map(|key| Op::Get { key }),
        1 => key.clone().prop_map(|key| Op::Lease { key }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, force)| Op::Remove { key, force }),
        1 => (prop::collection::vec(key, 0..5), any::<bool>()).prop_map(|(keys, lease)| Op::Prefix { keys, lease }),
        1 => (0u32..4000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Maintain),
    ]
}

/// Value bytes derived from the key and a version, so a value from another put is caught.
fn content(key: u8, version: u32, len: u32) -> Vec<u8> {
    let mut x = (key as u64) << 32 | version as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Obj {
    version: u32,
    len: u32,
    pinned: bool,
    lease_until: u64,
}

struct Pending {
    reservation: WriteReservation,
    version: u32,
    len: u32,
    deadline: u64,
}

struct Harness {
    store: Store,
    clock: ManualClock,
    objects: HashMap<u8, Obj>,
    pending: HashMap<u8, Pending>,
    version: u32,
}

impl Harness {
    fn new() -> Harness {
        let mut tier = TierConfig::dram(CAPACITY);
        tier.alignment = 64;
        let config = StoreConfig {
            tiers: vec![tier],
            lease_ttl: LEASE,
            put_timeout: PUT_TIMEOUT,
            shards: 4,
            maintenance_interval: None,
            ..StoreConfig::default()
        };
        let (clock, manual) = Clock::manual();
        let store = Store::open_with_clock(config, clock).unwrap();
        Harness {
            store,
            clock: manual,
            objects: HashMap::new(),
            pending: HashMap::new(),
            version: 0,
        }
    }

    fn now(&self) -> u64 {
        self.store.clock().now()
    }

    fn evictable(&self, o: &Obj) -> bool {
        !o.pinned && o.lease_until <= self.now()
    }

    /// Objects the store evicted since the last step leave the model; only evictable ones may.
    fn sync(&mut self) -> Result<(), TestCaseError> {
        let gone: Vec<u8> = self
            .objects
            .keys()
            .copied()
            .filter(|k| !self.store.exists(&[*k]).unwrap())
            .collect();
        for k in gone {
            let o = &self.objects[&k];
            prop_assert!(
                self.evictable(o),
                "key {} vanished while pinned or leased",
                k
            );
            self.objects.remove(&k);
        }
        for k in 0..KEYS {
            if !self.objects.contains_key(&k) {
                prop_assert!(
                    !self.store.exists(&[k]).unwrap(),
                    "key {} visible but never committed",
                    k
                );
            }
        }
        let st = self.store.stats();
        prop_assert!(st.tiers[0].used <= CAPACITY);
        prop_assert_eq!(st.objects, self.objects.len() as u64);
        Ok(())
    }

    fn check_put_error(&self, code: ErrorCode, key: u8) -> Result<(), TestCaseError> {
        match code {
            ErrorCode::AlreadyExists => prop_assert!(self.objects.contains_key(&key)),
            ErrorCode::Busy => {
                let p = self.pending.get(&key);
                prop_assert!(
                    p.is_some_and(|p| p.deadline > self.now()),
                    "Busy without a live reservation"
                );
            }
            ErrorCode::NoSpace => {
                // Only when nothing evictable is left in the store.
                for (k, o) in &self.objects {
                    if self.store.exists(&[*k]).unwrap() {
                        prop_assert!(!self.evictable(o), "NoSpace while key {} was evictable", k);
                    }
                }
            }
            other => prop_assert!(false, "unexpected put error {:?}", other),
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Put { key, len, pin } => {
                self.version += 1;
                let v = content(key, self.version, len);
                match self.store.put(
                    &[key],
                    &v,
                    PutOptions {
                        pin,
                        ..Default::default()
                    },
                ) {
                    Ok(()) => {
                        prop_assert!(!self.objects.contains_key(&key));
                        // A stale reservation of this key was taken over.
                        self.pending.remove(&key);
                        let o = Obj {
                            version: self.version,
                            len,
                            pinned: pin,
                            lease_until: 0,
                        };
                        self.objects.insert(key, o);
                    }
                    Err(e) => self.check_put_error(e.code(), key)?,
                }
            }
            Op::Start { key, len } => {
                self.version += 1;
                match self
                    .store
                    .put_start(&[key], len as u64, PutOptions::default())
                {
                    Ok(reservation) => {
                        prop_assert!(!self.objects.contains_key(&key));
                        let deadline = self.now() + PUT_TIMEOUT.as_nanos() as u64;
                        let p = Pending {
                            reservation,
                            version: self.version,
                            len,
                            deadline,
                        };
                        self.pending.insert(key, p);
                    }
                    Err(e) => self.check_put_error(e.code(), key)?,
                }
            }
            Op::End { key } => {
                if let Some(mut p) = self.pending.remove(&key) {
                    let live = p.deadline > self.now();
                    let written = p.reservation.write_at(0, &content(key, p.version, p.len));
                    let committed = written.and_then(|_| p.reservation.commit());
                    prop_assert_eq!(committed.is_ok(), live, "{:?}", committed);
                    if live {
                        let o = Obj {
                            version: p.version,
                            len: p.len,
                            pinned: false,
                            lease_until: 0,
                        };
                        self.objects.insert(key, o);
                    }
                }
            }
            Op::Revoke { key } => {
                self.pending.remove(&key); // Drop revokes.
            }
            Op::Get { key } => match self.store.get(&[key]) {
                Ok(v) => {
                    let o = self.objects.get(&key);
                    prop_assert!(o.is_some(), "got a value for key {} the model lacks", key);
                    let o = o.unwrap();
                    prop_assert!(
                        v == content(key, o.version, o.len),
                        "key {} returned wrong bytes",
                        key
                    );
                }
                Err(e) => {
                    prop_assert_eq!(e.code(), ErrorCode::NotFound);
                    prop_assert!(
                        !self.objects.contains_key(&key) || !self.store.exists(&[key]).unwrap()
                    );
                }
            },
            Op::Lease { key } => {
                let got = self.store.get_locations(&[[key]]).pop().unwrap();
                if let Ok(lease) = got {
                    let o = self
                        .objects
                        .get_mut(&key)
                        .expect("leased a key the model lacks");
                    o.lease_until = o.lease_until.max(lease.expires_at);
                }
            }
            Op::Remove { key, force } => {
                let res = self.store.remove(&[key], force);
                match res {
                    Ok(()) => {
                        self.objects.remove(&key);
                        if let Some(p) = self.pending.remove(&key) {
                            prop_assert!(force, "unforced remove took a pending key");
                            prop_assert!(p.reservation.commit().is_err());
                        }
                    }
                    Err(e) => match e.code() {
                        ErrorCode::Leased => {
                            prop_assert!(!force && self.objects[&key].lease_until > self.now())
                        }
                        ErrorCode::Busy => prop_assert!(!force && self.pending.contains_key(&key)),
                        ErrorCode::NotFound => {
                            prop_assert!(
                                !self.objects.contains_key(&key)
                                    || !self.store.exists(&[key]).unwrap()
                            )
                        }
                        other => prop_assert!(false, "unexpected remove error {:?}", other),
                    },
                }
            }
            Op::Prefix { keys, lease } => {
                let groups: Vec<[[u8; 1]; 1]> = keys.iter().map(|&k| [[k]]).collect();
                let expected = keys
                    .iter()
                    .take_while(|k| self.objects.contains_key(k))
                    .count();
                let m = self.store.prefix_len(&groups, lease).unwrap();
                prop_assert_eq!(m.len, expected);
                if let (true, Some(until)) = (lease, m.leased_until) {
                    for k in &keys[..expected] {
                        let o = self.objects.get_mut(k).unwrap();
                        o.lease_until = o.lease_until.max(until);
                    }
                }
            }
            Op::Advance { ms } => self.clock.advance(Duration::from_millis(ms as u64)),
            Op::Maintain => {
                self.store.run_maintenance();
                let now = self.now();
                // Expired reservations are gone: their writers can no longer commit.
                let expired: Vec<u8> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(k, _)| *k)
                    .collect();
                for k in expired {
                    let p = self.pending.remove(&k).unwrap();
                    prop_assert!(p.reservation.commit().is_err());
                }
            }
        }
        self.sync()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        for op in ops {
            h.step(op)?;
        }
        // Everything returns its space: dropped reservations, forced removal of the rest.
        h.pending.clear();
        h.store.remove_all(true);
        prop_assert!(h.store.reclaim(Duration::from_secs(10)));
        let st = h.store.stats();
        prop_assert_eq!((st.objects, st.pending, st.tiers[0].used), (0, 0, 0));
        prop_assert_eq!(st.tiers[0].free_extents, 1, "free space coalesced back into one extent");
    }
}

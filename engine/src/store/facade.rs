//! The `Store` handle: what an embedder holds. Opening (the tiers, the index, what
//! persistent tiers recovered, the maintenance thread) and closing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use strata_proto::{Error, ErrorCode, Result};

use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::tier::device::DeviceTier;
use crate::tier::dram::DramTier;
use crate::tier::ssd::SsdTier;
use crate::tier::{Tier, TierKind};

use super::counters::{GlobalCounters, TierCounters};
use super::index::Shard;
use super::inner::{Inner, PaddedShard};
use super::lease_ledger::LeaseLedger;

struct Maintenance {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The store engine. Cheap to share: wrap it in an `Arc` or borrow it across scoped threads.
pub struct Store {
    pub(super) inner: Arc<Inner>,
    maintenance: Option<Maintenance>,
}

impl Store {
    /// Opens a store with the real clock.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Store::open_with_clock(config, Clock::system())
    }

    /// Opens a store on `clock` (tests use a manual one).
    pub fn open_with_clock(config: StoreConfig, clock: Clock) -> Result<Store> {
        config.validate()?;
        let mut tiers: Vec<Box<dyn Tier>> = Vec::new();
        for (i, t) in config.tiers.iter().enumerate() {
            let failed = |e: std::io::Error| {
                Error::new(
                    ErrorCode::Internal,
                    format!("{} tier {i}: {e}", t.kind.name()),
                )
            };
            let tier: Box<dyn Tier> = match (t.kind, &t.ssd) {
                (TierKind::Device, _) => {
                    let opts = t
                        .device
                        .as_ref()
                        .expect("validate() requires device options");
                    let tier = DeviceTier::open(
                        i as u8,
                        t.capacity,
                        t.segment_size,
                        t.alignment,
                        t.populate,
                        opts,
                    )
                    .map_err(|e| {
                        Error::new(e.code(), format!("device tier {i}: {}", e.message()))
                    })?;
                    Box::new(tier)
                }
                (TierKind::Dram, _) => Box::new(
                    DramTier::new(i as u8, t.capacity, t.segment_size, t.alignment, t.populate)
                        .map_err(failed)?,
                ),
                (TierKind::Ssd, Some(opts)) => Box::new(
                    SsdTier::open(i as u8, t.capacity, t.segment_size, opts).map_err(failed)?,
                ),
                (TierKind::Ssd, None) => unreachable!("validate() requires ssd options"),
            };
            tiers.push(tier);
        }
        let shards = (0..config.shards)
            .map(|_| PaddedShard(Mutex::new(Shard::new())))
            .collect();
        let started = clock.now();
        let inner = Arc::new(Inner {
            shard_mask: config.shards as u64 - 1,
            shards,
            tiers,
            clock,
            next_writer: AtomicU64::new(1),
            access_seq: AtomicU64::new(1),
            counters: GlobalCounters::default(),
            tier_counters: (0..config.tiers.len())
                .map(|_| TierCounters::default())
                .collect(),
            leases: LeaseLedger::new(config.lease_ttl, started),
            maintenance: OnceLock::new(),
            evictors: (0..config.tiers.len()).map(|_| Mutex::new(())).collect(),
            config,
        });
        inner.adopt_recovered();
        let maintenance = inner.config.maintenance_interval.map(|every| {
            let stop = Arc::new(AtomicBool::new(false));
            let handle =
                super::maintenance::spawn_maintenance(Arc::clone(&inner), Arc::clone(&stop), every);
            let _ = inner.maintenance.set(handle.thread().clone());
            Maintenance { stop, handle }
        });
        Ok(Store { inner, maintenance })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The largest value a put can store (the largest extent of a tier that takes puts).
    pub fn max_value_len(&self) -> u64 {
        self.inner.max_put_len()
    }

    /// The store's clock (lease ends and deadlines are on it).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Reaps expired reservations and evicts tiers above their high watermark, once.
    /// The background thread does this every `maintenance_interval`.
    pub fn run_maintenance(&self) {
        self.inner.maintain();
    }

    /// Waits (bounded) until extents retired so far are reclaimed, so `used` reflects only
    /// live objects. Returns false if a reader kept them pinned past the bound.
    pub fn reclaim(&self, within: Duration) -> bool {
        self.inner.reclaim(within)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(m) = self.maintenance.take() {
            m.stop.store(true, Ordering::Relaxed);
            m.handle.thread().unpark();
            let _ = m.handle.join();
        }
        // Let retired extents finish their frees (an ssd record's tombstone) before the
        // tiers close, so what was removed stays removed.
        self.inner.reclaim(Duration::from_millis(200));
    }
}

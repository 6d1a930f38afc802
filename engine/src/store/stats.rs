//! The store's figures as a snapshot: per tier, the index's memory, the counters.

use std::sync::atomic::Ordering;

use crate::tier::{TierKind, TierStats};

use super::counters::OpCounters;
use super::facade::Store;
use super::inner::{Inner, PaddedShard};
use super::lease_ledger::LeaseCounts;

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreCounters {
    pub ops: OpCounters,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub demotions: u64,
    /// Objects moved up a tier because they were read again (ssd to dram).
    pub promotions: u64,
    /// Objects dropped because their stored bytes failed their checksum.
    pub corrupt: u64,
    /// Reservations cancelled by their writer (or by the end of its connection).
    pub revoked_reservations: u64,
    /// Objects dropped because their device segment was unmounted.
    pub unmounted_objects: u64,
    pub expired_reservations: u64,
    pub no_space: u64,
}

/// A snapshot of the store's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreStats {
    /// Per tier, top first.
    pub tiers: Vec<TierStats>,
    /// Complete objects in all tiers.
    pub objects: u64,
    /// Pending reservations.
    pub pending: u64,
    /// Heap bytes of the index (table, entries, allocator bookkeeping), keys excluded.
    pub index_bytes: u64,
    /// Bytes of keys held by the index.
    pub key_bytes: u64,
    /// `index_bytes / (objects + pending)`, keys excluded.
    pub index_bytes_per_object: f64,
    pub counters: StoreCounters,
}

impl Store {
    /// Figures per tier, index memory and counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// The kind of tier `t`, if there is such a tier.
    pub fn tier_kind(&self, t: u8) -> Option<TierKind> {
        self.inner.tiers.get(t as usize).map(|tier| tier.kind())
    }

    /// Read leases granted, active now, and expired.
    pub fn lease_counts(&self) -> LeaseCounts {
        self.inner.leases.counts(self.inner.clock.now())
    }
}

impl Inner {
    pub(crate) fn stats(&self) -> StoreStats {
        let mut objects = [0u64; crate::tier::MAX_TIERS];
        let mut pending = 0;
        let mut index_bytes = 0u64;
        let mut key_bytes = 0;
        let mut c = StoreCounters::default();
        for padded in self.shards.iter() {
            let s = padded.0.lock();
            for (t, n) in s.objects.iter().enumerate() {
                objects[t] += n;
            }
            pending += s.pending_count;
            index_bytes += s.index_bytes() as u64;
            key_bytes += s.key_bytes;
            c.ops.add(&s.counters);
        }
        index_bytes += (self.shards.len() * std::mem::size_of::<PaddedShard>()) as u64;
        let g = &self.counters;
        c.evictions = g.evictions.load(Ordering::Relaxed);
        c.evicted_bytes = g.evicted_bytes.load(Ordering::Relaxed);
        c.demotions = g.demotions.load(Ordering::Relaxed);
        c.promotions = g.promotions.load(Ordering::Relaxed);
        c.unmounted_objects = g.unmounted_objects.load(Ordering::Relaxed);
        c.corrupt = g.corrupt.load(Ordering::Relaxed);
        c.expired_reservations = g.expired_reservations.load(Ordering::Relaxed);
        c.revoked_reservations = g.revoked_reservations.load(Ordering::Relaxed);
        c.no_space = g.no_space.load(Ordering::Relaxed);
        let tiers = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                index_bytes += t.bookkeeping_bytes() as u64;
                let (segments, a) = t.alloc_stats();
                let n = &self.tier_counters[i];
                TierStats {
                    kind: t.kind(),
                    capacity: t.capacity(),
                    used: t.used(),
                    objects: objects[i],
                    segments,
                    free_extents: a.free_extents,
                    largest_free_extent: a.largest_free,
                    fragmentation: a.fragmentation(),
                    high_watermark: (t.capacity() as f64
                        * self.config.eviction_high_watermark_ratio)
                        as u64,
                    evictions: n.evictions.load(Ordering::Relaxed),
                    evicted_bytes: n.evicted_bytes.load(Ordering::Relaxed),
                    demotions: n.demotions.load(Ordering::Relaxed),
                    promotions: n.promotions.load(Ordering::Relaxed),
                    io: t.io_figures(),
                }
            })
            .collect();
        let total: u64 = objects.iter().sum();
        StoreStats {
            tiers,
            objects: total,
            pending,
            index_bytes,
            key_bytes,
            index_bytes_per_object: index_bytes as f64 / (total + pending).max(1) as f64,
            counters: c,
        }
    }
}

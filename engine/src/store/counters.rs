//! The counters operations bump as they go: per shard (under its lock), per tier and
//! store-wide (atomics). `stats` reads them into a snapshot.

use std::sync::atomic::AtomicU64;

/// Counters of the operations callers make. Each shard keeps its own, under its lock, so
/// counting costs no shared cache line; `Store::stats` sums them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpCounters {
    pub puts: u64,
    pub put_bytes: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub get_bytes: u64,
    pub removes: u64,
}

impl OpCounters {
    pub(crate) fn add(&mut self, o: &OpCounters) {
        self.puts += o.puts;
        self.put_bytes += o.put_bytes;
        self.get_hits += o.get_hits;
        self.get_misses += o.get_misses;
        self.get_bytes += o.get_bytes;
        self.removes += o.removes;
    }
}

#[derive(Default)]
pub(crate) struct GlobalCounters {
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub demotions: AtomicU64,
    pub promotions: AtomicU64,
    pub corrupt: AtomicU64,
    pub unmounted_objects: AtomicU64,
    pub expired_reservations: AtomicU64,
    pub revoked_reservations: AtomicU64,
    pub no_space: AtomicU64,
}

/// Counters of one tier, indexed like the tiers.
#[derive(Default)]
pub(crate) struct TierCounters {
    /// Objects that left this tier to make room (demoted or dropped).
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Objects moved from this tier to the one below.
    pub demotions: AtomicU64,
    /// Objects moved into this tier from the one below because they were read again.
    pub promotions: AtomicU64,
}

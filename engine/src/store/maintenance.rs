//! The maintenance thread: every `maintenance_interval`, or at once when a put pushes a
//! tier over its high watermark, it reaps expired reservations and silent mounts and
//! evicts each tier back under its watermark, off the callers' paths.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_epoch as epoch;

use super::index::key_hash;
use super::inner::Inner;

pub(crate) fn spawn_maintenance(
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("strata-maintenance".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                inner.maintain();
                // Woken early by a put that pushed a tier over its watermark.
                std::thread::park_timeout(every);
            }
        })
        .expect("spawning the maintenance thread")
}

impl Inner {
    /// One maintenance pass: reap expired reservations, then bring every tier above its high
    /// watermark down by `eviction_ratio` of its capacity (at least to the watermark).
    pub(crate) fn maintain(&self) {
        self.reap_expired_reservations();
        self.reap_silent_mounts();
        for i in 0..self.tiers.len() {
            if self.above_watermark(i) {
                let t = &self.tiers[i];
                let cap = t.capacity() as f64;
                let live = t.used().saturating_sub(t.retiring());
                let to_watermark = live as f64 - cap * self.config.eviction_high_watermark_ratio;
                let target = (cap * self.config.eviction_ratio).max(to_watermark) as u64;
                self.evict(i, target);
            }
        }
        epoch::pin().flush();
        for t in &self.tiers {
            t.reclaim_retired();
        }
    }

    pub(crate) fn reap_expired_reservations(&self) {
        let now = self.clock.now();
        let guard = epoch::pin();
        let mut expired = Vec::new();
        for padded in self.shards.iter() {
            let mut shard = padded.0.lock();
            if shard.pending_count == 0 {
                continue;
            }
            expired.clear();
            shard.expired_reservations(now, &mut expired);
            for &(slot, _) in &expired {
                let hash = key_hash(&shard.entry(slot).key);
                self.drop_entry(&mut shard, hash, slot, &guard);
            }
            self.counters
                .expired_reservations
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
        }
    }
}

//! Promotion: a value read again from a lower tier moves up into the tier above.

use std::sync::atomic::Ordering;

use crossbeam_epoch as epoch;

use crate::tier::Extent;

use super::index::State;
use super::inner::{Inner, ObjectAt};

/// Reads of an object on a lower tier after which it is moved up (the second hit: one
/// scan over cold data does not flush the memory tier).
pub(crate) const PROMOTE_AFTER_HITS: u8 = 2;

impl Inner {
    /// Copies a value just read from a lower tier into the tier above and points the
    /// object there, if that tier has free space and the object is unchanged. Returns the
    /// copy's extent when it moved.
    ///
    /// The source stays readable for whoever was leased it. From a tier read through I/O
    /// (ssd) it becomes the object's shadow ([`Entry::shadow`](index::Entry::shadow)):
    /// the bytes stay where the lease said, and demoting the object again writes nothing.
    /// Kept only while that tier is under its watermark, since its eviction cannot reach a
    /// shadow. Otherwise the source is retired (in-process readers keep it through the
    /// epoch), which a lease forbids: a leased object is then left where it is.
    ///
    /// The tier above may be past its watermark: a working set larger than memory keeps
    /// it there, and refusing promotion then would leave hot objects on disk for good.
    /// The promotion takes headroom and wakes maintenance, which demotes the least
    /// recently used objects back under the watermark off the reader's path.
    pub(crate) fn promote(&self, at: ObjectAt, src: Extent, value: &[u8]) -> Option<Extent> {
        let up = (src.tier as usize).checked_sub(1)?;
        let tier = &self.tiers[up];
        if !tier.accepts_puts() {
            return None;
        }
        let dst = tier.allocate(src.len)?;
        if self.above_watermark(up) {
            self.wake_maintenance();
        }
        let guard = epoch::pin();
        let mut written = dst.pin(&guard);
        let copied = tier.write(&mut written, 0, value);
        let dst = written.extent();
        let shadow_room = !self.read_in_place(src.tier) && !self.above_watermark(src.tier as usize);
        let now = self.clock.now();
        let mut shard = self.shard(at.hash);
        // Some(keep the source as shadow) when the object may move.
        let movable = shard
            .live(at.slot, at.generation)
            .filter(|e| e.state == State::Complete && e.extent == src)
            .and_then(|e| {
                let keep = shadow_room && e.shadow().is_none();
                (keep || e.lease_until <= now).then_some(keep)
            });
        let Some(keep) = movable.filter(|_| copied.is_ok()) else {
            drop(shard);
            tier.retire(dst, &guard);
            return None;
        };
        if keep {
            shard.move_to_keeping(at.slot, dst, Some(src));
        } else {
            shard.move_to(at.slot, dst);
        }
        drop(shard);
        if !keep {
            self.tiers[src.tier as usize].retire(src, &guard);
        }
        self.counters.promotions.fetch_add(1, Ordering::Relaxed);
        self.tier_counters[up]
            .promotions
            .fetch_add(1, Ordering::Relaxed);
        Some(dst)
    }
}

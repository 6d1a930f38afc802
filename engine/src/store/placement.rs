//! Placement: which tier a new value goes to, and making room there (synchronous
//! eviction, waiting for retired space) when it is full.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_epoch as epoch;
use strata_proto::limits::MAX_VALUE_LEN;
use strata_proto::msg::Placement;
use strata_proto::{Error, ErrorCode, Result};

use crate::tier::{Fresh, TierKind};

use super::inner::Inner;

/// How long a put waits for the retired space of a tier that has another below it to
/// take the value instead: readers usually unpin within microseconds, so space that has
/// not come back by then is held by a reader that is waiting on something slow.
const UPPER_TIER_WAIT: Duration = Duration::from_millis(5);

impl Inner {
    /// The largest value a put can place.
    pub(crate) fn max_put_len(&self) -> u64 {
        self.tiers
            .iter()
            .filter(|t| t.accepts_puts())
            .map(|t| t.max_value_len())
            .max()
            .unwrap_or(0)
            .min(MAX_VALUE_LEN)
    }

    /// Finds an extent for `len` bytes: the highest tier under its high watermark that has
    /// room, else the first that can hold it, evicting synchronously when it is full.
    /// `placement` narrows the choice to one kind of tier.
    pub(crate) fn place(&self, len: u64, placement: Placement) -> Result<Fresh> {
        let wanted = |kind: TierKind| match placement {
            Placement::Auto => true,
            Placement::Device => kind == TierKind::Device,
            Placement::Dram => kind == TierKind::Dram,
        };
        // No collected list: this runs on every put.
        let candidates = || {
            (0..self.tiers.len()).filter(|&i| {
                let t = &self.tiers[i];
                t.accepts_puts() && wanted(t.kind()) && len <= t.max_value_len()
            })
        };
        if placement != Placement::Auto && candidates().next().is_none() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("the put asks for the {placement:?} tier, which this store does not have or which cannot hold {len} bytes"),
            ));
        }
        for i in candidates() {
            if !self.above_watermark(i) {
                if let Some(extent) = self.tiers[i].allocate(len) {
                    if self.above_watermark(i) {
                        self.wake_maintenance();
                    }
                    return Ok(extent);
                }
            }
        }
        let last = candidates().last();
        for i in candidates() {
            // A tier with another below it to take the put waits only briefly for its
            // retired space: a reader held up for longer holds it back, and the next tier
            // may have room now.
            let wait = if Some(i) == last {
                self.config.put_timeout
            } else {
                UPPER_TIER_WAIT
            };
            if let Some(extent) = self.allocate_evicting(i, len, wait) {
                return Ok(extent);
            }
        }
        self.counters.no_space.fetch_add(1, Ordering::Relaxed);
        let held: u64 = candidates().map(|i| self.tiers[i].retiring()).sum();
        let message = if held > 0 && epoch::is_pinned() {
            format!(
                "no tier has {len} free bytes and nothing evictable is left; {held} bytes already evicted come back only once this thread drops the read guard it holds"
            )
        } else if held > 0 {
            format!(
                "no tier has {len} free bytes and nothing evictable is left; {held} bytes already evicted are still held by readers after waiting the put timeout ({:?})",
                self.config.put_timeout
            )
        } else {
            format!("no tier has {len} free bytes and nothing evictable is left (all leased, pinned or pending)")
        };
        Err(Error::new(ErrorCode::NoSpace, message))
    }

    /// Allocates in tier `i`, evicting its least recently used objects as needed. `None`
    /// only when nothing evictable is left and the space already evicted did not come back
    /// within `wait` (the put timeout, unless a tier below can take the value).
    ///
    /// Evicted bytes are retired, not freed: they return once every thread pinned before
    /// the eviction unpins (a reader mid-copy, or mid-read from a stalled disk). While at
    /// least `len` bytes are on their way back, the put waits for them rather than evicting
    /// more: the epoch is global, so whatever it evicted next would wait behind the same
    /// reader, and the tier would be emptied for nothing.
    pub fn allocate_evicting(&self, i: usize, len: u64, wait: Duration) -> Option<Fresh> {
        let tier = &self.tiers[i];
        // Read the clock only once a put has to wait: the common put allocates at once.
        let mut waiting_since: Option<std::time::Instant> = None;
        loop {
            if let Some(extent) = tier.allocate(len) {
                if self.above_watermark(i) {
                    self.wake_maintenance();
                }
                return Some(extent);
            }
            let started = *waiting_since.get_or_insert_with(std::time::Instant::now);
            // A caller pinned itself (holding a read guard) holds back the very space it
            // would wait for: it does not wait.
            let may_wait = || !epoch::is_pinned() && started.elapsed() < wait;
            if tier.retiring() >= len {
                if !may_wait() {
                    return None;
                }
                self.wait_for_retired(i, started);
                continue;
            }
            let Some(_evicting) = self.evictors[i].try_lock() else {
                // Another put or maintenance is evicting this tier: wait for it, then
                // take from the space it freed.
                drop(self.evictors[i].lock());
                continue;
            };
            if let Some(extent) = tier.allocate(len) {
                return Some(extent); // freed between the attempt above and the lock
            }
            let target = len.max((tier.capacity() as f64 * self.config.eviction_ratio) as u64);
            if self.evict_locked(i, target) == 0 {
                if tier.retiring() == 0 || !may_wait() {
                    return None;
                }
                // Nothing left to evict, but some space is still on its way back.
                drop(_evicting);
                self.wait_for_retired(i, started);
            }
        }
    }

    /// One step of waiting for tier `i`'s retired space: helps the epoch along, reclaims
    /// what it can, then yields (for the first millisecond, as readers usually unpin within
    /// microseconds) or sleeps (a reader held up by the disk can take seconds).
    pub(crate) fn wait_for_retired(&self, i: usize, waiting_since: std::time::Instant) {
        epoch::pin().flush();
        self.tiers[i].reclaim_retired();
        if waiting_since.elapsed() < Duration::from_millis(1) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn above_watermark(&self, i: usize) -> bool {
        let t = &self.tiers[i];
        let live = t.used() - t.retiring().min(t.used());
        live as f64 > t.capacity() as f64 * self.config.eviction_high_watermark_ratio
    }

    pub(crate) fn wake_maintenance(&self) {
        if let Some(t) = self.maintenance.get() {
            t.unpark();
        }
    }
}

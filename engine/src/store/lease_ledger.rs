//! Counts read leases by the time they end, so how many are active and how many ran out
//! are known at any moment without scanning the index.
//!
//! Every lease the store grants lasts one lease TTL, so its end falls within a TTL of now.
//! The ledger keeps a ring of counters, one per *granule* (1/64 of the TTL) of end time.
//! A grant adds one to the granule of its end; a renewal moves the lease from the granule of
//! its old end to that of its new one; a granule whose time has passed is *drained*: its
//! count becomes leases expired. The ring holds twice the slots a TTL spans, so a granule
//! is drained (on the next grant or read after it passes) before its slot comes round again.
//!
//! The counts are exact up to one granule of end time, with one known approximation: a
//! leased object removed with force still counts as active until its lease's end.
//! Everything is atomics, off the shard locks: the lease path pays two relaxed adds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Granules per lease TTL.
const GRANULES_PER_TTL: u64 = 64;
/// Ring slots: enough that a slot not yet drained is never reused.
const SLOTS: usize = 4 * GRANULES_PER_TTL as usize;

/// Leases granted, active and expired, by end time.
pub(crate) struct LeaseLedger {
    granule_ns: u64,
    /// Leases ending in each granule (by granule number modulo the ring). A slot may go
    /// briefly negative when a renewal races the drain of its old granule; the sums stay
    /// right.
    slots: Box<[AtomicI64]>,
    /// Granules below this number are drained.
    drained_below: AtomicU64,
    drain: Mutex<()>,
    granted: AtomicU64,
    expired: AtomicI64,
}

/// What the ledger reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Leases granted, renewals included.
    pub granted: u64,
    /// Leases whose end has not passed.
    pub active: u64,
    /// Leases that reached their end without being renewed.
    pub expired: u64,
}

impl LeaseLedger {
    /// A ledger for leases of `ttl`, on a clock now reading `now` (ns).
    pub fn new(ttl: Duration, now: u64) -> LeaseLedger {
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let granule_ns = (ttl_ns / GRANULES_PER_TTL).max(1_000_000);
        LeaseLedger {
            granule_ns,
            slots: (0..SLOTS).map(|_| AtomicI64::new(0)).collect(),
            drained_below: AtomicU64::new(now / granule_ns),
            drain: Mutex::new(()),
            granted: AtomicU64::new(0),
            expired: AtomicI64::new(0),
        }
    }

    fn slot(&self, end: u64) -> &AtomicI64 {
        &self.slots[((end / self.granule_ns) % SLOTS as u64) as usize]
    }

    /// Starts recording leases granted at `now` that all end at `until` (one call of
    /// get_locations or prefix_len): the counts reach the ledger in a few atomic adds when
    /// the batch drops, not in a few per key.
    pub fn grants(&self, now: u64, until: u64) -> LeaseGrants<'_> {
        self.drain_passed(now);
        LeaseGrants {
            ledger: self,
            now,
            until,
            until_granule_start: until - until % self.granule_ns,
            granted: 0,
            added: 0,
            moved_from: (0, 0),
        }
    }
    /// The counts at `now`.
    pub fn counts(&self, now: u64) -> LeaseCounts {
        self.drain_passed(now);
        let active: i64 = self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        LeaseCounts {
            granted: self.granted.load(Ordering::Relaxed),
            active: active.max(0) as u64,
            expired: self.expired.load(Ordering::Relaxed).max(0) as u64,
        }
    }

    /// Moves the counts of every granule that has fully passed into `expired`.
    fn drain_passed(&self, now: u64) {
        let current = now / self.granule_ns;
        if self.drained_below.load(Ordering::Acquire) >= current {
            return;
        }
        // One drainer at a time; a grant that finds it busy goes on (the drainer catches
        // up within this granule).
        let Some(_drain) = self.drain.try_lock() else {
            return;
        };
        let from = self.drained_below.load(Ordering::Acquire);
        // After a long quiet spell, one pass over the ring drains everything.
        let from = from.max(current.saturating_sub(SLOTS as u64));
        let mut ended = 0;
        for g in from..current {
            ended += self.slots[(g % SLOTS as u64) as usize].swap(0, Ordering::Relaxed);
        }
        self.expired.fetch_add(ended, Ordering::Relaxed);
        self.drained_below.store(current, Ordering::Release);
    }
}

/// Leases granted by one call, applied to the ledger when dropped.
pub(crate) struct LeaseGrants<'a> {
    ledger: &'a LeaseLedger,
    now: u64,
    until: u64,
    /// Where `until`'s granule begins: a lease ending at or after it moves nowhere.
    until_granule_start: u64,
    granted: u64,
    /// Leases that now end at `until` and did not before.
    added: i64,
    /// Leases that moved to `until` from a live end: that end's granule, and how many.
    moved_from: (u64, i64),
}

impl LeaseGrants<'_> {
    /// One object leased until `until`; its lease ended at `before` (0: never leased).
    pub fn grant(&mut self, before: u64) {
        self.granted += 1;
        // No division on the common path (a renewal within the granule): it is most keys.
        if before >= self.until_granule_start {
            return; // Already ends in the same granule or later: nothing moves.
        }
        if before > self.now {
            let from = before / self.ledger.granule_ns;
            if self.moved_from.0 != from {
                self.take_moved();
                self.moved_from.0 = from;
            }
            self.moved_from.1 += 1;
        }
        self.added += 1;
    }

    fn take_moved(&mut self) {
        let (from, n) = std::mem::take(&mut self.moved_from);
        if n != 0 {
            let slot = &self.ledger.slots[(from % SLOTS as u64) as usize];
            slot.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Drop for LeaseGrants<'_> {
    fn drop(&mut self) {
        if self.granted == 0 {
            return;
        }
        self.ledger
            .granted
            .fetch_add(self.granted, Ordering::Relaxed);
        self.take_moved();
        if self.added != 0 {
            self.ledger
                .slot(self.until)
                .fetch_add(self.added, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);
    const MS: u64 = 1_000_000;

    impl LeaseLedger {
        /// One lease, granted alone.
        fn grant(&self, before: u64, until: u64, now: u64) {
            self.grants(now, until).grant(before);
        }
    }

    #[test]
    fn a_batch_counts_like_its_leases_one_by_one() {
        let ttl = TTL.as_nanos() as u64;
        let (one, batch) = (LeaseLedger::new(TTL, 0), LeaseLedger::new(TTL, 0));
        // Leases of various ends, then a batch at 3 s renewing them with fresh ones.
        let befores = [
            0,
            ttl,
            ttl + 5 * MS,
            2 * MS + ttl / 2,
            0,
            4 * 1000 * MS + ttl,
        ];
        for &b in befores.iter().filter(|&&b| b > 0) {
            one.grant(0, b, b - ttl.min(b));
            batch.grant(0, b, b - ttl.min(b));
        }
        let now = 3000 * MS;
        let until = now + ttl;
        for &b in &befores {
            one.grant(b, until, now);
        }
        let mut grants = batch.grants(now, until);
        for &b in &befores {
            grants.grant(b);
        }
        drop(grants);
        for t in [now, now + ttl / 2, until + 2 * one.granule_ns, 10 * ttl] {
            assert_eq!(one.counts(t), batch.counts(t), "at {t}");
        }
    }

    #[test]
    fn grants_are_active_until_their_end_then_expired() {
        let ledger = LeaseLedger::new(TTL, 0);
        let ttl = TTL.as_nanos() as u64;
        ledger.grant(0, ttl, 0);
        ledger.grant(0, 5 * MS + ttl, 5 * MS);
        let c = ledger.counts(ttl - MS);
        assert_eq!((c.granted, c.active, c.expired), (2, 2, 0));
        // Past both ends (plus a granule of slack).
        let c = ledger.counts(2 * ttl);
        assert_eq!((c.granted, c.active, c.expired), (2, 0, 2));
    }

    #[test]
    fn a_renewal_moves_the_lease_rather_than_adding_one() {
        let ledger = LeaseLedger::new(TTL, 0);
        let ttl = TTL.as_nanos() as u64;
        ledger.grant(0, ttl, 0);
        let later = ttl / 2;
        ledger.grant(ttl, later + ttl, later);
        let c = ledger.counts(ttl + 2 * ledger.granule_ns);
        assert_eq!(
            (c.granted, c.active, c.expired),
            (2, 1, 0),
            "renewed past its first end"
        );
        let c = ledger.counts(later + ttl + 2 * ledger.granule_ns);
        assert_eq!((c.active, c.expired), (0, 1), "one lease, expired once");
    }

    #[test]
    fn a_lease_taken_after_its_old_one_ended_counts_both() {
        let ledger = LeaseLedger::new(TTL, 0);
        let ttl = TTL.as_nanos() as u64;
        ledger.grant(0, ttl, 0);
        let later = 2 * ttl;
        ledger.grant(ttl, later + ttl, later);
        let c = ledger.counts(later + 1);
        assert_eq!((c.granted, c.active, c.expired), (2, 1, 1));
    }

    #[test]
    fn long_quiet_spells_drain_everything_once() {
        let ledger = LeaseLedger::new(TTL, 0);
        let ttl = TTL.as_nanos() as u64;
        for i in 0..100 {
            ledger.grant(0, i * MS + ttl, i * MS);
        }
        let c = ledger.counts(1000 * ttl);
        assert_eq!((c.active, c.expired), (0, 100));
        ledger.grant(0, 1000 * ttl + ttl, 1000 * ttl);
        let c = ledger.counts(1000 * ttl + 1);
        assert_eq!((c.granted, c.active, c.expired), (101, 1, 100));
    }
}

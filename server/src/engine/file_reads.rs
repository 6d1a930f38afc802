//! Leases whose holders read the ssd files themselves: a same-host client given the
//! tier's files (the shared-memory transport's offer) reads a leased ssd record's value
//! straight from the file, so the server sees the lease and nothing else of the read.
//!
//! Two things a get does on its way through the server have to happen at the lease
//! instead: the read counts as a hit, and an object read often enough on ssd moves up.
//! The move needs the bytes, so the server reads the record once itself, moves the object
//! and hands the reader a lease on the dram copy (its lease on the ssd record stays good:
//! the record is kept as the object's shadow or, if it cannot be, the object stays).

use crossbeam_epoch as epoch;
use strata_proto::{ErrorCode, Result};

use super::index::{key_hash, State};
use super::{nanos, ObjectAt, Store, PROMOTE_AFTER_HITS};
use crate::lease::ReadLease;
use crate::tier::Extent;

impl Store {
    /// Counts a read of `key` from its record at `extent` (just leased, on a tier read
    /// through I/O) by the lease holder itself, as a get's hit. True when that makes the
    /// object due to move up: call [`Store::promote_for_file_reader`] (it blocks on the
    /// device) before the holder reads.
    pub fn count_file_read(&self, key: &[u8], extent: Extent) -> bool {
        let hash = key_hash(key);
        let mut shard = self.inner.shard(hash);
        let Some(slot) = shard.find(hash, key) else {
            return false;
        };
        if shard.entry(slot).extent != extent {
            return false; // moved since the lease: its shadow is what was leased
        }
        shard.hit(slot);
        extent.tier > 0 && shard.entry(slot).hits >= PROMOTE_AFTER_HITS
    }

    /// Moves `key` up from its record at `extent`, reading the record (blocks on the
    /// device), and leases the copy it now has in memory. `None` when it stays where it
    /// is (moved or removed meanwhile, no room above): the caller's lease on `extent`
    /// still holds. `Corrupt` when the record failed its checksum: the object is dropped,
    /// and the reader must not read it.
    pub fn promote_for_file_reader(&self, key: &[u8], extent: Extent) -> Option<Result<ReadLease>> {
        let hash = key_hash(key);
        // Pin before the lookup: the extent cannot be reclaimed while it is read.
        let pin = epoch::pin();
        let at = {
            let shard = self.inner.shard(hash);
            let slot = shard.find(hash, key)?;
            let e = shard.entry(slot);
            if e.state != State::Complete || e.extent != extent {
                return None;
            }
            ObjectAt {
                hash,
                slot,
                generation: e.generation,
            }
        };
        let mut value = vec![0u8; extent.len as usize];
        // SAFETY: the object was found at `extent` after the pin, so the extent is not
        // reclaimed while the pin lives; complete values are never written; `value` is
        // exactly the extent's length.
        let read = unsafe { self.inner.tiers[extent.tier as usize].read(&extent, &mut value) };
        drop(pin);
        if let Err(e) = read {
            if e.code() != ErrorCode::Corrupt {
                return None; // the reader's own read will tell
            }
            self.inner.drop_corrupt(at, extent);
            return Some(Err(e));
        }
        self.inner.promote(at, extent, &value);
        let now = self.inner.clock.now();
        let until = now.saturating_add(nanos(self.inner.config.lease_ttl));
        let mut grants = self.inner.leases.grants(now, until);
        let mut shard = self.inner.shard(hash);
        let e = shard.live(at.slot, at.generation)?;
        if e.state != State::Complete
            || e.extent == extent
            || !self.inner.read_in_place(e.extent.tier)
        {
            return None; // not moved (no room, or a lease kept it)
        }
        let e = shard.entry_mut(at.slot);
        grants.grant(e.lease_until);
        e.lease(until);
        Some(Ok(ReadLease {
            extent: e.extent,
            checksum: e.tag,
            expires_at: e.lease_until,
        }))
    }

    /// The files of every tier that has them, as `(tier index, file)`: what the
    /// shared-memory transport hands to same-host clients besides the segments.
    pub fn shared_files(&self) -> Vec<(u8, crate::tier::SharedFile<'_>)> {
        self.inner
            .tiers
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.shared_files().into_iter().map(move |f| (i as u8, f)))
            .collect()
    }
}

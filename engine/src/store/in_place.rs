//! Values reached in place by a transfer that outlives any one epoch pin: the data plane
//! sends a value from its tier's memory and receives a put into its reservation, a socket
//! buffer at a time.
//!
//! A socket transfer cannot hold an epoch pin throughout (a slow peer would hold back every
//! reclamation in the process). Instead each step pins, checks that the object still lives
//! where the transfer found it, and works on the bytes while pinned, so a step never
//! touches memory that was retired and reused; between steps nothing is held. A step is
//! one non-blocking socket call, so a pin lasts one kernel copy of what the socket buffer
//! holds.

use std::ops::Range;

use crossbeam_epoch as epoch;
use strata_proto::msg::Location;
use strata_proto::{validate_key, Error, ErrorCode, Result};

use super::facade::Store;
use super::index::key_hash;
use super::inner::ObjectAt;
use super::lease::WriterId;
use super::promote::PROMOTE_AFTER_HITS;
use crate::tier::{Extent, PinnedRead};

fn out_of_extent(range: &Range<u64>, len: u64) -> Error {
    let msg = format!(
        "bytes {}..{} are not within a {len}-byte value",
        range.start, range.end
    );
    Error::new(ErrorCode::InvalidArgument, msg)
}

fn moved() -> Error {
    Error::new(
        ErrorCode::LeaseExpired,
        "the value is no longer where the lease found it (removed with force, or the lease \
         ended and it was evicted)",
    )
}

impl Store {
    /// Runs `f` on bytes `range` of the value `key` holds at `at` (a leased location), in
    /// place and under an epoch pin. `Ok(None)` when the tier is not host memory (read it
    /// with [`Store::read_value_at`]); `LeaseExpired` when `key` no longer has a complete
    /// value at `at`. Counts no hit: the lease that named `extent` did.
    pub fn with_value_bytes<R>(
        &self,
        key: &[u8],
        at: &Location,
        range: Range<u64>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        if range.start > range.end || range.end > at.len {
            return Err(out_of_extent(&range, at.len));
        }
        // Pin first: if the check below finds the object in place, its extent cannot be
        // reclaimed before the pin drops.
        let pin = epoch::pin();
        let extent = self.find_in_place(key, at, &pin)?;
        let tier = &self.inner.tiers[extent.extent().tier as usize];
        let Some(bytes) = tier.host_bytes(extent) else {
            return Ok(None);
        };
        Ok(Some(f(&bytes[range.start as usize..range.end as usize])))
    }

    /// Copies the whole value `key` holds at `at` into `buf` (exactly its length),
    /// from any tier: the data plane's path for tiers read through I/O or device copies.
    /// Blocks on the device; `LeaseExpired` as in [`Store::with_value_bytes`].
    pub fn read_value_at(&self, key: &[u8], at: &Location, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 != at.len {
            return Err(out_of_extent(&(0..buf.len() as u64), at.len));
        }
        let pin = epoch::pin();
        let pinned = self.find_in_place(key, at, &pin)?;
        let extent = pinned.extent();
        let tier = &self.inner.tiers[extent.tier as usize];
        let read = tier.read(pinned, buf);
        if read.is_ok() && !self.inner.read_in_place(extent.tier) {
            self.read_through_io(key, extent, buf);
        }
        if let Err(e) = &read {
            if e.code() == ErrorCode::Corrupt {
                let hash = key_hash(key);
                let shard = self.inner.shard(hash);
                if let Some(slot) = shard.find(hash, key) {
                    let found = ObjectAt {
                        hash,
                        slot,
                        generation: shard.entry(slot).generation,
                    };
                    drop(shard);
                    self.inner.drop_corrupt(found, extent);
                }
            }
        }
        read
    }

    /// Counts a read of `key`'s bytes at `extent` (a tier read through I/O, just copied
    /// into `value`) as a hit, as a get does, and promotes the object once it is read
    /// often enough there: a value read only through the data plane would otherwise never
    /// leave the disk however hot it is (the lease counted no hit; see `get_locations`).
    fn read_through_io(&self, key: &[u8], extent: Extent, value: &[u8]) {
        let hash = key_hash(key);
        let mut shard = self.inner.shard(hash);
        let Some(slot) = shard.find(hash, key) else {
            return;
        };
        if shard.entry(slot).extent != extent {
            return; // read from its shadow: it was promoted already
        }
        shard.hit(slot);
        let e = shard.entry(slot);
        let promote = e.hits >= PROMOTE_AFTER_HITS;
        let at = ObjectAt {
            hash,
            slot,
            generation: e.generation,
        };
        drop(shard);
        if promote {
            let _ = self.inner.promote(at, extent, value);
        }
    }

    /// Runs `f` on bytes `range` of the value `writer` reserved for `key`, for writing, in
    /// place and under an epoch pin. `Ok(None)` when the reservation's tier is not host
    /// memory (write through [`Store::put_write`]); `LeaseExpired` when the reservation
    /// ended. Writers of disjoint ranges may run at once.
    pub fn with_reserved_bytes<R>(
        &self,
        key: &[u8],
        writer: WriterId,
        range: Range<u64>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<Option<R>> {
        validate_key(key)?;
        let pin = epoch::pin();
        let mut extent = self
            .inner
            .writable_extent(key, writer, &pin)
            .map_err(super::lease::reservation_gone)?;
        let len = extent.extent().len;
        if range.start > range.end || range.end > len {
            return Err(out_of_extent(&range, len));
        }
        let tier = &self.inner.tiers[extent.extent().tier as usize];
        let Some(bytes) = tier.host_bytes_mut(&mut extent, range) else {
            return Ok(None);
        };
        Ok(Some(f(bytes)))
    }

    /// The extent of `key`'s complete value, pinned for reading under `guard`, if it lies
    /// exactly at `at`.
    fn find_in_place<'g>(
        &self,
        key: &[u8],
        at: &Location,
        guard: &'g epoch::Guard,
    ) -> Result<PinnedRead<'g>> {
        validate_key(key)?;
        let hash = key_hash(key);
        let shard = self.inner.shard(hash);
        let slot = shard.find(hash, key).ok_or_else(moved)?;
        let e = shard.entry(slot);
        let same = |x: &Extent| {
            (x.tier, u32::from(x.segment), x.offset, x.len)
                == (at.tier, at.segment, at.offset, at.len)
        };
        // Its own extent, or the shadow a promotion left where the lease found it.
        let found = [Some(e.extent), e.shadow()]
            .into_iter()
            .flatten()
            .find(same)
            .ok_or_else(moved)?;
        shard.pin_read(slot, found, guard).ok_or_else(moved)
    }
}

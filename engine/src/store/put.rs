//! The two-phase put: reserve space (`put_start`), write the value, commit (`put_end`)
//! or revoke; `put` does all three.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_epoch as epoch;
use strata_proto::limits::MAX_BATCH_KEYS;
use strata_proto::msg::Placement;
use strata_proto::{validate_key, Error, ErrorCode, Result};

use crate::clock::nanos;
use crate::tier::{Extent, PinnedRead, PinnedWrite};

use super::facade::Store;
use super::index::{key_hash, Shard, State, NO_TIER};
use super::inner::{batch_too_large, not_found, Inner};
use super::lease::{WriteReservation, WriterId};

/// Options of a put.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Never evict this object (it can still be removed).
    pub pin: bool,
    /// Which tier the value goes to; `Auto` is the highest under its high watermark.
    pub placement: Placement,
}

/// Bytes [`Store::put`] copies before hashing them: small enough to be in the core's cache
/// still, large enough to stream ([`strata_copy::STREAM_MIN`]); the shm client's pieces
/// are as large.
const PUT_HASH_PIECE: usize = strata_copy::STREAM_MIN;

impl Store {
    /// Reserves space for a `len`-byte value under `key`. The returned reservation revokes
    /// itself when dropped unless committed.
    ///
    /// Errors: `AlreadyExists` (a complete object has this key), `Busy` (another writer holds
    /// a live reservation), `InvalidKey`, `InvalidArgument` (zero length), `TooLarge`
    /// (larger than any tier's segment), `NoSpace` (nothing evictable is left).
    pub fn put_start(&self, key: &[u8], len: u64, opts: PutOptions) -> Result<WriteReservation> {
        let (writer, extent) = self.inner.put_start(key, len, opts)?;
        Ok(WriteReservation::new(
            Arc::clone(&self.inner),
            key,
            writer,
            extent,
        ))
    }

    /// Commits the reservation `writer` holds on `key`: the object becomes visible.
    pub fn put_end(&self, key: &[u8], writer: WriterId) -> Result<()> {
        self.inner.put_end_for(key, writer, None)
    }

    /// [`Store::put_end`] with the value's xxh3-64 as its writer computed it while copying
    /// (a same-host writer copies into shared memory itself), so committing reads no bytes.
    pub fn put_end_with_checksum(&self, key: &[u8], writer: WriterId, checksum: u64) -> Result<()> {
        self.inner.put_end_for(key, writer, Some(checksum))
    }

    /// Cancels the reservation `writer` holds on `key` and releases its space.
    pub fn put_revoke(&self, key: &[u8], writer: WriterId) -> Result<()> {
        self.inner.put_revoke_for(key, writer)
    }

    /// Writes `data` at `offset` into the value `writer` reserved for `key`: the two-phase
    /// put of a writer that holds only the id (a remote client), not the reservation.
    /// `LeaseExpired` once the reservation has ended.
    pub fn put_write(&self, key: &[u8], writer: WriterId, offset: u64, data: &[u8]) -> Result<()> {
        self.inner
            .write_reserved(key, writer, offset, data)
            .map_err(super::lease::reservation_gone)
    }

    /// put_start + copy + put_end.
    pub fn put(&self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<()> {
        let mut reservation = self.put_start(key, value.len() as u64, opts)?;
        if !self.inner.config.checksum_on_commit {
            reservation.write_at(0, value)?;
            return reservation.commit();
        }
        // The checksum is taken from the caller's bytes, a piece at a time right after the
        // piece is copied, while it is still in cache: the copy into the tier bypasses the
        // cache (`strata_copy`), so hashing the stored value after it would read it all from
        // memory again.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (i, piece) in value.chunks(PUT_HASH_PIECE).enumerate() {
            reservation.write_at((i * PUT_HASH_PIECE) as u64, piece)?;
            hasher.update(piece);
        }
        reservation.commit_with_checksum(hasher.digest())
    }

    /// Per-item [`Store::put`]; one failure never fails the others.
    pub fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        opts: PutOptions,
    ) -> Vec<Result<()>> {
        if items.len() > MAX_BATCH_KEYS {
            return vec![Err(batch_too_large(items.len())); items.len()];
        }
        items
            .iter()
            .map(|(k, v)| self.put(k.as_ref(), v.as_ref(), opts))
            .collect()
    }
}

impl Inner {
    pub(crate) fn put_start(
        &self,
        key: &[u8],
        len: u64,
        opts: PutOptions,
    ) -> Result<(WriterId, Extent)> {
        validate_key(key)?;
        if len == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "value length is zero",
            ));
        }
        let max = self.max_put_len();
        if len > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("value of {len} bytes is larger than the largest extent any tier can hold ({max} bytes)"),
            ));
        }
        let hash = key_hash(key);
        let writer = self.next_writer.fetch_add(1, Ordering::Relaxed);
        let (slot, generation) = {
            let guard = epoch::pin();
            let now = self.clock.now();
            let mut shard = self.shard(hash);
            if let Some(slot) = shard.find(hash, key) {
                let e = shard.entry(slot);
                match e.state {
                    State::Complete => {
                        return Err(Error::new(
                            ErrorCode::AlreadyExists,
                            "a complete object has this key",
                        ));
                    }
                    State::Pending if e.stamp > now => {
                        return Err(Error::new(
                            ErrorCode::Busy,
                            "another writer holds a live reservation for this key",
                        ));
                    }
                    _ => {
                        // A reservation past its deadline: revoke it now rather than wait for the reaper.
                        self.drop_entry(&mut shard, hash, slot, &guard);
                        self.counters
                            .expired_reservations
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let deadline = now.saturating_add(nanos(self.config.put_timeout));
            let slot = shard.insert_pending(hash, key, writer, deadline, opts.pin);
            (slot, shard.entry(slot).generation)
        };
        // Placement may evict, which locks other shards: this shard's lock is not held. The
        // pending entry keeps other writers of this key out meanwhile (they get Busy).
        let placed = self.place(len, opts.placement);
        let guard = epoch::pin();
        let mut shard = self.shard(hash);
        let ours = shard
            .live(slot, generation)
            .is_some_and(|e| e.state == State::Pending && e.tag == writer);
        match (placed, ours) {
            (Ok(fresh), true) if self.segment_gone(&fresh.extent()) => {
                // Its device segment was unmounted while space was found (the unmount's
                // sweep may have passed this shard already): give up the reservation.
                self.drop_entry(&mut shard, hash, slot, &guard);
                drop(shard);
                let extent = fresh.into_extent();
                self.tiers[extent.tier as usize].retire(extent, &guard);
                Err(Error::new(
                    ErrorCode::Unavailable,
                    "the device segment chosen for the value was unmounted; retry",
                ))
            }
            (Ok(fresh), true) => {
                let extent = fresh.into_extent();
                shard.entry_mut(slot).extent = extent;
                Ok((WriterId(writer), extent))
            }
            (Ok(fresh), false) => {
                drop(shard);
                let extent = fresh.into_extent();
                self.tiers[extent.tier as usize].retire(extent, &guard);
                Err(Error::new(
                    ErrorCode::LeaseExpired,
                    "reservation was revoked (deadline passed or key removed with force) while space was being found",
                ))
            }
            (Err(e), ours) => {
                if ours {
                    self.drop_entry(&mut shard, hash, slot, &guard);
                }
                Err(e)
            }
        }
    }

    /// Whether `extent` is in a device segment that has been removed.
    pub(crate) fn segment_gone(&self, extent: &Extent) -> bool {
        self.tiers[extent.tier as usize]
            .as_device()
            .is_some_and(|d| !d.holds(extent))
    }

    /// Commits `writer`'s reservation on `key`, recording `given` as its checksum or, when
    /// `None`, computing one (if the store keeps checksums).
    pub(crate) fn put_end_for(
        &self,
        key: &[u8],
        writer: WriterId,
        given: Option<u64>,
    ) -> Result<()> {
        validate_key(key)?;
        let hash = key_hash(key);
        let guard = epoch::pin();
        let (slot, generation, written) = {
            let mut shard = self.shard(hash);
            let slot = self.writer_slot(&mut shard, hash, key, writer, &guard)?;
            let written = shard.pin_write(slot, writer.0, &guard);
            let written = written
                .ok_or_else(|| Error::new(ErrorCode::Busy, "reservation has no space yet"))?;
            (slot, shard.entry(slot).generation, written)
        };
        // Checksum outside the lock: a 16 MiB value takes about a millisecond. The writer
        // is committing, so it is done writing: its bytes may be read.
        let checksum = match given {
            _ if !self.config.checksum_on_commit => 0,
            Some(c) => c,
            None => self.checksum(written.into_read())?,
        };
        let mut shard = self.shard(hash);
        match shard.live(slot, generation) {
            Some(e) if e.state == State::Pending && e.tag == writer.0 => {
                shard.commit(slot, checksum, self.next_access());
                Ok(())
            }
            _ => Err(Error::new(
                ErrorCode::LeaseExpired,
                "reservation was revoked (deadline passed or key removed with force) before it was committed",
            )),
        }
    }

    pub(crate) fn put_revoke_for(&self, key: &[u8], writer: WriterId) -> Result<()> {
        validate_key(key)?;
        let hash = key_hash(key);
        let guard = epoch::pin();
        let mut shard = self.shard(hash);
        let slot = self.writer_slot(&mut shard, hash, key, writer, &guard)?;
        self.drop_entry(&mut shard, hash, slot, &guard);
        drop(shard);
        self.counters
            .revoked_reservations
            .fetch_add(1, Ordering::Relaxed);
        guard.flush();
        Ok(())
    }

    /// The slot of `writer`'s live reservation on `key`, or why there is none. An expired
    /// reservation found here is revoked on the spot.
    pub(crate) fn writer_slot(
        &self,
        shard: &mut Shard,
        hash: u64,
        key: &[u8],
        writer: WriterId,
        guard: &epoch::Guard,
    ) -> Result<u32> {
        let slot = shard.find(hash, key).ok_or_else(|| not_found(key))?;
        let e = shard.entry(slot);
        if e.state == State::Complete {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                "the object is already committed",
            ));
        }
        if e.tag != writer.0 {
            return Err(Error::new(
                ErrorCode::NotWriter,
                "another writer holds this reservation",
            ));
        }
        if e.stamp <= self.clock.now() {
            self.drop_entry(shard, hash, slot, guard);
            self.counters
                .expired_reservations
                .fetch_add(1, Ordering::Relaxed);
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "reservation passed its deadline and was revoked",
            ));
        }
        if e.extent.tier == NO_TIER {
            return Err(Error::new(ErrorCode::Busy, "reservation has no space yet"));
        }
        Ok(slot)
    }

    /// Checks that `writer` still holds `key`'s reservation (its extent cannot be reclaimed
    /// while `guard` stays pinned) and returns the extent.
    pub fn writable_extent<'g>(
        &self,
        key: &[u8],
        writer: WriterId,
        guard: &'g epoch::Guard,
    ) -> Result<PinnedWrite<'g>> {
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let slot = self.writer_slot(&mut shard, hash, key, writer, guard)?;
        shard
            .pin_write(slot, writer.0, guard)
            .ok_or_else(|| Error::new(ErrorCode::Busy, "reservation has no space yet"))
    }

    /// Copies `data` into `writer`'s reserved value for `key` at `offset`.
    pub fn write_reserved(
        &self,
        key: &[u8],
        writer: WriterId,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        validate_key(key)?;
        // Pin, then confirm the reservation is still ours: if it is, its extent cannot be
        // reclaimed (and so reused by another writer) until this pin drops.
        let pin = epoch::pin();
        let mut extent = self.writable_extent(key, writer, &pin)?;
        let tier = extent.extent().tier as usize;
        self.tiers[tier].write(&mut extent, offset, data)
    }

    pub(crate) fn checksum(&self, extent: PinnedRead<'_>) -> Result<u64> {
        let tier = &self.tiers[extent.extent().tier as usize];
        if let Some(bytes) = tier.host_bytes(extent) {
            return Ok(xxhash_rust::xxh3::xxh3_64(bytes));
        }
        let mut value = vec![0u8; extent.extent().len as usize];
        tier.read(extent, &mut value)?;
        Ok(xxhash_rust::xxh3::xxh3_64(&value))
    }
}

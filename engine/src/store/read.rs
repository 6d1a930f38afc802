//! Reads: leased locations for clients that copy the bytes themselves, read guards for
//! in-process readers, gets, existence checks; and the drop of an object whose stored
//! bytes failed their checksum.

use std::sync::atomic::Ordering;

use crossbeam_epoch as epoch;
use strata_proto::limits::MAX_BATCH_KEYS;
use strata_proto::{validate_key, Result};

use crate::clock::nanos;
use crate::tier::Extent;

use super::facade::Store;
use super::index::{key_hash, State};
use super::inner::{batch_too_large, Inner, ObjectAt};
use super::lease::{ReadGuard, ReadLease};
use super::promote::PROMOTE_AFTER_HITS;

impl Store {
    /// Per key: where the value is, under a read lease that keeps it from being evicted,
    /// moved or removed (unless forced) until the lease ends.
    pub fn get_locations<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Result<ReadLease>> {
        if keys.len() > MAX_BATCH_KEYS {
            return vec![Err(batch_too_large(keys.len())); keys.len()];
        }
        let now = self.inner.clock.now();
        let until = now.saturating_add(nanos(self.inner.config.lease_ttl));
        let mut grants = self.inner.leases.grants(now, until);
        keys.iter()
            .map(|k| {
                let key = k.as_ref();
                validate_key(key)?;
                let hash = key_hash(key);
                let mut shard = self.inner.shard(hash);
                let slot = self.inner.visible(&mut shard, hash, key)?;
                shard.touch(slot, self.inner.next_access());
                if self.inner.read_in_place(shard.entry(slot).extent.tier) {
                    shard.hit(slot); // The lease holder copies the bytes itself.
                }
                let e = shard.entry_mut(slot);
                grants.grant(e.lease_until);
                e.lease(until);
                Ok(ReadLease {
                    extent: e.extent,
                    checksum: e.tag,
                    expires_at: e.lease_until,
                })
            })
            .collect()
    }

    /// Whether a lease from [`Store::get_locations`] still holds now.
    pub fn lease_valid(&self, lease: &ReadLease) -> bool {
        self.inner.clock.now() < lease.expires_at
    }

    /// Looks `key` up and returns a guard through which its bytes can be read. While the
    /// guard lives the bytes cannot be reclaimed, even if the object is evicted or removed.
    pub fn read(&self, key: &[u8]) -> Result<ReadGuard<'_>> {
        self.lookup(key, false)
            .map(|found| found.expect("every tier is readable"))
    }

    /// [`Store::read`] for an object in host memory only: `Ok(None)` (nothing counted or
    /// touched) when it lies on a tier read through I/O, so an async caller can move that
    /// read off its reactor.
    pub fn read_in_memory(&self, key: &[u8]) -> Result<Option<ReadGuard<'_>>> {
        self.lookup(key, true)
    }

    pub(crate) fn lookup(&self, key: &[u8], in_memory_only: bool) -> Result<Option<ReadGuard<'_>>> {
        validate_key(key)?;
        // Pin before the lookup: anything retired after it waits for this guard.
        let guard = epoch::pin();
        let hash = key_hash(key);
        let mut shard = self.inner.shard(hash);
        match self.inner.visible(&mut shard, hash, key) {
            Ok(slot)
                if in_memory_only && !self.inner.read_in_place(shard.entry(slot).extent.tier) =>
            {
                Ok(None)
            }
            Ok(slot) => {
                shard.touch(slot, self.inner.next_access());
                shard.hit(slot);
                let e = shard.entry(slot);
                let (extent, checksum) = (e.extent, e.tag);
                // Read again while on a tier below the top: worth moving up once copied.
                let promote = extent.tier > 0 && e.hits >= PROMOTE_AFTER_HITS;
                let at = ObjectAt {
                    hash,
                    slot,
                    generation: e.generation,
                };
                let Ok(pinned) = shard.pin_read_owned(slot, extent, guard) else {
                    unreachable!("a visible object is complete at its extent");
                };
                shard.counters.get_hits += 1;
                shard.counters.get_bytes += extent.len;
                drop(shard);
                Ok(Some(ReadGuard::new(
                    pinned,
                    &self.inner,
                    at,
                    checksum,
                    promote,
                )))
            }
            Err(e) => {
                shard.counters.get_misses += 1;
                Err(e)
            }
        }
    }

    /// Copies the value of `key` into the front of `buf`; returns its length.
    /// `InvalidArgument` if `buf` is too small (nothing is copied).
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize> {
        self.read(key)?.copy_to(buf)
    }

    /// The value of `key` as a new vector.
    pub fn get(&self, key: &[u8]) -> Result<Vec<u8>> {
        let guard = self.read(key)?;
        let mut out = vec![0u8; guard.len() as usize];
        guard.copy_to(&mut out)?;
        Ok(out)
    }

    /// Per-key [`Store::get_into`]; one failure never fails the others.
    pub fn batch_get_into<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>> {
        if let Err(e) = strata_proto::limits::check_paired(keys.len(), bufs.len()) {
            return vec![Err(e); keys.len()];
        }
        if keys.len() > MAX_BATCH_KEYS {
            return vec![Err(batch_too_large(keys.len())); keys.len()];
        }
        keys.iter()
            .zip(bufs.iter_mut())
            .map(|(k, b)| self.get_into(k.as_ref(), b))
            .collect()
    }

    /// Whether a complete object has this key. Takes no lease and does not count as a use.
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        validate_key(key)?;
        let hash = key_hash(key);
        let shard = self.inner.shard(hash);
        Ok(shard
            .find(hash, key)
            .is_some_and(|s| shard.entry(s).state == State::Complete))
    }

    /// Per-key [`Store::exists`]. Keys are grouped by shard so each shard is locked once
    /// per batch, not once per key.
    pub fn batch_exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Result<bool>> {
        if keys.len() > MAX_BATCH_KEYS {
            return vec![Err(batch_too_large(keys.len())); keys.len()];
        }
        let mut out: Vec<Result<bool>> = keys
            .iter()
            .map(|k| validate_key(k.as_ref()).map(|()| false))
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k.as_ref())).collect();
        let valid: Vec<u32> = (0..keys.len() as u32)
            .filter(|&i| out[i as usize].is_ok())
            .collect();
        self.inner.for_each_by_shard(&hashes, &valid, |shard, run| {
            for &i in run {
                let i = i as usize;
                let found = shard.find(hashes[i], keys[i].as_ref());
                out[i] = Ok(found.is_some_and(|s| shard.entry(s).state == State::Complete));
            }
        });
        out
    }
}

impl Inner {
    /// Drops an object whose stored bytes failed their checksum, if it is still the one
    /// read from `extent`. A corrupt shadow goes alone: the object's own copy is another.
    pub(crate) fn drop_corrupt(&self, at: ObjectAt, extent: Extent) {
        let guard = epoch::pin();
        let mut shard = self.shard(at.hash);
        let Some(e) = shard
            .live(at.slot, at.generation)
            .filter(|e| e.state == State::Complete && e.holds(&extent))
        else {
            return;
        };
        if e.extent == extent {
            self.drop_entry(&mut shard, at.hash, at.slot, &guard);
        } else {
            shard.drop_shadow(at.slot);
            self.tiers[extent.tier as usize].retire(extent, &guard);
        }
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
    }
}

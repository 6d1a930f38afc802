//! Removal of one object or of all of them, leased and pending ones only when forced.

use crossbeam_epoch as epoch;
use strata_proto::{validate_key, Error, ErrorCode, Result};

use super::facade::Store;
use super::index::{key_hash, State};
use super::inner::not_found;

impl Store {
    /// Removes `key`. A leased object is refused (`Leased`) and a pending one (`Busy`)
    /// unless `force`.
    pub fn remove(&self, key: &[u8], force: bool) -> Result<()> {
        validate_key(key)?;
        let guard = epoch::pin();
        let hash = key_hash(key);
        let mut shard = self.inner.shard(hash);
        let slot = shard.find(hash, key).ok_or_else(|| not_found(key))?;
        let e = shard.entry(slot);
        if !force {
            if e.state == State::Pending {
                return Err(Error::new(
                    ErrorCode::Busy,
                    "key is being written; remove it with force",
                ));
            }
            if e.lease_until > self.inner.clock.now() {
                return Err(Error::new(
                    ErrorCode::Leased,
                    "object is leased by a reader; remove it with force",
                ));
            }
        }
        self.inner.drop_entry(&mut shard, hash, slot, &guard);
        shard.counters.removes += 1;
        drop(shard);
        guard.flush();
        Ok(())
    }

    /// Removes every complete object; leased ones are skipped unless `force`, and `force`
    /// also cancels pending reservations. Returns how many entries were removed.
    pub fn remove_all(&self, force: bool) -> u64 {
        let guard = epoch::pin();
        let now = self.inner.clock.now();
        let mut removed = 0;
        for padded in self.inner.shards.iter() {
            let mut shard = padded.0.lock();
            for (slot, _) in shard.slots() {
                let e = shard.entry(slot);
                if !force && (e.state == State::Pending || e.lease_until > now) {
                    continue;
                }
                let hash = key_hash(&e.key);
                self.inner.drop_entry(&mut shard, hash, slot, &guard);
                shard.counters.removes += 1;
                removed += 1;
            }
        }
        guard.flush();
        removed
    }
}

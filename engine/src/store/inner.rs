//! The state every operation shares (`Inner`): the sharded index, the tiers, the counters,
//! the lease ledger; and the few steps every operation takes on it (find a shard, tell
//! whether an object is visible, drop an entry, wait for reclamation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_epoch as epoch;
use parking_lot::{Mutex, MutexGuard};
use strata_proto::limits::MAX_BATCH_KEYS;
use strata_proto::{Error, ErrorCode, Result};

use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::tier::Tier;

use super::counters::{GlobalCounters, TierCounters};
use super::index::{key_hash, Shard, State, NO_TIER};
use super::lease_ledger::LeaseLedger;

/// Keeps shards on separate cache lines so two cores working different shards don't
/// fight over one line.
#[repr(align(128))]
pub(crate) struct PaddedShard(pub Mutex<Shard>);

pub(crate) struct Inner {
    pub config: StoreConfig,
    pub clock: Clock,
    pub shards: Box<[PaddedShard]>,
    pub shard_mask: u64,
    pub tiers: Vec<Box<dyn Tier>>,
    pub next_writer: AtomicU64,
    /// Logical recency clock: every use of an object takes the next number, so "least
    /// recently used" is an exact order across shards, never a tie of coarse timestamps.
    pub access_seq: AtomicU64,
    pub counters: GlobalCounters,
    /// Per tier, like `tiers`.
    pub tier_counters: Box<[TierCounters]>,
    /// Read leases by their end.
    pub(crate) leases: LeaseLedger,
    /// The maintenance thread, set once at open; puts that cross a watermark unpark it.
    pub maintenance: OnceLock<std::thread::Thread>,
    /// Per tier: held by whoever evicts it. One evictor at a time picks disjoint victims
    /// and batches their demotion; the others wait for it and then find the space it
    /// freed, instead of racing for the same victims and each evicting a share.
    pub(crate) evictors: Box<[Mutex<()>]>,
}

/// The shard and its lock for a hash: the middle bits pick the shard, so hashbrown (which
/// uses the low bits for the bucket and the top seven as a tag) still sees well-mixed bits.
#[inline]
pub(super) fn shard_of(hash: u64, mask: u64) -> usize {
    ((hash >> 32) & mask) as usize
}

pub(super) fn not_found(key: &[u8]) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("key of {} bytes is not stored", key.len()),
    )
}

pub(super) fn pending_not_visible() -> Error {
    Error::new(
        ErrorCode::NotFound,
        "key is being written (pending) and not yet visible",
    )
}

/// Where an object was found: enough to find it again and tell whether it changed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectAt {
    pub hash: u64,
    pub slot: u32,
    pub generation: u32,
}

pub(super) fn batch_too_large(n: usize) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!("batch of {n} keys, the limit is {MAX_BATCH_KEYS}"),
    )
}

// The operations that call these live in other files (put, read, prefix, ...), so without
// `#[inline]` they may land in another codegen unit and stop being inlined: splitting the
// store into files cost the hot prefix lookup a third of its rate until these were marked
// (docs/bench/history.md, engine refactor).
impl Inner {
    /// The shard of `hash`, locked.
    #[inline]
    pub fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(hash, self.shard_mask)].0.lock()
    }

    /// Whether a lease holder reads objects of tier `t` in place (shared memory), rather
    /// than asking the server for the bytes.
    #[inline]
    pub fn read_in_place(&self, t: u8) -> bool {
        self.tiers[t as usize].accepts_puts()
    }

    /// The next number of the logical recency clock.
    #[inline]
    pub(crate) fn next_access(&self) -> u64 {
        self.access_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot of a complete object, or the error a reader should see.
    #[inline]
    pub(crate) fn visible(&self, shard: &mut Shard, hash: u64, key: &[u8]) -> Result<u32> {
        match shard.find(hash, key) {
            Some(slot) if shard.entry(slot).state == State::Complete => Ok(slot),
            Some(_) => Err(pending_not_visible()),
            None => Err(not_found(key)),
        }
    }

    /// Removes an entry from the index and retires its extent.
    pub fn drop_entry(&self, shard: &mut Shard, hash: u64, slot: u32, guard: &epoch::Guard) {
        let shadow = shard.entry(slot).shadow();
        let extent = shard.remove(hash, slot);
        for x in std::iter::once(extent).chain(shadow) {
            if x.tier != NO_TIER {
                self.tiers[x.tier as usize].retire(x, guard);
            }
        }
    }

    /// Calls `f` once per shard with that shard locked and the indices (into `hashes`) of
    /// `items` that live in it, in ascending order. One lock per shard instead of one per
    /// key lets the CPU overlap the cache misses of neighbouring lookups.
    #[inline]
    pub(crate) fn for_each_by_shard(
        &self,
        hashes: &[u64],
        items: &[u32],
        mut f: impl FnMut(&mut Shard, &[u32]),
    ) {
        let shards = self.shards.len();
        // Counting sort by shard: stable, so each run stays in ascending index order.
        let mut starts = vec![0u32; shards + 1];
        for &i in items {
            starts[shard_of(hashes[i as usize], self.shard_mask) + 1] += 1;
        }
        for s in 0..shards {
            starts[s + 1] += starts[s];
        }
        let mut next = starts.clone();
        let mut sorted = vec![0u32; items.len()];
        for &i in items {
            let s = shard_of(hashes[i as usize], self.shard_mask);
            sorted[next[s] as usize] = i;
            next[s] += 1;
        }
        for s in 0..shards {
            let run = &sorted[starts[s] as usize..starts[s + 1] as usize];
            if !run.is_empty() {
                f(&mut self.shards[s].0.lock(), run);
            }
        }
    }

    /// Indexes what persistent tiers found at open, oldest first so recency follows
    /// write order.
    pub(crate) fn adopt_recovered(&self) {
        let guard = epoch::pin();
        for tier in &self.tiers {
            for obj in tier.take_recovered() {
                let hash = key_hash(&obj.key);
                let mut shard = self.shard(hash);
                if shard.find(hash, &obj.key).is_some() {
                    drop(shard);
                    tier.retire(obj.extent, &guard);
                    continue;
                }
                let access = self.next_access();
                shard.insert_complete(hash, &obj.key, obj.extent, obj.checksum, access);
            }
        }
    }

    pub(crate) fn reclaim(&self, within: Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            if self.tiers.iter().all(|t| t.retiring() == 0) {
                return true;
            }
            if started.elapsed() > within {
                return false;
            }
            epoch::pin().flush();
            for t in &self.tiers {
                t.reclaim_retired();
            }
            std::thread::yield_now();
        }
    }
}

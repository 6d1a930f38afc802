//! The embeddable store engine: index, tiers, leases, eviction, all in-process.
//!
//! Every operation of the brief's contract table is a method of [`Store`]; the network
//! service is a thin layer over them.
//!
//! Concurrency model:
//! * the index is split into shards by a 64-bit hash of the key, each behind its own mutex,
//!   held only for index work — never while value bytes are copied;
//! * bytes are copied under a crossbeam-epoch guard pinned *before* the index lookup, and
//!   extents are freed only through `Tier::retire` (an epoch-deferred free), so a copy that
//!   races with eviction or removal still reads the old, intact bytes;
//! * placement may evict synchronously (no shard lock held), and a background thread keeps
//!   each tier under its high watermark.

mod file_reads;
mod in_place;
pub(crate) mod index;
mod lease_ledger;
mod mount;

pub use lease_ledger::LeaseCounts;
pub use mount::UnmountReport;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_epoch as epoch;
use parking_lot::{Mutex, MutexGuard};
use strata_proto::limits::{MAX_BATCH_KEYS, MAX_GROUP_KEYS, MAX_PREFIX_GROUPS, MAX_VALUE_LEN};
use strata_proto::{validate_key, Error, ErrorCode, Result};

use crate::clock::{nanos, Clock};
use crate::config::StoreConfig;
use crate::lease::{ReadGuard, ReadLease, WriteReservation, WriterId};
use crate::tier::device::DeviceTier;
use crate::tier::dram::DramTier;
use crate::tier::ssd::SsdTier;
use crate::tier::{Extent, SharedSegment, Tier, TierKind, TierStats};
use index::{key_hash, Shard, State, NO_TIER};

pub use strata_proto::msg::Placement;

/// Options of a put.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Never evict this object (it can still be removed).
    pub pin: bool,
    /// Which tier the value goes to; `Auto` is the highest under its high watermark.
    pub placement: Placement,
}

/// Result of [`Store::prefix_len`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Leading positions whose keys are all present.
    pub len: usize,
    /// With `lease`: the matched objects are leased until this time (store clock, ns).
    pub leased_until: Option<u64>,
}

/// Counters of the operations callers make. Each shard keeps its own, under its lock, so
/// counting costs no shared cache line; `Store::stats` sums them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpCounters {
    pub puts: u64,
    pub put_bytes: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub get_bytes: u64,
    pub removes: u64,
}

impl OpCounters {
    fn add(&mut self, o: &OpCounters) {
        self.puts += o.puts;
        self.put_bytes += o.put_bytes;
        self.get_hits += o.get_hits;
        self.get_misses += o.get_misses;
        self.get_bytes += o.get_bytes;
        self.removes += o.removes;
    }
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreCounters {
    pub ops: OpCounters,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub demotions: u64,
    /// Objects moved up a tier because they were read again (ssd to dram).
    pub promotions: u64,
    /// Objects dropped because their stored bytes failed their checksum.
    pub corrupt: u64,
    /// Reservations cancelled by their writer (or by the end of its connection).
    pub revoked_reservations: u64,
    /// Objects dropped because their device segment was unmounted.
    pub unmounted_objects: u64,
    pub expired_reservations: u64,
    pub no_space: u64,
}

/// A snapshot of the store's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreStats {
    /// Per tier, top first.
    pub tiers: Vec<TierStats>,
    /// Complete objects in all tiers.
    pub objects: u64,
    /// Pending reservations.
    pub pending: u64,
    /// Heap bytes of the index (table, entries, allocator bookkeeping), keys excluded.
    pub index_bytes: u64,
    /// Bytes of keys held by the index.
    pub key_bytes: u64,
    /// `index_bytes / (objects + pending)`, keys excluded.
    pub index_bytes_per_object: f64,
    pub counters: StoreCounters,
}

#[derive(Default)]
pub(crate) struct GlobalCounters {
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub demotions: AtomicU64,
    pub promotions: AtomicU64,
    pub corrupt: AtomicU64,
    pub unmounted_objects: AtomicU64,
    pub expired_reservations: AtomicU64,
    pub revoked_reservations: AtomicU64,
    pub no_space: AtomicU64,
}

/// Counters of one tier, indexed like the tiers.
#[derive(Default)]
pub(crate) struct TierCounters {
    /// Objects that left this tier to make room (demoted or dropped).
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Objects moved from this tier to the one below.
    pub demotions: AtomicU64,
    /// Objects moved into this tier from the one below because they were read again.
    pub promotions: AtomicU64,
}

/// Keeps shards on separate cache lines so two cores working different shards don't
/// fight over one line.
#[repr(align(128))]
pub(crate) struct PaddedShard(pub Mutex<Shard>);

pub(crate) struct Inner {
    pub config: StoreConfig,
    pub clock: Clock,
    pub shards: Box<[PaddedShard]>,
    shard_mask: u64,
    pub tiers: Vec<Box<dyn Tier>>,
    next_writer: AtomicU64,
    /// Logical recency clock: every use of an object takes the next number, so "least
    /// recently used" is an exact order across shards, never a tie of coarse timestamps.
    access_seq: AtomicU64,
    pub counters: GlobalCounters,
    /// Per tier, like `tiers`.
    pub tier_counters: Box<[TierCounters]>,
    /// Read leases by their end.
    pub(crate) leases: lease_ledger::LeaseLedger,
    /// The maintenance thread, set once at open; puts that cross a watermark unpark it.
    maintenance: OnceLock<std::thread::Thread>,
    /// Per tier: held by whoever evicts it. One evictor at a time picks disjoint victims
    /// and batches their demotion; the others wait for it and then find the space it
    /// freed, instead of racing for the same victims and each evicting a share.
    pub(crate) evictors: Box<[Mutex<()>]>,
}

struct Maintenance {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The store engine. Cheap to share: wrap it in an `Arc` or borrow it across scoped threads.
pub struct Store {
    inner: Arc<Inner>,
    maintenance: Option<Maintenance>,
}

/// The shard and its lock for a hash: the middle bits pick the shard, so hashbrown (which
/// uses the low bits for the bucket and the top seven as a tag) still sees well-mixed bits.
fn shard_of(hash: u64, mask: u64) -> usize {
    ((hash >> 32) & mask) as usize
}

fn not_found(key: &[u8]) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("key of {} bytes is not stored", key.len()),
    )
}

fn pending_not_visible() -> Error {
    Error::new(
        ErrorCode::NotFound,
        "key is being written (pending) and not yet visible",
    )
}

impl Store {
    /// Opens a store with the real clock.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Store::open_with_clock(config, Clock::system())
    }

    /// Opens a store on `clock` (tests use a manual one).
    pub fn open_with_clock(config: StoreConfig, clock: Clock) -> Result<Store> {
        config.validate()?;
        let mut tiers: Vec<Box<dyn Tier>> = Vec::new();
        for (i, t) in config.tiers.iter().enumerate() {
            let failed = |e: std::io::Error| {
                Error::new(
                    ErrorCode::Internal,
                    format!("{} tier {i}: {e}", t.kind.name()),
                )
            };
            let tier: Box<dyn Tier> = match (t.kind, &t.ssd) {
                (TierKind::Device, _) => {
                    let opts = t
                        .device
                        .as_ref()
                        .expect("validate() requires device options");
                    let tier = DeviceTier::open(
                        i as u8,
                        t.capacity,
                        t.segment_size,
                        t.alignment,
                        t.populate,
                        opts,
                    )
                    .map_err(|e| {
                        Error::new(e.code(), format!("device tier {i}: {}", e.message()))
                    })?;
                    Box::new(tier)
                }
                (TierKind::Dram, _) => Box::new(
                    DramTier::new(i as u8, t.capacity, t.segment_size, t.alignment, t.populate)
                        .map_err(failed)?,
                ),
                (TierKind::Ssd, Some(opts)) => Box::new(
                    SsdTier::open(i as u8, t.capacity, t.segment_size, opts).map_err(failed)?,
                ),
                (TierKind::Ssd, None) => unreachable!("validate() requires ssd options"),
            };
            tiers.push(tier);
        }
        let shards = (0..config.shards)
            .map(|_| PaddedShard(Mutex::new(Shard::new())))
            .collect();
        let started = clock.now();
        let inner = Arc::new(Inner {
            shard_mask: config.shards as u64 - 1,
            shards,
            tiers,
            clock,
            next_writer: AtomicU64::new(1),
            access_seq: AtomicU64::new(1),
            counters: GlobalCounters::default(),
            tier_counters: (0..config.tiers.len())
                .map(|_| TierCounters::default())
                .collect(),
            leases: lease_ledger::LeaseLedger::new(config.lease_ttl, started),
            maintenance: OnceLock::new(),
            evictors: (0..config.tiers.len()).map(|_| Mutex::new(())).collect(),
            config,
        });
        inner.adopt_recovered();
        let maintenance = inner.config.maintenance_interval.map(|every| {
            let stop = Arc::new(AtomicBool::new(false));
            let handle =
                crate::evict::spawn_maintenance(Arc::clone(&inner), Arc::clone(&stop), every);
            let _ = inner.maintenance.set(handle.thread().clone());
            Maintenance { stop, handle }
        });
        Ok(Store { inner, maintenance })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The largest value a put can store (the largest extent of a tier that takes puts).
    pub fn max_value_len(&self) -> u64 {
        self.inner.max_put_len()
    }

    /// The store's clock (lease ends and deadlines are on it).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

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

    /// The shared-memory segments of every tier that has them, as `(tier index, segment)`:
    /// what the shared-memory transport hands to same-host clients.
    pub fn shared_segments(&self) -> Vec<(u8, SharedSegment<'_>)> {
        self.inner
            .tiers
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.shared_segments().into_iter().map(move |s| (i as u8, s)))
            .collect()
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
            .map_err(crate::lease::reservation_gone)
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

    fn lookup(&self, key: &[u8], in_memory_only: bool) -> Result<Option<ReadGuard<'_>>> {
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
                shard.counters.get_hits += 1;
                shard.counters.get_bytes += extent.len;
                drop(shard);
                Ok(Some(ReadGuard::new(
                    guard,
                    &self.inner,
                    at,
                    extent,
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

    /// The number of leading positions whose keys are all present. A position is a group:
    /// all tensor-parallel ranks' keys of one block. The matched keys are touched from last
    /// to first, so the head of a prefix ends up most recently used; with `lease` they are
    /// also leased so a following get cannot miss.
    pub fn prefix_len<G, K>(&self, groups: &[G], lease: bool) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        if groups.len() > MAX_PREFIX_GROUPS {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{} positions, the limit is {MAX_PREFIX_GROUPS}",
                    groups.len()
                ),
            ));
        }
        for g in groups {
            let g = g.as_ref();
            if g.len() > MAX_GROUP_KEYS {
                let msg = format!(
                    "a position has {} keys, the limit is {MAX_GROUP_KEYS}",
                    g.len()
                );
                return Err(Error::new(ErrorCode::TooLarge, msg));
            }
            for k in g {
                validate_key(k.as_ref())?;
            }
        }
        self.inner.prefix_len(groups, lease)
    }

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

    /// Figures per tier, index memory and counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// The kind of tier `t`, if there is such a tier.
    pub fn tier_kind(&self, t: u8) -> Option<TierKind> {
        self.inner.tiers.get(t as usize).map(|tier| tier.kind())
    }

    /// Read leases granted, active now, and expired.
    pub fn lease_counts(&self) -> LeaseCounts {
        self.inner.leases.counts(self.inner.clock.now())
    }

    /// Moves every evictable object of tier `i` one tier down (dropping what does not fit),
    /// as eviction would; returns the objects moved.
    pub fn demote_tier(&self, i: usize) -> u64 {
        let before = self.inner.counters.demotions.load(Ordering::Relaxed);
        if let Some(tier) = self.inner.tiers.get(i) {
            self.inner.evict(i, tier.used());
        }
        self.inner.counters.demotions.load(Ordering::Relaxed) - before
    }

    /// Moves every evictable object of each tier with a persistent tier somewhere below it
    /// one tier down, top first (device to dram, dram to ssd), as far as space allows:
    /// what a graceful shutdown does so that the contents survive the restart. Returns the
    /// objects moved.
    pub fn demote_all(&self) -> u64 {
        let before = self.inner.counters.demotions.load(Ordering::Relaxed);
        for i in 0..self.inner.tiers.len().saturating_sub(1) {
            if self.inner.tiers[i + 1..].iter().all(|t| t.accepts_puts()) {
                continue; // Only a persistent tier below is worth the move.
            }
            self.inner.evict(i, self.inner.tiers[i].used());
        }
        self.inner.maintain();
        self.inner.counters.demotions.load(Ordering::Relaxed) - before
    }

    /// Reaps expired reservations and evicts tiers above their high watermark, once.
    /// The background thread does this every `maintenance_interval`.
    pub fn run_maintenance(&self) {
        self.inner.maintain();
    }

    /// Waits (bounded) until extents retired so far are reclaimed, so `used` reflects only
    /// live objects. Returns false if a reader kept them pinned past the bound.
    pub fn reclaim(&self, within: Duration) -> bool {
        self.inner.reclaim(within)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(m) = self.maintenance.take() {
            m.stop.store(true, Ordering::Relaxed);
            m.handle.thread().unpark();
            let _ = m.handle.join();
        }
        // Let retired extents finish their frees (an ssd record's tombstone) before the
        // tiers close, so what was removed stays removed.
        self.inner.reclaim(Duration::from_millis(200));
    }
}

/// Reads of an object on a lower tier after which it is moved up (the second hit: one
/// scan over cold data does not flush the memory tier).
pub(crate) const PROMOTE_AFTER_HITS: u8 = 2;

/// Where an object was found: enough to find it again and tell whether it changed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectAt {
    pub hash: u64,
    pub slot: u32,
    pub generation: u32,
}

/// Keys of a prefix lookup checked per window before deciding whether to go on.
const PREFIX_WINDOW_KEYS: usize = 256;

/// How long a put waits for the retired space of a tier that has another below it to
/// take the value instead: readers usually unpin within microseconds, so space that has
/// not come back by then is held by a reader that is waiting on something slow.
const UPPER_TIER_WAIT: Duration = Duration::from_millis(5);

/// Bytes [`Store::put`] copies before hashing them: small enough to be in the core's cache
/// still, large enough to stream ([`strata_copy::STREAM_MIN`]); the shm client's pieces
/// are as large.
const PUT_HASH_PIECE: usize = strata_copy::STREAM_MIN;

fn batch_too_large(n: usize) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!("batch of {n} keys, the limit is {MAX_BATCH_KEYS}"),
    )
}

impl Inner {
    pub fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(hash, self.shard_mask)].0.lock()
    }

    /// Whether a lease holder reads objects of tier `t` in place (shared memory), rather
    /// than asking the server for the bytes.
    pub fn read_in_place(&self, t: u8) -> bool {
        self.tiers[t as usize].accepts_puts()
    }

    /// The largest value a put can place.
    fn max_put_len(&self) -> u64 {
        self.tiers
            .iter()
            .filter(|t| t.accepts_puts())
            .map(|t| t.max_value_len())
            .max()
            .unwrap_or(0)
            .min(MAX_VALUE_LEN)
    }

    /// Indexes what persistent tiers found at open, oldest first so recency follows
    /// write order.
    fn adopt_recovered(&self) {
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
        // SAFETY: `dst` is freshly allocated and indexed by nobody, so this is its only
        // writer and it has no reader; `value` is exactly `dst.len` bytes.
        let copied = unsafe { tier.write(&dst, 0, value) };
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

    /// The next number of the logical recency clock.
    fn next_access(&self) -> u64 {
        self.access_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot of a complete object, or the error a reader should see.
    fn visible(&self, shard: &mut Shard, hash: u64, key: &[u8]) -> Result<u32> {
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

    fn put_start(&self, key: &[u8], len: u64, opts: PutOptions) -> Result<(WriterId, Extent)> {
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
            (Ok(extent), true) if self.segment_gone(&extent) => {
                // Its device segment was unmounted while space was found (the unmount's
                // sweep may have passed this shard already): give up the reservation.
                self.drop_entry(&mut shard, hash, slot, &guard);
                Err(Error::new(
                    ErrorCode::Unavailable,
                    "the device segment chosen for the value was unmounted; retry",
                ))
            }
            (Ok(extent), true) => {
                shard.entry_mut(slot).extent = extent;
                Ok((WriterId(writer), extent))
            }
            (Ok(extent), false) => {
                drop(shard);
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
    fn segment_gone(&self, extent: &Extent) -> bool {
        self.tiers[extent.tier as usize]
            .as_device()
            .is_some_and(|d| !d.holds(extent))
    }

    /// Finds an extent for `len` bytes: the highest tier under its high watermark that has
    /// room, else the first that can hold it, evicting synchronously when it is full.
    /// `placement` narrows the choice to one kind of tier.
    fn place(&self, len: u64, placement: Placement) -> Result<Extent> {
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
    pub fn allocate_evicting(&self, i: usize, len: u64, wait: Duration) -> Option<Extent> {
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
    fn wait_for_retired(&self, i: usize, waiting_since: std::time::Instant) {
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

    fn wake_maintenance(&self) {
        if let Some(t) = self.maintenance.get() {
            t.unpark();
        }
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
        let (slot, generation, extent) = {
            let mut shard = self.shard(hash);
            let slot = self.writer_slot(&mut shard, hash, key, writer, &guard)?;
            let e = shard.entry(slot);
            (slot, e.generation, e.extent)
        };
        // Checksum outside the lock: a 16 MiB value takes about a millisecond.
        let checksum = match given {
            _ if !self.config.checksum_on_commit => 0,
            Some(c) => c,
            None => self.checksum(&extent)?,
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
    fn writer_slot(
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
    pub fn writable_extent(
        &self,
        key: &[u8],
        writer: WriterId,
        guard: &epoch::Guard,
    ) -> Result<Extent> {
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let slot = self.writer_slot(&mut shard, hash, key, writer, guard)?;
        Ok(shard.entry(slot).extent)
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
        let extent = self.writable_extent(key, writer, &pin)?;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > extent.len) {
            let msg = format!(
                "write of {} bytes at {offset} runs past the {}-byte value",
                data.len(),
                extent.len
            );
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        }
        // SAFETY: confirmed live under `pin`; the reservation is exclusively this writer's,
        // pending objects have no readers, and the range was bounds-checked above.
        unsafe { self.tiers[extent.tier as usize].write(&extent, offset, data) }
    }

    fn checksum(&self, extent: &Extent) -> Result<u64> {
        let tier = &self.tiers[extent.tier as usize];
        // SAFETY: the caller holds an epoch guard pinned while the reservation was live, and
        // the writer has finished writing (it is committing).
        if let Some(bytes) = unsafe { tier.host_bytes(extent) } {
            return Ok(xxhash_rust::xxh3::xxh3_64(bytes));
        }
        let mut value = vec![0u8; extent.len as usize];
        // SAFETY: as above.
        unsafe { tier.read(extent, &mut value) }?;
        Ok(xxhash_rust::xxh3::xxh3_64(&value))
    }

    fn prefix_len<G, K>(&self, groups: &[G], lease: bool) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        // Flatten: key k belongs to position pos_of[k].
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut pos_of: Vec<u32> = Vec::new();
        for (pos, g) in groups.iter().enumerate() {
            for k in g.as_ref() {
                keys.push(k.as_ref());
                pos_of.push(pos as u32);
            }
        }
        let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        // Where each key was found: (slot, generation), or none.
        let mut found: Vec<Option<(u32, u32)>> = vec![None; keys.len()];

        // Pass 1: presence, a window of positions at a time (so a short match does not pay
        // for the whole query), each window's keys grouped by shard.
        let mut matched = groups.len();
        let mut start = 0;
        while start < keys.len() {
            let end = (start + PREFIX_WINDOW_KEYS).min(keys.len());
            // Never split a position across windows.
            let end = (end..keys.len())
                .find(|&k| pos_of[k] != pos_of[end - 1])
                .unwrap_or(keys.len());
            let window: Vec<u32> = (start as u32..end as u32).collect();
            self.for_each_by_shard(&hashes, &window, |shard, run| {
                for &k in run {
                    let k = k as usize;
                    if let Some(s) = shard.find(hashes[k], keys[k]) {
                        let e = shard.entry(s);
                        if e.state == State::Complete {
                            found[k] = Some((s, e.generation));
                        }
                    }
                }
            });
            if let Some(k) = (start..end).find(|&k| found[k].is_none()) {
                matched = pos_of[k] as usize;
                break;
            }
            start = end;
        }

        // Pass 2: touch (and lease) the matched keys so the head of the prefix ends most
        // recent: key k gets recency base + (n - 1 - k), and within a shard the touches run
        // in that ascending order (the run is in ascending k, so backwards). A key that
        // vanished in between shortens the match to the positions before it.
        let n = pos_of
            .iter()
            .take_while(|&&p| (p as usize) < matched)
            .count();
        let now = self.clock.now();
        let until = now.saturating_add(nanos(self.config.lease_ttl));
        let base = self.access_seq.fetch_add(n as u64, Ordering::Relaxed);
        let touched: Vec<u32> = (0..n as u32).collect();
        let mut vanished = matched;
        let mut grants = self.leases.grants(now, until);
        self.for_each_by_shard(&hashes, &touched, |shard, run| {
            for &k in run.iter().rev() {
                let k = k as usize;
                let (slot, generation) = found[k].expect("matched keys were found");
                if shard
                    .live(slot, generation)
                    .is_some_and(|e| e.state == State::Complete)
                {
                    shard.touch(slot, base + (n - 1 - k) as u64);
                    if lease {
                        let e = shard.entry_mut(slot);
                        grants.grant(e.lease_until);
                        e.lease(until);
                    }
                } else {
                    vanished = vanished.min(pos_of[k] as usize);
                }
            }
        });
        let matched = vanished;
        Ok(PrefixMatch {
            len: matched,
            leased_until: (lease && matched > 0).then_some(until),
        })
    }

    /// Calls `f` once per shard with that shard locked and the indices (into `hashes`) of
    /// `items` that live in it, in ascending order. One lock per shard instead of one per
    /// key lets the CPU overlap the cache misses of neighbouring lookups.
    fn for_each_by_shard(
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

    fn stats(&self) -> StoreStats {
        let mut objects = [0u64; crate::tier::MAX_TIERS];
        let mut pending = 0;
        let mut index_bytes = 0u64;
        let mut key_bytes = 0;
        let mut c = StoreCounters::default();
        for padded in self.shards.iter() {
            let s = padded.0.lock();
            for (t, n) in s.objects.iter().enumerate() {
                objects[t] += n;
            }
            pending += s.pending_count;
            index_bytes += s.index_bytes() as u64;
            key_bytes += s.key_bytes;
            c.ops.add(&s.counters);
        }
        index_bytes += (self.shards.len() * std::mem::size_of::<PaddedShard>()) as u64;
        let g = &self.counters;
        c.evictions = g.evictions.load(Ordering::Relaxed);
        c.evicted_bytes = g.evicted_bytes.load(Ordering::Relaxed);
        c.demotions = g.demotions.load(Ordering::Relaxed);
        c.promotions = g.promotions.load(Ordering::Relaxed);
        c.unmounted_objects = g.unmounted_objects.load(Ordering::Relaxed);
        c.corrupt = g.corrupt.load(Ordering::Relaxed);
        c.expired_reservations = g.expired_reservations.load(Ordering::Relaxed);
        c.revoked_reservations = g.revoked_reservations.load(Ordering::Relaxed);
        c.no_space = g.no_space.load(Ordering::Relaxed);
        let tiers = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                index_bytes += t.bookkeeping_bytes() as u64;
                let (segments, a) = t.alloc_stats();
                let n = &self.tier_counters[i];
                TierStats {
                    kind: t.kind(),
                    capacity: t.capacity(),
                    used: t.used(),
                    objects: objects[i],
                    segments,
                    free_extents: a.free_extents,
                    largest_free_extent: a.largest_free,
                    fragmentation: a.fragmentation(),
                    high_watermark: (t.capacity() as f64
                        * self.config.eviction_high_watermark_ratio)
                        as u64,
                    evictions: n.evictions.load(Ordering::Relaxed),
                    evicted_bytes: n.evicted_bytes.load(Ordering::Relaxed),
                    demotions: n.demotions.load(Ordering::Relaxed),
                    promotions: n.promotions.load(Ordering::Relaxed),
                    io: t.io_figures(),
                }
            })
            .collect();
        let total: u64 = objects.iter().sum();
        StoreStats {
            tiers,
            objects: total,
            pending,
            index_bytes,
            key_bytes,
            index_bytes_per_object: index_bytes as f64 / (total + pending).max(1) as f64,
            counters: c,
        }
    }

    fn reclaim(&self, within: Duration) -> bool {
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

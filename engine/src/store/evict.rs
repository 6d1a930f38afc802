//! Watermark eviction and demotion down the tier stack.
//!
//! Invariants (what the tests check):
//! * only complete, unpinned objects whose lease has ended are ever evicted or moved —
//!   pending reservations and pinned objects are not even on the recency lists;
//! * victims go least recently used first within a segment (segmented LRU): objects not
//!   read since they arrived in the tier (probation) go before those read there
//!   (protected), unless the protected bytes pass `eviction_protected_ratio` of the tier or
//!   probation has nothing evictable. Each shard offers the tail of the chosen list and
//!   the offers are merged by last access, so within the segment the order is global LRU
//!   up to the point where some shard's offer runs out (then the shards are asked again);
//! * evicting from tier i demotes to tier i+1 when it has room (evicting there in turn), and
//!   drops from the last tier;
//! * a victim's bytes are retired, never freed in place, so a concurrent in-process reader
//!   finishes its copy from intact memory.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_epoch::{self as epoch, Guard};

use super::facade::Store;
use super::index::{key_hash, Segment, State};
use super::inner::Inner;
use crate::tier::{Extent, Fresh, ObjectWrite, PinnedRead, PinnedWrite, Tier};

/// Recency-list entries each shard offers per round.
const OFFER_PER_SHARD: usize = 16;
/// Bytes of victims demoted together: one [`Tier::store_objects`] call (for ssd, one
/// io_uring submission of that many writes; its staging buffers are as large).
const DEMOTION_BATCH_BYTES: u64 = 32 << 20;
/// Rounds in a row whose every victim changed before it could be evicted, before an
/// eviction gives up.
const MAX_LOST_ROUNDS: u32 = 3;
/// Entries a shard may walk past (leased ones) per round before giving up; doubles while a
/// round finds nothing, so deep evictable objects are still reached.
const INITIAL_WALK_BUDGET: usize = 256;

struct Candidate {
    stamp: u64,
    shard: usize,
    slot: u32,
    generation: u32,
    len: u64,
    /// Moved out of a device segment being unmounted: pinned objects move too (keeping
    /// their pin), since the memory is leaving.
    relocating: bool,
}

impl Inner {
    /// Frees at least `target` bytes of tier `i` if that many are evictable; returns the bytes
    /// freed (demoted or dropped). Waits for any other evictor of the tier first.
    pub(crate) fn evict(&self, i: usize, target: u64) -> u64 {
        let _evicting = self.evictors[i].lock();
        self.evict_locked(i, target)
    }

    /// [`Inner::evict`] for a caller that holds `evictors[i]`.
    pub(crate) fn evict_locked(&self, i: usize, target: u64) -> u64 {
        let tier = i as u8;
        let mut freed = 0;
        let mut budget = INITIAL_WALK_BUDGET;
        let mut lost_rounds = 0;
        let protected_limit =
            (self.tiers[i].capacity() as f64 * self.config.eviction_protected_ratio) as u64;
        let mut segments = [
            Offers::new(self.shards.len()),
            Offers::new(self.shards.len()),
        ];
        let mut scratch = Vec::new();
        while freed < target {
            let now = self.clock.now();
            let mut protected_bytes = 0;
            for offers in &mut segments {
                offers.clear();
            }
            for (s, padded) in self.shards.iter().enumerate() {
                let shard = padded.0.lock();
                protected_bytes += shard.protected_bytes[i];
                for (segment, offers) in [Segment::Probation, Segment::Protected]
                    .into_iter()
                    .zip(&mut segments)
                {
                    scratch.clear();
                    offers.more[s] = shard.eviction_candidates(
                        tier,
                        segment,
                        now,
                        OFFER_PER_SHARD,
                        budget,
                        &mut scratch,
                    );
                    offers.add(s, &scratch);
                }
            }
            // Protected objects go first only while they hold more than their share, and
            // only as many as bring them back to it; otherwise when probation has none.
            let excess = protected_bytes.saturating_sub(protected_limit);
            let [probation, protected] = &mut segments;
            let protected_first = excess > 0 && !protected.candidates.is_empty();
            let (chosen, round_target) = if protected_first {
                (protected, excess.min(target - freed))
            } else if probation.candidates.is_empty() {
                (protected, target - freed)
            } else {
                (probation, target - freed)
            };
            let Offers {
                candidates: offers,
                offered,
                more,
            } = chosen;
            if offers.is_empty() {
                let deeper = segments.iter().any(|o| o.more.iter().any(|&m| m));
                if deeper && budget < usize::MAX / 2 {
                    budget *= 2; // Only leased objects at the tails: look deeper.
                    continue;
                }
                break;
            }
            offers.sort_unstable_by_key(|c| c.stamp);
            // This round's victims: oldest first, as many as the round's target needs, up
            // to the first shard whose offer runs out (it may hold older objects than the
            // next offer, so it is asked again next round).
            let mut taken = vec![0usize; self.shards.len()];
            let mut victims = 0;
            let mut wanted = 0;
            for c in offers.iter() {
                if wanted >= round_target {
                    break;
                }
                victims += 1;
                wanted += c.len;
                taken[c.shard] += 1;
                if taken[c.shard] == offered[c.shard] && more[c.shard] {
                    break;
                }
            }
            let progress = self.evict_batch(i, &offers[..victims]);
            if progress == 0 {
                // Every victim of the round was used, leased or removed meanwhile; they
                // leave the tails, so the next round is offered others. Bounded: a tier
                // whose objects all keep changing is not evictable now.
                lost_rounds += 1;
                if lost_rounds > MAX_LOST_ROUNDS {
                    break;
                }
            }
            freed += progress;
        }
        // The victims' bytes were retired under guards now dropped: push them to the
        // collector so the space returns as soon as current readers unpin.
        epoch::pin().flush();
        self.tiers[i].reclaim_retired();
        freed
    }

    /// Demotes or drops `victims` (of tier `i`); returns the bytes that left the tier.
    /// Demotions to a tier that does I/O go in batches of [`DEMOTION_BATCH_BYTES`], one
    /// [`Tier::store_objects`] call each, so the device sees them together (one io_uring
    /// submission) rather than one write at a time.
    fn evict_batch(&self, i: usize, victims: &[Candidate]) -> u64 {
        let Some(below) = self.tiers.get(i + 1) else {
            return victims
                .iter()
                .filter(|c| self.drop_victim(i, c))
                .map(|c| c.len)
                .sum();
        };
        let mut freed = 0;
        let mut start = 0;
        while start < victims.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < victims.len()
                && (end == start || bytes + victims[end].len <= DEMOTION_BATCH_BYTES)
            {
                bytes += victims[end].len;
                end += 1;
            }
            let mut moving = Vec::with_capacity(end - start);
            for c in &victims[start..end] {
                let seen = self.shards[c.shard]
                    .0
                    .lock()
                    .live(c.slot, c.generation)
                    .map(|e| (e.hits, e.shadow()));
                let Some((hits, shadow)) = seen else { continue }; // removed meanwhile
                if shadow.is_some_and(|s| s.tier as usize == i + 1) {
                    freed += if self.demote_onto_shadow(i, c) {
                        c.len
                    } else {
                        0
                    };
                    continue;
                }
                let dst = below
                    .admits(hits)
                    .then(|| self.allocate_evicting(i + 1, c.len, self.config.put_timeout))
                    .flatten();
                match dst {
                    Some(dst) => moving.push((c, dst)),
                    None => freed += if self.drop_victim(i, c) { c.len } else { 0 },
                }
            }
            freed += self.demote_all_of(i, moving);
            start = end;
        }
        freed
    }

    /// Drops one victim from the index; false if it changed meanwhile (used, leased,
    /// removed).
    fn drop_victim(&self, i: usize, c: &Candidate) -> bool {
        let guard = epoch::pin();
        let mut shard = self.shards[c.shard].0.lock();
        if !self.still_evictable(&shard, i, c) {
            return false;
        }
        let hash = key_hash(&shard.entry(c.slot).key);
        self.drop_entry(&mut shard, hash, c.slot, &guard);
        drop(shard);
        self.count_eviction(i, c.len);
        true
    }

    /// Copies each victim into its extent of tier i+1 in one [`Tier::store_objects`] call,
    /// without holding a shard lock, then moves each one that is still evictable; returns
    /// the bytes that left tier `i`. A victim whose source is not host memory (device) goes
    /// through [`Inner::demote`] alone. One whose write failed is dropped, rather than let
    /// tier `i` fill with objects that cannot leave.
    fn demote_all_of(&self, i: usize, moving: Vec<(&Candidate, Fresh)>) -> u64 {
        let mut freed = 0;
        let guard = epoch::pin();
        let (src_tier, dst_tier) = (&*self.tiers[i], &*self.tiers[i + 1]);
        let mut fresh: Vec<Fresh> = Vec::new();
        let mut batch: Vec<(&Candidate, Victim, PinnedRead<'_>)> = Vec::new();
        for (c, dst) in moving {
            let seen = {
                let shard = self.shards[c.shard].0.lock();
                self.still_evictable(&shard, i, c).then(|| {
                    let victim = Victim::of(shard.entry(c.slot));
                    let src = shard.pin_read(c.slot, victim.src, &guard);
                    (victim, src.expect("an evictable object is complete"))
                })
            };
            let Some((victim, src)) = seen else {
                dst_tier.retire(dst.into_extent(), &guard);
                continue;
            };
            if src_tier.host_bytes(src).is_some() {
                fresh.push(dst);
                batch.push((c, victim, src));
                continue;
            }
            freed += match self.demote(i, c, dst) {
                Demotion::Done => c.len,
                Demotion::Changed => 0,
                Demotion::Failed if self.drop_victim(i, c) => c.len,
                Demotion::Failed => 0,
            };
        }
        let mut writes: Vec<ObjectWrite<'_>> = fresh
            .into_iter()
            .zip(&batch)
            .map(|(dst, (_, v, src))| ObjectWrite {
                extent: dst.pin(&guard),
                key: &v.key,
                value: src_tier.host_bytes(*src).expect("checked above"),
                checksum: v.checksum,
            })
            .collect();
        let dsts: Vec<Extent> = writes.iter().map(|w| w.extent.extent()).collect();
        let results = dst_tier.store_objects(&mut writes);
        drop(writes);
        for (((c, Victim { src, .. }, _), dst), result) in batch.into_iter().zip(dsts).zip(results)
        {
            if let Err(e) = result {
                demotion_failed(dst_tier.kind().name(), &e);
                dst_tier.discard_unwritten(dst, &guard);
                freed += if self.drop_victim(i, c) { c.len } else { 0 };
                continue;
            }
            freed += if self.swap_demoted(i, c, src, dst, &guard) {
                c.len
            } else {
                0
            };
        }
        freed
    }

    /// Points a victim whose shadow is in tier i+1 back at it, retiring its copy in tier
    /// `i`: a demotion that writes nothing. False if it changed meanwhile.
    fn demote_onto_shadow(&self, i: usize, c: &Candidate) -> bool {
        let guard = epoch::pin();
        let mut shard = self.shards[c.shard].0.lock();
        if !self.still_evictable(&shard, i, c) {
            return false;
        }
        let e = shard.entry(c.slot);
        let (src, Some(shadow)) = (e.extent, e.shadow()) else {
            return false;
        };
        if shadow.tier as usize != i + 1 {
            return false;
        }
        shard.move_to_keeping(c.slot, shadow, None);
        drop(shard);
        self.tiers[i].retire(src, &guard);
        self.count_demotion(i, c.len);
        true
    }

    /// Demotes or drops one victim; false if it changed meanwhile (used, leased, removed).
    fn evict_one(&self, i: usize, c: &Candidate) -> bool {
        if let Some(below) = self.tiers.get(i + 1) {
            let seen = self.shards[c.shard]
                .0
                .lock()
                .live(c.slot, c.generation)
                .map(|e| (e.hits, e.shadow()));
            let Some((hits, shadow)) = seen else {
                return false;
            };
            if shadow.is_some_and(|s| s.tier as usize == i + 1) {
                return self.demote_onto_shadow(i, c);
            }
            if below.admits(hits) {
                if let Some(dst) = self.allocate_evicting(i + 1, c.len, self.config.put_timeout) {
                    match self.demote(i, c, dst) {
                        Demotion::Done => return true,
                        Demotion::Changed => return false,
                        // The tier below could not take it (a device error): drop it
                        // rather than let dram fill with objects that cannot leave.
                        Demotion::Failed => {}
                    }
                }
            }
        }
        self.drop_victim(i, c)
    }

    fn still_evictable(&self, shard: &super::index::Shard, i: usize, c: &Candidate) -> bool {
        shard.live(c.slot, c.generation).is_some_and(|e| {
            e.state == State::Complete
                && (!e.pinned || c.relocating)
                && e.extent.tier as usize == i
                && (e.lease_until <= self.clock.now() || e.may_return_to_shadow(i as u8))
        })
    }

    /// Copies the victim into `dst` (tier i+1) without holding the shard lock, then swaps
    /// its location if it is still evictable; otherwise gives `dst` back.
    fn demote(&self, i: usize, c: &Candidate, dst: Fresh) -> Demotion {
        let guard = epoch::pin();
        let dst_tier = &*self.tiers[dst.extent().tier as usize];
        let (victim, src) = {
            let shard = self.shards[c.shard].0.lock();
            if !self.still_evictable(&shard, i, c) {
                drop(shard);
                dst_tier.retire(dst.into_extent(), &guard);
                return Demotion::Changed;
            }
            let victim = Victim::of(shard.entry(c.slot));
            let src = shard.pin_read(c.slot, victim.src, &guard);
            (victim, src.expect("an evictable object is complete"))
        };
        let dst = dst.pin(&guard);
        let dst_extent = dst.extent();
        let copied = copy_object(&*self.tiers[i], src, &victim, dst_tier, dst);
        let dst = dst_extent;
        if let Err(e) = &copied {
            demotion_failed(self.tiers[dst.tier as usize].kind().name(), e);
            self.tiers[dst.tier as usize].retire(dst, &guard);
            return Demotion::Failed;
        }
        if self.swap_demoted(i, c, victim.src, dst, &guard) {
            Demotion::Done
        } else {
            Demotion::Changed
        }
    }

    /// Points the victim at its copy `dst` if it is still evictable and still at `src`
    /// (retiring `src`); otherwise gives `dst` back. True if it moved.
    fn swap_demoted(
        &self,
        i: usize,
        c: &Candidate,
        src: Extent,
        dst: Extent,
        guard: &Guard,
    ) -> bool {
        let mut shard = self.shards[c.shard].0.lock();
        let unchanged = self.still_evictable(&shard, i, c) && shard.entry(c.slot).extent == src;
        if !unchanged {
            drop(shard);
            self.tiers[dst.tier as usize].retire(dst, guard);
            return false;
        }
        shard.move_to(c.slot, dst);
        drop(shard);
        self.tiers[i].retire(src, guard);
        self.count_demotion(i, c.len);
        true
    }

    /// Counts an object of `len` bytes moved from tier `i` to the next one.
    fn count_demotion(&self, i: usize, len: u64) {
        self.counters.demotions.fetch_add(1, Ordering::Relaxed);
        self.tier_counters[i]
            .demotions
            .fetch_add(1, Ordering::Relaxed);
        self.count_eviction(i, len);
    }

    /// Counts an object of `len` bytes leaving tier `i` to make room.
    fn count_eviction(&self, i: usize, len: u64) {
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .evicted_bytes
            .fetch_add(len, Ordering::Relaxed);
        let tier = &self.tier_counters[i];
        tier.evictions.fetch_add(1, Ordering::Relaxed);
        tier.evicted_bytes.fetch_add(len, Ordering::Relaxed);
    }
}

impl Inner {
    /// Moves the complete objects of device segment `segment` (tier `i`) down a tier,
    /// waiting for leased ones until `deadline`; returns (moved, left behind).
    pub(crate) fn relocate_segment(&self, i: usize, segment: u16, deadline: Instant) -> (u64, u64) {
        let mut moved = 0;
        loop {
            let mut left = 0;
            for (s, padded) in self.shards.iter().enumerate() {
                let victims: Vec<Candidate> = {
                    let shard = padded.0.lock();
                    shard
                        .slots()
                        .into_iter()
                        .filter_map(|(slot, generation)| {
                            let e = shard.entry(slot);
                            let here = e.state == State::Complete
                                && e.extent.tier as usize == i
                                && e.extent.segment == segment;
                            here.then_some(Candidate {
                                stamp: e.stamp,
                                shard: s,
                                slot,
                                generation,
                                len: e.extent.len,
                                relocating: true,
                            })
                        })
                        .collect()
                };
                for c in &victims {
                    let before = self.counters.demotions.load(Ordering::Relaxed);
                    let gone = self.evict_one(i, c);
                    if self.counters.demotions.load(Ordering::Relaxed) > before {
                        moved += 1;
                    } else if !gone {
                        left += 1; // leased (or changed): try again
                    }
                }
            }
            if left == 0 || Instant::now() >= deadline {
                return (moved, left);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One round's eviction offers from every shard's list of one segment.
struct Offers {
    candidates: Vec<Candidate>,
    /// Per shard: how many it offered, and whether its list holds more than it looked at.
    offered: Vec<usize>,
    more: Vec<bool>,
}

impl Offers {
    fn new(shards: usize) -> Offers {
        Offers {
            candidates: Vec::new(),
            offered: vec![0; shards],
            more: vec![false; shards],
        }
    }

    fn clear(&mut self) {
        self.candidates.clear();
        self.offered.fill(0);
        self.more.fill(false);
    }

    /// Adds shard `shard`'s offer, as (last access, slot, generation, length).
    fn add(&mut self, shard: usize, offer: &[(u64, u32, u32, u64)]) {
        self.offered[shard] = offer.len();
        self.candidates.extend(
            offer
                .iter()
                .map(|&(stamp, slot, generation, len)| Candidate {
                    stamp,
                    shard,
                    slot,
                    generation,
                    len,
                    relocating: false,
                }),
        );
    }
}

enum Demotion {
    Done,
    /// The victim was used, leased or removed meanwhile: leave it.
    Changed,
    /// The copy failed.
    Failed,
}

/// A victim as seen under its shard lock: what demoting it copies.
struct Victim {
    src: Extent,
    key: Box<[u8]>,
    /// Recorded at its commit (`None` where the store keeps no checksums).
    checksum: Option<u64>,
}

impl Victim {
    fn of(e: &super::index::Entry) -> Victim {
        Victim {
            src: e.extent,
            key: e.key.clone(),
            checksum: (e.state == State::Complete && e.tag != 0).then_some(e.tag),
        }
    }
}

/// Copies a whole object from `src` (its extent) into another tier's extent `dst`, of the
/// same length.
fn copy_object(
    src_tier: &dyn Tier,
    src: PinnedRead<'_>,
    victim: &Victim,
    dst_tier: &dyn Tier,
    mut dst: PinnedWrite<'_>,
) -> strata_proto::Result<()> {
    debug_assert_eq!(src.extent().len, dst.extent().len);
    let len = dst.extent().len;
    let staged;
    let value = match src_tier.host_bytes(src) {
        Some(bytes) => bytes,
        None => {
            // A source that is not host memory (device) copies straight into a host
            // destination (dram): one device-to-host copy, no staging.
            if let Some(into) = dst_tier.host_bytes_mut(&mut dst, 0..len) {
                return src_tier.read(src, into);
            }
            let mut buf = vec![0u8; len as usize];
            src_tier.read(src, &mut buf)?;
            staged = buf;
            &staged[..]
        }
    };
    let mut object = [ObjectWrite {
        extent: dst,
        key: &victim.key,
        value,
        checksum: victim.checksum,
    }];
    let mut results = dst_tier.store_objects(&mut object);
    results.pop().unwrap_or(Ok(()))
}

impl Store {
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
}

/// Warns that a demotion failed, at most once a second with the count of those not told:
/// a full disk fails every demotion, and one line per object flooded the log (thousands a
/// second in the full-disk soak). The ssd tier's error metrics count every one.
fn demotion_failed(tier: &str, e: &crate::Error) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    static UNTOLD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = LAST.lock();
    let now = std::time::Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1)) {
        UNTOLD.fetch_add(1, Ordering::Relaxed);
        return;
    }
    *last = Some(now);
    drop(last);
    let untold = UNTOLD.swap(0, Ordering::Relaxed);
    if untold == 0 {
        tracing::warn!("demoting an object to the {tier} tier failed: {e}");
    } else {
        tracing::warn!(
            "demoting an object to the {tier} tier failed: {e} (and {untold} more failed \
             demotions since the last warning)"
        );
    }
}

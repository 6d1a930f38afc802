//! One shard of the object index.
//!
//! A shard is a hash table of slot numbers over a slab of [`Entry`]s, plus intrusive
//! doubly-linked lists threaded through the entries:
//!
//! * two recency lists per tier, holding that tier's complete, unpinned objects, most
//!   recently used at the head: *probation* for objects not read since they arrived in the
//!   tier, *protected* for those read there at least once. Eviction takes from the tail of
//!   probation while the tier's protected bytes stay within their share, so a stream of
//!   blocks written once and never read (or a promotion read once) cannot push out the
//!   objects that are read again and again (segmented LRU; docs/engine.md);
//! * one list of pending reservations, oldest at the tail — the reaper takes expired ones
//!   from there.
//!
//! Pinned objects are on no list, so eviction never even looks at them. Every entry is on at
//! most one list, so one pair of links serves all of them. The key lives only in the entry;
//! the table stores a `u32` slot and compares keys through the slab, which keeps an object's
//! index cost near 105 bytes plus its key (a 96-byte entry, of which 16 hold the shadow a
//! promotion from ssd keeps, plus the table's bucket).

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

use crossbeam_epoch::Guard;

use super::counters::OpCounters;
use crate::tier::{Extent, OwnedPinnedRead, PinnedRead, PinnedWrite, MAX_TIERS};

pub(crate) const NIL: u32 = u32::MAX;
/// `Extent::tier` of a pending entry that has no extent yet.
pub(crate) const NO_TIER: u8 = u8::MAX;

pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Vacant,
    Pending,
    Complete,
}

pub(crate) struct Entry {
    pub key: Box<[u8]>,
    pub extent: Extent,
    /// Pending: the writer id. Complete: the value's checksum (0 when not computed).
    pub tag: u64,
    /// Pending: the reservation deadline. Complete: the recency clock at last access.
    pub stamp: u64,
    /// Complete: no eviction, move or unforced removal before this time.
    pub lease_until: u64,
    prev: u32,
    next: u32,
    /// Bumped whenever the slot is vacated, so a remembered (slot, generation) pair
    /// detects that its object is gone even if the slot was reused.
    pub generation: u32,
    pub state: State,
    pub pinned: bool,
    /// Complete: reads since the object arrived in its tier (saturating). Drives its
    /// recency segment (protected once read), ssd admission (was it read in dram?) and
    /// promotion (read again on ssd?).
    pub hits: u8,
    /// The copy an object promoted from a tier read through I/O keeps there (see
    /// [`Entry::shadow`]), as the fields of an extent of `extent.len` bytes: apart, they
    /// pack into the entry's padding (16 bytes, not a 24-byte `Extent`).
    shadow_offset: u64,
    shadow_block: u32,
    shadow_segment: u16,
    /// `NO_TIER` when there is no shadow.
    shadow_tier: u8,
    /// Complete: a lease was granted since the object came to its extent. A lease taken
    /// before its promotion names the shadow, so until one names the new extent, the
    /// object may go back onto its shadow while leased ([`Entry::may_return_to_shadow`]).
    leased_at_extent: bool,
}

impl Entry {
    /// The object's second copy, in a tier below its own, if it has one. A promotion
    /// from a tier read through I/O (ssd) keeps the source as this shadow: a reader that
    /// was leased the old location still finds the bytes there, and demoting the object
    /// back writes nothing (the values are immutable). It goes when the object does.
    pub fn shadow(&self) -> Option<Extent> {
        (self.shadow_tier != NO_TIER).then_some(Extent {
            tier: self.shadow_tier,
            segment: self.shadow_segment,
            block: self.shadow_block,
            offset: self.shadow_offset,
            len: self.extent.len,
        })
    }

    /// Extends its lease to `until` (never shortens it).
    pub fn lease(&mut self, until: u64) {
        self.lease_until = self.lease_until.max(until);
        self.leased_at_extent = true;
    }

    /// Whether eviction from tier `tier` may put it back onto its shadow despite an
    /// unexpired lease: the shadow is in the tier below and no lease names the extent
    /// being left, so every lease holder reads the shadow, which stays.
    pub fn may_return_to_shadow(&self, tier: u8) -> bool {
        !self.leased_at_extent && self.shadow_tier != NO_TIER && self.shadow_tier == tier + 1
    }

    /// Whether `at` is where this object's bytes are: its extent or its shadow.
    pub fn holds(&self, at: &Extent) -> bool {
        self.extent == *at || self.shadow() == Some(*at)
    }

    fn set_shadow(&mut self, shadow: Option<Extent>) {
        let s = shadow.unwrap_or(NO_EXTENT);
        debug_assert!(shadow.is_none_or(|s| s.len == self.extent.len));
        self.shadow_tier = s.tier;
        self.shadow_segment = s.segment;
        self.shadow_block = s.block;
        self.shadow_offset = s.offset;
    }
}

const NO_EXTENT: Extent = Extent {
    tier: NO_TIER,
    segment: 0,
    block: 0,
    offset: 0,
    len: 0,
};

#[derive(Clone, Copy, Default)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

/// Which list an entry is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListId {
    Recency(u8, Segment),
    Pending,
}

/// The two halves of a tier's recency order (segmented LRU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Not read since it arrived in the tier: evicted first.
    Probation = 0,
    /// Read in the tier at least once: evicted once the tier's protected bytes pass their
    /// share, or when probation has nothing evictable.
    Protected = 1,
}

impl Segment {
    fn of(e: &Entry) -> Segment {
        if e.hits > 0 {
            Segment::Protected
        } else {
            Segment::Probation
        }
    }
}

pub(crate) struct Shard {
    table: HashTable<u32>,
    entries: Vec<Entry>,
    vacant: u32,
    /// Per tier, indexed by [`Segment`].
    recency: [[List; 2]; MAX_TIERS],
    pending: List,
    pub objects: [u64; MAX_TIERS],
    /// Per tier, the bytes of the objects on its protected list.
    pub protected_bytes: [u64; MAX_TIERS],
    pub pending_count: u64,
    pub key_bytes: u64,
    /// This shard's share of the operation counters, summed by `Store::stats`.
    pub counters: OpCounters,
}

impl Shard {
    pub fn new() -> Shard {
        Shard {
            table: HashTable::new(),
            entries: Vec::new(),
            vacant: NIL,
            recency: [[EMPTY; 2]; MAX_TIERS],
            pending: EMPTY,
            objects: [0; MAX_TIERS],
            protected_bytes: [0; MAX_TIERS],
            pending_count: 0,
            key_bytes: 0,
            counters: OpCounters::default(),
        }
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        &self.entries[slot as usize]
    }

    pub fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// `at`, pinned for reading under `guard`: if the entry at `slot` is a complete object
    /// whose bytes are at `at` (its extent or its shadow).
    pub fn pin_read<'g>(&self, slot: u32, at: Extent, guard: &'g Guard) -> Option<PinnedRead<'g>> {
        self.readable(slot, at).then(|| {
            // SAFETY: the object is complete and holds `at` now, under this shard's lock.
            // An extent is retired only after it leaves the index under this lock, so any
            // retire of `at` comes after this moment, while `guard` is pinned: its free
            // waits for `guard`. Complete values are never written.
            unsafe { PinnedRead::new(at, guard) }
        })
    }

    /// [`Shard::pin_read`], the token owning `guard`; `guard` back when the entry does not
    /// hold a complete object at `at`.
    pub fn pin_read_owned(
        &self,
        slot: u32,
        at: Extent,
        guard: Guard,
    ) -> Result<OwnedPinnedRead, Guard> {
        if !self.readable(slot, at) {
            return Err(guard);
        }
        // SAFETY: as in `pin_read`.
        Ok(unsafe { OwnedPinnedRead::new(at, guard) })
    }

    fn readable(&self, slot: u32, at: Extent) -> bool {
        self.entries
            .get(slot as usize)
            .is_some_and(|e| e.state == State::Complete && e.holds(&at))
    }

    /// The reservation at `slot`, pinned for `writer` under `guard`: if it is pending,
    /// `writer`'s, and has its space.
    pub fn pin_write<'g>(
        &self,
        slot: u32,
        writer: u64,
        guard: &'g Guard,
    ) -> Option<PinnedWrite<'g>> {
        let e = self.entries.get(slot as usize)?;
        if e.state != State::Pending || e.tag != writer || e.extent.tier == NO_TIER {
            return None;
        }
        // SAFETY: the reservation is `writer`'s now, under this shard's lock; its extent is
        // retired only after it leaves the index under this lock (so after `guard` was
        // pinned), and a pending object has no readers. Only its writer asks for this
        // token; a writer that moves pieces over several connections (the data plane)
        // sends each byte range over one of them.
        Some(unsafe { PinnedWrite::new(e.extent, guard) })
    }

    /// The slot of `slot` if it still holds generation `generation`.
    pub fn live(&self, slot: u32, generation: u32) -> Option<&Entry> {
        self.entries
            .get(slot as usize)
            .filter(|e| e.generation == generation && e.state != State::Vacant)
    }

    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(hash, |&s| &*entries[s as usize].key == key)
            .copied()
    }

    /// Adds a pending reservation with no extent yet; the caller checked the key is absent.
    pub fn insert_pending(
        &mut self,
        hash: u64,
        key: &[u8],
        writer: u64,
        deadline: u64,
        pinned: bool,
    ) -> u32 {
        let entry = Entry {
            key: key.into(),
            extent: NO_EXTENT,
            tag: writer,
            stamp: deadline,
            lease_until: 0,
            prev: NIL,
            next: NIL,
            generation: 0,
            state: State::Pending,
            pinned,
            hits: 0,
            shadow_offset: 0,
            shadow_block: 0,
            shadow_segment: 0,
            shadow_tier: NO_TIER,
            leased_at_extent: false,
        };
        let slot = if self.vacant != NIL {
            let slot = self.vacant;
            let e = &mut self.entries[slot as usize];
            self.vacant = e.next;
            let generation = e.generation;
            *e = Entry {
                generation,
                ..entry
            };
            slot
        } else {
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        };
        let entries = &self.entries;
        self.table
            .insert_unique(hash, slot, |&s| key_hash(&entries[s as usize].key));
        self.key_bytes += key.len() as u64;
        self.pending_count += 1;
        self.push_front(ListId::Pending, slot);
        slot
    }

    /// Turns a pending entry complete and makes it visible.
    pub fn commit(&mut self, slot: u32, checksum: u64, access: u64) {
        let len = self.entries[slot as usize].extent.len;
        self.make_complete(slot, checksum, access);
        self.counters.puts += 1;
        self.counters.put_bytes += len;
    }

    /// Indexes an object found in a persistent tier at open, as complete; the caller
    /// checked the key is absent.
    pub fn insert_complete(
        &mut self,
        hash: u64,
        key: &[u8],
        extent: Extent,
        checksum: u64,
        access: u64,
    ) {
        let slot = self.insert_pending(hash, key, 0, 0, false);
        self.entries[slot as usize].extent = extent;
        self.make_complete(slot, checksum, access);
    }

    fn make_complete(&mut self, slot: u32, checksum: u64, access: u64) {
        self.unlink(slot);
        let e = &mut self.entries[slot as usize];
        debug_assert_eq!(e.state, State::Pending);
        e.state = State::Complete;
        e.tag = checksum;
        e.stamp = access;
        e.hits = 0;
        let (tier, pinned) = (e.extent.tier, e.pinned);
        self.pending_count -= 1;
        self.objects[tier as usize] += 1;
        if !pinned {
            self.push_front(ListId::Recency(tier, Segment::Probation), slot);
        }
    }

    /// Marks a complete object used now: it moves to the head of its recency list.
    pub fn touch(&mut self, slot: u32, access: u64) {
        self.entries[slot as usize].stamp = access;
        self.relink(slot, |_| {});
    }

    /// Counts a read of a complete object's bytes; the first read in its tier moves it to
    /// the head of the protected list.
    pub fn hit(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        if e.hits == 0 {
            self.relink(slot, |e| e.hits = 1);
        } else {
            e.hits = e.hits.saturating_add(1);
        }
    }

    /// Takes `slot` off its list, applies `change`, and puts it at the head of the list it
    /// then belongs on (none for a pinned object).
    fn relink(&mut self, slot: u32, change: impl FnOnce(&mut Entry)) {
        self.unlink(slot);
        change(&mut self.entries[slot as usize]);
        if let Some(id) = self.list_of(slot) {
            self.push_front(id, slot);
        }
    }

    /// Forgets a complete object's shadow (the caller retires its extent).
    pub fn drop_shadow(&mut self, slot: u32) {
        self.entries[slot as usize].set_shadow(None);
    }

    /// Points a complete object at a new extent in another tier and sets its shadow.
    pub fn move_to_keeping(&mut self, slot: u32, extent: Extent, shadow: Option<Extent>) {
        self.move_to(slot, extent);
        self.entries[slot as usize].set_shadow(shadow);
    }

    /// Points a complete object at a new extent in another tier (demotion); its shadow,
    /// if any, stays.
    pub fn move_to(&mut self, slot: u32, extent: Extent) {
        let old = self.entries[slot as usize].extent.tier;
        self.objects[old as usize] -= 1;
        self.objects[extent.tier as usize] += 1;
        // It arrives on probation: reads in the tier it left do not protect it here.
        self.relink(slot, |e| {
            e.extent = extent;
            e.hits = 0;
            e.leased_at_extent = false;
        });
    }

    /// Drops the entry from the index and returns its extent (`tier == NO_TIER` if none).
    pub fn remove(&mut self, hash: u64, slot: u32) -> Extent {
        self.unlink(slot);
        let found = self
            .table
            .find_entry(hash, |&s| s == slot)
            .map(|o| o.remove());
        debug_assert!(found.is_ok(), "index entry without a table slot");
        let e = &mut self.entries[slot as usize];
        match e.state {
            State::Pending => self.pending_count -= 1,
            State::Complete => self.objects[e.extent.tier as usize] -= 1,
            State::Vacant => unreachable!("removing a vacant slot"),
        }
        self.key_bytes -= e.key.len() as u64;
        let extent = e.extent;
        e.set_shadow(None);
        e.key = Box::default();
        e.extent = NO_EXTENT;
        e.state = State::Vacant;
        e.generation = e.generation.wrapping_add(1);
        e.next = self.vacant;
        self.vacant = slot;
        extent
    }

    /// Up to `max` evictable objects of `tier`'s `segment`, least recently used first, as
    /// (last access, slot, generation, length). Looks at no more than `budget` entries.
    pub fn eviction_candidates(
        &self,
        tier: u8,
        segment: Segment,
        now: u64,
        max: usize,
        budget: usize,
        out: &mut Vec<(u64, u32, u32, u64)>,
    ) -> bool {
        let mut slot = self.recency[tier as usize][segment as usize].tail;
        let mut seen = 0;
        let mut taken = 0;
        while slot != NIL && taken < max && seen < budget {
            let e = &self.entries[slot as usize];
            if e.lease_until <= now || e.may_return_to_shadow(tier) {
                out.push((e.stamp, slot, e.generation, e.extent.len));
                taken += 1;
            }
            seen += 1;
            slot = e.prev;
        }
        // Whether the list holds more than what was looked at.
        slot != NIL
    }

    /// Pending reservations whose deadline is at or before `now`, oldest first.
    pub fn expired_reservations(&self, now: u64, out: &mut Vec<(u32, u32)>) {
        let mut slot = self.pending.tail;
        while slot != NIL {
            let e = &self.entries[slot as usize];
            if e.stamp > now {
                break;
            }
            out.push((slot, e.generation));
            slot = e.prev;
        }
    }

    /// Every live slot with its generation (for remove_all).
    pub fn slots(&self) -> Vec<(u32, u32)> {
        let entries = &self.entries;
        self.table
            .iter()
            .map(|&s| (s, entries[s as usize].generation))
            .collect()
    }

    /// Heap bytes of this shard's index structures, keys excluded.
    pub fn index_bytes(&self) -> usize {
        // hashbrown: one u32 bucket plus one control byte per bucket.
        self.table.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    fn list(&mut self, id: ListId) -> &mut List {
        match id {
            ListId::Recency(t, segment) => &mut self.recency[t as usize][segment as usize],
            ListId::Pending => &mut self.pending,
        }
    }

    fn list_of(&self, slot: u32) -> Option<ListId> {
        let e = &self.entries[slot as usize];
        match e.state {
            State::Pending => Some(ListId::Pending),
            State::Complete if !e.pinned => Some(ListId::Recency(e.extent.tier, Segment::of(e))),
            _ => None,
        }
    }

    fn push_front(&mut self, id: ListId, slot: u32) {
        if let ListId::Recency(t, Segment::Protected) = id {
            self.protected_bytes[t as usize] += self.entries[slot as usize].extent.len;
        }
        let head = self.list(id).head;
        {
            let e = &mut self.entries[slot as usize];
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = slot;
        }
        let list = self.list(id);
        list.head = slot;
        if list.tail == NIL {
            list.tail = slot;
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Some(id) = self.list_of(slot) else { return };
        if let ListId::Recency(t, Segment::Protected) = id {
            self.protected_bytes[t as usize] -= self.entries[slot as usize].extent.len;
        }
        let (prev, next) = {
            let e = &self.entries[slot as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.list(id).head = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        } else {
            self.list(id).tail = prev;
        }
        let e = &mut self.entries[slot as usize];
        e.prev = NIL;
        e.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index costs an entry per object: the shadow's fields must fill padding and one
    /// more 16 bytes, not add a whole extent.
    #[test]
    fn an_entry_stays_at_96_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 96);
    }

    fn ext(tier: u8, len: u64) -> Extent {
        Extent {
            tier,
            segment: 0,
            block: 0,
            offset: 0,
            len,
        }
    }

    fn add(s: &mut Shard, key: &str, now: u64) -> u32 {
        let slot = s.insert_pending(key_hash(key.as_bytes()), key.as_bytes(), 1, 100, false);
        s.entry_mut(slot).extent = ext(0, 10);
        s.commit(slot, 0, now);
        slot
    }

    #[test]
    fn recency_order_and_touch() {
        let mut s = Shard::new();
        let a = add(&mut s, "a", 1);
        let b = add(&mut s, "b", 2);
        let c = add(&mut s, "c", 3);
        let order = |s: &Shard| segment(s, 0, Segment::Probation);
        assert_eq!(order(&s), vec![a, b, c]);
        s.touch(a, 4);
        assert_eq!(order(&s), vec![b, c, a]);
        // A leased object is skipped but stays in place.
        s.entry_mut(c).lease_until = 20;
        assert_eq!(order(&s), vec![b, a]);
    }

    /// The evictable objects of `tier`'s `segment`, least recently used first.
    fn segment(s: &Shard, tier: u8, segment: Segment) -> Vec<u32> {
        let mut v = Vec::new();
        s.eviction_candidates(tier, segment, 10, 10, 10, &mut v);
        v.into_iter().map(|x| x.1).collect()
    }

    #[test]
    fn a_read_protects_an_object_until_it_changes_tier() {
        let mut s = Shard::new();
        let a = add(&mut s, "a", 1);
        let b = add(&mut s, "b", 2);
        let c = add(&mut s, "c", 3);
        s.touch(a, 4);
        s.hit(a);
        s.hit(a);
        assert_eq!(segment(&s, 0, Segment::Probation), vec![b, c]);
        assert_eq!(segment(&s, 0, Segment::Protected), vec![a]);
        assert_eq!(s.protected_bytes[0], 10);
        // A touch without a read (a prefix lookup) keeps the segment.
        s.touch(b, 5);
        assert_eq!(segment(&s, 0, Segment::Probation), vec![c, b]);
        s.hit(c);
        assert_eq!(segment(&s, 0, Segment::Protected), vec![a, c]);
        assert_eq!(s.protected_bytes[0], 20);
        // Demoted, it starts on probation below.
        s.move_to(a, ext(1, 10));
        assert_eq!(s.protected_bytes, [10, 0, 0, 0]);
        assert_eq!(segment(&s, 1, Segment::Probation), vec![a]);
        assert_eq!(segment(&s, 0, Segment::Protected), vec![c]);
        s.remove(key_hash(b"c"), c);
        assert_eq!(s.protected_bytes, [0; MAX_TIERS]);
        assert!(segment(&s, 0, Segment::Protected).is_empty());
    }

    #[test]
    fn remove_recycles_slot_with_new_generation() {
        let mut s = Shard::new();
        let a = add(&mut s, "a", 1);
        let g = s.entry(a).generation;
        s.remove(key_hash(b"a"), a);
        assert!(s.find(key_hash(b"a"), b"a").is_none());
        assert!(s.live(a, g).is_none());
        let b = add(&mut s, "b", 2);
        assert_eq!(b, a, "slot reused");
        assert!(
            s.live(a, g).is_none(),
            "old generation must not match the new object"
        );
        assert_eq!(s.objects[0], 1);
        assert_eq!(s.key_bytes, 1);
    }

    #[test]
    fn pending_expiry_order() {
        let mut s = Shard::new();
        let x = s.insert_pending(key_hash(b"x"), b"x", 1, 50, false);
        let y = s.insert_pending(key_hash(b"y"), b"y", 2, 60, false);
        let mut out = Vec::new();
        s.expired_reservations(55, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), vec![x]);
        out.clear();
        s.expired_reservations(60, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), vec![x, y]);
        assert_eq!(s.pending_count, 2);
    }
}

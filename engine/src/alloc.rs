//! An O(1) offset allocator for one segment, in the spirit of TLSF (two-level segregated
//! fit) as used by GPU engines to sub-allocate device heaps.
//!
//! It manages offsets, never memory: the caller maps offsets onto a segment. Sizes are kept
//! in units of `alignment` (a power of two), so every offset it returns is aligned.
//!
//! Free blocks sit in size bins. A bin is a "small float" of the size: the exponent (position
//! of the highest set bit) and the next [`MANTISSA_BITS`] bits below it, so each power of two
//! is split into eight bins and a block wastes at most 1/8 of its size to binning. A bitmap
//! over the bins finds the first non-empty bin at or above a size with two `trailing_zeros`.
//!
//! * `allocate` rounds the size *up* to a bin, so any block in that bin or above fits; if
//!   that finds nothing it scans the one bin the size rounds *down* to (which may hold a block
//!   just big enough), so a request the size of the largest free extent still succeeds.
//! * `free` merges the block with its free neighbours in address order (blocks keep
//!   physical prev/next links) and files the result in its bin.
//!
//! Both are O(1) apart from that last-resort scan of one bin.

/// Bits of mantissa per bin: 2^3 = 8 bins per power of two.
const MANTISSA_BITS: u32 = 3;
const MANTISSA_VALUE: u64 = 1 << MANTISSA_BITS;
const MANTISSA_MASK: u64 = MANTISSA_VALUE - 1;
/// Enough bins for any u64 size in units.
const BIN_COUNT: usize = ((64 - MANTISSA_BITS as usize) + 1) << MANTISSA_BITS;
const BITMAP_WORDS: usize = BIN_COUNT.div_ceil(64);
const NIL: u32 = u32::MAX;

/// A handle to an allocated block: pass it back to [`OffsetAllocator::free`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockId(u32);

impl BlockId {
    /// The raw index, for packing into an index entry.
    pub fn raw(self) -> u32 {
        self.0
    }
    /// Rebuilds a handle from [`BlockId::raw`].
    pub fn from_raw(raw: u32) -> BlockId {
        BlockId(raw)
    }
}

/// A successful allocation: where the block starts and how large it really is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub block: BlockId,
    /// Byte offset from the start of the segment; a multiple of the alignment.
    pub offset: u64,
    /// Bytes actually reserved (the request rounded up to the alignment).
    pub size: u64,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    offset: u64, // in units
    size: u64,   // in units
    // Address-order neighbours, for merging.
    phys_prev: u32,
    phys_next: u32,
    // Links in the bin's free list (free blocks) or the spare-node list (unused nodes).
    bin_prev: u32,
    bin_next: u32,
    used: bool,
}

/// Allocator statistics in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AllocStats {
    pub capacity: u64,
    pub used: u64,
    pub free_extents: u64,
    pub largest_free: u64,
}

impl AllocStats {
    /// 0.0 when the free space is one extent, towards 1.0 as it splinters:
    /// `1 - largest_free / total_free`.
    pub fn fragmentation(&self) -> f64 {
        let free = self.capacity - self.used;
        if free == 0 {
            0.0
        } else {
            1.0 - self.largest_free as f64 / free as f64
        }
    }
}

/// The allocator. Not thread-safe by itself: a segment wraps it in a mutex.
pub struct OffsetAllocator {
    align_shift: u32,
    capacity_units: u64,
    used_units: u64,
    free_blocks: u64,
    nodes: Vec<Block>,
    spare: u32,
    bin_heads: Vec<u32>,
    bitmap: [u64; BITMAP_WORDS],
}

/// The bin whose sizes are all <= `size` (a block of `size` is filed here).
fn bin_floor(size: u64) -> usize {
    debug_assert!(size > 0);
    if size < MANTISSA_VALUE {
        return size as usize;
    }
    let exp = 63 - size.leading_zeros();
    let mantissa = (size >> (exp - MANTISSA_BITS)) & MANTISSA_MASK;
    (((exp - MANTISSA_BITS + 1) as usize) << MANTISSA_BITS) | mantissa as usize
}

/// The first bin whose blocks are all >= `size`.
fn bin_ceil(size: u64) -> usize {
    let bin = bin_floor(size);
    if size < MANTISSA_VALUE {
        return bin;
    }
    let exp = 63 - size.leading_zeros();
    let low_mask = (1u64 << (exp - MANTISSA_BITS)) - 1;
    if size & low_mask != 0 {
        bin + 1
    } else {
        bin
    }
}

impl OffsetAllocator {
    /// An allocator over `capacity` bytes with every offset a multiple of `alignment`
    /// (a power of two). Capacity is rounded down to the alignment.
    ///
    /// Panics if `alignment` is not a power of two; callers validate configuration first.
    pub fn new(capacity: u64, alignment: u64) -> OffsetAllocator {
        assert!(
            alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        let align_shift = alignment.trailing_zeros();
        let capacity_units = capacity >> align_shift;
        let mut a = OffsetAllocator {
            align_shift,
            capacity_units,
            used_units: 0,
            free_blocks: 0,
            nodes: Vec::new(),
            spare: NIL,
            bin_heads: vec![NIL; BIN_COUNT],
            bitmap: [0; BITMAP_WORDS],
        };
        if capacity_units > 0 {
            let id = a.new_node(0, capacity_units);
            a.insert_free(id);
        }
        a
    }

    /// An allocator over `capacity` bytes in which the given blocks are already allocated:
    /// how a tier that survives restarts rebuilds its free space from the records it found.
    /// `allocated` holds `(offset, size)` pairs in bytes, sorted by offset, aligned, non-empty
    /// and not overlapping; otherwise the result is `None`. Returns the allocation of each.
    pub fn with_allocated(
        capacity: u64,
        alignment: u64,
        allocated: &[(u64, u64)],
    ) -> Option<(OffsetAllocator, Vec<Allocation>)> {
        let mut a = OffsetAllocator::new(0, alignment);
        let shift = a.align_shift;
        a.capacity_units = capacity >> shift;
        let mut blocks = Vec::with_capacity(allocated.len());
        let mut cursor = 0u64; // in units
        let mut prev = NIL;
        let mut append = |a: &mut OffsetAllocator, offset: u64, size: u64, used: bool| {
            let id = a.new_node(offset, size);
            a.nodes[id as usize].phys_prev = prev;
            if prev != NIL {
                a.nodes[prev as usize].phys_next = id;
            }
            prev = id;
            if used {
                a.nodes[id as usize].used = true;
                a.used_units += size;
            } else {
                a.insert_free(id);
            }
            id
        };
        for &(offset, size) in allocated {
            if offset % alignment != 0 || size == 0 {
                return None;
            }
            let (start, units) = (offset >> shift, size.div_ceil(alignment));
            if start < cursor || start.checked_add(units)? > a.capacity_units {
                return None;
            }
            if start > cursor {
                append(&mut a, cursor, start - cursor, false);
            }
            let id = append(&mut a, start, units, true);
            blocks.push(Allocation {
                block: BlockId(id),
                offset,
                size: units << shift,
            });
            cursor = start + units;
        }
        let end = a.capacity_units;
        if cursor < end {
            append(&mut a, cursor, end - cursor, false);
        }
        Some((a, blocks))
    }

    /// Bytes under management.
    pub fn capacity(&self) -> u64 {
        self.capacity_units << self.align_shift
    }

    /// Bytes allocated (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used_units << self.align_shift
    }

    /// Reserves at least `size` bytes. `None` when no free extent is large enough.
    pub fn allocate(&mut self, size: u64) -> Option<Allocation> {
        if size == 0 {
            return None;
        }
        let units = size.checked_add((1 << self.align_shift) - 1)? >> self.align_shift;
        if units > self.capacity_units - self.used_units {
            return None;
        }
        let id = match self.first_nonempty_bin(bin_ceil(units)) {
            Some(bin) => self.bin_heads[bin],
            None => self.scan_bin(bin_floor(units), units)?,
        };
        self.remove_free(id);
        let block = self.nodes[id as usize];
        if block.size > units {
            // Split: the tail goes back to the free bins.
            let rest = self.new_node(block.offset + units, block.size - units);
            let next = block.phys_next;
            self.nodes[rest as usize].phys_prev = id;
            self.nodes[rest as usize].phys_next = next;
            if next != NIL {
                self.nodes[next as usize].phys_prev = rest;
            }
            let b = &mut self.nodes[id as usize];
            b.phys_next = rest;
            b.size = units;
            self.insert_free(rest);
        }
        self.nodes[id as usize].used = true;
        self.used_units += units;
        Some(Allocation {
            block: BlockId(id),
            offset: block.offset << self.align_shift,
            size: units << self.align_shift,
        })
    }

    /// Returns a block. Returns false (and changes nothing) if `block` is not an allocated
    /// block of this allocator, so a double free cannot corrupt the free lists.
    pub fn free(&mut self, block: BlockId) -> bool {
        let mut id = block.0;
        match self.nodes.get(id as usize) {
            Some(b) if b.used => {}
            _ => return false,
        }
        self.nodes[id as usize].used = false;
        self.used_units -= self.nodes[id as usize].size;

        let prev = self.nodes[id as usize].phys_prev;
        if prev != NIL && !self.nodes[prev as usize].used {
            self.remove_free(prev);
            self.absorb_next(prev);
            id = prev;
        }
        let next = self.nodes[id as usize].phys_next;
        if next != NIL && !self.nodes[next as usize].used {
            self.remove_free(next);
            self.absorb_next(id);
        }
        self.insert_free(id);
        true
    }

    /// Current figures. Finding the largest free extent scans the highest non-empty bin.
    pub fn stats(&self) -> AllocStats {
        let mut largest = 0;
        if let Some(bin) = (0..BITMAP_WORDS).rev().find_map(|w| {
            let word = self.bitmap[w];
            (word != 0).then(|| w * 64 + 63 - word.leading_zeros() as usize)
        }) {
            let mut id = self.bin_heads[bin];
            while id != NIL {
                largest = largest.max(self.nodes[id as usize].size);
                id = self.nodes[id as usize].bin_next;
            }
        }
        AllocStats {
            capacity: self.capacity(),
            used: self.used(),
            free_extents: self.free_blocks,
            largest_free: largest << self.align_shift,
        }
    }

    /// Bytes of bookkeeping this allocator holds (for index-memory reporting).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Block>() + BIN_COUNT * 4
    }

    // Merges `id`'s physical successor (a free block already out of its bin) into `id`.
    fn absorb_next(&mut self, id: u32) {
        let next = self.nodes[id as usize].phys_next;
        let absorbed = self.nodes[next as usize];
        self.nodes[id as usize].size += absorbed.size;
        self.nodes[id as usize].phys_next = absorbed.phys_next;
        if absorbed.phys_next != NIL {
            self.nodes[absorbed.phys_next as usize].phys_prev = id;
        }
        self.release_node(next);
    }

    fn first_nonempty_bin(&self, from: usize) -> Option<usize> {
        if from >= BIN_COUNT {
            return None;
        }
        let mut word = from / 64;
        let mut bits = self.bitmap[word] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            if word == BITMAP_WORDS {
                return None;
            }
            bits = self.bitmap[word];
        }
    }

    // Last resort: a block in the bin `units` rounds down to may still be big enough.
    fn scan_bin(&self, bin: usize, units: u64) -> Option<u32> {
        let mut id = self.bin_heads[bin];
        while id != NIL {
            if self.nodes[id as usize].size >= units {
                return Some(id);
            }
            id = self.nodes[id as usize].bin_next;
        }
        None
    }

    fn insert_free(&mut self, id: u32) {
        let bin = bin_floor(self.nodes[id as usize].size);
        let head = self.bin_heads[bin];
        {
            let b = &mut self.nodes[id as usize];
            b.used = false;
            b.bin_prev = NIL;
            b.bin_next = head;
        }
        if head != NIL {
            self.nodes[head as usize].bin_prev = id;
        }
        self.bin_heads[bin] = id;
        self.bitmap[bin / 64] |= 1 << (bin % 64);
        self.free_blocks += 1;
    }

    fn remove_free(&mut self, id: u32) {
        let Block {
            bin_prev,
            bin_next,
            size,
            ..
        } = self.nodes[id as usize];
        if bin_prev != NIL {
            self.nodes[bin_prev as usize].bin_next = bin_next;
        } else {
            let bin = bin_floor(size);
            self.bin_heads[bin] = bin_next;
            if bin_next == NIL {
                self.bitmap[bin / 64] &= !(1 << (bin % 64));
            }
        }
        if bin_next != NIL {
            self.nodes[bin_next as usize].bin_prev = bin_prev;
        }
        self.free_blocks -= 1;
    }

    fn new_node(&mut self, offset: u64, size: u64) -> u32 {
        let block = Block {
            offset,
            size,
            phys_prev: NIL,
            phys_next: NIL,
            bin_prev: NIL,
            bin_next: NIL,
            used: false,
        };
        if self.spare != NIL {
            let id = self.spare;
            self.spare = self.nodes[id as usize].bin_next;
            self.nodes[id as usize] = block;
            id
        } else {
            self.nodes.push(block);
            (self.nodes.len() - 1) as u32
        }
    }

    fn release_node(&mut self, id: u32) {
        let b = &mut self.nodes[id as usize];
        b.used = false;
        b.size = 0;
        b.bin_next = self.spare;
        self.spare = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rebuilt_layout_frees_and_merges_like_a_live_one() {
        const K: u64 = 4096;
        let (mut a, blocks) =
            OffsetAllocator::with_allocated(64 * K, K, &[(4 * K, 2 * K), (10 * K, 1)]).unwrap();
        assert_eq!(a.used(), 3 * K);
        assert_eq!(blocks[1].size, K, "sizes round up to the alignment");
        // The gaps are free: 4 blocks before, 4 between, 53 after.
        let s = a.stats();
        assert_eq!((s.free_extents, s.largest_free), (3, 53 * K));
        assert!(a.allocate(54 * K).is_none());
        // Freeing the rebuilt blocks merges everything back into one extent.
        assert!(a.free(blocks[0].block) && a.free(blocks[1].block));
        assert_eq!(a.stats().free_extents, 1);
        assert_eq!(a.allocate(64 * K).map(|x| x.offset), Some(0));
        // Overlapping, unsorted, unaligned or out-of-range layouts are refused.
        for bad in [
            &[(0, 2 * K), (K, K)][..],
            &[(8 * K, K), (0, K)],
            &[(100, K)],
            &[(63 * K, 2 * K)],
        ] {
            assert!(OffsetAllocator::with_allocated(64 * K, K, bad).is_none());
        }
    }

    #[test]
    fn bins_bracket_sizes() {
        for size in (1..5000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX >> 1]) {
            let (lo, hi) = (bin_floor(size), bin_ceil(size));
            assert!(hi == lo || hi == lo + 1, "size {size}");
            // Every size filed in bin_ceil(size) or above is >= size.
            if size > 1 {
                assert!(bin_floor(size - 1) <= hi, "size {size}");
            }
        }
        for size in 1..4096u64 {
            for other in size..size + 64 {
                assert!(bin_floor(other) >= bin_floor(size));
                if bin_floor(other) >= bin_ceil(size) {
                    assert!(other >= size);
                }
            }
        }
    }

    #[test]
    fn aligned_offsets_and_rounded_sizes() {
        let mut a = OffsetAllocator::new(1 << 20, 64);
        let x = a.allocate(1).unwrap();
        let y = a.allocate(65).unwrap();
        assert_eq!((x.offset, x.size), (0, 64));
        assert_eq!((y.offset % 64, y.size), (0, 128));
        assert_eq!(a.used(), 192);
    }

    #[test]
    fn whole_capacity_fits_even_when_not_a_bin_boundary() {
        // 1.1 MiB is not a bin boundary: the exact-fit fallback must find it.
        let cap = 1_153_434 / 64 * 64;
        let mut a = OffsetAllocator::new(cap, 64);
        let all = a
            .allocate(cap)
            .expect("largest free extent must be allocatable");
        assert_eq!(all.size, cap);
        assert!(a.allocate(1).is_none());
        assert!(a.free(all.block));
        assert_eq!(a.stats().largest_free, cap);
    }

    #[test]
    fn free_merges_neighbours_and_rejects_double_free() {
        let mut a = OffsetAllocator::new(4096, 1);
        let blocks: Vec<_> = (0..4).map(|_| a.allocate(1024).unwrap()).collect();
        assert!(a.allocate(1).is_none());
        // Free in an order that exercises merge-left, merge-right and merge-both.
        for i in [1, 3, 2, 0] {
            assert!(a.free(blocks[i].block));
        }
        assert!(!a.free(blocks[0].block), "double free must be refused");
        let s = a.stats();
        assert_eq!((s.used, s.free_extents, s.largest_free), (0, 1, 4096));
        assert_eq!(s.fragmentation(), 0.0);
    }

    #[test]
    fn fragmentation_figure() {
        let mut a = OffsetAllocator::new(4096, 1);
        let blocks: Vec<_> = (0..4).map(|_| a.allocate(1024).unwrap()).collect();
        a.free(blocks[0].block);
        a.free(blocks[2].block);
        let s = a.stats();
        assert_eq!((s.free_extents, s.largest_free), (2, 1024));
        assert!((s.fragmentation() - 0.5).abs() < 1e-9);
        assert!(a.allocate(2048).is_none(), "no contiguous 2 KiB left");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random allocate/free sequences against a model: no two live blocks overlap, all lie
        /// inside the capacity, accounting matches, an allocation fails only when no free gap
        /// is large enough, and freeing everything restores one extent.
        #[test]
        fn model(ops in prop::collection::vec((any::<bool>(), 1u64..3000, any::<prop::sample::Index>()), 1..400)) {
            let cap = 64 * 1024;
            let mut a = OffsetAllocator::new(cap, 16);
            let mut live: Vec<Allocation> = Vec::new();
            for (alloc, size, pick) in ops {
                if alloc || live.is_empty() {
                    match a.allocate(size) {
                        Some(x) => {
                            prop_assert_eq!(x.offset % 16, 0);
                            prop_assert!(x.size >= size && x.size < size + 16);
                            prop_assert!(x.offset + x.size <= cap);
                            for y in &live {
                                prop_assert!(x.offset + x.size <= y.offset || y.offset + y.size <= x.offset);
                            }
                            live.push(x);
                        }
                        None => {
                            // Model: the largest gap between live blocks must be too small.
                            let mut spans: Vec<_> = live.iter().map(|x| (x.offset, x.offset + x.size)).collect();
                            spans.sort();
                            let mut cursor = 0;
                            let mut largest_gap = 0;
                            for (s, e) in spans {
                                largest_gap = largest_gap.max(s - cursor);
                                cursor = e;
                            }
                            largest_gap = largest_gap.max(cap - cursor);
                            prop_assert!(largest_gap < size.div_ceil(16) * 16, "gap {} fits {}", largest_gap, size);
                            prop_assert_eq!(a.stats().largest_free, largest_gap);
                        }
                    }
                } else {
                    let x = live.swap_remove(pick.index(live.len()));
                    prop_assert!(a.free(x.block));
                }
                prop_assert_eq!(a.used(), live.iter().map(|x| x.size).sum::<u64>());
            }
            for x in live.drain(..) {
                prop_assert!(a.free(x.block));
            }
            let s = a.stats();
            prop_assert_eq!((s.used, s.free_extents, s.largest_free), (0, 1, cap));
        }
    }
}

//! Storage tiers: where value bytes live.
//!
//! The engine sees a tier through the [`Tier`] trait: it allocates extents, copies bytes in
//! and out, and *retires* extents it no longer indexes. Retiring never frees at once: the
//! free runs through crossbeam-epoch once every in-process reader that might still be copying
//! from the extent has unpinned, so a reader never sees memory reused under it.
//!
//! This issue implements the dram tier ([`dram`]); device and ssd tiers plug in behind the
//! same trait.

pub mod dram;

use crossbeam_epoch::Guard;

use crate::alloc::AllocStats;

/// Most tiers one store may stack (device, dram, ssd, plus one spare for tests).
pub const MAX_TIERS: usize = 4;

/// What kind of memory a tier is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierKind {
    /// Host memory in shared-memory segments (memfd), mappable by same-host clients.
    Dram,
}

impl TierKind {
    /// Lower-case name for stats, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            TierKind::Dram => "dram",
        }
    }
}

/// Where one value lives: a block of a segment of a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Index of the tier in the store's tier stack (0 = top).
    pub tier: u8,
    /// Segment within the tier.
    pub segment: u16,
    /// The allocator's block handle (to free it).
    pub block: u32,
    /// Byte offset of the value within the segment.
    pub offset: u64,
    /// Length of the value in bytes (the block may be larger: alignment).
    pub len: u64,
}

/// A tier's figures, as reported by `Store::stats`.
#[derive(Clone, Debug, PartialEq)]
pub struct TierStats {
    pub kind: TierKind,
    pub capacity: u64,
    /// Bytes allocated, including extents retired but not yet reclaimed.
    pub used: u64,
    /// Complete objects whose bytes are in this tier.
    pub objects: u64,
    pub segments: usize,
    pub free_extents: u64,
    pub largest_free_extent: u64,
    /// `1 - largest_free_extent / free bytes`, 0 when free space is one extent.
    pub fragmentation: f64,
}

/// A segment of a tier that other processes on this host may map.
#[derive(Clone, Copy, Debug)]
pub struct SharedSegment<'a> {
    /// Its number within the tier.
    pub segment: u32,
    /// Its size in bytes.
    pub size: u64,
    /// The shared-memory file to map.
    pub fd: std::os::fd::BorrowedFd<'a>,
}

/// A tier of the store. Implementations are internally synchronised.
pub trait Tier: Send + Sync {
    fn kind(&self) -> TierKind;
    /// Bytes this tier can hold.
    fn capacity(&self) -> u64;
    /// Bytes allocated now, including retired extents not yet reclaimed.
    fn used(&self) -> u64;
    /// Bytes retired and waiting for readers to unpin before they are free again.
    fn retiring(&self) -> u64;
    /// The largest value this tier could ever hold (one segment).
    fn max_value_len(&self) -> u64;
    /// Reserves an extent for `len` bytes, or `None` if no free extent is large enough.
    fn allocate(&self, len: u64) -> Option<Extent>;
    /// Frees `extent` once every reader pinned before this call has unpinned.
    fn retire(&self, extent: Extent, guard: &Guard);
    /// Allocator figures summed over segments.
    fn alloc_stats(&self) -> (usize, AllocStats);
    /// Heap bytes of the allocators' bookkeeping.
    fn bookkeeping_bytes(&self) -> usize;
    /// The segments same-host clients may map (none unless the tier is shared memory).
    fn shared_segments(&self) -> Vec<SharedSegment<'_>> {
        Vec::new()
    }

    /// The extent's bytes, if this tier is host-addressable.
    ///
    /// # Safety
    /// `extent` must come from this tier's `allocate` and not be reclaimed while the slice
    /// lives: the caller holds an epoch guard pinned before the extent could be retired, and
    /// nobody writes the extent meanwhile (it is complete, or the caller is its writer and
    /// has finished writing).
    unsafe fn host_bytes(&self, extent: &Extent) -> Option<&[u8]>;

    /// Copies `dst.len()` bytes from the extent starting at `offset`.
    ///
    /// # Safety
    /// As [`Tier::host_bytes`]; the caller has checked `offset + dst.len() <= extent.len`.
    unsafe fn read(&self, extent: &Extent, offset: u64, dst: &mut [u8]);

    /// Copies `src` into the extent starting at `offset`.
    ///
    /// # Safety
    /// `extent` must come from this tier's `allocate`, be unreclaimed for the whole call (epoch
    /// guard as above), and the caller must be its only writer with no concurrent reader (a
    /// pending reservation); it has checked `offset + src.len() <= extent.len`.
    unsafe fn write(&self, extent: &Extent, offset: u64, src: &[u8]);
}

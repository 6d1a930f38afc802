//! Storage tiers: where value bytes live.
//!
//! The engine sees a tier through the [`Tier`] trait: it allocates extents, copies bytes in
//! and out, and *retires* extents it no longer indexes. Retiring never frees at once: the
//! free runs through crossbeam-epoch once every in-process reader that might still be copying
//! from the extent has unpinned, so a reader never sees memory reused under it.
//!
//! Three tiers are here: [`device`] (HBM segments through the device module, reached by
//! device copies), [`dram`] (shared-memory segments that same-host clients map) and [`ssd`]
//! (records in O_DIRECT files, reached only through the server). A tier that does I/O takes
//! whole objects only (demotion and promotion), never a put's pieces.

pub mod device;
pub mod dram;
mod extent;
pub mod ssd;

pub(crate) use extent::OwnedPinnedRead;
pub use extent::{Extent, Fresh, PinnedRead, PinnedWrite};

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_epoch::Guard;
use parking_lot::Mutex;
use strata_proto::{Error, ErrorCode, Result};

use crate::alloc::{AllocStats, Allocation, BlockId, OffsetAllocator};

/// Most tiers one store may stack (device, dram, ssd, plus one spare for tests).
pub const MAX_TIERS: usize = 4;

/// What kind of memory a tier is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierKind {
    /// Device memory (HBM) through the device module.
    Device,
    /// Host memory in shared-memory segments (memfd), mappable by same-host clients.
    Dram,
    /// Records in files opened O_DIRECT; survives restarts.
    Ssd,
}

impl TierKind {
    /// Lower-case name for stats, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            TierKind::Device => "device",
            TierKind::Dram => "dram",
            TierKind::Ssd => "ssd",
        }
    }
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
    /// Used bytes past which the tier is evicted.
    pub high_watermark: u64,
    /// Objects that left this tier to make room (demoted or dropped), and their bytes.
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Objects moved down to the next tier.
    pub demotions: u64,
    /// Objects moved up into this tier because they were read again.
    pub promotions: u64,
    /// I/O figures of a tier that does I/O (ssd).
    pub io: Option<ssd::IoFigures>,
}

/// One whole object for [`Tier::store_objects`].
#[derive(Debug)]
pub struct ObjectWrite<'a> {
    /// The extent allocated for it in the destination tier.
    pub extent: PinnedWrite<'a>,
    pub key: &'a [u8],
    /// Exactly `extent.len` bytes.
    pub value: &'a [u8],
    /// The value's xxh3-64 as recorded at its commit, when there is one. A tier that
    /// checksums what it stores records this rather than hashing the bytes it is given:
    /// bytes that changed in memory since the commit then fail that check when read back,
    /// instead of being stored as valid (and hashing is skipped).
    pub checksum: Option<u64>,
}

/// An object a persistent tier found when it opened: the engine indexes it as complete.
#[derive(Clone, Debug)]
pub struct RecoveredObject {
    pub key: Box<[u8]>,
    pub extent: Extent,
    /// xxh3-64 of the value, as recorded when it was written.
    pub checksum: u64,
    /// Write order within the tier: later records of the same key win.
    pub sequence: u64,
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

/// A file of a tier read through I/O that other processes on this host may read
/// themselves (under leases): the ssd tier's data files, opened read-only.
#[derive(Clone, Copy, Debug)]
pub struct SharedFile<'a> {
    /// Its number within the tier.
    pub segment: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes from an extent's offset to its value's first byte.
    pub value_offset: u64,
    /// Alignment that reads of `fd` must keep (buffer, offset and length).
    pub align: u32,
    /// The read-only descriptor to hand out.
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
    fn allocate(&self, len: u64) -> Option<Fresh>;
    /// Frees `extent` once every reader pinned before this call has unpinned.
    fn retire(&self, extent: Extent, guard: &Guard);
    /// Frees an extent no reader ever saw because writing it failed. A tier whose freed
    /// extents need more than the readers' unpinning (the ssd tier's tombstones) frees
    /// this one at once: a failed write left no record to take back.
    fn discard_unwritten(&self, extent: Extent, guard: &Guard) {
        self.retire(extent, guard);
    }
    /// Allocator figures summed over segments.
    fn alloc_stats(&self) -> (usize, AllocStats);
    /// Heap bytes of the allocators' bookkeeping.
    fn bookkeeping_bytes(&self) -> usize;
    /// The segments same-host clients may map (none unless the tier is shared memory).
    fn shared_segments(&self) -> Vec<SharedSegment<'_>> {
        Vec::new()
    }
    /// The files same-host clients may read values from themselves (none unless the tier
    /// keeps its values in files).
    fn shared_files(&self) -> Vec<SharedFile<'_>> {
        Vec::new()
    }
    /// Whether puts may reserve space here and write it piecewise. A tier that takes whole
    /// objects only (ssd) is filled by demotion.
    fn accepts_puts(&self) -> bool {
        true
    }
    /// Whether a victim evicted from the tier above, read `hits` times there since it
    /// arrived, should be written here rather than dropped (the admission filter).
    fn admits(&self, hits: u8) -> bool {
        let _ = hits;
        true
    }
    /// Finishes frees whose readers have unpinned but which need work first (an ssd record
    /// is invalidated on disk before its space is reused). Called by maintenance and by
    /// anyone waiting for space.
    fn reclaim_retired(&self) {}
    /// I/O figures, for a tier that does I/O.
    fn io_figures(&self) -> Option<ssd::IoFigures> {
        None
    }
    /// The device tier's own operations (segments, mounts), when this is it.
    fn as_device(&self) -> Option<&device::DeviceTier> {
        None
    }
    /// The objects found on opening (a persistent tier); empty after the first call.
    fn take_recovered(&self) -> Vec<RecoveredObject> {
        Vec::new()
    }

    /// The extent's bytes, if this tier is host-addressable; for as long as both the tier
    /// and the token's guard are borrowed.
    fn host_bytes<'a>(&'a self, extent: PinnedRead<'a>) -> Option<&'a [u8]>;

    /// Bytes `range` of the extent for writing, if this tier is host-addressable: a
    /// demotion copies straight into them (one device-to-host copy, no staging), and the
    /// data plane receives from a socket into them. `None` also when `range` does not lie
    /// within the extent. The slice borrows the token mutably: one at a time per token.
    fn host_bytes_mut<'a>(
        &'a self,
        extent: &'a mut PinnedWrite<'_>,
        range: Range<u64>,
    ) -> Option<&'a mut [u8]> {
        let _ = (extent, range);
        None
    }

    /// Copies the whole value into `dst` (exactly `extent.len` bytes, or `InvalidArgument`).
    /// A tier that checks what it reads fails with `Corrupt` rather than hand out bytes that
    /// do not match.
    fn read(&self, extent: PinnedRead<'_>, dst: &mut [u8]) -> Result<()>;

    /// Copies `src` into the extent starting at `offset` (a put's piece); `InvalidArgument`
    /// when it would run past the extent.
    fn write(&self, extent: &mut PinnedWrite<'_>, offset: u64, src: &[u8]) -> Result<()>;

    /// Writes whole objects into extents freshly allocated for them (demotion, promotion);
    /// one result per object, in order. A tier that does I/O submits them together.
    fn store_objects(&self, objects: &mut [ObjectWrite<'_>]) -> Vec<Result<()>> {
        objects
            .iter_mut()
            .map(|o| self.write(&mut o.extent, 0, o.value))
            .collect()
    }
}

/// The error of a copy whose length does not match the extent's.
pub(crate) fn length_mismatch(what: &str, got: usize, extent: &Extent, offset: u64) -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        format!(
            "{what} of {got} bytes at {offset} does not fit the {}-byte value",
            extent.len
        ),
    )
}

/// The offset allocators of a tier's segments, with the tier-wide byte counts. A retired
/// extent's bytes stay counted in `used` (and in `retiring`) until it is really freed.
pub(crate) struct SegmentAllocators {
    segments: Vec<Mutex<OffsetAllocator>>,
    used: AtomicU64,
    retiring: AtomicU64,
    cursor: AtomicUsize,
}

impl SegmentAllocators {
    pub fn new(segments: Vec<OffsetAllocator>) -> SegmentAllocators {
        let used = segments.iter().map(|a| a.used()).sum();
        SegmentAllocators {
            segments: segments.into_iter().map(Mutex::new).collect(),
            used: AtomicU64::new(used),
            retiring: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Reserves `size` bytes in some segment, spreading consecutive calls over segments so
    /// their locks are not all one.
    pub fn allocate(&self, size: u64) -> Option<(u16, Allocation)> {
        let n = self.segments.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let seg = (start + i) % n;
            let a = self.segments[seg].lock().allocate(size)?;
            self.used.fetch_add(a.size, Ordering::Relaxed);
            Some((seg as u16, a))
        })
    }

    /// Counts `size` bytes as on their way back (retired, not yet free).
    pub fn start_retiring(&self, size: u64) {
        self.retiring.fetch_add(size, Ordering::Relaxed);
    }

    /// Frees a retired block of `size` (rounded) bytes.
    pub fn free_retired(&self, segment: u16, block: u32, size: u64) {
        let freed = self.segments[segment as usize]
            .lock()
            .free(BlockId::from_raw(block));
        debug_assert!(freed, "retired extent was not allocated");
        if freed {
            self.used.fetch_sub(size, Ordering::Relaxed);
        }
        self.retiring.fetch_sub(size, Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn retiring(&self) -> u64 {
        self.retiring.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.segments.iter().map(|a| a.lock().capacity()).sum()
    }

    /// Allocator figures summed over segments.
    pub fn stats(&self) -> (usize, AllocStats) {
        let mut total = AllocStats::default();
        for a in &self.segments {
            let s = a.lock().stats();
            total.capacity += s.capacity;
            total.used += s.used;
            total.free_extents += s.free_extents;
            total.largest_free = total.largest_free.max(s.largest_free);
        }
        (self.segments.len(), total)
    }

    pub fn heap_bytes(&self) -> usize {
        self.segments.iter().map(|a| a.lock().heap_bytes()).sum()
    }
}

//! The dram tier: host memory in shared-memory segments.
//!
//! Each segment is a memfd mapped read-write and shared; the shared-memory transport hands
//! the descriptor to same-host clients, which map the same pages and copy under a lease. The
//! server itself only copies through the raw mapping; it never forms a `&mut [u8]` over a
//! segment, because other writers (reservations) and readers touch disjoint parts of it at
//! the same time.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use crossbeam_epoch::Guard;
use memmap2::{MmapOptions, MmapRaw};
use strata_proto::Result;

use super::{Extent, SegmentAllocators, SharedSegment, Tier, TierKind};
use crate::alloc::{AllocStats, OffsetAllocator};

struct Segment {
    map: MmapRaw,
    /// Kept open for the shared-memory transport, which passes it to same-host clients.
    fd: memfd::Memfd,
}

/// Host-memory tier over memfd segments.
pub struct DramTier {
    index: u8,
    alignment: u64,
    segment_size: u64,
    segments: Vec<Segment>,
    /// Shared with deferred frees, which must not keep the mappings alive.
    allocators: Arc<SegmentAllocators>,
}

impl DramTier {
    /// Creates `ceil(capacity / segment_size)` segments (the last one smaller), each a memfd
    /// mapped shared. With `populate`, pages are faulted in now rather than on first write.
    pub fn new(
        index: u8,
        capacity: u64,
        segment_size: u64,
        alignment: u64,
        populate: bool,
    ) -> io::Result<DramTier> {
        let mut segments = Vec::new();
        let mut allocators = Vec::new();
        let mut remaining = capacity;
        while remaining > 0 {
            let size = remaining.min(segment_size);
            remaining -= size;
            let fd = memfd::MemfdOptions::default()
                .close_on_exec(true)
                .create(format!("strata-dram-{index}-{}", segments.len()))
                .map_err(|e| io::Error::other(format!("memfd_create: {e}")))?;
            fd.as_file().set_len(size)?;
            let mut opts = MmapOptions::new();
            opts.len(size as usize);
            if populate {
                opts.populate();
            }
            let map = opts.map_raw(fd.as_file())?;
            segments.push(Segment { map, fd });
            allocators.push(OffsetAllocator::new(size, alignment));
        }
        Ok(DramTier {
            index,
            alignment,
            segment_size,
            segments,
            allocators: Arc::new(SegmentAllocators::new(allocators)),
        })
    }

    fn rounded(&self, len: u64) -> u64 {
        len.div_ceil(self.alignment) * self.alignment
    }

    fn base(&self, extent: &Extent) -> *mut u8 {
        let seg = &self.segments[extent.segment as usize];
        debug_assert!(extent.offset + extent.len <= seg.map.len() as u64);
        // The offset is inside the mapping (allocator invariant), so this stays in bounds.
        seg.map.as_mut_ptr().wrapping_add(extent.offset as usize)
    }
}

impl Tier for DramTier {
    fn kind(&self) -> TierKind {
        TierKind::Dram
    }

    fn capacity(&self) -> u64 {
        self.segments.iter().map(|s| s.map.len() as u64).sum()
    }

    fn used(&self) -> u64 {
        self.allocators.used()
    }

    fn retiring(&self) -> u64 {
        self.allocators.retiring()
    }

    fn max_value_len(&self) -> u64 {
        self.segment_size.min(self.capacity())
    }

    fn allocate(&self, len: u64) -> Option<Extent> {
        let (segment, a) = self.allocators.allocate(len)?;
        Some(Extent {
            tier: self.index,
            segment,
            block: a.block.raw(),
            offset: a.offset,
            len,
        })
    }

    fn retire(&self, extent: Extent, guard: &Guard) {
        let size = self.rounded(extent.len);
        let allocators = Arc::clone(&self.allocators);
        allocators.start_retiring(size);
        guard.defer(move || allocators.free_retired(extent.segment, extent.block, size));
        // Hand the free to the global queue now: left in this thread's local bag, it would
        // wait for this thread to pin again many times, and a thread that goes idle (a
        // server worker between requests) would keep the space from ever coming back.
        guard.flush();
    }

    fn alloc_stats(&self) -> (usize, AllocStats) {
        self.allocators.stats()
    }

    fn bookkeeping_bytes(&self) -> usize {
        self.allocators.heap_bytes()
    }

    fn shared_segments(&self) -> Vec<SharedSegment<'_>> {
        use std::os::fd::AsFd;
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SharedSegment {
                segment: i as u32,
                size: s.map.len() as u64,
                fd: s.fd.as_file().as_fd(),
            })
            .collect()
    }

    unsafe fn host_bytes(&self, extent: &Extent) -> Option<&[u8]> {
        // SAFETY: the extent lies inside a live mapping (allocator invariant) and, per this
        // method's contract, is neither reclaimed nor written while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.base(extent), extent.len as usize) })
    }

    #[allow(clippy::mut_from_ref)] // the range is the caller's alone (the trait's contract)
    unsafe fn host_bytes_mut(&self, extent: &Extent, range: Range<u64>) -> Option<&mut [u8]> {
        if range.start > range.end || range.end > extent.len {
            return None;
        }
        let start = self.base(extent).wrapping_add(range.start as usize);
        // SAFETY: the range lies inside the extent (checked above), which lies inside a live
        // mapping; per the contract nobody else reads or writes it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(start, (range.end - range.start) as usize) })
    }

    unsafe fn read(&self, extent: &Extent, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(dst.len() as u64, extent.len);
        // SAFETY: source range is the extent inside a live mapping; nobody writes it
        // (contract); `dst` is a distinct Rust buffer of the extent's length.
        unsafe {
            strata_copy::copy_raw(
                self.base(extent),
                dst.as_mut_ptr(),
                dst.len().min(extent.len as usize),
            )
        }
        Ok(())
    }

    unsafe fn write(&self, extent: &Extent, offset: u64, src: &[u8]) -> Result<()> {
        debug_assert!(offset + src.len() as u64 <= extent.len);
        // SAFETY: destination range is inside the caller's own pending extent in a live
        // mapping, with no concurrent reader or writer (contract); `src` is distinct memory.
        unsafe {
            strata_copy::copy_raw(
                src.as_ptr(),
                self.base(extent).add(offset as usize),
                src.len(),
            )
        }
        Ok(())
    }
}

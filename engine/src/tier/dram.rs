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

use super::{
    length_mismatch, Extent, Fresh, PinnedRead, PinnedWrite, SegmentAllocators, SharedSegment,
    Tier, TierKind,
};
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

    /// `extent`, after checking it is this tier's: a token for another tier's extent is a
    /// bug, and would address the wrong mapping.
    fn own(&self, extent: Extent) -> Extent {
        assert_eq!(
            extent.tier, self.index,
            "an extent of tier {} given to tier {}",
            extent.tier, self.index
        );
        extent
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

    fn allocate(&self, len: u64) -> Option<Fresh> {
        let (segment, a) = self.allocators.allocate(len)?;
        Some(Fresh::new(Extent {
            tier: self.index,
            segment,
            block: a.block.raw(),
            offset: a.offset,
            len,
        }))
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

    fn host_bytes<'a>(&'a self, extent: PinnedRead<'a>) -> Option<&'a [u8]> {
        let extent = self.own(extent.extent());
        // SAFETY: the extent is this tier's (checked by `own`), so it lies inside a live
        // mapping (allocator invariant); the token proves it is neither reclaimed nor
        // written while its guard, and so the slice, lives.
        Some(unsafe { std::slice::from_raw_parts(self.base(&extent), extent.len as usize) })
    }

    fn host_bytes_mut<'a>(
        &'a self,
        extent: &'a mut PinnedWrite<'_>,
        range: Range<u64>,
    ) -> Option<&'a mut [u8]> {
        let whole = self.own(extent.extent());
        if range.start > range.end || range.end > whole.len {
            return None;
        }
        let start = self.base(&whole).wrapping_add(range.start as usize);
        // SAFETY: the range lies inside the extent (checked above), which is this tier's and
        // so inside a live mapping; the token, borrowed mutably for the slice's life, proves
        // its holder is the only writer and that nobody reads it.
        Some(unsafe { std::slice::from_raw_parts_mut(start, (range.end - range.start) as usize) })
    }

    fn read(&self, extent: PinnedRead<'_>, dst: &mut [u8]) -> Result<()> {
        let len = extent.extent().len;
        if dst.len() as u64 != len {
            return Err(length_mismatch("read", dst.len(), &extent.extent(), 0));
        }
        let src = self.host_bytes(extent).expect("dram is host memory");
        strata_copy::copy(dst, src);
        Ok(())
    }

    fn write(&self, extent: &mut PinnedWrite<'_>, offset: u64, src: &[u8]) -> Result<()> {
        let whole = extent.extent();
        let end = offset.checked_add(src.len() as u64);
        let Some(dst) = end.and_then(|end| self.host_bytes_mut(extent, offset..end)) else {
            return Err(length_mismatch("write", src.len(), &whole, offset));
        };
        strata_copy::copy(dst, src);
        Ok(())
    }
}

//! The device tier: HBM segments allocated or imported through the device module.
//!
//! Segments come two ways: the server allocates its own at start (`--device-capacity`),
//! and engine processes contribute memory they allocated themselves (`mount_segment`):
//! the server imports the handle and places objects there while the owner heart-beats.
//!
//! A segment's number is its slot in the table and is never reused while the server runs,
//! so a location, an extent or a client's cached import can never name other memory than
//! the one it was made for. Removing a segment (unmount, or an owner that stopped
//! heart-beating) takes it out of the table first, then the engine drops the objects that
//! were in it; a copy racing with that fails cleanly ("segment unmounted"), and the memory
//! is released when the last reader's handle on it goes.
//!
//! Device memory is not host-addressable: every read is a device-to-host copy and every
//! write a host-to-device copy, through the module.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_epoch::Guard;
use parking_lot::{Mutex, RwLock};
use strata_device::{Backend, Device, DeviceError, DeviceMemory, IpcHandle};
use strata_proto::{Error, ErrorCode, Result};

use super::{length_mismatch, Extent, Fresh, PinnedRead, PinnedWrite, Tier, TierKind};
use crate::alloc::{AllocStats, BlockId, OffsetAllocator};

/// Segments one device tier can have over the server's life (numbers are not reused).
pub const MAX_DEVICE_SEGMENTS: usize = u16::MAX as usize;

/// Which device the tier lives on.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub backend: Backend,
    pub index: u32,
    /// A mounted segment whose owner has not heart-beaten for this long is dropped with
    /// its objects.
    pub heartbeat_timeout: Duration,
}

/// Maps a device module failure onto the wire's codes.
pub fn device_error(e: DeviceError) -> Error {
    let code = match e {
        DeviceError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        DeviceError::LibraryMissing { .. }
        | DeviceError::AbiMismatch { .. }
        | DeviceError::BadModule { .. } => ErrorCode::Unavailable,
        DeviceError::Call { .. } => ErrorCode::Internal,
    };
    Error::new(code, e.to_string())
}

fn unmounted(segment: u16) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("device segment {segment} was unmounted (its owner left)"),
    )
}

/// Who contributed a mounted segment, and when it last said it was alive.
struct Mount {
    owner: String,
    /// The store clock (ns) at the last heartbeat.
    last_beat: AtomicU64,
}

struct Segment {
    memory: DeviceMemory,
    handle: IpcHandle,
    allocator: Mutex<OffsetAllocator>,
    used: AtomicU64,
    retiring: AtomicU64,
    /// `Some` for a segment a client contributed.
    mount: Option<Mount>,
    /// Being emptied for unmount: no new allocations.
    draining: AtomicBool,
}

/// A segment as the handshake and `DeviceSegments` describe it.
#[derive(Clone, Debug)]
pub struct SegmentDescription {
    pub segment: u32,
    pub size: u64,
    pub handle: IpcHandle,
    pub mounted: bool,
}

/// The device tier.
pub struct DeviceTier {
    index: u8,
    alignment: u64,
    device: Arc<dyn Device>,
    options: DeviceOptions,
    /// Slot = segment number; `None` once removed (never refilled).
    segments: RwLock<Vec<Option<Arc<Segment>>>>,
    cursor: AtomicUsize,
}

/// Bytes of zeros one populating copy writes.
const POPULATE_CHUNK: u64 = 8 << 20;

impl DeviceTier {
    /// Opens the device and allocates `capacity` bytes in segments of `segment_size`
    /// (capacity 0: only contributed segments), each written with zeros first when
    /// `populate` (see [`crate::TierConfig::populate`]).
    pub fn open(
        index: u8,
        capacity: u64,
        segment_size: u64,
        alignment: u64,
        populate: bool,
        options: &DeviceOptions,
    ) -> Result<DeviceTier> {
        let device = options.backend.open(options.index).map_err(device_error)?;
        let tier = DeviceTier {
            index,
            alignment,
            device,
            options: options.clone(),
            segments: RwLock::new(Vec::new()),
            cursor: AtomicUsize::new(0),
        };
        let mut remaining = capacity;
        while remaining > 0 {
            let size = remaining.min(segment_size);
            remaining -= size;
            let memory = DeviceMemory::alloc(&tier.device, size).map_err(device_error)?;
            if populate {
                let zeros = vec![0u8; POPULATE_CHUNK.min(size) as usize];
                for at in (0..size).step_by(zeros.len()) {
                    let n = zeros.len().min((size - at) as usize);
                    memory.write(at, &zeros[..n]).map_err(device_error)?;
                }
            }
            let handle = memory.export().map_err(device_error)?;
            tier.attach(memory, handle, None)?;
        }
        Ok(tier)
    }

    /// The device the tier's memory is on.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    pub fn options(&self) -> &DeviceOptions {
        &self.options
    }

    fn attach(&self, memory: DeviceMemory, handle: IpcHandle, mount: Option<Mount>) -> Result<u32> {
        let size = memory.size();
        let segment = Arc::new(Segment {
            allocator: Mutex::new(OffsetAllocator::new(size, self.alignment)),
            memory,
            handle,
            used: AtomicU64::new(0),
            retiring: AtomicU64::new(0),
            mount,
            draining: AtomicBool::new(false),
        });
        let mut table = self.segments.write();
        if table.len() >= MAX_DEVICE_SEGMENTS {
            return Err(Error::new(
                ErrorCode::NoSpace,
                format!("the device tier has had {MAX_DEVICE_SEGMENTS} segments; restart the server to number them anew"),
            ));
        }
        table.push(Some(segment));
        Ok(table.len() as u32 - 1)
    }

    fn segment(&self, number: u16) -> Result<Arc<Segment>> {
        self.segments
            .read()
            .get(number as usize)
            .and_then(Option::clone)
            .ok_or_else(|| unmounted(number))
    }

    fn live_segments(&self) -> Vec<(u16, Arc<Segment>)> {
        self.segments
            .read()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u16, Arc::clone(s))))
            .collect()
    }

    /// Imports memory a client allocated and exported, as a new segment; returns its number.
    /// `now` is the store clock (ns): heartbeats are judged on it.
    pub fn mount(&self, handle: &IpcHandle, size: u64, owner: &str, now: u64) -> Result<u32> {
        if size < self.alignment {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a segment of {size} bytes is below the tier's alignment {}",
                    self.alignment
                ),
            ));
        }
        // Whatever the module says, a handle that does not import is the caller's to fix.
        let memory = DeviceMemory::import(&self.device, handle, size).map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("cannot import the segment's handle: {e}"),
            )
        })?;
        let mount = Mount {
            owner: owner.to_string(),
            last_beat: AtomicU64::new(now),
        };
        let number = self.attach(memory, *handle, Some(mount))?;
        tracing::info!("device segment {number} mounted: {size} bytes from {owner}");
        Ok(number)
    }

    /// Records that a mounted segment's owner is alive.
    pub fn heartbeat(&self, number: u32, now: u64) -> Result<()> {
        let segment = self.mounted(number)?;
        let mount = segment.mount.as_ref().expect("mounted");
        mount.last_beat.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    fn mounted(&self, number: u32) -> Result<Arc<Segment>> {
        let number = u16::try_from(number).map_err(|_| unmounted(u16::MAX))?;
        let segment = self.segment(number)?;
        if segment.mount.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("device segment {number} belongs to the server, not to a client"),
            ));
        }
        Ok(segment)
    }

    /// Stops placing objects in a mounted segment (the first step of an unmount).
    pub fn start_draining(&self, number: u32) -> Result<()> {
        self.mounted(number)?
            .draining
            .store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a mounted segment out of the table. The engine then drops whatever objects
    /// still point into it.
    pub fn detach(&self, number: u32) -> Result<()> {
        let segment = self.mounted(number)?;
        segment.draining.store(true, Ordering::Relaxed);
        self.segments.write()[number as usize] = None;
        let owner = &segment.mount.as_ref().expect("mounted").owner;
        tracing::info!("device segment {number} of {owner} unmounted");
        Ok(())
    }

    /// Mounted segments whose owners stopped heart-beating. A draining segment is being
    /// unmounted by its owner, which stops heart-beating once it asked: not one of them.
    pub fn silent_mounts(&self, now: u64) -> Vec<u32> {
        let timeout = self.options.heartbeat_timeout.as_nanos() as u64;
        self.live_segments()
            .into_iter()
            .filter(|(_, s)| {
                !s.draining.load(Ordering::Relaxed)
                    && s.mount.as_ref().is_some_and(|m| {
                        now.saturating_sub(m.last_beat.load(Ordering::Relaxed)) > timeout
                    })
            })
            .map(|(n, _)| u32::from(n))
            .collect()
    }

    /// Whether `extent`'s segment is still in the table.
    pub fn holds(&self, extent: &Extent) -> bool {
        self.segment(extent.segment).is_ok()
    }

    /// Every segment, for clients that import them.
    pub fn describe(&self) -> Vec<SegmentDescription> {
        self.live_segments()
            .into_iter()
            .map(|(n, s)| SegmentDescription {
                segment: u32::from(n),
                size: s.memory.size(),
                handle: s.handle,
                mounted: s.mount.is_some(),
            })
            .collect()
    }

    fn rounded(&self, len: u64) -> u64 {
        len.div_ceil(self.alignment) * self.alignment
    }
}

impl Tier for DeviceTier {
    fn kind(&self) -> TierKind {
        TierKind::Device
    }

    fn capacity(&self) -> u64 {
        self.live_segments()
            .iter()
            .map(|(_, s)| s.memory.size())
            .sum()
    }

    fn used(&self) -> u64 {
        let table = self.segments.read();
        table
            .iter()
            .flatten()
            .map(|s| s.used.load(Ordering::Relaxed))
            .sum()
    }

    fn retiring(&self) -> u64 {
        let table = self.segments.read();
        table
            .iter()
            .flatten()
            .map(|s| s.retiring.load(Ordering::Relaxed))
            .sum()
    }

    fn max_value_len(&self) -> u64 {
        let table = self.segments.read();
        table
            .iter()
            .flatten()
            .filter(|s| !s.draining.load(Ordering::Relaxed))
            .map(|s| s.memory.size())
            .max()
            .unwrap_or(0)
    }

    fn allocate(&self, len: u64) -> Option<Fresh> {
        let table = self.segments.read();
        let n = table.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let number = (start + i) % n;
            let s = table[number].as_ref()?;
            if s.draining.load(Ordering::Relaxed) {
                return None;
            }
            let a = s.allocator.lock().allocate(len)?;
            s.used.fetch_add(a.size, Ordering::Relaxed);
            Some(Fresh::new(Extent {
                tier: self.index,
                segment: number as u16,
                block: a.block.raw(),
                offset: a.offset,
                len,
            }))
        })
    }

    fn retire(&self, extent: Extent, guard: &Guard) {
        // A removed segment's space went with it.
        let Ok(segment) = self.segment(extent.segment) else {
            return;
        };
        let size = self.rounded(extent.len);
        segment.retiring.fetch_add(size, Ordering::Relaxed);
        guard.defer(move || {
            if segment
                .allocator
                .lock()
                .free(BlockId::from_raw(extent.block))
            {
                segment.used.fetch_sub(size, Ordering::Relaxed);
            }
            segment.retiring.fetch_sub(size, Ordering::Relaxed);
        });
        guard.flush();
    }

    fn alloc_stats(&self) -> (usize, AllocStats) {
        let segments = self.live_segments();
        let mut total = AllocStats::default();
        for (_, s) in &segments {
            let a = s.allocator.lock().stats();
            total.capacity += a.capacity;
            total.used += a.used;
            total.free_extents += a.free_extents;
            total.largest_free = total.largest_free.max(a.largest_free);
        }
        (segments.len(), total)
    }

    fn bookkeeping_bytes(&self) -> usize {
        self.live_segments()
            .iter()
            .map(|(_, s)| s.allocator.lock().heap_bytes())
            .sum()
    }

    fn as_device(&self) -> Option<&DeviceTier> {
        Some(self)
    }

    fn host_bytes<'a>(&'a self, _extent: PinnedRead<'a>) -> Option<&'a [u8]> {
        None
    }

    fn read(&self, extent: PinnedRead<'_>, dst: &mut [u8]) -> Result<()> {
        let extent = extent.extent();
        if dst.len() as u64 != extent.len {
            return Err(length_mismatch("read", dst.len(), &extent, 0));
        }
        let segment = self.segment(extent.segment)?;
        segment
            .memory
            .read(extent.offset, dst)
            .map_err(device_error)
    }

    fn write(&self, extent: &mut PinnedWrite<'_>, offset: u64, src: &[u8]) -> Result<()> {
        let extent = extent.extent();
        if offset
            .checked_add(src.len() as u64)
            .is_none_or(|end| end > extent.len)
        {
            return Err(length_mismatch("write", src.len(), &extent, offset));
        }
        let segment = self.segment(extent.segment)?;
        segment
            .memory
            .write(extent.offset + offset, src)
            .map_err(device_error)
    }
}

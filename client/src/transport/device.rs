//! The device transport: the server's device-tier segments imported into this process
//! through the device module, and copies with the module's copy kinds.
//!
//! A segment is imported once, on the first location that names it, from the handles the
//! server lists ([`Opcode::DeviceSegments`](strata_proto::wire::Opcode::DeviceSegments)).
//! Segment numbers are never reused by a server, so an import can never stand for other
//! memory; a list that no longer names a segment (unmounted) drops its import.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use strata_device::{Backend, Device, DeviceMemory, IpcHandle, MemoryKind};
use strata_proto::msg::{DeviceOffer, DeviceSegmentInfo, Location};
use strata_proto::{Error, ErrorCode, Result};
use xxhash_rust::xxh3::Xxh3;

use super::reader::{check_value_fits, checksum_mismatch, lease_expired, read_leased, LocalReader};

/// Bytes hashed per step while staging a device read for its checksum.
const CHECK_CHUNK: usize = 4 << 20;

pub(crate) fn device_error(e: strata_device::DeviceError) -> Error {
    let code = match e {
        strata_device::DeviceError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Unavailable,
    };
    Error::new(code, e.to_string())
}

/// The device tier's segments as this process sees them.
pub(crate) struct DeviceSegments {
    device: Arc<dyn Device>,
    tier: u8,
    instance: u64,
    imported: RwLock<HashMap<u32, Arc<DeviceMemory>>>,
}

impl DeviceSegments {
    /// Opens the backend and device the server's offer names.
    pub fn open(offer: &DeviceOffer, instance: u64) -> Result<DeviceSegments> {
        let device = Backend::parse(offer.backend.as_str())
            .open(offer.device_index)
            .map_err(device_error)?;
        Ok(DeviceSegments {
            device,
            tier: offer.tier,
            instance,
            imported: RwLock::new(HashMap::new()),
        })
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether `location` is in the device tier but in a segment not imported yet.
    pub fn missing(&self, location: &Location) -> bool {
        location.tier == self.tier && !self.imported.read().contains_key(&location.segment)
    }

    /// Imports the listed segments not imported yet and drops imports of segments no
    /// longer listed. A segment that fails to import is left out (reads go by the server).
    pub fn refresh(&self, listed: &[DeviceSegmentInfo]) {
        let mut imported = self.imported.write();
        imported.retain(|n, _| listed.iter().any(|s| s.segment == *n));
        for s in listed {
            if imported.contains_key(&s.segment) {
                continue;
            }
            let Some(handle) = IpcHandle::from_bytes(&s.handle) else {
                continue;
            };
            match DeviceMemory::import(&self.device, &handle, s.size) {
                Ok(memory) => {
                    imported.insert(s.segment, Arc::new(memory));
                }
                Err(e) => tracing::debug!("device segment {} not imported: {e}", s.segment),
            }
        }
    }

    /// The imported segment holding `location`, when it lies wholly inside one.
    fn segment(&self, location: &Location) -> Option<Arc<DeviceMemory>> {
        if location.tier != self.tier {
            return None;
        }
        let memory = self.imported.read().get(&location.segment).cloned()?;
        let end = location.offset.checked_add(location.len)?;
        (end <= memory.size()).then_some(memory)
    }

    pub fn covers(&self, location: &Location) -> bool {
        self.segment(location).is_some()
    }

    fn outside(location: &Location) -> Error {
        let msg = format!("location {location:?} is not in an imported device segment");
        Error::new(ErrorCode::Protocol, msg)
    }

    /// Copies the value at `location` into the front of host buffer `dst` (device to
    /// host), then checks the lease and, when `checksum` is given (non-zero), the bytes.
    pub fn read(
        &self,
        location: &Location,
        dst: &mut [u8],
        valid_until: Instant,
        checksum: Option<u64>,
    ) -> Result<usize> {
        let checksum = checksum.filter(|&c| c != 0);
        read_leased(self, location, dst, valid_until, checksum)
    }

    /// Copies host `src` into the reserved `location` (host to device) if the reservation
    /// has more than `margin` left; returns the value's xxh3-64 for the commit.
    pub fn write(
        &self,
        location: &Location,
        src: &[u8],
        deadline: Instant,
        margin: Duration,
    ) -> Result<u64> {
        check_value_fits(location, src)?;
        let memory = self
            .segment(location)
            .ok_or_else(|| Self::outside(location))?;
        // The checksum is taken from the host copy first: the device copy can then run
        // without the CPU touching the bytes again.
        let checksum = xxhash_rust::xxh3::xxh3_64(src);
        if Instant::now() + margin >= deadline {
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "the reservation is about to end; did not write into it",
            ));
        }
        memory.write(location.offset, src).map_err(device_error)?;
        Ok(checksum)
    }

    /// Copies the value at `location` to the caller's memory at `dst` (host or device, as
    /// `kind` says), then checks the lease.
    ///
    /// # Safety
    /// `dst` is valid writable memory of that kind for `location.len` bytes, not used by
    /// anything else during the copy.
    pub unsafe fn read_raw(
        &self,
        location: &Location,
        dst: u64,
        kind: MemoryKind,
        valid_until: Instant,
    ) -> Result<usize> {
        let memory = self
            .segment(location)
            .ok_or_else(|| Self::outside(location))?;
        if Instant::now() >= valid_until {
            return Err(lease_expired());
        }
        let len = location.len as usize;
        // SAFETY: forwarded from this method's contract.
        unsafe { memory.read_to_raw(location.offset, dst, len, kind) }.map_err(device_error)?;
        if Instant::now() >= valid_until {
            return Err(lease_expired());
        }
        Ok(len)
    }

    /// Copies the value at `location` over `pieces` in order, each by the module's copy
    /// of its kind (device to device, or device to host), then checks the lease; returns
    /// the value's length.
    ///
    /// # Safety
    /// Each piece is valid writable memory of its kind (device memory of this module's
    /// device) for its length, not used by anything else during the copies.
    pub unsafe fn read_pieces(
        &self,
        location: &Location,
        pieces: &[crate::Piece],
        valid_until: Instant,
    ) -> Result<usize> {
        let memory = self
            .segment(location)
            .ok_or_else(|| Self::outside(location))?;
        let len = location.len as usize;
        let spans = crate::pieces::spans(len, pieces)?;
        if Instant::now() >= valid_until {
            return Err(lease_expired());
        }
        let copies = spans.map(|(piece, at, take)| {
            let offset = location.offset + at as u64;
            (offset, piece.addr as u64, take, piece.kind)
        });
        // SAFETY: `segment` checked the whole value lies in the imported segment (and
        // `read_to_many` checks each range again); the pieces are this method's contract.
        unsafe { memory.read_to_many(copies) }.map_err(device_error)?;
        if Instant::now() >= valid_until {
            return Err(lease_expired());
        }
        Ok(len)
    }

    /// Copies `location.len` bytes from the caller's memory at `src` into the reserved
    /// `location`.
    ///
    /// # Safety
    /// `src` is valid readable memory of that kind for `location.len` bytes.
    pub unsafe fn write_raw(
        &self,
        location: &Location,
        src: u64,
        kind: MemoryKind,
        deadline: Instant,
        margin: Duration,
    ) -> Result<()> {
        let memory = self
            .segment(location)
            .ok_or_else(|| Self::outside(location))?;
        if Instant::now() + margin >= deadline {
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "the reservation is about to end; did not write into it",
            ));
        }
        let len = location.len as usize;
        // SAFETY: forwarded from this method's contract.
        unsafe { memory.write_from_raw(location.offset, src, len, kind) }.map_err(device_error)
    }
}

impl LocalReader for DeviceSegments {
    fn copy(&self, location: &Location, dst: &mut [u8], hash: bool) -> Result<Option<u64>> {
        let memory = self
            .segment(location)
            .ok_or_else(|| Self::outside(location))?;
        memory.read(location.offset, dst).map_err(device_error)?;
        // Hashed after the device copy, which the CPU does not take part in.
        Ok(hash.then(|| {
            let mut h = Xxh3::new();
            dst.chunks(CHECK_CHUNK).for_each(|c| h.update(c));
            h.digest()
        }))
    }

    fn mismatch(&self, _location: &Location, got: u64, expected: u64) -> Error {
        checksum_mismatch("device memory", got, expected)
    }
}

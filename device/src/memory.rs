//! [`DeviceMemory`]: device memory owned by this process (allocated or imported), freed
//! on drop, with bounds-checked copies in and out.

use std::sync::Arc;

use crate::device::{CopyKind, CopySpan, Device, IpcHandle};
use crate::error::{DeviceError, Result};

/// Whether a caller's buffer is host memory or device memory of the same device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    Host,
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Allocated,
    Imported,
}

/// A range of device memory this process owns: from [`DeviceMemory::alloc`] (freed on
/// drop) or [`DeviceMemory::import`] (unmapped on drop).
///
/// Copies take `&self`: like shared memory, device memory is written by several parties
/// into disjoint ranges at once (one reservation each); the callers above keep ranges
/// apart, the checks here keep every copy inside the memory.
pub struct DeviceMemory {
    device: Arc<dyn Device>,
    ptr: u64,
    size: u64,
    origin: Origin,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("backend", &self.device.backend())
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("origin", &self.origin)
            .finish()
    }
}

impl DeviceMemory {
    /// Allocates `size` bytes on `device`.
    pub fn alloc(device: &Arc<dyn Device>, size: u64) -> Result<DeviceMemory> {
        if size == 0 {
            return Err(DeviceError::InvalidArgument(
                "cannot allocate 0 bytes".into(),
            ));
        }
        let ptr = device.alloc_raw(size)?;
        Ok(DeviceMemory {
            device: Arc::clone(device),
            ptr,
            size,
            origin: Origin::Allocated,
        })
    }

    /// Maps memory another process exported, said to be `size` bytes. Refused if the
    /// module knows the allocation's size and it is smaller.
    pub fn import(device: &Arc<dyn Device>, handle: &IpcHandle, size: u64) -> Result<DeviceMemory> {
        let (ptr, known) = device.import_raw(handle)?;
        let memory = DeviceMemory {
            device: Arc::clone(device),
            ptr,
            size,
            origin: Origin::Imported,
        };
        if let Some(known) = known.filter(|&k| k < size) {
            return Err(DeviceError::InvalidArgument(format!(
                "imported allocation has {known} bytes, {size} were announced"
            )));
        }
        Ok(memory)
    }

    /// The handle other processes import this allocation with.
    pub fn export(&self) -> Result<IpcHandle> {
        if self.origin == Origin::Imported {
            return Err(DeviceError::InvalidArgument(
                "only the allocating process exports device memory".into(),
            ));
        }
        self.device.export_raw(self.ptr)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The device pointer of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    fn span(&self, offset: u64, len: usize) -> Result<u64> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(self.ptr + offset),
            _ => Err(DeviceError::InvalidArgument(format!(
                "{len} bytes at offset {offset} run past device memory of {} bytes",
                self.size
            ))),
        }
    }

    /// Copies `src` into this memory at `offset` (host to device).
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<()> {
        let dst = self.span(offset, src.len())?;
        // SAFETY: the destination lies inside this live memory (checked); the source is a
        // borrowed host slice of exactly the copied length.
        unsafe {
            self.device.copy_raw(
                dst,
                src.as_ptr() as u64,
                src.len() as u64,
                CopyKind::HostToDevice,
            )
        }
    }

    /// Copies from this memory at `offset` into `dst` (device to host).
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        let src = self.span(offset, dst.len())?;
        // SAFETY: the source lies inside this live memory (checked); the destination is an
        // exclusively borrowed host slice of exactly the copied length.
        unsafe {
            self.device.copy_raw(
                dst.as_mut_ptr() as u64,
                src,
                dst.len() as u64,
                CopyKind::DeviceToHost,
            )
        }
    }

    /// Copies `len` bytes at `offset` of this memory to `dst_offset` of `dst` (device to
    /// device, both on this memory's device).
    pub fn copy_to(
        &self,
        offset: u64,
        dst: &DeviceMemory,
        dst_offset: u64,
        len: usize,
    ) -> Result<()> {
        let src = self.span(offset, len)?;
        let to = dst.span(dst_offset, len)?;
        // SAFETY: both ranges lie inside live device memory (checked).
        unsafe {
            self.device
                .copy_raw(to, src, len as u64, CopyKind::DeviceToDevice)
        }
    }

    /// Copies `len` bytes at `offset` of this memory to the caller's memory at `dst`, host
    /// or device as `kind` says (a registered buffer of an engine).
    ///
    /// # Safety
    /// `dst` is valid, writable memory of that kind for `len` bytes (device memory of this
    /// memory's device), not referenced by anything else during the copy.
    pub unsafe fn read_to_raw(
        &self,
        offset: u64,
        dst: u64,
        len: usize,
        kind: MemoryKind,
    ) -> Result<()> {
        let src = self.span(offset, len)?;
        let copy = match kind {
            MemoryKind::Host => CopyKind::DeviceToHost,
            MemoryKind::Device => CopyKind::DeviceToDevice,
        };
        // SAFETY: the source is inside this live memory (checked); the destination is the
        // caller's promise.
        unsafe { self.device.copy_raw(dst, src, len as u64, copy) }
    }

    /// [`DeviceMemory::read_to_raw`] for many ranges in one batch of the device module
    /// (one call and one synchronisation): each `(offset, dst, len, kind)` copies `len`
    /// bytes at `offset` of this memory to the caller's `dst`. Every range is checked
    /// before any is copied.
    ///
    /// # Safety
    /// Each `dst` as for [`DeviceMemory::read_to_raw`], and no two overlap.
    pub unsafe fn read_to_many(
        &self,
        copies: impl IntoIterator<Item = (u64, u64, usize, MemoryKind)>,
    ) -> Result<()> {
        let spans = copies
            .into_iter()
            .map(|(offset, dst, len, kind)| {
                let copy = match kind {
                    MemoryKind::Host => CopyKind::DeviceToHost,
                    MemoryKind::Device => CopyKind::DeviceToDevice,
                };
                Ok(CopySpan::new(
                    dst,
                    self.span(offset, len)?,
                    len as u64,
                    copy,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: every source lies inside this live memory (checked); the destinations
        // are the caller's promise.
        unsafe { self.device.copy_batch_raw(&spans) }
    }

    /// Copies `len` bytes from the caller's memory at `src` (host or device as `kind`
    /// says) into this memory at `offset`.
    ///
    /// # Safety
    /// `src` is valid, readable memory of that kind for `len` bytes, not written during the
    /// copy.
    pub unsafe fn write_from_raw(
        &self,
        offset: u64,
        src: u64,
        len: usize,
        kind: MemoryKind,
    ) -> Result<()> {
        let dst = self.span(offset, len)?;
        let copy = match kind {
            MemoryKind::Host => CopyKind::HostToDevice,
            MemoryKind::Device => CopyKind::DeviceToDevice,
        };
        // SAFETY: the destination is inside this live memory (checked); the source is the
        // caller's promise.
        unsafe { self.device.copy_raw(dst, src, len as u64, copy) }
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this device's alloc or import, is released exactly once
        // here, and no copy can run on it: copies borrow `self`.
        let released = unsafe {
            match self.origin {
                Origin::Allocated => self.device.free_raw(self.ptr),
                Origin::Imported => self.device.close_imported_raw(self.ptr),
            }
        };
        if let Err(e) = released {
            eprintln!("strata-device: releasing {self:?}: {e}");
        }
    }
}

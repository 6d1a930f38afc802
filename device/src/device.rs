//! What the rest of strata sees of a device: the [`Device`] trait, the copy kinds, and
//! the IPC handles allocations are shared by.

use crate::abi::IPC_HANDLE_BYTES;
use crate::error::Result;

/// Which side of a copy is device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CopyKind {
    HostToDevice = 1,
    DeviceToHost = 2,
    DeviceToDevice = 3,
}

/// One copy of a batch ([`Device::copy_batch_raw`]); the layout of the ABI's
/// `strata_copy_span`, so a batch crosses into a module as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CopySpan {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub kind: CopyKind,
    reserved: u32,
}

impl CopySpan {
    /// `len` bytes from `src` to `dst`, `kind` saying which side is device memory.
    pub fn new(dst: u64, src: u64, len: u64, kind: CopyKind) -> CopySpan {
        CopySpan {
            dst,
            src,
            len,
            kind,
            reserved: 0,
        }
    }
}

/// An exported allocation: bytes another process on this host can import.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpcHandle(pub [u8; IPC_HANDLE_BYTES]);

impl IpcHandle {
    /// The handle from bytes received over the wire; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<IpcHandle> {
        Some(IpcHandle(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for IpcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpcHandle(")?;
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A device opened through some backend. Implementations are internally synchronised:
/// every method may be called from any thread, concurrently.
///
/// Device pointers are opaque numbers. The raw methods that dereference memory are
/// `unsafe`; [`DeviceMemory`](crate::DeviceMemory) wraps them with ownership and bounds checks.
pub trait Device: Send + Sync + 'static {
    /// The backend's short name ("host-sim", "cuda", "ascend", or a plugin's own).
    fn backend(&self) -> &str;
    /// The device's index on its host.
    fn index(&self) -> u32;
    /// Allocates `size` bytes of device memory.
    fn alloc_raw(&self, size: u64) -> Result<u64>;
    /// Frees memory from [`Device::alloc_raw`].
    ///
    /// # Safety
    /// `ptr` came from `alloc_raw` of this device, is not freed yet, and no copy on it is
    /// running or will run.
    unsafe fn free_raw(&self, ptr: u64) -> Result<()>;
    /// Copies `len` bytes from `src` to `dst`, synchronously.
    ///
    /// # Safety
    /// The device side(s) named by `kind` lie inside live device memory of this device
    /// (allocated or imported); the host side(s) are valid host memory of this process for
    /// `len` bytes (readable for the source, writable and not aliased by a Rust reference
    /// for the destination).
    unsafe fn copy_raw(&self, dst: u64, src: u64, len: u64, kind: CopyKind) -> Result<()>;
    /// Performs every copy of `spans`, synchronously: when it returns, all have arrived.
    /// A backend overrides it to pay one call and one synchronisation for the batch (a KV
    /// block's per-layer pieces are many and small); this default copies span by span.
    ///
    /// # Safety
    /// Each span as [`Device::copy_raw`] requires, and no span's destination overlaps
    /// another's.
    unsafe fn copy_batch_raw(&self, spans: &[CopySpan]) -> Result<()> {
        for s in spans {
            // SAFETY: this method's contract, span by span.
            unsafe { self.copy_raw(s.dst, s.src, s.len, s.kind) }?;
        }
        Ok(())
    }
    /// Exports an allocation from `alloc_raw` for other processes on this host.
    fn export_raw(&self, ptr: u64) -> Result<IpcHandle>;
    /// Maps an exported allocation into this process; returns its pointer and, when the
    /// backend knows it, its size.
    fn import_raw(&self, handle: &IpcHandle) -> Result<(u64, Option<u64>)>;
    /// Unmaps memory from [`Device::import_raw`].
    ///
    /// # Safety
    /// `ptr` came from `import_raw` of this device, is not closed yet, and no copy on it is
    /// running or will run.
    unsafe fn close_imported_raw(&self, ptr: u64) -> Result<()>;
    /// Waits until all work issued on the device so far has finished.
    fn synchronize(&self) -> Result<()>;
}

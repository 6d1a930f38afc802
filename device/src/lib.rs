//! strata's device module: device memory behind one trait, whatever the hardware.
//!
//! * [`Device`] is what the rest of strata sees: alloc/free, copies of a [`CopyKind`],
//!   IPC export/import, synchronize. Its raw methods take device pointers as numbers;
//!   [`DeviceMemory`] is the safe, owning, bounds-checked layer on top.
//! * Backends: a C-ABI plugin (`include/strata_device.h`) loaded with dlopen, of which the
//!   host-sim module built from `plugins/host_sim.c` is one ([`Backend::HostSim`]); and
//!   CUDA and Ascend, which load the vendor runtime at run time ([`cuda`], [`ascend`]).
//!
//! All of strata's FFI lives in this crate.

mod abi;
pub mod ascend;
pub mod cuda;
mod error;
mod memory;
mod plugin;
mod vendor;

use std::path::PathBuf;
use std::sync::Arc;

pub use abi::{ABI_VERSION, IPC_HANDLE_BYTES};
pub use error::{DeviceError, Result};
pub use memory::{DeviceMemory, MemoryKind};
pub use plugin::PluginLibrary;

/// Which side of a copy is device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CopyKind {
    HostToDevice = 1,
    DeviceToHost = 2,
    DeviceToDevice = 3,
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
/// `unsafe`; [`DeviceMemory`] wraps them with ownership and bounds checks.
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

/// How to reach a device: which backend, as a flag or config names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The host-sim plugin built with this crate ("device memory" is shared memory).
    HostSim,
    /// NVIDIA GPUs through libcuda (the driver API), loaded at run time.
    Cuda,
    /// Ascend NPUs through libascendcl, loaded at run time.
    Ascend,
    /// Any module implementing `strata_device.h`, by path.
    Plugin(PathBuf),
}

impl Backend {
    /// Parses `host-sim`, `cuda`, `ascend`, or a path to a plugin.
    pub fn parse(spec: &str) -> Backend {
        match spec {
            "host-sim" => Backend::HostSim,
            "cuda" => Backend::Cuda,
            "ascend" => Backend::Ascend,
            path => Backend::Plugin(PathBuf::from(path)),
        }
    }

    /// The spelling [`Backend::parse`] reads back: what a server tells its clients so they
    /// open the same backend.
    pub fn spec(&self) -> String {
        match self {
            Backend::HostSim => "host-sim".into(),
            Backend::Cuda => "cuda".into(),
            Backend::Ascend => "ascend".into(),
            Backend::Plugin(path) => path.display().to_string(),
        }
    }

    /// Opens device `index` of this backend.
    pub fn open(&self, index: u32) -> Result<Arc<dyn Device>> {
        Ok(match self {
            Backend::HostSim => Arc::new(PluginLibrary::host_sim()?.open(index)?),
            Backend::Cuda => Arc::new(cuda::CudaDevice::open(index)?),
            Backend::Ascend => Arc::new(ascend::AscendDevice::open(index)?),
            Backend::Plugin(path) => Arc::new(PluginLibrary::load(path)?.open(index)?),
        })
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec())
    }
}

/// Where the build put the plugin fixtures, for tests that load them by path.
pub mod fixtures {
    /// The host-sim plugin as built (tests load it by path, as a vendor plugin would be).
    pub const HOST_SIM_PLUGIN: &str = env!("STRATA_HOST_SIM_PLUGIN");
    /// The host-sim source stamped with ABI version 999: must be refused.
    pub const ABI_MISMATCH_PLUGIN: &str = env!("STRATA_ABI_MISMATCH_PLUGIN");
}

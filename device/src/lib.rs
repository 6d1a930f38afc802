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
mod device;
mod error;
pub mod fixtures;
mod memory;
mod plugin;
mod vendor;

use std::path::PathBuf;
use std::sync::Arc;

pub use abi::{ABI_MIN_VERSION, ABI_VERSION, IPC_HANDLE_BYTES};
pub use device::{CopyKind, CopySpan, Device, IpcHandle};
pub use error::{DeviceError, Result};
pub use memory::{DeviceMemory, MemoryKind};
pub use plugin::PluginLibrary;

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

//! Device modules from Python: which one a client copies pieces of device memory with,
//! and `strata.DeviceMemory`, memory of a device module allocated from Python (the test
//! suite's "device memory" on host-sim, a staging area an integration owns).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use strata_device::{Backend, Device};
use strata_proto::{Error, ErrorCode};

use crate::errors::{invalid, IntoPy};

/// Opens the device module `spec` names: `backend[:index]`, backend one of `host-sim`,
/// `cuda`, `ascend` or a plugin's path (index 0 when not given).
pub fn open(spec: &str) -> Result<Arc<dyn Device>, Error> {
    let (backend, index) = match spec.rsplit_once(':') {
        Some((backend, index)) if index.chars().all(|c| c.is_ascii_digit()) => {
            let index = index
                .parse::<u32>()
                .map_err(|_| invalid(format!("device index {index:?} is not a number")))?;
            (backend, index)
        }
        _ => (spec, 0),
    };
    if backend.is_empty() {
        return Err(invalid(
            "a device is named `backend[:index]`, e.g. `ascend:0`",
        ));
    }
    Backend::parse(backend)
        .open(index)
        .map_err(|e| Error::new(ErrorCode::Unavailable, format!("device {spec}: {e}")))
}

/// Device memory allocated through a device module, freed when this object is.
#[pyclass(frozen, module = "strata._native", name = "DeviceMemory")]
pub struct DeviceMemory {
    memory: strata_device::DeviceMemory,
    spec: String,
}

fn device_error(e: strata_device::DeviceError) -> Error {
    Error::new(ErrorCode::Unavailable, e.to_string())
}

#[pymethods]
impl DeviceMemory {
    /// Allocates `size` bytes on the device `device` names (`backend[:index]`).
    #[new]
    #[pyo3(signature = (size, device="host-sim"))]
    fn new(py: Python<'_>, size: u64, device: &str) -> PyResult<DeviceMemory> {
        let opened = open(device).or_raise(py)?;
        let memory = strata_device::DeviceMemory::alloc(&opened, size)
            .map_err(device_error)
            .or_raise(py)?;
        Ok(DeviceMemory {
            memory,
            spec: device.to_owned(),
        })
    }

    /// The device address of the first byte.
    #[getter]
    fn address(&self) -> u64 {
        self.memory.ptr()
    }

    /// Bytes allocated.
    #[getter]
    fn size(&self) -> u64 {
        self.memory.size()
    }

    /// Copies `data` (bytes-like) to `offset` (host to device).
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let export = crate::region::Exported::new(data, false)?;
        let bytes = export.bytes();
        py.detach(|| self.memory.write(offset, bytes))
            .map_err(device_error)
            .or_raise(py)
    }

    /// `size` bytes from `offset` (device to host).
    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = vec![0u8; size];
        py.detach(|| self.memory.read(offset, &mut out))
            .map_err(device_error)
            .or_raise(py)?;
        Ok(PyBytes::new(py, &out))
    }

    fn __repr__(&self) -> String {
        format!(
            "<strata.DeviceMemory {} bytes at {:#x} on {}>",
            self.memory.size(),
            self.memory.ptr(),
            self.spec
        )
    }
}

//! `strata._native`: the Rust half of the Python package `strata`.
//!
//! Rooms: [`client`] (the `Client` class: every call waits with the GIL released),
//! [`cluster`] (the `ClusterClient` class: a whole cluster, keys placed by runs),
//! [`region`] (Python objects and raw addresses as byte ranges), [`runtime`] (the tokio
//! runtime the calls wait on), [`errors`] (strata errors as the exceptions of
//! `strata.errors`), [`hasher`] (`BlockHasher`, `KeyFormatter`), [`device`] (device
//! modules: `DeviceMemory`, and the one a client copies device pieces with). The pure-Python half
//! (`python/strata/`) holds the exceptions, the asyncio form and the Mooncake-compatible
//! class.

mod client;
mod cluster;
mod device;
mod errors;
mod hasher;
mod keys;
mod region;
mod runtime;

use pyo3::prelude::*;

/// The native module; `strata/__init__.py` re-exports what users call.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<cluster::ClusterClient>()?;
    m.add_class::<hasher::BlockHasher>()?;
    m.add_class::<hasher::KeyFormatter>()?;
    m.add_class::<device::DeviceMemory>()?;
    m.add("DEFAULT_SERVER", strata_client::DEFAULT_SERVER)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

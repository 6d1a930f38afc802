//! The device module's errors: each names the backend and what to do about it.

use std::path::PathBuf;

/// A device module failure.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A backend's library could not be loaded (the vendor runtime is not installed).
    #[error("device backend {backend}: cannot load {library}: {reason}")]
    LibraryMissing {
        backend: &'static str,
        library: String,
        reason: String,
    },
    /// A plugin was built for another version of `strata_device.h`.
    #[error(
        "device plugin {path}: built for device ABI version {found}, this strata speaks versions {oldest} to {expected}; rebuild the plugin against this strata's strata_device.h"
    )]
    AbiMismatch {
        path: PathBuf,
        found: u32,
        oldest: u32,
        expected: u32,
    },
    /// A library loaded but is not a usable module (missing symbol, short vtable).
    #[error("device plugin {path}: {reason}")]
    BadModule { path: PathBuf, reason: String },
    /// A backend call failed.
    #[error("device {backend} #{index}: {op} failed (status {status}): {message}")]
    Call {
        backend: String,
        index: u32,
        op: &'static str,
        status: i64,
        message: String,
    },
    /// A request the module was never asked to do, refused before it reached it.
    #[error("device: {0}")]
    InvalidArgument(String),
}

impl DeviceError {
    /// A stable name of the failure's kind, for logs and for mapping onto wire codes.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceError::LibraryMissing { .. } => "library_missing",
            DeviceError::AbiMismatch { .. } => "abi_mismatch",
            DeviceError::BadModule { .. } => "bad_module",
            DeviceError::Call { .. } => "call_failed",
            DeviceError::InvalidArgument(_) => "invalid_argument",
        }
    }
}

pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

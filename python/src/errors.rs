//! strata errors as Python exceptions: the classes live in `strata/errors.py` (so they
//! can also subclass Python's own `TimeoutError`, `ConnectionError`...), and this module
//! builds them from an error's stable code and message.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use strata_proto::{Error, ErrorCode};

/// The exception object for `error` (raised by calls, returned in batch results).
pub fn exception_object(py: Python<'_>, error: &Error) -> Py<PyAny> {
    let built = py.import("strata.errors").and_then(|m| {
        m.getattr("_from_code")?.call1((
            error.code().as_u16(),
            error.code().name(),
            error.message(),
        ))
    });
    match built {
        Ok(exception) => exception.unbind(),
        // Only a damaged installation gets here: say what happened all the same.
        Err(e) => PyRuntimeError::new_err(format!("{error} (and strata.errors: {e})"))
            .into_value(py)
            .into_any(),
    }
}

/// `error` as a raisable exception.
pub fn raise(py: Python<'_>, error: &Error) -> PyErr {
    PyErr::from_value(exception_object(py, error).into_bound(py))
}

/// Turns a client result into a Python result.
pub trait IntoPy<T> {
    /// The value, or the error as its strata exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| raise(py, &e))
    }
}

/// An `InvalidArgument` error with `message`.
pub fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, message.into())
}

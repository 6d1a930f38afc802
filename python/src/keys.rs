//! Keys from Python: `str` (UTF-8) or `bytes`, as the engines pass them, borrowed rather
//! than copied. A lookup of 1024 keys spends most of its time here otherwise: copying
//! each key (and, under the 3.9 limited API, encoding it into a new `bytes` first) cost
//! the package half of the Rust client's lookup time again (docs/benchmarks.md).

use std::ffi::c_char;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use strata_proto::{Error, ErrorCode};

extern "C" {
    // In every CPython 3; in the limited API from 3.10, so PyO3's abi3-py39 build lacks it.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const c_char;
}

/// Keys borrowed from Python objects: each `str`'s UTF-8 form (which CPython keeps in the
/// object once made) or each `bytes`' contents. The references held here keep every object,
/// and so every key's bytes, alive and unchanged (both types are immutable) while the GIL is
/// released.
pub struct Keys<'py> {
    _owners: Vec<Bound<'py, PyAny>>,
    spans: Vec<(*const u8, usize)>,
}

impl<'py> Keys<'py> {
    /// One key.
    pub fn one(obj: &Bound<'py, PyAny>) -> Result<Keys<'py>, Error> {
        let mut keys = Keys {
            _owners: Vec::with_capacity(1),
            spans: Vec::with_capacity(1),
        };
        keys.push(obj)?;
        Ok(keys)
    }

    /// Each key of a sequence.
    pub fn many(obj: &Bound<'py, PyAny>) -> Result<Keys<'py>, Error> {
        let n = obj.len().unwrap_or(0);
        let mut keys = Keys {
            _owners: Vec::with_capacity(n),
            spans: Vec::with_capacity(n),
        };
        keys.extend(obj)?;
        Ok(keys)
    }

    /// Each key of a sequence of groups, in one flat list, and where each group ends in
    /// it: one borrow for a whole prefix lookup, however many groups it has.
    pub fn grouped(obj: &Bound<'py, PyAny>) -> Result<(Keys<'py>, Vec<usize>), Error> {
        let not_groups = || {
            Error::new(
                ErrorCode::InvalidArgument,
                "groups is a list of lists of keys",
            )
        };
        if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
            return Err(not_groups());
        }
        let mut keys = Keys {
            _owners: Vec::new(),
            spans: Vec::new(),
        };
        let mut ends = Vec::with_capacity(obj.len().unwrap_or(0));
        for group in obj.try_iter().map_err(|_| not_groups())? {
            let group = group.map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))?;
            keys.extend(&group)?;
            ends.push(keys.spans.len());
        }
        Ok((keys, ends))
    }

    fn extend(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Error> {
        if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "keys is a list of keys, not one key",
            ));
        }
        let iter = obj.try_iter().map_err(|_| {
            Error::new(ErrorCode::InvalidArgument, "keys is a list of str or bytes")
        })?;
        for item in iter {
            let item = item.map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))?;
            self.push(&item)?;
        }
        Ok(())
    }

    fn push(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Error> {
        let span = if let Ok(s) = obj.cast::<PyString>() {
            let mut len: ffi::Py_ssize_t = 0;
            // SAFETY: `s` is a live str (GIL held); the call returns its UTF-8 form, owned
            // by the object, or null with a Python error set (a lone surrogate).
            let data = unsafe { PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len) };
            if data.is_null() {
                let e = PyErr::fetch(obj.py());
                let msg = format!("key is not valid UTF-8: {e}");
                return Err(Error::new(ErrorCode::InvalidKey, msg));
            }
            (data.cast::<u8>(), len.max(0) as usize)
        } else if let Ok(b) = obj.cast::<PyBytes>() {
            let bytes = b.as_bytes();
            (bytes.as_ptr(), bytes.len())
        } else {
            let kind = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string());
            return Err(Error::new(
                ErrorCode::InvalidKey,
                format!("a key is a str or bytes, not {kind}"),
            ));
        };
        self._owners.push(obj.clone());
        self.spans.push(span);
        Ok(())
    }

    /// The keys' bytes, valid while `self` is.
    pub fn slices(&self) -> Vec<&[u8]> {
        self.spans
            .iter()
            // SAFETY: each span lies in an immutable object `_owners` keeps alive.
            .map(|&(ptr, len)| unsafe { std::slice::from_raw_parts(ptr, len) })
            .collect()
    }
}

/// A key for messages: as text where it is text.
pub fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// `error`, its message naming `key` (the server's messages do not always).
pub fn about(key: &[u8], error: Error) -> Error {
    let name = shown(key);
    if error.message().contains(name.as_str()) {
        return error;
    }
    Error::new(error.code(), format!("{name:?}: {}", error.message()))
}

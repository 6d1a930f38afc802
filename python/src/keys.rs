//! Keys from Python: `str` (UTF-8) or `bytes`, as the engines pass them.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use strata_proto::{Error, ErrorCode};

/// The bytes of one key.
pub fn key(obj: &Bound<'_, PyAny>) -> Result<Vec<u8>, Error> {
    if let Ok(s) = obj.cast::<PyString>() {
        return s.to_cow().map(|s| s.as_bytes().to_vec()).map_err(|e| {
            Error::new(
                ErrorCode::InvalidKey,
                format!("key is not valid UTF-8: {e}"),
            )
        });
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    let kind = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    Err(Error::new(
        ErrorCode::InvalidKey,
        format!("a key is a str or bytes, not {kind}"),
    ))
}

/// The bytes of each key of a sequence.
pub fn keys(obj: &Bound<'_, PyAny>) -> Result<Vec<Vec<u8>>, Error> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "keys is a list of keys, not one key",
        ));
    }
    let iter = obj
        .try_iter()
        .map_err(|_| Error::new(ErrorCode::InvalidArgument, "keys is a list of str or bytes"))?;
    iter.map(|item| {
        item.map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))
            .and_then(|k| key(&k))
    })
    .collect()
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

//! The vocabulary every strata component shares: keys, error codes and limits.
//!
//! This crate does no I/O. The wire framing (issue: QUIC service) builds on it, and the
//! engine validates its inputs with the same types so an embedded caller and a remote one
//! get identical errors.
#![deny(missing_docs)]

mod error;
mod key;
pub mod limits;

pub use error::{Error, ErrorCode, Result};
pub use key::{validate_key, Key};

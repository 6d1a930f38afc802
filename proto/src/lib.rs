//! The vocabulary every strata component shares: keys, error codes, limits, and the wire
//! protocol's framing and messages.
//!
//! This crate does no I/O (but for [`host_id`], which reads the host's name and boot id, and
//! [`token::read_token_file`]):
//! [`wire`] encodes and decodes frames from byte slices, so the protocol is tested without
//! a network, and the engine validates its inputs with the same
//! types so an embedded caller and a remote one get identical errors.
#![deny(missing_docs)]

pub mod data;
mod error;
mod host;
mod key;
pub mod limits;
pub mod msg;
pub mod placement;
pub mod shm;
pub mod token;
pub mod wire;

pub use error::{Error, ErrorCode, Result};
pub use host::host_id;
pub use key::{validate_key, Key};

//! The ways value bytes travel besides QUIC streams (which `connection` and `client` own).
//!
//! * [`shm`]: same host; the server's dram segments mapped into this process.

pub(crate) mod shm;

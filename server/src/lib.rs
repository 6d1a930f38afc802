//! strata's service: the QUIC service, the TCP data plane, the shm hand-off, the metrics
//! exporter, and the `strata-server` binary's flags and process, over the store engine
//! of the `strata-engine` crate.
//!
//! The QUIC service is [`net`]; the metrics exporter [`metrics`]; the binary's flags
//! [`settings`] and its process [`launch`]. The engine's types are the engine crate's:
//! embedders depend on `strata-engine` alone.

pub mod cluster;
pub mod launch;
pub mod metrics;
pub mod net;
pub mod settings;

//! strata's store engine, usable in-process with no network (embedded mode).
//!
//! Start at [`Store`]: it implements the operation contract of the design brief — two-phase
//! puts with reservations, leased reads, prefix lookup, removal, pinning, per-tier LRU
//! eviction with watermarks — over a stack of tiers: device memory (HBM through the FFI
//! device module, with segments engine processes mount) above dram (shared memory) above ssd
//! (O_DIRECT files that survive restarts), with demotion on eviction and promotion on a
//! second read.
//!
//! This crate does no networking: the QUIC service, the data plane, the metrics exporter
//! and the `strata-server` binary are the `strata-server` crate, built over this one. The
//! engine records its own figures through the `metrics` facade; whoever installs a
//! recorder (the server's exporter) gets them.
//!
//! Rooms: `store` (the [`Store`] and everything it does, one concept a file: see
//! `docs/engine.md`), `tier` (where bytes live; public only with the `internals` feature), `alloc` (the offset allocator),
//! [`config`], [`clock`], [`private_files`] (the modes of everything the engine and the
//! server write).

mod alloc;
pub mod clock;
pub mod config;
pub mod private_files;
mod store;
// The tiers' own interfaces (the `Tier` trait, the ssd record format and I/O engines) are
// internals: an embedder uses the `Store`. The bench and the end-to-end tests measure and
// inspect the tiers themselves, and turn on the `internals` feature for that.
#[cfg(feature = "internals")]
pub mod tier;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
mod tier;

pub use clock::{Clock, ManualClock};
pub use config::{StoreConfig, TierConfig};
pub use store::{
    reservation_gone, LeaseCounts, OpCounters, Placement, PrefixMatch, PutOptions, ReadGuard,
    ReadLease, Store, StoreCounters, StoreStats, UnmountReport, WriteReservation, WriterId,
};
pub use strata_device as device;
pub use strata_proto::{Error, ErrorCode, Key, Result};
pub use tier::device::{DeviceOptions, DeviceTier};
pub use tier::ssd::{
    Admission, IoEngineKind, IoFigures, RecoveryMode, SsdOptions, SSD_IO_DURATION,
};
pub use tier::{Extent, SharedFile, SharedSegment, TierKind, TierStats};

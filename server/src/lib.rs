//! strata's store engine, usable in-process with no network (embedded mode), and its
//! QUIC service.
//!
//! Start at [`Store`]: it implements the operation contract of the design brief — two-phase
//! puts with reservations, leased reads, prefix lookup, removal, pinning, per-tier LRU
//! eviction with watermarks — over a stack of tiers: device memory (HBM through the FFI
//! device module, with segments engine processes mount) above dram (shared memory) above ssd
//! (O_DIRECT files that survive restarts), with demotion on eviction and promotion on a
//! second read.
//!
//! The QUIC service over it is [`net`]; the `strata-server` binary's flags are [`settings`].
//!
//! Rooms: [`engine`] (the store and its sharded index), [`tier`] (where bytes live),
//! [`alloc`] (the offset allocator), [`lease`] (guards and reservations), `evict` (eviction
//! and the maintenance thread), [`config`], [`clock`], [`private_files`] (the modes of
//! everything the server writes).

pub mod alloc;
pub mod clock;
pub mod config;
pub mod engine;
mod evict;
pub mod launch;
pub mod lease;
pub mod metrics;
pub mod net;
pub mod private_files;
pub mod settings;
pub mod tier;

pub use clock::{Clock, ManualClock};
pub use config::{StoreConfig, TierConfig};
pub use engine::{
    LeaseCounts, OpCounters, Placement, PrefixMatch, PutOptions, Store, StoreCounters, StoreStats,
    UnmountReport,
};
pub use lease::{ReadGuard, ReadLease, WriteReservation, WriterId};
pub use strata_device as device;
pub use strata_proto::{Error, ErrorCode, Key, Result};
pub use tier::device::{DeviceOptions, DeviceTier};
pub use tier::ssd::{Admission, IoEngineKind, IoFigures, RecoveryMode, SsdOptions};
pub use tier::{Extent, SharedFile, SharedSegment, TierKind, TierStats};

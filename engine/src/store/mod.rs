//! The embeddable store engine: index, tiers, leases, eviction, all in-process.
//!
//! Every operation of the brief's contract table is a method of [`Store`]; the network
//! service is a thin layer over them.
//!
//! Concurrency model:
//! * the index is split into shards by a 64-bit hash of the key, each behind its own mutex,
//!   held only for index work — never while value bytes are copied;
//! * bytes are copied under a crossbeam-epoch guard pinned *before* the index lookup, and
//!   extents are freed only through `Tier::retire` (an epoch-deferred free), so a copy that
//!   races with eviction or removal still reads the old, intact bytes;
//! * placement may evict synchronously (no shard lock held), and a background thread keeps
//!   each tier under its high watermark.
//!
//! Rooms, one concept each: [`facade`](Store) (the handle, open and close), `inner` (the
//! shared state and the steps every operation takes), `index` (one shard), `put` (the
//! two-phase put), `read` (leases, guards, gets, existence), `prefix` (prefix lookup),
//! `remove`, `placement` (where a value goes, making room), `evict` (eviction, demotion),
//! `maintenance` (the background thread), `promote`, `lease` (read leases, guards, write reservations),
//! `lease_ledger` (lease counts), `counters` and `stats`, `mount` (mounted device
//! segments), `shared` (what same-host clients map and read) and `in_place` (values read
//! and written where they lie, for the data plane).

mod counters;
mod evict;
mod facade;
mod in_place;
pub(crate) mod index;
mod inner;
pub(crate) mod lease;
mod lease_ledger;
mod maintenance;
mod mount;
mod placement;
mod prefix;
mod promote;
mod put;
mod read;
mod remove;
mod shared;
mod stats;

pub use counters::OpCounters;
pub use facade::Store;
pub use lease::{reservation_gone, ReadGuard, ReadLease, WriteReservation, WriterId};
pub use lease_ledger::LeaseCounts;
pub use mount::UnmountReport;
pub use prefix::PrefixMatch;
pub use put::PutOptions;
pub use stats::{StoreCounters, StoreStats};
pub use strata_proto::msg::Placement;

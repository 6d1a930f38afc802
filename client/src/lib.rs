//! The Rust client of strata, the KV-cache store for LLM inference.
//!
//! ```no_run
//! # async fn demo() -> strata_proto::Result<()> {
//! use strata_client::{BlockHasher, Client, ClientConfig, KeyFormatter};
//!
//! // A server on this host, started with no flags: no settings needed.
//! let client = Client::connect(ClientConfig::default()).await?;
//!
//! // Name the blocks of a prompt the way every instance on every host names them.
//! let tokens: Vec<u32> = (0..1024).collect();
//! let hashes = BlockHasher::new(0, 128).block_hashes(&tokens);
//! let keys = KeyFormatter::new("my-model");
//! let groups: Vec<Vec<String>> = hashes.iter().map(|h| keys.group(1, *h)).collect();
//!
//! // How many leading blocks are stored already? Load those, compute the rest.
//! let stored = client.prefix_len(&groups).await?;
//! for group in &groups[..stored] {
//!     let block = client.get(group[0].as_bytes()).await?;
//!     # let _ = block;
//! }
//! # Ok(()) }
//! ```
//!
//! Rooms: [`Client`] (operations), [`ClientConfig`] (how to reach the server),
//! [`BlockHasher`] and [`KeyFormatter`] (block keys), `cache` (the lease cache),
//! `connection` (QUIC, TLS, reconnects, and each connection's `transport::Route`: how it
//! moves value bytes, chosen once), `transport` (shared memory, ssd files, device
//! memory, the TCP data plane; `transport::reader` is what the three same-host readers
//! share), `direct` and `tcp` (the operations over a same-host or TCP route), `stats`
//! ([`TransportStats`]), `buffers` and `registered` (registered memory and the copies into
//! and out of it), `pieces` (loads spread over pieces of host or device memory). Errors are [`Error`]s carrying the server's
//! stable [`ErrorCode`] and message.
#![deny(missing_docs)]

mod buffers;
mod cache;
pub mod cli;
mod client;
mod cluster;
mod config;
mod connection;
mod copy_pool;
mod direct;
mod hash;
mod pieces;
mod registered;
mod segment;
mod stats;
mod tcp;
mod transport;

pub use buffers::BufferId;
pub use cache::LeasedLocation;
pub use client::{Client, ClusterView, PrefixMatch, Reservation, ServerStats};
pub use cluster::{ClusterClient, ClusterCounters, ClusterMatch, ClusterOptions};
pub use config::{default_cert_path, ClientConfig, Transport, DEFAULT_SERVER};
pub use connection::ServerInfo;
pub use hash::{BlockHash, BlockHasher, KeyFormatter};
pub use pieces::Piece;
pub use segment::MountedSegment;
pub use stats::TransportStats;
pub use strata_device as device;
pub use strata_device::MemoryKind;
pub use strata_proto::msg::{Location, Placement, TierStats, UnmountResponse};
pub use strata_proto::msg::{MemberInfo, MemberState};
pub use strata_proto::{Error, ErrorCode, Result};

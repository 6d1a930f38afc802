//! Many servers as one pool: membership in etcd and the view clients place by
//! (docs/cluster.md). The placement itself is `strata_proto::placement`, shared with
//! the clients; a server never forwards: it answers for the keys it holds.

pub mod etcd;
pub mod membership;

pub use membership::{ClusterConfig, ClusterState, LocalMember, Membership};

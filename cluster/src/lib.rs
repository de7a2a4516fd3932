//! The cluster: membership, node metadata, placement of IMVUs on nodes, remote messages.
//!
//! - [`node`]: [`Cluster`], the driver: leases held through the canon, requests served here or
//!   forwarded to the IMVU's owner over the canon's connections ([`remote`]).
//! - [`members`]: the view of the members that placement reads.
//! - [`placement`]: buckets, rendezvous hashing and the bucket-lease core that gives at most
//!   one activation of an IMVU in a region.

pub mod members;
pub mod node;
pub mod placement;
pub mod remote;

pub use members::{Member, MemberSource, MemberState, StaticMembers};
pub use node::{Cluster, ClusterConfig, LeaseTable, Placement};

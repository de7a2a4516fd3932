//! The cluster: membership, node metadata, placement of IMVUs on nodes, remote messages.
//!
//! - [`node`]: [`Cluster`], the driver: leases held through the canon, requests served here or
//!   forwarded to the IMVU's owner over the canon's connections ([`remote`]).
//! - [`members`]: the view of the members that placement reads ([`MemberSource`]).
//! - [`placement`]: buckets, rendezvous hashing and the bucket-lease core that gives at most
//!   one activation of an IMVU in a region.
//! - [`membership`]: the sans-IO core over foca (SWIM): identities carrying each node's static
//!   metadata, the members view, events.
//! - [`transport`]: the datagram seam ([`transport::DatagramSocket`]): tokio UDP in
//!   production, turmoil UDP under the simulator (feature `sim`).
//! - [`driver`]: the tokio task that owns a socket and a core, publishes the view, sends events.
//!
//! Design decisions:
//! - **foca is the only failure detector.** Whatever else gossips (chitchat, below) has its
//!   liveness ignored: a node is up or down because foca says so, so the simulator, which runs
//!   foca on turmoil's network, tests exactly what decides.
//! - **Static placement inputs ride in foca's identity** (region, roles, HTTP and canon
//!   addresses): placement reads [`membership::View`] and never depends on a second protocol.

pub mod members;
pub mod node;
pub mod placement;
#[allow(missing_docs)] // rkyv's generated archived types carry no docs
pub mod remote;
pub mod membership;
pub mod driver;
pub mod transport;

pub use driver::{spawn, MembershipHandle, EVENTS_LEN_MAX};
pub use transport::DatagramSocket;

pub use members::{Member, MemberSource, MemberState, StaticMembers};
pub use node::{Cluster, ClusterConfig, ClusterRouter, LeaseTable, Placement};

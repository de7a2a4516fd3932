//! The cluster: membership, node metadata, placement of IMVUs on nodes, remote messages.
//!
//! - [`node`]: [`Cluster`], the driver: leases held through the canon, requests served here or
//!   forwarded to the IMVU's owner over the canon's connections ([`remote`]).
//! - [`region`]: region tags in IMVU ids: any node routes to an IMVU's home region.
//! - [`members`]: the view of the members that placement reads ([`MemberSource`]).
//! - [`placement`]: buckets, rendezvous hashing and the bucket-lease core that gives at most
//!   one activation of an IMVU in a region.
//! - [`membership`]: the sans-IO core over foca (SWIM): identities carrying each node's static
//!   metadata, the members view, events.
//! - [`transport`]: the datagram seam ([`transport::DatagramSocket`]): tokio UDP in
//!   production, turmoil UDP under the simulator (feature `sim`).
//! - [`driver`]: the tokio task that owns a socket and a core, publishes the view, sends events.
//! - [`dynamic`]: dynamic node state (load, capacity, IMVUs owned, version) over chitchat, in
//!   production only.
//!
//! Design decisions:
//! - **foca is the only failure detector.** Whatever else gossips (chitchat, below) has its
//!   liveness ignored: a node is up or down because foca says so, so the simulator, which runs
//!   foca on turmoil's network, tests exactly what decides.
//! - **Static placement inputs ride in foca's identity** (region, roles, HTTP and canon
//!   addresses): placement reads [`membership::View`] and never depends on a second protocol.
//! - **chitchat carries only dynamic state, only in production** ([`dynamic::DynamicState`],
//!   `vcos up`, its own UDP port). Its liveness output is ignored and its per-node state is
//!   joined with the view by node id and renewal. It is not run in the simulator (chitchat
//!   0.13 draws from the thread RNG), so nothing it carries may be needed for correctness:
//!   load is a hint for placement, never an input to membership.
//! - **Sans IO.** [`membership::MembershipCore`] takes `now_ms`, datagrams and timers and
//!   returns actions; it reads no clock, spawns nothing, and draws randomness only from foca's
//!   RNG seeded from its config. The driver is the only async code.

pub mod members;
pub mod node;
pub mod placement;
pub mod region;
#[allow(missing_docs)] // rkyv's generated archived types carry no docs
pub mod remote;
pub mod membership;
pub mod driver;
pub mod dynamic;
pub mod transport;

pub use driver::{spawn, MembershipHandle, EVENTS_LEN_MAX};
pub use transport::DatagramSocket;

pub use members::{Member, MemberSource, MemberState};
pub use region::{region_tag, Home, UNTAGGED_REGION};
pub use node::{Cluster, ClusterConfig, ClusterModels, ClusterRouter, LeaseTable, Placement, INFERENCE_ROLE};

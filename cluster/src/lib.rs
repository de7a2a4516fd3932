//! Cluster membership for v-COS nodes.
//!
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

pub mod membership;
pub mod driver;
pub mod transport;

pub use driver::{spawn, MembershipHandle, EVENTS_LEN_MAX};
pub use transport::DatagramSocket;

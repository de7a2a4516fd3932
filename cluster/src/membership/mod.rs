//! Membership: who is in the cluster, who is alive, as a sans-IO core over foca (SWIM with
//! suspicion, piggybacked and periodic gossip).
//!
//! - [`MembershipCore`]: `handle_datagram(now, from, bytes)`, `handle_timer(now, timer)`,
//!   `join(now)`, `leave(now)`; drain [`Action`]s with `poll_action()`. Read [`View`].
//! - [`NodeIdentity`]: node id + renewal + gossip address + [`NodeMeta`] (region, roles,
//!   HTTP and canon addresses). foca's `Identity::addr` is the node id.
//! - [`MembershipConfig`]: the LAN preset scaled to the cluster size, validated.
//! - [`frame`]: the 12-byte header (magic, version, kind, cluster id) every datagram carries.
//!
//! foca's known traps, and how they are closed here:
//! - **A member that lost every peer stays alone** (foca #15): foca has no seeds. The core
//!   re-sends join requests to its seeds every `rejoin_period_ms` while it has no live member.
//! - **Renewed identities pile up** (#31/#32): the identity's foca address is the node id, so
//!   foca keeps one entry per node; a renewed identity replaces the old one, and the view (one
//!   entry per node id) reports [`MemberEvent::Renewed`].
//! - **A quick restart goes unseen** (#34): a restarted process starts with a higher renewal
//!   (its start time in unix ms), so its first datagram wins the address conflict and the
//!   others see `Renewed`, even if they never noticed it was down.
//! - **Seeds known only by address**: foca accepts an announce only when addressed to the
//!   receiver's identity, which a joiner does not know. The joiner sends a `Join` frame with
//!   its own identity; the seed announces *to the joiner*, and the joiner's reply (foca's feed)
//!   carries both views.
//!
//! Duplicate node ids: when a datagram's sender has our node id but another gossip address,
//! both processes report [`MemberEvent::DuplicateId`] (and `cluster_duplicate_node_id_total`).
//! The identity with the higher renewal wins (ties: the higher gossip address); the loser goes
//! quiet: it stops sending and ignores input, and the winner's gossip declares it down. With
//! renewals taken from start times, the newer process keeps the id.
//!
//! Leaving: [`MembershipCore::leave`] sends a `Leaving` frame to every live member (they mark
//! the node [`MemberState::Left`] at once) and foca's own down-gossip, then goes quiet.

mod config;
mod core;
pub mod frame;
mod identity;
mod timers;
mod view;

pub use self::config::{ConfigError, MembershipConfig, CLUSTER_SIZE_MAX, SEEDS_MAX};
pub use self::core::{Action, MembershipCore, Timer};
pub use self::identity::{NodeIdentity, NodeMeta, Roles, REGION_LEN_MAX};
pub use self::timers::{TimerQueue, TIMERS_PENDING_MAX};
pub use self::view::{MemberEvent, MemberInfo, MemberState, View};

#[cfg(test)]
mod tests;

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
//! - **A suspicion that never ends**: in simulation a member stayed suspect in one view for
//!   30 s (neither refuted nor declared down). Every `rejoin_period_ms` the core declares down
//!   any member suspect for more than twice `suspect_to_down_ms`; that member then renews and
//!   rejoins.
//! - **Seeds known only by address**: foca accepts an announce only when addressed to the
//!   receiver's identity, which a joiner does not know. The joiner sends a `Join` frame with
//!   its own identity; the seed announces *to the joiner*, and the joiner's reply (foca's feed)
//!   carries both views.
//!
//! Duplicate node ids (two live processes, one node id, different gossip addresses): the
//! identity with the higher renewal wins (ties: the higher gossip address), so with renewals
//! taken from start times the newer process keeps the id. A process finds out three ways: a
//! datagram from the other claimant, gossip naming the other claimant, or a `Conflict` frame
//! from a member whose view already holds the winner and hears from the loser. Each
//! claimant that learns of the other reports [`MemberEvent::DuplicateId`] once (and
//! `cluster_duplicate_node_id_total`); the loser goes quiet (stops sending, ignores input,
//! shows itself as left) and the winner's identity replaces it in every view.
//!
//! Leaving: [`MembershipCore::leave`] sends a `Leaving` frame to every live member (they mark
//! the node [`MemberState::Left`] at once) and foca's own down-gossip, then goes quiet.

mod config;
mod core;
pub mod frame;
mod identity;
mod timers;
mod view;

pub use self::config::{ConfigError, MembershipConfig, CLUSTER_SIZE_MAX, SEEDS_MAX, TRANSMISSIONS_MIN};
pub use self::core::{Action, MembershipCore, Timer};
pub use self::identity::{NodeIdentity, NodeMeta, Roles, REGION_LEN_MAX};
pub use self::timers::{TimerQueue, TIMERS_PENDING_MAX};
pub use self::view::{MemberEvent, MemberInfo, MemberState, View};

#[cfg(test)]
mod tests;

//! Swarms: IMVUs working together on a stream of work items.
//!
//! A coordinator (one task per swarm, deciding through the pure [`core::SwarmCore`]) holds the
//! queue; members **pull**: each member runs `max_in_flight_per_member` pullers, each asking the
//! coordinator for its next item, so a member never holds more than that. An item is a message
//! for the member's kind; the reply is its result. When a member's handler crashes on an item,
//! the item goes back to the queue for another member (dead-lettered after `max_attempts`) and
//! the swarm's own supervisor (strategy and intensity from the spec) decides about the member's
//! siblings; past its intensity the swarm fails, and a parent swarm hands its items elsewhere.
//!
//! Exactly-once credit: a completion is committed (item done + credit record, one atomic canon
//! commit) only if the item is still in flight with that member, and the coordinator is the
//! only writer; after a crash, items without a credit are handed out again. Processing is thus
//! at-least-once, credit exactly once.
//!
//! Swarms nest: a member can be a swarm; its items are submitted to the sub-swarm and credited
//! to it when the sub-swarm completes them (and inside it, to the IMVU that did the work).

mod coordinator;
pub mod core;
mod records;

pub use self::core::{ItemStatus, MemberRef, Progress};
pub(crate) use coordinator::{call, coordinator, create, exists, info, recover, stop_all, stop_tenant, Registry, SwarmCmd};
pub(crate) use records::{credit_prefix, mem_key};
pub use records::{CreditRecord, SwarmInfo, SwarmSpec, SwarmStatus, SwarmStrategy, VoteRecord};

/// What a swarm's coordinator is asked, wherever it runs (a node that does not coordinate the
/// swarm sends it to the one that does, as it does messages for IMVUs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum SwarmCall {
    /// Spec, members, status and progress ([`SwarmInfo`]).
    Info,
    /// Queue work items; answers their ids.
    Submit {
        /// The items (messages for the member kind).
        items: Vec<serde_json::Value>,
    },
    /// Open a vote; answers the [`VoteRecord`].
    OpenVote {
        /// What is voted on.
        proposal: String,
        /// The choices.
        options: Vec<String>,
        /// Ballots needed for a decision (default: a majority of the members).
        quorum: Option<u32>,
    },
    /// Cast a member's ballot; answers the [`VoteRecord`].
    CastVote {
        /// The vote's id.
        vote: u64,
        /// The member voting.
        member: MemberRef,
        /// Its choice.
        choice: String,
    },
}

/// Validates a shared-memory key.
pub(crate) fn check_mem_key(name: &str) -> Result<(), crate::error::ActorError> {
    if name.is_empty() || name.len() > records::SWARM_MEM_KEY_LEN_MAX || name.contains('/') {
        return Err(crate::error::ActorError::BadRequest {
            field: "key".into(),
            reason: format!(
                "memory keys are 1..={} bytes without '/'",
                records::SWARM_MEM_KEY_LEN_MAX
            ),
        });
    }
    Ok(())
}

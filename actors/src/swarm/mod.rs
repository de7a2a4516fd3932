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
pub(crate) use coordinator::{call, create, info, recover, stop_all, Registry, SwarmCmd};
pub(crate) use records::{credit_prefix, mem_key};
pub use records::{CreditRecord, SwarmInfo, SwarmSpec, SwarmStatus, SwarmStrategy, VoteRecord};

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

//! Swarm records in canon and the types callers see.
//!
//! ```text
//! t/{tenant}/swarm/{id:020}/spec                SwarmRecord
//! t/{tenant}/swarm/{id:020}/item/{item:020}     ItemRecord
//! t/{tenant}/swarm/{id:020}/credit/{item:020}   CreditRecord (written once, with the item's done)
//! t/{tenant}/swarm/{id:020}/mem/{key}           shared memory value
//! t/{tenant}/swarm/{id:020}/vote/{vote:020}     VoteRecord
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::core::{ItemStatus, MemberRef, Progress};
use crate::ids::SwarmKey;

/// Members a swarm may have.
pub(crate) const SWARM_MEMBERS_MAX: u32 = 256;
/// In-flight items per member, at most.
pub(crate) const IN_FLIGHT_PER_MEMBER_MAX: u32 = 64;
/// Items waiting or in flight per swarm; submissions beyond it are refused (429).
pub(crate) const SWARM_OPEN_ITEMS_MAX: usize = 100_000;
/// Longest shared-memory key.
pub(crate) const SWARM_MEM_KEY_LEN_MAX: usize = 256;

/// Supervision strategy of a swarm over its members (OTP names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwarmStrategy {
    /// Only the crashed member restarts.
    #[default]
    OneForOne,
    /// Every member restarts (reloads from canon).
    OneForAll,
    /// The crashed member and those after it restart.
    RestForOne,
}

/// What a swarm is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmSpec {
    /// Kind of the member IMVUs to create.
    pub member_kind: Option<String>,
    /// How many member IMVUs to create.
    pub members: u32,
    /// Existing swarms of the tenant that join as members (nesting).
    pub member_swarms: Vec<u64>,
    /// Items a member holds at once.
    pub max_in_flight_per_member: u32,
    /// Attempts per item before it is dead-lettered.
    pub max_attempts: u32,
    /// How member crashes affect siblings.
    pub strategy: SwarmStrategy,
    /// Restart intensity of the swarm's supervisor: at most this many member crashes…
    pub max_restarts: u32,
    /// …within this many milliseconds, else the swarm fails.
    pub restart_period_ms: u64,
}

impl Default for SwarmSpec {
    fn default() -> Self {
        Self {
            member_kind: None,
            members: 0,
            member_swarms: Vec::new(),
            max_in_flight_per_member: 1,
            max_attempts: 3,
            strategy: SwarmStrategy::OneForOne,
            max_restarts: 10,
            restart_period_ms: 10_000,
        }
    }
}

/// Running or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SwarmStatus {
    /// Handing out work.
    Running,
    /// Its supervisor gave up.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The durable description of a swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SwarmRecord {
    pub spec: SwarmSpec,
    pub members: Vec<MemberRef>,
    pub status: SwarmStatus,
    pub created_unix_ms: u64,
}

/// What callers see of a swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// `tenant/swarm-id`.
    pub key: SwarmKey,
    /// Spec it was created with.
    pub spec: SwarmSpec,
    /// Members in start order.
    pub members: Vec<MemberRef>,
    /// Running or failed.
    pub status: SwarmStatus,
    /// Work counts.
    pub progress: Progress,
}

/// A work item as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ItemRecord {
    pub payload: serde_json::Value,
    pub status: ItemStatus,
    pub attempts: u32,
}

/// Who did an item: written once, in the same commit that marks the item done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRecord {
    /// The item.
    pub item: u64,
    /// Who completed it.
    pub member: MemberRef,
    /// Its result (the member's reply).
    pub result: serde_json::Value,
    /// Attempts it took.
    pub attempts: u32,
    /// When (injected clock, Unix ms).
    pub unix_ms: u64,
}

/// A quorum decision among members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    /// Vote id.
    pub id: u64,
    /// What is decided.
    pub proposal: String,
    /// Allowed choices.
    pub options: Vec<String>,
    /// Ballots needed for one option to win.
    pub quorum: u32,
    /// One ballot per member.
    pub ballots: BTreeMap<String, String>,
    /// The winning option once it reached quorum.
    pub decision: Option<String>,
}

pub(crate) fn swarm_prefix(key: &SwarmKey) -> String {
    format!("t/{}/swarm/{:020}/", key.tenant, key.id.0)
}

pub(crate) fn spec_key(key: &SwarmKey) -> String {
    format!("{}spec", swarm_prefix(key))
}

pub(crate) fn item_key(key: &SwarmKey, item: u64) -> String {
    format!("{}item/{item:020}", swarm_prefix(key))
}

pub(crate) fn credit_prefix(key: &SwarmKey) -> String {
    format!("{}credit/", swarm_prefix(key))
}

pub(crate) fn credit_key(key: &SwarmKey, item: u64) -> String {
    format!("{}{item:020}", credit_prefix(key))
}

pub(crate) fn mem_key(key: &SwarmKey, name: &str) -> String {
    format!("{}mem/{name}", swarm_prefix(key))
}

pub(crate) fn vote_key(key: &SwarmKey, vote: u64) -> String {
    format!("{}vote/{vote:020}", swarm_prefix(key))
}

//! What the actor layer writes to canon, and where (the key layout).
//!
//! Keys are tenant-first, so a tenant's records are one prefix and an IMVU looked up under the
//! wrong tenant simply does not exist:
//!
//! ```text
//! tenant/{tenant}                                   TenantPolicy
//! tenant-fence/{tenant}                             16 random bytes (erasure fence)
//! erasure/{tenant}                                  ErasureRecord of an erasure under way
//! t/{tenant}/imvu/{id:020}/meta                     ImvuMeta
//! t/{tenant}/imvu/{id:020}/snap                     state snapshot (JSON)
//! t/{tenant}/imvu/{id:020}/ev/{canon index:020}     TransitionRecord / SupervisionRecord
//! t/{tenant}/refused/{canon index:020}              TransitionRecord of a refused create
//! t/{tenant}/swarm/{id:020}/…                       swarm records (see swarm.rs)
//! node/next_id                                      id allocator high-water mark
//! ```

use serde::{Deserialize, Serialize};

use crate::handshake::HandshakeOutcome;
use crate::ids::{ImvuId, ImvuKey, TenantId};
use crate::lifecycle::{LifecycleState, Transition};
use crate::store::StoreError;

/// Durable description of an IMVU (everything but its state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImvuMeta {
    /// Kind name.
    pub kind: String,
    /// Current lifecycle state.
    pub lifecycle: LifecycleState,
    /// Creation time (Unix ms, injected clock).
    pub created_unix_ms: u64,
}

/// One entry of an IMVU's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A lifecycle transition, admitted or refused.
    Transition(TransitionRecord),
    /// A crash and what the supervisor decided.
    Supervision(SupervisionRecord),
}

/// A lifecycle transition as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// What was asked.
    pub transition: Transition,
    /// State before (`None` for create).
    pub from: Option<LifecycleState>,
    /// State after; equal to `from` when refused.
    pub to: Option<LifecycleState>,
    /// The handshake's verdict.
    pub handshake: HandshakeOutcome,
    /// Who asked.
    pub caller: String,
    /// Wall clock of the node (injected), Unix ms.
    pub unix_ms: u64,
    /// The author's final state, on Terminated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_state: Option<serde_json::Value>,
}

/// A crash of the IMVU and the supervisor's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisionRecord {
    /// The panic message.
    pub reason: String,
    /// "restarted", "stopped" (temporary), "escalated".
    pub decision: String,
    /// Restarts the tenant's supervisor counted in its window at this crash (this one included).
    #[serde(default)]
    pub restarts_in_window: u32,
    /// Wall clock, Unix ms.
    pub unix_ms: u64,
}

/// A history entry with its canon timestamp (its index in canon's total order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// Position in canon's total order.
    pub canon_index: u64,
    /// The record.
    #[serde(flatten)]
    pub record: T,
}

/// Prefix of everything about one IMVU.
pub fn imvu_prefix(key: &ImvuKey) -> String {
    format!("t/{}/imvu/{:020}/", key.tenant, key.id.0)
}

/// Key of an IMVU's meta record.
pub fn meta_key(key: &ImvuKey) -> String {
    format!("{}meta", imvu_prefix(key))
}

/// Key of an IMVU's state snapshot.
pub fn snap_key(key: &ImvuKey) -> String {
    format!("{}snap", imvu_prefix(key))
}

/// Prefix of an IMVU's history.
pub fn history_prefix(key: &ImvuKey) -> String {
    format!("{}ev/", imvu_prefix(key))
}

/// Prefix of refused creations of a tenant.
pub fn refused_prefix(tenant: &TenantId) -> String {
    format!("t/{tenant}/refused/")
}

/// Prefix of all IMVUs of a tenant.
pub fn tenant_imvus_prefix(tenant: &TenantId) -> String {
    format!("t/{tenant}/imvu/")
}

/// Prefix of a tenant's index `name` (see `Context::index`): one key per IMVU in it.
pub fn index_prefix(tenant: &TenantId, name: &str) -> String {
    format!("t/{tenant}/index/{name}/")
}

/// Key of IMVU `key` in its tenant's index `name`.
pub fn index_key(key: &ImvuKey, name: &str) -> String {
    format!("{}{:020}", index_prefix(&key.tenant, name), key.id.0)
}

/// Key of a tenant's policy.
pub fn tenant_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}")
}

/// The tenant's fence: random bytes drawn when the tenant is created, deleted when it is
/// erased (see [`crate::TenantEntry::fence`]).
pub fn tenant_fence_key(tenant: &TenantId) -> String {
    format!("tenant-fence/{tenant}")
}

/// Parses `t/{tenant}/imvu/{id}/meta` back into its key.
pub fn parse_meta_key(key: &str) -> Option<ImvuKey> {
    let rest = key.strip_prefix("t/")?;
    let (tenant, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("imvu/")?;
    let id = rest.strip_suffix("/meta")?;
    Some(ImvuKey {
        tenant: TenantId::new(tenant).ok()?,
        id: ImvuId(id.parse().ok()?),
    })
}

/// JSON-encodes a record for canon. Records are plain data: failure is a bug.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("canon records are plain data and always serialise")
}

/// JSON-encodes an author's state. Authors' `Serialize` impls may fail (a map with non-string
/// keys, a custom impl): that is the author's error, reported, never a panic of the host.
pub fn encode_state<T: Serialize>(state: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(state).map_err(|e| format!("state does not serialise: {e}"))
}

/// Decodes a record read from canon; a bad record is reported with its key.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

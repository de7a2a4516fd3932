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
    imvu_key_with(key, "")
}

/// Key of an IMVU's meta record.
pub fn meta_key(key: &ImvuKey) -> String {
    imvu_key_with(key, "meta")
}

/// Key of an IMVU's state snapshot.
pub fn snap_key(key: &ImvuKey) -> String {
    imvu_key_with(key, "snap")
}

/// Prefix of an IMVU's history.
pub fn history_prefix(key: &ImvuKey) -> String {
    imvu_key_with(key, "ev/")
}

/// `t/{tenant}/imvu/{id:020}/{suffix}`, built in one allocation of its exact length: a
/// creation builds four such keys, and `format!` spent a tenth of an in-memory spawn on them
/// (two allocations each, a growth, and the padded integer through `fmt`).
fn imvu_key_with(key: &ImvuKey, suffix: &str) -> String {
    const T: &str = "t/";
    const IMVU: &str = "/imvu/";
    let tenant = key.tenant.as_str();
    let mut out = String::with_capacity(T.len() + tenant.len() + IMVU.len() + PADDED_U64_LEN + 1 + suffix.len());
    out.push_str(T);
    out.push_str(tenant);
    out.push_str(IMVU);
    push_padded_u64(&mut out, key.id.0);
    out.push('/');
    out.push_str(suffix);
    out
}

/// Digits of `u64::MAX`: every id and canon index in a key is zero-padded to this width, so
/// keys sort in numeric order.
pub const PADDED_U64_LEN: usize = 20;

/// Appends `n` in decimal, zero-padded to [`PADDED_U64_LEN`] digits (what `{n:020}` writes).
pub fn push_padded_u64(out: &mut String, mut n: u64) {
    let mut digits = [b'0'; PADDED_U64_LEN];
    for digit in digits.iter_mut().rev() {
        // `n % 10` is below 10: the cast cannot truncate.
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
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
    to_exact_vec(value).expect("canon records are plain data and always serialise")
}

/// JSON-encodes an author's state. Authors' `Serialize` impls may fail (a map with non-string
/// keys, a custom impl): that is the author's error, reported, never a panic of the host.
pub fn encode_state<T: Serialize>(state: &T) -> Result<Vec<u8>, String> {
    to_exact_vec(state).map_err(|e| format!("state does not serialise: {e}"))
}

thread_local! {
    /// Where [`to_exact_vec`] serialises before copying out.
    static ENCODE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch buffers above this are not kept for the next record.
const ENCODE_SCRATCH_KEPT_MAX: usize = 64 * 1024;

/// `serde_json::to_vec`, but the result's capacity is its length. `to_vec` starts at 128 bytes
/// and doubles: a 134-byte transition record held 256, a 1-byte snapshot 128, and the memory
/// store (and every in-flight commit) kept the slack. Serialising into a per-thread scratch
/// buffer and copying out costs one exact allocation and a short copy instead of a growth.
fn to_exact_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    ENCODE_SCRATCH.with(|scratch| {
        // A `Serialize` impl that encodes a record itself finds the scratch taken: it gets a
        // plain `to_vec`.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return serde_json::to_vec(value);
        };
        buf.clear();
        let encoded = serde_json::to_writer(&mut *buf, value).map(|()| buf.as_slice().to_vec());
        if buf.capacity() > ENCODE_SCRATCH_KEPT_MAX {
            *buf = Vec::new();
        }
        encoded
    })
}

/// Decodes a record read from canon; a bad record is reported with its key.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn padded_ids_match_format() {
        for n in [0, 1, 9, 10, 4_097, 12_345_678_901, u64::MAX / 3, u64::MAX - 1, u64::MAX] {
            let mut out = String::from("x");
            push_padded_u64(&mut out, n);
            assert_eq!(out, format!("x{n:020}"));
        }
    }

    #[test]
    fn imvu_keys_keep_their_layout() {
        let key = ImvuKey { tenant: TenantId::new("acme").expect("tenant"), id: ImvuId(42) };
        assert_eq!(meta_key(&key), "t/acme/imvu/00000000000000000042/meta");
        assert_eq!(snap_key(&key), "t/acme/imvu/00000000000000000042/snap");
        assert_eq!(history_prefix(&key), "t/acme/imvu/00000000000000000042/ev/");
        assert_eq!(imvu_prefix(&key), "t/acme/imvu/00000000000000000042/");
        assert_eq!(parse_meta_key(&meta_key(&key)), Some(key));
        let encoded = meta_key(&key);
        assert_eq!(encoded.capacity(), encoded.len(), "built in one exact allocation");
    }

    #[test]
    fn encoded_records_hold_no_spare_capacity() {
        let meta = ImvuMeta { kind: "counter".into(), lifecycle: LifecycleState::Active, created_unix_ms: 7 };
        let bytes = encode(&meta);
        assert_eq!(bytes, serde_json::to_vec(&meta).expect("json"));
        assert_eq!(bytes.capacity(), bytes.len());
    }
}

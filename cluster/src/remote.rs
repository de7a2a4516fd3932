//! Remote IMVU messages: what one node asks another on behalf of a caller.
//!
//! They travel as [`vcos_canon_raft::wire::Rpc::App`] payloads on the canon's connections (one
//! network stack: the same framing, cluster check, bounds and deadlines as Raft). The envelope
//! is rkyv, validated on receipt (a corrupt payload is answered with an error, never a panic);
//! messages, replies and errors inside it are JSON, as the HTTP facade takes them.
//!
//! Delivery: an ask is answered exactly once or fails with a retryable error when its deadline
//! passes; a tell is delivered at most once (it is not retried after a timeout, since it may
//! have been applied). Messages between IMVUs travel in [`RemoteFrame::Batch`]es, one batch in
//! flight per pair of nodes, so that they arrive in the order they were sent.

use serde::{Deserialize, Serialize};
use vcos_actors::{ActorError, Caller, ImvuKey, TenantId, Transition};

/// Largest remote payload accepted (a message body is limited far below it by the facade).
pub const REMOTE_PAYLOAD_LEN_MAX: usize = 8 * 1024 * 1024;
/// How many times a request may be forwarded on before it is refused (a view in flux may
/// bounce a request between two nodes; this bounds it).
pub const HOPS_MAX: u8 = 3;

/// What is asked of the owner of an IMVU.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Op {
    /// Create the IMVU (its id was allocated by the sender) of this kind.
    Create {
        /// The kind.
        kind: String,
    },
    /// Deliver a message and answer with the reply (JSON).
    Ask {
        /// The message (JSON).
        message: Vec<u8>,
    },
    /// Deliver a message; answer as soon as it is queued.
    Tell {
        /// The message (JSON).
        message: Vec<u8>,
    },
    /// A lifecycle transition (`pause`, `resume`, `terminate`).
    Transition {
        /// The transition's name.
        transition: String,
    },
    /// The IMVU's state and lifecycle.
    Inspect,
    /// A call to the coordinator of the swarm with this id (JSON of
    /// [`vcos_actors::swarm::SwarmCall`]); swarms are placed like the IMVU with their id.
    Swarm {
        /// The call (JSON).
        call: Vec<u8>,
    },
}

/// A request for the owner of `tenant/id`.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RemoteRequest {
    /// The IMVU's tenant.
    pub tenant: String,
    /// The IMVU's id.
    pub id: u64,
    /// The caller (JSON of [`Caller`]).
    pub caller: Vec<u8>,
    /// How many nodes forwarded it so far.
    pub hops: u8,
    /// What to do.
    pub op: Op,
}

/// What one node sends another: a request for one IMVU (answered in the call's reply), or a
/// batch of messages between IMVUs (acknowledged as a whole; asks are answered later by
/// [`BatchItem::Answer`]s in a batch going the other way).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RemoteFrame {
    /// One request, answered in the reply.
    Request(RemoteRequest),
    /// Messages between IMVUs, to be delivered in this order.
    Batch(Vec<BatchItem>),
    /// Model work for the receiver's own pools (never forwarded on), answered with the JSON
    /// of a [`vcos_actors::models::ModelAnswer`].
    Model {
        /// The tenant it is done for (charged by the sender; here for the logs).
        tenant: String,
        /// JSON of a [`vcos_actors::models::ModelRequest`].
        request: Vec<u8>,
    },
    /// The names of the models the receiver serves, answered as a JSON array.
    ModelList,
}

/// One message between IMVUs in a [`RemoteFrame::Batch`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BatchItem {
    /// A tell (at most once).
    Tell {
        /// The target's tenant.
        tenant: String,
        /// The target's id.
        id: u64,
        /// The message (JSON).
        message: Vec<u8>,
        /// How many nodes passed it on so far.
        hops: u8,
    },
    /// An ask: its answer goes to node `reply_to` as an [`BatchItem::Answer`] under `ask`.
    Ask {
        /// The target's tenant.
        tenant: String,
        /// The target's id.
        id: u64,
        /// The message (JSON).
        message: Vec<u8>,
        /// How many nodes passed it on so far.
        hops: u8,
        /// The asking node.
        reply_to: u64,
        /// The ask's number on the asking node.
        ask: u64,
    },
    /// The answer to ask `ask` of the receiving node.
    Answer {
        /// The ask's number on the receiving node.
        ask: u64,
        /// The reply (JSON) if `ok`, else the error (JSON of [`WireError`]).
        ok: bool,
        /// Its bytes.
        body: Vec<u8>,
    },
}

impl RemoteFrame {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(self)
    }

    /// Validates and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadPayload> {
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned(bytes)?)
            .map_err(|e| BadPayload { len: bytes.len(), reason: e.to_string() })
    }
}

impl BatchItem {
    /// The item's size on the wire, roughly (to bound a batch's bytes).
    pub fn weight(&self) -> usize {
        match self {
            Self::Tell { tenant, message, .. } | Self::Ask { tenant, message, .. } => 48 + tenant.len() + message.len(),
            Self::Answer { body, .. } => 32 + body.len(),
        }
    }

    /// The answer item for `ask` carrying `result`.
    pub fn answer(ask: u64, result: &Result<serde_json::Value, ActorError>) -> Self {
        match result.as_ref().map(serde_json::to_vec) {
            Ok(Ok(body)) => Self::Answer { ask, ok: true, body },
            Ok(Err(e)) => Self::answer(ask, &Err(ActorError::Unavailable(format!("reply does not serialise: {e}")))),
            Err(e) => Self::Answer { ask, ok: false, body: serde_json::to_vec(&WireError::from(e)).unwrap_or_default() },
        }
    }

    /// An answer item's result.
    pub fn answer_result(ok: bool, body: &[u8]) -> Result<serde_json::Value, ActorError> {
        if ok {
            serde_json::from_slice(body).map_err(|e| ActorError::Unavailable(format!("unreadable remote answer: {e}")))
        } else {
            Err(decode_error(body))
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RemoteReply {
    /// Done; the result as JSON.
    Ok(Vec<u8>),
    /// Failed; the error as JSON of [`WireError`].
    Err(Vec<u8>),
    /// The receiver does not serve the IMVU; `hint` is the node it believes does.
    NotOwner {
        /// Where to try next.
        hint: Option<u64>,
    },
}

/// A remote payload that is not a valid request or reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad remote payload ({len} bytes): {reason}")]
pub struct BadPayload {
    /// Its length.
    pub len: usize,
    /// Why.
    pub reason: String,
}

fn to_bytes<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>>,
{
    match rkyv::to_bytes::<rkyv::rancor::Error>(value) {
        Ok(bytes) => bytes.into_vec(),
        // Owned, finite values into a growable buffer: only allocation can fail.
        Err(e) => panic!("encoding a remote message failed: {e}"),
    }
}

fn aligned(bytes: &[u8]) -> Result<rkyv::util::AlignedVec<16>, BadPayload> {
    if bytes.len() > REMOTE_PAYLOAD_LEN_MAX {
        return Err(BadPayload { len: bytes.len(), reason: format!("over {REMOTE_PAYLOAD_LEN_MAX} bytes") });
    }
    let mut out = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    Ok(out)
}

impl RemoteRequest {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(self)
    }

    /// Validates and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadPayload> {
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned(bytes)?)
            .map_err(|e| BadPayload { len: bytes.len(), reason: e.to_string() })
    }

    /// The IMVU it is for, validated.
    pub fn key(&self) -> Result<ImvuKey, ActorError> {
        Ok(ImvuKey { tenant: TenantId::new(&self.tenant)?, id: vcos_actors::ImvuId(self.id) })
    }

    /// The caller, validated.
    pub fn caller(&self) -> Result<Caller, ActorError> {
        serde_json::from_slice(&self.caller)
            .map_err(|e| ActorError::BadRequest { field: "caller".into(), reason: e.to_string() })
    }
}

impl RemoteReply {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_bytes(self)
    }

    /// Validates and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadPayload> {
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned(bytes)?)
            .map_err(|e| BadPayload { len: bytes.len(), reason: e.to_string() })
    }

    /// An error reply.
    pub fn error(error: &ActorError) -> Self {
        Self::Err(serde_json::to_vec(&WireError::from(error)).unwrap_or_default())
    }

    /// A JSON reply.
    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => Self::Ok(bytes),
            Err(e) => Self::error(&ActorError::Unavailable(format!("reply does not serialise: {e}"))),
        }
    }
}

/// [`ActorError`] as it crosses the network (the same variants; names of entities as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum WireError {
    BadRequest { field: String, reason: String },
    UnknownKind { kind: String },
    NotFound { what: String, key: String },
    IllegalTransition { transition: Transition, current: String },
    Terminated { key: String },
    Conflict { reason: String },
    QueueFull { reason: String },
    HandshakeRefused { stage: vcos_actors::handshake::Stage, transition: Transition, reason: String },
    Crashed { key: String, reason: String },
    TooLarge { reason: String },
    Store { reason: String },
    Unavailable { reason: String },
    QuotaExceeded { quota: String, reason: String, retry_after_s: Option<u64> },
    Failed { reason: String },
}

impl From<&ActorError> for WireError {
    fn from(e: &ActorError) -> Self {
        match e.clone() {
            ActorError::BadRequest { field, reason } => Self::BadRequest { field, reason },
            ActorError::UnknownKind(kind) => Self::UnknownKind { kind },
            ActorError::NotFound { what, key } => Self::NotFound { what: what.to_owned(), key },
            ActorError::IllegalTransition { transition, current } => Self::IllegalTransition { transition, current },
            ActorError::Terminated(key) => Self::Terminated { key },
            ActorError::Conflict(reason) => Self::Conflict { reason },
            ActorError::QueueFull(reason) => Self::QueueFull { reason },
            ActorError::HandshakeRefused { stage, transition, reason } => Self::HandshakeRefused { stage, transition, reason },
            ActorError::Crashed { key, reason } => Self::Crashed { key, reason },
            ActorError::TooLarge(reason) => Self::TooLarge { reason },
            ActorError::Store(reason) => Self::Store { reason },
            ActorError::Unavailable(reason) => Self::Unavailable { reason },
            ActorError::QuotaExceeded { quota, reason, retry_after_s } => Self::QuotaExceeded { quota, reason, retry_after_s },
            ActorError::Failed(reason) => Self::Failed { reason },
            // Answered as the recorded reply before any reply leaves its node.
            ActorError::AlreadyApplied(_) => Self::Conflict { reason: "already applied".into() },
        }
    }
}

/// The `what` of a remote not-found, as the static names the actor layer uses.
fn entity_name(what: &str) -> &'static str {
    match what {
        "imvu" => "imvu",
        "swarm" => "swarm",
        "tenant" => "tenant",
        "vote" => "vote",
        "kind" => "kind",
        "activity" => "activity",
        "workflow" => "workflow",
        "workflow definition" => "workflow definition",
        _ => "entity",
    }
}

impl From<WireError> for ActorError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::BadRequest { field, reason } => Self::BadRequest { field, reason },
            WireError::UnknownKind { kind } => Self::UnknownKind(kind),
            WireError::NotFound { what, key } => Self::NotFound { what: entity_name(&what), key },
            WireError::IllegalTransition { transition, current } => Self::IllegalTransition { transition, current },
            WireError::Terminated { key } => Self::Terminated(key),
            WireError::Conflict { reason } => Self::Conflict(reason),
            WireError::QueueFull { reason } => Self::QueueFull(reason),
            WireError::HandshakeRefused { stage, transition, reason } => Self::HandshakeRefused { stage, transition, reason },
            WireError::Crashed { key, reason } => Self::Crashed { key, reason },
            WireError::TooLarge { reason } => Self::TooLarge(reason),
            WireError::Store { reason } => Self::Store(reason),
            WireError::Unavailable { reason } => Self::Unavailable(reason),
            WireError::QuotaExceeded { quota, reason, retry_after_s } => Self::QuotaExceeded { quota, reason, retry_after_s },
            WireError::Failed { reason } => Self::Failed(reason),
        }
    }
}

/// Decodes an error reply's bytes.
pub fn decode_error(bytes: &[u8]) -> ActorError {
    match serde_json::from_slice::<WireError>(bytes) {
        Ok(e) => e.into(),
        Err(e) => ActorError::Unavailable(format!("unreadable remote error: {e}")),
    }
}

/// Parses a transition's name as the remote op carries it.
pub fn parse_transition(name: &str) -> Result<Transition, ActorError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| ActorError::BadRequest { field: "transition".into(), reason: format!("unknown transition {name:?}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let request = RemoteRequest {
            tenant: "acme".into(),
            id: 42,
            caller: serde_json::to_vec(&Caller::internal(&TenantId::new("acme").expect("valid"), "test")).expect("json"),
            hops: 1,
            op: Op::Ask { message: br#"{"op":"get"}"#.to_vec() },
        };
        assert_eq!(RemoteRequest::decode(&request.encode()), Ok(request.clone()));
        assert_eq!(request.key().expect("valid key").id.0, 42);
        let reply = RemoteReply::json(&serde_json::json!({"reply": 5}));
        assert_eq!(RemoteReply::decode(&reply.encode()), Ok(reply));
    }

    #[test]
    fn batches_round_trip_and_answers_keep_their_result() {
        let frame = RemoteFrame::Batch(vec![
            BatchItem::Tell { tenant: "acme".into(), id: 7, message: br#"{"op":"ping"}"#.to_vec(), hops: 1 },
            BatchItem::Ask { tenant: "acme".into(), id: 8, message: br#"{"op":"get"}"#.to_vec(), hops: 1, reply_to: 3, ask: 99 },
            BatchItem::answer(5, &Ok(serde_json::json!(12))),
            BatchItem::answer(6, &Err(ActorError::Terminated("acme/8".into()))),
        ]);
        let decoded = RemoteFrame::decode(&frame.encode()).expect("decodes");
        assert_eq!(decoded, frame);
        let RemoteFrame::Batch(items) = decoded else { panic!("a batch") };
        let results: Vec<_> = items[2..]
            .iter()
            .map(|item| match item {
                BatchItem::Answer { ok, body, .. } => BatchItem::answer_result(*ok, body),
                other => panic!("an answer, got {other:?}"),
            })
            .collect();
        assert_eq!(results, vec![Ok(serde_json::json!(12)), Err(ActorError::Terminated("acme/8".into()))]);
        let bytes = frame.encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            let _ = RemoteFrame::decode(&bad);
        }
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let bytes = RemoteRequest { tenant: "t".into(), id: 1, caller: vec![], hops: 0, op: Op::Inspect }.encode();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                let _ = RemoteRequest::decode(&bad);
            }
        }
        assert!(RemoteRequest::decode(&[]).is_err());
        assert!(RemoteReply::decode(&[1, 2, 3]).is_err());
        let bad_tenant = RemoteRequest { tenant: "NOT VALID".into(), id: 1, caller: vec![], hops: 0, op: Op::Inspect };
        assert!(bad_tenant.key().is_err());
        assert!(bad_tenant.caller().is_err());
    }

    #[test]
    fn errors_keep_their_variant_across_the_wire() {
        for error in [
            ActorError::NotFound { what: "imvu", key: "acme/3".into() },
            ActorError::Terminated("acme/3".into()),
            ActorError::Unavailable("owner failing over".into()),
            ActorError::IllegalTransition { transition: Transition::Pause, current: "paused".into() },
        ] {
            let RemoteReply::Err(bytes) = RemoteReply::error(&error) else { panic!("an error reply") };
            assert_eq!(decode_error(&bytes), error);
        }
        assert_eq!(parse_transition("pause").ok(), Some(Transition::Pause));
        assert!(parse_transition("explode").is_err());
    }
}

//! One error enum for the actor layer. Each variant has a stable machine `code` so that the
//! HTTP facade and embedders can branch on it without parsing messages.

use crate::handshake::Stage;
use crate::lifecycle::Transition;

/// What went wrong in the actor layer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ActorError {
    /// Input failed validation; `field` names the offending part.
    #[error("bad request: field `{field}`: {reason}")]
    BadRequest {
        /// The field (or path into the body) that was wrong.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No such IMVU kind is registered on this node.
    #[error("unknown IMVU kind {0:?}")]
    UnknownKind(String),
    /// No such entity for this tenant (also what another tenant's entity looks like).
    #[error("{what} {key} not found")]
    NotFound {
        /// "imvu", "swarm", "tenant", "vote".
        what: &'static str,
        /// The key asked for.
        key: String,
    },
    /// The lifecycle does not allow this transition from the current state.
    #[error("illegal transition `{transition}` while the IMVU is {current}")]
    IllegalTransition {
        /// What was asked.
        transition: Transition,
        /// The state it was asked in.
        current: String,
    },
    /// The entity is terminated: it takes no more messages.
    #[error("IMVU {0} is terminated and takes no messages")]
    Terminated(String),
    /// The request contradicts recorded state (a vote already decided, a name already taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A bounded queue (mailbox, paused queue, store queue) is full; retry later.
    #[error("queue full: {0}")]
    QueueFull(String),
    /// The 55-45-17 handshake refused the transition.
    #[error("handshake stage {stage} refused `{transition}`: {reason}")]
    HandshakeRefused {
        /// The stage that said no.
        stage: Stage,
        /// The transition that was refused.
        transition: Transition,
        /// Why.
        reason: String,
    },
    /// The IMVU's handler panicked on this message; its supervisor restarted it.
    #[error("IMVU {key} crashed handling the message: {reason}")]
    Crashed {
        /// Which IMVU.
        key: String,
        /// The panic message.
        reason: String,
    },
    /// A message or body exceeds a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The canon store failed; nothing was acknowledged.
    #[error("canon store: {0}")]
    Store(String),
    /// The node is shutting down or the host is restarting.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An idempotent ask ([`crate::once`]) that was already applied: its recorded reply (JSON
    /// text). Answered as that reply by the JSON paths; never reaches a client as an error.
    #[error("already applied")]
    AlreadyApplied(String),
    /// An activity, a workflow step or a workflow failed with an error of its own (not the
    /// runtime's).
    #[error("failed: {0}")]
    Failed(String),
    /// A tenant quota is used up (`messages_per_day`, `canon_bytes_stored`).
    #[error("quota {quota} exceeded: {reason}")]
    QuotaExceeded {
        /// Which quota.
        quota: String,
        /// What was used of how much.
        reason: String,
        /// When it frees up again (seconds), for a quota that renews.
        retry_after_s: Option<u64>,
    },
}

impl ActorError {
    /// Stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::UnknownKind(_) => "unknown_kind",
            Self::NotFound { .. } => "not_found",
            Self::IllegalTransition { .. } => "illegal_transition",
            Self::Terminated(_) => "terminated",
            Self::Conflict(_) => "conflict",
            Self::QueueFull(_) => "queue_full",
            Self::HandshakeRefused { .. } => "handshake_refused",
            Self::Crashed { .. } => "imvu_crashed",
            Self::TooLarge(_) => "too_large",
            Self::Store(_) => "store_error",
            Self::Unavailable(_) => "unavailable",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Failed(_) => "failed",
            Self::AlreadyApplied(_) => "already_applied",
        }
    }

    pub(crate) fn not_found(what: &'static str, key: impl ToString) -> Self {
        Self::NotFound {
            what,
            key: key.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for ActorError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Overloaded => {
                Self::QueueFull("canon store write queue is full".into())
            }
            // A guarded write found its guard changed: for an IMVU, its ownership moved.
            crate::store::StoreError::Conflict { key } => {
                Self::Unavailable(format!("not applied: {key} changed under the write (ownership moved); retry"))
            }
            crate::store::StoreError::Unavailable(reason) => Self::Unavailable(reason),
            other => Self::Store(other.to_string()),
        }
    }
}

//! The requests the state machine applies and the responses it returns.
//!
//! Every [`Request`] carries `client_id` and `seq`: a request whose `(client_id, seq)` was
//! already applied returns the stored response instead of applying again.

use serde::{Deserialize, Serialize};

/// One client request: an operation and its dedup identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client that sends it.
    pub client_id: u64,
    /// The client's sequence number, increasing per request (a retry reuses it).
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// An operation on the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (`None` removes it) if its value is `expected` (`None`: absent).
    CompareAndSet {
        /// The key.
        key: Vec<u8>,
        /// The value the key must have; `None`: the key must be absent.
        expected: Option<Vec<u8>>,
        /// The value to set; `None` removes the key.
        new: Option<Vec<u8>>,
    },
    /// Takes lease `name` for `holder` until `now_ms + ttl_ms`, if it is free, expired, or
    /// already `holder`'s (then it is renewed).
    AcquireLease {
        /// The lease.
        name: String,
        /// Who asks.
        holder: String,
        /// How long it lasts from `now_ms`.
        ttl_ms: u64,
        /// The requester's time (the state machine reads no clock).
        now_ms: u64,
    },
    /// Extends `holder`'s unexpired lease to `now_ms + ttl_ms`.
    RenewLease {
        /// The lease.
        name: String,
        /// Who asks.
        holder: String,
        /// How long it lasts from `now_ms`.
        ttl_ms: u64,
        /// The requester's time.
        now_ms: u64,
    },
    /// Frees the lease if `holder` holds it (expired or not).
    ReleaseLease {
        /// The lease.
        name: String,
        /// Who asks.
        holder: String,
    },
    /// Applies all operations or none: if any compare-and-set or lease operation in it fails,
    /// every effect of the batch is undone.
    Batch(Vec<Op>),
}

/// The state of a lease as responses report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The current holder; `None` when released (an expired lease keeps its last holder).
    pub holder: Option<String>,
    /// The fencing epoch: it increases with every new grant (the lease was free, released or
    /// expired); a renewal keeps it.
    pub epoch: u64,
    /// When the lease expires (`now_ms >= expires_at_ms` is expired).
    pub expires_at_ms: u64,
}

/// What applying a log entry returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry: nothing applied.
    Noop,
    /// The put was applied.
    Put,
    /// The delete was applied; `existed` says whether the key was there.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// The outcome of a compare-and-set.
    Cas {
        /// Whether the value matched and was replaced.
        success: bool,
        /// The key's value after the operation.
        current: Option<Vec<u8>>,
    },
    /// The outcome of a lease operation.
    Lease {
        /// Whether the operation was granted.
        granted: bool,
        /// The lease after the operation (`None`: no such lease was ever granted).
        lease: Option<LeaseInfo>,
    },
    /// The outcome of a batch.
    Batch {
        /// Whether the batch was applied (all its operations succeeded).
        committed: bool,
        /// The responses of its operations, up to and including the first failure.
        responses: Vec<Response>,
    },
    /// The batch broke a limit (`BATCH_OPS_MAX`, `BATCH_DEPTH_MAX`) and was not applied.
    BatchTooLarge,
    /// `seq` is below the client's last applied sequence number: not applied.
    StaleSequence {
        /// The client's last applied sequence number.
        last_seq: u64,
    },
}

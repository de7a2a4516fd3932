//! The requests the state machine applies and the responses it returns.
//!
//! Every [`Request`] carries `client_id` and `seq`: a request whose `(client_id, seq)` was
//! already applied returns the stored response instead of applying again.

use serde::{Deserialize, Serialize};

/// Where a canon node is reached and which region it serves: the openraft `Node` of the canon
/// layer, stored in every membership entry.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct NodeInfo {
    /// Address of the node's canon (Raft) TCP listener, `host:port`.
    pub raft_addr: String,
    /// Address of the node's HTTP facade, `host:port` (empty when it has none).
    pub http_addr: String,
    /// The node's home region.
    pub region: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (http {})", self.region, self.raft_addr, self.http_addr)
    }
}

/// One client request: an operation and its dedup identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Request {
    /// The client that sends it.
    pub client_id: u64,
    /// The client's sequence number, increasing per request (a retry reuses it).
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// An operation on the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
// `Batch` nests operations: the derive's bounds would recurse, so they are omitted on that
// field and the bounds its `Vec` needs are spelled out here.
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    __C::Error: rkyv::rancor::Source,
)))]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Stores `value` under `prefix` followed by the next canon index (20 digits, zero
    /// padded): the canon's total order, assigned by the state machine in log order.
    Append {
        /// The key prefix, normally ending in `/`.
        prefix: Vec<u8>,
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
    /// A guard: succeeds, with no effect, if `key` holds exactly `value` (`None`: absent);
    /// otherwise it fails, and with it the enclosing [`Op::Batch`] (nothing of which is then
    /// applied).
    Expect {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold; `None`: the key must be absent.
        value: Option<Vec<u8>>,
    },
    /// Applies all operations or none: if any compare-and-set, lease or expect operation in it
    /// fails, every effect of the batch is undone.
    Batch(#[rkyv(omit_bounds)] Vec<Op>),
    /// Applies each operation on its own, in order: an inner [`Op::Batch`] commits or rolls
    /// back by itself, and a failure never affects its neighbours. The response is
    /// [`Response::Batch`] with `committed: true` and one response per operation. The canon's
    /// group commits are groups of batches: one Raft entry, one outcome per commit.
    Group(#[rkyv(omit_bounds)] Vec<Op>),
}

/// The state of a lease as responses report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    __C::Error: rkyv::rancor::Source,
)))]
pub enum Response {
    /// A blank or membership entry: nothing applied.
    Noop,
    /// The put was applied.
    Put,
    /// The append was applied under canon index `index`.
    Appended {
        /// The record's canon index.
        index: u64,
    },
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
    /// The outcome of an expect (guard) operation.
    Expect {
        /// Whether the key held the expected value.
        matched: bool,
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
        #[rkyv(omit_bounds)]
        responses: Vec<Response>,
        /// The last canon index assigned when the batch finished (unchanged by a failed one).
        canon_index: u64,
    },
    /// The batch or group broke a limit (`BATCH_OPS_MAX`, `BATCH_DEPTH_MAX`) and was not
    /// applied.
    BatchTooLarge,
    /// `seq` is below the client's last applied sequence number: not applied.
    StaleSequence {
        /// The client's last applied sequence number.
        last_seq: u64,
    },
}

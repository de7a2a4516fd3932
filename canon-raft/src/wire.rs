//! The canon's node-to-node protocol: length-delimited rkyv frames over one TCP connection.
//!
//! A connection carries [`Frame`]s both ways; each is a 4-byte big-endian length followed by
//! the rkyv encoding of the frame, at most [`FRAME_LEN_MAX`] bytes. Requests carry an `id` the
//! reply repeats, so one connection holds many requests in flight (replies may come back in
//! any order). Every frame names the cluster it belongs to; a receiver checks that, the
//! target node and the group before acting (see `transport`).
//!
//! openraft's message types have no rkyv encoding, so this module mirrors them (`Wire*`) and
//! converts both ways. [`decode`] validates the bytes (rkyv's `bytecheck`) before anything is
//! read: a corrupt frame is an error, never a panic or undefined behaviour.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};

use crate::types::{NodeInfo, Request, Response};
use crate::TypeConfig;

/// The largest frame accepted (snapshots travel in one frame).
pub const FRAME_LEN_MAX: usize = 256 * 1024 * 1024;

/// One frame on a canon connection.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Frame {
    /// The cluster the sender belongs to; a receiver of another cluster refuses the frame.
    pub cluster: u64,
    /// Chosen by the requester; the reply carries the same id.
    pub id: u64,
    /// A request or a reply.
    pub body: Body,
}

/// A request or its reply.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Body {
    /// A request for group `group` on node `to`, from node `from`.
    Request {
        /// The Raft group (its region).
        group: String,
        /// The sender's node id.
        from: u64,
        /// The node the sender means to reach (a receiver with another id refuses).
        to: u64,
        /// What is asked.
        rpc: Rpc,
    },
    /// The reply to the request with the same frame id.
    Reply(Reply),
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Rpc {
    /// Raft: append entries (and heartbeats).
    Append(WireAppend),
    /// Raft: request a vote.
    Vote(WireVoteRequest),
    /// Raft: install a snapshot (whole, in one frame).
    Snapshot(WireSnapshot),
    /// Client: apply a request through the group's leader (a follower forwards it).
    ClientWrite(Request),
    /// Client: the leader's read index, confirmed with a quorum (for linearizable reads on
    /// followers).
    ReadIndex,
    /// Membership: add `node_id` as a learner, and promote it to voter when `voter`.
    AddMember {
        /// The node.
        node_id: u64,
        /// Where it is reached.
        info: NodeInfo,
        /// Whether it should end as a voter.
        voter: bool,
    },
    /// Membership: promote a learner to voter.
    Promote {
        /// The node.
        node_id: u64,
    },
    /// Membership: remove a node (voter or learner) from the group.
    Remove {
        /// The node.
        node_id: u64,
    },
    /// Membership: the group's leader tells a node it was removed (it may never see the entry
    /// that removed it, since the leader stops replicating to it); the node stops serving.
    Removed,
    /// An application message for the node's app handler (the cluster's remote IMVU messages:
    /// one network stack for the canon and the actors). The group names the sender's region.
    App(Vec<u8>),
}

/// The answer to an [`Rpc`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Reply {
    /// Answer to [`Rpc::Append`].
    Append(WireAppendResponse),
    /// Answer to [`Rpc::Vote`].
    Vote(WireVoteResponse),
    /// Answer to [`Rpc::Snapshot`]: the receiver's vote.
    Snapshot(WireVote),
    /// Answer to [`Rpc::ClientWrite`]: the response and the entry's log index.
    ClientWrite {
        /// What the state machine returned.
        response: Response,
        /// Where the request sits in the log.
        log_index: u64,
    },
    /// Answer to [`Rpc::ReadIndex`]: the index to wait for before reading.
    ReadIndex(u64),
    /// A membership change was committed.
    Done,
    /// Answer to [`Rpc::App`]: the app handler's bytes.
    App(Vec<u8>),
    /// The request was refused.
    Refused(Refusal),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Refusal {
    /// The receiver is not the group's leader; `leader` is the one it knows of.
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(u64, NodeInfo)>,
    },
    /// The frame named another node id than the receiver's.
    WrongNode {
        /// The receiver's id.
        actual: u64,
    },
    /// The membership change would leave the group without a quorum, or is otherwise refused.
    Membership(String),
    /// The receiver failed (storage failure, shutting down).
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLeader { leader: Some((id, info)) } => write!(f, "not the leader; the leader is node {id} ({info})"),
            Self::NotLeader { leader: None } => write!(f, "not the leader; no leader is known"),
            Self::WrongNode { actual } => write!(f, "frame addressed to another node (this is node {actual})"),
            Self::Membership(reason) => write!(f, "membership change refused: {reason}"),
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("corrupt canon frame ({len} bytes): {reason}")]
pub struct CorruptFrame {
    /// Its length.
    pub len: usize,
    /// What the validator said.
    pub reason: String,
}

/// Encodes a frame (without its length prefix).
pub fn encode(frame: &Frame) -> Vec<u8> {
    match with_scratch(|scratch| rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(frame, scratch)) {
        Ok(bytes) => bytes,
        // Serialising owned, finite values into a growable buffer only fails on allocation.
        Err(e) => panic!("encoding a canon frame failed: {e}"),
    }
}

/// The largest encoding buffer a thread keeps between encodings.
const SCRATCH_KEPT_MAX: usize = 16 << 20;

thread_local! {
    /// This thread's encoding buffer, kept between encodings.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `encode` into this thread's kept buffer and returns an exact-size copy of what it
/// wrote. Why: serialising into a fresh buffer doubles it from empty, and at the sizes of a
/// busy group commit (megabytes) each doubling copied everything so far into newly faulted
/// pages: under a workflow fan-out that was a third of the node's CPU, in the kernel.
fn with_scratch<E>(encode: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>) -> Result<Vec<u8>, E> {
    let mut scratch = SCRATCH.take();
    scratch.clear();
    let written = encode(scratch)?;
    let bytes = written.as_slice().to_vec();
    if written.capacity() <= SCRATCH_KEPT_MAX {
        SCRATCH.set(written);
    }
    Ok(bytes)
}

/// Validates and decodes a frame's bytes (without its length prefix).
pub fn decode(bytes: &[u8]) -> Result<Frame, CorruptFrame> {
    // rkyv reads archived values in place and needs them aligned; a socket buffer is not.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<Frame, rkyv::rancor::Error>(&aligned)
        .map_err(|e| CorruptFrame { len: bytes.len(), reason: e.to_string() })
}

/// Encodes a log entry as stored in the log (the same rkyv form as on the wire).
pub fn encode_entry(entry: Entry<TypeConfig>) -> Vec<u8> {
    let entry = WireEntry::from(entry);
    match with_scratch(|scratch| rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&entry, scratch)) {
        Ok(bytes) => bytes,
        Err(e) => panic!("encoding a log entry failed: {e}"),
    }
}

/// Validates and decodes a stored log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, CorruptFrame> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<WireEntry, rkyv::rancor::Error>(&aligned)
        .map(Entry::from)
        .map_err(|e| CorruptFrame { len: bytes.len(), reason: e.to_string() })
}

/// A log id on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireLogId {
    /// Term of the leader that proposed it.
    pub term: u64,
    /// That leader's node id.
    pub node: u64,
    /// The log index.
    pub index: u64,
}

/// A vote on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireVote {
    /// The term.
    pub term: u64,
    /// The candidate or leader.
    pub node: u64,
    /// Whether a quorum granted it.
    pub committed: bool,
}

/// A membership on the wire: joint configurations of voter ids, and every node's address.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireMembership {
    /// The voter sets (two during a joint change).
    pub configs: Vec<Vec<u64>>,
    /// Every node, voters and learners.
    pub nodes: Vec<(u64, NodeInfo)>,
}

/// A log entry's payload on the wire.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum WirePayload {
    /// A leader's first entry.
    Blank,
    /// A client request.
    Normal(Request),
    /// A membership change.
    Membership(WireMembership),
}

/// A log entry on the wire.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireEntry {
    /// Its log id.
    pub log_id: WireLogId,
    /// Its payload.
    pub payload: WirePayload,
}

/// `AppendEntriesRequest` on the wire.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireAppend {
    /// The leader's vote.
    pub vote: WireVote,
    /// The entry before `entries`.
    pub prev_log_id: Option<WireLogId>,
    /// The entries.
    pub entries: Vec<WireEntry>,
    /// The leader's commit index.
    pub leader_commit: Option<WireLogId>,
}

/// `AppendEntriesResponse` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum WireAppendResponse {
    /// All entries were accepted.
    Success,
    /// Entries up to the given id were accepted.
    PartialSuccess(Option<WireLogId>),
    /// `prev_log_id` did not match.
    Conflict,
    /// The receiver has seen a higher vote.
    HigherVote(WireVote),
}

/// `VoteRequest` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireVoteRequest {
    /// The candidate's vote.
    pub vote: WireVote,
    /// The candidate's last log id.
    pub last_log_id: Option<WireLogId>,
}

/// `VoteResponse` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireVoteResponse {
    /// The receiver's vote after handling the request.
    pub vote: WireVote,
    /// Whether it granted the vote.
    pub vote_granted: bool,
    /// The receiver's last log id.
    pub last_log_id: Option<WireLogId>,
}

/// `InstallSnapshotRequest` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireSnapshot {
    /// The leader's vote.
    pub vote: WireVote,
    /// The snapshot's last included log id.
    pub last_log_id: Option<WireLogId>,
    /// Where the snapshot's membership was set.
    pub membership_log_id: Option<WireLogId>,
    /// The snapshot's membership.
    pub membership: WireMembership,
    /// The snapshot's id.
    pub snapshot_id: String,
    /// Offset of `data` in the snapshot.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Whether this is the last chunk.
    pub done: bool,
}

// Conversions. Each pair round-trips exactly (tested below).

impl From<LogId<u64>> for WireLogId {
    fn from(id: LogId<u64>) -> Self {
        Self { term: id.leader_id.term, node: id.leader_id.node_id, index: id.index }
    }
}

impl From<WireLogId> for LogId<u64> {
    fn from(id: WireLogId) -> Self {
        LogId::new(CommittedLeaderId::new(id.term, id.node), id.index)
    }
}

fn log_id_out(id: Option<LogId<u64>>) -> Option<WireLogId> {
    id.map(WireLogId::from)
}

fn log_id_in(id: Option<WireLogId>) -> Option<LogId<u64>> {
    id.map(LogId::from)
}

impl From<Vote<u64>> for WireVote {
    fn from(vote: Vote<u64>) -> Self {
        Self { term: vote.leader_id.term, node: vote.leader_id.node_id, committed: vote.committed }
    }
}

impl From<WireVote> for Vote<u64> {
    fn from(vote: WireVote) -> Self {
        if vote.committed {
            Vote::new_committed(vote.term, vote.node)
        } else {
            Vote::new(vote.term, vote.node)
        }
    }
}

impl From<&Membership<u64, NodeInfo>> for WireMembership {
    fn from(membership: &Membership<u64, NodeInfo>) -> Self {
        Self {
            configs: membership.get_joint_config().iter().map(|set| set.iter().copied().collect()).collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.clone())).collect(),
        }
    }
}

impl From<WireMembership> for Membership<u64, NodeInfo> {
    fn from(membership: WireMembership) -> Self {
        let configs: Vec<BTreeSet<u64>> =
            membership.configs.into_iter().map(|set| set.into_iter().collect()).collect();
        let nodes: BTreeMap<u64, NodeInfo> = membership.nodes.into_iter().collect();
        Membership::new(configs, nodes)
    }
}

impl From<Entry<TypeConfig>> for WireEntry {
    fn from(entry: Entry<TypeConfig>) -> Self {
        let payload = match entry.payload {
            EntryPayload::Blank => WirePayload::Blank,
            EntryPayload::Normal(request) => WirePayload::Normal(request),
            EntryPayload::Membership(membership) => WirePayload::Membership(WireMembership::from(&membership)),
        };
        Self { log_id: entry.log_id.into(), payload }
    }
}

impl From<WireEntry> for Entry<TypeConfig> {
    fn from(entry: WireEntry) -> Self {
        let payload = match entry.payload {
            WirePayload::Blank => EntryPayload::Blank,
            WirePayload::Normal(request) => EntryPayload::Normal(request),
            WirePayload::Membership(membership) => EntryPayload::Membership(membership.into()),
        };
        Entry { log_id: entry.log_id.into(), payload }
    }
}

impl From<AppendEntriesRequest<TypeConfig>> for WireAppend {
    fn from(rpc: AppendEntriesRequest<TypeConfig>) -> Self {
        Self {
            vote: rpc.vote.into(),
            prev_log_id: log_id_out(rpc.prev_log_id),
            entries: rpc.entries.into_iter().map(WireEntry::from).collect(),
            leader_commit: log_id_out(rpc.leader_commit),
        }
    }
}

impl From<WireAppend> for AppendEntriesRequest<TypeConfig> {
    fn from(rpc: WireAppend) -> Self {
        Self {
            vote: rpc.vote.into(),
            prev_log_id: log_id_in(rpc.prev_log_id),
            entries: rpc.entries.into_iter().map(Entry::from).collect(),
            leader_commit: log_id_in(rpc.leader_commit),
        }
    }
}

impl From<AppendEntriesResponse<u64>> for WireAppendResponse {
    fn from(response: AppendEntriesResponse<u64>) -> Self {
        match response {
            AppendEntriesResponse::Success => Self::Success,
            AppendEntriesResponse::PartialSuccess(id) => Self::PartialSuccess(log_id_out(id)),
            AppendEntriesResponse::Conflict => Self::Conflict,
            AppendEntriesResponse::HigherVote(vote) => Self::HigherVote(vote.into()),
        }
    }
}

impl From<WireAppendResponse> for AppendEntriesResponse<u64> {
    fn from(response: WireAppendResponse) -> Self {
        match response {
            WireAppendResponse::Success => Self::Success,
            WireAppendResponse::PartialSuccess(id) => Self::PartialSuccess(log_id_in(id)),
            WireAppendResponse::Conflict => Self::Conflict,
            WireAppendResponse::HigherVote(vote) => Self::HigherVote(vote.into()),
        }
    }
}

impl From<VoteRequest<u64>> for WireVoteRequest {
    fn from(rpc: VoteRequest<u64>) -> Self {
        Self { vote: rpc.vote.into(), last_log_id: log_id_out(rpc.last_log_id) }
    }
}

impl From<WireVoteRequest> for VoteRequest<u64> {
    fn from(rpc: WireVoteRequest) -> Self {
        VoteRequest::new(rpc.vote.into(), log_id_in(rpc.last_log_id))
    }
}

impl From<VoteResponse<u64>> for WireVoteResponse {
    fn from(response: VoteResponse<u64>) -> Self {
        Self {
            vote: response.vote.into(),
            vote_granted: response.vote_granted,
            last_log_id: log_id_out(response.last_log_id),
        }
    }
}

impl From<WireVoteResponse> for VoteResponse<u64> {
    fn from(response: WireVoteResponse) -> Self {
        VoteResponse {
            vote: response.vote.into(),
            vote_granted: response.vote_granted,
            last_log_id: log_id_in(response.last_log_id),
        }
    }
}

impl From<InstallSnapshotRequest<TypeConfig>> for WireSnapshot {
    fn from(rpc: InstallSnapshotRequest<TypeConfig>) -> Self {
        Self {
            vote: rpc.vote.into(),
            last_log_id: log_id_out(rpc.meta.last_log_id),
            membership_log_id: log_id_out(*rpc.meta.last_membership.log_id()),
            membership: WireMembership::from(rpc.meta.last_membership.membership()),
            snapshot_id: rpc.meta.snapshot_id,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        }
    }
}

impl From<WireSnapshot> for InstallSnapshotRequest<TypeConfig> {
    fn from(rpc: WireSnapshot) -> Self {
        let meta = SnapshotMeta {
            last_log_id: log_id_in(rpc.last_log_id),
            last_membership: StoredMembership::new(log_id_in(rpc.membership_log_id), rpc.membership.into()),
            snapshot_id: rpc.snapshot_id,
        };
        Self { vote: rpc.vote.into(), meta, offset: rpc.offset, data: rpc.data, done: rpc.done }
    }
}

impl From<WireVote> for InstallSnapshotResponse<u64> {
    fn from(vote: WireVote) -> Self {
        InstallSnapshotResponse { vote: vote.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Op;

    fn node(i: u64) -> NodeInfo {
        NodeInfo { raft_addr: format!("127.0.0.1:{}", 7000 + i), http_addr: format!("127.0.0.1:{}", 8000 + i), region: "eu".into() }
    }

    fn sample_append() -> AppendEntriesRequest<TypeConfig> {
        let membership = Membership::new(vec![[1, 2, 3].into_iter().collect()], (1..=4).map(|i| (i, node(i))).collect::<BTreeMap<_, _>>());
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 2), 9)),
            entries: vec![
                Entry { log_id: LogId::new(CommittedLeaderId::new(3, 1), 10), payload: EntryPayload::Blank },
                Entry { log_id: LogId::new(CommittedLeaderId::new(3, 1), 11), payload: EntryPayload::Membership(membership) },
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 1), 12),
                    payload: EntryPayload::Normal(Request {
                        client_id: 7,
                        seq: 8,
                        op: Op::Batch(vec![Op::Put { key: b"k".to_vec(), value: vec![0, 255] }, Op::Batch(vec![Op::Delete { key: b"x".to_vec() }])]),
                    }),
                },
            ],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 10)),
        }
    }

    #[test]
    fn append_entries_round_trip_through_a_frame() {
        let rpc = sample_append();
        let frame = Frame {
            cluster: 42,
            id: 9,
            body: Body::Request { group: "eu".into(), from: 1, to: 2, rpc: Rpc::Append(WireAppend::from(rpc.clone())) },
        };
        let decoded = decode(&encode(&frame)).expect("valid frame");
        assert_eq!(decoded, frame);
        let Body::Request { rpc: Rpc::Append(wire), .. } = decoded.body else { panic!("wrong body") };
        let back = AppendEntriesRequest::<TypeConfig>::from(wire);
        assert_eq!(format!("{back:?}"), format!("{rpc:?}"));
    }

    #[test]
    fn votes_and_log_ids_round_trip() {
        for vote in [Vote::new(5, 3), Vote::new_committed(6, 1)] {
            assert_eq!(Vote::from(WireVote::from(vote)), vote);
        }
        let id = LogId::new(CommittedLeaderId::new(4, 2), 77);
        assert_eq!(LogId::from(WireLogId::from(id)), id);
    }

    #[test]
    fn corrupt_and_truncated_frames_are_errors_not_panics() {
        let bytes = encode(&Frame { cluster: 1, id: 2, body: Body::Request { group: "eu".into(), from: 1, to: 2, rpc: Rpc::Append(WireAppend::from(sample_append())) } });
        assert!(decode(&bytes[..bytes.len() / 2]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xff; 64]).is_err());
        // Flip every byte in turn: each result is either an error or a frame, never a panic.
        let mut flipped = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xa5;
            if decode(&bad).is_err() {
                flipped += 1;
            }
        }
        assert!(flipped > 0, "some corruptions must be detected");
    }
}

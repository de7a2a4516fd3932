//! openraft's network for the canon: [`CanonNetwork`] sends Raft RPCs as frames through
//! [`PeerSet`]'s connections; [`UnreachableNetwork`] is the network of a node that is its
//! cluster's only voter and never sends (tests of the storage alone use it).
//!
//! Errors: a peer that cannot be dialed or times out is `Unreachable` (openraft backs off and
//! retries); a peer that answers with a refusal is a `Network` error naming the refusal.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::NetworkError;

use crate::transport::{CallError, Peer, Transport};
use crate::types::NodeInfo;
use crate::wire::{Reply, Rpc, WireAppend, WireSnapshot, WireVoteRequest};

use crate::TypeConfig;

/// A network factory (and network) that reaches nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnreachableNetwork;

/// Why [`UnreachableNetwork`] refused.
#[derive(Debug, thiserror::Error)]
#[error("single-node canon: node {target} has no network")]
pub struct NoNetwork {
    /// The node that could not be reached.
    pub target: u64,
}

fn unreachable<E: std::error::Error>(target: u64) -> RPCError<u64, NodeInfo, E> {
    RPCError::Unreachable(Unreachable::new(&NoNetwork { target }))
}

/// A client of [`UnreachableNetwork`] for one target.
#[derive(Debug, Clone, Copy)]
pub struct UnreachableClient {
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for UnreachableNetwork {
    type Network = UnreachableClient;

    async fn new_client(&mut self, target: u64, _node: &NodeInfo) -> Self::Network {
        UnreachableClient { target }
    }
}

impl RaftNetwork<TypeConfig> for UnreachableClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>> {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(unreachable(self.target))
    }
}

/// The connections of one node to every address it talks to, shared by all its groups.
pub struct PeerSet {
    cluster: u64,
    transport: Arc<dyn Transport>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    /// When each `(group, node)` last answered a Raft RPC.
    heard: Mutex<BTreeMap<(String, u64), tokio::time::Instant>>,
}

impl std::fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSet").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl PeerSet {
    /// No connections yet; frames carry `cluster`.
    pub fn new(cluster: u64, transport: Arc<dyn Transport>) -> Self {
        Self { cluster, transport, peers: Mutex::default(), heard: Mutex::default() }
    }

    fn record_answer(&self, group: &str, node: u64) {
        let mut heard = self.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        heard.insert((group.to_owned(), node), tokio::time::Instant::now());
    }

    /// Whether `node` answered a Raft RPC of `group` within `window`.
    pub fn heard_within(&self, group: &str, node: u64, window: Duration) -> bool {
        let heard = self.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        heard.get(&(group.to_owned(), node)).is_some_and(|at| at.elapsed() <= window)
    }

    /// How long ago `node` last answered a Raft RPC of `group` (`None`: never).
    pub fn heard_age(&self, group: &str, node: u64) -> Option<Duration> {
        let heard = self.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        heard.get(&(group.to_owned(), node)).map(|at| at.elapsed())
    }

    /// The peer for `addr` (created on first use).
    pub fn get(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            peers
                .entry(addr.to_owned())
                .or_insert_with(|| Arc::new(Peer::new(addr.to_owned(), self.cluster, Arc::clone(&self.transport)))),
        )
    }
}

/// openraft's network factory for one group of one node.
#[derive(Debug, Clone)]
pub struct CanonNetwork {
    peers: Arc<PeerSet>,
    group: String,
    from: u64,
}

impl CanonNetwork {
    /// The network of node `from` in `group`.
    pub fn new(peers: Arc<PeerSet>, group: String, from: u64) -> Self {
        Self { peers, group, from }
    }

    /// The client towards `target` at `node`.
    pub fn client(&self, target: u64, node: &NodeInfo) -> CanonClient {
        CanonClient { peers: Arc::clone(&self.peers), peer: self.peers.get(&node.raft_addr), group: self.group.clone(), from: self.from, target }
    }
}

/// The client towards one target of one group.
#[derive(Debug, Clone)]
pub struct CanonClient {
    peers: Arc<PeerSet>,
    peer: Arc<Peer>,
    group: String,
    from: u64,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for CanonNetwork {
    type Network = CanonClient;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Self::Network {
        self.client(target, node)
    }
}

/// A reply that was not the one asked for, or a refusal.
#[derive(Debug, thiserror::Error)]
#[error("node {target} answered {what}")]
struct UnexpectedReply {
    target: u64,
    what: String,
}

/// Every failure is a `Network` error, never `Unreachable`: openraft answers `Unreachable`
/// with a backoff whose `select!` is unbiased (tokio's unseeded choice would make simulations
/// diverge). The pause between dials (`transport::REDIAL_PAUSE`) and the pause below bound
/// the retry rate instead.
fn call_failed<E: std::error::Error>(error: &CallError) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::new(error))
}

/// How long a failed dial holds the replication stream before it reports the failure.
const UNREACHABLE_PAUSE: Duration = Duration::from_millis(100);

impl CanonClient {
    async fn call<E: std::error::Error>(&self, rpc: Rpc, timeout: Duration) -> Result<Reply, RPCError<u64, NodeInfo, E>> {
        let reply = match self.peer.call(&self.group, self.from, self.target, rpc, timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                if matches!(e, CallError::Unreachable { .. }) {
                    tokio::time::sleep(UNREACHABLE_PAUSE.min(timeout)).await;
                }
                return Err(call_failed(&e));
            }
        };
        if !matches!(reply, Reply::Refused(_)) {
            self.peers.record_answer(&self.group, self.target);
        }
        Ok(reply)
    }

    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> RPCError<u64, NodeInfo, E> {
        let what = match reply {
            Reply::Refused(refusal) => refusal.to_string(),
            other => format!("an unexpected reply {other:?}"),
        };
        RPCError::Network(NetworkError::new(&UnexpectedReply { target: self.target, what }))
    }
}

impl RaftNetwork<TypeConfig> for CanonClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        match self.call(Rpc::Append(WireAppend::from(rpc)), option.hard_ttl()).await? {
            Reply::Append(response) => Ok(response.into()),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>> {
        match self.call(Rpc::Snapshot(WireSnapshot::from(rpc)), option.hard_ttl()).await? {
            Reply::Snapshot(vote) => Ok(vote.into()),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        match self.call(Rpc::Vote(WireVoteRequest::from(rpc)), option.hard_ttl()).await? {
            Reply::Vote(response) => Ok(response.into()),
            other => Err(self.unexpected(&other)),
        }
    }
}

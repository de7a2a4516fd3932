//! [`UnreachableNetwork`]: the network of a node that is its cluster's only voter.
//!
//! A single voter never sends an RPC, so every call answers `Unreachable`. Adding a second
//! node with this network would leave it unreachable; the real transport comes later.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

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

fn unreachable<E: std::error::Error>(target: u64) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&NoNetwork { target }))
}

/// A client of [`UnreachableNetwork`] for one target.
#[derive(Debug, Clone, Copy)]
pub struct UnreachableClient {
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for UnreachableNetwork {
    type Network = UnreachableClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        UnreachableClient { target }
    }
}

impl RaftNetwork<TypeConfig> for UnreachableClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable(self.target))
    }
}

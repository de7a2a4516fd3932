//! Early replication: a leader sends its new entries to the other voters while its own fsync
//! runs.
//!
//! openraft 0.9's core waits for the leader's log flush before it wakes the replication
//! streams (`RaftCore::append_to_log`), so a put at one connection paid the leader's fsync and
//! then a follower's, one after the other (README, "Where the miss at 1 connection goes").
//! Raft lets a leader send entries before it has persisted them (Ongaro's thesis, §10.2.1): an
//! entry is committed once a quorum has it on disk, and openraft still counts the leader's own
//! copy only after its fsync. So the log store, between its write and its fsync, hands the
//! entries to [`EarlyAppend`], which sends each voter the AppendEntries RPC that openraft's
//! stream sends a moment later. The follower writes and fsyncs them while the leader fsyncs;
//! when the stream's RPC comes, the follower has them and answers at once.
//!
//! The early RPC's answer is dropped: only openraft's stream moves a follower's progress, and
//! nothing here can make a follower accept what the stream would not send:
//! - it carries the leader's current vote, so a follower that saw a newer one refuses it;
//! - it is sent only when every entry was written by this node as the leader of that vote;
//! - it names the log id of the entry before them in this log, and a follower whose log
//!   differs there answers a conflict, as it would to the stream;
//! - its commit index is the leader's saved commit hint, never ahead of the leader's commit.
//!
//! One early RPC is in flight per voter at most: under load the streams carry the entries
//! anyway, and followers are not sent everything twice.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::network::RaftNetwork;
use openraft::raft::AppendEntriesRequest;
use openraft::{Entry, LogId, RaftMetrics};
use tokio::sync::watch;

use crate::network::CanonNetwork;
use crate::types::NodeInfo;
use crate::TypeConfig;

/// How long an early RPC may wait for its (ignored) answer before its voter can be sent the
/// next one.
const EARLY_APPEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The early sender of one group on one node (see the module's documentation).
pub(crate) struct EarlyAppend {
    id: u64,
    metrics: watch::Receiver<RaftMetrics<u64, NodeInfo>>,
    network: CanonNetwork,
    /// Voters with an early RPC in flight.
    in_flight: Mutex<BTreeSet<u64>>,
    sent: metrics::Counter,
}

impl std::fmt::Debug for EarlyAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyAppend").field("id", &self.id).finish_non_exhaustive()
    }
}

impl EarlyAppend {
    /// The early sender of node `id`, reading its role from the group's `metrics`.
    pub(crate) fn new(id: u64, metrics: watch::Receiver<RaftMetrics<u64, NodeInfo>>, network: CanonNetwork) -> Self {
        Self { id, metrics, network, in_flight: Mutex::default(), sent: metrics::counter!("vcos_canon_early_appends_total") }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The early RPCs for `entries`, about to be written after `prev` in this node's log
    /// (`committed`: the commit hint saved in it); `None` unless this node leads, wrote every
    /// entry as that leader, and some voter has no early RPC in flight.
    pub(crate) fn plan(
        self: &Arc<Self>,
        entries: &[Entry<TypeConfig>],
        prev: Option<LogId<u64>>,
        committed: Option<LogId<u64>>,
    ) -> Option<EarlyPlan> {
        let first = entries.first()?;
        // Contiguous with the log as it stands: the RPC names the entry before.
        let prev = prev.filter(|prev| prev.index + 1 == first.log_id.index)?;
        let (vote, voters) = {
            let metrics = self.metrics.borrow();
            let leads = metrics.state.is_leader()
                && metrics.current_leader == Some(self.id)
                && metrics.vote.is_committed()
                && metrics.vote.leader_id().voted_for() == Some(self.id);
            if !leads || entries.iter().any(|entry| entry.log_id.leader_id != *metrics.vote.leader_id()) {
                return None;
            }
            let membership = metrics.membership_config.membership();
            let voters: Vec<(u64, NodeInfo)> = membership
                .voter_ids()
                .filter(|&voter| voter != self.id)
                .filter_map(|voter| membership.get_node(&voter).map(|node| (voter, node.clone())))
                .collect();
            (metrics.vote, voters)
        };
        let targets: Vec<(Slot, NodeInfo)> = {
            let mut in_flight = self.in_flight();
            voters
                .into_iter()
                .filter(|(voter, _)| in_flight.insert(*voter))
                .map(|(voter, node)| (Slot { owner: Arc::clone(self), target: voter }, node))
                .collect()
        };
        if targets.is_empty() {
            return None;
        }
        let request = AppendEntriesRequest { vote, prev_log_id: Some(prev), entries: entries.to_vec(), leader_commit: committed };
        Some(EarlyPlan { request, targets })
    }
}

/// A voter's turn for an early RPC, given back when dropped.
struct Slot {
    owner: Arc<EarlyAppend>,
    target: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.in_flight().remove(&self.target);
    }
}

/// Early RPCs ready to go (see [`EarlyAppend::plan`]); dropped unsent, nothing is sent.
pub(crate) struct EarlyPlan {
    request: AppendEntriesRequest<TypeConfig>,
    targets: Vec<(Slot, NodeInfo)>,
}

impl EarlyPlan {
    /// Sends each voter its RPC. The frame goes out on the caller's thread, before its fsync:
    /// the RPC's first poll writes it (a connection writes a frame from the sending task when
    /// nothing is queued before it). A task spawned to do it would wait in this worker's LIFO
    /// slot, which no other worker steals, until the fsync is over: measured so, with no gain.
    /// The rest of the RPC, waiting for its answer, runs on a task of its own.
    pub(crate) fn send(self) {
        let EarlyPlan { request, targets } = self;
        for (slot, node) in targets {
            let mut client = slot.owner.network.client(slot.target, &node);
            let request = request.clone();
            slot.owner.sent.increment(1);
            let mut rpc = Box::pin(async move {
                let option = openraft::network::RPCOption::new(EARLY_APPEND_TIMEOUT);
                // The answer is openraft's stream's business: see the module's documentation.
                let _answer = client.append_entries(request, option).await;
                drop(slot);
            });
            // Polled again, with the task's own waker, once spawned: a future registers the
            // waker of each poll.
            let mut first_poll = std::task::Context::from_waker(std::task::Waker::noop());
            if rpc.as_mut().poll(&mut first_poll).is_pending() {
                tokio::spawn(rpc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, EntryPayload, Membership, ServerState, StoredMembership, Vote};

    use super::*;
    use crate::network::PeerSet;
    use crate::transport::TcpTransport;

    fn node(i: u64) -> NodeInfo {
        NodeInfo { raft_addr: format!("127.0.0.1:{}", 7000 + i), http_addr: String::new(), region: "eu".into() }
    }

    /// Node 1's metrics as `state`, in term 2 (led by `leader`), voters 1–3 and learner 4.
    fn metrics(state: ServerState, leader: u64) -> RaftMetrics<u64, NodeInfo> {
        let mut metrics = RaftMetrics::new_initial(1);
        metrics.state = state;
        metrics.current_leader = Some(leader);
        metrics.vote = Vote::new_committed(2, leader);
        let nodes: BTreeMap<u64, NodeInfo> = (1..=4).map(|i| (i, node(i))).collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        metrics.membership_config = Arc::new(StoredMembership::new(None, membership));
        metrics
    }

    fn early(metrics: RaftMetrics<u64, NodeInfo>) -> (Arc<EarlyAppend>, watch::Sender<RaftMetrics<u64, NodeInfo>>) {
        let (tx, rx) = watch::channel(metrics);
        let peers = Arc::new(PeerSet::new(1, Arc::new(TcpTransport)));
        (Arc::new(EarlyAppend::new(1, rx, CanonNetwork::new(peers, "eu".into(), 1))), tx)
    }

    fn entry(term: u64, leader: u64, index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload: EntryPayload::Blank }
    }

    fn log_id(term: u64, leader: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, leader), index))
    }

    fn targets(plan: &EarlyPlan) -> BTreeSet<u64> {
        plan.targets.iter().map(|(slot, _)| slot.target).collect()
    }

    #[test]
    fn a_leader_sends_its_new_entries_to_the_other_voters_only() {
        let (early, _tx) = early(metrics(ServerState::Leader, 1));
        let plan = early.plan(&[entry(2, 1, 8), entry(2, 1, 9)], log_id(1, 3, 7), log_id(1, 3, 6)).expect("a plan");
        assert_eq!(targets(&plan), BTreeSet::from([2, 3]), "voters but itself; no learner");
        assert_eq!(plan.request.prev_log_id, log_id(1, 3, 7));
        assert_eq!(plan.request.leader_commit, log_id(1, 3, 6));
        assert_eq!(plan.request.vote, Vote::new_committed(2, 1));
        assert_eq!(plan.request.entries.len(), 2);
    }

    #[test]
    fn one_early_rpc_per_voter_is_in_flight() {
        let (early, _tx) = early(metrics(ServerState::Leader, 1));
        let first = early.plan(&[entry(2, 1, 8)], log_id(2, 1, 7), None).expect("a plan");
        assert!(early.plan(&[entry(2, 1, 9)], log_id(2, 1, 8), None).is_none(), "both voters are taken");
        drop(first);
        assert!(early.plan(&[entry(2, 1, 9)], log_id(2, 1, 8), None).is_some(), "dropped unsent, the voters are free");
    }

    #[test]
    fn nothing_is_sent_early_unless_this_node_leads_and_wrote_the_entries() {
        let (early, tx) = early(metrics(ServerState::Follower, 3));
        assert!(early.plan(&[entry(2, 3, 8)], log_id(2, 3, 7), None).is_none(), "a follower's appends");
        tx.send_replace(metrics(ServerState::Leader, 1));
        assert!(early.plan(&[entry(1, 3, 8)], log_id(1, 3, 7), None).is_none(), "entries of another leader");
        assert!(early.plan(&[entry(2, 1, 9)], log_id(2, 1, 7), None).is_none(), "not after the log's last entry");
        assert!(early.plan(&[entry(2, 1, 0)], None, None).is_none(), "no entry before to name");
        let mut uncommitted = metrics(ServerState::Leader, 1);
        uncommitted.vote = Vote::new(2, 1);
        tx.send_replace(uncommitted);
        assert!(early.plan(&[entry(2, 1, 8)], log_id(2, 1, 7), None).is_none(), "a vote not yet committed");
    }
}

//! Membership of a region's group: add a learner, promote it, remove a node, join a cluster.
//!
//! Every change runs on the group's leader; a node that is not the leader forwards it there.
//! Changes that would cost the group its quorum are refused with the reason:
//! - removing the last voter, or the current leader (stop it first: the group elects another);
//! - removing a voter when the voters the leader has heard from recently
//!   ([`HEALTHY_CONTACT_MAX`]) are not a majority of the current voter set and of the new one
//!   (the change commits through a joint configuration that needs both);
//! - promoting a learner that is more than [`PROMOTE_LAG_MAX`] entries behind, or that has not
//!   answered the leader in the last [`HEALTHY_CONTACT_MAX`] (it would join the quorum before
//!   it can acknowledge anything, stalling writes).
//!
//! A node is never added straight as a voter: adding one "as a voter" adds it as a learner,
//! waits up to [`PROMOTE_CATCH_UP_MS`] for it to answer and catch up, and only then promotes it;
//! otherwise it stays a learner and the caller gets [`CanonError::NotPromoted`] with the reason.
//! A learner is outside the quorum, so one at a dead address never blocks a write, and removing
//! a learner is never refused for quorum. Every change ends by the request deadline
//! ([`CanonError::Unavailable`] when the voters have no quorum).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use tokio::time::Instant;

use crate::constants::PROMOTE_CATCH_UP_MS;
use crate::node::{CanonError, CanonNode, Group, MEMBERSHIP_CALL_MAX};
use crate::types::NodeInfo;
use crate::wire::{Refusal, Reply, Rpc};

/// How far behind the leader a learner may be and still be promoted.
pub const PROMOTE_LAG_MAX: u64 = 1_000;
/// A voter the leader has not heard from for this long counts as unreachable for quorum checks.
pub const HEALTHY_CONTACT_MAX: Duration = Duration::from_secs(3);

/// One member of a group as status output shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub node_id: u64,
    /// Where it is reached and its home region.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `voter` or `learner`.
    pub role: String,
    /// The last log index the leader knows it holds (only on the leader).
    pub matched_index: Option<u64>,
}

/// One group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The region.
    pub region: String,
    /// This node's role in it.
    pub role: String,
    /// The leader's id.
    pub leader_id: Option<u64>,
    /// The leader's HTTP address.
    pub leader_http: Option<String>,
    /// The leader's canon address.
    pub leader_raft: Option<String>,
    /// The current term.
    pub term: u64,
    /// The last index in this node's log.
    pub last_log_index: u64,
    /// The index this node applied.
    pub applied_index: u64,
    /// Committed entries not yet applied here.
    pub lag_entries: u64,
    /// Milliseconds since the leader last reached this node.
    pub leader_contact_age_ms: Option<u64>,
    /// Every member.
    pub members: Vec<MemberView>,
}

impl CanonNode {
    /// Every hosted group as status output shows it.
    pub fn views(&self) -> Vec<GroupView> {
        self.groups().iter().map(|group| self.view(group)).collect()
    }

    fn view(&self, group: &Group) -> GroupView {
        let metrics = group.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| MemberView {
                node_id: *id,
                info: info.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.to_owned(),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied())
                    .map(|matched| matched.map_or(0, |log_id| log_id.index)),
            })
            .collect();
        let leader = group.leader();
        let lag = self.lag(group.region()).ok();
        GroupView {
            region: group.region().to_owned(),
            role: crate::node::role_name(metrics.state, &metrics, self.id()).to_owned(),
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader_http: leader.as_ref().map(|(_, info)| info.http_addr.clone()),
            leader_raft: leader.as_ref().map(|(_, info)| info.raft_addr.clone()),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            lag_entries: lag.as_ref().map_or(0, |lag| lag.entries_behind),
            leader_contact_age_ms: lag.and_then(|lag| lag.contact_age_ms),
            members,
        }
    }

    /// Adds `node_id` to `region`'s group as a learner; when `voter`, waits up to
    /// [`PROMOTE_CATCH_UP_MS`] for it to answer and catch up, then promotes it. A node that does
    /// not catch up in time stays a learner and the call answers [`CanonError::NotPromoted`].
    /// Idempotent: adding a member again changes nothing.
    pub async fn add_member(&self, region: &str, node_id: u64, info: NodeInfo, voter: bool) -> Result<(), CanonError> {
        crate::node::validate_region(&info.region)?;
        let group = self.group(region)?;
        if !self.leads(&group) {
            return self.forward(&group, Rpc::AddMember { node_id, info, voter }).await;
        }
        let is_voter = group.raft().metrics().borrow().membership_config.membership().voter_ids().any(|id| id == node_id);
        if is_voter {
            return Ok(());
        }
        tracing::info!(region, node_id, %info, voter, "adding a canon member as a learner");
        let addr = info.raft_addr.clone();
        let deadline = self.deadline();
        match tokio::time::timeout_at(deadline, group.raft().add_learner(node_id, info, false)).await {
            Ok(result) => result.map_err(change_failed)?,
            Err(_) => return Err(self.unavailable(region, "the learner's membership entry was not committed in time".into())),
        };
        if !voter {
            return Ok(());
        }
        let catch_up = Instant::now() + Duration::from_millis(PROMOTE_CATCH_UP_MS);
        let mut reason = self.catch_up_state(&group, node_id);
        while let Err(why) = &reason {
            if Instant::now() >= catch_up {
                tracing::warn!(region, node_id, %addr, reason = %why, "new member did not catch up: left a learner");
                metrics::counter!("vcos_canon_members_not_promoted_total").increment(1);
                return Err(CanonError::NotPromoted(format!(
                    "node {node_id} was added to region {region} as a learner but not promoted to voter: within {PROMOTE_CATCH_UP_MS} ms {why}. \
                     It stays a learner, outside the quorum (writes are unaffected); promote it once it answers and has caught up, or remove it"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            reason = self.catch_up_state(&group, node_id);
        }
        self.promote(region, node_id).await
    }

    /// Whether learner `node_id` of `group` (led here) may become a voter: it answered the
    /// leader recently and is at most [`PROMOTE_LAG_MAX`] entries behind; else why not.
    fn catch_up_state(&self, group: &Group, node_id: u64) -> Result<(), String> {
        let metrics = group.raft().metrics().borrow().clone();
        let addr = metrics.membership_config.membership().get_node(&node_id).map(|info| info.raft_addr.clone()).unwrap_or_default();
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = match metrics.replication.as_ref().and_then(|r| r.get(&node_id).copied()) {
            None => return Err("the leader has not started replicating to it".into()),
            Some(None) => return Err(format!("it acknowledged no entry (does anything answer at {addr}?)")),
            Some(Some(log_id)) => log_id.index,
        };
        if !self.inner.peers.heard_within(group.region(), node_id, HEALTHY_CONTACT_MAX) {
            return Err(format!("it did not answer the leader in the last {} s (at {addr})", HEALTHY_CONTACT_MAX.as_secs()));
        }
        let behind = last.saturating_sub(matched);
        if behind > PROMOTE_LAG_MAX {
            return Err(format!("it is {behind} entries behind the leader (at most {PROMOTE_LAG_MAX})"));
        }
        Ok(())
    }

    /// Promotes learner `node_id` of `region`'s group to voter (refused while it is far behind).
    pub async fn promote(&self, region: &str, node_id: u64) -> Result<(), CanonError> {
        let group = self.group(region)?;
        if !self.leads(&group) {
            return self.forward(&group, Rpc::Promote { node_id }).await;
        }
        let metrics = group.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&node_id).is_none() {
            return Err(CanonError::Refused(format!("node {node_id} is not a member of region {region}; add it as a learner first")));
        }
        if membership.voter_ids().any(|id| id == node_id) {
            return Ok(());
        }
        if let Err(why) = self.catch_up_state(&group, node_id) {
            return Err(CanonError::Refused(format!(
                "learner {node_id} cannot be promoted yet: {why}; promoting it now would stall the quorum until it catches up"
            )));
        }
        self.change(&group, ChangeMembers::AddVoterIds(BTreeSet::from([node_id]))).await?;
        tracing::info!(region, node_id, "canon learner promoted to voter");
        Ok(())
    }

    /// Commits a membership change by the request deadline.
    async fn change(&self, group: &Group, change: ChangeMembers<u64, NodeInfo>) -> Result<(), CanonError> {
        match tokio::time::timeout_at(self.deadline(), group.raft().change_membership(change, false)).await {
            Ok(result) => result.map(drop).map_err(change_failed),
            Err(_) => Err(self.unavailable(group.region(), "the membership change was not committed in time".into())),
        }
    }

    /// Removes `node_id` (voter or learner) from `region`'s group, unless that loses quorum.
    pub async fn remove_member(&self, region: &str, node_id: u64) -> Result<(), CanonError> {
        let group = self.group(region)?;
        if !self.leads(&group) {
            return self.forward(&group, Rpc::Remove { node_id }).await;
        }
        let metrics = group.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&node_id).is_none() {
            return Err(CanonError::Refused(format!("node {node_id} is not a member of region {region}")));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if node_id == self.id() {
            // openraft 0.9 keeps a leader that removed itself leading (and then fails on the
            // next membership change): stopping the node hands leadership over first.
            return Err(CanonError::Refused(format!(
                "node {node_id} is the current leader of region {region}; stop it (its group elects another leader), then remove it"
            )));
        }
        if voters.contains(&node_id) {
            let remaining: BTreeSet<u64> = voters.iter().copied().filter(|id| *id != node_id).collect();
            if remaining.is_empty() {
                return Err(CanonError::Refused(format!("node {node_id} is the last voter of region {region}; removing it would leave no quorum")));
            }
            let is_healthy = |id: &u64| *id == self.id() || self.inner.peers.heard_within(region, *id, HEALTHY_CONTACT_MAX);
            // The change commits through a joint configuration: it needs a live majority of
            // the old voter set and of the new one.
            for (which, set) in [("current", &voters), ("remaining", &remaining)] {
                let healthy = set.iter().filter(|id| is_healthy(id)).count();
                let majority = set.len() / 2 + 1;
                if healthy < majority {
                    return Err(CanonError::Refused(format!(
                        "removing node {node_id} would lose quorum: of the {} {which} voters only {healthy} answered in the last {}s, and a quorum needs {majority}",
                        set.len(),
                        HEALTHY_CONTACT_MAX.as_secs()
                    )));
                }
            }
            self.change(&group, ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))).await?;
        }
        let removed_info = membership.get_node(&node_id).cloned();
        self.change(&group, ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))).await?;
        tracing::info!(region, node_id, "canon member removed");
        if let Some(info) = removed_info.filter(|info| info.region == region) {
            // Best effort: the node may be down; it then learns on its return that the group
            // no longer answers it, and an operator stops it.
            if let Err(e) = self.call(&info.raft_addr, region, node_id, Rpc::Removed, Duration::from_secs(2)).await {
                tracing::info!(region, node_id, error = %e, "could not tell the removed node");
            }
        }
        Ok(())
    }

    /// Joins the cluster that `views` describe (the status of any member): this node becomes a
    /// learner of every other region's group, and a voter of its own region's group — or, if
    /// its region has no group yet, the first voter of a new one that every other node reads
    /// as a learner.
    pub async fn join(&self, views: &[GroupView]) -> Result<(), CanonError> {
        let me = self.info().clone();
        let mut own_region_exists = false;
        for view in views {
            let voter = view.region == me.region;
            own_region_exists |= voter;
            if view.members.iter().any(|m| m.node_id == self.id() && (m.role == "voter" || !voter)) {
                continue;
            }
            let entry = view
                .leader_id
                .zip(view.leader_raft.clone())
                .or_else(|| view.members.first().map(|m| (m.node_id, m.info.raft_addr.clone())))
                .ok_or_else(|| CanonError::Refused(format!("region {} has no member to ask", view.region)))?;
            self.remote_add(&view.region, entry, voter).await?;
        }
        if !own_region_exists {
            self.bootstrap().await?;
            let home = self.home()?;
            home.raft().wait(Some(Duration::from_secs(10))).current_leader(self.id(), "new region leader").await.map_err(|e| CanonError::Failed(e.to_string()))?;
            let mut others: Vec<(u64, NodeInfo)> =
                views.iter().flat_map(|v| v.members.iter().map(|m| (m.node_id, m.info.clone()))).collect();
            others.sort_by_key(|(id, _)| *id);
            others.dedup_by_key(|(id, _)| *id);
            for (id, info) in others.into_iter().filter(|(id, _)| *id != self.id()) {
                self.add_member(&me.region, id, info, false).await?;
            }
        }
        Ok(())
    }

    async fn remote_add(&self, region: &str, (to, addr): (u64, String), voter: bool) -> Result<(), CanonError> {
        let rpc = Rpc::AddMember { node_id: self.id(), info: self.info().clone(), voter };
        match self.call(&addr, region, to, rpc, MEMBERSHIP_CALL_MAX).await {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Refused(Refusal::Membership(reason))) => Err(untag_error(region, reason)),
            Ok(other) => Err(CanonError::Failed(format!("joining region {region} through node {to}: {other:?}"))),
            Err(e) => Err(CanonError::Failed(format!("joining region {region} through node {to}: {e}"))),
        }
    }

    fn leads(&self, group: &Group) -> bool {
        group.leader().is_some_and(|(id, _)| id == self.id())
    }

    async fn forward(&self, group: &Group, rpc: Rpc) -> Result<(), CanonError> {
        let (leader, info) = group
            .leader()
            .ok_or_else(|| CanonError::NoLeader { region: group.region().to_owned(), waited: Duration::ZERO, last: "no leader known".into() })?;
        match self.call(&info.raft_addr, group.region(), leader, rpc, MEMBERSHIP_CALL_MAX).await {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Refused(Refusal::Membership(reason))) => Err(untag_error(group.region(), reason)),
            Ok(Reply::Refused(refusal)) => Err(CanonError::Failed(refusal.to_string())),
            Ok(other) => Err(CanonError::Failed(format!("unexpected reply {other:?}"))),
            Err(e) => Err(self.unavailable(group.region(), format!("the leader (node {leader}) did not answer: {e}"))),
        }
    }
}

/// Marks of membership errors that travel as `Refusal::Membership` text between nodes.
const NOT_PROMOTED_TAG: &str = "[not_promoted] ";
const UNAVAILABLE_TAG: &str = "[unavailable] ";

/// A membership error as the text of `Refusal::Membership`, so that the forwarding node
/// answers its caller with the same variant ([`untag_error`] reads it back).
pub(crate) fn tag_error(error: &CanonError) -> String {
    match error {
        CanonError::NotPromoted(reason) => format!("{NOT_PROMOTED_TAG}{reason}"),
        CanonError::Unavailable { reason, .. } => format!("{UNAVAILABLE_TAG}{reason}"),
        other => other.to_string(),
    }
}

/// The error that the text of a `Refusal::Membership` stands for (see [`tag_error`]).
fn untag_error(region: &str, text: String) -> CanonError {
    if let Some(reason) = text.strip_prefix(NOT_PROMOTED_TAG) {
        CanonError::NotPromoted(reason.to_owned())
    } else if let Some(reason) = text.strip_prefix(UNAVAILABLE_TAG) {
        CanonError::Unavailable {
            region: region.to_owned(),
            deadline_ms: crate::constants::CANON_REQUEST_DEADLINE_MS,
            reason: format!("on the leader: {reason}"),
        }
    } else {
        CanonError::Refused(text)
    }
}

fn change_failed(error: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> CanonError {
    match error {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => CanonError::Refused(e.to_string()),
        other => CanonError::Failed(other.to_string()),
    }
}

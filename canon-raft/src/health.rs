//! [`CanonHealth`]: whether each of a node's groups can commit now, for `/health`.
//!
//! A group *has a quorum* when this node knows a leader and that leader heard from a majority
//! of the voters within [`HEALTHY_CONTACT_MAX`]: on the leader, from its own record of which
//! voters answered its Raft RPCs (the quorum-ack age is how long ago the latest majority
//! answered, the leader counting itself); on a follower or learner, from the age of the
//! leader's last contact (a leader that reaches us is taken to reach its quorum too; the
//! leader's own `/health` says for sure). The node is healthy when its home group has one.
//! Read from metrics and contact times only: never waits on Raft.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::membership::HEALTHY_CONTACT_MAX;
use crate::node::{CanonNode, Group};

/// One group's state as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHealth {
    /// The region.
    pub region: String,
    /// This node's role: `leader`, `follower`, `candidate`, `learner`, `joining`, `shutdown`.
    pub role: String,
    /// The leader this node knows, if any.
    pub leader_id: Option<u64>,
    /// Whether a leader is known and heard from a majority of voters recently (see the module).
    pub quorum: bool,
    /// On the leader: milliseconds since a majority of the voters last answered it.
    pub quorum_ack_age_ms: Option<u64>,
    /// Elsewhere: milliseconds since the leader last reached this node (`None`: never).
    pub leader_contact_age_ms: Option<u64>,
    /// Voters in the group's membership.
    pub voters: usize,
}

/// Every group of a node, and whether its home group can commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonHealth {
    /// This node's home region.
    pub region: String,
    /// Whether the home group has a leader with a quorum heard recently.
    pub ok: bool,
    /// Every hosted group, in region order.
    pub groups: Vec<GroupHealth>,
}

fn millis(age: Duration) -> u64 {
    u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
}

impl CanonNode {
    /// The state of every hosted group (see the module docs). Never waits on Raft.
    pub fn health(&self) -> CanonHealth {
        let groups: Vec<GroupHealth> = self.groups().iter().map(|group| self.group_health(group)).collect();
        let ok = !self.check_removed() && groups.iter().any(|g| g.region == self.region() && g.quorum);
        CanonHealth { region: self.region().to_owned(), ok, groups }
    }

    fn group_health(&self, group: &Group) -> GroupHealth {
        let metrics = group.raft().metrics().borrow().clone();
        let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
        let role = crate::node::role_name(metrics.state, &metrics, self.id()).to_owned();
        let leader_id = metrics.current_leader;
        let window = millis(HEALTHY_CONTACT_MAX);
        if metrics.state == ServerState::Leader && leader_id == Some(self.id()) {
            // The ages of the voters' last answers, the leader's own being 0; the majority-th
            // smallest is how long ago the latest majority answered.
            let mut ages: Vec<u64> = voters
                .iter()
                .map(|id| if *id == self.id() { 0 } else { self.inner.peers.heard_age(group.region(), *id).map_or(u64::MAX, millis) })
                .collect();
            ages.sort_unstable();
            let majority = voters.len() / 2 + 1;
            let quorum_ack_age_ms = ages.get(majority - 1).copied().filter(|age| *age != u64::MAX);
            let quorum = quorum_ack_age_ms.is_some_and(|age| age <= window);
            GroupHealth { region: group.region().to_owned(), role, leader_id, quorum, quorum_ack_age_ms, leader_contact_age_ms: Some(0), voters: voters.len() }
        } else {
            let leader_contact_age_ms = self.lag(group.region()).ok().and_then(|lag| lag.contact_age_ms);
            let quorum = leader_id.is_some() && leader_contact_age_ms.is_some_and(|age| age <= window);
            GroupHealth { region: group.region().to_owned(), role, leader_id, quorum, quorum_ack_age_ms: None, leader_contact_age_ms, voters: voters.len() }
        }
    }
}

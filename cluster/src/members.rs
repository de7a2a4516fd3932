//! The members view that placement reads: who is alive, where, and how to reach them.
//!
//! Placement takes the view through [`MemberSource`] so that it does not care who maintains
//! it (today the SWIM membership's view).

use serde::Serialize;

/// What the failure detector says of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Not answering; others are asked to confirm.
    Suspect,
    /// Declared dead.
    Down,
    /// Left on purpose.
    Left,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its node id.
    pub node_id: u64,
    /// Its incarnation (grows with each start).
    pub incarnation: u64,
    /// Its home region.
    pub region: String,
    /// Roles it takes (`imvu`, `inference`, `desktop`, …).
    pub roles: Vec<String>,
    /// Its canon (Raft) address: remote IMVU messages travel there too.
    pub canon_addr: String,
    /// Its HTTP facade.
    pub http_addr: String,
    /// Its gossip (SWIM) address.
    pub gossip_addr: String,
    /// Liveness.
    pub state: MemberState,
}

/// Where placement reads the members from.
pub trait MemberSource: Send + Sync + 'static {
    /// Every member known, in node id order, this node included.
    fn members(&self) -> Vec<Member>;
}

fn role_names(roles: crate::membership::Roles) -> Vec<String> {
    use crate::membership::Roles;
    [(Roles::HOST, "imvu"), (Roles::CANON_VOTER, "canon"), (Roles::API, "api"), (Roles::GPU, "gpu"), (Roles::INFERENCE, "inference"), (Roles::DESKTOP, "desktop")]
        .into_iter()
        .filter(|(role, _)| roles.contains(*role))
        .map(|(_, name)| name.to_owned())
        .collect()
}

/// The SWIM membership's view as published by its driver
/// ([`crate::driver::MembershipHandle::view_receiver`]); reading never waits.
impl MemberSource for tokio::sync::watch::Receiver<std::sync::Arc<crate::membership::View>> {
    fn members(&self) -> Vec<Member> {
        let view = self.borrow().clone();
        members_of(&view)
    }
}

impl MemberSource for crate::driver::MembershipHandle {
    fn members(&self) -> Vec<Member> {
        members_of(&self.view())
    }
}

fn members_of(view: &crate::membership::View) -> Vec<Member> {
    use crate::membership::MemberState as Swim;
    view
        .members
        .values()
        .map(|m| Member {
            node_id: m.identity.node_id,
            incarnation: m.identity.renewal,
            region: m.identity.meta.region.clone(),
            roles: role_names(m.identity.meta.roles),
            canon_addr: m.identity.meta.canon_addr.map(|a| a.to_string()).unwrap_or_default(),
            http_addr: m.identity.meta.http_addr.map(|a| a.to_string()).unwrap_or_default(),
            gossip_addr: m.identity.gossip_addr.to_string(),
            state: match m.state {
                Swim::Alive => MemberState::Alive,
                Swim::Suspect => MemberState::Suspect,
                Swim::Down => MemberState::Down,
                Swim::Left => MemberState::Left,
            },
        })
        .collect()
}

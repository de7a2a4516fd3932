//! The members view: one entry per node id, as this member sees the cluster.

use std::collections::BTreeMap;

use crate::membership::identity::{NodeIdentity, NodeMeta};

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; declared down unless it refutes within `suspect_to_down_ms`.
    Suspect,
    /// Declared down (crashed, partitioned away, or replaced).
    Down,
    /// Announced that it left.
    Left,
}

impl MemberState {
    /// Whether placement may count on it (alive or merely suspected).
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }

    /// A short lowercase name (metrics, status output).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

/// One member in the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its current identity (the highest renewal seen for its node id).
    pub identity: NodeIdentity,
    /// Its state.
    pub state: MemberState,
    /// Its SWIM incarnation (grows each time it refutes a suspicion).
    pub incarnation: u16,
    /// When this node saw the state (or identity) last change, in the core's `now_ms`.
    pub since_ms: u64,
}

impl MemberInfo {
    /// Its static metadata.
    pub fn meta(&self) -> &NodeMeta {
        &self.identity.meta
    }
}

/// The cluster as one member sees it: node id → member, this node included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Members by node id.
    pub members: BTreeMap<u64, MemberInfo>,
}

impl View {
    /// Node ids of the members in `state`, ascending.
    pub fn ids_in(&self, state: MemberState) -> Vec<u64> {
        self.members.iter().filter(|(_, m)| m.state == state).map(|(id, _)| *id).collect()
    }

    /// Members alive or suspected (what placement may use), ascending by node id.
    pub fn active(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().filter(|m| m.state.is_active())
    }

    /// One member.
    pub fn get(&self, node_id: u64) -> Option<&MemberInfo> {
        self.members.get(&node_id)
    }
}

/// What changed in the view, in the order this node learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member appeared, or came back after being down or left.
    Up(NodeIdentity),
    /// A member missed probes.
    Suspect(NodeIdentity),
    /// A suspected member answered (refuted the suspicion).
    Refuted(NodeIdentity),
    /// A member was declared down.
    Down(NodeIdentity),
    /// A member announced it left.
    Left(NodeIdentity),
    /// A node restarted or renewed its identity: `new` replaces `old` (same node id). Treat
    /// it as "the process behind this id changed": forget whatever it held in memory.
    Renewed {
        /// The identity it had.
        old: NodeIdentity,
        /// The identity it has now.
        new: NodeIdentity,
    },
    /// Two live processes claim one node id from different addresses. The higher renewal
    /// wins; the loser stops taking part in membership (its core goes quiet).
    DuplicateId {
        /// This node's identity.
        ours: NodeIdentity,
        /// The other claimant.
        theirs: NodeIdentity,
        /// Whether this node kept the id.
        we_won: bool,
    },
}

impl MemberEvent {
    /// A short name (metric label).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Up(_) => "up",
            Self::Suspect(_) => "suspect",
            Self::Refuted(_) => "refuted",
            Self::Down(_) => "down",
            Self::Left(_) => "left",
            Self::Renewed { .. } => "renewed",
            Self::DuplicateId { .. } => "duplicate_id",
        }
    }
}

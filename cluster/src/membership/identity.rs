//! Who a member is: node id, renewal, gossip address and the static metadata placement needs.
//!
//! foca's [`Identity::addr`] is the node id: foca keeps one entry per node id, so a renewed
//! identity (same id, higher renewal) *replaces* the old one instead of piling up next to it
//! (foca issues #31/#32), and a quick restart is seen as the node coming back under a new
//! identity (#34). Everything placement needs that never changes while a process lives
//! (region, roles, addresses) rides in the identity, so every member learns it with the
//! membership itself.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest region name, in bytes (identities travel in every datagram's header).
pub const REGION_LEN_MAX: usize = 16;

/// A node's roles, as a small bitset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Roles(pub u16);

impl Roles {
    /// Hosts IMVUs (shards of the actor runtime).
    pub const HOST: Roles = Roles(1);
    /// A voter of its region's canon group.
    pub const CANON_VOTER: Roles = Roles(1 << 1);
    /// Serves the HTTP API.
    pub const API: Roles = Roles(1 << 2);
    /// Runs GPU workers.
    pub const GPU: Roles = Roles(1 << 3);
    /// Serves models (its inference pools take requests forwarded by other nodes).
    pub const INFERENCE: Roles = Roles(1 << 4);
    /// Runs virtual desktops (sessions).
    pub const DESKTOP: Roles = Roles(1 << 5);

    /// No roles.
    pub const fn empty() -> Self {
        Roles(0)
    }

    /// These roles plus `other`.
    #[must_use]
    pub const fn with(self, other: Roles) -> Self {
        Roles(self.0 | other.0)
    }

    /// Whether every role of `other` is in `self`.
    pub const fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Static metadata of a node: set at start, constant for the life of an identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Region name (at most [`REGION_LEN_MAX`] bytes).
    pub region: String,
    /// What the node does.
    pub roles: Roles,
    /// Where it serves HTTP, if it does.
    pub http_addr: Option<SocketAddr>,
    /// Where it serves canon (Raft) frames, if it does.
    pub canon_addr: Option<SocketAddr>,
}

/// A member's identity. Two processes with the same `node_id` are the same node; the one
/// with the higher `renewal` is the current one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's id, unique in the cluster.
    pub node_id: u64,
    /// Grows with each restart (production: the process's start time in unix ms) and each
    /// time foca renews the identity after the cluster declared it down.
    pub renewal: u64,
    /// Where the node receives membership datagrams.
    pub gossip_addr: SocketAddr,
    /// Static metadata.
    pub meta: NodeMeta,
}

impl foca::Identity for NodeIdentity {
    type Addr = u64;

    /// The same node under a higher renewal: wins every conflict with the current identity.
    fn renew(&self) -> Option<Self> {
        let renewal = self.renewal.checked_add(1)?;
        Some(Self { renewal, ..self.clone() })
    }

    fn addr(&self) -> u64 {
        self.node_id
    }

    /// The higher renewal wins; on a tie (two processes started with the same id and
    /// renewal) the order of (gossip address, metadata) decides, so both sides agree.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.renewal, &self.gossip_addr, &self.meta) > (adversary.renewal, &adversary.gossip_addr, &adversary.meta)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity as _;

    use super::*;

    fn id(node_id: u64, renewal: u64, port: u16) -> NodeIdentity {
        NodeIdentity {
            node_id,
            renewal,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            meta: NodeMeta { region: "eu".into(), roles: Roles::HOST, http_addr: None, canon_addr: None },
        }
    }

    #[test]
    fn renewal_wins_and_conflicts_are_antisymmetric() {
        let a = id(1, 10, 7000);
        let renewed = a.renew().expect("identities always renew");
        assert_eq!(renewed.addr(), a.addr());
        assert_eq!(renewed.renewal, 11);
        assert!(renewed.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&renewed));
        let twin = id(1, 10, 7001);
        assert_ne!(twin.win_addr_conflict(&a), a.win_addr_conflict(&twin));
    }

    #[test]
    fn roles_are_a_bitset() {
        let roles = Roles::HOST.with(Roles::API);
        assert!(roles.contains(Roles::HOST) && roles.contains(Roles::API));
        assert!(!roles.contains(Roles::GPU));
        assert!(roles.contains(Roles::empty()));
    }
}

//! Dynamic node state (load, capacity, IMVUs owned, version) gossiped with chitchat, for
//! production (`vcos up`) only.
//!
//! Why chitchat at all, and why only here:
//! - Static placement inputs ride in foca's identity; what changes while a process runs (load,
//!   IMVU counts) would need a new foca identity per change, so it travels in chitchat's
//!   versioned key-value state instead, over its own UDP port.
//! - chitchat 0.13 draws from the thread RNG and runs its own phi-accrual failure detector. We
//!   ignore that detector entirely: [`DynamicState::snapshot`] returns every node chitchat has
//!   heard of, dead or alive, and callers join it with foca's view by node id and renewal (a
//!   state whose renewal is not the view's current identity is stale). So chitchat feeds hints
//!   (load) into decisions that foca's view already made possible; it never decides liveness.
//! - The simulator does not run chitchat (its thread RNG would break replay); nothing it
//!   carries may be needed for correctness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion};

/// How a node publishes its dynamic state.
#[derive(Clone, Debug)]
pub struct DynamicStateConfig {
    /// The cluster's name (chitchat refuses other clusters' messages).
    pub cluster_name: String,
    /// This node's id (the same as its membership identity's).
    pub node_id: u64,
    /// Its renewal (the same as its membership identity's at start).
    pub renewal: u64,
    /// Where chitchat listens (its own UDP port, not the membership port).
    pub listen_addr: SocketAddr,
    /// Where others reach it.
    pub advertise_addr: SocketAddr,
    /// Chitchat addresses of some other nodes.
    pub seeds: Vec<SocketAddr>,
    /// Gossip round interval.
    pub gossip_interval_ms: u64,
}

impl DynamicStateConfig {
    /// Defaults: gossip every 500 ms.
    pub fn new(cluster_name: impl Into<String>, node_id: u64, renewal: u64, listen_addr: SocketAddr, seeds: Vec<SocketAddr>) -> Self {
        Self { cluster_name: cluster_name.into(), node_id, renewal, listen_addr, advertise_addr: listen_addr, seeds, gossip_interval_ms: 500 }
    }
}

/// What a node publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Current load, in per mille of capacity.
    pub load_per_mille: u32,
    /// How many IMVUs it can host.
    pub capacity: u64,
    /// How many it hosts now.
    pub imvus_owned: u64,
    /// Its software version.
    pub version: String,
}

const KEY_LOAD: &str = "load_per_mille";
const KEY_CAPACITY: &str = "capacity";
const KEY_IMVUS: &str = "imvus_owned";
const KEY_VERSION: &str = "version";

impl NodeLoad {
    fn key_values(&self) -> [(&'static str, String); 4] {
        [
            (KEY_LOAD, self.load_per_mille.to_string()),
            (KEY_CAPACITY, self.capacity.to_string()),
            (KEY_IMVUS, self.imvus_owned.to_string()),
            (KEY_VERSION, self.version.clone()),
        ]
    }

    fn from_state(state: &NodeState) -> Self {
        let number = |key: &str| state.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            load_per_mille: state.get(KEY_LOAD).and_then(|v| v.parse().ok()).unwrap_or(0),
            capacity: number(KEY_CAPACITY),
            imvus_owned: number(KEY_IMVUS),
            version: state.get(KEY_VERSION).unwrap_or_default().to_owned(),
        }
    }
}

/// A node's dynamic state as last gossiped, with the renewal it was published under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedLoad {
    /// The publisher's renewal; compare with the membership view's identity.
    pub renewal: u64,
    /// What it published.
    pub load: NodeLoad,
}

/// Why chitchat could not start.
#[derive(Debug, thiserror::Error)]
#[error("chitchat: {0}")]
pub struct DynamicStateError(String);

/// A running chitchat instance.
pub struct DynamicState {
    handle: ChitchatHandle,
}

impl DynamicState {
    /// Binds `listen_addr` and starts gossiping `initial`.
    pub async fn start(config: DynamicStateConfig, initial: &NodeLoad) -> Result<Self, DynamicStateError> {
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.to_string(), config.renewal, config.advertise_addr),
            cluster_id: config.cluster_name,
            gossip_interval: Duration::from_millis(config.gossip_interval_ms.max(1)),
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            // Ignored (foca decides liveness); kept at chitchat's defaults.
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let initial = initial.key_values().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let handle = spawn_chitchat(chitchat_config, initial, &UdpTransport).await.map_err(|e| DynamicStateError(e.to_string()))?;
        Ok(Self { handle })
    }

    /// Publishes a new state of this node.
    pub async fn publish(&self, load: &NodeLoad) {
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                for (key, value) in load.key_values() {
                    state.set(key, value);
                }
            })
            .await;
    }

    /// Every node chitchat has heard of (liveness ignored), by node id; of several
    /// generations of one node, the highest renewal.
    pub async fn snapshot(&self) -> BTreeMap<u64, PublishedLoad> {
        self.handle
            .with_chitchat(|chitchat| {
                let mut out: BTreeMap<u64, PublishedLoad> = BTreeMap::new();
                for (id, state) in chitchat.node_states() {
                    let Ok(node_id) = id.node_id.parse::<u64>() else { continue };
                    if out.get(&node_id).is_none_or(|p| p.renewal < id.generation_id) {
                        out.insert(node_id, PublishedLoad { renewal: id.generation_id, load: NodeLoad::from_state(state) });
                    }
                }
                out
            })
            .await
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        if let Err(error) = self.handle.shutdown().await {
            tracing::debug!(%error, "chitchat shutdown");
        }
    }
}

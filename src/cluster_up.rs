//! `vcos up`'s cluster: SWIM membership on the gossip port, bucket leases, and placement of
//! IMVUs, wired around the node's canon and runtime.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vcos_canon_raft::CanonNode;
use vcos_cluster::membership::{MembershipConfig, NodeIdentity, NodeMeta, Roles};
use vcos_cluster::placement::lease::Holder;
use vcos_cluster::{LeaseTable, MembershipHandle};

use crate::http_client;

/// How long start-up spends finding gossip seeds through other nodes' HTTP facades.
const SEED_DISCOVERY_MAX: Duration = Duration::from_secs(3);

/// This node's lease holder identity: its id and its canon incarnation (a restart is a new
/// holder, which must wait out its previous incarnation's leases).
pub(crate) fn holder(node: &CanonNode) -> Holder {
    Holder { node: node.id(), incarnation: node.incarnation() }
}

/// The lease core that the runtime (as its `Ownership`) and the cluster share.
pub(crate) fn lease_table(node: &CanonNode) -> anyhow::Result<Arc<LeaseTable>> {
    LeaseTable::new(holder(node), vcos_cluster::placement::LeaseConfig::default()).context("lease configuration")
}

/// Gossip addresses of the other nodes: `--seeds`, plus what the `--join` node and the canon's
/// members report at `GET /v1/cluster` (bounded in time; a node with no seeds starts alone and
/// others find it through theirs).
async fn discover_seeds(node: &CanonNode, seeds: &[SocketAddr], join: Option<&str>, own_http: &str) -> Vec<SocketAddr> {
    let mut found: BTreeSet<SocketAddr> = seeds.iter().copied().collect();
    let mut bases: BTreeSet<String> = join.map(str::to_owned).into_iter().collect();
    for view in node.views() {
        for member in view.members {
            if member.node_id != node.id() && !member.info.http_addr.is_empty() && member.info.http_addr != own_http {
                bases.insert(format!("http://{}", member.info.http_addr));
            }
        }
    }
    let discovery = async {
        for base in &bases {
            let Ok(text) = http_client::request_ok(base, "GET", "/v1/cluster", None).await else { continue };
            let Ok(view) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            for member in view["members"].as_array().into_iter().flatten() {
                if let Some(addr) = member["gossip_addr"].as_str().and_then(|a| a.parse().ok()) {
                    found.insert(addr);
                }
            }
        }
    };
    if tokio::time::timeout(SEED_DISCOVERY_MAX, discovery).await.is_err() {
        tracing::warn!("seed discovery took too long; starting with the seeds found so far");
    }
    found.into_iter().collect()
}

/// Binds the gossip socket and starts SWIM membership with this node's identity.
pub(crate) async fn start_membership(
    node: &CanonNode,
    cluster_name: &str,
    gossip_listen: SocketAddr,
    seeds: &[SocketAddr],
    join: Option<&str>,
    http_addr: SocketAddr,
    serves_models: bool,
    runs_desktops: bool,
) -> anyhow::Result<MembershipHandle> {
    let socket = tokio::net::UdpSocket::bind(gossip_listen).await.with_context(|| format!("gossip listener on {gossip_listen}"))?;
    let gossip_addr = socket.local_addr().context("gossip address")?;
    let canon_addr: SocketAddr = node.info().raft_addr.parse().context("canon address")?;
    let seeds = discover_seeds(node, seeds, join, &http_addr.to_string()).await;
    let known_nodes = node.views().iter().map(|v| v.members.len()).max().unwrap_or(1);
    let cluster_size = u32::try_from(known_nodes.max(seeds.len() + 1)).unwrap_or(u32::MAX).clamp(3, 10_000);
    let identity = NodeIdentity {
        node_id: node.id(),
        // Above every renewal of the previous incarnation: a restart is seen as the node
        // coming back, not as a stale copy of it.
        renewal: node.incarnation() << 32,
        gossip_addr,
        meta: NodeMeta {
            region: node.region().to_owned(),
            roles: {
                let roles = Roles::HOST.with(Roles::CANON_VOTER).with(Roles::API);
                let roles = if serves_models { roles.with(Roles::INFERENCE) } else { roles };
                if runs_desktops { roles.with(Roles::DESKTOP) } else { roles }
            },
            http_addr: Some(http_addr),
            canon_addr: Some(canon_addr),
        },
    };
    let rng_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    tracing::info!(%gossip_addr, seeds = seeds.len(), cluster_size, "membership starting");
    let mut config = MembershipConfig::lan(cluster_name, identity, seeds, cluster_size, rng_seed);
    // Gossip is tagged with the cluster secret the canon connections prove.
    config.secret = node.secret().map(Arc::new);
    let (handle, mut events) = vcos_cluster::driver::spawn(socket, config).context("membership configuration")?;
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            tracing::info!(?event, "membership");
        }
    });
    Ok(handle)
}

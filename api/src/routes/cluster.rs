//! `GET /v1/cluster`: the members as this node sees them, and how the IMVUs' buckets are held.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// One member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct MemberView {
    /// Its node id.
    node_id: u64,
    /// Its incarnation (grows with each start).
    incarnation: u64,
    /// Its home region.
    region: String,
    /// Its roles.
    roles: Vec<String>,
    /// `alive`, `suspect`, `down` or `left`.
    state: String,
    /// Its HTTP facade.
    http_addr: String,
    /// Its canon address (remote IMVU messages travel there).
    canon_addr: String,
    /// Its gossip (SWIM) address: a seed for joining nodes.
    gossip_addr: String,
    /// IMVU buckets it holds by the lease records (of 256 per region).
    buckets_owned: usize,
}

/// The cluster as this node sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ClusterView {
    /// This node.
    node_id: u64,
    /// Buckets this node can prove it holds now; 0 on a node cut off from its region's
    /// quorum (it serves none of its IMVUs then).
    buckets_served_here: usize,
    /// Every member known, in node id order.
    members: Vec<MemberView>,
    /// This node's desktop host, if it runs desktops (`vcos up --desktops`).
    #[serde(skip_serializing_if = "Option::is_none")]
    desktops: Option<DesktopsView>,
}

/// A node's desktop host.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DesktopsView {
    /// How desktop limits are enforced (`rlimit`; cgroups v2 where writable is not used).
    limits: String,
    /// Started displays ready, per tier.
    pool: std::collections::BTreeMap<String, usize>,
    /// Sessions on this node not terminated.
    sessions: usize,
    /// Of them, active.
    active: usize,
}

/// Members with region, roles, state and the IMVU buckets each owns.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "The members and their buckets", body = ClusterView),
        (status = 404, description = "`not_found`: this node runs without placement (a single node without `vcos up`)", body = ErrorBody),
    ))]
pub(super) async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::NotFound("this node runs without placement".into()));
    };
    let owned = cluster.buckets_by_node();
    let members = cluster
        .members()
        .into_iter()
        .map(|m| MemberView {
            buckets_owned: owned.get(&m.node_id).copied().unwrap_or(0),
            node_id: m.node_id,
            incarnation: m.incarnation,
            region: m.region,
            roles: m.roles,
            state: serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            http_addr: m.http_addr,
            canon_addr: m.canon_addr,
            gossip_addr: m.gossip_addr,
        })
        .collect();
    let desktops = state.desktops.as_ref().map(|d| {
        let status = d.status();
        DesktopsView {
            limits: status.limits.to_owned(),
            pool: status.pool.into_iter().map(|(tier, n)| (tier.to_owned(), n)).collect(),
            sessions: status.sessions,
            active: status.active,
        }
    });
    Ok(Json(ClusterView { node_id: cluster.node_id(), buckets_served_here: cluster.buckets_served(), members, desktops }))
}

/// The cluster secret, for a node joining through this one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ClusterSecretView {
    /// The secret file's text: one hex line per secret, the active one first.
    secret: String,
}

/// The cluster secret that node-to-node connections prove (`vcos up --join` fetches it with a
/// cluster-admin key and keeps it in its data directory).
#[utoipa::path(get, path = "/v1/cluster/secret", tag = "cluster",
    responses(
        (status = 200, description = "The secret file's text", body = ClusterSecretView),
        (status = 404, description = "`not_found`: this node runs without a canon cluster", body = ErrorBody),
    ))]
pub(super) async fn cluster_secret(State(state): State<AppState>) -> Result<Json<ClusterSecretView>, ApiError> {
    let secret = state.canon.as_ref().and_then(|c| c.node().secret());
    let Some(secret) = secret else {
        return Err(ApiError::NotFound("this node has no cluster secret".into()));
    };
    tracing::info!("cluster secret handed out (a node joins)");
    Ok(Json(ClusterSecretView { secret: secret.to_text() }))
}

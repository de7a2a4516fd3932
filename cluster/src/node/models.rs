//! Models across the cluster: a request is served by this node's pools when they have room,
//! else forwarded to a node that says it serves models (the `inference` role in its
//! membership identity), nodes of this region first, taken in turn so that load spreads.
//!
//! - A forwarded request runs on the receiver's own pools only ([`RemoteFrame::Model`] is
//!   never forwarded on), so a request crosses at most one hop and cannot loop.
//! - A node that is full (`queue_full`) or cannot serve (`unavailable`, not reachable) is
//!   skipped for the next, up to [`MODEL_TRIES_MAX`] nodes. Model work has no side effect but
//!   its cost, so trying another node is safe; one whose outcome is unknown (no answer within
//!   the deadline) is not retried, so as not to double a long generation.
//! - Usage is charged by the node the caller came through, from the answer's token count.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use vcos_actors::models::{ModelAnswer, ModelRequest, ModelService};
use vcos_actors::{ActorError, BoxFuture};
use tracing::Instrument;
use vcos_canon_raft::AppCallError;

use super::Inner;
use crate::members::{Member, MemberState};
use crate::remote::{self, RemoteFrame, RemoteReply};

/// Nodes one request is offered to, at most, before its last refusal is returned.
pub const MODEL_TRIES_MAX: usize = 3;
/// How long a node asked for its model list may take.
const MODEL_LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// Nodes asked for their model lists, at most.
const MODEL_LIST_PEERS_MAX: usize = 4;
/// The role a member takes when it serves models.
pub const INFERENCE_ROLE: &str = "inference";

/// Model requests placed on this node's pools or another node's: the `ModelService` IMVUs
/// and the HTTP facade use in a cluster. Made by [`crate::Cluster::models`] (this node's
/// pools first) or [`crate::Cluster::remote_models`] (other nodes only).
pub struct ClusterModels {
    inner: Weak<Inner>,
    local: Option<Arc<dyn ModelService>>,
}

impl std::fmt::Debug for ClusterModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterModels").field("local", &self.local.is_some()).finish_non_exhaustive()
    }
}

impl ClusterModels {
    pub(super) fn new(inner: Weak<Inner>, local: Option<Arc<dyn ModelService>>) -> Self {
        Self { inner, local }
    }
}

/// Live members other than this node that serve models: this region's first, then the
/// others, each group rotated by `turn` so that successive requests go to different nodes.
fn model_peers(inner: &Inner, turn: u64) -> Vec<Member> {
    let me = inner.config.me.node;
    let serving = |m: &Member| m.node_id != me && m.state == MemberState::Alive && !m.canon_addr.is_empty() && m.roles.iter().any(|r| r == INFERENCE_ROLE);
    let (mut near, mut far): (Vec<Member>, Vec<Member>) = inner.members.members().into_iter().filter(serving).partition(|m| m.region == inner.config.region);
    for group in [&mut near, &mut far] {
        if !group.is_empty() {
            let shift = (turn % group.len() as u64) as usize;
            group.rotate_left(shift);
        }
    }
    near.extend(far);
    near
}

fn stopping() -> ActorError {
    ActorError::Unavailable("node stopping".into())
}

impl ModelService for ClusterModels {
    fn models(&self) -> BoxFuture<'static, Vec<String>> {
        let inner = self.inner.clone();
        let local = self.local.clone();
        Box::pin(async move {
            let mut names = match &local {
                Some(local) => local.models().await,
                None => Vec::new(),
            };
            let Some(inner) = inner.upgrade() else { return names };
            for peer in model_peers(&inner, 0).into_iter().take(MODEL_LIST_PEERS_MAX) {
                let listed = inner.canon.call_app(peer.node_id, &peer.canon_addr, RemoteFrame::ModelList.encode(), MODEL_LIST_TIMEOUT).await;
                let Ok(Ok(RemoteReply::Ok(bytes))) = listed.map(|bytes| RemoteReply::decode(&bytes)) else { continue };
                for name in serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_default() {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            names
        })
    }

    fn has_room(&self, request: &ModelRequest) -> bool {
        self.local.as_ref().is_some_and(|local| local.has_room(request))
            || self.inner.upgrade().is_some_and(|inner| !model_peers(&inner, 0).is_empty())
    }

    fn run(&self, request: ModelRequest) -> BoxFuture<'static, Result<ModelAnswer, ActorError>> {
        let inner = self.inner.clone();
        let local = self.local.clone();
        Box::pin(async move {
            let kind = request.kind();
            let mut refusal = None;
            if let Some(local) = local.as_ref().filter(|local| local.has_room(&request)) {
                match local.run(request.clone()).await {
                    Err(e @ ActorError::QueueFull(_)) => refusal = Some(e),
                    answered => {
                        metrics::counter!("vcos_cluster_model_requests_total", "kind" => kind, "path" => "local").increment(1);
                        return answered;
                    }
                }
            }
            let inner = inner.upgrade().ok_or_else(stopping)?;
            let turn = inner.model_turn.fetch_add(1, Ordering::Relaxed);
            let peers = model_peers(&inner, turn);
            if peers.is_empty() {
                // Nowhere else to go: the local pools' own answer (overloaded, or a clear
                // "not served") is the most useful error.
                if let (Some(local), None) = (&local, &refusal) {
                    return local.run(request).await;
                }
                return Err(refusal.unwrap_or_else(|| {
                    ActorError::Unavailable("no node of the cluster serves models: run `vcos models install` on a node and restart it (it then takes the `inference` role)".into())
                }));
            }
            let payload = serde_json::to_vec(&request).map_err(|e| ActorError::BadRequest { field: "model request".into(), reason: e.to_string() })?;
            let frame = RemoteFrame::Model { tenant: String::new(), request: payload }.encode();
            let timeout = Duration::from_millis(inner.config.model_timeout_ms);
            for peer in peers.into_iter().take(MODEL_TRIES_MAX) {
                let span = tracing::debug_span!("forward_model", node = peer.node_id, kind);
                let answered = inner.canon.call_app(peer.node_id, &peer.canon_addr, frame.clone(), timeout).instrument(span).await;
                let error = match answered.map(|bytes| RemoteReply::decode(&bytes)) {
                    Ok(Ok(RemoteReply::Ok(bytes))) => {
                        metrics::counter!("vcos_cluster_model_requests_total", "kind" => kind, "path" => "forwarded").increment(1);
                        return serde_json::from_slice::<ModelAnswer>(&bytes)
                            .map_err(|e| ActorError::Unavailable(format!("node {}: unreadable model answer: {e}", peer.node_id)));
                    }
                    Ok(Ok(RemoteReply::Err(bytes))) => remote::decode_error(&bytes),
                    Ok(Ok(RemoteReply::NotOwner { .. })) => ActorError::Unavailable(format!("node {} does not serve models", peer.node_id)),
                    Ok(Err(e)) => ActorError::Unavailable(format!("node {}: {e}", peer.node_id)),
                    Err(AppCallError::NotDelivered { reason, .. }) => ActorError::Unavailable(format!("node {} unreachable: {reason}", peer.node_id)),
                    Err(e @ AppCallError::Unknown { .. }) => {
                        metrics::counter!("vcos_cluster_model_requests_total", "kind" => kind, "path" => "unknown").increment(1);
                        return Err(ActorError::Unavailable(format!("model request on node {}: no answer in time ({e}); retry", peer.node_id)));
                    }
                };
                match error {
                    ActorError::QueueFull(_) | ActorError::Unavailable(_) => {
                        tracing::debug!(node = peer.node_id, %error, "model node refused; trying the next");
                        refusal = Some(error);
                    }
                    // The request itself is wrong: every node would say so.
                    other => return Err(other),
                }
            }
            metrics::counter!("vcos_cluster_model_requests_total", "kind" => kind, "path" => "refused").increment(1);
            Err(refusal.unwrap_or_else(|| ActorError::Unavailable("no model node answered".into())))
        })
    }
}

/// Serves a [`RemoteFrame::Model`] from another node with this node's own pools.
pub(super) async fn serve_model(inner: &Inner, from: u64, request: &[u8]) -> RemoteReply {
    let Some(local) = inner.local_models.get() else {
        return RemoteReply::error(&ActorError::Unavailable(format!("node {} serves no models", inner.config.me.node)));
    };
    let request: ModelRequest = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(e) => return RemoteReply::error(&ActorError::BadRequest { field: "model request".into(), reason: e.to_string() }),
    };
    let kind = request.kind();
    let span = tracing::debug_span!("serve_model_for_peer", from, kind);
    metrics::counter!("vcos_cluster_model_requests_total", "kind" => kind, "path" => "served_for_peer").increment(1);
    match local.run(request).instrument(span).await.and_then(|answer| serde_json::to_vec(&answer).map_err(|e| ActorError::Unavailable(e.to_string()))) {
        Ok(bytes) => RemoteReply::Ok(bytes),
        Err(e) => RemoteReply::error(&e),
    }
}

/// Answers a [`RemoteFrame::ModelList`].
pub(super) async fn list_models(inner: &Inner) -> RemoteReply {
    let names = match inner.local_models.get() {
        Some(local) => local.models().await,
        None => Vec::new(),
    };
    RemoteReply::Ok(serde_json::to_vec(&names).unwrap_or_default())
}

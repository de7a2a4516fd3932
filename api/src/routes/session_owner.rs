//! Where a session request is served: desktops live on the nodes with the `desktop` role, and
//! a session only on the node that runs it. A node that cannot serve a request passes it, once,
//! to the node that can, over HTTP with the caller's own key (keys are the region's: the other
//! node checks it again), and answers with what that node answered.
//!
//! - Creation on a node without desktops goes to a live desktop node of the region, taken in
//!   turn.
//! - Reads, transitions and screenshots of a session that another live node runs go to that
//!   node (its record in the canon names it).
//! - A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again: a view in
//!   flux answers 503 rather than bouncing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use vcos_actors::ActorError;
use vcos_cluster::{Member, MemberState};
use vcos_gpu_workers::desktop::record::session_key;
use vcos_gpu_workers::desktop::SessionRecord;

use crate::error::ApiError;
use crate::AppState;

/// Marks a request one node passed to another.
pub(crate) const FORWARDED_HEADER: &str = "x-vcos-forwarded";
/// How long a forwarded request may take (a cold desktop start is well under it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

static TURN: AtomicU64 = AtomicU64::new(0);

/// Whether this request was passed on by another node already.
pub(crate) fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

fn alive_http(m: &Member) -> bool {
    m.state == MemberState::Alive && !m.http_addr.is_empty()
}

/// A live desktop node of this region other than this one, taken in turn; `None` outside a
/// cluster or when there is none.
pub(crate) fn desktop_node(state: &AppState) -> Option<Member> {
    let cluster = state.cluster.as_ref()?;
    let me = cluster.node_id();
    let all = cluster.members();
    let region = all.iter().find(|m| m.node_id == me).map(|m| m.region.clone());
    let near: Vec<Member> = all
        .into_iter()
        .filter(|m| m.node_id != me && alive_http(m) && m.roles.iter().any(|r| r == "desktop") && region.as_deref().is_none_or(|r| m.region == r))
        .collect();
    if near.is_empty() {
        return None;
    }
    let turn = TURN.fetch_add(1, Ordering::Relaxed) as usize;
    near.get(turn % near.len()).cloned()
}

/// The session's record in the canon (any node of its region holds it).
pub(crate) fn session_record(state: &AppState, tenant: &str, id: u64) -> Result<Option<SessionRecord>, ApiError> {
    let bytes = state.runtime.store().get(&session_key(tenant, id)).map_err(|e| ApiError::Actor(ActorError::Store(e.to_string())))?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The live member that runs the session, when it is not this node.
pub(crate) fn session_node(state: &AppState, record: &SessionRecord) -> Option<Member> {
    let cluster = state.cluster.as_ref()?;
    if record.node == cluster.node_id() {
        return None;
    }
    cluster.members().into_iter().find(|m| m.node_id == record.node && alive_http(m))
}

/// One client for every forwarded request: its connections to the other nodes are kept and
/// reused rather than opened per request.
fn forward_client() -> Result<&'static reqwest::Client, reqwest::Error> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder().timeout(FORWARD_TIMEOUT).build()?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Sends the request to `node` with the caller's key and answers with its answer.
pub(crate) async fn forward(node: &Member, method: Method, path: &str, headers: &HeaderMap, body: Option<Vec<u8>>) -> Result<Response, ApiError> {
    let unavailable = |why: String| ApiError::Actor(ActorError::Unavailable(format!("node {} ({}): {why}", node.node_id, node.http_addr)));
    let client = forward_client().map_err(|e| unavailable(e.to_string()))?;
    let mut request = client.request(method, format!("http://{}{path}", node.http_addr)).header(FORWARDED_HEADER, "1");
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.as_bytes());
    }
    if let Some(body) = body {
        request = request.header(header::CONTENT_TYPE, "application/json").body(body);
    }
    metrics::counter!("vcos_sessions_forwarded_total").increment(1);
    let answer = request.send().await.map_err(|e| unavailable(format!("not reached ({e}); retry")))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes().to_vec());
    let bytes = answer.bytes().await.map_err(|e| unavailable(format!("answer cut short ({e})")))?;
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    response.body(Body::from(bytes)).map_err(|e| ApiError::Internal(e.to_string()))
}

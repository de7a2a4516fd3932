//! Desktop session routes: create, list, get, pause, resume, terminate, screenshot.
//!
//! A session is a real Xvfb desktop run by a desktop node's host (`vcos up --desktops`); its
//! record lives in the canon, so any node reads it. Any node takes any request: creation on a
//! node without desktops, and anything asked of a session another node runs, is passed to the
//! node that can serve it (`session_owner`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vcos_actors::ActorError;
use vcos_gpu_workers::desktop::{CreateSession, DesktopTier, Desktops, SessionRecord, Workspace};

use super::readable_tenant;
use super::session_owner::{desktop_node, forward, forwarded, session_node, session_record};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, SessionPath, TenantPath, WorkspacePath};
use crate::AppState;

/// Arguments of an application command line, at most.
const APP_ARGS_MAX: usize = 64;
/// Bytes of one argument, at most.
const APP_ARG_LEN_MAX: usize = 4_096;

/// A desktop tier.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DesktopTierName {
    /// 1024×768, 512 MiB, a quarter core; the basic rate.
    Basic,
    /// 1280×720, 1 GiB, half a core; twice the basic rate.
    Standard,
    /// 1920×1080, 2 GiB, a core; four times the basic rate (pro and enterprise tenants).
    Pro,
}

impl From<DesktopTierName> for DesktopTier {
    fn from(t: DesktopTierName) -> Self {
        match t {
            DesktopTierName::Basic => Self::Basic,
            DesktopTierName::Standard => Self::Standard,
            DesktopTierName::Pro => Self::Pro,
        }
    }
}

/// A session to create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSessionBody {
    /// `basic` (1024×768), `standard` (1280×720) or `pro` (1920×1080, pro and enterprise
    /// tenants).
    tier: DesktopTierName,
    /// A command line started inside the desktop (`["xterm"]`): program, then arguments.
    #[schema(max_items = 64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<Vec<String>>,
    /// Serve the desktop over VNC; the password comes back once, in this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    vnc: Option<bool>,
}

impl CreateSessionBody {
    fn into_request(self) -> Result<CreateSession, ApiError> {
        if let Some(app) = &self.app {
            if app.len() > APP_ARGS_MAX || app.iter().any(|a| a.len() > APP_ARG_LEN_MAX || a.contains('\0')) {
                return Err(ApiError::BadRequest(format!("field `app`: at most {APP_ARGS_MAX} arguments of at most {APP_ARG_LEN_MAX} bytes, no NUL")));
            }
        }
        Ok(CreateSession { tier: DesktopTier::from(self.tier), app: self.app, vnc: self.vnc.unwrap_or(false), workspace: None })
    }
}

/// How to reach a session over VNC.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct VncView {
    /// The address its VNC server listens on (on the node that runs it).
    host: String,
    /// Its port.
    port: u16,
    /// The password: only in the answer to the creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// One restart of a session's desktop.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RestartView {
    /// When (unix ms).
    at_ms: u64,
    /// Why the desktop had ended.
    reason: String,
}

/// A desktop session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SessionView {
    /// Its id.
    id: u64,
    /// Its tenant.
    tenant: String,
    /// Its tier.
    tier: String,
    /// `genesis`, `active`, `paused` or `terminated`.
    state: String,
    /// The node running it.
    node: u64,
    /// Its X display number while it has one.
    display: Option<u32>,
    /// Screen width, height and depth of its tier.
    screen: [u16; 3],
    /// The application started in it.
    app: Option<Vec<String>>,
    /// Its VNC endpoint, if it serves one.
    vnc: Option<VncView>,
    /// Its workspace.
    workspace: Option<u64>,
    /// How resource limits are enforced (`rlimit`).
    limits: String,
    /// Memory limit of each process, bytes.
    memory_limit_bytes: u64,
    /// CPU share, thousandths of a core.
    cpu_millicores: u64,
    /// Created (unix ms).
    created_ms: u64,
    /// Last recorded (unix ms).
    updated_ms: u64,
    /// Start to ready, ms.
    start_ms: u64,
    /// Whether it started from the warm pool.
    warm: bool,
    /// Active wall time metered, ms.
    active_ms: u64,
    /// CPU time metered, ms.
    cpu_ms: u64,
    /// Desktop seconds charged to the tenant (at the basic rate: the tier's multiplier applied).
    billed_desktop_seconds: u64,
    /// Restarts by its supervisor, in all.
    restart_count: u32,
    /// The latest restarts.
    restarts: Vec<RestartView>,
    /// Why it ended.
    reason: Option<String>,
}

impl SessionView {
    fn of(r: SessionRecord, password: Option<String>) -> Self {
        let (w, h, d) = r.tier.screen();
        Self {
            id: r.id,
            tenant: r.tenant,
            tier: r.tier.name().to_owned(),
            state: r.state.name().to_owned(),
            node: r.node,
            display: r.display,
            screen: [w, h, u16::from(d)],
            app: r.app,
            vnc: r.vnc.map(|v| VncView { host: v.host, port: v.port, password }),
            workspace: r.workspace,
            limits: r.limits,
            memory_limit_bytes: r.tier.memory_bytes(),
            cpu_millicores: r.tier.cpu_millicores(),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            start_ms: r.start_ms,
            warm: r.warm,
            active_ms: r.active_ms,
            cpu_ms: r.cpu_ms,
            billed_desktop_seconds: r.billed_desktop_seconds,
            restart_count: r.restart_count,
            restarts: r.restarts.into_iter().map(|n| RestartView { at_ms: n.at_ms, reason: n.reason }).collect(),
            reason: r.reason,
        }
    }
}

/// A tenant's sessions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SessionList {
    /// Oldest first.
    sessions: Vec<SessionView>,
}

fn host(state: &AppState) -> Result<&Desktops, ApiError> {
    state.desktops.as_ref().ok_or_else(|| {
        ApiError::Actor(ActorError::Unavailable("this node runs no desktops: start it with `vcos up --desktops` (Xvfb installed: `apt-get install xvfb`)".into()))
    })
}

/// Starts a desktop session: a real Xvfb display at the tier's resolution (from the warm pool
/// when one is ready), the application inside it, VNC if asked.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/sessions", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = CreateSessionBody,
    responses((status = 404, description = "`not_found`: no such tenant or session", body = ErrorBody), 
        (status = 201, description = "Active", body = SessionView),
        (status = 400, description = "`bad_request`: an unknown tier, an empty or oversized command line, an application that cannot start", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: the tier is not allowed for the tenant", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant has its most live sessions", body = ErrorBody),
        (status = 500, description = "`store_error`: the canon did not take the record", body = ErrorBody),
        (status = 503, description = "`unavailable`: this node runs no desktops, no display is free, or Xvfb failed to start", body = ErrorBody),
    ))]
pub(super) async fn create_session(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    Auth(caller): Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if state.desktops.is_none() && !forwarded(&headers) {
        // Desktops live on desktop nodes: the session is made on one of them.
        if let Some(node) = desktop_node(&state) {
            let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
            return forward(&node, Method::POST, &format!("/v1/tenants/{tenant}/sessions"), &headers, Some(bytes)).await;
        }
    }
    let request = body.into_request()?;
    let (record, password) = host(&state)?.create(&tenant, request).await?;
    Ok((StatusCode::CREATED, Json(SessionView::of(record, password))).into_response())
}

/// Serves `path` for the session here, or passes it to the live node that runs it.
async fn on_its_node(state: &AppState, tenant: &vcos_actors::TenantId, id: u64, headers: &HeaderMap, method: Method, path: &str) -> Result<Option<Response>, ApiError> {
    if forwarded(headers) {
        return Ok(None);
    }
    let runs_here = state.desktops.as_ref().is_some_and(|d| d.get(tenant, id).is_ok_and(|r| state.cluster.as_ref().is_none_or(|c| r.node == c.node_id())));
    if runs_here {
        return Ok(None);
    }
    let Some(record) = session_record(state, tenant.as_str(), id)? else { return Ok(None) };
    match session_node(state, &record) {
        Some(node) => forward(&node, method, path, headers, None).await.map(Some),
        None => Ok(None),
    }
}

/// A session's record when this node runs no desktops: the canon's.
fn recorded(state: &AppState, tenant: &vcos_actors::TenantId, id: u64) -> Result<SessionRecord, ApiError> {
    match &state.desktops {
        Some(desktops) => Ok(desktops.get(tenant, id)?),
        None => session_record(state, tenant.as_str(), id)?.ok_or_else(|| ApiError::Actor(ActorError::NotFound { what: "session", key: format!("{tenant}/{id}") })),
    }
}

/// A tenant's sessions, oldest first (terminated ones included, with their usage).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/sessions", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 404, description = "`not_found`: no such tenant or session", body = ErrorBody), (status = 200, description = "The sessions", body = SessionList), (status = 500, description = "`store_error`: the canon could not be read", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops", body = ErrorBody)))]
pub(super) async fn list_sessions(State(state): State<AppState>, TenantPath(tenant): TenantPath, Auth(caller): Auth) -> Result<Json<SessionList>, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    let sessions = host(&state)?.list(&tenant)?.into_iter().map(|r| SessionView::of(r, None)).collect();
    Ok(Json(SessionList { sessions }))
}

/// One session: state, node, display, usage, restarts.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/sessions/{id}", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Session id")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 200, description = "The session", body = SessionView), (status = 404, description = "`not_found`: no such session", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops, or the session runs on another node (named)", body = ErrorBody)))]
pub(super) async fn get_session(State(state): State<AppState>, SessionPath(tenant, id): SessionPath, Auth(caller): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if let Some(answer) = on_its_node(&state, &tenant, id, &headers, Method::GET, &format!("/v1/tenants/{tenant}/sessions/{id}")).await? {
        return Ok(answer);
    }
    Ok(Json(SessionView::of(recorded(&state, &tenant, id)?, None)).into_response())
}

/// Pauses a session: every process of its desktop stopped (SIGSTOP), memory kept; its display
/// does not answer until resumed. Paused time is not billed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/sessions/{id}/pause", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Session id")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 200, description = "Paused", body = SessionView), (status = 409, description = "`conflict`: not active", body = ErrorBody), (status = 404, description = "`not_found`: no such session", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops, or the session runs on another node (named)", body = ErrorBody), (status = 429, description = "`queue_full`: too many commands waiting for the session", body = ErrorBody)))]
pub(super) async fn pause_session(State(state): State<AppState>, SessionPath(tenant, id): SessionPath, Auth(caller): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if let Some(answer) = on_its_node(&state, &tenant, id, &headers, Method::POST, &format!("/v1/tenants/{tenant}/sessions/{id}/pause")).await? {
        return Ok(answer);
    }
    Ok(Json(SessionView::of(host(&state)?.pause(&tenant, id).await?, None)).into_response())
}

/// Resumes a paused session (SIGCONT): its display answers again.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/sessions/{id}/resume", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Session id")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 200, description = "Active", body = SessionView), (status = 409, description = "`conflict`: not paused", body = ErrorBody), (status = 404, description = "`not_found`: no such session", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops, or the session runs on another node (named)", body = ErrorBody), (status = 429, description = "`queue_full`: too many commands waiting for the session", body = ErrorBody)))]
pub(super) async fn resume_session(State(state): State<AppState>, SessionPath(tenant, id): SessionPath, Auth(caller): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if let Some(answer) = on_its_node(&state, &tenant, id, &headers, Method::POST, &format!("/v1/tenants/{tenant}/sessions/{id}/resume")).await? {
        return Ok(answer);
    }
    Ok(Json(SessionView::of(host(&state)?.resume(&tenant, id).await?, None)).into_response())
}

/// Terminates a session: SIGTERM, SIGKILL after a grace period, display released; its usage
/// billed and recorded.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/sessions/{id}/terminate", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Session id")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 200, description = "Terminated", body = SessionView), (status = 409, description = "`conflict`: already terminated", body = ErrorBody), (status = 404, description = "`not_found`: no such session", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops, or the session runs on another node (named)", body = ErrorBody), (status = 429, description = "`queue_full`: too many commands waiting for the session", body = ErrorBody)))]
pub(super) async fn terminate_session(State(state): State<AppState>, SessionPath(tenant, id): SessionPath, Auth(caller): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if let Some(answer) = on_its_node(&state, &tenant, id, &headers, Method::POST, &format!("/v1/tenants/{tenant}/sessions/{id}/terminate")).await? {
        return Ok(answer);
    }
    Ok(Json(SessionView::of(host(&state)?.terminate(&tenant, id).await?, None)).into_response())
}

/// The session's screen as a PNG (the tier's size).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/sessions/{id}/screenshot.png", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Session id")),
    responses((status = 400, description = "`bad_request`: a malformed tenant name or session id, or a body that does not fit its schema", body = ErrorBody), (status = 200, description = "The screen", content_type = "image/png"), (status = 409, description = "`conflict`: not active", body = ErrorBody), (status = 404, description = "`not_found`: no such session", body = ErrorBody), (status = 503, description = "`unavailable`: this node runs no desktops, or the session runs on another node (named)", body = ErrorBody), (status = 429, description = "`queue_full`: too many commands waiting for the session", body = ErrorBody)))]
pub(super) async fn screenshot(State(state): State<AppState>, SessionPath(tenant, id): SessionPath, Auth(caller): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if let Some(answer) = on_its_node(&state, &tenant, id, &headers, Method::GET, &format!("/v1/tenants/{tenant}/sessions/{id}/screenshot.png")).await? {
        return Ok(answer);
    }
    let png = host(&state)?.screenshot(&tenant, id).await?;
    Response::builder()
        .header(header::CONTENT_TYPE, "image/png")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(png))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A workspace to create: its sessions, started together.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWorkspaceBody {
    /// Its name (1 to 128 bytes).
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Its sessions (1 to 16): all start, or none.
    #[schema(min_items = 1, max_items = 16)]
    sessions: Vec<CreateSessionBody>,
}

/// Usage summed over a workspace's sessions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkspaceUsageView {
    /// Active wall time, ms.
    active_ms: u64,
    /// CPU time, ms.
    cpu_ms: u64,
    /// Desktop seconds charged (at the basic rate).
    billed_desktop_seconds: u64,
}

/// A workspace: sessions of one tenant driven as one unit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkspaceView {
    /// Its id.
    id: u64,
    /// Its tenant.
    tenant: String,
    /// Its name.
    name: String,
    /// `active` if any session is, else `paused` if any is, else `terminated`.
    state: String,
    /// Created (unix ms).
    created_ms: u64,
    /// Its sessions.
    sessions: Vec<SessionView>,
    /// The sum of its sessions' usage.
    usage: WorkspaceUsageView,
}

impl WorkspaceView {
    fn of(w: Workspace, passwords: Vec<Option<String>>) -> Self {
        let usage = w.usage();
        let state = w.state().name().to_owned();
        let mut passwords = passwords.into_iter();
        Self {
            id: w.record.id,
            tenant: w.record.tenant,
            name: w.record.name,
            state,
            created_ms: w.record.created_ms,
            sessions: w.sessions.into_iter().map(|s| SessionView::of(s, passwords.next().flatten())).collect(),
            usage: WorkspaceUsageView { active_ms: usage.active_ms, cpu_ms: usage.cpu_ms, billed_desktop_seconds: usage.billed_desktop_seconds },
        }
    }
}

/// Creates a workspace and starts its sessions (all, or none).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workspaces", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = CreateWorkspaceBody,
    responses(
        (status = 201, description = "Its sessions active", body = WorkspaceView),
        (status = 400, description = "`bad_request`: a malformed tenant name, a body that does not fit its schema, an application that cannot start", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: a tier not allowed for the tenant", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant would have too many live sessions", body = ErrorBody),
        (status = 500, description = "`store_error`: the canon did not take a record", body = ErrorBody),
        (status = 503, description = "`unavailable`: this node runs no desktops, or a desktop failed to start", body = ErrorBody),
    ))]
pub(super) async fn create_workspace(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateWorkspaceBody>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    let requests = body.sessions.into_iter().map(CreateSessionBody::into_request).collect::<Result<Vec<_>, _>>()?;
    let (workspace, passwords) = host(&state)?.create_workspace(&tenant, &body.name, requests).await?;
    Ok((StatusCode::CREATED, Json(WorkspaceView::of(workspace, passwords))))
}

/// A workspace, its sessions and their summed usage.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/workspaces/{id}", tag = "sessions",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceView),
        (status = 400, description = "`bad_request`: a malformed tenant name or workspace id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or workspace", body = ErrorBody),
        (status = 500, description = "`store_error`: the canon could not be read", body = ErrorBody),
        (status = 503, description = "`unavailable`: this node runs no desktops", body = ErrorBody),
    ))]
pub(super) async fn get_workspace(State(state): State<AppState>, WorkspacePath(tenant, id): WorkspacePath, Auth(caller): Auth) -> Result<Json<WorkspaceView>, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    Ok(Json(WorkspaceView::of(host(&state)?.workspace(&tenant, id)?, Vec::new())))
}

macro_rules! workspace_action {
    ($name:ident, $method:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "sessions",
            params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Workspace id")),
            responses(
                (status = 200, description = "Done for every session it applies to", body = WorkspaceView),
                (status = 400, description = "`bad_request`: a malformed tenant name or workspace id", body = ErrorBody),
                (status = 404, description = "`not_found`: no such tenant or workspace", body = ErrorBody),
                (status = 409, description = "`conflict`: no session of the workspace is in a state it applies to", body = ErrorBody),
                (status = 429, description = "`queue_full`: too many commands waiting for a session", body = ErrorBody),
                (status = 500, description = "`store_error`: the canon did not take a record", body = ErrorBody),
                (status = 503, description = "`unavailable`: this node runs no desktops, or a session runs on another node", body = ErrorBody),
            ))]
        pub(super) async fn $name(State(state): State<AppState>, WorkspacePath(tenant, id): WorkspacePath, Auth(caller): Auth) -> Result<Json<WorkspaceView>, ApiError> {
            readable_tenant(&state, &tenant, &caller)?;
            Ok(Json(WorkspaceView::of(host(&state)?.$method(&tenant, id).await?, Vec::new())))
        }
    };
}

workspace_action!(pause_workspace, pause_workspace, "/v1/tenants/{tenant}/workspaces/{id}/pause", "Pauses every active session of the workspace.");
workspace_action!(resume_workspace, resume_workspace, "/v1/tenants/{tenant}/workspaces/{id}/resume", "Resumes every paused session of the workspace.");
workspace_action!(terminate_workspace, terminate_workspace, "/v1/tenants/{tenant}/workspaces/{id}/terminate", "Terminates every session of the workspace; its usage stays summed in its view.");

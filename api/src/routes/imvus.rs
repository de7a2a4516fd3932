//! IMVU routes.
//!
//! Who may do what: lifecycle calls (create, pause, resume, terminate) are decided by the
//! runtime's 55-45-17 handshake, which records its verdict in the IMVU's history; reads and
//! messages of a tenant with a key need that key (checked here, `forbidden`), since they are
//! not lifecycle transitions and the handshake does not see them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::{ImvuKey, Transition};

use super::readable_tenant;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, ImvuPath, TenantPath};
use crate::wire::{CreateImvuRequest, History, HistoryEntry, ImvuView, MessageReply, MessageRequest};
use crate::AppState;

/// Creates an IMVU of a kind; the handshake admits `create` and `activate` first.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/imvus",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = CreateImvuRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Created and active", body = ImvuView),
        (status = 400, description = "`bad_request`: malformed JSON, a missing, wrong or unknown field, an invalid tenant name; \
            `unknown_kind`: no such kind on this node (the kind is part of the body, hence 400)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: a handshake stage (55, 45 or 17) refused; the message names it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: a mailbox or the canon store is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn create_imvu(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<CreateImvuRequest>,
) -> Result<(StatusCode, Json<ImvuView>), ApiError> {
    let info = match &state.cluster {
        Some(cluster) => cluster.create(&tenant, &request.kind, &caller).await?,
        None => state.runtime.create_imvu(&tenant, &request.kind, &caller).await?,
    };
    Ok((StatusCode::CREATED, Json(with_placement(&state, info))))
}

/// State, lifecycle and held messages of an IMVU.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/imvus/{id}",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The IMVU", body = ImvuView),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 429, description = "`queue_full`: the IMVU's mailbox is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon could not be read; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn get_imvu(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
) -> Result<Json<ImvuView>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let info = match &state.cluster {
        Some(cluster) => cluster.inspect(&key, &caller).await?,
        None => state.runtime.inspect(&key).await?,
    };
    Ok(Json(with_placement(&state, info)))
}

/// Sends a message and waits for the reply. A paused IMVU holds the message (the request
/// waits) until it is resumed; held messages run in order.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/imvus/{id}/messages",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    request_body = MessageRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The IMVU's reply", body = MessageReply),
        (status = 400, description = "`bad_request`: malformed JSON, missing `message`, a message the kind does not take, \
            invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 409, description = "`terminated`: the IMVU takes no more messages; `illegal_transition`: it is not active yet", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the mailbox, or the paused IMVU's held queue, is full; retry", body = ErrorBody),
        (status = 500, description = "`imvu_crashed`: the handler panicked; its supervisor restarted it from its last durable state. \
            `store_error`: canon did not take the write. `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn send_message(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<MessageRequest>,
) -> Result<Json<MessageReply>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let reply = match &state.cluster {
        Some(cluster) => cluster.ask_json(&key, request.message, &caller).await?,
        None => state.runtime.ask_json(&key, request.message).await?,
    };
    Ok(Json(MessageReply { reply }))
}

async fn transition(state: &AppState, key: &ImvuKey, transition: Transition, caller: &vcos_actors::Caller) -> Result<Json<ImvuView>, ApiError> {
    let info = match &state.cluster {
        Some(cluster) => cluster.transition(key, transition, caller).await?,
        None => state.runtime.transition(key, transition, caller).await?,
    };
    Ok(Json(with_placement(state, info)))
}

/// The view of an IMVU with where it lives (when the node runs placement).
fn with_placement(state: &AppState, info: vcos_actors::ImvuInfo) -> ImvuView {
    let placement = state.cluster.as_ref().map(|cluster| cluster.placement(&info.key));
    let mut view = ImvuView::from(info);
    if let Some(placement) = placement {
        view.placement = Some(crate::wire::PlacementView {
            region: placement.region,
            bucket: placement.bucket,
            owner_node: placement.owner_node,
            lease_epoch: placement.lease_epoch,
        });
    }
    view
}

/// Pauses an active IMVU: messages sent while paused are held, in order.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/imvus/{id}/pause",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Paused", body = ImvuView),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: a handshake stage refused; the message names it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: not active; the message names the current state", body = ErrorBody),
        (status = 429, description = "`queue_full`: the mailbox is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn pause(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
) -> Result<Json<ImvuView>, ApiError> {
    transition(&state, &key, Transition::Pause, &caller).await
}

/// Resumes a paused IMVU; its held messages run first, in order.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/imvus/{id}/resume",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Active again", body = ImvuView),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: a handshake stage refused; the message names it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: not paused; the message names the current state", body = ErrorBody),
        (status = 429, description = "`queue_full`: the mailbox is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
) -> Result<Json<ImvuView>, ApiError> {
    transition(&state, &key, Transition::Resume, &caller).await
}

/// Terminates an IMVU for good; its final state is recorded in its history.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/imvus/{id}/terminate",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Terminated", body = ImvuView),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`handshake_refused`: a handshake stage refused; the message names it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: already terminated", body = ErrorBody),
        (status = 429, description = "`queue_full`: the mailbox is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn terminate(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
) -> Result<Json<ImvuView>, ApiError> {
    transition(&state, &key, Transition::Terminate, &caller).await
}

/// The IMVU's recorded history in canon order: every transition with the handshake's verdict,
/// every crash with the supervisor's decision.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/imvus/{id}/history",
    tag = "imvus",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "IMVU id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Events, oldest first", body = History),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or IMVU", body = ErrorBody),
        (status = 500, description = "`store_error`: canon could not be read; `internal`: a bug", body = ErrorBody),
    )
)]
pub(super) async fn history(
    State(state): State<AppState>,
    ImvuPath(key): ImvuPath,
    Auth(caller): Auth,
) -> Result<Json<History>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    // One bounded scan of the local replica, on this task: a blocking thread would race real
    // threads against the simulator's time (it made 1 in ~1,500 `durability-raft` seeds
    // replay differently).
    let events = state.runtime.history(&key)?;
    Ok(Json(History { events: events.into_iter().map(HistoryEntry::from).collect() }))
}

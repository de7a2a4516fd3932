//! Swarm routes: create and inspect swarms, submit work, read credits, shared memory, votes.
//!
//! Who may do what: every swarm route of a tenant with a key needs that key (checked here,
//! `forbidden`), reads and writes alike; creating a swarm also runs the handshake for each
//! member IMVU it creates. Validation of specs, votes and ballots is the runtime's; this module
//! bounds only what the HTTP layer owns (items per request, id path segments).
//!
//! Deliberate absence: no listing of a tenant's swarms (the runtime offers none yet); clients
//! keep the id that creation returns.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::readable_tenant;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, MemoryKeyPath, SwarmPath, TenantPath, VotePath};
use crate::wire::{
    BallotRequest, CreditEntry, Credits, MemoryValue, OpenVoteRequest, SubmitWorkRequest, SubmittedWork, SwarmSpecBody, SwarmView,
    VoteView,
};
use crate::AppState;
use vcos_actors::swarm::{SwarmCall, SwarmInfo, VoteRecord};
use vcos_actors::{Caller, SwarmKey};

/// Runs `call` on the swarm's coordinator: on this node, or (in a cluster) on the node that
/// holds the swarm's bucket, which starts it from canon if the bucket moved there.
async fn coordinator_call<T: serde::de::DeserializeOwned>(state: &AppState, key: &SwarmKey, call: SwarmCall, caller: &Caller) -> Result<T, ApiError> {
    let answer = match &state.cluster {
        Some(cluster) => cluster.swarm(key, &call, caller).await?,
        None => state.runtime.swarm_call(key, call).await?,
    };
    serde_json::from_value(answer).map_err(|e| ApiError::Internal(format!("unreadable swarm answer: {e}")))
}

/// Most work items one request may submit.
pub(crate) const WORK_ITEMS_PER_REQUEST_MAX: usize = 10_000;

/// Creates a swarm: its member IMVUs (each admitted by the handshake), its record, its
/// coordinator. Members start pulling work at once.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/swarms",
    tag = "swarms",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = SwarmSpecBody,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Created and running", body = SwarmView),
        (status = 400, description = "`bad_request`: malformed JSON, a wrong or unknown field, an invalid spec (the message names \
            the field: `members`, `member_kind`, `member_swarms`, `max_in_flight_per_member`, `max_attempts`), an invalid tenant name; \
            `unknown_kind`: no such member kind on this node", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it; \
            `handshake_refused`: the handshake refused a member's creation (e.g. the tenant's quota)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: a mailbox or the canon store is full; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn create_swarm(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    Auth(caller): Auth,
    ApiJson(spec): ApiJson<SwarmSpecBody>,
) -> Result<(StatusCode, Json<SwarmView>), ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    if u64::from(spec.members) + spec.member_swarms.len() as u64 > u64::from(u32::MAX) {
        return Err(ApiError::BadRequest("field `members`: too many members".into()));
    }
    let info = state.runtime.create_swarm(&tenant, spec.into(), &caller).await?;
    tracing::info!(swarm = %info.key, members = info.members.len(), "swarm created");
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Spec, members, status and progress of a swarm.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/swarms/{id}",
    tag = "swarms",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Swarm id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The swarm", body = SwarmView),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or swarm", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn get_swarm(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    Auth(caller): Auth,
) -> Result<Json<SwarmView>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let info: SwarmInfo = coordinator_call(&state, &key, SwarmCall::Info, &caller).await?;
    Ok(Json(info.into()))
}

/// Queues work items, each a message for the member kind; durable before the reply. Members
/// pull them; `GET …/swarms/{id}` shows progress and `…/credits` who did what.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/swarms/{id}/work",
    tag = "swarms",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Swarm id")),
    request_body = SubmitWorkRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Queued; ids in submission order", body = SubmittedWork),
        (status = 400, description = "`bad_request`: malformed JSON, missing or unknown field, `items` empty or over 10 000, \
            invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or swarm", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the swarm holds too many open items, or canon is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the swarm has failed, or the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn submit_work(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<SubmitWorkRequest>,
) -> Result<(StatusCode, Json<SubmittedWork>), ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let count = request.items.len();
    if !(1..=WORK_ITEMS_PER_REQUEST_MAX).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "field `items`: 1..={WORK_ITEMS_PER_REQUEST_MAX} items per request (got {count})"
        )));
    }
    let item_ids: Vec<u64> = coordinator_call(&state, &key, SwarmCall::Submit { items: request.items }, &caller).await?;
    Ok((StatusCode::ACCEPTED, Json(SubmittedWork { item_ids })))
}

/// Who completed which item, with its result: one record per completed item, in item order.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/swarms/{id}/credits",
    tag = "swarms",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Swarm id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Credit records", body = Credits),
        (status = 400, description = "`bad_request`: invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or swarm", body = ErrorBody),
        (status = 500, description = "`store_error`: canon could not be read; `internal`: a bug", body = ErrorBody),
    )
)]
pub(super) async fn credits(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    Auth(caller): Auth,
) -> Result<Json<Credits>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let records = state.runtime.swarm_credits(&key).await?;
    Ok(Json(Credits { credits: records.into_iter().map(CreditEntry::from).collect() }))
}

/// Writes a value into the swarm's shared memory; durable before the reply.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/swarms/{id}/memory/{key}",
    tag = "swarms",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("id" = u64, Path, description = "Swarm id"),
        ("key" = String, Path, description = "Memory key: 1..=256 bytes, no `/`"),
    ),
    request_body = MemoryValue,
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "`bad_request`: malformed JSON, missing `value`, an unknown field, an invalid key, \
            invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or swarm", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the canon store is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
    )
)]
pub(super) async fn memory_put(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    MemoryKeyPath(name): MemoryKeyPath,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<MemoryValue>,
) -> Result<StatusCode, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    state.runtime.swarm_memory_put(&key, &name, body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a value of the swarm's shared memory.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/swarms/{id}/memory/{key}",
    tag = "swarms",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("id" = u64, Path, description = "Swarm id"),
        ("key" = String, Path, description = "Memory key: 1..=256 bytes, no `/`"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The value", body = MemoryValue),
        (status = 400, description = "`bad_request`: an invalid key, invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant, swarm or memory key", body = ErrorBody),
        (status = 500, description = "`store_error`: canon could not be read; `internal`: a bug", body = ErrorBody),
    )
)]
pub(super) async fn memory_get(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    MemoryKeyPath(name): MemoryKeyPath,
    Auth(caller): Auth,
) -> Result<Json<MemoryValue>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    match state.runtime.swarm_memory_get(&key, &name)? {
        Some(value) => Ok(Json(MemoryValue { value })),
        None => Err(ApiError::NotFound(format!("memory key {name:?} of swarm {key} not found"))),
    }
}

/// Opens a vote among the swarm's members; decided when one option reaches the quorum.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/swarms/{id}/votes",
    tag = "swarms",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Swarm id")),
    request_body = OpenVoteRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Open, no ballots yet", body = VoteView),
        (status = 400, description = "`bad_request`: malformed JSON, a missing, wrong or unknown field, fewer than two `options`, \
            a `quorum` outside 1..=members, invalid tenant name or non-numeric id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or swarm", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the canon store is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn open_vote(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<OpenVoteRequest>,
) -> Result<(StatusCode, Json<VoteView>), ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let call = SwarmCall::OpenVote { proposal: request.proposal, options: request.options, quorum: request.quorum };
    let vote: VoteRecord = coordinator_call(&state, &key, call, &caller).await?;
    Ok((StatusCode::CREATED, Json(vote.into())))
}

/// Casts a member's ballot; the reply shows the decision once an option reaches the quorum.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/swarms/{id}/votes/{vote}/ballots",
    tag = "swarms",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("id" = u64, Path, description = "Swarm id"),
        ("vote" = u64, Path, description = "Vote id"),
    ),
    request_body = BallotRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The vote with this ballot counted", body = VoteView),
        (status = 400, description = "`bad_request`: malformed JSON, a missing, wrong or unknown field, a `member` that is not \
            one of the swarm's, a `choice` that is not an option, invalid tenant name or non-numeric ids", body = ErrorBody),
        (status = 401, description = "`unauthorized`: unknown or malformed bearer key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the tenant has a key and the caller did not present it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant, swarm or vote", body = ErrorBody),
        (status = 409, description = "`conflict`: the vote is already decided", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the canon store is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn cast_ballot(
    State(state): State<AppState>,
    SwarmPath(key): SwarmPath,
    VotePath(vote): VotePath,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<BallotRequest>,
) -> Result<Json<VoteView>, ApiError> {
    readable_tenant(&state, &key.tenant, &caller)?;
    let call = SwarmCall::CastVote { vote, member: request.member.into(), choice: request.choice };
    let record: VoteRecord = coordinator_call(&state, &key, call, &caller).await?;
    Ok(Json(record.into()))
}

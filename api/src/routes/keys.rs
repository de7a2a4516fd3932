//! API keys: a tenant admin manages its tenant's keys under `/v1/tenants/{tenant}/keys`, a
//! cluster admin the cluster's keys under `/v1/keys`. Secrets appear once, in the answer that
//! issues them; listings show ids, roles and times. A key is never issued with a right the
//! issuing key lacks, and a key of another owner is "not found", whoever asks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::auth::key::is_key_id;
use vcos_actors::auth::{KeyRecord, KeyRequest, KeyText, Principal, Role};
use vcos_actors::{ActorError, TenantId};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, TenantPath, Who};
use crate::wire::{IssueKeyRequest, IssuedKey, KeyList, KeyView, RotateKeyRequest, RotatedKey};
use crate::AppState;

/// Longest validity a key may be given (10 years), seconds.
const EXPIRES_IN_S_MAX: u64 = 315_360_000;
/// Longest rotation overlap (30 days), seconds.
const OVERLAP_S_MAX: u64 = 2_592_000;
/// Overlap when the request names none (1 hour), seconds.
const OVERLAP_S_DEFAULT: u64 = 3_600;
/// Keys listed at most.
const KEYS_LISTED_MAX: usize = 1_000;

/// Issues a key of `owner` (`None`: the cluster) for `who`.
pub(crate) async fn issue(state: &AppState, owner: Option<&TenantId>, who: &Principal, request: IssueKeyRequest) -> Result<IssuedKey, ApiError> {
    let role = Role::from(request.role);
    if !who.role.covers(role) {
        return Err(ApiError::Forbidden(format!("a {} key may not issue a {role} key (it would hold rights the issuer lacks)", who.role)));
    }
    let ttl_ms = expires_in_ms(request.expires_in_s)?;
    let request = KeyRequest { tenant: owner.cloned(), role, name: request.name, ttl_ms, issued_by: Some(who.key_id.clone()) };
    let (record, text) = state.runtime.keys().issue(request).await?;
    tracing::info!(key_id = %record.id, role = %record.role, tenant = ?record.tenant, by = %who.key_id, "key issued");
    Ok(issued(state, &record, &text))
}

fn issued(state: &AppState, record: &KeyRecord, text: &KeyText) -> IssuedKey {
    IssuedKey { key: text.expose().to_owned(), record: KeyView::new(record, state.runtime.clock().unix_ms()) }
}

fn expires_in_ms(expires_in_s: Option<u64>) -> Result<Option<u64>, ApiError> {
    match expires_in_s {
        None => Ok(None),
        Some(s) if (1..=EXPIRES_IN_S_MAX).contains(&s) => Ok(Some(s * 1_000)),
        Some(s) => Err(ApiError::BadRequest(format!("field `expires_in_s`: 1..={EXPIRES_IN_S_MAX} seconds (got {s})"))),
    }
}

/// The record of key `id` if it belongs to `owner`; "not found" otherwise (another owner's key
/// looks like no key).
fn owned(state: &AppState, owner: Option<&TenantId>, id: &str) -> Result<KeyRecord, ApiError> {
    let missing = || ApiError::Actor(ActorError::NotFound { what: "key", key: id.to_owned() });
    if !is_key_id(id) {
        return Err(ApiError::BadRequest(format!("path segment `key_id`: key ids are 16 lowercase hex digits (got {} characters)", id.len())));
    }
    let record = state.runtime.keys().get(id)?.ok_or_else(missing)?;
    if record.tenant.as_ref() != owner {
        return Err(missing());
    }
    Ok(record)
}

fn list(state: &AppState, owner: Option<&TenantId>) -> Result<KeyList, ApiError> {
    let now = state.runtime.clock().unix_ms();
    let keys = state.runtime.keys().list(owner, KEYS_LISTED_MAX)?;
    Ok(KeyList { keys: keys.iter().map(|r| KeyView::new(r, now)).collect() })
}

async fn revoke(state: &AppState, owner: Option<&TenantId>, who: &Principal, id: &str) -> Result<KeyView, ApiError> {
    owned(state, owner, id)?;
    let record = state.runtime.keys().revoke(id).await?;
    tracing::info!(key_id = %id, by = %who.key_id, "key revoked");
    Ok(KeyView::new(&record, state.runtime.clock().unix_ms()))
}

async fn rotate(state: &AppState, owner: Option<&TenantId>, who: &Principal, id: &str, request: RotateKeyRequest) -> Result<RotatedKey, ApiError> {
    let record = owned(state, owner, id)?;
    if !who.role.covers(record.role) {
        return Err(ApiError::Forbidden(format!("a {} key may not rotate a {} key", who.role, record.role)));
    }
    let overlap_s = request.overlap_s.unwrap_or(OVERLAP_S_DEFAULT);
    if overlap_s > OVERLAP_S_MAX {
        return Err(ApiError::BadRequest(format!("field `overlap_s`: at most {OVERLAP_S_MAX} seconds (got {overlap_s})")));
    }
    let ttl_ms = expires_in_ms(request.expires_in_s)?;
    let (old, new, text) = state.runtime.keys().rotate(id, overlap_s * 1_000, ttl_ms, Some(who.key_id.clone())).await?;
    tracing::info!(old = %old.id, new = %new.id, overlap_s, by = %who.key_id, "key rotated");
    Ok(RotatedKey { old: KeyView::new(&old, state.runtime.clock().unix_ms()), new: issued(state, &new, &text) })
}

/// Issues a key of the tenant.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/keys",
    tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = IssueKeyRequest,
    responses(
        (status = 201, description = "Issued; `key` is shown this once", body = IssuedKey),
        (status = 400, description = "`bad_request`: a cluster role, a bad name or validity", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: the tenant holds the most keys allowed", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn issue_tenant_key(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    Who(who): Who,
    ApiJson(request): ApiJson<IssueKeyRequest>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    state.runtime.tenant_or_load(&tenant)?;
    Ok((StatusCode::CREATED, Json(issue(&state, Some(&tenant), &who, request).await?)))
}

/// The tenant's keys (ids, roles, times; never secrets).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/keys",
    tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "Keys, revoked and expired ones included", body = KeyList),
        (status = 400, description = "`bad_request`: a malformed tenant name", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    )
)]
pub(super) async fn list_tenant_keys(State(state): State<AppState>, TenantPath(tenant): TenantPath) -> Result<Json<KeyList>, ApiError> {
    state.runtime.tenant_or_load(&tenant)?;
    Ok(Json(list(&state, Some(&tenant))?))
}

/// One key of the tenant.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/keys/{key_id}",
    tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"), ("key_id" = String, Path, description = "Key id (16 hex digits)")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 400, description = "`bad_request`: a malformed tenant name or key id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key of this tenant", body = ErrorBody),
    )
)]
pub(super) async fn get_tenant_key(State(state): State<AppState>, Path((tenant, id)): Path<(String, String)>) -> Result<Json<KeyView>, ApiError> {
    let tenant = TenantId::new(&tenant)?;
    let record = owned(&state, Some(&tenant), &id)?;
    Ok(Json(KeyView::new(&record, state.runtime.clock().unix_ms())))
}

/// Revokes a key of the tenant, at once on this node and within a second on the others.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/keys/{key_id}",
    tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"), ("key_id" = String, Path, description = "Key id (16 hex digits)")),
    responses(
        (status = 200, description = "Revoked (revoking a revoked key changes nothing)", body = KeyView),
        (status = 400, description = "`bad_request`: a malformed tenant name or key id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key of this tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: the key changed meanwhile; retry", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn revoke_tenant_key(
    State(state): State<AppState>,
    Who(who): Who,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<KeyView>, ApiError> {
    let tenant = TenantId::new(&tenant)?;
    Ok(Json(revoke(&state, Some(&tenant), &who, &id).await?))
}

/// Replaces a key of the tenant by a new one with the same role; the old one stays valid for
/// `overlap_s`.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/keys/{key_id}/rotate",
    tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"), ("key_id" = String, Path, description = "Key id (16 hex digits)")),
    request_body = RotateKeyRequest,
    responses(
        (status = 201, description = "The new key (shown this once) and the old one's end", body = RotatedKey),
        (status = 400, description = "`bad_request`: a malformed id, overlap or validity", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key of this tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: the key is no longer valid, or changed meanwhile", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn rotate_tenant_key(
    State(state): State<AppState>,
    Who(who): Who,
    Path((tenant, id)): Path<(String, String)>,
    ApiJson(request): ApiJson<RotateKeyRequest>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    let tenant = TenantId::new(&tenant)?;
    Ok((StatusCode::CREATED, Json(rotate(&state, Some(&tenant), &who, &id, request).await?)))
}

/// Issues a cluster key (`cluster_admin` or `metrics`).
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body = IssueKeyRequest,
    responses(
        (status = 201, description = "Issued; `key` is shown this once", body = IssuedKey),
        (status = 400, description = "`bad_request`: a tenant role, a bad name or validity", body = ErrorBody),
        (status = 409, description = "`conflict`: the cluster holds the most keys allowed", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn issue_cluster_key(State(state): State<AppState>, Who(who): Who, ApiJson(request): ApiJson<IssueKeyRequest>) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    Ok((StatusCode::CREATED, Json(issue(&state, None, &who, request).await?)))
}

/// The cluster's keys.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses((status = 200, description = "Keys, revoked and expired ones included", body = KeyList))
)]
pub(super) async fn list_cluster_keys(State(state): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(list(&state, None)?))
}

/// One cluster key.
#[utoipa::path(
    get,
    path = "/v1/keys/{key_id}",
    tag = "keys",
    params(("key_id" = String, Path, description = "Key id (16 hex digits)")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 400, description = "`bad_request`: a malformed key id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such cluster key", body = ErrorBody),
    )
)]
pub(super) async fn get_cluster_key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let record = owned(&state, None, &id)?;
    Ok(Json(KeyView::new(&record, state.runtime.clock().unix_ms())))
}

/// Revokes a cluster key.
#[utoipa::path(
    delete,
    path = "/v1/keys/{key_id}",
    tag = "keys",
    params(("key_id" = String, Path, description = "Key id (16 hex digits)")),
    responses(
        (status = 200, description = "Revoked", body = KeyView),
        (status = 400, description = "`bad_request`: a malformed key id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such cluster key", body = ErrorBody),
        (status = 409, description = "`conflict`: the key changed meanwhile; retry", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn revoke_cluster_key(State(state): State<AppState>, Who(who): Who, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(revoke(&state, None, &who, &id).await?))
}

/// Replaces a cluster key; the old one stays valid for `overlap_s`.
#[utoipa::path(
    post,
    path = "/v1/keys/{key_id}/rotate",
    tag = "keys",
    params(("key_id" = String, Path, description = "Key id (16 hex digits)")),
    request_body = RotateKeyRequest,
    responses(
        (status = 201, description = "The new key (shown this once) and the old one's end", body = RotatedKey),
        (status = 400, description = "`bad_request`: a malformed id, overlap or validity", body = ErrorBody),
        (status = 404, description = "`not_found`: no such cluster key", body = ErrorBody),
        (status = 409, description = "`conflict`: the key is no longer valid, or changed meanwhile", body = ErrorBody),
        (status = 503, description = "`unavailable`: canon has no quorum now; retry", body = ErrorBody),
    )
)]
pub(super) async fn rotate_cluster_key(
    State(state): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RotateKeyRequest>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    Ok((StatusCode::CREATED, Json(rotate(&state, None, &who, &id, request).await?)))
}

//! Tenant routes. A cluster admin creates tenants; the answer carries the new tenant's first
//! `tenant_admin` key (its secret shown this once). Listing shows a cluster key every tenant,
//! a tenant key its own.
//!
//! Erasing one (`DELETE /v1/tenants/{tenant}`, cluster admins only: it cannot be undone)
//! fences it at once and deletes its records in the background (see `vcos_actors::erasure`).
//!
//! Creating a tenant that exists is a 409, not a policy replacement. Creations are serialised
//! by a lock so that two racing creations of one name on this node cannot both succeed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::{TenantId, TenantPolicy, Transition};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, TenantPath, Who};
use crate::wire::{CreateTenantRequest, CreatedTenant, ErasureState, ErasureStatus, IssueKeyRequest, RoleName, TenantList, TenantPolicyRequest};
use crate::AppState;

/// Most kinds a tenant's `allowed_kinds` may list.
const ALLOWED_KINDS_LEN_MAX: usize = 64;
/// Longest kind name in `allowed_kinds`.
const KIND_NAME_LEN_MAX: usize = 64;

/// Names of the tenants the key may see, sorted: every one for a cluster key, its own for a
/// tenant key.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Tenant names", body = TenantList),
        (status = 500, description = "`internal`: a bug in the facade", body = ErrorBody),
    )
)]
pub(super) async fn list_tenants(State(state): State<AppState>, Who(who): Who) -> Json<TenantList> {
    let visible = |t: &TenantId| who.tenant.as_ref().is_none_or(|own| own == t);
    Json(TenantList { tenants: state.runtime.tenants().iter().filter(|t| visible(&t.id)).map(|t| t.id.to_string()).collect() })
}

/// Creates a tenant. The response carries its API key, this once.
#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "Created; `admin_key.key` is returned this once", body = CreatedTenant),
        (status = 400, description = "`bad_request`: malformed JSON, a wrong or unknown field, an invalid name or policy", body = ErrorBody),
        (status = 409, description = "`conflict`: the name or the key is taken", body = ErrorBody),
        (status = 413, description = "`too_large`: body over 1 MiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is declared as something else than JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: the canon store is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: the node is stopping", body = ErrorBody),
    )
)]
pub(super) async fn create_tenant(
    State(state): State<AppState>,
    Who(who): Who,
    ApiJson(request): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    let id = TenantId::new(&request.name).map_err(|e| match e {
        vcos_actors::ActorError::BadRequest { reason, .. } => ApiError::BadRequest(format!("field `name`: {reason}")),
        other => other.into(),
    })?;
    let policy = policy(request.policy)?;
    let _one_at_a_time = state.tenant_creation.lock().await;
    if state.runtime.tenant(&id).is_ok() {
        return Err(ApiError::Conflict(format!("tenant {id} exists")));
    }
    let entry = state.runtime.put_tenant(id, policy).await?;
    let first = IssueKeyRequest { role: RoleName::TenantAdmin, name: Some("first tenant admin".into()), expires_in_s: None };
    let admin_key = super::keys::issue(&state, Some(&entry.id), &who, first).await?;
    tracing::info!(tenant = %entry.id, by = %who.key_id, "tenant created");
    Ok((StatusCode::CREATED, Json(CreatedTenant::new(&entry, admin_key))))
}

/// Erases a tenant: from this answer on nothing of it can be written on any node and its
/// keys are revoked (other nodes stop accepting them within a second); its records (IMVUs
/// with their state and history, swarms, key-value store, usage, audit chain, keys) are then
/// deleted in the background, resumed by another node if this one stops, and the cluster's
/// audit log records the request and the completion. Follow it at the `Location` given.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}",
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 202, description = "Fenced; its records are being deleted", body = ErasureStatus,
            headers(("location" = String, description = "Where the erasure's progress is read"))),
        (status = 400, description = "`bad_request`: an invalid tenant name", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: its erasure is under way already", body = ErrorBody),
        (status = 429, description = "`queue_full`: the canon store is overloaded; retry", body = ErrorBody),
        (status = 500, description = "`store_error`: canon did not take the write; `internal`: a bug", body = ErrorBody),
        (status = 503, description = "`unavailable`: no quorum now, or the node is stopping; retry", body = ErrorBody),
    )
)]
pub(super) async fn erase_tenant(
    State(state): State<AppState>,
    Who(who): Who,
    TenantPath(tenant): TenantPath,
) -> Result<(StatusCode, [(axum::http::HeaderName, String); 1], Json<ErasureStatus>), ApiError> {
    let record = state.runtime.erase_tenant(&tenant, &who.key_id).await?;
    tracing::info!(%tenant, by = %who.key_id, "tenant erasure accepted");
    let location = format!("/v1/tenants/{tenant}/erasure");
    Ok((StatusCode::ACCEPTED, [(axum::http::header::LOCATION, location)], Json(ErasureStatus::erasing(&record))))
}

/// Where a tenant's erasure stands: under way, or no erasure (the tenant is active, or absent:
/// erased or never created).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/erasure",
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "Where it stands", body = ErasureStatus),
        (status = 400, description = "`bad_request`: an invalid tenant name", body = ErrorBody),
        (status = 500, description = "`store_error`: the canon could not be read; `internal`: a bug", body = ErrorBody),
    )
)]
pub(super) async fn erasure_status(State(state): State<AppState>, TenantPath(tenant): TenantPath) -> Result<Json<ErasureStatus>, ApiError> {
    if let Some(record) = state.runtime.erasure_status(&tenant)? {
        return Ok(Json(ErasureStatus::erasing(&record)));
    }
    let exists = state.runtime.tenant_or_load(&tenant).is_ok();
    let state = if exists { ErasureState::Active } else { ErasureState::Absent };
    Ok(Json(ErasureStatus { tenant: tenant.to_string(), state, started_unix_ms: None, by: None, keys_revoked: None }))
}

/// The runtime policy of a request: defaults for what is absent, every field bounded.
fn policy(request: TenantPolicyRequest) -> Result<TenantPolicy, ApiError> {
    let bad = |field: &str, reason: String| ApiError::BadRequest(format!("field `policy.{field}`: {reason}"));
    let mut policy = TenantPolicy::default();
    if let Some(max_imvus) = request.max_imvus {
        policy.max_imvus = max_imvus;
    }
    if let Some(denied) = request.denied_transitions {
        let mut denied: Vec<Transition> = denied.into_iter().map(Into::into).collect();
        denied.sort_unstable();
        denied.dedup();
        policy.denied_transitions = denied;
    }
    if let Some(kinds) = request.allowed_kinds {
        if kinds.len() > ALLOWED_KINDS_LEN_MAX {
            return Err(bad("allowed_kinds", format!("at most {ALLOWED_KINDS_LEN_MAX} kinds")));
        }
        if let Some(long) = kinds.iter().find(|k| k.is_empty() || k.len() > KIND_NAME_LEN_MAX) {
            return Err(bad("allowed_kinds", format!("kind names are 1..={KIND_NAME_LEN_MAX} characters (got {long:?})")));
        }
        policy.allowed_kinds = Some(kinds);
    }
    if let Some(max_restarts) = request.max_restarts {
        policy.max_restarts = max_restarts;
    }
    if let Some(period_ms) = request.restart_period_ms {
        if period_ms == 0 {
            return Err(bad("restart_period_ms", "the restart window is at least 1 ms".into()));
        }
        policy.restart_period_ms = period_ms;
    }
    if let Some(tier) = request.tier {
        policy.tier = tier.into();
    }
    policy.desktop_failover = request.desktop_failover.unwrap_or(false);
    policy.limits = vcos_actors::LimitOverrides {
        requests_per_s: request.requests_per_s,
        burst: request.burst,
        concurrent_requests: request.concurrent_requests,
        messages_per_day: request.messages_per_day,
        canon_bytes_stored: request.canon_bytes_stored,
    };
    policy.validate().map_err(|e| match e {
        vcos_actors::ActorError::BadRequest { field, reason } => ApiError::BadRequest(format!("field `{field}`: {reason}")),
        other => other.into(),
    })?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(request: TenantPolicyRequest, field: &str) {
        match policy(request) {
            Err(ApiError::BadRequest(message)) => assert!(message.contains(field), "{message}"),
            other => panic!("expected a 400 naming {field}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_absent() {
        let p = policy(TenantPolicyRequest { max_imvus: Some(3), ..Default::default() }).expect("valid");
        assert_eq!(p, TenantPolicy { max_imvus: 3, ..TenantPolicy::default() });
    }

    #[test]
    fn bad_policies_name_their_field() {
        refused(TenantPolicyRequest { restart_period_ms: Some(0), ..Default::default() }, "restart_period_ms");
        refused(TenantPolicyRequest { allowed_kinds: Some(vec![String::new()]), ..Default::default() }, "allowed_kinds");
        let many = (0..=ALLOWED_KINDS_LEN_MAX).map(|i| format!("k{i}")).collect();
        refused(TenantPolicyRequest { allowed_kinds: Some(many), ..Default::default() }, "allowed_kinds");
    }
}

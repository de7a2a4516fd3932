//! Tenant routes. A cluster admin creates tenants; the answer carries the new tenant's first
//! `tenant_admin` key (its secret shown this once). Listing shows a cluster key every tenant,
//! a tenant key its own.
//!
//! Creating a tenant that exists is a 409, not a policy replacement. Creations are serialised
//! by a lock so that two racing creations of one name on this node cannot both succeed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::{TenantId, TenantPolicy, Transition};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Who};
use crate::wire::{CreateTenantRequest, CreatedTenant, IssueKeyRequest, RoleName, TenantList, TenantPolicyRequest};
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
    policy.limits = vcos_actors::LimitOverrides {
        requests_per_s: request.requests_per_s,
        burst: request.burst,
        concurrent_requests: request.concurrent_requests,
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

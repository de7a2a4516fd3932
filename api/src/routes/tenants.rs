//! Tenant routes. Creation is the only place a tenant's key is ever returned; listings show
//! names only, and policies are shown without the key.
//!
//! Creating a tenant that exists is a 409, not a policy replacement: otherwise any anonymous
//! caller could overwrite (and so remove) another tenant's key. Creations are serialised by a
//! lock so that two racing creations of one name cannot both succeed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::{TenantId, TenantPolicy, Transition};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, API_KEY_LEN_MAX, API_KEY_LEN_MIN};
use crate::wire::{CreateTenantRequest, CreatedTenant, TenantList, TenantPolicyRequest};
use crate::AppState;

/// Most kinds a tenant's `allowed_kinds` may list.
const ALLOWED_KINDS_LEN_MAX: usize = 64;
/// Longest kind name in `allowed_kinds`.
const KIND_NAME_LEN_MAX: usize = 64;

/// Names of all tenants, sorted.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Tenant names", body = TenantList),
        (status = 500, description = "`internal`: a bug in the facade", body = ErrorBody),
    )
)]
pub(super) async fn list_tenants(State(state): State<AppState>) -> Json<TenantList> {
    Json(TenantList { tenants: state.runtime.tenants().iter().map(|t| t.id.to_string()).collect() })
}

/// Creates a tenant. The response carries its API key, this once.
#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "Created; `api_key` is returned this once", body = CreatedTenant),
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
    if let Some(key) = &policy.api_key {
        if state.runtime.tenant_by_key(key).is_some() {
            return Err(ApiError::Conflict("field `policy.api_key`: this key is taken; choose another".into()));
        }
    }
    let entry = state.runtime.put_tenant(id, policy).await?;
    tracing::info!(tenant = %entry.id, keyed = entry.policy.api_key.is_some(), "tenant created");
    Ok((StatusCode::CREATED, Json(CreatedTenant::new(&entry))))
}

/// The runtime policy of a request: defaults for what is absent, every field bounded.
fn policy(request: TenantPolicyRequest) -> Result<TenantPolicy, ApiError> {
    let bad = |field: &str, reason: String| ApiError::BadRequest(format!("field `policy.{field}`: {reason}"));
    let mut policy = TenantPolicy::default();
    if let Some(key) = request.api_key {
        if !(API_KEY_LEN_MIN..=API_KEY_LEN_MAX).contains(&key.len()) {
            return Err(bad("api_key", format!("keys are {API_KEY_LEN_MIN}..={API_KEY_LEN_MAX} characters")));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("api_key", "keys are visible ASCII characters (no spaces)".into()));
        }
        policy.api_key = Some(key);
    }
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
        refused(TenantPolicyRequest { api_key: Some("short".into()), ..Default::default() }, "api_key");
        refused(TenantPolicyRequest { api_key: Some("with a space".into()), ..Default::default() }, "api_key");
        refused(TenantPolicyRequest { restart_period_ms: Some(0), ..Default::default() }, "restart_period_ms");
        refused(TenantPolicyRequest { allowed_kinds: Some(vec![String::new()]), ..Default::default() }, "allowed_kinds");
        let many = (0..=ALLOWED_KINDS_LEN_MAX).map(|i| format!("k{i}")).collect();
        refused(TenantPolicyRequest { allowed_kinds: Some(many), ..Default::default() }, "allowed_kinds");
    }
}

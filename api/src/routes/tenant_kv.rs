//! A tenant's own key-value store: `/v1/tenants/{tenant}/kv/…`, with the semantics of the
//! canon's (`canon.rs`: writes committed by a quorum, linearizable or stale reads, CAS,
//! listing by prefix), confined to the tenant.
//!
//! Confinement is by construction: every key a tenant names becomes
//! `tkv/{tenant}/{key}` ([`tenant_prefix`]), tenant names hold no `/`, and listings and reads
//! only ever look under that prefix, so no key a tenant can write or read belongs to another
//! tenant or to the runtime (a property test below tries).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use vcos_actors::TenantId;

use super::canon::{kv_cas, kv_delete, kv_get, kv_list, kv_put, CasBody, CasResult, KvEntry, ListParams, PutBody, ReadParams, ReadResult, WriteResult};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, TenantPath};
use crate::AppState;

/// Where tenant `t`'s keys live in the canon.
pub(crate) fn tenant_prefix(t: &TenantId) -> String {
    format!("tkv/{t}/")
}

/// Refuses a write that adds to a tenant over its canon storage quota.
fn admit_growth(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    let tenant = TenantId::new(tenant)?;
    Ok(vcos_actors::quota::admit_growth(&*state.runtime.tenant_or_load(&tenant)?)?)
}

fn tenant_key(tenant: &str, key: String) -> Result<(String, String), ApiError> {
    let tenant = TenantId::new(tenant)?;
    Ok((tenant_prefix(&tenant), key))
}

/// Counts bytes written for the tenant.
fn meter_bytes(state: &AppState, tenant: &str, bytes: u64) {
    if let Ok(t) = TenantId::new(tenant) {
        state.runtime.meter(&t, vcos_actors::metering::UsageUnit::CanonBytes, bytes);
    }
}

// Each `operation_id` is explicit: the canon's handlers have the same names, and ids are unique
// in a document.
/// Sets a key of the tenant (acknowledged once a quorum of its region has it on disk).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/kv/{key}", operation_id = "tenant_kv_put", tag = "tenants", request_body = PutBody,
    params(("tenant" = String, Path, description = "Tenant name"), ("key" = String, Path, description = "The key (percent-encoded), 1..=1024 bytes")),
    responses((status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "`bad_request`: a bad key, tenant name or body", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant (a write is checked against its quota)", body = ErrorBody),
        (status = 503, description = "`canon_unavailable`: no quorum now; retry", body = ErrorBody)))]
pub(super) async fn put(State(state): State<AppState>, Path((tenant, key)): Path<(String, String)>, ApiJson(body): ApiJson<PutBody>) -> Result<Json<WriteResult>, ApiError> {
    let (prefix, key) = tenant_key(&tenant, key)?;
    admit_growth(&state, &tenant)?;
    let bytes = (key.len() + body.value.len()) as u64;
    let written = kv_put(&state, &prefix, &key, body).await?;
    meter_bytes(&state, &tenant, bytes);
    Ok(Json(written))
}

/// Reads a key of the tenant: linearizable by default, or stale from this node's replica.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/kv/{key}", operation_id = "tenant_kv_get", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), ("key" = String, Path, description = "The key"), ReadParams),
    responses((status = 200, description = "The value", body = ReadResult),
        (status = 400, description = "`bad_request`: a bad key, tenant name or parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key", body = ErrorBody),
        (status = 503, description = "`canon_unavailable`: no quorum for a linearizable read; retry or read stale", body = ErrorBody)))]
pub(super) async fn get(State(state): State<AppState>, Path((tenant, key)): Path<(String, String)>, Query(params): Query<ReadParams>) -> Result<Json<ReadResult>, ApiError> {
    let (prefix, key) = tenant_key(&tenant, key)?;
    Ok(Json(kv_get(&state, &prefix, key, params).await?))
}

/// Removes a key of the tenant.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/kv/{key}", operation_id = "tenant_kv_delete", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), ("key" = String, Path, description = "The key")),
    responses((status = 204, description = "Removed (or absent)"),
        (status = 400, description = "`bad_request`: a bad key or tenant name", body = ErrorBody),
        (status = 503, description = "`canon_unavailable`: no quorum now; retry", body = ErrorBody)))]
pub(super) async fn delete(State(state): State<AppState>, Path((tenant, key)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let (prefix, key) = tenant_key(&tenant, key)?;
    kv_delete(&state, &prefix, &key).await
}

/// Sets a key of the tenant only if it holds the expected value.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/kv/{key}/cas", operation_id = "tenant_kv_cas", tag = "tenants", request_body = CasBody,
    params(("tenant" = String, Path, description = "Tenant name"), ("key" = String, Path, description = "The key")),
    responses((status = 200, description = "Applied or not, with the current value", body = CasResult),
        (status = 400, description = "`bad_request`: a bad key, tenant name or body", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant (a write is checked against its quota)", body = ErrorBody),
        (status = 503, description = "`canon_unavailable`: no quorum now; retry", body = ErrorBody)))]
pub(super) async fn cas(State(state): State<AppState>, Path((tenant, key)): Path<(String, String)>, ApiJson(body): ApiJson<CasBody>) -> Result<Json<CasResult>, ApiError> {
    let (prefix, key) = tenant_key(&tenant, key)?;
    if body.new.is_some() {
        admit_growth(&state, &tenant)?;
    }
    let bytes = (key.len() + body.new.as_ref().map_or(0, String::len)) as u64;
    let result = kv_cas(&state, &prefix, &key, body).await?;
    if result.success {
        meter_bytes(&state, &tenant, bytes);
    }
    Ok(Json(result))
}

/// Lists the tenant's keys by prefix, in key order (linearizable), a page at a time.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/kv", operation_id = "tenant_kv_list", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), ListParams),
    responses((status = 200, description = "Entries in key order", body = Vec<KvEntry>),
        (status = 400, description = "`bad_request`: a bad tenant name or parameter", body = ErrorBody),
        (status = 503, description = "`canon_unavailable`: no quorum now; retry", body = ErrorBody)))]
pub(super) async fn list(State(state): State<AppState>, TenantPath(tenant): TenantPath, Query(params): Query<ListParams>) -> Result<Json<Vec<KvEntry>>, ApiError> {
    Ok(Json(kv_list(&state, &tenant_prefix(&tenant), params).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever two tenants name, their keys never meet, and none lands outside `tkv/`.
        #[test]
        fn no_key_of_one_tenant_is_a_key_of_another(
            a in "[a-z0-9_-]{1,31}", b in "[a-z0-9_-]{1,31}",
            ka in "\\PC{1,64}", kb in "\\PC{1,64}", listing in "\\PC{0,16}",
        ) {
            prop_assume!(a != b);
            let (ta, tb) = (TenantId::new(&a).expect("valid"), TenantId::new(&b).expect("valid"));
            let full_a = super::super::canon::full_key(&tenant_prefix(&ta), &ka).expect("key");
            let full_b = super::super::canon::full_key(&tenant_prefix(&tb), &kb).expect("key");
            prop_assert!(full_a.starts_with(tenant_prefix(&ta).as_bytes()));
            prop_assert!(!full_a.starts_with(tenant_prefix(&tb).as_bytes()), "a key of {a} under {b}'s prefix");
            prop_assert_ne!(&full_a, &full_b);
            // A listing of b, whatever its prefix, never covers a's keys.
            let scope = format!("{}{listing}", tenant_prefix(&tb));
            prop_assert!(!full_a.starts_with(scope.as_bytes()));
            prop_assert!(!full_a.starts_with(b"kv/") && !full_a.starts_with(b"auth/") && !full_a.starts_with(b"tenant/"));
        }
    }
}

//! The audit log: a tenant admin pages through its tenant's records and verifies the chain; a
//! cluster admin the same for the cluster's chain (and any tenant's). Newest first, with a
//! cursor, so old records never hide new ones.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use vcos_actors::audit::{AuditFilter, AuditRecord, Chain, VerifyReport};

use crate::error::{ApiError, ErrorBody};
use crate::extract::TenantPath;
use crate::AppState;

/// Records in one page, at most.
const PAGE_LEN_MAX: usize = 1_000;
/// Records in one page when the request names no `limit`.
const PAGE_LEN_DEFAULT: usize = 100;
/// Records looked at for one page, at most (filters that match little end a page early; its
/// cursor goes on from there).
const SCAN_MAX: u64 = 10_000;

/// Which records.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// At or after this time (unix ms).
    from_ms: Option<u64>,
    /// Before this time (unix ms).
    to_ms: Option<u64>,
    /// Made with this key id.
    key_id: Option<String>,
    /// Whose action starts so (`POST`, `DELETE /v1/tenants/{tenant}/keys`).
    action: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<u64>,
    /// Records per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// One record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditRecordView {
    /// Position in the chain, from 1.
    seq: u64,
    /// When (unix ms).
    at_ms: u64,
    /// The request's id (`x-request-id`).
    request_id: String,
    /// The key's id; null for a caller without a valid key.
    key_id: Option<String>,
    /// The key's role.
    role: Option<String>,
    /// Method and route template.
    action: String,
    /// The request's path.
    target: String,
    /// Its HTTP status.
    outcome: u16,
    /// The caller's address (without its port for counted records).
    source: Option<String>,
    /// Requests the record stands for: 1, or for messages and work items the requests alike
    /// (key, action, target, outcome, source) within one second, `at_ms` and `request_id`
    /// being the first one's.
    count: u64,
    /// SHA-256 of the previous record (the chain's link).
    prev_hash: String,
}

impl From<AuditRecord> for AuditRecordView {
    fn from(r: AuditRecord) -> Self {
        let e = r.entry;
        Self {
            seq: r.seq,
            at_ms: e.at_ms,
            request_id: e.request_id,
            key_id: e.key_id,
            role: e.role,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            source: e.source,
            count: e.count,
            prev_hash: r.prev_hash,
        }
    }
}

/// A page of records, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditPage {
    /// The records.
    records: Vec<AuditRecordView>,
    /// Pass as `cursor` for older records; null: none older.
    next_cursor: Option<u64>,
}

/// What a walk of the chain found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditVerification {
    /// Records the head counts.
    count: u64,
    /// Records found linked.
    checked: u64,
    /// Whether the chain is intact.
    intact: bool,
    /// Each problem found (altered, removed, truncated, written outside the chain).
    problems: Vec<String>,
}

impl From<VerifyReport> for AuditVerification {
    fn from(r: VerifyReport) -> Self {
        Self { count: r.count, checked: r.checked, intact: r.problems.is_empty(), problems: r.problems }
    }
}

fn page(state: &AppState, chain: &Chain, query: AuditQuery) -> Result<AuditPage, ApiError> {
    let limit = query.limit.unwrap_or(PAGE_LEN_DEFAULT);
    if !(1..=PAGE_LEN_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!("query `limit`: 1..={PAGE_LEN_MAX} (got {limit})")));
    }
    let filter = AuditFilter { from_ms: query.from_ms, to_ms: query.to_ms, key_id: query.key_id, action: query.action };
    let (records, next_cursor) = state.runtime.audit().page(chain, query.cursor, limit, SCAN_MAX, &filter)?;
    Ok(AuditPage { records: records.into_iter().map(Into::into).collect(), next_cursor })
}

/// The tenant's audit records, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit",
    params(("tenant" = String, Path, description = "Tenant name"), AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, description = "`bad_request`: a malformed tenant name or query", body = ErrorBody),
    ))]
pub(super) async fn tenant_audit(State(state): State<AppState>, TenantPath(tenant): TenantPath, Query(query): Query<AuditQuery>) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(page(&state, &Chain::Tenant(tenant), query)?))
}

/// Walks the tenant's chain: every record linked to the one before, the last to the head.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit/verify", tag = "audit",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "What the walk found", body = AuditVerification),
        (status = 400, description = "`bad_request`: a malformed tenant name", body = ErrorBody),
    ))]
pub(super) async fn verify_tenant_audit(State(state): State<AppState>, TenantPath(tenant): TenantPath) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(state.runtime.audit().verify(&Chain::Tenant(tenant))?.into()))
}

/// The cluster's audit records, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, description = "`bad_request`: a malformed query", body = ErrorBody),
    ))]
pub(super) async fn cluster_audit(State(state): State<AppState>, Query(query): Query<AuditQuery>) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(page(&state, &Chain::Cluster, query)?))
}

/// Walks the cluster's chain.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "What the walk found", body = AuditVerification)))]
pub(super) async fn verify_cluster_audit(State(state): State<AppState>) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(state.runtime.audit().verify(&Chain::Cluster)?.into()))
}

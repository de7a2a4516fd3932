//! Usage and bills: what a tenant used (from the usage records every node writes each
//! interval, see `vcos_actors::metering`) and what it costs at its tier, in NexCoin.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use vcos_actors::metering::{format_nxc, month_range, Bill};

use crate::error::{ApiError, ErrorBody};
use crate::extract::TenantPath;
use crate::wire::TierName;
use crate::AppState;

/// Which time range.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// From (unix ms, included; default 0).
    from_ms: Option<u64>,
    /// To (unix ms, excluded; default: now).
    to_ms: Option<u64>,
}

/// A tenant's usage over a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct UsageView {
    /// The tenant.
    tenant: String,
    /// From (unix ms).
    from_ms: u64,
    /// To (unix ms).
    to_ms: u64,
    /// Units used: `messages`, `canon_bytes`, `tokens`, `desktop_seconds`, `workflow_steps`.
    units: BTreeMap<String, u64>,
    /// Interval records summed (one per node and interval).
    records: u64,
}

/// Which month.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillQuery {
    /// `YYYY-MM` (UTC calendar month).
    #[param(pattern = "^[0-9]{4}-[0-9]{2}$", example = "2026-11")]
    period: String,
}

/// One line of a bill.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct BillLineView {
    /// The unit.
    unit: String,
    /// Units used.
    quantity: u64,
    /// NexCoin, six decimals.
    #[schema(example = "0.001500")]
    amount_nxc: String,
}

/// A tenant's bill for a month.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct BillView {
    /// The tenant.
    tenant: String,
    /// The month.
    period: String,
    /// The tier priced at (its current one).
    tier: TierName,
    /// Per unit.
    lines: Vec<BillLineView>,
    /// The sum, NexCoin, six decimals.
    total_nxc: String,
    /// `NXC`.
    currency: String,
}

/// Writes this node's latest counts first, so an answer includes them (best effort: the
/// interval writer retries what fails).
async fn write_latest(state: &AppState) {
    if let Err(e) = state.runtime.write_usage().await {
        tracing::debug!(error = %e, "answered without this node's latest usage counts");
    }
}

/// What the tenant used in a time range (records written every 10 s by each node; this node's
/// latest counts are written first).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/usage", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), UsageQuery),
    responses(
        (status = 200, description = "Units used", body = UsageView),
        (status = 400, description = "`bad_request`: a malformed tenant name or range", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub(super) async fn usage(State(state): State<AppState>, TenantPath(tenant): TenantPath, Query(query): Query<UsageQuery>) -> Result<Json<UsageView>, ApiError> {
    state.runtime.tenant_or_load(&tenant)?;
    let to_ms = query.to_ms.unwrap_or_else(|| state.runtime.clock().unix_ms().saturating_add(1));
    let from_ms = query.from_ms.unwrap_or(0);
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(format!("query `from_ms` ({from_ms}) must be before `to_ms` ({to_ms})")));
    }
    write_latest(&state).await;
    let usage = state.runtime.usage(&tenant, from_ms, to_ms)?;
    let units = usage.totals.iter().map(|(u, n)| (u.as_str().to_owned(), *n)).collect();
    Ok(Json(UsageView { tenant: tenant.to_string(), from_ms, to_ms, units, records: usage.records }))
}

/// The tenant's bill for a calendar month: its usage priced at its tier.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/bill", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), BillQuery),
    responses(
        (status = 200, description = "The bill", body = BillView),
        (status = 400, description = "`bad_request`: a malformed tenant name or period", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub(super) async fn bill(State(state): State<AppState>, TenantPath(tenant): TenantPath, Query(query): Query<BillQuery>) -> Result<Json<BillView>, ApiError> {
    let entry = state.runtime.tenant_or_load(&tenant)?;
    let Some((from_ms, to_ms)) = month_range(&query.period) else {
        return Err(ApiError::BadRequest("query `period`: a month as YYYY-MM (1970-01 to 9999-12)".into()));
    };
    write_latest(&state).await;
    let bill = Bill::of(state.runtime.usage(&tenant, from_ms, to_ms)?, entry.policy.tier);
    let lines = bill
        .lines
        .iter()
        .map(|l| BillLineView { unit: l.unit.as_str().to_owned(), quantity: l.quantity, amount_nxc: format_nxc(l.amount_micro_nxc) })
        .collect();
    Ok(Json(BillView {
        tenant: tenant.to_string(),
        period: query.period,
        tier: bill.tier.into(),
        lines,
        total_nxc: format_nxc(bill.total_micro_nxc),
        currency: "NXC".into(),
    }))
}

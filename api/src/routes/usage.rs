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
    /// The tenant's quotas and how much of them it used, as this node last measured.
    quotas: QuotasView,
}

/// Quotas in force and their use (see `vcos_actors::quota` for how they are measured).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QuotasView {
    /// Messages per UTC day in the region: the limit.
    messages_per_day: u64,
    /// Messages handled today (UTC) in the region, as of the last refresh (every 10 s) plus
    /// this node's since.
    messages_today: u64,
    /// Canon bytes the tenant may store.
    canon_bytes_stored: u64,
    /// Canon bytes it stored at the last measurement (every 5 s from the Raft canon's counts;
    /// every minute or more from a store that is measured by reading every record); null
    /// before the first.
    stored_bytes: Option<u64>,
    /// When that was measured (unix ms).
    stored_measured_unix_ms: Option<u64>,
}

impl QuotasView {
    fn of(entry: &vcos_actors::TenantEntry, now_unix_ms: u64) -> Self {
        let limits = entry.policy.limits();
        let stored = entry.quota.stored_bytes();
        Self {
            messages_per_day: limits.messages_per_day,
            messages_today: entry.quota.messages_today(now_unix_ms).saturating_add(entry.usage.unwritten(vcos_actors::metering::UsageUnit::Messages)),
            canon_bytes_stored: limits.canon_bytes_stored,
            stored_bytes: stored.map(|(b, _)| b),
            stored_measured_unix_ms: stored.map(|(_, at)| at),
        }
    }
}

/// Which month.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillQuery {
    /// `YYYY-MM` (UTC calendar month), 1970-01 to 9999-12 (`month_range`).
    #[param(pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$", example = "2026-11")]
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
    let entry = state.runtime.tenant_or_load(&tenant)?;
    let to_ms = query.to_ms.unwrap_or_else(|| state.runtime.clock().unix_ms().saturating_add(1));
    let from_ms = query.from_ms.unwrap_or(0);
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(format!("query `from_ms` ({from_ms}) must be before `to_ms` ({to_ms})")));
    }
    write_latest(&state).await;
    let usage = state.runtime.usage(&tenant, from_ms, to_ms)?;
    let units = usage.totals.iter().map(|(u, n)| (u.as_str().to_owned(), *n)).collect();
    let quotas = QuotasView::of(&entry, state.runtime.clock().unix_ms());
    Ok(Json(UsageView { tenant: tenant.to_string(), from_ms, to_ms, units, records: usage.records, quotas }))
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

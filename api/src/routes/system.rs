//! Routes about the node rather than its tenants: health, metrics, the API document, kinds.
//! None of them needs a key: they reveal no tenant's data.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};

use super::OpenApiJson;
use crate::error::ErrorBody;
use crate::wire::{Health, Kind, KindList, WhoAmI};
use crate::AppState;

/// Liveness and readiness: 200 while serving with a canon that can commit; 503 `degraded`
/// while the node's canon group has no leader with a quorum (it still serves reads of its
/// replica and answers writes with 503 `canon_unavailable`), 503 `stopping` once it stops.
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses(
        (status = 200, description = "Serving", body = Health,
            example = json!({"status": "ok", "imvus_resident": 3, "canon": {"region": "local", "ok": true, "groups": [
                {"region": "local", "role": "leader", "leader_id": 1, "quorum": true, "quorum_ack_age_ms": 0,
                 "leader_contact_age_ms": 0, "voters": 1}]}})),
        (status = 503, description = "Degraded (no canon quorum) or stopping: the node takes no new writes", body = Health,
            example = json!({"status": "degraded", "imvus_resident": 3, "canon": {"region": "local", "ok": false, "groups": [
                {"region": "local", "role": "candidate", "leader_id": null, "quorum": false, "quorum_ack_age_ms": null,
                 "leader_contact_age_ms": 5200, "voters": 2}]}})),
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let node = state.runtime.node();
    let imvus_resident = node.resident_imvus.load(Ordering::Relaxed);
    let canon = state.canon.as_ref().map(|store| store.node().health());
    let status = if node.shutting_down.load(Ordering::Relaxed) {
        "stopping"
    } else if canon.as_ref().is_some_and(|canon| !canon.ok) {
        "degraded"
    } else {
        "ok"
    };
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Health { status: status.into(), imvus_resident, canon }))
}

/// Prometheus metrics of the node (runtime and HTTP), in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses(
        (status = 200, description = "Prometheus text format", body = String,
            content_type = "text/plain; version=0.0.4"),
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// This document (OpenAPI 3.1). Swagger UI renders it at `/docs`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
pub(super) async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], doc.0)
}

/// Who the presented key is: its id, tenant and role.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "system",
    responses((status = 200, description = "The key's principal", body = WhoAmI))
)]
pub(super) async fn whoami(crate::extract::Who(who): crate::extract::Who) -> Json<WhoAmI> {
    Json(WhoAmI { key_id: who.key_id, tenant: who.tenant.map(|t| t.to_string()), role: who.role.into() })
}

/// The IMVU kinds this node serves.
#[utoipa::path(
    get,
    path = "/v1/kinds",
    tag = "system",
    responses(
        (status = 200, description = "Registered kinds", body = KindList),
        (status = 500, description = "`internal`: a bug in the facade", body = ErrorBody),
    )
)]
pub(super) async fn kinds(State(state): State<AppState>) -> Json<KindList> {
    Json(KindList { kinds: state.runtime.kinds().into_iter().map(Kind::from).collect() })
}

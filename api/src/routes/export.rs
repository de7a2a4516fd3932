//! `GET /v1/tenants/{tenant}/export`: everything the tenant owns, as JSON lines, streamed.
//!
//! One line per canon record: `{"section": …, "key": …, "value": …}` (the value as JSON when
//! it is JSON, else as text), then the tenant's keys (`"section": "key"`: id, role, times;
//! never a secret or its hash), then `{"section": "end", "lines": N}`: an export without its
//! end line was cut. Read from this node's replica, section by section, a page at a time.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use vcos_actors::export::sections;
use vcos_actors::TenantId;

use crate::error::{ApiError, ErrorBody};
use crate::extract::TenantPath;
use crate::AppState;

/// Records read per page.
const PAGE: usize = 256;
/// Lines buffered between the reader and the connection.
const LINES_BUFFERED: usize = 64;

/// Everything the tenant owns, as JSON lines (`application/x-ndjson`).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/export", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "JSON lines, the last `{\"section\":\"end\",\"lines\":N}`", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "`bad_request`: a malformed tenant name", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub(super) async fn export(State(state): State<AppState>, TenantPath(tenant): TenantPath) -> Result<Response, ApiError> {
    state.runtime.tenant_or_load(&tenant)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(LINES_BUFFERED);
    tokio::spawn(async move {
        if let Err(e) = write_lines(&state, &tenant, &tx).await {
            // The end line is missing: the reader knows the export is incomplete.
            tracing::warn!(%tenant, error = %e, "export cut short");
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(line), rx)) });
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

fn line(value: &Value) -> Bytes {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn decoded(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

async fn write_lines(state: &AppState, tenant: &TenantId, tx: &tokio::sync::mpsc::Sender<Bytes>) -> Result<(), String> {
    let store = state.runtime.store();
    let send = |value: Value| async move { tx.send(line(&value)).await.map_err(|_| "the client went away".to_owned()) };
    let mut lines = 0u64;
    for section in sections(tenant) {
        if section.single {
            if let Some(bytes) = store.get(&section.prefix).map_err(|e| e.to_string())? {
                send(json!({"section": section.name, "key": section.prefix, "value": decoded(&bytes)})).await?;
                lines += 1;
            }
            continue;
        }
        let mut after: Option<String> = None;
        loop {
            let page = store.scan_prefix(&section.prefix, after.as_deref(), PAGE).map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, bytes) in page {
                send(json!({"section": section.name, "key": key, "value": decoded(&bytes)})).await?;
                lines += 1;
            }
        }
    }
    let keys = state.runtime.keys().list(Some(tenant), usize::MAX).map_err(|e| e.to_string())?;
    let now = state.runtime.clock().unix_ms();
    for record in &keys {
        let view = serde_json::to_value(crate::wire::KeyView::new(record, now)).map_err(|e| e.to_string())?;
        send(json!({"section": "key", "key": record.id, "value": view})).await?;
        lines += 1;
    }
    send(json!({"section": "end", "lines": lines})).await
}

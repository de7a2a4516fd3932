//! Cross-cutting request handling: observation (a span, latency and count per request) and the
//! guarantee that every error response is JSON.
//!
//! Both run as `Router::layer` middleware, i.e. after routing, so the route label is the
//! matched template (`/v1/tenants/{tenant}/imvus/{id}`), never the raw path: metric label sets
//! stay bounded whatever clients send. Unmatched requests are labelled `unmatched`, and unusual
//! methods `other`, for the same reason.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::ApiError;

/// Longest body of a non-JSON error response that is kept as the message of its JSON version.
const ERROR_DETAIL_LEN_MAX: usize = 1024;

/// Label for requests that matched no route.
pub(crate) const ROUTE_UNMATCHED: &str = "unmatched";

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One span per request; `vcos_http_requests_total` and `vcos_http_request_duration_seconds`
/// labelled by method, route template and status.
pub(crate) async fn observe(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map_or(ROUTE_UNMATCHED, MatchedPath::as_str).to_owned();
    let span = tracing::info_span!("http", method, route = %route, status = tracing::field::Empty);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    span.in_scope(|| tracing::debug!(elapsed_us = elapsed.as_micros() as u64, "served"));
    let labels = [("method", method.to_owned()), ("route", route), ("status", status.to_string())];
    metrics::counter!(crate::HTTP_REQUESTS_METRIC, &labels).increment(1);
    metrics::histogram!(crate::HTTP_DURATION_METRIC, &labels).record(elapsed.as_secs_f64());
    response
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// Rewrites error responses that our handlers did not make (405s of the router, the body limit
/// layer, a caught panic) into the JSON error shape, keeping status and `Allow`.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let allow = response.headers().get(ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), ERROR_DETAIL_LEN_MAX).await.unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let detail = match (status, std::str::from_utf8(&body).map(str::trim)) {
        // The router adds `Allow` after this layer: the header, not the message, lists methods.
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!("method {method} is not allowed on this route (see the Allow header)"),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => format!("request body exceeds {} bytes", crate::BODY_LEN_MAX),
        (_, Ok(text)) if !text.is_empty() => format!("{reason}: {text}"),
        _ => reason,
    };
    let mut fixed = ApiError::from_status(status, detail).into_response();
    *fixed.status_mut() = status;
    if let Some(allow) = allow {
        fixed.headers_mut().insert(ALLOW, allow);
    }
    fixed
}

//! What the facade writes to the audit log, and request ids.
//!
//! Recorded: every mutating request (POST, PUT, PATCH, DELETE) with its outcome, and every
//! refused one (401, 403) whatever its method. The chain is the key's tenant; a cluster key
//! acting on `/v1/tenants/{tenant}/…` writes to that tenant's chain (its admins see what the
//! operators did); everything else to the cluster's.
//!
//! Records nobody can flood: a caller without a valid key writes nothing per request. Its
//! refusals are counted (`vcos_http_auth_refusals_total`) and sampled: at most one record per
//! source address per [`UNAUTHENTICATED_SAMPLE_MS`] in the cluster chain, from at most
//! [`SAMPLED_SOURCES_MAX`] addresses at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use vcos_actors::audit::{AuditEntry, Chain};
use vcos_actors::auth::Principal;
use vcos_actors::TenantId;

use crate::AppState;

/// One sampled record per unauthenticated source address per this long.
pub(crate) const UNAUTHENTICATED_SAMPLE_MS: u64 = 60_000;
/// Source addresses remembered for sampling, at most (then the memory starts afresh).
pub(crate) const SAMPLED_SOURCES_MAX: usize = 10_000;
/// Longest request id taken from a caller.
const REQUEST_ID_LEN_MAX: usize = 64;

/// Request ids this node hands out: a random prefix per process, then a counter.
pub(crate) struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new(runtime: &vcos_actors::Runtime) -> Self {
        let mut bytes = [0u8; 4];
        runtime.secrets().fill(&mut bytes);
        Self { prefix: u32::from_le_bytes(bytes), next: AtomicU64::new(1) }
    }
}

/// When each unauthenticated source was last recorded.
#[derive(Default)]
pub(crate) struct RefusalSamples(Mutex<BTreeMap<String, u64>>);

/// The caller's `x-request-id` if it is 1..=64 characters of letters, digits, `.`, `_`, `-`;
/// else a fresh one.
pub(crate) fn request_id(state: &AppState, headers: &HeaderMap) -> String {
    let given = headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|id| {
        (1..=REQUEST_ID_LEN_MAX).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    match given {
        Some(id) => id.to_owned(),
        None => format!("{:08x}-{}", state.request_ids.prefix, state.request_ids.next.fetch_add(1, Ordering::Relaxed)),
    }
}

/// What is known of a request before it is handled.
pub(crate) struct RequestFacts {
    method: Method,
    route: Option<String>,
    target: String,
    source: Option<std::net::SocketAddr>,
    request_id: String,
}

impl RequestFacts {
    /// The caller's IP address, when the server knows it (what failures are counted by).
    pub(crate) fn source_ip(&self) -> Option<String> {
        self.source.map(|s| s.ip().to_string())
    }

    pub(crate) fn of(req: &Request, request_id: &str) -> Self {
        Self {
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()),
            // The path only: a query may hold what should not be kept (a key sent by mistake).
            target: req.uri().path().chars().take(512).collect(),
            source: req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0),
            request_id: request_id.to_owned(),
        }
    }
}

/// Records the request if it changed something or was refused (see the module docs).
pub(crate) fn after(state: &AppState, facts: RequestFacts, principal: Option<&Principal>, path_tenant: Option<&str>, status: StatusCode) {
    let Some(route) = facts.route else { return }; // no route: a 404 that touched nothing
    let mutating = matches!(facts.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS);
    if !mutating && !refused {
        return;
    }
    let audit = state.runtime.audit();
    let now = audit.now_ms();
    let chain = match principal {
        Some(p) => match (&p.tenant, path_tenant.and_then(|t| TenantId::new(t).ok())) {
            (Some(own), _) => Chain::Tenant(own.clone()),
            (None, Some(t)) if state.runtime.tenant(&t).is_ok() => Chain::Tenant(t),
            (None, _) => Chain::Cluster,
        },
        None => {
            let source = facts.source.map_or_else(|| "unknown".to_owned(), |s| s.ip().to_string());
            if !sample_unauthenticated(state, &source, state.runtime.clock().now_ms()) {
                return;
            }
            Chain::Cluster
        }
    };
    let entry = AuditEntry {
        at_ms: now,
        request_id: facts.request_id,
        key_id: principal.map(|p| p.key_id.clone()),
        role: principal.map(|p| p.role.to_string()),
        action: format!("{} {route}", facts.method),
        target: facts.target,
        outcome: status.as_u16(),
        source: facts.source.map(|s| s.to_string()),
        count: 1,
    };
    if principal.is_some() && COUNTED_ROUTES.contains(&(facts.method.as_str(), route.as_str())) {
        audit.record_counted(chain, entry);
    } else {
        audit.record(chain, entry);
    }
}

/// Data-plane routes: a tenant's traffic, not changes to its setup. Their requests are
/// recorded as counts per key, target, outcome and source address per second
/// (`AuditEntry::count`), so the audit log keeps every one of them without one canon record
/// per message.
const COUNTED_ROUTES: &[(&str, &str)] = &[("POST", "/v1/tenants/{tenant}/imvus/{id}/messages"), ("POST", "/v1/tenants/{tenant}/swarms/{id}/work")];

/// Whether an unauthenticated refusal from `source` is recorded now (one per source per
/// [`UNAUTHENTICATED_SAMPLE_MS`]).
fn sample_unauthenticated(state: &AppState, source: &str, now_ms: u64) -> bool {
    let mut seen = state.refusal_samples.0.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= SAMPLED_SOURCES_MAX && !seen.contains_key(source) {
        seen.clear();
    }
    match seen.get(source) {
        Some(at) if now_ms.saturating_sub(*at) < UNAUTHENTICATED_SAMPLE_MS => false,
        _ => {
            seen.insert(source.to_owned(), now_ms);
            true
        }
    }
}

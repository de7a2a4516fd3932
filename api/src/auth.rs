//! Authentication and authorisation of every request, in one middleware, from one table.
//!
//! [`ACCESS`] says, for every route and method, what a caller needs: nothing (`/health`),
//! a scrape right (`/metrics`, open when the node listens on loopback only), any valid key,
//! or one [`Permission`]. The middleware ([`authorize`]) runs after routing:
//! 1. a method with no row needs the cluster permission (it is a 405 for the router, or a
//!    handler added without a rule: the authorisation-matrix test fails on it);
//! 2. a key in the URL's query is refused (it ends up in logs and histories): headers only;
//! 3. `Authorization: Bearer <key>` is checked against the key registry (401 with a stable
//!    code otherwise, and `WWW-Authenticate: Bearer`);
//! 4. on `/v1/tenants/{tenant}/…` the key must belong to that tenant (a cluster admin's acts on
//!    any): 403 otherwise, naming neither the other tenant nor whether it exists;
//! 5. the key's role must grant the route's permission: 403 otherwise.
//!
//! The handler then finds the [`Caller`] (what the runtime's handshake decides from) and the
//! [`Principal`] in the request's extensions. The OpenAPI document is annotated from the same
//! table ([`annotate`]): each operation lists the roles that may call it.
//!
//! How long resolving an admitted caller takes (steps 3–5, the tenant's policy and its
//! rate-limit admission) is recorded in `vcos_http_auth_resolution_seconds`. A router built by
//! `router_without_security_for_benchmarks` skips all of this (`vcos bench http`'s baseline).

use std::net::SocketAddr;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use vcos_actors::auth::{AuthError, Permission, Principal, Role};
use vcos_actors::{Caller, TenantId};

use crate::error::ApiError;
use crate::AppState;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Nothing: anyone may call it.
    Open,
    /// `/metrics`: open when the node listens on loopback, else the `scrape` permission.
    Metrics,
    /// Any valid key, whatever its role.
    AnyKey,
    /// A key whose role grants this.
    Need(Permission),
}

use Access::{AnyKey, Metrics, Need, Open};
use Permission::{Administer, Cluster, Operate, Read, Use};

/// Every route: method, template, access. Keep in step with `routes::build` (a test compares
/// this table with the OpenAPI document both ways).
pub(crate) const ACCESS: &[(&str, &str, Access)] = &[
    ("GET", "/health", Open),
    ("GET", "/metrics", Metrics),
    ("GET", "/openapi.json", AnyKey),
    ("GET", "/v1/kinds", AnyKey),
    ("GET", "/v1/whoami", AnyKey),
    ("GET", "/v1/models", Need(Read)),
    ("POST", "/v1/embeddings", Need(Use)),
    ("POST", "/v1/chat/completions", Need(Use)),
    ("GET", "/v1/tenants", AnyKey),
    ("POST", "/v1/tenants", Need(Cluster)),
    ("DELETE", "/v1/tenants/{tenant}", Need(Cluster)),
    ("GET", "/v1/tenants/{tenant}/erasure", Need(Cluster)),
    ("POST", "/v1/tenants/{tenant}/keys", Need(Administer)),
    ("GET", "/v1/tenants/{tenant}/keys", Need(Administer)),
    ("GET", "/v1/tenants/{tenant}/keys/{key_id}", Need(Administer)),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}", Need(Administer)),
    ("POST", "/v1/tenants/{tenant}/keys/{key_id}/rotate", Need(Administer)),
    ("POST", "/v1/keys", Need(Cluster)),
    ("GET", "/v1/keys", Need(Cluster)),
    ("GET", "/v1/keys/{key_id}", Need(Cluster)),
    ("DELETE", "/v1/keys/{key_id}", Need(Cluster)),
    ("POST", "/v1/keys/{key_id}/rotate", Need(Cluster)),
    ("PUT", "/v1/tenants/{tenant}/kv/{key}", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/kv/{key}", Need(Read)),
    ("DELETE", "/v1/tenants/{tenant}/kv/{key}", Need(Use)),
    ("POST", "/v1/tenants/{tenant}/kv/{key}/cas", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/kv", Need(Read)),
    ("GET", "/v1/tenants/{tenant}/export", Need(Administer)),
    ("GET", "/v1/tenants/{tenant}/usage", Need(Read)),
    ("GET", "/v1/tenants/{tenant}/bill", Need(Administer)),
    ("GET", "/v1/tenants/{tenant}/audit", Need(Administer)),
    ("GET", "/v1/tenants/{tenant}/audit/verify", Need(Administer)),
    ("GET", "/v1/audit", Need(Cluster)),
    ("GET", "/v1/audit/verify", Need(Cluster)),
    ("POST", "/v1/tenants/{tenant}/imvus", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/imvus/{id}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/imvus/{id}/messages", Need(Use)),
    ("POST", "/v1/tenants/{tenant}/imvus/{id}/pause", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/imvus/{id}/resume", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/imvus/{id}/terminate", Need(Operate)),
    ("GET", "/v1/tenants/{tenant}/imvus/{id}/history", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/sessions", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/sessions", Need(Read)),
    ("GET", "/v1/tenants/{tenant}/sessions/{id}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/sessions/{id}/pause", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/sessions/{id}/resume", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/sessions/{id}/terminate", Need(Operate)),
    ("GET", "/v1/tenants/{tenant}/sessions/{id}/screenshot.png", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/workspaces", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/workspaces/{id}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/workspaces/{id}/pause", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/workspaces/{id}/resume", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/workspaces/{id}/terminate", Need(Operate)),
    ("GET", "/v1/tenants/{tenant}/workflow-definitions", Need(Read)),
    ("PUT", "/v1/tenants/{tenant}/workflow-definitions/{name}", Need(Operate)),
    ("GET", "/v1/tenants/{tenant}/workflow-definitions/{name}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/workflows", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/workflows", Need(Read)),
    ("GET", "/v1/tenants/{tenant}/workflows/{id}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/workflows/{id}/signals/{name}", Need(Use)),
    ("POST", "/v1/tenants/{tenant}/workflows/{id}/cancel", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/workflows/{id}/retry", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/workflows/{id}/skip", Need(Operate)),
    ("POST", "/v1/tenants/{tenant}/swarms", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/swarms/{id}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/swarms/{id}/work", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/swarms/{id}/credits", Need(Read)),
    ("PUT", "/v1/tenants/{tenant}/swarms/{id}/memory/{key}", Need(Use)),
    ("GET", "/v1/tenants/{tenant}/swarms/{id}/memory/{key}", Need(Read)),
    ("POST", "/v1/tenants/{tenant}/swarms/{id}/votes", Need(Use)),
    ("POST", "/v1/tenants/{tenant}/swarms/{id}/votes/{vote}/ballots", Need(Use)),
    ("GET", "/v1/canon/status", Need(Cluster)),
    ("GET", "/v1/cluster", Need(Cluster)),
    ("GET", "/v1/cluster/secret", Need(Cluster)),
    ("PUT", "/v1/canon/kv/{key}", Need(Cluster)),
    ("GET", "/v1/canon/kv/{key}", Need(Cluster)),
    ("DELETE", "/v1/canon/kv/{key}", Need(Cluster)),
    ("POST", "/v1/canon/kv/{key}/cas", Need(Cluster)),
    ("GET", "/v1/canon/kv", Need(Cluster)),
    ("POST", "/v1/canon/members", Need(Cluster)),
    ("POST", "/v1/canon/members/{id}/promote", Need(Cluster)),
    ("DELETE", "/v1/canon/members/{id}", Need(Cluster)),
];

/// Swagger UI's pages (not in the document): any valid key.
const DOCS_ACCESS: Access = AnyKey;

/// Query parameters that carry keys in other APIs; refused here wherever they appear.
const KEY_QUERY_PARAMS: &[&str] = &["api_key", "apikey", "key", "token", "access_token", "auth", "authorization"];

/// The rule of `method` on `route`.
pub(crate) fn access_of(method: &Method, route: &str) -> Option<Access> {
    if route == crate::routes::DOCS_PATH || route.starts_with(&format!("{}/", crate::routes::DOCS_PATH)) {
        return Some(DOCS_ACCESS);
    }
    ACCESS.iter().find(|(m, r, _)| *m == method.as_str() && *r == route).map(|(_, _, a)| *a)
}

/// The address the node's HTTP listener is bound to (set by [`crate::serve`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenAddr(pub(crate) SocketAddr);

/// The limits of the key's tenant (tenant keys only; see `limits.rs`): a share of its rate
/// and of its concurrency, held until the answer is made.
fn limit(state: &AppState, req: &Request, now_ms: u64) -> Result<Option<crate::limits::InFlight>, ApiError> {
    let Some(tenant) = req.extensions().get::<Principal>().and_then(|p| p.tenant.clone()) else { return Ok(None) };
    let Ok(entry) = state.runtime.tenant_or_load(&tenant) else { return Ok(None) };
    state.limiter.admit(&tenant, entry.policy.limits(), now_ms).map(Some)
}

/// The raw `{tenant}` of the request's route, when it has one (set by [`check`]).
#[derive(Clone, Debug)]
struct PathTenant(String);

/// The middleware; see the module docs. It also gives every request an id (`x-request-id`:
/// the caller's, if it is a sane one, else a fresh one) and records in the audit log every
/// mutating request and every refused one.
pub(crate) async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if state.without_security {
        return without_security(req, next).await;
    }
    let request_id = crate::audit::request_id(&state, req.headers());
    let facts = crate::audit::RequestFacts::of(&req, &request_id);
    let now_ms = state.runtime.clock().now_ms();
    let source = facts.source_ip();
    // Resolving the caller, timed (the wall clock feeds a metric only; the decisions use the
    // runtime's clock): the source's failures, the key, tenant scope and role, then the
    // tenant's policy and its admission by the limiter.
    let resolution_started = std::time::Instant::now();
    let checked = match source.as_deref().map(|ip| state.limiter.check_source(ip, now_ms)) {
        Some(Err(e)) => Err(e),
        _ => check(&state, &mut req).await,
    };
    let admitted = checked.and_then(|()| limit(&state, &req, now_ms));
    if admitted.is_ok() && req.extensions().get::<Principal>().is_some() {
        metrics::histogram!(crate::HTTP_AUTH_RESOLUTION_METRIC).record(resolution_started.elapsed().as_secs_f64());
    }
    let mut response = match admitted {
        Ok(in_flight) => {
            let (principal, tenant) = (req.extensions().get::<Principal>().cloned(), req.extensions().get::<PathTenant>().map(|t| t.0.clone()));
            let response = next.run(req).await;
            drop(in_flight);
            crate::audit::after(&state, facts, principal.as_ref(), tenant.as_deref(), response.status());
            response
        }
        Err(e) => {
            record_refusal(&e);
            if let (Some(ip), ApiError::Unauthenticated { .. }) = (&source, &e) {
                state.limiter.failed(ip, now_ms);
            }
            let (principal, tenant) = (req.extensions().get::<Principal>().cloned(), req.extensions().get::<PathTenant>().map(|t| t.0.clone()));
            let response = e.into_response();
            crate::audit::after(&state, facts, principal.as_ref(), tenant.as_deref(), response.status());
            response
        }
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The facade of [`crate::router_without_security_for_benchmarks`]: no key, scope, role,
/// limit, request id or audit record; the handler acts as an in-process caller of the path's
/// tenant. Refused unless the node listens on loopback ([`crate::serve`] says where).
async fn without_security(mut req: Request, next: Next) -> Response {
    if !req.extensions().get::<ListenAddr>().is_some_and(|a| a.0.ip().is_loopback()) {
        return ApiError::Forbidden("this facade has no security: it serves benchmarks, on loopback only".into()).into_response();
    }
    let caller = match path_tenant(&mut req).await.map(|t| TenantId::new(&t)) {
        Some(Ok(tenant)) => Caller::internal(&tenant, "benchmark"),
        // No tenant in the path, or a malformed one (the route's extractor says what is wrong).
        _ => Caller::anonymous("benchmark"),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn check(state: &AppState, req: &mut Request) -> Result<(), ApiError> {
    let Some(route) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()) else {
        return Ok(()); // no route: the fallback answers 404 and touches nothing
    };
    // No row: a method the route does not serve (the router answers 405 after this), or a
    // handler added without a rule, which then answers cluster admins only (and the
    // authorisation-matrix test fails).
    let access = access_of(req.method(), &route).unwrap_or(Need(Cluster));
    let needed = match access {
        Open => return Ok(()),
        Metrics if req.extensions().get::<ListenAddr>().is_some_and(|a| a.0.ip().is_loopback()) => return Ok(()),
        Metrics => Some(Permission::Scrape),
        AnyKey => None,
        Need(p) => Some(p),
    };
    refuse_key_in_query(req.uri().query())?;
    let principal = authenticate(state, req)?;
    // Known from here on, for the audit record of a refusal too.
    req.extensions_mut().insert(principal.clone());
    let tenant = path_tenant(req).await;
    if let Some(t) = &tenant {
        req.extensions_mut().insert(PathTenant(t.clone()));
    }
    if let Some(path_tenant) = &tenant {
        let own = principal.tenant.as_ref().is_some_and(|t| t.as_str() == path_tenant);
        if !own && principal.role != Role::ClusterAdmin {
            return Err(ApiError::Forbidden("this key may not act on this tenant".into()));
        }
    }
    if let Some(permission) = needed {
        if !principal.role.grants(permission) {
            let roles: Vec<&str> = Role::granting(permission).into_iter().map(Role::as_str).collect();
            return Err(ApiError::Forbidden(format!(
                "this key is {}; this route needs `{permission}` ({})",
                principal.role,
                roles.join(", ")
            )));
        }
    }
    let caller = match tenant.as_deref().map(TenantId::new) {
        Some(Ok(t)) => Caller::keyed(&t, principal.role, &principal.key_id),
        // No tenant in the path, or a malformed one (the route's extractor says what is wrong).
        _ => Caller { authenticated_tenant: principal.tenant.clone(), role: Some(principal.role), principal: format!("key:{}", principal.key_id) },
    };
    req.extensions_mut().insert(caller);
    Ok(())
}

fn refuse_key_in_query(query: Option<&str>) -> Result<(), ApiError> {
    let Some(query) = query else { return Ok(()) };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if KEY_QUERY_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k)) || value.starts_with(vcos_actors::auth::key::KEY_PREFIX) {
            return Err(ApiError::Unauthenticated {
                code: "key_in_url",
                message: "API keys go in the `Authorization: Bearer <key>` header only, never in the URL (URLs end up in logs); rotate a key that was sent so".into(),
            });
        }
    }
    Ok(())
}

fn authenticate(state: &AppState, req: &Request) -> Result<Principal, ApiError> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        let several = req.headers().get_all(AUTHORIZATION).iter().count() > 1;
        return Err(ApiError::Unauthenticated {
            code: if several { "key_malformed" } else { "key_missing" },
            message: if several {
                "send one Authorization header, not several".into()
            } else {
                "this route needs an API key: send `Authorization: Bearer <key>`".into()
            },
        });
    };
    let malformed = || ApiError::Unauthenticated { code: "key_malformed", message: "the Authorization header must be `Bearer <key>`".into() };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, key) = value.split_once(' ').ok_or_else(malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(malformed());
    }
    state.runtime.keys().authenticate(key).map_err(|e| match e {
        AuthError::Unavailable(reason) => ApiError::Actor(vcos_actors::ActorError::Unavailable(reason)),
        other => ApiError::Unauthenticated { code: other.code(), message: other.to_string() },
    })
}

/// The raw `{tenant}` segment of the route, if it has one.
async fn path_tenant(req: &mut Request) -> Option<String> {
    use axum::extract::FromRequestParts;
    let (mut parts, body) = std::mem::take(req).into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    *req = Request::from_parts(parts, body);
    params?.iter().find(|(name, _)| *name == "tenant").map(|(_, value)| value.to_owned())
}

fn record_refusal(e: &ApiError) {
    let (status, code) = e.status_and_code();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        metrics::counter!("vcos_http_auth_refusals_total", "code" => code).increment(1);
    }
}

/// Adds an `ErrorBody` answer for `status` to `op`, unless it documents one already.
pub(crate) fn add_error_response(op: &mut Operation, status: &str, text: &str) {
    op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        ResponseBuilder::new().description(text).content("application/json", content).build().into()
    });
}

/// Annotates each operation of the document with its rule: the security requirement (the
/// scopes are the roles that may call it), a line in its description, and the 401, 403 and
/// 429 answers it may give.
pub(crate) fn annotate(openapi: &mut utoipa::openapi::OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let ops: [(&str, &mut Option<Operation>); 5] =
            [("GET", &mut item.get), ("POST", &mut item.post), ("PUT", &mut item.put), ("DELETE", &mut item.delete), ("PATCH", &mut item.patch)];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let Some(access) = ACCESS.iter().find(|(m, r, _)| *m == method && r == path).map(|(_, _, a)| *a) else { continue };
            let (line, roles): (String, Option<Vec<&str>>) = match access {
                Open => ("**Access**: open, no key.".into(), None),
                Metrics => (
                    "**Access**: open when the node listens on loopback; otherwise a key with `scrape` (metrics, cluster_admin).".into(),
                    Some(vec!["metrics", "cluster_admin"]),
                ),
                AnyKey => ("**Access**: any valid key.".into(), Some(Vec::new())),
                Need(p) => {
                    let roles: Vec<&str> = Role::granting(p).into_iter().map(Role::as_str).collect();
                    (format!("**Access**: needs `{p}`: {}.", roles.join(", ")), Some(roles))
                }
            };
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
                _ => line,
            });
            let Some(roles) = roles else {
                op.security = Some(vec![SecurityRequirement::default()]);
                continue;
            };
            op.security = Some(vec![SecurityRequirement::new("bearer", roles)]);
            for (status, text) in [
                ("401", "`key_missing`, `key_malformed`, `key_unknown`, `key_revoked`, `key_expired`, `key_in_url`: no valid key"),
                ("403", "`forbidden`: the key belongs to another tenant, or its role lacks the permission"),
                (
                    "429",
                    "`rate_limited`, `too_many_concurrent`: over the tenant's request rate or concurrency on this node; `too_many_failures`: \
                     too many failed authentications from this address; `quota_exceeded`: a tenant quota is used up. `Retry-After` says when to retry \
                     (absent for a quota that does not renew)",
                ),
            ] {
                add_error_response(op, status, text);
            }
        }
    }
}

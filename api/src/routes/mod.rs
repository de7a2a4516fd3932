//! The routes, and the OpenAPI document generated from them.
//!
//! Every handler carries `#[utoipa::path]` and is registered through utoipa-axum's
//! `routes!`, so a route cannot exist without being documented, and the document cannot list
//! a route that does not exist. Handlers are thin: extract, call the runtime, convert to a wire
//! type; status and error mapping live in `error.rs`.
//!
//! - `system`: health, metrics, the OpenAPI document, kinds.
//! - `tenants`: list and create tenants.
//! - `imvus`: create, inspect, message, pause/resume/terminate, history.
//! - `swarms`: create, inspect, submit work, credits, shared memory, votes.
//! - `sessions`: virtual desktop sessions (create, list, pause/resume/terminate, screenshot).
//! - `workflows`: durable workflows: definitions (JSON/YAML), instances, signals, dead letters.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::{middleware, Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::{Config, SwaggerUi};
use vcos_actors::{Caller, TenantEntry, TenantId};

use crate::error::{ApiError, ErrorBody};
use crate::{middleware as mw, AppState, BODY_LEN_MAX};

mod audit;
mod canon;
mod cluster;
mod export;
mod imvus;
mod keys;
mod openai;
mod session_owner;
mod sessions;
mod swarms;
mod system;
mod tenant_kv;
mod tenants;
mod usage;
mod workflows;

/// Where the OpenAPI document is served.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";
/// Where Swagger UI is served.
pub(crate) const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "v-COS swarm",
        description = "HTTP facade of the v-COS actor runtime. Errors are always JSON: \
            `{\"code\": \"...\", \"message\": \"...\"}` (see the ErrorBody schema for the codes). \
            Every route but `/health` needs `Authorization: Bearer <key>` (keys are issued by the \
            server: `vcos up` writes the first cluster-admin key to `<data-dir>/admin.key`); each \
            operation says which roles may call it. No valid key: 401; a key of another tenant or \
            a role without the permission: 403."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "system", description = "Health, metrics, the API document, kinds"),
        (name = "tenants", description = "Isolated customers and their policies"),
        (name = "audit", description = "Hash-chained records of every change and every refusal, per tenant and for the cluster"),
        (name = "keys", description = "API keys: issue, list, rotate, revoke (secrets are shown once, stored hashed)"),
        (name = "imvus", description = "IMVUs: create, message, lifecycle, history"),
        (name = "canon", description = "The Canon Memory Layer: status and lag, key-value reads and writes, membership"),
        (name = "cluster", description = "Members, their state and the IMVU buckets each owns"),
        (name = "swarms", description = "Swarms of IMVUs: work items pulled by members, credits, shared memory, votes"),
        (name = "inference", description = "Models in OpenAI's shapes: list, embeddings, chat completions (streamed too); tokens count as the key's tenant's usage"),
        (name = "workflows", description = "Durable workflows: definitions in JSON or YAML (validated, versioned), instances journaled in the canon, signals, cancellation with compensation, the dead-letter list"),
        (name = "sessions", description = "Virtual desktop sessions: real Xvfb desktops at a tier, paused and resumed, screenshots, VNC, metered in desktop seconds"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served, serialised once from the routes.
#[derive(Clone)]
pub(crate) struct OpenApiJson(pub(crate) Bytes);

/// Builds the routes and their document; see [`crate::router`].
pub(crate) fn build(state: AppState) -> Router {
    let (routes, openapi) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi_json))
        .routes(routes!(system::kinds))
        .routes(routes!(system::whoami))
        .routes(routes!(openai::list_models))
        .routes(routes!(openai::embeddings))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(tenants::list_tenants, tenants::create_tenant))
        .routes(routes!(tenants::erase_tenant))
        .routes(routes!(tenants::erasure_status))
        .routes(routes!(keys::issue_tenant_key, keys::list_tenant_keys))
        .routes(routes!(keys::get_tenant_key, keys::revoke_tenant_key))
        .routes(routes!(keys::rotate_tenant_key))
        .routes(routes!(keys::issue_cluster_key, keys::list_cluster_keys))
        .routes(routes!(keys::get_cluster_key, keys::revoke_cluster_key))
        .routes(routes!(keys::rotate_cluster_key))
        .routes(routes!(tenant_kv::put, tenant_kv::get, tenant_kv::delete))
        .routes(routes!(tenant_kv::cas))
        .routes(routes!(tenant_kv::list))
        .routes(routes!(export::export))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::bill))
        .routes(routes!(audit::tenant_audit))
        .routes(routes!(audit::verify_tenant_audit))
        .routes(routes!(audit::cluster_audit))
        .routes(routes!(audit::verify_cluster_audit))
        .routes(routes!(imvus::create_imvu))
        .routes(routes!(imvus::get_imvu))
        .routes(routes!(imvus::send_message))
        .routes(routes!(imvus::pause))
        .routes(routes!(imvus::resume))
        .routes(routes!(imvus::terminate))
        .routes(routes!(imvus::history))
        .routes(routes!(swarms::create_swarm))
        .routes(routes!(swarms::get_swarm))
        .routes(routes!(swarms::submit_work))
        .routes(routes!(swarms::credits))
        .routes(routes!(swarms::memory_put, swarms::memory_get))
        .routes(routes!(swarms::open_vote))
        .routes(routes!(swarms::cast_ballot))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session))
        .routes(routes!(sessions::pause_session))
        .routes(routes!(sessions::resume_session))
        .routes(routes!(sessions::terminate_session))
        .routes(routes!(sessions::screenshot))
        .routes(routes!(sessions::create_workspace))
        .routes(routes!(sessions::get_workspace))
        .routes(routes!(sessions::pause_workspace))
        .routes(routes!(sessions::resume_workspace))
        .routes(routes!(sessions::terminate_workspace))
        .routes(routes!(workflows::list_definitions))
        .routes(routes!(workflows::put_definition, workflows::get_definition))
        .routes(routes!(workflows::start, workflows::list))
        .routes(routes!(workflows::get))
        .routes(routes!(workflows::signal))
        .routes(routes!(workflows::cancel))
        .routes(routes!(workflows::retry))
        .routes(routes!(workflows::skip))
        .routes(routes!(canon::status))
        .routes(routes!(cluster::cluster))
        .routes(routes!(cluster::cluster_secret))
        .routes(routes!(canon::put, canon::get, canon::delete))
        .routes(routes!(canon::cas))
        .routes(routes!(canon::list))
        .routes(routes!(canon::add_member))
        .routes(routes!(canon::promote))
        .routes(routes!(canon::remove_member))
        .split_for_parts();
    let mut openapi = openapi;
    crate::auth::annotate(&mut openapi);
    document_canon_errors(&mut openapi);
    document_extractors(&mut openapi);
    let swagger: Router<AppState> = SwaggerUi::new(DOCS_PATH).config(Config::new([OPENAPI_PATH])).into();
    routes
        .merge(swagger)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX))
        .layer(RequestBodyLimitLayer::new(BODY_LEN_MAX))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::authorize))
        .layer(middleware::from_fn(mw::json_errors))
        .layer(middleware::from_fn(mw::observe))
        .layer(Extension(OpenApiJson(openapi_bytes(&openapi))))
        .with_state(state)
}

/// The answers every canon route may give besides its own (a malformed key, region or
/// parameter; an unknown region; a store failure; no quorum), so the document lists every
/// status the server returns.
fn document_canon_errors(openapi: &mut utoipa::openapi::OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut().filter(|(p, _)| p.starts_with("/v1/canon/")) {
        for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete].into_iter().flatten() {
            for (status, text) in [
                ("400", "`bad_request`: a malformed key, region, parameter or body"),
                ("404", "`not_found`: no such region (or key)"),
                ("500", "`store_error`: the canon failed"),
                ("503", "`canon_unavailable`: no quorum now (retry after `Retry-After`); `unavailable`: the node is stopping"),
            ] {
                crate::auth::add_error_response(op, status, text);
            }
            if path.starts_with("/v1/canon/members") {
                crate::auth::add_error_response(op, "409", "`refused` or `learner_not_promoted`: the change would lose quorum, or the learner did not catch up");
            }
        }
    }
}

/// What the shared extractors check, on every operation that uses them (`extract.rs`, the
/// key-value and memory keys): path segments' text, and the answers of a JSON body. Kept
/// here, from the same rules, so that a request the document calls valid is never refused for
/// its form, and every refusal it may get is listed.
fn document_extractors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    for (path, item) in openapi.paths.paths.iter_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch].into_iter().flatten() {
            for parameter in op.parameters.iter_mut().flatten() {
                let RefOr::T(parameter) = parameter else { continue };
                if parameter.parameter_in != utoipa::openapi::path::ParameterIn::Path {
                    continue;
                }
                let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema else { continue };
                let (pattern, min_length, max_length) = match parameter.name.as_str() {
                    // `TenantId::new`.
                    "tenant" => (Some(TENANT_NAME_PATTERN), None, None),
                    // `is_key_id`.
                    "key_id" => (Some("^[0-9a-f]{16}$"), None, None),
                    // `check_mem_key`: 1..=256 bytes (characters here: a name of ASCII fits both).
                    "key" if path.contains("/memory/") => (Some("^[^/]+$"), Some(1), Some(256)),
                    // `canon::full_key`: 1..=1024 bytes.
                    "key" => (None, Some(1), Some(1024)),
                    _ => continue,
                };
                schema.pattern = pattern.map(str::to_owned).or(schema.pattern.take());
                schema.min_length = min_length.or(schema.min_length);
                schema.max_length = max_length.or(schema.max_length);
            }
            if op.request_body.is_some() {
                // `ApiJson`.
                for (status, text) in [
                    ("400", "`bad_request`: malformed JSON, a missing, wrong or unknown field (the message names it)"),
                    ("413", "`too_large`: body over 1 MiB"),
                    ("415", "`unsupported_media_type`: the body is declared as something else than JSON"),
                ] {
                    crate::auth::add_error_response(op, status, text);
                }
            }
        }
    }
}

/// Tenant names, as `TenantId::new` takes them.
const TENANT_NAME_PATTERN: &str = "^[a-z0-9_-]{1,31}$";

fn openapi_bytes(openapi: &utoipa::openapi::OpenApi) -> Bytes {
    match serde_json::to_vec(openapi) {
        Ok(json) => Bytes::from(json),
        Err(e) => {
            // The document is plain data; failing to serialise it is a bug, not worth a crash.
            tracing::error!(error = %e, "the OpenAPI document does not serialise");
            Bytes::from_static(b"{}")
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}; see {OPENAPI_PATH}", uri.path()))
}

/// The tenant a request addresses. The middleware already checked that the caller's key acts
/// for it (`auth.rs`); this loads its entry (404 if there is none).
pub(crate) fn readable_tenant(state: &AppState, tenant: &TenantId, caller: &Caller) -> Result<Arc<TenantEntry>, ApiError> {
    debug_assert!(caller.may(tenant, vcos_actors::auth::Permission::Read));
    Ok(state.runtime.tenant_or_load(tenant)?)
}

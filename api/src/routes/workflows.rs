//! Durable workflows over HTTP: definitions (JSON or YAML, validated on upload, versioned),
//! instances (start, inspect, signal, cancel), and the dead-letter list (retry, skip).
//!
//! An instance is an IMVU of kind `workflow` (`vcos_actors::workflow`): these handlers create
//! it where placement puts it and send it messages, like any IMVU. A definition is stored in
//! the canon under `t/{tenant}/wfdef/{name}/{version}`, each upload a new version (guarded, so
//! two uploads never take one number); an instance starts with the latest version (or the one
//! asked for) and the sub-workflows it names, and keeps them to its end.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use vcos_actors::store::{commit_durable, CanonWrite};
use vcos_actors::workflow::definition::{self, Definition, Known};
use vcos_actors::workflow::{refusal, schedule, Program, WorkflowState, Workflows};
use vcos_actors::{ActorError, Caller, ImvuId, ImvuKey, TenantId};

use super::readable_tenant;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth, TenantPath};
use crate::AppState;

/// Versions of one definition kept at most (older ones stay readable until the tenant goes).
const VERSIONS_MAX: usize = 10_000;
/// Workflows listed per page at most.
const LIST_LEN_MAX: usize = 1_000;
/// Sub-workflow definitions resolved for one start at most (nested).
const LIBRARY_LEN_MAX: usize = 64;

fn definitions_prefix(tenant: &TenantId) -> String {
    format!("t/{tenant}/wfdef/")
}

fn versions_prefix(tenant: &TenantId, name: &str) -> String {
    format!("{}{name}/", definitions_prefix(tenant))
}

fn version_key(tenant: &TenantId, name: &str, version: u32) -> String {
    format!("{}{version:010}", versions_prefix(tenant, name))
}

/// The stored versions of `name`, oldest first.
fn versions(state: &AppState, tenant: &TenantId, name: &str) -> Result<Vec<(u32, Vec<u8>)>, ApiError> {
    let prefix = versions_prefix(tenant, name);
    let rows = state.runtime.store().scan_prefix(&prefix, None, VERSIONS_MAX).map_err(ActorError::from)?;
    Ok(rows.into_iter().filter_map(|(key, bytes)| key.get(prefix.len()..).and_then(|v| v.parse().ok()).map(|v| (v, bytes))).collect())
}

/// Version `version` of `name` (the latest when `None`).
fn load(state: &AppState, tenant: &TenantId, name: &str, version: Option<u32>) -> Result<(u32, Definition), ApiError> {
    let all = versions(state, tenant, name)?;
    let found = match version {
        Some(v) => all.into_iter().find(|(n, _)| *n == v),
        None => all.into_iter().last(),
    };
    let Some((version, bytes)) = found else {
        let which = version.map_or_else(String::new, |v| format!(" version {v}"));
        return Err(ApiError::NotFound(format!("no workflow definition {name:?}{which} in tenant {tenant}")));
    };
    let definition = serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(format!("stored definition {name}@{version} does not read: {e}")))?;
    Ok((version, definition))
}

/// The body as a JSON value: YAML when the content type says so, else JSON.
fn body_value(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            serde_yaml_ng::from_slice::<Value>(body).map_err(|e| ApiError::BadRequest(format!("the body is not YAML: {e}")))
        }
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}"))),
        other => Err(ApiError::UnsupportedMediaType(format!("a definition is JSON (application/json) or YAML (application/yaml), not {other}"))),
    }
}

/// A stored definition version.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct DefinitionView {
    /// Its name.
    name: String,
    /// Its version (1, 2, …: each upload is a new one).
    version: u32,
    /// The definition, as validated.
    #[schema(value_type = Object)]
    definition: Value,
}

/// Uploads a new version of a workflow definition (JSON, or YAML with
/// `Content-Type: application/yaml`). It is validated first: unknown keys and step kinds,
/// duplicate ids, unbound variables, unbounded loops, known type mismatches, unknown
/// activities and sub-workflows are refused with the path to the fault.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/workflow-definitions/{name}", operation_id = "workflow_definition_put", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Definition name (1–128 letters, digits, `-`, `_`, `.`)")),
    request_body(content = Object, description = "The definition (JSON or YAML); its `name` is the path's when absent"),
    security((), ("bearer" = [])),
    responses((status = 201, description = "Stored as a new version", body = DefinitionView),
        (status = 400, description = "`bad_request`: not JSON/YAML, or invalid: the message gives the path to the fault and what is wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: another upload took the version; retry", body = ErrorBody),
        (status = 413, description = "`too_large`: over the body limit", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor YAML", body = ErrorBody),
        (status = 503, description = "`unavailable`: the canon has no quorum now; retry", body = ErrorBody)))]
pub(super) async fn put_definition(
    State(state): State<AppState>,
    Path((tenant, name)): Path<(String, String)>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DefinitionView>), ApiError> {
    let tenant = TenantId::new(&tenant)?;
    readable_tenant(&state, &tenant, &caller)?;
    let mut value = body_value(&headers, &body)?;
    match value.as_object_mut() {
        Some(object) => match object.get("name").and_then(Value::as_str) {
            Some(given) if given != name => return Err(ApiError::BadRequest(format!("/name: the body names {given:?}, the path {name:?}"))),
            Some(_) => {}
            None => {
                object.insert("name".into(), Value::String(name.clone()));
            }
        },
        None => return Err(ApiError::BadRequest("/: a definition is an object".into())),
    }
    // Validated in a block of its own: the checks borrow non-`Send` closures, which must not
    // live across the commit's await.
    let definition = {
        let activities = state.runtime.activities();
        let known_activity = |n: &str| activities.contains(n);
        let known_workflow = |n: &str| n == name || versions(&state, &tenant, n).is_ok_and(|v| !v.is_empty());
        let known = Known { activity: &known_activity, workflow: &known_workflow };
        definition::parse_value(&value, &known).map_err(|e| ApiError::BadRequest(format!("invalid definition: {e}")))?
    };
    let stored = serde_json::to_vec(&definition).map_err(|e| ApiError::Internal(e.to_string()))?;
    let version = versions(&state, &tenant, &name)?.last().map_or(1, |(v, _)| v + 1);
    let key = version_key(&tenant, &name, version);
    let writes = vec![CanonWrite::Expect { key: key.clone(), value: None }, CanonWrite::Put { key, value: stored }];
    commit_durable(state.runtime.store().as_ref(), writes).await.map_err(|e| match e {
        vcos_actors::StoreError::Conflict { .. } => ApiError::Conflict(format!("another upload took version {version} of {name:?}; retry")),
        other => ApiError::Actor(other.into()),
    })?;
    let definition = serde_json::to_value(&definition).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(DefinitionView { name, version, definition })))
}

/// Which version, and in which format.
#[derive(Deserialize, IntoParams)]
pub(crate) struct DefinitionQuery {
    /// A version (default: the latest).
    version: Option<u32>,
    /// `json` (default) or `yaml`: the definition alone, for export.
    format: Option<String>,
}

/// A workflow definition: the latest version, or `?version=`; `?format=yaml` (or `json`)
/// exports the definition alone, ready to upload again.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/workflow-definitions/{name}", operation_id = "workflow_definition_get", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Definition name"), DefinitionQuery),
    security((), ("bearer" = [])),
    responses((status = 200, description = "The definition (with `format`: JSON or YAML alone)", body = DefinitionView),
        (status = 400, description = "`bad_request`: a bad tenant name or format", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant, definition or version", body = ErrorBody)))]
pub(super) async fn get_definition(
    State(state): State<AppState>,
    Path((tenant, name)): Path<(String, String)>,
    Query(query): Query<DefinitionQuery>,
    Auth(caller): Auth,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(&tenant)?;
    readable_tenant(&state, &tenant, &caller)?;
    let (version, definition) = load(&state, &tenant, &name, query.version)?;
    match query.format.as_deref() {
        None => {
            let definition = serde_json::to_value(&definition).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(Json(DefinitionView { name, version, definition }).into_response())
        }
        Some("json") => Ok(Json(definition).into_response()),
        Some("yaml") => {
            let text = serde_yaml_ng::to_string(&definition).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!("query `format`: `json` or `yaml`, not {other:?}"))),
    }
}

/// One definition in a listing.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct DefinitionSummary {
    /// Its name.
    name: String,
    /// Its latest version.
    latest_version: u32,
}

/// The tenant's workflow definitions, by name, with their latest versions.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/workflow-definitions", operation_id = "workflow_definition_list", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "The definitions", body = [DefinitionSummary]),
        (status = 400, description = "`bad_request`: a bad tenant name", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody)))]
pub(super) async fn list_definitions(State(state): State<AppState>, TenantPath(tenant): TenantPath, Auth(caller): Auth) -> Result<Json<Vec<DefinitionSummary>>, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    let prefix = definitions_prefix(&tenant);
    let rows = state.runtime.store().scan_prefix(&prefix, None, VERSIONS_MAX * 10).map_err(ActorError::from)?;
    let mut latest: BTreeMap<String, u32> = BTreeMap::new();
    for (key, _) in rows {
        let Some((name, version)) = key.get(prefix.len()..).and_then(|rest| rest.rsplit_once('/')) else { continue };
        let Ok(version) = version.parse::<u32>() else { continue };
        let entry = latest.entry(name.to_owned()).or_insert(version);
        *entry = (*entry).max(version);
    }
    Ok(Json(latest.into_iter().map(|(name, latest_version)| DefinitionSummary { name, latest_version }).collect()))
}

/// What to start: a definition (by name, at its latest version or the one given) or a Rust
/// workflow registered on the node.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// A definition's name.
    definition: Option<String>,
    /// Its version (default: the latest).
    version: Option<u32>,
    /// A Rust workflow's name (instead of `definition`).
    workflow: Option<String>,
    /// The input (any JSON).
    #[serde(default)]
    input: Value,
    /// Cancel (and compensate) if not finished within this (default: the definition's).
    timeout_ms: Option<u64>,
    /// Run it on a schedule instead: once per slot of this period (slots aligned on the Unix
    /// epoch, at least 100 ms); the answer is the schedule, a workflow of its own (cancel it to
    /// stop the schedule).
    every_ms: Option<u64>,
    /// With `every_ms`: this many runs, then the schedule ends (default: for ever).
    count: Option<u64>,
    /// Wait up to this long (at most 60 s) for the workflow to end and answer its final view
    /// (still running after it: the view as it stands).
    wait_ms: Option<u64>,
}

/// The longest `wait_ms` honoured.
const WAIT_MS_MAX: u64 = 60_000;
/// How often a waiting start asks how a workflow on another node stands: first wait, doubling
/// to [`WAIT_POLL_MS_MAX`]. (One on this node says when it ends.)
const WAIT_POLL_MS_FIRST: u64 = 5;
/// The longest wait between two asks of a waiting start.
const WAIT_POLL_MS_MAX: u64 = 50;

/// An instance: its id and its view.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct InstanceView {
    /// The instance's id (an IMVU id of kind `workflow`).
    id: u64,
    /// How it stands, its variables and its journal (steps with timings).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    view: Value,
}

/// Resolves the sub-workflows `definition` names, transitively, at their latest versions.
fn library(state: &AppState, tenant: &TenantId, definition: &Definition) -> Result<BTreeMap<String, (u32, Definition)>, ApiError> {
    let mut library = BTreeMap::new();
    let mut todo: Vec<String> = definition::sub_workflows(definition).into_iter().collect();
    while let Some(name) = todo.pop() {
        if library.contains_key(&name) {
            continue;
        }
        if library.len() >= LIBRARY_LEN_MAX {
            return Err(ApiError::BadRequest(format!("the workflow names more than {LIBRARY_LEN_MAX} sub-workflows")));
        }
        let (version, sub) = if name == definition.name {
            (0, definition.clone())
        } else {
            load(state, tenant, &name, None)?
        };
        todo.extend(definition::sub_workflows(&sub));
        library.insert(name, (version, sub));
    }
    Ok(library)
}

/// The instance `key`'s state, read from its owner; not found unless it is a workflow.
async fn inspect(state: &AppState, key: &ImvuKey, caller: &Caller) -> Result<WorkflowState, ApiError> {
    let info = match &state.cluster {
        Some(cluster) => cluster.inspect(key, caller).await,
        None => state.runtime.inspect(key).await,
    }?;
    let not_workflow = || ApiError::NotFound(format!("no workflow {} in tenant {}", key.id.0, key.tenant));
    if info.kind != vcos_actors::workflow::KIND {
        return Err(not_workflow());
    }
    serde_json::from_value(info.state).map_err(|e| ApiError::Internal(format!("workflow {key} does not read: {e}")))
}

/// Sends the instance `key` a message; refusals become errors.
async fn ask(state: &AppState, key: &ImvuKey, message: Value, caller: &Caller) -> Result<Value, ApiError> {
    let reply = match &state.cluster {
        Some(cluster) => cluster.ask_json(key, message, caller).await,
        None => state.runtime.ask_json(key, message).await,
    }?;
    match refusal(&reply) {
        Some(error) => Err(error.into()),
        None => Ok(reply),
    }
}

fn instance(key: &ImvuKey, view: Value) -> InstanceView {
    InstanceView { id: key.id.0, view }
}

/// Starts a workflow: a definition of the tenant, or a Rust workflow of the node.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workflows", operation_id = "workflow_start", tag = "workflows", request_body = StartRequest,
    params(("tenant" = String, Path, description = "Tenant name")),
    security((), ("bearer" = [])),
    responses((status = 201, description = "Started (it runs on; `GET` it to follow)", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad body (both or neither of `definition` and `workflow`), or an unknown Rust workflow", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant, definition or version", body = ErrorBody),
        (status = 413, description = "`too_large`: the input is over 1 MiB of JSON", body = ErrorBody),
        (status = 429, description = "`queue_full`: mailboxes or the canon are full; retry", body = ErrorBody),
        (status = 503, description = "`unavailable`: the owner node moves or the canon has no quorum; retry", body = ErrorBody)))]
pub(super) async fn start(State(state): State<AppState>, TenantPath(tenant): TenantPath, Auth(caller): Auth, ApiJson(request): ApiJson<StartRequest>) -> Result<(StatusCode, Json<InstanceView>), ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    let (program, timeout_ms) = match (&request.definition, &request.workflow) {
        (Some(name), None) => {
            let (version, definition) = load(&state, &tenant, name, request.version)?;
            let library = library(&state, &tenant, &definition)?;
            let timeout_ms = request.timeout_ms.or(definition.timeout_ms);
            (Program::Definition { definition: Box::new(definition), version, library }, timeout_ms)
        }
        (None, Some(name)) => (Program::Rust { name: name.clone() }, request.timeout_ms),
        _ => return Err(ApiError::BadRequest("give `definition` (a definition's name) or `workflow` (a Rust workflow's name), one of them".into())),
    };
    let (program, input, timeout_ms) = match request.every_ms {
        None if request.count.is_some() => return Err(ApiError::BadRequest("`count` goes with `every_ms` (a schedule)".into())),
        None => (program, request.input, timeout_ms),
        Some(every_ms) if every_ms < schedule::PERIOD_MS_MIN => {
            return Err(ApiError::BadRequest(format!("`every_ms`: a period of at least {} ms", schedule::PERIOD_MS_MIN)));
        }
        // The schedule runs the workflow as its child each slot; the timeout is each run's.
        Some(every_ms) => {
            let input = json!({ "program": program, "input": request.input, "every_ms": every_ms, "count": request.count });
            (Program::Rust { name: schedule::SCHEDULE.into() }, input, None)
        }
    };
    let created = match &state.cluster {
        Some(cluster) => cluster.create(&tenant, vcos_actors::workflow::KIND, &caller).await?,
        None => state.runtime.create_imvu(&tenant, vcos_actors::workflow::KIND, &caller).await?,
    };
    let message = json!({ "op": "start", "program": program, "input": input, "timeout_ms": timeout_ms });
    let mut view = ask(&state, &created.key, message, &caller).await?;
    if let Some(wait_ms) = request.wait_ms {
        view = wait_for_end(&state, &created.key, &caller, view, wait_ms.min(WAIT_MS_MAX)).await?;
    }
    Ok((StatusCode::CREATED, Json(instance(&created.key, view))))
}

/// Asks how the workflow stands until it has ended or `wait_ms` passed; its view then. An
/// instance on this node tells its watchers when it ends (`Runtime::watch`), so the answer
/// comes as soon as the end is durable; one on another node is asked again, less and less
/// often (every [`WAIT_POLL_MS_MAX`] ms at most).
async fn wait_for_end(state: &AppState, key: &ImvuKey, caller: &Caller, mut view: Value, wait_ms: u64) -> Result<Value, ApiError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut pause_ms = WAIT_POLL_MS_FIRST;
    let mut watch = state.runtime.watch(*key);
    // The start's answer may predate an end that came before the watch: look once first.
    let mut look = true;
    while !ended(&view) {
        if std::mem::take(&mut look) {
            let status = ask(state, key, json!({ "op": "status" }), caller).await?;
            if ended(&status) {
                view = ask(state, key, json!({ "op": "get" }), caller).await?;
                break;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let pause = std::time::Duration::from_millis(pause_ms).min(deadline - now);
        tokio::select! {
            biased;
            _ = &mut watch => {
                // Told: watch again before looking, so no later notice is missed.
                watch = state.runtime.watch(*key);
                look = true;
            }
            () = tokio::time::sleep(pause) => {
                pause_ms = (pause_ms * 2).min(WAIT_POLL_MS_MAX);
                look = true;
            }
        }
    }
    Ok(view)
}

fn ended(view: &Value) -> bool {
    !matches!(view["status"].as_str(), Some("running" | "created"))
}

/// Which list.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ListStatus {
    /// Running (or waiting).
    Running,
    /// Dead-lettered: waiting for an operator.
    DeadLettered,
}

/// Which instances to list.
#[derive(Deserialize, IntoParams)]
pub(crate) struct ListQuery {
    /// `running` (default) or `dead_lettered`.
    #[param(inline)]
    status: Option<ListStatus>,
    /// Ids after this one (paging).
    after: Option<u64>,
    /// At most this many (default and maximum 1,000).
    limit: Option<usize>,
}

/// The tenant's running or dead-lettered workflows (ids, in order).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/workflows", operation_id = "workflow_list", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ListQuery),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Instance ids", body = [u64]),
        (status = 400, description = "`bad_request`: a bad tenant name or status", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody)))]
pub(super) async fn list(State(state): State<AppState>, TenantPath(tenant): TenantPath, Query(query): Query<ListQuery>, Auth(caller): Auth) -> Result<Json<Vec<u64>>, ApiError> {
    readable_tenant(&state, &tenant, &caller)?;
    let index = match query.status {
        None | Some(ListStatus::Running) => vcos_actors::workflow::RUNNING_INDEX,
        Some(ListStatus::DeadLettered) => vcos_actors::workflow::DEAD_INDEX,
    };
    let limit = query.limit.unwrap_or(LIST_LEN_MAX).clamp(1, LIST_LEN_MAX);
    let keys = state.runtime.index(&tenant, index, query.after, limit)?;
    Ok(Json(keys.into_iter().map(|k| k.id.0).collect()))
}

/// `/v1/tenants/{tenant}/workflows/{id}/…`.
fn instance_key(tenant: &str, id: &str) -> Result<ImvuKey, ApiError> {
    let tenant = TenantId::new(tenant)?;
    let id = id.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("path segment `id`: workflow ids are unsigned integers (got {id:?})")))?;
    Ok(ImvuKey { tenant, id: ImvuId(id) })
}

/// A workflow instance: status, current steps, variables, and its journal as an execution
/// history with per-step timings.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/workflows/{id}", operation_id = "workflow_get", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Instance id")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "The instance", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad tenant name or id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant or workflow", body = ErrorBody),
        (status = 503, description = "`unavailable`: its owner node moves; retry", body = ErrorBody)))]
pub(super) async fn get(State(state): State<AppState>, Path((tenant, id)): Path<(String, String)>, Auth(caller): Auth) -> Result<Json<InstanceView>, ApiError> {
    let key = instance_key(&tenant, &id)?;
    readable_tenant(&state, &key.tenant, &caller)?;
    let view = serde_json::to_value(Workflows::view_of(&inspect(&state, &key, &caller).await?)).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(instance(&key, view)))
}

/// Sends a signal with a body (any JSON; none is `null`): the first step waiting for it takes
/// it, else it waits for one.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workflows/{id}/signals/{name}", operation_id = "workflow_signal", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Instance id"), ("name" = String, Path, description = "Signal name")),
    request_body(content = Object, description = "The signal's body (JSON)"),
    security((), ("bearer" = [])),
    responses((status = 202, description = "Taken", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad id or body", body = ErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ErrorBody),
        (status = 409, description = "`conflict`: the workflow has ended (or not started)", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 429, description = "`queue_full`: 1,000 signals already wait", body = ErrorBody)))]
pub(super) async fn signal(State(state): State<AppState>, Path((tenant, id, name)): Path<(String, String, String)>, Auth(caller): Auth, body: Bytes) -> Result<(StatusCode, Json<InstanceView>), ApiError> {
    let key = instance_key(&tenant, &id)?;
    readable_tenant(&state, &key.tenant, &caller)?;
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the signal's body is not JSON: {e}")))? };
    inspect(&state, &key, &caller).await?;
    let view = ask(&state, &key, json!({ "op": "signal", "name": name, "body": body }), &caller).await?;
    Ok((StatusCode::ACCEPTED, Json(instance(&key, view))))
}

/// Runs an operation on an instance.
async fn operate(state: &AppState, (tenant, id): (String, String), caller: &Caller, message: Value) -> Result<Json<InstanceView>, ApiError> {
    let key = instance_key(&tenant, &id)?;
    readable_tenant(state, &key.tenant, caller)?;
    inspect(state, &key, caller).await?;
    let view = ask(state, &key, message, caller).await?;
    Ok(Json(instance(&key, view)))
}

/// Cancels a workflow: its compensations run, then it ends `cancelled`. A dead-lettered one
/// ends at once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workflows/{id}/cancel", operation_id = "workflow_cancel", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Instance id")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Cancelling (or cancelled)", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ErrorBody),
        (status = 409, description = "`conflict`: it has already ended", body = ErrorBody)))]
pub(super) async fn cancel(State(state): State<AppState>, Path(params): Path<(String, String)>, Auth(caller): Auth) -> Result<Json<InstanceView>, ApiError> {
    operate(&state, params, &caller, json!({ "op": "cancel" })).await
}

/// Runs a dead-lettered workflow's failed step again (attempts start over).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workflows/{id}/retry", operation_id = "workflow_retry", tag = "workflows",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Instance id")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Running again", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ErrorBody),
        (status = 409, description = "`conflict`: it is not dead-lettered", body = ErrorBody)))]
pub(super) async fn retry(State(state): State<AppState>, Path(params): Path<(String, String)>, Auth(caller): Auth) -> Result<Json<InstanceView>, ApiError> {
    operate(&state, params, &caller, json!({ "op": "retry" })).await
}

/// The result to give a skipped step.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkipRequest {
    /// Journaled as the failed step's result (any JSON).
    #[serde(default)]
    result: Value,
}

/// Skips a dead-lettered workflow's failed step, journaling `result` as its result, and goes on.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/workflows/{id}/skip", operation_id = "workflow_skip", tag = "workflows", request_body = SkipRequest,
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = u64, Path, description = "Instance id")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Running again", body = InstanceView),
        (status = 400, description = "`bad_request`: a bad id or body", body = ErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ErrorBody),
        (status = 409, description = "`conflict`: it is not dead-lettered, or failed outside any step", body = ErrorBody)))]
pub(super) async fn skip(State(state): State<AppState>, Path(params): Path<(String, String)>, Auth(caller): Auth, ApiJson(request): ApiJson<SkipRequest>) -> Result<Json<InstanceView>, ApiError> {
    operate(&state, params, &caller, json!({ "op": "skip", "result": request.result })).await
}

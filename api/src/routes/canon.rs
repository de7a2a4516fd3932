//! The Canon Memory Layer over HTTP: status and lag, a key-value API (put, get, delete,
//! compare-and-set, prefix listing) and membership changes of a region's group.
//!
//! Keys of this API live under `kv/` in the canon, apart from the runtime's records. Writes
//! sent to any node are forwarded to the region's leader (never redirected); puts and deletes
//! are group-committed with every other write waiting on the node. Reads are linearizable by
//! default (read index confirmed by a quorum); `consistency=stale` reads this node's replica
//! without a barrier and reports how far behind it is. `region=` reads another region's canon
//! from the local learner replica.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use vcos_canon_raft::{CanonError, GroupView, NodeInfo, Op, RaftCanonStore, Response};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::AppState;

/// Prefix of this API's keys inside the canon.
const KV_PREFIX: &str = "kv/";
/// Longest key accepted.
const KEY_LEN_MAX: usize = 1024;
/// Most keys one listing returns.
const LIST_LIMIT_MAX: usize = 1000;

fn canon(state: &AppState) -> Result<&RaftCanonStore, ApiError> {
    state.canon.as_ref().ok_or_else(|| ApiError::Canon(CanonError::Failed("this node runs without a canon cluster".into())))
}

/// The canon key of `key` under `prefix` (`kv/` for this API, a tenant's own prefix for the
/// tenant API: see `tenant_kv`).
pub(super) fn full_key(prefix: &str, key: &str) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return Err(ApiError::BadRequest(format!("key must be 1 to {KEY_LEN_MAX} bytes, got {}", key.len())));
    }
    Ok(format!("{prefix}{key}").into_bytes())
}

/// This node's view of every canon group it hosts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CanonStatus {
    /// This node's id.
    node_id: u64,
    /// Its home region.
    region: String,
    /// Every group this node hosts: its home region (voter) and the others (learner).
    #[schema(value_type = Vec<Object>)]
    groups: Vec<GroupView>,
}

/// Membership and replication of every canon group on this node (lag per region included).
#[utoipa::path(get, path = "/v1/canon/status", tag = "canon",
    responses((status = 200, description = "Groups, leaders, members and lag", body = CanonStatus)))]
pub(super) async fn status(State(state): State<AppState>) -> Result<Json<CanonStatus>, ApiError> {
    let node = canon(&state)?.node();
    Ok(Json(CanonStatus { node_id: node.id(), region: node.region().to_owned(), groups: node.views() }))
}

/// A value to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutBody {
    /// The value (UTF-8 text).
    pub(super) value: String,
}

/// Where a write landed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WriteResult {
    /// The Raft log index of the entry that carried it.
    index: u64,
}

/// Sets a key in this node's region (forwarded to the leader; acknowledged once a quorum has
/// it on disk).
#[utoipa::path(put, path = "/v1/canon/kv/{key}", tag = "canon", request_body = PutBody,
    params(("key" = String, Path, description = "The key (percent-encoded)")),
    responses((status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "Bad key or body", body = crate::ErrorBody),
        (status = 503, description = "No leader reachable", body = crate::ErrorBody)))]
pub(super) async fn put(State(state): State<AppState>, Path(key): Path<String>, ApiJson(body): ApiJson<PutBody>) -> Result<Json<WriteResult>, ApiError> {
    Ok(Json(kv_put(&state, KV_PREFIX, &key, body).await?))
}

pub(super) async fn kv_put(state: &AppState, prefix: &str, key: &str, body: PutBody) -> Result<WriteResult, ApiError> {
    let store = canon(state)?;
    let op = Op::Put { key: full_key(prefix, key)?, value: body.value.into_bytes() };
    let (_, index) = store.write_ops(vec![op]).await.map_err(ApiError::Canon)?;
    Ok(WriteResult { index })
}

/// Removes a key.
#[utoipa::path(delete, path = "/v1/canon/kv/{key}", tag = "canon",
    params(("key" = String, Path, description = "The key")),
    responses((status = 204, description = "Removed (or absent)")))]
pub(super) async fn delete(State(state): State<AppState>, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    kv_delete(&state, KV_PREFIX, &key).await
}

pub(super) async fn kv_delete(state: &AppState, prefix: &str, key: &str) -> Result<StatusCode, ApiError> {
    let store = canon(state)?;
    store.write_ops(vec![Op::Delete { key: full_key(prefix, key)? }]).await.map_err(ApiError::Canon)?;
    Ok(StatusCode::NO_CONTENT)
}

/// How a read is served (documents the `consistency` parameter; the handler checks the text
/// itself, to name a wrong value in its 400).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Consistency {
    /// A read index confirmed by a quorum (the default).
    Linearizable,
    /// This node's replica, with its lag.
    Stale,
}

/// How to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadParams {
    /// `linearizable` (default) or `stale`.
    #[param(value_type = Option<Consistency>, inline)]
    consistency: Option<String>,
    /// The region whose canon to read (default: this node's).
    region: Option<String>,
}

/// A value read, with where the replica stood.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ReadResult {
    /// The key.
    key: String,
    /// The value.
    value: String,
    /// `linearizable` or `stale`.
    consistency: String,
    /// The index this replica had applied when it read.
    applied_index: u64,
    /// Committed entries this replica had not applied yet (stale reads).
    lag_entries: u64,
    /// Milliseconds since the region's leader last reached this replica (stale reads).
    leader_contact_age_ms: Option<u64>,
}

/// Reads a key: linearizable by default, or stale from this node's replica (with its lag).
#[utoipa::path(get, path = "/v1/canon/kv/{key}", tag = "canon",
    params(("key" = String, Path, description = "The key"), ReadParams),
    responses((status = 200, description = "The value", body = ReadResult),
        (status = 404, description = "No such key", body = crate::ErrorBody)))]
pub(super) async fn get(State(state): State<AppState>, Path(key): Path<String>, Query(params): Query<ReadParams>) -> Result<Json<ReadResult>, ApiError> {
    Ok(Json(kv_get(&state, KV_PREFIX, key, params).await?))
}

pub(super) async fn kv_get(state: &AppState, prefix: &str, key: String, params: ReadParams) -> Result<ReadResult, ApiError> {
    let node = canon(state)?.node();
    let region = params.region.unwrap_or_else(|| node.region().to_owned());
    let consistency = match params.consistency.as_deref() {
        None | Some("linearizable") => "linearizable",
        Some("stale") => "stale",
        Some(other) => return Err(ApiError::BadRequest(format!("consistency must be `linearizable` or `stale`, got {other:?}"))),
    };
    let full = full_key(prefix, &key)?;
    if consistency == "linearizable" {
        node.read_barrier(&region).await.map_err(ApiError::Canon)?;
    }
    let group = node.group(&region).map_err(ApiError::Canon)?;
    let lag = node.lag(&region).map_err(ApiError::Canon)?;
    let value = group
        .reader()
        .get(&full)
        .map_err(|e| ApiError::Internal(format!("read {key:?} in region {region}: {e}")))?
        .ok_or_else(|| ApiError::NotFound(format!("no key {key:?} in region {region}")))?;
    Ok(ReadResult {
        key,
        value: String::from_utf8_lossy(&value).into_owned(),
        consistency: consistency.to_owned(),
        applied_index: lag.applied_index,
        lag_entries: lag.entries_behind,
        leader_contact_age_ms: lag.contact_age_ms,
    })
}

/// A compare-and-set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasBody {
    /// The value the key must hold (`null`: it must be absent).
    expected: Option<String>,
    /// The value to set (`null`: remove the key).
    pub(super) new: Option<String>,
}

/// The outcome of a compare-and-set.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CasResult {
    /// Whether the key held `expected` and now holds `new`.
    pub(super) success: bool,
    /// The key's value after the operation.
    current: Option<String>,
}

/// Sets a key only if it holds the expected value (linearizable, applied once).
#[utoipa::path(post, path = "/v1/canon/kv/{key}/cas", tag = "canon", request_body = CasBody,
    params(("key" = String, Path, description = "The key")),
    responses((status = 200, description = "Applied or not, with the current value", body = CasResult)))]
pub(super) async fn cas(State(state): State<AppState>, Path(key): Path<String>, ApiJson(body): ApiJson<CasBody>) -> Result<Json<CasResult>, ApiError> {
    Ok(Json(kv_cas(&state, KV_PREFIX, &key, body).await?))
}

pub(super) async fn kv_cas(state: &AppState, prefix: &str, key: &str, body: CasBody) -> Result<CasResult, ApiError> {
    let node = canon(state)?.node();
    let op = Op::CompareAndSet { key: full_key(prefix, key)?, expected: body.expected.map(String::into_bytes), new: body.new.map(String::into_bytes) };
    let region = node.region().to_owned();
    match node.write(&region, op).await.map_err(ApiError::Canon)?.0 {
        Response::Cas { success, current } => Ok(CasResult { success, current: current.map(|v| String::from_utf8_lossy(&v).into_owned()) }),
        other => Err(ApiError::Internal(format!("unexpected canon response {other:?}"))),
    }
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Keys starting with this (default: all).
    prefix: Option<String>,
    /// Start after this key (the last key of the previous page).
    after: Option<String>,
    /// At most this many keys (default and maximum 1000).
    limit: Option<usize>,
}

/// One listed entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct KvEntry {
    /// The key.
    key: String,
    /// The value.
    value: String,
}

/// Lists keys by prefix in key order (linearizable), a page at a time.
#[utoipa::path(get, path = "/v1/canon/kv", tag = "canon", params(ListParams),
    responses((status = 200, description = "Entries in key order", body = Vec<KvEntry>)))]
pub(super) async fn list(State(state): State<AppState>, Query(params): Query<ListParams>) -> Result<Json<Vec<KvEntry>>, ApiError> {
    Ok(Json(kv_list(&state, KV_PREFIX, params).await?))
}

pub(super) async fn kv_list(state: &AppState, base: &str, params: ListParams) -> Result<Vec<KvEntry>, ApiError> {
    let node = canon(state)?.node();
    let region = node.region().to_owned();
    node.read_barrier(&region).await.map_err(ApiError::Canon)?;
    let prefix = format!("{base}{}", params.prefix.unwrap_or_default());
    let after = params.after.map(|a| format!("{base}{a}"));
    let limit = params.limit.unwrap_or(LIST_LIMIT_MAX).min(LIST_LIMIT_MAX);
    let group = node.home().map_err(ApiError::Canon)?;
    let entries = group
        .reader()
        .range(prefix.as_bytes(), after.as_deref().map(str::as_bytes), limit)
        .map_err(|e| ApiError::Internal(format!("list keys in region {region}: {e}")))?
        .into_iter()
        .map(|(key, value)| KvEntry {
            key: String::from_utf8_lossy(&key[base.len()..]).into_owned(),
            value: String::from_utf8_lossy(&value).into_owned(),
        })
        .collect();
    Ok(entries)
}

/// A node to add to a region's group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMemberBody {
    /// Its node id.
    node_id: u64,
    /// Its canon (Raft) address, `host:port`.
    raft_addr: String,
    /// Its HTTP address, `host:port`.
    http_addr: String,
    /// Its home region.
    region: String,
    /// `learner` (default) or `voter` (added as a learner, promoted once caught up).
    role: Option<String>,
}

/// Which region's group a membership call changes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupParams {
    /// The region (default: this node's).
    region: Option<String>,
}

/// Adds a node to a region's group (forwarded to its leader).
#[utoipa::path(post, path = "/v1/canon/members", tag = "canon", request_body = AddMemberBody, params(GroupParams),
    responses((status = 204, description = "Added"), (status = 409, description = "Refused, with the reason", body = crate::ErrorBody)))]
pub(super) async fn add_member(State(state): State<AppState>, Query(params): Query<GroupParams>, ApiJson(body): ApiJson<AddMemberBody>) -> Result<StatusCode, ApiError> {
    let node = canon(&state)?.node();
    let region = params.region.unwrap_or_else(|| node.region().to_owned());
    let voter = match body.role.as_deref() {
        None | Some("learner") => false,
        Some("voter") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("role must be `learner` or `voter`, got {other:?}"))),
    };
    for (field, addr) in [("raft_addr", &body.raft_addr), ("http_addr", &body.http_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::BadRequest(format!("{field} must be host:port with an IP address, got {addr:?}")));
        }
    }
    let info = NodeInfo { raft_addr: body.raft_addr, http_addr: body.http_addr, region: body.region };
    node.add_member(&region, body.node_id, info, voter).await.map_err(ApiError::Canon)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Promotes a learner to voter (refused while it is far behind).
#[utoipa::path(post, path = "/v1/canon/members/{id}/promote", tag = "canon", params(("id" = u64, Path, description = "Node id"), GroupParams),
    responses((status = 204, description = "Promoted"), (status = 409, description = "Refused, with the reason", body = crate::ErrorBody)))]
pub(super) async fn promote(State(state): State<AppState>, Path(id): Path<u64>, Query(params): Query<GroupParams>) -> Result<StatusCode, ApiError> {
    let node = canon(&state)?.node();
    let region = params.region.unwrap_or_else(|| node.region().to_owned());
    node.promote(&region, id).await.map_err(ApiError::Canon)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a node from a region's group (refused when it would lose quorum); the removed
/// node stops serving.
#[utoipa::path(delete, path = "/v1/canon/members/{id}", tag = "canon", params(("id" = u64, Path, description = "Node id"), GroupParams),
    responses((status = 204, description = "Removed"), (status = 409, description = "Refused, with the reason", body = crate::ErrorBody)))]
pub(super) async fn remove_member(State(state): State<AppState>, Path(id): Path<u64>, Query(params): Query<GroupParams>) -> Result<StatusCode, ApiError> {
    let node = canon(&state)?.node();
    let region = params.region.unwrap_or_else(|| node.region().to_owned());
    node.remove_member(&region, id).await.map_err(ApiError::Canon)?;
    Ok(StatusCode::NO_CONTENT)
}

//! Wire types: what travels in request and response bodies, with their OpenAPI schemas.
//!
//! The runtime's types (`ImvuInfo`, `HistoryEvent`, …) stay free of HTTP and OpenAPI concerns,
//! so this module mirrors them field for field and converts with `From`. Invariant: a mirror
//! serialises exactly like its original (the unit tests compare the two), so the documented
//! schema is the JSON clients actually get.
//!
//! Request types `deny_unknown_fields`: a misspelt field is a 400 naming it, not a silent
//! default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vcos_actors::handshake::{HandshakeOutcome, Stage};
use vcos_actors::records::{HistoryEvent, Stamped, SupervisionRecord, TransitionRecord};
use vcos_actors::swarm::{CreditRecord, MemberRef, Progress, SwarmInfo, SwarmSpec, SwarmStatus, SwarmStrategy, VoteRecord};
use vcos_actors::auth::{KeyRecord, Role};
use vcos_actors::{ImvuInfo, KindInfo, LifecycleState, TenantEntry, TenantPolicy, Tier, Transition};

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` when the node's canon group has no leader with a quorum (writes then
    /// answer 503 `canon_unavailable`); `stopping` while the node shuts down. 503 unless `ok`.
    #[schema(example = "ok")]
    pub status: String,
    /// IMVUs resident in memory on this node.
    pub imvus_resident: u64,
    /// The canon's state (absent when the node runs without a canon cluster): `ok` (the home
    /// group has a leader that heard a quorum recently), the home `region`, and per group its
    /// `region`, this node's `role`, `leader_id`, `quorum`, `quorum_ack_age_ms` (on the leader),
    /// `leader_contact_age_ms` and `voters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub canon: Option<vcos_canon_raft::CanonHealth>,
}

/// One IMVU kind the node serves.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Kind {
    /// Name, as used in `POST /v1/tenants/{tenant}/imvus`.
    #[schema(example = "counter")]
    pub name: String,
    /// What it does and which messages it takes.
    pub description: String,
}

impl From<KindInfo> for Kind {
    fn from(k: KindInfo) -> Self {
        Self { name: k.name, description: k.description }
    }
}

/// `GET /v1/kinds`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KindList {
    /// Registered kinds, by name.
    pub kinds: Vec<Kind>,
}

/// `GET /v1/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// Tenant names, sorted.
    #[schema(example = json!(["default"]))]
    pub tenants: Vec<String>,
}

/// A lifecycle transition (mirrors `vcos_actors::Transition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransitionName {
    /// Bring a new IMVU into existence.
    Create,
    /// Genesis → active.
    Activate,
    /// Active → paused.
    Pause,
    /// Paused → active.
    Resume,
    /// Genesis | active | paused → terminated.
    Terminate,
}

impl From<Transition> for TransitionName {
    fn from(t: Transition) -> Self {
        match t {
            Transition::Create => Self::Create,
            Transition::Activate => Self::Activate,
            Transition::Pause => Self::Pause,
            Transition::Resume => Self::Resume,
            Transition::Terminate => Self::Terminate,
        }
    }
}

impl From<TransitionName> for Transition {
    fn from(t: TransitionName) -> Self {
        match t {
            TransitionName::Create => Self::Create,
            TransitionName::Activate => Self::Activate,
            TransitionName::Pause => Self::Pause,
            TransitionName::Resume => Self::Resume,
            TransitionName::Terminate => Self::Terminate,
        }
    }
}

/// Where an IMVU is in its life (mirrors `vcos_actors::LifecycleState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Created, not yet serving.
    Genesis,
    /// Serving messages.
    Active,
    /// Holding messages until resumed.
    Paused,
    /// Stopped for good.
    Terminated,
}

impl From<LifecycleState> for Lifecycle {
    fn from(s: LifecycleState) -> Self {
        match s {
            LifecycleState::Genesis => Self::Genesis,
            LifecycleState::Active => Self::Active,
            LifecycleState::Paused => Self::Paused,
            LifecycleState::Terminated => Self::Terminated,
        }
    }
}

/// Policy fields of `POST /v1/tenants`; every field is optional and defaults as shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicyRequest {
    /// Most IMVUs alive (not terminated) at once (default 10 000 000).
    pub max_imvus: Option<u64>,
    /// Transitions the tenant forbids (handshake stage 17).
    pub denied_transitions: Option<Vec<TransitionName>>,
    /// Kinds the tenant may create, at most 64 names of 1..=64 characters; absent = all.
    #[schema(schema_with = allowed_kinds_schema)]
    pub allowed_kinds: Option<Vec<String>>,
    /// Restarts of the tenant's IMVU supervisor allowed… (default 1000, at most 65 536:
    /// `vcos_supervision::constants::INTENSITY_RESTARTS_MAX`)
    #[schema(maximum = 65_536)]
    pub max_restarts: Option<u32>,
    /// …within this window before it escalates (default 1000 ms, at least 1).
    #[schema(minimum = 1)]
    pub restart_period_ms: Option<u64>,
    /// The tier (default `basic`): its prices and default limits.
    pub tier: Option<TierName>,
    /// Requests per second per node (default: the tier's).
    #[schema(minimum = 1)]
    pub requests_per_s: Option<u32>,
    /// Requests above the rate admitted at once (default: the tier's).
    #[schema(minimum = 1)]
    pub burst: Option<u32>,
    /// Requests in progress at once per node (default: the tier's).
    #[schema(minimum = 1)]
    pub concurrent_requests: Option<u32>,
    /// Messages the tenant's IMVUs handle per UTC day in the region (default: the tier's).
    #[schema(minimum = 1)]
    pub messages_per_day: Option<u64>,
    /// Bytes the tenant may keep in the canon (default: the tier's).
    #[schema(minimum = 1)]
    pub canon_bytes_stored: Option<u64>,
    /// When a desktop node dies, start its sessions afresh on another desktop node instead of
    /// ending them (default false).
    pub desktop_failover: Option<bool>,
}

/// The schema of `allowed_kinds` (the bounds `routes::tenants::policy` checks: at most
/// `ALLOWED_KINDS_LEN_MAX` names of 1..=`KIND_NAME_LEN_MAX` characters).
fn allowed_kinds_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .description(Some("Kinds the tenant may create, at most 64 names of 1..=64 characters; absent = all."))
        .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(64)))
        .max_items(Some(64))
        .build()
}

/// A pricing tier. Default limits per node: `basic` 50 requests/s (burst 100, 16 at once),
/// `pro` 500/s (1 000, 128), `enterprise` 5 000/s (10 000, 1 024); per region: `basic` 1 M
/// messages a day and 1 GiB stored, `pro` 50 M and 50 GiB, `enterprise` 1 G and 1 TiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TierName {
    /// Small workloads.
    Basic,
    /// Production workloads.
    Pro,
    /// Large fleets.
    Enterprise,
}

impl From<TierName> for Tier {
    fn from(t: TierName) -> Self {
        match t {
            TierName::Basic => Self::Basic,
            TierName::Pro => Self::Pro,
            TierName::Enterprise => Self::Enterprise,
        }
    }
}

impl From<Tier> for TierName {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Basic => Self::Basic,
            Tier::Pro => Self::Pro,
            Tier::Enterprise => Self::Enterprise,
        }
    }
}

/// `POST /v1/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1..=31 characters of `a-z`, `0-9`, `-`, `_` (`vcos_actors::ids::TENANT_NAME_LEN_MAX`).
    #[schema(example = "acme", pattern = "^[a-z0-9_-]{1,31}$", min_length = 1, max_length = 31)]
    pub name: String,
    /// Policy; omitted fields take their defaults.
    #[serde(default, deserialize_with = "crate::extract::object")]
    pub policy: TenantPolicyRequest,
}

/// A tenant's policy as shown to clients.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantPolicyView {
    /// Most IMVUs alive at once.
    pub max_imvus: u64,
    /// Transitions the tenant forbids.
    pub denied_transitions: Vec<TransitionName>,
    /// Kinds the tenant may create; null = all.
    pub allowed_kinds: Option<Vec<String>>,
    /// Supervisor restarts allowed per window.
    pub max_restarts: u32,
    /// The restart window, ms.
    pub restart_period_ms: u64,
    /// The tier.
    pub tier: TierName,
    /// Requests per second per node in force.
    pub requests_per_s: u32,
    /// Burst in force.
    pub burst: u32,
    /// Requests in progress at once per node in force.
    pub concurrent_requests: u32,
    /// Messages per UTC day in force.
    pub messages_per_day: u64,
    /// Canon bytes stored in force.
    pub canon_bytes_stored: u64,
    /// Sessions of a lost desktop node start afresh on another.
    pub desktop_failover: bool,
}

impl From<&TenantPolicy> for TenantPolicyView {
    fn from(p: &TenantPolicy) -> Self {
        let limits = p.limits();
        Self {
            tier: p.tier.into(),
            requests_per_s: limits.requests_per_s,
            burst: limits.burst,
            concurrent_requests: limits.concurrent_requests,
            messages_per_day: limits.messages_per_day,
            canon_bytes_stored: limits.canon_bytes_stored,
            max_imvus: p.max_imvus,
            denied_transitions: p.denied_transitions.iter().copied().map(Into::into).collect(),
            allowed_kinds: p.allowed_kinds.clone(),
            max_restarts: p.max_restarts,
            restart_period_ms: p.restart_period_ms,
            desktop_failover: p.desktop_failover,
        }
    }
}

/// `POST /v1/tenants` → 201: the tenant, and the key of its first tenant admin, this once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedTenant {
    /// Tenant name.
    pub name: String,
    /// The policy.
    pub policy: TenantPolicyView,
    /// IMVUs alive.
    pub live_imvus: u64,
    /// A `tenant_admin` key of the new tenant: the secret is shown here only.
    pub admin_key: IssuedKey,
}

impl CreatedTenant {
    /// The creation response for `entry`, with its first key.
    pub fn new(entry: &TenantEntry, admin_key: IssuedKey) -> Self {
        Self {
            name: entry.id.to_string(),
            policy: TenantPolicyView::from(&entry.policy),
            live_imvus: entry.live_imvus.load(std::sync::atomic::Ordering::Relaxed),
            admin_key,
        }
    }
}

/// Where a tenant's erasure stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErasureState {
    /// Fenced (nothing of it can be written, its keys are revoked); its records are being
    /// deleted.
    Erasing,
    /// The tenant exists and no erasure of it is under way.
    Active,
    /// Neither: erased (the cluster's audit log has the record) or never created.
    Absent,
}

/// `DELETE /v1/tenants/{tenant}` → 202, and `GET /v1/tenants/{tenant}/erasure`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErasureStatus {
    /// Tenant name.
    pub tenant: String,
    /// Where it stands.
    pub state: ErasureState,
    /// When the erasure was asked (unix ms), while it is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// Who asked (a key id), while it is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Keys revoked by the erasure, while it is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_revoked: Option<u64>,
}

impl ErasureStatus {
    /// An erasure under way.
    pub fn erasing(record: &vcos_actors::erasure::ErasureRecord) -> Self {
        Self {
            tenant: record.tenant.clone(),
            state: ErasureState::Erasing,
            started_unix_ms: Some(record.started_unix_ms),
            by: Some(record.by.clone()),
            keys_revoked: Some(record.keys_revoked),
        }
    }
}

/// A role (see the role table in the README): what a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Read only, one tenant.
    Viewer,
    /// Create IMVUs and swarms, send messages; one tenant.
    App,
    /// Pause, resume, terminate, read; one tenant.
    Operator,
    /// Everything of one tenant: keys, policy, audit, export.
    TenantAdmin,
    /// Everything, every tenant, the cluster.
    ClusterAdmin,
    /// Scrape `/metrics` only.
    Metrics,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => Self::Viewer,
            Role::App => Self::App,
            Role::Operator => Self::Operator,
            Role::TenantAdmin => Self::TenantAdmin,
            Role::ClusterAdmin => Self::ClusterAdmin,
            Role::Metrics => Self::Metrics,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Viewer => Self::Viewer,
            RoleName::App => Self::App,
            RoleName::Operator => Self::Operator,
            RoleName::TenantAdmin => Self::TenantAdmin,
            RoleName::ClusterAdmin => Self::ClusterAdmin,
            RoleName::Metrics => Self::Metrics,
        }
    }
}

/// `POST /v1/tenants/{tenant}/keys` and `POST /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKeyRequest {
    /// Tenant keys: viewer, app, operator, tenant_admin; cluster keys: cluster_admin, metrics.
    /// Never a role with a right the issuing key lacks.
    pub role: RoleName,
    /// A label, 1..=128 characters (bytes), no control characters.
    #[serde(default)]
    #[schema(example = "billing-service", min_length = 1, max_length = 128, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$")]
    pub name: Option<String>,
    /// Valid for this many seconds (absent: until revoked), 1..=315 360 000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_s: Option<u64>,
}

/// `POST …/keys/{key_id}/rotate`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RotateKeyRequest {
    /// How long the old key stays valid beside the new one, seconds (default 3 600; 0: ends
    /// now), at most 2 592 000 (30 days).
    #[schema(minimum = 0, maximum = 2_592_000)]
    pub overlap_s: Option<u64>,
    /// Validity of the new key, seconds (absent: until revoked).
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_s: Option<u64>,
}

/// A key as listed: never its secret nor its hash.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Public id: the `<id>` in `vcos_<id>_…`.
    #[schema(example = "3f9a0c1be2d47a65")]
    pub id: String,
    /// Its tenant; null for a cluster key.
    pub tenant: Option<String>,
    /// Its role.
    pub role: RoleName,
    /// Label.
    pub name: Option<String>,
    /// Issued at, unix ms.
    pub created_ms: u64,
    /// Invalid from then on, unix ms.
    pub expires_ms: Option<u64>,
    /// Revoked at, unix ms.
    pub revoked_ms: Option<u64>,
    /// The key that replaced it by rotation.
    pub replaced_by: Option<String>,
    /// The key that issued it (null: the node, at bootstrap).
    pub issued_by: Option<String>,
    /// Whether it authenticates now.
    pub active: bool,
}

impl KeyView {
    /// The view of `record` at `now_ms` (unix).
    pub fn new(record: &KeyRecord, now_ms: u64) -> Self {
        Self {
            id: record.id.clone(),
            tenant: record.tenant.as_ref().map(ToString::to_string),
            role: record.role.into(),
            name: record.name.clone(),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            revoked_ms: record.revoked_ms,
            replaced_by: record.replaced_by.clone(),
            issued_by: record.issued_by.clone(),
            active: record.is_active(now_ms),
        }
    }
}

/// A key just issued: the secret, this once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    /// The whole key: send it as `Authorization: Bearer <key>`. Shown once; the server keeps
    /// only its SHA-256.
    #[schema(example = "vcos_3f9a0c1be2d47a65_…")]
    pub key: String,
    /// What it is.
    #[serde(flatten)]
    pub record: KeyView,
}

/// `GET …/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Keys, by id.
    pub keys: Vec<KeyView>,
}

/// `POST …/keys/{key_id}/rotate` → 201.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// The old key, now ending at `expires_ms`.
    pub old: KeyView,
    /// Its replacement, secret included (this once).
    pub new: IssuedKey,
}

/// `GET /v1/whoami`: the presented key.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Key id.
    pub key_id: String,
    /// Its tenant; null for a cluster key.
    pub tenant: Option<String>,
    /// Its role.
    pub role: RoleName,
}

/// `POST /v1/tenants/{tenant}/imvus`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImvuRequest {
    /// A registered kind (see `GET /v1/kinds`).
    #[schema(example = "counter")]
    pub kind: String,
}

/// `tenant/id`: the full key of an IMVU (mirrors `vcos_actors::ImvuKey`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ImvuKeyView {
    /// Owning tenant.
    #[schema(example = "default")]
    pub tenant: String,
    /// Node-assigned number.
    #[schema(example = 1)]
    pub id: u64,
}

/// What callers learn about an IMVU (mirrors `vcos_actors::ImvuInfo`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ImvuView {
    /// `tenant/id`.
    pub key: ImvuKeyView,
    /// Kind name.
    pub kind: String,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// The IMVU's own state, as JSON (its shape depends on the kind).
    // Any JSON: the state is the kind's (a counter's is a number).
    #[schema(value_type = Value)]
    pub state: serde_json::Value,
    /// Messages held while paused; they run in order on resume.
    pub held_messages: usize,
    /// Where it lives, on a node that runs placement (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementView>,
}

/// Where an IMVU lives: its home region, and the node of it that holds it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlacementView {
    /// Its home region (the id carries its tag): the region whose canon holds it and whose
    /// nodes serve it; any node of any region forwards to them.
    pub region: String,
    /// Its bucket (a hash of `tenant/id`); a bucket is held by one node at a time.
    pub bucket: u16,
    /// The node holding the bucket by its lease record; absent while none holds it.
    pub owner_node: Option<u64>,
    /// The bucket lease's fencing epoch: every canon write for the IMVU carries it, and a
    /// write under an older epoch is refused.
    pub lease_epoch: u64,
}

impl From<ImvuInfo> for ImvuView {
    fn from(i: ImvuInfo) -> Self {
        Self {
            key: ImvuKeyView { tenant: i.key.tenant.to_string(), id: i.key.id.0 },
            kind: i.kind,
            lifecycle: i.lifecycle.into(),
            state: i.state,
            held_messages: i.held_messages,
            placement: None,
        }
    }
}

/// `POST /v1/tenants/{tenant}/imvus/{id}/messages`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The message, as the kind defines it (e.g. `{"op":"add","n":1}` for a counter): any JSON
    /// here, since what a message is belongs to the kind (400 for one it does not take).
    #[schema(value_type = Value, example = json!({"op": "add", "n": 1}))]
    pub message: serde_json::Value,
}

/// The IMVU's reply.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageReply {
    /// The reply, as the kind defines it.
    // Any JSON: the reply is the kind's.
    #[schema(value_type = Value)]
    pub reply: serde_json::Value,
}

/// A handshake stage (mirrors `vcos_actors::Stage`): 55, 45 or 17.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    /// 55: node health, resource limits, tenant isolation.
    SystemIntegrity,
    /// 45: caller authorisation and tenant quota.
    Compliance,
    /// 17: the tenant's own policy.
    TenantGovernance,
}

impl From<Stage> for StageName {
    fn from(s: Stage) -> Self {
        match s {
            Stage::SystemIntegrity => Self::SystemIntegrity,
            Stage::Compliance => Self::Compliance,
            Stage::TenantGovernance => Self::TenantGovernance,
        }
    }
}

/// The 55-45-17 handshake's verdict on a transition (mirrors `HandshakeOutcome`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HandshakeVerdict {
    /// All three stages admitted it.
    Admitted,
    /// A stage refused it.
    Refused {
        /// The refusing stage.
        stage: StageName,
        /// Why.
        reason: String,
    },
}

impl From<HandshakeOutcome> for HandshakeVerdict {
    fn from(o: HandshakeOutcome) -> Self {
        match o {
            HandshakeOutcome::Admitted => Self::Admitted,
            HandshakeOutcome::Refused { stage, reason, .. } => Self::Refused { stage: stage.into(), reason },
        }
    }
}

/// A lifecycle transition as recorded (mirrors `TransitionRecord`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TransitionEntry {
    /// What was asked.
    pub transition: TransitionName,
    /// State before (null for create).
    pub from: Option<Lifecycle>,
    /// State after; equal to `from` when refused.
    pub to: Option<Lifecycle>,
    /// The handshake's verdict.
    pub handshake: HandshakeVerdict,
    /// Who asked.
    pub caller: String,
    /// Node wall clock, Unix ms.
    pub unix_ms: u64,
    /// The final state, on terminate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Value>)]
    pub final_state: Option<serde_json::Value>,
}

impl From<TransitionRecord> for TransitionEntry {
    fn from(r: TransitionRecord) -> Self {
        Self {
            transition: r.transition.into(),
            from: r.from.map(Into::into),
            to: r.to.map(Into::into),
            handshake: r.handshake.into(),
            caller: r.caller,
            unix_ms: r.unix_ms,
            final_state: r.final_state,
        }
    }
}

/// A crash and the supervisor's decision (mirrors `SupervisionRecord`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SupervisionEntry {
    /// The panic message.
    pub reason: String,
    /// `restarted`, `stopped` or `escalated`.
    pub decision: String,
    /// Restarts the tenant's supervisor counted in its intensity window at this crash.
    pub restarts_in_window: u32,
    /// Node wall clock, Unix ms.
    pub unix_ms: u64,
}

impl From<SupervisionRecord> for SupervisionEntry {
    fn from(r: SupervisionRecord) -> Self {
        Self { reason: r.reason, decision: r.decision, restarts_in_window: r.restarts_in_window, unix_ms: r.unix_ms }
    }
}

/// One history event, tagged by `event` (mirrors `HistoryEvent`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HistoryEntryEvent {
    /// A lifecycle transition, admitted or refused.
    Transition(TransitionEntry),
    /// A crash and what the supervisor decided.
    Supervision(SupervisionEntry),
}

/// A history event with its position in canon's total order (mirrors `Stamped<HistoryEvent>`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// Position in canon's total order; increases along the history.
    pub canon_index: u64,
    /// The event.
    #[serde(flatten)]
    pub event: HistoryEntryEvent,
}

impl From<Stamped<HistoryEvent>> for HistoryEntry {
    fn from(s: Stamped<HistoryEvent>) -> Self {
        let event = match s.record {
            HistoryEvent::Transition(r) => HistoryEntryEvent::Transition(r.into()),
            HistoryEvent::Supervision(r) => HistoryEntryEvent::Supervision(r.into()),
        };
        Self { canon_index: s.canon_index, event }
    }
}

/// `GET /v1/tenants/{tenant}/imvus/{id}/history`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// Events in canon order.
    pub events: Vec<HistoryEntry>,
}

/// Supervision strategy of a swarm over its members (mirrors `SwarmStrategy`; OTP names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SwarmStrategyName {
    /// Only the crashed member restarts.
    #[default]
    OneForOne,
    /// Every member restarts (reloads from canon).
    OneForAll,
    /// The crashed member and those after it restart.
    RestForOne,
}

impl From<SwarmStrategy> for SwarmStrategyName {
    fn from(s: SwarmStrategy) -> Self {
        match s {
            SwarmStrategy::OneForOne => Self::OneForOne,
            SwarmStrategy::OneForAll => Self::OneForAll,
            SwarmStrategy::RestForOne => Self::RestForOne,
        }
    }
}

impl From<SwarmStrategyName> for SwarmStrategy {
    fn from(s: SwarmStrategyName) -> Self {
        match s {
            SwarmStrategyName::OneForOne => Self::OneForOne,
            SwarmStrategyName::OneForAll => Self::OneForAll,
            SwarmStrategyName::RestForOne => Self::RestForOne,
        }
    }
}

/// What a swarm is made of (mirrors `SwarmSpec`): the body of `POST /v1/tenants/{tenant}/swarms`
/// and the `spec` of a swarm. Every field is optional and defaults as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(example = json!({"member_kind": "text-worker", "members": 3}))]
pub struct SwarmSpecBody {
    /// Kind of the member IMVUs to create (see `GET /v1/kinds`); required when `members > 0`.
    pub member_kind: Option<String>,
    /// How many member IMVUs to create (default 0; members and member swarms: 1..=256 in all).
    #[schema(maximum = 256)]
    pub members: u32,
    /// Ids of existing swarms of the tenant that join as members, each at most once (nesting;
    /// default none).
    #[schema(max_items = 256)]
    pub member_swarms: Vec<u64>,
    /// Items a member holds at once, 1..=64 (default 1).
    #[schema(minimum = 1, maximum = 64)]
    pub max_in_flight_per_member: u32,
    /// Attempts per item before it is dead-lettered, at least 1 (default 3).
    #[schema(minimum = 1)]
    pub max_attempts: u32,
    /// How a member's crash affects its siblings (default `one_for_one`).
    pub strategy: SwarmStrategyName,
    /// Restart intensity of the swarm's supervisor: at most this many member crashes… (default 10,
    /// at most 65 536)
    #[schema(maximum = 65_536)]
    pub max_restarts: u32,
    /// …within this many milliseconds, else the swarm fails (default 10 000, at least 1).
    #[schema(minimum = 1)]
    pub restart_period_ms: u64,
}

impl Default for SwarmSpecBody {
    fn default() -> Self {
        SwarmSpec::default().into()
    }
}

impl From<SwarmSpec> for SwarmSpecBody {
    fn from(s: SwarmSpec) -> Self {
        Self {
            member_kind: s.member_kind,
            members: s.members,
            member_swarms: s.member_swarms,
            max_in_flight_per_member: s.max_in_flight_per_member,
            max_attempts: s.max_attempts,
            strategy: s.strategy.into(),
            max_restarts: s.max_restarts,
            restart_period_ms: s.restart_period_ms,
        }
    }
}

impl From<SwarmSpecBody> for SwarmSpec {
    fn from(s: SwarmSpecBody) -> Self {
        Self {
            member_kind: s.member_kind,
            members: s.members,
            member_swarms: s.member_swarms,
            max_in_flight_per_member: s.max_in_flight_per_member,
            max_attempts: s.max_attempts,
            strategy: s.strategy.into(),
            max_restarts: s.max_restarts,
            restart_period_ms: s.restart_period_ms,
        }
    }
}

/// A member of a swarm (mirrors `MemberRef`): `{"type":"imvu","id":3}` or
/// `{"type":"swarm","id":7}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum SwarmMember {
    /// An IMVU of the swarm's tenant, by id.
    Imvu(u64),
    /// A swarm of the same tenant nested in this one, by id.
    Swarm(u64),
}

impl From<MemberRef> for SwarmMember {
    fn from(m: MemberRef) -> Self {
        match m {
            MemberRef::Imvu(id) => Self::Imvu(id),
            MemberRef::Swarm(id) => Self::Swarm(id),
        }
    }
}

impl From<SwarmMember> for MemberRef {
    fn from(m: SwarmMember) -> Self {
        match m {
            SwarmMember::Imvu(id) => Self::Imvu(id),
            SwarmMember::Swarm(id) => Self::Swarm(id),
        }
    }
}

/// `tenant/id`: the full key of a swarm (mirrors `vcos_actors::SwarmKey`). Swarms share the
/// IMVU id space, so an id names one entity.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SwarmKeyView {
    /// Owning tenant.
    #[schema(example = "default")]
    pub tenant: String,
    /// Node-assigned number.
    #[schema(example = 4)]
    pub id: u64,
}

/// Running or failed (mirrors `SwarmStatus`), tagged by `state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SwarmState {
    /// Handing out work.
    Running,
    /// Its supervisor gave up (or no member is left); it takes no more work.
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<SwarmStatus> for SwarmState {
    fn from(s: SwarmStatus) -> Self {
        match s {
            SwarmStatus::Running => Self::Running,
            SwarmStatus::Failed { reason } => Self::Failed { reason },
        }
    }
}

/// Work counts of a swarm (mirrors `Progress`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SwarmProgress {
    /// Items ever submitted.
    pub submitted: u64,
    /// Waiting for a member.
    pub pending: u64,
    /// Handed out.
    pub in_flight: u64,
    /// Completed and credited.
    pub completed: u64,
    /// Given up after `max_attempts` failures.
    pub dead_lettered: u64,
    /// Members still serving.
    pub members_alive: u64,
}

impl From<Progress> for SwarmProgress {
    fn from(p: Progress) -> Self {
        Self {
            submitted: p.submitted,
            pending: p.pending,
            in_flight: p.in_flight,
            completed: p.completed,
            dead_lettered: p.dead_lettered,
            members_alive: p.members_alive,
        }
    }
}

/// What callers learn about a swarm (mirrors `SwarmInfo`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SwarmView {
    /// `tenant/id`.
    pub key: SwarmKeyView,
    /// The spec it was created with, defaults filled in.
    pub spec: SwarmSpecBody,
    /// Members in start order.
    pub members: Vec<SwarmMember>,
    /// Running or failed.
    pub status: SwarmState,
    /// Work counts.
    pub progress: SwarmProgress,
}

impl From<SwarmInfo> for SwarmView {
    fn from(i: SwarmInfo) -> Self {
        Self {
            key: SwarmKeyView { tenant: i.key.tenant.to_string(), id: i.key.id.0 },
            spec: i.spec.into(),
            members: i.members.into_iter().map(Into::into).collect(),
            status: i.status.into(),
            progress: i.progress.into(),
        }
    }
}

/// `POST /v1/tenants/{tenant}/swarms/{id}/work`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkRequest {
    /// Work items, 1..=10 000; each is a message for the member kind (any JSON: an item no
    /// member takes is dead-lettered, not refused).
    #[schema(value_type = Vec<Value>, min_items = 1, max_items = 10_000,
        example = json!([{"op": "word_count", "text": "a b c"}, {"op": "upper", "text": "hi"}]))]
    pub items: Vec<serde_json::Value>,
}

/// `POST /v1/tenants/{tenant}/swarms/{id}/work` → 202: the items' ids, in submission order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmittedWork {
    /// One id per submitted item (ids come from the node's id space).
    pub item_ids: Vec<u64>,
}

/// Who did a work item (mirrors `CreditRecord`); written once, with the item's completion.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreditEntry {
    /// The item's id.
    pub item: u64,
    /// The member that completed it.
    pub member: SwarmMember,
    /// The member's reply.
    // Any JSON: what the member's kind answered.
    #[schema(value_type = Value)]
    pub result: serde_json::Value,
    /// Attempts it took.
    pub attempts: u32,
    /// When, Unix ms.
    pub unix_ms: u64,
}

impl From<CreditRecord> for CreditEntry {
    fn from(c: CreditRecord) -> Self {
        Self { item: c.item, member: c.member.into(), result: c.result, attempts: c.attempts, unix_ms: c.unix_ms }
    }
}

/// `GET /v1/tenants/{tenant}/swarms/{id}/credits`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    /// One record per completed item, in item order.
    pub credits: Vec<CreditEntry>,
}

/// A value of a swarm's shared memory: the body of `PUT …/memory/{key}` and of its `GET`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryValue {
    /// Any JSON value.
    #[schema(value_type = Value, example = json!({"topic": "rust"}))]
    pub value: serde_json::Value,
}

/// `POST /v1/tenants/{tenant}/swarms/{id}/votes`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"proposal": "ship it?", "options": ["yes", "no"], "quorum": 2}))]
pub struct OpenVoteRequest {
    /// What is decided.
    pub proposal: String,
    /// The choices, at least two.
    #[schema(min_items = 2)]
    pub options: Vec<String>,
    /// Ballots one option needs to win, 1..=members (default: a majority of the members).
    #[serde(default)]
    pub quorum: Option<u32>,
}

/// `POST /v1/tenants/{tenant}/swarms/{id}/votes/{vote}/ballots`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"member": {"type": "imvu", "id": 3}, "choice": "yes"}))]
pub struct BallotRequest {
    /// The voting member (one ballot per member; a later ballot replaces an earlier one).
    #[serde(deserialize_with = "crate::extract::object")]
    pub member: SwarmMember,
    /// One of the vote's options.
    pub choice: String,
}

/// A quorum decision among a swarm's members (mirrors `VoteRecord`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    /// Vote id.
    pub id: u64,
    /// What is decided.
    pub proposal: String,
    /// Allowed choices.
    pub options: Vec<String>,
    /// Ballots needed for one option to win.
    pub quorum: u32,
    /// Ballots so far: member (`imvu-3`, `swarm-7`) → choice.
    #[schema(example = json!({"imvu-3": "yes"}))]
    pub ballots: BTreeMap<String, String>,
    /// The winning option once it reached quorum; null until then.
    pub decision: Option<String>,
}

impl From<VoteRecord> for VoteView {
    fn from(v: VoteRecord) -> Self {
        Self { id: v.id, proposal: v.proposal, options: v.options, quorum: v.quorum, ballots: v.ballots, decision: v.decision }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcos_actors::{ImvuId, ImvuKey, TenantId};

    /// A mirror must serialise exactly like what it mirrors.
    fn same_json<A: Serialize, B: Serialize>(original: &A, mirror: &B) {
        let a = serde_json::to_value(original).expect("plain data");
        let b = serde_json::to_value(mirror).expect("plain data");
        assert_eq!(a, b);
    }

    #[test]
    fn imvu_view_serialises_like_imvu_info() {
        let info = ImvuInfo {
            key: ImvuKey { tenant: TenantId::default_tenant(), id: ImvuId(7) },
            kind: "counter".into(),
            lifecycle: LifecycleState::Paused,
            state: serde_json::json!(3),
            held_messages: 2,
        };
        same_json(&info, &ImvuView::from(info.clone()));
    }

    #[test]
    fn history_entry_serialises_like_stamped_history_event() {
        let events = [
            HistoryEvent::Transition(TransitionRecord {
                transition: Transition::Create,
                from: None,
                to: Some(LifecycleState::Genesis),
                handshake: HandshakeOutcome::Admitted,
                caller: "http".into(),
                unix_ms: 1,
                final_state: None,
            }),
            HistoryEvent::Transition(TransitionRecord {
                transition: Transition::Terminate,
                from: Some(LifecycleState::Active),
                to: Some(LifecycleState::Active),
                handshake: HandshakeOutcome::Refused { stage: Stage::TenantGovernance, reason: "no".into(), transient: false },
                caller: "http".into(),
                unix_ms: 2,
                final_state: Some(serde_json::json!({"a": 1})),
            }),
            HistoryEvent::Supervision(SupervisionRecord { reason: "boom".into(), decision: "restarted".into(), restarts_in_window: 1, unix_ms: 3 }),
        ];
        for (i, record) in events.into_iter().enumerate() {
            let stamped = Stamped { canon_index: i as u64 + 10, record };
            same_json(&stamped, &HistoryEntry::from(stamped.clone()));
        }
    }

    #[test]
    fn documented_tenant_name_limit_holds() {
        // `CreateTenantRequest::name`'s doc (and so the OpenAPI document) states this number.
        assert_eq!(vcos_actors::ids::TENANT_NAME_LEN_MAX, 31);
    }

    #[test]
    fn transition_names_round_trip() {
        for t in [Transition::Create, Transition::Activate, Transition::Pause, Transition::Resume, Transition::Terminate] {
            same_json(&t, &TransitionName::from(t));
            assert_eq!(Transition::from(TransitionName::from(t)), t);
        }
    }

    #[test]
    fn swarm_view_serialises_like_swarm_info() {
        let spec = SwarmSpec {
            member_kind: Some("text-worker".into()),
            members: 2,
            member_swarms: vec![9],
            strategy: SwarmStrategy::RestForOne,
            ..SwarmSpec::default()
        };
        for status in [SwarmStatus::Running, SwarmStatus::Failed { reason: "too many crashes".into() }] {
            let info = SwarmInfo {
                key: vcos_actors::SwarmKey { tenant: TenantId::default_tenant(), id: vcos_actors::SwarmId(4) },
                spec: spec.clone(),
                members: vec![MemberRef::Imvu(2), MemberRef::Imvu(3), MemberRef::Swarm(9)],
                status,
                progress: Progress { submitted: 6, pending: 1, in_flight: 2, completed: 2, dead_lettered: 1, members_alive: 3 },
            };
            same_json(&info, &SwarmView::from(info.clone()));
        }
    }

    #[test]
    fn swarm_spec_body_defaults_and_round_trips_like_swarm_spec() {
        same_json(&SwarmSpec::default(), &SwarmSpecBody::default());
        let parsed: SwarmSpecBody = serde_json::from_value(serde_json::json!({"members": 3})).expect("valid body");
        let original: SwarmSpec = serde_json::from_value(serde_json::json!({"members": 3})).expect("valid spec");
        assert_eq!(SwarmSpec::from(parsed), original);
        for strategy in [SwarmStrategy::OneForOne, SwarmStrategy::OneForAll, SwarmStrategy::RestForOne] {
            same_json(&strategy, &SwarmStrategyName::from(strategy));
            assert_eq!(SwarmStrategy::from(SwarmStrategyName::from(strategy)), strategy);
        }
    }

    #[test]
    fn members_credits_and_votes_serialise_like_theirs() {
        for member in [MemberRef::Imvu(3), MemberRef::Swarm(7)] {
            same_json(&member, &SwarmMember::from(member));
            assert_eq!(MemberRef::from(SwarmMember::from(member)), member);
        }
        assert_eq!(serde_json::to_value(SwarmMember::Imvu(3)).expect("plain data"), serde_json::json!({"type": "imvu", "id": 3}));
        let credit = CreditRecord { item: 5, member: MemberRef::Imvu(2), result: serde_json::json!({"words": 3}), attempts: 1, unix_ms: 9 };
        same_json(&credit, &CreditEntry::from(credit.clone()));
        let vote = VoteRecord {
            id: 8,
            proposal: "ship?".into(),
            options: vec!["yes".into(), "no".into()],
            quorum: 2,
            ballots: BTreeMap::from([("imvu-2".to_owned(), "yes".to_owned())]),
            decision: None,
        };
        same_json(&vote, &VoteView::from(vote.clone()));
    }
}

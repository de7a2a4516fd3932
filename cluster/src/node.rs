//! [`Cluster`]: the driver that puts placement to work on a node.
//!
//! - A lease task runs the [`Leases`] core every `tick_ms`: it reads the bucket lease records
//!   from the local canon replica, feeds them and the alive members of the home region to the
//!   core, performs the core's guarded writes through the `CanonStore` seam, and feeds their
//!   outcomes back. Time comes from the injected [`Clock`].
//! - Requests for an IMVU (from the HTTP facade or from another node) are served locally when
//!   this node can prove it holds the IMVU's bucket, and forwarded to the holder otherwise
//!   (the lease record names it; before any record, the intended owner by rendezvous). A
//!   request that finds no holder waits for one up to `owner_wait_ms`, then fails with a
//!   retryable `unavailable` error: never a hang.
//! - Retries: a request is sent elsewhere only when it certainly was not handled (the peer
//!   could not be reached, or answered "not the owner"); after a timeout the caller gets an
//!   error, since the message may have been applied. The same error comes early when the
//!   bucket's lease record names another node while a forwarded request waits (its old
//!   owner can no longer commit, but may have); a read is sent again to the new holder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use vcos_actors::store::{CanonStore, CanonWrite, StoreError};
use vcos_actors::imvu::AskToken;
use vcos_actors::ownership::{Fence, Ownership};
use vcos_actors::router::Router;
use vcos_actors::{ActorError, Caller, Clock, ImvuInfo, ImvuKey, Runtime, TenantId};
use vcos_canon_raft::app::AppFuture;
use vcos_canon_raft::{AppCallError, AppHandler, CanonNode};

use crate::members::{Member, MemberSource, MemberState};
use crate::placement::lease::{Holder, LeaseKey, LeaseOp, LeaseRecord, LeaseTarget};
use crate::region::{self, Home};
use crate::placement::{bucket_of, LeaseAction, LeaseConfig, LeaseOutcome, Leases, BUCKETS};

use crate::remote::{self, Op, RemoteFrame, RemoteReply, RemoteRequest, HOPS_MAX};

mod links;
mod models;

pub use models::{ClusterModels, INFERENCE_ROLE, MODEL_TRIES_MAX};

/// Canon key prefix of the bucket lease records.
pub const LEASE_PREFIX: &str = "cluster/leases/";
/// Canon key prefix of the bucket epoch keys (the fence that IMVU writes carry).
pub const EPOCH_PREFIX: &str = "cluster/epochs/";
/// Canon key prefix of the nodes' heartbeats.
pub const HEARTBEAT_PREFIX: &str = "cluster/heartbeats/";

/// The heartbeat key of `node`.
pub fn heartbeat_key(node: u64) -> String {
    format!("{HEARTBEAT_PREFIX}{node}")
}

/// The lease record key of `bucket`.
pub fn lease_key(bucket: u16) -> String {
    format!("{LEASE_PREFIX}{bucket:03}")
}

/// The epoch key of `bucket`.
pub fn epoch_key(bucket: u16) -> String {
    format!("{EPOCH_PREFIX}{bucket:03}")
}

/// How a node takes part in placement.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node and its incarnation.
    pub me: Holder,
    /// Its home region.
    pub region: String,
    /// Lease timing.
    pub lease: LeaseConfig,
    /// How often the lease task runs.
    pub tick_ms: u64,
    /// Deadline of a request forwarded to another node.
    pub forward_timeout_ms: u64,
    /// How long a request waits for its IMVU's bucket to get a holder (failover) before it
    /// fails with a retryable error.
    pub owner_wait_ms: u64,
    /// Deadline of a model request forwarded to another node (a long generation).
    pub model_timeout_ms: u64,
}

impl ClusterConfig {
    /// Defaults for `me` in `region`.
    pub fn new(me: Holder, region: &str) -> Self {
        Self {
            me,
            region: region.to_owned(),
            lease: LeaseConfig::default(),
            tick_ms: 50,
            forward_timeout_ms: 5_000,
            owner_wait_ms: 3_000,
            model_timeout_ms: 300_000,
        }
    }
}

/// Where an IMVU lives, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    /// Its home region (from the tag in its id), whose canon holds it.
    pub region: String,
    /// Its bucket.
    pub bucket: u16,
    /// The node that holds the bucket by its lease record (`None`: not held yet).
    pub owner_node: Option<u64>,
    /// The lease's fencing epoch (0: never held).
    pub lease_epoch: u64,
    /// Whether this node serves it now.
    pub served_here: bool,
}

/// The cluster on one node. Cloning shares it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    runtime: Runtime,
    canon: CanonNode,
    store: Arc<dyn CanonStore>,
    clock: Arc<dyn Clock>,
    members: Arc<dyn MemberSource>,
    leases: Arc<LeaseTable>,
    /// The tag of `config.region` in IMVU ids.
    region_tag: u16,
    /// Messages between IMVUs: per-node queues and the asks waiting for answers.
    links: links::Links,
    stop: tokio::sync::Notify,
    /// This node's own model pools, served to other nodes too (unset: it serves none).
    local_models: std::sync::OnceLock<Arc<dyn vcos_actors::models::ModelService>>,
    /// Turns of the rotation over model nodes.
    model_turn: std::sync::atomic::AtomicU64,
    /// Itself, weakly: the runtime's `Placement` calls come back through it.
    me: std::sync::OnceLock<Weak<Inner>>,
}

/// The node's lease core, shared by the lease task, the request path and the runtime (as its
/// [`Ownership`]): create it first, give it to the runtime's config, then start the
/// [`Cluster`] with it.
pub struct LeaseTable {
    leases: Mutex<Leases>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable").finish_non_exhaustive()
    }
}

impl LeaseTable {
    /// The lease core of `me`, holding nothing yet.
    pub fn new(me: Holder, config: LeaseConfig) -> Result<Arc<Self>, ClusterError> {
        Ok(Arc::new(Self { leases: Mutex::new(Leases::new(me, config)?) }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        lock(&self.leases)
    }
}

impl Ownership for LeaseTable {
    fn fence(&self, key: &ImvuKey, now_ms: u64) -> Result<Option<Fence>, ActorError> {
        if vcos_actors::failpoints::skip_lease_check() {
            return Ok(None);
        }
        let bucket = bucket_of(key.tenant.as_str(), key.id.0);
        match self.lock().serving(now_ms, bucket) {
            Some(fence) => Ok(Some(Fence { lease: bucket, epoch: fence.epoch })),
            None => Err(ActorError::Unavailable(format!("this node does not hold {key}'s bucket {bucket} now; retry"))),
        }
    }

    fn guard(&self, fence: Fence) -> CanonWrite {
        CanonWrite::Expect { key: epoch_key(fence.lease), value: Some(fence.epoch.to_be_bytes().to_vec()) }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.inner.config.me).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Errors starting the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The lease timing is unsafe.
    #[error("lease config: {0}")]
    Lease(#[from] crate::placement::lease::LeaseConfigError),
    /// The region's name hashes to the tag another region already has in IMVU ids.
    #[error("region {region:?} has the same id tag as region {other:?} (a hash of the name): name this region differently")]
    RegionTag {
        /// This node's region.
        region: String,
        /// The region it collides with.
        other: String,
    },
}

impl Cluster {
    /// Starts placement on this node: the lease task and the handler of remote requests.
    pub fn start(
        config: ClusterConfig,
        leases: Arc<LeaseTable>,
        runtime: Runtime,
        canon: CanonNode,
        store: Arc<dyn CanonStore>,
        clock: Arc<dyn Clock>,
        members: Arc<dyn MemberSource>,
    ) -> Result<Self, ClusterError> {
        let region_tag = region::region_tag(&config.region);
        if let Some(other) = region::tag_collision(&config.region, canon.groups().iter().map(|g| g.region())) {
            return Err(ClusterError::RegionTag { region: config.region.clone(), other: other.to_owned() });
        }
        let inner = Arc::new(Inner {
            region_tag,
            links: links::Links::new(config.me.incarnation),
            config,
            runtime,
            canon: canon.clone(),
            store,
            clock,
            members,
            leases,
            stop: tokio::sync::Notify::new(),
            local_models: std::sync::OnceLock::new(),
            model_turn: std::sync::atomic::AtomicU64::new(0),
            me: std::sync::OnceLock::new(),
        });
        let _ = inner.me.set(Arc::downgrade(&inner));
        let placement: Weak<dyn vcos_actors::Placement> = Arc::downgrade(&inner) as Weak<dyn vcos_actors::Placement>;
        inner.runtime.set_placement(placement);
        canon.set_app_handler(Arc::new(RemoteHandler { inner: Arc::downgrade(&inner) }));
        tokio::spawn(lease_task(Arc::clone(&inner)));
        tokio::spawn(links::sweep_asks(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Serves `local` (this node's pools) to the other nodes, and returns the models IMVUs
    /// and the facade use here: `local` while it has room, else a node with the `inference`
    /// role. Call it once; a second call keeps the first pools for other nodes.
    pub fn models(&self, local: Arc<dyn vcos_actors::models::ModelService>) -> Arc<ClusterModels> {
        let _ = self.inner.local_models.set(Arc::clone(&local));
        Arc::new(ClusterModels::new(Arc::downgrade(&self.inner), Some(local)))
    }

    /// The models of the other nodes only (for a caller that tried its own pools first).
    pub fn remote_models(&self) -> Arc<ClusterModels> {
        Arc::new(ClusterModels::new(Arc::downgrade(&self.inner), None))
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.config.me.node
    }

    /// The runtime underneath.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Every member known, this node included.
    pub fn members(&self) -> Vec<Member> {
        self.inner.members.members()
    }

    /// Buckets held per node, by the lease records this node read last.
    pub fn buckets_by_node(&self) -> BTreeMap<u64, usize> {
        let leases = self.inner.leases.lock();
        let mut out = BTreeMap::new();
        for bucket in 0..BUCKETS {
            if let Some(holder) = leases.recorded_holder(bucket) {
                *out.entry(holder.node).or_insert(0) += 1;
            }
        }
        out
    }

    /// Buckets this node can prove it holds now.
    pub fn buckets_served(&self) -> usize {
        self.inner.leases.lock().serving_count(self.inner.clock.now_ms())
    }

    /// Where `key` lives.
    pub fn placement(&self, key: &ImvuKey) -> Placement {
        let inner = &self.inner;
        let bucket = bucket_of(key.tenant.as_str(), key.id.0);
        match home(inner, key) {
            Ok(Home::Here) | Err(_) => {
                let now = inner.clock.now_ms();
                let leases = inner.leases.lock();
                let record = leases.recorded(bucket);
                Placement {
                    region: inner.config.region.clone(),
                    bucket,
                    owner_node: record.and_then(|r| r.holder).map(|h| h.node),
                    lease_epoch: record.map_or(0, |r| r.epoch),
                    served_here: leases.serving(now, bucket).is_some(),
                }
            }
            Ok(Home::Region(region)) => {
                let record = inner
                    .canon
                    .group(&region)
                    .ok()
                    .and_then(|group| group.reader().get(lease_key(bucket).as_bytes()).ok().flatten())
                    .and_then(|bytes| LeaseRecord::decode(&bytes).ok());
                Placement {
                    region,
                    bucket,
                    owner_node: record.and_then(|r| r.holder).map(|h| h.node),
                    lease_epoch: record.map_or(0, |r| r.epoch),
                    served_here: false,
                }
            }
        }
    }

    /// Creates an IMVU of `kind`: the id is allocated here, the IMVU is created by its owner.
    pub async fn create(&self, tenant: &TenantId, kind: &str, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        create(&self.inner, tenant, kind, caller).await
    }

    /// Sends a message and waits for the reply, wherever the IMVU lives.
    pub async fn ask_json(&self, key: &ImvuKey, message: serde_json::Value, caller: &Caller) -> Result<serde_json::Value, ActorError> {
        ask(&self.inner, key, &message, caller).await
    }

    /// Runs a lifecycle transition, wherever the IMVU lives.
    pub async fn transition(&self, key: &ImvuKey, transition: vcos_actors::Transition, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        transition_on(&self.inner, key, transition, caller).await
    }

    /// State and lifecycle, wherever the IMVU lives.
    pub async fn inspect(&self, key: &ImvuKey, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        decode_json(&route(&self.inner, key, caller, Op::Inspect, 0).await?)
    }

    /// A call to a swarm's coordinator, on the node that holds the swarm's bucket (swarms are
    /// placed like the IMVU with their id): it starts there from canon when the bucket moved.
    pub async fn swarm(&self, key: &vcos_actors::SwarmKey, call: &vcos_actors::swarm::SwarmCall, caller: &Caller) -> Result<serde_json::Value, ActorError> {
        let call = serde_json::to_vec(call).map_err(|e| ActorError::BadRequest { field: "call".into(), reason: e.to_string() })?;
        let as_imvu = ImvuKey { tenant: key.tenant, id: vcos_actors::ImvuId(key.id.0) };
        decode_json(&route(&self.inner, &as_imvu, caller, Op::Swarm { call }, 0).await?)
    }

    /// Gives up every bucket (graceful leave): their next owners need not wait out the lease.
    /// Returns once the releases were written or failed.
    pub async fn leave(&self) {
        self.inner.stop.notify_one();
        let mut actions = Vec::new();
        self.inner.leases.lock().release_all(&mut actions);
        let (tx, mut rx) = mpsc::channel(usize::from(BUCKETS) + 1);
        let mut writes = 0;
        for action in actions {
            if let LeaseAction::Write { target, ops } = action {
                perform_write(&self.inner, target, ops, tx.clone());
                writes += 1;
            }
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for _ in 0..writes {
            if tokio::time::timeout_at(deadline, rx.recv()).await.is_err() {
                break;
            }
        }
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ActorError> {
    serde_json::from_slice(bytes).map_err(|e| ActorError::Unavailable(format!("unreadable reply: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ActorError> {
    serde_json::to_vec(value).map_err(|e| ActorError::Unavailable(format!("reply does not serialise: {e}")))
}

fn message_bytes(message: &serde_json::Value) -> Result<Vec<u8>, ActorError> {
    serde_json::to_vec(message).map_err(|e| ActorError::BadRequest { field: "message".into(), reason: e.to_string() })
}

fn message_value(message: &[u8]) -> Result<serde_json::Value, ActorError> {
    serde_json::from_slice(message).map_err(|e| ActorError::BadRequest { field: "message".into(), reason: e.to_string() })
}

// The routed operations, shared by `Cluster` (the HTTP facade), the runtime's `Placement`
// (swarm members) and `ClusterRouter` (messages between IMVUs).

/// Creates an IMVU of `kind`: the id is allocated here, the IMVU is created by its owner.
async fn create(inner: &Arc<Inner>, tenant: &TenantId, kind: &str, caller: &Caller) -> Result<ImvuInfo, ActorError> {
    inner.runtime.tenant_or_load(tenant)?;
    let id = inner.runtime.allocate_id().await?;
    let key = ImvuKey { tenant: *tenant, id: vcos_actors::ImvuId(id) };
    decode_json(&route(inner, &key, caller, Op::Create { kind: kind.to_owned() }, 0).await?)
}

async fn ask(inner: &Arc<Inner>, key: &ImvuKey, message: &serde_json::Value, caller: &Caller) -> Result<serde_json::Value, ActorError> {
    decode_json(&route(inner, key, caller, Op::Ask { message: message_bytes(message)? }, 0).await?)
}

async fn transition_on(inner: &Arc<Inner>, key: &ImvuKey, transition: vcos_actors::Transition, caller: &Caller) -> Result<ImvuInfo, ActorError> {
    let name = serde_json::to_value(transition).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    decode_json(&route(inner, key, caller, Op::Transition { transition: name }, 0).await?)
}

/// Serves `request` here (this node holds the bucket).
async fn serve_locally(inner: &Inner, key: &ImvuKey, caller: &Caller, op: &Op) -> Result<Vec<u8>, ActorError> {
    let runtime = &inner.runtime;
    runtime.tenant_or_load(&key.tenant)?;
    match op {
        Op::Create { kind } => to_json(&runtime.create_imvu_at(key, kind, caller).await?),
        Op::Ask { message } => to_json(&runtime.ask_json(key, message_value(message)?).await?),
        Op::Tell { message } => {
            runtime.tell_json(key, message_value(message)?).await?;
            to_json(&serde_json::Value::Null)
        }
        Op::Transition { transition } => to_json(&runtime.transition(key, remote::parse_transition(transition)?, caller).await?),
        Op::Inspect => to_json(&runtime.inspect(key).await?),
        Op::Swarm { call } => {
            let call = serde_json::from_slice(call).map_err(|e| ActorError::BadRequest { field: "call".into(), reason: e.to_string() })?;
            let swarm = vcos_actors::SwarmKey { tenant: key.tenant, id: vcos_actors::SwarmId(key.id.0) };
            to_json(&runtime.swarm_call(&swarm, call).await?)
        }
    }
}

/// Where to send a request for `bucket`: the recorded holder if it is a live member, else the
/// intended owner. `None` when that is this node (it must wait for its own claim).
fn target(inner: &Inner, bucket: u16, members: &[Member]) -> Option<Member> {
    let me = inner.config.me.node;
    let alive = |node: u64| members.iter().find(|m| m.node_id == node && matches!(m.state, MemberState::Alive | MemberState::Suspect));
    let leases = inner.leases.lock();
    let choice = leases
        .recorded_holder(bucket)
        .map(|h| h.node)
        .filter(|&node| alive(node).is_some())
        .or_else(|| leases.intended_owner(bucket))?;
    if choice == me {
        return None;
    }
    alive(choice).cloned()
}

/// The home region of `key`'s IMVU, from the tag in its id.
fn home(inner: &Inner, key: &ImvuKey) -> Result<Home, ActorError> {
    let tag = key.id.region_tag();
    if tag == inner.region_tag {
        return Ok(Home::Here);
    }
    let groups = inner.canon.groups();
    let members = inner.members.members();
    let known = groups.iter().map(|g| g.region()).chain(members.iter().map(|m| m.region.as_str()));
    region::home_of(key.id, &inner.config.region, known).ok_or_else(|| ActorError::NotFound {
        what: "imvu",
        key: format!("{key} (its id names region tag {tag}, which no region of this cluster has)"),
    })
}

/// The node whose lease record holds `bucket` in `home`, as this node's replica of that
/// region's canon says.
fn recorded_holder(inner: &Inner, home: &Home, bucket: u16) -> Option<u64> {
    match home {
        Home::Here => inner.leases.lock().recorded_holder(bucket).map(|h| h.node),
        Home::Region(region) => {
            let group = inner.canon.group(region).ok()?;
            let bytes = group.reader().get(lease_key(bucket).as_bytes()).ok()??;
            LeaseRecord::decode(&bytes).ok()?.holder.map(|h| h.node)
        }
    }
}

/// Where to send a request for `bucket` of another region: the node its lease record names
/// if it is a live member, else the region's intended owner by rendezvous over its live
/// members (which forwards on, or answers "not the owner" with a hint). `None` when no member
/// of that region is alive.
fn foreign_target(inner: &Inner, region: &str, bucket: u16, members: &[Member]) -> Option<Member> {
    let alive: Vec<&Member> = members
        .iter()
        .filter(|m| m.region == region && matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .collect();
    let home = Home::Region(region.to_owned());
    let choice = recorded_holder(inner, &home, bucket)
        .filter(|&node| alive.iter().any(|m| m.node_id == node))
        .or_else(|| crate::placement::rendezvous::owner_of(bucket, alive.iter().map(|m| m.node_id)))?;
    alive.into_iter().find(|m| m.node_id == choice).cloned()
}

/// Routes one request: here if this node serves the bucket, else to the holder, in this
/// region or in the IMVU's home region.
async fn route(inner: &Arc<Inner>, key: &ImvuKey, caller: &Caller, op: Op, hops: u8) -> Result<Vec<u8>, ActorError> {
    let bucket = bucket_of(key.tenant.as_str(), key.id.0);
    let home = home(inner, key)?;
    let start = inner.clock.now_ms();
    let wait_ms = inner.config.owner_wait_ms;
    let mut hint: Option<u64> = None;
    loop {
        let now = inner.clock.now_ms();
        if home == Home::Here && (inner.leases.lock().serving(now, bucket).is_some() || vcos_actors::failpoints::skip_lease_check()) {
            metrics::counter!("vcos_cluster_requests_total", "path" => "local").increment(1);
            return serve_locally(inner, key, caller, &op).await;
        }
        if now >= start + wait_ms {
            metrics::counter!("vcos_cluster_requests_total", "path" => "no_owner").increment(1);
            return Err(ActorError::Unavailable(match &home {
                Home::Here => format!("no node serves {key} yet (bucket {bucket} is failing over); retry"),
                Home::Region(region) => format!("no live node of {key}'s home region {region} answered for it; retry"),
            }));
        }
        let members = inner.members.members();
        let peer = match hint.take() {
            Some(node) if node != inner.config.me.node => members.iter().find(|m| m.node_id == node).cloned(),
            _ => None,
        }
        .or_else(|| match &home {
            Home::Here => target(inner, bucket, &members),
            Home::Region(region) => foreign_target(inner, region, bucket, &members),
        });
        let Some(peer) = peer else {
            match &home {
                // This node is (or is about to be) the owner: wait for its claim.
                Home::Here => tracing::debug!(%key, bucket, "waiting for this node's own claim"),
                Home::Region(region) => tracing::debug!(%key, %region, "waiting for a live node of the IMVU's home region"),
            }
            tokio::time::sleep(Duration::from_millis(inner.config.tick_ms / 2 + 1)).await;
            continue;
        };
        if hops >= HOPS_MAX {
            return Err(ActorError::Unavailable(format!("{key}: forwarded {hops} times without reaching its owner; retry")));
        }
        let request = RemoteRequest {
            tenant: key.tenant.as_str().to_owned(),
            id: key.id.0,
            caller: serde_json::to_vec(caller).unwrap_or_default(),
            hops: hops + 1,
            op: op.clone(),
        };
        let timeout = Duration::from_millis(inner.config.forward_timeout_ms);
        metrics::counter!("vcos_cluster_requests_total", "path" => "forwarded").increment(1);
        let holder_at_send = recorded_holder(inner, &home, bucket);
        let call = inner.canon.call_app(peer.node_id, &peer.canon_addr, RemoteFrame::Request(request).encode(), timeout);
        let answered = tokio::select! {
            biased;
            answered = call => answered,
            moved_to = holder_moved(inner, &home, bucket, holder_at_send, peer.node_id) => {
                metrics::counter!("vcos_cluster_forwards_overtaken_total").increment(1);
                // The node we sent to lost the bucket: it can no longer commit for it, but it
                // may have before. A read is sent again to the new holder; anything else
                // answers at once that its outcome is unknown, instead of waiting out the
                // forward deadline on a node that may be dead.
                if matches!(op, Op::Inspect) {
                    continue;
                }
                return Err(ActorError::Unavailable(format!(
                    "{key}: its owner changed (node {} to node {moved_to}) while the request was in flight; outcome unknown, check its state before retrying",
                    peer.node_id
                )));
            }
        };
        match answered {
            Ok(bytes) => match RemoteReply::decode(&bytes) {
                Ok(RemoteReply::Ok(bytes)) => return Ok(bytes),
                Ok(RemoteReply::Err(bytes)) => return Err(remote::decode_error(&bytes)),
                Ok(RemoteReply::NotOwner { hint: next }) => {
                    tracing::debug!(%key, bucket, node = peer.node_id, ?next, "not the owner");
                    hint = next.filter(|&n| n != peer.node_id);
                    tokio::time::sleep(Duration::from_millis(inner.config.tick_ms / 2 + 1)).await;
                }
                Err(e) => return Err(ActorError::Unavailable(format!("node {}: {e}", peer.node_id))),
            },
            Err(AppCallError::NotDelivered { reason, .. }) => {
                tracing::debug!(node = peer.node_id, %reason, "owner unreachable; trying again");
                tokio::time::sleep(Duration::from_millis(inner.config.tick_ms)).await;
            }
            Err(e @ AppCallError::Unknown { .. }) => {
                return Err(ActorError::Unavailable(format!("{key}: outcome unknown ({e}); check its state before retrying")));
            }
        }
    }
}

/// Resolves with the new holder once the lease record of `bucket` names a node other than
/// `sent_to` that it did not name when the request was sent (`at_send`); checked every lease
/// tick, from the local replica.
async fn holder_moved(inner: &Inner, home: &Home, bucket: u16, at_send: Option<u64>, sent_to: u64) -> u64 {
    loop {
        tokio::time::sleep(Duration::from_millis(inner.config.tick_ms.max(1))).await;
        let now = recorded_holder(inner, home, bucket);
        if let Some(node) = now.filter(|&n| n != sent_to && Some(n) != at_send) {
            return node;
        }
    }
}

/// Answers requests forwarded by other nodes.
struct RemoteHandler {
    inner: Weak<Inner>,
}

impl AppHandler for RemoteHandler {
    fn handle(&self, from: u64, payload: Vec<u8>) -> AppFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(inner) = inner.upgrade() else {
                return RemoteReply::error(&ActorError::Unavailable("node stopping".into())).encode();
            };
            let request = match RemoteFrame::decode(&payload) {
                Ok(RemoteFrame::Request(request)) => request,
                Ok(RemoteFrame::Batch(items)) => {
                    let awaited = links::deliver(&inner, items).await;
                    return links::batch_ack(links::answers_for_ack(&inner, from, awaited).await).encode();
                }
                Ok(RemoteFrame::Model { request, .. }) => return models::serve_model(&inner, from, &request).await.encode(),
                Ok(RemoteFrame::ModelList) => return models::list_models(&inner).await.encode(),
                Err(e) => {
                    metrics::counter!("vcos_cluster_remote_rejected_total", "reason" => "corrupt").increment(1);
                    tracing::warn!(from, error = %e, "refusing a corrupt remote request");
                    return RemoteReply::error(&ActorError::BadRequest { field: "payload".into(), reason: e.to_string() }).encode();
                }
            };
            answer(&inner, request).await.encode()
        })
    }
}

async fn answer(inner: &Arc<Inner>, request: RemoteRequest) -> RemoteReply {
    let (key, caller) = match (request.key(), request.caller()) {
        (Ok(key), Ok(caller)) => (key, caller),
        (Err(e), _) | (_, Err(e)) => return RemoteReply::error(&e),
    };
    let bucket = bucket_of(key.tenant.as_str(), key.id.0);
    if !matches!(home(inner, &key), Ok(Home::Here)) {
        // Another region's IMVU (or an unknown tag): routed on from here, within the hop limit.
        return match route(inner, &key, &caller, request.op, request.hops).await {
            Ok(bytes) => RemoteReply::Ok(bytes),
            Err(e) => RemoteReply::error(&e),
        };
    }
    let now = inner.clock.now_ms();
    let (serving, intended, holder) = {
        let leases = inner.leases.lock();
        (leases.serving(now, bucket).is_some(), leases.intended_owner(bucket), leases.recorded_holder(bucket))
    };
    let me = inner.config.me.node;
    if !serving && intended != Some(me) {
        let hint = holder.map(|h| h.node).filter(|&n| n != me).or(intended.filter(|&n| n != me));
        return RemoteReply::NotOwner { hint };
    }
    // Served here, or about to be: `route` waits for the claim (bounded).
    match route(inner, &key, &caller, request.op, request.hops).await {
        Ok(bytes) => RemoteReply::Ok(bytes),
        Err(e) => RemoteReply::error(&e),
    }
}

/// The canon key of a lease record.
fn canon_key(key: LeaseKey) -> String {
    match key {
        LeaseKey::Bucket(bucket) => lease_key(bucket),
        LeaseKey::Epoch(bucket) => epoch_key(bucket),
        LeaseKey::Heartbeat(node) => heartbeat_key(node),
    }
}

/// Performs one lease write and reports its outcome on `outcomes`.
fn perform_write(inner: &Inner, target: LeaseTarget, ops: Vec<LeaseOp>, outcomes: mpsc::Sender<(LeaseTarget, LeaseOutcome)>) {
    let writes = ops
        .into_iter()
        .map(|op| match op {
            LeaseOp::Expect(key, value) => CanonWrite::Expect { key: canon_key(key), value },
            LeaseOp::Put(key, value) => CanonWrite::Put { key: canon_key(key), value },
        })
        .collect();
    inner.store.commit(
        writes,
        Box::new(move |result| {
            let outcome = match result {
                Ok(_) => LeaseOutcome::Applied,
                Err(StoreError::Conflict { .. }) => LeaseOutcome::Conflict,
                Err(_) => LeaseOutcome::Failed,
            };
            // The lease task may have stopped; then nobody needs the outcome.
            let _ = outcomes.try_send((target, outcome));
        }),
    );
}

/// The lease task: see the module docs.
async fn lease_task(inner: Arc<Inner>) {
    let (outcomes_tx, mut outcomes) = mpsc::channel::<(LeaseTarget, LeaseOutcome)>(usize::from(BUCKETS) * 2);
    let mut tick = tokio::time::interval(Duration::from_millis(inner.config.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut actions = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = inner.stop.notified() => return,
            Some((target, outcome)) = outcomes.recv() => {
                let now = inner.clock.now_ms();
                inner.leases.lock().on_outcome(now, target, outcome, &mut actions);
            }
            _ = tick.tick() => {
                let now = inner.clock.now_ms();
                let records = read_records(&*inner.store, LEASE_PREFIX);
                let heartbeats = read_records(&*inner.store, HEARTBEAT_PREFIX);
                let alive: BTreeSet<u64> = inner
                    .members
                    .members()
                    .into_iter()
                    .filter(|m| m.region == inner.config.region && matches!(m.state, MemberState::Alive | MemberState::Suspect))
                    .map(|m| m.node_id)
                    .collect();
                let mut leases = inner.leases.lock();
                leases.set_members(now, alive);
                if let (Some(records), Some(heartbeats)) = (records, heartbeats) {
                    for bucket in 0..BUCKETS {
                        leases.observe_bucket(now, bucket, records.get(&u64::from(bucket)).cloned(), &mut actions);
                    }
                    // Every node named by a bucket record or alive, this one included.
                    let mut nodes: BTreeSet<u64> = leases.members().clone();
                    nodes.insert(inner.config.me.node);
                    nodes.extend((0..BUCKETS).filter_map(|b| leases.recorded_holder(b)).map(|h| h.node));
                    for node in nodes {
                        leases.observe_heartbeat(now, node, heartbeats.get(&node).cloned(), &mut actions);
                    }
                }
                leases.poll(now, &mut actions);
            }
        }
        for action in actions.drain(..) {
            match action {
                LeaseAction::Write { target, ops } => perform_write(&inner, target, ops, outcomes_tx.clone()),
                LeaseAction::Gained { bucket, epoch } => {
                    metrics::counter!("vcos_cluster_buckets_gained_total").increment(1);
                    tracing::debug!(bucket, epoch, "serving bucket");
                }
                LeaseAction::Lost { bucket, epoch, reason } => {
                    metrics::counter!("vcos_cluster_buckets_lost_total", "reason" => reason).increment(1);
                    tracing::info!(bucket, epoch, reason, "stopped serving bucket");
                }
            }
        }
        metrics::gauge!("vcos_cluster_buckets_served").set(inner.leases.lock().serving_count(inner.clock.now_ms()) as f64);
    }
}

/// Records under `prefix` by their numeric suffix, as the local replica holds them; `None` when
/// they cannot be read (then nothing is observed this tick: an unread record is never taken for
/// an unchanged one).
fn read_records(store: &dyn CanonStore, prefix: &str) -> Option<BTreeMap<u64, Vec<u8>>> {
    let rows = store.scan_prefix(prefix, None, RECORDS_READ_MAX).ok()?;
    let mut out = BTreeMap::new();
    for (key, value) in rows {
        if let Some(n) = key.strip_prefix(prefix).and_then(|b| b.parse::<u64>().ok()) {
            out.insert(n, value);
        }
    }
    Some(out)
}

/// Most lease or heartbeat records read per tick (256 buckets; nodes well under it).
const RECORDS_READ_MAX: usize = 4_096;

/// The runtime's [`Router`] in a cluster: messages between IMVUs reach their targets on
/// whichever node owns them. Build it before the runtime
/// ([`vcos_actors::RuntimeBuilder::router`]); it routes once [`Cluster::start`] bound it.
///
/// Messages travel batched and in order through per-node queues (see `node/links.rs`).
#[derive(Default)]
pub struct ClusterRouter {
    cluster: std::sync::OnceLock<Weak<Inner>>,
}

/// Messages between IMVUs waiting for their IMVU's owner at once on one node (failover): past
/// it a tell is dropped (counted) and an ask answered `queue_full` at once.
pub const ROUTED_IN_FLIGHT_MAX: usize = 16_384;

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRouter").field("bound", &self.cluster.get().is_some()).finish()
    }
}

impl ClusterRouter {
    /// Routes through `cluster` from now on (the first call wins).
    pub fn bind(&self, cluster: &Cluster) {
        let _ = self.cluster.set(Arc::downgrade(&cluster.inner));
    }

    fn cluster(&self) -> Option<Arc<Inner>> {
        self.cluster.get().and_then(Weak::upgrade)
    }
}

impl Router for ClusterRouter {
    fn route(&self, from: ImvuKey, to: ImvuKey, msg: serde_json::Value, ask: Option<AskToken>) {
        let Some(inner) = self.cluster() else {
            tracing::warn!(%from, %to, "message between IMVUs before the cluster started: dropped");
            return;
        };
        match message_bytes(&msg) {
            Ok(message) => links::send(&inner, &to, message, ask),
            Err(e) => {
                tracing::warn!(%from, %to, error = %e, "message does not serialise");
                if let Some(token) = ask {
                    tokio::spawn(async move { inner.runtime.deliver_reply(token, Err(e)).await });
                }
            }
        }
    }

    fn create_child(&self, parent: ImvuKey, kind: &str, ask: AskToken) {
        let Some(inner) = self.cluster() else {
            tracing::warn!(%parent, "child creation before the cluster started: dropped");
            return;
        };
        let kind = kind.to_owned();
        tokio::spawn(async move {
            let caller = Caller::internal(&parent.tenant, "parent");
            let created = create(&inner, &parent.tenant, &kind, &caller)
                .await
                .and_then(|info| serde_json::to_value(info.key).map_err(|e| ActorError::Store(e.to_string())));
            inner.runtime.deliver_reply(ask, created).await;
        });
    }
}

impl Inner {
    fn this(&self) -> Result<Arc<Inner>, ActorError> {
        self.me.get().and_then(Weak::upgrade).ok_or_else(|| ActorError::Unavailable("node stopping".into()))
    }
}

impl vcos_actors::Placement for Inner {
    fn create<'a>(&'a self, tenant: &'a TenantId, kind: &'a str, caller: &'a Caller) -> vcos_actors::BoxFuture<'a, Result<ImvuInfo, ActorError>> {
        Box::pin(async move { create(&self.this()?, tenant, kind, caller).await })
    }

    fn ask_json<'a>(&'a self, key: &'a ImvuKey, message: serde_json::Value, caller: &'a Caller) -> vcos_actors::BoxFuture<'a, Result<serde_json::Value, ActorError>> {
        Box::pin(async move { ask(&self.this()?, key, &message, caller).await })
    }

    fn transition<'a>(&'a self, key: &'a ImvuKey, transition: vcos_actors::Transition, caller: &'a Caller) -> vcos_actors::BoxFuture<'a, Result<ImvuInfo, ActorError>> {
        Box::pin(async move { transition_on(&self.this()?, key, transition, caller).await })
    }
}

//! The runtime facade: kinds, tenants, the id allocator, the node's supervision tree.
//!
//! ```text
//! root supervisor (ractor driver, one-for-one, node intensity)
//!  └── one ShardActor per (kind, shard)          ← restarted on escalation
//!       └── shard task: tenant supervisors (core) ← restart IMVUs from canon
//!            └── IMVUs (cells)
//! ```
//! Past the root's intensity the node records the escalation and stops cleanly: the runtime's
//! `escalated()` future resolves and the binary exits with a clear log line.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, Notify};
use vcos_supervision::ractor_driver::{ChildDef, SupervisorActor, SupervisorArgs, SupervisorMsg};
use vcos_supervision::{ChildSpec, Clock, Intensity, RestartType, Strategy};

use crate::audit::{AuditLog, AUDIT_FLUSH_MS};
use crate::auth::{KeyRegistry, OsSecrets, SecretSource};
use crate::error::ActorError;
use crate::handshake::{Handshake, NodeHealth};
use crate::host::{ImvuInfo, ShardEnv, ShardLink, ShardSlot};
use crate::ids::SwarmKey;
use crate::ids::{Caller, ImvuId, ImvuKey, TenantId};
use crate::imvu::{AskToken, Imvu};
use crate::kind::{ErasedKind, KindRef};
use crate::lifecycle::Transition;
use crate::records::{self, HistoryEvent, ImvuMeta, Stamped};
use crate::router::{Router, ASK_TIMEOUT_MS_DEFAULT};
use crate::shard_actor::{ShardActor, ShardArgs};
use crate::store::{commit_durable, index_of_appended_key, CanonStore, CanonWrite, StoreError};
use crate::swarm::{self, CreditRecord, SwarmCmd, SwarmInfo, SwarmSpec, VoteRecord};
use crate::tenants::{TenantEntry, TenantPolicy, Tenants};

mod erasing;
mod placed;
pub use placed::Placement;

/// Ids reserved per durable write of the allocator's high-water mark.
pub(crate) const ID_BLOCK_LEN: u64 = 4096;
/// Longest history returned in one read.
pub(crate) const HISTORY_LEN_MAX: usize = 10_000;
const NEXT_ID_KEY: &str = "node/next_id";
/// Attempts to reserve an id block before giving up (each lost attempt means another node
/// reserved a block meanwhile, so the region as a whole made progress).
const ID_RESERVE_ATTEMPTS_MAX: usize = 64;
/// Where the node records escalations that reached its root supervisor.
pub const ESCALATIONS_PREFIX: &str = "node/escalations/";
/// Tenants one node holds, at most.
pub(crate) const TENANTS_MAX: usize = 10_000;

/// How the runtime is put together.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where canon lives.
    pub store: Arc<dyn CanonStore>,
    /// Time source (injected: the simulator passes a simulated one).
    pub clock: Arc<dyn Clock>,
    /// Shards (tasks) per kind; defaults to the number of cores.
    pub shards_per_kind: usize,
    /// Bound of each shard's channel: the mailbox bound.
    pub shard_queue_len: usize,
    /// Resident IMVUs allowed on the node (stage 55).
    pub resident_imvus_max: u64,
    /// Intensity of each shard's supervisor over its tenant supervisors.
    pub shard_intensity: Intensity,
    /// Intensity of the node's root supervisor over the shards.
    pub root_intensity: Intensity,
    /// The admission checks.
    pub handshake: Handshake,
    /// Whether this node may serve an IMVU now, and the fence its writes carry (a single node
    /// owns everything; in a cluster, placement decides).
    pub ownership: Arc<dyn crate::ownership::Ownership>,
    /// The tag of the node's region, carried in the high bits of every id it allocates (see
    /// [`ImvuId::tagged`]) so that any node can tell an IMVU's home region from its id; 0
    /// outside a cluster of regions.
    pub region_tag: u16,
    /// Random bytes for API keys (injected: the OS in production, a seeded source in the
    /// simulator).
    pub secrets: Arc<dyn SecretSource>,
}

impl RuntimeConfig {
    /// Defaults around a store and a clock.
    pub fn new(store: Arc<dyn CanonStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            shards_per_kind: std::thread::available_parallelism().map_or(2, usize::from),
            shard_queue_len: 4096,
            resident_imvus_max: 20_000_000,
            shard_intensity: Intensity {
                max_restarts: 10,
                period_ms: 10_000,
            },
            root_intensity: Intensity {
                max_restarts: 3,
                period_ms: 60_000,
            },
            handshake: Handshake::standard(),
            ownership: Arc::new(crate::ownership::SoleOwner),
            region_tag: 0,
            secrets: Arc::new(OsSecrets),
        }
    }
}

type KindInstaller = Box<
    dyn FnOnce(
            &Installer,
        ) -> (
            Arc<dyn ErasedKind>,
            Arc<dyn Any + Send + Sync>,
            Vec<ChildDef>,
        ) + Send,
>;

struct Installer {
    config: RuntimeConfig,
    tenants: Arc<Tenants>,
    node: Arc<NodeHealth>,
    router: Arc<OnceLock<Arc<dyn Router>>>,
    models: crate::host::driver::ModelsSlot,
    activities: crate::host::driver::ActivitiesSlot,
    notices: Arc<crate::notices::Notices>,
}

/// Collects kinds, then starts the runtime.
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    kinds: Vec<(&'static str, KindInstaller)>,
    router: Option<Arc<dyn Router>>,
    activities: crate::activities::ActivityRegistry,
}

impl RuntimeBuilder {
    /// Routes messages between IMVUs through `router` instead of this runtime alone (the
    /// cluster's remote delivery).
    pub fn router(mut self, router: Arc<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Registers activity `name` (see [`crate::activities`]); replaces a built-in of that name.
    pub fn activity<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(crate::activities::ActivityCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<serde_json::Value, ActorError>> + Send + 'static,
    {
        self.activities.register(name, f);
        self
    }

    /// Registers kind `I` with its behaviour value.
    pub fn kind<I: Imvu>(mut self, behaviour: I) -> Self {
        let installer: KindInstaller = Box::new(move |inst: &Installer| {
            let env = Arc::new(ShardEnv {
                behaviour: Arc::new(behaviour),
                store: inst.config.store.clone(),
                tenants: inst.tenants.clone(),
                handshake: inst.config.handshake.clone(),
                node: inst.node.clone(),
                clock: inst.config.clock.clone(),
                shard_intensity: inst.config.shard_intensity,
                ownership: inst.config.ownership.clone(),
                router: inst.router.clone(),
                models: inst.models.clone(),
                activities: inst.activities.clone(),
                notices: inst.notices.clone(),
            });
            let description = env.behaviour.description();
            let mut senders = Vec::new();
            let mut children = Vec::new();
            for shard in 0..inst.config.shards_per_kind.max(1) {
                let (tx, rx) = mpsc::channel(inst.config.shard_queue_len.max(1));
                let slot = Arc::new(ShardSlot::default());
                let args = ShardArgs {
                    env: env.clone(),
                    rx: Arc::new(tokio::sync::Mutex::new(rx)),
                    slot: slot.clone(),
                };
                senders.push(Arc::new(ShardLink::new(tx, slot)));
                children.push(ChildDef {
                    spec: ChildSpec {
                        id: format!("{}#{shard}", I::KIND),
                        restart: RestartType::Permanent,
                        shutdown_timeout_ms: 5_000,
                    },
                    start: Arc::new(move |supervisor: ractor::ActorCell| {
                        let args = args.clone();
                        Box::pin(async move {
                            let (actor, _) =
                                Actor::spawn_linked(None, ShardActor::<I>::new(), args, supervisor)
                                    .await?;
                            Ok(actor.get_cell())
                        })
                    }),
                });
            }
            let kind = KindRef::<I>::new(senders.into(), description);
            (
                Arc::new(kind.clone()) as Arc<dyn ErasedKind>,
                Arc::new(kind) as Arc<dyn Any + Send + Sync>,
                children,
            )
        });
        self.kinds.push((I::KIND, installer));
        self
    }

    /// Loads tenants and the id allocator from canon, starts the supervision tree.
    pub async fn start(mut self) -> Result<Runtime, ActorError> {
        vcos_supervision::quiet_panic::install();
        // Workflows are part of the runtime: the kind is there even when no Rust workflow was
        // registered with it (declarative definitions need none).
        if !self.kinds.iter().any(|(name, _)| *name == crate::workflow::KIND) {
            self = self.kind(crate::workflow::Workflows::new());
        }
        let RuntimeBuilder { config, kinds, router, activities } = self;
        let activities = Arc::new(activities);
        let activities_slot: crate::host::driver::ActivitiesSlot = Arc::default();
        let notices = Arc::new(crate::notices::Notices::default());
        let tenants = Arc::new(Tenants::default());
        let node = NodeHealth::new(config.resident_imvus_max);
        let router_slot: Arc<OnceLock<Arc<dyn Router>>> = Arc::default();
        // Answers `unavailable` until the runtime exists (then until `set_models`).
        let models_slot: crate::host::driver::ModelsSlot = Arc::new(std::sync::RwLock::new(Arc::new(NoModels { inner: std::sync::Weak::new() })));
        let installer = Installer {
            config: config.clone(),
            tenants: tenants.clone(),
            node: node.clone(),
            router: router_slot.clone(),
            models: models_slot.clone(),
            activities: activities_slot.clone(),
            notices: notices.clone(),
        };
        let mut by_name = BTreeMap::new();
        let mut typed = BTreeMap::new();
        let mut children = Vec::new();
        for (name, install) in kinds {
            if by_name.contains_key(name) {
                return Err(ActorError::BadRequest {
                    field: "kind".into(),
                    reason: format!("kind {name:?} registered twice"),
                });
            }
            let (erased, any, defs) = install(&installer);
            by_name.insert(name.to_owned(), erased);
            typed.insert(name.to_owned(), any);
            children.extend(defs);
        }
        let escalated = Arc::new(Notify::new());
        let escalation: Arc<Mutex<Option<String>>> = Arc::default();
        let on_escalate = {
            let escalated = escalated.clone();
            let escalation = escalation.clone();
            let node = node.clone();
            // Weak: the root supervisor may outlive the runtime briefly; it must not keep the
            // store (and its file lock) alive.
            let store = Arc::downgrade(&config.store);
            let clock = config.clock.clone();
            Arc::new(move |reason: String| {
                tracing::error!(%reason, "root supervisor escalated: restart intensity exceeded at the top of the tree; stopping the node");
                // Recorded in canon; the store drains its queue before it closes, and nobody
                // waits on this completion.
                let record = serde_json::json!({ "reason": reason, "unix_ms": clock.unix_ms() });
                if let Some(store) = store.upgrade() {
                    store.commit(
                        vec![CanonWrite::Append {
                            prefix: ESCALATIONS_PREFIX.into(),
                            value: records::encode(&record),
                        }],
                        Box::new(|_| {}),
                    );
                }
                node.shutting_down.store(true, Ordering::SeqCst);
                *escalation.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                escalated.notify_waiters();
                escalated.notify_one();
            }) as Arc<dyn Fn(String) + Send + Sync>
        };
        let (root, _) = Actor::spawn(
            None,
            SupervisorActor,
            SupervisorArgs {
                name: "root".into(),
                strategy: Strategy::OneForOne,
                intensity: config.root_intensity,
                children,
                clock: config.clock.clone(),
                on_escalate: Some(on_escalate),
            },
        )
        .await
        .map_err(|e| ActorError::Unavailable(format!("root supervisor did not start: {e}")))?;
        let runtime = Runtime {
            inner: Arc::new(Inner {
                keys: KeyRegistry::new(config.store.clone(), config.clock.clone(), config.secrets.clone()),
                audit: Arc::new(AuditLog::new(config.store.clone(), config.clock.clone()).guarded_by(tenants.clone())),
                meter: crate::metering::Meter::default(),
                meter_writer: {
                    let mut bytes = [0u8; 8];
                    config.secrets.fill(&mut bytes);
                    bytes.iter().map(|b| format!("{b:02x}")).collect()
                },
                config,
                tenants,
                node,
                kind_list: by_name.values().cloned().collect(),
                kinds: by_name,
                typed,
                directory: Default::default(),
                id_block: Mutex::new(IdBlock::default()),
                reserve_lock: tokio::sync::Mutex::new(()),
                root,
                escalated,
                escalation,
                swarms: swarm::Registry::default(),
                placement: std::sync::OnceLock::new(),
                erasing: erasing::Erasing::default(),
                models: models_slot.clone(),
                activities: activities.clone(),
                notices,
            }),
        };
        if activities_slot.set((activities, runtime.downgrade())).is_err() {
            unreachable!("the activities slot is set once, here");
        }
        *models_slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(NoModels { inner: Arc::downgrade(&runtime.inner) });
        let router = router.unwrap_or_else(|| Arc::new(LocalRouter { inner: Arc::downgrade(&runtime.inner) }));
        if router_slot.set(router).is_err() {
            unreachable!("the router slot is set once, here");
        }
        runtime.load_tenants().await?;
        spawn_audit_flusher(Arc::downgrade(&runtime.inner.audit));
        spawn_usage_writer(Arc::downgrade(&runtime.inner));
        erasing::spawn_fence_sweeper(Arc::downgrade(&runtime.inner));
        spawn_storage_meter(Arc::downgrade(&runtime.inner));
        crate::workflow::keeper::spawn(&runtime);
        let swarms = swarm::recover(&runtime).await?;
        if swarms > 0 {
            tracing::info!(swarms, "swarms recovered from canon");
        }
        Ok(runtime)
    }
}

/// Writes the audit log's waiting records every [`AUDIT_FLUSH_MS`] while the runtime lives.
fn spawn_audit_flusher(audit: std::sync::Weak<AuditLog>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(AUDIT_FLUSH_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(audit) = audit.upgrade() else { return };
            if let Err(e) = audit.flush().await {
                tracing::debug!(error = %e, "audit records wait for the next flush");
            }
        }
    });
}

/// Writes the tenants' usage every [`crate::metering::USAGE_INTERVAL_MS`] while the runtime
/// lives.
fn spawn_usage_writer(inner: std::sync::Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(crate::metering::USAGE_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = write_usage(&inner).await {
                tracing::debug!(error = %e, "usage records wait for the next interval");
            }
        }
    });
}

/// Writes the usage counted so far, then refreshes the tenants' messages of the day from every
/// node's records (the daily quotas, [`crate::quota`]).
async fn write_usage(inner: &Inner) -> Result<(), ActorError> {
    let tenants = inner.tenants.list();
    let store = inner.config.store.as_ref();
    inner.meter.write(store, &tenants, inner.config.clock.unix_ms(), &inner.meter_writer).await?;
    crate::quota::refresh_messages(store, &inner.audit, &tenants, inner.config.clock.unix_ms()).await
}

/// Measures the canon bytes each tenant stores while the runtime lives: the first time at
/// once, then after [`crate::quota::next_storage_measure_ms`]: a few seconds where the store
/// counts, else in proportion to what reading the records took (on the runtime's clock).
fn spawn_storage_meter(inner: std::sync::Weak<Inner>) {
    tokio::spawn(async move {
        let mut pause_ms = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            let Some(inner) = inner.upgrade() else { return };
            let tenants = inner.tenants.list();
            let (store, audit, clock) = (inner.config.store.clone(), inner.audit.clone(), inner.config.clock.clone());
            drop(inner);
            let started_ms = clock.unix_ms();
            let kind = match crate::quota::measure_storage(store.as_ref(), &audit, &tenants, started_ms).await {
                Ok(kind) => kind,
                Err(e) => {
                    tracing::debug!(error = %e, "tenant storage is measured again at the next period");
                    crate::quota::StorageMeasure::Scanned
                }
            };
            let took_ms = clock.unix_ms().saturating_sub(started_ms);
            metrics::histogram!("vcos_tenant_storage_measure_seconds").record(took_ms as f64 / 1e3);
            pause_ms = crate::quota::next_storage_measure_ms(kind, took_ms);
        }
    });
}

const DIRECTORY_SHARDS: usize = 16;
/// Passivation rounds at shutdown, at most (each writes what the previous one could not).
const SHUTDOWN_PASSIVATION_ROUNDS_MAX: usize = 8;

/// The most ids one shard of the directory caches. The directory is a cache of the meta
/// records: without a bound it held an entry for every IMVU this process ever created or
/// routed, passivated ones included (about 28 bytes each with hashbrown's spare capacity: over
/// half of the 48 bytes per passivated IMVU measured at 10 M). A shard that is full is emptied (cheaper than tracking recency on
/// every message; a miss costs one read of the meta record from the local canon replica), so
/// the directory stays under 16 × 65,536 entries, about 30 MB, whatever the number of IMVUs.
const DIRECTORY_SHARD_ENTRIES_MAX: usize = 65_536;

/// Caches `id → index` in a directory shard holding at most `max` entries.
fn insert_bounded(shard: &mut HashMap<u64, u16, ahash::RandomState>, id: u64, index: u16, max: usize) {
    if shard.len() >= max && !shard.contains_key(&id) {
        // Dropped whole, its memory with it: a cleared map would keep its capacity.
        *shard = HashMap::default();
    }
    shard.insert(id, index);
}

/// Credit records read per page by [`Runtime::swarm_credits`].
pub(crate) const CREDITS_PAGE_LEN: usize = 1_024;

/// The [`crate::models::Models`] of a node that serves none: every request is answered
/// `unavailable`.
struct NoModels {
    inner: std::sync::Weak<Inner>,
}

impl crate::models::Models for NoModels {
    fn call(&self, _request: crate::models::ModelRequest, ask: AskToken) {
        let Some(inner) = self.inner.upgrade() else { return };
        let runtime = Runtime { inner };
        tokio::spawn(async move { runtime.deliver_reply(ask, Err(crate::models::no_models())).await });
    }
}

/// The default [`Router`]: every IMVU lives in this runtime. Each request runs as its own
/// task, so the shard that sent it never waits; an ask waits at most
/// [`ASK_TIMEOUT_MS_DEFAULT`] (tokio time: simulated under the simulator).
struct LocalRouter {
    /// Weak: the runtime owns its shards, which own this router.
    inner: std::sync::Weak<Inner>,
}

impl Router for LocalRouter {
    fn route(&self, from: ImvuKey, to: ImvuKey, msg: serde_json::Value, ask: Option<AskToken>) {
        let Some(inner) = self.inner.upgrade() else { return };
        let runtime = Runtime { inner };
        tokio::spawn(async move {
            match ask {
                None => {
                    let sent = match runtime.route(&to) {
                        Ok(kind) => kind.tell_json(to, msg).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        tracing::debug!(%from, %to, error = %e, "tell between IMVUs not delivered");
                    }
                }
                Some(token) => {
                    let timeout = std::time::Duration::from_millis(ASK_TIMEOUT_MS_DEFAULT);
                    let answer = tokio::time::timeout(timeout, runtime.ask_json(&to, msg))
                        .await
                        .unwrap_or_else(|_| Err(ActorError::Unavailable(format!("{to} did not answer within {ASK_TIMEOUT_MS_DEFAULT} ms"))));
                    runtime.deliver_reply(token, answer).await;
                }
            }
        });
    }

    fn create_child(&self, parent: ImvuKey, kind: &str, ask: AskToken) {
        let Some(inner) = self.inner.upgrade() else { return };
        let runtime = Runtime { inner };
        let kind = kind.to_owned();
        tokio::spawn(async move {
            let caller = Caller::internal(&parent.tenant, "parent");
            let created = runtime
                .create_imvu(&parent.tenant, &kind, &caller)
                .await
                .and_then(|info| serde_json::to_value(info.key).map_err(|e| ActorError::Store(e.to_string())));
            runtime.deliver_reply(ask, created).await;
        });
    }
}

/// Ids `next..until` are reserved in canon for this process and not yet handed out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct IdBlock {
    next: u64,
    until: u64,
}

impl IdBlock {
    /// The next id of the block, if any is left.
    fn take(&mut self) -> Option<u64> {
        (self.next < self.until).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

struct Inner {
    config: RuntimeConfig,
    tenants: Arc<Tenants>,
    node: Arc<NodeHealth>,
    kinds: BTreeMap<String, Arc<dyn ErasedKind>>,
    /// Kinds by registration index: the directory stores the index (2 bytes), not an `Arc`.
    kind_list: Vec<Arc<dyn ErasedKind>>,
    typed: BTreeMap<String, Arc<dyn Any + Send + Sync>>,
    /// id → kind index, a cache of what the meta records say (so routing needs no canon read).
    directory: [RwLock<HashMap<u64, u16, ahash::RandomState>>; DIRECTORY_SHARDS],
    /// The reserved block of ids this process hands out from.
    id_block: Mutex<IdBlock>,
    /// Held while a new block is reserved in canon.
    reserve_lock: tokio::sync::Mutex<()>,
    root: ActorRef<SupervisorMsg>,
    escalated: Arc<Notify>,
    escalation: Arc<Mutex<Option<String>>>,
    swarms: swarm::Registry,
    /// Where IMVUs live when this node is part of a cluster (unset: all are local).
    placement: std::sync::OnceLock<std::sync::Weak<dyn placed::Placement>>,
    /// API keys, over canon.
    keys: KeyRegistry,
    /// The audit log, over canon.
    audit: Arc<AuditLog>,
    /// Usage counted and not yet written.
    meter: crate::metering::Meter,
    /// Names this process's usage records.
    meter_writer: String,
    /// Tenant erasures this node runs.
    erasing: erasing::Erasing,
    /// Where IMVUs' model requests go (see [`Runtime::set_models`]).
    models: crate::host::driver::ModelsSlot,
    /// The activities this runtime runs.
    activities: Arc<crate::activities::ActivityRegistry>,
    /// In-process watchers of IMVUs.
    notices: Arc<crate::notices::Notices>,
}

/// Kinds the node serves, for listings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KindInfo {
    /// Name.
    pub name: String,
    /// What it is.
    pub description: String,
}

/// A running node's actor layer. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// A [`Runtime`] that may have stopped: [`WeakRuntime::upgrade`] says.
#[derive(Clone)]
pub struct WeakRuntime(std::sync::Weak<Inner>);

impl WeakRuntime {
    /// The runtime, if it still runs.
    pub fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime { inner })
    }
}

impl Runtime {
    /// Starts describing a runtime.
    pub fn builder(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            kinds: Vec::new(),
            router: None,
            activities: crate::activities::ActivityRegistry::default(),
        }
    }

    /// The canon store.
    pub fn store(&self) -> &Arc<dyn CanonStore> {
        &self.inner.config.store
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.config.clock
    }

    /// Node health (stage 55 inputs).
    pub fn node(&self) -> &Arc<NodeHealth> {
        &self.inner.node
    }

    /// The typed handle of kind `I`, if registered.
    pub fn kind_ref<I: Imvu>(&self) -> Option<KindRef<I>> {
        self.inner
            .typed
            .get(I::KIND)?
            .downcast_ref::<KindRef<I>>()
            .cloned()
    }

    /// The registered kinds.
    pub fn kinds(&self) -> Vec<KindInfo> {
        self.inner
            .kinds
            .values()
            .map(|k| KindInfo {
                name: k.name().to_owned(),
                description: k.description().to_owned(),
            })
            .collect()
    }

    fn kind(&self, name: &str) -> Result<Arc<dyn ErasedKind>, ActorError> {
        self.inner
            .kinds
            .get(name)
            .cloned()
            .ok_or_else(|| ActorError::UnknownKind(name.to_owned()))
    }

    // ---- tenants -------------------------------------------------------------------------

    async fn load_tenants(&self) -> Result<(), ActorError> {
        let store = self.store().clone();
        let mut after: Option<String> = None;
        loop {
            let page = store.scan_prefix("tenant/", after.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, bytes) in page {
                let policy: TenantPolicy = records::decode(&key, &bytes)?;
                let Some(name) = key.strip_prefix("tenant/") else {
                    continue;
                };
                let id = TenantId::new(name)
                    .map_err(|_| ActorError::Store(format!("bad tenant key {key}")))?;
                let live = self.count_live(&id)?;
                // Not drawn here (the canon may not take writes yet at start): a tenant
                // without one gets it from the first fence sweep.
                let fence = self.tenant_fence(&id, false).await?;
                self.inner.tenants.upsert(id, policy, live, fence);
            }
        }
        Ok(())
    }

    fn count_live(&self, tenant: &TenantId) -> Result<u64, ActorError> {
        let prefix = records::tenant_imvus_prefix(tenant);
        let mut after: Option<String> = None;
        let mut live = 0;
        loop {
            let page = self.store().scan_prefix(&prefix, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, bytes) in page {
                if key.ends_with("/meta") {
                    let meta: ImvuMeta = records::decode(&key, &bytes)?;
                    if meta.lifecycle != crate::lifecycle::LifecycleState::Terminated {
                        live += 1;
                    }
                }
            }
        }
        Ok(live)
    }

    /// Creates (or replaces the policy of) a tenant; durable before it returns.
    pub async fn put_tenant(
        &self,
        id: TenantId,
        policy: TenantPolicy,
    ) -> Result<Arc<TenantEntry>, ActorError> {
        policy.validate()?;
        if self.inner.tenants.get(&id).is_err() && self.inner.tenants.list().len() >= TENANTS_MAX {
            return Err(ActorError::QueueFull(format!(
                "the node holds {TENANTS_MAX} tenants, its limit"
            )));
        }
        // The fence first (drawn if the tenant is new), then the policy under it: a policy
        // written for a tenant being erased meanwhile is refused rather than left behind.
        let fence = self.tenant_fence(&id, true).await?;
        let guard = CanonWrite::Expect { key: records::tenant_fence_key(&id), value: fence.as_deref().map(<[u8]>::to_vec) };
        let put = CanonWrite::Put { key: records::tenant_key(&id), value: records::encode(&policy) };
        commit_durable(&**self.store(), vec![guard, put]).await.map_err(|e| match e {
            StoreError::Conflict { .. } => ActorError::Conflict(format!("tenant {id} was erased or created elsewhere meanwhile; try again")),
            other => other.into(),
        })?;
        let live = self
            .inner
            .tenants
            .get(&id)
            .map(|t| t.live_imvus.load(Ordering::Relaxed))
            .unwrap_or(0);
        Ok(self.inner.tenants.upsert(id, policy, live, fence))
    }

    /// Makes sure the tenant exists, creating it with `policy` if not.
    pub async fn ensure_tenant(
        &self,
        id: TenantId,
        policy: TenantPolicy,
    ) -> Result<Arc<TenantEntry>, ActorError> {
        match self.inner.tenants.get(&id) {
            Ok(entry) => Ok(entry),
            Err(_) => self.put_tenant(id, policy).await,
        }
    }

    /// A tenant.
    pub fn tenant(&self, id: &TenantId) -> Result<Arc<TenantEntry>, ActorError> {
        self.inner.tenants.get(id)
    }

    /// All tenants.
    pub fn tenants(&self) -> Vec<Arc<TenantEntry>> {
        self.inner.tenants.list()
    }

    /// Adds `n` of `unit` to `tenant`'s usage (the hook of workers that meter their own work:
    /// tokens, desktop seconds, workflow steps). Unknown tenants are ignored.
    pub fn meter(&self, tenant: &TenantId, unit: crate::metering::UsageUnit, n: u64) {
        if let Ok(entry) = self.inner.tenants.get(tenant) {
            entry.usage.add(unit, n);
        }
    }

    /// Writes the usage counted so far (it is written every interval anyway).
    pub async fn write_usage(&self) -> Result<(), ActorError> {
        write_usage(&self.inner).await
    }

    /// Measures the canon bytes every tenant stores now (it is measured periodically anyway,
    /// see [`crate::quota`]); says whether the store's counts were read or every record.
    pub async fn measure_storage(&self) -> Result<crate::quota::StorageMeasure, ActorError> {
        let tenants = self.inner.tenants.list();
        crate::quota::measure_storage(self.store().as_ref(), &self.inner.audit, &tenants, self.clock().unix_ms()).await
    }

    /// `tenant`'s usage in `[from_ms, to_ms)` (unix ms), from the usage records.
    pub fn usage(&self, tenant: &TenantId, from_ms: u64, to_ms: u64) -> Result<crate::metering::Usage, ActorError> {
        crate::metering::usage(self.inner.config.store.as_ref(), tenant, from_ms, to_ms)
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.inner.audit
    }

    /// The injected source of random bytes.
    pub fn secrets(&self) -> &Arc<dyn SecretSource> {
        &self.inner.config.secrets
    }

    /// The API keys: issue, list, rotate, revoke, authenticate.
    pub fn keys(&self) -> &KeyRegistry {
        &self.inner.keys
    }

    // ---- ids -----------------------------------------------------------------------------

    /// A fresh id, unique across every node that shares this canon region. Ids are reserved
    /// in blocks: the block's end is written to canon's high-water mark (`node/next_id`) with
    /// a guard on the mark as read, so two nodes never reserve the same block (the loser of a
    /// race reads again and retries), and the reservation is durable before any id of it is
    /// handed out, so no id is handed out twice, even across crashes. In-process, one lock
    /// holds the block's cursor and end together: two callers never get the same id.
    /// The region's tag sits in the id's high bits (see [`ImvuId::tagged`]).
    pub async fn allocate_id(&self) -> Result<u64, ActorError> {
        loop {
            if let Some(sequence) = self.inner.id_block.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return self.tagged(sequence);
            }
            // One reservation at a time; whoever waited here finds the new block above.
            let _guard = self.inner.reserve_lock.lock().await;
            if let Some(sequence) = self.inner.id_block.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return self.tagged(sequence);
            }
            let block = self.reserve_id_block().await?;
            *self.inner.id_block.lock().unwrap_or_else(|p| p.into_inner()) = block;
        }
    }

    fn tagged(&self, sequence: u64) -> Result<u64, ActorError> {
        ImvuId::tagged(self.inner.config.region_tag, sequence)
            .map(|id| id.0)
            .ok_or_else(|| ActorError::Unavailable("the id space is exhausted".into()))
    }

    /// Advances canon's high-water mark by one block, guarded by the value read.
    async fn reserve_id_block(&self) -> Result<IdBlock, ActorError> {
        for _ in 0..ID_RESERVE_ATTEMPTS_MAX {
            let current = self.store().get(NEXT_ID_KEY)?;
            let start = match &current {
                Some(bytes) => records::decode::<u64>(NEXT_ID_KEY, bytes)?,
                None => 1,
            };
            let until = start.checked_add(ID_BLOCK_LEN).filter(|&until| until <= 1 << ImvuId::SEQUENCE_BITS).ok_or_else(|| {
                ActorError::Unavailable("the id space is exhausted".into())
            })?;
            let writes = vec![
                CanonWrite::Expect {
                    key: NEXT_ID_KEY.into(),
                    value: current,
                },
                CanonWrite::Put {
                    key: NEXT_ID_KEY.into(),
                    value: records::encode(&until),
                },
            ];
            match commit_durable(&**self.store(), writes).await {
                Ok(_) => return Ok(IdBlock { next: start, until }),
                Err(StoreError::Conflict { .. }) => {
                    // Another node (sharing this canon region) reserved a block first.
                    metrics::counter!("vcos_id_reserve_conflicts_total").increment(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ActorError::Unavailable(format!(
            "id reservation lost {ID_RESERVE_ATTEMPTS_MAX} races in a row; retry"
        )))
    }

    // ---- IMVUs ---------------------------------------------------------------------------

    /// Serves IMVUs' model requests (`Context::embed`, `Context::generate`) with `models`
    /// from now on (before: answered `unavailable`).
    pub fn set_models(&self, models: Arc<dyn crate::models::Models>) {
        *self.inner.models.write().unwrap_or_else(std::sync::PoisonError::into_inner) = models;
    }

    /// A handle that does not keep the runtime alive (for services the runtime itself holds,
    /// such as its [`crate::models::Models`]).
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// Whether this node may serve `key` now (it owns its bucket's lease; always, alone).
    pub fn owns(&self, key: &ImvuKey) -> bool {
        self.inner.config.ownership.fence(key, self.inner.config.clock.now_ms()).is_ok()
    }

    /// The activities this runtime runs (built-ins and those registered).
    pub fn activities(&self) -> &crate::activities::ActivityRegistry {
        &self.inner.activities
    }

    /// Resolves at the next notice of IMVU `key` on this node ([`crate::Context::notify_watchers`],
    /// raised once the notifying message is durable): a hint to look again, see
    /// [`crate::notices`].
    pub fn watch(&self, key: ImvuKey) -> tokio::sync::oneshot::Receiver<()> {
        self.inner.notices.watch(key)
    }

    /// The IMVUs in the tenant's index `name` ([`crate::Context::index`]), in id order, up to
    /// `limit`, after id `after`.
    pub fn index(&self, tenant: &TenantId, name: &str, after: Option<u64>, limit: usize) -> Result<Vec<ImvuKey>, ActorError> {
        let prefix = records::index_prefix(tenant, name);
        let after_key = after.map(|id| format!("{prefix}{id:020}"));
        let rows = self.store().scan_prefix(&prefix, after_key.as_deref(), limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, _)| key.get(prefix.len()..).and_then(|id| id.parse::<u64>().ok()))
            .map(|id| ImvuKey { tenant: *tenant, id: crate::ids::ImvuId(id) })
            .collect())
    }

    /// Hands the answer to one of an IMVU's asks back to it (its `on_reply`, in mailbox
    /// order). Routers call it when an answer arrives; an IMVU that is gone drops it.
    pub async fn deliver_reply(&self, token: AskToken, reply: Result<serde_json::Value, ActorError>) {
        let delivered = match self.route(&token.from) {
            Ok(kind) => kind.reply(token.from, token.correlation, reply).await,
            Err(e) => Err(e),
        };
        if let Err(e) = delivered {
            tracing::debug!(key = %token.from, correlation = token.correlation, error = %e, "answer not delivered");
        }
    }

    fn directory_shard(&self, id: u64) -> &RwLock<HashMap<u64, u16, ahash::RandomState>> {
        &self.inner.directory[(id % DIRECTORY_SHARDS as u64) as usize]
    }

    fn remember_kind(&self, id: u64, kind: &Arc<dyn ErasedKind>) {
        let index = self
            .inner
            .kind_list
            .iter()
            .position(|k| Arc::ptr_eq(k, kind));
        if let Some(index) = index.and_then(|i| u16::try_from(i).ok()) {
            let mut shard = self.directory_shard(id).write().unwrap_or_else(|p| p.into_inner());
            insert_bounded(&mut shard, id, index, DIRECTORY_SHARD_ENTRIES_MAX);
        }
    }

    /// Which kind serves `key`: the directory cache, else the meta record in canon.
    fn route(&self, key: &ImvuKey) -> Result<Arc<dyn ErasedKind>, ActorError> {
        let cached = self
            .directory_shard(key.id.0)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key.id.0)
            .copied();
        if let Some(kind) = cached.and_then(|i| self.inner.kind_list.get(usize::from(i))) {
            return Ok(kind.clone());
        }
        let meta_key = records::meta_key(key);
        let meta: ImvuMeta = match self.store().get(&meta_key)? {
            Some(bytes) => records::decode(&meta_key, &bytes)?,
            None => return Err(ActorError::not_found("imvu", key)),
        };
        let kind = self.kind(&meta.kind)?;
        self.remember_kind(key.id.0, &kind);
        Ok(kind)
    }

    /// Creates an IMVU of `kind` for `tenant`.
    pub async fn create_imvu(
        &self,
        tenant: &TenantId,
        kind: &str,
        caller: &Caller,
    ) -> Result<ImvuInfo, ActorError> {
        let kind = self.kind(kind)?;
        crate::quota::admit_growth(&*self.inner.tenants.get(tenant)?)?;
        let key = ImvuKey {
            tenant: tenant.clone(),
            id: ImvuId(self.allocate_id().await?),
        };
        self.remember_kind(key.id.0, &kind);
        let result = kind.create(key.clone(), caller.clone()).await;
        if result.is_err() {
            self.directory_shard(key.id.0)
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key.id.0);
        }
        result
    }

    /// Sends a JSON message and waits for the JSON reply.
    pub async fn ask_json(
        &self,
        key: &ImvuKey,
        msg: serde_json::Value,
    ) -> Result<serde_json::Value, ActorError> {
        self.route(key)?.ask_json(key.clone(), msg).await
    }

    /// Runs a lifecycle transition.
    pub async fn transition(
        &self,
        key: &ImvuKey,
        transition: Transition,
        caller: &Caller,
    ) -> Result<ImvuInfo, ActorError> {
        if matches!(transition, Transition::Create | Transition::Activate) {
            return Err(ActorError::BadRequest {
                field: "transition".into(),
                reason: format!(
                    "`{transition}` happens at creation; use pause, resume or terminate"
                ),
            });
        }
        self.route(key)?
            .lifecycle(key.clone(), transition, caller.clone())
            .await
    }

    /// State and lifecycle of an IMVU (activating it if passivated).
    pub async fn inspect(&self, key: &ImvuKey) -> Result<ImvuInfo, ActorError> {
        let kind = self.route(key)?;
        match kind.inspect(key.clone()).await {
            // A terminated IMVU is not resident: answer from canon.
            Err(ActorError::Terminated(_)) => self.inspect_terminated(key),
            other => other,
        }
    }

    fn inspect_terminated(&self, key: &ImvuKey) -> Result<ImvuInfo, ActorError> {
        let meta_key = records::meta_key(key);
        let meta: ImvuMeta = match self.store().get(&meta_key)? {
            Some(bytes) => records::decode(&meta_key, &bytes)?,
            None => return Err(ActorError::not_found("imvu", key)),
        };
        let snap_key = records::snap_key(key);
        let state = match self.store().get(&snap_key)? {
            Some(bytes) => records::decode(&snap_key, &bytes)?,
            None => serde_json::Value::Null,
        };
        Ok(ImvuInfo {
            key: key.clone(),
            kind: meta.kind,
            lifecycle: meta.lifecycle,
            state,
            held_messages: 0,
        })
    }

    /// The IMVU's recorded history, in canon order.
    pub fn history(&self, key: &ImvuKey) -> Result<Vec<Stamped<HistoryEvent>>, ActorError> {
        if self.store().get(&records::meta_key(key))?.is_none() {
            return Err(ActorError::not_found("imvu", key));
        }
        let page =
            self.store()
                .scan_prefix(&records::history_prefix(key), None, HISTORY_LEN_MAX)?;
        page.into_iter()
            .map(|(k, bytes)| {
                let record = records::decode(&k, &bytes)?;
                let canon_index = index_of_appended_key(&k).unwrap_or(0);
                Ok(Stamped {
                    canon_index,
                    record,
                })
            })
            .collect()
    }

    /// Passivates IMVUs idle for `idle_ms` in every kind; returns how many.
    pub async fn passivate_idle(&self, idle_ms: u64) -> usize {
        let mut total = 0;
        for kind in self.inner.kinds.values() {
            total += kind.passivate(idle_ms).await;
        }
        total
    }

    /// Drops the in-memory copy of an IMVU so its next message reloads it from canon.
    pub async fn evict(&self, key: &ImvuKey) -> Result<(), ActorError> {
        self.route(key)?.evict(key.clone()).await;
        Ok(())
    }

    /// Resolves when the root supervisor has given up; returns its reason.
    pub async fn escalated(&self) -> String {
        loop {
            let notified = self.inner.escalated.notified();
            if let Some(reason) = self.escalation() {
                return reason;
            }
            notified.await;
        }
    }

    /// The root's escalation reason, if it has escalated.
    pub fn escalation(&self) -> Option<String> {
        self.inner
            .escalation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    // ---- swarms --------------------------------------------------------------------------

    pub(crate) fn swarms(&self) -> &swarm::Registry {
        &self.inner.swarms
    }

    /// Whether this node may serve an IMVU (or a swarm) now, and under which fence.
    pub(crate) fn ownership(&self) -> &Arc<dyn crate::ownership::Ownership> {
        &self.inner.config.ownership
    }

    /// Creates a swarm: its member IMVUs (through the handshake), its record, its coordinator.
    pub async fn create_swarm(
        &self,
        tenant: &TenantId,
        spec: SwarmSpec,
        caller: &Caller,
    ) -> Result<SwarmInfo, ActorError> {
        crate::quota::admit_growth(&*self.inner.tenants.get(tenant)?)?;
        swarm::create(self, tenant, spec, caller).await
    }

    /// Runs `call` on this node's coordinator of `key` (see [`swarm::SwarmCall`]); the answer
    /// as JSON. Refused with a retryable error when another node coordinates the swarm.
    pub async fn swarm_call(&self, key: &SwarmKey, call: swarm::SwarmCall) -> Result<serde_json::Value, ActorError> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| ActorError::Store(format!("swarm answer does not serialise: {e}")));
        match call {
            swarm::SwarmCall::Info => json(serde_json::to_value(self.swarm_info(key).await?)),
            swarm::SwarmCall::Submit { items } => json(serde_json::to_value(self.submit_work(key, items).await?)),
            swarm::SwarmCall::OpenVote { proposal, options, quorum } => {
                json(serde_json::to_value(self.open_vote(key, proposal, options, quorum).await?))
            }
            swarm::SwarmCall::CastVote { vote, member, choice } => json(serde_json::to_value(self.cast_vote(key, vote, member, choice).await?)),
        }
    }

    /// Queues work items (each a message for the member kind); durable before it returns.
    pub async fn submit_work(
        &self,
        key: &SwarmKey,
        items: Vec<serde_json::Value>,
    ) -> Result<Vec<u64>, ActorError> {
        let tx = swarm::coordinator(self, key).await?;
        let mut with_ids = Vec::with_capacity(items.len());
        for item in items {
            with_ids.push((self.allocate_id().await?, item));
        }
        swarm::call(&tx, |reply| SwarmCmd::Submit {
            items: with_ids,
            reply,
        })
        .await
    }

    /// Submits one item and waits for its result (how a parent swarm uses a sub-swarm).
    pub async fn swarm_run_item(
        &self,
        key: &SwarmKey,
        item: serde_json::Value,
    ) -> Result<serde_json::Value, ActorError> {
        let ids = self.submit_work(key, vec![item]).await?;
        let tx = swarm::coordinator(self, key).await?;
        let id = ids
            .first()
            .copied()
            .ok_or_else(|| ActorError::Store("submit returned no id".into()))?;
        swarm::call(&tx, |reply| SwarmCmd::AwaitItem { item: id, reply }).await
    }

    /// Spec, members, status and progress.
    pub async fn swarm_info(&self, key: &SwarmKey) -> Result<SwarmInfo, ActorError> {
        swarm::info(&swarm::coordinator(self, key).await?).await
    }

    /// Who did what, in item order. A scan of up to every item of the swarm, by pages of
    /// [`CREDITS_PAGE_LEN`], yielding between pages so that other tasks of the worker run
    /// (not on a blocking thread: under the simulator that would race real threads against
    /// simulated time).
    pub async fn swarm_credits(&self, key: &SwarmKey) -> Result<Vec<CreditRecord>, ActorError> {
        swarm::exists(self, key)?;
        let prefix = crate::swarm::credit_prefix(key);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store().scan_prefix(&prefix, after.as_deref(), CREDITS_PAGE_LEN)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, bytes) in page {
                out.push(records::decode(&k, &bytes)?);
            }
            tokio::task::yield_now().await;
        }
        Ok(out)
    }

    /// Writes a value into the swarm's shared memory; durable before it returns.
    pub async fn swarm_memory_put(
        &self,
        key: &SwarmKey,
        name: &str,
        value: serde_json::Value,
    ) -> Result<(), ActorError> {
        swarm::exists(self, key)?;
        swarm::check_mem_key(name)?;
        commit_durable(
            &**self.store(),
            vec![CanonWrite::Put {
                key: swarm::mem_key(key, name),
                value: records::encode(&value),
            }],
        )
        .await?;
        Ok(())
    }

    /// Reads a value from the swarm's shared memory.
    pub fn swarm_memory_get(
        &self,
        key: &SwarmKey,
        name: &str,
    ) -> Result<Option<serde_json::Value>, ActorError> {
        swarm::exists(self, key)?;
        swarm::check_mem_key(name)?;
        let k = swarm::mem_key(key, name);
        Ok(self
            .store()
            .get(&k)?
            .map(|b| records::decode(&k, &b))
            .transpose()?)
    }

    /// Opens a vote among the swarm's members; `quorum` defaults to a majority.
    pub async fn open_vote(
        &self,
        key: &SwarmKey,
        proposal: String,
        options: Vec<String>,
        quorum: Option<u32>,
    ) -> Result<VoteRecord, ActorError> {
        let tx = swarm::coordinator(self, key).await?;
        let id = self.allocate_id().await?;
        swarm::call(&tx, |reply| SwarmCmd::OpenVote {
            id,
            proposal,
            options,
            quorum,
            reply,
        })
        .await
    }

    /// Casts a member's ballot; the vote is decided when an option reaches quorum.
    pub async fn cast_vote(
        &self,
        key: &SwarmKey,
        vote: u64,
        member: swarm::MemberRef,
        choice: String,
    ) -> Result<VoteRecord, ActorError> {
        let tx = swarm::coordinator(self, key).await?;
        swarm::call(&tx, |reply| SwarmCmd::CastVote {
            vote,
            member,
            choice,
            reply,
        })
        .await
    }

    /// Stops the node: no new activations; state of `LifecycleOnly` kinds written to canon;
    /// shards stopped in reverse start order. Everything acknowledged was durable already.
    pub async fn shutdown(&self) {
        self.inner.node.shutting_down.store(true, Ordering::SeqCst);
        if let Err(e) = self.inner.audit.flush().await {
            tracing::warn!(error = %e, "audit records not written at shutdown");
        }
        if let Err(e) = write_usage(&self.inner).await {
            tracing::warn!(error = %e, "usage not written at shutdown");
        }
        swarm::stop_all(&self.inner.swarms);
        // A `LifecycleOnly` IMVU leaves memory only once its state is durable; one whose write
        // was refused (a commit queue filled by thousands of them at once) stays resident and
        // is written by the next round. Rounds end when one passivates nothing more.
        let mut written = 0;
        for _ in 0..SHUTDOWN_PASSIVATION_ROUNDS_MAX {
            let round = self.passivate_idle(0).await;
            written += round;
            if round == 0 {
                break;
            }
        }
        // Those left are paused, kept resident by their kind, or refused by a canon that takes
        // no writes now (each passivation logged its refusals).
        let resident = self.inner.node.resident_imvus.load(Ordering::Relaxed);
        tracing::info!(passivated = written, resident, "IMVUs passivated; stopping shards");
        let _ = ractor::call!(self.inner.root, SupervisorMsg::Shutdown);
        self.inner.root.stop(Some("shutdown".into()));
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    #[test]
    fn a_directory_shard_never_holds_more_than_its_bound() {
        let mut shard: HashMap<u64, u16, ahash::RandomState> = HashMap::default();
        for id in 0..1_000u64 {
            insert_bounded(&mut shard, id, 1, 100);
            assert!(shard.len() <= 100, "{} entries after id {id}", shard.len());
            assert_eq!(shard.get(&id), Some(&1), "the id just inserted is cached");
        }
        // Memory goes with the entries: the shard was replaced, not cleared.
        assert!(shard.capacity() < 1_000, "capacity {}", shard.capacity());
        // An id already cached is updated in place, without emptying a full shard.
        let full = shard.len();
        let cached = *shard.keys().next().expect("an entry");
        insert_bounded(&mut shard, cached, 2, full);
        assert_eq!(shard.len(), full);
        assert_eq!(shard.get(&cached), Some(&2));
    }
}

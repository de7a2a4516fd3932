//! [`Desktops`]: a node's desktop host.
//!
//! Each session is an actor: one tokio task that owns the session's desktop ([`Desktop`]) and
//! takes commands (pause, resume, terminate, screenshot) from a bounded channel, so that one
//! session's transitions are serial and never race its supervisor. The task also
//! - **supervises** the desktop: Xvfb exiting when nobody asked is a failure fed to a
//!   one-child OTP supervisor core (`vcos_supervision`, restart intensity from the config);
//!   a restart starts a new Xvfb on the same display (and the application and VNC again) and
//!   is recorded; past the intensity the session ends Terminated with the reason;
//! - **meters** it: every `meter_interval` and at every transition, active wall time and CPU
//!   time (from `/proc`) go into the record, and whole desktop seconds (the tier's multiplier
//!   applied) into the tenant's usage; the record is written to the canon, so a node that dies
//!   loses at most one interval.
//!
//! Around them: a warm pool of started displays per tier (refilled in the background; a
//! session takes one, or starts cold when the pool is empty), display numbers (a range,
//! skipping displays another program holds), quotas (live sessions per tenant, by the
//! tenant's tier), and recovery: at start the host ends the sessions a previous run of the
//! node left (their processes killed, records Terminated with the reason, usage billed up to
//! their last interval).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use vcos_actors::metering::UsageUnit;
use vcos_actors::store::{commit_durable, CanonStore, CanonWrite};
use vcos_actors::tenants::Tier;
use vcos_actors::{ActorError, Runtime, TenantEntry, TenantId};
use vcos_supervision::core::{ChildSpec, Directive, ExitReason, Intensity, RestartType, Strategy, Supervisor};

use super::backend::{Desktop, DesktopBackend, XvfbBackend};
use super::process::{DesktopSpec, READY_TIMEOUT};
use super::record::{session_key, tenant_prefix, RestartNote, SessionRecord, SessionState, VncEndpoint, RESTARTS_KEPT, SESSION_PREFIX};
use super::tier::DesktopTier;
use super::DesktopError;

/// Commands a session actor may have waiting, at most.
const COMMANDS_MAX: usize = 64;
/// Sessions one tenant may list, at most.
const LIST_MAX: usize = 10_000;
/// How long a screenshot may take.
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a node runs desktops.
#[derive(Clone, Debug)]
pub struct DesktopConfig {
    /// This node's id (in records).
    pub node: u64,
    /// Where desktop logs and VNC password files go.
    pub work_dir: PathBuf,
    /// Display numbers used, first and last.
    pub displays: (u32, u32),
    /// Started displays kept ready per tier.
    pub pool_per_tier: usize,
    /// How often usage is metered and records written.
    pub meter_interval: Duration,
    /// How long a terminated desktop has between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Restarts of a session's desktop tolerated within a period.
    pub intensity: Intensity,
    /// The address VNC servers listen on.
    pub vnc_listen: String,
    /// What runs the desktops (real Xvfb processes; the simulator's own).
    pub backend: Arc<dyn DesktopBackend>,
}

impl DesktopConfig {
    /// Defaults for node `node`, files under `work_dir`.
    pub fn new(node: u64, work_dir: PathBuf) -> Self {
        Self {
            node,
            work_dir,
            displays: (100, 699),
            pool_per_tier: 1,
            meter_interval: Duration::from_secs(10),
            grace: Duration::from_secs(2),
            intensity: Intensity { max_restarts: 3, period_ms: 60_000 },
            vnc_listen: "127.0.0.1".into(),
            backend: Arc::new(XvfbBackend),
        }
    }
}

/// A request for a session.
#[derive(Clone, Debug)]
pub struct CreateSession {
    /// Its tier.
    pub tier: DesktopTier,
    /// A command line to start inside the desktop.
    pub app: Option<Vec<String>>,
    /// Serve it over VNC (the password comes back once).
    pub vnc: bool,
    /// The workspace it joins.
    pub workspace: Option<u64>,
}

/// What the host has now.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DesktopsStatus {
    /// How limits are enforced.
    pub limits: &'static str,
    /// Started displays ready per tier.
    pub pool: BTreeMap<&'static str, usize>,
    /// Sessions on this node not terminated.
    pub sessions: usize,
    /// Of them, active.
    pub active: usize,
}

/// Live sessions one tenant may have at once, by its tier.
pub fn sessions_max(tier: Tier) -> usize {
    match tier {
        Tier::Basic => 4,
        Tier::Pro => 16,
        Tier::Enterprise => 64,
    }
}

/// Whether a tenant of `tenant` tier may use desktops of `desktop` tier.
fn tier_allowed(tenant: Tier, desktop: DesktopTier) -> bool {
    desktop != DesktopTier::Pro || tenant != Tier::Basic
}

enum Command {
    Pause(oneshot::Sender<Result<SessionRecord, ActorError>>),
    Resume(oneshot::Sender<Result<SessionRecord, ActorError>>),
    Terminate(String, oneshot::Sender<Result<SessionRecord, ActorError>>),
    Screenshot(oneshot::Sender<Result<Vec<u8>, ActorError>>),
}

struct SessionHandle {
    tx: mpsc::Sender<Command>,
    record: Arc<Mutex<SessionRecord>>,
}

/// A node's desktop host. Cloning shares it.
#[derive(Clone)]
pub struct Desktops {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Desktops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desktops").field("node", &self.inner.config.node).finish_non_exhaustive()
    }
}

struct Inner {
    config: DesktopConfig,
    runtime: Runtime,
    sessions: Mutex<BTreeMap<(String, u64), SessionHandle>>,
    pool: Mutex<BTreeMap<DesktopTier, Vec<Box<dyn Desktop>>>>,
    displays: Mutex<BTreeSet<u32>>,
    refill: Notify,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_found(tenant: &str, id: u64) -> ActorError {
    ActorError::NotFound { what: "session", key: format!("{tenant}/{id}") }
}

fn desktop_error(e: DesktopError) -> ActorError {
    match e {
        DesktopError::App(reason) => ActorError::BadRequest { field: "app".into(), reason },
        other => ActorError::Unavailable(other.to_string()),
    }
}

impl Desktops {
    /// Starts the host: checks that Xvfb is installed, ends the sessions a previous run of
    /// this node left, and starts filling the warm pool.
    pub async fn start(runtime: Runtime, config: DesktopConfig) -> Result<Self, DesktopError> {
        config.backend.check()?;
        std::fs::create_dir_all(&config.work_dir).map_err(|e| DesktopError::Io(format!("create {}: {e}", config.work_dir.display())))?;
        let inner = Arc::new(Inner {
            next: AtomicU64::new(0),
            config,
            runtime,
            sessions: Mutex::new(BTreeMap::new()),
            pool: Mutex::new(BTreeMap::new()),
            displays: Mutex::new(BTreeSet::new()),
            refill: Notify::new(),
        });
        let recovered = recover(&inner).await;
        if recovered > 0 {
            tracing::warn!(sessions = recovered, "ended the sessions a previous run of this node left (their desktops were lost)");
        }
        tokio::spawn(refill_pool(Arc::downgrade(&inner)));
        publish_gauges(&inner);
        Ok(Self { inner })
    }

    /// The runtime whose canon keeps the records.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// A new session or workspace id.
    pub(crate) fn new_id(&self, now_ms: u64) -> u64 {
        new_id(&self.inner, now_ms)
    }

    /// What the host has now.
    pub fn status(&self) -> DesktopsStatus {
        let pool = lock(&self.inner.pool).iter().map(|(tier, ready)| (tier.name(), ready.len())).collect();
        let sessions = lock(&self.inner.sessions);
        let active = sessions.values().filter(|h| lock(&h.record).state == SessionState::Active).count();
        DesktopsStatus { limits: self.inner.config.backend.limits(), pool, sessions: sessions.len(), active }
    }

    /// Creates a session for `tenant`: checks the tier and the tenant's quota, takes a started
    /// display from the pool (or starts one), starts the application and VNC if asked, records
    /// the session in the canon, and starts its actor. Returns the record and, with VNC, the
    /// password (given this once).
    ///
    /// The creation runs as its own task: a caller that goes away (an HTTP client that hangs
    /// up while a desktop starts) does not leave a session half made; it still ends Active or
    /// Terminated.
    pub async fn create(&self, tenant: &TenantId, request: CreateSession) -> Result<(SessionRecord, Option<String>), ActorError> {
        let this = self.clone();
        let tenant = *tenant;
        tokio::spawn(async move { this.create_now(&tenant, request).await })
            .await
            .unwrap_or_else(|e| Err(ActorError::Unavailable(format!("the session's creation failed: {e}"))))
    }

    async fn create_now(&self, tenant: &TenantId, request: CreateSession) -> Result<(SessionRecord, Option<String>), ActorError> {
        let inner = &self.inner;
        // Time from the runtime's clock (the simulator's, under simulation).
        let clock = Arc::clone(inner.runtime.clock());
        let started = clock.now_ms();
        let entry = inner.runtime.tenant_or_load(tenant)?;
        let tenant_tier = entry.policy.tier;
        if !tier_allowed(tenant_tier, request.tier) {
            return Err(ActorError::HandshakeRefused {
                stage: vcos_actors::handshake::Stage::TenantGovernance,
                transition: vcos_actors::Transition::Create,
                reason: format!("tier {} desktops need a pro or enterprise tenant; {tenant} is {tenant_tier:?}", request.tier),
            });
        }
        let now = inner.runtime.clock().unix_ms();
        let (live, recent_active_ms) = tenant_sessions(inner.runtime.store().as_ref(), tenant.as_str(), now)?;
        let max = sessions_max(tenant_tier);
        if live >= max {
            return Err(ActorError::QuotaExceeded { quota: "live_sessions".into(), reason: format!("{live} of {max} sessions are live; terminate one first"), retry_after_s: None });
        }
        let hours_max = session_hours_max(tenant_tier);
        if recent_active_ms >= hours_max * 3_600_000 {
            return Err(ActorError::QuotaExceeded {
                quota: "session_hours".into(),
                reason: format!("{:.1} of {hours_max} session hours used in the last 30 days", recent_active_ms as f64 / 3_600_000.0),
                retry_after_s: Some(3_600),
            });
        }
        if let Some(workspace) = request.workspace {
            let key = super::workspace::workspace_key(tenant.as_str(), workspace);
            if inner.runtime.store().get(&key).map_err(|e| ActorError::Store(e.to_string()))?.is_none() {
                return Err(ActorError::NotFound { what: "workspace", key: format!("{tenant}/{workspace}") });
            }
        }
        if let Some(app) = &request.app {
            if app.is_empty() || app[0].trim().is_empty() {
                return Err(ActorError::BadRequest { field: "app".into(), reason: "the command line is empty".into() });
            }
        }
        let id = new_id(inner, now);
        let mut record = SessionRecord {
            id,
            tenant: tenant.as_str().to_owned(),
            tier: request.tier,
            state: SessionState::Genesis,
            node: inner.config.node,
            display: None,
            pgid: None,
            app: request.app.clone(),
            vnc: None,
            workspace: request.workspace,
            limits: inner.config.backend.limits().into(),
            created_ms: now,
            updated_ms: now,
            start_ms: 0,
            warm: false,
            active_ms: 0,
            cpu_ms: 0,
            billed_desktop_seconds: 0,
            restarts: Vec::new(),
            restart_count: 0,
            reason: None,
        };
        persist(inner, &record).await?;
        let (desktop, warm) = match take_warm(inner, request.tier) {
            Some(desktop) => (Ok(desktop), true),
            None => (start_cold(inner, request.tier).await, false),
        };
        let mut desktop = match desktop {
            Ok(desktop) => desktop,
            Err(e) => return Err(fail_start(inner, record, e).await),
        };
        record.display = Some(desktop.display());
        record.pgid = Some(desktop.pgid());
        if let Some(app) = &request.app {
            if let Err(e) = desktop.start_app(app) {
                release(inner, desktop).await;
                return Err(fail_start(inner, record, e).await);
            }
        }
        let password = if request.vnc {
            let password = vnc_password();
            match start_vnc(inner, &mut desktop, id, &password) {
                Ok(endpoint) => record.vnc = Some(endpoint),
                Err(e) => {
                    release(inner, desktop).await;
                    return Err(fail_start(inner, record, e).await);
                }
            }
            Some(password)
        } else {
            None
        };
        record.state = SessionState::Active;
        record.warm = warm;
        record.start_ms = clock.now_ms().saturating_sub(started);
        record.updated_ms = inner.runtime.clock().unix_ms();
        if let Err(e) = persist(inner, &record).await {
            release(inner, desktop).await;
            return Err(e);
        }
        metrics::histogram!("v_supercore_session_creation_duration", "tier" => request.tier.name(), "warm" => if warm { "true" } else { "false" })
            .record(record.start_ms as f64 / 1_000.0);
        tracing::info!(tenant = %tenant, session = id, tier = %request.tier, display = desktop.display(), warm, start_ms = record.start_ms, "session active");
        spawn_actor(inner, entry, record.clone(), desktop, password.clone());
        Ok((record, password))
    }

    /// A session as recorded (live on this node: its current record; else the canon's).
    pub fn get(&self, tenant: &TenantId, id: u64) -> Result<SessionRecord, ActorError> {
        if let Some(handle) = lock(&self.inner.sessions).get(&(tenant.as_str().to_owned(), id)) {
            return Ok(lock(&handle.record).clone());
        }
        read_record(self.inner.runtime.store().as_ref(), tenant.as_str(), id)?.ok_or_else(|| not_found(tenant.as_str(), id))
    }

    /// A tenant's sessions (the canon's records; those live here as they are now), oldest first.
    pub fn list(&self, tenant: &TenantId) -> Result<Vec<SessionRecord>, ActorError> {
        let rows = self.inner.runtime.store().scan_prefix(&tenant_prefix(tenant.as_str()), None, LIST_MAX).map_err(|e| ActorError::Store(e.to_string()))?;
        let live = lock(&self.inner.sessions);
        Ok(rows
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<SessionRecord>(&bytes).ok())
            .map(|record| match live.get(&(record.tenant.clone(), record.id)) {
                Some(handle) => lock(&handle.record).clone(),
                None => record,
            })
            .collect())
    }

    async fn command<T>(&self, tenant: &TenantId, id: u64, make: impl FnOnce(oneshot::Sender<Result<T, ActorError>>) -> Command) -> Result<T, ActorError> {
        let tx = {
            let sessions = lock(&self.inner.sessions);
            match sessions.get(&(tenant.as_str().to_owned(), id)) {
                Some(handle) => handle.tx.clone(),
                None => {
                    drop(sessions);
                    // Known but not live here: terminated, or on another node.
                    let record = self.get(tenant, id)?;
                    return Err(match record.state {
                        SessionState::Terminated => ActorError::Conflict(format!("session {id} is terminated{}", record.reason.map(|r| format!(" ({r})")).unwrap_or_default())),
                        _ if record.node != self.inner.config.node => ActorError::Unavailable(format!("session {id} runs on node {}: ask that node", record.node)),
                        _ => ActorError::Unavailable(format!("session {id} is starting; retry")),
                    });
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ActorError::QueueFull(format!("session {id} has {COMMANDS_MAX} commands waiting")),
            mpsc::error::TrySendError::Closed(_) => ActorError::Conflict(format!("session {id} is terminated")),
        })?;
        answer.await.unwrap_or_else(|_| Err(ActorError::Conflict(format!("session {id} is terminated"))))
    }

    /// Pauses a session: SIGSTOP to its desktop; its display stops answering.
    pub async fn pause(&self, tenant: &TenantId, id: u64) -> Result<SessionRecord, ActorError> {
        self.command(tenant, id, Command::Pause).await
    }

    /// Resumes a paused session: SIGCONT; its display answers again.
    pub async fn resume(&self, tenant: &TenantId, id: u64) -> Result<SessionRecord, ActorError> {
        self.command(tenant, id, Command::Resume).await
    }

    /// Terminates a session: its processes ended, its display released, its usage billed.
    pub async fn terminate(&self, tenant: &TenantId, id: u64) -> Result<SessionRecord, ActorError> {
        self.command(tenant, id, |reply| Command::Terminate("terminated on request".into(), reply)).await
    }

    /// A PNG of an active session's screen.
    pub async fn screenshot(&self, tenant: &TenantId, id: u64) -> Result<Vec<u8>, ActorError> {
        self.command(tenant, id, Command::Screenshot).await
    }

    /// Terminates every session of this node (the node is stopping) and empties the pool.
    pub async fn shutdown(&self) {
        let live: Vec<(TenantId, u64)> = lock(&self.inner.sessions).keys().filter_map(|(t, id)| Some((TenantId::new(t).ok()?, *id))).collect();
        for (tenant, id) in live {
            let _ = self.command(&tenant, id, |reply| Command::Terminate("the node stopped".into(), reply)).await;
        }
        let pooled: Vec<Box<dyn Desktop>> = lock(&self.inner.pool).values_mut().flat_map(std::mem::take).collect();
        for desktop in pooled {
            release(&self.inner, desktop).await;
        }
    }
}

fn new_id(inner: &Inner, now_ms: u64) -> u64 {
    // Under 2^53 (JSON numbers stay exact): seconds (31 bits), node (8), a counter (12).
    let counter = inner.next.fetch_add(1, Ordering::Relaxed) & 0xfff;
    ((now_ms / 1_000) << 20) | ((inner.config.node & 0xff) << 12) | counter
}

fn vnc_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679";
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut bytes);
    }
    // VNC authentication uses 8 characters.
    bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect()
}

fn start_vnc(inner: &Inner, desktop: &mut Box<dyn Desktop>, id: u64, password: &str) -> Result<VncEndpoint, DesktopError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = inner.config.work_dir.join(format!("vnc-{id}.pass"));
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&path).map_err(|e| DesktopError::Io(format!("{}: {e}", path.display())))?;
    std::io::Write::write_all(&mut file, format!("{password}\n").as_bytes()).map_err(|e| DesktopError::Io(e.to_string()))?;
    let port = u16::try_from(5_900 + desktop.display()).map_err(|_| DesktopError::Io("no VNC port for the display".into()))?;
    desktop.start_vnc(&inner.config.vnc_listen, port, &path)?;
    Ok(VncEndpoint { host: inner.config.vnc_listen.clone(), port })
}

fn allocate_display(inner: &Inner) -> Result<u32, DesktopError> {
    let (first, last) = inner.config.displays;
    let mut in_use = lock(&inner.displays);
    let free = (first..=last).find(|n| !in_use.contains(n) && inner.config.backend.display_free(*n));
    let display = free.ok_or_else(|| DesktopError::Display { display: last, reason: format!("no free display between :{first} and :{last}") })?;
    in_use.insert(display);
    Ok(display)
}

async fn start_cold(inner: &Inner, tier: DesktopTier) -> Result<Box<dyn Desktop>, DesktopError> {
    let display = allocate_display(inner)?;
    let spec = DesktopSpec { display, tier, log_dir: inner.config.work_dir.clone() };
    // The backend's own deadline first (Xvfb's); this one also bounds a start that hangs.
    let started = match tokio::time::timeout(READY_TIMEOUT + Duration::from_secs(1), inner.config.backend.start(spec)).await {
        Ok(started) => started,
        Err(_) => Err(DesktopError::Display { display, reason: format!("did not answer within {READY_TIMEOUT:?}") }),
    };
    if started.is_err() {
        lock(&inner.displays).remove(&display);
    }
    started
}

fn take_warm(inner: &Inner, tier: DesktopTier) -> Option<Box<dyn Desktop>> {
    let desktop = lock(&inner.pool).get_mut(&tier).and_then(Vec::pop);
    inner.refill.notify_one();
    desktop
}

async fn release(inner: &Inner, desktop: Box<dyn Desktop>) {
    let display = desktop.display();
    desktop.terminate(inner.config.grace).await;
    lock(&inner.displays).remove(&display);
}

async fn fail_start(inner: &Inner, mut record: SessionRecord, e: DesktopError) -> ActorError {
    record.state = SessionState::Terminated;
    record.reason = Some(format!("start failed: {e}"));
    record.updated_ms = inner.runtime.clock().unix_ms();
    let _ = persist(inner, &record).await;
    tracing::warn!(session = record.id, error = %e, "session could not start");
    desktop_error(e)
}

async fn persist(inner: &Inner, record: &SessionRecord) -> Result<(), ActorError> {
    let value = serde_json::to_vec(record).map_err(|e| ActorError::Store(e.to_string()))?;
    commit_durable(inner.runtime.store().as_ref(), vec![CanonWrite::Put { key: session_key(&record.tenant, record.id), value }])
        .await
        .map(|_| ())
        .map_err(|e| ActorError::Store(e.to_string()))
}

fn read_record(store: &dyn CanonStore, tenant: &str, id: u64) -> Result<Option<SessionRecord>, ActorError> {
    let bytes = store.get(&session_key(tenant, id)).map_err(|e| ActorError::Store(e.to_string()))?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// A tenant's live sessions, and the active time of its sessions recorded in the 30 days
/// before `now_ms` (unix).
fn tenant_sessions(store: &dyn CanonStore, tenant: &str, now_ms: u64) -> Result<(usize, u64), ActorError> {
    const WINDOW_MS: u64 = 30 * 86_400_000;
    let rows = store.scan_prefix(&tenant_prefix(tenant), None, LIST_MAX).map_err(|e| ActorError::Store(e.to_string()))?;
    let records: Vec<SessionRecord> = rows.iter().filter_map(|(_, b)| serde_json::from_slice(b).ok()).collect();
    let live = records.iter().filter(|r| r.state != SessionState::Terminated).count();
    let recent = records.iter().filter(|r| r.updated_ms + WINDOW_MS >= now_ms).map(|r| r.active_ms).sum();
    Ok((live, recent))
}

/// Session hours one tenant may use in 30 days, by its tier.
pub fn session_hours_max(tier: Tier) -> u64 {
    match tier {
        Tier::Basic => 100,
        Tier::Pro => 1_000,
        Tier::Enterprise => 10_000,
    }
}

fn publish_gauges(inner: &Inner) {
    let sessions = lock(&inner.sessions);
    let records: Vec<SessionRecord> = sessions.values().map(|h| lock(&h.record).clone()).collect();
    drop(sessions);
    let active = records.iter().filter(|r| r.state == SessionState::Active).count();
    let live: Vec<&SessionRecord> = records.iter().filter(|r| r.state != SessionState::Terminated).collect();
    metrics::gauge!("v_supercore_active_sessions").set(active as f64);
    metrics::gauge!("v_supercore_resource_allocation_cpu").set(live.iter().map(|r| r.tier.cpu_millicores() as f64 / 1_000.0).sum::<f64>());
    metrics::gauge!("v_supercore_resource_allocation_memory").set(live.iter().map(|r| r.tier.memory_bytes() as f64).sum::<f64>());
    // Desktops run on the CPU (Xvfb): no GPU is allocated to them.
    metrics::gauge!("v_supercore_resource_allocation_gpu").set(0.0);
}

/// Ends the sessions a previous run of this node left: kills what is left of their
/// desktops, and records them Terminated (their usage was billed up to their last interval).
async fn recover(inner: &Inner) -> usize {
    let Ok(rows) = inner.runtime.store().scan_prefix(SESSION_PREFIX, None, 1_000_000) else { return 0 };
    let mut ended = 0;
    for (_, bytes) in rows {
        let Ok(mut record) = serde_json::from_slice::<SessionRecord>(&bytes) else { continue };
        if record.node != inner.config.node || record.state == SessionState::Terminated {
            continue;
        }
        if let (Some(pgid), Some(display)) = (record.pgid, record.display) {
            inner.config.backend.kill_leftover(pgid, display);
        }
        record.state = SessionState::Terminated;
        record.reason = Some("node restarted: the desktop was lost; usage billed up to the last metering interval".into());
        record.updated_ms = inner.runtime.clock().unix_ms();
        if persist(inner, &record).await.is_ok() {
            ended += 1;
        }
    }
    ended
}

/// Reason written on the sessions of a node the cluster declared dead.
pub const NODE_LOST: &str = "node lost: the cluster declared its node dead; usage billed up to the last metering interval";

/// What became of a lost node's sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostNodeOutcome {
    /// Recorded Terminated ([`NODE_LOST`]).
    pub ended: usize,
    /// Started afresh on this node (their tenant's `desktop_failover`).
    pub adopted: usize,
}

impl Desktops {
    /// Handles the sessions the canon records on `node`, which the cluster declared dead: a
    /// session whose tenant's policy asks for it (`desktop_failover`) starts afresh here (a new
    /// desktop, the same session: its record moves to this node, the move noted in its
    /// restarts); the others are recorded Terminated with [`NODE_LOST`] (usage as of their last
    /// interval: nothing is billed here). Every desktop node may call it at once: each record
    /// changes under a guard on its previous value, so exactly one node moves or ends it.
    pub async fn lost_node(&self, node: u64) -> Result<LostNodeOutcome, ActorError> {
        let inner = &self.inner;
        let store = inner.runtime.store();
        let rows = store.scan_prefix(SESSION_PREFIX, None, 1_000_000).map_err(|e| ActorError::Store(e.to_string()))?;
        let mut outcome = LostNodeOutcome::default();
        for (key, bytes) in rows {
            let Ok(mut record) = serde_json::from_slice::<SessionRecord>(&bytes) else { continue };
            if record.node != node || record.state == SessionState::Terminated {
                continue;
            }
            let failover = TenantId::new(&record.tenant).ok().and_then(|t| inner.runtime.tenant_or_load(&t).ok()).filter(|e| e.policy.desktop_failover);
            let now = inner.runtime.clock().unix_ms();
            record.updated_ms = now;
            if failover.is_some() {
                record.node = inner.config.node;
                record.state = SessionState::Genesis;
                record.display = None;
                record.pgid = None;
                // Its VNC password was given once and is not kept: the new desktop serves none.
                record.vnc = None;
                record.restart_count += 1;
                record.restarts.push(RestartNote { at_ms: now, reason: format!("node {node} lost: started afresh on node {}", inner.config.node) });
                if record.restarts.len() > RESTARTS_KEPT {
                    record.restarts.remove(0);
                }
            } else {
                record.state = SessionState::Terminated;
                record.reason = Some(NODE_LOST.into());
            }
            let value = serde_json::to_vec(&record).map_err(|e| ActorError::Store(e.to_string()))?;
            let guarded = vec![CanonWrite::Expect { key: key.clone(), value: Some(bytes) }, CanonWrite::Put { key, value }];
            match commit_durable(store.as_ref(), guarded).await {
                Ok(_) => {}
                // Another node moved or ended it first.
                Err(vcos_actors::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ActorError::Store(e.to_string())),
            }
            match failover {
                None => {
                    tracing::warn!(session = record.id, tenant = %record.tenant, node, "session ended: its node was lost");
                    outcome.ended += 1;
                }
                Some(entry) => {
                    tracing::warn!(session = record.id, tenant = %record.tenant, node, "session of a lost node: starting it afresh here");
                    if adopt(inner, entry, record).await.is_ok() {
                        outcome.adopted += 1;
                    }
                }
            }
        }
        Ok(outcome)
    }
}

/// Starts a desktop for a session moved to this node (recorded here, Genesis) and its actor;
/// a desktop that cannot start ends the session Terminated with the reason.
async fn adopt(inner: &Arc<Inner>, entry: Arc<TenantEntry>, mut record: SessionRecord) -> Result<(), ActorError> {
    let started = inner.runtime.clock().now_ms();
    let desktop = match take_warm(inner, record.tier) {
        Some(desktop) => Ok(desktop),
        None => start_cold(inner, record.tier).await,
    };
    let mut desktop = match desktop {
        Ok(desktop) => desktop,
        Err(e) => return Err(fail_start(inner, record, e).await),
    };
    if let Some(app) = record.app.clone() {
        if let Err(e) = desktop.start_app(&app) {
            release(inner, desktop).await;
            return Err(fail_start(inner, record, e).await);
        }
    }
    record.display = Some(desktop.display());
    record.pgid = Some(desktop.pgid());
    record.state = SessionState::Active;
    record.start_ms = inner.runtime.clock().now_ms().saturating_sub(started);
    record.updated_ms = inner.runtime.clock().unix_ms();
    if let Err(e) = persist(inner, &record).await {
        release(inner, desktop).await;
        return Err(e);
    }
    spawn_actor(inner, entry, record, desktop, None);
    Ok(())
}

/// Registers a session now Active on `desktop` and starts its actor.
fn spawn_actor(inner: &Arc<Inner>, entry: Arc<TenantEntry>, record: SessionRecord, desktop: Box<dyn Desktop>, password: Option<String>) {
    let key = (record.tenant.clone(), record.id);
    let shared = Arc::new(Mutex::new(record));
    let (tx, rx) = mpsc::channel(COMMANDS_MAX);
    lock(&inner.sessions).insert(key, SessionHandle { tx, record: Arc::clone(&shared) });
    publish_gauges(inner);
    let actor = SessionActor::new(Arc::clone(inner), entry, shared, desktop, password);
    tokio::spawn(actor.run(rx));
}

/// Keeps `pool_per_tier` started displays ready per tier.
async fn refill_pool(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        for tier in DesktopTier::ALL {
            loop {
                let ready = lock(&strong.pool).get(&tier).map_or(0, Vec::len);
                if ready >= strong.config.pool_per_tier {
                    break;
                }
                match start_cold(&strong, tier).await {
                    Ok(desktop) => lock(&strong.pool).entry(tier).or_default().push(desktop),
                    Err(e) => {
                        tracing::warn!(%tier, error = %e, "warm pool: could not start a display");
                        break;
                    }
                }
            }
        }
        // Woken when a session takes a display; at most 5 s, to notice the host is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), strong.refill.notified()).await;
    }
}

/// One session: its desktop, supervised and metered; its commands, one at a time.
struct SessionActor {
    inner: Arc<Inner>,
    entry: Arc<TenantEntry>,
    record: Arc<Mutex<SessionRecord>>,
    desktop: Option<Box<dyn Desktop>>,
    vnc_password: Option<String>,
    supervisor: Supervisor<&'static str>,
    /// When it was last metered (the runtime clock's ms).
    metered_at: u64,
    /// CPU ms of the current desktop already counted.
    cpu_seen: u64,
}

const DESKTOP: &str = "desktop";

impl SessionActor {
    fn new(inner: Arc<Inner>, entry: Arc<TenantEntry>, record: Arc<Mutex<SessionRecord>>, desktop: Box<dyn Desktop>, vnc_password: Option<String>) -> Self {
        let mut supervisor = Supervisor::new(Strategy::OneForOne, inner.config.intensity);
        let spec = ChildSpec { id: DESKTOP, restart: RestartType::Transient, shutdown_timeout_ms: u64::try_from(inner.config.grace.as_millis()).unwrap_or(u64::MAX) };
        if let Err(e) = supervisor.add_child(spec) {
            tracing::error!(error = %e, "session supervisor");
        }
        Self { inner, entry, record, desktop: Some(desktop), vnc_password, supervisor, metered_at: 0, cpu_seen: 0 }.started()
    }

    fn started(mut self) -> Self {
        self.metered_at = self.inner.runtime.clock().now_ms();
        self
    }

    fn snapshot(&self) -> SessionRecord {
        lock(&self.record).clone()
    }

    fn state(&self) -> SessionState {
        lock(&self.record).state
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut ticker = tokio::time::interval(self.inner.config.meter_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let exited = async {
                match self.desktop.as_mut() {
                    Some(desktop) => desktop.exited().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Commands first (a terminate wins over a crash seen in the same poll), then
                // the desktop's exit, then metering.
                biased;
                command = commands.recv() => {
                    let Some(command) = command else {
                        self.end("the desktop host stopped".into()).await;
                        return;
                    };
                    if self.handle(command).await {
                        return;
                    }
                }
                status = exited => {
                    if self.crashed(status).await {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    self.meter();
                    let record = self.snapshot();
                    if self.declared_lost(&record) {
                        // This node was declared dead (a partition, a long pause) and another
                        // ended its sessions: the canon's word stands; the desktop goes.
                        if let Some(desktop) = self.desktop.take() {
                            release(&self.inner, desktop).await;
                        }
                        lock(&self.inner.sessions).remove(&(record.tenant.clone(), record.id));
                        publish_gauges(&self.inner);
                        return;
                    }
                    if let Err(e) = persist(&self.inner, &record).await {
                        tracing::warn!(session = record.id, error = %e, "session record not written this interval");
                    }
                }
            }
        }
    }

    /// Whether the canon records this session ended because its node was declared lost, or
    /// moved to another node (its tenant's `desktop_failover`).
    fn declared_lost(&self, record: &SessionRecord) -> bool {
        matches!(read_record(self.inner.runtime.store().as_ref(), &record.tenant, record.id),
            Ok(Some(stored)) if (stored.state == SessionState::Terminated && stored.reason.as_deref() == Some(NODE_LOST)) || stored.node != self.inner.config.node)
    }

    /// Returns whether the session ended.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Pause(reply) => {
                let result = self.transition(SessionState::Active, SessionState::Paused, "pause").await;
                let _ = reply.send(result);
            }
            Command::Resume(reply) => {
                let result = self.transition(SessionState::Paused, SessionState::Active, "resume").await;
                let _ = reply.send(result);
            }
            Command::Terminate(reason, reply) => {
                let record = self.end(reason).await;
                let _ = reply.send(Ok(record));
                return true;
            }
            Command::Screenshot(reply) => {
                let result = match (self.state(), self.desktop.as_ref()) {
                    (SessionState::Active, Some(desktop)) => desktop.screenshot(SCREENSHOT_TIMEOUT).await.map_err(|e| ActorError::Unavailable(e.to_string())),
                    (state, _) => Err(ActorError::Conflict(format!("the session is {}: only an active session's screen can be captured", state.name()))),
                };
                let _ = reply.send(result);
            }
        }
        false
    }

    async fn transition(&mut self, from: SessionState, to: SessionState, what: &str) -> Result<SessionRecord, ActorError> {
        let current = self.state();
        if current != from {
            return Err(ActorError::Conflict(format!("cannot {what} a session that is {}", current.name())));
        }
        let desktop = self.desktop.as_ref().ok_or_else(|| ActorError::Conflict("the session has no desktop".into()))?;
        let signalled = if to == SessionState::Paused { desktop.pause() } else { desktop.resume() };
        signalled.map_err(desktop_error)?;
        // Time up to now is metered in the state it was spent in.
        self.meter();
        let record = {
            let mut record = lock(&self.record);
            record.state = to;
            record.updated_ms = self.inner.runtime.clock().unix_ms();
            record.clone()
        };
        persist(&self.inner, &record).await?;
        publish_gauges(&self.inner);
        tracing::info!(session = record.id, state = to.name(), "session {what}d");
        Ok(record)
    }

    /// Adds the time and CPU since the last metering to the record, and the whole desktop
    /// seconds not yet charged to the tenant's usage.
    fn meter(&mut self) {
        let now = self.inner.runtime.clock().now_ms();
        let elapsed = now.saturating_sub(self.metered_at);
        self.metered_at = now;
        let cpu = self.desktop.as_ref().map_or(self.cpu_seen, |d| d.cpu_ms());
        let mut record = lock(&self.record);
        if record.state == SessionState::Active {
            record.active_ms += elapsed;
        }
        record.cpu_ms += cpu.saturating_sub(self.cpu_seen);
        self.cpu_seen = cpu;
        let due = record.active_ms / 1_000 * record.tier.rate_multiplier();
        if due > record.billed_desktop_seconds {
            self.entry.usage.add(UsageUnit::DesktopSeconds, due - record.billed_desktop_seconds);
            record.billed_desktop_seconds = due;
        }
        record.updated_ms = self.inner.runtime.clock().unix_ms();
    }

    /// The desktop exited on its own: restart it within the intensity, else end the session.
    /// Returns whether the session ended.
    async fn crashed(&mut self, status: String) -> bool {
        self.meter();
        let reason = format!("Xvfb exited unexpectedly ({status})");
        let old = self.desktop.take();
        let display = old.as_ref().map(|d| d.display());
        if let Some(old) = old {
            // The application and VNC go with it.
            old.terminate(Duration::from_millis(200)).await;
        }
        let now = self.inner.runtime.clock().now_ms();
        match self.supervisor.handle_child_exit(now, &DESKTOP, ExitReason::Failed(reason.clone())) {
            Directive::Restart { .. } => {
                metrics::counter!("v_supercore_session_restarts_total").increment(1);
                match self.restart(display).await {
                    Ok(()) => {
                        let record = {
                            let mut record = lock(&self.record);
                            record.restart_count += 1;
                            record.restarts.push(RestartNote { at_ms: self.inner.runtime.clock().unix_ms(), reason: reason.clone() });
                            if record.restarts.len() > RESTARTS_KEPT {
                                record.restarts.remove(0);
                            }
                            record.clone()
                        };
                        tracing::warn!(session = record.id, %reason, restarts = record.restart_count, "session desktop restarted");
                        let _ = persist(&self.inner, &record).await;
                        false
                    }
                    Err(e) => {
                        self.end(format!("{reason}; the restart failed: {e}")).await;
                        true
                    }
                }
            }
            Directive::Escalate { reason: why, .. } => {
                self.end(format!("{reason}; restart intensity exceeded ({why})")).await;
                true
            }
            Directive::Ignore => {
                self.end(reason).await;
                true
            }
        }
    }

    async fn restart(&mut self, display: Option<u32>) -> Result<(), DesktopError> {
        let (tier, app, vnc, id, paused) = {
            let record = lock(&self.record);
            (record.tier, record.app.clone(), record.vnc.is_some(), record.id, record.state == SessionState::Paused)
        };
        if let Some(display) = display {
            lock(&self.inner.displays).remove(&display);
        }
        let mut desktop = start_cold(&self.inner, tier).await?;
        if let Some(app) = &app {
            desktop.start_app(app)?;
        }
        if let (true, Some(password)) = (vnc, self.vnc_password.clone()) {
            let endpoint = start_vnc(&self.inner, &mut desktop, id, &password)?;
            lock(&self.record).vnc = Some(endpoint);
        }
        if paused {
            desktop.pause()?;
        }
        {
            let mut record = lock(&self.record);
            record.display = Some(desktop.display());
            record.pgid = Some(desktop.pgid());
        }
        self.cpu_seen = 0;
        self.desktop = Some(desktop);
        Ok(())
    }

    /// Terminates: metered a last time, processes ended, display released, record written.
    async fn end(&mut self, reason: String) -> SessionRecord {
        self.meter();
        if let Some(desktop) = self.desktop.take() {
            release(&self.inner, desktop).await;
        }
        let record = {
            let mut record = lock(&self.record);
            record.state = SessionState::Terminated;
            record.reason = Some(reason);
            record.display = None;
            record.pgid = None;
            record.updated_ms = self.inner.runtime.clock().unix_ms();
            record.clone()
        };
        if let Err(e) = persist(&self.inner, &record).await {
            tracing::error!(session = record.id, error = %e, "the terminated session's record was not written");
        }
        lock(&self.inner.sessions).remove(&(record.tenant.clone(), record.id));
        publish_gauges(&self.inner);
        tracing::info!(session = record.id, reason = ?record.reason, billed_desktop_seconds = record.billed_desktop_seconds, "session terminated");
        record
    }
}

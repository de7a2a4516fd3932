//! One run: a turmoil world of N nodes running the production node (runtime + HTTP facade) on
//! simulated disks and clocks, a client host running the scenario's workload and checks, and
//! the fault plan applied between simulation steps.
//!
//! Phases (as in TigerBeetle's VOPR): **safety** — the workload runs while the plan's faults
//! fire; **liveness** — at `fault_phase_ms` everything heals (crashed or stopped nodes restart,
//! links repair, disks recover), and the scenario checks what must hold.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vcos_actors::kinds::{Counter, KvMemory, TextWorker};
use vcos_actors::{failpoints, ImvuKey, Runtime, RuntimeConfig, TenantId, TenantPolicy};

use crate::net::HTTP_PORT;
use crate::node_env::{NodeFaults, SimClock, SimDisk, SimStore};
use crate::plan::{FaultKind, FaultPlan};
use crate::raft_env::{SimDb, SimTransport};
use crate::scenarios::{Scenario, WorkloadCtx};
use crate::sockets::{HostSockets, OrderedListener};
use crate::trace::{hash_events, Trace};

/// Which canon store a world's runtimes run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldStore {
    /// Each node its own `SimStore` (one disk, no replication).
    Sim,
    /// Every node a voter of one Raft group (`RaftCanonStore` over a `CanonNode`), on redb
    /// disks that outlive crashes; a slow disk is treated as a failing one.
    Raft,
    /// `Raft`, plus the cluster of `vcos up`: SWIM membership on turmoil's UDP, bucket leases,
    /// placement and forwarding, the IMVU router; the facade routes IMVU requests through it.
    Cluster,
}

impl WorldStore {
    /// Whether the nodes run the Raft canon.
    fn raft(self) -> bool {
        matches!(self, Self::Raft | Self::Cluster)
    }
}

/// The Raft group's region in a `WorldStore::Raft` world.
const RAFT_REGION: &str = "sim";
/// Port of every node's canon listener.
const RAFT_PORT: u16 = 7000;

/// What the fault loop reaches on every host besides the software.
struct Hosts {
    /// Raft worlds: each node's redb disk.
    raft_disks: Vec<Arc<SimDb>>,
    /// Each node's streams (closed in opening order when the host goes down).
    sockets: Vec<Arc<HostSockets>>,
}

/// Planted bugs, to prove the checkers catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Tenant supervisors ignore their restart intensity.
    pub ignore_intensity: bool,
    /// Stores acknowledge before fsync.
    pub ack_before_fsync: bool,
    /// Canon followers answer read barriers without the leader's read index.
    pub stale_follower_reads: bool,
    /// Nodes serve every IMVU they are asked for without checking their lease.
    pub skip_lease_check: bool,
    /// Nodes keep serving the buckets they held after their lease lapsed.
    pub ignore_lease_expiry: bool,
    /// Workflows resuming after a load run their journaled calls again.
    pub workflow_rerun_journaled: bool,
    /// Workflow sleeps end early.
    pub workflow_early_timers: bool,
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Replay this plan instead of the seed's.
    pub plan: Option<FaultPlan>,
    /// Planted bugs to switch on.
    pub bugs: PlantedBugs,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Seed.
    pub seed: u64,
    /// The plan that ran.
    pub plan: FaultPlan,
    /// Ordered events.
    pub trace: Vec<String>,
    /// FNV-1a of the trace.
    pub trace_hash: u64,
    /// Checker violations; empty = pass.
    pub violations: Vec<String>,
    /// Simulated milliseconds the run covered.
    pub sim_ms: u64,
}

impl RunReport {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Which workload IMVUs the plan's handler panics hit: the workload registers its IMVUs in
/// order; the plan names them by number.
#[derive(Default)]
pub struct PanicTargets {
    keys: Vec<ImvuKey>,
    pending: BTreeMap<ImvuKey, u32>,
    armed: BTreeMap<u32, u32>,
}

impl PanicTargets {
    /// Registers the workload's next IMVU.
    pub fn register(&mut self, key: ImvuKey) {
        let index = self.keys.len() as u32;
        self.keys.push(key);
        if let Some(count) = self.armed.remove(&index) {
            *self.pending.entry(key).or_default() += count;
        }
    }

    fn arm(&mut self, imvu: u32, count: u32) {
        match self.keys.get(imvu as usize) {
            Some(key) => *self.pending.entry(*key).or_default() += count,
            None => *self.armed.entry(imvu).or_default() += count,
        }
    }

    fn take(&mut self, key: &ImvuKey) -> bool {
        match self.pending.get_mut(key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.armed.clear();
    }
}

fn node_name(i: u8) -> String {
    format!("n{i}")
}

/// Runs `scenario` for `seed`.
pub fn run(scenario: &dyn Scenario, seed: u64, options: &RunOptions) -> RunReport {
    let mix = scenario.fault_mix();
    let plan = options.plan.clone().unwrap_or_else(|| FaultPlan::generate(seed, mix));
    let plan = match scenario.run_custom(seed, options, plan) {
        Ok(report) => return report,
        Err(plan) => plan,
    };
    let trace = Trace::default();
    let nodes = mix.nodes.max(1);
    let disks: Vec<Arc<SimDisk>> = (0..nodes).map(|_| Arc::new(SimDisk::default())).collect();
    let faults: Vec<Arc<Mutex<NodeFaults>>> = (0..nodes)
        .map(|_| Arc::new(Mutex::new(NodeFaults { ack_before_fsync: options.bugs.ack_before_fsync, ..NodeFaults::default() })))
        .collect();
    let targets = Arc::new(Mutex::new(PanicTargets::default()));
    let metrics = vcos_api::install_metrics_recorder();
    let store = scenario.store();
    let desktops = scenario.desktops().then_some(seed);
    crate::keys::reset(seed);
    let observations = Arc::new(crate::cluster_env::Observations::default());
    if store.raft() {
        // openraft's election timeouts come from this thread's seeded source: reseed per run.
        vcos_canon_raft::runtime::reseed_this_thread(seed ^ 0xca70_0000);
    }
    let hosts = Hosts {
        raft_disks: (0..nodes).map(|_| Arc::default()).collect(),
        sockets: (0..nodes).map(|_| Arc::default()).collect(),
    };

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(4))
        .simulation_duration(Duration::from_secs(3600))
        .build();
    for i in 0..nodes {
        let (disk, node_faults, trace, metrics) = (disks[i as usize].clone(), faults[i as usize].clone(), trace.clone(), metrics.clone());
        let name = node_name(i);
        let host_name = name.clone();
        if store.raft() {
            let raft = RaftHost {
                index: i,
                nodes,
                disk: hosts.raft_disks[usize::from(i)].clone(),
                sockets: hosts.sockets[usize::from(i)].clone(),
                incarnation: Arc::default(),
                seed,
                cluster: (store == WorldStore::Cluster).then(|| ClusterHost { seed, observations: observations.clone() }),
            };
            sim.host(host_name.as_str(), move || {
                let (raft, node_faults, trace, metrics, name) = (raft.clone(), node_faults.clone(), trace.clone(), metrics.clone(), name.clone());
                async move {
                    if let Err(e) = run_raft_node(&raft, node_faults, trace.clone(), metrics).await {
                        trace.record(format!("{name} exited: {e}"));
                    }
                    Ok(())
                }
            });
            continue;
        }
        let sockets = hosts.sockets[usize::from(i)].clone();
        sim.host(host_name.as_str(), move || {
            let (disk, node_faults, trace, metrics, name, sockets) =
                (disk.clone(), node_faults.clone(), trace.clone(), metrics.clone(), name.clone(), sockets.clone());
            async move { node_main(name, disk, node_faults, trace, metrics, desktops, sockets).await }
        });
    }
    let violations = Arc::new(Mutex::new(Vec::new()));
    {
        let ctx = WorkloadCtx {
            nodes: (0..nodes).map(node_name).collect(),
            seed,
            trace: trace.clone(),
            targets: targets.clone(),
            fault_phase_ms: mix.duration_ms,
            observations: observations.clone(),
            clock_skew_ms: plan
                .faults
                .iter()
                .map(|f| match f.kind {
                    crate::plan::FaultKind::ClockJump { jump_ms, .. } => jump_ms.unsigned_abs(),
                    _ => 0,
                })
                .sum(),
        };
        let violations = violations.clone();
        let workload = scenario.workload(ctx);
        sim.client("client", async move {
            let found = workload.await;
            *violations.lock().unwrap_or_else(|p| p.into_inner()) = found;
            Ok(())
        });
    }

    let hook_targets = targets.clone();
    failpoints::set_handler_panic(Some(Box::new(move |key| hook_targets.lock().unwrap_or_else(|p| p.into_inner()).take(key))));
    failpoints::set_ignore_intensity(options.bugs.ignore_intensity);
    failpoints::set_skip_lease_check(options.bugs.skip_lease_check);
    failpoints::set_ignore_lease_expiry(options.bugs.ignore_lease_expiry);
    failpoints::set_workflow_rerun_journaled(options.bugs.workflow_rerun_journaled);
    failpoints::set_workflow_early_timers(options.bugs.workflow_early_timers);
    let served = observations.clone();
    failpoints::set_served_observer(Some(Box::new(move |key, epoch| served.record_served(key, epoch))));

    let mut next_fault = 0;
    // Recovery actions due at a time: (node, what).
    let mut due: BTreeMap<u64, Vec<(u8, Recovery)>> = BTreeMap::new();
    let mut crashed = vec![false; nodes as usize];
    let mut healed = false;
    let mut next_exit_check_ms = 0;
    let mut failure: Option<String> = None;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        while let Some(fault) = plan.faults.get(next_fault).filter(|f| f.at_ms <= now && !healed) {
            next_fault += 1;
            trace.record_at(now, format!("fault {}", fault.kind));
            apply(&mut sim, &fault.kind, now, &faults, &disks, &hosts, &targets, &mut crashed, &mut due);
        }
        let ready: Vec<u64> = due.range(..=now).map(|(t, _)| *t).collect();
        for t in ready {
            for (node, action) in due.remove(&t).unwrap_or_default() {
                recover(&mut sim, node, action, &hosts, &faults, &mut crashed, &trace, now);
            }
        }
        if !healed && now >= mix.duration_ms {
            healed = true;
            trace.record_at(now, "heal: restart stopped nodes, repair links, disks recover");
            for (t, actions) in std::mem::take(&mut due) {
                let _ = t;
                for (node, action) in actions {
                    recover(&mut sim, node, action, &hosts, &faults, &mut crashed, &trace, now);
                }
            }
            for i in 0..nodes {
                let name = node_name(i);
                if !sim.is_host_running(name.as_str()) {
                    hosts.sockets[usize::from(i)].going_down();
                    sim.bounce(name.as_str());
                    trace.record_at(now, format!("restart {name}"));
                }
                hosts.raft_disks[usize::from(i)].fail_fsync_until_ms.store(0, std::sync::atomic::Ordering::Relaxed);
                let mut f = faults[i as usize].lock().unwrap_or_else(|p| p.into_inner());
                f.disk_fail_until_ms = 0;
                f.disk_slow = (0, 0);
                f.paused_at_ms = None;
            }
            targets.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        // After the heal a node whose software exits (a fault that struck as the heal began)
        // is restarted, as a service manager would: the liveness phase checks a healed world.
        if healed && now >= next_exit_check_ms {
            next_exit_check_ms = now + EXITED_RESTART_CHECK_MS;
            for i in 0..nodes {
                let name = node_name(i);
                if !sim.is_host_running(name.as_str()) {
                    hosts.sockets[usize::from(i)].going_down();
                    sim.bounce(name.as_str());
                    trace.record_at(now, format!("restart {name} (exited after the heal)"));
                }
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                failure = Some(format!("simulation error: {e}"));
                break;
            }
        }
    }
    failpoints::set_handler_panic(None);
    failpoints::set_ignore_intensity(false);
    failpoints::set_skip_lease_check(false);
    failpoints::set_ignore_lease_expiry(false);
    failpoints::set_workflow_rerun_journaled(false);
    failpoints::set_workflow_early_timers(false);
    failpoints::set_served_observer(None);
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    let mut found = std::mem::take(&mut *violations.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(failure) = failure {
        found.push(failure);
    }
    for v in &found {
        trace.record_at(sim_ms, format!("violation: {v}"));
    }
    let events = trace.events();
    RunReport { scenario: scenario.name(), seed, plan, trace_hash: hash_events(&events), trace: events, violations: found, sim_ms }
}

/// How often, after the heal, the world looks for nodes whose software exited.
const EXITED_RESTART_CHECK_MS: u64 = 500;

#[derive(Clone, Copy, Debug)]
enum Recovery {
    Restart,
    Repair,
    RepairReplies,
    Release,
    /// End an isolation: links to the other nodes repaired.
    Rejoin,
    /// SIGCONT: the clock runs again, held messages both ways are delivered.
    Resume,
}

#[allow(clippy::too_many_arguments)]
fn apply(
    sim: &mut turmoil::Sim<'_>,
    fault: &FaultKind,
    now: u64,
    faults: &[Arc<Mutex<NodeFaults>>],
    disks: &[Arc<SimDisk>],
    hosts: &Hosts,
    targets: &Arc<Mutex<PanicTargets>>,
    crashed: &mut [bool],
    due: &mut BTreeMap<u64, Vec<(u8, Recovery)>>,
) {
    let node_faults = |n: u8| faults[usize::from(n) % faults.len()].lock().unwrap_or_else(|p| p.into_inner());
    match *fault {
        FaultKind::Crash { node, down_ms } => {
            let i = usize::from(node) % crashed.len();
            if !crashed[i] {
                crashed[i] = true;
                disks[i].crash();
                // A paused process that is killed is no longer paused: it restarts running.
                if node_faults(i as u8).paused_at_ms.take().is_some() {
                    let name = node_name(i as u8);
                    for other in other_nodes(i as u8, crashed.len()).chain(["client".to_owned()]) {
                        sim.release(name.as_str(), other.as_str());
                    }
                }
                let name = node_name(i as u8);
                if sim.is_host_running(name.as_str()) {
                    hosts.sockets[i].going_down();
                }
                sim.crash(name.as_str());
                due.entry(now + down_ms).or_default().push((i as u8, Recovery::Restart));
            }
        }
        FaultKind::Partition { node, ms } => {
            sim.partition("client", node_name(node % crashed.len() as u8).as_str());
            due.entry(now + ms).or_default().push((node, Recovery::Repair));
        }
        FaultKind::PartitionReplies { node, ms } => {
            sim.partition_oneway(node_name(node % crashed.len() as u8).as_str(), "client");
            due.entry(now + ms).or_default().push((node, Recovery::RepairReplies));
        }
        FaultKind::Delay { node, ms } => {
            sim.hold("client", node_name(node % crashed.len() as u8).as_str());
            due.entry(now + ms).or_default().push((node, Recovery::Release));
        }
        FaultKind::ClockJump { node, jump_ms } => node_faults(node).clock_offset_ms += jump_ms,
        FaultKind::DiskFail { node, ms } => {
            node_faults(node).disk_fail_until_ms = now + ms;
            raft_disk_fails(hosts, node, now + ms);
        }
        FaultKind::DiskSlow { node, fsync_ms, ms } => {
            node_faults(node).disk_slow = (fsync_ms, now + ms);
            // The Raft canon's disks have no slow-disk model: a slow fsync fails.
            raft_disk_fails(hosts, node, now + ms);
        }
        FaultKind::HandlerPanic { imvu, count } => targets.lock().unwrap_or_else(|p| p.into_inner()).arm(imvu, count),
        FaultKind::Isolate { node, ms } => {
            let i = node % crashed.len() as u8;
            for other in other_nodes(i, crashed.len()) {
                sim.partition(node_name(i).as_str(), other.as_str());
            }
            due.entry(now + ms).or_default().push((i, Recovery::Rejoin));
        }
        FaultKind::Pause { node, ms } => {
            let i = node % crashed.len() as u8;
            let mut f = node_faults(i);
            if f.paused_at_ms.is_none() {
                f.paused_at_ms = Some(now);
                drop(f);
                for other in other_nodes(i, crashed.len()).chain(["client".to_owned()]) {
                    sim.hold(node_name(i).as_str(), other.as_str());
                }
                due.entry(now + ms).or_default().push((i, Recovery::Resume));
            }
        }
    }
}

/// The other nodes' host names.
fn other_nodes(node: u8, nodes: usize) -> impl Iterator<Item = String> {
    (0..nodes as u8).filter(move |j| *j != node).map(node_name)
}

fn raft_disk_fails(hosts: &Hosts, node: u8, until_ms: u64) {
    let disk = &hosts.raft_disks[usize::from(node) % hosts.raft_disks.len()];
    disk.fail_fsync_until_ms.store(until_ms, std::sync::atomic::Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
fn recover(
    sim: &mut turmoil::Sim<'_>,
    node: u8,
    action: Recovery,
    hosts: &Hosts,
    faults: &[Arc<Mutex<NodeFaults>>],
    crashed: &mut [bool],
    trace: &Trace,
    now: u64,
) {
    let i = usize::from(node) % crashed.len();
    let name = node_name(i as u8);
    match action {
        Recovery::Restart => {
            if crashed[i] {
                crashed[i] = false;
                hosts.sockets[i].going_down();
                sim.bounce(name.as_str());
                trace.record_at(now, format!("restart {name}"));
            }
        }
        Recovery::Repair => sim.repair("client", name.as_str()),
        Recovery::RepairReplies => sim.repair_oneway(name.as_str(), "client"),
        Recovery::Release => sim.release("client", name.as_str()),
        Recovery::Rejoin => other_nodes(i as u8, crashed.len()).for_each(|o| sim.repair(name.as_str(), o.as_str())),
        Recovery::Resume => {
            faults[i].lock().unwrap_or_else(|p| p.into_inner()).paused_at_ms = None;
            for other in other_nodes(i as u8, crashed.len()).chain(["client".to_owned()]) {
                sim.release(name.as_str(), other.as_str());
            }
        }
    }
    // A paused node stays cut off until it resumes, whatever other fault ended meanwhile on
    // one of its links, another node's pause included (a stopped process reads nothing,
    // whatever the network does; turmoil keeps one state per link, so a repair or release
    // would end the hold too).
    for (j, node_faults) in faults.iter().enumerate() {
        if node_faults.lock().unwrap_or_else(|p| p.into_inner()).paused_at_ms.is_some() {
            let paused = node_name(j as u8);
            for other in other_nodes(j as u8, crashed.len()).chain(["client".to_owned()]) {
                sim.hold(paused.as_str(), other.as_str());
            }
        }
    }
}

/// The software of one node. Like the `vcos up` process, it exits when it cannot start (for
/// example its canon fails an fsync while loading); the exit is traced, the node stays down
/// until the plan or the heal restarts it, and the simulation goes on.
async fn node_main(
    name: String,
    disk: Arc<SimDisk>,
    faults: Arc<Mutex<NodeFaults>>,
    trace: Trace,
    metrics: vcos_api::PrometheusHandle,
    desktops: Option<u64>,
    sockets: Arc<HostSockets>,
) -> turmoil::Result {
    // Outlives `run_node` (a stopped node's tasks linger until the host restarts).
    tokio::task::spawn_local(sockets.closer());
    if let Err(e) = run_node(name.clone(), disk, faults, trace.clone(), metrics, desktops, sockets).await {
        trace.record(format!("{name} exited: {e}"));
    }
    Ok(())
}

/// What `vcos up` runs, on the simulated disk, clock and network.
/// `desktops`: the run's seed when the node runs a desktop host on simulated desktops.
async fn run_node(
    name: String,
    disk: Arc<SimDisk>,
    faults: Arc<Mutex<NodeFaults>>,
    trace: Trace,
    metrics: vcos_api::PrometheusHandle,
    desktops: Option<u64>,
    sockets: Arc<HostSockets>,
) -> turmoil::Result {
    let store = SimStore::start(disk, faults.clone());
    let mut config = RuntimeConfig::new(store, Arc::new(SimClock::new(faults)));
    config.shards_per_kind = 1;
    config.shard_queue_len = 1024;
    config.secrets = crate::keys::secrets_for(&name);
    let runtime = Runtime::builder(config).kind(Counter).kind(KvMemory).kind(TextWorker).start().await?;
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await?;
    bootstrap_key(&runtime, &name).await?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
    let router = match desktops {
        None => vcos_api::router(runtime.clone(), metrics),
        Some(seed) => {
            // Each start of the node draws its desktops' fates afresh (from the seed, the
            // node and the simulated time: the same on every replay).
            let fates = seed ^ crate::trace::hash_events(std::slice::from_ref(&name)) ^ crate::node_env::sim_now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let backend = Arc::new(crate::desktop_env::SimDesktops::new(&name, fates, trace.clone()));
            let node_id = u64::from(name.trim_start_matches('n').parse::<u8>().unwrap_or(0));
            let mut config = vcos_gpu_workers::desktop::DesktopConfig::new(node_id, std::env::temp_dir().join("vcos-sim-desktops"));
            config.backend = backend;
            config.meter_interval = Duration::from_secs(1);
            config.intensity = vcos_supervision::core::Intensity { max_restarts: 2, period_ms: 5_000 };
            let host = vcos_gpu_workers::desktop::Desktops::start(runtime.clone(), config).await?;
            let inference = Arc::new(vcos_gpu_workers::serve::Inference::none());
            vcos_api::router_with_inference(runtime.clone(), metrics, None, None, inference, Some(host))
        }
    };
    tokio::select! {
        biased;
        reason = runtime.escalated() => {
            trace.record(format!("{name} stopped by escalation: {reason}"));
            runtime.shutdown().await;
            Ok(())
        }
        served = axum::serve(OrderedListener { listener, sockets }, router) => {
            served?;
            Ok(())
        }
    }
}

/// What a node's host keeps across its incarnations in a `WorldStore::Raft` world.
#[derive(Clone)]
struct RaftHost {
    index: u8,
    nodes: u8,
    disk: Arc<SimDb>,
    sockets: Arc<HostSockets>,
    incarnation: Arc<std::sync::atomic::AtomicU64>,
    /// The run's seed (the cluster secret derives from it).
    seed: u64,
    /// `WorldStore::Cluster`: what the node's cluster needs.
    cluster: Option<ClusterHost>,
}

/// What a node of a `WorldStore::Cluster` world needs besides its canon.
#[derive(Clone)]
struct ClusterHost {
    seed: u64,
    observations: Arc<crate::cluster_env::Observations>,
}

fn raft_node_info(i: u8) -> vcos_canon_raft::NodeInfo {
    vcos_canon_raft::NodeInfo {
        raft_addr: format!("{}:{RAFT_PORT}", node_name(i)),
        http_addr: format!("{}:{HTTP_PORT}", node_name(i)),
        region: RAFT_REGION.into(),
    }
}

/// What `vcos up` runs in a cluster, on simulated disks, clock and network: a canon node (a
/// voter of the one group; node 0 initialises it with every node as a voter), the runtime on a
/// `RaftCanonStore`, the HTTP facade. Like `vcos up`, it exits when its canon fails.
async fn run_raft_node(host: &RaftHost, faults: Arc<Mutex<NodeFaults>>, trace: Trace, metrics: vcos_api::PrometheusHandle) -> turmoil::Result {
    use vcos_canon_raft::{CanonNode, NodeConfig};

    // Outlives this function (a stopped node's tasks linger until the host restarts).
    tokio::task::spawn_local(host.sockets.closer());
    let incarnation = host.incarnation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let mut config = NodeConfig::new(u64::from(host.index) + 1, RAFT_REGION, std::path::Path::new("/sim"));
    config.secret = Some(crate::keys::cluster_secret(host.seed));
    config.info = raft_node_info(host.index);
    config.incarnation = Some(incarnation);
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 300;
    config.raft.election_timeout_max = 600;
    let disk = host.disk.clone();
    config.storage = Some(Arc::new(move |_region: &str| {
        crate::raft_env::open_group_files(&disk)
    }));
    let node = CanonNode::start(config, Arc::new(SimTransport { sockets: host.sockets.clone() })).await?;
    let raft_listener = turmoil::net::TcpListener::bind(("0.0.0.0", RAFT_PORT)).await?;
    // Accept before anything that may wait on peers.
    let raft_server = tokio::spawn({
        let (node, sockets) = (node.clone(), host.sockets.clone());
        async move {
            loop {
                let Ok((stream, _)) = raft_listener.accept().await else { return };
                let (node, stream) = (node.clone(), sockets.wrap(stream));
                tokio::spawn(async move { node.serve_connection(Box::new(stream)).await });
            }
        }
    });
    // A failed canon stops the node wherever it is, starting included (`vcos up` exits).
    let result = tokio::select! {
        biased;
        reason = node.failed() => Err(reason.into()),
        result = serve_raft_node(host, &node, incarnation, faults, &trace, metrics) => result,
    };
    raft_server.abort();
    node.shutdown().await;
    result
}

async fn serve_raft_node(
    host: &RaftHost,
    node: &vcos_canon_raft::CanonNode,
    incarnation: u64,
    faults: Arc<Mutex<NodeFaults>>,
    trace: &Trace,
    metrics: vcos_api::PrometheusHandle,
) -> turmoil::Result {
    if host.index == 0 {
        node.bootstrap_with((0..host.nodes).map(|j| (u64::from(j) + 1, raft_node_info(j))).collect()).await?;
    }
    // Everything committed before this start is applied before the runtime reads the canon.
    node.read_barrier(RAFT_REGION).await?;
    let store = vcos_canon_raft::RaftCanonStore::start(node.clone());
    let clock: Arc<dyn vcos_actors::Clock> = Arc::new(SimClock::new(faults));
    let Some(cluster_host) = &host.cluster else {
        let mut config = RuntimeConfig::new(Arc::new(store.clone()), clock);
        config.shards_per_kind = 1;
        config.shard_queue_len = 1024;
        config.secrets = crate::keys::secrets_for(&node_name(host.index));
        let runtime = Runtime::builder(config).kind(Counter).kind(KvMemory).kind(TextWorker).start().await?;
        runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await?;
        bootstrap_key(&runtime, &node_name(host.index)).await?;
        let router = vcos_api::router_with_canon(runtime.clone(), metrics, store);
        return serve_http(host, runtime, router, trace).await;
    };
    // As `vcos up` wires it (src/up.rs), on the simulated network and clock.
    let node_id = u64::from(host.index) + 1;
    let observed: Arc<dyn vcos_actors::CanonStore> = Arc::new(crate::cluster_env::ObservedStore {
        inner: Arc::new(store.clone()),
        node: host.index,
        observations: cluster_host.observations.clone(),
    });
    let holder = crate::cluster_env::holder(node_id, incarnation);
    let leases = crate::cluster_env::lease_table(holder)?;
    let mut config = RuntimeConfig::new(observed.clone(), clock.clone());
    config.shards_per_kind = 1;
    config.shard_queue_len = 1024;
    config.ownership = leases.clone();
    config.region_tag = vcos_cluster::region_tag(RAFT_REGION);
    config.secrets = crate::keys::secrets_for(&node_name(host.index));
    let imvu_router = Arc::new(vcos_cluster::ClusterRouter::default());
    let runtime = Runtime::builder(config)
        .kind(Counter)
        .kind(KvMemory)
        .kind(TextWorker)
        .kind(vcos_actors::kinds::Relay)
        .kind(crate::cluster_env::Tally)
        .router(imvu_router.clone())
        .start()
        .await?;
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await?;
    bootstrap_key(&runtime, &node_name(host.index)).await?;
    let names: Vec<String> = (0..host.nodes).map(node_name).collect();
    let membership = crate::cluster_env::start_membership(
        &names,
        usize::from(host.index),
        incarnation,
        RAFT_REGION,
        HTTP_PORT,
        RAFT_PORT,
        cluster_host.seed,
    )
    .await?;
    let cluster = vcos_cluster::Cluster::start(
        vcos_cluster::ClusterConfig::new(holder, RAFT_REGION),
        leases,
        runtime.clone(),
        node.clone(),
        observed,
        clock,
        Arc::new(membership.view_receiver()),
    )?;
    imvu_router.bind(&cluster);
    let router = vcos_api::router_with_cluster(runtime.clone(), metrics, store, cluster);
    let served = serve_http(host, runtime, router, trace).await;
    membership.abort();
    served
}

/// Issues the canon's first cluster-admin key, as `vcos up` does: kept for the workload's
/// client (the run's table stands for `admin.key`, and outlives crashes as the file does)
/// before it is committed, and a kept key whose commit never landed committed on the next
/// start (once per canon: a node that finds another key issued keeps nothing).
async fn bootstrap_key(runtime: &Runtime, host: &str) -> Result<(), vcos_actors::ActorError> {
    let kept = crate::keys::kept_admin(host)
        .map(|text| vcos_actors::auth::KeyText::parse(&text))
        .transpose()
        .map_err(|e| vcos_actors::ActorError::Store(format!("{host}'s kept admin key: {e}")))?;
    let keep = |key: &vcos_actors::auth::KeyText| {
        crate::keys::keep_admin(host, key.expose());
        Ok(())
    };
    match runtime.keys().bootstrap_kept(kept.as_ref(), keep).await? {
        vcos_actors::auth::Bootstrap::Issued(_, key) => crate::keys::remember_admin(host, key.expose()),
        vcos_actors::auth::Bootstrap::Held(_) => {
            if let Some(key) = &kept {
                crate::keys::remember_admin(host, key.expose());
            }
        }
        vcos_actors::auth::Bootstrap::Elsewhere => {}
    }
    Ok(())
}

/// Serves the facade until the runtime escalates (then it stops, as `vcos up` does).
async fn serve_http(host: &RaftHost, runtime: Runtime, router: axum::Router, trace: &Trace) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
    let name = node_name(host.index);
    tokio::select! {
        biased;
        reason = runtime.escalated() => {
            trace.record(format!("{name} stopped by escalation: {reason}"));
            runtime.shutdown().await;
            Ok(())
        }
        served = axum::serve(OrderedListener { listener, sockets: host.sockets.clone() }, router) => {
            served?;
            Ok(())
        }
    }
}

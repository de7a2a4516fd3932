//! Canon: three canon nodes (the production `CanonNode`: openraft, the redb stores, the frame
//! protocol) on turmoil's network, with concurrent clients on every node doing puts,
//! compare-and-sets and linearizable and stale reads while nodes crash and restart, links are
//! cut one or both ways, messages are held back and fsyncs fail.
//!
//! The world is its own (not the actor runtime's `world`): every host runs a canon node and
//! its clients; the databases live on in-memory redb backends that outlive a crash (what was
//! committed is kept, as on a disk), with fsync failures injected by the plan.
//!
//! Checkers, after healing:
//! - the history of every client operation is linearizable (`linearizability::check`, a
//!   WGL search per key); an operation whose node crashed or timed out is *pending*: it may
//!   or may not have happened;
//! - replicas agree: once caught up, every node holds the same state;
//! - stale reads only ever return values some write wrote (or nothing).
//!
//! Planted bug `stale-reads`: followers answer read barriers without asking the leader, so a
//! partitioned follower serves old values as linearizable; the linearizability checker
//! catches it.
//!
//! Determinism: openraft draws election timeouts from the seeded `CanonRuntime`, nothing on
//! the canon's path waits on a tokio `watch` (whose waiters tokio shards at random), and a
//! host's TCP streams close in the order they were opened when the plan crashes or restarts it
//! (`crate::sockets`: tokio would drop them in an order set by process-global task ids). A
//! seed replays identically in a fresh process and run after run in one process
//! (`vcos sim --scenario canon --seed N --check-determinism`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_canon_raft::{CanonNode, NodeConfig, NodeInfo, Op, Response};

use super::Scenario;
use crate::linearizability::{self, KvInput, KvOutput, Operation, Verdict};
use crate::plan::{FaultKind, FaultMix, FaultPlan};
use crate::raft_env::{SimDb, SimTransport};
use crate::sockets::HostSockets;
use crate::trace::{hash_events, Trace};
use crate::world::{RunOptions, RunReport};

/// The canon scenario.
pub struct CanonScenario;

const NODES: u8 = 3;
const RAFT_PORT: u16 = 7000;
const REGION: &str = "sim";
const KEYS: u32 = 4;

/// The name of key `k`: under two tenants' prefixes and one of no tenant, so that each
/// replica's usage counts (which the convergence check reads through `state()`, comparing them
/// with the records) see puts, compare-and-sets, roll-backs and snapshot installs.
fn key_name(k: u32) -> String {
    match k % 3 {
        0 => format!("t/ta/k{k}"),
        1 => format!("tkv/tb/k{k}"),
        _ => format!("k{k}"),
    }
}
const CLIENTS_PER_NODE: u32 = 2;
/// Steps the linearizability search may take per key before it gives up (`Unknown`).
const CHECK_STEPS_MAX: u64 = 5_000_000;
/// How long after healing the replicas have to converge.
const CONVERGE_MS: u64 = 20_000;

impl Scenario for CanonScenario {
    fn name(&self) -> &'static str {
        "canon"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: NODES, duration_ms: 6_000, count: 10, imvus: 0, crashes: true, disk: true, network: true, panics: 0, cluster: false }
    }

    fn workload(&self, _ctx: super::WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        // Runs in its own world: see `run_custom`.
        Box::pin(async { vec!["the canon scenario runs in its own world".to_owned()] })
    }

    fn run_custom(&self, seed: u64, options: &RunOptions, plan: FaultPlan) -> Result<RunReport, FaultPlan> {
        Ok(run(self.name(), self.fault_mix(), seed, options, plan))
    }
}

fn node_name(i: u8) -> String {
    format!("n{i}")
}

fn node_info(i: u8) -> NodeInfo {
    NodeInfo { raft_addr: format!("{}:{RAFT_PORT}", node_name(i)), http_addr: String::new(), region: REGION.into() }
}

/// What every host shares with the checker.
struct Shared {
    history: Mutex<Vec<Operation>>,
    /// Every value any write tried to write (stale reads must return one of them).
    written: Mutex<BTreeSet<String>>,
    next_value: AtomicU64,
    nodes: Mutex<BTreeMap<u8, CanonNode>>,
    trace: Trace,
    fault_phase_ms: u64,
    stale_reads_bug: bool,
    stale_violations: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_us() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[allow(clippy::too_many_lines)]
fn run(name: &'static str, mix: FaultMix, seed: u64, options: &RunOptions, plan: FaultPlan) -> RunReport {
    // openraft's election timeouts come from this thread's seeded source: reseed per run.
    vcos_canon_raft::runtime::reseed_this_thread(seed ^ 0xca70_0000);
    let trace = Trace::default();
    let disks: Vec<Arc<SimDb>> = (0..NODES).map(|_| Arc::default()).collect();
    let shared = Arc::new(Shared {
        history: Mutex::default(),
        written: Mutex::default(),
        next_value: AtomicU64::new(1),
        nodes: Mutex::default(),
        trace: trace.clone(),
        fault_phase_ms: mix.duration_ms,
        stale_reads_bug: options.bugs.stale_follower_reads,
        stale_violations: Mutex::default(),
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(4))
        .simulation_duration(Duration::from_secs(3600))
        .build();
    let incarnations: Vec<Arc<AtomicU64>> = (0..NODES).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let sockets: Vec<Arc<HostSockets>> = (0..NODES).map(|_| Arc::default()).collect();
    for i in 0..NODES {
        let (disk, shared, incarnation) = (disks[usize::from(i)].clone(), shared.clone(), incarnations[usize::from(i)].clone());
        let host_sockets = sockets[usize::from(i)].clone();
        sim.host(node_name(i).as_str(), move || {
            let (disk, shared, sockets) = (disk.clone(), shared.clone(), host_sockets.clone());
            let incarnation = incarnation.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                if let Err(e) = node_main(i, incarnation, disk, shared.clone(), sockets, seed).await {
                    shared.trace.record(format!("{} exited: {e}", node_name(i)));
                }
                Ok(())
            }
        });
    }
    let violations = Arc::new(Mutex::new(Vec::new()));
    {
        let (shared, violations) = (shared.clone(), violations.clone());
        sim.client("checker", async move {
            let found = check(&shared).await;
            *lock(&violations) = found;
            Ok(())
        });
    }

    let mut next_fault = 0;
    let mut due: BTreeMap<u64, Vec<(u8, Recovery)>> = BTreeMap::new();
    let mut crashed = [false; NODES as usize];
    let mut healed = false;
    let mut failure = None;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        while let Some(fault) = plan.faults.get(next_fault).filter(|f| f.at_ms <= now && !healed) {
            next_fault += 1;
            trace.record_at(now, format!("fault {}", fault.kind));
            apply(&mut sim, &fault.kind, now, &disks, &sockets, &mut crashed, &mut due);
        }
        let ready: Vec<u64> = due.range(..=now).map(|(t, _)| *t).collect();
        for t in ready {
            for (node, action) in due.remove(&t).unwrap_or_default() {
                recover(&mut sim, node, action, &sockets, &mut crashed, &trace, now);
            }
        }
        if !healed && now >= mix.duration_ms {
            healed = true;
            trace.record_at(now, "heal: restart crashed nodes, repair links, disks recover");
            for (_, actions) in std::mem::take(&mut due) {
                for (node, action) in actions {
                    recover(&mut sim, node, action, &sockets, &mut crashed, &trace, now);
                }
            }
            for i in 0..NODES {
                disks[usize::from(i)].fail_fsync_until_ms.store(0, Ordering::Relaxed);
                let name = node_name(i);
                if !sim.is_host_running(name.as_str()) {
                    bounce(&mut sim, i, &sockets);
                    trace.record_at(now, format!("restart {name}"));
                }
            }
        }
        if healed {
            // A node that stopped after the heal (its storage failed just before it) is
            // restarted too: liveness is checked on a whole cluster.
            for i in 0..NODES {
                let name = node_name(i);
                if !sim.is_host_running(name.as_str()) {
                    bounce(&mut sim, i, &sockets);
                    trace.record_at(now, format!("restart {name} (stopped after the heal)"));
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
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    let mut found = std::mem::take(&mut *lock(&violations));
    if let Some(failure) = failure {
        found.push(failure);
    }
    for v in &found {
        trace.record_at(sim_ms, format!("violation: {v}"));
    }
    let events = trace.events();
    RunReport { scenario: name, seed, plan, trace_hash: hash_events(&events), trace: events, violations: found, sim_ms }
}

#[derive(Clone, Copy, Debug)]
enum Recovery {
    Restart,
    Repair,
    RepairOneway,
    Release,
}

fn others(node: u8) -> impl Iterator<Item = String> {
    (0..NODES).filter(move |j| *j != node).map(node_name)
}

/// Restarts a node's host. Its old runtime, dropped now, may still hold streams (a node that
/// stopped leaves its connection tasks behind): they close in opening order.
fn bounce(sim: &mut turmoil::Sim<'_>, node: u8, sockets: &[Arc<HostSockets>]) {
    sockets[usize::from(node)].going_down();
    sim.bounce(node_name(node).as_str());
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    fault: &FaultKind,
    now: u64,
    disks: &[Arc<SimDb>],
    sockets: &[Arc<HostSockets>],
    crashed: &mut [bool],
    due: &mut BTreeMap<u64, Vec<(u8, Recovery)>>,
) {
    match *fault {
        FaultKind::Crash { node, down_ms } => {
            let i = usize::from(node % NODES);
            if !crashed[i] {
                crashed[i] = true;
                // A host still running drops its runtime now: its streams close in opening
                // order. (A stopped host's crash is a no-op in turmoil; its bounce closes them.)
                let name = node_name(node % NODES);
                if sim.is_host_running(name.as_str()) {
                    sockets[i].going_down();
                }
                sim.crash(name.as_str());
                due.entry(now + down_ms).or_default().push((node % NODES, Recovery::Restart));
            }
        }
        FaultKind::Partition { node, ms } | FaultKind::Isolate { node, ms } => {
            for other in others(node % NODES) {
                sim.partition(node_name(node % NODES).as_str(), other.as_str());
            }
            due.entry(now + ms).or_default().push((node % NODES, Recovery::Repair));
        }
        FaultKind::PartitionReplies { node, ms } => {
            for other in others(node % NODES) {
                sim.partition_oneway(node_name(node % NODES).as_str(), other.as_str());
            }
            due.entry(now + ms).or_default().push((node % NODES, Recovery::RepairOneway));
        }
        FaultKind::Delay { node, ms } | FaultKind::Pause { node, ms } => {
            for other in others(node % NODES) {
                sim.hold(node_name(node % NODES).as_str(), other.as_str());
            }
            due.entry(now + ms).or_default().push((node % NODES, Recovery::Release));
        }
        FaultKind::DiskFail { node, ms } | FaultKind::DiskSlow { node, ms, .. } => {
            // The canon has no slow-disk model: a slow fsync is treated as a failing one.
            disks[usize::from(node % NODES)].fail_fsync_until_ms.store(now + ms, Ordering::Relaxed);
        }
        // The canon reads no wall clock; handler panics concern IMVUs.
        FaultKind::ClockJump { .. } | FaultKind::HandlerPanic { .. } => {}
    }
}

fn recover(sim: &mut turmoil::Sim<'_>, node: u8, action: Recovery, sockets: &[Arc<HostSockets>], crashed: &mut [bool], trace: &Trace, now: u64) {
    let name = node_name(node);
    match action {
        Recovery::Restart => {
            if crashed[usize::from(node)] {
                crashed[usize::from(node)] = false;
                bounce(sim, node, sockets);
                trace.record_at(now, format!("restart {name}"));
            }
        }
        Recovery::Repair => others(node).for_each(|o| sim.repair(name.as_str(), o.as_str())),
        Recovery::RepairOneway => others(node).for_each(|o| sim.repair_oneway(name.as_str(), o.as_str())),
        Recovery::Release => others(node).for_each(|o| sim.release(name.as_str(), o.as_str())),
    }
}

/// One host: a canon node, its listener, and (during the fault phase) its clients.
async fn node_main(i: u8, incarnation: u64, disk: Arc<SimDb>, shared: Arc<Shared>, sockets: Arc<HostSockets>, seed: u64) -> Result<(), String> {
    // Outlives this function (a stopped node's tasks linger until the host restarts).
    tokio::task::spawn_local(sockets.closer());
    let mut config = NodeConfig::new(u64::from(i) + 1, REGION, std::path::Path::new("/sim"));
    config.secret = Some(crate::keys::cluster_secret(seed));
    config.info = node_info(i);
    config.incarnation = Some(incarnation);
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 300;
    config.raft.election_timeout_max = 600;
    // The schedule `vcos up` runs, at a small scale: builds and installs happen often.
    config.snapshot_every = Some(vcos_canon_raft::SnapshotEvery { min_writes: 300, state_fraction: 2 });
    config.raft.max_in_snapshot_log_to_keep = 50;
    let disk_for_open = disk.clone();
    config.storage = Some(Arc::new(move |_region: &str| {
        crate::raft_env::open_group_files(&disk_for_open)
    }));
    let node = CanonNode::start(config, Arc::new(SimTransport { sockets: sockets.clone() })).await.map_err(|e| e.to_string())?;
    node.plant_bug_follower_reads_without_read_index(shared.stale_reads_bug);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", RAFT_PORT)).await.map_err(|e| e.to_string())?;
    lock(&shared.nodes).insert(i, node.clone());
    // Accept before anything that may wait on peers (initialising waits for its own log).
    let server = tokio::spawn({
        let node = node.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (node, stream) = (node.clone(), sockets.wrap(stream));
                tokio::spawn(async move { node.serve_connection(Box::new(stream)).await });
            }
        }
    });
    if i == 0 {
        let members = (0..NODES).map(|j| (u64::from(j) + 1, node_info(j))).collect();
        node.bootstrap_with(members).await.map_err(|e| e.to_string())?;
    }
    for c in 0..CLIENTS_PER_NODE {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(i) << 40) ^ (incarnation << 20) ^ u64::from(c));
        tokio::spawn(client(node.clone(), shared.clone(), u64::from(i) * 100 + u64::from(c), rng));
    }
    // Like `vcos up`, a node whose storage failed exits; the plan or the heal restarts it.
    let reason = node.failed().await;
    server.abort();
    node.shutdown().await;
    Err(reason)
}

/// One client: operations one at a time on random keys until the fault phase ends.
async fn client(node: CanonNode, shared: Arc<Shared>, client: u64, mut rng: ChaCha8Rng) {
    while crate::node_env::sim_now_ms() < shared.fault_phase_ms {
        let key = key_name(rng.random_range(0..KEYS));
        let roll = rng.random_range(0..10u32);
        let call = now_us();
        let fresh_value = |shared: &Shared| {
            let value = format!("v{}", shared.next_value.fetch_add(1, Ordering::Relaxed));
            lock(&shared.written).insert(value.clone());
            value
        };
        if roll < 4 {
            let value = fresh_value(&shared);
            let op = Op::Put { key: key.clone().into_bytes(), value: value.clone().into_bytes() };
            let input = KvInput::Put { key: key.clone(), value };
            let index = record(&shared, client, input, call);
            if node.write(REGION, op).await.is_ok() {
                complete(&shared, index, KvOutput::Ok);
            }
        } else if roll < 6 {
            let expected = if rng.random_bool(0.3) { None } else { Some(format!("v{}", rng.random_range(1..shared.next_value.load(Ordering::Relaxed).max(2)))) };
            let new = fresh_value(&shared);
            let op = Op::CompareAndSet { key: key.clone().into_bytes(), expected: expected.clone().map(String::into_bytes), new: Some(new.clone().into_bytes()) };
            let input = KvInput::Cas { key: key.clone(), expected, new: Some(new) };
            let index = record(&shared, client, input, call);
            if let Ok((Response::Cas { success, .. }, _)) = node.write(REGION, op).await {
                complete(&shared, index, KvOutput::CasResult { success });
            }
        } else if roll < 9 {
            // A linearizable read: barrier, then the local replica. A failed read says nothing.
            if node.read_barrier(REGION).await.is_ok() {
                if let Some(value) = node.home().ok().and_then(|group| group.reader().get(key.as_bytes()).ok()) {
                    let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                    let index = record(&shared, client, KvInput::Get { key: key.clone() }, call);
                    complete(&shared, index, KvOutput::Value(value));
                }
            }
        } else if let Ok(group) = node.home() {
            // A stale read: any value it returns must have been written by someone.
            if let Ok(Some(value)) = group.reader().get(key.as_bytes()) {
                let value = String::from_utf8_lossy(&value).into_owned();
                if !lock(&shared.written).contains(&value) {
                    lock(&shared.stale_violations).push(format!("stale read of {key} on client {client} returned {value:?}, never written"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
    }
}

fn record(shared: &Shared, client: u64, input: KvInput, call: u64) -> usize {
    let mut history = lock(&shared.history);
    history.push(Operation { client, input, output: None, call, ret: None });
    history.len() - 1
}

fn complete(shared: &Shared, index: usize, output: KvOutput) {
    let ret = now_us();
    let mut history = lock(&shared.history);
    if let Some(op) = history.get_mut(index) {
        shared.trace.record(format!("c{} {:?} -> {output:?} [{}..{ret}]", op.client, op.input, op.call));
        op.output = Some(output);
        op.ret = Some(ret);
    }
}

/// After the heal: wait for every replica to converge, read every key, check everything.
async fn check(shared: &Shared) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(shared.fault_phase_ms)).await;
    let mut violations = Vec::new();
    let started = crate::node_env::sim_now_ms();
    // Convergence: one leader, and every node applied what it committed.
    let converged = loop {
        let nodes: Vec<CanonNode> = lock(&shared.nodes).values().cloned().collect();
        let states: Vec<Option<(u64, vcos_canon_raft::KvState)>> = nodes
            .iter()
            .map(|n| n.home().ok().map(|g| (g.applied_index(), g.reader().state())).and_then(|(i, s)| s.ok().map(|s| (i, s))))
            .collect();
        let serving = |n: &CanonNode| {
            n.home().is_ok_and(|g| {
                let metrics = g.raft().metrics().borrow().clone();
                metrics.running_state.is_ok() && metrics.state != openraft::ServerState::Shutdown
            })
        };
        let leader = nodes.iter().filter(|n| serving(n)).find(|n| n.home().ok().and_then(|g| g.leader()).is_some_and(|(id, _)| id == n.id()));
        if let Some(leader) = leader.filter(|_| nodes.len() == usize::from(NODES) && nodes.iter().all(serving)) {
            // A leader a quorum acknowledged just now, whose log is all applied, everywhere.
            // (Checked from its metrics: calling into a node from the checker's host would run
            // node code on the checker's runtime and clock.)
            let metrics = leader.home().map(|g| g.raft().metrics().borrow().clone()).ok();
            let confirmed = metrics.as_ref().is_some_and(|m| {
                m.millis_since_quorum_ack.is_some_and(|ms| ms < 200)
                    && m.last_log_index.unwrap_or(0) == m.last_applied.map_or(0, |id| id.index)
            });
            let leader_applied = leader.home().map(|g| g.applied_index()).unwrap_or(0);
            if confirmed && states.iter().all(|s| s.as_ref().is_some_and(|(applied, _)| *applied == leader_applied)) {
                break Some(states);
            }
        }
        if crate::node_env::sim_now_ms() > started + CONVERGE_MS {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some(states) = converged else {
        let nodes: Vec<CanonNode> = lock(&shared.nodes).values().cloned().collect();
        let seen: Vec<String> = nodes
            .iter()
            .map(|n| match n.lag(REGION) {
                Ok(lag) => format!("node {}: {} applied {} leader {:?}", n.id(), lag.role, lag.applied_index, n.home().ok().and_then(|g| g.leader()).map(|l| l.0)),
                Err(e) => format!("node {}: {e}", n.id()),
            })
            .collect();
        // A replica whose state does not read back (its usage counts disagree with its
        // records, say) never converges: say why.
        let unreadable: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.home().ok().and_then(|g| g.reader().state().err()).map(|e| format!("node {}: {e}", n.id())))
            .collect();
        violations.push(format!("replicas did not converge within {CONVERGE_MS} ms of healing: {}{}", seen.join("; "), if unreadable.is_empty() { String::new() } else { format!("; unreadable: {}", unreadable.join("; ")) }));
        return violations;
    };
    let first = states.first().and_then(Option::as_ref).map(|(_, s)| s.clone()).unwrap_or_default();
    for (i, state) in states.iter().enumerate() {
        if state.as_ref().map(|(_, s)| s) != Some(&first) {
            violations.push(format!("replica n{i} holds a different state than n0 after converging"));
        }
    }
    // Final reads, after every operation: part of the history.
    let now = now_us();
    {
        let mut history = lock(&shared.history);
        for k in 0..KEYS {
            let key = key_name(k);
            let value = first.get(key.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
            history.push(Operation { client: u64::MAX, input: KvInput::Get { key }, output: Some(KvOutput::Value(value)), call: now, ret: Some(now + 1) });
        }
    }
    violations.extend(lock(&shared.stale_violations).iter().take(5).cloned());
    let history = lock(&shared.history).clone();
    shared.trace.record(format!("history: {} operations, {} pending", history.len(), history.iter().filter(|o| o.ret.is_none()).count()));
    match linearizability::check(&history, CHECK_STEPS_MAX) {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, ops } => {
            let shown: Vec<String> = ops.iter().rev().take(12).rev().map(|o| format!("{o:?}")).collect();
            violations.push(format!("history of {key} is not linearizable ({} ops; last ones: {})", ops.len(), shown.join("; ")));
        }
        Verdict::Unknown { key, reason } => shared.trace.record(format!("linearizability of {key} unknown: {reason}")),
    }
    violations
}

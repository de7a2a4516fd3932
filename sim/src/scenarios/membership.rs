//! Membership under loss, duplication, reordering, partitions and crashes: 50–200 members
//! running the production driver (`vcos_cluster::spawn`) on turmoil's UDP.
//!
//! The network: turmoil's latency (4–12 ms in 4 ms steps, so datagrams overtake each other) plus a wrapper
//! around each socket ([`FaultySocket`]) that, from an RNG seeded by the run seed, the node
//! and its incarnation, loses 1–5 % of datagrams (the scenario's rate), sends 2 % twice and
//! holds 3 % back for 5–40 ms (reordering). The plan's faults: crash (restart after
//! `down_ms`), partition (node ↔ everyone), one-way partition, hold; clock jumps do nothing
//! (membership reads no wall clock).
//!
//! Measured in simulated time and printed in the summary: **detection** (a crash until every
//! running member sees the crashed identity down), **rejoin** (a restart until every running
//! member sees the new identity alive), and **convergence** (the heal until every view agrees).
//! Checker (liveness phase): within [`LIVENESS_MS`] of the heal, every running member's view
//! lists exactly the running members as alive, each under its current identity.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use vcos_cluster::membership::{MemberState, MembershipConfig, NodeIdentity, NodeMeta, Roles, View};
use vcos_cluster::DatagramSocket;

use crate::plan::{FaultKind, FaultMix, FaultPlan};
use crate::trace::{hash_events, Trace};
use crate::world::{RunOptions, RunReport};

use super::Scenario;

/// The gossip port of every simulated member.
const GOSSIP_PORT: u16 = 7946;
/// How long after the heal every view must agree.
const LIVENESS_MS: u64 = 30_000;
/// The network's step. turmoil visits every link of the world for every host on every step
/// (hosts × links, a full mesh under SWIM): at 1 ms steps that was 60 % of a 50-member
/// run's CPU (`perf`, `Topology::deliver_messages` and its map lookups). SWIM's own times are
/// 100–200 ms probe periods and 40–60 ms probe timeouts, so 4 ms steps with 4–12 ms latency
/// (one to three steps: datagrams still overtake each other, beside the held-back ones) keep
/// every round trip inside a probe timeout and cost a quarter of the steps.
const TICK_MS: u64 = 4;
/// Datagram latency, at least and at most.
const LATENCY_MS: (u64, u64) = (TICK_MS, 3 * TICK_MS);
/// How often the step loop looks at the views (measurement resolution): every other step.
const CHECK_EVERY_MS: u64 = 2 * TICK_MS;
/// How often a hash of every view goes into the trace (what the determinism check compares).
const VIEWS_HASH_EVERY_MS: u64 = 500;
/// Members listed as seeds (the first ones).
const SEEDS: u16 = 3;

/// The membership scenario: `nodes` members, datagram loss per run (fixed, or drawn 1–5 %).
pub struct MembershipScenario {
    /// Name for `vcos sim --scenario`.
    pub name: &'static str,
    /// Members in the world.
    pub nodes: u8,
    /// Loss rate in per mille; `None` draws 10–50 from the seed.
    pub loss_per_mille: Option<u32>,
}

/// 50 members, 1–5 % loss: the default suite's.
pub static MEMBERSHIP: MembershipScenario = MembershipScenario { name: "membership", nodes: 50, loss_per_mille: None };
/// 200 members, 1 % loss: the measurement run.
pub static MEMBERSHIP_200: MembershipScenario = MembershipScenario { name: "membership-200", nodes: 200, loss_per_mille: Some(10) };

impl Scenario for MembershipScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: self.nodes, duration_ms: 12_000, count: 8, imvus: 0, crashes: true, disk: false, network: true, panics: 0, cluster: false }
    }

    fn workload(&self, _ctx: super::WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(async { vec!["the membership scenario runs in its own world".to_owned()] })
    }

    fn run_custom(&self, seed: u64, _options: &RunOptions, plan: FaultPlan) -> Result<RunReport, FaultPlan> {
        Ok(run(self, seed, plan))
    }
}

fn host_name(i: u16) -> String {
    format!("m{i}")
}

/// Datagram faults between the driver and turmoil's socket, from a seeded RNG.
struct FaultySocket {
    inner: Arc<turmoil::net::UdpSocket>,
    rng: Mutex<ChaCha8Rng>,
    loss_per_mille: u32,
}

/// Per mille of datagrams sent twice.
const DUPLICATE_PER_MILLE: u32 = 20;
/// Per mille of datagrams held back (reordered).
const HOLD_PER_MILLE: u32 = 30;

enum Fate {
    Lose,
    Send { copies: u8, hold_ms: u64 },
}

impl FaultySocket {
    fn fate(&self) -> Fate {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.random_range(0..1_000) < self.loss_per_mille {
            return Fate::Lose;
        }
        let copies = if rng.random_range(0..1_000) < DUPLICATE_PER_MILLE { 2 } else { 1 };
        let hold_ms = if rng.random_range(0..1_000) < HOLD_PER_MILLE { rng.random_range(5..40) } else { 0 };
        Fate::Send { copies, hold_ms }
    }
}

impl DatagramSocket for FaultySocket {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send {
        let fate = self.fate();
        let inner = self.inner.clone();
        let datagram = datagram.to_vec();
        async move {
            let Fate::Send { copies, hold_ms } = fate else { return Ok(datagram.len()) };
            if hold_ms > 0 {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                    for _ in 0..copies {
                        let _ = inner.send_to(&datagram, to).await;
                    }
                });
                return Ok(0);
            }
            for _ in 0..copies {
                inner.send_to(&datagram, to).await?;
            }
            Ok(datagram.len())
        }
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.inner.recv_from(buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// What the step loop reads of each member: its current renewal and its view.
#[derive(Default)]
struct Slots {
    views: BTreeMap<u16, (u64, watch::Receiver<Arc<View>>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn member_main(i: u16, nodes: u16, renewal: u64, seed: u64, loss_per_mille: u32, slots: Arc<Mutex<Slots>>) -> Result<(), String> {
    let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", GOSSIP_PORT)).await.map_err(|e| e.to_string())?;
    let gossip_addr = SocketAddr::new(turmoil::lookup(host_name(i).as_str()), GOSSIP_PORT);
    let seeds = (0..SEEDS.min(nodes)).map(|s| SocketAddr::new(turmoil::lookup(host_name(s).as_str()), GOSSIP_PORT)).collect();
    let identity = NodeIdentity {
        node_id: u64::from(i),
        renewal,
        gossip_addr,
        meta: NodeMeta { region: format!("r{}", i % 3), roles: Roles::HOST, http_addr: None, canon_addr: None },
    };
    let node_seed = seed ^ (u64::from(i) << 32) ^ (renewal << 16);
    let mut config = MembershipConfig::lan("sim", identity, seeds, u32::from(nodes), node_seed);
    config.secret = Some(Arc::new(crate::keys::cluster_secret(seed)));
    let rng = Mutex::new(ChaCha8Rng::seed_from_u64(node_seed ^ 0xfa07_50c7));
    let socket = FaultySocket { inner: Arc::new(socket), rng, loss_per_mille };
    let (handle, mut events) = vcos_cluster::spawn(socket, config).map_err(|e| e.to_string())?;
    lock(&slots).views.insert(i, (renewal, handle.view_receiver()));
    // Events are in the view too; drain them so the channel never fills.
    while events.recv().await.is_some() {}
    Ok(())
}

/// One crash (or restart) being timed.
struct Pending {
    node: u16,
    renewal: u64,
    since_ms: u64,
}

fn run(scenario: &MembershipScenario, seed: u64, plan: FaultPlan) -> RunReport {
    let mix = scenario.fault_mix();
    let nodes = u16::from(mix.nodes.max(2));
    let trace = Trace::default();
    let loss_per_mille = scenario.loss_per_mille.unwrap_or_else(|| ChaCha8Rng::seed_from_u64(seed ^ 0x1055).random_range(10..=50));
    trace.record_at(0, format!("{nodes} members, loss {loss_per_mille}‰, duplicates {DUPLICATE_PER_MILLE}‰, held back {HOLD_PER_MILLE}‰"));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(TICK_MS))
        .min_message_latency(Duration::from_millis(LATENCY_MS.0))
        .max_message_latency(Duration::from_millis(LATENCY_MS.1))
        .simulation_duration(Duration::from_secs(3600))
        .build();
    let slots = Arc::new(Mutex::new(Slots::default()));
    let renewals: Vec<Arc<AtomicU64>> = (0..nodes).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for i in 0..nodes {
        let (slots, renewal) = (slots.clone(), renewals[usize::from(i)].clone());
        sim.host(host_name(i).as_str(), move || {
            let slots = slots.clone();
            // A restart comes back with a higher renewal, as `vcos up` does with its start time.
            let renewal = renewal.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                if let Err(e) = member_main(i, nodes, renewal, seed, loss_per_mille, slots).await {
                    tracing::warn!("member {i} exited: {e}");
                }
                Ok(())
            }
        });
    }

    let mut next_fault = 0;
    let mut due: BTreeMap<u64, Vec<(u16, Recovery)>> = BTreeMap::new();
    let mut crashed = vec![false; usize::from(nodes)];
    let mut detections: Vec<Pending> = Vec::new();
    let mut rejoins: Vec<Pending> = Vec::new();
    let (mut detected_ms, mut rejoined_ms, mut undetected) = (Vec::new(), Vec::new(), 0u32);
    let mut healed_at = None;
    let mut converged_ms = None;
    let mut suspicion_noted = false;
    let mut failure = None;
    let mut last_check = 0;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        while let Some(fault) = plan.faults.get(next_fault).filter(|f| f.at_ms <= now && healed_at.is_none()) {
            next_fault += 1;
            trace.record_at(now, format!("fault {}", fault.kind));
            if let FaultKind::Crash { node, .. } = fault.kind {
                let i = u16::from(node) % nodes;
                if !crashed[usize::from(i)] {
                    let renewal = renewals[usize::from(i)].load(Ordering::Relaxed);
                    detections.push(Pending { node: i, renewal, since_ms: now });
                    lock(&slots).views.remove(&i);
                }
            }
            apply(&mut sim, &fault.kind, nodes, now, &mut crashed, &mut due);
        }
        let ready: Vec<u64> = due.range(..=now).map(|(t, _)| *t).collect();
        for t in ready {
            for (node, action) in due.remove(&t).unwrap_or_default() {
                if recover(&mut sim, node, action, nodes, &mut crashed, &trace, now) {
                    // `bounce` ran the host's closure: the counter already holds the new renewal.
                    rejoins.push(Pending { node, renewal: renewals[usize::from(node)].load(Ordering::Relaxed), since_ms: now });
                }
            }
        }
        if healed_at.is_none() && now >= mix.duration_ms {
            healed_at = Some(now);
            trace.record_at(now, "heal: restart crashed members, repair links");
            for (_, actions) in std::mem::take(&mut due) {
                for (node, action) in actions {
                    if recover(&mut sim, node, action, nodes, &mut crashed, &trace, now) {
                        rejoins.push(Pending { node, renewal: renewals[usize::from(node)].load(Ordering::Relaxed), since_ms: now });
                    }
                }
            }
        }
        if now >= last_check + CHECK_EVERY_MS {
            last_check = now;
            let views: BTreeMap<u16, (u64, Arc<View>)> = lock(&slots).views.iter().map(|(i, (r, rx))| (*i, (*r, rx.borrow().clone()))).collect();
            detections.retain(|p| {
                if renewals[usize::from(p.node)].load(Ordering::Relaxed) != p.renewal {
                    undetected += 1; // restarted before everyone noticed
                    return false;
                }
                let seen = views.iter().filter(|(i, _)| **i != p.node).all(|(_, (_, v))| {
                    v.get(u64::from(p.node)).is_none_or(|m| m.identity.renewal > p.renewal || (m.identity.renewal == p.renewal && !m.state.is_active()))
                });
                if seen {
                    detected_ms.push(now - p.since_ms);
                    trace.record_at(now, format!("m{} down everywhere after {} ms", p.node, now - p.since_ms));
                }
                !seen
            });
            rejoins.retain(|p| {
                if crashed[usize::from(p.node)] || renewals[usize::from(p.node)].load(Ordering::Relaxed) != p.renewal {
                    return false; // crashed again before everyone saw it back
                }
                if views.get(&p.node).is_none_or(|(renewal, _)| *renewal != p.renewal) {
                    return true; // still binding its socket
                }
                let seen = views.values().all(|(_, v)| v.get(u64::from(p.node)).is_some_and(|m| m.identity.renewal >= p.renewal && m.state == MemberState::Alive));
                if seen {
                    rejoined_ms.push(now - p.since_ms);
                    trace.record_at(now, format!("m{} back everywhere after {} ms", p.node, now - p.since_ms));
                }
                !seen
            });
            if now % VIEWS_HASH_EVERY_MS < CHECK_EVERY_MS {
                trace.record_at(now, format!("views {:016x}", views_hash(&views)));
            }
            if let Some(healed) = healed_at {
                let running: Vec<u16> = (0..nodes).filter(|i| !crashed[usize::from(*i)]).collect();
                let agreed = running.iter().all(|i| views.contains_key(i)) && agreement(&views, &running).is_none();
                if agreed && converged_ms.is_none() {
                    converged_ms = Some(now - healed);
                    trace.record_at(now, format!("converged {} ms after the heal", now - healed));
                }
                // Stay a little past convergence so late disagreement would show. A live member
                // suspected then (its probes lost to the 1-5 % loss), or renewed because a verdict
                // from before the heal reached it late (seed 2234: partitioned 600 ms before the
                // heal), is SWIM working, not a divergence: the run waits for agreement again,
                // within the liveness bound. Anything else (a running member down or left under
                // its current identity, missing, an extra member) fails at once.
                if converged_ms.is_some_and(|c| now >= healed + c + 2_000) {
                    match agreement(&views, &running) {
                        None => break,
                        Some(problem) if suspicions_only(&views, &running) => {
                            if !suspicion_noted {
                                suspicion_noted = true;
                                trace.record_at(now, format!("news still in transit after converging (a suspicion or a renewal); waiting for agreement again: {problem}"));
                            }
                        }
                        Some(problem) => {
                            failure = Some(format!("views diverged again after converging: {problem}"));
                            break;
                        }
                    }
                }
                if now > healed + LIVENESS_MS {
                    let problem = agreement(&views, &running).unwrap_or_else(|| "a running member has no view".into());
                    failure = Some(format!("views did not converge within {LIVENESS_MS} ms of the heal: {problem}"));
                    break;
                }
            }
        }
        match sim.step() {
            Ok(_) => {}
            Err(e) => {
                failure = Some(format!("simulation error: {e}"));
                break;
            }
        }
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    let stats = |v: &[u64]| match (v.iter().max(), v.len()) {
        (Some(max), n) => format!("{n} measured, mean {} ms, max {max} ms", v.iter().sum::<u64>() / n as u64),
        (None, _) => "none measured".to_owned(),
    };
    trace.record_at(sim_ms, format!("summary: detection (crash → down in every view): {}; {undetected} restarted before detected", stats(&detected_ms)));
    trace.record_at(sim_ms, format!("summary: rejoin (restart → alive in every view): {}", stats(&rejoined_ms)));
    trace.record_at(sim_ms, format!("summary: convergence after the heal: {}", converged_ms.map_or("never".to_owned(), |c| format!("{c} ms"))));
    let mut violations = Vec::new();
    if let Some(failure) = failure {
        trace.record_at(sim_ms, format!("violation: {failure}"));
        violations.push(failure);
    }
    let events = trace.events();
    RunReport { scenario: scenario.name, seed, plan, trace_hash: hash_events(&events), trace: events, violations, sim_ms }
}

/// `None` when every running member's view lists exactly the running members as alive, each
/// under the identity it currently holds; otherwise the first disagreement.
fn agreement(views: &BTreeMap<u16, (u64, Arc<View>)>, running: &[u16]) -> Option<String> {
    // Each member's current renewal is what its own view says (foca renews an identity the
    // cluster declared down, so it may have grown since the process started).
    let expected: BTreeMap<u64, u64> =
        running.iter().filter_map(|i| views.get(i).and_then(|(_, v)| v.get(u64::from(*i))).map(|m| (m.identity.node_id, m.identity.renewal))).collect();
    for i in running {
        let Some((_, view)) = views.get(i) else { return Some(format!("m{i} has no view")) };
        let alive: BTreeMap<u64, u64> = view.members.iter().filter(|(_, m)| m.state == MemberState::Alive).map(|(id, m)| (*id, m.identity.renewal)).collect();
        if alive != expected {
            let missing: Vec<&u64> = expected.keys().filter(|k| alive.get(k) != expected.get(k)).collect();
            let extra: Vec<&u64> = alive.keys().filter(|k| !expected.contains_key(k)).collect();
            let detail: Vec<String> = missing
                .iter()
                .take(3)
                .map(|k| {
                    let seen = view.get(**k).map_or("unknown".to_owned(), |m| format!("{}@{}", m.state.as_str(), m.identity.renewal));
                    format!("m{k}: {seen}, holds @{}", expected.get(k).copied().unwrap_or(0))
                })
                .collect();
            return Some(format!("m{i} sees {} alive (wrong or missing: {missing:?} [{}], extra: {extra:?})", alive.len(), detail.join("; ")));
        }
    }
    None
}

/// Whether every disagreement is news still in transit: a running member seen suspect under
/// its current identity (a suspicion it can still refute), or seen under an older identity (it
/// renewed after a partition's verdict reached it, and the renewal is still spreading).
fn suspicions_only(views: &BTreeMap<u16, (u64, Arc<View>)>, running: &[u16]) -> bool {
    let expected: BTreeMap<u64, u64> =
        running.iter().filter_map(|i| views.get(i).and_then(|(_, v)| v.get(u64::from(*i))).map(|m| (m.identity.node_id, m.identity.renewal))).collect();
    running.iter().all(|i| {
        views.get(i).is_some_and(|(_, view)| {
            let extra = view.members.iter().any(|(id, m)| m.state == MemberState::Alive && !expected.contains_key(id));
            !extra
                && expected.iter().all(|(id, renewal)| {
                    view.get(*id).is_some_and(|m| {
                        m.identity.renewal < *renewal || (m.identity.renewal == *renewal && matches!(m.state, MemberState::Alive | MemberState::Suspect))
                    })
                })
        })
    })
}

fn views_hash(views: &BTreeMap<u16, (u64, Arc<View>)>) -> u64 {
    let lines: Vec<String> = views
        .iter()
        .map(|(i, (r, v))| {
            let members: Vec<String> = v.members.iter().map(|(id, m)| format!("{id}:{}:{}:{}", m.identity.renewal, m.state.as_str(), m.incarnation)).collect();
            format!("m{i}@{r} {}", members.join(","))
        })
        .collect();
    hash_events(&lines)
}

#[derive(Clone, Copy, Debug)]
enum Recovery {
    Restart,
    Repair,
    RepairOneway,
    Release,
}

fn others(node: u16, nodes: u16) -> impl Iterator<Item = String> {
    (0..nodes).filter(move |j| *j != node).map(host_name)
}

fn apply(sim: &mut turmoil::Sim<'_>, fault: &FaultKind, nodes: u16, now: u64, crashed: &mut [bool], due: &mut BTreeMap<u64, Vec<(u16, Recovery)>>) {
    let pick = |node: u8| u16::from(node) % nodes;
    match *fault {
        FaultKind::Crash { node, down_ms } => {
            let i = pick(node);
            if !crashed[usize::from(i)] {
                crashed[usize::from(i)] = true;
                sim.crash(host_name(i).as_str());
                due.entry(now + down_ms).or_default().push((i, Recovery::Restart));
            }
        }
        // Every member is a node: isolating one is partitioning it.
        FaultKind::Partition { node, ms } | FaultKind::Isolate { node, ms } => {
            let i = pick(node);
            others(i, nodes).for_each(|o| sim.partition(host_name(i).as_str(), o.as_str()));
            due.entry(now + ms).or_default().push((i, Recovery::Repair));
        }
        FaultKind::PartitionReplies { node, ms } => {
            let i = pick(node);
            others(i, nodes).for_each(|o| sim.partition_oneway(host_name(i).as_str(), o.as_str()));
            due.entry(now + ms).or_default().push((i, Recovery::RepairOneway));
        }
        FaultKind::Delay { node, ms } | FaultKind::Pause { node, ms } => {
            let i = pick(node);
            others(i, nodes).for_each(|o| sim.hold(host_name(i).as_str(), o.as_str()));
            due.entry(now + ms).or_default().push((i, Recovery::Release));
        }
        // Membership reads no wall clock and has no disk; handler panics concern IMVUs.
        FaultKind::ClockJump { .. } | FaultKind::DiskFail { .. } | FaultKind::DiskSlow { .. } | FaultKind::HandlerPanic { .. } => {}
    }
}

/// Applies a recovery; returns whether it restarted a crashed member.
fn recover(sim: &mut turmoil::Sim<'_>, node: u16, action: Recovery, nodes: u16, crashed: &mut [bool], trace: &Trace, now: u64) -> bool {
    let name = host_name(node);
    match action {
        Recovery::Restart => {
            if crashed[usize::from(node)] {
                crashed[usize::from(node)] = false;
                sim.bounce(name.as_str());
                trace.record_at(now, format!("restart {name}"));
                return true;
            }
        }
        Recovery::Repair => others(node, nodes).for_each(|o| sim.repair(name.as_str(), o.as_str())),
        Recovery::RepairOneway => others(node, nodes).for_each(|o| sim.repair_oneway(name.as_str(), o.as_str())),
        Recovery::Release => others(node, nodes).for_each(|o| sim.release(name.as_str(), o.as_str())),
    }
    false
}

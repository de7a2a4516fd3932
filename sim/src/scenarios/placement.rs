//! Placement: three `vcos up` nodes (Raft canon, SWIM membership, bucket leases, forwarding)
//! while clients message IMVUs through random nodes, and nodes crash, are isolated from the
//! others (clients still reach them), are paused as by SIGSTOP (clock stopped, traffic held,
//! then released) and lose client links. (Failing disks stop a canon node until the heal;
//! `durability-raft` covers them.)
//!
//! The workload: counters (`add`, `get`), tallies (a counter kept in memory, answered without
//! a commit) and relays (each asks its own counter to `add`, across nodes, and keeps the
//! answers), driven by six concurrent clients.
//!
//! Checkers, after healing:
//! - **at most one activation commits**: the IMVU commits the canon applied, in log order,
//!   all carry a fence, their epochs never go back, and one epoch is one node's;
//! - **at most one activation answers**: no tally answers from memory under an epoch after a
//!   newer epoch of its bucket was committed (simulated time is global);
//! - **exactly once**: each counter's final total lies between the adds known applied
//!   (acknowledged to the client, or answered `Ok` to its relay) and those plus the adds whose
//!   outcome is unknown; no acknowledged add is lost;
//! - **one answer per add**: acknowledged totals of a counter are all different (two
//!   activations applying adds from the same state give the same total twice);
//! - **reads are current**: a `get` returns at least every total acknowledged before it began;
//! - **asks answered at most once**: a relay never holds two answers for one correlation;
//! - **swarms credit exactly once**: clients also submit work to a swarm of text workers
//!   through random nodes; every credit the canon applied is for a distinct item and carries a
//!   fence, and after the heal every acknowledged item is done and credited (the coordinator
//!   moves with its bucket and is started from canon by the holder).
//!
//! Planted bugs it catches: `skip-lease-check` (activation without a lease check) and
//! `ignore-lease-expiry` (serving after the lease lapsed).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::{key_of, Scenario, WorkloadCtx};
use crate::cluster_env::{ClaimSeen, CommitSeen, ServedSeen};
use crate::net::Response;
use crate::plan::FaultMix;
use crate::world::WorldStore;

/// The placement scenario.
pub struct PlacementScenario;

const COUNTERS: usize = 4;
const TALLIES: usize = 12;
/// Relay `r` asks counter `r`.
const RELAYS: usize = 2;
const CLIENTS: usize = 6;
/// How long a client waits for an answer during the fault phase (then it moves on: the
/// outcome is unknown).
const CLIENT_DEADLINE_MS: u64 = 1_000;
/// Settling after the heal: restarted nodes wait out their old leases, buckets move back.
const SETTLE_MS: u64 = 6_000;
/// Asks between IMVUs still in flight at the heal end within this (the router's own
/// deadlines: owner wait 3 s, forward 5 s).
const ASKS_DRAIN_MS: u64 = 12_000;

impl Scenario for PlacementScenario {
    fn name(&self) -> &'static str {
        "placement"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 3, duration_ms: 10_000, count: 10, imvus: 0, crashes: true, disk: false, network: true, panics: 0, cluster: true }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }

    fn store(&self) -> WorldStore {
        WorldStore::Cluster
    }
}

/// One `add` or `get` on a counter, as the client saw it.
#[derive(Clone, Debug)]
struct CounterOp {
    counter: usize,
    start_ms: u64,
    end_ms: u64,
    /// `Some(total)` when acknowledged.
    total: Option<i64>,
    add: bool,
}

#[derive(Default)]
struct History {
    ops: Vec<CounterOp>,
    /// Relay asks sent, per relay (acknowledged or not: an unacknowledged one may have gone).
    relay_sent: BTreeMap<usize, u64>,
    /// Swarm items whose submission was acknowledged.
    items: BTreeSet<u64>,
}

struct Imvus {
    counters: Vec<u64>,
    tallies: Vec<u64>,
    relays: Vec<u64>,
    swarm: u64,
}

async fn create(ctx: &WorkloadCtx, kind: &str, i: usize) -> Option<u64> {
    let node = &ctx.nodes[i % ctx.nodes.len()];
    let created = ctx.call_until(node, "POST", "/v1/tenants/default/imvus", Some(json!({ "kind": kind })), &[]).await?;
    let key = key_of(created.ok()?)?;
    ctx.register(key);
    Some(key.id.0)
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    // Through each node in turn (faults start at once: a node may be paused or cut off).
    let swarm_spec = json!({"member_kind": "text-worker", "members": SWARM_MEMBERS});
    let mut swarm = None;
    for attempt in 0..SETUP_ATTEMPTS_MAX {
        let node = &ctx.nodes[attempt % ctx.nodes.len()];
        let created = ctx.call(node, "POST", "/v1/tenants/default/swarms", Some(swarm_spec.clone())).await;
        swarm = created.ok().and_then(|b| b["key"]["id"].as_u64());
        if swarm.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(super::RETRY_PAUSE_MS)).await;
    }
    let Some(swarm) = swarm else {
        return vec!["setup: the swarm was never created".into()];
    };
    let mut ids = Imvus { counters: Vec::new(), tallies: Vec::new(), relays: Vec::new(), swarm };
    for i in 0..COUNTERS + TALLIES + RELAYS {
        let kind = if i < COUNTERS { "counter" } else if i < COUNTERS + TALLIES { "tally" } else { "relay" };
        let Some(id) = create(&ctx, kind, i).await else {
            return vec![format!("setup: {kind} never created")];
        };
        match kind {
            "counter" => ids.counters.push(id),
            "tally" => ids.tallies.push(id),
            _ => ids.relays.push(id),
        }
    }
    let history = RefCell::new(History::default());
    let mut rng = ctx.rng();
    let seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.random()).collect();
    // Six clients at once (joined in one task: polled in a fixed order, deterministic).
    let clients = seeds.iter().map(|&seed| client(&ctx, &ids, &history, seed));
    futures_join_all(clients).await;
    ctx.wait_for_heal(SETTLE_MS).await;
    tokio::time::sleep(Duration::from_millis(ASKS_DRAIN_MS.saturating_sub(SETTLE_MS))).await;
    check(&ctx, &ids, &history.into_inner()).await
}

/// Polls every future to completion, in order on each wake-up (no external crate needed).
async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
}

fn messages(id: u64) -> String {
    format!("/v1/tenants/default/imvus/{id}/messages")
}

async fn client(ctx: &WorkloadCtx, ids: &Imvus, history: &RefCell<History>, seed: u64) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    while ctx.now_ms() < ctx.fault_phase_ms {
        let node = &ctx.nodes[rng.random_range(0..ctx.nodes.len())];
        let roll = rng.random_range(0..100);
        if roll < 50 {
            let counter = rng.random_range(0..COUNTERS);
            let add = roll < 35;
            let message = if add { json!({"op": "add", "n": 1}) } else { json!({"op": "get"}) };
            let start_ms = ctx.now_ms();
            let response = ctx.call_within(node, "POST", &messages(ids.counters[counter]), Some(json!({ "message": message })), CLIENT_DEADLINE_MS).await;
            let total = response.ok().and_then(|b| b["reply"].as_i64());
            history.borrow_mut().ops.push(CounterOp { counter, start_ms, end_ms: ctx.now_ms(), total, add });
        } else if roll < 58 {
            let text = format!("item {}", rng.random::<u32>());
            let work = json!({"items": [{"op": "upper", "text": text}]});
            let response = ctx.call_within(node, "POST", &format!("/v1/tenants/default/swarms/{}/work", ids.swarm), Some(work), CLIENT_DEADLINE_MS).await;
            let acked = response.ok().and_then(|b| b["item_ids"].as_array().cloned()).unwrap_or_default();
            history.borrow_mut().items.extend(acked.iter().filter_map(serde_json::Value::as_u64));
        } else if roll < 85 {
            let tally = ids.tallies[rng.random_range(0..TALLIES)];
            ctx.call_within(node, "POST", &messages(tally), Some(json!({"message": {"op": "add", "n": 1}})), CLIENT_DEADLINE_MS).await;
        } else {
            let relay = rng.random_range(0..RELAYS);
            *history.borrow_mut().relay_sent.entry(relay).or_default() += 1;
            let ask = json!({"message": {"op": "ask", "to": ids.counters[relay], "message": {"op": "add", "n": 1}}});
            ctx.call_within(node, "POST", &messages(ids.relays[relay]), Some(ask), CLIENT_DEADLINE_MS).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

async fn check(ctx: &WorkloadCtx, ids: &Imvus, history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let (commits, served) = (ctx.observations.commits(), ctx.observations.served());
    let epochs: BTreeSet<(vcos_actors::ImvuKey, Option<u64>)> = served.iter().map(|s| (s.key, s.epoch)).collect();
    ctx.trace.record(format!(
        "observed {} IMVU commits, {} answers from memory under {} (IMVU, epoch) pairs",
        commits.len(),
        served.len(),
        epochs.len()
    ));
    violations.extend(check_commits(&commits));
    violations.extend(check_served(&served, &ctx.observations.claims()));
    violations.extend(check_swarm(ctx, ids.swarm, &history.items).await);
    // Relays' answers: per relay, correlation → totals answered `Ok`.
    let mut relay_totals: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (r, relay) in ids.relays.iter().enumerate() {
        let Some(answers) = call_within(ctx, r, &messages(*relay), json!({"message": {"op": "answers"}})).await else {
            violations.push(format!("liveness: relay {relay} unreadable through {} after heal", ctx.nodes[r % ctx.nodes.len()]));
            continue;
        };
        let answers = answers.ok().and_then(|b| b["reply"].as_array().cloned()).unwrap_or_default();
        let mut seen = BTreeSet::new();
        for answer in &answers {
            let correlation = answer["correlation"].as_u64().unwrap_or(0);
            if !seen.insert(correlation) {
                violations.push(format!("relay {relay}: ask {correlation} answered twice"));
            }
            if let Some(total) = answer["reply"]["Ok"].as_i64() {
                relay_totals.entry(r).or_default().push(total);
            }
        }
    }
    for (c, counter) in ids.counters.iter().enumerate() {
        // Every node reaches every counter, and they all read the same total.
        let mut totals = BTreeSet::new();
        for node in 0..ctx.nodes.len() {
            let response = call_within(ctx, node, &messages(*counter), json!({"message": {"op": "get"}})).await;
            match response.as_ref().and_then(Response::ok).and_then(|b| b["reply"].as_i64()) {
                Some(total) => {
                    totals.insert(total);
                }
                None => violations.push(format!("liveness: counter {counter} unreadable through {} after heal", ctx.nodes[node])),
            }
        }
        if totals.len() > 1 {
            violations.push(format!("counter {counter} read different totals through different nodes after heal: {totals:?}"));
        }
        let Some(&total) = totals.iter().next_back() else { continue };
        let ops: Vec<&CounterOp> = history.ops.iter().filter(|op| op.counter == c).collect();
        violations.extend(check_counter(*counter, total, &ops, relay_totals.get(&c).map_or(&[][..], Vec::as_slice), history.relay_sent.get(&c).copied().unwrap_or(0)));
    }
    violations
}

/// Tries at creating the swarm, through the nodes in turn.
const SETUP_ATTEMPTS_MAX: usize = 200;

/// Text workers in the scenario's swarm.
const SWARM_MEMBERS: u32 = 3;

/// Credits applied once per item, each under a fence; after the heal every acknowledged item
/// done and credited.
async fn check_swarm(ctx: &WorkloadCtx, swarm: u64, acked: &BTreeSet<u64>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut credited: BTreeMap<String, (u8, Option<u64>)> = BTreeMap::new();
    for credit in ctx.observations.credits() {
        if credit.epoch.is_none() {
            violations.push(format!("unfenced swarm credit {} by node {}", credit.key, credit.node));
        }
        if let Some((node, epoch)) = credited.insert(credit.key.clone(), (credit.node, credit.epoch)) {
            violations.push(format!(
                "swarm credit {} applied twice: by node {node} under epoch {epoch:?}, then by node {} under epoch {:?}",
                credit.key, credit.node, credit.epoch
            ));
        }
    }
    // Every node reaches the swarm; its open items drain.
    let path = format!("/v1/tenants/default/swarms/{swarm}");
    let until = ctx.now_ms() + CHECK_WITHIN_MS;
    let mut drained = false;
    while ctx.now_ms() < until && !drained {
        let node = &ctx.nodes[(ctx.now_ms() / 100) as usize % ctx.nodes.len()];
        let response = ctx.call(node, "GET", &path, None).await;
        drained = response.ok().is_some_and(|b| b["progress"]["pending"] == 0 && b["progress"]["in_flight"] == 0);
        if !drained {
            tokio::time::sleep(Duration::from_millis(super::RETRY_PAUSE_MS)).await;
        }
    }
    if !drained {
        violations.push(format!("liveness: swarm {swarm} still had open items {CHECK_WITHIN_MS} ms after the heal"));
        return violations;
    }
    let response = ctx.call(&ctx.nodes[0], "GET", &format!("{path}/credits"), None).await;
    let Some(credits) = response.ok().and_then(|b| b["credits"].as_array().cloned()) else {
        violations.push(format!("liveness: swarm {swarm}'s credits unreadable after the heal"));
        return violations;
    };
    let done: BTreeSet<u64> = credits.iter().filter_map(|c| c["item"].as_u64()).collect();
    let missing: Vec<&u64> = acked.difference(&done).take(VIOLATIONS_PER_CHECK_MAX).collect();
    if !missing.is_empty() {
        violations.push(format!("swarm {swarm}: acknowledged items never credited: {missing:?}"));
    }
    ctx.trace.record(format!("swarm {swarm}: {} items acknowledged, {} credited, {} credit commits", acked.len(), done.len(), credited.len()));
    violations
}

/// Posts `body` to `path` through `node` until a 2xx, for at most [`CHECK_WITHIN_MS`]: after
/// the heal every node must reach every IMVU (forwarding to its owner).
async fn call_within(ctx: &WorkloadCtx, node: usize, path: &str, body: serde_json::Value) -> Option<Response> {
    let until = ctx.now_ms() + CHECK_WITHIN_MS;
    let node = &ctx.nodes[node % ctx.nodes.len()];
    while ctx.now_ms() < until {
        let response = ctx.call(node, "POST", path, Some(body.clone())).await;
        if response.ok().is_some() {
            return Some(response);
        }
        tokio::time::sleep(Duration::from_millis(super::RETRY_PAUSE_MS)).await;
    }
    None
}

/// How long a check may take to reach an IMVU after the heal settled.
const CHECK_WITHIN_MS: u64 = 20_000;

/// Exactly once, one answer per add, current reads: see the module docs.
fn check_counter(counter: u64, total: i64, ops: &[&CounterOp], relay_totals: &[i64], relay_sent: u64) -> Vec<String> {
    let mut violations = Vec::new();
    let adds_acked = ops.iter().filter(|op| op.add && op.total.is_some()).count() as i64;
    let adds_unknown = ops.iter().filter(|op| op.add && op.total.is_none()).count() as i64;
    let relayed_ok = relay_totals.len() as i64;
    let relayed_unknown = i64::try_from(relay_sent).unwrap_or(i64::MAX).saturating_sub(relayed_ok).max(0);
    let applied = adds_acked + relayed_ok;
    if total < applied {
        violations.push(format!("lost adds: counter {counter} totals {total}, but {applied} adds were acknowledged"));
    }
    if total > applied + adds_unknown + relayed_unknown {
        violations.push(format!(
            "adds applied twice: counter {counter} totals {total}, above {applied} acknowledged + {} of unknown outcome",
            adds_unknown + relayed_unknown
        ));
    }
    let mut totals: BTreeMap<i64, u32> = BTreeMap::new();
    for t in ops.iter().filter(|op| op.add).filter_map(|op| op.total).chain(relay_totals.iter().copied()) {
        *totals.entry(t).or_default() += 1;
    }
    for (t, n) in &totals {
        if *n > 1 {
            violations.push(format!("two activations: counter {counter} acknowledged the total {t} to {n} different adds"));
        }
        if *t > total {
            violations.push(format!("counter {counter} acknowledged the total {t}, above its final {total}"));
        }
    }
    // Reads: at least every total acknowledged before the read began.
    let mut done: Vec<(u64, i64)> = ops.iter().filter_map(|op| op.total.map(|t| (op.end_ms, t))).collect();
    done.sort_unstable();
    for read in ops.iter().filter(|op| !op.add) {
        let Some(seen) = read.total else { continue };
        let floor = done.iter().take_while(|(end, _)| *end < read.start_ms).map(|(_, t)| *t).max().unwrap_or(0);
        if seen < floor {
            violations.push(format!(
                "stale read: counter {counter} answered {seen} to a get begun at {} ms, after {floor} was acknowledged",
                read.start_ms
            ));
        }
    }
    violations.truncate(VIOLATIONS_PER_CHECK_MAX);
    violations
}

/// Violations reported per checker and IMVU (the first ones tell the story).
const VIOLATIONS_PER_CHECK_MAX: usize = 5;

/// At most one activation commits: see the module docs.
fn check_commits(commits: &[CommitSeen]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_imvu: BTreeMap<&str, Vec<&CommitSeen>> = BTreeMap::new();
    for commit in commits {
        by_imvu.entry(commit.imvu.as_str()).or_default().push(commit);
    }
    for (imvu, mut commits) in by_imvu {
        commits.sort_by_key(|c| c.index);
        let mut found = Vec::new();
        let mut last: Option<&CommitSeen> = None;
        let mut epoch_node: BTreeMap<u64, u8> = BTreeMap::new();
        for commit in commits {
            let Some(epoch) = commit.epoch else {
                found.push(format!("unfenced commit: {imvu} at index {} by n{} carried no lease epoch", commit.index, commit.node));
                continue;
            };
            if let Some(node) = epoch_node.insert(epoch, commit.node).filter(|n| *n != commit.node) {
                found.push(format!("two activations: {imvu} committed under epoch {epoch} by n{node} and n{}", commit.node));
            }
            if let Some(prev) = last.filter(|p| p.epoch.is_some_and(|e| e > epoch)) {
                found.push(format!(
                    "stale activation: {imvu} committed under epoch {epoch} by n{} at index {} after epoch {:?} by n{} at index {}",
                    commit.node, commit.index, prev.epoch, prev.node, prev.index
                ));
            }
            last = Some(commit);
        }
        found.truncate(VIOLATIONS_PER_CHECK_MAX);
        violations.extend(found);
    }
    violations
}

/// At most one activation answers from memory: no answer under an epoch once a newer epoch
/// of its bucket was committed (the claim's commit is seen by the claimer, so the time
/// recorded is no earlier than the commit itself).
fn check_served(served: &[ServedSeen], claims: &[ClaimSeen]) -> Vec<String> {
    let mut violations = Vec::new();
    for answer in served {
        let Some(epoch) = answer.epoch else {
            violations.push(format!("unfenced answer: {} answered at {} ms without a lease", answer.key, answer.at_ms));
            continue;
        };
        let bucket = vcos_cluster::placement::bucket_of(answer.key.tenant.as_str(), answer.key.id.0);
        if let Some(claim) = claims.iter().find(|c| c.bucket == bucket && c.epoch > epoch && c.at_ms < answer.at_ms) {
            violations.push(format!(
                "two activations: {} answered under epoch {epoch} at {} ms, after its bucket {bucket} was claimed under epoch {} at {} ms",
                answer.key, answer.at_ms, claim.epoch, claim.at_ms
            ));
        }
    }
    violations.truncate(VIOLATIONS_PER_CHECK_MAX * 4);
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(index: u64, node: u8, epoch: Option<u64>) -> CommitSeen {
        CommitSeen { index, node, imvu: "t/default/imvu/1/".into(), epoch }
    }

    #[test]
    fn commit_checker_wants_fenced_rising_epochs_of_one_node_each() {
        assert!(check_commits(&[commit(1, 0, Some(1)), commit(3, 0, Some(1)), commit(2, 1, Some(2))]).len() == 1, "epoch went back");
        assert!(check_commits(&[commit(1, 0, Some(1)), commit(2, 1, Some(1))])[0].contains("two activations"));
        assert!(check_commits(&[commit(1, 0, None)])[0].contains("unfenced"));
        assert!(check_commits(&[commit(1, 0, Some(1)), commit(2, 1, Some(2)), commit(3, 1, Some(2))]).is_empty());
    }

    #[test]
    fn counter_checker_finds_lost_duplicated_and_stale() {
        let op = |start_ms, end_ms, total, add| CounterOp { counter: 0, start_ms, end_ms, total, add };
        let (a, b, c) = (op(0, 5, Some(1), true), op(6, 9, Some(2), true), op(10, 12, Some(1), false));
        let found = check_counter(7, 2, &[&a, &b, &c], &[], 0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("stale read"));
        let dup = op(6, 9, Some(1), true);
        assert!(check_counter(7, 2, &[&a, &dup], &[], 0).iter().any(|v| v.contains("two activations")));
        assert!(check_counter(7, 1, &[&a, &b], &[], 0).iter().any(|v| v.contains("lost adds")));
        assert!(check_counter(7, 3, &[&a, &b], &[], 0).iter().any(|v| v.contains("applied twice")));
        assert!(check_counter(7, 3, &[&a, &b], &[3], 1).is_empty());
    }
}

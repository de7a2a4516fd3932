//! Workflows: three `vcos up` nodes (Raft canon, SWIM membership, bucket leases) run workflows
//! of random shapes (sequences, branches, fan-out and fan-in, sub-workflows, sleeps, signals,
//! sagas that fail and compensate) over counters, while nodes crash, are cut off, paused and
//! their clocks jump.
//!
//! The workload draws three definitions from the seed, uploads them, creates workflow
//! instances through random nodes and starts them (both idempotent: an unanswered request is
//! sent again, so every instance is known), signals them now and then, and after the heal waits
//! for all of them to end.
//!
//! Checkers, after healing:
//! - **none stuck**: every instance ends (completed, compensated, dead-lettered, cancelled);
//! - **each step's effect applied exactly once**: each counter's total equals the sum of the
//!   `add`s that the journals of every instance (children included) hold as done;
//! - **timers never fire early**: every sleep step lasted at least its time, as the nodes'
//!   wall clocks measure it (less the plan's clock jumps: a step may start and end on two nodes
//!   whose clocks disagree by that much);
//! - **compensations exactly when needed, in reverse order**: an instance ends `compensated`
//!   only after a step failed, and its compensations ran once each, for done steps only, in the
//!   reverse of those steps' order within their scope.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::{Scenario, WorkloadCtx};
use crate::plan::FaultMix;
use crate::world::WorldStore;

/// The workflows scenario.
pub struct WorkflowsScenario;

const COUNTERS: usize = 3;
const DEFINITIONS: usize = 3;
const INSTANCES: usize = 10;
/// A request during the fault phase is given up after this (its outcome is then unknown).
const CLIENT_DEADLINE_MS: u64 = 1_500;
/// After the heal, instances have this long to end.
const FINISH_MS: u64 = 40_000;
const ATTEMPTS_MAX: usize = 60;

impl Scenario for WorkflowsScenario {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 3, duration_ms: 8_000, count: 8, imvus: 0, crashes: true, disk: false, network: true, panics: 0, cluster: true }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }

    fn store(&self) -> WorldStore {
        WorldStore::Cluster
    }
}

/// What the workload knows of each step it put in a definition.
#[derive(Clone, Debug)]
enum Planned {
    /// `add n` to counter `counter` (a compensation is one too).
    Add { counter: usize, n: i64 },
    /// Sleep at least `ms`.
    Sleep { ms: u64 },
}

/// Draws definitions: step ids are unique across all of them, and `planned` says what each
/// `add` or sleep is.
struct Drafter<'a> {
    rng: &'a mut ChaCha8Rng,
    counters: &'a [u64],
    planned: BTreeMap<String, Planned>,
    next: u32,
}

impl Drafter<'_> {
    fn id(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}{}", self.next)
    }

    fn add(&mut self, compensated: bool) -> Value {
        let counter = self.rng.random_range(0..self.counters.len());
        let n = self.rng.random_range(1..10i64);
        let id = self.id("add");
        self.planned.insert(id.clone(), Planned::Add { counter, n });
        let mut step = json!({"id": id, "call": {"imvu": self.counters[counter], "message": {"op": "add", "n": n}}, "timeout_ms": 2_000,
            "retry": {"max_attempts": 20, "initial_interval_ms": 100, "max_interval_ms": 1_000}});
        if compensated {
            let undo = self.id("undo");
            self.planned.insert(undo.clone(), Planned::Add { counter, n: -n });
            step["compensate"] = json!({"id": undo, "call": {"imvu": self.counters[counter], "message": {"op": "add", "n": -n}}, "timeout_ms": 2_000,
                "retry": {"max_attempts": 20, "initial_interval_ms": 100, "max_interval_ms": 1_000}});
        }
        step
    }

    fn steps(&mut self, depth: u32, saga: bool) -> Vec<Value> {
        let count = if depth == 0 { self.rng.random_range(3..7) } else { self.rng.random_range(1..4) };
        let mut steps = Vec::new();
        for _ in 0..count {
            let roll = self.rng.random_range(0..10);
            let step = match roll {
                0..=3 => self.add(saga),
                4 | 5 => {
                    let ms = self.rng.random_range(50..1_500);
                    let id = self.id("nap");
                    self.planned.insert(id.clone(), Planned::Sleep { ms });
                    json!({"id": id, "sleep_ms": ms})
                }
                6 if depth < 2 => {
                    let branches: Vec<Value> = (0..self.rng.random_range(2..4)).map(|_| Value::Array(self.steps(depth + 1, saga))).collect();
                    json!({"id": self.id("fan"), "parallel": {"branches": branches}})
                }
                7 if depth < 2 => {
                    let (then, otherwise) = (self.steps(depth + 1, saga), self.steps(depth + 1, saga));
                    json!({"id": self.id("branch"), "if": "${input.flag == true}", "then": then, "else": otherwise})
                }
                8 => json!({"id": self.id("wait"), "wait": {"signal": "go", "timeout_ms": self.rng.random_range(200..1_500)}}),
                9 if depth < 1 => json!({"id": self.id("child"), "workflow": {"name": "wf-child", "input": "${input}"}}),
                _ => self.add(saga),
            };
            steps.push(step);
        }
        steps
    }
}

/// Sends until a 2xx (or one of `accept`) comes, through each node in turn.
async fn until_ok(ctx: &WorkloadCtx, method: &str, path: &str, body: Option<Value>, accept: &[u16]) -> Option<Value> {
    for attempt in 0..ATTEMPTS_MAX {
        let node = &ctx.nodes[attempt % ctx.nodes.len()];
        let response = ctx.call_within(node, method, path, body.clone(), CLIENT_DEADLINE_MS).await;
        if let Some(body) = response.ok() {
            return Some(body.clone());
        }
        if response.status().is_some_and(|s| accept.contains(&s)) {
            return Some(Value::Null);
        }
        tokio::time::sleep(Duration::from_millis(super::RETRY_PAUSE_MS)).await;
    }
    None
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    let mut rng = ctx.rng();
    let mut counters = Vec::new();
    for _ in 0..COUNTERS {
        let Some(created) = until_ok(&ctx, "POST", "/v1/tenants/default/imvus", Some(json!({"kind": "counter"})), &[]).await else {
            return vec!["setup: a counter was never created".into()];
        };
        let Some(id) = created["key"]["id"].as_u64() else { return vec![format!("setup: no counter id in {created}")] };
        counters.push(id);
    }
    let mut drafter = Drafter { rng: &mut rng, counters: &counters, planned: BTreeMap::new(), next: 0 };
    // The child first (the others name it), then the top-level definitions; one in two is a
    // saga whose last step fails.
    let mut definitions = Vec::new();
    let child = json!({"steps": drafter.steps(2, false)});
    definitions.push(("wf-child".to_owned(), child));
    for d in 0..DEFINITIONS {
        let saga = drafter.rng.random_bool(0.5);
        let mut steps = drafter.steps(0, saga);
        if saga {
            steps.push(json!({"id": drafter.id("doom"), "activity": {"name": "fail", "input": {"message": "planned failure"}}, "retry": {"max_attempts": 2, "initial_interval_ms": 50}}));
        }
        definitions.push((format!("wf-{d}"), json!({"steps": steps})));
    }
    let planned = drafter.planned;
    let mut programs = Vec::new();
    for (name, body) in &definitions {
        let path = format!("/v1/tenants/default/workflow-definitions/{name}");
        let Some(stored) = until_ok(&ctx, "PUT", &path, Some(body.clone()), &[]).await else {
            return vec![format!("setup: definition {name} never stored")];
        };
        programs.push((name.clone(), stored));
    }
    let child_definition = programs[0].1["definition"].clone();
    let library = json!({"wf-child": [programs[0].1["version"], child_definition]});

    // Instances: created, then started (both idempotent), through random nodes.
    let mut instances: Vec<u64> = Vec::new();
    for i in 0..INSTANCES {
        let Some(created) = until_ok(&ctx, "POST", "/v1/tenants/default/imvus", Some(json!({"kind": "workflow"})), &[]).await else {
            return vec!["setup: a workflow instance was never created".into()];
        };
        let Some(id) = created["key"]["id"].as_u64() else { return vec![format!("setup: no id in {created}")] };
        let (_, stored) = &programs[1 + i % DEFINITIONS];
        let program = json!({"type": "definition", "definition": stored["definition"], "version": stored["version"], "library": library});
        let start = json!({"message": {"op": "start", "program": program, "input": {"flag": i % 2 == 0}}});
        if until_ok(&ctx, "POST", &format!("/v1/tenants/default/imvus/{id}/messages"), Some(start), &[]).await.is_none() {
            return vec![format!("setup: workflow {id} never started")];
        }
        instances.push(id);
    }
    // Signals while faults fire (409 once an instance ended).
    let mut signal_rng = ctx.rng();
    while ctx.now_ms() < ctx.fault_phase_ms {
        let id = instances[signal_rng.random_range(0..instances.len())];
        let node = &ctx.nodes[signal_rng.random_range(0..ctx.nodes.len())];
        let _ = ctx.call_within(node, "POST", &format!("/v1/tenants/default/workflows/{id}/signals/go"), Some(json!({"at": ctx.now_ms()})), CLIENT_DEADLINE_MS).await;
        tokio::time::sleep(Duration::from_millis(signal_rng.random_range(100..600))).await;
    }
    ctx.wait_for_heal(1_000).await;

    let mut violations = Vec::new();
    let deadline = ctx.now_ms() + FINISH_MS;
    let mut views = BTreeMap::new();
    let mut pending: Vec<u64> = instances.clone();
    while !pending.is_empty() && ctx.now_ms() < deadline {
        let mut still = Vec::new();
        for id in pending {
            let node = &ctx.nodes[(id as usize) % ctx.nodes.len()];
            let response = ctx.call_within(node, "GET", &format!("/v1/tenants/default/workflows/{id}"), None, CLIENT_DEADLINE_MS).await;
            match response.ok() {
                Some(view) if !matches!(view["status"].as_str(), Some("running" | "created")) => {
                    views.insert(id, view.clone());
                }
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for id in &pending {
        // What it waits for, in the trace: the open steps with their states and errors.
        let response = ctx.call_within(&ctx.nodes[0], "GET", &format!("/v1/tenants/default/workflows/{id}"), None, CLIENT_DEADLINE_MS).await;
        if let Some(view) = response.ok() {
            let open: Vec<String> = view["steps"].as_array().into_iter().flatten().filter(|s| s["state"] != "done" && s["state"] != "abandoned")
                .map(|s| format!("{} {} {} attempts {} error {} child {}", s["label"], s["kind"], s["state"], s["attempts"], s["error"], s["child"])).collect();
            ctx.trace.record(format!("stuck workflow {id}: {} current {} open {open:?}", view["status"], view["current"]));
            for child in view["steps"].as_array().into_iter().flatten().filter(|s| s["state"] == "running").filter_map(|s| s["child"].as_u64()) {
                let response = ctx.call_within(&ctx.nodes[0], "GET", &format!("/v1/tenants/default/workflows/{child}"), None, CLIENT_DEADLINE_MS).await;
                let summary = response.ok().map_or_else(|| "unreadable".to_owned(), |v| format!("{} current {} parent {}", v["status"], v["current"], v["parent"]));
                ctx.trace.record(format!("  its child {child}: {summary}"));
            }
        }
        violations.push(format!("stuck: workflow {id} did not end within {FINISH_MS} ms of the heal"));
    }
    if !pending.is_empty() {
        return violations;
    }
    // Children's journals too.
    let mut journals: Vec<(u64, Value)> = views.iter().map(|(id, v)| (*id, v.clone())).collect();
    let mut i = 0;
    while i < journals.len() {
        let children: Vec<u64> = journals[i].1["steps"].as_array().into_iter().flatten().filter_map(|s| s["child"].as_u64()).collect();
        for child in children {
            let Some(view) = until_ok(&ctx, "GET", &format!("/v1/tenants/default/workflows/{child}"), None, &[]).await else {
                violations.push(format!("liveness: child workflow {child} unreadable"));
                continue;
            };
            journals.push((child, view));
        }
        i += 1;
    }
    let mut expected = vec![0i64; COUNTERS];
    for (id, view) in &journals {
        let steps = view["steps"].as_array().map_or(0, Vec::len);
        ctx.trace.record(format!("workflow {id}: {} after {steps} steps ({})", view["status"], view["error"]));
        check_journal(*id, view, &planned, ctx.clock_skew_ms, &mut expected, &mut violations);
    }
    for (c, counter) in counters.iter().enumerate() {
        let Some(body) = until_ok(&ctx, "GET", &format!("/v1/tenants/default/imvus/{counter}"), None, &[]).await else {
            violations.push(format!("liveness: counter {counter} unreadable"));
            continue;
        };
        let total = body["state"].as_i64().unwrap_or(i64::MIN);
        if total != expected[c] {
            violations.push(format!("exactly once: counter {counter} holds {total}, the journals' done adds sum to {}", expected[c]));
        }
    }
    violations
}

/// Checks one instance's journal and adds its done `add`s to `expected`.
fn check_journal(id: u64, view: &Value, planned: &BTreeMap<String, Planned>, clock_skew_ms: u64, expected: &mut [i64], violations: &mut Vec<String>) {
    let steps = view["steps"].as_array().cloned().unwrap_or_default();
    let status = view["status"].as_str().unwrap_or("");
    let mut failed = false;
    let mut forward_done: Vec<(String, String)> = Vec::new();
    let mut compensations: Vec<(String, String)> = Vec::new();
    for step in &steps {
        let label = step["label"].as_str().unwrap_or("").to_owned();
        let name = step["step"].as_str().unwrap_or("").to_owned();
        let done_ok = step["state"] == "done" && step["error"].is_null();
        if step["state"] == "done" && !step["error"].is_null() {
            failed = true;
        }
        match planned.get(&label) {
            Some(Planned::Add { counter, n }) if done_ok => {
                expected[*counter] += n;
                if label.starts_with("undo") {
                    compensations.push((label, name));
                } else {
                    forward_done.push((label, name));
                }
            }
            // Timers run on node wall clocks, stamped by the node that started the step and the
            // one that ended it: two clocks that disagree by the plan's jumps.
            Some(Planned::Sleep { ms }) if done_ok => {
                if step["duration_ms"].as_u64().is_some_and(|d| d.saturating_add(clock_skew_ms) < *ms) {
                    violations.push(format!("early timer: workflow {id} step {label} slept {} ms of {ms}", step["duration_ms"]));
                }
            }
            _ => {}
        }
    }
    if status == "compensated" && !failed {
        violations.push(format!("workflow {id} compensated without a failed step"));
    }
    // Each compensation once, for a done forward step, in reverse order of those steps.
    let mut seen = std::collections::BTreeSet::new();
    for (undo, _) in &compensations {
        if !seen.insert(undo.clone()) {
            violations.push(format!("workflow {id}: compensation {undo} ran twice"));
        }
    }
    let undone: Vec<String> = compensations.iter().map(|(undo, _)| undo.trim_start_matches("undo").to_owned()).collect();
    let forward_of = |label: &str| label.trim_start_matches("add").parse::<u32>().ok();
    for (undo, _) in &compensations {
        let number: Option<u32> = undo.trim_start_matches("undo").parse().ok();
        // `undoN` is drawn right after `add(N-1)`.
        let forward = number.and_then(|n| n.checked_sub(1)).map(|n| format!("add{n}"));
        if !forward.as_ref().is_some_and(|f| forward_done.iter().any(|(l, _)| l == f)) {
            violations.push(format!("workflow {id}: compensation {undo} ran for a step that was not done"));
        }
    }
    // Top-level order: the compensations' forward steps, reversed, in journal order.
    let top_forward: Vec<u32> = forward_done.iter().filter(|(_, name)| !name.contains('.')).filter_map(|(l, _)| forward_of(l)).collect();
    let top_undone: Vec<u32> = undone.iter().filter_map(|n| n.parse::<u32>().ok()).map(|n| n - 1).filter(|n| top_forward.contains(n)).collect();
    let mut reversed = top_forward.clone();
    reversed.reverse();
    let reversed: Vec<u32> = reversed.into_iter().filter(|n| top_undone.contains(n)).collect();
    if top_undone != reversed {
        violations.push(format!("workflow {id}: compensations in order {top_undone:?}, not the reverse of {top_forward:?}"));
    }
    if status == "compensated" && compensations.is_empty() && !forward_done.is_empty() && forward_done.iter().any(|(l, _)| planned_has_undo(planned, l)) {
        violations.push(format!("workflow {id} compensated but ran no compensation"));
    }
}

fn planned_has_undo(planned: &BTreeMap<String, Planned>, label: &str) -> bool {
    label.trim_start_matches("add").parse::<u32>().is_ok_and(|n| planned.contains_key(&format!("undo{}", n + 1)))
}

//! Supervision: counters crash (explicit `crash` messages and injected handler panics) while
//! nodes crash, clocks jump and disks fail. Checks: lifecycle histories legal; no restart past
//! the tenant's intensity (an escalation instead); at most one supervisor decision per crash
//! (no restart storms); every acknowledged total survives.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use rand::Rng;
use serde_json::{json, Value};
use vcos_actors::{LifecycleState, Transition};

use super::{key_of, Scenario, WorkloadCtx};
use crate::net::Response;
use crate::plan::FaultMix;

/// The supervision scenario.
pub struct SupervisionScenario;

const TENANT: &str = "sim";
const MAX_RESTARTS: u32 = 3;
const PERIOD_MS: u64 = 2_000;
const COUNTERS_PER_NODE: usize = 3;

#[derive(Default)]
struct Observed {
    max_acked: i64,
    sent_total: i64,
    crash_replies: u32,
    no_answers: u32,
}

impl Scenario for SupervisionScenario {
    fn name(&self) -> &'static str {
        "supervision"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 2, duration_ms: 8_000, count: 12, imvus: 6, crashes: true, disk: true, network: true, panics: 5, cluster: false }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    let mut violations = Vec::new();
    let mut rng = ctx.rng();
    let policy = json!({"name": TENANT, "policy": {"max_restarts": MAX_RESTARTS, "restart_period_ms": PERIOD_MS}});
    let mut counters = Vec::new();
    for node in &ctx.nodes {
        if ctx.call_until(node, "POST", "/v1/tenants", Some(policy.clone()), &[409]).await.is_none() {
            return vec![format!("setup: tenant on {node} never created")];
        }
        for _ in 0..COUNTERS_PER_NODE {
            let created = ctx.call_until(node, "POST", &format!("/v1/tenants/{TENANT}/imvus"), Some(json!({"kind":"counter"})), &[]).await;
            let Some(key) = created.as_ref().and_then(Response::ok).and_then(key_of) else {
                return vec![format!("setup: counter on {node} never created")];
            };
            ctx.register(key);
            counters.push((node.clone(), key));
        }
    }
    let mut observed: BTreeMap<usize, Observed> = BTreeMap::new();
    while ctx.now_ms() < ctx.fault_phase_ms {
        let i = rng.random_range(0..counters.len());
        let (node, key) = &counters[i];
        let path = format!("/v1/tenants/{TENANT}/imvus/{}/messages", key.id);
        let crash = rng.random_range(0..100) < 6;
        let n: i64 = rng.random_range(1..10);
        let message = if crash { json!({"message":{"op":"crash"}}) } else { json!({"message":{"op":"add","n":n}}) };
        let entry = observed.entry(i).or_default();
        if !crash {
            entry.sent_total += n;
        }
        match ctx.call(node, "POST", &path, Some(message)).await {
            Response::Http { status: 200, body } => {
                if let Some(total) = body.get("reply").and_then(Value::as_i64) {
                    entry.max_acked = entry.max_acked.max(total);
                }
            }
            Response::Http { status: 500, body } if body["code"] == "imvu_crashed" => entry.crash_replies += 1,
            Response::Http { .. } => {}
            Response::NoAnswer(_) => entry.no_answers += 1,
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(5..60))).await;
    }
    ctx.wait_for_heal(1_000).await;
    for (i, (node, key)) in counters.iter().enumerate() {
        let base = format!("/v1/tenants/{TENANT}/imvus/{}", key.id);
        let Some(history) = ctx.call_until(node, "GET", &format!("{base}/history"), None, &[]).await else {
            violations.push(format!("liveness: history of {key} unreadable after heal"));
            continue;
        };
        let events = history.ok().and_then(|b| b.get("events")).and_then(Value::as_array).cloned().unwrap_or_default();
        check_history(key, &events, observed.get(&i), &mut violations);
        let Some(state) = ctx.call_until(node, "GET", &base, None, &[]).await else {
            violations.push(format!("liveness: {key} unreadable after heal"));
            continue;
        };
        let value = state.ok().and_then(|b| b.get("state")).and_then(Value::as_i64).unwrap_or(i64::MIN);
        if let Some(o) = observed.get(&i) {
            if value < o.max_acked {
                violations.push(format!("durability: {key} is {value} but {} was acknowledged", o.max_acked));
            }
            if value > o.sent_total {
                violations.push(format!("{key} is {value}, more than the {} ever sent", o.sent_total));
            }
        }
    }
    violations
}

fn check_history(key: &vcos_actors::ImvuKey, events: &[Value], observed: Option<&Observed>, violations: &mut Vec<String>) {
    let mut state: Option<LifecycleState> = None;
    let mut decisions = 0u32;
    for event in events {
        match event["event"].as_str() {
            Some("transition") => {
                if event["handshake"]["outcome"] != "admitted" {
                    continue;
                }
                let Ok(transition) = serde_json::from_value::<Transition>(event["transition"].clone()) else {
                    violations.push(format!("{key}: unreadable transition {event}"));
                    continue;
                };
                match LifecycleState::apply(state, transition) {
                    Ok(next) => state = Some(next),
                    Err(e) => violations.push(format!("lifecycle: {key}: illegal history: {e}")),
                }
            }
            Some("supervision") => {
                decisions += 1;
                let window = event["restarts_in_window"].as_u64().unwrap_or(0);
                match event["decision"].as_str() {
                    Some("restarted") if window > u64::from(MAX_RESTARTS) => violations.push(format!(
                        "intensity: {key} restarted as restart {window} within {PERIOD_MS} ms (max {MAX_RESTARTS}); it should have escalated"
                    )),
                    Some("escalated") if window <= u64::from(MAX_RESTARTS) => {
                        violations.push(format!("intensity: {key} escalated at restart {window}, within the allowed {MAX_RESTARTS}"))
                    }
                    _ => {}
                }
            }
            _ => violations.push(format!("{key}: unknown history event {event}")),
        }
    }
    if let Some(o) = observed {
        // Each crash gets at most one decision; crashes whose reply was lost may have one too.
        if decisions > o.crash_replies + o.no_answers {
            violations.push(format!(
                "restart storm: {key} has {decisions} supervisor decisions for {} observed crashes (+{} unanswered)",
                o.crash_replies, o.no_answers
            ));
        }
    }
}

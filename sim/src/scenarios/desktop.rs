//! Desktop sessions: the production desktop host (session actors, supervision, warm pool,
//! metering, records, recovery) on simulated desktops whose faults come from the seed (killed
//! from outside, slow to start, hung, failing to start), while nodes crash and restart and the
//! network drops requests. The workload creates, pauses, resumes and terminates sessions over
//! HTTP. Checks, once healed: every session acknowledged ends Active, Paused or Terminated
//! (never stuck in Genesis), a termination acknowledged stays terminated, a terminated session
//! says why, each record's billed desktop seconds are exactly its metered active time (none
//! charged twice), and the tenant's usage never exceeds what its sessions' records billed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use rand::Rng;
use serde_json::{json, Value};

use super::{Scenario, WorkloadCtx};
use crate::net::Response;
use crate::plan::FaultMix;

/// The desktop scenario.
pub struct DesktopScenario;

const SESSIONS: &str = "/v1/tenants/default/sessions";
/// Live sessions a basic tenant may have on one node (`sessions_max`).
const LIVE_MAX: usize = 4;

#[derive(Default)]
struct Tracked {
    /// Acknowledged terminated (a 200 to terminate).
    terminated: bool,
}

impl Scenario for DesktopScenario {
    fn name(&self) -> &'static str {
        "desktop"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 2, duration_ms: 10_000, count: 6, imvus: 0, crashes: true, disk: false, network: true, panics: 0, cluster: false }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }

    fn desktops(&self) -> bool {
        true
    }
}

fn id_of(body: &Value) -> Option<u64> {
    body.get("id").and_then(Value::as_u64)
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    let mut rng = ctx.rng();
    let mut sessions: BTreeMap<(String, u64), Tracked> = BTreeMap::new();
    while ctx.now_ms() < ctx.fault_phase_ms {
        let node = ctx.nodes[rng.random_range(0..ctx.nodes.len())].clone();
        let mine: Vec<u64> = sessions.iter().filter(|((n, _), t)| *n == node && !t.terminated).map(|((_, id), _)| *id).collect();
        let roll = rng.random_range(0..100);
        if roll < 30 && mine.len() < LIVE_MAX {
            if let Response::Http { status: 201, body } = ctx.call(&node, "POST", SESSIONS, Some(json!({"tier": "basic"}))).await {
                if let Some(id) = id_of(&body) {
                    ctx.trace.record(format!("client: session {node}/{id} created"));
                    sessions.insert((node.clone(), id), Tracked::default());
                }
            }
        } else if let Some(&id) = (!mine.is_empty()).then(|| &mine[rng.random_range(0..mine.len())]) {
            let action = match roll {
                30..=54 => "pause",
                55..=79 => "resume",
                80..=89 => "terminate",
                _ => "",
            };
            let path = if action.is_empty() { format!("{SESSIONS}/{id}") } else { format!("{SESSIONS}/{id}/{action}") };
            let method = if action.is_empty() { "GET" } else { "POST" };
            if let Response::Http { status: 200, body } = ctx.call(&node, method, &path, None).await {
                if body["state"] == "terminated" && action == "terminate" {
                    if let Some(tracked) = sessions.get_mut(&(node.clone(), id)) {
                        tracked.terminated = true;
                    }
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(20..200))).await;
    }
    // Longer than the host's start deadline (11 s): a hung start still in progress at the
    // heal has ended by the checks.
    ctx.wait_for_heal(12_000).await;
    check(&ctx, &sessions).await
}

async fn check(ctx: &WorkloadCtx, sessions: &BTreeMap<(String, u64), Tracked>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut billed_by_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut summaries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Usage first, records second: both only grow, and a session's usage is added in the
    // same step as its record's billed seconds, so what was metered at the first read can
    // never exceed what the records say at the second, unless something was charged twice.
    let mut metered_by_node: BTreeMap<String, u64> = BTreeMap::new();
    for node in &ctx.nodes {
        let Some(usage) = ctx.call_until(node, "GET", "/v1/tenants/default/usage", None, &[]).await else {
            violations.push(format!("liveness: {node} never answered its usage"));
            continue;
        };
        metered_by_node.insert(node.clone(), usage.ok().and_then(|b| b["units"]["desktop_seconds"].as_u64()).unwrap_or(0));
    }
    for node in &ctx.nodes {
        // Every record of the node, the acknowledged ones and those whose creation's answer
        // was lost alike.
        let Some(listed) = ctx.call_until(node, "GET", SESSIONS, None, &[]).await else {
            violations.push(format!("liveness: {node} never listed its sessions after the heal"));
            continue;
        };
        let records = listed.ok().and_then(|b| b["sessions"].as_array().cloned()).unwrap_or_default();
        for record in &records {
            let id = record["id"].as_u64().unwrap_or(0);
            let state = record["state"].as_str().unwrap_or("?");
            let active_ms = record["active_ms"].as_u64().unwrap_or(0);
            let billed = record["billed_desktop_seconds"].as_u64().unwrap_or(0);
            *billed_by_node.entry(node.clone()).or_default() += billed;
            summaries.entry(node.clone()).or_default().push(format!("{id}: {state} {active_ms} ms, {billed} s"));
            if !matches!(state, "active" | "paused" | "terminated") {
                violations.push(format!("session {node}/{id} ended {state}: {record}"));
            }
            if state == "terminated" && record["reason"].as_str().is_none_or(str::is_empty) {
                violations.push(format!("session {node}/{id} is terminated without a reason: {record}"));
            }
            // Basic tier: one desktop second per whole second active, charged once.
            if billed != active_ms / 1_000 {
                violations.push(format!("billing: session {node}/{id} billed {billed} s for {active_ms} ms active"));
            }
            if sessions.get(&(node.clone(), id)).is_some_and(|t| t.terminated) && state != "terminated" {
                violations.push(format!("session {node}/{id}: its termination was acknowledged, yet it is {state}"));
            }
        }
        for ((n, id), _) in sessions.iter().filter(|((n, _), _)| n == node) {
            if !records.iter().any(|r| r["id"].as_u64() == Some(*id)) {
                violations.push(format!("durability: session {n}/{id} was acknowledged but has no record"));
            }
        }
    }
    for (node, metered) in metered_by_node {
        let billed = billed_by_node.get(&node).copied().unwrap_or(0);
        if metered > billed {
            let records = summaries.get(&node).map(|s| s.join("; ")).unwrap_or_default();
            violations.push(format!("billing: {node} metered {metered} desktop seconds, more than its sessions' records billed ({billed}): {records}"));
        }
    }
    violations
}

//! Durability: key-value memories take writes (increasing values per key) and lifecycle
//! changes while nodes crash and fsyncs fail. Checks, after healing: every acknowledged write
//! is there (or a later one), every acknowledged pause/resume is in the history.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use rand::Rng;
use serde_json::{json, Value};

use super::{key_of, Scenario, WorkloadCtx};
use crate::net::Response;
use crate::plan::FaultMix;

/// The durability scenario.
pub struct Durability;

const MEMORIES_PER_NODE: usize = 2;
const KEYS: u32 = 6;

impl Scenario for Durability {
    fn name(&self) -> &'static str {
        "durability"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 3, duration_ms: 8_000, count: 12, imvus: 6, crashes: true, disk: true, network: true, panics: 1, cluster: false }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    let mut violations = Vec::new();
    let mut rng = ctx.rng();
    let mut memories = Vec::new();
    for node in &ctx.nodes {
        for _ in 0..MEMORIES_PER_NODE {
            let created = ctx.call_until(node, "POST", "/v1/tenants/default/imvus", Some(json!({"kind":"kv-memory"})), &[]).await;
            let Some(key) = created.as_ref().and_then(Response::ok).and_then(key_of) else {
                return vec![format!("setup: memory on {node} never created")];
            };
            ctx.register(key);
            memories.push((node.clone(), key));
        }
    }
    // (memory, key name) → highest acknowledged value; acknowledged lifecycle changes per memory.
    let mut acked: BTreeMap<(usize, u32), u64> = BTreeMap::new();
    let mut acked_transitions: BTreeMap<usize, u32> = BTreeMap::new();
    let mut seq = 0u64;
    while ctx.now_ms() < ctx.fault_phase_ms {
        let m = rng.random_range(0..memories.len());
        let (node, key) = &memories[m];
        let base = format!("/v1/tenants/default/imvus/{}", key.id);
        if rng.random_range(0..100) < 8 {
            let action = if rng.random_bool(0.5) { "pause" } else { "resume" };
            if ctx.call(node, "POST", &format!("{base}/{action}"), None).await.ok().is_some() {
                *acked_transitions.entry(m).or_default() += 1;
            }
        } else {
            seq += 1;
            let k = rng.random_range(0..KEYS);
            let message = json!({"message": {"op": "put", "key": format!("k{k}"), "value": seq}});
            if ctx.call(node, "POST", &format!("{base}/messages"), Some(message)).await.ok().is_some() {
                let slot = acked.entry((m, k)).or_default();
                *slot = (*slot).max(seq);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(5..50))).await;
    }
    ctx.wait_for_heal(1_000).await;
    for (m, (node, key)) in memories.iter().enumerate() {
        let base = format!("/v1/tenants/default/imvus/{}", key.id);
        let Some(state) = ctx.call_until(node, "GET", &base, None, &[]).await else {
            violations.push(format!("liveness: {key} unreadable after heal"));
            continue;
        };
        let state = state.ok().and_then(|b| b.get("state")).cloned().unwrap_or(Value::Null);
        for k in 0..KEYS {
            let Some(&want) = acked.get(&(m, k)) else { continue };
            let have = state.get(format!("k{k}")).and_then(Value::as_u64).unwrap_or(0);
            if have < want {
                violations.push(format!("lost write: {key} k{k} is {have}, but {want} was acknowledged"));
            }
        }
        let Some(history) = ctx.call_until(node, "GET", &format!("{base}/history"), None, &[]).await else {
            violations.push(format!("liveness: history of {key} unreadable"));
            continue;
        };
        let recorded = history
            .ok()
            .and_then(|b| b.get("events"))
            .and_then(Value::as_array)
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["event"] == "transition" && e["handshake"]["outcome"] == "admitted")
                    .filter(|e| e["transition"] == "pause" || e["transition"] == "resume")
                    .count() as u32
            })
            .unwrap_or(0);
        let want = acked_transitions.get(&m).copied().unwrap_or(0);
        if recorded < want {
            violations.push(format!("lost transition: {key} has {recorded} pause/resume records, {want} were acknowledged"));
        }
    }
    violations
}

//! Swarm: work is submitted to a swarm of text workers on each node while members crash on
//! poisoned items and injected panics, and nodes crash mid-task. Checks, after healing: every
//! acknowledged item is completed (or dead-lettered), nothing stays pending or in flight, and
//! every completed item is credited exactly once.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use rand::Rng;
use serde_json::{json, Value};

use super::{Scenario, WorkloadCtx};
use crate::net::Response;
use crate::plan::FaultMix;

/// The swarm scenario.
pub struct SwarmScenario;

const MEMBERS: u32 = 3;

impl Scenario for SwarmScenario {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn fault_mix(&self) -> FaultMix {
        FaultMix { nodes: 2, duration_ms: 8_000, count: 10, imvus: 6, crashes: true, disk: true, network: true, panics: 3, cluster: false }
    }

    fn workload(&self, ctx: WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: WorkloadCtx) -> Vec<String> {
    let mut violations = Vec::new();
    let mut rng = ctx.rng();
    let spec = json!({"member_kind": "text-worker", "members": MEMBERS, "max_in_flight_per_member": 2, "max_attempts": 4, "max_restarts": 1000});
    let mut swarms = Vec::new();
    for node in &ctx.nodes {
        let created = ctx.call_until(node, "POST", "/v1/tenants/default/swarms", Some(spec.clone()), &[]).await;
        let Some(body) = created.as_ref().and_then(Response::ok) else {
            return vec![format!("setup: swarm on {node} never created")];
        };
        let Some(id) = body["key"]["id"].as_u64() else { return vec![format!("setup: no swarm id in {body}")] };
        for member in body["members"].as_array().into_iter().flatten() {
            if let Some(member_id) = member["id"].as_u64() {
                ctx.register(vcos_actors::ImvuKey { tenant: vcos_actors::TenantId::default_tenant(), id: vcos_actors::ImvuId(member_id) });
            }
        }
        swarms.push((node.clone(), id, BTreeSet::<u64>::new()));
    }
    let ops = ["word_count", "upper", "reverse", "keywords"];
    while ctx.now_ms() < ctx.fault_phase_ms {
        let s = rng.random_range(0..swarms.len());
        let items: Vec<Value> = (0..rng.random_range(1..5))
            .map(|i| {
                if rng.random_range(0..100) < 3 {
                    json!({"op":"poison"})
                } else {
                    json!({"op": ops[rng.random_range(0..ops.len())], "text": format!("item {i} of a swarm at work")})
                }
            })
            .collect();
        let (node, id, acked) = &mut swarms[s];
        let response = ctx.call(node, "POST", &format!("/v1/tenants/default/swarms/{id}/work"), Some(json!({"items": items}))).await;
        if let Some(ids) = response.ok().and_then(|b| b.get("item_ids")).and_then(Value::as_array) {
            acked.extend(ids.iter().filter_map(Value::as_u64));
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(20..120))).await;
    }
    ctx.wait_for_heal(1_000).await;
    for (node, id, acked) in &swarms {
        let path = format!("/v1/tenants/default/swarms/{id}");
        let mut settled = None;
        for _ in 0..super::RETRIES_MAX {
            if let Some(info) = ctx.call(node, "GET", &path, None).await.ok().cloned() {
                let p = &info["progress"];
                if p["pending"] == 0 && p["in_flight"] == 0 {
                    settled = Some(info);
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(super::RETRY_PAUSE_MS)).await;
        }
        let Some(info) = settled else {
            violations.push(format!("liveness: swarm {id} on {node} never finished its items"));
            continue;
        };
        let Some(credits) = ctx.call_until(node, "GET", &format!("{path}/credits"), None, &[]).await else {
            violations.push(format!("liveness: credits of swarm {id} unreadable"));
            continue;
        };
        let credits = credits.ok().and_then(|b| b.get("credits")).and_then(Value::as_array).cloned().unwrap_or_default();
        let credited: Vec<u64> = credits.iter().filter_map(|c| c["item"].as_u64()).collect();
        let unique: BTreeSet<u64> = credited.iter().copied().collect();
        if unique.len() != credited.len() {
            violations.push(format!("credit: swarm {id} credited {} items but only {} distinct", credited.len(), unique.len()));
        }
        let completed = info["progress"]["completed"].as_u64().unwrap_or(0);
        let dead = info["progress"]["dead_lettered"].as_u64().unwrap_or(0);
        if completed != unique.len() as u64 {
            violations.push(format!("credit: swarm {id} completed {completed} items but holds {} credits", unique.len()));
        }
        let missing = acked.difference(&unique).count() as u64;
        if missing > dead {
            violations.push(format!("lost work: swarm {id}: {missing} acknowledged items neither credited nor dead-lettered ({dead} dead-lettered)"));
        }
    }
    violations
}

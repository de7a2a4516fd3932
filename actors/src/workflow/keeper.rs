//! The keeper: wakes the running workflows this node owns, so that one whose node died (or
//! that was loaded nowhere since a restart) goes on by itself, without waiting for a message.
//!
//! Every [`KEEPER_PERIOD_MS`], each tenant's index of running workflows is read from the canon
//! (in pages) and each instance this node owns now is told `wake`. A resident instance
//! answers at once and commits nothing; one that is not resident is loaded, and its
//! activation re-issues its open steps and arms its timers. So after a node dies, its
//! workflows go on within one period of their buckets' new owner taking the lease.

use std::time::Duration;

use serde_json::json;

use crate::{Runtime, WeakRuntime};

/// How often the keeper looks.
pub const KEEPER_PERIOD_MS: u64 = 1_000;
/// Index keys read per page.
const PAGE_LEN: usize = 1_024;
/// Instances woken per period at most (the rest wait for the next one).
const WAKES_PER_PERIOD_MAX: usize = 100_000;

/// Starts the keeper for `runtime` (it stops with the runtime).
pub fn spawn(runtime: &Runtime) {
    let weak = runtime.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(KEEPER_PERIOD_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !wake_owned(&weak).await {
                return;
            }
        }
    });
}

/// One pass; `false` once the runtime is gone.
async fn wake_owned(weak: &WeakRuntime) -> bool {
    let Some(runtime) = weak.upgrade() else { return false };
    let mut woken = 0;
    for tenant in runtime.tenants() {
        let mut after = None;
        loop {
            let page = match runtime.index(&tenant.id, super::RUNNING_INDEX, after, PAGE_LEN) {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(tenant = %tenant.id, error = %e, "running workflows not read: next period");
                    break;
                }
            };
            let full = page.len() == PAGE_LEN;
            after = page.last().map(|key| key.id.0);
            for key in page.into_iter().filter(|key| runtime.owns(key)) {
                if let Err(e) = runtime.tell_json(&key, json!({ "op": "wake" })).await {
                    tracing::debug!(%key, error = %e, "workflow not woken: next period");
                }
                woken += 1;
                if woken >= WAKES_PER_PERIOD_MAX {
                    return true;
                }
            }
            if !full {
                break;
            }
        }
    }
    true
}

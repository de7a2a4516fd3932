//! Schedules: a built-in Rust workflow (`schedule`) that starts a child workflow once per slot
//! of a fixed period, for ever or `count` times.
//!
//! Slots are aligned on the Unix epoch (`every_ms` = 60,000: each minute on the minute). Each
//! slot's sleep and its child are journaled steps, so a slot fires once even when the schedule
//! moves to another node mid-way (its child is started under the journaled child id only).
//! Slots missed while the schedule could not run (no node owned it, the region had no quorum)
//! are skipped, not caught up: the next slot after the schedule resumes fires. A child that runs
//! past the next slot makes the schedule skip the slots it overlaps (one run at a time, as
//! Temporal's default overlap policy). A child that fails does not stop the schedule. Every
//! [`SLOTS_PER_RUN`] slots the schedule continues as new, so its journal stays small.

use serde_json::{json, Value};

use super::{Program, WorkflowContext, WorkflowError};

/// The name of the built-in schedule workflow.
pub const SCHEDULE: &str = "schedule";
/// Slots journaled per run before continuing as new.
pub const SLOTS_PER_RUN: u64 = 100;
/// The shortest period accepted.
pub const PERIOD_MS_MIN: u64 = 100;

/// The schedule workflow. Input: `{"program": Program, "input": …, "every_ms": n, "count": n?}`
/// (`fired` is carried from run to run).
pub async fn schedule(ctx: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    let program: Program = serde_json::from_value(input["program"].clone()).map_err(|e| WorkflowError::Failed(format!("input `program`: {e}")))?;
    let every_ms = input["every_ms"].as_u64().filter(|&ms| ms >= PERIOD_MS_MIN).ok_or_else(|| WorkflowError::Failed(format!("input `every_ms`: a period of at least {PERIOD_MS_MIN} ms")))?;
    let count = input["count"].as_u64();
    let mut fired = input["fired"].as_u64().unwrap_or(0);
    let mut failed = input["failed"].as_u64().unwrap_or(0);
    for _ in 0..SLOTS_PER_RUN {
        if count.is_some_and(|count| fired >= count) {
            return Ok(json!({ "fired": fired, "failed": failed }));
        }
        let now = ctx.now_unix_ms().await?;
        let slot = (now / every_ms + 1).saturating_mul(every_ms);
        ctx.sleep(slot - now).await?;
        match ctx.child(program.clone(), input["input"].clone()).await {
            Ok(_) => {}
            Err(WorkflowError::Cancelled) => return Err(WorkflowError::Cancelled),
            Err(_) => failed += 1,
        }
        fired += 1;
        ctx.set_vars(json!({ "fired": fired, "failed": failed, "last_slot_unix_ms": slot }));
    }
    let mut next = input.clone();
    next["fired"] = json!(fired);
    next["failed"] = json!(failed);
    Err(WorkflowError::ContinueAsNew(next))
}

//! Workflows that ship with the binary, as an author would write them: `tally` in Rust, and
//! [`TALLY_YAML`], the same workflow as a declarative definition.

use serde_json::{json, Value};

use super::{WorkflowContext, WorkflowError, Workflows};

/// `tally` as a definition: adds 1 to a `counter` IMVU `times` times, pausing `pause_ms`
/// between additions (durable timers), and answers the counter's last total.
pub const TALLY_YAML: &str = r#"name: tally
vars: { total: 0 }
steps:
  - id: rounds
    for_each:
      over: "${range(input.times)}"
      max: 1000
      steps:
        - id: add
          call: { imvu: "${input.counter}", message: { op: add, n: 1 } }
          retry: { max_attempts: 5, initial_interval_ms: 200 }
          set: { total: "${result}" }
        - id: pause
          sleep_ms: "${input.pause_ms}"
output: "${vars.total}"
"#;

/// The `tally` workflow in Rust (input `{"counter": id, "times": n, "pause_ms": ms}`).
pub async fn tally(ctx: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    let counter = input.get("counter").and_then(Value::as_u64).ok_or_else(|| WorkflowError::Failed("input `counter`: an IMVU id".into()))?;
    let times = input.get("times").and_then(Value::as_u64).unwrap_or(1);
    let pause_ms = input.get("pause_ms").and_then(Value::as_u64).unwrap_or(0);
    let mut total = json!(0);
    for _ in 0..times {
        total = ctx.call(counter, json!({ "op": "add", "n": 1 })).await?;
        ctx.set_vars(json!({ "total": total }));
        ctx.sleep(pause_ms).await?;
    }
    Ok(total)
}

/// The `workflow` kind with the shipped Rust workflows.
pub fn shipped() -> Workflows {
    Workflows::new().register("tally", tally)
}

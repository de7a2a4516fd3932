//! Activities: registered async functions that act on the world outside the runtime (call a
//! service, write a file), run for IMVUs through [`crate::Context::activity`] and for workflow
//! steps of kind `activity`.
//!
//! An activity runs after the message that asked for it is durable, as its own tokio task, and
//! its answer comes back to the asker's `on_reply` like an ask's. It is **at least once**: a
//! node that dies after running it and before its answer is durable runs it again (a workflow
//! re-issues an unanswered step when it resumes elsewhere). So every call carries an
//! idempotency key, the same for every attempt of one logical call, for the world to drop
//! repeats with.
//!
//! Built in: `echo` (answers its input), `fail` (answers the error `{"message": …}` it is
//! given: for trying out retries and compensations), `log` (writes its input to the node's
//! log at info level and answers `null`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::ActorError;
use crate::ids::TenantId;
use crate::imvu::AskToken;
use crate::kind::BoxFuture;

/// One call of an activity.
#[derive(Debug, Clone)]
pub struct ActivityCall {
    /// The tenant of the IMVU (or workflow) that called it.
    pub tenant: TenantId,
    /// Its input.
    pub input: serde_json::Value,
    /// The same for every attempt of one logical call.
    pub idempotency_key: String,
}

/// An activity's code.
pub type ActivityFn = Arc<dyn Fn(ActivityCall) -> BoxFuture<'static, Result<serde_json::Value, ActorError>> + Send + Sync>;

/// The activities a runtime runs, by name.
#[derive(Clone)]
pub struct ActivityRegistry {
    fns: BTreeMap<String, ActivityFn>,
}

impl Default for ActivityRegistry {
    fn default() -> Self {
        let mut registry = Self { fns: BTreeMap::new() };
        registry.register("echo", |call: ActivityCall| async move { Ok(call.input) });
        registry.register("fail", |call: ActivityCall| async move {
            let message = call.input.get("message").and_then(serde_json::Value::as_str).unwrap_or("the `fail` activity failed, as asked");
            Err(ActorError::Failed(message.to_owned()))
        });
        registry.register("log", |call: ActivityCall| async move {
            tracing::info!(tenant = %call.tenant, key = %call.idempotency_key, input = %call.input, "activity log");
            Ok(serde_json::Value::Null)
        });
        registry
    }
}

impl ActivityRegistry {
    /// Registers (or replaces) activity `name`.
    pub fn register<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(ActivityCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<serde_json::Value, ActorError>> + Send + 'static,
    {
        self.fns.insert(name.to_owned(), Arc::new(move |call| Box::pin(f(call))));
    }

    /// The names registered, in order.
    pub fn names(&self) -> Vec<String> {
        self.fns.keys().cloned().collect()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.fns.contains_key(name)
    }

    /// Runs `name` as its own task; the answer goes to `ask` through `deliver`.
    pub(crate) fn spawn(&self, name: &str, call: ActivityCall, ask: AskToken, runtime: crate::WeakRuntime) {
        let f = self.fns.get(name).cloned();
        let name = name.to_owned();
        tokio::spawn(async move {
            let answer = match f {
                // Its own task: a panicking activity fails its call instead of never answering.
                Some(f) => match tokio::spawn(f(call)).await {
                    Ok(answer) => answer,
                    Err(e) if e.is_panic() => Err(ActorError::Failed(format!("activity {name} panicked"))),
                    Err(_) => Err(ActorError::Unavailable(format!("activity {name} was cancelled (the node stops)"))),
                },
                None => Err(ActorError::not_found("activity", &name)),
            };
            metrics::counter!("vcos_activity_calls_total", "activity" => name, "outcome" => if answer.is_ok() { "ok" } else { "error" }).increment(1);
            if let Some(runtime) = runtime.upgrade() {
                runtime.deliver_reply(ask, answer).await;
            }
        });
    }
}

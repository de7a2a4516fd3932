//! The [`Router`] seam: where messages between IMVUs go.
//!
//! A handler never sends anything itself: it records requests in its `Context`, and the shard,
//! once the handler's message is durable, hands each to the runtime's router. The default
//! router is the local runtime (every IMVU is on this node); the cluster crate plugs in one
//! that delivers to other nodes. A router never blocks its caller (a shard): it queues or
//! spawns, and an ask's answer — or the error that stands for it, a timeout included — comes
//! back to the asking IMVU as a message, through `Runtime::deliver_reply`.

use crate::ids::ImvuKey;
use crate::imvu::AskToken;

/// Default time an ask between IMVUs waits for its answer before the asker gets an error.
pub const ASK_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Delivers messages between IMVUs. Implementations must not block: they are called from
/// shard tasks.
pub trait Router: Send + Sync + 'static {
    /// Delivers `msg` from `from` to `to` (a JSON message of `to`'s kind). With `ask`, the
    /// answer (or error) must come back to `ask.from` under `ask.correlation`.
    fn route(&self, from: ImvuKey, to: ImvuKey, msg: serde_json::Value, ask: Option<AskToken>);

    /// Creates an IMVU of `kind` in `parent`'s tenant; its key (or the error) comes back to
    /// `ask.from` under `ask.correlation`.
    fn create_child(&self, parent: ImvuKey, kind: &str, ask: AskToken);
}

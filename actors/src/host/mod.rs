//! The IMVU host: one task owns a shard of the IMVUs of one kind.
//!
//! Why not one ractor actor per IMVU: a ractor actor costs ~7.8 KB resident (four channels and
//! a boxed loop future) and 15 µs to spawn, and its mailbox is unbounded. Here an IMVU is a
//! cell in its shard's table: its state, a pointer to its tenant, two counters and its
//! lifecycle — tens of bytes plus the state. It keeps actor semantics:
//! - **ordered, bounded mailbox**: its messages travel its shard's bounded channel in send
//!   order (an ask to an idle shard with nothing queued runs at once on its caller's thread,
//!   which keeps that order: [`link`]); a full channel is `QueueFull` for `try_tell` and
//!   back-pressure for `tell`/`ask`;
//!   messages that arrive while it is being (re)loaded wait, in order, for the load;
//! - **one message at a time**: the shard runs handlers one after another;
//! - **panic isolation**: every handler runs under `quiet_panic::catch`; a panic is a crash of
//!   that IMVU only, handled by its tenant's supervisor (the `vcos_supervision` core);
//! - **passivation**: an idle IMVU can be evicted; it lives on in canon (meta + snapshot) and
//!   is activated again by its next message.
//!
//! The shard is split in two (see STYLE.md, "Sans-IO cores"):
//! - [`core::ShardCore`], a plain struct fed commands, commit completions, canon reads and the
//!   time, returning [`core::Effect`]s (commit these writes under this token, read this IMVU
//!   from canon, reply to this caller). No tokio task, no clock, no store: unit-tested directly.
//! - [`driver::Shard`]: it owns the store and the clock, feeds the core and performs its
//!   effects; [`link`] holds it behind a mutex for its tokio task (which owns the channel)
//!   and its callers. It never blocks its thread: commit completions come back through a
//!   queue it drains between commands, and the task sleeps (tokio time, simulated under the
//!   simulator) until the core's next timer.
//!
//! Messages between IMVUs (`Context::tell`, `ask`, `create_child`, `set_timer`) are effects
//! too: recorded by the handler, performed after its commit through the runtime's
//! [`crate::Router`]; answers and timers come back as [`Command::Reply`] and
//! [`Command::Timer`], in mailbox order.
//!
//! Invariant: canon is the truth. Anything that could make memory and canon disagree (a failed
//! commit, a crash) evicts the cell at once, in the shard; the next message waits until the
//! IMVU's commits in flight have settled (a barrier commit) and reloads it from canon.

pub(crate) mod core;
pub(crate) mod driver;
pub(crate) mod link;

use tokio::sync::oneshot;

use crate::error::ActorError;
use crate::ids::{Caller, ImvuKey};
use crate::imvu::Imvu;
use crate::lifecycle::{LifecycleState, Transition};

pub(crate) use driver::{ShardEnv, ShardExit};
pub(crate) use link::{ShardLink, ShardSlot};

/// Messages held for a paused IMVU, at most; beyond it the sender gets `QueueFull`.
pub const PAUSED_QUEUE_LEN_MAX: usize = 1024;
/// Messages that may wait for one IMVU while it is loaded from canon, at most; beyond it the
/// sender gets `QueueFull`.
pub(crate) const LOADING_QUEUE_LEN_MAX: usize = PAUSED_QUEUE_LEN_MAX;
/// Commands a shard takes from its channel per wake-up.
pub(crate) const SHARD_BATCH_MAX: usize = 256;
/// Timers one shard keeps set, at most; past it a new timer is dropped (and counted).
pub(crate) const SHARD_TIMERS_MAX: usize = 65_536;

/// Where a command's answer goes (an opaque handle to the core: the driver sends on it).
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ActorError>>;

/// What callers learn about an IMVU.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImvuInfo {
    /// `tenant/id`.
    pub key: ImvuKey,
    /// Kind name.
    pub kind: String,
    /// Lifecycle state.
    pub lifecycle: LifecycleState,
    /// The author's state, as JSON.
    pub state: serde_json::Value,
    /// Messages held while paused.
    pub held_messages: usize,
}

/// A command for a shard.
pub(crate) enum Command<I: Imvu> {
    // Rare commands box their bulk so that the common ones (tell, ask) stay small: every
    // command is copied into and out of the channel.
    Create {
        key: ImvuKey,
        caller: Box<Caller>,
        reply: Reply<ImvuInfo>,
    },
    Tell {
        key: ImvuKey,
        msg: I::Msg,
    },
    Ask {
        key: ImvuKey,
        msg: I::Msg,
        reply: Reply<I::Reply>,
    },
    /// An ask applied at most once under `once` (see `crate::once`).
    AskOnce {
        key: ImvuKey,
        msg: I::Msg,
        once: Box<str>,
        reply: Reply<I::Reply>,
    },
    Lifecycle {
        key: ImvuKey,
        transition: Transition,
        caller: Box<Caller>,
        reply: Reply<ImvuInfo>,
    },
    Inspect {
        key: ImvuKey,
        reply: Reply<ImvuInfo>,
    },
    /// Evict IMVUs idle for at least `idle_ms`; replies with how many were evicted, once
    /// everything they wrote is durable.
    Passivate {
        idle_ms: u64,
        reply: oneshot::Sender<usize>,
    },
    /// Drop the in-memory copy (a sibling restart in a swarm).
    Evict {
        key: ImvuKey,
    },
    /// The answer to an ask (or a child creation) the IMVU made: for `Imvu::on_reply`.
    Reply {
        key: ImvuKey,
        correlation: u64,
        reply: Box<Result<serde_json::Value, ActorError>>,
    },
    /// Answers that arrived together, in arrival order: for `Imvu::on_replies` (kinds that
    /// batch replies; the driver groups them).
    Replies {
        key: ImvuKey,
        replies: Vec<(u64, Box<Result<serde_json::Value, ActorError>>)>,
    },
    /// A timer the IMVU set fired: for `Imvu::on_timer`.
    Timer {
        key: ImvuKey,
        timer_id: u64,
    },
}

impl<I: Imvu> Command<I> {
    /// The IMVU the command is for (`None`: the whole shard).
    fn key(&self) -> Option<&ImvuKey> {
        match self {
            Self::Create { key, .. }
            | Self::Tell { key, .. }
            | Self::Ask { key, .. }
            | Self::AskOnce { key, .. }
            | Self::Lifecycle { key, .. }
            | Self::Inspect { key, .. }
            | Self::Evict { key }
            | Self::Reply { key, .. }
            | Self::Replies { key, .. }
            | Self::Timer { key, .. } => Some(key),
            Self::Passivate { .. } => None,
        }
    }
}

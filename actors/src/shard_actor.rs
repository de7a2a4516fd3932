//! A shard as a ractor actor, so the node's supervision tree (the ractor driver of
//! `vcos_supervision`) can restart it or escalate past it.
//!
//! The actor is thin on purpose: it owns the shard's tokio task and turns the task's end into
//! an actor outcome. The data path never touches ractor (its mailboxes are unbounded and cost
//! a lock-free queue push plus a span per message): commands go through the shard's own bounded
//! channel, whose receiver survives restarts behind a mutex, so nothing queued is lost when a
//! shard restarts.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use crate::host::{Command, ShardEnv, ShardExit, ShardSlot};
use crate::imvu::Imvu;

/// What the shard actor needs to (re)start its task.
pub(crate) struct ShardArgs<I: Imvu> {
    pub env: Arc<ShardEnv<I>>,
    pub rx: Arc<Mutex<mpsc::Receiver<Command<I>>>>,
    /// Where the task installs its shard for callers (see `host::link`).
    pub slot: Arc<ShardSlot<I>>,
}

impl<I: Imvu> Clone for ShardArgs<I> {
    fn clone(&self) -> Self {
        Self {
            env: self.env.clone(),
            rx: self.rx.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// The actor; one per (kind, shard).
pub(crate) struct ShardActor<I: Imvu>(std::marker::PhantomData<fn() -> I>);

impl<I: Imvu> ShardActor<I> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The shard task ended.
#[derive(Debug)]
pub(crate) struct TaskEnded(ShardExit);

impl<I: Imvu> Actor for ShardActor<I> {
    type Msg = TaskEnded;
    type State = (tokio::task::AbortHandle, JoinHandle<()>);
    type Arguments = ShardArgs<I>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShardArgs<I>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ShardArgs { env, rx, slot } = args;
        let work = tokio::spawn(async move {
            let mut rx = rx.lock_owned().await;
            slot.serve(env, &mut rx).await
        });
        let work_abort = work.abort_handle();
        let watcher = tokio::spawn(async move {
            let exit = match work.await {
                Ok(exit) => exit,
                Err(e) => ShardExit::Escalated(format!("shard task died: {e}")),
            };
            let _ = myself.cast(TaskEnded(exit));
        });
        Ok((work_abort, watcher))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: TaskEnded,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg.0 {
            ShardExit::Closed => {
                myself.stop(Some("shutdown".into()));
                Ok(())
            }
            ShardExit::Escalated(reason) => Err(reason.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stopping the actor stops its task: the receiver is released for a successor.
        state.0.abort();
        state.1.abort();
        Ok(())
    }
}

//! Typed and type-erased handles to the shards of one kind.
//!
//! [`KindRef<I>`] is what Rust callers use: typed messages, no serialisation, straight onto the
//! shard's bounded channel (or, for an ask to an idle shard, run at once on the caller's
//! thread: `host::link`). [`ErasedKind`] is the same thing behind JSON, for the HTTP facade
//! and swarms, which only know a kind by name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::ActorError;
use crate::host::{Command, ImvuInfo, ShardLink};
use crate::ids::{Caller, ImvuKey};
use crate::imvu::Imvu;
use crate::lifecycle::Transition;

/// A boxed future, for the object-safe [`ErasedKind`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future of an enqueued ask's JSON reply ([`ErasedKind::ask_json_enqueued`]).
pub type JsonReply = BoxFuture<'static, Result<serde_json::Value, ActorError>>;

/// Typed handle to the shards of kind `I`.
pub struct KindRef<I: Imvu> {
    shards: Arc<[Arc<ShardLink<I>>]>,
    description: &'static str,
}

impl<I: Imvu> Clone for KindRef<I> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            description: self.description,
        }
    }
}

fn unavailable(_: impl std::fmt::Debug) -> ActorError {
    ActorError::Unavailable("the IMVU host is stopped".into())
}

impl<I: Imvu> KindRef<I> {
    pub(crate) fn new(shards: Arc<[Arc<ShardLink<I>>]>, description: &'static str) -> Self {
        Self {
            shards,
            description,
        }
    }

    fn shard(&self, key: &ImvuKey) -> &ShardLink<I> {
        // Ids are dense and sequential: modulo spreads them evenly.
        let index = (key.id.0 % self.shards.len() as u64) as usize;
        &self.shards[index]
    }

    /// Sends without waiting for a reply; waits for room in the mailbox (back-pressure).
    pub async fn tell(&self, key: &ImvuKey, msg: I::Msg) -> Result<(), ActorError> {
        self.send(key, Command::Tell { key: *key, msg }).await
    }

    /// Enqueues a command, waiting for room when the mailbox is full.
    async fn send(&self, key: &ImvuKey, command: Command<I>) -> Result<(), ActorError> {
        self.shard(key).send(command).await.map_err(unavailable)
    }

    /// Sends without waiting at all: a full mailbox is `QueueFull`.
    pub fn try_tell(&self, key: &ImvuKey, msg: I::Msg) -> Result<(), ActorError> {
        self.shard(key)
            .try_send(Command::Tell {
                key: key.clone(),
                msg,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ActorError::QueueFull(format!("mailbox of {key} is full"))
                }
                mpsc::error::TrySendError::Closed(_) => unavailable(()),
            })
    }

    /// Sends and waits for the reply (durable first, for `Persistence::EveryMessage`).
    /// An idle shard with nothing queued runs the ask at once on the caller's thread.
    pub async fn ask(&self, key: &ImvuKey, msg: I::Msg) -> Result<I::Reply, ActorError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Ask { key: *key, msg, reply };
        if let Err(command) = self.shard(key).try_inline(command) {
            self.send(key, command).await?;
        }
        rx.await.map_err(unavailable)?
    }

    /// A command with an answer (create, lifecycle, inspect…); like [`Self::ask`], run at once
    /// on the caller's thread when the shard is idle with nothing queued.
    pub(crate) async fn request<T>(
        &self,
        key: &ImvuKey,
        make: impl FnOnce(oneshot::Sender<Result<T, ActorError>>) -> Command<I>,
    ) -> Result<T, ActorError> {
        let (reply, rx) = oneshot::channel();
        let shard = self.shard(key);
        if let Err(command) = shard.try_inline(make(reply)) {
            shard.send(command).await.map_err(unavailable)?;
        }
        rx.await.map_err(unavailable)?
    }

    /// Decodes a JSON message for `key`. The runtime's directory maps ids to kinds whatever
    /// the tenant, so a key naming no IMVU of this kind (another tenant's id) is routed here
    /// too: a message this kind does not take is refused naming the kind only once the key is
    /// known to be one of its IMVUs, else the key's own answer (`not_found`) comes back and
    /// nothing about another tenant's IMVU leaks.
    async fn decode(&self, key: &ImvuKey, msg: serde_json::Value) -> Result<I::Msg, ActorError> {
        match serde_json::from_value(msg) {
            Ok(msg) => Ok(msg),
            Err(e) => {
                let key = *key;
                self.request(&key, |reply| Command::Inspect { key, reply }).await?;
                Err(ActorError::BadRequest {
                    field: "message".into(),
                    reason: format!("not a valid {} message: {e}", I::KIND),
                })
            }
        }
    }

    /// Creates an IMVU under a caller-chosen key (ids come from the runtime's allocator).
    pub(crate) async fn create(
        &self,
        key: ImvuKey,
        caller: Caller,
    ) -> Result<ImvuInfo, ActorError> {
        self.request(&key.clone(), |reply| Command::Create {
            key,
            caller: Box::new(caller),
            reply,
        })
        .await
    }

    /// Asks every shard to passivate IMVUs idle for `idle_ms`; returns how many were evicted.
    pub async fn passivate(&self, idle_ms: u64) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            if shard
                .send(Command::Passivate { idle_ms, reply })
                .await
                .is_ok()
            {
                total += rx.await.unwrap_or(0);
            }
        }
        total
    }
}

/// A kind known only by name: JSON in, JSON out.
pub trait ErasedKind: Send + Sync + 'static {
    /// Kind name.
    fn name(&self) -> &'static str;
    /// One-line description.
    fn description(&self) -> &'static str;
    /// Creates an IMVU with this key.
    fn create(&self, key: ImvuKey, caller: Caller) -> BoxFuture<'_, Result<ImvuInfo, ActorError>>;
    /// Sends a JSON message and returns the JSON reply.
    fn ask_json(
        &self,
        key: ImvuKey,
        msg: serde_json::Value,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActorError>>;
    /// Runs a lifecycle transition.
    fn lifecycle(
        &self,
        key: ImvuKey,
        transition: Transition,
        caller: Caller,
    ) -> BoxFuture<'_, Result<ImvuInfo, ActorError>>;
    /// Reads state and lifecycle.
    fn inspect(&self, key: ImvuKey) -> BoxFuture<'_, Result<ImvuInfo, ActorError>>;
    /// Passivates idle IMVUs.
    fn passivate(&self, idle_ms: u64) -> BoxFuture<'_, usize>;
    /// Drops the in-memory copy of one IMVU (it reloads from canon).
    fn evict(&self, key: ImvuKey) -> BoxFuture<'_, ()>;
    /// Sends a JSON message without waiting for a reply (waits for room in the mailbox).
    fn tell_json(&self, key: ImvuKey, msg: serde_json::Value) -> BoxFuture<'_, Result<(), ActorError>>;
    /// Enqueues a JSON ask (waits for room in the mailbox) and returns the future of its
    /// reply: a caller delivering messages in order enqueues the next one without waiting
    /// for this one to be handled.
    fn ask_json_enqueued(&self, key: ImvuKey, msg: serde_json::Value) -> BoxFuture<'_, Result<JsonReply, ActorError>>;
    /// Hands an IMVU the answer to one of its asks (to its `on_reply`, in mailbox order).
    fn reply(
        &self,
        key: ImvuKey,
        correlation: u64,
        reply: Result<serde_json::Value, ActorError>,
    ) -> BoxFuture<'_, Result<(), ActorError>>;
}

impl<I: Imvu> ErasedKind for KindRef<I> {
    fn name(&self) -> &'static str {
        I::KIND
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn create(&self, key: ImvuKey, caller: Caller) -> BoxFuture<'_, Result<ImvuInfo, ActorError>> {
        Box::pin(KindRef::create(self, key, caller))
    }

    fn ask_json(
        &self,
        key: ImvuKey,
        msg: serde_json::Value,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActorError>> {
        Box::pin(async move {
            let (once, msg) = crate::once::split(msg)?;
            let msg = self.decode(&key, msg).await?;
            let reply = match once {
                None => self.ask(&key, msg).await,
                Some(once) => self.request(&key, |reply| Command::AskOnce { key, msg, once, reply }).await,
            };
            match reply {
                Ok(reply) => serde_json::to_value(reply).map_err(|e| ActorError::Store(format!("reply does not serialise: {e}"))),
                Err(e) => crate::once::replayed(e),
            }
        })
    }

    fn lifecycle(
        &self,
        key: ImvuKey,
        transition: Transition,
        caller: Caller,
    ) -> BoxFuture<'_, Result<ImvuInfo, ActorError>> {
        Box::pin(async move {
            self.request(&key.clone(), |reply| Command::Lifecycle {
                key,
                transition,
                caller: Box::new(caller),
                reply,
            })
            .await
        })
    }

    fn inspect(&self, key: ImvuKey) -> BoxFuture<'_, Result<ImvuInfo, ActorError>> {
        Box::pin(async move {
            self.request(&key.clone(), |reply| Command::Inspect { key, reply })
                .await
        })
    }

    fn passivate(&self, idle_ms: u64) -> BoxFuture<'_, usize> {
        Box::pin(KindRef::passivate(self, idle_ms))
    }

    fn evict(&self, key: ImvuKey) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.shard(&key).send(Command::Evict { key }).await;
        })
    }

    fn ask_json_enqueued(&self, key: ImvuKey, msg: serde_json::Value) -> BoxFuture<'_, Result<JsonReply, ActorError>> {
        Box::pin(async move {
            let (once, msg) = crate::once::split(msg)?;
            let msg = self.decode(&key, msg).await?;
            let (reply, rx) = oneshot::channel();
            let command = match once {
                None => Command::Ask { key, msg, reply },
                Some(once) => Command::AskOnce { key, msg, once, reply },
            };
            self.send(&key, command).await?;
            let answer: JsonReply = Box::pin(async move {
                match rx.await.map_err(unavailable)? {
                    Ok(reply) => serde_json::to_value(reply).map_err(|e| ActorError::Store(format!("reply does not serialise: {e}"))),
                    Err(e) => crate::once::replayed(e),
                }
            });
            Ok(answer)
        })
    }

    fn tell_json(&self, key: ImvuKey, msg: serde_json::Value) -> BoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move {
            // A tell has no answer to repeat: its envelope is only unwrapped.
            let (_, msg) = crate::once::split(msg)?;
            let msg = self.decode(&key, msg).await?;
            self.tell(&key, msg).await
        })
    }

    fn reply(
        &self,
        key: ImvuKey,
        correlation: u64,
        reply: Result<serde_json::Value, ActorError>,
    ) -> BoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move {
            self.send(&key, Command::Reply { key, correlation, reply: Box::new(reply) }).await
        })
    }
}

//! Links: how messages between IMVUs travel between nodes — batched, in order, one-way.
//!
//! Each destination node has one bounded queue and one task that drains it: it takes what is
//! queued (up to [`BATCH_ITEMS_MAX`] items or [`BATCH_BYTES_MAX`] bytes), sends it as one
//! [`RemoteFrame::Batch`] over the canon connection, and waits for the batch's
//! acknowledgement before sending the next. The receiver delivers a batch's items in order,
//! each into its IMVU's mailbox, and acknowledges once all are enqueued. So:
//! - **order**: messages from this node to one IMVU arrive in the order they were sent, while
//!   the IMVU's owner stays the same (a message that finds no owner waits on the slow path,
//!   [`super::route`], and may be overtaken);
//! - **back-pressure**: a full mailbox on the receiver holds the batch, the sender's queue
//!   fills, and past [`QUEUE_LEN_MAX`] a tell is dropped (counted) and an ask answered
//!   `queue_full` at once: a router never blocks a shard;
//! - **asks**: an ask carries the asking node and a number. The owner's acknowledgement of
//!   the batch waits a little ([`ANSWER_IN_ACK_WAIT`]) for the answers of the asks it carried
//!   and brings back those that came: an ask that is answered at once costs two frames, like
//!   a request and its response. An answer that takes longer goes back on its own, as a
//!   [`BatchItem::Answer`] in the owner's queue to that node. The asking node keeps every ask
//!   it sent in a table with a deadline (by the injected clock): an ask is answered exactly
//!   once, by its answer or by the timeout, whichever comes first;
//! - **at most once**: a batch that certainly did not arrive (the peer could not be reached)
//!   is re-sent item by item on the slow path; one whose fate is unknown (no acknowledgement
//!   in time) is not: its tells are lost (counted), its asks time out.
//!
//! This node is a destination too: IMVUs it serves get their messages through its own queue,
//! delivered by the same code without the network, so local messages keep their order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use vcos_actors::imvu::AskToken;
use vcos_actors::JsonReply;
use vcos_actors::router::ASK_TIMEOUT_MS_DEFAULT;
use vcos_actors::{ActorError, Caller, ImvuId, ImvuKey, TenantId};
use vcos_canon_raft::AppCallError;

use super::{foreign_target, home, lock, route, target, Inner, ROUTED_IN_FLIGHT_MAX};
use crate::placement::bucket_of;
use crate::region::Home;
use crate::remote::{BatchItem, Op, RemoteFrame, RemoteReply, HOPS_MAX};

/// Items queued towards one node, at most; past it tells are dropped and asks refused.
pub(super) const QUEUE_LEN_MAX: usize = 65_536;
/// Items in one batch, at most.
pub(super) const BATCH_ITEMS_MAX: usize = 2_048;
/// Bytes in one batch, about, at most.
pub(super) const BATCH_BYTES_MAX: usize = 1 << 20;
/// Asks this node waits on at once, at most; past it an ask is answered `queue_full` at once.
pub(super) const PENDING_ASKS_MAX: usize = 1 << 20;
/// How long a batch waits for its acknowledgement.
const BATCH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch's acknowledgement waits for the answers to its asks, at most, so that
/// they ride it back (two frames per ask instead of four). Answers that take longer travel
/// on their own; a batch with a slow ask holds its link this long (the timer's granularity is
/// a millisecond, so up to twice this).
const ANSWER_IN_ACK_WAIT: Duration = Duration::from_millis(1);
/// How often the deadlines of pending asks are checked.
const ASK_SWEEP_MS: u64 = 100;

/// The queues, and the asks this node is waiting on.
pub(super) struct Links {
    queues: Mutex<BTreeMap<u64, Queue>>,
    /// Messages on the slow path at once, at most [`ROUTED_IN_FLIGHT_MAX`].
    waiting: Arc<tokio::sync::Semaphore>,
    pending: Mutex<BTreeMap<u64, PendingAsk>>,
    next_ask: AtomicU64,
}

struct Queue {
    addr: String,
    tx: mpsc::Sender<BatchItem>,
}

struct PendingAsk {
    token: AskToken,
    deadline_ms: u64,
}

/// Where a message for an IMVU goes now.
enum Destination {
    /// This node serves it.
    Here,
    /// Another node, at this canon address.
    Node(u64, String),
    /// No owner known now (failing over): the slow path waits for one.
    Unknown,
}

impl Links {
    /// Ask numbers start in a range of their own per incarnation, so that a late answer to
    /// an ask of a previous incarnation never completes a new one.
    pub(super) fn new(incarnation: u64) -> Self {
        let first = incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_0000_0000;
        Self {
            queues: Mutex::new(BTreeMap::new()),
            waiting: Arc::new(tokio::sync::Semaphore::new(ROUTED_IN_FLIGHT_MAX)),
            pending: Mutex::new(BTreeMap::new()), next_ask: AtomicU64::new(first),
        }
    }

    /// Asks waiting for an answer.
    pub(super) fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// Sends a message between IMVUs: `ask` is the asking IMVU's token, if it is an ask.
pub(super) fn send(inner: &Arc<Inner>, to: &ImvuKey, message: Vec<u8>, ask: Option<AskToken>) {
    let tenant = to.tenant.as_str().to_owned();
    let item = match ask {
        None => BatchItem::Tell { tenant, id: to.id.0, message, hops: 0 },
        Some(token) => {
            if inner.links.pending_len() >= PENDING_ASKS_MAX {
                metrics::counter!("vcos_cluster_link_refused_total").increment(1);
                let error = ActorError::QueueFull(format!("{PENDING_ASKS_MAX} asks between IMVUs wait for answers on this node"));
                let inner = Arc::clone(inner);
                tokio::spawn(async move { inner.runtime.deliver_reply(token, Err(error)).await });
                return;
            }
            let number = inner.links.next_ask.fetch_add(1, Ordering::Relaxed);
            let deadline_ms = inner.clock.now_ms() + ASK_TIMEOUT_MS_DEFAULT;
            lock(&inner.links.pending).insert(number, PendingAsk { token, deadline_ms });
            metrics::gauge!("vcos_cluster_asks_pending").set(inner.links.pending_len() as f64);
            BatchItem::Ask { tenant, id: to.id.0, message, hops: 0, reply_to: inner.config.me.node, ask: number }
        }
    };
    dispatch(inner, to, item);
}

/// Queues `item` (a tell or an ask for `key`) towards its IMVU's owner, or the slow path.
fn dispatch(inner: &Arc<Inner>, key: &ImvuKey, item: BatchItem) {
    match destination(inner, key) {
        Ok(Destination::Here) => enqueue(inner, inner.config.me.node, None, item),
        Ok(Destination::Node(node, addr)) => enqueue(inner, node, Some(&addr), item),
        Ok(Destination::Unknown) => slow_path(inner, *key, item),
        Err(e) => fail(inner, item, e),
    }
}

/// The owner of `key`'s bucket as this node sees it now (no waiting).
fn destination(inner: &Inner, key: &ImvuKey) -> Result<Destination, ActorError> {
    let bucket = bucket_of(key.tenant.as_str(), key.id.0);
    let home = home(inner, key)?;
    if home == Home::Here {
        let now = inner.clock.now_ms();
        let holder = {
            let leases = inner.leases.lock();
            if leases.serving(now, bucket).is_some() {
                return Ok(Destination::Here);
            }
            leases.recorded_holder(bucket).map(|h| h.node)
        };
        // The common case without a look at the members: a queue to the recorded holder
        // exists (it was alive when the queue was made; if it died since, its batch is not
        // delivered and its items take the slow path, which waits for the next owner).
        if let Some(node) = holder.filter(|&n| n != inner.config.me.node) {
            if let Some(queue) = lock(&inner.links.queues).get(&node) {
                return Ok(Destination::Node(node, queue.addr.clone()));
            }
        }
    }
    let members = inner.members.members();
    let peer = match &home {
        Home::Here => target(inner, bucket, &members),
        Home::Region(region) => foreign_target(inner, region, bucket, &members),
    };
    Ok(peer.map_or(Destination::Unknown, |m| Destination::Node(m.node_id, m.canon_addr)))
}

/// Puts `item` in the queue towards `node` (made on first use, with `addr`).
fn enqueue(inner: &Arc<Inner>, node: u64, addr: Option<&str>, item: BatchItem) {
    let tx = {
        let mut queues = lock(&inner.links.queues);
        let stale = match (queues.get(&node), addr) {
            (Some(queue), Some(addr)) => queue.addr != addr || queue.tx.is_closed(),
            (Some(queue), None) => queue.tx.is_closed(),
            (None, _) => true,
        };
        if stale {
            let addr = addr.unwrap_or_default().to_owned();
            let (tx, rx) = mpsc::channel(QUEUE_LEN_MAX);
            tokio::spawn(drain(Arc::downgrade(inner), node, addr.clone(), rx));
            queues.insert(node, Queue { addr, tx });
        }
        queues.get(&node).map(|q| q.tx.clone())
    };
    let Some(tx) = tx else { return };
    if let Err(e) = tx.try_send(item) {
        let item = match e {
            mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => item,
        };
        metrics::counter!("vcos_cluster_link_refused_total").increment(1);
        fail(inner, item, ActorError::QueueFull(format!("{QUEUE_LEN_MAX} messages queued towards node {node}")));
    }
}

/// The task of one queue: batches out, one at a time.
async fn drain(inner: Weak<Inner>, node: u64, addr: String, mut rx: mpsc::Receiver<BatchItem>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.weight();
        batch.push(first);
        while batch.len() < BATCH_ITEMS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.weight();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let items = std::mem::take(&mut batch);
        metrics::counter!("vcos_cluster_link_batches_total").increment(1);
        metrics::counter!("vcos_cluster_link_items_total").increment(items.len() as u64);
        if node == inner.config.me.node {
            let awaited = deliver(&inner, items).await;
            answer_later(&inner, awaited);
            continue;
        }
        let frame = RemoteFrame::Batch(items);
        let sent = inner.canon.call_app(node, &addr, frame.encode(), BATCH_ACK_TIMEOUT).await;
        let RemoteFrame::Batch(items) = frame else { continue };
        match sent {
            Ok(bytes) => complete_from_ack(&inner, node, &bytes).await,
            Err(AppCallError::NotDelivered { reason, .. }) => {
                // Certainly not handled: each message finds its owner again, waiting for one.
                tracing::debug!(node, %reason, items = items.len(), "batch not delivered; re-routing its messages");
                metrics::counter!("vcos_cluster_link_rerouted_total").increment(items.len() as u64);
                for item in items {
                    match item_key(&item) {
                        Ok(Some(key)) => slow_path(&inner, key, item),
                        Ok(None) => {} // an answer to a node that is gone: its ask times out
                        Err(e) => fail(&inner, item, e),
                    }
                }
            }
            Err(e @ AppCallError::Unknown { .. }) => {
                // Perhaps delivered: not sent again (at most once). Asks time out.
                tracing::debug!(node, error = %e, items = items.len(), "batch outcome unknown");
                metrics::counter!("vcos_cluster_link_unknown_total").increment(items.len() as u64);
            }
        }
    }
}

/// The IMVU a tell or an ask is for; `None` for an answer.
fn item_key(item: &BatchItem) -> Result<Option<ImvuKey>, ActorError> {
    match item {
        BatchItem::Tell { tenant, id, .. } | BatchItem::Ask { tenant, id, .. } => {
            Ok(Some(ImvuKey { tenant: TenantId::new(tenant)?, id: ImvuId(*id) }))
        }
        BatchItem::Answer { .. } => Ok(None),
    }
}

/// An ask enqueued in its IMVU's mailbox on this node, its answer still to come.
pub(super) struct Awaited {
    key: ImvuKey,
    reply_to: u64,
    ask: u64,
    reply: JsonReply,
}

/// Delivers a batch's items in order (on the receiving node, or on this node for its own
/// queue): each into its IMVU's mailbox, or on to its owner if this node does not serve it.
/// Returns the asks enqueued here, whose answers the caller sends back ([`answer_later`], or
/// [`answers_for_ack`] then [`answer_later`]).
pub(super) async fn deliver(inner: &Arc<Inner>, items: Vec<BatchItem>) -> Vec<Awaited> {
    let mut awaited = Vec::new();
    for item in items {
        if let BatchItem::Answer { ask, ok, body } = item {
            complete(inner, ask, BatchItem::answer_result(ok, &body)).await;
            continue;
        }
        let key = match item_key(&item) {
            Ok(Some(key)) => key,
            Ok(None) => continue,
            Err(e) => {
                fail(inner, item, e);
                continue;
            }
        };
        match destination(inner, &key) {
            Ok(Destination::Here) => awaited.extend(deliver_here(inner, key, item).await),
            Ok(_) => onward(inner, key, item),
            Err(e) => fail(inner, item, e),
        }
    }
    awaited
}

/// Enqueues a tell or an ask for `key` in its mailbox here; for an ask, returns its answer
/// to wait for (or sends back at once why it could not be enqueued).
async fn deliver_here(inner: &Arc<Inner>, key: ImvuKey, item: BatchItem) -> Option<Awaited> {
    let runtime = &inner.runtime;
    match item {
        BatchItem::Tell { message, .. } => {
            let delivered = match (runtime.tenant_or_load(&key.tenant), serde_json::from_slice(&message)) {
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(ActorError::BadRequest { field: "message".into(), reason: e.to_string() }),
                (Ok(_), Ok(message)) => runtime.tell_json(&key, message).await,
            };
            if let Err(e) = delivered {
                metrics::counter!("vcos_cluster_tells_failed_total").increment(1);
                tracing::debug!(%key, error = %e, "tell between IMVUs not delivered");
            }
            None
        }
        BatchItem::Ask { message, reply_to, ask, .. } => {
            let enqueued = match (runtime.tenant_or_load(&key.tenant), serde_json::from_slice(&message)) {
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(ActorError::BadRequest { field: "message".into(), reason: e.to_string() }),
                (Ok(_), Ok(message)) => runtime.ask_json_enqueued(&key, message).await,
            };
            match enqueued {
                Ok(reply) => Some(Awaited { key, reply_to, ask, reply }),
                Err(e) => {
                    answer_to(inner, reply_to, ask, &Err(e)).await;
                    None
                }
            }
        }
        BatchItem::Answer { .. } => None,
    }
}

/// Sends each answer back when it comes, each on its own task, within the ask timeout.
pub(super) fn answer_later(inner: &Arc<Inner>, awaited: Vec<Awaited>) {
    for Awaited { key, reply_to, ask, reply } in awaited {
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            let timeout = Duration::from_millis(ASK_TIMEOUT_MS_DEFAULT);
            let answer = tokio::time::timeout(timeout, reply)
                .await
                .unwrap_or_else(|_| Err(ActorError::Unavailable(format!("{key} did not answer within {ASK_TIMEOUT_MS_DEFAULT} ms"))));
            answer_to(&inner, reply_to, ask, &answer).await;
        });
    }
}

/// Waits up to [`ANSWER_IN_ACK_WAIT`] for the answers to the asks of node `from` that a batch
/// from it enqueued here, and returns those that came, to ride the batch's acknowledgement
/// (see [`batch_ack`]); the rest, and asks of other nodes (passed on through `from`), are sent
/// back later on their own.
pub(super) async fn answers_for_ack(inner: &Arc<Inner>, from: u64, awaited: Vec<Awaited>) -> Vec<BatchItem> {
    let (mine, others): (Vec<_>, Vec<_>) = awaited.into_iter().partition(|a| a.reply_to == from);
    answer_later(inner, others);
    if mine.is_empty() {
        return Vec::new();
    }
    // One timer for the whole batch, on tokio's time (which the simulator drives).
    let deadline = tokio::time::sleep(ANSWER_IN_ACK_WAIT);
    tokio::pin!(deadline);
    let mut answers = Vec::with_capacity(mine.len());
    let mut late = Vec::new();
    for mut awaited in mine {
        // A reply already there is taken even past the deadline (it is polled first).
        tokio::select! {
            biased;
            answer = &mut awaited.reply => answers.push(BatchItem::answer(awaited.ask, &answer)),
            () = &mut deadline => late.push(awaited),
        }
    }
    metrics::counter!("vcos_cluster_answers_in_ack_total").increment(answers.len() as u64);
    answer_later(inner, late);
    answers
}

/// The acknowledgement of a batch: empty, or the answers that ride it as a
/// [`RemoteFrame::Batch`] of [`BatchItem::Answer`]s.
pub(super) fn batch_ack(answers: Vec<BatchItem>) -> RemoteReply {
    if answers.is_empty() {
        return RemoteReply::Ok(Vec::new());
    }
    RemoteReply::Ok(RemoteFrame::Batch(answers).encode())
}

/// Completes the asks whose answers rode the acknowledgement `bytes` of a batch sent to `node`.
async fn complete_from_ack(inner: &Arc<Inner>, node: u64, bytes: &[u8]) {
    let body = match RemoteReply::decode(bytes) {
        Ok(RemoteReply::Ok(body)) => body,
        Ok(RemoteReply::Err(e)) => return tracing::debug!(node, error = %crate::remote::decode_error(&e), "batch refused"),
        Ok(RemoteReply::NotOwner { .. }) => return tracing::debug!(node, "batch answered as if it were a request"),
        Err(e) => return tracing::debug!(node, error = %e, "unreadable batch acknowledgement"),
    };
    if body.is_empty() {
        return;
    }
    match RemoteFrame::decode(&body) {
        Ok(RemoteFrame::Batch(answers)) => {
            for answer in answers {
                if let BatchItem::Answer { ask, ok, body } = answer {
                    complete(inner, ask, BatchItem::answer_result(ok, &body)).await;
                }
            }
        }
        Ok(_) => tracing::debug!(node, "a batch acknowledgement carried something other than answers"),
        Err(e) => tracing::debug!(node, error = %e, "unreadable answers in a batch acknowledgement"),
    }
}

/// Passes a tell or an ask on towards its owner (this node does not serve it), within the
/// hop limit.
fn onward(inner: &Arc<Inner>, key: ImvuKey, mut item: BatchItem) {
    let hops = match &mut item {
        BatchItem::Tell { hops, .. } | BatchItem::Ask { hops, .. } => hops,
        BatchItem::Answer { .. } => return,
    };
    if *hops >= HOPS_MAX {
        let error = ActorError::Unavailable(format!("{key}: passed on {hops} times without reaching its owner"));
        return fail(inner, item, error);
    }
    *hops += 1;
    metrics::counter!("vcos_cluster_link_onward_total").increment(1);
    dispatch(inner, &key, item);
}

/// Waits for an owner on the slow path ([`route`]), then delivers; an ask's answer goes back.
fn slow_path(inner: &Arc<Inner>, key: ImvuKey, item: BatchItem) {
    let Ok(permit) = Arc::clone(&inner.links.waiting).try_acquire_owned() else {
        metrics::counter!("vcos_cluster_routed_refused_total").increment(1);
        let error = ActorError::QueueFull(format!("{ROUTED_IN_FLIGHT_MAX} messages between IMVUs wait for their owner on this node"));
        return fail(inner, item, error);
    };
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let _permit = permit;
        let caller = Caller::internal(&key.tenant, "imvu");
        match item {
            BatchItem::Tell { message, hops, .. } => {
                if let Err(e) = route(&inner, &key, &caller, Op::Tell { message }, hops).await {
                    metrics::counter!("vcos_cluster_tells_failed_total").increment(1);
                    tracing::debug!(%key, error = %e, "tell between IMVUs not delivered");
                }
            }
            BatchItem::Ask { message, hops, reply_to, ask, .. } => {
                let answer = match route(&inner, &key, &caller, Op::Ask { message }, hops).await {
                    Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ActorError::Unavailable(format!("unreadable reply: {e}"))),
                    Err(e) => Err(e),
                };
                answer_to(&inner, reply_to, ask, &answer).await;
            }
            BatchItem::Answer { .. } => {}
        }
    });
}

/// A tell or an ask that cannot be delivered: a tell is dropped (counted), an ask answered
/// with `error`.
fn fail(inner: &Arc<Inner>, item: BatchItem, error: ActorError) {
    match item {
        BatchItem::Tell { .. } => {
            metrics::counter!("vcos_cluster_tells_failed_total").increment(1);
            tracing::debug!(%error, "tell between IMVUs dropped");
        }
        BatchItem::Ask { reply_to, ask, .. } => {
            let inner = Arc::clone(inner);
            tokio::spawn(async move { answer_to(&inner, reply_to, ask, &Err(error)).await });
        }
        BatchItem::Answer { .. } => {}
    }
}

/// Sends the answer to ask `ask` of node `reply_to` (this node: completes it here).
async fn answer_to(inner: &Arc<Inner>, reply_to: u64, ask: u64, answer: &Result<serde_json::Value, ActorError>) {
    if reply_to == inner.config.me.node {
        return complete(inner, ask, answer.clone()).await;
    }
    // The queue towards the asking node usually exists (its ask came that way round): no
    // look at the members on this path.
    let queued = lock(&inner.links.queues).get(&reply_to).filter(|q| !q.tx.is_closed()).map(|q| q.addr.clone());
    let addr = queued.or_else(|| inner.members.members().into_iter().find(|m| m.node_id == reply_to).map(|m| m.canon_addr));
    match addr {
        Some(addr) => enqueue(inner, reply_to, Some(&addr), BatchItem::answer(ask, answer)),
        // The asking node is gone; so is its ask.
        None => metrics::counter!("vcos_cluster_answers_dropped_total").increment(1),
    }
}

/// Completes ask `ask` of this node with `answer`, if it still waits (once: the table entry
/// is taken).
async fn complete(inner: &Arc<Inner>, ask: u64, answer: Result<serde_json::Value, ActorError>) {
    let Some(pending) = lock(&inner.links.pending).remove(&ask) else {
        metrics::counter!("vcos_cluster_answers_late_total").increment(1);
        return;
    };
    inner.runtime.deliver_reply(pending.token, answer).await;
}

/// Answers asks whose deadline passed with a timeout, every [`ASK_SWEEP_MS`].
pub(super) async fn sweep_asks(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ASK_SWEEP_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.clock.now_ms();
        let expired: Vec<PendingAsk> = {
            // Numbers grow with time and every ask has the same timeout: deadlines are in
            // number order, so the expired ones are a prefix.
            let mut pending = lock(&inner.links.pending);
            let mut expired = Vec::new();
            while let Some(entry) = pending.first_entry().filter(|e| e.get().deadline_ms <= now) {
                expired.push(entry.remove());
            }
            expired
        };
        metrics::gauge!("vcos_cluster_asks_pending").set(inner.links.pending_len() as f64);
        for pending in expired {
            metrics::counter!("vcos_cluster_asks_timed_out_total").increment(1);
            let error = ActorError::Unavailable(format!("no answer within {ASK_TIMEOUT_MS_DEFAULT} ms"));
            inner.runtime.deliver_reply(pending.token, Err(error)).await;
        }
    }
}

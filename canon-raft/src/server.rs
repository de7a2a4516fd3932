//! The receiving side of canon connections: frames in, replies out.
//!
//! Every frame is validated before it is acted on: the bytes (rkyv `bytecheck`), the cluster id
//! (another cluster's frame closes the connection), the target node id (a frame for another
//! node is refused with [`Refusal::WrongNode`]) and the region name (a Raft message for a region
//! this node does not host yet creates that region's group as a learner — that is how a node
//! receives other regions' canons; anything else for an unknown region is refused). A corrupt
//! or oversized frame closes the connection; nothing panics.
//!
//! Client writes are handed to Raft in the order they arrive on a connection (so a follower's
//! forwarded batches keep their order) and answered as they commit; everything else is
//! answered concurrently.

use futures_util::StreamExt as _;
use openraft::error::{ClientWriteError, RaftError};
use tokio_util::codec::FramedRead;

use crate::in_flight::InFlight;
use crate::node::{validate_region, CanonError, CanonNode};
use crate::frame_sink::FrameSink;
use crate::transport::{codec, BoxStream};
use crate::wire::{self, Body, Frame, Refusal, Reply, Rpc};

/// Requests of one connection being answered at once; past it the connection is not read
/// until one finishes (a peer cannot make the node hold unbounded work).
const CONNECTION_IN_FLIGHT_MAX: usize = 1024;

fn rejected(reason: &'static str) {
    metrics::counter!("vcos_canon_frames_rejected_total", "reason" => reason).increment(1);
}

impl CanonNode {
    /// Accepts canon connections on `listener` until it fails.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let node = self.clone();
            tokio::spawn(async move {
                tracing::debug!(%peer, "canon connection accepted");
                node.serve_connection(Box::new(stream)).await;
            });
        }
    }

    /// Serves one connection until it closes or misbehaves; a peer that does not prove the
    /// cluster secret first is refused before any frame is read.
    pub async fn serve_connection(&self, mut stream: BoxStream) {
        if let Some(secret) = &self.inner.secret {
            if let Err(reason) = crate::auth::server_handshake(&mut stream, secret).await {
                tracing::warn!(%reason, "canon connection refused: the peer did not prove the cluster secret");
                return;
            }
        }
        let (read, write) = crate::transport::split(stream);
        let (replies, writer) = FrameSink::new(write);
        let writer = tokio::spawn(writer);
        let cluster = self.inner.cluster_id;
        // Requests that are not answered at once are polled here, beside the reading, not on
        // tasks of their own: an answer that comes (an IMVU's reply to an ask a batch carried)
        // goes out from this task without a spawn and the wake-up of another worker thread
        // that a spawn costs (and without the self-wake of `FuturesUnordered`, see
        // `in_flight`).
        let mut answering = InFlight::new();
        let mut frames = FramedRead::new(read, codec());
        loop {
            let next = tokio::select! {
                biased;
                Some((id, answer)) = answering.next(), if !answering.is_empty() => {
                    if replies.send(Frame { cluster, id, body: Body::Reply(answer) }).await.is_err() {
                        break;
                    }
                    continue;
                }
                next = frames.next(), if answering.len() < CONNECTION_IN_FLIGHT_MAX => next,
            };
            let Some(next) = next else { break };
            let bytes = match next {
                Ok(bytes) => bytes,
                Err(e) => {
                    rejected("unreadable");
                    tracing::warn!(error = %e, "closing canon connection: unreadable or oversized frame");
                    break;
                }
            };
            let frame = match wire::decode(&bytes) {
                Ok(frame) => frame,
                Err(e) => {
                    rejected("corrupt");
                    tracing::warn!(error = %e, "closing canon connection");
                    break;
                }
            };
            if frame.cluster != self.inner.cluster_id {
                rejected("unknown_cluster");
                tracing::warn!(cluster = frame.cluster, "closing canon connection: frame from another cluster");
                break;
            }
            let Body::Request { group, from, to, rpc } = frame.body else {
                rejected("unexpected_reply");
                tracing::warn!("closing canon connection: a reply arrived on a server connection");
                break;
            };
            let id = frame.id;
            let reply = |reply: Reply| Frame { cluster: self.inner.cluster_id, id, body: Body::Reply(reply) };
            if to != self.inner.id {
                rejected("wrong_node");
                let _ = replies.send(reply(Reply::Refused(Refusal::WrongNode { actual: self.inner.id }))).await;
                continue;
            }
            let handled = self.dispatch(&group, from, rpc).await;
            match handled {
                Dispatched::Now(answer) => {
                    if replies.send(reply(answer)).await.is_err() {
                        break;
                    }
                }
                Dispatched::Later(mut pending) => {
                    // Most app messages are enqueued at once (a batch of IMVU messages into
                    // free mailboxes): answered here, they cost no task hand-off.
                    if let Some(answer) = poll_once(&mut pending).await {
                        if replies.send(reply(answer)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    answering.push(async move { (id, pending.await) });
                }
            }
        }
        // What was taken in is finished and answered (while the peer still reads), as it
        // would be on tasks of its own.
        while let Some((id, answer)) = answering.next().await {
            let _ = replies.send(Frame { cluster, id, body: Body::Reply(answer) }).await;
        }
        drop(replies);
        let _ = writer.await;
    }

    async fn dispatch(&self, region: &str, from: u64, rpc: Rpc) -> Dispatched {
        if let Err(e) = validate_region(region) {
            rejected("bad_region");
            return Dispatched::Now(Reply::Refused(Refusal::Failed(e.to_string())));
        }
        if let Rpc::App(payload) = rpc {
            // App messages need no group: they go to the handler the node was given.
            let Some(handler) = self.app_handler() else {
                rejected("no_app_handler");
                return Dispatched::Now(Reply::Refused(Refusal::Failed("this node takes no app messages yet".into())));
            };
            return Dispatched::Later(Box::pin(async move { Reply::App(handler.handle(from, payload).await) }));
        }
        let is_raft = matches!(rpc, Rpc::Append(_) | Rpc::Vote(_) | Rpc::Snapshot(_));
        let group = match self.group(region) {
            Ok(group) => group,
            Err(CanonError::UnknownRegion(_)) if is_raft => match self.open_group(region).await {
                Ok(group) => {
                    tracing::info!(region, from, "hosting another region's canon as a learner");
                    group
                }
                Err(e) => return Dispatched::Now(Reply::Refused(Refusal::Failed(e.to_string()))),
            },
            Err(e) => return Dispatched::Now(Reply::Refused(Refusal::Failed(e.to_string()))),
        };
        match rpc {
            Rpc::ClientWrite(request) => {
                // Enqueued now, in arrival order; answered when applied.
                match group.raft().client_write_ff(request).await {
                    Ok(receiver) => {
                        let node = self.clone();
                        let region = region.to_owned();
                        let deadline = self.request_deadline();
                        Dispatched::Later(Box::pin(async move {
                            // Bounded: a leader without a quorum never commits; the sender
                            // retries (the request is deduplicated) until its own deadline.
                            let Ok(answer) = tokio::time::timeout(deadline, receiver).await else {
                                return Reply::Refused(Refusal::Failed(format!("not committed within {deadline:?}: no quorum answered")));
                            };
                            match answer {
                                Ok(Ok(done)) => Reply::ClientWrite { response: done.data, log_index: done.log_id.index },
                                Ok(Err(ClientWriteError::ForwardToLeader(_))) => {
                                    Reply::Refused(Refusal::NotLeader { leader: node.group(&region).ok().and_then(|g| g.leader()) })
                                }
                                Ok(Err(e)) => Reply::Refused(Refusal::Failed(e.to_string())),
                                Err(_) => Reply::Refused(Refusal::Failed("raft stopped before answering".into())),
                            }
                        }))
                    }
                    Err(e) => Dispatched::Now(Reply::Refused(Refusal::Failed(e.to_string()))),
                }
            }
            Rpc::Append(append) => {
                let commit = append.leader_commit.map_or(0, |id| id.index);
                let group = group.clone();
                Dispatched::Later(Box::pin(async move {
                    match group.raft().append_entries(append.into()).await {
                        Ok(response) => {
                            group.record_contact(commit);
                            Reply::Append(response.into())
                        }
                        Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
                    }
                }))
            }
            Rpc::Vote(vote) => {
                let group = group.clone();
                Dispatched::Later(Box::pin(async move {
                    match group.raft().vote(vote.into()).await {
                        Ok(response) => Reply::Vote(response.into()),
                        Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
                    }
                }))
            }
            Rpc::Snapshot(snapshot) => {
                let group = group.clone();
                Dispatched::Later(Box::pin(async move {
                    match group.raft().install_snapshot(snapshot.into()).await {
                        Ok(response) => Reply::Snapshot(response.vote.into()),
                        Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
                    }
                }))
            }
            Rpc::ReadIndex => {
                let group = group.clone();
                let deadline = self.request_deadline();
                Dispatched::Later(Box::pin(async move {
                    match tokio::time::timeout(deadline, group.leader_read_index()).await {
                        Ok(Ok(index)) => Reply::ReadIndex(index),
                        Ok(Err(RaftError::APIError(_))) => Reply::Refused(Refusal::NotLeader { leader: group.leader() }),
                        Ok(Err(RaftError::Fatal(e))) => Reply::Refused(Refusal::Failed(e.to_string())),
                        Err(_) => Reply::Refused(Refusal::Failed(format!("no quorum confirmed the leadership within {deadline:?}"))),
                    }
                }))
            }
            Rpc::AddMember { node_id, info, voter } => {
                let node = self.clone();
                let region = region.to_owned();
                Dispatched::Later(Box::pin(async move { membership_reply(node.add_member(&region, node_id, info, voter).await) }))
            }
            Rpc::Promote { node_id } => {
                let node = self.clone();
                let region = region.to_owned();
                Dispatched::Later(Box::pin(async move { membership_reply(node.promote(&region, node_id).await) }))
            }
            Rpc::Removed => {
                if region == self.region() {
                    self.mark_removed(from);
                }
                Dispatched::Now(Reply::Done)
            }
            Rpc::App(_) => unreachable!("handled before the group lookup"),
            Rpc::Remove { node_id } => {
                let node = self.clone();
                let region = region.to_owned();
                Dispatched::Later(Box::pin(async move { membership_reply(node.remove_member(&region, node_id).await) }))
            }
        }
    }
}

fn membership_reply(result: Result<(), CanonError>) -> Reply {
    match result {
        Ok(()) => Reply::Done,
        Err(CanonError::Refused(reason)) => Reply::Refused(Refusal::Membership(reason)),
        Err(e @ (CanonError::NotPromoted(_) | CanonError::Unavailable { .. })) => Reply::Refused(Refusal::Membership(crate::membership::tag_error(&e))),
        Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
    }
}

/// A reply now, or one that comes when its future finishes.
/// Polls `future` once (with the caller's waker): its output if it is ready at once.
async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

enum Dispatched {
    Now(Reply),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>),
}

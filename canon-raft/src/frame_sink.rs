//! The writing side of a canon connection: frames out, in the order they were sent.
//!
//! A frame goes out directly from the task that sends it when nothing is queued before it and
//! the socket takes the bytes at once (the common case: small frames on a connection that is
//! not backed up). Otherwise it is queued for the connection's writer task, which writes what
//! is queued in one go and flushes once (many frames per syscall under load).
//!
//! Why not always the writer task: handing a frame to another task costs a task wake-up per
//! frame, and on a chain of wake-ups (a remote ask is reader → link → IMVU → link → writer)
//! tokio stops using its LIFO slot after three and wakes another worker thread instead: a
//! futex wake-up, a context switch and a migration, measured as most of a node's futex calls
//! on remote asks.
//!
//! Order: a sender writes directly only when no frame waits in the queue (checked while it
//! holds the sink), so a frame never overtakes one sent before it. A direct write never awaits
//! while it holds the sink, so a sender that is cancelled never leaves half a frame behind;
//! bytes the socket did not take at once stay in the sink's buffer, and the writer task is told
//! to flush them.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};

use crate::transport::codec;
use crate::wire::{self, Frame};

/// How many frames may wait for a connection's writer task.
const QUEUE_MAX: usize = 4096;

type Shared<W> = Arc<tokio::sync::Mutex<FramedWrite<W, LengthDelimitedCodec>>>;

/// The connection is closed (a write failed, or its writer stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closed")]
pub(crate) struct Closed;

/// Sends frames on one connection; see the module doc.
pub(crate) struct FrameSink<W> {
    sink: Shared<W>,
    /// `Some(frame)` to write; `None` to flush what a direct write left in the buffer.
    queue: mpsc::Sender<Option<Frame>>,
    /// Frames queued for the writer task that are not in the sink's buffer yet.
    queued: Arc<AtomicUsize>,
}

/// What a direct write did.
enum Direct {
    /// The frame is in the sink: written, or left for the writer task to flush.
    Done,
    /// Not attempted: the frame goes through the queue.
    Queue(Frame),
    Failed,
}

impl<W: AsyncWrite + Send + Unpin + 'static> FrameSink<W> {
    /// A sink over `write`, and the writer task to spawn beside it (it ends when the sink is
    /// dropped and everything queued is written, or when a write fails).
    pub(crate) fn new(write: W) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let sink: Shared<W> = Arc::new(tokio::sync::Mutex::new(FramedWrite::new(write, codec())));
        let (queue, queue_rx) = mpsc::channel(QUEUE_MAX);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = write_queued(Arc::clone(&sink), queue_rx, Arc::clone(&queued));
        (Self { sink, queue, queued }, writer)
    }

    /// Whether the connection is known to be closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Sends `frame`: directly if it can go at once, else through the writer task (waiting for
    /// room in its queue).
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), Closed> {
        let mut frame = Some(frame);
        let direct = std::future::poll_fn(|cx| Poll::Ready(self.try_direct(&mut frame, cx))).await;
        let frame = match direct {
            Direct::Done => return Ok(()),
            Direct::Failed => return Err(Closed),
            Direct::Queue(frame) => frame,
        };
        // Room first, then counted and queued with no await between: a sender cancelled
        // while it waits for room leaves no count behind (a count that never went back to
        // zero would turn direct writes off for the connection's lifetime).
        let Ok(permit) = self.queue.reserve().await else { return Err(Closed) };
        self.queued.fetch_add(1, Ordering::SeqCst);
        permit.send(Some(frame));
        Ok(())
    }

    /// One attempt at writing `frame` from this task, without waiting for anything.
    fn try_direct(&self, frame: &mut Option<Frame>, cx: &mut Context<'_>) -> Direct {
        let Some(taken) = frame.take() else { return Direct::Failed };
        if self.queue.is_closed() {
            return Direct::Failed;
        }
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Direct::Queue(taken);
        }
        let Ok(mut sink) = self.sink.try_lock() else { return Direct::Queue(taken) };
        // Checked again under the sink: frames the writer task feeds are counted out only
        // once they are in the buffer, so none is waiting before this one now.
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Direct::Queue(taken);
        }
        let mut sink = Pin::new(&mut *sink);
        match Sink::<bytes::Bytes>::poll_ready(sink.as_mut(), cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Direct::Failed,
            // The buffer is full and the socket is backed up: wait in the queue.
            Poll::Pending => return Direct::Queue(taken),
        }
        if Sink::<bytes::Bytes>::start_send(sink.as_mut(), bytes::Bytes::from(wire::encode(&taken))).is_err() {
            return Direct::Failed;
        }
        match Sink::<bytes::Bytes>::poll_flush(sink.as_mut(), cx) {
            Poll::Ready(Ok(())) => Direct::Done,
            Poll::Ready(Err(_)) => Direct::Failed,
            Poll::Pending => {
                // The socket took part of it: the writer task finishes the flush. A full queue
                // means the writer has frames to write and flushes after them anyway.
                match self.queue.try_send(None) {
                    Err(mpsc::error::TrySendError::Closed(_)) => Direct::Failed,
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Direct::Done,
                }
            }
        }
    }
}

/// The writer task: what is queued is fed to the sink in order, then flushed once.
async fn write_queued<W: AsyncWrite + Send + Unpin>(sink: Shared<W>, mut queue: mpsc::Receiver<Option<Frame>>, queued: Arc<AtomicUsize>) {
    while let Some(first) = queue.recv().await {
        let mut sink = sink.lock().await;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            if let Some(frame) = item {
                let fed = sink.feed(bytes::Bytes::from(wire::encode(&frame))).await;
                queued.fetch_sub(1, Ordering::SeqCst);
                if fed.is_err() {
                    return;
                }
            }
            next = queue.try_recv().ok();
        }
        if SinkExt::<bytes::Bytes>::flush(&mut *sink).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Body, Reply};
    use futures_util::StreamExt as _;
    use tokio_util::codec::FramedRead;

    fn frame(id: u64) -> Frame {
        Frame { cluster: 7, id, body: Body::Reply(Reply::Done) }
    }

    async fn read_ids(read: tokio::io::DuplexStream, n: usize) -> Vec<u64> {
        let mut frames = FramedRead::new(read, codec());
        let mut ids = Vec::new();
        while ids.len() < n {
            let bytes = frames.next().await.expect("a frame").expect("readable");
            ids.push(wire::decode(&bytes).expect("a valid frame").id);
        }
        ids
    }

    #[tokio::test]
    async fn frames_go_out_in_the_order_they_were_sent_direct_or_queued() {
        // A pipe smaller than the frames sent: direct writes fill it and later frames queue.
        let (write, read) = tokio::io::duplex(256);
        let (sink, writer) = FrameSink::new(write);
        let writer = tokio::spawn(writer);
        let reader = tokio::spawn(read_ids(read, 200));
        for id in 0..200 {
            sink.send(frame(id)).await.expect("open");
        }
        assert_eq!(reader.await.unwrap(), (0..200).collect::<Vec<_>>());
        drop(sink);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_frame_written_directly_needs_no_writer_task() {
        let (write, read) = tokio::io::duplex(4096);
        // The writer task is never spawned: an uncontended frame goes out from the sender.
        let (sink, _writer) = FrameSink::new(write);
        sink.send(frame(1)).await.expect("open");
        assert_eq!(read_ids(read, 1).await, vec![1]);
    }

    #[tokio::test]
    async fn a_sender_cancelled_while_the_queue_is_full_leaves_direct_writes_on() {
        let (write, read) = tokio::io::duplex(64);
        let (sink, writer) = FrameSink::new(write);
        // Fill the pipe, the sink's buffer and the queue: nobody reads and the writer task is
        // not running yet, so a send finally waits for room; that one is cancelled.
        let mut id = 0;
        loop {
            let before = sink.queued.load(Ordering::SeqCst);
            match tokio::time::timeout(std::time::Duration::from_millis(20), sink.send(frame(id))).await {
                Ok(sent) => {
                    sent.expect("open");
                    id += 1;
                }
                Err(_) => {
                    assert_eq!(sink.queued.load(Ordering::SeqCst), before, "the cancelled frame is not counted");
                    break;
                }
            }
        }
        assert!(sink.queued.load(Ordering::SeqCst) > 0, "some frames went through the queue");
        let writer = tokio::spawn(writer);
        let ids = read_ids(read, id as usize).await;
        assert_eq!(ids, (0..id).collect::<Vec<_>>());
        assert_eq!(sink.queued.load(Ordering::SeqCst), 0, "everything queued was written");
        drop(sink);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_refuses_frames() {
        let (write, read) = tokio::io::duplex(64);
        let (sink, writer) = FrameSink::new(write);
        drop(read);
        let writer = tokio::spawn(writer);
        let mut refused = false;
        for id in 0..10 {
            if sink.send(frame(id)).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "writes to a closed pipe must fail");
        drop(sink);
        writer.await.unwrap();
    }
}

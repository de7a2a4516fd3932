//! Byte streams between canon nodes, and the multiplexed connection that carries [`Frame`]s.
//!
//! [`Transport`] is the one seam between the canon layer and the network: production dials
//! tokio TCP ([`TcpTransport`]), the simulator dials turmoil's simulated TCP. Everything above
//! it (framing, request ids, timeouts, reconnects) is the same code in both.
//!
//! A [`Peer`] is the client side towards one address: one connection at a time, many requests
//! in flight on it (each frame has an id; replies are matched by id). A request that gets no
//! reply within its timeout fails with [`CallError::Timeout`] and retires the connection (a
//! stalled or half-open one would swallow every later request); a connection that fails is
//! dropped, failing its requests in flight, and the next call dials again. A call abandoned by
//! its caller (the future dropped, say when an HTTP client hung up first) leaves its deadline
//! behind: once it passes without a reply, the connection is retired just the same, so that
//! callers that always give up early cannot keep a dead connection alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::frame_sink::FrameSink;
use crate::wire::{self, Body, Frame, Reply, Rpc, FRAME_LEN_MAX};

/// A bidirectional byte stream to another node.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The stream as [`std::any::Any`], to find out whether it is a TCP stream.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The same, owned.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for S {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A boxed stream, so that the canon node is one type whatever network it runs on.
pub type BoxStream = Box<dyn ByteStream>;
/// The reading half of a [`BoxStream`].
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a [`BoxStream`].
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a connection into the halves its reader and writer tasks own. A TCP stream splits
/// into halves that share no lock ([`tokio::net::TcpStream::into_split`]);
/// [`tokio::io::split`], for any other stream (the simulator's), puts both halves behind one
/// mutex, which the reader and the writer, on two worker threads, contend for on every frame:
/// measured on remote asks, a sixth of the futex wake-ups of a node.
pub(crate) fn split(stream: BoxStream) -> (ReadHalf, WriteHalf) {
    if is_tcp(&stream) {
        if let Ok(tcp) = stream.into_any().downcast::<tokio::net::TcpStream>() {
            let (read, write) = tcp.into_split();
            return (Box::new(read), Box::new(write));
        }
        unreachable!("the stream was just found to be a TCP stream");
    }
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

/// Whether `stream` is a tokio TCP stream. Through the box's contents: `stream.as_any()` would
/// resolve to the blanket [`ByteStream`] impl of the `Box` itself and never see a TCP stream.
fn is_tcp(stream: &BoxStream) -> bool {
    let inner: &dyn ByteStream = &**stream;
    inner.as_any().is::<tokio::net::TcpStream>()
}

/// What dialing returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;

/// How a node reaches another node's address.
pub trait Transport: Send + Sync + 'static {
    /// Opens a stream to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> ConnectFuture;
}

/// Tokio TCP, with `TCP_NODELAY` (frames are small and latency-bound).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// The length-delimited codec of canon connections.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(FRAME_LEN_MAX).new_codec()
}

/// How dialing waits at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two dials of the same address.
pub const REDIAL_PAUSE: Duration = Duration::from_millis(200);

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The address could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No reply in time.
    #[error("no reply from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The connection closed before the reply came.
    #[error("connection to {addr} closed before the reply")]
    Closed {
        /// The address.
        addr: String,
    },
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Reply>>>>;
type Abandoned = Arc<Mutex<BTreeMap<u64, tokio::time::Instant>>>;

/// Records a call's deadline on its connection if the call is dropped while waiting.
struct AbandonGuard<'a> {
    conn: &'a Conn,
    id: u64,
    deadline: tokio::time::Instant,
    waiting: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if self.waiting {
            lock(&self.conn.abandoned).insert(self.id, self.deadline);
        }
    }
}

impl Conn {
    /// Whether a request abandoned by its caller has outlived its deadline without a reply.
    fn overdue(&self, now: tokio::time::Instant) -> bool {
        lock(&self.abandoned).values().any(|deadline| *deadline <= now)
    }
}

/// One live connection: its writer queue and its requests in flight.
struct Conn {
    frames: FrameSink<WriteHalf>,
    pending: Pending,
    /// Requests whose callers stopped waiting: id → the deadline they had.
    abandoned: Abandoned,
    /// Set (before the waiters are failed) when the reader or the writer stopped.
    closed: Arc<AtomicBool>,
}

/// The client side towards one address.
pub struct Peer {
    addr: String,
    cluster: u64,
    transport: Arc<dyn Transport>,
    conn: tokio::sync::Mutex<Slot>,
    next_id: AtomicU64,
}

/// The current connection, and when the last dial began (dials are spaced by
/// [`REDIAL_PAUSE`], so a peer that stopped answering is not flooded with connection attempts).
#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    dialed_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map of waiters is still a map of waiters.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Peer {
    /// A peer for `addr` in cluster `cluster`; nothing is dialed until the first call.
    pub fn new(addr: String, cluster: u64, transport: Arc<dyn Transport>) -> Self {
        Self { addr, cluster, transport, conn: tokio::sync::Mutex::new(Slot::default()), next_id: AtomicU64::new(1) }
    }

    /// The address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `rpc` for `group` to node `to` and waits for the reply, at most `timeout`.
    pub async fn call(&self, group: &str, from: u64, to: u64, rpc: Rpc, timeout: Duration) -> Result<Reply, CallError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        if conn.closed.load(Ordering::Acquire) {
            // The connection died before our waiter was registered: nobody would answer it.
            lock(&conn.pending).remove(&id);
            self.forget(&conn).await;
            return Err(CallError::Closed { addr: self.addr.clone() });
        }
        let frame = Frame { cluster: self.cluster, id, body: Body::Request { group: group.to_owned(), from, to, rpc } };
        if conn.frames.send(frame).await.is_err() {
            lock(&conn.pending).remove(&id);
            self.forget(&conn).await;
            return Err(CallError::Closed { addr: self.addr.clone() });
        }
        let mut guard = AbandonGuard { conn: &conn, id, deadline: tokio::time::Instant::now() + timeout, waiting: true };
        let answered = tokio::time::timeout(timeout, rx).await;
        guard.waiting = false;
        drop(guard);
        match answered {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => {
                self.forget(&conn).await;
                Err(CallError::Closed { addr: self.addr.clone() })
            }
            Err(_) => {
                lock(&conn.pending).remove(&id);
                // A connection that lost a reply may be half-open or stalled (a cut link): dial
                // afresh next time rather than queue behind it.
                self.forget(&conn).await;
                Err(CallError::Timeout { addr: self.addr.clone(), timeout })
            }
        }
    }

    /// Drops the connection (if it is still `conn`), so the next call dials again.
    async fn forget(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.conn.as_ref().is_some_and(|current| Arc::ptr_eq(current, conn)) {
            slot.conn = None;
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.conn.as_ref() {
            if !conn.frames.is_closed() && !conn.closed.load(Ordering::Acquire) {
                if !conn.overdue(tokio::time::Instant::now()) {
                    return Ok(Arc::clone(conn));
                }
                tracing::debug!(addr = %self.addr, "retiring a canon connection: an abandoned request got no reply in time");
                slot.conn = None;
            }
        }
        let unreachable = |reason: String| CallError::Unreachable { addr: self.addr.clone(), reason };
        let now = tokio::time::Instant::now();
        if let Some(at) = slot.dialed_at {
            if now.duration_since(at) < REDIAL_PAUSE {
                return Err(unreachable("reconnecting (the last attempt was just now)".into()));
            }
        }
        slot.dialed_at = Some(now);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, self.transport.connect(&self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("connect timed out after {CONNECT_TIMEOUT:?}"))),
        };
        let conn = Arc::new(start_client_conn(stream, self.addr.clone()));
        slot.conn = Some(Arc::clone(&conn));
        Ok(conn)
    }
}

/// Starts the writer and reader tasks of a client connection.
fn start_client_conn(stream: BoxStream, addr: String) -> Conn {
    let (read, write) = split(stream);
    let (frames, writer) = FrameSink::new(write);
    let pending: Pending = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let close = {
        let pending = Arc::clone(&pending);
        let closed = Arc::clone(&closed);
        move || {
            closed.store(true, Ordering::Release);
            // Fail every request still waiting: dropping their senders wakes them with an error.
            lock(&pending).clear();
        }
    };
    let writer_close = close.clone();
    tokio::spawn(async move {
        writer.await;
        writer_close();
    });
    let abandoned: Abandoned = Arc::default();
    let reader_pending = Arc::clone(&pending);
    let reader_abandoned = Arc::clone(&abandoned);
    tokio::spawn(async move {
        let mut frames = FramedRead::new(read, codec());
        while let Some(next) = frames.next().await {
            let frame = match next.map_err(|e| e.to_string()).and_then(|bytes| wire::decode(&bytes).map_err(|e| e.to_string())) {
                Ok(frame) => frame,
                Err(reason) => {
                    metrics::counter!("vcos_canon_frames_rejected_total", "reason" => "corrupt").increment(1);
                    tracing::warn!(%addr, %reason, "closing canon connection: bad frame");
                    break;
                }
            };
            let Body::Reply(reply) = frame.body else {
                tracing::warn!(%addr, "closing canon connection: a request arrived on a client connection");
                break;
            };
            if let Some(waiter) = lock(&reader_pending).remove(&frame.id) {
                if waiter.send(reply).is_err() {
                    lock(&reader_abandoned).remove(&frame.id);
                }
            }
        }
        close();
    });
    Conn { frames, pending, abandoned, closed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_boxed_tcp_stream_splits_without_a_lock_and_its_halves_work() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut far, _) = accepted.unwrap();
        let stream: BoxStream = Box::new(dialed.unwrap());
        assert!(is_tcp(&stream), "a boxed TCP stream must be seen as one");
        let duplex: BoxStream = Box::new(tokio::io::duplex(64).0);
        assert!(!is_tcp(&duplex));
        let (mut read, mut write) = split(stream);
        write.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        far.write_all(b"pong").await.unwrap();
        read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    /// Dials streams whose far end is kept open and never answers (a half-open connection),
    /// counting the dials.
    #[derive(Default)]
    struct Silent {
        dials: Arc<AtomicU64>,
        far_ends: Arc<Mutex<Vec<tokio::io::DuplexStream>>>,
    }

    impl Transport for Silent {
        fn connect(&self, _addr: &str) -> ConnectFuture {
            self.dials.fetch_add(1, Ordering::Relaxed);
            let (near, far) = tokio::io::duplex(1 << 20);
            lock(&self.far_ends).push(far);
            Box::pin(async move { Ok(Box::new(near) as BoxStream) })
        }
    }

    #[tokio::test]
    async fn a_connection_whose_abandoned_request_outlived_its_deadline_is_dialled_afresh() {
        let transport = Arc::new(Silent::default());
        let dials = transport.dials.clone();
        let peer = Peer::new("silent:1".into(), 7, transport);
        // The caller gives up (50 ms) before the call's own deadline (100 ms).
        let call = peer.call("r", 1, 2, Rpc::App(Vec::new()), Duration::from_millis(100));
        assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "nobody answers");
        assert_eq!(dials.load(Ordering::Relaxed), 1);
        // Within that deadline the connection is still trusted...
        let call = peer.call("r", 1, 2, Rpc::App(Vec::new()), Duration::from_millis(100));
        assert!(tokio::time::timeout(Duration::from_millis(10), call).await.is_err());
        assert_eq!(dials.load(Ordering::Relaxed), 1, "not retired before the deadline passed");
        // ...past it (and past the redial pause), the next call dials a new one.
        tokio::time::sleep(REDIAL_PAUSE + Duration::from_millis(100)).await;
        let call = peer.call("r", 1, 2, Rpc::App(Vec::new()), Duration::from_millis(100));
        assert!(tokio::time::timeout(Duration::from_millis(10), call).await.is_err());
        assert_eq!(dials.load(Ordering::Relaxed), 2, "the half-open connection was retired");
    }
}

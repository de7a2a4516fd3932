//! A host's TCP streams, closed in the order they were opened when the host goes down.
//!
//! Why: turmoil crashes or bounces a host by dropping its tokio runtime, and a dropped stream
//! sends its FIN (or RST) right then, each message drawing its latency from the simulation's
//! one RNG. tokio drops a runtime's tasks shard by shard, and a task's shard is its task id
//! modulo the shard count — an id from a *process-global* counter. So the order in which a
//! downed host's connections closed, hence which close drew which latency, depended on how
//! many tasks the process had spawned before: the same seed replayed identically in a fresh
//! process and diverged (by a millisecond or two after a heal) when run a second time in the
//! same process, or next to another sweep thread.
//!
//! Here every stream of a host is wrapped in an [`OrderedStream`] with a per-host sequence
//! number. The scenario calls [`HostSockets::going_down`] just before it crashes or bounces the
//! host; streams dropped from then on park in the host's table instead of closing, and the
//! host's [`HostSockets::closer`] task — a `spawn_local` task, which turmoil drops after the
//! runtime's tasks and still inside the host's network context — closes them in opening order.
//! A stream dropped while its host runs closes at once, as before.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The streams of one host (all its incarnations).
#[derive(Debug, Default)]
pub struct HostSockets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of the next stream opened or accepted.
    next: u64,
    /// Set between `going_down` and the closer's drop: drops park instead of closing.
    going_down: bool,
    /// Streams dropped while the host went down, by opening order.
    parked: BTreeMap<u64, turmoil::net::TcpStream>,
}

impl HostSockets {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wraps a stream the host opened or accepted.
    pub fn wrap(self: &Arc<Self>, stream: turmoil::net::TcpStream) -> OrderedStream {
        let mut inner = self.lock();
        let seq = inner.next;
        inner.next += 1;
        OrderedStream { seq, stream: Some(stream), host: self.clone() }
    }

    /// Call just before crashing or bouncing a host whose runtime may still hold streams: their
    /// drops park until the host's closer closes them in opening order.
    pub fn going_down(&self) {
        self.lock().going_down = true;
    }

    /// A task for `tokio::task::spawn_local` at the start of each incarnation: it never ends,
    /// and when turmoil drops it (after the runtime's tasks) it closes the parked streams in
    /// the order they were opened.
    pub fn closer(self: &Arc<Self>) -> impl Future<Output = ()> + 'static {
        self.lock().going_down = false;
        let guard = CloseParked(self.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }
    }

    fn close_parked(&self) {
        let parked = {
            let mut inner = self.lock();
            inner.going_down = false;
            std::mem::take(&mut inner.parked)
        };
        // In key order: the order the streams were opened.
        for (_, stream) in parked {
            drop(stream);
        }
    }
}

struct CloseParked(Arc<HostSockets>);

impl Drop for CloseParked {
    fn drop(&mut self) {
        self.0.close_parked();
    }
}

/// A turmoil stream whose close, when its host goes down, waits for its turn (see the module).
#[derive(Debug)]
pub struct OrderedStream {
    seq: u64,
    /// `None` only inside `drop`.
    stream: Option<turmoil::net::TcpStream>,
    host: Arc<HostSockets>,
}

impl OrderedStream {
    fn stream(&mut self) -> Pin<&mut turmoil::net::TcpStream> {
        // `stream` is taken only in `drop`.
        Pin::new(self.stream.as_mut().expect("an ordered stream holds its stream until dropped"))
    }
}

impl Drop for OrderedStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        let mut inner = self.host.lock();
        if inner.going_down {
            inner.parked.insert(self.seq, stream);
        } else {
            drop(inner);
            drop(stream);
        }
    }
}

impl AsyncRead for OrderedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for OrderedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }
}

/// turmoil's listener for `axum::serve`, whose accepted streams close in opening order when
/// their host goes down.
pub struct OrderedListener {
    /// The listener.
    pub listener: turmoil::net::TcpListener,
    /// The host's streams.
    pub sockets: Arc<HostSockets>,
}

impl axum::serve::Listener for OrderedListener {
    type Io = OrderedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => return (self.sockets.wrap(stream), addr),
                // A refused or reset accept on a simulated network: try again shortly.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

//! The membership driver: one tokio task owns a [`DatagramSocket`] and a [`MembershipCore`],
//! feeds it datagrams and due timers, sends what it asks, publishes the view and events.
//!
//! - Time is `tokio::time` (simulated under turmoil), read as milliseconds since the task
//!   started; the core never sees a clock.
//! - The loop's `select!` is `biased;`: shutdown, then due timers (a flood of datagrams must not
//!   starve probes), then one datagram; each wake handles one input and flushes its actions.
//! - The view is published through a `tokio::sync::watch` channel; readers take the latest
//!   value ([`MembershipHandle::view`]) without waiting on the channel (tokio wakes watch
//!   waiters in random order, which the simulator avoids).
//! - Events go out on a bounded channel ([`EVENTS_LEN_MAX`]); when the reader lags they are
//!   dropped and counted (`cluster_events_dropped_total`) — the view stays authoritative.
//! - Stop with [`MembershipHandle::leave`]: the core leaves (tells members, foca gossips the
//!   departure), the driver sends that last burst, and the task ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::membership::frame::DATAGRAM_LEN_MAX;
use crate::membership::{Action, ConfigError, MemberEvent, MembershipConfig, MembershipCore, NodeIdentity, TimerQueue, View};
use crate::transport::DatagramSocket;

/// Bound of the event channel.
pub const EVENTS_LEN_MAX: usize = 1_024;
/// Pause after a failed receive (a broken socket must not spin the task).
const RECV_ERROR_PAUSE_MS: u64 = 10;

/// How the driver is told to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Tell the members and send the farewell (also what a dropped handle means).
    Leave,
    /// End at once, silently, as a crash would.
    Crash,
}

/// A running membership driver. Dropping it leaves the cluster as [`Self::leave`] does,
/// without waiting for the farewell to be sent.
pub struct MembershipHandle {
    view: watch::Receiver<Arc<View>>,
    stop: Option<oneshot::Sender<Stop>>,
    task: JoinHandle<()>,
    identity: NodeIdentity,
}

impl MembershipHandle {
    /// The latest view (cheap: an `Arc` clone; never waits).
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver of view updates, for production callers that want to wait for changes
    /// (do not wait on it in simulated code paths).
    pub fn view_receiver(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The identity the node started with (the view's own entry has the current one).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Whether the driver task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Leaves the cluster gracefully and waits for the driver to send its farewell.
    pub async fn leave(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Leave);
        }
        let _ = (&mut self.task).await;
    }

    /// Stops at once, without telling anyone (a crash, for tests).
    ///
    /// The driver is told first: aborting alone would drop the stop sender, and a driver
    /// polled on another worker at that moment would read the drop as a graceful leave.
    pub fn abort(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Crash);
        }
        self.task.abort();
    }
}

/// Starts the driver on `socket` (already bound to the identity's gossip address). Returns
/// the handle and the receiver of membership events.
pub fn spawn<S: DatagramSocket>(socket: S, config: MembershipConfig) -> Result<(MembershipHandle, mpsc::Receiver<MemberEvent>), ConfigError> {
    let core = MembershipCore::new(&config)?;
    let (view_tx, view_rx) = watch::channel(Arc::new(core.view().clone()));
    let (events_tx, events_rx) = mpsc::channel(EVENTS_LEN_MAX);
    let (stop_tx, stop_rx) = oneshot::channel();
    let span = tracing::info_span!("membership", node_id = config.identity.node_id);
    let task = tokio::spawn(drive(socket, core, view_tx, events_tx, stop_rx).instrument(span));
    let handle = MembershipHandle { view: view_rx, stop: Some(stop_tx), task, identity: config.identity };
    Ok((handle, events_rx))
}

async fn drive<S: DatagramSocket>(
    socket: S,
    mut core: MembershipCore,
    view: watch::Sender<Arc<View>>,
    events: mpsc::Sender<MemberEvent>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
    let mut timers = TimerQueue::default();
    let mut buf = vec![0u8; DATAGRAM_LEN_MAX + 1];
    core.join(now_ms());
    flush(&socket, &mut core, &mut timers, &view, &events).await;
    loop {
        let deadline = timers.next_at_ms().map(|at| started + Duration::from_millis(at));
        tokio::select! {
            biased;
            how = &mut stop => {
                if how == Ok(Stop::Crash) {
                    return;
                }
                core.leave(now_ms());
                flush(&socket, &mut core, &mut timers, &view, &events).await;
                return;
            }
            _ = sleep_until(deadline) => {
                let now = now_ms();
                for (_, timer) in timers.pop_due(now) {
                    core.handle_timer(now, timer);
                }
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => core.handle_datagram(now_ms(), from, &buf[..len.min(buf.len())]),
                Err(error) => {
                    tracing::debug!(%error, "membership socket receive");
                    tokio::time::sleep(Duration::from_millis(RECV_ERROR_PAUSE_MS)).await;
                }
            }
        }
        flush(&socket, &mut core, &mut timers, &view, &events).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn flush<S: DatagramSocket>(socket: &S, core: &mut MembershipCore, timers: &mut TimerQueue, view: &watch::Sender<Arc<View>>, events: &mpsc::Sender<MemberEvent>) {
    let mut changed = false;
    while let Some(action) = core.poll_action() {
        match action {
            Action::Send { to, datagram } => {
                if let Err(error) = socket.send_to(&datagram, to).await {
                    metrics::counter!("cluster_send_errors_total").increment(1);
                    tracing::debug!(%error, %to, "membership send");
                }
            }
            Action::Schedule { at_ms, timer } => timers.insert(at_ms, timer),
            Action::Event(event) => {
                changed = true;
                tracing::debug!(?event, "membership");
                if events.try_send(event).is_err() {
                    metrics::counter!("cluster_events_dropped_total").increment(1);
                }
            }
        }
    }
    if changed || view.borrow().members.len() != core.view().members.len() || view_differs(&view.borrow(), core.view()) {
        view.send_replace(Arc::new(core.view().clone()));
    }
}

/// Whether the published view is out of date (incarnations and timestamps change without events).
fn view_differs(published: &View, current: &View) -> bool {
    published.members.iter().zip(current.members.iter()).any(|((a_id, a), (b_id, b))| a_id != b_id || a.state != b.state || a.incarnation != b.incarnation || a.identity.renewal != b.identity.renewal)
}

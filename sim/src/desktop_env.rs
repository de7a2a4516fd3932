//! Simulated desktops: what a node's desktop host runs under the simulator. Each desktop's
//! fate comes from the node's seeded RNG: it starts in a few milliseconds, or slowly, or never
//! answers (hung: the host's start deadline ends it), or fails to start; once running it may
//! be killed from outside after a while. Everything else — the host, the session actors, their
//! supervision, metering and records — is the production code.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_actors::BoxFuture;
use vcos_gpu_workers::desktop::process::DesktopSpec;
use vcos_gpu_workers::desktop::{Desktop, DesktopBackend, DesktopError};

use crate::trace::Trace;

/// A node's simulated desktops.
pub struct SimDesktops {
    node: String,
    rng: Mutex<ChaCha8Rng>,
    next_pgid: AtomicI32,
    trace: Trace,
}

impl std::fmt::Debug for SimDesktops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDesktops").field("node", &self.node).finish_non_exhaustive()
    }
}

impl SimDesktops {
    /// Desktops of node `node`, their fates drawn from `seed`.
    pub fn new(node: &str, seed: u64, trace: Trace) -> Self {
        Self { node: node.to_owned(), rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)), next_pgid: AtomicI32::new(10_000), trace }
    }

    fn draw(&self, range: std::ops::Range<u64>) -> u64 {
        self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).random_range(range)
    }
}

impl DesktopBackend for SimDesktops {
    fn check(&self) -> Result<(), DesktopError> {
        Ok(())
    }

    fn limits(&self) -> &'static str {
        "simulated"
    }

    fn display_free(&self, _display: u32) -> bool {
        true
    }

    fn start(&self, spec: DesktopSpec) -> BoxFuture<'static, Result<Box<dyn Desktop>, DesktopError>> {
        let fate = self.draw(0..100);
        let start_ms = match fate {
            0..=9 => self.draw(400..3_000),
            _ => self.draw(2..40),
        };
        let dies_after_ms = (self.draw(0..100) < 30).then(|| self.draw(300..6_000));
        let pgid = self.next_pgid.fetch_add(1, Ordering::Relaxed);
        let (node, trace, display) = (self.node.clone(), self.trace.clone(), spec.display);
        Box::pin(async move {
            match fate {
                // Hung: never answers (the host's deadline gives up on it).
                90..=94 => {
                    trace.record(format!("{node} desktop :{display} hangs at start"));
                    std::future::pending::<Result<Box<dyn Desktop>, DesktopError>>().await
                }
                95..=99 => {
                    tokio::time::sleep(Duration::from_millis(start_ms)).await;
                    trace.record(format!("{node} desktop :{display} fails to start"));
                    Err(DesktopError::Spawn { program: "Xvfb (simulated)".into(), reason: "seeded start failure".into() })
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(start_ms)).await;
                    let desktop = SimDesktop { display, pgid, dies_after_ms, started_ms: crate::node_env::sim_now_ms(), paused: false.into(), node, trace };
                    Ok(Box::new(desktop) as Box<dyn Desktop>)
                }
            }
        })
    }

    fn kill_leftover(&self, pgid: i32, display: u32) {
        // A simulated desktop dies with its node: nothing is left.
        self.trace.record(format!("{} nothing left of desktop :{display} (group {pgid})", self.node));
    }
}

/// One simulated desktop.
struct SimDesktop {
    display: u32,
    pgid: i32,
    dies_after_ms: Option<u64>,
    started_ms: u64,
    paused: std::sync::atomic::AtomicBool,
    node: String,
    trace: Trace,
}

impl Desktop for SimDesktop {
    fn display(&self) -> u32 {
        self.display
    }

    fn pgid(&self) -> i32 {
        self.pgid
    }

    fn start_app(&mut self, _argv: &[String]) -> Result<(), DesktopError> {
        Ok(())
    }

    fn start_vnc(&mut self, _listen: &str, _port: u16, _password_file: &Path) -> Result<(), DesktopError> {
        Ok(())
    }

    fn pause(&self) -> Result<(), DesktopError> {
        self.paused.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn resume(&self) -> Result<(), DesktopError> {
        self.paused.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn exited(&mut self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            match self.dies_after_ms {
                Some(after) => {
                    let now = crate::node_env::sim_now_ms();
                    tokio::time::sleep(Duration::from_millis((self.started_ms + after).saturating_sub(now))).await;
                    self.trace.record(format!("{} desktop :{} killed from outside", self.node, self.display));
                    "signal: 9 (SIGKILL) (seeded)".to_owned()
                }
                None => std::future::pending().await,
            }
        })
    }

    fn terminate(self: Box<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move { tokio::time::sleep(Duration::from_millis(1)).await })
    }

    fn cpu_ms(&self) -> u64 {
        // A tenth of the wall time it has lived: deterministic, growing.
        crate::node_env::sim_now_ms().saturating_sub(self.started_ms) / 10
    }

    fn screenshot(&self, _timeout: Duration) -> BoxFuture<'static, Result<Vec<u8>, DesktopError>> {
        Box::pin(async { Err(DesktopError::Io("a simulated desktop has no screen".into())) })
    }
}

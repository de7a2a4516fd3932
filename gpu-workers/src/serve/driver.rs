//! Where a pool's worker and watchdog run. Both are written once, as async loops over tokio's
//! channels and clock; the driver decides what runs them.
//!
//! - [`Driver::Threads`] (production): each loop on an OS thread of its own, under a
//!   current-thread tokio runtime. A forward pass holds its thread for milliseconds to seconds;
//!   on a thread of the node's shared runtime it would stall every other task there.
//! - [`Driver::Tasks`]: each loop a task of the calling runtime. The simulator runs pools this
//!   way, on its simulated clock, with stand-in models whose calls await rather than block, so
//!   that a seed replays the same batches, failures and hang detections (`vcos sim --scenario
//!   inference`). A model that blocks must not run under it.

use std::future::Future;

use super::error::ServeError;

/// What runs a pool's loops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Driver {
    /// OS threads, one per loop (production).
    #[default]
    Threads,
    /// Tasks of the tokio runtime the pool is started on (the simulator).
    Tasks,
}

/// Which loop a spawn is for: model workers run at a lower CPU priority (`crate::priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Worker,
    Watchdog,
}

impl Driver {
    /// Runs `body` under this driver, named `name` (thread names show in profiles).
    pub(crate) fn spawn<F>(self, name: String, role: Role, body: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Self::Tasks => {
                let handle = tokio::runtime::Handle::try_current()
                    .map_err(|_| ServeError::Stopped(format!("{name}: a task-driven pool must be started inside a tokio runtime")))?;
                handle.spawn(body);
                Ok(())
            }
            Self::Threads => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| ServeError::Stopped(format!("{name}: cannot build the thread's runtime: {e}")))?;
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        if role == Role::Worker {
                            crate::priority::lower_this_thread();
                        }
                        runtime.block_on(body);
                    })
                    .map(|_| ())
                    .map_err(|e| ServeError::Stopped(format!("{name}: cannot start a thread: {e}")))
            }
        }
    }
}

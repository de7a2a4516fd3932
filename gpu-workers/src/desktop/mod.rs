//! Virtual desktops: sessions as supervised actors, each owning a real Xvfb desktop.
//!
//! - [`backend`]: the seam between the host and the processes: real Xvfb in production, a
//!   simulated desktop under the simulator.
//! - [`tier`]: what a session gets (resolution, memory, CPU) and its rate.
//! - [`process`]: one desktop's OS processes (Xvfb, an application, x11vnc) in one process
//!   group: start and wait until the display answers, pause (SIGSTOP), resume (SIGCONT),
//!   terminate (SIGTERM, then SIGKILL), CPU time and memory from `/proc`, rlimits.
//! - [`x11`]: readiness (an X11 connection set-up, bounded) and screenshots (GetImage → PNG).
//! - [`record`]: the session record kept in the canon (`SuperCoreSession`), and its states.
//! - [`workspace`]: sessions of a tenant grouped and driven as one unit.
//! - [`host`]: [`Desktops`], a node's desktop host: one task per session (the session actor:
//!   commands in, its desktop supervised with restart intensity, usage metered on an
//!   interval), a warm pool of started displays per tier, display numbers, recovery of the
//!   sessions a previous run of the node left.

pub mod backend;
pub mod host;
pub mod process;
pub mod record;
pub mod tier;
pub mod workspace;
pub mod x11;

pub use backend::{Desktop, DesktopBackend, XvfbBackend};
pub use host::{CreateSession, DesktopConfig, Desktops, DesktopsStatus, LostNodeOutcome, NODE_LOST};
pub use record::{SessionRecord, SessionState};
pub use tier::DesktopTier;
pub use workspace::{Workspace, WorkspaceRecord, WorkspaceUsage};

/// What went wrong with a desktop process.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// A program the desktops need is not installed.
    #[error("{program} is not installed (not found on PATH): install it with `apt-get install {package}`")]
    Missing {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// A process could not be started.
    #[error("could not start {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// The display did not behave.
    #[error("display :{display}: {reason}")]
    Display {
        /// The display number.
        display: u32,
        /// What happened.
        reason: String,
    },
    /// The application asked for could not start.
    #[error("the application could not start: {0}")]
    App(String),
    /// A file or signal operation failed.
    #[error("{0}")]
    Io(String),
}

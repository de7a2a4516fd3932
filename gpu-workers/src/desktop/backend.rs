//! The seam between the desktop host and the processes it runs: [`DesktopBackend`] starts
//! desktops, [`Desktop`] is one running desktop. Production runs [`XvfbBackend`] (real Xvfb
//! processes, [`super::process`]); the simulator runs a backend whose desktops are simulated,
//! with faults drawn from its seed, behind the same host, session actors, supervision,
//! metering and records.

use std::path::Path;
use std::time::Duration;

use vcos_actors::BoxFuture;

use super::process::{self, DesktopProcess, DesktopSpec, LIMITS_IN_FORCE};
use super::x11;
use super::DesktopError;

/// Starts desktops.
pub trait DesktopBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the backend can run at all (its programs installed), with the error saying how
    /// to fix it.
    fn check(&self) -> Result<(), DesktopError>;
    /// How limits are enforced (`rlimit`, or `simulated`).
    fn limits(&self) -> &'static str;
    /// Whether display `n` is free (no other server holds it).
    fn display_free(&self, display: u32) -> bool;
    /// Starts a desktop and waits until its display answers.
    fn start(&self, spec: DesktopSpec) -> BoxFuture<'static, Result<Box<dyn Desktop>, DesktopError>>;
    /// Kills what a previous run of the node left of a desktop (process group `pgid` on
    /// `display`), if it is still there.
    fn kill_leftover(&self, pgid: i32, display: u32);
}

/// One running desktop.
pub trait Desktop: Send + Sync + 'static {
    /// Its display number.
    fn display(&self) -> u32;
    /// Its process group.
    fn pgid(&self) -> i32;
    /// Starts an application in it.
    fn start_app(&mut self, argv: &[String]) -> Result<(), DesktopError>;
    /// Serves it over VNC.
    fn start_vnc(&mut self, listen: &str, port: u16, password_file: &Path) -> Result<(), DesktopError>;
    /// Stops it (memory kept).
    fn pause(&self) -> Result<(), DesktopError>;
    /// Continues it.
    fn resume(&self) -> Result<(), DesktopError>;
    /// Resolves when it exits on its own, with why.
    fn exited(&mut self) -> BoxFuture<'_, String>;
    /// Ends it: gracefully within `grace`, then by force.
    fn terminate(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()>;
    /// CPU time used, ms.
    fn cpu_ms(&self) -> u64;
    /// Its screen as PNG bytes.
    fn screenshot(&self, timeout: Duration) -> BoxFuture<'static, Result<Vec<u8>, DesktopError>>;
}

/// Real desktops: Xvfb processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct XvfbBackend;

impl DesktopBackend for XvfbBackend {
    fn check(&self) -> Result<(), DesktopError> {
        process::require("Xvfb", "xvfb").map(|_| ())
    }

    fn limits(&self) -> &'static str {
        LIMITS_IN_FORCE
    }

    fn display_free(&self, display: u32) -> bool {
        x11::display_free(display)
    }

    fn start(&self, spec: DesktopSpec) -> BoxFuture<'static, Result<Box<dyn Desktop>, DesktopError>> {
        Box::pin(async move { DesktopProcess::start(spec).await.map(|d| Box::new(d) as Box<dyn Desktop>) })
    }

    fn kill_leftover(&self, pgid: i32, display: u32) {
        process::kill_leftover(pgid, display);
    }
}

impl Desktop for DesktopProcess {
    fn display(&self) -> u32 {
        DesktopProcess::display(self)
    }

    fn pgid(&self) -> i32 {
        DesktopProcess::pgid(self)
    }

    fn start_app(&mut self, argv: &[String]) -> Result<(), DesktopError> {
        DesktopProcess::start_app(self, argv)
    }

    fn start_vnc(&mut self, listen: &str, port: u16, password_file: &Path) -> Result<(), DesktopError> {
        DesktopProcess::start_vnc(self, listen, port, password_file)
    }

    fn pause(&self) -> Result<(), DesktopError> {
        DesktopProcess::pause(self)
    }

    fn resume(&self) -> Result<(), DesktopError> {
        DesktopProcess::resume(self)
    }

    fn exited(&mut self) -> BoxFuture<'_, String> {
        Box::pin(DesktopProcess::exited(self))
    }

    fn terminate(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(DesktopProcess::terminate(*self, grace))
    }

    fn cpu_ms(&self) -> u64 {
        DesktopProcess::cpu_ms(self)
    }

    fn screenshot(&self, timeout: Duration) -> BoxFuture<'static, Result<Vec<u8>, DesktopError>> {
        let display = DesktopProcess::display(self);
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || x11::screenshot_png(display, timeout)).await {
                Ok(shot) => shot.map(|(png, _, _)| png),
                Err(e) => Err(DesktopError::Io(format!("screenshot: {e}"))),
            }
        })
    }
}

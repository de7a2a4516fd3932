//! One desktop's OS processes: Xvfb on its display, optionally an application and an x11vnc
//! server, all in one process group (Xvfb leads it) so that pause and resume stop and continue
//! the whole desktop at once.
//!
//! Limits: each process gets the tier's `RLIMIT_AS` (memory) and `RLIMIT_CPU` (CPU seconds)
//! through `prlimit` right after it starts (cgroups v2 is not writable on the machines this
//! project runs on; [`LIMITS_IN_FORCE`] says which mechanism a session's view reports).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal};
use tokio::process::{Child, Command};

use super::tier::DesktopTier;
use super::x11;
use super::DesktopError;

/// How limits are enforced: per-process rlimits (`RLIMIT_AS`, `RLIMIT_CPU`).
pub const LIMITS_IN_FORCE: &str = "rlimit";
/// How long Xvfb may take to answer before the start fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one readiness probe waits for the server's reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// What to start.
#[derive(Clone, Debug)]
pub struct DesktopSpec {
    /// The display number (`:n`).
    pub display: u32,
    /// Resolution and limits.
    pub tier: DesktopTier,
    /// Where Xvfb's and the application's output go (`<dir>/display-<n>.log`).
    pub log_dir: PathBuf,
}

/// A running desktop.
#[derive(Debug)]
pub struct DesktopProcess {
    spec: DesktopSpec,
    xvfb: Child,
    pgid: Pid,
    app: Option<Child>,
    vnc: Option<Child>,
    /// Start to first answer.
    pub ready_in: Duration,
}

/// `program` found on `PATH`, or the error saying how to install it.
pub fn require(program: &str, package: &str) -> Result<PathBuf, DesktopError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| DesktopError::Missing { program: program.to_owned(), package: package.to_owned() })
}

/// A command for `program` that dies with this process: through util-linux's `setpriv
/// --pdeathsig KILL` (which execs it, same pid) where installed, so that a node killed with
/// SIGKILL leaves no desktop behind (its own process group would otherwise outlive it). Without
/// setpriv, the next start of the node kills what the canon records (`host::recover`).
fn guarded(program: &Path) -> Command {
    match require("setpriv", "util-linux") {
        Ok(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        Err(_) => Command::new(program),
    }
}

fn pid_of(child: &Child) -> Option<Pid> {
    child.id().and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
}

fn limit(pid: Pid, tier: DesktopTier) {
    let memory = tier.memory_bytes();
    // CPU seconds an hour of the tier's share, at least a minute.
    let cpu_seconds = (tier.cpu_millicores() * 3_600 / 1_000).max(60);
    for (resource, value) in [(Resource::As, memory), (Resource::Cpu, cpu_seconds)] {
        if let Err(e) = rustix::process::prlimit(Some(pid), resource, Rlimit { current: Some(value), maximum: Some(value) }) {
            tracing::warn!(?resource, error = %e, "desktop process limit not applied");
        }
    }
}

fn log_file(spec: &DesktopSpec) -> Result<std::fs::File, DesktopError> {
    std::fs::create_dir_all(&spec.log_dir).map_err(|e| DesktopError::Io(format!("create {}: {e}", spec.log_dir.display())))?;
    let path = spec.log_dir.join(format!("display-{}.log", spec.display));
    std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| DesktopError::Io(format!("open {}: {e}", path.display())))
}

fn log_tail(spec: &DesktopSpec) -> String {
    let path = spec.log_dir.join(format!("display-{}.log", spec.display));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

impl DesktopProcess {
    /// Starts Xvfb on the spec's display and waits until it answers an X11 connection set-up
    /// (at most [`READY_TIMEOUT`]).
    pub async fn start(spec: DesktopSpec) -> Result<Self, DesktopError> {
        let xvfb_path = require("Xvfb", "xvfb")?;
        let started = Instant::now();
        let (width, height, depth) = spec.tier.screen();
        let log = log_file(&spec)?;
        let err = log.try_clone().map_err(|e| DesktopError::Io(e.to_string()))?;
        // `-noreset`: without it Xvfb resets when its last client leaves (the readiness probe
        // is one) and forks xkbcomp to reload the keymap; a pause landing then left that child
        // stopped and Xvfb waiting on it for good (`vcos bench sessions` caught it).
        let mut command = guarded(&xvfb_path);
        command
            .arg(format!(":{}", spec.display))
            .args(["-screen", "0", &format!("{width}x{height}x{depth}"), "-nolisten", "tcp", "-noreset"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let xvfb = command.spawn().map_err(|e| DesktopError::Spawn { program: "Xvfb".into(), reason: e.to_string() })?;
        let pgid = pid_of(&xvfb).ok_or_else(|| DesktopError::Spawn { program: "Xvfb".into(), reason: "exited at once".into() })?;
        limit(pgid, spec.tier);
        let mut desktop = Self { spec, xvfb, pgid, app: None, vnc: None, ready_in: Duration::ZERO };
        loop {
            let display = desktop.spec.display;
            if tokio::task::spawn_blocking(move || x11::answers(display, PROBE_TIMEOUT)).await.unwrap_or(false) {
                break;
            }
            if let Ok(Some(status)) = desktop.xvfb.try_wait() {
                return Err(DesktopError::Spawn { program: "Xvfb".into(), reason: format!("exited ({status}) before answering: {}", log_tail(&desktop.spec)) });
            }
            if started.elapsed() > READY_TIMEOUT {
                desktop.kill().await;
                return Err(DesktopError::Display { display, reason: format!("did not answer within {READY_TIMEOUT:?}") });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        desktop.ready_in = started.elapsed();
        Ok(desktop)
    }

    /// The display number.
    pub fn display(&self) -> u32 {
        self.spec.display
    }

    /// The tier it was started at.
    pub fn tier(&self) -> DesktopTier {
        self.spec.tier
    }

    /// Starts `argv` inside the desktop (its `DISPLAY`, its process group, its limits).
    pub fn start_app(&mut self, argv: &[String]) -> Result<(), DesktopError> {
        let (program, args) = argv.split_first().ok_or_else(|| DesktopError::App("the command line is empty".into()))?;
        // A program that is not there is refused here, with its name, rather than by
        // setpriv after the fork.
        let resolved = if program.contains('/') {
            let path = PathBuf::from(program);
            if !path.is_file() {
                return Err(DesktopError::App(format!("{program}: no such file")));
            }
            path
        } else {
            require(program, program).map_err(|_| DesktopError::App(format!("{program}: not found on PATH")))?
        };
        let mut command = guarded(&resolved);
        command.args(args).env("DISPLAY", format!(":{}", self.spec.display));
        let child = self.spawn_in_group(&mut command).map_err(|e| DesktopError::App(format!("{program}: {e}")))?;
        if let Some(pid) = pid_of(&child) {
            limit(pid, self.spec.tier);
        }
        self.app = Some(child);
        Ok(())
    }

    /// Serves the desktop over VNC on `addr:port` (x11vnc), with the password in
    /// `password_file` (read once and deleted by x11vnc).
    pub fn start_vnc(&mut self, listen: &str, port: u16, password_file: &Path) -> Result<(), DesktopError> {
        let x11vnc = require("x11vnc", "x11vnc")?;
        let mut command = guarded(&x11vnc);
        command
            .args(["-display", &format!(":{}", self.spec.display), "-rfbport", &port.to_string(), "-forever", "-shared", "-quiet", "-nopw"])
            .arg("-passwdfile")
            .arg(format!("rm:{}", password_file.display()));
        if listen == "127.0.0.1" || listen == "localhost" {
            command.arg("-localhost");
        } else {
            command.args(["-listen", listen]);
        }
        let child = self.spawn_in_group(&mut command).map_err(|e| DesktopError::Spawn { program: "x11vnc".into(), reason: e.to_string() })?;
        self.vnc = Some(child);
        Ok(())
    }

    /// Spawns `command` into the desktop's process group, its output in the desktop's log.
    fn spawn_in_group(&self, command: &mut Command) -> Result<Child, String> {
        let log = log_file(&self.spec).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(self.pgid.as_raw_nonzero().get())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())
    }

    /// Stops every process of the desktop (SIGSTOP to the group): memory kept, the display
    /// stops answering.
    pub fn pause(&self) -> Result<(), DesktopError> {
        rustix::process::kill_process_group(self.pgid, Signal::STOP).map_err(|e| DesktopError::Io(format!("SIGSTOP: {e}")))
    }

    /// Continues them (SIGCONT to the group).
    pub fn resume(&self) -> Result<(), DesktopError> {
        rustix::process::kill_process_group(self.pgid, Signal::CONT).map_err(|e| DesktopError::Io(format!("SIGCONT: {e}")))
    }

    /// Waits until Xvfb exits; its status as text.
    pub async fn exited(&mut self) -> String {
        match self.xvfb.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    /// SIGTERM to the group (continued first, so stopped processes see it), SIGKILL after
    /// `grace`; then the display's lock file and socket are removed if Xvfb left them.
    pub async fn terminate(mut self, grace: Duration) {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::CONT);
        let _ = rustix::process::kill_process_group(self.pgid, Signal::TERM);
        if tokio::time::timeout(grace, self.xvfb.wait()).await.is_err() {
            self.kill().await;
        }
        self.reap().await;
    }

    async fn kill(&mut self) {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        let _ = self.xvfb.wait().await;
    }

    async fn reap(&mut self) {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        for child in [self.app.as_mut(), self.vnc.as_mut()].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
        }
        let _ = std::fs::remove_file(x11::lock_path(self.spec.display));
        let _ = std::fs::remove_file(x11::socket_path(self.spec.display));
    }

    /// CPU time used by its processes (user + system), milliseconds.
    pub fn cpu_ms(&self) -> u64 {
        self.pids().into_iter().map(process_cpu_ms).sum()
    }

    /// Resident memory of its processes, bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().map(process_rss_bytes).sum()
    }

    /// Its process group (Xvfb's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    fn pids(&self) -> Vec<i32> {
        [Some(&self.xvfb), self.app.as_ref(), self.vnc.as_ref()].into_iter().flatten().filter_map(|c| c.id()).filter_map(|id| i32::try_from(id).ok()).collect()
    }
}

/// utime + stime of `pid` from `/proc/<pid>/stat`, milliseconds (0 if gone).
fn process_cpu_ms(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the ')'.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    ticks * 1_000 / hz
}

/// VmRSS of `pid`, bytes (0 if gone).
fn process_rss_bytes(pid: i32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1_024)
}

/// Kills process group `pgid` if it is still an Xvfb of `display` (the pid may be reused).
pub fn kill_leftover(pgid: i32, display: u32) {
    let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours = args.first().is_some_and(|a| a.ends_with(b"Xvfb")) && args.get(1).is_some_and(|a| *a == format!(":{display}").as_bytes());
    if let (true, Some(pid)) = (is_ours, Pid::from_raw(pgid)) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    if is_ours || !std::path::Path::new(&format!("/proc/{pgid}")).exists() {
        let _ = std::fs::remove_file(x11::lock_path(display));
        let _ = std::fs::remove_file(x11::socket_path(display));
    }
}

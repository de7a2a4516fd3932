//! `vcos bench sessions`: virtual desktop sessions against bare Xvfb.
//!
//! One in-process node as `vcos up` runs it (canon on Raft: every session's records are
//! committed there, as a user's are), and a desktop host over it (`Desktops`, as `vcos up
//! --desktops` starts it) on displays of its own. Measured in the same run:
//!
//! - **start→ready, cold**: a host without a warm pool; `create` timed end to end (tenant and
//!   quota checks, the Genesis record committed, Xvfb started under `setpriv` with its rlimits
//!   and probed until its display completes an X11 connection set-up, the Active record
//!   committed), `--sessions` creations one after another at tier standard (1280×720×24), each
//!   paused, resumed and terminated before the next.
//! - **the peer**: a bare `Xvfb :N -screen 0 1280x720x24 -nolisten tcp` (what
//!   `shared/peers/xvfb_probe.sh` measures), start→ready with the same readiness probe
//!   (`x11::answers`, polled every 2 ms as the host polls), interleaved with the cold
//!   creations (which goes first alternates) so both see the same machine; killed after each.
//!   A session does more than the peer (two canon commits, a process group, limits); the ratio
//!   is what that costs.
//! - **start→ready, warm**: a host keeping `--pool` started displays per tier; before each
//!   creation the pool is full again (no refill running while timed), then `create` is timed.
//! - **pause and resume**: the `pause` and `resume` calls on each cold session (SIGSTOP or
//!   SIGCONT to the desktop's group, the record committed).
//! - **RSS per idle session**: `--idle-sessions` basic sessions (1024×768×24) started, then
//!   the VmRSS of their Xvfb processes (the record's pgid is Xvfb's pid) summed and divided;
//!   against as many bare Xvfb at the same screen size, measured the same way.
//! - **concurrent sessions on one node**: basic sessions created until a creation fails,
//!   `--max-sessions` is reached, or the host's MemAvailable drops under 2 GiB (tenants are
//!   enterprise, several of them, so that the per-tenant quota is not what stops it); the
//!   count and the reason it stopped.
//!
//! Targets (issue 12): start→ready p99 under 50 ms from the warm pool, under 150 ms cold.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use vcos_actors::{TenantId, TenantPolicy, Tier};
use vcos_gpu_workers::desktop::host::sessions_max;
use vcos_gpu_workers::desktop::{x11, CreateSession, DesktopConfig, DesktopTier, Desktops, SessionRecord};

/// First display number of the bench's desktop hosts.
const FIRST_DISPLAY: u32 = 300;
/// First display number tried for the bare Xvfb (the peer).
const PEER_FIRST_DISPLAY: u32 = 1_000;
/// The capacity run stops when the host's available memory drops under this.
const MEMORY_FLOOR: u64 = 2 << 30;
/// How long one readiness probe waits for the server's reply (as the host's).
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a bare Xvfb may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Targets of issue 12, ms.
const WARM_P99_TARGET_MS: f64 = 50.0;
const COLD_P99_TARGET_MS: f64 = 150.0;

/// Options of `vcos bench sessions`.
#[derive(Args, Debug)]
pub(crate) struct SessionsArgs {
    /// Sessions created one after another, cold (no pool) and then warm (from the pool); each
    /// cold one is also paused and resumed.
    #[arg(long, default_value_t = 30)]
    sessions: usize,
    /// Bare Xvfb starts (the peer), interleaved with the cold creations (default: as many as
    /// `--sessions`).
    #[arg(long, value_name = "N")]
    peer_runs: Option<usize>,
    /// Idle basic sessions whose Xvfb RSS is measured (and as many bare Xvfb).
    #[arg(long, default_value_t = 10, value_name = "K")]
    idle_sessions: usize,
    /// Most concurrent basic sessions created for the capacity figure.
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_sessions: usize,
    /// Started displays per tier in the warm host's pool.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=8))]
    pool: u16,
    /// A small run (3 sessions, 3 peer starts, 2 idle sessions, at most 4 concurrent).
    #[arg(long)]
    quick: bool,
}

/// Latencies, ms, sorted.
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self(ms)
    }

    fn quantile(&self, q: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0.get(i).copied().unwrap_or(f64::NAN)
    }

    fn range(&self) -> (f64, f64) {
        (self.0.first().copied().unwrap_or(f64::NAN), self.0.last().copied().unwrap_or(f64::NAN))
    }
}

/// Everything one run measured.
struct Figures {
    peer: Samples,
    cold: Samples,
    warm: Samples,
    /// Warm creations that found no display in the pool (started cold).
    warm_misses: usize,
    pause: Samples,
    resume: Samples,
    /// Resumed sessions whose display did not answer within 2 s.
    silent_after_resume: usize,
    /// Mean VmRSS of an idle session's Xvfb, and of a bare Xvfb, bytes.
    rss: (f64, f64),
    /// The same, proportional set size (shared pages divided among their users), bytes.
    pss: (f64, f64),
    idle: usize,
    capacity: Capacity,
}

struct Capacity {
    sessions: usize,
    stopped: String,
    /// MemAvailable before the first and after the last creation, bytes.
    available: (u64, u64),
    /// VmRSS of all their Xvfb at the peak, bytes.
    rss_total: u64,
    /// The last creation's start→ready, ms.
    last_create_ms: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

pub(crate) fn run(mut args: SessionsArgs) -> anyhow::Result<()> {
    if args.quick {
        args.sessions = 3;
        args.peer_runs = Some(3);
        args.idle_sessions = 2;
        args.max_sessions = 4;
    }
    anyhow::ensure!(args.sessions > 0 && args.idle_sessions > 0, "--sessions and --idle-sessions must be at least 1");
    anyhow::ensure!(args.max_sessions <= 1_000, "--max-sessions is at most 1,000 (display numbers)");
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?.block_on(bench(&args))
}

async fn bench(args: &SessionsArgs) -> anyhow::Result<()> {
    vcos_gpu_workers::desktop::process::require("Xvfb", "xvfb")?;
    let dir = tempfile::Builder::new().prefix("vcos-bench-sessions-").tempdir().context("create a temporary directory")?;
    let up = crate::up::UpArgs::parse_from([
        OsString::from("up"),
        "--data-dir".into(),
        dir.path().join("node").into_os_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ])?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the node starts: {}", load.trim());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = crate::up::start_node(&up, addr, false).await.context("start the node (as `vcos up` does)")?;
    let result = measure(args, &node, dir.path()).await;
    node.stop().await;
    let figures = result?;
    print_report(args, &figures);
    Ok(())
}

/// The enterprise tenant `name` (created if new): its quota of live sessions is the largest.
async fn tenant(node: &crate::up::Node, name: &str) -> anyhow::Result<TenantId> {
    let id = TenantId::new(name)?;
    node.rt.ensure_tenant(id, TenantPolicy { tier: Tier::Enterprise, ..TenantPolicy::default() }).await.with_context(|| format!("create tenant {name}"))?;
    Ok(id)
}

fn config(work_dir: &std::path::Path, args: &SessionsArgs, pool: usize) -> DesktopConfig {
    let mut config = DesktopConfig::new(1, work_dir.to_path_buf());
    let needed = u32::try_from(args.max_sessions.max(args.idle_sessions)).unwrap_or(1_000);
    config.displays = (FIRST_DISPLAY, FIRST_DISPLAY + needed.max(283) + 16);
    config.pool_per_tier = pool;
    config
}

fn request(tier: DesktopTier) -> CreateSession {
    CreateSession { tier, app: None, vnc: false, workspace: None }
}

async fn measure(args: &SessionsArgs, node: &crate::up::Node, dir: &std::path::Path) -> anyhow::Result<Figures> {
    let cold_host = Desktops::start(node.rt.clone(), config(&dir.join("desktops-cold"), args, 0)).await.context("start the desktop host (no pool)")?;
    let cold = cold_phases(args, node, &cold_host).await;
    cold_host.shutdown().await;
    drop(cold_host);
    let (peer, cold, pause, resume, silent_after_resume, (rss, pss), capacity) = cold?;

    let pool = usize::from(args.pool);
    let warm_host = Desktops::start(node.rt.clone(), config(&dir.join("desktops-warm"), args, pool)).await.context("start the desktop host (warm pool)")?;
    let warm = warm_phase(args, node, &warm_host, pool).await;
    // No display half started by the refill when the host stops.
    let _ = pool_full(&warm_host, pool, Duration::from_secs(30)).await;
    warm_host.shutdown().await;
    let (warm, warm_misses) = warm?;
    Ok(Figures { peer, cold, warm, warm_misses, pause, resume, silent_after_resume, rss, pss, idle: args.idle_sessions, capacity })
}

/// Mean RSS and PSS of an idle session's Xvfb and of a bare one, bytes.
type Memory = ((f64, f64), (f64, f64));
type ColdFigures = (Samples, Samples, Samples, Samples, usize, Memory, Capacity);

async fn cold_phases(args: &SessionsArgs, node: &crate::up::Node, desktops: &Desktops) -> anyhow::Result<ColdFigures> {
    let tenant = tenant(node, "bench-sessions-cold").await?;
    let peer_runs = args.peer_runs.unwrap_or(args.sessions);
    let peer_display = free_displays(1)?[0];
    // One of each, untimed: binaries and libraries in the page cache for both sides.
    let (_, child) = bare_start(peer_display, "1280x720x24").await?;
    bare_stop(child, peer_display).await;
    let (record, _) = desktops.create(&tenant, request(DesktopTier::Standard)).await.context("warm-up session")?;
    desktops.terminate(&tenant, record.id).await.context("terminate the warm-up session")?;

    eprintln!("cold: {} sessions (standard), {peer_runs} bare Xvfb starts interleaved", args.sessions);
    let (mut peer, mut cold, mut pause, mut resume) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut silent_after_resume = 0;
    for i in 0..args.sessions.max(peer_runs) {
        for ours_first in [i % 2 == 0, i % 2 != 0] {
            if ours_first && i < args.sessions {
                let started = Instant::now();
                let (record, _) = desktops.create(&tenant, request(DesktopTier::Standard)).await.with_context(|| format!("create cold session {i}"))?;
                cold.push(ms(started));
                anyhow::ensure!(!record.warm, "a session of the host without a pool came from a pool");
                let started = Instant::now();
                desktops.pause(&tenant, record.id).await.with_context(|| format!("pause session {}", record.id))?;
                pause.push(ms(started));
                let started = Instant::now();
                desktops.resume(&tenant, record.id).await.with_context(|| format!("resume session {}", record.id))?;
                resume.push(ms(started));
                if let Some(silent) = resumed_silent(&record).await {
                    eprintln!("session {} did not answer within 2 s of its resume: {silent}", record.id);
                    silent_after_resume += 1;
                }
                desktops.terminate(&tenant, record.id).await.with_context(|| format!("terminate session {}", record.id))?;
            }
            if !ours_first && i < peer_runs {
                let (ready, child) = bare_start(peer_display, "1280x720x24").await?;
                peer.push(ready.as_secs_f64() * 1e3);
                bare_stop(child, peer_display).await;
            }
        }
    }
    let rss = idle_rss(args, node, desktops).await?;
    let capacity = capacity(args, node, desktops).await?;
    Ok((Samples::new(peer), Samples::new(cold), Samples::new(pause), Samples::new(resume), silent_after_resume, rss, capacity))
}

/// `None` if the resumed session's display answers an X11 connection set-up within 2 s; else
/// what its processes are doing, and whether it answered within 10 s more.
async fn resumed_silent(record: &SessionRecord) -> Option<String> {
    let (display, pgid) = (record.display?, record.pgid?);
    if tokio::task::spawn_blocking(move || x11::answers(display, Duration::from_secs(2))).await.unwrap_or(false) {
        return None;
    }
    let group = process_group(pgid);
    let started = Instant::now();
    let later = tokio::task::spawn_blocking(move || x11::answers(display, Duration::from_secs(10))).await.unwrap_or(false);
    let later = if later { format!("answered {:.1} s later", started.elapsed().as_secs_f64()) } else { "still silent 10 s later".to_owned() };
    Some(format!("{later}; its processes then: {group}"))
}

/// The processes of group `pgid`: pid, name, state and where each waits (from `/proc`).
fn process_group(pgid: i32) -> String {
    let Ok(entries) = std::fs::read_dir("/proc") else { return String::new() };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            let wchan = std::fs::read_to_string(entry.path().join("wchan")).unwrap_or_default();
            found.push(format!("{pid} {name} {} {wchan}", fields.first().copied().unwrap_or("?")));
        }
    }
    found.join(", ")
}

/// Tenants for `n` sessions at once, `prefix-0`, `prefix-1`…: the per-tenant quota is no limit.
async fn tenants(node: &crate::up::Node, prefix: &str, n: usize) -> anyhow::Result<Vec<TenantId>> {
    let per = sessions_max(Tier::Enterprise);
    let mut ids = Vec::new();
    for j in 0..n.div_ceil(per).max(1) {
        ids.push(tenant(node, &format!("{prefix}-{j}")).await?);
    }
    Ok(ids)
}

async fn idle_rss(args: &SessionsArgs, node: &crate::up::Node, desktops: &Desktops) -> anyhow::Result<Memory> {
    let k = args.idle_sessions;
    eprintln!("rss: {k} idle basic sessions, then {k} bare Xvfb 1024x768x24");
    let tenants = tenants(node, "bench-sessions-idle", k).await?;
    let per = sessions_max(Tier::Enterprise);
    let mut live = Vec::with_capacity(k);
    let mut result = Ok(());
    for i in 0..k {
        match desktops.create(&tenants[i / per], request(DesktopTier::Basic)).await {
            Ok((record, _)) => live.push((tenants[i / per], record)),
            Err(e) => {
                result = Err(anyhow::Error::new(e).context(format!("create idle session {i}")));
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours: u64 = live.iter().filter_map(|(_, record)| record.pgid).map(vm_rss).sum();
    let ours_pss: u64 = live.iter().filter_map(|(_, record)| record.pgid).map(pss).sum();
    for (tenant, record) in &live {
        let _ = desktops.terminate(tenant, record.id).await;
    }
    result?;

    let displays = free_displays(k)?;
    let mut result = Ok(());
    let mut bare = Vec::with_capacity(k);
    for &display in &displays {
        match bare_start(display, "1024x768x24").await {
            Ok((_, child)) => bare.push((child, display)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peer: u64 = bare.iter().filter_map(|(child, _)| i32::try_from(child.id()).ok()).map(vm_rss).sum();
    let peer_pss: u64 = bare.iter().filter_map(|(child, _)| i32::try_from(child.id()).ok()).map(pss).sum();
    for (child, display) in bare {
        bare_stop(child, display).await;
    }
    result?;
    let per = |bytes: u64| bytes as f64 / k as f64;
    Ok(((per(ours), per(peer)), (per(ours_pss), per(peer_pss))))
}

async fn capacity(args: &SessionsArgs, node: &crate::up::Node, desktops: &Desktops) -> anyhow::Result<Capacity> {
    eprintln!("capacity: basic sessions until one fails, {} are live, or MemAvailable < 2 GiB", args.max_sessions);
    let tenants = tenants(node, "bench-sessions-cap", args.max_sessions).await?;
    let per = sessions_max(Tier::Enterprise);
    let before = mem_available()?;
    let mut live = Vec::new();
    let mut last_create_ms = f64::NAN;
    let stopped = loop {
        if live.len() >= args.max_sessions {
            break format!("the cap (--max-sessions {})", args.max_sessions);
        }
        let available = mem_available()?;
        if available < MEMORY_FLOOR {
            break format!("MemAvailable {} MiB, under 2 GiB", available >> 20);
        }
        let tenant = tenants[live.len() / per];
        let started = Instant::now();
        match desktops.create(&tenant, request(DesktopTier::Basic)).await {
            Ok((record, _)) => {
                last_create_ms = ms(started);
                live.push((tenant, record));
            }
            Err(e) => break format!("creation {} failed: {e}", live.len() + 1),
        }
        if live.len() % 25 == 0 {
            eprintln!("  {} sessions live, MemAvailable {} MiB", live.len(), mem_available()? >> 20);
        }
    };
    let rss_total = live.iter().filter_map(|(_, record)| record.pgid).map(vm_rss).sum();
    let after = mem_available()?;
    for (tenant, record) in &live {
        let _ = desktops.terminate(tenant, record.id).await;
    }
    Ok(Capacity { sessions: live.len(), stopped, available: (before, after), rss_total, last_create_ms })
}

async fn warm_phase(args: &SessionsArgs, node: &crate::up::Node, desktops: &Desktops, pool: usize) -> anyhow::Result<(Samples, usize)> {
    let tenant = tenant(node, "bench-sessions-warm").await?;
    eprintln!("warm: {} sessions (standard) from a pool of {pool} per tier", args.sessions);
    let mut warm = Vec::with_capacity(args.sessions);
    let mut misses = 0;
    for i in 0..args.sessions {
        pool_full(desktops, pool, Duration::from_secs(60)).await?;
        let started = Instant::now();
        let (record, _) = desktops.create(&tenant, request(DesktopTier::Standard)).await.with_context(|| format!("create warm session {i}"))?;
        warm.push(ms(started));
        if !record.warm {
            misses += 1;
        }
        desktops.terminate(&tenant, record.id).await.with_context(|| format!("terminate session {}", record.id))?;
    }
    Ok((Samples::new(warm), misses))
}

/// Waits until the pool holds `pool` started displays of every tier (the refill is idle).
async fn pool_full(desktops: &Desktops, pool: usize, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let status = desktops.status();
        if DesktopTier::ALL.iter().all(|tier| status.pool.get(tier.name()).copied().unwrap_or(0) >= pool) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < timeout, "the warm pool was not refilled within {timeout:?}: {:?}", status.pool);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` free display numbers for bare Xvfb, from [`PEER_FIRST_DISPLAY`].
fn free_displays(n: usize) -> anyhow::Result<Vec<u32>> {
    let free: Vec<u32> = (PEER_FIRST_DISPLAY..PEER_FIRST_DISPLAY + 2_000).filter(|d| x11::display_free(*d)).take(n).collect();
    anyhow::ensure!(free.len() == n, "only {} free displays from :{PEER_FIRST_DISPLAY}", free.len());
    Ok(free)
}

/// A bare Xvfb on `display`: its start→ready (spawned, then probed every 2 ms until it
/// completes an X11 connection set-up) and the process.
async fn bare_start(display: u32, screen: &'static str) -> anyhow::Result<(Duration, Child)> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = Command::new("Xvfb")
            .arg(format!(":{display}"))
            .args(["-screen", "0", screen, "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start Xvfb")?;
        loop {
            if x11::answers(display, PROBE_TIMEOUT) {
                return Ok((started.elapsed(), child));
            }
            if let Some(status) = child.try_wait().context("wait for Xvfb")? {
                anyhow::bail!("bare Xvfb on :{display} exited ({status}) before answering");
            }
            if started.elapsed() > READY_TIMEOUT {
                bare_kill(child, display);
                anyhow::bail!("bare Xvfb on :{display} did not answer within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await
    .context("the bare Xvfb task")?
}

async fn bare_stop(child: Child, display: u32) {
    let _ = tokio::task::spawn_blocking(move || bare_kill(child, display)).await;
}

fn bare_kill(mut child: Child, display: u32) {
    let _ = child.kill();
    let _ = child.wait();
    // Killed, Xvfb leaves its lock file and socket.
    let _ = std::fs::remove_file(x11::lock_path(display));
    let _ = std::fs::remove_file(x11::socket_path(display));
}

/// VmRSS of `pid`, bytes (0 if gone).
fn vm_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1_024)
}

/// Pss of `pid` (`/proc/<pid>/smaps_rollup`), bytes (0 if gone or unreadable).
fn pss(pid: i32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1_024)
}

/// MemAvailable of the host, bytes.
fn mem_available() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1_024)
        .context("no MemAvailable in /proc/meminfo")
}

fn print_report(args: &SessionsArgs, f: &Figures) {
    println!(
        "\nvcos bench sessions: {} sessions cold and {} warm (tier standard, 1280x720x24), {} bare Xvfb starts interleaved with the cold ones; {} idle basic sessions; up to {} concurrent",
        f.cold.0.len(),
        f.warm.0.len(),
        f.peer.0.len(),
        f.idle,
        args.max_sessions
    );
    println!("{:<36} {:>10} {:>10} {:>8} {:>10}  verdict", "metric", "v-COS", "bare Xvfb", "ratio", "target");
    let row = |metric: &str, ours: f64, peer: Option<f64>, target: Option<f64>| {
        let ratio = peer.filter(|p| *p > 0.0).map_or("-".to_owned(), |p| format!("{:.2}x", ours / p));
        let (target, verdict) = match target {
            Some(t) => (format!("< {t:.0}"), if ours < t { "met" } else { "MISSED" }),
            None => ("-".to_owned(), "-"),
        };
        println!("{metric:<36} {ours:>10.1} {:>10} {ratio:>8} {target:>10}  {verdict}", peer.map_or("n/a".to_owned(), |p| format!("{p:.1}")));
    };
    row("cold start->ready p50 (ms)", f.cold.quantile(0.5), Some(f.peer.quantile(0.5)), None);
    row("cold start->ready p99 (ms)", f.cold.quantile(0.99), Some(f.peer.quantile(0.99)), Some(COLD_P99_TARGET_MS));
    row("warm start->ready p50 (ms)", f.warm.quantile(0.5), Some(f.peer.quantile(0.5)), None);
    row("warm start->ready p99 (ms)", f.warm.quantile(0.99), Some(f.peer.quantile(0.99)), Some(WARM_P99_TARGET_MS));
    row("pause p50 (ms)", f.pause.quantile(0.5), None, None);
    row("pause p99 (ms)", f.pause.quantile(0.99), None, None);
    row("resume p50 (ms)", f.resume.quantile(0.5), None, None);
    row("resume p99 (ms)", f.resume.quantile(0.99), None, None);
    row("resumed, silent > 2 s (count)", f.silent_after_resume as f64, None, Some(1.0));
    row("RSS per idle session (MiB)", f.rss.0 / 1_048_576.0, Some(f.rss.1 / 1_048_576.0), None);
    row("concurrent sessions (count)", f.capacity.sessions as f64, None, None);
    let (cold_min, cold_max) = f.cold.range();
    let (warm_min, warm_max) = f.warm.range();
    let (peer_min, peer_max) = f.peer.range();
    println!(
        "ranges (ms): cold {cold_min:.1}-{cold_max:.1}, warm {warm_min:.1}-{warm_max:.1} ({} of {} not from the pool), bare Xvfb {peer_min:.1}-{peer_max:.1}",
        f.warm_misses,
        f.warm.0.len()
    );
    println!(
        "idle memory, proportional (PSS, shared pages divided): {:.1} MiB per session, {:.1} MiB per bare Xvfb",
        f.pss.0 / 1_048_576.0,
        f.pss.1 / 1_048_576.0
    );
    let c = &f.capacity;
    let drop_per_session = c.available.0.saturating_sub(c.available.1) as f64 / c.sessions.max(1) as f64 / 1_048_576.0;
    println!(
        "concurrent sessions: {} live, stopped by {}; their Xvfb RSS {} MiB in all; MemAvailable {} -> {} MiB ({drop_per_session:.1} MiB a session); the last creation took {:.1} ms",
        c.sessions,
        c.stopped,
        c.rss_total >> 20,
        c.available.0 >> 20,
        c.available.1 >> 20,
        c.last_create_ms
    );
}

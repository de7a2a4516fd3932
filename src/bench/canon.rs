//! `vcos bench canon`: replicated canon writes on a 3-voter region against a 3-member etcd
//! cluster, same run, same machine; plus cross-region replication lag under load.
//!
//! One run:
//! - starts three `vcos up` processes (this binary) forming region `bench-a` on loopback (node 1
//!   first, nodes 2 and 3 join it and become voters), and a fourth, `bench-b`, which joins too
//!   and becomes a learner of `bench-a`'s group;
//! - drives `PUT /v1/canon/kv/{key}` on the leader with wrk at concurrency 1, 16 and 256
//!   (`canon_put.lua`, the twin of `../shared/peers/etcd_put.lua`);
//! - while the c=256 run goes on, probes cross-region lag: every 20 ms a `lag/<i>` put on the
//!   leader, then node 4 is polled every 2 ms (stale read of `bench-a`) until the key shows;
//! - starts etcd with `etcd_cluster.sh`, runs `etcd_bench.sh` (same wrk, same concurrencies,
//!   the leader) and stops it;
//! - prints the comparison and the targets (>= 10x etcd at c=256 with p99 <= etcd's, >= 1x at
//!   c=1, lag p99 < 250 ms).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _};
use clap::Args;
use serde::Deserialize;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The wrk script for v-COS puts, written to a temporary file at run time.
const CANON_PUT_LUA: &str = include_str!("canon_put.lua");

/// The concurrencies measured, as in `etcd_bench.sh`.
const CONCURRENCIES: [u32; 3] = [1, 16, 256];

pub(super) const REGION_A: &str = "bench-a";
const REGION_B: &str = "bench-b";

/// Lag probes: one put every `PROBE_EVERY`, then node 4 polled every `POLL_EVERY`.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const POLL_EVERY: Duration = Duration::from_millis(2);
/// A probe not visible on node 4 after this long counts as lost.
const PROBE_GIVE_UP: Duration = Duration::from_secs(10);
/// One HTTP exchange of the harness (status, probe put, probe read).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `vcos bench canon`.
#[derive(Args, Debug)]
pub(crate) struct CanonArgs {
    /// Seconds of wrk load per concurrency (each side).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration_s: u64,
    /// Skip the etcd peer.
    #[arg(long, conflicts_with = "only_peer")]
    no_peer: bool,
    /// Measure only the etcd peer (checks the harness without a v-COS region).
    #[arg(long)]
    only_peer: bool,
    /// Where the peer scripts are (default: `$VCOS_PEERS_DIR`, else `../shared/peers` from the repository).
    #[arg(long, value_name = "DIR")]
    peers_dir: Option<PathBuf>,
    /// Keep the nodes' data directories and logs (their path is printed).
    #[arg(long)]
    keep_dirs: bool,
    /// Seconds to wait for the region to form (3 voters, then the bench-b learner).
    #[arg(long, default_value_t = 60)]
    ready_timeout_s: u64,
}

pub(crate) fn run(args: CanonArgs) -> anyhow::Result<()> {
    require_tool("wrk", &["-v"], "wrk")?;
    let peers = args.peers_dir.clone().unwrap_or_else(super::erlang::peers_dir);
    if !args.no_peer {
        require_tool("etcd", &["--version"], "etcd-server")?;
        require_tool("etcdctl", &["version"], "etcd-client")?;
        for script in ["etcd_cluster.sh", "etcd_bench.sh", "etcd_put.lua"] {
            let path = peers.join(script);
            ensure!(path.exists(), "peer script {} not found (pass --peers-dir or set VCOS_PEERS_DIR)", path.display());
        }
    }
    if cfg!(debug_assertions) && !args.only_peer {
        eprintln!("warning: a debug build of vcos: its figures are not comparable (use --release)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    let result = rt.block_on(async {
        tokio::select! {
            biased;
            r = bench(&args, &peers) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // A wrk still running in a blocking task (interrupted run) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Fails with the apt package to install when `tool` cannot be run.
fn require_tool(tool: &str, probe_args: &[&str], apt: &str) -> anyhow::Result<()> {
    match Command::new(tool).args(probe_args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(e) => bail!("`{tool}` cannot be run ({e}): install it with `apt-get install -y {apt}` (the whole peer: `apt-get install -y etcd-server etcd-client wrk`; --no-peer skips etcd, not wrk)"),
    }
}

async fn bench(args: &CanonArgs, peers: &Path) -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the runs: {}", load.trim());
    let ours = if args.only_peer { None } else { Some(measure_vcos(args).await?) };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before etcd: {}", load.trim());
    let peer = if args.no_peer { None } else { Some(measure_etcd(peers, args.duration_s).await?) };
    print_report(args, ours.as_ref(), peer.as_deref());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// wrk results

/// One `RESULT ...` line of `canon_put.lua` / `etcd_put.lua`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WrkResult {
    ops_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    reqs: u64,
    errors: u64,
}

/// Parses the fields of a RESULT line (`key=value` pairs; a leading `RESULT` is skipped).
fn parse_result(line: &str) -> anyhow::Result<WrkResult> {
    let f = super::wrk_fields(line, &["ops_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "reqs", "errors"])?;
    // Counts are integers in wrk's output; `as` only drops a fraction wrk never prints.
    Ok(WrkResult {
        ops_s: f["ops_s"],
        p50_ms: f["p50_ms"],
        p90_ms: f["p90_ms"],
        p99_ms: f["p99_ms"],
        p999_ms: f["p999_ms"],
        max_ms: f["max_ms"],
        reqs: f["reqs"] as u64,
        errors: f["errors"] as u64,
    })
}

/// Runs a command to completion in a blocking task; its output.
pub(super) async fn blocking_output(mut cmd: Command) -> anyhow::Result<std::process::Output> {
    Ok(tokio::task::spawn_blocking(move || cmd.output()).await.context("blocking task")??)
}

/// Runs wrk once (in a blocking task) and parses its RESULT line.
async fn run_wrk(script: &Path, url: &str, connections: u32, duration_s: u64) -> anyhow::Result<WrkResult> {
    let threads = if connections == 1 { 1 } else { 2 };
    let mut cmd = Command::new("timeout");
    cmd.arg((duration_s + 30).to_string())
        .arg("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{duration_s}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url);
    if let Some(key) = admin_key() {
        cmd.env("VCOS_API_KEY", key);
    }
    let out = blocking_output(cmd).await.context("run wrk (apt-get install -y wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT")) else {
        bail!(
            "wrk c={connections} against {url} printed no RESULT line (exit {}): stdout `{}` stderr `{}`",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    parse_result(line).with_context(|| format!("wrk c={connections} against {url}"))
}

// ---------------------------------------------------------------------------------------------
// etcd

/// Stops the etcd cluster (etcd_cluster.sh stop) when dropped.
struct EtcdGuard {
    script: PathBuf,
}

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg(&self.script).arg("stop").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Starts a 3-member etcd, runs `etcd_bench.sh 3 <secs> leader`, stops etcd.
async fn measure_etcd(peers: &Path, duration_s: u64) -> anyhow::Result<Vec<(u32, WrkResult)>> {
    let cluster = peers.join("etcd_cluster.sh");
    let bench = peers.join("etcd_bench.sh");
    eprintln!("etcd: starting 3 members ({})", cluster.display());
    // A cluster left over by an earlier run would hold the ports.
    let _ = Command::new("sh").arg(&cluster).arg("stop").output();
    let guard = EtcdGuard { script: cluster.clone() };
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg("sh").arg(&cluster).args(["start", "3"]);
    let start = blocking_output(cmd).await.with_context(|| format!("run {}", cluster.display()))?;
    ensure!(
        start.status.success(),
        "etcd cluster did not start ({}): {} {} (logs in /tmp/peers/etcd)",
        start.status,
        String::from_utf8_lossy(&start.stdout).trim(),
        String::from_utf8_lossy(&start.stderr).trim()
    );
    eprintln!("etcd: wrk at c=1,16,256 for {duration_s} s each (etcd_bench.sh)");
    let mut cmd = Command::new("sh");
    cmd.arg(&bench).args(["3", &duration_s.to_string(), "leader"]);
    let out = blocking_output(cmd).await.with_context(|| format!("run {}", bench.display()))?;
    drop(guard);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} failed ({}): {} {}",
        bench.display(),
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    for line in stdout.lines() {
        eprintln!("  {line}");
    }
    parse_etcd_bench(&stdout).with_context(|| format!("parse the output of {}", bench.display()))
}

/// Parses `etcd put c=<conc> ops_s=... p50_ms=...` lines; all three concurrencies must be there.
fn parse_etcd_bench(text: &str) -> anyhow::Result<Vec<(u32, WrkResult)>> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("etcd put c=") else { continue };
        let (conc, fields) = rest.split_once(' ').unwrap_or((rest, ""));
        let conc: u32 = conc.parse().with_context(|| format!("concurrency in `{line}`"))?;
        let result = parse_result(fields).with_context(|| format!("etcd c={conc} (did wrk fail? line: `{line}`)"))?;
        rows.push((conc, result));
    }
    for c in CONCURRENCIES {
        ensure!(rows.iter().any(|(conc, _)| *conc == c), "no `etcd put c={c}` line in: {text}");
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// The v-COS region

/// The nodes' processes; killed and waited for when dropped.
pub(super) struct Cluster {
    pub(super) dir: Option<tempfile::TempDir>,
    pub(super) keep: bool,
    pub(super) nodes: Vec<Node>,
    /// Further arguments of every `vcos up` (the cluster bench's `--bench-kinds`).
    pub(super) extra_args: Vec<String>,
    /// The admin key the first node wrote (joining nodes send it).
    pub(super) key_file: Option<PathBuf>,
}

/// The cluster-admin key of the cluster under test: every [`Http`] made after it is known
/// sends it (one cluster runs at a time).
static ADMIN_KEY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn set_admin_key(key: &str) {
    *ADMIN_KEY.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key.to_owned());
}

fn admin_key() -> Option<String> {
    ADMIN_KEY.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

pub(super) struct Node {
    pub(super) id: u32,
    pub(super) http: String,
    pub(super) child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if self.keep {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept the nodes' data directories and logs in {}", dir.keep().display());
            }
        }
    }
}

impl Cluster {
    pub(super) fn root(&self) -> anyhow::Result<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path).context("cluster directory gone")
    }

    /// Starts `vcos up` for node `id`; returns once it printed its `v-COS node up` line.
    pub(super) async fn start(&mut self, id: u32, region: &str, ports: (u16, u16), join: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
        let (http_port, raft_port) = ports;
        // `VCOS_BENCH_EXE` replaces this binary (for checking the harness against a stand-in).
        let exe = match std::env::var_os("VCOS_BENCH_EXE") {
            Some(exe) => PathBuf::from(exe),
            None => std::env::current_exe().context("locate the vcos binary (current_exe)")?,
        };
        let root = self.root()?.to_path_buf();
        let data = root.join(format!("node{id}"));
        let stdout = root.join(format!("node{id}.stdout.log"));
        let stderr = root.join(format!("node{id}.stderr.log"));
        let http = format!("127.0.0.1:{http_port}");
        let mut cmd = Command::new(&exe);
        // Joining nodes authenticate with the key the first node wrote.
        if join.is_some() {
            let key_file = self.key_file.clone().context("a node joins before the first one issued its admin key")?;
            cmd.arg("--api-key-file").arg(key_file);
        }
        cmd.arg("up")
            .arg("--no-models")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &http])
            .args(["--raft-listen", &format!("127.0.0.1:{raft_port}")])
            .args(["--node-id", &id.to_string()])
            .args(["--region", region]);
        if let Some(join) = join {
            cmd.args(["--join", &format!("http://{join}")]);
        }
        cmd.args(&self.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).with_context(|| format!("create {}", stdout.display()))?)
            .stderr(std::fs::File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?);
        let child = cmd.spawn().with_context(|| format!("start node {id}: {}", exe.display()))?;
        self.nodes.push(Node { id, http: http.clone(), child, stdout: stdout.clone(), stderr });
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("v-COS node up: http://")) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                if !addr.is_empty() && addr != http {
                    eprintln!("node {id}: serving on {addr} (asked for {http})");
                    if let Some(node) = self.nodes.last_mut() {
                        node.http = addr.to_owned();
                    }
                }
                if join.is_none() {
                    let key_file = data.join("admin.key");
                    let key = std::fs::read_to_string(&key_file).with_context(|| format!("node {id}'s admin key {}", key_file.display()))?;
                    set_admin_key(key.trim());
                    self.key_file = Some(key_file);
                }
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("node {id} printed no `v-COS node up` line within {} s\n{}", timeout.as_secs(), self.node_logs(id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails (with the node's logs) if a node has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead = None;
        for node in &mut self.nodes {
            if let Ok(Some(status)) = node.child.try_wait() {
                dead = Some((node.id, status));
                break;
            }
        }
        if let Some((id, status)) = dead {
            bail!("node {id} exited ({status})\n{}", self.node_logs(id));
        }
        Ok(())
    }

    /// The tails of a node's stdout and stderr, for error messages.
    pub(super) fn node_logs(&self, id: u32) -> String {
        let Some(node) = self.nodes.iter().find(|n| n.id == id) else { return String::new() };
        let mut s = String::new();
        for (name, path) in [("stdout", &node.stdout), ("stderr", &node.stderr)] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            let _ = writeln!(s, "--- node {id} {name} ({}), last {} lines:", path.display(), tail.len());
            for line in tail {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }

    pub(super) fn http_of(&self, id: u32) -> anyhow::Result<String> {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.http.clone()).with_context(|| format!("node {id} not started"))
    }

    /// Polls node 1's `/v1/canon/status` until `ready` holds for `bench-a`'s group.
    pub(super) async fn wait_for(&mut self, what: &str, timeout: Duration, ready: impl Fn(&Group) -> bool) -> anyhow::Result<Group> {
        let node1 = self.http_of(1)?;
        let mut client = Http::new(&node1);
        let deadline = Instant::now() + timeout;
        loop {
            let last = match client.get_json::<CanonStatus>("/v1/canon/status").await {
                Ok(status) => match status.groups.into_iter().find(|g| g.region == REGION_A) {
                    Some(group) if ready(&group) => return Ok(group),
                    Some(group) => format!("{group:?}"),
                    None => format!("no group for region {REGION_A} in node 1's status"),
                },
                Err(e) => format!("{e:#}"),
            };
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("timed out after {} s waiting for {what}; node 1's /v1/canon/status: {last}", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `GET /v1/canon/status`.
#[derive(Deserialize, Debug)]
struct CanonStatus {
    #[serde(default)]
    groups: Vec<Group>,
}

#[derive(Deserialize, Debug)]
pub(super) struct Group {
    region: String,
    #[serde(default)]
    leader_id: Option<u64>,
    #[serde(default)]
    pub(super) leader_http: Option<String>,
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Deserialize, Debug)]
struct Member {
    node_id: u64,
    #[serde(default)]
    role: String,
}

impl Group {
    pub(super) fn voters(&self) -> usize {
        self.members.iter().filter(|m| m.role == "voter").count()
    }

    fn has(&self, node_id: u64, role: &str) -> bool {
        self.members.iter().any(|m| m.node_id == node_id && m.role == role)
    }
}

/// Free loopback ports: all bound at once (so they differ), then released.
pub(super) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("bind a free loopback port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr().context("local address of a free port")?.port())).collect()
}

struct VcosFigures {
    rows: Vec<(u32, WrkResult)>,
    lag: LagFigures,
}

#[derive(Default)]
struct LagFigures {
    /// Milliseconds from the put's 200 to first visibility on node 4, sorted.
    lags_ms: Vec<f64>,
    /// Probes whose put failed.
    put_failed: usize,
    /// Probes never visible on node 4 within `PROBE_GIVE_UP`.
    lost: usize,
    /// The first failed probe put.
    first_error: Option<String>,
    /// The last error seen polling node 4 for the first lost probe.
    first_lost_error: Option<String>,
}

impl LagFigures {
    fn pct(&self, p: f64) -> Option<f64> {
        if self.lags_ms.is_empty() {
            return None;
        }
        let i = ((self.lags_ms.len() as f64 - 1.0) * p).round() as usize;
        self.lags_ms.get(i).copied()
    }
}

async fn measure_vcos(args: &CanonArgs) -> anyhow::Result<VcosFigures> {
    let dir = tempfile::Builder::new().prefix("vcos-bench-canon-").tempdir().context("temporary directory")?;
    let mut cluster = Cluster { dir: Some(dir), keep: args.keep_dirs, nodes: Vec::new(), extra_args: Vec::new(), key_file: None };
    let ports = free_ports(8)?;
    let (http, raft) = ports.split_at(4);
    let ready_timeout = Duration::from_secs(args.ready_timeout_s);
    eprintln!("v-COS: starting region {REGION_A} (3 nodes) and {REGION_B} (1 node) in {}", cluster.root()?.display());

    cluster.start(1, REGION_A, (http[0], raft[0]), None, ready_timeout).await?;
    let node1 = cluster.http_of(1)?;
    cluster.start(2, REGION_A, (http[1], raft[1]), Some(&node1), ready_timeout).await?;
    cluster.start(3, REGION_A, (http[2], raft[2]), Some(&node1), ready_timeout).await?;
    let group = cluster.wait_for("3 voters in region bench-a", ready_timeout, |g| g.voters() >= 3 && g.leader_http.is_some()).await?;
    eprintln!("v-COS: {REGION_A} has 3 voters (leader node {:?})", group.leader_id);
    cluster.start(4, REGION_B, (http[3], raft[3]), Some(&node1), ready_timeout).await?;
    let group = cluster
        .wait_for("node 4 (bench-b) as a learner of bench-a", ready_timeout, |g| g.has(4, "learner") && g.leader_http.is_some())
        .await?;
    let leader = group.leader_http.as_deref().context("bench-a has no leader_http")?;
    let leader = leader.strip_prefix("http://").unwrap_or(leader).trim_end_matches('/').to_owned();
    let node4 = cluster.http_of(4)?;
    eprintln!("v-COS: node 4 is a learner of {REGION_A}; writes go to the leader at {leader}");

    // Smoke test: one put on the leader, read back on node 4 (clear errors before wrk).
    let mut probe = Http::new(&leader);
    let (code, body) =
        probe.request("PUT", "/v1/canon/kv/bench%2Fsmoke", Some(r#"{"value":"smoke"}"#)).await.context("smoke put on the leader")?;
    ensure!(code == 200, "smoke PUT /v1/canon/kv/bench%2Fsmoke on the leader {leader}: HTTP {code}: {}", String::from_utf8_lossy(&body));
    let index: PutReply = serde_json::from_slice(&body)
        .with_context(|| format!("smoke put reply is not {{\"index\":N}}: {}", String::from_utf8_lossy(&body)))?;
    eprintln!("v-COS: smoke put committed at index {}", index.index);

    let root = cluster.root()?.to_path_buf();
    let script = root.join("canon_put.lua");
    std::fs::write(&script, CANON_PUT_LUA).with_context(|| format!("write {}", script.display()))?;
    let url = format!("http://{leader}");
    let mut rows = Vec::new();
    let mut lag = LagFigures::default();
    for c in CONCURRENCIES {
        eprintln!("v-COS: wrk c={c} for {} s{}", args.duration_s, if c == 256 { " (with the lag probe)" } else { "" });
        let result = if c == 256 {
            let stop = Arc::new(AtomicBool::new(false));
            let prober = tokio::spawn(lag_probe(leader.clone(), node4.clone(), stop.clone()));
            let result = run_wrk(&script, &url, c, args.duration_s).await;
            stop.store(true, Ordering::Relaxed);
            lag = prober.await.context("lag probe task")?;
            result?
        } else {
            run_wrk(&script, &url, c, args.duration_s).await?
        };
        eprintln!(
            "  vcos put c={c} ops_s={:.0} p50_ms={:.3} p99_ms={:.3} reqs={} errors={}",
            result.ops_s, result.p50_ms, result.p99_ms, result.reqs, result.errors
        );
        cluster.check_alive()?;
        rows.push((c, result));
    }
    drop(cluster);
    Ok(VcosFigures { rows, lag })
}

#[derive(Deserialize)]
struct PutReply {
    index: u64,
}

/// Every `PROBE_EVERY` until `stop`: a probe task (put on the leader, then poll node 4).
async fn lag_probe(leader: String, node4: String, stop: Arc<AtomicBool>) -> LagFigures {
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        i += 1;
        tasks.spawn(one_probe(leader.clone(), node4.clone(), i));
    }
    let mut figures = LagFigures::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(Err(e))) => {
                figures.lost += 1;
                if let Some(e) = e {
                    figures.first_lost_error.get_or_insert(e);
                }
            }
            Ok(Ok(Ok(ms))) => figures.lags_ms.push(ms),
            Ok(Err(e)) => {
                figures.put_failed += 1;
                figures.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                figures.put_failed += 1;
                figures.first_error.get_or_insert_with(|| format!("probe task: {e}"));
            }
        }
    }
    figures.lags_ms.sort_by(f64::total_cmp);
    figures
}

/// One lag probe: `Ok(Ok(ms))` once visible on node 4, `Ok(Err(last read error))` if never within
/// `PROBE_GIVE_UP`, `Err` if the put failed.
async fn one_probe(leader: String, node4: String, i: u64) -> anyhow::Result<Result<f64, Option<String>>> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut put = Http::new(&leader);
    let (code, body) = put.request("PUT", &format!("/v1/canon/kv/lag%2F{i}"), Some(&format!(r#"{{"value":"{now_ms}"}}"#))).await?;
    ensure!(code == 200, "probe PUT lag/{i} on {leader}: HTTP {code}: {}", String::from_utf8_lossy(&body));
    let committed = Instant::now();
    let mut get = Http::new(&node4);
    let path = format!("/v1/canon/kv/lag%2F{i}?consistency=stale&region={REGION_A}");
    let mut last_error = None;
    while committed.elapsed() < PROBE_GIVE_UP {
        match get.request("GET", &path, None).await {
            Ok((200, _)) => return Ok(Ok(committed.elapsed().as_secs_f64() * 1e3)),
            Ok((404, _)) => {}
            Ok((code, body)) => last_error = Some(format!("HTTP {code}: {}", String::from_utf8_lossy(&body))),
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    Ok(Err(last_error.map(|e| format!("lag/{i} on node 4 {node4}: {e}"))))
}

// ---------------------------------------------------------------------------------------------
// The harness's HTTP/1.1 client: hyper's, one kept-alive connection per client (each
// concurrent prober or caller holds its own `Http`).

/// One kept-alive connection's request half.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub(super) struct Http {
    addr: String,
    sender: Option<Sender>,
    key: Option<String>,
}

impl Http {
    /// A client of `addr` sending the cluster's admin key.
    pub(super) fn new(addr: &str) -> Self {
        Self { addr: addr.to_owned(), sender: None, key: admin_key() }
    }

    /// A client of `addr` sending `key` (none: no `Authorization` header).
    pub(super) fn with_key(addr: &str, key: Option<&str>) -> Self {
        Self { addr: addr.to_owned(), sender: None, key: key.map(str::to_owned) }
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        let (code, body) = self.request("GET", path, None).await?;
        ensure!(code == 200, "GET {path} on {}: HTTP {code}: {}", self.addr, String::from_utf8_lossy(&body));
        serde_json::from_slice(&body)
            .with_context(|| format!("GET {path} on {}: unexpected JSON: {}", self.addr, String::from_utf8_lossy(&body)))
    }

    /// One exchange; a kept-alive connection that fails is replaced once (the server may have
    /// closed it while it was idle).
    pub(super) async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
        let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        match tokio::time::timeout(HTTP_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) if !reused => return Err(e),
            Err(_) if !reused => {
                self.sender = None;
                bail!("{method} {path} on {}: no answer within {} s", self.addr, HTTP_TIMEOUT.as_secs());
            }
            _ => self.sender = None,
        }
        match tokio::time::timeout(HTTP_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                bail!("{method} {path} on {}: no answer within {} s", self.addr, HTTP_TIMEOUT.as_secs())
            }
        }
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
        let result = self.exchange_inner(method, path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange_inner(&mut self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
        let what = || format!("{method} {path} on {}", self.addr);
        if self.sender.as_ref().is_none_or(Sender::is_closed) {
            let stream = TcpStream::connect(&self.addr).await.with_context(|| format!("{}: connect", what()))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.with_context(|| format!("{}: HTTP handshake", what()))?;
            // The connection's I/O runs on its own task; it ends when `sender` is dropped or
            // the server closes the connection (then `is_closed` says so and we reconnect).
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let mut request = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, self.addr.as_str());
        if let Some(key) = &self.key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .with_context(|| format!("{}: build the request", what()))?;
        let sender = self.sender.as_mut().context("connection")?;
        sender.ready().await.with_context(|| format!("{}: connection not ready", what()))?;
        let response = sender.send_request(request).await.with_context(|| format!("{}: send", what()))?;
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await.with_context(|| format!("{}: read the body", what()))?.to_bytes();
        Ok((code, bytes.to_vec()))
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_report(args: &CanonArgs, ours: Option<&VcosFigures>, peer: Option<&[(u32, WrkResult)]>) {
    let find = |rows: &[(u32, WrkResult)], c: u32| rows.iter().find(|(conc, _)| *conc == c).map(|(_, r)| *r);
    let cell = |v: Option<f64>, digits: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"));
    println!();
    println!(
        "canon puts, 256 B values, {} s per run, wrk --timeout 10s; v-COS: 3 voters + 1 learner region, fsync on; etcd: 3 members, gRPC gateway, leader",
        args.duration_s
    );
    println!(
        "{:>5} {:>11} {:>9} {:>9} {:>7} {:>11} {:>9} {:>9} {:>7} {:>8}  {:<28} verdict",
        "conc", "vcos ops/s", "p50 ms", "p99 ms", "errors", "etcd ops/s", "p50 ms", "p99 ms", "errors", "ratio", "target"
    );
    for c in CONCURRENCIES {
        let v = ours.and_then(|o| find(&o.rows, c));
        let e = peer.and_then(|p| find(p, c));
        let ratio = match (v, e) {
            (Some(v), Some(e)) if e.ops_s > 0.0 => Some(v.ops_s / e.ops_s),
            _ => None,
        };
        let (target, verdict) = match c {
            256 => {
                let met = match (v, e, ratio) {
                    (Some(v), Some(e), Some(r)) => Some(r >= 10.0 && v.p99_ms <= e.p99_ms && v.errors == 0),
                    _ => None,
                };
                (">=10x ops/s, p99 <= etcd's", met)
            }
            1 => (">=1x ops/s", ratio.zip(v).map(|(r, v)| r >= 1.0 && v.errors == 0)),
            _ => ("-", None),
        };
        println!(
            "{:>5} {:>11} {:>9} {:>9} {:>7} {:>11} {:>9} {:>9} {:>7} {:>8}  {:<28} {}",
            c,
            cell(v.map(|r| r.ops_s), 0),
            cell(v.map(|r| r.p50_ms), 2),
            cell(v.map(|r| r.p99_ms), 2),
            v.map_or("n/a".to_owned(), |r| r.errors.to_string()),
            cell(e.map(|r| r.ops_s), 0),
            cell(e.map(|r| r.p50_ms), 2),
            cell(e.map(|r| r.p99_ms), 2),
            e.map_or("n/a".to_owned(), |r| r.errors.to_string()),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            target,
            verdict.map_or("-", |m| if m { "met" } else { "MISSED" }),
        );
    }
    if let Some(ours) = ours {
        if ours.rows.iter().any(|(_, r)| r.errors > 0) {
            println!("note: v-COS runs with errors (non-2xx, timeouts, socket errors) count as MISSED");
        }
        let lag = &ours.lag;
        let p50 = lag.pct(0.50);
        let p99 = lag.pct(0.99);
        println!();
        println!(
            "cross-region lag (bench-a leader put 200 -> visible on node 4 in bench-b, stale read), during c=256: {} probes seen, {} never seen within {} s, {} puts failed",
            lag.lags_ms.len(),
            lag.lost,
            PROBE_GIVE_UP.as_secs(),
            lag.put_failed
        );
        let met = p99.is_some_and(|p| p < 250.0) && lag.lost == 0;
        println!(
            "  lag p50 {} ms, p99 {} ms, max {} ms; target p99 < 250 ms (and none lost): {}",
            cell(p50, 1),
            cell(p99, 1),
            cell(lag.lags_ms.last().copied(), 1),
            if met { "met" } else { "MISSED" }
        );
        if let Some(e) = &lag.first_error {
            println!("  first failed probe put: {e}");
        }
        if let Some(e) = &lag.first_lost_error {
            println!("  a lost probe's last read error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let r = parse_result("RESULT ops_s=575 p50_ms=1.589 p90_ms=2.201 p99_ms=4.318 p999_ms=8.262 max_ms=11.409 reqs=5764 errors=0")
            .expect("parses");
        assert_eq!(r.ops_s, 575.0);
        assert_eq!(r.p99_ms, 4.318);
        assert_eq!(r.reqs, 5764);
        assert!(parse_result("RESULT ops_s=575").is_err());
        assert!(parse_result("RESULT ops_s=x p50_ms=1 p90_ms=1 p99_ms=1 p999_ms=1 max_ms=1 reqs=1 errors=0").is_err());
    }

    #[test]
    fn parses_etcd_bench_output() {
        let text = "# members=3 target=leader endpoint=http://127.0.0.1:32379 duration=10s value=256B\n\
            etcd put c=1 ops_s=575 p50_ms=1.589 p90_ms=2.201 p99_ms=4.318 p999_ms=8.262 max_ms=11.409 reqs=5764 errors=0\n\
            etcd put c=16 ops_s=2018 p50_ms=7.301 p90_ms=11.576 p99_ms=19.902 p999_ms=34.842 max_ms=46.384 reqs=20265 errors=0\n\
            etcd put c=256 ops_s=4654 p50_ms=51.649 p90_ms=78.527 p99_ms=113.215 p999_ms=140.237 max_ms=151.235 reqs=47015 errors=0\n";
        let rows = parse_etcd_bench(text).expect("parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].0, 256);
        assert_eq!(rows[2].1.ops_s, 4654.0);
        assert!(parse_etcd_bench("etcd put c=1 \n").is_err());
    }
}

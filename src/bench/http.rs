//! `vcos bench http`: what security costs on the HTTP facade `vcos up` ships — messages per
//! second with authentication, rate limiting, metering and audit on against the same node with
//! them off, same run; HTTP latency at a fixed request rate on loopback; and how long the
//! authorisation middleware takes to resolve a caller.
//!
//! One run:
//! - starts a node in this process the way `vcos up` does (`up::start_node`: a one-voter Raft
//!   canon on disk in a temporary directory, fsync on; the runtime with the kinds that ship;
//!   membership and placement) and serves two facades over it on loopback, each with
//!   `vcos_api::serve`:
//!   - **on**: `vcos_api::router_with_cluster`, exactly what `vcos up` serves;
//!   - **off**: `vcos_api::router_without_security_for_benchmarks`: the same routes, handlers
//!     and layers, without the authorisation middleware's work (no key, tenant scope, role,
//!     rate or concurrency limit, request id or audit record); and during "off" runs the bench
//!     tenant is not metered (`TenantUsage::pause_for_benchmark`). Neither switch is reachable
//!     from `vcos up`: both are Rust calls that only this bench makes, on its own node;
//! - through the "on" facade, with the admin key the node wrote, creates a tenant of the
//!   enterprise tier whose limits are raised far above any load (rate and concurrency limits
//!   are checked on every request and refuse none), an `app` key of it, and `--imvus` counter
//!   IMVUs (each message is a durable canon write, as `vcos up` does it); checks that the "on"
//!   facade refuses a request without a key and the "off" one serves it;
//! - **throughput**: `--runs` wrk runs per side of `--seconds` each, alternating (off, on, on,
//!   off, …: drift weighs on both), each POSTing `{"op":"add","n":1}` round robin over the
//!   IMVUs as fast as they are answered (`http_messages.lua`); both sides get the same bytes,
//!   key header included. Beside messages/s, the node's CPU time per message (this process's
//!   user and system time over the run; wrk, a child process, is not in it): other work on a
//!   shared machine takes throughput from both sides unevenly, CPU per message much less;
//! - **latency at a fixed rate**: one paced wrk run per side at `--rate` requests/s (wrk's
//!   `delay()` hook on a per-thread grid; see the script);
//! - **caller resolution**: the histogram `vcos_http_auth_resolution_seconds` that the
//!   middleware records on every admitted keyed request (source check, key, tenant scope and
//!   role, the tenant's policy and its rate-limit admission), read from the "on" facade's
//!   `/metrics` before and after the throughput runs and after the paced one (a p99 for each
//!   load). Its buckets are 1 µs apart up to 6 µs, then 8, 10, 15, 20 µs…: the p99 is reported
//!   as the bound of the bucket holding it (what the verdict uses) and interpolated within it.
//!   Beside it, for scale, the same lookups (key registry, tenant entry and policy) called in a
//!   loop on the idle node, each timed: the work without the request or the loaded machine;
//! - prints the comparison (on against off, same run), the medians and ranges, and a verdict
//!   per target: cost ≤ 3 %, p99 < 5 ms at the rate, resolution p99 < 10 µs.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use clap::Args;
use serde_json::{json, Value};
use vcos_actors::TenantId;

use super::canon::{blocking_output, Http};
use super::{print_table, Row};

/// The wrk script, written to a temporary file at run time.
const HTTP_MESSAGES_LUA: &str = include_str!("http_messages.lua");

/// The bench's tenant.
const TENANT: &str = "bench-http";
/// Its limits: far above what this machine can send, so that they are checked on every request
/// and refuse none.
const LIMIT_REQUESTS_PER_S: u32 = 1_000_000_000;
const LIMIT_BURST: u32 = 1_000_000_000;
const LIMIT_CONCURRENT: u32 = 1_000_000;

/// Targets.
const COST_MAX: f64 = 0.03;
const PACED_P99_MAX_MS: f64 = 5.0;
const RESOLUTION_P99_MAX_US: f64 = 10.0;
/// What the mission asks of caller resolution.
const RESOLUTION_MISSION_MAX_US: f64 = 10_000.0;
/// A paced run that reached less than this share of its rate did not run at that rate.
const RATE_REACHED_MIN: f64 = 0.98;
/// The middleware's histogram (see `vcos_api::HTTP_AUTH_RESOLUTION_METRIC`).
const RESOLUTION_METRIC: &str = vcos_api::HTTP_AUTH_RESOLUTION_METRIC;

/// Options of `vcos bench http`.
#[derive(Args, Debug)]
pub(crate) struct HttpArgs {
    /// Throughput runs per side (security on, security off), alternating.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// wrk connections of the throughput runs.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// wrk threads (every run).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Counter IMVUs the messages are spread over (round robin).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    imvus: u64,
    /// Requests per second of the paced latency runs.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Seconds of each paced run (one per side); 0 skips them.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    rate_seconds: u64,
    /// wrk connections of the paced runs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rate_connections: u32,
    /// Seconds of unrecorded load per side before the measured runs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_seconds: u64,
    /// Keep the node's data directory (its path is printed).
    #[arg(long)]
    keep_dir: bool,
}

pub(crate) fn run(args: HttpArgs) -> anyhow::Result<()> {
    ensure!(args.threads <= args.connections, "--threads {} exceeds --connections {} (wrk needs a connection per thread)", args.threads, args.connections);
    ensure!(
        args.threads <= args.rate_connections,
        "--threads {} exceeds --rate-connections {} (wrk needs a connection per thread)",
        args.threads,
        args.rate_connections
    );
    if let Err(e) = Command::new("wrk").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        bail!("`wrk` cannot be run ({e}): install it with `apt-get install -y wrk`");
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build of vcos: its figures are not comparable (use --release)");
    }
    // The node's runtime as `vcos up` builds it: a worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start tokio")?;
    let result = rt.block_on(async {
        tokio::select! {
            biased;
            r = bench(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // A wrk still running in a blocking task (interrupted run) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Which facade a run goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `router_with_cluster`: what `vcos up` serves.
    On,
    /// `router_without_security_for_benchmarks`, the tenant unmetered.
    Off,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

async fn bench(args: &HttpArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("vcos-bench-http-").tempdir().context("create a temporary directory")?;
    let data_dir = dir.path().join("node");
    let up = crate::up::UpArgs::parse_from([
        OsString::from("up"),
        "--data-dir".into(),
        data_dir.clone().into_os_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ])?;
    let on_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("listen on loopback (security on)")?;
    let off_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("listen on loopback (security off)")?;
    let on_addr = on_listener.local_addr().context("local address")?;
    let off_addr = off_listener.local_addr().context("local address")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the node starts: {}", load.trim());
    let node = crate::up::start_node(&up, on_addr, false).await.context("start the node (as `vcos up` does)")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let on_router = vcos_api::router_with_cluster(node.rt.clone(), node.metrics.clone(), (*node.store).clone(), node.cluster.clone());
    let off_router =
        vcos_api::router_without_security_for_benchmarks(node.rt.clone(), node.metrics.clone(), (*node.store).clone(), node.cluster.clone());
    let on_server = tokio::spawn(vcos_api::serve(on_listener, on_router, stopped(stop_rx.clone())));
    let off_server = tokio::spawn(vcos_api::serve(off_listener, off_router, stopped(stop_rx)));
    eprintln!("facades: security on http://{on_addr}, security off http://{off_addr}; canon in {}", data_dir.display());

    let result = measure(args, &node, &up, &on_addr.to_string(), &off_addr.to_string(), dir.path()).await;

    let _ = stop_tx.send(true);
    for server in [on_server, off_server] {
        match tokio::time::timeout(vcos_api::SHUTDOWN_DRAIN_MAX + Duration::from_secs(1), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("warning: a facade stopped with an error: {e}"),
            Ok(Err(e)) => eprintln!("warning: a facade's task failed: {e}"),
            Err(_) => eprintln!("warning: a facade did not stop in time"),
        }
    }
    node.stop().await;
    if args.keep_dir {
        eprintln!("kept the node's data directory in {}", dir.keep().display());
    }
    let figures = result?;
    print_report(args, &figures);
    Ok(())
}

/// Everything measured.
struct Figures {
    imvus: usize,
    /// Throughput runs in the order run.
    runs: Vec<(Side, WrkRun)>,
    paced: Vec<(Side, WrkRun)>,
    /// The resolution histogram over the "on" throughput runs (after − before).
    resolution_max_load: Histogram,
    /// The same over the "on" paced run.
    resolution_paced: Histogram,
    /// The lookups of resolution called in a loop on an idle node: µs, sorted.
    resolution_idle_us: Vec<f64>,
}

impl Figures {
    fn side(&self, side: Side) -> Vec<WrkRun> {
        self.runs.iter().filter(|(s, _)| *s == side).map(|(_, r)| *r).collect()
    }

    fn paced(&self, side: Side) -> Option<WrkRun> {
        self.paced.iter().find(|(s, _)| *s == side).map(|(_, r)| *r)
    }
}

async fn measure(args: &HttpArgs, node: &crate::up::Node, up: &crate::up::UpArgs, on: &str, off: &str, tmp: &Path) -> anyhow::Result<Figures> {
    let admin_file = up.data_dir().join(crate::up::ADMIN_KEY_FILE);
    let admin = std::fs::read_to_string(&admin_file).with_context(|| format!("read the node's admin key {}", admin_file.display()))?;
    let (app_key, ids) = set_up(on, off, admin.trim(), args.imvus).await?;
    let tenant = TenantId::new(TENANT).context("the bench tenant's name")?;
    let set_metering = |side: Side| -> anyhow::Result<()> {
        let entry = node.rt.tenant(&tenant).context("the bench tenant's entry")?;
        entry.usage.pause_for_benchmark(side == Side::Off);
        Ok(())
    };
    let script = tmp.join("http_messages.lua");
    std::fs::write(&script, HTTP_MESSAGES_LUA).with_context(|| format!("write {}", script.display()))?;
    let ids = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let addr = |side: Side| if side == Side::On { on } else { off };
    let load = |side: Side, connections: u32, seconds: u64, rate: f64| Load {
        script: &script,
        addr: addr(side),
        key: &app_key,
        ids: &ids,
        threads: args.threads,
        connections,
        seconds,
        thread_rate: rate / f64::from(args.threads),
    };

    if args.warmup_seconds > 0 {
        for side in [Side::Off, Side::On] {
            set_metering(side)?;
            eprintln!("warm-up, security {}: {} s", side.name(), args.warmup_seconds);
            let r = run_wrk(&load(side, args.connections, args.warmup_seconds, 0.0)).await?;
            eprintln!("  {:.0} msg/s, errors {}", r.ops_s, r.errors());
        }
    }
    set_metering(Side::On)?;
    let before = scrape_resolution(on).await?;
    let mut runs = Vec::new();
    for round in 0..args.runs {
        let order = if round % 2 == 0 { [Side::Off, Side::On] } else { [Side::On, Side::Off] };
        for side in order {
            set_metering(side)?;
            let r = run_wrk(&load(side, args.connections, args.seconds, 0.0)).await;
            set_metering(Side::On)?;
            let r = r?;
            eprintln!(
                "round {}/{} security {:>3}: {:>8.0} msg/s  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms  requests {}  errors {}  node CPU {:.1} µs/msg",
                round + 1,
                args.runs,
                side.name(),
                r.ops_s,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.reqs,
                r.errors(),
                r.cpu_us_per_request()
            );
            runs.push((side, r));
        }
    }
    let after_runs = scrape_resolution(on).await?;
    let mut paced = Vec::new();
    if args.rate_seconds > 0 {
        for side in [Side::Off, Side::On] {
            set_metering(side)?;
            let r = run_wrk(&load(side, args.rate_connections, args.rate_seconds, f64::from(args.rate))).await;
            set_metering(Side::On)?;
            let r = r?;
            eprintln!(
                "paced at {} req/s, security {:>3}: achieved {:.0} req/s  p50 {:.3} ms  p99 {:.3} ms  max {:.1} ms  errors {}",
                args.rate,
                side.name(),
                r.ops_s,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.errors()
            );
            paced.push((side, r));
        }
    }
    let after_paced = scrape_resolution(on).await?;
    let shrank = || anyhow!("the resolution histogram shrank between scrapes (recorder replaced?)");
    let resolution_max_load = after_runs.minus(&before).ok_or_else(shrank)?;
    let resolution_paced = after_paced.minus(&after_runs).ok_or_else(shrank)?;
    let resolution_idle_us = {
        let (rt, key) = (node.rt.clone(), app_key.clone());
        tokio::task::spawn_blocking(move || resolve_in_a_loop(&rt, &key, IDLE_RESOLUTIONS)).await.context("resolution loop task")??
    };
    Ok(Figures { imvus: args.imvus as usize, runs, paced, resolution_max_load, resolution_paced, resolution_idle_us })
}

/// Resolutions timed one by one on the idle node.
const IDLE_RESOLUTIONS: usize = 200_000;

/// What the middleware looks up to resolve a caller — the key in the registry (parse, checksum,
/// cached record, SHA-256 compared in constant time, expiry and revocation), the key's tenant
/// against the path's, the tenant's entry and policy limits — called `n` times in a row on the
/// idle node, each timed: the work itself, without the request around it, the limiter (private
/// to `vcos_api`) or a loaded machine's scheduling. µs, sorted.
fn resolve_in_a_loop(rt: &vcos_actors::Runtime, key: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let tenant = TenantId::new(TENANT).context("the bench tenant's name")?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let principal = rt.keys().authenticate(key).map_err(|e| anyhow!("authenticate the app key: {e}"))?;
        ensure!(principal.tenant.as_ref() == Some(&tenant), "the app key is not of tenant {TENANT}");
        let entry = rt.tenant_or_load(&tenant).context("the bench tenant's entry")?;
        std::hint::black_box(entry.policy.limits());
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Creates the tenant, its `app` key and the IMVUs; checks that the "on" facade refuses a
/// request without a key and that the "off" one serves it. Returns the key and the IMVU ids.
async fn set_up(on: &str, off: &str, admin: &str, imvus: u64) -> anyhow::Result<(String, Vec<u64>)> {
    let mut cluster_admin = Http::with_key(on, Some(admin));
    let policy = json!({
        "tier": "enterprise",
        "requests_per_s": LIMIT_REQUESTS_PER_S,
        "burst": LIMIT_BURST,
        "concurrent_requests": LIMIT_CONCURRENT,
    });
    let created = post_json(&mut cluster_admin, "/v1/tenants", &json!({"name": TENANT, "policy": policy})).await?;
    let tenant_admin = created["admin_key"]["key"].as_str().with_context(|| format!("POST /v1/tenants: no admin_key.key in {created}"))?;
    let mut tenant_admin = Http::with_key(on, Some(tenant_admin));
    let issued = post_json(&mut tenant_admin, &format!("/v1/tenants/{TENANT}/keys"), &json!({"role": "app", "name": "vcos bench http"})).await?;
    let app_key = issued["key"].as_str().with_context(|| format!("POST /v1/tenants/{TENANT}/keys: no key in {issued}"))?.to_owned();
    let mut app = Http::with_key(on, Some(&app_key));
    eprintln!("creating {imvus} counter IMVUs in tenant {TENANT} (enterprise tier, limits raised: {LIMIT_REQUESTS_PER_S} req/s, burst {LIMIT_BURST}, {LIMIT_CONCURRENT} at once)");
    let mut ids = Vec::new();
    for _ in 0..imvus {
        let view = post_json(&mut app, &format!("/v1/tenants/{TENANT}/imvus"), &json!({"kind": "counter"})).await?;
        ids.push(view["key"]["id"].as_u64().with_context(|| format!("POST /v1/tenants/{TENANT}/imvus: no key.id in {view}"))?);
    }
    // Every IMVU answers through the "on" facade; the first also through the "off" one without
    // a key, which the "on" one refuses: the two sides are what they claim.
    let message = json!({"message": {"op": "add", "n": 1}});
    for id in &ids {
        post_json(&mut app, &format!("/v1/tenants/{TENANT}/imvus/{id}/messages"), &message).await?;
    }
    let first = ids.first().context("no IMVU created")?;
    let path = format!("/v1/tenants/{TENANT}/imvus/{first}/messages");
    let (code, body) = Http::with_key(on, None).request("POST", &path, Some(&message.to_string())).await?;
    ensure!(code == 401, "the security-on facade answered a message without a key with HTTP {code}, not 401: {}", String::from_utf8_lossy(&body));
    let (code, body) = Http::with_key(off, None).request("POST", &path, Some(&message.to_string())).await?;
    ensure!(code == 200, "the security-off facade answered a message without a key with HTTP {code}, not 200: {}", String::from_utf8_lossy(&body));
    Ok((app_key, ids))
}

/// POSTs `body`; the answer's JSON, which must come with a 2xx.
async fn post_json(http: &mut Http, path: &str, body: &Value) -> anyhow::Result<Value> {
    let (code, bytes) = http.request("POST", path, Some(&body.to_string())).await?;
    ensure!((200..300).contains(&code), "POST {path}: HTTP {code}: {}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: not JSON: {}", String::from_utf8_lossy(&bytes)))
}

// ---------------------------------------------------------------------------------------------
// wrk

/// One wrk run's parameters.
struct Load<'a> {
    script: &'a Path,
    addr: &'a str,
    key: &'a str,
    ids: &'a str,
    threads: u32,
    connections: u32,
    seconds: u64,
    /// Requests per second of each thread; 0: as fast as answered.
    thread_rate: f64,
}

/// One `RESULT …` line of `http_messages.lua`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WrkRun {
    ops_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    reqs: u64,
    status_errors: u64,
    socket_errors: u64,
    timeouts: u64,
    /// CPU seconds this process (the node: HTTP, runtime, canon) spent during the run, user
    /// and system; wrk, a child, is not in it. Not from the RESULT line.
    node_cpu_s: f64,
}

impl WrkRun {
    /// The node's CPU time per request, µs.
    fn cpu_us_per_request(&self) -> f64 {
        if self.reqs == 0 {
            return f64::NAN;
        }
        self.node_cpu_s * 1e6 / self.reqs as f64
    }

    /// Non-2xx answers, socket errors and timeouts.
    fn errors(&self) -> u64 {
        self.status_errors + self.socket_errors + self.timeouts
    }
}

/// Parses a RESULT line (`key=value` pairs; a leading `RESULT` and unknown keys are skipped).
fn parse_run(line: &str) -> anyhow::Result<WrkRun> {
    let wanted = ["ops_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "reqs", "status_errors", "socket_errors", "timeouts"];
    let f = super::wrk_fields(line, &wanted)?;
    // Counts are integers in wrk's output; `as` only drops a fraction wrk never prints.
    Ok(WrkRun {
        ops_s: f["ops_s"],
        p50_ms: f["p50_ms"],
        p90_ms: f["p90_ms"],
        p99_ms: f["p99_ms"],
        p999_ms: f["p999_ms"],
        max_ms: f["max_ms"],
        reqs: f["reqs"] as u64,
        status_errors: f["status_errors"] as u64,
        socket_errors: f["socket_errors"] as u64,
        timeouts: f["timeouts"] as u64,
        node_cpu_s: 0.0,
    })
}

/// Runs wrk once (in a blocking task) and parses its RESULT line.
async fn run_wrk(load: &Load<'_>) -> anyhow::Result<WrkRun> {
    let mut cmd = Command::new("timeout");
    cmd.arg((load.seconds + 30).to_string())
        .arg("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .args(["--timeout", "10s", "-s"])
        .arg(load.script)
        .arg(format!("http://{}", load.addr))
        .env("VCOS_API_KEY", load.key)
        .env("VCOS_BENCH_TENANT", TENANT)
        .env("VCOS_BENCH_IMVUS", load.ids)
        .env("VCOS_BENCH_THREADS", load.threads.to_string())
        .env("VCOS_BENCH_THREAD_RATE", format!("{:.3}", load.thread_rate));
    let cpu_before = process_cpu_s();
    let out = blocking_output(cmd).await.context("run wrk (apt-get install -y wrk)")?;
    let node_cpu_s = process_cpu_s() - cpu_before;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT")) else {
        bail!(
            "wrk -c{} against {} printed no RESULT line (exit {}): stdout `{}` stderr `{}`",
            load.connections,
            load.addr,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    let mut run = parse_run(line).with_context(|| format!("wrk -c{} against {}", load.connections, load.addr))?;
    run.node_cpu_s = node_cpu_s;
    Ok(run)
}

/// User and system CPU seconds of this process so far (`/proc/self/stat`, in clock ticks of
/// 1/100 s: what `getconf CLK_TCK` says on Linux); NaN where it cannot be read.
fn process_cpu_s() -> f64 {
    const TICKS_PER_S: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // The command name, in parentheses, may hold spaces: the fields follow its last `)`.
    let Some((_, fields)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); the state (field 3) is the first here.
    match (fields.get(11).and_then(|v| v.parse::<f64>().ok()), fields.get(12).and_then(|v| v.parse::<f64>().ok())) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_S,
        _ => f64::NAN,
    }
}

// ---------------------------------------------------------------------------------------------
// The resolution histogram

/// A Prometheus histogram as rendered: cumulative counts by upper bound (seconds, ascending,
/// `+Inf` last), summed over label sets.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// The `{name}_bucket` lines of `text`; `None` when there are none.
    fn parse(text: &str, name: &str) -> anyhow::Result<Option<Self>> {
        let prefix = format!("{name}_bucket");
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else { continue };
            let Some(rest) = rest.strip_prefix('{') else { continue };
            let (labels, value) = rest.split_once('}').with_context(|| format!("unterminated labels: `{line}`"))?;
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))
                .and_then(|l| l.strip_suffix('"'))
                .with_context(|| format!("a bucket without `le`: `{line}`"))?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().with_context(|| format!("bucket bound `{le}`: `{line}`"))? };
            let count = value.trim().parse::<f64>().with_context(|| format!("bucket count: `{line}`"))?;
            ensure!(count >= 0.0 && count.is_finite(), "bucket count: `{line}`");
            let count = count as u64;
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, c)) => *c += count,
                None => buckets.push((bound, count)),
            }
        }
        if buckets.is_empty() {
            return Ok(None);
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        ensure!(buckets.last().is_some_and(|(b, _)| b.is_infinite()), "{name} has no +Inf bucket");
        Ok(Some(Self { buckets }))
    }

    /// Observations in it.
    fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, c)| *c)
    }

    /// `self − earlier`, bucket by bucket (same bounds; a bucket absent earlier counts 0).
    fn minus(&self, earlier: &Self) -> Option<Self> {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (bound, count) in &self.buckets {
            let before = earlier.buckets.iter().find(|(b, _)| b == bound).map_or(0, |(_, c)| *c);
            buckets.push((*bound, count.checked_sub(before)?));
        }
        Some(Self { buckets })
    }

    /// The `q` quantile: the upper bound of the bucket holding it, and an estimate within that
    /// bucket (linear, as Prometheus' `histogram_quantile`); seconds. `None` when empty.
    fn quantile(&self, q: f64) -> Option<(f64, f64)> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank && cumulative > 0 {
                if bound.is_infinite() {
                    return Some((bound, lower.0));
                }
                let within = cumulative.saturating_sub(lower.1).max(1) as f64;
                let estimate = lower.0 + (bound - lower.0) * ((rank - lower.1 as f64) / within).clamp(0.0, 1.0);
                return Some((bound, estimate));
            }
            lower = (bound, cumulative);
        }
        None
    }
}

/// The resolution histogram as `/metrics` of the "on" facade renders it now (loopback: open).
async fn scrape_resolution(on: &str) -> anyhow::Result<Histogram> {
    let (code, body) = Http::with_key(on, None).request("GET", "/metrics", None).await?;
    ensure!(code == 200, "GET /metrics: HTTP {code}: {}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    Ok(Histogram::parse(&text, RESOLUTION_METRIC)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn print_report(args: &HttpArgs, f: &Figures) {
    let on = f.side(Side::On);
    let off = f.side(Side::Off);
    let ops = |runs: &[WrkRun]| runs.iter().map(|r| r.ops_s).collect::<Vec<_>>();
    let p99s = |runs: &[WrkRun]| runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>();
    let cpus = |runs: &[WrkRun]| runs.iter().map(WrkRun::cpu_us_per_request).filter(|c| c.is_finite()).collect::<Vec<_>>();
    let (on_ops, off_ops) = (ops(&on), ops(&off));
    let (on_med, off_med) = (median(on_ops.clone()), median(off_ops.clone()));
    let errors: u64 = f.runs.iter().chain(&f.paced).map(|(_, r)| r.errors()).sum();
    let paced_on = f.paced(Side::On);
    let paced_off = f.paced(Side::Off);

    println!();
    println!(
        "HTTP facade of `vcos up` (in-process node: one-voter Raft canon, fsync on), POST /v1/tenants/{TENANT}/imvus/{{id}}/messages \
         {{\"op\":\"add\",\"n\":1}} round robin over {} counter IMVUs (a durable canon write each); wrk -t{} -c{}, {} runs x {} s per side, alternating",
        f.imvus, args.threads, args.connections, args.runs, args.seconds
    );
    println!(
        "security on: `app` key checked (SHA-256, cached record), tenant scope and role, tenant policy and limits (enterprise tier, raised to \
         {LIMIT_REQUESTS_PER_S} req/s, burst {LIMIT_BURST}, {LIMIT_CONCURRENT} at once: checked on every request, refusing none), metering, audit (messages counted per key, target and outcome per second); \
         off: none of these (the same routes and handlers; the same bytes sent)"
    );
    let rows = vec![
        Row { metric: "messages/s, as fast as answered", unit: "msg/s", ours: on_med.unwrap_or(0.0), peer: off_med, target: Some((1.0 - COST_MAX, true)) },
        Row { metric: "p99 at that load (median of runs)", unit: "ms", ours: median(p99s(&on)).unwrap_or(0.0), peer: median(p99s(&off)), target: None },
        Row { metric: "node CPU per message (median)", unit: "µs", ours: median(cpus(&on)).unwrap_or(0.0), peer: median(cpus(&off)), target: None },
        Row { metric: "paced run: achieved rate", unit: "req/s", ours: paced_on.map_or(0.0, |r| r.ops_s), peer: paced_off.map(|r| r.ops_s), target: None },
        Row { metric: "paced run: p50", unit: "ms", ours: paced_on.map_or(0.0, |r| r.p50_ms), peer: paced_off.map(|r| r.p50_ms), target: None },
        Row { metric: "paced run: p99", unit: "ms", ours: paced_on.map_or(0.0, |r| r.p99_ms), peer: paced_off.map(|r| r.p99_ms), target: None },
        Row { metric: "paced run: max", unit: "ms", ours: paced_on.map_or(0.0, |r| r.max_ms), peer: paced_off.map(|r| r.max_ms), target: None },
    ];
    println!("(v-COS = security on, peer = security off, same node, same run)");
    print_table(&rows);
    println!();

    let (on_lo, on_hi) = range(&on_ops);
    let (off_lo, off_hi) = range(&off_ops);
    if let (Some(on_med), Some(off_med)) = (on_med, off_med) {
        println!(
            "throughput, median [min–max] of {} runs: security on {:.0} msg/s [{:.0}–{:.0}], off {:.0} msg/s [{:.0}–{:.0}]",
            on.len(),
            on_med,
            on_lo,
            on_hi,
            off_med,
            off_lo,
            off_hi
        );
        // Each round ran both sides back to back: the ratio within a round cancels slow drift.
        let rounds: Vec<f64> = f
            .runs
            .chunks(2)
            .filter_map(|pair| match pair {
                [(a, ra), (_, rb)] => {
                    let (on, off) = if *a == Side::On { (ra, rb) } else { (rb, ra) };
                    (off.ops_s > 0.0).then(|| on.ops_s / off.ops_s)
                }
                _ => None,
            })
            .collect();
        let (r_lo, r_hi) = range(&rounds);
        let cost = 1.0 - on_med / off_med;
        println!(
            "  per round, on/off: median {:.3} [{:.3}–{:.3}]{}",
            median(rounds).unwrap_or(f64::NAN),
            r_lo,
            r_hi,
            if on_lo <= off_hi && off_lo <= on_hi { "; the two ranges overlap: the difference is within run-to-run noise" } else { "" }
        );
        if let (Some(on_cpu), Some(off_cpu)) = (median(cpus(&on)), median(cpus(&off))) {
            // Other processes on the machine take throughput, not (much) CPU per message: the
            // steadier figure when the machine is shared.
            println!(
                "  node CPU per message, medians: security on {on_cpu:.1} µs, off {off_cpu:.1} µs: security adds {:.1} µs ({:.1} % of the on side's)",
                on_cpu - off_cpu,
                (1.0 - off_cpu / on_cpu) * 100.0
            );
        }
        println!(
            "cost of security = 1 − on/off (medians) = {:.1} %  (target ≤ {:.0} %{}): {}",
            cost * 100.0,
            COST_MAX * 100.0,
            if errors > 0 { "; runs with errors count as missed" } else { "" },
            verdict(cost <= COST_MAX && errors == 0)
        );
    }
    match paced_on {
        Some(r) => {
            let reached = r.ops_s >= f64::from(args.rate) * RATE_REACHED_MIN;
            println!(
                "HTTP latency at {} req/s on loopback, security on (wrk -t{} -c{}, {} s, paced; achieved {:.0} req/s{}): p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms  (target p99 < {PACED_P99_MAX_MS} ms): {}",
                args.rate,
                args.threads,
                args.rate_connections,
                args.rate_seconds,
                r.ops_s,
                if reached { "" } else { ", below the rate: missed" },
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                verdict(reached && r.p99_ms < PACED_P99_MAX_MS && r.errors() == 0)
            );
        }
        None => println!("HTTP latency at a fixed rate: skipped (--rate-seconds 0)"),
    }
    println!(
        "tenant context resolution, on the request path: the middleware's histogram `{RESOLUTION_METRIC}` (source check, key, tenant scope \
         and role, tenant policy, rate-limit admission; buckets 1 µs apart to 6 µs, then 8, 10, 15, 20 µs…), \
         target p99 < {RESOLUTION_P99_MAX_US:.0} µs (the mission: < {:.0} ms):",
        RESOLUTION_MISSION_MAX_US / 1e3
    );
    for (what, h) in [("during the \"on\" throughput runs (as fast as answered)", &f.resolution_max_load), ("during the \"on\" paced run", &f.resolution_paced)] {
        match (h.quantile(0.50), h.quantile(0.99)) {
            (Some((_, p50)), Some((p99_bound, p99))) => {
                let bound = if p99_bound.is_infinite() { "over the largest bucket".to_owned() } else { format!("≤ {:.0} µs", p99_bound * 1e6) };
                println!(
                    "  {what}, {} requests: p50 ≈ {:.1} µs, p99 {bound} (≈ {:.1} µs within its bucket): {}; mission: {}",
                    h.count(),
                    p50 * 1e6,
                    p99 * 1e6,
                    verdict(p99_bound * 1e6 <= RESOLUTION_P99_MAX_US),
                    verdict(p99_bound * 1e6 <= RESOLUTION_MISSION_MAX_US)
                );
            }
            _ => println!("  {what}: no observation"),
        }
    }
    let idle = &f.resolution_idle_us;
    let pct = |q: f64| idle.get(((idle.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    println!(
        "  the same lookups in a loop on the idle node (key registry, tenant entry and policy; {} calls, one thread): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs",
        idle.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        idle.last().copied().unwrap_or(f64::NAN)
    );
    if errors > 0 {
        println!("note: {errors} requests failed (non-2xx, socket errors, timeouts); see the per-run lines above");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let r = parse_run(
            "RESULT ops_s=9987.5 p50_ms=0.811 p90_ms=1.2 p99_ms=2.5 p999_ms=4.1 max_ms=9.9 reqs=99875 status_errors=0 socket_errors=1 timeouts=2 secs=10.0",
        )
        .expect("parses");
        assert_eq!(r.ops_s, 9987.5);
        assert_eq!(r.reqs, 99_875);
        assert_eq!(r.errors(), 3);
        assert!(parse_run("RESULT ops_s=1").is_err());
        assert!(parse_run("RESULT ops_s=x p50_ms=1 p90_ms=1 p99_ms=1 p999_ms=1 max_ms=1 reqs=1 status_errors=0 socket_errors=0 timeouts=0").is_err());
    }

    #[test]
    fn reads_a_histogram_and_its_quantiles() {
        let text = "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{le=\"0.000001\"} 0\nx_seconds_bucket{le=\"0.000002\"} 50\n\
            x_seconds_bucket{le=\"0.000005\"} 98\nx_seconds_bucket{le=\"0.00001\"} 100\n\
            x_seconds_bucket{le=\"+Inf\"} 100\nx_seconds_sum 0.0002\nx_seconds_count 100\nother_bucket{le=\"1\"} 7\n";
        let h = Histogram::parse(text, "x_seconds").expect("parses").expect("present");
        assert_eq!(h.count(), 100);
        let (bound, estimate) = h.quantile(0.99).expect("p99");
        assert_eq!(bound, 0.00001);
        assert!((estimate - 0.0000075).abs() < 1e-9, "{estimate}");
        let (bound, estimate) = h.quantile(0.5).expect("p50");
        assert_eq!(bound, 0.000002);
        assert!((estimate - 0.000002).abs() < 1e-9, "{estimate}");
        let earlier = Histogram { buckets: vec![(0.000002, 50), (0.000005, 50), (0.00001, 50), (f64::INFINITY, 50)] };
        let d = h.minus(&earlier).expect("grew");
        assert_eq!(d.count(), 50);
        assert_eq!(d.quantile(0.5).expect("p50").0, 0.000005);
        assert!(earlier.minus(&h).is_none());
        assert!(Histogram::parse("nothing here\n", "x_seconds").expect("parses").is_none());
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(range(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }
}

//! `vcos bench passivated`: many passivated IMVUs on a region of three voters on loopback, as
//! `vcos up` runs them: each process's resident memory as they accumulate, the disk they take,
//! and the activation of a passivated IMVU whose records are not cached.
//!
//! One run:
//! - starts three `vcos up` processes (this binary) forming region `bench-a` (node 1 first,
//!   nodes 2 and 3 join and become voters), each passivating an IMVU after `--passivate-after-s`
//!   idle seconds by its own timer, as `vcos up --passivate-after` does;
//! - creates a tenant without IMVU or rate quotas, then `--imvus` `bench-echo` IMVUs through
//!   `POST /v1/tenants/bench/imvus`, `--connections` in flight spread over the three nodes (each
//!   node forwards a creation to the owner of the IMVU's bucket; `unavailable` and `queue_full`
//!   are retried, as a client would);
//! - samples every node's resident set (`/proc/PID/status`) as the count grows; the slope of
//!   each by least squares over the second half is the bytes each passivated IMVU costs it;
//! - once every node reports no resident IMVU of the bench left, sends `{op: get}` to a sample of
//!   the IMVUs spread over the whole run, each on its owner node: the first answer activates the
//!   IMVU from canon (its records long out of the page cache for all but the last few), the
//!   second answers from memory; both are timed through HTTP.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use serde::Deserialize;

use super::canon::{free_ports, Cluster, Http, REGION_A};

/// The tenant the bench creates its IMVUs under.
const TENANT: &str = "bench";
/// How often each node's memory is sampled during creation.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Retries of one creation answered `unavailable` or `queue_full` before the run fails.
const CREATE_RETRIES_MAX: u32 = 1_000;
/// The run stops (with what it measured so far) when the disk has less than this free.
const DISK_FREE_MIN: u64 = 4 << 30;
/// The nodes are quiet when together they use less CPU than this per second (clock ticks of
/// 10 ms: a tenth of a core), or than half as much again as the idle region used before the
/// load, if that is more (an idle region renews its bucket leases through the canon: one Raft
/// write per node every 150 ms, which took 12.5 % of a core on a slow evening)…
const QUIET_TICKS_PER_S: u64 = 10;
/// How long the idle region's CPU is measured before the load.
const IDLE_SAMPLE: Duration = Duration::from_secs(5);
/// …for this many seconds in a row…
const QUIET_SECONDS: u32 = 3;
/// …waited for at most this long.
const QUIET_WAIT_MAX: Duration = Duration::from_secs(300);
/// How long to wait for the nodes to passivate what the run created.
const PASSIVATION_WAIT_MAX: Duration = Duration::from_secs(120);

/// Options of `vcos bench passivated`.
#[derive(Args, Debug)]
pub(crate) struct PassivatedArgs {
    /// IMVUs to create. Each node's data directory takes about 1.9 KB per IMVU (10 M: about
    /// 18.5 GB per node, 55 GB for the three); creation stops when under 4 GiB stay free.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    imvus: u64,
    /// Creations in flight, each on its own connection, spread over the three nodes.
    #[arg(long, default_value_t = 192, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Passivated IMVUs whose activation is timed (spread evenly over the run).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    activations: u64,
    /// Page cache of each node's canon group file, MiB (`vcos up --canon-cache-mb`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    canon_cache_mb: u64,
    /// Seconds without a message after which a node passivates an IMVU (`vcos up
    /// --passivate-after`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    passivate_after_s: u64,
    /// Keep the nodes' data directories and logs (their path is printed).
    #[arg(long)]
    keep_dirs: bool,
    /// Seconds to wait for the region to form.
    #[arg(long, default_value_t = 60)]
    ready_timeout_s: u64,
}

pub(crate) fn run(args: PassivatedArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build of vcos: its figures are not comparable (use --release)");
    }
    super::run_driver(bench(&args))
}

/// One node's memory at one point of the run.
#[derive(Clone, Copy, Default)]
struct NodeMemory {
    rss: u64,
    peak: u64,
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn node_memory(pid: u32) -> Option<NodeMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(NodeMemory { rss: field("VmRSS:")?, peak: field("VmHWM:")? })
}

/// Bytes free on the file system holding `path` (`df`), `None` if it cannot be told.
fn disk_free(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What `POST /v1/tenants/{t}/imvus` answers (the fields the bench reads).
#[derive(Deserialize)]
struct Created {
    key: CreatedKey,
    #[serde(default)]
    placement: Option<Placement>,
}

#[derive(Deserialize)]
struct CreatedKey {
    id: u64,
}

#[derive(Deserialize)]
struct Placement {
    #[serde(default)]
    owner_node: Option<u64>,
}

/// Shared by the creators and the sampler.
struct Progress {
    next: AtomicU64,
    created: AtomicU64,
    retried: AtomicU64,
    stop: AtomicBool,
    /// Every `keep_every`-th IMVU: its id and owner node.
    sampled: Mutex<Vec<(u64, u64)>>,
}

async fn bench(args: &PassivatedArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("vcos-bench-passivated-").tempdir().context("temporary directory")?;
    let extra_args = vec![
        "--bench-kinds".to_owned(),
        "--passivate-after".to_owned(),
        args.passivate_after_s.to_string(),
        "--canon-cache-mb".to_owned(),
        args.canon_cache_mb.to_string(),
    ];
    let mut cluster = Cluster { dir: Some(dir), keep: args.keep_dirs, nodes: Vec::new(), extra_args, key_file: None };
    let ports = free_ports(6)?;
    let (http, raft) = ports.split_at(3);
    let ready_timeout = Duration::from_secs(args.ready_timeout_s);
    let root = cluster.root()?.to_path_buf();
    eprintln!("v-COS: starting region {REGION_A} (3 nodes) in {}", root.display());
    cluster.start(1, REGION_A, (http[0], raft[0]), None, ready_timeout).await?;
    let node1 = cluster.http_of(1)?;
    cluster.start(2, REGION_A, (http[1], raft[1]), Some(&node1), ready_timeout).await?;
    cluster.start(3, REGION_A, (http[2], raft[2]), Some(&node1), ready_timeout).await?;
    cluster.wait_for("3 voters in region bench-a", ready_timeout, |g| g.voters() >= 3 && g.leader_http.is_some()).await?;
    // Every node must serve its share of the buckets before the load starts.
    wait_for_buckets(&mut cluster, ready_timeout).await?;
    eprintln!("v-COS: {REGION_A} has 3 voters, each owning buckets");

    let mut admin = Http::new(&node1);
    let tenant = serde_json::json!({
        "name": TENANT,
        "policy": {
            "max_imvus": u64::MAX,
            "requests_per_s": u32::MAX,
            "burst": u32::MAX,
            "concurrent_requests": u32::MAX,
            "messages_per_day": u64::MAX,
            "canon_bytes_stored": u64::MAX,
        }
    });
    let (code, body) = admin.request("POST", "/v1/tenants", Some(&tenant.to_string())).await?;
    ensure!(code == 201, "POST /v1/tenants: HTTP {code}: {}", String::from_utf8_lossy(&body));

    let nodes: Vec<(u64, String, u32)> =
        cluster.nodes.iter().map(|n| (u64::from(n.id), n.http.clone(), n.child.id())).collect();
    let idle_ticks_per_s = idle_ticks_per_s(&nodes).await;
    let quiet_ticks_per_s = QUIET_TICKS_PER_S.max(idle_ticks_per_s * 3 / 2);
    eprintln!("v-COS: the idle region uses {idle_ticks_per_s} CPU ticks/s (10 ms each); quiet after the load is under {quiet_ticks_per_s}");
    let keep_every = (args.imvus / args.activations).max(1);
    let progress = Arc::new(Progress {
        next: AtomicU64::new(0),
        created: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        sampled: Mutex::new(Vec::new()),
    });

    // The creators.
    let started = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..args.connections {
        let (_, addr, _) = &nodes[c as usize % nodes.len()];
        let http = Http::new(addr);
        creators.spawn(create_loop(http, args.imvus, keep_every, progress.clone()));
    }

    // The sampler: memory of every node as the count grows; stops the run if the disk fills.
    let mut samples: Vec<(u64, Vec<NodeMemory>)> = Vec::new();
    let mut last_progress = Instant::now();
    let mut failure = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            biased;
            done = creators.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => { failure.get_or_insert(e); progress.stop.store(true, Ordering::SeqCst); continue }
                Some(Err(e)) => { failure.get_or_insert(anyhow::anyhow!("a creator task failed: {e}")); progress.stop.store(true, Ordering::SeqCst); continue }
            },
            _ = tick.tick() => {}
        }
        cluster.check_alive()?;
        let created = progress.created.load(Ordering::SeqCst);
        let memory: Vec<NodeMemory> = nodes.iter().map(|(_, _, pid)| node_memory(*pid).unwrap_or_default()).collect();
        samples.push((created, memory.clone()));
        let free = disk_free(&root);
        if free.is_some_and(|f| f < DISK_FREE_MIN) && !progress.stop.swap(true, Ordering::SeqCst) {
            eprintln!("v-COS: stopping creation at {created}: under {} GiB free on the disk", DISK_FREE_MIN >> 30);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let rss: Vec<String> = memory.iter().map(|m| format!("{:.0}", m.rss as f64 / 1e6)).collect();
            eprintln!(
                "v-COS: {created} created ({:.1} k/s), RSS {} MB, {:.1} GB free, load {}",
                created as f64 / started.elapsed().as_secs_f64() / 1e3,
                rss.join(" / "),
                free.unwrap_or(0) as f64 / 1e9,
                super::local::load_average(),
            );
        }
    }
    let creation_s = started.elapsed().as_secs_f64();
    let created = progress.created.load(Ordering::SeqCst);
    if let Some(e) = failure {
        if created == 0 {
            return Err(e);
        }
        eprintln!("v-COS: creation stopped at {created}: {e:#}");
    }

    // Wait for the nodes' timers to passivate everything (the tenant's IMVUs are the only
    // ones: the gauge of every node reaches zero).
    let mut clients: Vec<(u64, Http)> = nodes.iter().map(|(id, addr, _)| (*id, Http::new(addr))).collect();
    let waited = Instant::now();
    let resident = loop {
        let mut total = 0;
        for (_, http) in &mut clients {
            total += resident_imvus(http).await?;
        }
        if total == 0 || waited.elapsed() > PASSIVATION_WAIT_MAX {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Then for the nodes to go quiet: the log's purges, the state's fsyncs and the passivation
    // sweeps that follow the load would otherwise be timed with the activations.
    let quiet_after_s = wait_until_quiet(&nodes, quiet_ticks_per_s).await;
    let after: Vec<NodeMemory> = nodes.iter().map(|(_, _, pid)| node_memory(*pid).unwrap_or_default()).collect();
    let disk: Vec<u64> = nodes.iter().map(|(id, _, _)| dir_bytes(&root.join(format!("node{id}")))).collect();

    // Activations, each on the IMVU's owner node: first from canon, then from memory.
    let sampled = std::mem::take(&mut *progress.sampled.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let (mut cold, mut warm) = (Vec::with_capacity(sampled.len()), Vec::with_capacity(sampled.len()));
    let body = r#"{"message":{"op":"get"}}"#;
    for (id, owner) in &sampled {
        let Some((_, http)) = clients.iter_mut().find(|(n, _)| n == owner) else { continue };
        let path = format!("/v1/tenants/{TENANT}/imvus/{id}/messages");
        for latencies in [&mut cold, &mut warm] {
            let t = Instant::now();
            let (code, reply) = http.request("POST", &path, Some(body)).await?;
            let us = t.elapsed().as_secs_f64() * 1e6;
            ensure!(code == 200, "POST {path} on node {owner}: HTTP {code}: {}", String::from_utf8_lossy(&reply));
            latencies.push(us);
        }
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    let mut meters = Vec::with_capacity(clients.len());
    for (_, http) in &mut clients {
        meters.push(storage_meter(http).await?);
    }

    let report = Report {
        args,
        created,
        creation_s,
        retried: progress.retried.load(Ordering::SeqCst),
        samples,
        after,
        disk,
        resident,
        quiet_after_s,
        idle_ticks_per_s,
        quiet_ticks_per_s,
        cold,
        warm,
        meters,
    };
    report.print(&nodes);
    if created < args.imvus {
        bail!("created {created} of the {} IMVUs asked for", args.imvus);
    }
    Ok(())
}

/// Creates IMVUs until `n` were claimed by all creators together.
async fn create_loop(mut http: Http, n: u64, keep_every: u64, progress: Arc<Progress>) -> anyhow::Result<()> {
    let path = format!("/v1/tenants/{TENANT}/imvus");
    let body = r#"{"kind":"bench-echo"}"#;
    loop {
        if progress.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let i = progress.next.fetch_add(1, Ordering::SeqCst);
        if i >= n {
            return Ok(());
        }
        let mut tries = 0;
        let created: Created = loop {
            let (code, reply) = http.request("POST", &path, Some(body)).await?;
            match code {
                201 => break serde_json::from_slice(&reply).with_context(|| format!("POST {path}: unexpected JSON: {}", String::from_utf8_lossy(&reply)))?,
                // A bucket changing hands, a lease renewal behind the load, a full queue: the
                // same request may succeed in a moment. Nothing was created.
                429 | 503 if tries < CREATE_RETRIES_MAX => {
                    tries += 1;
                    progress.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => bail!("POST {path}: HTTP {code}: {}", String::from_utf8_lossy(&reply)),
            }
        };
        progress.created.fetch_add(1, Ordering::SeqCst);
        if i.is_multiple_of(keep_every) {
            let owner = created.placement.and_then(|p| p.owner_node).context("a created IMVU without `placement.owner_node`")?;
            progress.sampled.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((created.key.id, owner));
        }
    }
}

/// CPU time the process has used, in clock ticks (`utime + stime` of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The CPU the nodes together use per second while idle (clock ticks over [`IDLE_SAMPLE`]).
async fn idle_ticks_per_s(nodes: &[(u64, String, u32)]) -> u64 {
    let total = || nodes.iter().filter_map(|(_, _, pid)| cpu_ticks(*pid)).sum::<u64>();
    let before = total();
    tokio::time::sleep(IDLE_SAMPLE).await;
    total().saturating_sub(before) / IDLE_SAMPLE.as_secs().max(1)
}

/// Waits until the nodes together use under `quiet_ticks_per_s` of CPU for [`QUIET_SECONDS`]
/// seconds in a row; the seconds it took, `None` if they did not within [`QUIET_WAIT_MAX`].
async fn wait_until_quiet(nodes: &[(u64, String, u32)], quiet_ticks_per_s: u64) -> Option<f64> {
    let total = || nodes.iter().filter_map(|(_, _, pid)| cpu_ticks(*pid)).sum::<u64>();
    let started = Instant::now();
    let (mut last, mut quiet) = (total(), 0);
    while started.elapsed() < QUIET_WAIT_MAX {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total();
        quiet = if now.saturating_sub(last) < quiet_ticks_per_s { quiet + 1 } else { 0 };
        last = now;
        if quiet >= QUIET_SECONDS {
            return Some(started.elapsed().as_secs_f64());
        }
    }
    None
}

/// Waits until each of the three nodes owns buckets (`GET /v1/cluster`).
async fn wait_for_buckets(cluster: &mut Cluster, timeout: Duration) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct ClusterView {
        members: Vec<MemberView>,
    }
    #[derive(Deserialize)]
    struct MemberView {
        #[serde(default)]
        buckets_owned: usize,
    }
    let mut http = Http::new(&cluster.http_of(1)?);
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http.get_json::<ClusterView>("/v1/cluster").await {
            Ok(view) if view.members.len() >= 3 && view.members.iter().all(|m| m.buckets_owned > 0) => return Ok(()),
            Ok(view) => format!("buckets per member: {:?}", view.members.iter().map(|m| m.buckets_owned).collect::<Vec<_>>()),
            Err(e) => format!("{e:#}"),
        };
        cluster.check_alive()?;
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for every node to own buckets: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's `vcos_imvus_resident` gauge, summed over its labels.
async fn resident_imvus(http: &mut Http) -> anyhow::Result<u64> {
    let (code, body) = http.request("GET", "/metrics", None).await?;
    ensure!(code == 200, "GET /metrics: HTTP {code}");
    Ok(gauge_sum(&String::from_utf8_lossy(&body), "vcos_imvus_resident") as u64)
}

/// What the node's tenant storage meter did: its measurements, the seconds they took in all,
/// and the bench tenant's stored bytes as last measured (`GET …/usage`).
#[derive(Debug, Clone, Copy, Default)]
struct StorageMeter {
    measurements: u64,
    seconds: f64,
    stored_bytes: Option<u64>,
}

async fn storage_meter(http: &mut Http) -> anyhow::Result<StorageMeter> {
    let (code, body) = http.request("GET", "/metrics", None).await?;
    ensure!(code == 200, "GET /metrics: HTTP {code}");
    let text = String::from_utf8_lossy(&body);
    let path = format!("/v1/tenants/{TENANT}/usage");
    let (code, usage) = http.request("GET", &path, None).await?;
    ensure!(code == 200, "GET {path}: HTTP {code}: {}", String::from_utf8_lossy(&usage));
    let usage: serde_json::Value = serde_json::from_slice(&usage).with_context(|| format!("GET {path}: not JSON"))?;
    Ok(StorageMeter {
        measurements: gauge_sum(&text, "vcos_tenant_storage_measure_seconds_count") as u64,
        seconds: gauge_sum(&text, "vcos_tenant_storage_measure_seconds_sum"),
        stored_bytes: usage.pointer("/quotas/stored_bytes").and_then(serde_json::Value::as_u64),
    })
}

/// The sum of a Prometheus gauge's samples over all its label sets.
fn gauge_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Report<'a> {
    args: &'a PassivatedArgs,
    created: u64,
    creation_s: f64,
    retried: u64,
    samples: Vec<(u64, Vec<NodeMemory>)>,
    after: Vec<NodeMemory>,
    disk: Vec<u64>,
    resident: u64,
    /// Seconds the nodes took to go quiet after the load; `None`: they did not within
    /// [`QUIET_WAIT_MAX`].
    quiet_after_s: Option<f64>,
    /// CPU ticks per second the three nodes used together while idle, before the load, and the
    /// threshold of quiet after it.
    idle_ticks_per_s: u64,
    quiet_ticks_per_s: u64,
    cold: Vec<f64>,
    warm: Vec<f64>,
    /// Each node's tenant storage meter, at the end.
    meters: Vec<StorageMeter>,
}

impl Report<'_> {
    fn print(&self, nodes: &[(u64, String, u32)]) {
        let mb = |b: u64| b as f64 / 1e6;
        let pct = |v: &[f64], p: f64| super::local::percentile(v, p).map_or("-".to_owned(), |x| format!("{x:.0}"));
        println!(
            "\npassivated IMVUs on region {REGION_A}: 3 voters on loopback, each a `vcos up` process (--passivate-after {} s, --canon-cache-mb {}); {} IMVUs created through HTTP in {:.0} s ({:.1} k/s, {} connections; {} retries of `unavailable`/`queue_full`); load average {}",
            self.args.passivate_after_s,
            self.args.canon_cache_mb,
            self.created,
            self.creation_s,
            self.created as f64 / self.creation_s / 1e3,
            self.args.connections,
            self.retried,
            super::local::load_average(),
        );
        println!("\n| node | peak RSS (VmHWM) | RSS at the end | RSS slope, second half (R²) | data directory |");
        println!("|---|---|---|---|---|");
        for (i, (id, _, _)) in nodes.iter().enumerate() {
            let second_half: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter(|(n, _)| *n >= self.created / 2)
                .filter_map(|(n, m)| m.get(i).map(|m| (*n as f64, m.rss as f64)))
                .collect();
            let slope = super::local::least_squares(&second_half)
                .map_or("-".to_owned(), |(s, r2)| format!("{s:.1} B per IMVU ({r2:.2})"));
            let end = self.after.get(i).copied().unwrap_or_default();
            let peak = end.peak.max(self.samples.iter().filter_map(|(_, m)| m.get(i)).map(|m| m.peak).max().unwrap_or(0));
            let verdict = if peak < 1 << 30 { "(< 1 GiB: met)" } else { "(< 1 GiB: missed)" };
            println!(
                "| {id} | {:.0} MB {verdict} | {:.0} MB | {slope} | {:.2} GB |",
                mb(peak),
                mb(end.rss),
                self.disk.get(i).copied().unwrap_or(0) as f64 / 1e9
            );
        }
        println!("\nthe tenant storage meter of each node (`vcos_tenant_storage_measure_seconds`; the bench tenant's stored bytes from `GET /v1/tenants/{TENANT}/usage`):");
        for ((id, _, _), meter) in nodes.iter().zip(&self.meters) {
            let stored = meter.stored_bytes.map_or("not measured yet".to_owned(), |b| format!("{:.2} GB, {:.0} B per IMVU", b as f64 / 1e9, b as f64 / self.created.max(1) as f64));
            println!(
                "- node {id}: {} measurements, {:.3} s in all ({:.2} ms each); stored: {stored}",
                meter.measurements,
                meter.seconds,
                meter.seconds * 1e3 / meter.measurements.max(1) as f64
            );
        }
        println!("\nresident IMVUs left when activations began: {} (every node's `vcos_imvus_resident`)", self.resident);
        let threshold = format!(
            "under {} CPU ticks/s together for {QUIET_SECONDS} s; idle before the load: {} ticks/s",
            self.quiet_ticks_per_s, self.idle_ticks_per_s
        );
        match self.quiet_after_s {
            Some(s) => println!("the nodes went quiet ({threshold}) {s:.0} s after the passivations"),
            None => println!("the nodes were still busy ({threshold}) {} s after the passivations: the activations ran beside that work", QUIET_WAIT_MAX.as_secs()),
        }
        let p99_met = super::local::percentile(&self.cold, 0.99).is_some_and(|p| p < 1_000.0);
        println!(
            "activation of a passivated IMVU through HTTP on its owner, {} samples: p50 {} µs, p99 {} µs {}",
            self.cold.len(),
            pct(&self.cold, 0.5),
            pct(&self.cold, 0.99),
            if p99_met { "(p99 < 1 ms: met)" } else { "(p99 < 1 ms: missed)" }
        );
        println!(
            "the same IMVUs again, resident (the HTTP round trip alone): p50 {} µs, p99 {} µs",
            pct(&self.warm, 0.5),
            pct(&self.warm, 0.99)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_gauge_over_its_labels_and_nothing_else() {
        let text = "# HELP vcos_imvus_resident IMVUs in memory\n# TYPE vcos_imvus_resident gauge\n\
                    vcos_imvus_resident{kind=\"bench-echo\"} 12\nvcos_imvus_resident{kind=\"counter\"} 3\n\
                    vcos_imvus_resident_peak 99\nvcos_messages_total 7\n";
        assert_eq!(gauge_sum(text, "vcos_imvus_resident"), 15.0);
        assert_eq!(gauge_sum("vcos_imvus_resident 4\n", "vcos_imvus_resident"), 4.0);
        assert_eq!(gauge_sum("", "vcos_imvus_resident"), 0.0);
    }

    #[test]
    fn reads_cpu_ticks() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(cpu_ticks(u32::MAX).is_none());
    }

    #[test]
    fn reads_a_process_status() {
        let me = node_memory(std::process::id()).expect("this process's /proc status");
        assert!(me.rss > 0 && me.peak >= me.rss, "rss {} peak {}", me.rss, me.peak);
    }
}

//! `vcos bench local`: the actor runtime on one node against Erlang/OTP, same run, same machine.
//!
//! Three setups, each measured in a fresh child process per run (`vcos bench local --child
//! SETUP`, hidden), so that no setup inherits the memory another freed and every run starts as
//! cold as the Erlang VM the peer script starts each time:
//! - **raft** (the headline): a node started as `vcos up` starts it (`up::start_node`: the
//!   Raft canon of a one-voter group on disk, fsync on, leases, placement, membership), in a
//!   temporary directory;
//! - **redb**: the runtime over the single-process `RedbStore` (durable, group commit);
//! - **memory**: the runtime over `MemoryStore`: creation and restarts without canon
//!   durability, the same work as Erlang's spawn and supervisor restarts.
//!
//! What is measured (Erlang's counterpart in parentheses, see ../shared/peers/erlang_bench.erl):
//! - tell 4→1: four tasks send to one IMVU through its bounded mailbox (4 processes × 1 M → 1);
//! - ask: sequential request/reply round trips to one IMVU (ping-pong, 1 M);
//! - spawn in memory: IMVUs created one after another by one creator on the memory setup (spawn
//!   of idle processes by one spawner);
//! - durable creation: IMVUs created by `--creators` concurrent creators, each acknowledged
//!   once its records are durable in the canon (no peer: Erlang persists nothing); its own
//!   target, ≥ 100 k/s;
//! - bytes per idle IMVU: RSS growth per resident IMVU created durably (memory(processes) / N);
//! - bytes per passivated IMVU (no peer): IMVUs created and passivated by batches; the slope of
//!   RSS over their count by least squares, beside the same slope of the memory mimalloc has
//!   committed (the allocator's own statistics) and the bytes of each IMVU's canon records (key
//!   and value, read back from the store; on disk behind the canon's page cache). Printed as
//!   measured, negative included;
//! - activation: the latency of the message that activates a passivated IMVU;
//! - restarts: crash, supervisor restart, and the restarted IMVU answering a message again,
//!   serially (the crashing child's restart, announced by the restarted child itself); in
//!   memory against Erlang, and durably (each restart is recorded in the canon before the IMVU
//!   is reloaded) without a peer.
//!
//! Every row is the median of `--runs` runs, with their range; the Erlang script runs as many
//! times, between ours.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use vcos_actors::{
    records, ActorError, Caller, Imvu as _, ImvuKey, KindRef, LimitOverrides, MemoryStore, RedbStore, Runtime, RuntimeConfig, SystemClock, TenantId,
    TenantPolicy,
};

use super::kinds::{BenchEcho, EchoMsg};
use super::erlang;

/// Options of `vcos bench local`.
#[derive(Args, Debug, Clone)]
pub(crate) struct LocalArgs {
    /// Small sizes, for a quick check that everything runs (figures not comparable).
    #[arg(long)]
    quick: bool,
    /// Skip the Erlang peer.
    #[arg(long)]
    no_peer: bool,
    /// Messages per sender (tell) and round trips (ask); Erlang's script does 1 M.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// IMVUs spawned in memory by one creator; Erlang's script spawns 1 M.
    #[arg(long, default_value_t = 1_000_000)]
    spawn: u64,
    /// IMVUs created durably (and left resident) per durable setup: the creation rate and the
    /// bytes per idle IMVU.
    #[arg(long, default_value_t = 200_000)]
    durable: u64,
    /// Concurrent creators of the durable creations.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    creators: u64,
    /// IMVUs created and passivated per durable setup (bytes per passivated IMVU, activation).
    #[arg(long, default_value_t = 250_000)]
    passivated: u64,
    /// Serial crash/restart/answer cycles in memory; Erlang's script does 10 k.
    #[arg(long, default_value_t = 10_000)]
    restarts: u64,
    /// Serial crash/restart/answer cycles per durable setup (one canon commit each).
    #[arg(long, default_value_t = 2_000)]
    durable_restarts: u64,
    /// Runs of each setup and of the Erlang script; medians and ranges are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run one part only (for profiling): tell, ask, spawn (in memory and durable creation),
    /// memory (idle and passivated bytes, activation), restarts.
    #[arg(long, value_parser = ["tell", "ask", "spawn", "memory", "restarts"])]
    only: Option<String>,
    /// Setups to run (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    setups: Vec<Setup>,
    /// Internal: measure one setup once in this process and print its figures as one line.
    #[arg(long, value_enum, hide = true)]
    child: Option<Setup>,
}

/// Where the IMVUs' canon lives.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Setup {
    /// `vcos up`'s node: the Raft canon of a one-voter group.
    Raft,
    /// The single-process `RedbStore`.
    Redb,
    /// `MemoryStore`: no canon durability.
    Memory,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Raft, Setup::Redb, Setup::Memory];

    fn name(self) -> &'static str {
        match self {
            Setup::Raft => "raft",
            Setup::Redb => "redb",
            Setup::Memory => "memory",
        }
    }
}

impl LocalArgs {
    /// `vcos bench local --quick` (with the Erlang peer unless `no_peer`): the small sizes that
    /// `vcos bench cluster --local` prints beside its own figures.
    pub(super) fn quick(no_peer: bool) -> Self {
        Self {
            quick: true,
            no_peer,
            messages: 1_000_000,
            spawn: 1_000_000,
            durable: 200_000,
            creators: 512,
            passivated: 250_000,
            restarts: 10_000,
            durable_restarts: 2_000,
            runs: 3,
            workers: None,
            only: None,
            setups: Vec::new(),
            child: None,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == part)
    }

    /// The command line of a child measuring `setup` with these sizes.
    fn child_command(&self, setup: Setup) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["bench".into(), "local".into(), "--child".into(), setup.name().into()];
        let sizes = [
            ("--messages", self.messages),
            ("--spawn", self.spawn),
            ("--durable", self.durable),
            ("--creators", self.creators),
            ("--passivated", self.passivated),
            ("--restarts", self.restarts),
            ("--durable-restarts", self.durable_restarts),
        ];
        for (flag, value) in sizes {
            argv.push(flag.into());
            argv.push(value.to_string().into());
        }
        if let Some(workers) = self.workers {
            argv.push("--workers".into());
            argv.push(workers.to_string().into());
        }
        if let Some(only) = &self.only {
            argv.push("--only".into());
            argv.push(only.into());
        }
        argv
    }
}

/// Canon page cache of the redb setup: small, so that the memory figures are the IMVUs' and
/// not a cache filling up (a node's default is `vcos_actors::store::CACHE_BYTES_DEFAULT`).
const CANON_CACHE_BYTES: usize = 16 << 20;
/// How a child's figures line starts on its standard output.
const FIGURES_LINE: &str = "vcos-bench-local-figures ";
/// IMVUs created and passivated together, between two memory samples.
const PASSIVATION_BATCH: u64 = 10_000;
/// Passivated IMVUs whose activation is timed, at most.
const ACTIVATIONS_MAX: u64 = 10_000;
/// Passivated IMVUs whose canon records are read back and counted, at most.
const RECORD_SAMPLES_MAX: u64 = 1_000;

/// One run of one setup. Absent: not measured in this setup or part.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Figures {
    tell: Option<f64>,
    ask: Option<f64>,
    /// In memory, one creator.
    spawn_rate: Option<f64>,
    /// In memory: what each spawned IMVU adds, its canon records in the memory store included
    /// (RSS, and mimalloc's committed bytes).
    spawn_bytes_rss: Option<f64>,
    spawn_bytes_committed: Option<f64>,
    /// Durable, `--creators` creators.
    create_rate: Option<f64>,
    bytes_idle_rss: Option<f64>,
    bytes_idle_committed: Option<f64>,
    bytes_passivated_rss: Option<f64>,
    /// Coefficient of determination of the RSS fit (1: every sample on the line).
    passivated_rss_r2: Option<f64>,
    bytes_passivated_committed: Option<f64>,
    canon_record_bytes: Option<f64>,
    activation_p50_us: Option<f64>,
    activation_p99_us: Option<f64>,
    restarts: Option<f64>,
}

pub(crate) fn run(mut args: LocalArgs) -> anyhow::Result<()> {
    if let Some(setup) = args.child {
        return run_child(&args, setup);
    }
    if args.quick {
        args.messages = args.messages.min(50_000);
        args.spawn = args.spawn.min(20_000);
        args.durable = args.durable.min(20_000);
        args.passivated = args.passivated.min(20_000);
        args.restarts = args.restarts.min(2_000);
        args.durable_restarts = args.durable_restarts.min(200);
        args.runs = 1;
    }
    let setups: Vec<Setup> = if args.setups.is_empty() { Setup::ALL.to_vec() } else { args.setups.clone() };
    let exe = std::env::current_exe().context("the path of this executable")?;
    let mut peer_runs: Vec<BTreeMap<String, f64>> = Vec::new();
    let mut ours: BTreeMap<&'static str, Vec<Figures>> = BTreeMap::new();
    let mut peer_error = None;
    let mut compilers_seen = 0;
    for run in 1..=args.runs {
        // The peer and our setups take turns within each run: drift of the machine's load
        // weighs on both sides.
        if !args.no_peer && peer_error.is_none() {
            eprintln!("run {run}/{}: the Erlang/OTP peer (about 30 s)…", args.runs);
            match erlang::run() {
                Ok(m) => peer_runs.push(m),
                Err(e) => {
                    eprintln!("peer unavailable: {e:#}");
                    peer_error = Some(format!("{e:#}"));
                }
            }
        }
        for &setup in &setups {
            compilers_seen = compilers_seen.max(compilers_running());
            eprintln!("run {run}/{}: v-COS, {} setup (load average {})…", args.runs, setup.name(), load_average());
            let out = Command::new(&exe)
                .args(args.child_command(setup))
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("run {} bench local --child {}", exe.display(), setup.name()))?;
            anyhow::ensure!(out.status.success(), "the {} setup failed ({})", setup.name(), out.status);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix(FIGURES_LINE))
                .with_context(|| format!("the {} setup printed no figures: {stdout}", setup.name()))?;
            let figures: Figures = serde_json::from_str(line).with_context(|| format!("the {} setup's figures: {line}", setup.name()))?;
            ours.entry(setup.name()).or_default().push(figures);
        }
    }
    print_report(&args, &ours, &peer_runs, compilers_seen);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One setup, one run (the child process)

fn run_child(args: &LocalArgs, setup: Setup) -> anyhow::Result<()> {
    // The subscriber `vcos up` runs, quiet unless asked (`RUST_LOG=warn vcos bench local …`
    // shows what the node logs). Without any subscriber the runtime would run slower than it
    // ships: tokio, built with `tokio_unstable` (for the simulator) and its `tracing` feature
    // (ractor turns it on), opens a trace span per channel and task; with no subscriber set,
    // tracing's `log` fallback builds and logs each of them, about a fifth of an ask's CPU
    // (perf, 2026-11-30); a subscriber's level filter drops them at the callsite.
    crate::up::init_tracing_or("error");
    // The same memory settings as `vcos up`.
    crate::huge_pages::apply()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers.max(1));
    }
    let rt = builder.enable_all().build().context("tokio")?;
    let figures = rt.block_on(async {
        match setup {
            Setup::Raft => measure_raft(args).await,
            Setup::Redb => measure_redb(args).await,
            Setup::Memory => measure_memory(args).await,
        }
    })?;
    println!("{FIGURES_LINE}{}", serde_json::to_string(&figures).context("encode the figures")?);
    Ok(())
}

/// The bench's tenant: restarts far above the default intensity (the bench crashes on purpose),
/// and no daily message, storage or IMVU-count quota (a run sends millions of messages and
/// creates up to tens of millions of IMVUs: a quota would stop it, not measure it).
async fn bench_tenant(runtime: &Runtime) -> anyhow::Result<(TenantId, Caller, KindRef<BenchEcho>)> {
    let tenant = TenantId::new("bench")?;
    let limits = LimitOverrides { messages_per_day: Some(u64::MAX), canon_bytes_stored: Some(u64::MAX), ..LimitOverrides::default() };
    let policy =
        TenantPolicy { max_imvus: u64::MAX, max_restarts: 65_536, restart_period_ms: 100, limits, ..TenantPolicy::default() };
    runtime.put_tenant(tenant, policy).await?;
    let echo = runtime.kind_ref::<BenchEcho>().context("bench-echo kind registered")?;
    Ok((tenant, Caller::internal(&tenant, "bench"), echo))
}

async fn measure_raft(args: &LocalArgs) -> anyhow::Result<Figures> {
    let dir = tempfile::Builder::new().prefix("vcos-bench-local-").tempdir().context("create a temporary directory")?;
    let command: Vec<OsString> = vec![
        "up".into(),
        "--data-dir".into(),
        dir.path().join("node").into_os_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        // The bench passivates when it means to; `vcos up`'s timer would passivate the
        // resident IMVUs whose bytes it is measuring.
        "--passivate-after".into(),
        "0".into(),
        "--bench-kinds".into(),
        "--no-models".into(),
    ];
    let up = crate::up::UpArgs::parse_from(command)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = crate::up::start_node(&up, addr, false).await.context("start the node (as `vcos up` does)")?;
    let result = measure_durable(args, &node.rt).await;
    node.stop().await;
    result
}

async fn measure_redb(args: &LocalArgs) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let store = Arc::new(RedbStore::open_with_cache(&dir.path().join("canon.redb"), CANON_CACHE_BYTES)?);
    let config = RuntimeConfig::new(store.clone(), Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).kind(BenchEcho).start().await?;
    let result = measure_durable(args, &runtime).await;
    runtime.shutdown().await;
    store.close();
    result
}

async fn measure_memory(args: &LocalArgs) -> anyhow::Result<Figures> {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).kind(BenchEcho).start().await?;
    let (tenant, caller, echo) = bench_tenant(&runtime).await?;
    let mut figures = Figures::default();
    if args.wants("spawn") {
        // One creator, one creation after another, on a task of its own: Erlang's script
        // spawns from one process. (Run on `block_on`'s thread, outside the workers, each
        // creation was a cross-thread hand-off both ways: 21 k/s instead of 48 k/s with one
        // worker, 2026-11-30.)
        let (runtime, caller, count) = (runtime.clone(), caller.clone(), args.spawn);
        let before = Memory::now();
        let secs = tokio::spawn(async move {
            let started = Instant::now();
            for _ in 0..count {
                runtime.create_imvu(&tenant, BenchEcho::KIND, &caller).await?;
            }
            Ok::<_, ActorError>(started.elapsed().as_secs_f64())
        })
        .await??;
        let after = Memory::now();
        let n = args.spawn.max(1) as f64;
        figures.spawn_rate = Some(args.spawn as f64 / secs);
        figures.spawn_bytes_rss = Some((after.rss - before.rss) / n);
        figures.spawn_bytes_committed = after.committed.zip(before.committed).map(|(a, b)| (a - b) / n);
    }
    if args.wants("restarts") {
        figures.restarts = Some(restarts(&runtime, &tenant, &caller, &echo, args.restarts).await?);
    }
    runtime.shutdown().await;
    Ok(figures)
}

/// The figures of a durable setup (raft or redb) on its runtime.
async fn measure_durable(args: &LocalArgs, runtime: &Runtime) -> anyhow::Result<Figures> {
    let (tenant, caller, echo) = bench_tenant(runtime).await?;
    let mut figures = Figures::default();

    // Passivated IMVUs first, while nothing else was allocated and freed (freed memory would be
    // reused by later IMVUs and hide their cost).
    let mut sampled = Vec::new();
    if args.wants("memory") {
        sampled = passivated(args, runtime, &tenant, &caller, &mut figures).await?;
    }

    // Resident IMVUs: the durable creation rate and bytes per idle IMVU.
    if args.wants("spawn") || args.wants("memory") {
        let before = Memory::now();
        let started = Instant::now();
        spawn_many(runtime, &tenant, &caller, args.durable, args.creators, u64::MAX).await?;
        let secs = started.elapsed().as_secs_f64();
        let after = Memory::now();
        let n = args.durable.max(1) as f64;
        figures.create_rate = Some(args.durable as f64 / secs);
        if args.wants("memory") {
            figures.bytes_idle_rss = Some((after.rss - before.rss) / n);
            figures.bytes_idle_committed = after.committed.zip(before.committed).map(|(a, b)| (a - b) / n);
        }
    }

    // The activation of passivated IMVUs by their next message.
    if !sampled.is_empty() {
        let mut latencies = Vec::with_capacity(sampled.len());
        for key in &sampled {
            let started = Instant::now();
            echo.ask(key, EchoMsg::Get).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
        latencies.sort_by(f64::total_cmp);
        figures.activation_p50_us = percentile(&latencies, 0.50);
        figures.activation_p99_us = percentile(&latencies, 0.99);
    }

    if args.wants("tell") {
        figures.tell = Some(tell(runtime, &tenant, &caller, &echo, args.messages).await?);
    }
    if args.wants("ask") {
        figures.ask = Some(ask(runtime, &tenant, &caller, &echo, args.messages).await?);
    }
    if args.wants("restarts") {
        figures.restarts = Some(restarts(runtime, &tenant, &caller, &echo, args.durable_restarts).await?);
    }
    Ok(figures)
}

/// Creates `--passivated` IMVUs by batches, passivating each batch, sampling memory after each;
/// fills the passivated figures and returns the IMVUs whose activation is to be timed.
async fn passivated(args: &LocalArgs, runtime: &Runtime, tenant: &TenantId, caller: &Caller, figures: &mut Figures) -> anyhow::Result<Vec<ImvuKey>> {
    let n = args.passivated;
    let keep_every = (n / ACTIVATIONS_MAX).max(1);
    runtime.passivate_idle(0).await;
    let mut samples = vec![(0u64, Memory::now())];
    let mut kept = Vec::new();
    let mut made = 0;
    while made < n {
        let batch = PASSIVATION_BATCH.min(n - made);
        kept.extend(spawn_many(runtime, tenant, caller, batch, args.creators, keep_every).await?);
        runtime.passivate_idle(0).await;
        made += batch;
        samples.push((made, Memory::now()));
    }
    // The second half: by then the canon's caches (page cache, log buffers) have filled and
    // are not charged to the IMVUs. Fewer than three samples there (quick runs): all of them.
    let second_half: Vec<&(u64, Memory)> = samples.iter().filter(|(m, _)| *m >= n / 2).collect();
    let fitted: Vec<&(u64, Memory)> = if second_half.len() >= 3 { second_half } else { samples.iter().collect() };
    let rss: Vec<(f64, f64)> = fitted.iter().map(|(m, mem)| (*m as f64, mem.rss)).collect();
    if let Some((slope, r2)) = least_squares(&rss) {
        figures.bytes_passivated_rss = Some(slope);
        figures.passivated_rss_r2 = Some(r2);
    }
    let committed: Option<Vec<(f64, f64)>> = fitted.iter().map(|(m, mem)| mem.committed.map(|c| (*m as f64, c))).collect();
    figures.bytes_passivated_committed = committed.and_then(|points| least_squares(&points)).map(|(slope, _)| slope);

    // What the canon holds for each: its records, key and value bytes, read back.
    let mut record_bytes = Vec::new();
    for key in kept.iter().step_by((kept.len() as u64 / RECORD_SAMPLES_MAX).max(1) as usize) {
        let records = runtime.store().scan_prefix(&records::imvu_prefix(key), None, 1_000)?;
        record_bytes.push(records.iter().map(|(k, v)| (k.len() + v.len()) as f64).sum::<f64>());
    }
    if !record_bytes.is_empty() {
        figures.canon_record_bytes = Some(record_bytes.iter().sum::<f64>() / record_bytes.len() as f64);
    }
    Ok(kept)
}

async fn tell(runtime: &Runtime, tenant: &TenantId, caller: &Caller, echo: &KindRef<BenchEcho>, n: u64) -> anyhow::Result<f64> {
    let key = runtime.create_imvu(tenant, BenchEcho::KIND, caller).await?.key;
    let started = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let echo = echo.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    echo.tell(&key, EchoMsg::Ping).await?;
                }
                Ok::<_, ActorError>(())
            })
        })
        .collect();
    for s in senders {
        s.await??;
    }
    // Counted by the IMVU: the run ends when the last tell was handled, as Erlang's receiver
    // reports when it received the last message.
    let total = echo.ask(&key, EchoMsg::Get).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(total == 4 * n, "tell lost messages: {total} of {}", 4 * n);
    Ok(total as f64 / secs)
}

async fn ask(runtime: &Runtime, tenant: &TenantId, caller: &Caller, echo: &KindRef<BenchEcho>, n: u64) -> anyhow::Result<f64> {
    let key = runtime.create_imvu(tenant, BenchEcho::KIND, caller).await?.key;
    let echo = echo.clone();
    // On a task of its own, as Erlang's pinger is a process of its own.
    let secs = tokio::spawn(async move {
        let started = Instant::now();
        for _ in 0..n {
            echo.ask(&key, EchoMsg::Ping).await?;
        }
        Ok::<_, ActorError>(started.elapsed().as_secs_f64())
    })
    .await??;
    Ok(n as f64 / secs)
}

/// Serial cycles: crash the IMVU, then ask it again until it answers; a cycle counts once the
/// restarted IMVU answered (not when the caller learns of the crash).
async fn restarts(runtime: &Runtime, tenant: &TenantId, caller: &Caller, echo: &KindRef<BenchEcho>, n: u64) -> anyhow::Result<f64> {
    let key = runtime.create_imvu(tenant, BenchEcho::KIND, caller).await?.key;
    let echo = echo.clone();
    let secs = tokio::spawn(async move {
        let started = Instant::now();
        for _ in 0..n {
            match echo.ask(&key, EchoMsg::Crash).await {
                Err(ActorError::Crashed { .. }) => {}
                other => anyhow::bail!("expected a crash, got {:?}", other.map(|_| ())),
            }
            echo.ask(&key, EchoMsg::Get).await.context("the restarted IMVU answers")?;
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;
    Ok(n as f64 / secs)
}

/// Creates `n` IMVUs with `creators` creations in flight (each acknowledged once durable);
/// returns every `keep_every`-th key (the others are not held: their memory is not the
/// runtime's).
async fn spawn_many(runtime: &Runtime, tenant: &TenantId, caller: &Caller, n: u64, creators: u64, keep_every: u64) -> anyhow::Result<Vec<ImvuKey>> {
    let mut kept = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = creators.clamp(1, n.max(1));
    for w in 0..workers {
        let runtime = runtime.clone();
        let caller = caller.clone();
        let tenant = *tenant;
        let share = n / workers + u64::from(w < n % workers);
        tasks.spawn(async move {
            let mut mine = Vec::new();
            let mut retried = 0u64;
            for i in 0..share {
                let key = loop {
                    // `unavailable` (a bucket lease lapsed while the canon was saturated) says
                    // retry, as any client would; nothing was written. Counted and reported.
                    match runtime.create_imvu(&tenant, BenchEcho::KIND, &caller).await {
                        Err(ActorError::Unavailable(_)) if retried < CREATE_RETRIES_MAX => {
                            retried += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => break other?.key,
                    }
                };
                if i % keep_every == 0 {
                    mine.push(key);
                }
            }
            Ok::<_, ActorError>((mine, retried))
        });
    }
    let mut retried = 0;
    while let Some(done) = tasks.join_next().await {
        let (mine, r) = done??;
        kept.extend(mine);
        retried += r;
    }
    if retried > 0 {
        eprintln!("note: {retried} of {n} creations answered `unavailable` (a bucket lease lapsed under load) and were retried");
    }
    Ok(kept)
}

/// Retries of `unavailable` per creator before the run fails.
const CREATE_RETRIES_MAX: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Memory

/// The process's memory at one moment: resident set (the kernel's count) and what mimalloc, the
/// process allocator, has committed (its own statistics; absent if they cannot be read).
struct Memory {
    rss: f64,
    committed: Option<f64>,
}

impl Memory {
    fn now() -> Self {
        Self { rss: rss_bytes(), committed: mimalloc_committed() }
    }
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    pages * 4096.0
}

/// Bytes mimalloc has committed from the OS now (`process.commit_current` of its statistics:
/// tracked in release builds, unlike its per-allocation counters, which need `MI_STAT`).
fn mimalloc_committed() -> Option<f64> {
    let stats = mimalloc::MiMalloc::stats_json().ok()?;
    let json: serde_json::Value = serde_json::from_slice(stats.to_bytes()).ok()?;
    committed_of(&json)
}

fn committed_of(stats: &serde_json::Value) -> Option<f64> {
    stats.get("process")?.get("commit_current")?.as_f64()
}

/// Slope and coefficient of determination of the least-squares line through `points`; `None`
/// for fewer than two distinct x.
pub(super) fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 { 1.0 } else { (sxy * sxy) / (sxx * syy) };
    Some((slope, r2))
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied()
}

// ---------------------------------------------------------------------------------------------
// The machine's load

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

/// Compilers running now (a build beside the bench takes cores from both sides).
fn compilers_running() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "rustc"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Report

/// Median and range of one metric over the runs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        // The middle value; for an even count, the mean of the two middle ones.
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Self { median, min: values[0], max: values[n - 1], n })
    }

    fn show(&self) -> String {
        if self.n == 1 {
            return format!("{} (1 run)", fmt_num(self.median));
        }
        format!("{} [{}–{}]", fmt_num(self.median), fmt_num(self.min), fmt_num(self.max))
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// How a row is judged.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// ours / peer at least (or, `false`, at most) this.
    Ratio(f64, bool),
    /// ours at least (or, `false`, at most) this.
    Absolute(f64, bool),
}

struct Line {
    what: String,
    setup: &'static str,
    unit: &'static str,
    ours: Option<Stat>,
    peer: Option<Stat>,
    target: Target,
}

impl Line {
    fn verdict(&self) -> (String, String, &'static str) {
        let ratio = self.ours.zip(self.peer).filter(|(_, p)| p.median != 0.0).map(|(o, p)| o.median / p.median);
        let ratio_text = ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"));
        let cmp = |v: f64, t: f64, higher: bool| if (higher && v >= t) || (!higher && v <= t) { "met" } else { "MISSED" };
        match self.target {
            Target::None => (ratio_text, "-".into(), "-"),
            Target::Ratio(t, higher) => {
                let verdict = ratio.map_or("-", |r| cmp(r, t, higher));
                (ratio_text, format!("{}{t:.2}x", if higher { ">=" } else { "<=" }), verdict)
            }
            Target::Absolute(t, higher) => {
                let verdict = self.ours.map_or("-", |o| cmp(o.median, t, higher));
                (ratio_text, format!("{}{}", if higher { ">=" } else { "<" }, fmt_num(t)), verdict)
            }
        }
    }
}

fn print_report(args: &LocalArgs, ours: &BTreeMap<&'static str, Vec<Figures>>, peer_runs: &[BTreeMap<String, f64>], compilers_seen: usize) {
    let peer = |metric: &str| Stat::of(peer_runs.iter().filter_map(|m| m.get(metric).copied()).collect());
    let stat = |setup: Setup, f: fn(&Figures) -> Option<f64>| ours.get(setup.name()).and_then(|runs| Stat::of(runs.iter().filter_map(f).collect()));
    let mut lines = Vec::new();
    for setup in [Setup::Raft, Setup::Redb] {
        if !ours.contains_key(setup.name()) {
            continue;
        }
        let on = setup.name();
        lines.push(Line {
            what: "tell 4 tasks -> 1 IMVU vs Erlang 4 procs -> 1".into(),
            setup: on,
            unit: "msg/s",
            ours: stat(setup, |f| f.tell),
            peer: peer("fanin_throughput"),
            target: Target::Ratio(1.5, true),
        });
        lines.push(Line {
            what: "ask round trips, 1 in flight vs Erlang ping-pong".into(),
            setup: on,
            unit: "rt/s",
            ours: stat(setup, |f| f.ask),
            peer: peer("pingpong_roundtrips"),
            target: Target::Ratio(1.2, true),
        });
        lines.push(Line {
            what: format!("durable creation, {} creators, fsync (no peer)", args.creators),
            setup: on,
            unit: "/s",
            ours: stat(setup, |f| f.create_rate),
            peer: None,
            target: Target::Absolute(100_000.0, true),
        });
        lines.push(Line {
            what: format!("bytes per idle IMVU, RSS / {} resident vs Erlang memory(processes)/1M", args.durable),
            setup: on,
            unit: "B",
            ours: stat(setup, |f| f.bytes_idle_rss),
            peer: peer("mem_per_idle_proc"),
            target: Target::Ratio(0.5, false),
        });
        lines.push(Line {
            what: "  same, mimalloc committed / resident".into(),
            setup: on,
            unit: "B",
            ours: stat(setup, |f| f.bytes_idle_committed),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: format!("bytes per passivated IMVU, RSS slope over {}", args.passivated),
            setup: on,
            unit: "B",
            ours: stat(setup, |f| f.bytes_passivated_rss),
            peer: None,
            target: Target::Absolute(100.0, false),
        });
        lines.push(Line {
            what: "  same, mimalloc committed slope".into(),
            setup: on,
            unit: "B",
            ours: stat(setup, |f| f.bytes_passivated_committed),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: "  R^2 of the RSS fit".into(),
            setup: on,
            unit: "",
            ours: stat(setup, |f| f.passivated_rss_r2),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: "  canon records per IMVU, key + value bytes".into(),
            setup: on,
            unit: "B",
            ours: stat(setup, |f| f.canon_record_bytes),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: "activation of a passivated IMVU, p50".into(),
            setup: on,
            unit: "us",
            ours: stat(setup, |f| f.activation_p50_us),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: "activation of a passivated IMVU, p99".into(),
            setup: on,
            unit: "us",
            ours: stat(setup, |f| f.activation_p99_us),
            peer: None,
            target: Target::Absolute(1_000.0, false),
        });
        lines.push(Line {
            what: "restarts until answered, durable (1 canon commit each) (no peer)".into(),
            setup: on,
            unit: "/s",
            ours: stat(setup, |f| f.restarts),
            peer: None,
            target: Target::None,
        });
    }
    if ours.contains_key(Setup::Memory.name()) {
        lines.push(Line {
            what: "spawn in memory (no durability), 1 creator vs Erlang spawn, 1 spawner".into(),
            setup: "memory",
            unit: "/s",
            ours: stat(Setup::Memory, |f| f.spawn_rate),
            peer: peer("spawn_rate"),
            target: Target::Ratio(1.0, true),
        });
        lines.push(Line {
            what: format!("  bytes per spawned IMVU and its 4 canon records, RSS / {} vs Erlang memory(processes)/1M", args.spawn),
            setup: "memory",
            unit: "B",
            ours: stat(Setup::Memory, |f| f.spawn_bytes_rss),
            peer: peer("mem_per_idle_proc"),
            target: Target::None,
        });
        lines.push(Line {
            what: "  same, mimalloc committed".into(),
            setup: "memory",
            unit: "B",
            ours: stat(Setup::Memory, |f| f.spawn_bytes_committed),
            peer: None,
            target: Target::None,
        });
        lines.push(Line {
            what: "restarts until answered vs Erlang one_for_one until the child reports".into(),
            setup: "memory",
            unit: "/s",
            ours: stat(Setup::Memory, |f| f.restarts),
            peer: peer("sup_restart_rate"),
            target: Target::Ratio(5.0, true),
        });
    }
    let lines: Vec<Line> = lines.into_iter().filter(|l| l.ours.is_some()).collect();
    let width = lines.iter().map(|l| l.what.len() + l.unit.len() + 3).max().unwrap_or(40);
    println!();
    println!("setups: raft = `vcos up`'s node (1-voter Raft canon, fsync); redb = the single-process RedbStore; memory = MemoryStore (no durability)");
    println!("{:<width$} {:<6} {:>24} {:>24} {:>8} {:>10}  verdict", "metric", "setup", "v-COS median [range]", "peer median [range]", "ratio", "target");
    for line in &lines {
        let (ratio, target, verdict) = line.verdict();
        let what = if line.unit.is_empty() { line.what.clone() } else { format!("{} ({})", line.what, line.unit) };
        println!(
            "{what:<width$} {:<6} {:>24} {:>24} {ratio:>8} {target:>10}  {verdict}",
            line.setup,
            line.ours.map_or("n/a".into(), |s| s.show()),
            line.peer.map_or("n/a".into(), |s| s.show()),
        );
    }
    let peer_line = match peer_runs.len() {
        0 => "no Erlang peer".to_owned(),
        n => {
            let otp = peer_runs.first().and_then(|m| m.get("otp_release")).map_or("?".into(), |v| format!("{v}"));
            let schedulers = peer_runs.first().and_then(|m| m.get("schedulers_online")).map_or("?".into(), |v| format!("{v}"));
            format!("Erlang/OTP {otp}, {schedulers} schedulers, {n} runs of erlang_bench.sh")
        }
    };
    println!(
        "\nv-COS: {} runs per setup, each in a fresh process; {} messages per sender and round trips; {} spawned in memory; {} created durably and {} passivated per durable setup; {} restarts in memory, {} durable. {peer_line}.",
        args.runs, args.messages, args.spawn, args.durable, args.passivated, args.restarts, args.durable_restarts
    );
    println!("redb's page cache: {} MiB; load average after the runs: {}", CANON_CACHE_BYTES >> 20, load_average());
    if compilers_seen > 0 {
        println!("note: up to {compilers_seen} rustc processes were running beside the bench: the figures are not of an idle machine");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_finds_the_slope_and_keeps_its_sign() {
        let up: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 1_000.0, 5_000.0 + 64.0 * i as f64 * 1_000.0)).collect();
        let (slope, r2) = least_squares(&up).expect("a fit");
        assert!((slope - 64.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9, "{slope} {r2}");
        let down: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 100.0 - 3.0 * i as f64)).collect();
        let (slope, _) = least_squares(&down).expect("a fit");
        assert!((slope + 3.0).abs() < 1e-9, "a negative slope is reported as such: {slope}");
        assert_eq!(least_squares(&[(1.0, 2.0)]), None);
        assert_eq!(least_squares(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn stat_is_the_median_and_range() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stat::of(vec![4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert_eq!(Stat::of(vec![f64::NAN]), None);
    }

    #[test]
    fn mimalloc_statistics_give_committed_bytes() {
        let stats = serde_json::json!({"process": {"rss_current": 10, "commit_current": 8, "commit_peak": 9}});
        assert_eq!(committed_of(&stats), Some(8.0));
        assert_eq!(committed_of(&serde_json::json!({})), None);
    }

    #[test]
    fn a_child_gets_the_parent_sizes() {
        let args = LocalArgs::quick(true);
        let argv: Vec<String> = args.child_command(Setup::Redb).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&argv[..4], ["bench", "local", "--child", "redb"]);
        let at = argv.iter().position(|a| a == "--durable-restarts").expect("flag");
        assert_eq!(argv[at + 1], "2000");
    }
}

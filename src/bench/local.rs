//! `vcos bench local`: the actor runtime on one node against Erlang/OTP, same run, same machine.
//!
//! What is measured (Erlang's counterpart in parentheses, see ../shared/peers/erlang_bench.erl):
//! - tell 4→1: four tasks send to one IMVU through its bounded mailbox (4 processes → 1);
//! - ask: sequential request/reply round trips to one IMVU (ping-pong);
//! - spawn: IMVUs created through the full path — id, handshake, canon records on disk, resident
//!   cell — and RSS growth per resident IMVU (spawn of idle processes, memory(processes) / N);
//! - passivation: RSS growth per passivated IMVU (state only in canon) and the latency of the
//!   message that activates one (no peer);
//! - restarts: crash → supervisor restart → caller notified, serially (one_for_one restarts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;
use vcos_actors::{
    ActorError, Caller, Context, Imvu, ImvuKey, Persistence, RedbStore, Runtime, RuntimeConfig, SystemClock,
    TenantId, TenantPolicy,
};

use super::{erlang, print_table, Row};

/// Options of `vcos bench local`.
#[derive(Args, Debug)]
pub(crate) struct LocalArgs {
    /// Small sizes, for a quick check that everything runs (figures not comparable).
    #[arg(long)]
    quick: bool,
    /// Skip the Erlang peer.
    #[arg(long)]
    no_peer: bool,
    /// Messages per sender (tell) and round trips (ask).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// IMVUs spawned for the memory figures.
    #[arg(long, default_value_t = 1_000_000)]
    spawn: u64,
    /// Serial crash/restart cycles.
    #[arg(long, default_value_t = 100_000)]
    restarts: u64,
    /// Repetitions of tell and ask; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run one part only (for profiling): tell, ask, spawn, restarts.
    #[arg(long, value_parser = ["tell", "ask", "spawn", "restarts"])]
    only: Option<String>,
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
            restarts: 100_000,
            runs: 3,
            workers: None,
            only: None,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == part)
    }
}

/// Canon page cache for the run: small, so that the memory figures are the IMVUs' and not a
/// cache filling up (a node's default is `vcos_actors::store::CACHE_BYTES_DEFAULT`).
const CANON_CACHE_BYTES: usize = 16 << 20;

/// The benchmark's own IMVU kind, written as an author would.
struct Probe;

#[derive(Deserialize)]
enum ProbeMsg {
    Ping,
    Get,
    Crash,
}

impl Imvu for Probe {
    const KIND: &'static str = "bench-probe";
    type State = u64;
    type Msg = ProbeMsg;
    type Reply = u64;

    fn genesis(&self) -> u64 {
        0
    }

    fn handle(&self, count: &mut u64, msg: ProbeMsg, _ctx: &mut Context<'_>) -> u64 {
        match msg {
            ProbeMsg::Ping => *count += 1,
            ProbeMsg::Get => {}
            ProbeMsg::Crash => panic!("probe crash"),
        }
        *count
    }

    // Erlang's processes persist nothing per message either; creation and lifecycle still go
    // to canon on disk.
    fn persistence(&self) -> Persistence {
        Persistence::LifecycleOnly
    }
}

pub(crate) fn run(mut args: LocalArgs) -> anyhow::Result<()> {
    if args.quick {
        args.messages = args.messages.min(50_000);
        args.spawn = args.spawn.min(20_000);
        args.restarts = args.restarts.min(5_000);
        args.runs = 1;
    }
    let peer = if args.no_peer {
        None
    } else {
        eprintln!("running the Erlang/OTP peer (about 30 s)…");
        match erlang::run() {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("peer unavailable: {e:#}");
                None
            }
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before v-COS runs: {}", load.trim());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers.max(1));
    }
    let rt = builder.enable_all().build().context("tokio")?;
    let ours = rt.block_on(measure(&args))?;
    let p = |name: &str| peer.as_ref().and_then(|m| m.get(name).copied());
    let rows = vec![
        Row { metric: "tell 4->1", unit: "msgs/s", ours: ours.tell, peer: p("fanin_throughput"), target: Some((1.5, true)) },
        Row { metric: "ask round trips", unit: "rt/s", ours: ours.ask, peer: p("pingpong_roundtrips"), target: Some((1.2, true)) },
        Row { metric: "bytes per idle IMVU", unit: "B", ours: ours.bytes_resident, peer: p("mem_per_idle_proc"), target: Some((0.5, false)) },
        Row { metric: "spawn rate", unit: "/s", ours: ours.spawn_rate, peer: p("spawn_rate"), target: Some((1.0, true)) },
        Row { metric: "bytes per passivated IMVU", unit: "B", ours: ours.bytes_passivated, peer: None, target: None },
        Row { metric: "activation p50", unit: "us", ours: ours.activation_p50_us, peer: None, target: None },
        Row { metric: "activation p99", unit: "us", ours: ours.activation_p99_us, peer: None, target: None },
        Row { metric: "supervisor restarts", unit: "/s", ours: ours.restarts, peer: p("sup_restart_rate"), target: Some((5.0, true)) },
    ];
    print_table(&rows);
    println!("\nactivation p99 target: < 1000 us -> {}", if ours.activation_p99_us < 1000.0 { "met" } else { "MISSED" });
    println!("v-COS: {} spawned, {} messages per sender, {} restarts; canon on disk (redb, fsync, {} MiB page cache)", args.spawn, args.messages, args.restarts, CANON_CACHE_BYTES >> 20);
    Ok(())
}

struct Figures {
    tell: f64,
    ask: f64,
    bytes_resident: f64,
    spawn_rate: f64,
    bytes_passivated: f64,
    activation_p50_us: f64,
    activation_p99_us: f64,
    restarts: f64,
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    pages * 4096.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn measure(args: &LocalArgs) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let store = Arc::new(RedbStore::open_with_cache(&dir.path().join("canon.redb"), CANON_CACHE_BYTES)?);
    let config = RuntimeConfig::new(store.clone(), Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).kind(Probe).start().await?;
    let tenant = TenantId::new("bench")?;
    let policy = TenantPolicy { max_restarts: 65_536, restart_period_ms: 100, ..TenantPolicy::default() };
    runtime.put_tenant(tenant, policy).await?;
    let probe = runtime.kind_ref::<Probe>().context("probe kind registered")?;
    let caller = Caller::internal(&tenant, "bench");

    // tell 4 -> 1
    let mut tells = Vec::new();
    for _ in 0..args.runs * usize::from(args.wants("tell")) {
        let key = runtime.create_imvu(&tenant, Probe::KIND, &caller).await?.key;
        let started = Instant::now();
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let probe = probe.clone();
                let n = args.messages;
                tokio::spawn(async move {
                    for _ in 0..n {
                        probe.tell(&key, ProbeMsg::Ping).await?;
                    }
                    Ok::<_, ActorError>(())
                })
            })
            .collect();
        for s in senders {
            s.await??;
        }
        let total = probe.ask(&key, ProbeMsg::Get).await?;
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(total == 4 * args.messages, "tell lost messages: {total}");
        tells.push(total as f64 / secs);
    }

    // ask round trips
    let mut asks = Vec::new();
    for _ in 0..args.runs * usize::from(args.wants("ask")) {
        let key = runtime.create_imvu(&tenant, Probe::KIND, &caller).await?.key;
        let probe2 = probe.clone();
        let n = args.messages;
        let secs = tokio::spawn(async move {
            let started = Instant::now();
            for _ in 0..n {
                probe2.ask(&key, ProbeMsg::Ping).await?;
            }
            Ok::<_, ActorError>(started.elapsed().as_secs_f64())
        })
        .await??;
        asks.push(n as f64 / secs);
    }

    // Passivated IMVUs first (so that memory freed later cannot hide their cost): create in
    // batches, passivating each batch, so only what a passivated IMVU keeps stays resident.
    let spawn_n = if args.wants("spawn") { args.spawn } else { 1 };
    let passivated_n = (spawn_n / 4).max(1);
    runtime.passivate_idle(0).await;
    // The slope over the second half: by then canon's page cache (CANON_CACHE_BYTES) has filled
    // and is not charged to the IMVUs.
    let mut passivated = Vec::with_capacity(passivated_n as usize);
    let batch = 10_000u64;
    let mut made = 0;
    let mut half: Option<(f64, u64)> = None;
    while made < passivated_n {
        let n = batch.min(passivated_n - made);
        passivated.extend(spawn_many(&runtime, tenant, &caller, n).await?);
        runtime.passivate_idle(0).await;
        made += n;
        if half.is_none() && made >= passivated_n / 2 {
            half = Some((rss_bytes(), made));
        }
    }
    let rss1 = rss_bytes();
    let (rss_half, made_half) = half.unwrap_or((rss1, 0));
    let measured = passivated_n.saturating_sub(made_half).max(1);
    let bytes_passivated = ((rss1 - rss_half) / measured as f64 - std::mem::size_of::<ImvuKey>() as f64).max(0.0);

    // Resident IMVUs: the spawn rate and bytes per idle IMVU.
    let rss2 = rss_bytes();
    let started = Instant::now();
    let resident = spawn_many(&runtime, tenant, &caller, spawn_n).await?;
    let spawn_secs = started.elapsed().as_secs_f64();
    let rss3 = rss_bytes();
    // The bench's own list of keys is not the runtime's cost.
    let bytes_resident = (rss3 - rss2) / spawn_n as f64 - std::mem::size_of::<ImvuKey>() as f64;
    drop(resident);

    // Activation latency of passivated IMVUs on their next message.
    let mut latencies = Vec::new();
    let step = (passivated.len() / 10_000).max(1);
    for key in passivated.iter().step_by(step) {
        let started = Instant::now();
        probe.ask(key, ProbeMsg::Get).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);

    // Restarts: crash -> restart -> caller notified, one after another.
    let key = runtime.create_imvu(&tenant, Probe::KIND, &caller).await?.key;
    let n = if args.wants("restarts") { args.restarts } else { 1 };
    let probe3 = probe.clone();
    let restart_secs = tokio::spawn(async move {
        let started = Instant::now();
        for _ in 0..n {
            match probe3.ask(&key, ProbeMsg::Crash).await {
                Err(ActorError::Crashed { .. }) => {}
                other => return Err(anyhow::anyhow!("expected a crash, got {:?}", other.map(|_| ()))),
            }
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;

    runtime.shutdown().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.close();
    Ok(Figures {
        tell: median(tells),
        ask: median(asks),
        bytes_resident,
        spawn_rate: spawn_n as f64 / spawn_secs,
        bytes_passivated,
        activation_p50_us: pct(0.50),
        activation_p99_us: pct(0.99),
        restarts: n as f64 / restart_secs,
    })
}

/// Creates `n` IMVUs with many creations in flight (each is acknowledged once durable).
async fn spawn_many(runtime: &Runtime, tenant: TenantId, caller: &Caller, n: u64) -> anyhow::Result<Vec<ImvuKey>> {
    const IN_FLIGHT: u64 = 512;
    let mut keys = Vec::with_capacity(n as usize);
    let mut tasks = tokio::task::JoinSet::new();
    let workers = IN_FLIGHT.min(n.max(1));
    for w in 0..workers {
        let runtime = runtime.clone();
        let caller = caller.clone();
        let share = n / workers + u64::from(w < n % workers);
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(share as usize);
            for _ in 0..share {
                mine.push(runtime.create_imvu(&tenant, Probe::KIND, &caller).await?.key);
            }
            Ok::<_, ActorError>(mine)
        });
    }
    while let Some(done) = tasks.join_next().await {
        keys.extend(done??);
    }
    Ok(keys)
}


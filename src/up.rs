//! `vcos up`: one node on embedded defaults, or one node of a multi-process cluster.
//!
//! The node's canon is a Raft group of its region (`--region`): alone, it is that group's only
//! voter; with `--join URL` it joins the cluster that the node at URL belongs to — as a voter
//! of its region's group, and as a learner of every other region's group (see `canon-raft`).
//!
//! Start-up never waits for a quorum without end: a restarted node whose region has no quorum
//! (the other voters down) still serves HTTP — `/health` answers 503 `degraded`, canon writes
//! 503 `canon_unavailable` — and creates what it must create in canon once the quorum is back.
//! Stopping is bounded too ([`STOP_MAX`]), whatever the canon does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use vcos_actors::kinds::{Counter, KvMemory, Relay, TextWorker};
use vcos_actors::{ActorError, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};
use vcos_canon_raft::{CanonNode, GroupView, NodeConfig, RaftCanonStore, TcpTransport};

use crate::http_client;

/// Options of `vcos up`.
#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// Directory holding the node's canon (created if missing).
    #[arg(long, default_value = "vcos-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP facade; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    /// IMVU host shards per kind (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,
    /// Mailbox bound of each shard.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    shard_queue: u32,
    /// This node's id, unique in the cluster.
    #[arg(long, default_value_t = 1, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..=0xf_ffff))]
    node_id: u64,
    /// The node's home region: its canon group (letters, digits, - and _).
    #[arg(long, default_value = "local", value_name = "NAME")]
    region: String,
    /// The cluster's name; nodes of another cluster are refused.
    #[arg(long, default_value = "vcos", value_name = "NAME")]
    cluster: String,
    /// Address of the canon (Raft) listener. Port 0 picks a free port: fine for a single
    /// node; a cluster member needs a fixed one, since peers store it.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    raft_listen: SocketAddr,
    /// HTTP URL of any node of an existing cluster to join (first start only; a restart
    /// rejoins from its data directory).
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    /// Address of the gossip (SWIM membership) UDP socket. Port 0 picks a free port (others
    /// learn it from `GET /v1/cluster`).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    gossip_listen: SocketAddr,
    /// Gossip addresses of other nodes to join through, comma separated (found through
    /// `--join` and the canon's members when not given).
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    seeds: Vec<SocketAddr>,
    /// Passivate an IMVU after this many seconds without a message (its state stays in canon;
    /// its next message activates it again, on whichever node owns it then); 0: never.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    passivate_after: u64,
    /// Also register the kinds of `vcos bench cluster` (`bench-echo`, `bench-driver`).
    #[arg(long, hide = true)]
    bench_kinds: bool,
}

/// Passivates IMVUs idle for `after_ms`, checking every half of it (at most every 10 s): the
/// shards decide by their injected clocks; this task only asks.
fn spawn_passivation(rt: &Runtime, after_ms: u64) {
    if after_ms == 0 {
        return;
    }
    let rt = rt.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis((after_ms / 2).clamp(100, 10_000)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if rt.node().shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let passivated = rt.passivate_idle(after_ms).await;
            if passivated > 0 {
                tracing::debug!(passivated, idle_ms = after_ms, "passivated idle IMVUs");
            }
        }
    });
}

/// The longest a node takes to stop once asked (signal, escalation, removal, canon failure):
/// past it the process exits at once, whatever is still running (requests draining, the
/// runtime's passivation, Raft). Everything acknowledged is durable already; only work in
/// flight is cut. Covers the HTTP drain of requests that each end by the canon request
/// deadline (5 s), the runtime's stop ([`RUNTIME_STOP_MAX`]) and the canon's (3 s).
pub(crate) const STOP_MAX: Duration = Duration::from_secs(15);
/// How long the actor runtime may take to stop (its passivation writes to canon).
const RUNTIME_STOP_MAX: Duration = Duration::from_secs(5);
/// How long tokio's blocking threads may take to finish after the node stopped.
const BLOCKING_STOP_MAX: Duration = Duration::from_secs(1);
/// Pause between attempts to create the default tenant while the canon has no quorum.
const TENANT_RETRY_PAUSE: Duration = Duration::from_secs(1);

pub(crate) fn run(args: UpArgs) -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start tokio")?;
    let result = runtime.block_on(serve(args));
    // Tasks that never finish (Raft waiting for a quorum, a blocked disk) must not hold the exit.
    runtime.shutdown_timeout(BLOCKING_STOP_MAX);
    result
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Builds the node's runtime with the kinds that ship with the binary. If the default tenant
/// cannot be created because the canon has no quorum, the runtime is returned anyway and a
/// task keeps trying (see the module docs).
pub(crate) async fn start_runtime(
    config: RuntimeConfig,
    router: Option<Arc<dyn vcos_actors::router::Router>>,
    bench_kinds: bool,
) -> anyhow::Result<Runtime> {
    let mut builder = Runtime::builder(config);
    if let Some(router) = router {
        builder = builder.router(router);
    }
    if bench_kinds {
        builder = builder.kind(crate::bench::BenchEcho).kind(crate::bench::BenchDriver);
    }
    let rt = builder
        .kind(Counter)
        .kind(KvMemory)
        .kind(Relay)
        .kind(TextWorker)
        .start()
        .await
        .context("start the actor runtime")?;
    match rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await {
        Ok(_) => {}
        Err(ActorError::Unavailable(reason)) => {
            tracing::warn!(%reason, "the canon has no quorum: serving without the default tenant; creating it once the quorum is back");
            let rt = rt.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TENANT_RETRY_PAUSE).await;
                    if rt.node().shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    match rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await {
                        Ok(_) => {
                            tracing::info!("the canon has a quorum again: default tenant created");
                            return;
                        }
                        Err(ActorError::Unavailable(_)) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "creating the default tenant failed");
                            return;
                        }
                    }
                }
            });
        }
        Err(e) => return Err(anyhow::Error::new(e).context("create the default tenant")),
    }
    Ok(rt)
}

async fn serve(args: UpArgs) -> anyhow::Result<()> {
    vcos_canon_raft::node::validate_region(&args.region).context("--region")?;
    if let Some(join) = &args.join {
        http_client::authority(join).context("--join")?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data directory {}", args.data_dir.display()))?;
    let metrics = vcos_api::install_metrics_recorder();
    // Election timeouts must differ between nodes: seed openraft's source per process.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    vcos_canon_raft::runtime::set_process_seed(nanos ^ (args.node_id << 32) ^ u64::from(std::process::id()));
    let raft_listener =
        tokio::net::TcpListener::bind(args.raft_listen).await.with_context(|| format!("canon listener on {}", args.raft_listen))?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    let mut config = NodeConfig::new(args.node_id, &args.region, &args.data_dir.join("canon"));
    config.cluster = args.cluster.clone();
    config.info.raft_addr = raft_listener.local_addr().context("canon address")?.to_string();
    config.info.http_addr = addr.to_string();
    let node = CanonNode::start(config, Arc::new(TcpTransport)).await.context("open the canon")?;
    let raft_server = tokio::spawn({
        let node = node.clone();
        async move { node.serve(raft_listener).await }
    });
    if !node.is_member().await.context("canon membership")? {
        match &args.join {
            Some(url) => join_cluster(&node, url).await?,
            None => node.bootstrap().await.context("bootstrap the canon")?,
        }
    }
    // Everything committed before this start is applied before the runtime reads the canon —
    // when the region has a quorum. Without one the node serves anyway (health degraded,
    // canon writes 503) from what its replica holds.
    match node.read_barrier(&args.region).await {
        Ok(_) => {}
        Err(e) if e.is_retryable() => tracing::warn!(
            error = %e,
            "the canon region has no quorum: serving HTTP anyway (/health degraded, canon writes answer 503) from this node's replica, which may lag"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("wait for the canon leader and catch up")),
    }
    let store = Arc::new(RaftCanonStore::start(node.clone()));
    let clock: Arc<dyn vcos_actors::Clock> = Arc::new(SystemClock::new());
    let mut config = RuntimeConfig::new(store.clone(), clock.clone());
    // At most one activation: the runtime serves an IMVU only under its bucket's lease.
    let leases = crate::cluster_up::lease_table(&node)?;
    config.ownership = leases.clone();
    // Ids carry the region's tag: any node of any region routes them to their home.
    config.region_tag = vcos_cluster::region_tag(&args.region);
    if let Some(shards) = args.shards {
        config.shards_per_kind = usize::from(shards);
    }
    config.shard_queue_len = args.shard_queue as usize;
    // Messages between IMVUs go through placement: to whichever node owns the target.
    let imvu_router = Arc::new(vcos_cluster::ClusterRouter::default());
    let rt = start_runtime(config, Some(imvu_router.clone()), args.bench_kinds).await?;
    tracing::info!(data_dir = %args.data_dir.display(), node_id = args.node_id, region = %args.region, "canon opened");
    // The one line scripts wait for: the URL of the facade.
    println!("v-COS node up: http://{addr}  (docs: http://{addr}/docs)");
    let membership =
        crate::cluster_up::start_membership(&node, &args.cluster, args.gossip_listen, &args.seeds, args.join.as_deref(), addr).await?;
    let cluster = vcos_cluster::Cluster::start(
        vcos_cluster::ClusterConfig::new(crate::cluster_up::holder(&node), &args.region),
        leases,
        rt.clone(),
        node.clone(),
        store.clone(),
        clock,
        Arc::new(membership.view_receiver()),
    )
    .context("start placement")?;
    imvu_router.bind(&cluster);
    spawn_passivation(&rt, args.passivate_after.saturating_mul(1_000));
    // A node that is alone in its region serves every IMVU once it holds its buckets: wait for
    // that (a restart waits out its previous incarnation's leases, about a second) before
    // announcing, so that the first request after the up line is served at once. In a cluster
    // requests are forwarded meanwhile, and a request for a bucket in transit waits for it.
    let claim_deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while cluster.buckets_served() == 0 && tokio::time::Instant::now() < claim_deadline {
        let others = cluster.members().iter().any(|m| m.node_id != args.node_id && m.state == vcos_cluster::MemberState::Alive);
        if others {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let router = vcos_api::router_with_cluster(rt.clone(), metrics, (*store).clone(), cluster.clone());
    let canon_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let rt = rt.clone();
        let node = node.clone();
        let canon_failure = canon_failure.clone();
        async move {
            tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
                _ = terminate_signal() => tracing::info!("SIGTERM: stopping"),
                reason = rt.escalated() => tracing::error!(%reason, "stopping after escalation to the root supervisor"),
                () = removed(&node) => tracing::warn!("removed from the canon group: stopping"),
                reason = node.failed() => {
                    tracing::error!(%reason, "the canon failed: stopping (restart the node to recover from disk)");
                    *canon_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                }
            }
            rt.node().shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            arm_stop_watchdog();
        }
    };
    vcos_api::serve(listener, router, stop).await.context("serve HTTP")?;
    // Hand the buckets over (their next owners need not wait out the leases), then say
    // goodbye to the membership, both bounded.
    if tokio::time::timeout(std::time::Duration::from_secs(3), cluster.leave()).await.is_err() {
        tracing::warn!("handing the buckets over took over 3 s; stopping anyway");
    }
    if tokio::time::timeout(std::time::Duration::from_secs(2), membership.leave()).await.is_err() {
        tracing::warn!("leaving the membership took over 2 s; stopping anyway");
    }
    if tokio::time::timeout(RUNTIME_STOP_MAX, rt.shutdown()).await.is_err() {
        tracing::warn!(waited_s = RUNTIME_STOP_MAX.as_secs(), "the actor runtime did not stop in time (canon without quorum?); stopping anyway");
    }
    node.shutdown().await;
    raft_server.abort();
    let escalation = rt.escalation();
    tracing::info!("node stopped; everything acknowledged is in canon");
    if let Some(reason) = escalation {
        anyhow::bail!("node stopped by escalation: {reason}");
    }
    if let Some(reason) = canon_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        anyhow::bail!("node stopped: {reason}");
    }
    Ok(())
}

/// Exits the process if stopping takes longer than [`STOP_MAX`] from now (a plain thread: it
/// must fire even if every tokio worker is stuck).
fn arm_stop_watchdog() {
    let spawned = std::thread::Builder::new().name("stop-watchdog".into()).spawn(|| {
        std::thread::sleep(STOP_MAX);
        eprintln!("vcos: the node did not stop within {} s; exiting without waiting further", STOP_MAX.as_secs());
        std::process::exit(1);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no stop watchdog thread; the stop is bounded by its parts only");
    }
}

/// Resolves once this node is no longer a member of its region's group.
async fn removed(node: &CanonNode) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if node.check_removed() {
            return;
        }
    }
}

/// Asks the node at `url` for the cluster's groups and joins them (retrying while the cluster
/// elects leaders).
async fn join_cluster(node: &CanonNode, url: &str) -> anyhow::Result<()> {
    let mut last = None;
    for attempt in 0..30 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let status = match http_client::request_ok(url, "GET", "/v1/canon/status", None).await {
            Ok(text) => text,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let status: serde_json::Value = serde_json::from_str(&status).with_context(|| format!("{url}/v1/canon/status is not JSON"))?;
        let views: Vec<GroupView> = serde_json::from_value(status.get("groups").cloned().unwrap_or_default())
            .with_context(|| format!("{url}/v1/canon/status has no readable `groups`"))?;
        match node.join(&views).await {
            Ok(()) => {
                tracing::info!(%url, regions = views.len(), "joined the cluster");
                return Ok(());
            }
            Err(e) => {
                tracing::info!(error = %e, "join not done yet; retrying");
                last = Some(anyhow::Error::new(e));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).with_context(|| format!("join the cluster through {url}"))
}

#[cfg(unix)]
async fn terminate_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    std::future::pending::<()>().await
}

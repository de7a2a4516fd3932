//! `vcos up`: one node on embedded defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use vcos_actors::kinds::{Counter, KvMemory, TextWorker};
use vcos_actors::{RedbStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

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
}

pub(crate) fn run(args: UpArgs) -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start tokio")?;
    runtime.block_on(serve(args))
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Builds the node's runtime with the kinds that ship with the binary.
pub(crate) async fn start_runtime(config: RuntimeConfig) -> anyhow::Result<Runtime> {
    let rt = Runtime::builder(config)
        .kind(Counter)
        .kind(KvMemory)
        .kind(TextWorker)
        .start()
        .await
        .context("start the actor runtime")?;
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.context("create the default tenant")?;
    Ok(rt)
}

async fn serve(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data directory {}", args.data_dir.display()))?;
    let canon_path = args.data_dir.join("canon.redb");
    let store = Arc::new(RedbStore::open(&canon_path).with_context(|| format!("open canon at {}", canon_path.display()))?);
    let mut config = RuntimeConfig::new(store.clone(), Arc::new(SystemClock::new()));
    if let Some(shards) = args.shards {
        config.shards_per_kind = usize::from(shards);
    }
    config.shard_queue_len = args.shard_queue as usize;
    let metrics = vcos_api::install_metrics_recorder();
    let rt = start_runtime(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    tracing::info!(data_dir = %args.data_dir.display(), "canon opened");
    // The one line scripts wait for: the URL of the facade.
    println!("v-COS node up: http://{addr}  (docs: http://{addr}/docs)");
    let router = vcos_api::router(rt.clone(), metrics);
    let stop = {
        let rt = rt.clone();
        async move {
            tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
                _ = terminate_signal() => tracing::info!("SIGTERM: stopping"),
                reason = rt.escalated() => tracing::error!(%reason, "stopping after escalation to the root supervisor"),
            }
        }
    };
    vcos_api::serve(listener, router, stop).await.context("serve HTTP")?;
    rt.shutdown().await;
    store.close();
    let escalation = rt.escalation();
    tracing::info!("node stopped; everything acknowledged is in canon");
    if let Some(reason) = escalation {
        anyhow::bail!("node stopped by escalation: {reason}");
    }
    Ok(())
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

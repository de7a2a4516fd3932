//! `vcos bench`: measurements against peers run in the same invocation.
//!
//! Figures are ratios against the peer measured in this run, never against remembered numbers:
//! the machine is shared and noisy.

mod canon;
mod cluster;
mod erlang;
mod http;
mod inference;
mod kinds;
mod local;
mod passivated;
mod sessions;
mod think;
mod workflows;

pub(crate) use kinds::{BenchDriver, BenchEcho};

use clap::{Args, Subcommand};

/// Options of `vcos bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// The actor runtime on one node vs Erlang/OTP (tell, ask, spawn/memory, passivation, restarts).
    Local(local::LocalArgs),
    /// Passivated IMVUs on a region of three voters (`vcos up` processes on loopback): each
    /// process's resident memory as they accumulate (10 M by default), the disk they take, and
    /// the activation of a passivated IMVU through HTTP.
    Passivated(passivated::PassivatedArgs),
    /// Replicated canon writes on a 3-voter region vs a 3-member etcd (ops/s, p50/p99 at
    /// c=1/16/256), and cross-region replication lag under load.
    Canon(canon::CanonArgs),
    /// IMVUs across three `vcos up` processes: failover after kill -9 (p50/p99/max), remote
    /// ask round trips and tell throughput node to node vs two Erlang nodes (distribution).
    Cluster(cluster::ClusterArgs),
    /// The HTTP facade `vcos up` ships, with authentication, rate limits, metering and audit on
    /// vs off (same in-process node, same run): messages/s and its cost, latency at a fixed
    /// 10 k requests/s on loopback, tenant context resolution p99.
    Http(http::HttpArgs),
    /// The models `vcos up` serves (embeddings, generation) vs PyTorch on the same files, same
    /// run: sentences/s at batch 1 and 32, tokens/s single stream and 8/32 concurrent, time to
    /// first token.
    Inference(inference::InferenceArgs),
    /// IMVUs waiting on the models do not hold up the others: 1,000 assistants waiting on
    /// generation while others of the same kind answer (p50/p99, against the idle node).
    Think(think::ThinkArgs),
    /// Virtual desktop sessions vs bare Xvfb, same run: start→ready cold and from the warm
    /// pool (p50/p99, canon records included), pause and resume, RSS per idle session, and how
    /// many concurrent sessions one node holds.
    Sessions(sessions::SessionsArgs),
    /// Durable workflows vs Temporal and Restate, same run, durability on for all three:
    /// a 10-step sequential workflow and a 100-way fan-out/fan-in at concurrency 1 and 64
    /// (workflows/s, end-to-end p50/p99, per-step overhead).
    Workflows(workflows::WorkflowsArgs),
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Benches whose node or models run in this process get `vcos up`'s memory setting. The
    // others start `vcos up` processes (which set it themselves) or measuring children (`bench
    // local`), and start peers that must not inherit it from here (etcd; `bench local`'s Erlang
    // is indifferent, but its parent stays as it is). The peers of these four (wrk, Xvfb,
    // PyTorch's default allocator) do not ask for huge pages.
    if matches!(args.suite, Suite::Http(_) | Suite::Inference(_) | Suite::Think(_) | Suite::Sessions(_)) {
        crate::huge_pages::apply()?;
    }
    match args.suite {
        Suite::Local(local) => local::run(local),
        Suite::Canon(canon) => canon::run(canon),
        Suite::Passivated(passivated) => passivated::run(passivated),
        Suite::Cluster(cluster) => cluster::run(cluster),
        Suite::Http(http) => http::run(http),
        Suite::Inference(inference) => inference::run(inference),
        Suite::Think(think) => think::run(think),
        Suite::Sessions(sessions) => sessions::run(sessions),
        Suite::Workflows(workflows) => workflows::run(workflows),
    }
}

/// Runs a bench's driver on a runtime of two workers (the machine's cores), ending it early
/// with an error on Ctrl-C; a blocking task still running then is not waited for.
pub(crate) fn run_driver<T>(driver: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    let result = rt.block_on(async {
        tokio::select! {
            biased;
            r = driver => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// One row of a comparison table.
pub(crate) struct Row {
    pub metric: &'static str,
    pub unit: &'static str,
    pub ours: f64,
    pub peer: Option<f64>,
    /// Target ratio ours/peer, and whether higher is better.
    pub target: Option<(f64, bool)>,
}

pub(crate) fn print_table(rows: &[Row]) {
    println!();
    println!("{:<34} {:>14} {:>14} {:>8} {:>12}  verdict", "metric", "v-COS", "peer", "ratio", "target");
    for row in rows {
        let ratio = row.peer.filter(|p| *p > 0.0).map(|p| row.ours / p);
        let target = row.target.map_or("-".to_owned(), |(t, higher)| format!("{}{t:.2}x", if higher { ">=" } else { "<=" }));
        let verdict = match (ratio, row.target) {
            (Some(r), Some((t, true))) => if r >= t { "met" } else { "MISSED" },
            (Some(r), Some((t, false))) => if r <= t { "met" } else { "MISSED" },
            _ => "-",
        };
        println!(
            "{:<34} {:>14} {:>14} {:>8} {:>12}  {verdict}",
            format!("{} ({})", row.metric, row.unit),
            fmt_num(row.ours),
            row.peer.map_or("n/a".to_owned(), fmt_num),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            target,
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// The `key=value` fields of a wrk RESULT line (a leading `RESULT` and fields not `wanted` are
/// skipped), each as a number; an error names a field that is missing or not a number.
pub(crate) fn wrk_fields(line: &str, wanted: &[&str]) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut fields = std::collections::BTreeMap::new();
    for field in line.split_whitespace().filter(|f| *f != "RESULT") {
        let Some((key, value)) = field.split_once('=') else { continue };
        if wanted.contains(&key) {
            let number = value.parse::<f64>().map_err(|_| anyhow::anyhow!("wrk result field `{field}` is not a number (line: `{line}`)"))?;
            fields.insert(key.to_owned(), number);
        }
    }
    let missing: Vec<&&str> = wanted.iter().filter(|w| !fields.contains_key(**w)).collect();
    anyhow::ensure!(missing.is_empty(), "wrk result line lacks fields {missing:?} (want {}): `{line}`", wanted.join(" "));
    Ok(fields)
}

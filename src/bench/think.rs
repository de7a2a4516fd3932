//! `vcos bench think`: IMVUs that wait on a model do not hold up the others.
//!
//! One in-process node as `vcos up` runs it (canon on Raft, placement, the models of the
//! cache behind the same pools): `--waiting` assistants are each asked a question (an
//! embedding, then a generation of `--max-tokens` tokens) so that that many IMVUs wait on the
//! model at once, while `--probes` other assistants of the same kind (the same shards) are
//! asked `{op: notes}`, one at a time, through the same path as a forwarded HTTP request. The
//! probes' latency is measured twice in the same run: on the idle node, then while the model
//! requests are pending. Target: p99 under 1 ms while 1,000 IMVUs wait.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use vcos_actors::{Caller, ImvuKey, TenantId};

/// Options of `vcos bench think`.
#[derive(Args, Debug)]
pub(crate) struct ThinkArgs {
    /// Assistants asked a question at once (each waits on an embedding, then a generation).
    #[arg(long, default_value_t = 1_000)]
    waiting: usize,
    /// Other assistants, asked `{op: notes}` while those wait.
    #[arg(long, default_value_t = 100)]
    probes: usize,
    /// Probe asks per phase (idle, then busy), one at a time.
    #[arg(long, default_value_t = 5_000)]
    asks: usize,
    /// Tokens each waiting assistant's answer may take.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// The model cache (default: `$VCOS_MODELS_DIR`, else `~/.cache/vcos/models`).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<std::path::PathBuf>,
}

/// Latencies of one phase, in µs, sorted.
struct Phase {
    us: Vec<f64>,
    /// Model requests pending (queued or running generations, and embeddings queued) when the
    /// phase began and when it ended.
    pending: (usize, usize),
}

impl Phase {
    fn quantile(&self, q: f64) -> f64 {
        let i = ((self.us.len() as f64 - 1.0) * q).round() as usize;
        self.us.get(i).copied().unwrap_or(f64::NAN)
    }
}

pub(crate) fn run(args: ThinkArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.probes > 0 && args.asks > 0, "--probes and --asks must be at least 1");
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?.block_on(bench(&args))
}

async fn bench(args: &ThinkArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("vcos-bench-think-").tempdir().context("create a temporary directory")?;
    let mut command: Vec<OsString> = vec!["up".into(), "--data-dir".into(), dir.path().join("node").into_os_string(), "--listen".into(), "127.0.0.1:0".into()];
    // Every waiting generation has a place in the queue: none is refused as overloaded.
    command.extend(["--inference-queue".into(), (args.waiting + 64).to_string().into()]);
    if let Some(models) = &args.models_dir {
        command.extend(["--models-dir".into(), models.clone().into_os_string()]);
    }
    let up = crate::up::UpArgs::parse_from(command)?;
    let inference = Arc::new(tokio::task::block_in_place(|| crate::up::load_models(&up))?);
    let Some(chat) = inference.chat() else { anyhow::bail!("the generation model is not installed: run `vcos models install`") };
    anyhow::ensure!(inference.embeddings().is_some(), "the embedding model is not installed: run `vcos models install`");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = crate::up::start_node(&up, addr, true).await.context("start the node (as `vcos up` does)")?;
    let models = node.cluster.models(Arc::new(vcos_gpu_workers::serve::LocalModels::new(inference.clone())));
    node.rt.set_models(Arc::new(vcos_gpu_workers::serve::ImvuModels::new(node.rt.downgrade(), models)));
    let result = measure(args, &node, &inference).await;
    let pending_at_stop = chat.pool().queued() + chat.pool().running();
    node.stop().await;
    let (idle, busy) = result?;
    print_report(args, &idle, &busy, pending_at_stop);
    Ok(())
}

fn pending(inference: &vcos_gpu_workers::serve::Inference) -> usize {
    let generations = inference.chat().map_or(0, |c| c.pool().queued() + c.pool().running());
    generations + inference.embeddings().map_or(0, vcos_gpu_workers::serve::EmbedPool::queued)
}

async fn measure(args: &ThinkArgs, node: &crate::up::Node, inference: &vcos_gpu_workers::serve::Inference) -> anyhow::Result<(Phase, Phase)> {
    let tenant = TenantId::default_tenant();
    let caller = Caller::internal(&tenant, "bench-think");
    let mut waiting = Vec::with_capacity(args.waiting);
    let mut probes = Vec::with_capacity(args.probes);
    eprintln!("creating {} assistants", args.waiting + args.probes);
    for i in 0..args.waiting + args.probes {
        let info = node.cluster.create(&tenant, "assistant", &caller).await.with_context(|| format!("create assistant {i}"))?;
        if i < args.waiting { waiting.push(info.key) } else { probes.push(info.key) }
    }
    // Every probe activated and its state loaded before timing.
    for key in &probes {
        node.cluster.ask_json(key, json!({"op": "notes"}), &caller).await.context("warm a probe")?;
    }
    let idle = probe_phase(args, node, &probes, &caller, inference).await?;
    eprintln!("idle: p50 {:.0} µs, p99 {:.0} µs; asking {} assistants a question each", idle.quantile(0.5), idle.quantile(0.99), args.waiting);
    for (i, key) in waiting.iter().enumerate() {
        let question = format!("In one sentence, what is the number {i} known for?");
        let reply = node.cluster.ask_json(key, json!({"op": "ask", "question": question, "max_tokens": args.max_tokens}), &caller).await?;
        anyhow::ensure!(reply.get("request").is_some(), "assistant {key} did not take the question: {reply}");
    }
    // The embeddings go first (batched), then each answer's generation is queued: wait until
    // every question's embedding is done and its generation pending, so that the window
    // measures IMVUs waiting on generation (not the node busy delivering embeddings).
    let started = Instant::now();
    let generations = || inference.chat().map_or(0, |c| c.pool().queued() + c.pool().running());
    let embeddings = || inference.embeddings().map_or(0, vcos_gpu_workers::serve::EmbedPool::queued);
    let mut drained_at = None;
    while started.elapsed() < Duration::from_secs(300) {
        if embeddings() == 0 {
            // Short answers may finish before the last are queued: 2 s after the embeddings
            // drained, measure whatever is pending (the table says how many).
            let drained = *drained_at.get_or_insert_with(Instant::now);
            if generations() >= args.waiting * 95 / 100 || drained.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("{} generations pending after {:.1} s", generations(), started.elapsed().as_secs_f64());
    let busy = probe_phase(args, node, &probes, &caller, inference).await?;
    Ok((idle, busy))
}

async fn probe_phase(args: &ThinkArgs, node: &crate::up::Node, probes: &[ImvuKey], caller: &Caller, inference: &vcos_gpu_workers::serve::Inference) -> anyhow::Result<Phase> {
    let before = pending(inference);
    let mut us = Vec::with_capacity(args.asks);
    for i in 0..args.asks {
        let key = &probes[i % probes.len()];
        let t = Instant::now();
        node.cluster.ask_json(key, json!({"op": "notes"}), caller).await.with_context(|| format!("probe {key}"))?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    Ok(Phase { us, pending: (before, pending(inference)) })
}

fn print_report(args: &ThinkArgs, idle: &Phase, busy: &Phase, pending_at_stop: usize) {
    println!(
        "\nvcos bench think: {} assistants waiting on the models, {} others asked `notes` ({} asks per phase, one at a time)",
        args.waiting, args.probes, args.asks
    );
    println!("{:<44} {:>10} {:>10} {:>10} {:>10}", "phase", "p50 µs", "p99 µs", "max µs", "pending");
    for (name, phase) in [("idle node", idle), ("while the others wait on generation", busy)] {
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>10.0} {:>4} → {:<4}",
            name,
            phase.quantile(0.5),
            phase.quantile(0.99),
            phase.us.last().copied().unwrap_or(f64::NAN),
            phase.pending.0,
            phase.pending.1
        );
    }
    let p99 = busy.quantile(0.99);
    println!(
        "p99 while waiting: {p99:.0} µs (target < 1,000 µs: {}); {:.2}× the idle p99; {pending_at_stop} generations still pending at the end",
        if p99 < 1_000.0 { "met" } else { "missed" },
        p99 / idle.quantile(0.99)
    );
}

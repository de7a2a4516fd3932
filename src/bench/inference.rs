//! `vcos bench inference`: the models `vcos up` serves, through the same pools, against
//! PyTorch on the same files, same machine, same run.
//!
//! - **ours**: `Inference::load` on the model cache, as `vcos up` does it (candle, CPU,
//!   `--threads` for each model and for candle's process-wide pool). Embeddings go through
//!   `EmbedPool::embed` (one caller: 1 text a request for batch 1, 32 texts a request for
//!   batch 32); generation through `Chat::start` on a `GenPool` whose `max_batch` is the
//!   concurrency measured, greedy, all requests submitted at once; tokens/s = generated tokens
//!   summed / wall time; time to first token = submit to the first `Token` event.
//! - **peer** (`inference_peer.py`, a long-lived child process, so that sides alternate run by
//!   run without reloading): sentence-transformers `encode(batch_size=1|32)` on the same MiniLM
//!   directory; transformers on the same Q8_0 GGUF (dequantised to fp32), `generate` greedy,
//!   exactly `--gen-tokens` new tokens, single stream and left-padded batches of 8 and 32.
//!   Same sentences, same prompt text (rendered here, tokenized there), same thread count.
//!
//! Each measurement runs `--runs` times per side, alternating which side goes first (drift
//! weighs on both); the report gives median [min-max] and the ratio of medians.

use std::io::{BufRead as _, BufReader, Write as _};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use serde_json::{json, Value};
use vcos_gpu_workers::generate::{render_chatml, ChatMessage, SamplingParams};
use vcos_gpu_workers::models::ModelCache;
use vcos_gpu_workers::serve::{Chat, EmbedPool, GenEvent, Inference, InferenceSettings};

use super::cluster::{fmt, pct, spread};

/// The peer script, written to a temporary directory at run time.
const PEER_PY: &str = include_str!("inference_peer.py");
/// What the peer imports; installed into the bench's venv on first use.
const PEER_PACKAGES: [&str; 5] = ["torch", "transformers", "sentence-transformers", "gguf", "accelerate"];
/// Concurrent generation requests measured besides the single stream.
const CONCURRENCY: [usize; 3] = [1, 8, 32];
/// Targets: our embeddings against sentence-transformers, our single stream against
/// transformers, and our 8-way batch against our own single stream.
const EMBED_TARGET: f64 = 1.0;
const DECODE_TARGET: f64 = 1.0;
const BATCH8_SPEEDUP_TARGET: f64 = 4.0;

/// ~12-token English sentences, varied so that batches are not one repeated length.
const SENTENCES: [&str; 64] = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "A storm is expected to reach the coast by Thursday evening.",
    "She opened the window to let the morning light into the room.",
    "Our team shipped the new release after three weeks of testing.",
    "The museum will host an exhibition of early photography next month.",
    "He forgot his umbrella and walked home through the heavy rain.",
    "Fresh bread from the corner bakery sells out before nine.",
    "The committee approved the budget for the new public library.",
    "Children played football in the park until the sun went down.",
    "Please restart the server before running the database migration.",
    "The train to Edinburgh was delayed by almost forty minutes today.",
    "A small cat slept on the warm hood of the parked car.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Traffic on the main bridge slowed during the evening rush hour.",
    "My grandmother still writes letters by hand every Sunday afternoon.",
    "The orchestra rehearsed the symphony twice before the opening night.",
    "Solar panels on the roof now cover most of the household's power.",
    "He practised the piano for an hour before his lesson began.",
    "The startup raised enough money to hire ten more engineers.",
    "Heavy snow closed the mountain pass for the rest of the week.",
    "She translated the old manuscript from Latin into modern English.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Our neighbour's dog barks whenever the postman comes to the door.",
    "The city council voted to extend the bicycle lanes downtown.",
    "A gentle breeze carried the smell of the sea across the harbour.",
    "The students submitted their research projects a day early.",
    "Coffee prices rose sharply after a poor harvest in Brazil.",
    "The detective found a crucial clue hidden behind the bookshelf.",
    "Farmers hope the spring rain will arrive in time for planting.",
    "The airline cancelled several flights because of the strike.",
    "He repaired the old bicycle with parts from a local shop.",
    "The documentary explores how bees communicate inside the hive.",
    "Our flight landed safely despite strong winds over the runway.",
    "The new phone has a brighter screen and a longer battery life.",
    "Volunteers cleaned the beach and collected bags of plastic waste.",
    "The professor explained quantum entanglement with a simple analogy.",
    "A thick fog covered the valley early on Saturday morning.",
    "The restaurant changes its menu with every season of the year.",
    "She finished the marathon in just under four hours.",
    "The software update fixed a bug that crashed the application.",
    "Tourists crowded the square to watch the changing of the guard.",
    "The river flooded the low fields after days of steady rain.",
    "He bought a second-hand guitar and taught himself to play.",
    "The library extended its opening hours during the exam period.",
    "An old lighthouse still guides the fishing boats home at night.",
    "The company plans to open three new offices in Asia.",
    "Birds began singing long before the first light of dawn.",
    "The judge postponed the hearing until the witnesses could attend.",
    "We watched the fireworks from the hill above the town.",
    "The painter mixed blue and yellow to get a soft green.",
    "Engineers tested the bridge for weeks before it opened to traffic.",
    "A sudden power cut left the whole street in darkness.",
    "The chef sharpened his knives before the dinner service began.",
    "Local elections will take place on the first Sunday of May.",
    "The kids built a sandcastle that the tide soon washed away.",
    "Our internet connection drops whenever it rains very hard.",
    "The novel tells the story of a family across three generations.",
    "Doctors recommend at least seven hours of sleep each night.",
    "The farmer sold apples and pears at the weekend market.",
    "A rare comet will be visible in the northern sky tonight.",
    "The team celebrated their victory with a dinner in town.",
    "He carefully packed the fragile glasses in old newspapers.",
    "The garden looks beautiful now that the roses are in bloom.",
];

/// The generation prompt: one user turn (with SmolLM2's default system turn, as `vcos up`
/// renders it), asking for a reply longer than `--gen-tokens` so that EOS rarely cuts ours short.
const PROMPT: &str = "Explain in detail how a steam engine works, step by step, for a curious teenager.";

/// Options of `vcos bench inference`.
#[derive(Args, Debug)]
pub(crate) struct InferenceArgs {
    /// Runs of each measurement per side, alternating sides.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// CPU threads on both sides (ours: each model's pool and candle's shared pool; PyTorch:
    /// `torch.set_num_threads`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// New tokens per generation request (greedy).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    gen_tokens: u64,
    /// Sentences embedded per run (the 64 built-in ones, cycled).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    sentences: u64,
    /// Small sizes, one run: checks that everything works (figures not comparable).
    #[arg(long)]
    quick: bool,
    /// Skip the PyTorch peer.
    #[arg(long)]
    no_peer: bool,
    /// The peer's Python interpreter (with torch, transformers, sentence-transformers, gguf,
    /// accelerate); default: a venv the bench creates under target/bench-venv on first use.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The model cache (default: `$VCOS_MODELS_DIR`, else ~/.cache/vcos/models).
    #[arg(long)]
    models_dir: Option<PathBuf>,
}

pub(crate) fn run(mut args: InferenceArgs) -> anyhow::Result<()> {
    if args.quick {
        args.runs = 1;
        args.gen_tokens = args.gen_tokens.min(16);
        args.sentences = args.sentences.min(64);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build of vcos: its figures are not comparable (use --release)");
    }
    let threads = NonZeroUsize::new(usize::from(args.threads)).context("--threads")?;
    // candle's process-wide pool is sized once, from the environment: before any model loads.
    vcos_gpu_workers::generate::apply_cpu_thread_budget(threads).context("candle thread budget")?;
    let cache = ModelCache::resolve(args.models_dir.clone()).context("model cache")?;
    let embed_dir = cache.embedding().context("embedding model (run `vcos models install`)")?.config.parent().context("model dir")?.to_owned();
    let gguf = cache.generation().context("generation model (run `vcos models install`)")?.gguf;
    let messages = vec![ChatMessage::user(PROMPT)];
    let sentences: Vec<String> = (0..args.sentences as usize).map(|i| SENTENCES[i % SENTENCES.len()].to_owned()).collect();
    // Callers only await channels: the models run on the pools' own threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio")?;

    let mut peer_note = None;
    let mut peer = if args.no_peer {
        peer_note = Some("skipped (--no-peer)".to_owned());
        None
    } else {
        let config = json!({
            "threads": args.threads,
            "embed_dir": embed_dir,
            "gguf": gguf,
            "prompt": render_chatml(&messages, true),
            "sentences": SENTENCES.as_slice(),
        });
        match Peer::start(&args, &config) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("peer unavailable: {e:#}");
                peer_note = Some(format!("unavailable: {e:#}"));
                None
            }
        }
    };
    eprintln!("load average before the runs: {}", load_average());

    let mut report = Report::default();
    for (i, &concurrency) in CONCURRENCY.iter().enumerate() {
        let settings = InferenceSettings { threads, max_batch: concurrency, ..InferenceSettings::default() };
        let (inference, notes) = Inference::load(&cache, &settings);
        ensure!(notes.is_empty(), "models not served: {}", notes.join("; "));
        let (Some(pool), Some(chat)) = (inference.embeddings(), inference.chat()) else { bail!("models not served") };
        if i == 0 {
            for batch in [1, 32] {
                let label = format!("embeddings, batch {batch}");
                rt.block_on(embed(pool, &sentences[..batch.min(sentences.len())], batch))?; // warm-up
                if let Some(p) = peer.as_mut() {
                    p.ask(json!({"op": "embed", "batch": batch, "count": batch}))?;
                }
                let runs = alternate(&args, &label, &mut peer, |side| match side {
                    Side::Ours => rt.block_on(embed(pool, &sentences, batch)),
                    Side::Peer(p) => p.ask(json!({"op": "embed", "batch": batch, "count": sentences.len()})),
                })?;
                report.rows.push((label, "sentences/s", runs, Some(EMBED_TARGET)));
            }
        }
        let label = if concurrency == 1 { "generation, 1 stream".to_owned() } else { format!("generation, {concurrency} concurrent") };
        rt.block_on(generate(chat, &messages, concurrency, 4))?; // warm-up
        if let Some(p) = peer.as_mut() {
            p.ask(json!({"op": "generate", "concurrency": concurrency, "tokens": 4}))?;
        }
        let mut ttft = Vec::new();
        let mut prompt_tokens = 0;
        let mut short = 0;
        let runs = alternate(&args, &label, &mut peer, |side| match side {
            Side::Ours => {
                let g = rt.block_on(generate(chat, &messages, concurrency, args.gen_tokens as usize))?;
                ttft.extend(g.ttft_ms);
                prompt_tokens = g.prompt_tokens;
                short += g.short;
                Ok(g.tokens_per_s)
            }
            Side::Peer(p) => p.ask(json!({"op": "generate", "concurrency": concurrency, "tokens": args.gen_tokens})),
        })?;
        report.prompt_tokens = prompt_tokens;
        report.short += short;
        report.rows.push((label, "tokens/s", runs, (concurrency == 1).then_some(DECODE_TARGET)));
        ttft.sort_by(f64::total_cmp);
        report.ttft.push((concurrency, ttft));
    }
    report.peer = peer.as_ref().map(|p| p.ready.clone());
    report.peer_note = peer_note;
    drop(peer);
    report.print(&args);
    Ok(())
}

/// Which side a run measures.
enum Side<'a> {
    Ours,
    Peer(&'a mut Peer),
}

/// One series' runs, as rates (per second).
#[derive(Default)]
struct Runs {
    ours: Vec<f64>,
    peer: Vec<f64>,
    /// The 1-minute load average before each run.
    load_ours: Vec<f64>,
    load_peer: Vec<f64>,
}

/// `--runs` rounds of `measure`, ours and the peer's (if any), the side going first
/// alternating by round.
fn alternate(args: &InferenceArgs, label: &str, peer: &mut Option<Peer>, mut measure: impl FnMut(Side<'_>) -> anyhow::Result<f64>) -> anyhow::Result<Runs> {
    let mut runs = Runs::default();
    for round in 0..args.runs {
        for ours in if round % 2 == 0 { [true, false] } else { [false, true] } {
            let load = load_average().split_whitespace().next().and_then(|l| l.parse::<f64>().ok()).unwrap_or(f64::NAN);
            let (side, rate) = match (ours, peer.as_mut()) {
                (true, _) => ("v-COS", measure(Side::Ours)?),
                (false, Some(p)) => ("peer", measure(Side::Peer(p))?),
                (false, None) => continue,
            };
            eprintln!("round {}/{} {label:<28} {side:>5}: {rate:>8.1}/s  (load {load:.2} before)", round + 1, args.runs);
            let (rates, loads) = if ours { (&mut runs.ours, &mut runs.load_ours) } else { (&mut runs.peer, &mut runs.load_peer) };
            rates.push(rate);
            loads.push(load);
        }
    }
    Ok(runs)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// Embeds `texts` through the pool, `batch` texts a request, one request at a time;
/// sentences/s.
async fn embed(pool: &EmbedPool, texts: &[String], batch: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    for chunk in texts.chunks(batch) {
        pool.embed(chunk.to_vec()).await.context("embed")?;
    }
    Ok(texts.len() as f64 / start.elapsed().as_secs_f64())
}

/// One generation run.
struct GenRun {
    tokens_per_s: f64,
    /// Submit to first token, per request (ms).
    ttft_ms: Vec<f64>,
    prompt_tokens: usize,
    /// Requests that ended (EOS) before `tokens`.
    short: usize,
}

/// `concurrency` greedy requests of `tokens` new tokens submitted at once; generated tokens
/// summed over the wall time until the last one is done.
async fn generate(chat: &Chat, messages: &[ChatMessage], concurrency: usize, tokens: usize) -> anyhow::Result<GenRun> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut prompt_tokens = 0;
    for _ in 0..concurrency {
        let submitted = Instant::now();
        let (n, mut ticket) = chat.start(messages.to_vec(), SamplingParams::greedy(tokens)).context("submit")?;
        prompt_tokens = n;
        tasks.spawn(async move {
            let mut first = None;
            while let Some(event) = ticket.events.recv().await {
                match event {
                    GenEvent::Token(_) => {
                        first.get_or_insert_with(|| submitted.elapsed().as_secs_f64() * 1e3);
                    }
                    GenEvent::Text(_) => {}
                    GenEvent::Done(g) => return Ok((first.unwrap_or(f64::NAN), g.token_ids.len())),
                    GenEvent::Failed(e) => bail!("generation failed: {e}"),
                }
            }
            bail!("the generation stream ended without Done")
        });
    }
    let (mut ttft_ms, mut generated, mut short) = (Vec::new(), 0, 0);
    while let Some(done) = tasks.join_next().await {
        let (ttft, n) = done.context("generation task")??;
        ttft_ms.push(ttft);
        generated += n;
        short += usize::from(n < tokens);
    }
    Ok(GenRun { tokens_per_s: generated as f64 / start.elapsed().as_secs_f64(), ttft_ms, prompt_tokens, short })
}

// ---------------------------------------------------------------------------------------------
// The PyTorch peer

/// `inference_peer.py` running, models loaded.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its stderr (progress bars, warnings): shown when it fails.
    stderr: PathBuf,
    /// Its `ready` line: versions, threads, prompt length.
    ready: Value,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start(args: &InferenceArgs, config: &Value) -> anyhow::Result<Self> {
        let python = match &args.python {
            Some(p) => p.clone(),
            None => bench_venv()?,
        };
        let dir = tempfile::Builder::new().prefix("vcos-bench-inference-").tempdir().context("temporary directory")?;
        let script = dir.path().join("inference_peer.py");
        std::fs::write(&script, PEER_PY).with_context(|| format!("write {}", script.display()))?;
        let stderr = dir.path().join("peer.stderr");
        let threads = args.threads.to_string();
        eprintln!("peer: {} {} (loading both models, ~30 s)", python.display(), script.display());
        let mut child = Command::new(&python)
            .arg(&script)
            // Same thread budget as ours: BLAS/OpenMP pools and the HF tokenizers' rayon pool.
            .envs([("OMP_NUM_THREADS", threads.as_str()), ("MKL_NUM_THREADS", &threads), ("TOKENIZERS_PARALLELISM", "false")])
            // No hub is reachable: fail fast instead of retrying.
            .envs([("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).context("peer stderr file")?)
            .spawn()
            .with_context(|| format!("run {}", python.display()))?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("peer stdout")?);
        let mut peer = Self { child, stdin, stdout, stderr, ready: Value::Null, _dir: dir };
        peer.send(config)?;
        peer.ready = peer.receive("ready")?;
        eprintln!("peer ready: {}", peer.ready);
        Ok(peer)
    }

    /// Sends one request; its rate (items/s).
    fn ask(&mut self, request: Value) -> anyhow::Result<f64> {
        self.send(&request)?;
        let reply = self.receive(request["op"].as_str().unwrap_or_default())?;
        let (items, seconds) = (reply["items"].as_f64(), reply["seconds"].as_f64());
        match (items, seconds) {
            (Some(items), Some(seconds)) if seconds > 0.0 => Ok(items / seconds),
            _ => bail!("peer reply without items and seconds: {reply}"),
        }
    }

    fn send(&mut self, value: &Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{value}").and_then(|()| self.stdin.flush()).map_err(|e| self.failed(&format!("write to the peer: {e}")))
    }

    /// The next JSON line, which must have `op`; other lines are skipped.
    fn receive(&mut self, op: &str) -> anyhow::Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) => return Err(self.failed("the peer exited")),
                Ok(_) => {}
                Err(e) => return Err(self.failed(&format!("read from the peer: {e}"))),
            }
            let Ok(value) = serde_json::from_str::<Value>(line.trim()) else { continue };
            ensure!(value["op"] == op, "peer answered {value}, expected op {op}");
            return Ok(value);
        }
    }

    /// `what`, with the tail of the peer's stderr.
    fn failed(&mut self, what: &str) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow::anyhow!("{what}; its stderr ends with:\n{}", tail.join("\n"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The interpreter of target/bench-venv, created (python3 -m venv, then pip from PyPI) on first
/// use; a marker file says the install finished.
fn bench_venv() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".vcos-bench-ready");
    if ready.exists() {
        return Ok(python);
    }
    eprintln!("creating {} and installing {} from PyPI (several GB, minutes)", venv.display(), PEER_PACKAGES.join(" "));
    let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().context("run python3 -m venv")?;
    ensure!(status.success(), "python3 -m venv {} failed ({status})", venv.display());
    let status = Command::new(&python).args(["-m", "pip", "install"]).args(PEER_PACKAGES).status().context("run pip")?;
    ensure!(status.success(), "pip install {} failed ({status})", PEER_PACKAGES.join(" "));
    std::fs::write(&ready, PEER_PACKAGES.join("\n")).with_context(|| format!("write {}", ready.display()))?;
    Ok(python)
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    /// Label, unit, runs, target ratio against the peer.
    rows: Vec<(String, &'static str, Runs, Option<f64>)>,
    /// Per concurrency: time to first token of every request of every run (ms, sorted).
    ttft: Vec<(usize, Vec<f64>)>,
    prompt_tokens: usize,
    /// Our requests that stopped (EOS) before `--gen-tokens`.
    short: usize,
    peer: Option<Value>,
    peer_note: Option<String>,
}

impl Report {
    fn print(&self, args: &InferenceArgs) {
        let cell = |v: &[f64]| spread(v).map_or("n/a".to_owned(), |(m, lo, hi)| format!("{} [{}-{}]", fmt(m), fmt(lo), fmt(hi)));
        let median = |v: &[f64]| spread(v).map(|(m, ..)| m);
        println!();
        println!(
            "v-COS: candle on CPU through `vcos up`'s pools (EmbedPool; GenPool with max_batch = the concurrency), {} thread(s); \
             peer: PyTorch (sentence-transformers; transformers on the same Q8_0 GGUF dequantised to fp32), {} thread(s); \
             same model files; {} runs per side, alternating, median [min-max]",
            args.threads, args.threads, args.runs
        );
        println!(
            "embeddings: {} sentences a run (~12 tokens each), one caller; generation: greedy, {} new tokens a request, prompt of {} tokens (ChatML), all requests at once",
            args.sentences, args.gen_tokens, self.prompt_tokens
        );
        println!("{:<40} {:>22} {:>22} {:>8} {:>8}  verdict", "metric", "v-COS", "peer (PyTorch)", "ratio", "target");
        for (label, unit, runs, target) in &self.rows {
            let ratio = match (median(&runs.ours), median(&runs.peer)) {
                (Some(o), Some(p)) if p > 0.0 => Some(o / p),
                _ => None,
            };
            println!(
                "{:<40} {:>22} {:>22} {:>8} {:>8}  {}",
                format!("{label} ({unit})"),
                cell(&runs.ours),
                cell(&runs.peer),
                ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
                target.map_or("-".to_owned(), |t| format!(">={t:.2}x")),
                match (ratio, target) {
                    (Some(r), Some(t)) => if r >= *t { "met" } else { "MISSED" },
                    _ => "-",
                }
            );
        }
        let ours = |prefix: &str| self.rows.iter().find(|(l, ..)| l.starts_with(prefix)).and_then(|(_, _, r, _)| median(&r.ours));
        if let (Some(single), Some(batched)) = (ours("generation, 1 stream"), ours("generation, 8 concurrent")) {
            let speedup = batched / single;
            println!(
                "8 concurrent vs our single stream: {speedup:.2}x  (target >= {BATCH8_SPEEDUP_TARGET:.0}x): {}",
                if speedup >= BATCH8_SPEEDUP_TARGET { "met" } else { "MISSED" }
            );
        }
        println!();
        println!("time to first token, v-COS (submit to the first Token event; every request of every run)");
        println!("{:<40} {:>10} {:>10} {:>10}", "concurrency", "p50 ms", "p99 ms", "requests");
        for (concurrency, ms) in &self.ttft {
            println!("{:<40} {:>10.1} {:>10.1} {:>10}", concurrency, pct(ms, 0.5), pct(ms, 0.99), ms.len());
        }
        let loads = |side: fn(&Runs) -> &Vec<f64>| self.rows.iter().flat_map(|(_, _, r, _)| side(r).iter().copied()).collect::<Vec<_>>();
        let load_cell = |v: &[f64]| spread(v).map_or("n/a".to_owned(), |(m, lo, hi)| format!("{m:.2} [{lo:.2}-{hi:.2}]"));
        println!();
        println!(
            "1-minute load average before the runs ({} cores): v-COS {}, peer {}",
            std::thread::available_parallelism().map_or(0, NonZeroUsize::get),
            load_cell(&loads(|r| &r.load_ours)),
            load_cell(&loads(|r| &r.load_peer))
        );
        if self.short > 0 {
            println!("note: {} of our requests hit EOS before {} tokens (rates count the tokens generated)", self.short, args.gen_tokens);
        }
        match (&self.peer, &self.peer_note) {
            (Some(ready), _) => {
                println!(
                    "peer: torch {}, transformers {}, sentence-transformers {}, {} thread(s), prompt of {} tokens{}",
                    ready["torch"].as_str().unwrap_or("?"),
                    ready["transformers"].as_str().unwrap_or("?"),
                    ready["sentence_transformers"].as_str().unwrap_or("?"),
                    ready["threads"],
                    ready["prompt_tokens"],
                    if ready["prompt_tokens"].as_u64() == Some(self.prompt_tokens as u64) { "" } else { " (DIFFERS from ours)" }
                );
            }
            (None, Some(note)) => println!("peer: {note}"),
            (None, None) => {}
        }
        println!("ratios are of medians on a shared machine: other work moves both sides, unevenly; compare within one run");
    }
}

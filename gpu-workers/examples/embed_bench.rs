//! Embedding throughput: `cargo run --release -p vcos-gpu-workers --example embed_bench -- THREADS BATCH [SECONDS]`.
//!
//! Sentences of about 12 tokens (as in shared/models.md). candle's process-wide barrier
//! pool follows `CANDLE_NUM_THREADS` (set it to THREADS for a like-for-like run; see
//! `vcos_gpu_workers::embed::threads`).

use std::time::{Duration, Instant};

use vcos_gpu_workers::embed::{threads, EmbedConfig, Embedder};
use vcos_gpu_workers::models::ModelCache;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads_n: usize = args.first().map_or(Ok(1), |s| s.parse())?;
    let batch: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let seconds: f64 = args.get(2).map_or(Ok(5.0), |s| s.parse())?;
    let cache = ModelCache::resolve(None)?;
    let embedder = Embedder::from_cache(&cache, EmbedConfig { threads: threads_n, ..EmbedConfig::default() })?;
    let subjects = ["The actor", "A supervisor", "Every swarm", "The canon", "One worker", "This node", "A tenant", "The router"];
    let verbs = ["restarts", "records", "forwards", "rejects", "elects", "embeds", "measures", "replays"];
    let texts: Vec<String> = (0..batch)
        .map(|i| format!("{} {} the message number {i} after a short pause.", subjects[i % 8], verbs[(i / 8) % 8]))
        .collect();
    embedder.embed(&texts)?; // warm-up
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        embedder.embed(&texts)?;
        done += texts.len();
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    println!(
        "threads {threads_n} (candle shared pool {}, gemm split {}), batch {batch}: {rate:.1} sentences/s",
        threads::shared_pool_threads(),
        threads::gemm_split()
    );
    Ok(())
}

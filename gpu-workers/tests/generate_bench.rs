//! Generation throughput (ignored by default; run in release):
//!
//! ```text
//! VCOS_GEN_THREADS=1 cargo test --release -p vcos-gpu-workers --test generate_bench -- --ignored --nocapture
//! ```
//!
//! Single stream: decode tokens per second after the prompt. Batched: 8 different prompts
//! decoding together through the continuous-batching engine, total tokens per second.
//!
//! `decode_step_kernels` compares the Q8_0 matmul kernels (candle's and our weight-stationary
//! one) on model-level decode steps at batch 1, 8 and 32, several runs each, alternating:
//!
//! ```text
//! VCOS_GEN_THREADS=1 cargo test --release -p vcos-gpu-workers --test generate_bench decode_step_kernels -- --ignored --nocapture
//! ```
//! The model is found as in `tests/generate.rs` (model cache, else `VCOS_SMOLLM2_GGUF`).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant;

use vcos_gpu_workers::generate::{
    ChatMessage, CpuMatmul, EngineEvent, EngineLimits, GeneratorConfig, Prompt, SamplingParams,
    TextGenerator, WeightPrecision,
};
use vcos_gpu_workers::models::ModelCache;

fn model_path() -> Option<PathBuf> {
    if let Ok(files) = ModelCache::resolve(None).and_then(|c| c.generation()) {
        return Some(files.gguf);
    }
    std::env::var_os("VCOS_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

const QUESTIONS: [&str; 8] = [
    "Tell me a long story about a robot who learns to paint.",
    "Explain how a steam engine works, step by step.",
    "Write a poem about autumn leaves.",
    "What are the main causes of the French Revolution?",
    "Describe the water cycle in detail.",
    "Give me ten ideas for a birthday party.",
    "How do vaccines train the immune system?",
    "Summarise the plot of a detective novel you invent.",
];

#[test]
#[ignore = "throughput measurement; run in release with --ignored"]
fn generation_throughput() {
    let Some(path) = model_path() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no SmolLM2 GGUF (model cache or VCOS_SMOLLM2_GGUF) !!!!!!!!\n"
        );
        return;
    };
    let threads = std::env::var("VCOS_GEN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .and_then(NonZeroUsize::new)
        .unwrap_or(NonZeroUsize::MIN);
    let tokens: usize = std::env::var("VCOS_GEN_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    // VCOS_GEN_PRECISION=f32: dequantized weights (f32 gemm) instead of the quantized kernels.
    let precision = match std::env::var("VCOS_GEN_PRECISION").as_deref() {
        Ok("f32") => WeightPrecision::DequantizedF32,
        _ => WeightPrecision::Quantized,
    };
    eprintln!("model {} ({precision:?})", path.display());
    let g = TextGenerator::load(
        &path,
        GeneratorConfig {
            threads,
            precision,
            limits: EngineLimits {
                max_batch: 8,
                prefill_chunk: 512,
            },
            ..GeneratorConfig::default()
        },
    )
    .expect("load");
    // Never stop early: measure exactly `tokens` decode steps per sequence.
    let params = |seed| SamplingParams {
        max_tokens: tokens,
        temperature: 0.7,
        top_p: 0.95,
        seed,
        ..SamplingParams::default()
    };
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| {
            g.encode_prompt(&Prompt::Chat(vec![ChatMessage::user(*q)]))
                .expect("encode")
        })
        .collect();

    // Warm-up (first-use allocations, weight repacking).
    let mut e = g.engine().expect("engine");
    e.submit_tokens(prompts[0].clone(), SamplingParams::greedy(4))
        .expect("submit");
    e.run_to_completion().expect("warm-up");

    // Model level: exactly `batch` sequences for `tokens` steps (no EOS shrinking the batch).
    for batch in [1usize, 2, 4, 8] {
        let model = g.model();
        let mut caches: Vec<_> = prompts
            .iter()
            .take(batch)
            .map(|p| model.new_cache(p.len() + tokens + 1).expect("cache"))
            .collect();
        let mut next: Vec<u32> = Vec::new();
        for (c, p) in caches.iter_mut().zip(&prompts) {
            let logits: Vec<f32> = g
                .threads()
                .run(|| model.prefill(c, p))
                .expect("prefill")
                .to_vec1()
                .expect("vec");
            next.push(vcos_gpu_workers::generate::sampling::argmax(&logits));
        }
        let t0 = Instant::now();
        for _ in 0..tokens {
            let mut b: Vec<_> = caches.iter_mut().zip(&next).map(|(c, &t)| (c, t)).collect();
            let logits = g.threads().run(|| model.decode(&mut b)).expect("decode");
            let rows: Vec<Vec<f32>> = logits.to_vec2().expect("rows");
            next = rows
                .iter()
                .map(|r| vcos_gpu_workers::generate::sampling::argmax(r))
                .collect();
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "model-level threads={threads} batch={batch}: {tokens} steps in {dt:.2} s = {:.1} tok/s total, {:.1} tok/s per sequence",
            (tokens * batch) as f64 / dt,
            tokens as f64 / dt
        );
    }

    // Engine level (sampling, detokenizing, EOS may end sequences early).
    for batch in [1usize, 8] {
        let mut e = g.engine().expect("engine");
        for (i, p) in prompts.iter().take(batch).enumerate() {
            e.submit_tokens(p.clone(), params(i as u64))
                .expect("submit");
        }
        // First step admits and prefills everyone; time decoding from then on.
        let t0 = Instant::now();
        let mut generated = 0usize;
        for ev in e.step().expect("prefill step") {
            if matches!(ev, EngineEvent::Token { .. }) {
                generated += 1;
            }
        }
        let prefill = t0.elapsed();
        let t1 = Instant::now();
        let mut decoded = 0usize;
        let mut eos = 0usize;
        while !e.is_idle() {
            for ev in e.step().expect("step") {
                match ev {
                    EngineEvent::Token { .. } => decoded += 1,
                    EngineEvent::Finished { output, .. } => {
                        eos += usize::from(
                            output.finish == vcos_gpu_workers::generate::FinishReason::Eos,
                        )
                    }
                }
            }
        }
        let dt = t1.elapsed().as_secs_f64();
        eprintln!(
            "threads={threads} batch={batch}: prefill {:.0} ms ({} prompt tokens); decode {decoded} tokens in {dt:.2} s = {:.1} tok/s total, {:.1} tok/s per sequence ({eos} ended by EOS; first tokens {generated})",
            prefill.as_secs_f64() * 1e3,
            prompts.iter().take(batch).map(Vec::len).sum::<usize>(),
            decoded as f64 / dt,
            decoded as f64 / dt / batch as f64,
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, Linux), if known.
fn thread_on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median and range of `xs`.
fn summary(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

#[test]
#[ignore = "throughput measurement; run in release with --ignored"]
fn decode_step_kernels() {
    let Some(path) = model_path() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no SmolLM2 GGUF (model cache or VCOS_SMOLLM2_GGUF) !!!!!!!!\n"
        );
        return;
    };
    let threads = NonZeroUsize::new(env_usize("VCOS_GEN_THREADS", 1)).unwrap_or(NonZeroUsize::MIN);
    let steps = env_usize("VCOS_GEN_TOKENS", 32);
    let runs = env_usize("VCOS_GEN_RUNS", 3);
    // VCOS_GEN_BATCHES=1,8 and VCOS_GEN_KERNELS=auto (or candle) narrow the grid (profiling).
    let batches: Vec<usize> = std::env::var("VCOS_GEN_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .filter(|b: &Vec<usize>| !b.is_empty() && !b.contains(&0))
        .unwrap_or_else(|| vec![1, 8, 32]);
    let kernels: Vec<CpuMatmul> = match std::env::var("VCOS_GEN_KERNELS").as_deref() {
        Ok("auto") => vec![CpuMatmul::Auto],
        Ok("candle") => vec![CpuMatmul::Candle],
        _ => vec![CpuMatmul::Candle, CpuMatmul::Auto],
    };
    let gens: Vec<TextGenerator> = kernels
        .iter()
        .map(|&cpu_matmul| {
            TextGenerator::load(
                &path,
                GeneratorConfig {
                    threads,
                    cpu_matmul,
                    ..GeneratorConfig::default()
                },
            )
            .expect("load")
        })
        .collect();
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| {
            gens[0]
                .encode_prompt(&Prompt::Chat(vec![ChatMessage::user(*q)]))
                .expect("encode")
        })
        .collect();
    // tokens/s per (kernel, batch), one entry per run.
    let mut rates = vec![vec![Vec::new(); batches.len()]; kernels.len()];
    // The same, per second the decoding thread was on a CPU (threads = 1: all the work runs on
    // the pool's one thread), which time-slicing by other processes does not move.
    let mut cpu_rates = rates.clone();
    for run in 0..=runs {
        for (bi, &batch) in batches.iter().enumerate() {
            for (ki, g) in gens.iter().enumerate() {
                let model = g.model();
                let mut caches: Vec<_> = (0..batch)
                    .map(|i| {
                        let p = &prompts[i % prompts.len()];
                        model.new_cache(p.len() + steps + 1).expect("cache")
                    })
                    .collect();
                let mut next: Vec<u32> = Vec::new();
                for (i, c) in caches.iter_mut().enumerate() {
                    let p = &prompts[i % prompts.len()];
                    let logits: Vec<f32> = g
                        .threads()
                        .run(|| model.prefill(c, p))
                        .expect("prefill")
                        .to_vec1()
                        .expect("vec");
                    next.push(vcos_gpu_workers::generate::sampling::argmax(&logits));
                }
                let t0 = Instant::now();
                let mut on_cpu_ns = 0u64;
                for _ in 0..steps {
                    let mut b: Vec<_> =
                        caches.iter_mut().zip(&next).map(|(c, &t)| (c, t)).collect();
                    let (logits, cpu) = g.threads().run(|| {
                        let c0 = thread_on_cpu_ns();
                        let logits = model.decode(&mut b);
                        (logits, thread_on_cpu_ns().zip(c0).map(|(c1, c0)| c1 - c0))
                    });
                    let logits = logits.expect("decode");
                    on_cpu_ns += cpu.unwrap_or(0);
                    let rows: Vec<Vec<f32>> = logits.to_vec2().expect("rows");
                    next = rows
                        .iter()
                        .map(|r| vcos_gpu_workers::generate::sampling::argmax(r))
                        .collect();
                }
                let rate = (steps * batch) as f64 / t0.elapsed().as_secs_f64();
                let cpu_rate = (steps * batch) as f64 / (on_cpu_ns as f64 * 1e-9);
                // Run 0 warms up (first-use allocations, candle's lazy repacking).
                if run > 0 {
                    eprintln!(
                        "run {run} {:?} batch={batch}: {rate:.1} tok/s wall, {cpu_rate:.1} tok/s of decode-thread CPU time",
                        kernels[ki]
                    );
                    rates[ki][bi].push(rate);
                    cpu_rates[ki][bi].push(cpu_rate);
                }
            }
        }
    }
    eprintln!("threads={threads}, {steps} decode steps a run, {runs} runs; tokens/s total: median [min-max]");
    for (what, table) in [
        ("wall time", &mut rates),
        ("decode-thread CPU time", &mut cpu_rates),
    ] {
        eprintln!("by {what}:");
        for (ki, k) in kernels.iter().enumerate() {
            let mut single = f64::NAN;
            for (bi, &batch) in batches.iter().enumerate() {
                let (med, lo, hi) = summary(&mut table[ki][bi]);
                if batch == 1 {
                    single = med;
                }
                eprintln!(
                    "  {k:?} batch={batch}: {med:.1} [{lo:.1}-{hi:.1}] tok/s = {:.2}x its single stream",
                    med / single
                );
            }
        }
    }
}

/// The logits of the first answer token to "What is the capital of France?" with candle's
/// kernel and ours: equal, since ours computes candle's arithmetic (diagnostic; the
/// reference's own top-2 gap there is 0.14 and candle's 0.014, so any change of f32 rounding
/// in the quantized path can flip this greedy answer).
#[test]
#[ignore = "diagnostic; run in release with --ignored"]
fn first_token_logits_by_kernel() {
    let Some(path) = model_path() else { return };
    for cpu_matmul in [CpuMatmul::Candle, CpuMatmul::Auto] {
        let g = TextGenerator::load(
            &path,
            GeneratorConfig {
                cpu_matmul,
                ..GeneratorConfig::default()
            },
        )
        .expect("load");
        let ids = g
            .encode_prompt(&Prompt::Chat(vec![ChatMessage::user(
                "What is the capital of France?",
            )]))
            .expect("encode");
        let mut cache = g.model().new_cache(ids.len()).expect("cache");
        let logits: Vec<f32> = g
            .threads()
            .run(|| g.model().prefill(&mut cache, &ids))
            .expect("prefill")
            .to_vec1()
            .expect("vec");
        eprintln!(
            "{cpu_matmul:?}: logit[504] = {}, logit[60] = {}, logit[15319] = {}",
            logits[504], logits[60], logits[15319]
        );
    }
}

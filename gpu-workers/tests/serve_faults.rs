//! The pools under seeded faults: stand-in models whose latency, failures, panics and hangs
//! come from a seed, many concurrent callers, and the pools' real batching, supervision and
//! watchdog code. Checked for every seed: every request is answered exactly once (a result or
//! a clear error, never a hang, never twice), successful answers are the caller's own, and no
//! batch exceeds its bound. `VCOS_SERVE_FAULT_SEEDS=N` runs more seeds (default 4).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_gpu_workers::generate::{EngineEvent, FinishReason, GenerateError, Generation, SamplingParams};
use vcos_actors::BoxFuture;
use vcos_gpu_workers::serve::{
    EmbedBackend, EmbedOutput, EmbedPool, EmbedPoolConfig, Driver, EngineBody, EngineRunner, GenEvent, GenPool, GenPoolConfig, ServeError, StepEngine,
};

const HANG_AFTER: Duration = Duration::from_millis(300);
const HANG: Duration = Duration::from_millis(900);
const MAX_BATCH: usize = 6;

fn seeds() -> u64 {
    std::env::var("VCOS_SERVE_FAULT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4)
}

/// Embeds text `i` as `[i]`; each call draws its fate from the seeded RNG.
struct FaultyEmbedder {
    rng: Mutex<ChaCha8Rng>,
    largest_batch: Mutex<usize>,
}

impl EmbedBackend for FaultyEmbedder {
    fn model(&self) -> &str {
        "faulty-embed"
    }
    fn dim(&self) -> usize {
        1
    }
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }
    fn check(&self, _texts: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        Box::pin(async move {
            {
                let mut largest = self.largest_batch.lock().unwrap();
                *largest = (*largest).max(texts.len());
            }
            let fate: u32 = self.rng.lock().unwrap().random_range(0..100);
            match fate {
                0..=7 => return Err("seeded failure".into()),
                8..=11 => panic!("seeded panic"),
                12..=13 => std::thread::sleep(HANG),
                _ => std::thread::sleep(Duration::from_millis(u64::from(fate % 4))),
            }
            Ok(EmbedOutput { vectors: texts.iter().map(|t| vec![t.parse::<f32>().unwrap_or(-1.0)]).collect(), tokens: vec![1; texts.len()] })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_under_seeded_faults_answer_every_caller_once() {
    let mut faults_seen = 0;
    for seed in 0..seeds() {
        let backend = Arc::new(FaultyEmbedder { rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)), largest_batch: Mutex::new(0) });
        let config = EmbedPoolConfig { max_batch: MAX_BATCH, max_wait: Duration::from_millis(2), queue: 64, hang_after: HANG_AFTER, driver: Driver::Threads };
        let pool = EmbedPool::start(backend.clone(), config).expect("pool");
        let calls: Vec<_> = (0..120)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { (i, tokio::time::timeout(Duration::from_secs(20), pool.embed(vec![i.to_string()])).await) })
            })
            .collect();
        let (mut ok, mut failed) = (0, 0);
        for call in calls {
            let (i, answer) = call.await.expect("caller task");
            match answer.unwrap_or_else(|_| panic!("seed {seed}: request {i} hung")) {
                Ok(out) => {
                    assert_eq!(out.vectors, vec![vec![i as f32]], "seed {seed}: request {i} got another's vector");
                    ok += 1;
                }
                Err(ServeError::WorkerFailed { .. } | ServeError::Overloaded { .. }) => failed += 1,
                Err(e) => panic!("seed {seed}: unexpected error {e}"),
            }
        }
        assert_eq!(ok + failed, 120);
        faults_seen += failed;
        assert!(ok > 0, "seed {seed}: the pool kept serving");
        assert!(*backend.largest_batch.lock().unwrap() <= MAX_BATCH, "seed {seed}: a batch over its bound");
    }
    assert!(faults_seen > 0, "the seeds planted faults that reached callers");
}

/// Emits `len` tokens per request; each step draws its fate from the seeded RNG.
struct FaultyEngine {
    rng: Arc<Mutex<ChaCha8Rng>>,
    waiting: VecDeque<(u64, usize)>,
    active: Vec<(u64, usize, usize)>,
    next: u64,
    largest_batch: Arc<Mutex<usize>>,
}

impl StepEngine for FaultyEngine {
    fn submit(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        self.next += 1;
        self.waiting.push_back((self.next, params.max_tokens));
        Ok(self.next)
    }
    fn cancel(&mut self, id: u64) {
        self.active.retain(|a| a.0 != id);
        self.waiting.retain(|w| w.0 != id);
    }
    fn step(&mut self) -> BoxFuture<'_, Result<Vec<EngineEvent>, GenerateError>> {
        Box::pin(async move {
            while self.active.len() < MAX_BATCH {
                let Some((id, len)) = self.waiting.pop_front() else { break };
                self.active.push((id, len, 0));
            }
            {
                let mut largest = self.largest_batch.lock().unwrap();
                *largest = (*largest).max(self.active.len());
            }
            let fate: u32 = self.rng.lock().unwrap().random_range(0..400);
            match fate {
                0..=3 => return Err(GenerateError::InvalidConfig("seeded failure".into())),
                4..=5 => panic!("seeded panic"),
                6 => std::thread::sleep(HANG),
                _ => {}
            }
            let mut events = Vec::new();
            for a in &mut self.active {
                a.2 += 1;
                events.push(EngineEvent::Token { request: a.0, token: a.2 as u32, text: "x".into() });
                if a.2 == a.1 {
                    let output = Generation { token_ids: (1..=a.2 as u32).collect(), text: "x".repeat(a.2), finish: FinishReason::Length, prompt_tokens: 1 };
                    events.push(EngineEvent::Finished { request: a.0, text: String::new(), output });
                }
            }
            self.active.retain(|a| a.2 < a.1);
            Ok(events)
        })
    }
    fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_under_seeded_faults_answers_every_caller_once() {
    let mut faults_seen = 0;
    for seed in 0..seeds() {
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
        let largest = Arc::new(Mutex::new(0));
        let (r, l) = (rng.clone(), largest.clone());
        let runner: EngineRunner = Arc::new(move |body: EngineBody| {
            let mut engine = FaultyEngine { rng: r.clone(), waiting: VecDeque::new(), active: Vec::new(), next: 0, largest_batch: l.clone() };
            Box::pin(async move { Ok(body(&mut engine).await) })
        });
        let pool = GenPool::start(GenPoolConfig { model: "faulty-gen".into(), queue: 64, hang_after: HANG_AFTER, context: None, driver: Driver::Threads }, runner).expect("pool");
        let mut callers = Vec::new();
        for i in 0..60usize {
            let len = 1 + (i * 7) % 23;
            let ticket = match pool.submit(vec![1], SamplingParams::greedy(len)) {
                Ok(ticket) => ticket,
                Err(ServeError::Overloaded { .. }) => continue,
                Err(e) => panic!("seed {seed}: {e}"),
            };
            callers.push(tokio::spawn(async move {
                let mut events = ticket.events;
                let (mut text, mut ends) = (String::new(), Vec::new());
                while let Some(event) = tokio::time::timeout(Duration::from_secs(20), events.recv()).await.unwrap_or_else(|_| panic!("request {i} hung")) {
                    match event {
                        GenEvent::Token(t) | GenEvent::Text(t) => text.push_str(&t),
                        GenEvent::Done(g) => ends.push(Ok(g)),
                        GenEvent::Failed(e) => ends.push(Err(e)),
                    }
                }
                (i, len, text, ends)
            }));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut done = 0;
        for caller in callers {
            let (i, len, text, ends) = caller.await.expect("caller task");
            assert_eq!(ends.len(), 1, "seed {seed}: request {i} ended {} times: {ends:?}", ends.len());
            match &ends[0] {
                Ok(g) => {
                    assert_eq!((text.len(), g.text.len()), (len, len), "seed {seed}: request {i} got its own tokens");
                    done += 1;
                }
                Err(ServeError::WorkerFailed { .. }) => faults_seen += 1,
                Err(e) => panic!("seed {seed}: unexpected error {e}"),
            }
        }
        assert!(done > 0, "seed {seed}: the pool kept serving");
        assert!(*largest.lock().unwrap() <= MAX_BATCH, "seed {seed}: a batch over its bound");
    }
    assert!(faults_seen > 0, "the seeds planted faults that reached callers");
}

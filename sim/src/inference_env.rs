//! Simulated models: what the inference scenario puts behind the production pools
//! (`vcos_gpu_workers::serve`). Each model call's fate comes from a seeded RNG: quick, slow,
//! failing, panicking, hung for a while or hung for good. Their output is a pure function of
//! the input, so a caller can tell its own answer from another's. They also record what the
//! pools asked of them (batch sizes, live sequences), for the bound checks.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_actors::BoxFuture;
use vcos_gpu_workers::generate::{EngineEvent, FinishReason, GenerateError, Generation, SamplingParams};
use vcos_gpu_workers::serve::{EmbedBackend, EmbedOutput, EngineBody, EngineRunner, StepEngine};

use crate::trace::Trace;

/// What one model call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Answers after this many milliseconds.
    Answer(u64),
    /// Returns an error after this many milliseconds.
    Fail(u64),
    /// Panics.
    Panic,
    /// Returns (an answer) only after this many milliseconds: past the pool's `hang_after`.
    Stall(u64),
    /// Never returns.
    Hang,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answer(ms) => write!(f, "answer in {ms} ms"),
            Self::Fail(ms) => write!(f, "fail in {ms} ms"),
            Self::Panic => f.write_str("panic"),
            Self::Stall(ms) => write!(f, "stall {ms} ms"),
            Self::Hang => f.write_str("hang"),
        }
    }
}

/// Fates per thousand calls, and the latencies a call takes.
#[derive(Debug, Clone, Copy)]
pub struct FateMix {
    /// Quick answers take this many milliseconds (a range).
    pub quick_ms: (u64, u64),
    /// Per mille slow (0.2–1.5 s).
    pub slow: u32,
    /// Per mille failing.
    pub fail: u32,
    /// Per mille panicking.
    pub panic: u32,
    /// Per mille stalled (20 s, then an answer).
    pub stall: u32,
    /// Per mille hung for good.
    pub hang: u32,
}

/// Where fates come from; `heal` makes every later call quick.
pub struct Fates {
    rng: Mutex<ChaCha8Rng>,
    mix: FateMix,
    healed: AtomicBool,
}

impl Fates {
    /// Fates drawn from `seed`.
    pub fn new(seed: u64, mix: FateMix) -> Arc<Self> {
        Arc::new(Self { rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)), mix, healed: AtomicBool::new(false) })
    }

    /// From now on every call answers quickly.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    fn draw(&self) -> Fate {
        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let quick = rng.random_range(self.mix.quick_ms.0..=self.mix.quick_ms.1);
        if self.healed.load(Ordering::SeqCst) {
            return Fate::Answer(quick);
        }
        let m = self.mix;
        let roll = rng.random_range(0..1_000u32);
        let mut edge = m.slow;
        if roll < edge {
            return Fate::Answer(rng.random_range(200..1_500));
        }
        edge += m.fail;
        if roll < edge {
            return Fate::Fail(quick);
        }
        edge += m.panic;
        if roll < edge {
            return Fate::Panic;
        }
        edge += m.stall;
        if roll < edge {
            return Fate::Stall(20_000);
        }
        edge += m.hang;
        if roll < edge {
            return Fate::Hang;
        }
        Fate::Answer(quick)
    }
}

/// Waits out a fate; `Err` for a failure, panics for a panic, never returns for a hang.
async fn suffer(fate: Fate) -> Result<(), String> {
    match fate {
        Fate::Answer(ms) | Fate::Stall(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        Fate::Fail(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Err("simulated model failure".to_owned())
        }
        Fate::Panic => panic!("simulated model panic"),
        Fate::Hang => std::future::pending().await,
    }
}

/// The vector of a text: its length and a checksum of its bytes.
#[allow(clippy::cast_precision_loss)]
pub fn embedding_of(text: &str) -> Vec<f32> {
    let sum = text.bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b))) % 100_000;
    vec![text.len() as f32, sum as f32]
}

/// A simulated embedding model.
pub struct SimEmbedder {
    fates: Arc<Fates>,
    max_batch: usize,
    /// Most texts seen in one call.
    pub largest_call: Mutex<usize>,
    trace: Trace,
}

impl SimEmbedder {
    /// A model taking at most `max_batch` texts a call.
    pub fn new(fates: Arc<Fates>, max_batch: usize, trace: Trace) -> Self {
        Self { fates, max_batch, largest_call: Mutex::new(0), trace }
    }
}

impl EmbedBackend for SimEmbedder {
    fn model(&self) -> &str {
        "sim-embed"
    }

    fn dim(&self) -> usize {
        2
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn check(&self, texts: &[String]) -> Result<(), String> {
        match texts.iter().position(String::is_empty) {
            Some(i) => Err(format!("input {i} is empty")),
            None => Ok(()),
        }
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        let fate = self.fates.draw();
        {
            let mut largest = self.largest_call.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *largest = (*largest).max(texts.len());
        }
        self.trace.record(format!("embed call: {} texts, {fate}", texts.len()));
        Box::pin(async move {
            suffer(fate).await?;
            Ok(EmbedOutput { vectors: texts.iter().map(|t| embedding_of(t)).collect(), tokens: texts.iter().map(String::len).collect() })
        })
    }
}

/// The text of token `n` (from 1) of a reply to a prompt starting with `first`.
pub fn token_text(first: u32, n: usize) -> String {
    format!("{first}.{n} ")
}

/// The whole reply to a prompt starting with `first`, `tokens` long.
pub fn reply_text(first: u32, tokens: usize) -> String {
    (1..=tokens).map(|n| token_text(first, n)).collect()
}

/// What every engine the runner builds reports to the checks.
#[derive(Default)]
pub struct EngineRecord {
    /// Most sequences decoding together in one step.
    pub largest_step: usize,
    /// Engines built.
    pub engines: u64,
    /// Requests the newest engine still holds (queued or decoding): (engine, request).
    pub live: BTreeSet<(u64, u64)>,
}

/// A simulated continuous-batching engine: at most `max_batch` sequences decode together; a
/// request's reply is `max_tokens` tokens long.
struct SimEngine {
    /// Which engine this is (from 1).
    number: u64,
    fates: Arc<Fates>,
    record: Arc<Mutex<EngineRecord>>,
    trace: Trace,
    max_batch: usize,
    context: usize,
    next: u64,
    waiting: VecDeque<Seq>,
    active: Vec<Seq>,
}

struct Seq {
    id: u64,
    first: u32,
    prompt: usize,
    max: usize,
    done: usize,
}

impl SimEngine {
    fn record(&self) -> std::sync::MutexGuard<'_, EngineRecord> {
        self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StepEngine for SimEngine {
    fn submit(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64, GenerateError> {
        params.validate()?;
        let Some(&first) = prompt.first() else { return Err(GenerateError::EmptyPrompt) };
        if prompt.len() >= self.context {
            return Err(GenerateError::PromptTooLong { prompt_tokens: prompt.len(), context: self.context });
        }
        self.next += 1;
        let max = params.max_tokens.min(self.context - prompt.len()).max(1);
        self.waiting.push_back(Seq { id: self.next, first, prompt: prompt.len(), max, done: 0 });
        let key = (self.number, self.next);
        self.record().live.insert(key);
        Ok(self.next)
    }

    fn cancel(&mut self, id: u64) {
        self.waiting.retain(|s| s.id != id);
        self.active.retain(|s| s.id != id);
        let key = (self.number, id);
        self.record().live.remove(&key);
    }

    fn step(&mut self) -> BoxFuture<'_, Result<Vec<EngineEvent>, GenerateError>> {
        Box::pin(async move {
            while self.active.len() < self.max_batch {
                let Some(seq) = self.waiting.pop_front() else { break };
                self.active.push(seq);
            }
            let fate = self.fates.draw();
            {
                let running = self.active.len();
                let mut record = self.record();
                record.largest_step = record.largest_step.max(running);
            }
            if !matches!(fate, Fate::Answer(_)) {
                self.trace.record(format!("gen step: {} running, {fate}", self.active.len()));
            }
            suffer(fate).await.map_err(GenerateError::InvalidConfig)?;
            let mut events = Vec::new();
            for seq in &mut self.active {
                seq.done += 1;
                let token = u32::try_from(seq.done).unwrap_or(u32::MAX);
                events.push(EngineEvent::Token { request: seq.id, token, text: token_text(seq.first, seq.done) });
                if seq.done == seq.max {
                    let output = Generation {
                        token_ids: (1..=token).collect(),
                        text: reply_text(seq.first, seq.done),
                        finish: FinishReason::Length,
                        prompt_tokens: seq.prompt,
                    };
                    events.push(EngineEvent::Finished { request: seq.id, text: String::new(), output });
                }
            }
            let finished: Vec<u64> = self.active.iter().filter(|s| s.done == s.max).map(|s| s.id).collect();
            self.active.retain(|s| s.done < s.max);
            let mut record = self.record();
            for id in finished {
                record.live.remove(&(self.number, id));
            }
            Ok(events)
        })
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty()
    }
}

/// Builds fresh simulated engines: `max_batch` sequences at most, `context` positions each.
pub fn engine_runner(fates: Arc<Fates>, record: Arc<Mutex<EngineRecord>>, trace: Trace, max_batch: usize, context: usize) -> EngineRunner {
    Arc::new(move |body: EngineBody| {
        let (fates, record, trace) = (Arc::clone(&fates), Arc::clone(&record), trace.clone());
        Box::pin(async move {
            let number = {
                // What the engines before held was failed by the pool (a failed step, a hang).
                let mut r = record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                r.engines += 1;
                r.live.clear();
                r.engines
            };
            let mut engine = SimEngine { number, fates, record, trace, max_batch, context, next: 0, waiting: VecDeque::new(), active: Vec::new() };
            Ok(body(&mut engine).await)
        })
    })
}

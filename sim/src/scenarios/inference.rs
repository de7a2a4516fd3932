//! Inference: the production model pools (`vcos_gpu_workers::serve`: the embedding pool's
//! dynamic batching, the generation pool's continuous batching, their bounded queues,
//! supervision and watchdogs) driven as tasks on simulated time, in front of simulated models
//! whose every call is quick, slow, failing, panicking, stalled past the watchdog or hung for
//! good, as the seed says (`crate::inference_env`).
//!
//! The workload sends embedding and generation requests from many callers, in a trickle and in
//! bursts past the queues' bounds, some of them bad (empty input, too many texts, an empty or
//! too long prompt, a negative temperature), and some generation callers go away mid-stream.
//! Then the models heal and a last round of requests must all be served.
//!
//! Checks:
//! - every request ends exactly once, within a deadline: an answer, or a clear error (the
//!   model's name and what happened), never silence, never a second end, nothing after the end;
//! - an answer is the caller's own (vectors of its texts, tokens of its prompt, the streamed
//!   text equal to the final text);
//! - a good request is never refused as invalid, a bad one always is;
//! - no model call holds more texts than the pool's `max_batch`, no step more sequences than
//!   the engine's bound, no queue more requests than its bound;
//! - after the heal: every request is served, and nothing is left queued, running or held by
//!   the engine (callers that went away left the batch).
//!
//! The world is its own: one turmoil client host running the pools, the models and the callers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_gpu_workers::generate::SamplingParams;
use vcos_gpu_workers::serve::{Driver, EmbedPool, EmbedPoolConfig, GenEvent, GenPool, GenPoolConfig, ServeError};

use super::Scenario;
use crate::inference_env::{embedding_of, engine_runner, reply_text, EngineRecord, FateMix, Fates, SimEmbedder};
use crate::plan::{FaultMix, FaultPlan};
use crate::trace::{hash_events, Trace};
use crate::world::{RunOptions, RunReport};

/// The inference scenario.
pub struct InferenceScenario;

/// How long requests keep coming while the models misbehave.
const FAULT_PHASE_MS: u64 = 20_000;
/// Texts one embedding call takes at most (the pool's bound).
const EMBED_BATCH: usize = 8;
/// Texts one request may carry (the model's own limit).
const MODEL_MAX_TEXTS: usize = 16;
/// Requests waiting for the embedding worker, at most.
const EMBED_QUEUE: usize = 24;
/// Sequences decoding together, at most.
const ENGINE_BATCH: usize = 4;
/// Positions per sequence.
const CONTEXT: usize = 40;
/// Requests waiting to join the generation batch, at most.
const GEN_QUEUE: usize = 12;
/// A call running longer than this is given up.
const HANG_AFTER: Duration = Duration::from_secs(2);
/// A request not ended by then is lost.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// Requests of each kind after the heal, all of which must be served.
const AFTER_HEAL: u64 = 6;

const EMBED_FATES: FateMix = FateMix { quick_ms: (2, 30), slow: 60, fail: 40, panic: 25, stall: 20, hang: 10 };
/// Per step, and there are many steps: rarer.
const GEN_FATES: FateMix = FateMix { quick_ms: (4, 20), slow: 8, fail: 4, panic: 3, stall: 3, hang: 2 };

impl Scenario for InferenceScenario {
    fn name(&self) -> &'static str {
        "inference"
    }

    fn fault_mix(&self) -> FaultMix {
        // The faults are the models' (drawn per call from the seed), not the plan's.
        FaultMix { nodes: 1, duration_ms: FAULT_PHASE_MS, count: 0, imvus: 0, crashes: false, disk: false, network: false, panics: 0, cluster: false }
    }

    fn workload(&self, _ctx: super::WorkloadCtx) -> Pin<Box<dyn Future<Output = Vec<String>>>> {
        Box::pin(async { vec!["the inference scenario runs in its own world".to_owned()] })
    }

    fn run_custom(&self, seed: u64, _options: &RunOptions, plan: FaultPlan) -> Result<RunReport, FaultPlan> {
        Ok(run(self.name(), seed, plan))
    }
}

fn run(name: &'static str, seed: u64, plan: FaultPlan) -> RunReport {
    let trace = Trace::default();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut sim = turmoil::Builder::new().rng_seed(seed).tick_duration(Duration::from_millis(1)).simulation_duration(Duration::from_secs(3_600)).build();
    {
        let (trace, violations) = (trace.clone(), Arc::clone(&violations));
        sim.client("client", async move {
            let found = workload(seed, trace).await;
            lock(&violations).extend(found);
            Ok(())
        });
    }
    if let Err(e) = sim.run() {
        lock(&violations).push(format!("simulation: {e}"));
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    let events = trace.events();
    let violations = std::mem::take(&mut *lock(&violations));
    RunReport { scenario: name, seed, plan, trace_hash: hash_events(&events), trace: events, violations, sim_ms }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a caller asks.
#[derive(Debug, Clone)]
enum Ask {
    Embed { texts: Vec<String> },
    /// Refused as invalid, always.
    BadEmbed { why: &'static str, texts: Vec<String> },
    Generate { prompt: Vec<u32>, max_tokens: usize, leave_after: Option<usize> },
    /// Refused as invalid, always.
    BadGenerate { why: &'static str, prompt: Vec<u32>, params: SamplingParams },
}

/// How a request ended, as its caller saw it.
#[derive(Debug)]
enum End {
    Answered,
    Refused(ServeError),
    Failed(ServeError),
    /// The caller went away mid-stream (after this many tokens).
    Left(usize),
    Lost(String),
    Wrong(String),
}

fn draw_ask(rng: &mut ChaCha8Rng, id: u64) -> Ask {
    let roll = rng.random_range(0..100);
    match roll {
        0..=49 => Ask::Embed { texts: (0..rng.random_range(1..=5)).map(|j| format!("r{id}.{j}")).collect() },
        50..=53 => Ask::BadEmbed { why: "no texts", texts: Vec::new() },
        54..=56 => Ask::BadEmbed { why: "too many texts", texts: (0..=MODEL_MAX_TEXTS).map(|j| format!("r{id}.{j}")).collect() },
        57..=59 => Ask::BadEmbed { why: "an empty text", texts: vec![format!("r{id}"), String::new()] },
        60..=91 => {
            let first = u32::try_from(id).unwrap_or(u32::MAX);
            let prompt = std::iter::once(first).chain((1..rng.random_range(1..=6)).map(|_| 7)).collect();
            let max_tokens = rng.random_range(1..=24);
            let leave_after = (rng.random_range(0..100) < 15).then(|| rng.random_range(0..max_tokens));
            Ask::Generate { prompt, max_tokens, leave_after }
        }
        92..=93 => Ask::BadGenerate { why: "an empty prompt", prompt: Vec::new(), params: SamplingParams::greedy(4) },
        94..=95 => Ask::BadGenerate { why: "a prompt longer than the context", prompt: vec![7; CONTEXT + 3], params: SamplingParams::greedy(4) },
        _ => Ask::BadGenerate { why: "a negative temperature", prompt: vec![7, 7], params: SamplingParams { temperature: -1.0, ..SamplingParams::greedy(4) } },
    }
}

/// Each request's ask, end, and whether it was asked after the heal.
type Ends = BTreeMap<u64, (Ask, End, bool)>;

struct Pools {
    embed: EmbedPool,
    generate: GenPool,
}

async fn ask(pools: &Pools, id: u64, ask: &Ask, trace: &Trace) -> End {
    match ask {
        Ask::Embed { texts } | Ask::BadEmbed { texts, .. } => {
            match tokio::time::timeout(ANSWER_DEADLINE, pools.embed.embed(texts.clone())).await {
                Err(_) => End::Lost(format!("no answer within {} s", ANSWER_DEADLINE.as_secs())),
                Ok(Err(e @ ServeError::Invalid(_))) => End::Refused(e),
                Ok(Err(e)) => End::Failed(e),
                Ok(Ok(out)) => {
                    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedding_of(t)).collect();
                    let tokens: Vec<usize> = texts.iter().map(String::len).collect();
                    if out.vectors == vectors && out.tokens == tokens {
                        End::Answered
                    } else {
                        End::Wrong(format!("vectors {:?} for texts {texts:?}", out.vectors))
                    }
                }
            }
        }
        Ask::Generate { prompt, max_tokens, leave_after } => generate(pools, id, prompt.clone(), SamplingParams::greedy(*max_tokens), *leave_after, trace).await,
        Ask::BadGenerate { prompt, params, .. } => generate(pools, id, prompt.clone(), params.clone(), None, trace).await,
    }
}

async fn generate(pools: &Pools, id: u64, prompt: Vec<u32>, params: SamplingParams, leave_after: Option<usize>, trace: &Trace) -> End {
    let first = prompt.first().copied().unwrap_or(0);
    let max_tokens = params.max_tokens.min(CONTEXT.saturating_sub(prompt.len())).max(1);
    let mut ticket = match pools.generate.submit(prompt, params) {
        Ok(ticket) => ticket,
        Err(e @ ServeError::Invalid(_)) => return End::Refused(e),
        Err(e) => return End::Failed(e),
    };
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    let (mut streamed, mut tokens, mut end) = (String::new(), 0usize, None);
    loop {
        if end.is_none() && leave_after == Some(tokens) {
            trace.record(format!("#{id} leaves after {tokens} tokens"));
            return End::Left(tokens);
        }
        let event = match tokio::time::timeout_at(deadline, ticket.events.recv()).await {
            Err(_) => return End::Lost(format!("no end within {} s ({tokens} tokens)", ANSWER_DEADLINE.as_secs())),
            Ok(None) => break,
            Ok(Some(event)) => event,
        };
        if end.is_some() {
            return End::Wrong(format!("an event after the end: {event:?}"));
        }
        match event {
            GenEvent::Token(text) => {
                tokens += 1;
                streamed.push_str(&text);
            }
            GenEvent::Text(text) => streamed.push_str(&text),
            GenEvent::Done(generation) => {
                let expected = reply_text(first, max_tokens);
                end = Some(if generation.text == expected && streamed == expected && tokens == max_tokens {
                    End::Answered
                } else {
                    End::Wrong(format!("{tokens} tokens streamed as {streamed:?}, final {:?}; expected {expected:?}", generation.text))
                });
            }
            GenEvent::Failed(e @ ServeError::Invalid(_)) => end = Some(End::Refused(e)),
            GenEvent::Failed(e) => end = Some(End::Failed(e)),
        }
    }
    end.unwrap_or_else(|| End::Lost(format!("the stream closed without an end after {tokens} tokens")))
}

/// Judges one request's end; `must_serve`: asked after the heal.
fn judge(id: u64, ask: &Ask, end: &End, must_serve: bool) -> Option<String> {
    let bad = match ask {
        Ask::BadEmbed { why, .. } | Ask::BadGenerate { why, .. } => Some(*why),
        _ => None,
    };
    match (end, bad) {
        (End::Lost(why), _) => Some(format!("#{id} lost: {why} ({ask:?})")),
        (End::Wrong(why), _) => Some(format!("#{id} got a wrong answer: {why}")),
        (End::Refused(ServeError::Invalid(message)), Some(_)) if !message.is_empty() => None,
        (other, Some(why)) => Some(format!("#{id} with {why} was not refused as invalid: {other:?}")),
        (End::Refused(e), None) => Some(format!("#{id}, a good request, was refused: {e}")),
        (End::Answered, None) => None,
        (End::Left(_), None) if !must_serve => None,
        (End::Failed(e @ (ServeError::WorkerFailed { model, .. } | ServeError::Overloaded { model, .. })), None) if !must_serve => {
            let clear = !model.is_empty() && e.to_string().contains(model.as_str());
            (!clear).then(|| format!("#{id} failed without saying which model: {e}"))
        }
        (other, None) => Some(format!("#{id} {}: {other:?}", if must_serve { "was asked after the heal and not served" } else { "ended unexpectedly" })),
    }
}

fn summary(end: &End) -> String {
    match end {
        End::Answered => "answered".to_owned(),
        End::Refused(e) => format!("refused: {e}"),
        End::Failed(e) => format!("failed: {e}"),
        End::Left(n) => format!("left after {n} tokens"),
        End::Lost(why) => format!("lost: {why}"),
        End::Wrong(why) => format!("wrong: {why}"),
    }
}

#[allow(clippy::too_many_lines)]
async fn workload(seed: u64, trace: Trace) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1f3e_5eed);
    let embed_fates = Fates::new(seed ^ 0xe4b3_d000, EMBED_FATES);
    let gen_fates = Fates::new(seed ^ 0x9e4e_7000, GEN_FATES);
    let embedder = Arc::new(SimEmbedder::new(Arc::clone(&embed_fates), MODEL_MAX_TEXTS, trace.clone()));
    let record = Arc::new(Mutex::new(EngineRecord::default()));
    let embed_config = EmbedPoolConfig { max_batch: EMBED_BATCH, max_wait: Duration::from_millis(5), queue: EMBED_QUEUE, hang_after: HANG_AFTER, driver: Driver::Tasks };
    let gen_config = GenPoolConfig { model: "sim-gen".into(), queue: GEN_QUEUE, hang_after: HANG_AFTER, context: Some(CONTEXT), driver: Driver::Tasks };
    let pools = match (
        EmbedPool::start(embedder.clone(), embed_config),
        GenPool::start(gen_config, engine_runner(Arc::clone(&gen_fates), Arc::clone(&record), trace.clone(), ENGINE_BATCH, CONTEXT)),
    ) {
        (Ok(embed), Ok(generate)) => Arc::new(Pools { embed, generate }),
        (Err(e), _) | (_, Err(e)) => return vec![format!("the pools did not start: {e}")],
    };
    let ends: Arc<Mutex<Ends>> = Arc::default();
    let mut callers = Vec::new();
    let (mut embed_peak, mut gen_peak) = (0, 0);
    let mut id = 0u64;
    let spawn = |ask: Ask, id: u64, must_serve: bool, callers: &mut Vec<tokio::task::JoinHandle<()>>| {
        trace.record(format!("#{id} asks {ask:?}"));
        let (pools, ends, trace) = (Arc::clone(&pools), Arc::clone(&ends), trace.clone());
        callers.push(tokio::spawn(async move {
            let end = self::ask(&pools, id, &ask, &trace).await;
            trace.record(format!("#{id} {}", summary(&end)));
            lock(&ends).insert(id, (ask, end, must_serve));
        }));
    };
    while crate::node_env::sim_now_ms() < FAULT_PHASE_MS {
        // Now and then a burst past the queues' bounds.
        let burst = if rng.random_range(0..100) < 4 { rng.random_range(20..40) } else { 1 };
        for _ in 0..burst {
            id += 1;
            let ask = draw_ask(&mut rng, id);
            spawn(ask, id, false, &mut callers);
        }
        // Let the callers reach the queues before looking at their depth.
        tokio::task::yield_now().await;
        embed_peak = pools.embed.queued().max(embed_peak);
        gen_peak = pools.generate.queued().max(gen_peak);
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..150))).await;
    }
    embed_fates.heal();
    gen_fates.heal();
    trace.record("heal: every model call answers quickly from now on");
    // Calls stalled before the heal are given up by then.
    tokio::time::sleep(HANG_AFTER + Duration::from_secs(1)).await;
    for n in 0..AFTER_HEAL {
        id += 1;
        let texts = (0..=n).map(|j| format!("h{id}.{j}")).collect();
        spawn(Ask::Embed { texts }, id, true, &mut callers);
        id += 1;
        let first = u32::try_from(id).unwrap_or(u32::MAX);
        spawn(Ask::Generate { prompt: vec![first, 7], max_tokens: 8, leave_after: None }, id, true, &mut callers);
    }
    for caller in callers {
        if let Err(e) = caller.await {
            return vec![format!("a caller task died: {e}")];
        }
    }
    // The worker notices callers that left at its next look.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut violations = Vec::new();
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (id, (ask, end, must_serve)) in lock(&ends).iter() {
        *tally
            .entry(match end {
                End::Answered => "answered",
                End::Refused(_) => "refused as invalid",
                End::Failed(ServeError::Overloaded { .. }) => "overloaded",
                End::Failed(_) => "failed",
                End::Left(_) => "left mid-stream",
                End::Lost(_) | End::Wrong(_) => "violations",
            })
            .or_default() += 1;
        violations.extend(judge(*id, ask, end, *must_serve));
    }
    if lock(&ends).len() as u64 != id {
        violations.push(format!("{} requests asked, {} ended", id, lock(&ends).len()));
    }
    let largest_call = *lock(&embedder.largest_call);
    if largest_call > EMBED_BATCH {
        violations.push(format!("an embedding call held {largest_call} texts; the pool's bound is {EMBED_BATCH}"));
    }
    let (largest_step, engines, live) = {
        let r = lock(&record);
        (r.largest_step, r.engines, r.live.clone())
    };
    if largest_step > ENGINE_BATCH {
        violations.push(format!("a generation step decoded {largest_step} sequences; the bound is {ENGINE_BATCH}"));
    }
    if embed_peak > EMBED_QUEUE || gen_peak > GEN_QUEUE {
        violations.push(format!("queues held {embed_peak} and {gen_peak} requests; the bounds are {EMBED_QUEUE} and {GEN_QUEUE}"));
    }
    let (embed_left, gen_left, running) = (pools.embed.queued(), pools.generate.queued(), pools.generate.running());
    if embed_left + gen_left + running > 0 || !live.is_empty() {
        violations.push(format!("left over once every caller ended: {embed_left} embedding and {gen_left} generation requests queued, {running} running, engine holds {live:?}"));
    }
    let tally: Vec<String> = tally.iter().map(|(k, v)| format!("{k} {v}")).collect();
    trace.record(format!("{id} requests: {}; queue peaks {embed_peak}/{gen_peak}; largest call {largest_call} texts, largest step {largest_step} sequences; {engines} engines built", tally.join(", ")));
    violations
}

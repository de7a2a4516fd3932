//! [`GenPool`]: one generation worker thread with continuous batching (see the module docs of
//! [`super`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::mpsc::{self, unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use vcos_actors::BoxFuture;

use super::driver::{Driver, Role};
use super::error::ServeError;
use super::watchdog::{count_restart, lock, spawn_watchdog, Heartbeat, StopOnDrop, Watched};
use crate::generate::{BatchEngine, EngineEvent, GenerateError, Generation, SamplingParams};

/// A continuous-batching engine the worker drives (production: the generation module's
/// [`BatchEngine`]; tests and the simulator: stand-ins).
pub trait StepEngine: Send {
    /// Queues a tokenized prompt; checks the parameters and the prompt's length.
    fn submit(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64, GenerateError>;
    /// Drops a request (its caller went away).
    fn cancel(&mut self, id: u64);
    /// One scheduling step: admits, prefills, decodes one token per running sequence. A real
    /// model computes on the worker's own thread; a simulated one awaits its latency.
    fn step(&mut self) -> BoxFuture<'_, Result<Vec<EngineEvent>, GenerateError>>;
    /// Whether nothing is queued or running.
    fn is_idle(&self) -> bool;
}

impl StepEngine for BatchEngine<'_> {
    fn submit(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64, GenerateError> {
        self.submit_tokens(prompt, params)
    }

    fn cancel(&mut self, id: u64) {
        // Unknown means it already finished: nothing to drop.
        let _ = BatchEngine::cancel(self, id);
    }

    fn step(&mut self) -> BoxFuture<'_, Result<Vec<EngineEvent>, GenerateError>> {
        // Computed when polled, so that a panic in it is caught with the step.
        Box::pin(async move { BatchEngine::step(self) })
    }

    fn is_idle(&self) -> bool {
        BatchEngine::is_idle(self)
    }
}

/// The worker loop over one engine, handed to an [`EngineRunner`].
pub type EngineBody = Box<dyn for<'e> FnOnce(&'e mut dyn StepEngine) -> BoxFuture<'e, Flow> + Send>;

/// Builds an engine and runs `body` on it (`Err` if it cannot be built); called again (a fresh
/// engine) after `body` asks for a restart. Production: borrows the loaded model, so the
/// engine's caches are new and the weights are kept.
pub type EngineRunner = Arc<dyn Fn(EngineBody) -> BoxFuture<'static, Result<Flow, String>> + Send + Sync>;

/// What the worker loop tells its runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The engine failed: build a fresh one and go on.
    Restart,
    /// Stop the worker (stopped, or replaced by the watchdog).
    Exit,
}

/// What a caller of [`GenPool::submit`] receives, in order: one `Token` per generated token and
/// perhaps a last `Text`, then one `Done` or one `Failed`. Concatenated, the texts are the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenEvent {
    /// A token was generated; the text it made visible (may be empty: part of a character, a
    /// possible stop sequence held back, a special token).
    Token(String),
    /// Text released at the end (held back until the reply was known not to stop there).
    Text(String),
    /// The request finished.
    Done(Generation),
    /// The request failed.
    Failed(ServeError),
}

/// A submitted request.
#[derive(Debug)]
pub struct GenTicket {
    /// Its events; dropping the receiver cancels the request (it leaves the batch at the next
    /// step).
    pub events: UnboundedReceiver<GenEvent>,
}

/// How a [`GenPool`] bounds.
#[derive(Debug, Clone)]
pub struct GenPoolConfig {
    /// The model's name, as clients ask for it.
    pub model: String,
    /// Requests waiting to join the batch, at most; past it [`ServeError::Overloaded`].
    pub queue: usize,
    /// A step running longer than this is given up and the worker replaced.
    pub hang_after: Duration,
    /// Positions per sequence, when known: a prompt that leaves no room for a reply is refused
    /// before it is queued (the engine checks again).
    pub context: Option<usize>,
    /// What runs the worker and its watchdog.
    pub driver: Driver,
}

struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    events: UnboundedSender<GenEvent>,
    queued_at: Instant,
}

struct Inner {
    config: GenPoolConfig,
    runner: EngineRunner,
    tx: mpsc::Sender<Job>,
    /// Shared by the worker incarnations: a replaced (hung) worker does not hold it.
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    queued: AtomicUsize,
    heartbeat: Arc<Heartbeat>,
    /// Requests in the engine: ticket → (worker epoch, events).
    running: Mutex<BTreeMap<u64, (u64, UnboundedSender<GenEvent>)>>,
    next_ticket: AtomicU64,
}

/// A handle on a generation worker; cheap to clone. The worker stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct GenPool {
    inner: Arc<Inner>,
    _owner: Arc<StopOnDrop>,
}

impl std::fmt::Debug for GenPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenPool").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl GenPool {
    /// Starts the worker (running engines made by `runner`) and its watchdog (threads, or
    /// tasks: `config.driver`).
    pub fn start(config: GenPoolConfig, runner: EngineRunner) -> Result<Self, ServeError> {
        if config.queue == 0 {
            return Err(ServeError::Invalid("queue must be at least 1".into()));
        }
        let (tx, rx) = mpsc::channel(config.queue);
        let hang_after = config.hang_after;
        let inner = Arc::new(Inner {
            config,
            runner,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            queued: AtomicUsize::new(0),
            heartbeat: Heartbeat::new(hang_after),
            running: Mutex::new(BTreeMap::new()),
            next_ticket: AtomicU64::new(1),
        });
        spawn_worker(&inner, 0)?;
        spawn_watchdog(&inner, "generation")?;
        let owner = Arc::new(inner.heartbeat.stopper());
        Ok(Self { inner, _owner: owner })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.inner.config.model
    }

    /// Requests waiting to join the batch now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Whether a request would be queued now rather than refused as overloaded.
    pub fn has_room(&self) -> bool {
        self.queued() < self.inner.config.queue
    }

    /// Requests in the batch now.
    pub fn running(&self) -> usize {
        lock(&self.inner.running).len()
    }

    /// Queues a tokenized prompt; its text comes as [`GenEvent`]s.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<GenTicket, ServeError> {
        let inner = &self.inner;
        let model = inner.config.model.clone();
        params.validate().map_err(|e| ServeError::Invalid(e.to_string()))?;
        // Refused before the queue, so that a bad prompt is told what is wrong with it even
        // when the queue is full.
        if prompt.is_empty() {
            return Err(ServeError::Invalid(GenerateError::EmptyPrompt.to_string()));
        }
        if let Some(context) = inner.config.context.filter(|c| prompt.len() >= *c) {
            return Err(ServeError::Invalid(GenerateError::PromptTooLong { prompt_tokens: prompt.len(), context }.to_string()));
        }
        let (events, rx) = unbounded_channel();
        // Counted before it is sent: the worker may take it (and count it out) at once. The
        // count is the bound.
        let depth = inner.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Job { prompt, params, events, queued_at: Instant::now() };
        let sent = if depth > inner.config.queue { Err(TrySendError::Full(job)) } else { inner.tx.try_send(job) };
        match sent {
            Ok(()) => {
                metrics::gauge!("vcos_inference_queue_depth", "model" => model).set(depth as f64);
                Ok(GenTicket { events: rx })
            }
            Err(TrySendError::Full(_)) => {
                inner.queued.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("vcos_inference_overloaded_total", "model" => model.clone()).increment(1);
                Err(ServeError::Overloaded { model, queued: inner.config.queue })
            }
            Err(TrySendError::Closed(_)) => {
                inner.queued.fetch_sub(1, Ordering::Relaxed);
                Err(ServeError::Stopped(model))
            }
        }
    }
}

fn spawn_worker(inner: &Arc<Inner>, epoch: u64) -> Result<(), ServeError> {
    let name = format!("gen-{}-{epoch}", inner.config.model);
    inner.config.driver.spawn(name, Role::Worker, worker(Arc::downgrade(inner), epoch))
}

/// How long an idle worker waits for a request before it looks whether it was stopped.
const IDLE_LOOK: Duration = Duration::from_millis(200);
/// How long the worker waits before building an engine again after building one failed.
const REBUILD_PAUSE: Duration = Duration::from_secs(1);

/// Runs engines until the pool stops or this worker is replaced: a fresh engine after each
/// failed step.
async fn worker(weak: Weak<Inner>, epoch: u64) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let runner = Arc::clone(&inner.runner);
        drop(inner);
        let body_weak = weak.clone();
        let body: EngineBody = Box::new(move |engine| Box::pin(serve(body_weak, epoch, engine)));
        match runner(body).await {
            Ok(Flow::Restart) => continue,
            Ok(Flow::Exit) => return,
            Err(reason) => {
                tracing::error!(%reason, "generation engine could not start");
                tokio::time::sleep(REBUILD_PAUSE).await;
            }
        }
    }
}

/// The worker loop over one engine.
#[allow(clippy::too_many_lines)]
async fn serve(weak: Weak<Inner>, epoch: u64, engine: &mut dyn StepEngine) -> Flow {
    // Engine request id → ticket.
    let mut tickets: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        let Some(inner) = weak.upgrade() else { return Flow::Exit };
        if inner.heartbeat.is_stopped() || inner.heartbeat.epoch() != epoch {
            return Flow::Exit;
        }
        let model = inner.config.model.clone();
        // Admit: wait for work only when there is none.
        let mut jobs = Vec::new();
        {
            let mut rx = inner.rx.lock().await;
            if engine.is_idle() {
                match tokio::time::timeout(IDLE_LOOK, rx.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Err(_) => continue,
                    Ok(None) => return Flow::Exit,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Flow::Exit,
                }
            }
        }
        if !jobs.is_empty() {
            let depth = inner.queued.fetch_sub(jobs.len(), Ordering::Relaxed).saturating_sub(jobs.len());
            metrics::gauge!("vcos_inference_queue_depth", "model" => model.clone()).set(depth as f64);
        }
        for job in jobs {
            metrics::histogram!("vcos_inference_queue_seconds", "model" => model.clone()).record(job.queued_at.elapsed().as_secs_f64());
            match engine.submit(job.prompt, job.params) {
                Ok(id) => {
                    let ticket = inner.next_ticket.fetch_add(1, Ordering::Relaxed);
                    lock(&inner.running).insert(ticket, (epoch, job.events));
                    tickets.insert(id, ticket);
                }
                Err(e) => {
                    let _ = job.events.send(GenEvent::Failed(ServeError::Invalid(e.to_string())));
                }
            }
        }
        // Callers that went away leave the batch now.
        let gone: Vec<(u64, u64)> = {
            let running = lock(&inner.running);
            tickets.iter().filter(|(_, t)| running.get(t).is_none_or(|(_, tx)| tx.is_closed())).map(|(i, t)| (*i, *t)).collect()
        };
        for (id, ticket) in gone {
            engine.cancel(id);
            tickets.remove(&id);
            lock(&inner.running).remove(&ticket);
            metrics::counter!("vcos_inference_cancelled_total", "model" => model.clone()).increment(1);
        }
        if engine.is_idle() {
            continue;
        }
        metrics::histogram!("vcos_inference_batch_size", "model" => model.clone()).record(tickets.len() as f64);
        if !inner.heartbeat.begin(epoch) {
            return Flow::Exit; // replaced: the watchdog failed our callers
        }
        let stepped = vcos_supervision::quiet_panic::catch_async(engine.step()).await;
        if !inner.heartbeat.end(epoch) {
            return Flow::Exit; // given up as hung: the watchdog failed our callers
        }
        let events = match stepped {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return fail_all(&inner, &mut tickets, &model, &format!("the model failed: {e}")),
            Err(panic) => return fail_all(&inner, &mut tickets, &model, &format!("the model step panicked: {panic}")),
        };
        let mut tokens = 0u64;
        for event in events {
            match event {
                EngineEvent::Token { request, text, .. } => {
                    tokens += 1;
                    send(&inner, &tickets, request, GenEvent::Token(text));
                }
                EngineEvent::Finished { request, text, output } => {
                    if !text.is_empty() {
                        send(&inner, &tickets, request, GenEvent::Text(text));
                    }
                    send(&inner, &tickets, request, GenEvent::Done(output));
                    if let Some(ticket) = tickets.remove(&request) {
                        lock(&inner.running).remove(&ticket);
                    }
                }
            }
        }
        metrics::counter!("vcos_inference_tokens_generated_total", "model" => model).increment(tokens);
    }
}

fn send(inner: &Inner, tickets: &BTreeMap<u64, u64>, request: u64, event: GenEvent) {
    let Some(ticket) = tickets.get(&request) else { return };
    if let Some((_, tx)) = lock(&inner.running).get(ticket) {
        // A closed receiver is noticed before the next step.
        let _ = tx.send(event);
    }
}

/// Fails every request of this engine and asks for a fresh one.
fn fail_all(inner: &Inner, tickets: &mut BTreeMap<u64, u64>, model: &str, reason: &str) -> Flow {
    tracing::warn!(model, reason, requests = tickets.len(), "generation step failed; its requests get an error and the engine restarts");
    count_restart(model, "failed");
    let mut running = lock(&inner.running);
    for ticket in std::mem::take(tickets).into_values() {
        if let Some((_, tx)) = running.remove(&ticket) {
            let _ = tx.send(GenEvent::Failed(ServeError::WorkerFailed { model: model.to_owned(), reason: reason.to_owned() }));
        }
    }
    Flow::Restart
}

impl Watched for Inner {
    fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn driver(&self) -> Driver {
        self.config.driver
    }

    fn replace_hung(self: Arc<Self>, epoch: u64, next: u64, busy: Duration) {
        let model = self.config.model.clone();
        {
            let mut running = lock(&self.running);
            let hung: Vec<u64> = running.iter().filter(|(_, (e, _))| *e == epoch).map(|(t, _)| *t).collect();
            for ticket in hung {
                if let Some((_, tx)) = running.remove(&ticket) {
                    let reason = format!("a model step hung for {} ms", busy.as_millis());
                    let _ = tx.send(GenEvent::Failed(ServeError::WorkerFailed { model: model.clone(), reason }));
                }
            }
        }
        if let Err(e) = spawn_worker(&self, next) {
            tracing::error!(model, error = %e, "could not replace a hung generation worker");
        }
    }
}

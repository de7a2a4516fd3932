//! [`EmbedPool`]: one embedding worker thread with dynamic batching (see the module docs of
//! [`super`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use vcos_actors::BoxFuture;

use super::driver::{Driver, Role};
use super::error::ServeError;
use super::watchdog::{count_restart, lock, spawn_watchdog, Heartbeat, StopOnDrop, Watched};

/// Embeddings of a batch of texts, and what they cost.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOutput {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read per text (padding excluded, after truncation), for usage.
    pub tokens: Vec<usize>,
}

impl EmbedOutput {
    /// Tokens read in all.
    pub fn total_tokens(&self) -> usize {
        self.tokens.iter().sum()
    }
}

/// A model that embeds texts (production: [`crate::embed::Embedder`]; tests and the simulator:
/// stand-ins with latency and failures of their choosing).
pub trait EmbedBackend: Send + Sync + 'static {
    /// The model's name, as clients ask for it.
    fn model(&self) -> &str;
    /// Dimensions of a vector.
    fn dim(&self) -> usize;
    /// Most texts in one call.
    fn max_batch(&self) -> usize;
    /// Rejects input the model cannot take (empty text, too long), before it is queued.
    fn check(&self, texts: &[String]) -> Result<(), String>;
    /// Embeds `texts` in one call. A real model computes before it returns the future (or in
    /// its first poll) on the worker's own thread; a simulated one awaits its latency.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>>;
}

/// How an [`EmbedPool`] batches and bounds.
#[derive(Debug, Clone)]
pub struct EmbedPoolConfig {
    /// Most texts in one model call (at most the backend's own limit).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others to join it.
    pub max_wait: Duration,
    /// Requests waiting for the worker, at most; past it [`ServeError::Overloaded`].
    pub queue: usize,
    /// A model call running longer than this is given up and the worker replaced.
    pub hang_after: Duration,
    /// What runs the worker and its watchdog.
    pub driver: Driver,
}

impl Default for EmbedPoolConfig {
    fn default() -> Self {
        Self { max_batch: 32, max_wait: Duration::from_millis(2), queue: 1_024, hang_after: Duration::from_secs(60), driver: Driver::Threads }
    }
}

type Reply = oneshot::Sender<Result<EmbedOutput, ServeError>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
    queued_at: Instant,
}

/// The batch a worker has in its model call, shared with the watchdog so that it can fail
/// the callers of a hung call.
struct InCall {
    epoch: u64,
    replies: Vec<(usize, Reply, Instant)>,
}

struct Inner {
    backend: Arc<dyn EmbedBackend>,
    config: EmbedPoolConfig,
    tx: mpsc::Sender<Job>,
    /// Shared by the worker incarnations: a replaced (hung) worker does not hold it.
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    /// A request taken from the channel that did not fit the last batch: first of the next.
    /// Here, not in the worker, so that a worker hung for good does not take it along.
    carry: Mutex<Option<Job>>,
    queued: AtomicUsize,
    heartbeat: Arc<Heartbeat>,
    in_call: Mutex<Option<InCall>>,
}

/// A handle on an embedding worker; cheap to clone. The worker stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct EmbedPool {
    inner: Arc<Inner>,
    _owner: Arc<StopOnDrop>,
}

impl std::fmt::Debug for EmbedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedPool").field("model", &self.inner.backend.model()).field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl EmbedPool {
    /// Starts the worker and its watchdog (threads, or tasks: `config.driver`).
    pub fn start(backend: Arc<dyn EmbedBackend>, mut config: EmbedPoolConfig) -> Result<Self, ServeError> {
        if config.max_batch == 0 || config.queue == 0 {
            return Err(ServeError::Invalid("max_batch and queue must be at least 1".into()));
        }
        config.max_batch = config.max_batch.min(backend.max_batch().max(1));
        let (tx, rx) = mpsc::channel(config.queue);
        let hang_after = config.hang_after;
        let inner = Arc::new(Inner {
            backend,
            config,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            carry: Mutex::new(None),
            queued: AtomicUsize::new(0),
            heartbeat: Heartbeat::new(hang_after),
            in_call: Mutex::new(None),
        });
        spawn_worker(&inner, 0)?;
        spawn_watchdog(&inner, "embedding")?;
        let owner = Arc::new(inner.heartbeat.stopper());
        Ok(Self { inner, _owner: owner })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        self.inner.backend.model()
    }

    /// Dimensions of a vector.
    pub fn dim(&self) -> usize {
        self.inner.backend.dim()
    }

    /// Most texts one request may carry.
    pub fn max_texts(&self) -> usize {
        self.inner.backend.max_batch()
    }

    /// Requests waiting for the worker now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Whether a request would be queued now rather than refused as overloaded.
    pub fn has_room(&self) -> bool {
        self.queued() < self.inner.config.queue
    }

    /// Embeds `texts`, batched with other callers' texts. Never hangs past the worker's
    /// `hang_after` (plus the queue ahead of it): the watchdog fails a hung call's callers.
    pub async fn embed(&self, texts: Vec<String>) -> Result<EmbedOutput, ServeError> {
        let inner = &self.inner;
        let model = inner.backend.model().to_owned();
        if texts.is_empty() {
            return Err(ServeError::Invalid("input is empty: give at least one text".into()));
        }
        if texts.len() > inner.backend.max_batch() {
            return Err(ServeError::Invalid(format!("{} texts in one request; at most {}", texts.len(), inner.backend.max_batch())));
        }
        inner.backend.check(&texts).map_err(ServeError::Invalid)?;
        let (reply, answer) = oneshot::channel();
        let job = Job { texts, reply, queued_at: Instant::now() };
        // Counted before it is sent: the worker may take it (and count it out) at once. The
        // count is the bound, not the channel's capacity: it also holds a request the worker
        // took out of the channel but carries to its next batch.
        let depth = inner.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = if depth > inner.config.queue { Err(TrySendError::Full(job)) } else { inner.tx.try_send(job) };
        match sent {
            Ok(()) => {
                metrics::gauge!("vcos_inference_queue_depth", "model" => model.clone()).set(depth as f64);
            }
            Err(TrySendError::Full(_)) => {
                inner.queued.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("vcos_inference_overloaded_total", "model" => model.clone()).increment(1);
                return Err(ServeError::Overloaded { model, queued: inner.config.queue });
            }
            Err(TrySendError::Closed(_)) => {
                inner.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(ServeError::Stopped(model));
            }
        }
        answer.await.unwrap_or_else(|_| Err(ServeError::WorkerFailed { model, reason: "the worker dropped the request".into() }))
    }
}

fn spawn_worker(inner: &Arc<Inner>, epoch: u64) -> Result<(), ServeError> {
    let name = format!("embed-{}-{epoch}", inner.backend.model());
    inner.config.driver.spawn(name, Role::Worker, worker(Arc::downgrade(inner), epoch))
}

/// How long the worker waits for a first request before it looks whether it was stopped.
const IDLE_LOOK: Duration = Duration::from_millis(200);

/// Takes the next batch: the first job (waiting up to [`IDLE_LOOK`]; `None` if none came),
/// then more until `max_batch` texts or `max_wait` after the first. A job that does not fit is
/// carried to the next batch. After a batch of one request (a lone caller), it does not wait
/// for company that has not been coming: it takes only what is queued already (`vcos bench
/// inference` measured the 2 ms wait at 13 % of a lone caller's time per sentence).
async fn next_batch(inner: &Inner, lone: bool) -> Option<Vec<Job>> {
    let mut rx = inner.rx.lock().await;
    let carried = lock(&inner.carry).take();
    let first = match carried {
        Some(job) => job,
        None => tokio::time::timeout(IDLE_LOOK, rx.recv()).await.ok().flatten()?,
    };
    let mut texts = first.texts.len();
    let mut batch = vec![first];
    let deadline = Instant::now() + if lone { Duration::ZERO } else { inner.config.max_wait };
    while texts < inner.config.max_batch {
        let next = match rx.try_recv() {
            Ok(job) => Some(job),
            Err(_) if Instant::now() >= deadline => None,
            Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
        };
        match next {
            Some(job) if texts + job.texts.len() <= inner.config.max_batch => {
                texts += job.texts.len();
                batch.push(job);
            }
            Some(job) => {
                *lock(&inner.carry) = Some(job);
                break;
            }
            None => break,
        }
    }
    Some(batch)
}

async fn worker(weak: Weak<Inner>, epoch: u64) {
    // Whether the last batch held a single request (see `next_batch`).
    let mut lone = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.heartbeat.is_stopped() || inner.heartbeat.epoch() != epoch {
            if inner.heartbeat.is_stopped() {
                fail_carried(&inner, ServeError::Stopped(inner.backend.model().to_owned()));
            }
            return;
        }
        let Some(batch) = next_batch(&inner, lone).await else { continue };
        lone = batch.len() == 1;
        let model = inner.backend.model().to_owned();
        let depth = inner.queued.fetch_sub(batch.len(), Ordering::Relaxed).saturating_sub(batch.len());
        metrics::gauge!("vcos_inference_queue_depth", "model" => model.clone()).set(depth as f64);
        let mut texts = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            replies.push((job.texts.len(), job.reply, job.queued_at));
            texts.extend(job.texts);
        }
        metrics::histogram!("vcos_inference_batch_size", "model" => model.clone()).record(texts.len() as f64);
        *lock(&inner.in_call) = Some(InCall { epoch, replies });
        if !inner.heartbeat.begin(epoch) {
            // Replaced between taking the batch and calling: hand the batch to no one silently.
            fail_in_call(&inner, epoch, &model, "its worker was replaced before the call began");
            return;
        }
        let result = vcos_supervision::quiet_panic::catch_async(inner.backend.embed(&texts)).await;
        // Taken under the epoch check: a successor's call is never touched.
        let mine = inner.heartbeat.end(epoch).then(|| lock(&inner.in_call).take()).flatten();
        let Some(InCall { replies, .. }) = mine else {
            // The watchdog gave this call up and failed its callers; a new worker runs (and
            // takes the carried request, if any).
            return;
        };
        let result = match result {
            Ok(Ok(output)) if output.vectors.len() == texts.len() && output.tokens.len() == texts.len() => Ok(output),
            Ok(Ok(output)) => Err(format!("the model returned {} vectors and {} token counts for {} texts", output.vectors.len(), output.tokens.len(), texts.len())),
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(format!("the model call panicked: {panic}")),
        };
        match result {
            Ok(output) => answer(&model, replies, output),
            Err(reason) => {
                tracing::warn!(model, %reason, "embedding call failed; its callers get an error");
                count_restart(&model, "failed");
                for (_, reply, _) in replies {
                    let _ = reply.send(Err(ServeError::WorkerFailed { model: model.clone(), reason: reason.clone() }));
                }
            }
        }
    }
}

/// Fails the callers of worker `epoch`'s batch, if it is still the one in the call slot.
fn fail_in_call(inner: &Inner, epoch: u64, model: &str, reason: &str) {
    let call = {
        let mut slot = lock(&inner.in_call);
        if slot.as_ref().is_some_and(|c| c.epoch == epoch) { slot.take() } else { None }
    };
    for (_, reply, _) in call.map(|c| c.replies).unwrap_or_default() {
        let _ = reply.send(Err(ServeError::WorkerFailed { model: model.to_owned(), reason: reason.to_owned() }));
    }
}

/// The request carried to a next batch that will not come (the pool stopped): its caller gets
/// `error`.
fn fail_carried(inner: &Inner, error: ServeError) {
    let carried = lock(&inner.carry).take();
    if let Some(job) = carried {
        inner.queued.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(Err(error));
    }
}

/// Splits a batch's output among its callers, in order.
fn answer(model: &str, replies: Vec<(usize, Reply, Instant)>, output: EmbedOutput) {
    let mut vectors = output.vectors.into_iter();
    let mut tokens = output.tokens.into_iter();
    for (count, reply, queued_at) in replies {
        let mine = EmbedOutput { vectors: vectors.by_ref().take(count).collect(), tokens: tokens.by_ref().take(count).collect() };
        metrics::histogram!("vcos_inference_request_seconds", "model" => model.to_owned(), "kind" => "embeddings")
            .record(queued_at.elapsed().as_secs_f64());
        let _ = reply.send(Ok(mine));
    }
}

impl Watched for Inner {
    fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn model(&self) -> &str {
        self.backend.model()
    }

    fn driver(&self) -> Driver {
        self.config.driver
    }

    fn replace_hung(self: Arc<Self>, epoch: u64, next: u64, busy: Duration) {
        let model = self.backend.model().to_owned();
        fail_in_call(&self, epoch, &model, &format!("the model call hung for {} ms", busy.as_millis()));
        if let Err(e) = spawn_worker(&self, next) {
            tracing::error!(model, error = %e, "could not replace a hung embedding worker");
        }
    }
}

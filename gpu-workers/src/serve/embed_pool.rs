//! [`EmbedPool`]: one embedding worker thread with dynamic batching (see the module docs of
//! [`super`]).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

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

/// A model that embeds texts (production: [`crate::embed::Embedder`]; tests: a stand-in with
/// latency and failures of their choosing).
pub trait EmbedBackend: Send + Sync + 'static {
    /// The model's name, as clients ask for it.
    fn model(&self) -> &str;
    /// Dimensions of a vector.
    fn dim(&self) -> usize;
    /// Most texts in one call.
    fn max_batch(&self) -> usize;
    /// Rejects input the model cannot take (empty text, too long), before it is queued.
    fn check(&self, texts: &[String]) -> Result<(), String>;
    /// Embeds `texts` in one call.
    fn embed(&self, texts: &[String]) -> Result<EmbedOutput, String>;
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
}

impl Default for EmbedPoolConfig {
    fn default() -> Self {
        Self { max_batch: 32, max_wait: Duration::from_millis(2), queue: 1_024, hang_after: Duration::from_secs(60) }
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
    tx: SyncSender<Job>,
    rx: Mutex<Receiver<Job>>,
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
    /// Starts the worker thread and its watchdog.
    pub fn start(backend: Arc<dyn EmbedBackend>, mut config: EmbedPoolConfig) -> Result<Self, ServeError> {
        if config.max_batch == 0 || config.queue == 0 {
            return Err(ServeError::Invalid("max_batch and queue must be at least 1".into()));
        }
        config.max_batch = config.max_batch.min(backend.max_batch().max(1));
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let hang_after = config.hang_after;
        let inner = Arc::new(Inner {
            backend,
            config,
            tx,
            rx: Mutex::new(rx),
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
        // Counted before it is sent: the worker may take it (and count it out) at once.
        let depth = inner.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match inner.tx.try_send(job) {
            Ok(()) => {
                metrics::gauge!("vcos_inference_queue_depth", "model" => model.clone()).set(depth as f64);
            }
            Err(TrySendError::Full(_)) => {
                inner.queued.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("vcos_inference_overloaded_total", "model" => model.clone()).increment(1);
                return Err(ServeError::Overloaded { model, queued: inner.config.queue });
            }
            Err(TrySendError::Disconnected(_)) => return Err(ServeError::Stopped(model)),
        }
        answer.await.unwrap_or_else(|_| Err(ServeError::WorkerFailed { model, reason: "the worker dropped the request".into() }))
    }
}

fn spawn_worker(inner: &Arc<Inner>, epoch: u64) -> Result<(), ServeError> {
    let weak = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name(format!("embed-{}-{epoch}", inner.backend.model()))
        .spawn(move || {
            crate::priority::lower_this_thread();
            worker(&weak, epoch);
        })
        .map(|_| ())
        .map_err(|e| ServeError::Stopped(format!("cannot start a worker thread: {e}")))
}

/// Takes the next batch: the first job (waiting up to 200 ms, to notice a stop), then more
/// until `max_batch` texts or `max_wait` after the first. A job that does not fit is carried to
/// the next batch. After a batch of one request (a lone caller), it does not wait for company
/// that has not been coming: it takes only what is queued already (`vcos bench inference`
/// measured the 2 ms wait at 13 % of a lone caller's time per sentence).
fn next_batch(inner: &Inner, carry: &mut Option<Job>, lone: bool) -> Result<Vec<Job>, RecvTimeoutError> {
    let rx = lock(&inner.rx);
    let first = match carry.take() {
        Some(job) => job,
        None => rx.recv_timeout(Duration::from_millis(200))?,
    };
    let mut texts = first.texts.len();
    let mut batch = vec![first];
    let deadline = Instant::now() + if lone { Duration::ZERO } else { inner.config.max_wait };
    while texts < inner.config.max_batch {
        let wait = deadline.saturating_duration_since(Instant::now());
        let next = if wait.is_zero() { rx.try_recv().map_err(|_| RecvTimeoutError::Timeout) } else { rx.recv_timeout(wait) };
        match next {
            Ok(job) if texts + job.texts.len() <= inner.config.max_batch => {
                texts += job.texts.len();
                batch.push(job);
            }
            Ok(job) => {
                *carry = Some(job);
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

fn worker(weak: &Weak<Inner>, epoch: u64) {
    let mut carry = None;
    // Whether the last batch held a single request (see `next_batch`).
    let mut lone = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.heartbeat.is_stopped() || inner.heartbeat.epoch() != epoch {
            return;
        }
        let batch = match next_batch(&inner, &mut carry, lone) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
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
        inner.heartbeat.begin();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| inner.backend.embed(&texts)));
        inner.heartbeat.end();
        let Some(InCall { replies, .. }) = lock(&inner.in_call).take().filter(|c| c.epoch == epoch) else {
            // The watchdog gave this call up and failed its callers; a new worker runs.
            return;
        };
        let result = match result {
            Ok(Ok(output)) if output.vectors.len() == texts.len() && output.tokens.len() == texts.len() => Ok(output),
            Ok(Ok(output)) => Err(format!("the model returned {} vectors and {} token counts for {} texts", output.vectors.len(), output.tokens.len(), texts.len())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the model call panicked".to_owned()),
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

    fn replace_hung(self: Arc<Self>, _epoch: u64, next: u64, busy: Duration) {
        let model = self.backend.model().to_owned();
        if let Some(call) = lock(&self.in_call).take() {
            for (_, reply, _) in call.replies {
                let _ = reply.send(Err(ServeError::WorkerFailed { model: model.clone(), reason: format!("the model call hung for {} ms", busy.as_millis()) }));
            }
        }
        if let Err(e) = spawn_worker(&self, next) {
            tracing::error!(model, error = %e, "could not replace a hung embedding worker");
        }
    }
}

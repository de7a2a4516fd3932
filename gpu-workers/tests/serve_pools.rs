//! The model pools' serving behaviour, with stand-in models whose latency and failures the
//! tests choose: batching bounds, overload, a failing, panicking or hung model (callers get an
//! error, never a hang, and the worker goes on), a caller that goes away mid-generation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vcos_gpu_workers::generate::{EngineEvent, FinishReason, GenerateError, Generation, SamplingParams};
use vcos_actors::BoxFuture;
use vcos_gpu_workers::serve::{
    EmbedBackend, EmbedOutput, EmbedPool, EmbedPoolConfig, Driver, EngineBody, EngineRunner, GenEvent, GenPool, GenPoolConfig, ServeError, StepEngine,
};

/// Embeds each text as [len, 1.0]; records batch sizes; fails, panics or sleeps on texts
/// named so.
#[derive(Default)]
struct FakeEmbedder {
    batches: Mutex<Vec<usize>>,
    delay_ms: u64,
}

impl EmbedBackend for FakeEmbedder {
    fn model(&self) -> &str {
        "fake-embed"
    }
    fn dim(&self) -> usize {
        2
    }
    fn max_batch(&self) -> usize {
        64
    }
    fn check(&self, texts: &[String]) -> Result<(), String> {
        match texts.iter().position(|t| t.is_empty()) {
            Some(i) => Err(format!("text {i} is empty")),
            None => Ok(()),
        }
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        Box::pin(async move {
            self.batches.lock().unwrap().push(texts.len());
            std::thread::sleep(Duration::from_millis(self.delay_ms));
            if texts.iter().any(|t| t == "fail") {
                return Err("planted failure".into());
            }
            if texts.iter().any(|t| t == "panic") {
                panic!("planted panic");
            }
            if texts.iter().any(|t| t == "hang") {
                std::thread::sleep(Duration::from_secs(3));
            }
            Ok(EmbedOutput { vectors: texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect(), tokens: texts.iter().map(|t| t.len()).collect() })
        })
    }
}

fn embed_pool(backend: Arc<FakeEmbedder>, config: EmbedPoolConfig) -> EmbedPool {
    EmbedPool::start(backend, config).expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_embeddings_are_batched_within_bounds_and_each_caller_gets_its_own() {
    let backend = Arc::new(FakeEmbedder { delay_ms: 5, ..Default::default() });
    let pool = embed_pool(backend.clone(), EmbedPoolConfig { max_batch: 8, max_wait: Duration::from_millis(20), ..Default::default() });
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { (i, pool.embed(vec!["x".repeat(i + 1), "y".into()]).await) })
        })
        .collect();
    for call in calls {
        let (i, out) = call.await.unwrap();
        let out = out.expect("embedded");
        assert_eq!(out.vectors, vec![vec![(i + 1) as f32, 1.0], vec![1.0, 1.0]], "caller {i} got its own vectors, in order");
        assert_eq!(out.tokens, vec![i + 1, 1]);
        assert_eq!(out.total_tokens(), i + 2);
    }
    let batches = backend.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|b| *b <= 8), "no batch over max_batch: {batches:?}");
    assert!(batches.len() < 40, "requests were batched together: {batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_the_queue() {
    let pool = embed_pool(Arc::default(), EmbedPoolConfig::default());
    assert!(matches!(pool.embed(vec![]).await, Err(ServeError::Invalid(_))));
    assert!(matches!(pool.embed(vec!["a".into(), String::new()]).await, Err(ServeError::Invalid(m)) if m.contains("text 1")));
    assert!(matches!(pool.embed(vec!["a".into(); 65]).await, Err(ServeError::Invalid(m)) if m.contains("65")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_at_once() {
    let backend = Arc::new(FakeEmbedder { delay_ms: 300, ..Default::default() });
    let pool = embed_pool(backend, EmbedPoolConfig { max_batch: 1, queue: 2, max_wait: Duration::ZERO, ..Default::default() });
    let calls: Vec<_> = (0..8).map(|_| tokio::spawn({ let pool = pool.clone(); async move { pool.embed(vec!["a".into()]).await } })).collect();
    let mut overloaded = 0;
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(ServeError::Overloaded { queued, .. }) => {
                assert_eq!(queued, 2);
                overloaded += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(overloaded >= 1 && served >= 2, "served {served}, overloaded {overloaded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_model_fails_its_batch_and_keeps_serving() {
    let pool = embed_pool(Arc::default(), EmbedPoolConfig { max_wait: Duration::ZERO, ..Default::default() });
    assert!(matches!(pool.embed(vec!["fail".into()]).await, Err(ServeError::WorkerFailed { reason, .. }) if reason.contains("planted")));
    assert!(matches!(pool.embed(vec!["panic".into()]).await, Err(ServeError::WorkerFailed { reason, .. }) if reason.contains("panicked")));
    assert_eq!(pool.embed(vec!["ok".into()]).await.expect("served after").vectors, vec![vec![2.0, 1.0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_model_call_is_given_up_and_a_new_worker_serves() {
    let pool = embed_pool(Arc::default(), EmbedPoolConfig { max_wait: Duration::ZERO, hang_after: Duration::from_millis(500), ..Default::default() });
    let started = std::time::Instant::now();
    let hung = pool.embed(vec!["hang".into()]).await;
    assert!(matches!(hung, Err(ServeError::WorkerFailed { ref reason, .. }) if reason.contains("hung")), "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "failed before the call returned");
    assert_eq!(pool.embed(vec!["ok".into()]).await.expect("a new worker serves").vectors.len(), 1);
}

/// A step engine that emits "t{n}" per step for each request until its max_tokens; panics,
/// fails or hangs on prompts [13], [14] and [15].
#[derive(Default)]
struct FakeEngine {
    next: u64,
    active: Vec<(u64, Vec<u32>, usize, usize)>,
    waiting: VecDeque<(u64, Vec<u32>, usize)>,
    max_batch: usize,
    batch_sizes: Arc<Mutex<Vec<usize>>>,
}

impl StepEngine for FakeEngine {
    fn submit(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<u64, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        self.next += 1;
        self.waiting.push_back((self.next, prompt, params.max_tokens));
        Ok(self.next)
    }
    fn cancel(&mut self, id: u64) {
        self.active.retain(|a| a.0 != id);
        self.waiting.retain(|w| w.0 != id);
    }
    fn step(&mut self) -> BoxFuture<'_, Result<Vec<EngineEvent>, GenerateError>> {
        Box::pin(async move {
            while self.active.len() < self.max_batch {
                let Some((id, prompt, max)) = self.waiting.pop_front() else { break };
                self.active.push((id, prompt, max, 0));
            }
            self.batch_sizes.lock().unwrap().push(self.active.len());
            let mut events = Vec::new();
            for a in &mut self.active {
                match a.1.as_slice() {
                    [13] => panic!("planted panic"),
                    [14] => return Err(GenerateError::InvalidConfig("planted failure".into())),
                    [15] => std::thread::sleep(Duration::from_secs(3)),
                    _ => {}
                }
                a.3 += 1;
                events.push(EngineEvent::Token { request: a.0, token: a.3 as u32, text: format!("t{}", a.3) });
                if a.3 == a.2 {
                    let output = Generation { token_ids: (1..=a.3 as u32).collect(), text: (1..=a.3).map(|i| format!("t{i}")).collect(), finish: FinishReason::Length, prompt_tokens: a.1.len() };
                    events.push(EngineEvent::Finished { request: a.0, text: String::new(), output });
                }
            }
            std::thread::sleep(Duration::from_millis(2));
            self.active.retain(|a| a.3 < a.2);
            Ok(events)
        })
    }
    fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }
}

fn gen_pool(queue: usize, hang_after: Duration) -> (GenPool, Arc<Mutex<Vec<usize>>>, Arc<AtomicUsize>) {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let engines = Arc::new(AtomicUsize::new(0));
    let (s, e) = (sizes.clone(), engines.clone());
    let runner: EngineRunner = Arc::new(move |body: EngineBody| {
        e.fetch_add(1, Ordering::SeqCst);
        let mut engine = FakeEngine { max_batch: 4, batch_sizes: s.clone(), ..Default::default() };
        Box::pin(async move { Ok(body(&mut engine).await) })
    });
    let pool = GenPool::start(GenPoolConfig { model: "fake-gen".into(), queue, hang_after, context: None, driver: Driver::Threads }, runner).expect("pool");
    (pool, sizes, engines)
}

async fn collect(mut ticket: vcos_gpu_workers::serve::GenTicket) -> (String, Option<Generation>, Option<ServeError>) {
    let mut text = String::new();
    while let Some(event) = ticket.events.recv().await {
        match event {
            GenEvent::Token(t) | GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done(g) => return (text, Some(g), None),
            GenEvent::Failed(e) => return (text, None, Some(e)),
        }
    }
    (text, None, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_join_the_running_batch_and_each_streams_its_own_text() {
    let (pool, sizes, _) = gen_pool(64, Duration::from_secs(10));
    let tickets: Vec<_> = (1..=10).map(|n| pool.submit(vec![1, 2], SamplingParams::greedy(n)).expect("queued")).collect();
    for (n, ticket) in (1..=10).zip(tickets) {
        let (text, done, failed) = collect(ticket).await;
        assert!(failed.is_none());
        let expected: String = (1..=n).map(|i| format!("t{i}")).collect();
        assert_eq!(text, expected, "request {n} streamed its own text");
        assert_eq!(done.expect("done").text, expected);
    }
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| *s <= 4), "never more than max_batch: {sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "requests shared steps: {sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_and_prompts_are_refused() {
    let (pool, _, _) = gen_pool(8, Duration::from_secs(10));
    let bad = SamplingParams { temperature: -1.0, ..SamplingParams::greedy(4) };
    assert!(matches!(pool.submit(vec![1], bad), Err(ServeError::Invalid(m)) if m.contains("temperature")));
    // Refused before the queue: a full queue would otherwise answer "overloaded".
    assert!(matches!(pool.submit(vec![], SamplingParams::greedy(4)), Err(ServeError::Invalid(m)) if m.contains("empty")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_step_fails_its_requests_and_a_fresh_engine_serves() {
    let (pool, _, engines) = gen_pool(8, Duration::from_secs(10));
    for planted in [13, 14] {
        let (_, done, failed) = collect(pool.submit(vec![planted], SamplingParams::greedy(4)).unwrap()).await;
        assert!(done.is_none());
        assert!(matches!(failed, Some(ServeError::WorkerFailed { .. })), "{failed:?}");
    }
    let (text, done, _) = collect(pool.submit(vec![1], SamplingParams::greedy(2)).unwrap()).await;
    assert_eq!((text.as_str(), done.is_some()), ("t1t2", true));
    assert_eq!(engines.load(Ordering::SeqCst), 3, "one engine, then one per failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_step_is_given_up_and_a_new_worker_serves() {
    let (pool, _, _) = gen_pool(8, Duration::from_millis(400));
    let started = std::time::Instant::now();
    let (_, done, failed) = collect(pool.submit(vec![15], SamplingParams::greedy(4)).unwrap()).await;
    assert!(done.is_none() && matches!(failed, Some(ServeError::WorkerFailed { ref reason, .. }) if reason.contains("hung")), "{failed:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (text, done, _) = collect(pool.submit(vec![1], SamplingParams::greedy(1)).unwrap()).await;
    assert_eq!((text.as_str(), done.is_some()), ("t1", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_leaves_the_batch() {
    let (pool, _, _) = gen_pool(8, Duration::from_secs(10));
    let mut ticket = pool.submit(vec![1], SamplingParams::greedy(1_000_000)).unwrap();
    assert!(matches!(ticket.events.recv().await, Some(GenEvent::Token(_))));
    drop(ticket);
    for _ in 0..100 {
        if pool.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.running(), 0, "the abandoned request left the batch");
}

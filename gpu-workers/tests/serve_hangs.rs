//! Hung model calls, in tokio's paused time: the pools run as tasks ([`Driver::Tasks`]), so the
//! interleaving is the same on every run. Both cases were found by `vcos sim --scenario
//! inference`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vcos_actors::BoxFuture;
use vcos_gpu_workers::serve::{Driver, EmbedBackend, EmbedOutput, EmbedPool, EmbedPoolConfig, ServeError};

/// Call 1 takes 3 s (given up at 2 s), call 2 takes 1.5 s, later calls 10 ms.
#[derive(Default)]
struct Stalling {
    calls: AtomicUsize,
}

impl EmbedBackend for Stalling {
    fn model(&self) -> &str {
        "stalling"
    }
    fn dim(&self) -> usize {
        1
    }
    fn max_batch(&self) -> usize {
        4
    }
    fn check(&self, _texts: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let ms = match call {
                1 => 3_000,
                2 => 1_500,
                _ => 10,
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(EmbedOutput { vectors: texts.iter().map(|t| vec![t.len() as f32]).collect(), tokens: vec![1; texts.len()] })
        })
    }
}

/// A model call given up as hung may return later, while the worker that replaced it is in a
/// call of its own. The late return must touch neither the successor's callers nor its
/// heartbeat.
#[tokio::test(start_paused = true)]
async fn a_hung_call_that_returns_late_leaves_its_successor_alone() {
    let config = EmbedPoolConfig { max_batch: 1, max_wait: Duration::ZERO, queue: 8, hang_after: Duration::from_secs(2), driver: Driver::Tasks };
    let pool = EmbedPool::start(Arc::new(Stalling::default()), config).expect("pool");
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.embed(vec!["a".into()]).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.embed(vec!["bb".into()]).await }
    });
    // The first is given up (2 s + one watchdog look), the second then runs on the new worker
    // until about 3.9 s; the first call returns at 3 s, in the middle of it.
    let first = first.await.expect("first caller");
    assert!(matches!(&first, Err(ServeError::WorkerFailed { reason, .. }) if reason.contains("hung")), "the hung call's caller: {first:?}");
    let second = second.await.expect("second caller").expect("the successor's caller is answered");
    assert_eq!(second.vectors, vec![vec![2.0]]);
    // And the pool still serves.
    let third = tokio::time::timeout(Duration::from_secs(5), pool.embed(vec!["ccc".into()])).await.expect("the pool still serves");
    assert_eq!(third.expect("answered").vectors, vec![vec![3.0]]);
}

/// The first call never returns; later calls take 10 ms.
#[derive(Default)]
struct HangsOnce {
    calls: AtomicUsize,
}

impl EmbedBackend for HangsOnce {
    fn model(&self) -> &str {
        "hangs-once"
    }
    fn dim(&self) -> usize {
        1
    }
    fn max_batch(&self) -> usize {
        4
    }
    fn check(&self, _texts: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            if first {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(EmbedOutput { vectors: texts.iter().map(|t| vec![t.len() as f32]).collect(), tokens: vec![1; texts.len()] })
        })
    }
}

/// A request that did not fit the batch of a call that hangs for good is carried to the next
/// batch; the worker that replaces the hung one must take it (it was lost with the hung worker).
#[tokio::test(start_paused = true)]
async fn a_request_carried_past_a_call_that_hangs_for_good_is_served_by_the_next_worker() {
    let config = EmbedPoolConfig { max_batch: 4, max_wait: Duration::from_millis(50), queue: 8, hang_after: Duration::from_secs(1), driver: Driver::Tasks };
    let pool = EmbedPool::start(Arc::new(HangsOnce::default()), config).expect("pool");
    let texts = |p: &str| (0..3).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    // Three texts each: the second does not fit the first's batch of at most four.
    let (a, b) = tokio::join!(pool.embed(texts("a")), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::time::timeout(Duration::from_secs(10), pool.embed(texts("bb"))).await
    });
    assert!(matches!(&a, Err(ServeError::WorkerFailed { reason, .. }) if reason.contains("hung")), "the hung call's caller: {a:?}");
    let b = b.expect("the carried request is answered, not lost with the hung worker").expect("answered");
    assert_eq!(b.vectors, vec![vec![3.0]; 3]);
    assert_eq!(pool.queued(), 0);
}

//! Defects seen on a real cluster, each pinned by a test: ids shared between nodes of one canon
//! region, records stamped with time zero, shards blocking worker threads on the durability
//! barrier, and commands running on the state of a failed commit; and one the API fuzzer
//! found: a message to another tenant's IMVU id refused naming that IMVU's kind.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use vcos_actors::kinds::{Counter, CounterMsg};
use vcos_actors::records::{HistoryEvent, ImvuMeta};
use vcos_actors::store::Completion;
use vcos_actors::{
    ActorError, Caller, CanonStore, CanonWrite, Clock, ManualClock, MemoryStore, Runtime, RuntimeConfig, StoreError,
    TenantId, TenantPolicy,
};

async fn start(store: Arc<dyn CanonStore>, clock: Arc<dyn Clock>, shards: usize) -> Runtime {
    let mut config = RuntimeConfig::new(store, clock);
    config.shards_per_kind = shards;
    let rt = Runtime::builder(config).kind(Counter).start().await.expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("tenant");
    rt
}

fn caller() -> Caller {
    Caller::internal(&TenantId::default_tenant(), "test")
}

/// Two nodes (runtimes) share one canon region and allocate concurrently, past several id
/// blocks each, from several tasks each: every id is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_canon_never_allocate_the_same_id() {
    let store: Arc<dyn CanonStore> = Arc::new(MemoryStore::new());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let nodes = [start(store.clone(), clock.clone(), 1).await, start(store.clone(), clock.clone(), 1).await];
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..4 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::with_capacity(3_000);
                for _ in 0..3_000 {
                    ids.push(node.allocate_id().await.expect("allocate"));
                    if ids.len() % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ids
            }));
        }
    }
    let mut seen = BTreeSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(seen.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), 2 * 4 * 3_000);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Lifecycle and supervision records and the meta's creation time carry the injected clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_the_injected_clock() {
    const T0: u64 = 1_767_225_600_000;
    let store: Arc<dyn CanonStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let rt = start(store.clone(), Arc::new(clock.clone()), 1).await;
    let t = TenantId::default_tenant();
    let key = rt.create_imvu(&t, "counter", &caller()).await.expect("create").key;
    clock.advance(5_000);
    let err = rt.ask_json(&key, json!({"op":"crash"})).await.unwrap_err();
    assert!(matches!(err, ActorError::Crashed { .. }), "{err}");
    // The restart record is written before the IMVU answers again.
    assert_eq!(rt.ask_json(&key, json!({"op":"get"})).await.expect("get"), json!(0));
    let stamps: Vec<(String, u64)> = rt
        .history(&key)
        .expect("history")
        .into_iter()
        .map(|e| match e.record {
            HistoryEvent::Transition(t) => (t.transition.to_string(), t.unix_ms),
            HistoryEvent::Supervision(s) => (s.decision, s.unix_ms),
        })
        .collect();
    assert_eq!(
        stamps,
        vec![("create".to_owned(), T0), ("activate".to_owned(), T0), ("restarted".to_owned(), T0 + 5_000)]
    );
    let meta_key = vcos_actors::records::meta_key(&key);
    let meta: ImvuMeta =
        vcos_actors::records::decode(&meta_key, &store.get(&meta_key).expect("get").expect("meta")).expect("decode");
    assert_eq!(meta.created_unix_ms, T0);
    rt.shutdown().await;
}

/// A store whose commits complete on a tokio task, in order, as the Raft store's do: a shard
/// that blocks its worker thread waiting for one starves the task that would complete it.
struct TaskStore {
    inner: Arc<MemoryStore>,
    jobs: tokio::sync::mpsc::Sender<(Vec<CanonWrite>, Completion)>,
}

impl TaskStore {
    fn start(inner: Arc<MemoryStore>) -> Arc<Self> {
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<(Vec<CanonWrite>, Completion)>(65_536);
        let store = inner.clone();
        tokio::spawn(async move {
            while let Some((writes, done)) = rx.recv().await {
                tokio::task::yield_now().await;
                store.commit(writes, done);
            }
        });
        Arc::new(Self { inner, jobs })
    }
}

impl CanonStore for TaskStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        if let Err(e) = self.jobs.try_send((writes, done)) {
            let (_, done) = e.into_inner();
            done(Err(StoreError::Overloaded));
        }
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }
}

/// Two shards restart crashed IMVUs at the same time on a runtime with two worker threads:
/// neither may block its thread on the durability barrier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_restarting_at_once_do_not_stall_the_workers() {
    let store = TaskStore::start(Arc::new(MemoryStore::new()));
    let rt = start(store, Arc::new(ManualClock::new(0)), 2).await;
    let t = TenantId::default_tenant();
    let mut keys = Vec::new();
    while keys.len() < 8 {
        keys.push(rt.create_imvu(&t, "counter", &caller()).await.expect("create").key);
    }
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    for key in &keys {
        counters.ask(key, CounterMsg::Add { n: 7 }).await.expect("add");
    }
    let round = async {
        for _ in 0..20 {
            let mut asks = Vec::new();
            for key in &keys {
                // The crash comes while the tell's commit is still in flight: the restart
                // must wait for it (a barrier) before reading canon back.
                let counters = counters.clone();
                let key = *key;
                asks.push(tokio::spawn(async move {
                    counters.tell(&key, CounterMsg::Add { n: 0 }).await.expect("tell");
                    let _ = counters.ask(&key, CounterMsg::Crash).await;
                    counters.ask(&key, CounterMsg::Add { n: 0 }).await
                }));
            }
            for ask in asks {
                assert_eq!(ask.await.expect("task").expect("ask after restart"), 7);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), round).await.expect("the shards stalled");
    rt.shutdown().await;
}

/// Whether a commit writes an IMVU's snapshot (what a message's commit does). The stores below
/// number only those, so that the runtime's background commits (usage, audit, fences) cannot
/// take the failure meant for a message.
fn writes_snapshot(writes: &[CanonWrite]) -> bool {
    writes.iter().any(|w| matches!(w, CanonWrite::Put { key, .. } if key.ends_with("/snap")))
}

/// A store that fails the snapshot-writing commits whose number (from 1) is in `fail`, and
/// every commit while `down` is set (an outage that ends); and holds back the
/// snapshot-writing commits while `hold` is set, until [`FlakyStore::release`].
struct FlakyStore {
    inner: MemoryStore,
    commits: AtomicUsize,
    fail: Mutex<BTreeSet<usize>>,
    down: AtomicBool,
    hold: AtomicBool,
    held: Mutex<Vec<(Vec<CanonWrite>, Completion)>>,
}

impl FlakyStore {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            commits: AtomicUsize::new(0),
            fail: Mutex::default(),
            down: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            held: Mutex::default(),
        }
    }

    fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        let held = std::mem::take(&mut *self.held.lock().expect("lock"));
        for (writes, done) in held {
            self.inner.commit(writes, done);
        }
    }
}

impl CanonStore for FlakyStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let snapshot = writes_snapshot(&writes);
        let n = if snapshot { self.commits.fetch_add(1, Ordering::SeqCst) + 1 } else { 0 };
        if self.fail.lock().expect("lock").remove(&n) || self.down.load(Ordering::SeqCst) {
            done(Err(StoreError::Io("injected failure".into())));
        } else if snapshot && self.hold.load(Ordering::SeqCst) {
            self.held.lock().expect("lock").push((writes, done));
        } else {
            self.inner.commit(writes, done);
        }
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }
}

/// A runtime over a [`FlakyStore`] with one counter at 1, whose next commit will fail.
async fn counter_at_one_whose_next_commit_fails() -> (Runtime, vcos_actors::ImvuKey, vcos_actors::KindRef<Counter>) {
    let store = Arc::new(FlakyStore::new());
    let rt = start(store.clone(), Arc::new(ManualClock::new(0)), 1).await;
    let t = TenantId::default_tenant();
    let key = rt.create_imvu(&t, "counter", &caller()).await.expect("create").key;
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    assert_eq!(counters.ask(&key, CounterMsg::Add { n: 1 }).await.expect("add"), 1);
    let next = store.commits.load(Ordering::SeqCst) + 1;
    store.fail.lock().expect("lock").insert(next);
    (rt, key, counters)
}

/// After a failed commit, the next message (already queued behind it) must not make the
/// unacknowledged state durable. (One thread: a tell queued first sends both asks through the
/// shard's channel too, so the three are handled in one wake and their writes join one
/// commit: the failure fails them all. A message after them runs on canon's state, reloaded.)
#[tokio::test(flavor = "current_thread")]
async fn a_failed_commit_is_not_made_durable_by_the_next_message() {
    let (rt, key, counters) = counter_at_one_whose_next_commit_fails().await;
    // A tell in the channel: the asks behind it may not run on their callers' thread.
    counters.tell(&key, CounterMsg::Add { n: 0 }).await.expect("tell");
    // Both in the shard's channel before it runs either: the second must not see the first.
    let failed = counters.ask(&key, CounterMsg::Add { n: 100 });
    let after = counters.ask(&key, CounterMsg::Add { n: 10 });
    let (failed, after) = tokio::join!(failed, after);
    assert!(matches!(failed, Err(ActorError::Store(_))), "{failed:?}");
    assert!(matches!(after, Err(ActorError::Store(_))), "joined the failed commit, failed with it: {after:?}");
    assert_eq!(counters.ask(&key, CounterMsg::Add { n: 5 }).await.expect("add after"), 6, "ran on canon's state, not on the failed one");
    assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), 6);
    rt.shutdown().await;
}

/// The same on the inline path: with nothing queued, each ask runs at once on its caller's
/// thread, so the failed commit is known before the next message runs, which runs on canon's
/// state (reloaded) and succeeds: 1 + 10, never 1 + 100 + 10.
#[tokio::test(flavor = "current_thread")]
async fn after_a_failed_inline_ask_the_next_runs_on_canons_state() {
    let (rt, key, counters) = counter_at_one_whose_next_commit_fails().await;
    let failed = counters.ask(&key, CounterMsg::Add { n: 100 });
    let after = counters.ask(&key, CounterMsg::Add { n: 10 });
    let (failed, after) = tokio::join!(failed, after);
    assert!(matches!(failed, Err(ActorError::Store(_))), "{failed:?}");
    assert_eq!(after.expect("ran after the failure was known"), 11, "ran on canon's state");
    assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), 11);
    rt.shutdown().await;
}

/// A store that drops the completions of the snapshot-writing commits whose number is in
/// `drop`, without calling them (as a writer that stopped does).
struct DroppingStore {
    inner: MemoryStore,
    commits: AtomicUsize,
    drop: Mutex<BTreeSet<usize>>,
}

impl CanonStore for DroppingStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let n = if writes_snapshot(&writes) { self.commits.fetch_add(1, Ordering::SeqCst) + 1 } else { 0 };
        if self.drop.lock().expect("lock").remove(&n) {
            drop(done);
        } else {
            self.inner.commit(writes, done);
        }
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }
}

/// A completion dropped by the store answers its caller with an error instead of leaving it
/// waiting, and the IMVU reloads from canon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_completion_answers_instead_of_hanging() {
    let store = Arc::new(DroppingStore { inner: MemoryStore::new(), commits: AtomicUsize::new(0), drop: Mutex::default() });
    let rt = start(store.clone(), Arc::new(ManualClock::new(0)), 1).await;
    let t = TenantId::default_tenant();
    let key = rt.create_imvu(&t, "counter", &caller()).await.expect("create").key;
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    let next = store.commits.load(Ordering::SeqCst) + 1;
    store.drop.lock().expect("lock").insert(next);
    let lost = tokio::time::timeout(Duration::from_secs(10), counters.ask(&key, CounterMsg::Add { n: 3 }))
        .await
        .expect("answered, not left waiting");
    assert!(matches!(lost, Err(ActorError::Store(_))), "{lost:?}");
    assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), 0);
    rt.shutdown().await;
}

/// A message to an id that names another tenant's IMVU (the runtime's directory maps ids to
/// kinds, not tenants) is `not_found` whatever it says: no refusal names that IMVU's kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_another_tenants_imvu_id_is_not_found_whatever_it_says() {
    let rt = start(Arc::new(MemoryStore::new()), Arc::new(ManualClock::new(0)), 1).await;
    let info = rt.create_imvu(&TenantId::default_tenant(), "counter", &caller()).await.expect("create");
    let other = TenantId::new("other").expect("a valid name");
    rt.ensure_tenant(other, TenantPolicy::default()).await.expect("tenant");
    let foreign = vcos_actors::ImvuKey { tenant: other, id: info.key.id };
    for message in [json!({"op": "get"}), json!({"op": "no_such_op"}), json!(5)] {
        match rt.ask_json(&foreign, message.clone()).await {
            Err(ActorError::NotFound { .. }) => {}
            other => panic!("{message}: {other:?}"),
        }
    }
    let own = rt.ask_json(&info.key, json!({"op": "no_such_op"})).await;
    assert!(matches!(own, Err(ActorError::BadRequest { .. })), "its own tenant is told what is wrong: {own:?}");
}

/// A node whose canon commits failed refuses creations, naming why; once the store is back
/// it admits them again even when creations are all it is asked for: each refusal is recorded
/// by a commit of its own, and the first of those that succeeds reopens the node.
#[tokio::test(flavor = "current_thread")]
async fn creations_resume_when_the_store_recovers() {
    let store = Arc::new(FlakyStore::new());
    let rt = start(store.clone(), Arc::new(ManualClock::new(0)), 1).await;
    let t = TenantId::default_tenant();
    rt.create_imvu(&t, "counter", &caller()).await.expect("create before the outage");

    store.down.store(true, Ordering::SeqCst);
    let failed = rt.create_imvu(&t, "counter", &caller()).await;
    assert!(failed.is_err(), "a creation whose commit fails fails: {failed:?}");
    let refused = rt.create_imvu(&t, "counter", &caller()).await.expect_err("refused while the store fails");
    // Retryable (HTTP 503), naming the stage and why: the same request succeeds later.
    assert!(matches!(refused, ActorError::Unavailable(_)), "{refused:?}");
    assert!(refused.to_string().contains("stage 55 (system integrity) refused `create`: canon store is failing writes"), "{refused}");

    store.down.store(false, Ordering::SeqCst);
    let mut tries = 0u64;
    loop {
        tries += 1;
        match rt.create_imvu(&t, "counter", &caller()).await {
            Ok(_) => break,
            Err(e) => assert!(e.to_string().contains("canon store is failing writes"), "{e}"),
        }
        assert!(tries <= 2, "no creation went through after {tries} tries");
    }
    for _ in 0..10 {
        rt.create_imvu(&t, "counter", &caller()).await.expect("creations go on");
    }
    rt.shutdown().await;
}

/// A count kept in memory between lifecycle transitions (`Persistence::LifecycleOnly`).
struct Tally;

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum TallyMsg {
    Add { n: u64 },
    Get,
}

impl vcos_actors::Imvu for Tally {
    const KIND: &'static str = "tally";
    type State = u64;
    type Msg = TallyMsg;
    type Reply = u64;

    fn genesis(&self) -> u64 {
        0
    }

    fn handle(&self, count: &mut u64, msg: TallyMsg, _ctx: &mut vcos_actors::Context<'_>) -> u64 {
        if let TallyMsg::Add { n } = msg {
            *count += n;
        }
        *count
    }

    fn persistence(&self) -> vcos_actors::Persistence {
        vcos_actors::Persistence::LifecycleOnly
    }

    fn description(&self) -> &'static str {
        "test: a count kept in memory"
    }
}

async fn start_tallies(store: Arc<dyn CanonStore>) -> Runtime {
    let mut config = RuntimeConfig::new(store, Arc::new(ManualClock::new(0)));
    config.shards_per_kind = 1;
    let rt = Runtime::builder(config).kind(Tally).start().await.expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("tenant");
    rt
}

/// A runtime of tallies over a [`FlakyStore`], with one tally counted to `n`.
async fn one_tally(n: u64) -> (Arc<FlakyStore>, Runtime, vcos_actors::ImvuKey, vcos_actors::KindRef<Tally>) {
    let store = Arc::new(FlakyStore::new());
    let rt = start_tallies(store.clone()).await;
    let key = rt.create_imvu(&TenantId::default_tenant(), "tally", &caller()).await.expect("create").key;
    let tallies = rt.kind_ref::<Tally>().expect("tally kind");
    assert_eq!(tallies.ask(&key, TallyMsg::Add { n }).await.expect("add"), n);
    (store, rt, key, tallies)
}

/// A passivation whose write of a `LifecycleOnly` IMVU's state is refused leaves the IMVU
/// resident with its state; the next one writes it. (It used to let go first: the count was
/// lost, and the next message reloaded 0 from canon.)
#[tokio::test(flavor = "current_thread")]
async fn a_refused_passivation_write_keeps_the_state_in_memory() {
    let (store, rt, key, tallies) = one_tally(42).await;

    store.down.store(true, Ordering::SeqCst);
    assert_eq!(rt.passivate_idle(0).await, 0, "nothing let go: its write was refused");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(tallies.ask(&key, TallyMsg::Get).await.expect("get"), 42, "the count survived in memory");

    assert_eq!(rt.passivate_idle(0).await, 1, "written, then let go");
    assert_eq!(tallies.ask(&key, TallyMsg::Get).await.expect("get after reload"), 42, "reloaded from canon");
    rt.shutdown().await;
}

/// At shutdown, writes refused by a full commit queue are tried again: every count reaches
/// canon. (They used to fail once and be dropped with the shards.)
#[tokio::test(flavor = "current_thread")]
async fn shutdown_writes_every_count_even_past_refusals() {
    let store = Arc::new(FlakyStore::new());
    let rt = start_tallies(store.clone()).await;
    let t = TenantId::default_tenant();
    let tallies = rt.kind_ref::<Tally>().expect("tally kind");
    let mut keys = Vec::new();
    for n in 1..=5u64 {
        let key = rt.create_imvu(&t, "tally", &caller()).await.expect("create").key;
        assert_eq!(tallies.ask(&key, TallyMsg::Add { n }).await.expect("add"), n);
        keys.push((key, n));
    }
    // The first and third snapshot writes from here on are refused.
    let next = store.commits.load(Ordering::SeqCst);
    store.fail.lock().expect("lock").extend([next + 1, next + 3]);
    rt.shutdown().await;
    for (key, n) in keys {
        let snap = store.inner.get(&vcos_actors::records::snap_key(&key)).expect("read").expect("a snapshot");
        assert_eq!(serde_json::from_slice::<u64>(&snap).expect("a count"), n, "{key}");
    }
}

/// A message that reaches a `LifecycleOnly` IMVU while its passivation's write is in flight
/// keeps it resident: the write holds the state before that message, and letting go would
/// lose what the message did.
#[tokio::test(flavor = "current_thread")]
async fn a_message_during_a_passivation_write_keeps_the_imvu_resident() {
    let (store, rt, key, tallies) = one_tally(7).await;

    store.hold.store(true, Ordering::SeqCst);
    let passivation = tokio::spawn({
        let rt = rt.clone();
        async move { rt.passivate_idle(0).await }
    });
    while store.held.lock().expect("lock").is_empty() {
        tokio::task::yield_now().await;
    }
    // The message runs now; its answer waits for the write in flight (an answer is never ahead
    // of what is durable before it).
    let during = tokio::spawn({
        let tallies = tallies.clone();
        async move { tallies.ask(&key, TallyMsg::Add { n: 1 }).await }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    store.release();
    assert_eq!(during.await.expect("join").expect("add during the write"), 8);
    assert_eq!(passivation.await.expect("join"), 0, "not let go: a message came after the state written");
    assert_eq!(tallies.ask(&key, TallyMsg::Get).await.expect("get"), 8, "the message's effect is kept");

    assert_eq!(rt.passivate_idle(0).await, 1);
    assert_eq!(tallies.ask(&key, TallyMsg::Get).await.expect("get after reload"), 8, "the later write holds it");
    rt.shutdown().await;
}

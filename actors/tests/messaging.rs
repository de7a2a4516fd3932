//! IMVUs talking to IMVUs through their `Context`: tell, ask (answers and errors come back to
//! `on_reply`), child creation and timers, all performed after the sender's commit and never
//! blocking its shard.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vcos_actors::kinds::Counter;
use vcos_actors::{
    ActorError, Caller, Context, Imvu, ImvuKey, MemoryStore, Outgoing, Runtime, RuntimeConfig, SystemClock, TenantId,
    TenantPolicy,
};

/// Forwards work to other IMVUs and remembers what came back.
struct Relay;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum RelayMsg {
    /// Asks `to` (a counter) to add `n`.
    Forward { to: ImvuKey, n: i64 },
    /// Tells `to` (a counter) to add `n`.
    Notify { to: ImvuKey, n: i64 },
    /// Asks `to` anything.
    Ask { to: ImvuKey, msg: serde_json::Value },
    /// Sets a timer.
    Tick { after_ms: u64 },
    /// Creates a counter.
    Spawn,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RelayState {
    answers: Vec<(u64, serde_json::Value)>,
    errors: Vec<(u64, String)>,
    timers: Vec<u64>,
}

impl Imvu for Relay {
    const KIND: &'static str = "relay";
    type State = RelayState;
    type Msg = RelayMsg;
    type Reply = u64;

    fn genesis(&self) -> RelayState {
        RelayState::default()
    }

    fn handle(&self, _state: &mut RelayState, msg: RelayMsg, ctx: &mut Context<'_>) -> u64 {
        match msg {
            RelayMsg::Forward { to, n } => ctx.ask(to, json!({"op": "add", "n": n})),
            RelayMsg::Notify { to, n } => {
                ctx.tell(to, json!({"op": "add", "n": n}));
                0
            }
            RelayMsg::Ask { to, msg } => ctx.ask(to, msg),
            RelayMsg::Tick { after_ms } => ctx.set_timer(after_ms),
            RelayMsg::Spawn => ctx.create_child("counter"),
        }
    }

    fn on_reply(&self, state: &mut RelayState, correlation: u64, reply: Result<serde_json::Value, ActorError>, _ctx: &mut Context<'_>) {
        match reply {
            Ok(value) => state.answers.push((correlation, value)),
            Err(e) => state.errors.push((correlation, e.code().to_owned())),
        }
    }

    fn on_timer(&self, state: &mut RelayState, timer_id: u64, _ctx: &mut Context<'_>) {
        state.timers.push(timer_id);
    }
}

async fn start() -> Runtime {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let rt = Runtime::builder(config).kind(Counter).kind(Relay).start().await.expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("tenant");
    rt
}

async fn create(rt: &Runtime, kind: &str) -> ImvuKey {
    let t = TenantId::default_tenant();
    rt.create_imvu(&t, kind, &Caller::internal(&t, "test")).await.expect("create").key
}

/// Polls the relay's state until `done` holds (bounded: 500 × 10 ms).
async fn wait_for(rt: &Runtime, relay: &ImvuKey, done: impl Fn(&RelayState) -> bool) -> RelayState {
    for _ in 0..500 {
        let state: RelayState = serde_json::from_value(rt.inspect(relay).await.expect("inspect").state).expect("state");
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the relay never got there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_tells_and_their_answers_come_back_as_messages() {
    let rt = start().await;
    let counter = create(&rt, "counter").await;
    let relay = create(&rt, "relay").await;
    let first = rt.ask_json(&relay, json!({"op": "forward", "to": counter, "n": 5})).await.expect("forward");
    let second = rt.ask_json(&relay, json!({"op": "forward", "to": counter, "n": 2})).await.expect("forward");
    rt.ask_json(&relay, json!({"op": "notify", "to": counter, "n": 100})).await.expect("notify");
    let state = wait_for(&rt, &relay, |s| s.answers.len() == 2).await;
    // Each request goes out as its own task (ARCHITECTURE.md, "IMVU to IMVU"): no order between
    // them, so the notify (+100) may land before either forward.
    let mut answers = state.answers.clone();
    answers.sort_unstable_by_key(|(correlation, _)| *correlation);
    let (first, second) = (first.as_u64().expect("n"), second.as_u64().expect("n"));
    assert_eq!(answers.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![first, second]);
    let totals: Vec<i64> = answers.iter().map(|(_, t)| t.as_i64().expect("a total")).collect();
    assert!([5, 105, 7, 107].contains(&totals[0]) && [2, 102, 7, 107].contains(&totals[1]), "{totals:?}");
    assert_ne!(totals[0], totals[1], "each ask answered by its own add");
    // The relay asks itself: its shard is not held by its own ask, the answer comes back.
    let own = rt
        .ask_json(&relay, json!({"op": "ask", "to": relay, "msg": {"op": "notify", "to": counter, "n": 0}}))
        .await
        .expect("ask itself");
    let state = wait_for(&rt, &relay, |s| s.answers.len() == 3).await;
    assert_eq!(state.answers[2], (own.as_u64().expect("n"), json!(0)));
    // Errors come back the same way: a message the target cannot read, a target that does
    // not exist.
    let missing = ImvuKey { tenant: TenantId::default_tenant(), id: vcos_actors::ImvuId(999_999) };
    let unreadable = rt.ask_json(&relay, json!({"op": "ask", "to": counter, "msg": {"op": "fly"}})).await.expect("ask");
    let lost = rt.ask_json(&relay, json!({"op": "forward", "to": missing, "n": 1})).await.expect("forward");
    let mut state = wait_for(&rt, &relay, |s| s.errors.len() == 2).await;
    state.errors.sort_unstable();
    assert_eq!(
        state.errors,
        vec![(unreadable.as_u64().expect("n"), "bad_request".to_owned()), (lost.as_u64().expect("n"), "not_found".to_owned())]
    );
    // The tells (100, then 0) arrive in their own time.
    let mut total = json!(0);
    for _ in 0..500 {
        total = rt.ask_json(&counter, json!({"op": "get"})).await.expect("get");
        if total == json!(107) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(total, json!(107));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_and_children_are_created() {
    let rt = start().await;
    let relay = create(&rt, "relay").await;
    let late = rt.ask_json(&relay, json!({"op": "tick", "after_ms": 60})).await.expect("tick");
    let early = rt.ask_json(&relay, json!({"op": "tick", "after_ms": 1})).await.expect("tick");
    let spawn = rt.ask_json(&relay, json!({"op": "spawn"})).await.expect("spawn");
    let state = wait_for(&rt, &relay, |s| s.timers.len() == 2 && !s.answers.is_empty()).await;
    assert_eq!(state.timers, vec![early.as_u64().expect("n"), late.as_u64().expect("n")]);
    let (correlation, child) = &state.answers[0];
    assert_eq!(*correlation, spawn.as_u64().expect("n"));
    let child: ImvuKey = serde_json::from_value(child.clone()).expect("a key");
    assert_eq!(rt.inspect(&child).await.expect("child").kind, "counter");
    rt.shutdown().await;
}

#[test]
fn a_handler_records_requests_without_performing_them() {
    let key = ImvuKey { tenant: TenantId::default_tenant(), id: vcos_actors::ImvuId(1) };
    let to = ImvuKey { tenant: TenantId::default_tenant(), id: vcos_actors::ImvuId(2) };
    let mut ctx = Context::for_test(&key, 0);
    let mut state = RelayState::default();
    let correlation = Relay.handle(&mut state, RelayMsg::Forward { to, n: 3 }, &mut ctx);
    let timer = Relay.handle(&mut state, RelayMsg::Tick { after_ms: 5 }, &mut ctx);
    assert_ne!(correlation, timer, "numbers are unique");
    assert_eq!(
        ctx.outgoing(),
        &[
            Outgoing::Send { to, msg: json!({"op": "add", "n": 3}), correlation: Some(correlation) },
            Outgoing::Timer { timer_id: timer, after_ms: 5 },
        ]
    );
}

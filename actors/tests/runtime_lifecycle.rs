//! The runtime end to end, in process: lifecycle, handshake refusals, held messages,
//! crash and restart, and recovery from disk.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vcos_actors::auth::Role;
use vcos_actors::kinds::Counter;
use vcos_actors::records::HistoryEvent;
use vcos_actors::{
    ActorError, Caller, CanonStore, HandshakeOutcome, LifecycleState, MemoryStore, RedbStore,
    Runtime, RuntimeConfig, Stage, SystemClock, TenantId, TenantPolicy, Transition,
};

mod common;

async fn start(store: Arc<dyn CanonStore>) -> Runtime {
    common::start(store, Some(2)).await
}

fn caller() -> Caller {
    Caller::internal(&TenantId::default_tenant(), "test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_is_enforced_and_recorded() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let t = TenantId::default_tenant();
    let info = rt
        .create_imvu(&t, "counter", &caller())
        .await
        .expect("create");
    assert_eq!(info.lifecycle, LifecycleState::Active);
    let key = info.key;
    assert_eq!(
        rt.ask_json(&key, json!({"op":"add","n":5}))
            .await
            .expect("add"),
        json!(5)
    );
    let err = rt
        .transition(&key, Transition::Resume, &caller())
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::IllegalTransition { .. }), "{err}");
    assert!(err.to_string().contains("active"), "{err}");
    rt.transition(&key, Transition::Pause, &caller())
        .await
        .expect("pause");
    let rt2 = rt.clone();
    let key2 = key.clone();
    let held = tokio::spawn(async move { rt2.ask_json(&key2, json!({"op":"add","n":1})).await });
    let rt3 = rt.clone();
    let key3 = key.clone();
    let held2 = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rt3.ask_json(&key3, json!({"op":"add","n":10})).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished(), "a paused IMVU must hold messages");
    assert_eq!(rt.inspect(&key).await.expect("inspect").held_messages, 2);
    rt.transition(&key, Transition::Resume, &caller())
        .await
        .expect("resume");
    assert_eq!(held.await.expect("join").expect("held reply"), json!(6));
    assert_eq!(held2.await.expect("join").expect("held reply"), json!(16));
    let done = rt
        .transition(&key, Transition::Terminate, &caller())
        .await
        .expect("terminate");
    assert_eq!(done.lifecycle, LifecycleState::Terminated);
    let err = rt.ask_json(&key, json!({"op":"get"})).await.unwrap_err();
    assert!(matches!(err, ActorError::Terminated(_)), "{err}");
    let history = rt.history(&key).expect("history");
    let transitions: Vec<Transition> = history
        .iter()
        .filter_map(|e| match &e.record {
            HistoryEvent::Transition(t) => Some(t.transition),
            HistoryEvent::Supervision(_) => None,
        })
        .collect();
    assert_eq!(
        transitions,
        vec![
            Transition::Create,
            Transition::Activate,
            Transition::Pause,
            Transition::Resume,
            Transition::Terminate
        ]
    );
    assert!(history
        .windows(2)
        .all(|w| w[0].canon_index < w[1].canon_index));
    let HistoryEvent::Transition(last) = &history.last().expect("last").record else {
        panic!("not a transition")
    };
    assert_eq!(last.final_state, Some(json!(16)));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_name_the_stage_and_are_recorded() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let locked = TenantId::new("locked").expect("name");
    rt.put_tenant(
        locked.clone(),
        TenantPolicy {
            max_imvus: 1,
            denied_transitions: vec![Transition::Pause],
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    // 45: not authorised — no key, another tenant's key, or a role without `use`.
    let other = TenantId::new("other").expect("name");
    for stranger in [
        Caller::anonymous("stranger"),
        Caller::keyed(&other, Role::TenantAdmin, "0123456789abcdef"),
        Caller::keyed(&locked, Role::Viewer, "0123456789abcdef"),
        Caller::keyed(&locked, Role::Operator, "0123456789abcdef"),
    ] {
        let err = rt
            .create_imvu(&locked, "counter", &stranger)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ActorError::HandshakeRefused {
                    stage: Stage::Compliance,
                    ..
                }
            ),
            "{stranger:?}: {err}"
        );
    }
    let member = Caller::internal(&locked, "owner");
    let key = rt
        .create_imvu(&locked, "counter", &member)
        .await
        .expect("create")
        .key;
    // 45: quota.
    let err = rt
        .create_imvu(&locked, "counter", &member)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quota"), "{err}");
    // 17: policy denies pause; the refusal is in the history.
    let err = rt
        .transition(&key, Transition::Pause, &member)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ActorError::HandshakeRefused {
                stage: Stage::TenantGovernance,
                ..
            }
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = rt
        .history(&key)
        .expect("history")
        .into_iter()
        .filter(|e| matches!(&e.record, HistoryEvent::Transition(t) if matches!(t.handshake, HandshakeOutcome::Refused { .. })))
        .count();
    assert_eq!(refused, 1);
    // Another tenant's id is simply not there.
    let other = vcos_actors::ImvuKey {
        tenant: TenantId::default_tenant(),
        id: key.id,
    };
    assert!(matches!(
        rt.inspect(&other).await.unwrap_err(),
        ActorError::NotFound { .. }
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_from_last_durable_snapshot_and_node_keeps_serving() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let t = TenantId::default_tenant();
    let key = rt
        .create_imvu(&t, "counter", &caller())
        .await
        .expect("create")
        .key;
    rt.ask_json(&key, json!({"op":"add","n":41}))
        .await
        .expect("add");
    let err = rt.ask_json(&key, json!({"op":"crash"})).await.unwrap_err();
    assert!(matches!(err, ActorError::Crashed { .. }), "{err}");
    assert_eq!(
        rt.ask_json(&key, json!({"op":"add","n":1}))
            .await
            .expect("after crash"),
        json!(42)
    );
    let restarts = rt
        .history(&key)
        .expect("history")
        .into_iter()
        .filter(|e| matches!(&e.record, HistoryEvent::Supervision(s) if s.decision == "restarted"))
        .count();
    assert_eq!(restarts, 1);
    let err = rt.ask_json(&key, json!({"op":"nope"})).await.unwrap_err();
    assert!(matches!(err, ActorError::BadRequest { .. }), "{err}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("canon.redb");
    let (key, paused) = {
        let store = Arc::new(RedbStore::open(&path).expect("open"));
        let rt = start(store.clone()).await;
        let t = TenantId::default_tenant();
        let key = rt
            .create_imvu(&t, "kv-memory", &caller())
            .await
            .expect("create")
            .key;
        rt.ask_json(&key, json!({"op":"put","key":"name","value":"ada"}))
            .await
            .expect("put");
        let paused = rt
            .create_imvu(&t, "counter", &caller())
            .await
            .expect("create")
            .key;
        rt.ask_json(&paused, json!({"op":"add","n":7}))
            .await
            .expect("add");
        rt.transition(&paused, Transition::Pause, &caller())
            .await
            .expect("pause");
        rt.shutdown().await;
        store.close();
        (key, paused)
    };
    let rt = start(Arc::new(RedbStore::open(&path).expect("reopen"))).await;
    assert_eq!(
        rt.ask_json(&key, json!({"op":"get","key":"name"}))
            .await
            .expect("get"),
        json!({"value":"ada"})
    );
    let info = rt.inspect(&paused).await.expect("inspect");
    assert_eq!(info.lifecycle, LifecycleState::Paused);
    assert_eq!(info.state, json!(7));
    // New ids never collide with old ones.
    let fresh = rt
        .create_imvu(&TenantId::default_tenant(), "counter", &caller())
        .await
        .expect("create")
        .key;
    assert!(fresh.id > paused.id);
    assert_eq!(
        rt.tenant(&TenantId::default_tenant())
            .expect("tenant")
            .live_imvus
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    rt.shutdown().await;
}

/// A state whose author-written `Serialize` fails on 13.
struct Unlucky;

#[derive(serde::Deserialize)]
struct UnluckyState(i64);

impl serde::Serialize for UnluckyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 is unlucky"));
        }
        s.serialize_i64(self.0)
    }
}

impl vcos_actors::Imvu for Unlucky {
    const KIND: &'static str = "unlucky";
    type State = UnluckyState;
    type Msg = i64;
    type Reply = i64;
    fn genesis(&self) -> UnluckyState {
        UnluckyState(0)
    }
    fn handle(&self, s: &mut UnluckyState, n: i64, _ctx: &mut vcos_actors::Context<'_>) -> i64 {
        s.0 += n;
        s.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_cannot_serialise_is_a_crash_not_a_dead_host() {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let rt = Runtime::builder(config)
        .kind(Unlucky)
        .start()
        .await
        .expect("start");
    let t = TenantId::default_tenant();
    rt.ensure_tenant(t, TenantPolicy::default())
        .await
        .expect("tenant");
    let key = rt
        .create_imvu(&t, "unlucky", &caller())
        .await
        .expect("create")
        .key;
    assert_eq!(rt.ask_json(&key, json!(10)).await.expect("10"), json!(10));
    let err = rt.ask_json(&key, json!(3)).await.unwrap_err();
    assert!(matches!(err, ActorError::Crashed { .. }), "{err}");
    assert!(err.to_string().contains("unlucky"), "{err}");
    // Restarted from the last durable snapshot (10), and the shard still serves.
    assert_eq!(rt.ask_json(&key, json!(1)).await.expect("after"), json!(11));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_climbs_to_the_root_which_records_it_and_stops_the_node() {
    let store = Arc::new(MemoryStore::new());
    let mut config = RuntimeConfig::new(store.clone(), Arc::new(SystemClock::new()));
    config.shards_per_kind = 1;
    // Every level gives up at its first failure: tenant → shard → root.
    config.shard_intensity = vcos_supervision::Intensity {
        max_restarts: 0,
        period_ms: 60_000,
    };
    config.root_intensity = vcos_supervision::Intensity {
        max_restarts: 0,
        period_ms: 60_000,
    };
    let rt = Runtime::builder(config)
        .kind(Counter)
        .start()
        .await
        .expect("start");
    let fragile = TenantId::new("fragile").expect("name");
    rt.put_tenant(
        fragile,
        TenantPolicy {
            max_restarts: 1,
            restart_period_ms: 60_000,
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let me = Caller::internal(&fragile, "test");
    let key = rt
        .create_imvu(&fragile, "counter", &me)
        .await
        .expect("create")
        .key;
    // First crash: restarted (1 of 1 allowed). Second: the tenant supervisor escalates.
    for _ in 0..2 {
        let err = rt.ask_json(&key, json!({"op":"crash"})).await.unwrap_err();
        assert!(matches!(err, ActorError::Crashed { .. }), "{err}");
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), rt.escalated())
        .await
        .expect("root escalates");
    assert!(reason.contains("shard supervisor"), "{reason}");
    assert!(rt
        .node()
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst));
    let recorded = store
        .scan_prefix(vcos_actors::ESCALATIONS_PREFIX, None, 10)
        .expect("scan");
    assert_eq!(
        recorded.len(),
        1,
        "the root records its escalation in canon"
    );
    let history = rt.history(&key).expect("history");
    let decisions: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.record {
            HistoryEvent::Supervision(s) => Some(s.decision.clone()),
            HistoryEvent::Transition(_) => None,
        })
        .collect();
    assert_eq!(
        decisions,
        vec!["restarted".to_owned(), "escalated".to_owned()]
    );
}

//! Swarms end to end: pull-based hand-out, re-handout when members crash or die, exactly-once
//! credit, nesting, shared memory, votes, and recovery from disk.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vcos_actors::swarm::{MemberRef, SwarmSpec, SwarmStatus};
use vcos_actors::{
    Caller, CanonStore, ImvuId, ImvuKey, MemoryStore, RedbStore, Runtime, SwarmKey,
    TenantId, Transition,
};

mod common;

async fn start(store: Arc<dyn CanonStore>) -> Runtime {
    common::start(store, None).await
}

fn spec(members: u32) -> SwarmSpec {
    SwarmSpec {
        member_kind: Some("text-worker".into()),
        members,
        max_in_flight_per_member: 2,
        ..SwarmSpec::default()
    }
}

async fn wait_done(rt: &Runtime, key: &SwarmKey, expect: u64) -> vcos_actors::swarm::Progress {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let progress = rt.swarm_info(key).await.expect("info").progress;
        if progress.completed + progress.dead_lettered >= expect {
            return progress;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "swarm stuck: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn words(i: usize) -> serde_json::Value {
    json!({"op":"word_count","text": "one two three ".repeat(i % 5 + 1)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_credited_exactly_once_despite_crashes_and_a_death() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let t = TenantId::default_tenant();
    let caller = Caller::internal(&TenantId::default_tenant(), "test");
    let swarm = rt
        .create_swarm(
            &t,
            SwarmSpec {
                max_restarts: 100,
                ..spec(3)
            },
            &caller,
        )
        .await
        .expect("swarm");
    let mut items: Vec<serde_json::Value> = (0..60).map(words).collect();
    // Poisoned items crash whichever member takes them: handed out again, then dead-lettered.
    items.insert(10, json!({"op":"poison"}));
    items.insert(30, json!({"op":"poison"}));
    let ids = rt.submit_work(&swarm.key, items).await.expect("submit");
    // A member dies mid-task: its items go to the others.
    let MemberRef::Imvu(victim) = swarm.members[0] else {
        panic!("imvu member")
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    rt.transition(
        &ImvuKey {
            tenant: t.clone(),
            id: ImvuId(victim),
        },
        Transition::Terminate,
        &caller,
    )
    .await
    .expect("terminate");
    let progress = wait_done(&rt, &swarm.key, ids.len() as u64).await;
    assert_eq!(progress.completed, 60, "{progress:?}");
    assert_eq!(progress.dead_lettered, 2);
    assert_eq!(progress.pending + progress.in_flight, 0);
    let credits = rt.swarm_credits(&swarm.key).await.expect("credits");
    let credited: BTreeSet<u64> = credits.iter().map(|c| c.item).collect();
    assert_eq!(credits.len(), 60);
    assert_eq!(credited.len(), 60, "an item was credited twice");
    // Credits add up to the work the members' own state says they did.
    let mut items_by_members = 0;
    for member in &swarm.members[1..] {
        let MemberRef::Imvu(id) = member else {
            continue;
        };
        let info = rt
            .inspect(&ImvuKey {
                tenant: t.clone(),
                id: ImvuId(*id),
            })
            .await
            .expect("inspect");
        items_by_members += info.state["items"].as_u64().expect("items");
    }
    let credited_to_survivors = credits
        .iter()
        .filter(|c| c.member != swarm.members[0])
        .count() as u64;
    assert_eq!(items_by_members, credited_to_survivors);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_swarm_memory_and_vote() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let t = TenantId::default_tenant();
    let caller = Caller::internal(&TenantId::default_tenant(), "test");
    let inner = rt.create_swarm(&t, spec(2), &caller).await.expect("inner");
    let outer = rt
        .create_swarm(
            &t,
            SwarmSpec {
                member_swarms: vec![inner.key.id.0],
                ..spec(1)
            },
            &caller,
        )
        .await
        .expect("outer");
    let ids = rt
        .submit_work(&outer.key, (0..20).map(words).collect())
        .await
        .expect("submit");
    wait_done(&rt, &outer.key, ids.len() as u64).await;
    let credits = rt.swarm_credits(&outer.key).await.expect("credits");
    assert_eq!(credits.len(), 20);
    let by_inner = credits
        .iter()
        .filter(|c| c.member == MemberRef::Swarm(inner.key.id.0))
        .count();
    let inner_credits = rt.swarm_credits(&inner.key).await.expect("inner credits").len();
    assert_eq!(
        by_inner, inner_credits,
        "each item done by the sub-swarm is credited in both, once"
    );

    rt.swarm_memory_put(&outer.key, "plan", json!({"step": 2}))
        .await
        .expect("put");
    assert_eq!(
        rt.swarm_memory_get(&outer.key, "plan").expect("get"),
        Some(json!({"step": 2}))
    );
    assert!(rt
        .swarm_memory_put(&outer.key, "a/b", json!(1))
        .await
        .is_err());

    let vote = rt
        .open_vote(
            &outer.key,
            "ship it?".into(),
            vec!["yes".into(), "no".into()],
            None,
        )
        .await
        .expect("vote");
    assert_eq!(vote.quorum, 2);
    let v = rt
        .cast_vote(&outer.key, vote.id, outer.members[0], "yes".into())
        .await
        .expect("cast");
    assert_eq!(v.decision, None);
    let v = rt
        .cast_vote(&outer.key, vote.id, outer.members[1], "yes".into())
        .await
        .expect("cast");
    assert_eq!(v.decision.as_deref(), Some("yes"));
    assert!(rt
        .cast_vote(&outer.key, vote.id, MemberRef::Imvu(999_999), "no".into())
        .await
        .is_err());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_items_spend_their_attempts_not_the_swarms_intensity() {
    let rt = start(Arc::new(MemoryStore::new())).await;
    let t = TenantId::default_tenant();
    // One restart allowed: three poison items crashing members three times each would have
    // failed the swarm when crashes on items counted against it.
    let swarm = rt
        .create_swarm(
            &t,
            SwarmSpec {
                max_restarts: 1,
                max_attempts: 3,
                ..spec(2)
            },
            &Caller::internal(&t, "t"),
        )
        .await
        .expect("swarm");
    rt.submit_work(&swarm.key, vec![json!({"op":"poison"}); 3])
        .await
        .expect("submit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = rt.swarm_info(&swarm.key).await.expect("info");
        assert!(!matches!(info.status, SwarmStatus::Failed { .. }), "{:?}", info.status);
        if info.progress.dead_lettered == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "poison items never dead-lettered: {:?}", info.progress);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids = rt.submit_work(&swarm.key, vec![json!({"op":"upper","text":"ok"})]).await.expect("submit");
    assert_eq!(ids.len(), 1, "the swarm still takes work");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_items_survive_a_node_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("canon.redb");
    let t = TenantId::default_tenant();
    let key = {
        let store = Arc::new(RedbStore::open(&path).expect("open"));
        let rt = start(store.clone()).await;
        let swarm = rt
            .create_swarm(&t, spec(2), &Caller::internal(&t, "t"))
            .await
            .expect("swarm");
        rt.submit_work(&swarm.key, (0..40).map(words).collect())
            .await
            .expect("submit");
        // Stop at once: some items done, some not.
        rt.shutdown().await;
        store.close();
        swarm.key
    };
    let rt = start(Arc::new(RedbStore::open(&path).expect("reopen"))).await;
    wait_done(&rt, &key, 40).await;
    let credits = rt.swarm_credits(&key).await.expect("credits");
    assert_eq!(credits.len(), 40);
    assert_eq!(
        credits
            .iter()
            .map(|c| c.item)
            .collect::<BTreeSet<_>>()
            .len(),
        40
    );
    rt.shutdown().await;
}

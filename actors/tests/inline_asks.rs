//! Asks to an idle shard run on their callers' threads (`host::link`): they keep each
//! sender's order, answer what the shard task would have, and leave the shard task able to
//! stop when the runtime's handles are gone.

use std::sync::Arc;

use vcos_actors::kinds::{Counter, CounterMsg};
use vcos_actors::{Caller, ManualClock, MemoryStore, Runtime, RuntimeConfig, TenantId, TenantPolicy};

async fn start(shards: usize) -> Runtime {
    let mut config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(ManualClock::new(0)));
    config.shards_per_kind = shards;
    let rt = Runtime::builder(config).kind(Counter).start().await.expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("tenant");
    rt
}

fn caller() -> Caller {
    Caller::internal(&TenantId::default_tenant(), "test")
}

/// A tell still in the channel is not overtaken by the same sender's ask.
#[tokio::test(flavor = "current_thread")]
async fn an_ask_after_a_queued_tell_sees_it() {
    let rt = start(1).await;
    let key = rt.create_imvu(&TenantId::default_tenant(), "counter", &caller()).await.expect("create").key;
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    for round in 1..=50i64 {
        counters.tell(&key, CounterMsg::Add { n: 1 }).await.expect("tell");
        assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), round, "the ask overtook the tell of round {round}");
    }
    rt.shutdown().await;
}

/// Senders on several threads, each telling then asking: an ask never misses its own sender's
/// earlier tells, and nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_keep_their_own_order() {
    const SENDERS: i64 = 4;
    const ROUNDS: i64 = 2_000;
    let rt = start(1).await;
    let key = rt.create_imvu(&TenantId::default_tenant(), "counter", &caller()).await.expect("create").key;
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            for own in 1..=ROUNDS {
                counters.tell(&key, CounterMsg::Add { n: 1 }).await.expect("tell");
                let seen = counters.ask(&key, CounterMsg::Get).await.expect("get");
                assert!(seen >= own, "saw {seen} after {own} tells of its own");
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), SENDERS * ROUNDS);
    rt.shutdown().await;
}

/// Asks that change state (one commit each) give the same answers inline as through the
/// channel, and the state is canon's: after the runtime restarts on the same store, it is
/// all there.
#[tokio::test(flavor = "current_thread")]
async fn inline_asks_are_durable_acknowledgements() {
    let store = Arc::new(MemoryStore::new());
    let mut config = RuntimeConfig::new(store.clone(), Arc::new(ManualClock::new(0)));
    config.shards_per_kind = 1;
    let rt = Runtime::builder(config).kind(Counter).start().await.expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("tenant");
    let key = rt.create_imvu(&TenantId::default_tenant(), "counter", &caller()).await.expect("create").key;
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    for n in 1..=100i64 {
        assert_eq!(counters.ask(&key, CounterMsg::Add { n: 1 }).await.expect("add"), n);
    }
    rt.shutdown().await;
    let mut config = RuntimeConfig::new(store, Arc::new(ManualClock::new(0)));
    config.shards_per_kind = 1;
    let rt = Runtime::builder(config).kind(Counter).start().await.expect("restart");
    let counters = rt.kind_ref::<Counter>().expect("counter kind");
    assert_eq!(counters.ask(&key, CounterMsg::Get).await.expect("get"), 100);
    rt.shutdown().await;
}

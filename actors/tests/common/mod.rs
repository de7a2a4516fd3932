//! Shared set-up of the runtime integration tests.

use std::sync::Arc;

use vcos_actors::kinds::{Counter, KvMemory, TextWorker};
use vcos_actors::{CanonStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

/// A runtime with the shipped kinds and the default tenant, on `store`; `shards` per kind when
/// given (else the runtime's default).
pub(crate) async fn start(store: Arc<dyn CanonStore>, shards: Option<usize>) -> Runtime {
    let mut config = RuntimeConfig::new(store, Arc::new(SystemClock::new()));
    if let Some(shards) = shards {
        config.shards_per_kind = shards;
    }
    let rt = Runtime::builder(config)
        .kind(Counter)
        .kind(KvMemory)
        .kind(TextWorker)
        .start()
        .await
        .expect("start");
    rt.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default())
        .await
        .expect("tenant");
    rt
}

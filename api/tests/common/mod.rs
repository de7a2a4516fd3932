//! What the facade's integration tests share: a node as `vcos up` starts its runtime (the
//! kinds that ship, the default tenant, the first cluster-admin key), in process.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use vcos_actors::kinds::{Counter, KvMemory, TextWorker};
use vcos_actors::{MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

/// A runtime over an in-memory canon, the metrics handle `/metrics` renders, and the text of
/// the first cluster-admin key.
pub(crate) async fn runtime_with_admin() -> (Runtime, PrometheusHandle, String) {
    // Before the runtime: its metrics bind to the recorder present when they are registered.
    let metrics = vcos_api::install_metrics_recorder();
    let mut config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    config.shards_per_kind = 2;
    let runtime = Runtime::builder(config).kind(Counter).kind(KvMemory).kind(TextWorker).start().await.expect("runtime starts");
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("default tenant");
    let (_, admin) = runtime.keys().bootstrap().await.expect("bootstrap").expect("the first cluster-admin key");
    (runtime, metrics, admin.expose().to_owned())
}

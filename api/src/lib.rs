//! The HTTP facade of v-COS: JSON over axum in front of [`vcos_actors::Runtime`], with an
//! OpenAPI document generated from the handlers and Prometheus metrics.
//!
//! - [`router`] builds every route (see `routes/`); [`serve`] runs it with graceful shutdown.
//! - [`install_metrics_recorder`] installs the process-wide metrics recorder whose handle
//!   `/metrics` renders.
//! - [`ApiError`] is the one error type; its `IntoResponse` is the one place where failures
//!   become statuses and `{"code","message"}` bodies.
//! - [`wire`] holds the request/response types and their schemas, mirroring runtime types.
//!
//! Invariants: every response a client sees for an error is JSON in the [`ErrorBody`] shape,
//! including axum's own rejections, 405s and the body-limit 413; request bodies are bounded
//! by [`BODY_LEN_MAX`]; metric labels are bounded (route templates, not raw paths).
//!
//! Every route but `/health` needs a server-issued API key (`auth.rs`: one table of what each
//! route needs, one middleware that checks it, the same table annotating the document).
//!
//! Deliberate absences: no business logic (lifecycle, admission and authorisation of
//! transitions are the runtime's handshake); no TLS (terminate it in front of the node).

use std::future::{Future, IntoFuture};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use vcos_actors::Runtime;

mod audit;
mod auth;
mod conn;
mod describe;
mod limits;
pub mod error;
mod extract;
mod middleware;
mod routes;
pub mod wire;

pub use error::{ApiError, ErrorBody};
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Largest request body accepted (1 MiB); larger ones are refused with 413 `too_large`.
pub const BODY_LEN_MAX: usize = 1024 * 1024;

/// Name of the request latency histogram.
pub const HTTP_DURATION_METRIC: &str = "vcos_http_request_duration_seconds";
/// Name of the request counter.
pub const HTTP_REQUESTS_METRIC: &str = "vcos_http_requests_total";

/// Bucket bounds of the latency histogram, seconds (0.1 ms to 10 s).
const HTTP_DURATION_BUCKETS_S: &[f64] = &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Name of the histogram of the caller's resolution by the authorisation middleware (key,
/// tenant scope, role, the tenant's policy and its rate-limit admission; `auth.rs`).
pub const HTTP_AUTH_RESOLUTION_METRIC: &str = "vcos_http_auth_resolution_seconds";
/// Its bucket bounds, seconds (1 µs to 10 ms): fine below 50 µs, where the target (p99 < 10 µs)
/// is, so that a quantile read from the buckets is precise there (`vcos bench http` does).
const HTTP_AUTH_RESOLUTION_BUCKETS_S: &[f64] = &[
    0.000_001, 0.000_002, 0.000_003, 0.000_004, 0.000_005, 0.000_006, 0.000_008, 0.000_010, 0.000_015, 0.000_020, 0.000_030,
    0.000_050, 0.000_100, 0.000_250, 0.001, 0.01,
];
/// How often histogram buffers are folded while serving (they are folded on every scrape too).
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(5);
/// After shutdown is asked, how long requests in flight may take before they are cut. A
/// message to a paused IMVU waits for its resume, which may never come: draining is bounded.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// What every handler shares, behind one `Arc`: axum clones the state for every handler and
/// middleware of every request, and a clone of the fields themselves (a dozen reference
/// counts) showed up in profiles of the canon's write path (its drop alone 2 % of the CPU).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub(crate) struct Shared {
    pub(crate) runtime: Runtime,
    pub(crate) metrics: PrometheusHandle,
    /// Serialises tenant creation (check-then-put of names and keys).
    pub(crate) tenant_creation: Arc<tokio::sync::Mutex<()>>,
    /// The canon cluster of this node (absent when the runtime runs on another store).
    pub(crate) canon: Option<vcos_canon_raft::RaftCanonStore>,
    /// Placement: IMVU requests go to their owner node (absent: everything is local).
    pub(crate) cluster: Option<vcos_cluster::Cluster>,
    /// Ids of requests that bring none.
    pub(crate) request_ids: Arc<audit::RequestIds>,
    /// Sampling of unauthenticated refusals for the audit log.
    pub(crate) refusal_samples: Arc<audit::RefusalSamples>,
    /// Tenants' rate and concurrency limits, and failing sources.
    pub(crate) limiter: Arc<limits::Limiter>,
    /// No authentication, limits or audit: set only by
    /// [`router_without_security_for_benchmarks`] (`vcos bench http`'s "off" side).
    pub(crate) without_security: bool,
    /// The models this node serves (none unless started with them).
    pub(crate) inference: Arc<vcos_gpu_workers::serve::Inference>,
    /// The models of the cluster's other nodes (those with the `inference` role): used when
    /// this node does not serve the model asked for, or its queue is full.
    pub(crate) remote_models: Option<Arc<dyn vcos_actors::models::ModelService>>,
    /// The node's desktop host (`vcos up --desktops`), if it runs desktops.
    pub(crate) desktops: Option<vcos_gpu_workers::desktop::Desktops>,
}

impl AppState {
    fn new(runtime: Runtime, metrics: PrometheusHandle, canon: Option<vcos_canon_raft::RaftCanonStore>, cluster: Option<vcos_cluster::Cluster>) -> Self {
        Self(Arc::new(Shared::new(runtime, metrics, canon, cluster)))
    }
}

impl Shared {
    fn new(
        runtime: Runtime,
        metrics: PrometheusHandle,
        canon: Option<vcos_canon_raft::RaftCanonStore>,
        cluster: Option<vcos_cluster::Cluster>,
    ) -> Self {
        let request_ids = Arc::new(audit::RequestIds::new(&runtime));
        let remote_models = cluster.as_ref().map(|c| c.remote_models() as Arc<dyn vcos_actors::models::ModelService>);
        Self {
            remote_models,
            desktops: None,
            runtime,
            metrics,
            tenant_creation: Arc::default(),
            canon,
            cluster,
            request_ids,
            refusal_samples: Arc::default(),
            limiter: Arc::default(),
            without_security: false,
            inference: Arc::new(vcos_gpu_workers::serve::Inference::none()),
        }
    }
}

/// Every route of the API, around `runtime`; `/metrics` renders `metrics`.
///
/// Routes: `GET /health`, `GET /metrics`, `GET /openapi.json`, Swagger UI under `/docs`,
/// `GET /v1/kinds`, `GET|POST /v1/tenants`, `POST /v1/tenants/{tenant}/imvus`,
/// `GET /v1/tenants/{tenant}/imvus/{id}`, `POST …/{id}/messages`, `POST …/{id}/pause`,
/// `POST …/{id}/resume`, `POST …/{id}/terminate`, `GET …/{id}/history`;
/// `POST /v1/tenants/{tenant}/swarms`, `GET /v1/tenants/{tenant}/swarms/{id}`,
/// `POST …/{id}/work`, `GET …/{id}/credits`, `PUT|GET …/{id}/memory/{key}`,
/// `POST …/{id}/votes`, `POST …/{id}/votes/{vote}/ballots`; the canon routes
/// (`/v1/canon/status`, `/v1/canon/kv…`, `/v1/canon/members…`) answer 500 `store_error` here:
/// they need [`router_with_canon`].
pub fn router(runtime: Runtime, metrics: PrometheusHandle) -> axum::Router {
    routes::build(AppState::new(runtime, metrics, None, None))
}

/// [`router`] plus the `/v1/canon/…` routes over `canon` (status, key-value, membership).
pub fn router_with_canon(runtime: Runtime, metrics: PrometheusHandle, canon: vcos_canon_raft::RaftCanonStore) -> axum::Router {
    routes::build(AppState::new(runtime, metrics, Some(canon), None))
}

/// [`router_with_canon`] with placement: IMVU routes reach each IMVU on the node that owns it
/// (any node accepts any request and forwards it), and `GET /v1/cluster` lists the members.
pub fn router_with_cluster(
    runtime: Runtime,
    metrics: PrometheusHandle,
    canon: vcos_canon_raft::RaftCanonStore,
    cluster: vcos_cluster::Cluster,
) -> axum::Router {
    routes::build(AppState::new(runtime, metrics, Some(canon), Some(cluster)))
}

/// [`router_with_cluster`] (or, without canon and cluster, [`router`]) plus the models of
/// `inference` behind the OpenAI-shaped routes (`GET /v1/models`, `POST /v1/embeddings`,
/// `POST /v1/chat/completions`). With a cluster, a model this node does not serve (or whose
/// queue is full) is served by a node with the `inference` role; with none anywhere, those
/// routes list none and answer 503 naming `vcos models install`. With `desktops`, the
/// `/v1/tenants/{tenant}/sessions…` routes run virtual desktops on this node.
pub fn router_with_inference(
    runtime: Runtime,
    metrics: PrometheusHandle,
    canon: Option<vcos_canon_raft::RaftCanonStore>,
    cluster: Option<vcos_cluster::Cluster>,
    inference: Arc<vcos_gpu_workers::serve::Inference>,
    desktops: Option<vcos_gpu_workers::desktop::Desktops>,
) -> axum::Router {
    let mut state = Shared::new(runtime, metrics, canon, cluster);
    state.inference = inference;
    state.desktops = desktops;
    routes::build(AppState(Arc::new(state)))
}

/// **For benchmarks only; never serve it to anyone.** [`router_with_cluster`] without its
/// security: no key is asked for or checked, no tenant scope or role, no rate or concurrency
/// limit, no request id, nothing written to the audit log. Each handler acts as an in-process
/// caller of the path's tenant (`Caller::internal`). Everything else — routes, extractors,
/// handlers, the observation and JSON-error layers, placement, the runtime — is the same.
///
/// `vcos bench http` serves it in-process, next to [`router_with_cluster`] over the same
/// runtime, to measure what security costs (metering it switches off per tenant with
/// `TenantUsage::pause_for_benchmark`). Nothing else calls it: `vcos up` has no option that
/// reaches it. As a guard, it answers 403 to every request unless it is served by [`serve`]
/// on a loopback address.
#[doc(hidden)]
pub fn router_without_security_for_benchmarks(
    runtime: Runtime,
    metrics: PrometheusHandle,
    canon: vcos_canon_raft::RaftCanonStore,
    cluster: vcos_cluster::Cluster,
) -> axum::Router {
    let mut state = Shared::new(runtime, metrics, Some(canon), Some(cluster));
    state.without_security = true;
    routes::build(AppState(Arc::new(state)))
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for requests in flight to finish, at most [`SHUTDOWN_DRAIN_MAX`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = RECORDER.get().cloned().map(|handle| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP_PERIOD);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    let (asked, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = asked.send(());
    };
    // The authorisation middleware opens `/metrics` only to a node bound to loopback.
    let router = match listener.local_addr() {
        Ok(addr) => router.layer(axum::Extension(auth::ListenAddr(addr))),
        Err(_) => router,
    };
    // Peer addresses reach the audit log through `ConnectInfo`.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Answers hyper gives itself (414, 431, 400) go out as JSON errors (see `conn`); each
    // connection without Nagle's delay (small request/response exchanges).
    let listener = axum::serve::ListenerExt::tap_io(conn::JsonErrorListener(listener), |io| {
        if let Err(e) = io.get_ref().set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let server = axum::serve(listener, service).with_graceful_shutdown(signal).into_future();
    let drain_expired = async move {
        if asked_rx.await.is_err() {
            // The server finished without a shutdown: nothing to bound.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await;
    };
    let result = tokio::select! {
        // biased: tokio's select RNG is unseeded; every select! in this workspace is biased.
        biased;
        result = server => result,
        () = drain_expired => {
            tracing::warn!(drain_s = SHUTDOWN_DRAIN_MAX.as_secs(), "requests still in flight after the drain period; cutting them");
            Ok(())
        }
    };
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    tracing::info!("HTTP API stopped");
    result
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns a handle to it.
///
/// Idempotent: later calls return the same handle. Call it before starting the runtime, since
/// the runtime's metrics bind to the recorder installed when they are first registered. If
/// another recorder was installed by someone else, this logs a warning and returns a handle
/// that renders (only what reaches it).
pub fn install_metrics_recorder() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION_METRIC.to_owned()), HTTP_DURATION_BUCKETS_S)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_AUTH_RESOLUTION_METRIC.to_owned()), HTTP_AUTH_RESOLUTION_BUCKETS_S))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "latency buckets refused; rendering it as a summary");
                    PrometheusBuilder::new()
                });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will not see the node's metrics");
            }
            describe::describe_all();
            handle
        })
        .clone()
}

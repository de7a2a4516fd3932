//! Schema-driven fuzzing of the HTTP API: requests generated from the OpenAPI document the
//! server serves, answers checked against the same document.
//!
//! For every operation of `GET /openapi.json` (all of them: an operation left out needs an
//! entry in [`INVALID_ONLY`] with its reason, and the test fails on a stale entry), from one
//! seed:
//! - **valid** requests: path parameters naming resources that exist (fixtures made first) or
//!   drawn from their schema, query parameters and JSON bodies drawn from their schemas. They
//!   must never be refused for their form: a 2xx, or a domain answer the operation documents
//!   ([`DOMAIN_ANSWERS`]: the resource does not exist, its state or its tenant's policy
//!   forbids it).
//! - **invalid** requests: one thing broken (a field of the wrong type, missing or unknown, a
//!   bound or pattern crossed, malformed JSON, another content type, a bad path segment or
//!   query value). They must get a 4xx with a JSON error body, never a 2xx or a 5xx.
//!
//! Every answer must have a status the operation declares, the content type declared for it,
//! and a body that validates against the declared schema (error bodies are always JSON
//! `ErrorBody`s). The document has no global answers (no `default`, no shared responses): the
//! server lists its shared refusals on each operation (`auth::annotate`,
//! `routes::document_extractors`), so each status is checked against its operation's list.
//! Failures are collected and reported together, grouped by operation.
//!
//! What the schema cannot say (which kinds exist, what an IMVU's kind takes, cross-field and
//! state rules) lives in [`domain_rules`], each rule with its reason, and in
//! [`look_up_drawn_imvu`], the one rule that asks the node.
//!
//! `VCOS_FUZZ_SEED` (default [`SEED_DEFAULT`]) and `VCOS_FUZZ_CASES` (valid and invalid
//! requests per operation, default [`CASES_DEFAULT`]) run it longer or elsewhere.
//!
//! The node is the one `api/tests/http.rs` starts (memory store, the three kinds, a
//! cluster-admin key), with a one-node canon behind the canon and tenant key-value routes:
//! without one they can only answer 500, and nothing valid could be checked there.

// A test crate's root looks for modules beside it; these live in `fuzz/`.
mod common;
#[path = "fuzz/generate.rs"]
mod generate;
#[path = "fuzz/schema.rs"]
mod schema;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, Request};
use serde_json::{json, Value};
use tower::ServiceExt;
use vcos_canon_raft::{CanonNode, NodeConfig, RaftCanonStore, TcpTransport};

use generate::Rng;
use schema::{cut, excerpt, Doc, Location, Operation, Parameter};

/// The seed when `VCOS_FUZZ_SEED` is not set.
const SEED_DEFAULT: u64 = 0x00F0_22ED;
/// Valid and invalid requests per operation when `VCOS_FUZZ_CASES` is not set (each).
const CASES_DEFAULT: u64 = 20;
/// Longest wait for one answer; a request that hangs is a failure, not a stuck suite.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(10);
/// Largest answer read (an export of the fixtures is far smaller).
const ANSWER_LEN_MAX: usize = 64 * 1024 * 1024;
/// Share of valid requests whose path names a fixture (the others draw the parameter from its
/// schema, which mostly names nothing: the operation's 404).
const FIXTURE_PERCENT: u64 = 80;
/// Examples printed per kind of failure of one operation (all are counted).
const EXAMPLES_PER_FAILURE_MAX: usize = 3;

/// Non-2xx answers a valid request may get, when its operation documents the status (any
/// code where none is named): the thing named does not exist (a drawn id, a key never
/// written); its state forbids the request now (pausing a paused IMVU, a decided vote, a
/// revoked key); the tenant's policy or quota refuses it (tenants the fuzzer created itself
/// have drawn policies, and drawn tenant names meet them). Never 400, 413, 415 or 422: a
/// request the document calls valid must not be refused for its form.
const DOMAIN_ANSWERS: &[(u16, Option<&str>)] = &[(404, None), (409, None), (403, Some("handshake_refused")), (429, Some("quota_exceeded"))];

/// Operations sent invalid requests only, and why no valid ones. Keep it short: each entry is
/// coverage lost (and the test fails on an entry that names no operation).
const INVALID_ONLY: &[(&str, &str, &str)] = &[(
    "POST",
    "/v1/canon/members",
    "a valid request adds an unreachable node to the only canon group under test (a voter is then awaited for seconds)",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_its_document_says() {
    let seed = env_u64("VCOS_FUZZ_SEED", SEED_DEFAULT);
    let cases = env_u64("VCOS_FUZZ_CASES", CASES_DEFAULT);
    println!("fuzz: seed {seed:#x} ({seed}), {cases} valid + {cases} invalid requests per operation (VCOS_FUZZ_SEED, VCOS_FUZZ_CASES)");
    let started = Instant::now();
    let node = Node::start().await;
    let doc = node.document().await;
    let fixtures = Fixtures::make(&node).await;
    let mut rng = Rng::new(seed);
    let mut failures = check_document(&doc);
    let mut sent_total = 0;
    for op in fuzz_order(doc.operations()) {
        let withheld = INVALID_ONLY.iter().find(|(m, p, _)| *m == op.method && *p == op.path).map(|(_, _, why)| *why);
        let report = fuzz_operation(&node, &doc, &op, withheld, &fixtures, &mut rng, cases).await;
        println!(
            "fuzz: {:<60} {:>4} valid ({:>4} 2xx) {:>4} invalid{}",
            op.name(),
            report.valid,
            report.accepted,
            report.invalid,
            report.note
        );
        sent_total += report.valid + report.invalid;
        failures.extend(report.failures);
    }
    node.stop().await;
    println!("fuzz: {sent_total} requests in {:.1} s, seed {seed:#x}", started.elapsed().as_secs_f64());
    assert!(sent_total > 0, "no request was sent");
    if !failures.is_empty() {
        panic!("{}", report_failures(&failures, seed));
    }
}

/// The checker checked: the validator refuses each kind of breakage the document's keywords
/// describe, and the generator's valid values pass it while its invalid ones do not.
#[test]
fn the_validator_and_the_generator_agree_on_a_schema() {
    let doc = Doc::new(json!({"components": {"schemas": {
        "Key": {"type": "object", "required": ["id", "role"], "additionalProperties": false, "properties": {
            "id": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 100},
            "role": {"oneOf": [{"type": "string", "enum": ["app", "viewer"]}, {"type": "null"}]},
            "name": {"type": ["string", "null"], "minLength": 1, "maxLength": 8, "pattern": "^[a-z]+$"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        }},
    }}}));
    let key = json!({"$ref": "#/components/schemas/Key"});
    assert!(doc.is_valid(&key, &json!({"id": 3, "role": "app", "name": "ab", "tags": ["x"]})));
    let broken = [
        json!({"role": "app"}),
        json!({"id": -1, "role": "app"}),
        json!({"id": 101, "role": "app"}),
        json!({"id": "3", "role": "app"}),
        json!({"id": 1.5, "role": "app"}),
        json!({"id": 3, "role": "root"}),
        json!({"id": 3, "role": null, "name": "AB"}),
        json!({"id": 3, "role": null, "name": "abcdefghi"}),
        json!({"id": 3, "role": null, "tags": []}),
        json!({"id": 3, "role": null, "extra": 1}),
    ];
    for value in broken {
        assert!(!doc.is_valid(&key, &value), "the validator took {value}");
    }
    let mut rng = Rng::new(SEED_DEFAULT);
    for _ in 0..200 {
        let value = generate::valid(&doc, &key, &mut rng).expect("a valid value");
        if let Some((bad, why)) = generate::invalid(&doc, &key, &value, &mut rng).expect("an invalid value") {
            assert!(!doc.is_valid(&key, &bad), "{why}: {bad} passes");
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text:?}: not a number ({e})"))
        }
        Err(_) => default,
    }
}

/// Operations in document order, those that stop or remove things last and the erasure of
/// tenants very last: they must not take a fixture away before the operations that use it
/// ran (a drawn id may name a swarm's member: pausing or terminating it stalls or fails the
/// swarm).
fn fuzz_order(mut operations: Vec<Operation>) -> Vec<Operation> {
    operations.sort_by_key(|op| (erases_tenant(op), stops_things(op)));
    operations
}

fn stops_things(op: &Operation) -> bool {
    op.method == "DELETE" || ["/pause", "/resume", "/terminate"].iter().any(|s| op.path.ends_with(s))
}

/// Whether `op` erases the tenant its path names: it gets tenants of its own to erase.
fn erases_tenant(op: &Operation) -> bool {
    op.method == "DELETE" && op.path == "/v1/tenants/{tenant}"
}

// ---------------------------------------------------------------------------------------------
// The node under test.

/// A runtime and its router, as `http.rs` starts them, plus a one-node canon.
struct Node {
    router: axum::Router,
    /// The cluster-admin key every request presents.
    admin: String,
    canon: CanonNode,
    raft_server: tokio::task::JoinHandle<()>,
    desktops: vcos_gpu_workers::desktop::Desktops,
    _canon_dir: tempfile::TempDir,
}

/// What came back.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Bytes,
}

/// A request as sent, kept for messages.
#[derive(Clone, Debug)]
struct Sent {
    method: String,
    uri: String,
    /// `Content-Type`, when a body goes with it.
    content_type: Option<String>,
    body: Option<String>,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, cut(&self.uri, 200))?;
        if let Some(content_type) = &self.content_type {
            write!(f, " [{content_type}]")?;
        }
        if let Some(body) = &self.body {
            write!(f, " {}", cut(body, 300))?;
        }
        Ok(())
    }
}

impl Node {
    async fn start() -> Self {
        let (runtime, metrics, admin) = common::runtime_with_admin().await;
        let canon_dir = tempfile::TempDir::new().expect("temp dir for the canon");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the canon's port");
        let mut canon_config = NodeConfig::new(1, "local", &canon_dir.path().join("canon"));
        canon_config.info.raft_addr = listener.local_addr().expect("canon address").to_string();
        let canon = CanonNode::start(canon_config, Arc::new(TcpTransport)).await.expect("canon node starts");
        let raft_server = tokio::spawn({
            let canon = canon.clone();
            async move {
                let _ = canon.serve(listener).await;
            }
        });
        canon.bootstrap().await.expect("canon bootstrap");
        let store = RaftCanonStore::start(canon.clone());
        // Real desktops (Xvfb, as `.ci/run` installs it) behind the session routes, on a display
        // range of their own, no warm pool.
        let mut desktop_config = vcos_gpu_workers::desktop::DesktopConfig::new(1, canon_dir.path().join("desktops"));
        desktop_config.displays = (800, 849);
        desktop_config.pool_per_tier = 0;
        let desktops = vcos_gpu_workers::desktop::Desktops::start(runtime.clone(), desktop_config).await.expect("Xvfb is installed (apt-get install xvfb)");
        let inference = Arc::new(vcos_gpu_workers::serve::Inference::none());
        let router = vcos_api::router_with_inference(runtime, metrics, Some(store), None, inference, Some(desktops.clone()));
        Self { router, admin, canon, raft_server, desktops, _canon_dir: canon_dir }
    }

    async fn stop(self) {
        self.desktops.shutdown().await;
        self.raft_server.abort();
        self.canon.shutdown().await;
    }

    /// Sends `sent` with the admin key.
    async fn send(&self, sent: &Sent) -> Result<Answer, String> {
        let mut request =
            Request::builder().method(sent.method.as_str()).uri(&sent.uri).header(header::AUTHORIZATION, format!("Bearer {}", self.admin));
        if let Some(content_type) = &sent.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let body = sent.body.clone().map_or_else(Body::empty, Body::from);
        let request = request.body(body).map_err(|e| format!("the fuzzer built an unsendable request: {e}"))?;
        let response = match tokio::time::timeout(ANSWER_WAIT_MAX, self.router.clone().oneshot(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => return Err(format!("no answer within {} s", ANSWER_WAIT_MAX.as_secs())),
        };
        let status = response.status().as_u16();
        let content_type = response.headers().get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match tokio::time::timeout(ANSWER_WAIT_MAX, axum::body::to_bytes(response.into_body(), ANSWER_LEN_MAX)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return Err(format!("the body could not be read: {e}")),
            Err(_) => return Err(format!("the body did not end within {} s", ANSWER_WAIT_MAX.as_secs())),
        };
        Ok(Answer { status, content_type, body })
    }

    /// Setup only: sends JSON, expects `expect_status`, returns the JSON answer.
    async fn call(&self, method: &str, uri: &str, body: Option<Value>, expect_status: u16) -> Value {
        let sent = Sent {
            method: method.into(),
            uri: uri.into(),
            content_type: body.as_ref().map(|_| "application/json".into()),
            body: body.map(|b| b.to_string()),
        };
        let answer = self.send(&sent).await.expect("setup requests are answered");
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, expect_status, "setup: {sent} answered {text}");
        if answer.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer.body).expect("setup answers are JSON")
        }
    }

    async fn document(&self) -> Doc {
        Doc::new(self.call("GET", "/openapi.json", None, 200).await)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: things that exist, for path parameters to name.

/// An IMVU and its kind (what it takes depends on it).
#[derive(Clone, Debug)]
struct Imvu {
    id: u64,
    kind: String,
}

struct Fixtures {
    /// The kinds the node serves.
    kinds: Vec<String>,
    /// One IMVU per kind that only gets messages and reads: never paused, so a message to it
    /// is always answered.
    steady: Vec<Imvu>,
    /// IMVUs for pause, resume and terminate (never sent messages: one held by a pause would
    /// wait for a resume that may not come).
    lifecycle: Vec<Imvu>,
    /// Swarms of the default tenant: the first one has text-worker members and an open vote.
    swarms: Vec<u64>,
    /// The first swarm's members, as `SwarmMember` JSON.
    swarm_members: Vec<Value>,
    /// The open vote of the first swarm, and its options.
    vote: u64,
    vote_options: Vec<String>,
    /// A key of the default tenant and a cluster key, both safe to revoke (never the admin's).
    tenant_key: String,
    cluster_key: String,
    /// A key written in the swarm's memory, the tenant's key-value store and the canon's.
    memory_key: String,
    kv_key: String,
    /// Tenants made to be erased.
    erasable: Vec<String>,
}

/// How many lifecycle IMVUs: terminate ends one per valid request that names it.
const LIFECYCLE_IMVUS: usize = 4;
/// How many tenants to erase (erasing one twice is a documented 409).
const ERASABLE_TENANTS: usize = 3;

impl Fixtures {
    async fn make(node: &Node) -> Self {
        let kinds = node.call("GET", "/v1/kinds", None, 200).await;
        let kinds: Vec<String> =
            kinds["kinds"].as_array().expect("kinds").iter().map(|k| k["name"].as_str().expect("kind name").to_owned()).collect();
        let mut steady = Vec::new();
        for kind in &kinds {
            steady.push(create_imvu(node, kind).await);
        }
        let mut lifecycle = Vec::new();
        for _ in 0..LIFECYCLE_IMVUS {
            lifecycle.push(create_imvu(node, "counter").await);
        }
        let swarm = node.call("POST", "/v1/tenants/default/swarms", Some(json!({"member_kind": "text-worker", "members": 2})), 201).await;
        let swarm_id = swarm["key"]["id"].as_u64().expect("swarm id");
        let swarm_members = swarm["members"].as_array().expect("members").clone();
        let vote_options = vec!["yes".to_owned(), "no".to_owned()];
        let vote = node
            .call(
                "POST",
                &format!("/v1/tenants/default/swarms/{swarm_id}/votes"),
                Some(json!({"proposal": "fuzz?", "options": vote_options, "quorum": 2})),
                201,
            )
            .await;
        let memory_key = "topic".to_owned();
        node.call("PUT", &format!("/v1/tenants/default/swarms/{swarm_id}/memory/{memory_key}"), Some(json!({"value": "rust"})), 204).await;
        let kv_key = "greeting".to_owned();
        node.call("PUT", &format!("/v1/tenants/default/kv/{kv_key}"), Some(json!({"value": "hello"})), 200).await;
        node.call("PUT", &format!("/v1/canon/kv/{kv_key}"), Some(json!({"value": "hello"})), 200).await;
        let tenant_key = node.call("POST", "/v1/tenants/default/keys", Some(json!({"role": "app", "name": "fuzz"})), 201).await;
        let cluster_key = node.call("POST", "/v1/keys", Some(json!({"role": "metrics", "name": "fuzz"})), 201).await;
        let mut erasable = Vec::new();
        for i in 0..ERASABLE_TENANTS {
            let name = format!("fuzz-erasable-{i}");
            node.call("POST", "/v1/tenants", Some(json!({"name": name})), 201).await;
            erasable.push(name);
        }
        Self {
            kinds,
            steady,
            lifecycle,
            swarms: vec![swarm_id],
            swarm_members,
            vote: vote["id"].as_u64().expect("vote id"),
            vote_options,
            tenant_key: tenant_key["id"].as_str().expect("key id").to_owned(),
            cluster_key: cluster_key["id"].as_str().expect("key id").to_owned(),
            memory_key,
            kv_key,
            erasable,
        }
    }
}

async fn create_imvu(node: &Node, kind: &str) -> Imvu {
    let created = node.call("POST", "/v1/tenants/default/imvus", Some(json!({"kind": kind})), 201).await;
    Imvu { id: created["key"]["id"].as_u64().expect("IMVU id"), kind: kind.to_owned() }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A request being made: parameters by name, then the body.
#[derive(Clone, Debug, Default)]
struct Draft {
    /// Path parameters, raw (encoded when the URI is built).
    path: BTreeMap<String, String>,
    /// Query parameters, raw, in the order given.
    query: Vec<(String, String)>,
    body: Option<Value>,
    /// The body as sent, when it is not `body` serialised (malformed on purpose).
    raw_body: Option<String>,
    content_type: Option<String>,
    /// The IMVU the path names, when it is a fixture (its kind decides its messages).
    imvu: Option<Imvu>,
}

impl Draft {
    fn sent(&self, op: &Operation) -> Sent {
        let mut uri = String::new();
        for (i, segment) in op.path.split('/').enumerate() {
            if i > 0 {
                uri.push('/');
            }
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => uri.push_str(&percent_encode(self.path.get(name).map_or("", String::as_str))),
                None => uri.push_str(segment),
            }
        }
        for (i, (name, value)) in self.query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            let _ = write!(uri, "{}={}", percent_encode(name), percent_encode(value));
        }
        let body = self.raw_body.clone().or_else(|| self.body.as_ref().map(Value::to_string));
        let content_type = self.content_type.clone().or_else(|| body.as_ref().map(|_| "application/json".to_owned()));
        Sent { method: op.method.clone(), uri, content_type, body }
    }
}

/// Every byte but RFC 3986's unreserved characters, percent-encoded (so `.` and `..` stay
/// themselves: dot segments are among the things tried).
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A path or query value as text (`None`: leave the parameter out).
fn parameter_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A valid request of `op`.
fn valid_draft(doc: &Doc, op: &Operation, fixtures: &Fixtures, rng: &mut Rng) -> Result<Draft, String> {
    let mut draft = Draft::default();
    for parameter in op.parameters() {
        match parameter.location {
            Location::Path => {
                let value = match fixture_for(op, &parameter.name, fixtures, rng, &mut draft) {
                    Some(fixture) => fixture,
                    None => parameter_text(&generate::valid(doc, &parameter.schema, rng)?).unwrap_or_default(),
                };
                draft.path.insert(parameter.name.clone(), value);
            }
            Location::Query => {
                if parameter.required || rng.chance(50) {
                    if let Some(text) = parameter_text(&generate::valid(doc, &parameter.schema, rng)?) {
                        draft.query.push((parameter.name.clone(), text));
                    }
                }
            }
        }
    }
    if let Some((schema, required)) = op.body() {
        if required || rng.chance(80) {
            draft.body = Some(generate::valid(doc, &schema, rng)?);
        }
    }
    domain_rules(op, &mut draft, fixtures, rng);
    Ok(draft)
}

/// A path parameter naming a fixture ([`FIXTURE_PERCENT`] of the time), else `None` (drawn
/// from the schema).
fn fixture_for(op: &Operation, name: &str, fixtures: &Fixtures, rng: &mut Rng, draft: &mut Draft) -> Option<String> {
    if !rng.chance(FIXTURE_PERCENT) {
        return None;
    }
    let under = |segment: &str| op.path.contains(segment);
    let value = match name {
        "tenant" if erases_tenant(op) => rng.pick(&fixtures.erasable).clone(),
        "tenant" => "default".to_owned(),
        "id" if under("/imvus/") => {
            let lifecycle = ["/pause", "/resume", "/terminate"].iter().any(|s| op.path.ends_with(s));
            let imvu = rng.pick(if lifecycle { &fixtures.lifecycle } else { &fixtures.steady }).clone();
            draft.imvu = Some(imvu.clone());
            imvu.id.to_string()
        }
        "id" if under("/swarms/") => fixtures.swarms[0].to_string(),
        "vote" => fixtures.vote.to_string(),
        "key_id" if under("{tenant}") => fixtures.tenant_key.clone(),
        "key_id" => fixtures.cluster_key.clone(),
        "key" if under("/memory/") => fixtures.memory_key.clone(),
        "key" if under("/kv/") => fixtures.kv_key.clone(),
        _ => return None,
    };
    Some(value)
}

/// What the document cannot say and a valid request must still respect. Each rule says why
/// the schema cannot carry it; everything else about a valid request comes from the document.
fn domain_rules(op: &Operation, draft: &mut Draft, fixtures: &Fixtures, rng: &mut Rng) {
    match op.name().as_str() {
        // `kind` is a string: which kinds exist is the node's configuration, not the API's.
        "POST /v1/tenants/{tenant}/imvus" => set_field(draft, "kind", json!(rng.pick(&fixtures.kinds))),
        // `message` is an object: what it must hold is decided by the kind of the IMVU the path
        // names, which the document cannot know.
        "POST /v1/tenants/{tenant}/imvus/{id}/messages" => {
            let kind = draft.imvu.as_ref().map_or_else(|| rng.pick(&fixtures.kinds).clone(), |imvu| imvu.kind.clone());
            set_field(draft, "message", message_for(&kind, rng));
        }
        "POST /v1/tenants/{tenant}/swarms" => swarm_spec_rules(draft, fixtures, rng),
        // `quorum` is at most the swarm's members: the state of the swarm the path names.
        "POST /v1/tenants/{tenant}/swarms/{id}/votes" if draft.body.as_ref().is_some_and(|b| b["quorum"].is_u64()) => {
            let members = fixtures.swarm_members.len() as u64;
            set_field(draft, "quorum", json!(1 + rng.below(members)));
        }
        // `member` must be one of the swarm's, `choice` one of the vote's options: state.
        "POST /v1/tenants/{tenant}/swarms/{id}/votes/{vote}/ballots" => {
            set_field(draft, "member", rng.pick(&fixtures.swarm_members).clone());
            set_field(draft, "choice", json!(rng.pick(&fixtures.vote_options)));
        }
        // One role enum serves both key routes; which roles each issues is the route's rule
        // (documented in its 400): a tenant's roles under a tenant, the cluster's otherwise.
        // A drawn command line names no program: sessions start with none (an application that
        // cannot start is a documented 400 of its own, tested in e2e_sessions).
        "POST /v1/tenants/{tenant}/sessions" => {
            if let Some(body) = draft.body.as_mut().and_then(Value::as_object_mut) {
                body.remove("app");
            }
        }
        "POST /v1/tenants/{tenant}/workspaces" => {
            for session in draft.body.as_mut().and_then(|b| b["sessions"].as_array_mut()).into_iter().flatten() {
                if let Some(session) = session.as_object_mut() {
                    session.remove("app");
                }
            }
        }
        "POST /v1/tenants/{tenant}/keys" => set_field(draft, "role", json!(rng.pick(&["viewer", "app", "operator", "tenant_admin"]))),
        "POST /v1/keys" => set_field(draft, "role", json!(rng.pick(&["cluster_admin", "metrics"]))),
        // A range starts before it ends (`to_ms` defaults to now): a rule across two fields.
        "GET /v1/tenants/{tenant}/usage" => usage_range_rule(draft, rng),
        // A definition is an object to the schema; what makes it valid (kinds of steps, bound
        // variables, bounded loops) is the validator's, tested in the workflow module: a drawn
        // one of the valid definitions below, under one of their names.
        "PUT /v1/tenants/{tenant}/workflow-definitions/{name}" => {
            let (name, definition) = rng.pick(WORKFLOW_DEFINITIONS);
            draft.path.insert("name".into(), (*name).to_owned());
            draft.body = serde_json::from_str(definition).ok();
        }
        // `definition` or `workflow`, one of the two (a rule across two fields), and a
        // definition that exists once uploaded (404 before: a domain answer).
        "POST /v1/tenants/{tenant}/workflows" => {
            if let Some(body) = draft.body.as_mut().and_then(Value::as_object_mut) {
                body.remove("workflow");
                body.insert("definition".into(), json!(rng.pick(WORKFLOW_DEFINITIONS).0));
                // A schedule is a period of at least 100 ms, and `count` goes with it: rules the
                // schedule's own test covers; a wait is kept short.
                body.remove("every_ms");
                body.remove("count");
                if body.contains_key("wait_ms") {
                    body.insert("wait_ms".into(), json!(rng.below(100)));
                }
            }
        }
        _ => {}
    }
}

/// Valid workflow definitions, by name, for the workflow routes (any input runs them).
const WORKFLOW_DEFINITIONS: &[(&str, &str)] = &[
    ("fz-sleep", r#"{"steps":[{"id":"nap","sleep_ms":1}]}"#),
    ("fz-signal", r#"{"vars":{"got":null},"steps":[{"id":"w","wait":{"signal":"go","timeout_ms":50},"set":{"got":"${result}"}}]}"#),
];

/// The rule of messages when the path names an IMVU by a drawn id: ids are shared by every
/// kind, so its kind is asked of the node; and one that is paused would hold the message until
/// a resume that the fuzzer never sends, so a steady IMVU takes its place.
async fn look_up_drawn_imvu(node: &Node, op: &Operation, draft: &mut Draft, fixtures: &Fixtures, rng: &mut Rng) {
    if op.name() != "POST /v1/tenants/{tenant}/imvus/{id}/messages" || draft.imvu.is_some() {
        return;
    }
    let (Some(tenant), Some(id)) = (draft.path.get("tenant"), draft.path.get("id")) else { return };
    let uri = format!("/v1/tenants/{}/imvus/{}", percent_encode(tenant), percent_encode(id));
    let Ok(answer) = node.send(&Sent { method: "GET".into(), uri, content_type: None, body: None }).await else { return };
    let view: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let kind = match (answer.status, view["kind"].as_str(), view["lifecycle"].as_str()) {
        (200, _, Some("paused")) => {
            let steady = rng.pick(&fixtures.steady).clone();
            draft.path.insert("tenant".into(), "default".into());
            draft.path.insert("id".into(), steady.id.to_string());
            steady.kind
        }
        (200, Some(kind), _) => kind.to_owned(),
        _ => return, // no such IMVU: any message gets the documented 404
    };
    set_field(draft, "message", message_for(&kind, rng));
}

/// Sets `field` of the body, when there is a body object.
fn set_field(draft: &mut Draft, field: &str, value: Value) {
    if let Some(Value::Object(body)) = &mut draft.body {
        body.insert(field.to_owned(), value);
    }
}

/// A message `kind` takes (its handler's serde enum), with drawn contents.
fn message_for(kind: &str, rng: &mut Rng) -> Value {
    let text = generate::any_value(rng, 2).to_string();
    let n = rng.below(2_001) as i64 - 1_000;
    let options = match kind {
        "counter" => vec![json!({"op": "add", "n": n}), json!({"op": "get"})],
        "kv-memory" => vec![
            json!({"op": "put", "key": text, "value": generate::any_value(rng, 1)}),
            json!({"op": "get", "key": text}),
            json!({"op": "delete", "key": text}),
            json!({"op": "keys"}),
        ],
        "text-worker" => ["word_count", "upper", "reverse", "keywords"].iter().map(|op| json!({"op": op, "text": text})).collect(),
        // A workflow created as a bare IMVU is not started: it answers views, takes a cancel,
        // and refuses signals in its reply.
        "workflow" => vec![json!({"op": "get"}), json!({"op": "status"}), json!({"op": "signal", "name": text, "body": n}), json!({"op": "cancel"})],
        other => panic!("the fuzzer knows no messages of kind {other:?}: add them to message_for"),
    };
    rng.pick(&options).clone()
}

/// A swarm spec's rules across fields and state: members need a `member_kind` that exists;
/// `member_swarms` must name swarms of the tenant; a swarm has at least one member. And one
/// of cost: each member is an IMVU created, so few of them.
fn swarm_spec_rules(draft: &mut Draft, fixtures: &Fixtures, rng: &mut Rng) {
    let in_default = draft.path.get("tenant").is_some_and(|t| t == "default");
    let Some(Value::Object(spec)) = &mut draft.body else { return };
    let members = spec.get("members").and_then(Value::as_u64).map(|m| m.min(3));
    // The fixture swarms are the default tenant's; another tenant has none the fuzzer knows.
    let member_swarms: Vec<u64> = fixtures.swarms.iter().copied().filter(|_| in_default && rng.chance(30)).collect();
    if spec.contains_key("member_swarms") {
        spec.insert("member_swarms".into(), json!(member_swarms));
    }
    let joining = spec.get("member_swarms").and_then(Value::as_array).map_or(0, Vec::len) as u64;
    let members = match members {
        Some(m) if m + joining > 0 => m,
        _ if joining > 0 => 0,
        _ => 1,
    };
    spec.insert("members".into(), json!(members));
    if members > 0 || !spec.get("member_kind").is_none_or(Value::is_null) {
        spec.insert("member_kind".into(), json!(rng.pick(&fixtures.kinds)));
    }
}

fn usage_range_rule(draft: &mut Draft, rng: &mut Rng) {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let get = |draft: &Draft, name: &str| draft.query.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse::<u64>().ok());
    // `from_ms` defaults to 0: a `to_ms` of 0 alone is an empty range too.
    let from = get(draft, "from_ms").unwrap_or(0);
    let to = get(draft, "to_ms").unwrap_or(now_ms).max(1);
    if from >= to || get(draft, "to_ms") == Some(0) {
        let from = rng.below(to);
        draft.query.retain(|(n, _)| n != "from_ms" && n != "to_ms");
        draft.query.push(("from_ms".into(), from.to_string()));
        draft.query.push(("to_ms".into(), to.to_string()));
    }
}

/// One way of breaking a valid request.
#[derive(Clone, Debug)]
enum Breakage {
    MalformedJson,
    OtherContentType,
    MissingBody,
    BadBody,
    BadPath(Parameter),
    BadQuery(Parameter),
    MissingQuery(Parameter),
}

/// Ways to break requests of `op`.
fn breakages(doc: &Doc, op: &Operation) -> Vec<Breakage> {
    let mut out = Vec::new();
    if let Some((_, required)) = op.body() {
        out.extend([Breakage::MalformedJson, Breakage::OtherContentType, Breakage::BadBody]);
        if required {
            out.push(Breakage::MissingBody);
        }
    }
    for parameter in op.parameters() {
        let breakable = has_bad_text(doc, &parameter.schema);
        match parameter.location {
            Location::Path if breakable => out.push(Breakage::BadPath(parameter)),
            Location::Query if parameter.required => {
                out.push(Breakage::MissingQuery(parameter.clone()));
                if breakable {
                    out.push(Breakage::BadQuery(parameter));
                }
            }
            Location::Query if breakable => out.push(Breakage::BadQuery(parameter)),
            _ => {}
        }
    }
    out
}

/// Whether some text is refused by a parameter's schema (a plain string takes any).
fn has_bad_text(doc: &Doc, schema: &Value) -> bool {
    let Ok(schema) = doc.resolve(schema) else { return false };
    let constrained = ["pattern", "maxLength", "minLength", "enum", "minimum", "maximum"].iter().any(|k| schema.get(*k).is_some());
    let typed = all_types(doc, schema).iter().any(|t| matches!(t.as_str(), "integer" | "number" | "boolean"));
    let branches =
        ["oneOf", "anyOf"].iter().filter_map(|k| schema.get(*k)).filter_map(Value::as_array).flatten().any(|b| has_bad_text(doc, b));
    constrained || typed || branches
}

/// Text a parameter's schema refuses, and why. Parameters travel as text: what counts is the
/// value the text stands for ([`parameter_value`]), so `"7"` is no wrong type for an integer.
fn bad_parameter_text(doc: &Doc, op: &Operation, parameter: &Parameter, rng: &mut Rng) -> Result<Option<(String, String)>, String> {
    let mut candidates: Vec<(String, String)> = ["abc", "1.5", "0x10", "-1", "99999999999999999999999", " 1", "maybe"]
        .iter()
        .map(|text| (text.to_string(), "not a value of its type".to_owned()))
        .collect();
    let sample = generate::valid(doc, &parameter.schema, rng)?;
    for (bad, why) in generate::invalid_all(doc, &parameter.schema, &sample, rng)? {
        if let Some(text) = parameter_text(&bad) {
            candidates.push((text, why));
        }
    }
    // An empty last segment names another route (`/v1/keys/`), or none: not this operation.
    let last_segment = op.path.ends_with(&format!("{{{}}}", parameter.name));
    candidates.retain(|(text, _)| !(text.is_empty() && parameter.location == Location::Path && last_segment));
    candidates.retain(|(text, _)| !doc.is_valid(&parameter.schema, &parameter_value(doc, &parameter.schema, text)));
    if candidates.is_empty() {
        return Ok(None);
    }
    Ok(Some(rng.pick(&candidates).clone()))
}

/// The value a parameter's text stands for: a number where the schema takes one and the
/// text is one, a boolean likewise, else the text itself.
fn parameter_value(doc: &Doc, schema: &Value, text: &str) -> Value {
    let types = doc.resolve(schema).map(|s| all_types(doc, s)).unwrap_or_default();
    if types.iter().any(|t| t == "integer" || t == "number") {
        if let Ok(n) = text.parse::<i64>() {
            return json!(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return json!(n);
        }
        if types.iter().any(|t| t == "number") {
            if let Some(n) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                return Value::Number(n);
            }
        }
    }
    if types.iter().any(|t| t == "boolean") && (text == "true" || text == "false") {
        return json!(text == "true");
    }
    Value::String(text.to_owned())
}

/// The type names a schema and its branches allow.
fn all_types(doc: &Doc, schema: &Value) -> Vec<String> {
    let mut types: Vec<String> = generate::type_list(schema).into_iter().map(str::to_owned).collect();
    for branch in ["oneOf", "anyOf", "allOf"].iter().filter_map(|k| schema.get(*k)).filter_map(Value::as_array).flatten() {
        if let Ok(branch) = doc.resolve(branch) {
            types.extend(all_types(doc, branch));
        }
    }
    types
}

/// Breakages tried for one invalid request before giving up (some find nothing to break in
/// the valid request they start from, e.g. an optional body left out).
const BREAKAGE_TRIES_MAX: usize = 8;

/// An invalid request of `op`, broken in one of `ways` drawn at random.
fn invalid_draft_of_some_kind(
    doc: &Doc,
    op: &Operation,
    ways: &[Breakage],
    fixtures: &Fixtures,
    rng: &mut Rng,
) -> Result<Option<(Draft, String)>, String> {
    for _ in 0..BREAKAGE_TRIES_MAX {
        if let Some(found) = invalid_draft(doc, op, rng.pick(ways), fixtures, rng)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// An invalid request of `op`, and what is wrong with it; `None` if `breakage` finds nothing
/// to break this time.
fn invalid_draft(
    doc: &Doc,
    op: &Operation,
    breakage: &Breakage,
    fixtures: &Fixtures,
    rng: &mut Rng,
) -> Result<Option<(Draft, String)>, String> {
    let mut draft = valid_draft(doc, op, fixtures, rng)?;
    let why = match breakage {
        Breakage::MalformedJson => {
            let text = draft.body.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string);
            let truncated: String = text.chars().take(rng.below(text.chars().count() as u64) as usize).collect();
            let malformed = if rng.chance(50) { truncated } else { format!("{text},") };
            // A cut that happens to leave JSON (`1` of `12`) is not malformed: add a comma.
            let malformed = if serde_json::from_str::<Value>(&malformed).is_ok() { format!("{malformed},") } else { malformed };
            draft.raw_body = Some(malformed);
            "malformed JSON".to_owned()
        }
        Breakage::OtherContentType => {
            draft.body.get_or_insert_with(|| json!({}));
            draft.content_type = Some(rng.pick(&["text/plain", "application/x-www-form-urlencoded", "application/xml"]).to_string());
            "a body declared as something other than JSON".to_owned()
        }
        Breakage::MissingBody => {
            draft.body = None;
            "no body where one is required".to_owned()
        }
        Breakage::BadBody => {
            let Some((schema, _)) = op.body() else { return Ok(None) };
            let sample = match draft.body.take() {
                Some(body) => body,
                None => generate::valid(doc, &schema, rng)?,
            };
            let Some((bad, why)) = generate::invalid(doc, &schema, &sample, rng)? else { return Ok(None) };
            draft.body = Some(bad);
            format!("body: {why}")
        }
        Breakage::BadPath(parameter) => {
            let Some((text, why)) = bad_parameter_text(doc, op, parameter, rng)? else { return Ok(None) };
            draft.path.insert(parameter.name.clone(), text);
            format!("path `{}`: {why}", parameter.name)
        }
        Breakage::BadQuery(parameter) => {
            let Some((text, why)) = bad_parameter_text(doc, op, parameter, rng)? else { return Ok(None) };
            draft.query.retain(|(n, _)| *n != parameter.name);
            draft.query.push((parameter.name.clone(), text));
            format!("query `{}`: {why}", parameter.name)
        }
        Breakage::MissingQuery(parameter) => {
            draft.query.retain(|(n, _)| *n != parameter.name);
            format!("required query `{}` missing", parameter.name)
        }
    };
    Ok(Some((draft, why)))
}

// ---------------------------------------------------------------------------------------------
// Fuzzing one operation, checking one answer.

/// What one operation's fuzzing sent and found.
struct OperationReport {
    valid: u64,
    /// Valid requests answered 2xx (the others got a documented domain answer, or failed).
    accepted: u64,
    invalid: u64,
    /// Why coverage is partial, for the summary line.
    note: String,
    failures: Vec<Failure>,
}

/// One thing wrong.
#[derive(Clone, Debug)]
struct Failure {
    operation: String,
    /// What kind of wrong (failures are grouped by it).
    class: String,
    /// The request, the answer, and the details.
    detail: String,
}

/// Whether a request was meant to be valid.
#[derive(Clone, Debug)]
enum Intent {
    Valid,
    Invalid(String),
}

/// Sends `cases` valid requests (none if `valid_withheld` says why not) and `cases` invalid
/// ones of `op`.
async fn fuzz_operation(
    node: &Node,
    doc: &Doc,
    op: &Operation,
    valid_withheld: Option<&str>,
    fixtures: &Fixtures,
    rng: &mut Rng,
    cases: u64,
) -> OperationReport {
    let mut report = OperationReport { valid: 0, accepted: 0, invalid: 0, note: String::new(), failures: Vec::new() };
    let fail = |class: &str, detail: String| report_failure(op, class, detail);
    let mut failures = Vec::new();
    let valid_cases = match valid_withheld {
        Some(reason) => {
            report.note = format!("  (invalid only: {reason})");
            0
        }
        None => cases,
    };
    for _ in 0..valid_cases {
        match valid_draft(doc, op, fixtures, rng) {
            Ok(mut draft) => {
                look_up_drawn_imvu(node, op, &mut draft, fixtures, rng).await;
                let (status, found) = exchange(node, doc, op, &draft, &Intent::Valid).await;
                failures.extend(found);
                report.valid += 1;
                report.accepted += u64::from(status.is_some_and(|s| (200..300).contains(&s)));
            }
            Err(e) => failures.push(fail("the fuzzer could not make a valid request", e)),
        }
    }
    let ways = breakages(doc, op);
    if ways.is_empty() {
        report.note.push_str("  (nothing to break: no parameters, no body)");
    }
    let invalid_cases = if ways.is_empty() { 0 } else { cases };
    for _ in 0..invalid_cases {
        match invalid_draft_of_some_kind(doc, op, &ways, fixtures, rng) {
            Ok(Some((draft, why))) => {
                failures.extend(exchange(node, doc, op, &draft, &Intent::Invalid(why)).await.1);
                report.invalid += 1;
            }
            Ok(None) => {}
            Err(e) => failures.push(fail("the fuzzer could not make an invalid request", e)),
        }
    }
    report.failures = failures;
    report
}

fn report_failure(op: &Operation, class: &str, detail: String) -> Failure {
    Failure { operation: op.name(), class: class.to_owned(), detail }
}

/// Sends one request and checks its answer against the document; returns the status (if an
/// answer came) and what is wrong.
async fn exchange(node: &Node, doc: &Doc, op: &Operation, draft: &Draft, intent: &Intent) -> (Option<u16>, Vec<Failure>) {
    let sent = draft.sent(op);
    let intent_text = match intent {
        Intent::Valid => "valid".to_owned(),
        Intent::Invalid(why) => format!("invalid ({why})"),
    };
    let answer = match node.send(&sent).await {
        Ok(answer) => answer,
        Err(e) => return (None, vec![report_failure(op, "no answer", format!("{intent_text} request {sent}: {e}"))]),
    };
    let body_text = cut(&String::from_utf8_lossy(&answer.body), 400);
    let failures = check_answer(doc, op, intent, &answer)
        .into_iter()
        .map(|(class, detail)| {
            report_failure(op, &class, format!("{intent_text} request {sent}\n      -> {} {body_text}\n      {detail}", answer.status))
        })
        .collect();
    (Some(answer.status), failures)
}

/// What is wrong with `answer`, as (class, detail) pairs.
fn check_answer(doc: &Doc, op: &Operation, intent: &Intent, answer: &Answer) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let status = answer.status;
    let code = serde_json::from_slice::<Value>(&answer.body).ok().and_then(|v| v["code"].as_str().map(str::to_owned));
    let domain = DOMAIN_ANSWERS.iter().any(|(s, c)| *s == status && c.is_none_or(|c| Some(c) == code.as_deref()));
    match intent {
        Intent::Valid if (200..300).contains(&status) => {}
        // Whether the operation declares it is checked below, for every answer.
        Intent::Valid if domain => {}
        Intent::Valid => problems.push((format!("a valid request was refused with {status}"), String::new())),
        Intent::Invalid(_) if (400..500).contains(&status) => {}
        Intent::Invalid(_) => problems.push((format!("an invalid request got {status}, not a 4xx"), String::new())),
    }
    let Some(declared) = op.response(status) else {
        let known: Vec<&String> = op.spec.get("responses").and_then(Value::as_object).map(|r| r.keys().collect()).unwrap_or_default();
        problems.push((format!("status {status} is not declared"), format!("declared: {known:?}")));
        return problems;
    };
    problems.extend(check_content(doc, declared, answer));
    if status >= 400 {
        problems.extend(check_error_body(doc, answer));
    }
    problems
}

/// The media type without its parameters, lower case.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Content type and body against what the document declares for this status.
fn check_content(doc: &Doc, declared: &Value, answer: &Answer) -> Vec<(String, String)> {
    let content = declared.get("content").and_then(Value::as_object).filter(|c| !c.is_empty());
    let Some(content) = content else {
        if answer.body.is_empty() {
            return Vec::new();
        }
        return vec![("a body where the document declares none".into(), String::new())];
    };
    let got = answer.content_type.as_deref().map(essence).unwrap_or_default();
    let Some((media, media_spec)) = content.iter().find(|(media, _)| essence(media) == got) else {
        let declared: Vec<&String> = content.keys().collect();
        return vec![(format!("content type {got:?} is not declared"), format!("declared: {declared:?}"))];
    };
    let schema = media_spec.get("schema").cloned().unwrap_or(Value::Bool(true));
    let value = match body_value(media, &answer.body) {
        Ok(value) => value,
        Err(e) => return vec![(format!("the body is not {media}"), e)],
    };
    let mut errors = Vec::new();
    doc.validate(&schema, &value, &mut errors);
    errors.into_iter().map(|e| ("the body does not match its schema".to_owned(), e)).collect()
}

/// The body as the JSON value its schema describes: JSON parsed; text as a string (JSON
/// lines must also parse line by line).
fn body_value(media: &str, body: &[u8]) -> Result<Value, String> {
    if essence(media) == "application/json" || essence(media).ends_with("+json") {
        return serde_json::from_slice(body).map_err(|e| e.to_string());
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if essence(media) == "application/x-ndjson" {
        for (i, line) in text.lines().enumerate() {
            serde_json::from_str::<Value>(line).map_err(|e| format!("line {}: {e}: {}", i + 1, cut(line, 120)))?;
        }
    }
    Ok(Value::String(text.to_owned()))
}

/// Every error answer is a JSON `ErrorBody`, whatever the operation declares.
fn check_error_body(doc: &Doc, answer: &Answer) -> Vec<(String, String)> {
    let got = answer.content_type.as_deref().map(essence).unwrap_or_default();
    if got != "application/json" {
        return vec![("an error answer is not JSON".into(), format!("content type {got:?}"))];
    }
    let value: Value = match serde_json::from_slice(&answer.body) {
        Ok(value) => value,
        Err(e) => return vec![("an error answer is not JSON".into(), e.to_string())],
    };
    let mut errors = Vec::new();
    doc.validate(&json!({"$ref": "#/components/schemas/ErrorBody"}), &value, &mut errors);
    if errors.is_empty() && value.as_object().is_some_and(|o| o.len() != 2) {
        errors.push(format!("fields beyond code and message: {}", excerpt(&value)));
    }
    errors.into_iter().map(|e| ("an error body is not an ErrorBody".to_owned(), e)).collect()
}

/// Checks of the document itself, before any request.
fn check_document(doc: &Doc) -> Vec<Failure> {
    let mut failures = Vec::new();
    let document = |class: &str, detail: String| Failure { operation: "(the document)".into(), class: class.into(), detail };
    let operations = doc.operations();
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for op in &operations {
        match op.spec.get("operationId").and_then(Value::as_str) {
            Some(id) => ids.entry(id.to_owned()).or_default().push(op.name()),
            None => failures.push(document("an operation has no operationId", op.name())),
        }
        for parameter in op.unsupported_parameters() {
            failures.push(document("a parameter the fuzzer cannot send (not in path or query)", format!("{}: {parameter}", op.name())));
        }
        for media in op.non_json_bodies() {
            failures.push(document("a request body the fuzzer does not send (not JSON)", format!("{}: {media}", op.name())));
        }
    }
    for (id, users) in ids.into_iter().filter(|(_, users)| users.len() > 1) {
        failures.push(document("operationIds are not unique", format!("{id:?} names {users:?}")));
    }
    for (method, path, _) in INVALID_ONLY {
        if !operations.iter().any(|op| op.method == *method && op.path == *path) {
            failures.push(document("an INVALID_ONLY entry names no operation (stale: remove it)", format!("{method} {path}")));
        }
    }
    failures
}

/// All failures, grouped by operation and kind, a few examples each.
fn report_failures(failures: &[Failure], seed: u64) -> String {
    let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for f in failures {
        groups.entry((f.operation.as_str(), f.class.as_str())).or_default().push(&f.detail);
    }
    let mut text =
        format!("{} failures in {} groups (seed {seed:#x}; rerun with VCOS_FUZZ_SEED={seed:#x}):\n", failures.len(), groups.len());
    for ((operation, class), details) in &groups {
        let _ = writeln!(text, "\n{operation}: {class} ({} times)", details.len());
        for detail in details.iter().take(EXAMPLES_PER_FAILURE_MAX) {
            let _ = writeln!(text, "    {detail}");
        }
    }
    text
}

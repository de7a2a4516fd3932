//! The swarm routes end to end, against a real runtime: work pulled by members and credited
//! once, spec validation, shared memory, votes, keyed tenants.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

/// How long a swarm may take to finish the work of a test.
const WORK_DEADLINE: Duration = Duration::from_secs(20);

struct Api {
    router: axum::Router,
    /// The cluster-admin key every request sends unless it names another.
    admin: String,
}

async fn api() -> Api {
    let (runtime, metrics, admin) = common::runtime_with_admin().await;
    Api { router: vcos_api::router(runtime, metrics), admin }
}

impl Api {
    /// Sends `body` (if any) as JSON with `key` (default: the admin key); returns status and
    /// JSON body (`null` for an empty body).
    async fn call(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (StatusCode, Value) {
        let key = key.unwrap_or(&self.admin);
        let request = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {key}"));
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("valid request");
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.expect("body reads");
        if bytes.is_empty() {
            return (status, Value::Null);
        }
        assert!(content_type.starts_with("application/json"), "not JSON ({content_type}): {}", String::from_utf8_lossy(&bytes));
        (status, serde_json::from_slice(&bytes).expect("valid JSON"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), None).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body), None).await
    }

    /// Creates a swarm in the default tenant; returns its path and its view.
    async fn swarm(&self, spec: Value) -> (String, Value) {
        let (status, body) = self.post("/v1/tenants/default/swarms", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (format!("/v1/tenants/default/swarms/{}", body["key"]["id"].as_u64().expect("numeric id")), body)
    }

    /// Polls the swarm until every submitted item is completed or dead-lettered.
    async fn settled(&self, swarm: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, info) = self.get(swarm).await;
            assert_eq!(status, StatusCode::OK, "{info}");
            let p = &info["progress"];
            let count = |field: &str| p[field].as_u64().expect("numeric progress");
            if count("completed") + count("dead_lettered") == count("submitted") {
                return info;
            }
            assert!(started.elapsed() < WORK_DEADLINE, "swarm did not finish its work in {WORK_DEADLINE:?}: {info}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An error response: status, code, and a message containing each of `mentions`.
fn check_error((status, body): (StatusCode, Value), expect_status: u16, code: &str, mentions: &[&str]) {
    assert_eq!(status.as_u16(), expect_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().expect("a message");
    for m in mentions {
        assert!(message.contains(m), "message {message:?} should mention {m:?}");
    }
}

fn ids(values: &Value) -> Vec<u64> {
    values.as_array().expect("an array").iter().map(|v| v.as_u64().expect("numeric id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_workers_complete_work_and_each_item_is_credited_once() {
    let api = api().await;
    let (swarm, created) = api.swarm(json!({"member_kind": "text-worker", "members": 3})).await;
    assert_eq!(created["key"]["tenant"], "default");
    assert_eq!(created["status"], json!({"state": "running"}));
    assert_eq!(created["spec"]["members"], 3);
    assert_eq!(created["spec"]["max_attempts"], 3, "defaults are filled in: {created}");
    assert_eq!(created["spec"]["strategy"], "one_for_one");
    let members = created["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{created}");
    assert!(members.iter().all(|m| m["type"] == "imvu" && m["id"].is_u64()), "{created}");
    assert_eq!(created["progress"]["members_alive"], 3);

    let mut items: Vec<Value> = (0..19)
        .map(|i| match i % 4 {
            0 => json!({"op": "word_count", "text": format!("item {i} has five words")}),
            1 => json!({"op": "upper", "text": format!("item {i}")}),
            2 => json!({"op": "reverse", "text": format!("item {i}")}),
            _ => json!({"op": "keywords", "text": format!("swarm item number {i} about rust actors")}),
        })
        .collect();
    items.insert(7, json!({"op": "poison"}));
    let (status, submitted) = api.post(&format!("{swarm}/work"), json!({ "items": items })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let item_ids = ids(&submitted["item_ids"]);
    assert_eq!(item_ids.len(), 20);
    assert_eq!(item_ids.iter().collect::<BTreeSet<_>>().len(), 20, "ids are unique");
    let poison = item_ids[7];

    let info = api.settled(&swarm).await;
    let progress = &info["progress"];
    assert_eq!(progress["submitted"], 20, "{info}");
    assert_eq!(progress["completed"], 19, "{info}");
    assert_eq!(progress["dead_lettered"], 1, "the poisoned item is given up: {info}");
    assert_eq!((&progress["pending"], &progress["in_flight"]), (&json!(0), &json!(0)), "{info}");
    assert_eq!(info["status"], json!({"state": "running"}), "three crashes stay within the intensity: {info}");

    let (status, credits) = api.get(&format!("{swarm}/credits")).await;
    assert_eq!(status, StatusCode::OK, "{credits}");
    let credits = credits["credits"].as_array().expect("credits");
    assert_eq!(credits.len() as u64, progress["completed"].as_u64().expect("count"));
    let credited: BTreeSet<u64> = credits.iter().map(|c| c["item"].as_u64().expect("item id")).collect();
    assert_eq!(credited.len(), credits.len(), "each item is credited once");
    let expected: BTreeSet<u64> = item_ids.iter().copied().filter(|id| *id != poison).collect();
    assert_eq!(credited, expected, "every item but the poisoned one is credited");
    for credit in credits {
        assert!(members.contains(&credit["member"]), "credited to a member: {credit}");
        assert!(credit["attempts"].as_u64().expect("attempts") >= 1, "{credit}");
        assert!(!credit["result"].is_null(), "{credit}");
    }
    let upper = credits.iter().find(|c| c["item"] == item_ids[1]).expect("item 1 is credited");
    assert!(upper["result"].to_string().contains("ITEM 1"), "the result is the member's reply: {upper}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swarm_can_be_a_member_of_a_swarm() {
    let api = api().await;
    let (inner, inner_view) = api.swarm(json!({"member_kind": "text-worker", "members": 2})).await;
    let inner_id = inner_view["key"]["id"].as_u64().expect("id");
    let (outer, outer_view) = api.swarm(json!({"member_swarms": [inner_id]})).await;
    assert_eq!(outer_view["members"], json!([{"type": "swarm", "id": inner_id}]));
    let items: Vec<Value> = (0..5).map(|i| json!({"op": "upper", "text": format!("t{i}")})).collect();
    let (status, body) = api.post(&format!("{outer}/work"), json!({ "items": items })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let info = api.settled(&outer).await;
    assert_eq!(info["progress"]["completed"], 5, "{info}");
    let (_, credits) = api.get(&format!("{outer}/credits")).await;
    let credits = credits["credits"].as_array().expect("credits");
    assert_eq!(credits.len(), 5);
    assert!(credits.iter().all(|c| c["member"] == json!({"type": "swarm", "id": inner_id})), "{credits:?}");
    // Inside the sub-swarm, the IMVUs that did the work are credited.
    assert_eq!(api.settled(&inner).await["progress"]["completed"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_work_are_400s_naming_the_field() {
    let api = api().await;
    let swarms = "/v1/tenants/default/swarms";
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": 3, "colour": "red"})).await, 400, "bad_request", &["colour"]);
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": 0})).await, 400, "bad_request", &["members"]);
    check_error(api.post(swarms, json!({})).await, 400, "bad_request", &["members"]);
    check_error(api.post(swarms, json!({"member_kind": "dragon", "members": 2})).await, 400, "unknown_kind", &["dragon"]);
    check_error(api.post(swarms, json!({"members": 2})).await, 400, "bad_request", &["member_kind"]);
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": "three"})).await, 400, "bad_request", &["members"]);
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": -1})).await, 400, "bad_request", &["members"]);
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": 1000})).await, 400, "bad_request", &["members"]);
    check_error(
        api.post(swarms, json!({"member_kind": "text-worker", "members": u32::MAX, "member_swarms": [1]})).await,
        400,
        "bad_request",
        &["members"],
    );
    check_error(
        api.post(swarms, json!({"member_kind": "text-worker", "members": 1, "strategy": "all_for_none"})).await,
        400,
        "bad_request",
        &["strategy"],
    );
    check_error(
        api.post(swarms, json!({"member_kind": "text-worker", "members": 1, "max_in_flight_per_member": 0})).await,
        400,
        "bad_request",
        &["max_in_flight_per_member"],
    );
    check_error(api.post(swarms, json!({"member_kind": "text-worker", "members": 1, "max_attempts": 0})).await, 400, "bad_request", &["max_attempts"]);
    check_error(api.post(swarms, json!({"member_swarms": [987654]})).await, 400, "bad_request", &["member_swarms"]);
    check_error(api.post(swarms, json!([1, 2])).await, 400, "bad_request", &[]);

    let (swarm, _) = api.swarm(json!({"member_kind": "text-worker", "members": 1})).await;
    let work = format!("{swarm}/work");
    check_error(api.post(&work, json!({"items": []})).await, 400, "bad_request", &["items"]);
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"op": "upper", "text": ""})).collect();
    check_error(api.post(&work, json!({ "items": too_many })).await, 400, "bad_request", &["items", "10001"]);
    check_error(api.post(&work, json!({})).await, 400, "bad_request", &["items"]);
    check_error(api.post(&work, json!({"items": [1], "priority": 9})).await, 400, "bad_request", &["priority"]);
    check_error(api.post(&work, json!({"items": {"op": "upper"}})).await, 400, "bad_request", &["items"]);
    // Exactly the limit is accepted.
    let at_limit: Vec<Value> = (0..10_000).map(|_| json!({"op": "upper", "text": ""})).collect();
    let (status, body) = api.post(&work, json!({ "items": at_limit })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["item_ids"].as_array().map(Vec::len), Some(10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_swarms_are_404_and_bad_paths_400() {
    let api = api().await;
    let missing = "/v1/tenants/default/swarms/999999";
    check_error(api.get(missing).await, 404, "not_found", &["999999"]);
    check_error(api.post(&format!("{missing}/work"), json!({"items": [1]})).await, 404, "not_found", &[]);
    check_error(api.get(&format!("{missing}/credits")).await, 404, "not_found", &[]);
    check_error(api.put(&format!("{missing}/memory/k"), json!({"value": 1})).await, 404, "not_found", &[]);
    check_error(api.get(&format!("{missing}/memory/k")).await, 404, "not_found", &[]);
    check_error(api.post(&format!("{missing}/votes"), json!({"proposal": "p", "options": ["a", "b"]})).await, 404, "not_found", &[]);
    check_error(
        api.post(&format!("{missing}/votes/1/ballots"), json!({"member": {"type": "imvu", "id": 1}, "choice": "a"})).await,
        404,
        "not_found",
        &[],
    );
    // An IMVU's id is no swarm's.
    let (status, imvu) = api.post("/v1/tenants/default/imvus", json!({"kind": "counter"})).await;
    assert_eq!(status, StatusCode::CREATED);
    check_error(api.get(&format!("/v1/tenants/default/swarms/{}", imvu["key"]["id"])).await, 404, "not_found", &[]);
    // Another tenant's swarm does not exist here.
    let (swarm, view) = api.swarm(json!({"member_kind": "text-worker", "members": 1})).await;
    let (status, _) = api.post("/v1/tenants", json!({"name": "other"})).await;
    assert_eq!(status, StatusCode::CREATED);
    check_error(api.get(&format!("/v1/tenants/other/swarms/{}", view["key"]["id"])).await, 404, "not_found", &[]);
    check_error(api.get("/v1/tenants/nobody/swarms/1").await, 404, "not_found", &["nobody"]);
    check_error(api.post("/v1/tenants/nobody/swarms", json!({"member_kind": "text-worker", "members": 1})).await, 404, "not_found", &["nobody"]);

    check_error(api.get("/v1/tenants/default/swarms/seven").await, 400, "bad_request", &["id", "seven"]);
    check_error(api.get("/v1/tenants/Not%20Valid/swarms/1").await, 400, "bad_request", &["tenant"]);
    check_error(
        api.post(&format!("{swarm}/votes/first/ballots"), json!({"member": {"type": "imvu", "id": 1}, "choice": "a"})).await,
        400,
        "bad_request",
        &["vote", "first"],
    );
    check_error(api.call(Method::DELETE, &swarm, None, None).await, 405, "method_not_allowed", &["DELETE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_puts_and_gets() {
    let api = api().await;
    let (swarm, _) = api.swarm(json!({"member_kind": "kv-memory", "members": 2})).await;
    let topic = format!("{swarm}/memory/topic");
    check_error(api.get(&topic).await, 404, "not_found", &["topic"]);
    assert_eq!(api.put(&topic, json!({"value": {"subject": "rust", "tags": [1, 2]}})).await, (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(api.get(&topic).await, (StatusCode::OK, json!({"value": {"subject": "rust", "tags": [1, 2]}})));
    assert_eq!(api.put(&topic, json!({"value": "replaced"})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&topic).await, (StatusCode::OK, json!({"value": "replaced"})));
    assert_eq!(api.put(&topic, json!({"value": null})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&topic).await, (StatusCode::OK, json!({"value": null})), "null is a value");
    // Percent-encoded keys are decoded.
    assert_eq!(api.put(&format!("{swarm}/memory/a%20b"), json!({"value": 1})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&format!("{swarm}/memory/a%20b")).await.1, json!({"value": 1}));

    check_error(api.put(&topic, json!({})).await, 400, "bad_request", &["value"]);
    check_error(api.put(&topic, json!({"value": 1, "ttl": 5})).await, 400, "bad_request", &["ttl"]);
    let long = format!("{swarm}/memory/{}", "k".repeat(257));
    check_error(api.put(&long, json!({"value": 1})).await, 400, "bad_request", &["key"]);
    check_error(api.get(&format!("{swarm}/memory/a%2Fb")).await, 400, "bad_request", &["key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_reach_a_decision_at_quorum() {
    let api = api().await;
    let (swarm, view) = api.swarm(json!({"member_kind": "text-worker", "members": 3})).await;
    let members: Vec<Value> = view["members"].as_array().expect("members").clone();
    let votes = format!("{swarm}/votes");

    let (status, vote) = api.post(&votes, json!({"proposal": "which model?", "options": ["a", "b"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{vote}");
    assert_eq!(vote["quorum"], 2, "a majority of three by default: {vote}");
    assert_eq!(vote["decision"], Value::Null);
    assert_eq!(vote["ballots"], json!({}));
    assert_eq!(vote["options"], json!(["a", "b"]));
    let ballots = format!("{votes}/{}/ballots", vote["id"].as_u64().expect("vote id"));

    let (status, v) = api.post(&ballots, json!({"member": members[0], "choice": "a"})).await;
    assert_eq!((status, &v["decision"]), (StatusCode::OK, &Value::Null), "{v}");
    let (status, v) = api.post(&ballots, json!({"member": members[1], "choice": "b"})).await;
    assert_eq!((status, &v["decision"]), (StatusCode::OK, &Value::Null), "{v}");
    check_error(api.post(&ballots, json!({"member": members[2], "choice": "c"})).await, 400, "bad_request", &["choice"]);
    let outsider = json!({"type": "imvu", "id": 999_999});
    check_error(api.post(&ballots, json!({"member": outsider, "choice": "a"})).await, 400, "bad_request", &["member"]);
    check_error(api.post(&ballots, json!({"member": {"type": "robot", "id": 1}, "choice": "a"})).await, 400, "bad_request", &["member"]);
    check_error(api.post(&ballots, json!({"member": members[2]})).await, 400, "bad_request", &["choice"]);
    let (status, v) = api.post(&ballots, json!({"member": members[2], "choice": "a"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["decision"], "a", "{v}");
    assert_eq!(v["ballots"].as_object().map(|b| b.len()), Some(3), "{v}");
    check_error(api.post(&ballots, json!({"member": members[1], "choice": "a"})).await, 409, "conflict", &["decided"]);

    check_error(api.post(&format!("{votes}/999999/ballots"), json!({"member": members[0], "choice": "a"})).await, 404, "not_found", &[]);
    check_error(api.post(&votes, json!({"proposal": "p", "options": ["only"]})).await, 400, "bad_request", &["options"]);
    check_error(api.post(&votes, json!({"proposal": "p", "options": ["a", "b"], "quorum": 4})).await, 400, "bad_request", &["quorum"]);
    check_error(api.post(&votes, json!({"proposal": "p", "options": ["a", "b"], "quorum": 0})).await, 400, "bad_request", &["quorum"]);
    check_error(api.post(&votes, json!({"options": ["a", "b"]})).await, 400, "bad_request", &["proposal"]);
    check_error(api.post(&votes, json!({"proposal": "p", "options": ["a", "b"], "deadline": 1})).await, 400, "bad_request", &["deadline"]);
    let (status, v) = api.post(&votes, json!({"proposal": "unanimous?", "options": ["y", "n"], "quorum": 3})).await;
    assert_eq!((status, &v["quorum"]), (StatusCode::CREATED, &json!(3)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarms_of_a_tenant_need_its_key() {
    let api = api().await;
    let (status, acme) = api.post("/v1/tenants", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let acme_admin = acme["admin_key"]["key"].as_str().expect("key").to_owned();
    let (_, app) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": "app"})), Some(&acme_admin)).await;
    let key = app["key"].as_str().expect("an app key");
    let (_, globex) = api.post("/v1/tenants", json!({"name": "globex"})).await;
    let stranger = globex["admin_key"]["key"].as_str().expect("key").to_owned();
    let swarms = "/v1/tenants/acme/swarms";
    let spec = json!({"member_kind": "text-worker", "members": 2});
    check_error(api.call(Method::POST, swarms, Some(spec.clone()), Some(&stranger)).await, 403, "forbidden", &[]);
    check_error(api.call(Method::POST, swarms, Some(spec.clone()), Some("not-the-key")).await, 401, "key_malformed", &[]);
    let (status, view) = api.call(Method::POST, swarms, Some(spec), Some(key)).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let swarm = format!("{swarms}/{}", view["key"]["id"]);
    let member = view["members"][0].clone();

    let s = Some(stranger.as_str());
    check_error(api.call(Method::GET, &swarm, None, s).await, 403, "forbidden", &[]);
    check_error(api.call(Method::GET, &format!("{swarm}/credits"), None, s).await, 403, "forbidden", &[]);
    check_error(api.call(Method::GET, &format!("{swarm}/memory/k"), None, s).await, 403, "forbidden", &[]);
    check_error(api.call(Method::POST, &format!("{swarm}/work"), Some(json!({"items": [{"op": "upper", "text": "x"}]})), s).await, 403, "forbidden", &[]);
    check_error(api.call(Method::PUT, &format!("{swarm}/memory/k"), Some(json!({"value": 1})), s).await, 403, "forbidden", &[]);
    check_error(api.call(Method::POST, &format!("{swarm}/votes"), Some(json!({"proposal": "p", "options": ["a", "b"]})), s).await, 403, "forbidden", &[]);

    let (status, body) =
        api.call(Method::POST, &format!("{swarm}/work"), Some(json!({"items": [{"op": "upper", "text": "x"}]})), Some(key)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mem = format!("{swarm}/memory/k");
    assert_eq!(api.call(Method::PUT, &mem, Some(json!({"value": 7})), Some(key)).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::GET, &mem, None, Some(key)).await, (StatusCode::OK, json!({"value": 7})));
    let (status, vote) =
        api.call(Method::POST, &format!("{swarm}/votes"), Some(json!({"proposal": "p", "options": ["a", "b"]})), Some(key)).await;
    assert_eq!(status, StatusCode::CREATED, "{vote}");
    let ballots = format!("{swarm}/votes/{}/ballots", vote["id"]);
    check_error(api.call(Method::POST, &ballots, Some(json!({"member": member, "choice": "a"})), s).await, 403, "forbidden", &[]);
    let (status, v) = api.call(Method::POST, &ballots, Some(json!({"member": member, "choice": "a"})), Some(key)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let started = Instant::now();
    loop {
        let (status, info) = api.call(Method::GET, &swarm, None, Some(key)).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        if info["progress"]["completed"] == 1 {
            break;
        }
        assert!(started.elapsed() < WORK_DEADLINE, "{info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, credits) = api.call(Method::GET, &format!("{swarm}/credits"), None, Some(key)).await;
    assert_eq!((status, credits["credits"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_items_are_dead_lettered_and_the_swarm_keeps_working() {
    let api = api().await;
    let (swarm, _) = api.swarm(json!({"member_kind": "text-worker", "members": 3})).await;
    // Five items no text worker can take (they are not messages of its kind).
    let (status, body) = api.post(&format!("{swarm}/work"), json!({"items": [0, 1, 2, 3, 4]})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let info = api.settled(&swarm).await;
    assert_eq!(info["progress"]["dead_lettered"], 5, "{info}");
    assert_eq!(info["status"]["state"], "running", "poison items do not fail the swarm: {info}");
    // Good work after them is done.
    let (status, body) = api.post(&format!("{swarm}/work"), json!({"items": [{"op": "upper", "text": "still here"}]})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let info = api.settled(&swarm).await;
    assert_eq!(info["progress"]["completed"], 1, "{info}");
}

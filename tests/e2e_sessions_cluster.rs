//! Desktop sessions in a cluster: any node takes any session request (node 1 passes node 2's
//! session's to node 2; node 3, without desktops, creates on a desktop node); node 2 runs a
//! session and is killed with `kill -9`: its desktop dies with it, and node 1, once the
//! membership declares node 2 dead, records the session Terminated (node lost) in the canon,
//! or, for a tenant whose policy asks for it, starts the session afresh on node 1.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{call, cluster_view, until, Node};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sessions_of_a_lost_node_end_terminated() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut one = Node::new(1, root.path(), None).with_desktops();
    one.start();
    let mut two = Node::new(2, root.path(), Some(one.base())).with_desktops();
    two.start();
    let mut three = Node::new(3, root.path(), Some(one.base()));
    three.start();
    let http = common::cluster::client(root.path());
    let (base1, base2) = (one.base(), two.base());
    until("all see three alive", async || cluster_view(&http, &base1).await.1 == 3 && cluster_view(&http, &base2).await.1 == 3).await;

    let (status, session) = call(&http, "POST", format!("{base2}/v1/tenants/default/sessions"), Some(json!({"tier": "basic"}))).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["node"], 2);
    let id = session["id"].as_u64().expect("id");
    // Any node takes any request: node 1 passes node 2's session's requests to node 2.
    let (status, seen) = call(&http, "GET", format!("{base1}/v1/tenants/default/sessions/{id}"), None).await;
    assert_eq!((status, &seen["state"]), (200, &json!("active")), "{seen}");
    let (status, paused) = call(&http, "POST", format!("{base1}/v1/tenants/default/sessions/{id}/pause"), None).await;
    assert_eq!((status, &paused["state"]), (200, &json!("paused")), "{paused}");
    let (status, resumed) = call(&http, "POST", format!("{base1}/v1/tenants/default/sessions/{id}/resume"), None).await;
    assert_eq!((status, &resumed["state"]), (200, &json!("active")), "{resumed}");
    // Node 3 runs no desktops: its creations go to a desktop node, its reads follow them.
    let base3 = three.base();
    let (status, elsewhere) = call(&http, "POST", format!("{base3}/v1/tenants/default/sessions"), Some(json!({"tier": "basic"}))).await;
    assert_eq!(status, 201, "{elsewhere}");
    assert!(elsewhere["node"] == 1 || elsewhere["node"] == 2, "{elsewhere}");
    let other = elsewhere["id"].as_u64().expect("id");
    let (status, read) = call(&http, "GET", format!("{base3}/v1/tenants/default/sessions/{other}"), None).await;
    assert_eq!((status, &read["state"]), (200, &json!("active")), "{read}");
    let (status, ended) = call(&http, "POST", format!("{base3}/v1/tenants/default/sessions/{other}/terminate"), None).await;
    assert_eq!((status, &ended["state"]), (200, &json!("terminated")), "{ended}");

    // A tenant whose policy asks for failover: its session on node 2 starts afresh elsewhere.
    let (status, tenant) = call(&http, "POST", format!("{base1}/v1/tenants"), Some(json!({"name": "resilient", "policy": {"desktop_failover": true}}))).await;
    assert_eq!(status, 201, "{tenant}");
    // Node 2 learns of the tenant from its canon replica, a moment after node 1 created it.
    let mut attempt = 0;
    let (status, kept) = loop {
        let (status, kept) = call(&http, "POST", format!("{base2}/v1/tenants/resilient/sessions"), Some(json!({"tier": "basic", "app": ["xterm"]}))).await;
        attempt += 1;
        if status == 404 && kept["message"].as_str().is_some_and(|m| m.contains("tenant")) && attempt < 50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break (status, kept);
    };
    assert_eq!((status, &kept["node"]), (201, &json!(2)), "{kept}");
    let kept_id = kept["id"].as_u64().expect("id");

    // `vcos status` says which limits are in force on a desktop node.
    let key_file = common::admin_key_file(root.path().join("node1"));
    let (exit, output) = common::Proc::spawn(&["status", "--node", &base2, "--api-key-file", key_file.to_str().expect("UTF-8")]).finish(Duration::from_secs(30));
    assert!(exit.success(), "{output}");
    assert!(output.contains("desktops: 2 sessions (2 active), limits by rlimit"), "{output}");

    two.kill_9();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, after) = call(&http, "GET", format!("{base1}/v1/tenants/default/sessions/{id}"), None).await;
        if after["state"] == "terminated" {
            assert!(after["reason"].as_str().is_some_and(|r| r.starts_with("node lost")), "{after}");
            break;
        }
        assert!(Instant::now() < deadline, "the lost node's session was never ended: {after}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let (_, moved) = call(&http, "GET", format!("{base1}/v1/tenants/resilient/sessions/{kept_id}"), None).await;
        if moved["node"] == 1 && moved["state"] == "active" {
            let note = moved["restarts"].as_array().and_then(|r| r.last()).and_then(|n| n["reason"].as_str()).unwrap_or_default().to_owned();
            assert!(note.contains("node 2 lost: started afresh on node 1"), "{moved}");
            let display = u32::try_from(moved["display"].as_u64().expect("a display")).expect("display");
            assert!(vcos_gpu_workers::desktop::x11::answers(display, Duration::from_secs(1)), "its new desktop answers");
            break;
        }
        assert!(Instant::now() < deadline, "the failover session never started afresh on node 1: {moved}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, ended) = call(&http, "POST", format!("{base1}/v1/tenants/resilient/sessions/{kept_id}/terminate"), None).await;
    assert_eq!((status, &ended["state"]), (200, &json!("terminated")), "{ended}");
}

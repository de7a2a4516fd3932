//! Desktop sessions in a cluster: any node takes any session request (node 1 passes node 2's
//! session's to node 2; node 3, without desktops, creates on a desktop node); node 2 runs a
//! session and is killed with `kill -9`: its desktop dies with it, and node 1, once the
//! membership declares node 2 dead, records the session Terminated (node lost) in the canon.

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

    // `vcos status` says which limits are in force on a desktop node.
    let key_file = common::admin_key_file(root.path().join("node1"));
    let (exit, output) = common::Proc::spawn(&["status", "--node", &base2, "--api-key-file", key_file.to_str().expect("UTF-8")]).finish(Duration::from_secs(30));
    assert!(exit.success(), "{output}");
    assert!(output.contains("desktops: 1 sessions (1 active), limits by rlimit"), "{output}");

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
}

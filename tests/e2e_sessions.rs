//! Desktop sessions as a user gets them: `vcos up --desktops` (Xvfb, x11vnc and xterm from
//! apt), a session created over HTTP with xterm inside, its screenshot a PNG of the tier's size,
//! paused and resumed, terminated and billed (its record and the tenant's bill in the canon),
//! the metrics under their v-SuperCore names; then a node killed with live sessions: its
//! desktops die with it, and started again it records the sessions it left Terminated.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::{json, Value};

const UP_DEADLINE: Duration = Duration::from_secs(60);

fn up(data: &Path) -> (Proc, String) {
    let dir = data.to_str().expect("UTF-8");
    let mut proc = Proc::spawn(&["up", "--data-dir", dir, "--listen", "127.0.0.1:0", "--no-models", "--desktops", "--desktop-pool", "1"]);
    let base = proc.wait_up(UP_DEADLINE);
    (proc, base)
}

async fn call(http: &reqwest::Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = if method == "GET" { http.get(url) } else { http.post(url) };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a response");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn display_answers(display: u64) -> bool {
    vcos_gpu_workers::desktop::x11::answers(u32::try_from(display).expect("display"), Duration::from_millis(300))
}

/// The pid of the Xvfb serving `display`, from /proc.
fn xvfb_pid(display: u64) -> Option<u32> {
    let wanted = format!(":{display}");
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0);
        let is_xvfb = args.next().is_some_and(|a| a.ends_with(b"Xvfb"));
        (is_xvfb && args.next() == Some(wanted.as_bytes())).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_http_are_real_desktops_billed_and_recovered() {
    let data = tempfile::tempdir().expect("temp dir");
    let (mut node, base) = up(data.path());
    let http = common::keyed_client(data.path(), Duration::from_secs(30));
    let sessions = format!("{base}/v1/tenants/default/sessions");

    // Bad input first: an unknown tier names the tiers.
    let (status, error) = call(&http, "POST", sessions.clone(), Some(json!({"tier": "mega"}))).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("tier") && m.contains("`basic`")), "{error}");

    let (status, session) = call(&http, "POST", sessions.clone(), Some(json!({"tier": "basic", "app": ["xterm"]}))).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["state"], "active");
    assert_eq!(session["screen"], json!([1024, 768, 24]));
    assert_eq!(session["limits"], "rlimit");
    let id = session["id"].as_u64().expect("id");
    let display = session["display"].as_u64().expect("display");
    assert!(display_answers(display));
    let url = format!("{sessions}/{id}");

    // The screenshot: PNG, the tier's size (IHDR width and height, big endian).
    let shot = http.get(format!("{url}/screenshot.png")).send().await.expect("screenshot");
    assert_eq!(shot.status().as_u16(), 200);
    assert_eq!(shot.headers()["content-type"], "image/png");
    let png = shot.bytes().await.expect("bytes");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!((u32::from_be_bytes(png[16..20].try_into().expect("4")), u32::from_be_bytes(png[20..24].try_into().expect("4"))), (1024, 768));

    // Pause and resume.
    let (status, paused) = call(&http, "POST", format!("{url}/pause"), None).await;
    assert_eq!((status, &paused["state"]), (200, &json!("paused")), "{paused}");
    assert!(!display_answers(display), "a paused desktop does not answer");
    let (status, _) = call(&http, "GET", format!("{url}/screenshot.png"), None).await;
    assert_eq!(status, 409);
    let (status, resumed) = call(&http, "POST", format!("{url}/resume"), None).await;
    assert_eq!((status, &resumed["state"]), (200, &json!("active")), "{resumed}");
    assert!(display_answers(display));

    // Metrics under the v-SuperCore names.
    let metrics = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    for name in ["v_supercore_active_sessions 1", "v_supercore_session_creation_duration", "v_supercore_resource_allocation_cpu", "v_supercore_resource_allocation_memory", "v_supercore_resource_allocation_gpu"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // Terminated after a couple of seconds: billed in its record, then in the tenant's bill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, ended) = call(&http, "POST", format!("{url}/terminate"), None).await;
    assert_eq!((status, &ended["state"]), (200, &json!("terminated")), "{ended}");
    let billed = ended["billed_desktop_seconds"].as_u64().expect("billed");
    assert!(billed >= 2, "{ended}");
    assert!(!display_answers(display), "its display is gone");
    let period = common::this_month();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, bill) = call(&http, "GET", format!("{base}/v1/tenants/default/bill?period={period}"), None).await;
        let line = bill["lines"].as_array().and_then(|l| l.iter().find(|l| l["unit"] == "desktop_seconds").cloned());
        if line.as_ref().and_then(|l| l["quantity"].as_u64()).is_some_and(|q| q >= billed) {
            break;
        }
        assert!(Instant::now() < deadline, "the bill never showed the desktop seconds: {bill}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, listed) = call(&http, "GET", sessions.clone(), None).await;
    assert_eq!(status, 200);
    assert!(listed["sessions"].as_array().is_some_and(|s| s.iter().any(|s| s["id"] == id && s["state"] == "terminated")), "{listed}");

    // A node killed with a live session, then started again: the session ends Terminated
    // (node restarted) and its orphaned desktop is killed.
    let (status, live) = call(&http, "POST", sessions.clone(), Some(json!({"tier": "standard"}))).await;
    assert_eq!(status, 201, "{live}");
    let live_id = live["id"].as_u64().expect("id");
    let live_display = live["display"].as_u64().expect("display");
    assert!(display_answers(live_display));
    let xvfb = xvfb_pid(live_display).expect("the session's Xvfb");
    node.kill_hard();
    // Its desktops die with it (setpriv --pdeathsig), the warm pool's too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{xvfb}")).exists() && xvfb_pid(live_display) == Some(xvfb) {
        assert!(Instant::now() < deadline, "the desktop outlived its node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_node, base) = up(data.path());
    let (status, after) = call(&http, "GET", format!("{base}/v1/tenants/default/sessions/{live_id}"), None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["state"], "terminated", "{after}");
    assert!(after["reason"].as_str().is_some_and(|r| r.contains("node restarted")), "{after}");
}

/// `vcos bench sessions --quick` runs end to end (a node, desktops cold and warm, bare Xvfb
/// interleaved) and prints its table.
#[test]
fn bench_sessions_quick_runs() {
    let (status, output) = Proc::spawn(&["bench", "sessions", "--quick"]).finish(Duration::from_secs(300));
    assert!(status.success(), "`vcos bench sessions --quick` failed ({status}):\n{output}");
    for metric in [
        "cold start->ready p50",
        "cold start->ready p99",
        "warm start->ready p50",
        "warm start->ready p99",
        "pause p99",
        "resume p99",
        "RSS per idle session",
        "concurrent sessions (count)",
    ] {
        assert!(output.contains(metric), "{metric} missing from the table:\n{output}");
    }
}

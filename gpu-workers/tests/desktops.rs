//! Desktop sessions on real Xvfb displays (`apt-get install xvfb x11vnc xterm`, as `.ci/run`
//! does): started from the warm pool and cold, an application inside, screenshots of the
//! tier's size, pause (the display stops answering) and resume (it answers again), a desktop
//! killed from outside restarted by its supervisor and, past the intensity, the session ended,
//! VNC reachable with its banner, quotas and bad input refused, usage billed and recorded in
//! the canon.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vcos_actors::metering::UsageUnit;
use vcos_actors::{ActorError, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};
use vcos_gpu_workers::desktop::record::session_key;
use vcos_gpu_workers::desktop::{x11, CreateSession, DesktopConfig, DesktopTier, Desktops, SessionRecord, SessionState};
use vcos_supervision::core::Intensity;

async fn runtime(store: Arc<MemoryStore>) -> (Runtime, TenantId) {
    let config = RuntimeConfig::new(store, Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).start().await.expect("runtime");
    let tenant = TenantId::default_tenant();
    runtime.ensure_tenant(tenant, TenantPolicy::default()).await.expect("tenant");
    (runtime, tenant)
}

fn config(node: u64, dir: &std::path::Path, first_display: u32) -> DesktopConfig {
    let mut config = DesktopConfig::new(node, dir.to_path_buf());
    // Each test binary its own range, so that parallel tests do not race for displays.
    config.displays = (first_display, first_display + 49);
    config.meter_interval = Duration::from_millis(200);
    config.intensity = Intensity { max_restarts: 2, period_ms: 60_000 };
    config
}

fn basic(app: Option<&[&str]>) -> CreateSession {
    CreateSession { tier: DesktopTier::Basic, app: app.map(|a| a.iter().map(|s| (*s).to_owned()).collect()), vnc: false, workspace: None }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn answers(record: &SessionRecord, timeout_ms: u64) -> bool {
    x11::answers(record.display.expect("a display"), Duration::from_millis(timeout_ms))
}

fn kill_desktop(record: &SessionRecord) {
    let pid = rustix::process::Pid::from_raw(record.pgid.expect("a process group")).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9 the Xvfb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_start_pause_resume_restart_and_terminate_on_real_displays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(MemoryStore::new());
    let (runtime, tenant) = runtime(store.clone()).await;
    let desktops = Desktops::start(runtime.clone(), config(1, dir.path(), 700)).await.expect("Xvfb is installed");
    assert_eq!(desktops.status().limits, "rlimit");
    until("the warm pool holds a basic display", || desktops.status().pool.get("basic").copied().unwrap_or(0) >= 1).await;

    // From the pool, with an application inside.
    let (session, password) = desktops.create(&tenant, basic(Some(&["xterm", "-geometry", "80x24+0+0"]))).await.expect("created");
    assert!(password.is_none());
    assert_eq!(session.state, SessionState::Active);
    assert!(session.warm, "taken from the warm pool");
    assert!(answers(&session, 1_000), "an active display answers");
    // The limits in force (rlimits): Xvfb runs under the tier's address-space and CPU limits.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", session.pgid.expect("pgid"))).expect("limits");
    let limit_of = |name: &str| -> Option<u64> { limits.lines().find(|l| l.starts_with(name))?.split_whitespace().rev().nth(1)?.parse().ok() };
    assert_eq!(limit_of("Max address space"), Some(DesktopTier::Basic.memory_bytes()), "{limits}");
    assert_eq!(limit_of("Max cpu time"), Some(900), "a quarter core for an hour: {limits}");
    let stored: SessionRecord = serde_json::from_slice(&store_get(&store, &session)).expect("the record is in the canon");
    assert_eq!(stored.state, SessionState::Active);

    // The screenshot is a PNG of the tier's size, and the application drew on it (xterm maps
    // its window within a few seconds on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let png = desktops.screenshot(&tenant, session.id).await.expect("screenshot");
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().expect("a valid PNG");
        let info = reader.info();
        assert_eq!((info.width, info.height), (1024, 768));
        let mut pixels = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut pixels).expect("pixels");
        let first = &pixels[..3];
        if pixels.chunks_exact(3).any(|p| p != first) {
            break;
        }
        let log = std::fs::read_to_string(dir.path().join(format!("display-{}.log", session.display.expect("display")))).unwrap_or_default();
        assert!(Instant::now() < deadline, "the screen never showed the application (one colour); its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Paused: the display does not answer; resumed: it does.
    let paused = desktops.pause(&tenant, session.id).await.expect("pause");
    assert_eq!(paused.state, SessionState::Paused);
    assert!(!answers(&session, 300), "a paused display does not answer");
    assert!(matches!(desktops.pause(&tenant, session.id).await, Err(ActorError::Conflict(_))), "pausing twice is refused");
    assert!(matches!(desktops.screenshot(&tenant, session.id).await, Err(ActorError::Conflict(_))));
    let resumed = desktops.resume(&tenant, session.id).await.expect("resume");
    assert_eq!(resumed.state, SessionState::Active);
    assert!(answers(&session, 1_000), "a resumed display answers");

    // Killed from outside: the supervisor starts a new desktop, and records it.
    kill_desktop(&session);
    until("the desktop is restarted", || desktops.get(&tenant, session.id).is_ok_and(|r| r.restart_count == 1 && r.state == SessionState::Active)).await;
    let restarted = desktops.get(&tenant, session.id).expect("get");
    assert!(answers(&restarted, 2_000), "the restarted display answers");
    assert!(restarted.restarts[0].reason.contains("Xvfb exited unexpectedly"), "{:?}", restarted.restarts);

    // Terminated: billed and recorded.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let ended = desktops.terminate(&tenant, session.id).await.expect("terminate");
    assert_eq!(ended.state, SessionState::Terminated);
    assert!(ended.active_ms >= 1_000 && ended.billed_desktop_seconds >= 1, "{ended:?}");
    assert!(!answers(&restarted, 300), "the display is gone");
    let stored: SessionRecord = serde_json::from_slice(&store_get(&store, &session)).expect("record");
    assert_eq!(stored.state, SessionState::Terminated);
    assert_eq!(stored.billed_desktop_seconds, ended.billed_desktop_seconds);
    let entry = runtime.tenant(&tenant).expect("tenant");
    assert!(entry.usage.unwritten(UsageUnit::DesktopSeconds) >= ended.billed_desktop_seconds, "the tenant's usage holds the desktop seconds");
    assert!(matches!(desktops.pause(&tenant, session.id).await, Err(ActorError::Conflict(_))), "a terminated session cannot be paused");

    // Killed past the intensity (2 restarts): the session ends, with the reason.
    let (fragile, _) = desktops.create(&tenant, basic(None)).await.expect("created");
    for restarts in 1..=2 {
        let current = desktops.get(&tenant, fragile.id).expect("get");
        kill_desktop(&current);
        until("restarted", || desktops.get(&tenant, fragile.id).is_ok_and(|r| r.restart_count == restarts && r.pgid != current.pgid)).await;
    }
    kill_desktop(&desktops.get(&tenant, fragile.id).expect("get"));
    until("ended past the intensity", || desktops.get(&tenant, fragile.id).is_ok_and(|r| r.state == SessionState::Terminated)).await;
    let gave_up = desktops.get(&tenant, fragile.id).expect("get");
    assert!(gave_up.reason.as_deref().is_some_and(|r| r.contains("intensity")), "{gave_up:?}");

    // Bad input: an application that cannot start; the quota (4 live sessions for a basic
    // tenant); a pro desktop for a basic tenant.
    let bad = desktops.create(&tenant, basic(Some(&["/no/such/program"]))).await;
    assert!(matches!(&bad, Err(ActorError::BadRequest { field, .. }) if field == "app"), "{bad:?}");
    let pro = CreateSession { tier: DesktopTier::Pro, app: None, vnc: false, workspace: None };
    assert!(matches!(desktops.create(&tenant, pro).await, Err(ActorError::HandshakeRefused { .. })));
    let mut live = Vec::new();
    for _ in 0..4 {
        live.push(desktops.create(&tenant, basic(None)).await.expect("within the quota").0);
    }
    let over = desktops.create(&tenant, basic(None)).await;
    assert!(matches!(&over, Err(ActorError::QuotaExceeded { .. })), "{over:?}");

    for session in live {
        desktops.terminate(&tenant, session.id).await.expect("terminate");
    }
    desktops.shutdown().await;
}

fn store_get(store: &MemoryStore, session: &SessionRecord) -> Vec<u8> {
    vcos_actors::store::CanonStore::get(store, &session_key(&session.tenant, session.id)).expect("get").expect("present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_serves_vnc_with_its_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (runtime, tenant) = runtime(Arc::new(MemoryStore::new())).await;
    let mut config = config(2, dir.path(), 760);
    config.pool_per_tier = 0;
    let desktops = Desktops::start(runtime, config).await.expect("Xvfb is installed");
    let request = CreateSession { tier: DesktopTier::Standard, app: None, vnc: true, workspace: None };
    let (session, password) = desktops.create(&tenant, request).await.expect("created");
    assert!(!session.warm, "no pool: a cold start");
    let password = password.expect("the password, once");
    assert_eq!(password.len(), 8);
    let vnc = session.vnc.clone().expect("an endpoint");
    assert_eq!(vnc.host, "127.0.0.1");
    // x11vnc answers with the RFB banner and offers VNC authentication (type 2).
    let deadline = Instant::now() + Duration::from_secs(20);
    let banner = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", vnc.port)) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut banner = [0u8; 12];
            if stream.read_exact(&mut banner).is_ok() {
                break banner;
            }
        }
        assert!(Instant::now() < deadline, "x11vnc did not answer on port {}", vnc.port);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(banner.starts_with(b"RFB 003."), "{:?}", String::from_utf8_lossy(&banner));
    assert!(!dir.path().join(format!("vnc-{}.pass", session.id)).exists(), "the password file is read once and removed");
    let png = desktops.screenshot(&tenant, session.id).await.expect("screenshot");
    let reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().expect("PNG");
    assert_eq!((reader.info().width, reader.info().height), (1280, 720));
    desktops.terminate(&tenant, session.id).await.expect("terminate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_pauses_resumes_and_terminates_its_sessions_as_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (runtime, tenant) = runtime(Arc::new(MemoryStore::new())).await;
    let mut config = config(3, dir.path(), 780);
    config.pool_per_tier = 0;
    let desktops = Desktops::start(runtime, config).await.expect("Xvfb is installed");
    let (workspace, passwords) = desktops.create_workspace(&tenant, "design review", vec![basic(None), basic(Some(&["xterm"]))]).await.expect("created");
    assert_eq!(passwords, [None, None]);
    assert_eq!(workspace.sessions.len(), 2);
    assert_eq!(workspace.state(), SessionState::Active);
    assert!(workspace.sessions.iter().all(|s| s.workspace == Some(workspace.record.id) && answers(s, 1_000)));

    let paused = desktops.pause_workspace(&tenant, workspace.record.id).await.expect("pause");
    assert!(paused.sessions.iter().all(|s| s.state == SessionState::Paused && !answers(s, 200)));
    assert!(matches!(desktops.pause_workspace(&tenant, workspace.record.id).await, Err(ActorError::Conflict(_))));
    let resumed = desktops.resume_workspace(&tenant, workspace.record.id).await.expect("resume");
    assert!(resumed.sessions.iter().all(|s| s.state == SessionState::Active && answers(s, 1_000)));

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let ended = desktops.terminate_workspace(&tenant, workspace.record.id).await.expect("terminate");
    assert_eq!(ended.state(), SessionState::Terminated);
    let usage = ended.usage();
    assert_eq!(usage.billed_desktop_seconds, ended.sessions.iter().map(|s| s.billed_desktop_seconds).sum::<u64>());
    assert!(usage.billed_desktop_seconds >= 2, "{usage:?}");

    // Bad input: no sessions; a session that cannot start ends the others (none is left).
    assert!(matches!(desktops.create_workspace(&tenant, "empty", Vec::new()).await, Err(ActorError::BadRequest { .. })));
    let failed = desktops.create_workspace(&tenant, "half", vec![basic(None), basic(Some(&["/no/such/program"]))]).await;
    assert!(matches!(failed, Err(ActorError::BadRequest { .. })), "{failed:?}");
    assert_eq!(desktops.status().sessions, 0, "the started session was terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hours_are_a_quota_over_thirty_days() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(MemoryStore::new());
    let (runtime, tenant) = runtime(store.clone()).await;
    let mut config = config(4, dir.path(), 790);
    config.pool_per_tier = 0;
    let desktops = Desktops::start(runtime.clone(), config).await.expect("Xvfb is installed");
    // A terminated session of this month that used the basic tier's 100 hours.
    let now = vcos_actors::Clock::unix_ms(runtime.clock().as_ref());
    let used = SessionRecord {
        id: 1,
        tenant: tenant.as_str().to_owned(),
        tier: DesktopTier::Basic,
        state: SessionState::Terminated,
        node: 9,
        display: None,
        pgid: None,
        app: None,
        vnc: None,
        workspace: None,
        limits: "rlimit".into(),
        created_ms: now - 3_600_000,
        updated_ms: now,
        start_ms: 60,
        warm: false,
        active_ms: 100 * 3_600_000,
        cpu_ms: 0,
        billed_desktop_seconds: 360_000,
        restarts: Vec::new(),
        restart_count: 0,
        reason: Some("terminated on request".into()),
    };
    let value = serde_json::to_vec(&used).expect("json");
    vcos_actors::store::commit_durable(store.as_ref(), vec![vcos_actors::store::CanonWrite::Put { key: session_key(&used.tenant, used.id), value }]).await.expect("put");
    let refused = desktops.create(&tenant, basic(None)).await;
    assert!(matches!(&refused, Err(ActorError::QuotaExceeded { quota, .. }) if quota == "session_hours"), "{refused:?}");
}

//! Three members on real UDP over loopback: they join, one crashes and the others see it
//! down, it restarts and they see it back under a renewed identity.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use vcos_cluster::membership::{MemberState, MembershipConfig, NodeIdentity, NodeMeta, Roles};
use vcos_cluster::{spawn, MembershipHandle};

async fn start(node_id: u64, renewal: u64, bind: SocketAddr, seeds: Vec<SocketAddr>) -> MembershipHandle {
    let mut socket = None;
    for _ in 0..100 {
        match UdpSocket::bind(bind).await {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            // The crashed process's socket may take a moment to close.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let socket = socket.expect("bind the gossip port");
    let identity = NodeIdentity {
        node_id,
        renewal,
        gossip_addr: socket.local_addr().expect("bound"),
        meta: NodeMeta { region: "local".into(), roles: Roles::HOST.with(Roles::API), http_addr: None, canon_addr: None },
    };
    let config = MembershipConfig::lan("udp-test", identity, seeds, 3, node_id);
    let (handle, _events) = spawn(socket, config).expect("valid config");
    handle
}

async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// How long a step may take before the test calls it lost (liveness, not speed).
const LIVENESS_BOUND: Duration = Duration::from_secs(20);

fn alive(handle: &MembershipHandle) -> Vec<u64> {
    handle.view().ids_in(MemberState::Alive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_detect_a_crash_and_a_restart() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let n1 = start(1, 1, any, vec![]).await;
    let seed = n1.identity().gossip_addr;
    let n2 = start(2, 1, any, vec![seed]).await;
    let n3 = start(3, 1, any, vec![seed]).await;
    let n3_addr = n3.identity().gossip_addr;
    wait_for(LIVENESS_BOUND, || [&n1, &n2, &n3].iter().all(|h| alive(h) == [1, 2, 3])).await.expect("three nodes join");

    n3.abort();
    let detected = wait_for(LIVENESS_BOUND, || {
        [&n1, &n2].iter().all(|h| h.view().get(3).is_some_and(|m| m.state == MemberState::Down))
    })
    .await
    .unwrap_or_else(|| {
        let seen: Vec<_> = [&n1, &n2].iter().map(|h| h.view().get(3).map(|m| m.state)).collect();
        panic!("the crash is not detected: the survivors see node 3 as {seen:?}")
    });
    // How fast is a figure for the simulator and the benches (`vcos sim --scenario membership`,
    // `vcos bench cluster`), not a timed assertion: a loaded CI machine stretches it.
    eprintln!("crash detected by both survivors in {detected:?}");

    let n3 = start(3, 2, n3_addr, vec![seed]).await;
    wait_for(LIVENESS_BOUND, || {
        [&n1, &n2, &n3].iter().all(|h| alive(h) == [1, 2, 3] && h.view().get(3).is_some_and(|m| m.identity.renewal >= 2))
    })
    .await
    .expect("the restarted node comes back renewed");

    n3.leave().await;
    wait_for(LIVENESS_BOUND, || [&n1, &n2].iter().all(|h| h.view().get(3).is_some_and(|m| m.state == MemberState::Left)))
        .await
        .expect("a graceful leave is seen as left");
    n1.leave().await;
    n2.leave().await;
}

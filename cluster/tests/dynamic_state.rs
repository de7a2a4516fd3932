//! Two nodes publish their load over chitchat on loopback and read each other's.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use vcos_cluster::dynamic::{DynamicState, DynamicStateConfig, NodeLoad};

fn free_port() -> SocketAddr {
    // Bind port 0 to learn a free port, then release it for chitchat.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_others_load() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let load = |n: u64| NodeLoad { load_per_mille: 100 * n as u32, capacity: 1_000, imvus_owned: n, version: "0.1.0".into() };
    let mut a_config = DynamicStateConfig::new("dyn-test", 1, 7, a_addr, vec![b_addr]);
    a_config.gossip_interval_ms = 50;
    let mut b_config = DynamicStateConfig::new("dyn-test", 2, 9, b_addr, vec![a_addr]);
    b_config.gossip_interval_ms = 50;
    let a = DynamicState::start(a_config, &load(1)).await.expect("start a");
    let b = DynamicState::start(b_config, &load(2)).await.expect("start b");
    a.publish(&load(3)).await;
    let mut seen = None;
    for _ in 0..100 {
        let snapshot = b.snapshot().await;
        if snapshot.get(&1).is_some_and(|p| p.load == load(3)) {
            seen = Some(snapshot);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = seen.expect("b learns a's latest load");
    assert_eq!(snapshot[&1].renewal, 7, "published under a's renewal");
    assert_eq!(snapshot[&2].load, load(2), "b's own state is in its snapshot");
    a.shutdown().await;
    b.shutdown().await;
}

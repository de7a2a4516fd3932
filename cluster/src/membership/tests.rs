//! Core tests on an in-memory network with a fake clock: every datagram and timer goes
//! through [`Net`], which delivers them in time order, drops what the test says, and records
//! events.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::*;

const CLUSTER: &str = "test-cluster";

fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 7946))
}

fn identity(i: u64, renewal: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: i,
        renewal,
        gossip_addr: addr(i),
        meta: NodeMeta { region: "eu".into(), roles: Roles::HOST, http_addr: None, canon_addr: None },
    }
}

fn config(identity: NodeIdentity, seeds: Vec<SocketAddr>, size: u32) -> MembershipConfig {
    let seed = identity.node_id ^ identity.renewal;
    MembershipConfig::lan(CLUSTER, identity, seeds, size, seed)
}

/// In-flight datagram: (deliver at, sequence) → (from, to, bytes).
type Flight = BTreeMap<(u64, u64), (SocketAddr, SocketAddr, Vec<u8>)>;

/// A deterministic network of cores keyed by gossip address.
struct Net {
    now_ms: u64,
    latency_ms: u64,
    cores: BTreeMap<SocketAddr, MembershipCore>,
    timers: BTreeMap<SocketAddr, TimerQueue>,
    flight: Flight,
    seq: u64,
    /// Addresses whose traffic (both ways) is dropped.
    cut: BTreeSet<SocketAddr>,
    events: Vec<(u64, SocketAddr, MemberEvent)>,
    /// The cluster secret of each node id that has one.
    secrets: BTreeMap<u64, std::sync::Arc<vcos_canon_raft::auth::ClusterSecret>>,
}

impl Net {
    fn new() -> Self {
        Self {
            now_ms: 0,
            latency_ms: 1,
            cores: BTreeMap::new(),
            timers: BTreeMap::new(),
            flight: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            events: Vec::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// Starts a node that joins through `seeds`.
    fn start(&mut self, id: NodeIdentity, seeds: &[u64], size: u32) {
        let at = id.gossip_addr;
        let mut config = config(id.clone(), seeds.iter().map(|s| addr(*s)).collect(), size);
        config.secret = self.secrets.get(&id.node_id).cloned();
        let mut core = MembershipCore::new(&config).expect("valid config");
        core.join(self.now_ms);
        self.cores.insert(at, core);
        self.timers.insert(at, TimerQueue::default());
        self.drain(at);
    }

    /// Stops a node abruptly (its timers and datagrams vanish).
    fn crash(&mut self, i: u64) {
        self.cores.remove(&addr(i));
        self.timers.remove(&addr(i));
    }

    fn core(&self, i: u64) -> &MembershipCore {
        self.cores.get(&addr(i)).expect("node runs")
    }

    fn drain(&mut self, at: SocketAddr) {
        let Some(core) = self.cores.get_mut(&at) else { return };
        while let Some(action) = core.poll_action() {
            match action {
                Action::Send { to, datagram } => {
                    assert!(datagram.len() <= frame::DATAGRAM_LEN_MAX);
                    self.seq += 1;
                    self.flight.insert((self.now_ms + self.latency_ms, self.seq), (at, to, datagram));
                }
                Action::Schedule { at_ms, timer } => self.timers.get_mut(&at).expect("timers of a running node").insert(at_ms, timer),
                Action::Event(event) => self.events.push((self.now_ms, at, event)),
            }
        }
    }

    /// Injects a raw datagram.
    fn inject(&mut self, to: u64, from: SocketAddr, bytes: &[u8]) {
        let now = self.now_ms;
        if let Some(core) = self.cores.get_mut(&addr(to)) {
            core.handle_datagram(now, from, bytes);
        }
        self.drain(addr(to));
    }

    /// Runs until `until_ms`, delivering datagrams and firing timers in time order.
    fn run_until(&mut self, until_ms: u64) {
        loop {
            let next_flight = self.flight.keys().next().map(|(at, _)| *at);
            let next_timer = self.timers.values().filter_map(TimerQueue::next_at_ms).min();
            let next = match (next_flight, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > until_ms {
                break;
            }
            self.now_ms = self.now_ms.max(next);
            let now = self.now_ms;
            while let Some(entry) = self.flight.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (from, to, bytes) = entry.remove();
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                if let Some(core) = self.cores.get_mut(&to) {
                    core.handle_datagram(now, from, &bytes);
                    self.drain(to);
                }
            }
            let addrs: Vec<SocketAddr> = self.timers.keys().copied().collect();
            for at in addrs {
                let due = self.timers.get_mut(&at).map(|t| t.pop_due(now)).unwrap_or_default();
                for (_, timer) in due {
                    if let Some(core) = self.cores.get_mut(&at) {
                        core.handle_timer(now, timer);
                    }
                    self.drain(at);
                }
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until `done` holds (checked every 10 ms) or `limit_ms` passes; returns when it held.
    fn run_until_true(&mut self, limit_ms: u64, mut done: impl FnMut(&Self) -> bool) -> Option<u64> {
        let end = self.now_ms + limit_ms;
        while self.now_ms < end {
            if done(self) {
                return Some(self.now_ms);
            }
            let next = self.now_ms + 10;
            self.run_until(next);
        }
        done(self).then_some(self.now_ms)
    }

    fn state_of(&self, observer: u64, node: u64) -> Option<MemberState> {
        self.core(observer).view().get(node).map(|m| m.state)
    }

    fn all_see(&self, observers: &[u64], node: u64, state: MemberState) -> bool {
        observers.iter().all(|o| self.state_of(*o, node) == Some(state))
    }
}

fn cluster_of(n: u64) -> Net {
    let mut net = Net::new();
    for i in 1..=n {
        net.start(identity(i, 1), &[1], n as u32);
    }
    net
}

fn converged(net: &Net, alive: &[u64]) -> bool {
    alive.iter().all(|o| net.core(*o).view().ids_in(MemberState::Alive) == alive)
}

#[test]
fn nodes_join_through_a_seed_and_agree() {
    let mut net = cluster_of(5);
    let at = net.run_until_true(5_000, |n| converged(n, &[1, 2, 3, 4, 5])).expect("five nodes converge");
    assert!(at < 2_000, "converged at {at} ms");
    let up = net.events.iter().filter(|(_, at, e)| *at == addr(1) && matches!(e, MemberEvent::Up(id) if id.node_id != 1)).count();
    assert_eq!(up, 4, "the seed saw four members come up");
    let meta = &net.core(3).view().get(5).expect("known").identity.meta;
    assert_eq!(meta.region, "eu", "static metadata rides in the identity");
}

#[test]
fn a_crashed_node_is_declared_down_within_two_seconds() {
    let mut net = cluster_of(5);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3, 4, 5])).expect("converge");
    net.run_until(net.now_ms + 1_000);
    net.crash(4);
    let crashed_at = net.now_ms;
    let seen = net.run_until_true(5_000, |n| n.all_see(&[1, 2, 3, 5], 4, MemberState::Down)).expect("detected");
    assert!(seen - crashed_at < 2_000, "detection took {} ms", seen - crashed_at);
    let suspected = net.events.iter().any(|(_, _, e)| matches!(e, MemberEvent::Suspect(id) if id.node_id == 4));
    assert!(suspected, "suspicion comes before down");
}

#[test]
fn a_suspicion_is_refuted_when_the_node_answers_again() {
    let mut net = cluster_of(4);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3, 4])).expect("converge");
    // Cut node 3 just long enough to be suspected, not declared down.
    net.cut.insert(addr(3));
    net.run_until_true(3_000, |n| [1, 2, 4].iter().any(|o| n.state_of(*o, 3) == Some(MemberState::Suspect))).expect("suspected");
    net.cut.clear();
    net.run_until_true(3_000, |n| converged(n, &[1, 2, 3, 4])).expect("refuted");
    let refuted = net.events.iter().any(|(_, _, e)| matches!(e, MemberEvent::Refuted(id) if id.node_id == 3));
    assert!(refuted, "someone saw the refutation");
    assert_eq!(net.core(3).identity().renewal, 1, "no renewal needed: it was never down");
}

#[test]
fn a_restarted_node_replaces_its_old_identity() {
    let mut net = cluster_of(4);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3, 4])).expect("converge");
    // Quick restart: gone for 100 ms (less than detection), back with a higher renewal.
    net.crash(2);
    net.run_until(net.now_ms + 100);
    net.start(identity(2, 50), &[1], 4);
    net.run_until_true(3_000, |n| {
        converged(n, &[1, 2, 3, 4]) && [1, 3, 4].iter().all(|o| n.core(*o).view().get(2).is_some_and(|m| m.identity.renewal == 50))
    })
    .expect("the new identity replaces the old");
    for o in [1, 3, 4] {
        let view = net.core(o).view();
        assert_eq!(view.members.len(), 4, "one entry per node id, no pile-up");
        let renewed = net.events.iter().any(|(_, at, e)| *at == addr(o) && matches!(e, MemberEvent::Renewed { old, new } if old.renewal == 1 && new.renewal == 50));
        assert!(renewed, "node {o} saw the restart as a renewal");
    }
}

#[test]
fn a_lone_node_rejoins_through_its_seeds() {
    let mut net = cluster_of(3);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3])).expect("converge");
    // Isolate node 3 until both sides declare the other down.
    net.cut.insert(addr(3));
    net.run_until_true(10_000, |n| n.core(3).num_members() == 0 && n.all_see(&[1, 2], 3, MemberState::Down)).expect("split");
    net.cut.clear();
    net.run_until_true(10_000, |n| converged(n, &[1, 2, 3])).expect("node 3 rejoins by itself");
    assert!(net.core(3).identity().renewal > 1, "it came back renewed");
    assert_eq!(net.core(1).view().members.len(), 3);
}

#[test]
fn a_node_that_leaves_is_marked_left() {
    let mut net = cluster_of(3);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3])).expect("converge");
    let now = net.now_ms;
    net.cores.get_mut(&addr(2)).expect("runs").leave(now);
    net.drain(addr(2));
    net.run_until(net.now_ms + 50);
    assert!(net.all_see(&[1, 3], 2, MemberState::Left));
    assert!(net.core(2).is_quiet());
    net.run_until(net.now_ms + 3_000);
    assert!(net.all_see(&[1, 3], 2, MemberState::Left), "stays left, not down");
}

#[test]
fn with_a_cluster_secret_members_join_and_strangers_are_dropped() {
    use vcos_canon_raft::auth::ClusterSecret;
    let ours = std::sync::Arc::new(ClusterSecret::generate(|b| b.fill(1)));
    let theirs = std::sync::Arc::new(ClusterSecret::generate(|b| b.fill(2)));
    let mut net = Net::new();
    for i in 1..=3 {
        net.secrets.insert(i, ours.clone());
    }
    net.secrets.insert(4, theirs);
    for i in 1..=4 {
        net.start(identity(i, 1), &[1], 4);
    }
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3])).expect("members with the secret converge");
    net.run_until(net.now_ms + 3_000);
    assert!(net.core(1).view().get(4).is_none(), "a node with another secret never joins");
    assert!(net.core(1).dropped(frame::DropReason::Unauthenticated) > 0, "its datagrams are dropped and counted");
    // A well-formed datagram without a tag is no better.
    let before = net.core(1).dropped(frame::DropReason::Unauthenticated);
    let untagged = [frame::header(frame::cluster_id(CLUSTER), frame::FrameKind::Join), vec![0; 40]].concat();
    net.inject(1, SocketAddr::from(([192, 168, 1, 1], 9)), &untagged);
    assert_eq!(net.core(1).dropped(frame::DropReason::Unauthenticated), before + 1);
}

#[test]
fn bad_datagrams_are_dropped_and_counted() {
    let mut net = cluster_of(2);
    net.run_until_true(5_000, |n| converged(n, &[1, 2])).expect("converge");
    let stranger = SocketAddr::from(([192, 168, 1, 1], 9));
    let cases: Vec<(Vec<u8>, frame::DropReason)> = vec![
        (vec![], frame::DropReason::Short),
        (b"VM".to_vec(), frame::DropReason::Short),
        (vec![0xff; frame::DATAGRAM_LEN_MAX + 1], frame::DropReason::Oversized),
        ([frame::header(frame::cluster_id("other"), frame::FrameKind::Foca), vec![1, 2, 3]].concat(), frame::DropReason::Foreign),
        ([frame::header(frame::cluster_id(CLUSTER), frame::FrameKind::Foca), vec![0xff; 40]].concat(), frame::DropReason::Malformed),
        ([frame::header(frame::cluster_id(CLUSTER), frame::FrameKind::Join), vec![7; 3]].concat(), frame::DropReason::Malformed),
        ([b"XX".to_vec(), vec![0; 20]].concat(), frame::DropReason::Magic),
    ];
    for (bytes, reason) in &cases {
        let before = net.core(1).dropped(*reason);
        net.inject(1, stranger, bytes);
        assert_eq!(net.core(1).dropped(*reason), before + 1, "{reason:?}");
    }
    // Random garbage after a valid header never panics.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for len in 0..300 {
        let mut body = frame::header(frame::cluster_id(CLUSTER), frame::FrameKind::Foca);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push(x as u8);
        }
        net.inject(1, stranger, &body);
    }
    net.run_until(net.now_ms + 1_000);
    assert!(converged(&net, &[1, 2]), "garbage changed nothing");
}

#[test]
fn a_duplicate_node_id_is_reported_and_the_newer_wins() {
    let mut net = cluster_of(3);
    net.run_until_true(5_000, |n| converged(n, &[1, 2, 3])).expect("converge");
    // A second process claims id 3 from another address, with a later start.
    let mut twin = identity(3, 99);
    twin.gossip_addr = SocketAddr::from(([10, 0, 0, 33], 7946));
    net.start(twin.clone(), &[1], 3);
    net.run_until_true(5_000, |n| n.cores.get(&addr(3)).is_some_and(MembershipCore::is_quiet)).expect("the older process steps back");
    let reported = |at: SocketAddr, won: bool| net.events.iter().any(|(_, a, e)| *a == at && matches!(e, MemberEvent::DuplicateId { we_won, .. } if *we_won == won));
    assert!(reported(addr(3), false), "the loser reports");
    assert!(!reported(twin.gossip_addr, false), "the winner never steps back");
    assert!(!net.cores[&twin.gossip_addr].is_quiet());
    net.run_until_true(5_000, |n| [1, 2].iter().all(|o| n.core(*o).view().get(3).is_some_and(|m| m.identity.gossip_addr == twin.gossip_addr && m.state == MemberState::Alive)))
        .expect("the cluster follows the winner");
}

#[test]
fn invalid_configs_name_the_setting() {
    let mut bad = config(identity(1, 1), vec![], 3);
    bad.probe_rtt_ms = bad.probe_period_ms;
    assert!(matches!(MembershipCore::new(&bad), Err(ConfigError::RttTooLong { .. })));
    let mut bad = config(identity(1, 1), vec![], 3);
    bad.cluster_name.clear();
    assert!(matches!(bad.validate(), Err(ConfigError::EmptyClusterName)));
    let mut bad = config(identity(1, 1), vec![], 3);
    bad.identity.meta.region = "x".repeat(REGION_LEN_MAX + 1);
    assert!(matches!(bad.validate(), Err(ConfigError::RegionTooLong(_))));
    let mut bad = config(identity(1, 1), vec![], 0);
    assert_eq!(bad.validate(), Err(ConfigError::ClusterSize(0)));
    bad.cluster_size = 3;
    bad.gossip_fanout = 0;
    assert_eq!(bad.validate(), Err(ConfigError::Zero("gossip_fanout")));
    let good = config(identity(1, 1), vec![], 200);
    assert_eq!(good.validate(), Ok(()));
    assert_eq!(good.probe_period_ms, 100, "large clusters probe twice as often");
    assert_eq!(good.suspect_to_down_ms, 782);
    assert_eq!(good.gossip_period_ms, 100, "large clusters gossip twice as often");
}

//! [`MembershipCore`]: foca plus the frame header, seeds, leaving and duplicate ids, sans IO.
//!
//! Inputs take `now_ms` (any monotonic millisecond clock); outputs are [`Action`]s drained
//! with [`MembershipCore::poll_action`] after every input: datagrams to send, timers to
//! schedule (absolute `at_ms`), and view events. The core never reads a clock, never spawns,
//! and draws randomness only from foca's RNG, seeded from the config.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use foca::{AccumulatingRuntime, Codec as _, Foca, Identity as _, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec, State};
use rand010::rngs::SmallRng;
use rand010::SeedableRng as _;

use crate::membership::config::{ConfigError, MembershipConfig};
use crate::membership::frame::{self, DropReason, FrameKind};
use crate::membership::identity::NodeIdentity;
use crate::membership::view::{MemberEvent, MemberInfo, MemberState, View};

/// An opaque timer: hand it back to [`MembershipCore::handle_timer`] at its `at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer(TimerKind);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    // foca's timers order themselves (indirect probes before the next probe); ours fire last.
    Foca(foca::Timer<NodeIdentity>),
    Rejoin,
    CatchUp,
}

/// Rounds in a row that taught a catching-up member nothing before it stops asking, once it
/// knows at least the expected cluster size.
const CATCH_UP_IDLE_ROUNDS: u32 = 5;
/// The same while it knows fewer members than the expected cluster size: answers are random
/// samples, so the last few unknown members of a large cluster turn up rarely (a coupon
/// collector), and five empty rounds proved nothing (seen at 200 members: stable members that
/// never learnt three others until the periodic announce, 20 s later). Bounded, because the
/// expected size is a setting and some members may be down for good.
const CATCH_UP_IDLE_ROUNDS_SHORT: u32 = 75;
/// Members asked for their member list per catch-up round.
const CATCH_UP_FANOUT: usize = 2;

/// A member that just joined (or rejoined renewed) knows few others: foca's answer to a join
/// is one datagram of members, and afterwards only changes are gossiped, so a node joining a
/// cluster of 200 learnt the rest from the periodic announce (one member's list every 5 s) and
/// its view took 25 s to be whole. While catching up it asks [`CATCH_UP_FANOUT`] members for
/// their lists (each answer is a datagram of random live members) every probe period, until
/// [`CATCH_UP_IDLE_ROUNDS`] rounds in a row taught it nothing ([`CATCH_UP_IDLE_ROUNDS_SHORT`]
/// while it knows fewer members than the configured cluster size).
#[derive(Debug, Default)]
struct CatchUp {
    armed: bool,
    round: u64,
    idle_rounds: u32,
    last_size: usize,
}

/// What the core asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send one datagram.
    Send {
        /// Destination (a member's gossip address or a seed).
        to: SocketAddr,
        /// The whole datagram, header included (at most [`frame::DATAGRAM_LEN_MAX`] bytes).
        datagram: Vec<u8>,
    },
    /// Call [`MembershipCore::handle_timer`] with `timer` once `now_ms >= at_ms`.
    Schedule {
        /// When.
        at_ms: u64,
        /// What.
        timer: Timer,
    },
    /// The view changed.
    Event(MemberEvent),
}

/// Why the core is no longer taking part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quiet {
    /// Running.
    No,
    /// Left the cluster on request.
    Left,
    /// Lost a duplicate-id conflict.
    LostId,
}

type FocaT = Foca<NodeIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// One member's membership state machine. See the module docs.
pub struct MembershipCore {
    /// Tags sent datagrams and checks received ones (see `frame`).
    secret: Option<std::sync::Arc<vcos_canon_raft::auth::ClusterSecret>>,
    foca: FocaT,
    runtime: AccumulatingRuntime<NodeIdentity>,
    cluster: u64,
    seeds: Vec<SocketAddr>,
    rejoin_period_ms: u64,
    suspect_to_down_ms: u64,
    actions: VecDeque<Action>,
    view: View,
    /// Identities (node id → renewal) that announced they left.
    left: BTreeMap<u64, u64>,
    /// Duplicate-id claimants already reported.
    duplicates: BTreeSet<NodeIdentity>,
    quiet: Quiet,
    joined: bool,
    drops: BTreeMap<DropReason, u64>,
    catch_up: CatchUp,
    probe_period_ms: u64,
    /// Expected members, this one included (see [`CatchUp`]).
    cluster_size: usize,
}

impl MembershipCore {
    /// A core for `config` (validated). Nothing happens before [`Self::join`].
    pub fn new(config: &MembershipConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let foca = Foca::new(config.identity.clone(), config.foca_config(), SmallRng::seed_from_u64(config.rng_seed), PostcardCodec);
        let own = config.identity.gossip_addr;
        let mut seeds: Vec<SocketAddr> = config.seeds.iter().copied().filter(|s| *s != own).collect();
        seeds.sort();
        seeds.dedup();
        let mut core = Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            cluster: frame::cluster_id(&config.cluster_name),
            secret: config.secret.clone(),
            seeds,
            rejoin_period_ms: config.rejoin_period_ms,
            suspect_to_down_ms: config.suspect_to_down_ms,
            actions: VecDeque::new(),
            view: View::default(),
            left: BTreeMap::new(),
            duplicates: BTreeSet::new(),
            quiet: Quiet::No,
            joined: false,
            drops: BTreeMap::new(),
            catch_up: CatchUp::default(),
            probe_period_ms: config.probe_period_ms,
            cluster_size: usize::try_from(config.cluster_size).unwrap_or(usize::MAX),
        };
        core.refresh_view(0);
        Ok(core)
    }

    // ---- getters ----

    /// This node's current identity (foca renews it when the cluster declared it down).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// The members view (this node included).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Live members other than this node, as foca counts them.
    pub fn num_members(&self) -> usize {
        self.foca.num_members()
    }

    /// Datagrams dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// Whether the core stopped taking part (left, or lost its node id to a duplicate).
    pub fn is_quiet(&self) -> bool {
        self.quiet != Quiet::No
    }

    // ---- commands ----

    /// Starts: asks every seed to announce to us, and arms the rejoin timer (a node left
    /// alone asks its seeds again every `rejoin_period_ms`, foca issue #15).
    pub fn join(&mut self, now_ms: u64) {
        if self.joined || self.is_quiet() {
            return;
        }
        self.joined = true;
        self.send_joins();
        self.actions.push_back(Action::Schedule { at_ms: now_ms + self.rejoin_period_ms, timer: Timer(TimerKind::Rejoin) });
        self.arm_catch_up(now_ms);
    }

    fn arm_catch_up(&mut self, now_ms: u64) {
        if self.catch_up.armed {
            return;
        }
        self.catch_up = CatchUp { armed: true, round: self.catch_up.round, idle_rounds: 0, last_size: self.view.members.len() };
        self.actions.push_back(Action::Schedule { at_ms: now_ms + self.probe_period_ms, timer: Timer(TimerKind::CatchUp) });
    }

    /// One catch-up round (see [`CatchUp`]): members are picked by a stride over the view's
    /// sorted ids, so that rounds ask different members, deterministically.
    fn catch_up_round(&mut self, now_ms: u64) {
        // Known members, down ones and this one included: a crashed member is known, not missing.
        let size = self.view.members.len();
        if size > self.catch_up.last_size {
            self.catch_up.idle_rounds = 0;
        } else {
            self.catch_up.idle_rounds += 1;
        }
        self.catch_up.last_size = size;
        let short = size < self.cluster_size;
        let limit = if short { CATCH_UP_IDLE_ROUNDS_SHORT } else { CATCH_UP_IDLE_ROUNDS };
        if self.catch_up.idle_rounds >= limit {
            self.catch_up.armed = false;
            return;
        }
        let own = self.foca.identity().node_id;
        let alive: Vec<NodeIdentity> =
            self.view.members.values().filter(|m| m.state == MemberState::Alive && m.identity.node_id != own).map(|m| m.identity.clone()).collect();
        if !alive.is_empty() {
            for j in 0..CATCH_UP_FANOUT.min(alive.len()) {
                let at = (self.catch_up.round as usize).wrapping_mul(7_919).wrapping_add(j.wrapping_mul(104_729)) % alive.len();
                if let Err(error) = self.foca.announce(alive[at].clone(), &mut self.runtime) {
                    tracing::debug!(%error, "catch-up announce");
                }
            }
        }
        self.catch_up.round += 1;
        self.actions.push_back(Action::Schedule { at_ms: now_ms + self.probe_period_ms, timer: Timer(TimerKind::CatchUp) });
    }

    /// Leaves: tells every live member directly, lets foca gossip our departure, then goes
    /// quiet (later inputs are ignored). Drain the actions and send them before exiting.
    pub fn leave(&mut self, now_ms: u64) {
        if self.is_quiet() {
            return;
        }
        let body = postcard_identity(self.foca.identity());
        let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().gossip_addr).collect();
        for to in targets {
            let mut datagram = frame::header(self.cluster, FrameKind::Leaving);
            datagram.extend_from_slice(&body);
            self.send(to, datagram);
        }
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "foca leave_cluster");
        }
        self.quiet = Quiet::Left;
        self.drain_runtime(now_ms);
        self.refresh_view(now_ms);
    }

    /// Queues `datagram` for `to`, tagged with the cluster secret when there is one.
    fn send(&mut self, to: SocketAddr, mut datagram: Vec<u8>) {
        if let Some(secret) = &self.secret {
            let tag = secret.mac(&[&datagram]);
            datagram.extend_from_slice(&tag[..frame::TAG_LEN]);
        }
        self.actions.push_back(Action::Send { to, datagram });
    }

    // ---- inputs ----

    /// One datagram from `from`. Bad ones are dropped and counted, never answered.
    pub fn handle_datagram(&mut self, now_ms: u64, from: SocketAddr, datagram: &[u8]) {
        if self.is_quiet() {
            return;
        }
        let datagram = match &self.secret {
            None => datagram,
            Some(secret) => {
                if datagram.len() > frame::DATAGRAM_LEN_MAX {
                    return self.drop_datagram(DropReason::Oversized, from);
                }
                let Some((signed, tag)) = datagram.len().checked_sub(frame::TAG_LEN).map(|at| datagram.split_at(at)) else {
                    return self.drop_datagram(DropReason::Short, from);
                };
                if secret.verify(&[signed], tag).is_none() {
                    return self.drop_datagram(DropReason::Unauthenticated, from);
                }
                signed
            }
        };
        match frame::parse(self.cluster, datagram) {
            Err(reason) => self.drop_datagram(reason, from),
            Ok((FrameKind::Foca, body)) => {
                let mut head = body;
                let Ok(header) = PostcardCodec.decode_header(&mut head) else {
                    self.drop_datagram(DropReason::Malformed, from);
                    return;
                };
                // Whether the sender is a seed we do not know as a member yet (joining).
                let unknown_seed = header.message == foca::Message::Announce
                    && self.seeds.contains(&from)
                    && !self.foca.iter_members().any(|m| m.id().gossip_addr == from);
                if self.duplicate(now_ms, &header.src) {
                    self.drop_datagram(DropReason::Conflict, from);
                } else if let Some(winner) = self.superseded_by(&header.src) {
                    // A live process with another's node id: tell it who holds the id.
                    let mut datagram = frame::header(self.cluster, FrameKind::Conflict);
                    datagram.extend_from_slice(&postcard_identity(&winner));
                    self.send(from, datagram);
                    self.drop_datagram(DropReason::Conflict, from);
                } else if let Err(error) = self.foca.handle_data(body, &mut self.runtime) {
                    tracing::trace!(%error, %from, "foca refused a datagram");
                    self.drop_datagram(DropReason::Malformed, from);
                } else if unknown_seed {
                    // A seed answering our join: announce back, so that its reply (a feed)
                    // lists the members it knows instead of only itself. Only while it is not
                    // a member yet: when nodes list each other as seeds (`vcos up` discovers
                    // every member as one), answering every announce with one made two nodes
                    // announce to each other forever, thousands of datagrams a second.
                    if let Err(error) = self.foca.announce(header.src, &mut self.runtime) {
                        tracing::debug!(%error, "announce to a seed");
                    }
                }
            }
            Ok((FrameKind::Join, body)) => match decode_identity(body) {
                None => self.drop_datagram(DropReason::Malformed, from),
                Some(joiner) if joiner.node_id == self.identity().node_id => {
                    if !self.duplicate(now_ms, &joiner) {
                        // Our own earlier identity's request, still in flight.
                        self.drop_datagram(DropReason::Malformed, from);
                    } else {
                        self.drop_datagram(DropReason::Conflict, from);
                    }
                }
                Some(joiner) => {
                    if let Err(error) = self.foca.announce(joiner, &mut self.runtime) {
                        tracing::debug!(%error, "announce to a joiner");
                    }
                }
            },
            Ok((FrameKind::Conflict, body)) => match decode_identity(body) {
                None => self.drop_datagram(DropReason::Malformed, from),
                Some(winner) => {
                    if !self.duplicate(now_ms, &winner) {
                        self.drop_datagram(DropReason::Malformed, from);
                    }
                }
            },
            Ok((FrameKind::Leaving, body)) => match decode_identity(body) {
                None => self.drop_datagram(DropReason::Malformed, from),
                Some(leaver) if leaver.node_id == self.identity().node_id => self.drop_datagram(DropReason::Malformed, from),
                Some(leaver) => {
                    let newest = self.left.get(&leaver.node_id).is_none_or(|r| *r <= leaver.renewal);
                    if newest {
                        self.left.insert(leaver.node_id, leaver.renewal);
                    }
                    let update = std::iter::once(Member::new(leaver, 0, State::Down));
                    if let Err(error) = self.foca.apply_many(update, true, &mut self.runtime) {
                        tracing::debug!(%error, "applying a leaving notice");
                    }
                }
            },
        }
        self.drain_runtime(now_ms);
        self.refresh_view(now_ms);
    }

    /// A timer the driver scheduled has come due.
    pub fn handle_timer(&mut self, now_ms: u64, timer: Timer) {
        if self.is_quiet() {
            return;
        }
        match timer.0 {
            TimerKind::Foca(timer) => {
                if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                    tracing::trace!(%error, "foca timer");
                }
            }
            TimerKind::CatchUp => self.catch_up_round(now_ms),
            TimerKind::Rejoin => {
                if self.foca.num_members() == 0 {
                    tracing::debug!(seeds = self.seeds.len(), "alone: asking the seeds again");
                    self.send_joins();
                }
                // A suspicion can outlive its timer in foca (seen in simulation: a member stuck
                // suspect for 30 s). Past twice the suspicion time it is declared down here, which
                // makes the member renew and rejoin instead of staying half-seen.
                let overdue: Vec<Member<NodeIdentity>> = self
                    .view
                    .members
                    .values()
                    .filter(|m| m.state == MemberState::Suspect && now_ms.saturating_sub(m.since_ms) > 2 * self.suspect_to_down_ms)
                    .map(|m| Member::new(m.identity.clone(), m.incarnation, State::Down))
                    .collect();
                if !overdue.is_empty() {
                    tracing::debug!(count = overdue.len(), "declaring overdue suspects down");
                    if let Err(error) = self.foca.apply_many(overdue.into_iter(), true, &mut self.runtime) {
                        tracing::debug!(%error, "declaring overdue suspects down");
                    }
                }
                self.actions.push_back(Action::Schedule { at_ms: now_ms + self.rejoin_period_ms, timer: Timer(TimerKind::Rejoin) });
            }
        }
        self.drain_runtime(now_ms);
        self.refresh_view(now_ms);
    }

    // ---- outputs ----

    /// The next action, in the order they arose.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- internals ----

    fn send_joins(&mut self) {
        let body = postcard_identity(self.foca.identity());
        for to in self.seeds.clone() {
            let mut datagram = frame::header(self.cluster, FrameKind::Join);
            datagram.extend_from_slice(&body);
            self.send(to, datagram);
        }
    }

    fn drop_datagram(&mut self, reason: DropReason, from: SocketAddr) {
        *self.drops.entry(reason).or_default() += 1;
        metrics::counter!("cluster_datagrams_dropped_total", "reason" => reason.label()).increment(1);
        tracing::trace!(%from, reason = reason.label(), "dropped a membership datagram");
    }

    /// Whether `other` claims our node id from another address (a second live process with
    /// our id). Reports each claimant once; the loser goes quiet.
    fn duplicate(&mut self, now_ms: u64, other: &NodeIdentity) -> bool {
        let ours = self.foca.identity().clone();
        if other.node_id != ours.node_id || other.gossip_addr == ours.gossip_addr {
            return false;
        }
        let we_won = ours.win_addr_conflict(other);
        if self.duplicates.insert(other.clone()) {
            metrics::counter!("cluster_duplicate_node_id_total").increment(1);
            tracing::warn!(node_id = ours.node_id, ours = %ours.gossip_addr, theirs = %other.gossip_addr, we_won, "two processes claim one node id");
            self.push_event(MemberEvent::DuplicateId { ours, theirs: other.clone(), we_won });
        }
        if !we_won && self.quiet == Quiet::No {
            self.quiet = Quiet::LostId;
            self.refresh_view(now_ms);
        }
        true
    }

    /// The identity our view holds for `sender`'s node id when that is another live process
    /// (another gossip address) that wins the conflict.
    fn superseded_by(&self, sender: &NodeIdentity) -> Option<NodeIdentity> {
        let current = &self.view.members.get(&sender.node_id)?.identity;
        let holds = self.view.members.get(&sender.node_id).is_some_and(|m| m.state.is_active());
        (holds && current.gossip_addr != sender.gossip_addr && current.win_addr_conflict(sender)).then(|| current.clone())
    }

    fn drain_runtime(&mut self, now_ms: u64) {
        while let Some((to, payload)) = self.runtime.to_send() {
            if self.quiet == Quiet::LostId {
                continue;
            }
            let mut datagram = frame::header(self.cluster, FrameKind::Foca);
            datagram.extend_from_slice(&payload);
            self.send(to.gossip_addr, datagram);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let at_ms = now_ms + u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
            self.actions.push_back(Action::Schedule { at_ms, timer: Timer(TimerKind::Foca(timer)) });
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(renewal = id.renewal, "declared down by the cluster; rejoined renewed");
                    self.arm_catch_up(now_ms);
                }
                // Foca goes defunct when it leaves (`leave`, on every clean stop): expected
                // then. Otherwise it could not refute being declared down and will not rejoin.
                OwnedNotification::Defunct if self.quiet == Quiet::Left => tracing::debug!("foca is defunct after leaving, as expected"),
                OwnedNotification::Defunct => tracing::warn!("foca went defunct: declared down and unable to rejoin"),
                // The view diff reports members; Active/Idle are visible in num_members.
                _ => {}
            }
        }
    }

    /// Brings the view up to date with foca's member list, emitting an event per change.
    fn refresh_view(&mut self, now_ms: u64) {
        let own = self.foca.identity().clone();
        let own_state = match self.quiet {
            Quiet::No => MemberState::Alive,
            Quiet::Left | Quiet::LostId => MemberState::Left,
        };
        let mut events = Vec::new();
        update_entry(&mut self.view, own, own_state, 0, now_ms, &mut events);
        let own_id = self.foca.identity().node_id;
        let own_addr = self.foca.identity().gossip_addr;
        let mut claimant = None;
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            if id.node_id == own_id {
                // An earlier identity of ours, or another process with our id (gossiped).
                if id.gossip_addr != own_addr && !self.duplicates.contains(id) {
                    claimant = Some(id.clone());
                }
                continue;
            }
            let state = match member.state() {
                _ if self.left.get(&id.node_id) == Some(&id.renewal) => MemberState::Left,
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            let unchanged = self.view.members.get(&id.node_id).is_some_and(|m| m.identity == *id && m.state == state && m.incarnation == member.incarnation());
            if !unchanged {
                update_entry(&mut self.view, id.clone(), state, member.incarnation(), now_ms, &mut events);
            }
        }
        for event in events {
            self.push_event(event);
        }
        if let Some(claimant) = claimant {
            self.duplicate(now_ms, &claimant);
        }
    }

    fn push_event(&mut self, event: MemberEvent) {
        metrics::counter!("cluster_member_events_total", "kind" => event.kind()).increment(1);
        self.actions.push_back(Action::Event(event));
    }
}

fn update_entry(view: &mut View, identity: NodeIdentity, state: MemberState, incarnation: u16, now_ms: u64, events: &mut Vec<MemberEvent>) {
    let node_id = identity.node_id;
    match view.members.get_mut(&node_id) {
        None => {
            if state.is_active() {
                events.push(MemberEvent::Up(identity.clone()));
            }
            view.members.insert(node_id, MemberInfo { identity, state, incarnation, since_ms: now_ms });
        }
        Some(entry) => {
            if entry.identity != identity {
                if identity.renewal < entry.identity.renewal {
                    return; // stale news about an identity already replaced
                }
                events.push(MemberEvent::Renewed { old: entry.identity.clone(), new: identity.clone() });
                entry.identity = identity.clone();
                entry.since_ms = now_ms;
                if state != MemberState::Alive {
                    events.push(state_event(entry.state, state, &identity));
                }
            } else if entry.state != state {
                events.push(state_event(entry.state, state, &identity));
                entry.since_ms = now_ms;
            }
            entry.state = state;
            entry.incarnation = incarnation;
        }
    }
}

fn state_event(from: MemberState, to: MemberState, identity: &NodeIdentity) -> MemberEvent {
    let identity = identity.clone();
    match to {
        MemberState::Alive if from == MemberState::Suspect => MemberEvent::Refuted(identity),
        MemberState::Alive => MemberEvent::Up(identity),
        MemberState::Suspect => MemberEvent::Suspect(identity),
        MemberState::Down => MemberEvent::Down(identity),
        MemberState::Left => MemberEvent::Left(identity),
    }
}

fn postcard_identity(identity: &NodeIdentity) -> Vec<u8> {
    // Serialising a plain struct into a Vec cannot fail.
    postcard::to_allocvec(identity).expect("an identity always serialises")
}

fn decode_identity(body: &[u8]) -> Option<NodeIdentity> {
    match postcard::take_from_bytes::<NodeIdentity>(body) {
        Ok((identity, rest)) if rest.is_empty() => Some(identity),
        _ => None,
    }
}

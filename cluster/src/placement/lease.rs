//! [`Leases`]: the pure core that decides which buckets this node holds.
//!
//! Fed the alive members of the region, observations of the lease records (read from the local
//! canon replica), the outcomes of its own writes and the monotonic time; it returns
//! [`LeaseAction`]s: guarded canon writes to make and the buckets gained and lost. It reads no
//! clock and does no I/O.
//!
//! Records: one *heartbeat* per node (`holders/{node}`: incarnation, beat, revoked), renewed by
//! its node every `renew_every_ms`; one record per bucket (`leases/{bucket}`: holder, epoch),
//! written only when the bucket changes hands; one *epoch key* per bucket (the fence that IMVU
//! writes carry). A renewal is one small write per node, whatever the number of buckets: the
//! Raft log grows by a few hundred bytes per second, not by a record per bucket.
//!
//! Safety argument (no clock is compared across nodes):
//! - a node trusts its heartbeat until `sent_at + lease_ms - margin_ms` by its own clock
//!   (`sent_at` read *before* the renewal was sent), and serves a bucket only while the bucket
//!   record names it and its heartbeat is trusted;
//! - a contender claims a bucket of a live-looking holder only after seeing the holder's
//!   heartbeat unchanged (same bytes) for `lease_ms` by its own clock, with a claim guarded by
//!   those bytes and by the bucket record; the claim also *revokes* the heartbeat, so the
//!   holder's next renewal fails and it drops every bucket before it could serve one it lost;
//! - `margin_ms` absorbs clock-rate differences and scheduling delay between reading the clock
//!   and acting on it; a paused process (SIGSTOP) sees its monotonic clock jump on resume and
//!   stops serving before it handles anything.

use std::collections::{BTreeMap, BTreeSet};

use super::rendezvous::{owner_of, score, BUCKETS};

/// Timing of bucket leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a contender must see a record unchanged before it may claim it.
    pub lease_ms: u64,
    /// How often the holder renews.
    pub renew_every_ms: u64,
    /// How much earlier than `lease_ms` the holder stops trusting a renewal.
    pub margin_ms: u64,
    /// A holder hands a bucket to its intended owner only once that owner has been alive (in
    /// the holder's view) this long: a member that flaps does not pull buckets back and forth.
    pub handover_stable_ms: u64,
    /// A holder keeps a bucket at least this long after claiming it before handing it over.
    pub min_hold_ms: u64,
    /// Liveness when views disagree: a bucket nobody claims (free, or its holder silent) is
    /// claimed by the member ranked `r` in the bucket's rendezvous order after
    /// `r * fallback_step_ms` more (rank 0, the intended owner, does not wait).
    pub fallback_step_ms: u64,
    /// How long a bucket claimed by the fallback is kept before it may be handed over: views
    /// that disagree for long must not move it back and forth.
    pub fallback_hold_ms: u64,
}

impl Default for LeaseConfig {
    /// Sized for failover under 2 s on a LAN: the membership declares a dead node within about
    /// a second, and a contender needs one lease period of silence.
    fn default() -> Self {
        Self { lease_ms: 1_000, renew_every_ms: 150, margin_ms: 250, handover_stable_ms: 2_000, min_hold_ms: 3_000, fallback_step_ms: 700, fallback_hold_ms: 30_000 }
    }
}

/// What is wrong with a [`LeaseConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseConfigError {
    /// A holder must get several renewals into the period it trusts one.
    #[error("renew_every_ms ({renew_every_ms}) must be at most a third of lease_ms - margin_ms ({trusted_ms})")]
    RenewTooRare {
        /// The renewal period.
        renew_every_ms: u64,
        /// `lease_ms - margin_ms`.
        trusted_ms: u64,
    },
    /// The margin must be positive and leave time to trust a renewal.
    #[error("margin_ms ({margin_ms}) must be in 1..lease_ms/2 (lease_ms = {lease_ms})")]
    BadMargin {
        /// The margin.
        margin_ms: u64,
        /// The lease.
        lease_ms: u64,
    },
}

impl LeaseConfig {
    /// Checks the relations the safety argument needs.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.margin_ms == 0 || self.margin_ms.saturating_mul(2) >= self.lease_ms {
            return Err(LeaseConfigError::BadMargin { margin_ms: self.margin_ms, lease_ms: self.lease_ms });
        }
        let trusted_ms = self.lease_ms - self.margin_ms;
        if self.renew_every_ms == 0 || self.renew_every_ms.saturating_mul(3) > trusted_ms {
            return Err(LeaseConfigError::RenewTooRare { renew_every_ms: self.renew_every_ms, trusted_ms });
        }
        Ok(())
    }
}

/// A holder: a node in one incarnation (a restarted node is a new holder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    /// The node id.
    pub node: u64,
    /// Its incarnation (grows with every start of the process).
    pub incarnation: u64,
}

/// A bucket's lease record, as stored in canon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it; `None` once released.
    pub holder: Option<Holder>,
    /// The fencing epoch: grows with every claim, never with a renewal or release.
    pub epoch: u64,
    /// Grows with every renewal and release, so that every write changes the bytes.
    pub beat: u64,
}

/// A lease record that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lease record is not 35 bytes of version 1 (got {len} bytes)")]
pub struct BadLeaseRecord {
    /// Its length.
    pub len: usize,
}

const RECORD_LEN: usize = 35;
const RECORD_VERSION: u8 = 1;

impl LeaseRecord {
    /// The fixed encoding: `L`, version, holder flag, node, incarnation, epoch, beat (big
    /// endian). Fixed, so that equal records are equal bytes (guards compare bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.push(b'L');
        out.push(RECORD_VERSION);
        let holder = self.holder.unwrap_or(Holder { node: 0, incarnation: 0 });
        out.push(u8::from(self.holder.is_some()));
        out.extend_from_slice(&holder.node.to_be_bytes());
        out.extend_from_slice(&holder.incarnation.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.beat.to_be_bytes());
        debug_assert_eq!(out.len(), RECORD_LEN);
        out
    }

    /// Decodes [`LeaseRecord::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadLeaseRecord> {
        let bad = BadLeaseRecord { len: bytes.len() };
        if bytes.len() != RECORD_LEN || bytes[0] != b'L' || bytes[1] != RECORD_VERSION || bytes[2] > 1 {
            return Err(bad);
        }
        let word = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[3 + 8 * i..3 + 8 * (i + 1)]);
            u64::from_be_bytes(b)
        };
        let holder = (bytes[2] == 1).then(|| Holder { node: word(0), incarnation: word(1) });
        Ok(Self { holder, epoch: word(2), beat: word(3) })
    }
}

/// A node's heartbeat record: its incarnation and a counter, or revoked by a claimer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The incarnation that writes it.
    pub incarnation: u64,
    /// Grows with every renewal.
    pub beat: u64,
    /// Set by a node that claimed one of its buckets after a lease of silence: the holder's
    /// renewals fail from then on, and it must register again.
    pub revoked: bool,
}

/// A heartbeat record that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("heartbeat record is not 19 bytes of version 1 (got {len} bytes)")]
pub struct BadHeartbeat {
    /// Its length.
    pub len: usize,
}

const HEARTBEAT_LEN: usize = 19;

impl Heartbeat {
    /// The fixed encoding: `H`, version, revoked flag, incarnation, beat (big endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEARTBEAT_LEN);
        out.extend_from_slice(&[b'H', RECORD_VERSION, u8::from(self.revoked)]);
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.beat.to_be_bytes());
        out
    }

    /// Decodes [`Heartbeat::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadHeartbeat> {
        if bytes.len() != HEARTBEAT_LEN || bytes[0] != b'H' || bytes[1] != RECORD_VERSION || bytes[2] > 1 {
            return Err(BadHeartbeat { len: bytes.len() });
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self { incarnation: word(3), beat: word(11), revoked: bytes[2] == 1 })
    }
}

/// Proof that this node serves a bucket now: the epoch its canon writes must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The bucket.
    pub bucket: u16,
    /// Its fencing epoch.
    pub epoch: u64,
}

/// A record the lease core reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeaseKey {
    /// A bucket's lease record.
    Bucket(u16),
    /// A bucket's epoch key (the fence).
    Epoch(u16),
    /// A node's heartbeat.
    Heartbeat(u64),
}

/// One part of a guarded write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// The key must hold exactly these bytes (`None`: absent).
    Expect(LeaseKey, Option<Vec<u8>>),
    /// Set the key.
    Put(LeaseKey, Vec<u8>),
}

/// Which write, for [`Leases::on_outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseTarget {
    /// This node's heartbeat (register or renew).
    Heartbeat,
    /// A bucket (claim or release).
    Bucket(u16),
}

/// What the core asks of its driver, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Apply `ops` atomically (all guards hold, or nothing is written); report the outcome
    /// with [`Leases::on_outcome`]`(target, ..)`.
    Write {
        /// What the write is for.
        target: LeaseTarget,
        /// Guards first, then puts.
        ops: Vec<LeaseOp>,
    },
    /// This node serves `bucket` from now on, under `epoch`.
    Gained {
        /// The bucket.
        bucket: u16,
        /// Its epoch.
        epoch: u64,
    },
    /// This node no longer serves `bucket`: drop its IMVUs from memory.
    Lost {
        /// The bucket.
        bucket: u16,
        /// The epoch it held.
        epoch: u64,
        /// Why, for logs and metrics.
        reason: &'static str,
    },
}

/// The outcome of a [`LeaseAction::Write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Applied.
    Applied,
    /// A guard failed: a record had changed.
    Conflict,
    /// Unknown (timeout, no quorum): it may or may not have been applied.
    Failed,
}

/// Bytes as read, and since when (this core's time).
#[derive(Clone, Debug, Default)]
struct Seen {
    /// `None`: never read; `Some(None)`: absent.
    bytes: Option<Option<Vec<u8>>>,
    since_ms: u64,
}

impl Seen {
    fn update(&mut self, now_ms: u64, bytes: Option<Vec<u8>>) {
        if self.bytes.as_ref() != Some(&bytes) {
            self.bytes = Some(bytes);
            self.since_ms = now_ms;
        }
    }
}

/// This node's own heartbeat.
#[derive(Clone, Debug, Default)]
struct OwnBeat {
    /// The bytes we last wrote successfully (`None`: not registered).
    current: Option<Heartbeat>,
    /// Trusted until.
    valid_until_ms: u64,
    last_sent_ms: u64,
    /// A write in flight: when sent, and what.
    in_flight: Option<(u64, Heartbeat)>,
}

#[derive(Clone, Debug)]
struct Held {
    /// Not handed over before this time.
    hold_until_ms: u64,
    record: LeaseRecord,
}

#[derive(Clone, Debug)]
struct InFlight {
    /// A claim made by the fallback (this node was not the intended owner).
    fallback: bool,
    claim: bool,
    record: LeaseRecord,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    seen: Seen,
    held: Option<Held>,
    in_flight: Option<InFlight>,
}

/// The lease core of one node for its home region. See the module docs.
#[derive(Clone, Debug)]
pub struct Leases {
    me: Holder,
    config: LeaseConfig,
    members: BTreeSet<u64>,
    /// When each member of `members` entered it (this core's time).
    alive_since_ms: BTreeMap<u64, u64>,
    buckets: Vec<Bucket>,
    heartbeats: BTreeMap<u64, Seen>,
    beat: OwnBeat,
}

impl Leases {
    /// A core for `me`, holding nothing yet.
    pub fn new(me: Holder, config: LeaseConfig) -> Result<Self, LeaseConfigError> {
        config.validate()?;
        Ok(Self {
            me,
            config,
            members: BTreeSet::new(),
            alive_since_ms: BTreeMap::new(),
            buckets: vec![Bucket::default(); usize::from(BUCKETS)],
            heartbeats: BTreeMap::new(),
            beat: OwnBeat::default(),
        })
    }

    /// This node.
    pub fn me(&self) -> Holder {
        self.me
    }

    /// The timing in force.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// The alive members of the home region at `now_ms` (this node included when it
    /// considers itself alive). Takes effect at the next [`Leases::poll`].
    pub fn set_members(&mut self, now_ms: u64, members: BTreeSet<u64>) {
        self.alive_since_ms.retain(|node, _| members.contains(node));
        for &node in &members {
            self.alive_since_ms.entry(node).or_insert(now_ms);
        }
        self.members = members;
    }

    /// The alive members as last set.
    pub fn members(&self) -> &BTreeSet<u64> {
        &self.members
    }

    /// The member that should own `bucket` by the current view.
    pub fn intended_owner(&self, bucket: u16) -> Option<u64> {
        owner_of(bucket, self.members.iter().copied())
    }

    /// This node's rank in `bucket`'s rendezvous order among the alive members (0: the
    /// intended owner); `None` when this node is not among them.
    fn rank(&self, bucket: u16) -> Option<u64> {
        let mine = (score(bucket, self.me.node), self.me.node);
        self.members.contains(&self.me.node).then(|| self.members.iter().filter(|&&n| (score(bucket, n), n) > mine).count() as u64)
    }

    /// The record of `bucket` as last read (its holder may have lapsed).
    pub fn recorded(&self, bucket: u16) -> Option<LeaseRecord> {
        let bytes = self.buckets.get(usize::from(bucket))?.seen.bytes.as_ref()?.as_ref()?;
        LeaseRecord::decode(bytes).ok()
    }

    /// The holder named by the record as last read (it may have lapsed).
    pub fn recorded_holder(&self, bucket: u16) -> Option<Holder> {
        self.recorded(bucket)?.holder
    }

    /// Whether this node's heartbeat is trusted at `now_ms`.
    fn beating(&self, now_ms: u64) -> bool {
        self.beat.current.is_some_and(|b| !b.revoked) && !self.lapsed(now_ms)
    }

    /// Whether the heartbeat can no longer be proven at `now_ms`. (The simulator's planted bug
    /// "serving after the lease lapsed" makes it never lapse, nor fail.)
    fn lapsed(&self, now_ms: u64) -> bool {
        now_ms >= self.beat.valid_until_ms && !vcos_actors::failpoints::ignore_lease_expiry()
    }

    /// The fence under which this node serves `bucket` at `now_ms`, if it can prove its hold.
    pub fn serving(&self, now_ms: u64, bucket: u16) -> Option<Fence> {
        let held = self.buckets.get(usize::from(bucket))?.held.as_ref()?;
        self.beating(now_ms).then_some(Fence { bucket, epoch: held.record.epoch })
    }

    /// Buckets this node serves at `now_ms`.
    pub fn serving_count(&self, now_ms: u64) -> usize {
        if !self.beating(now_ms) {
            return 0;
        }
        self.buckets.iter().filter(|b| b.held.is_some()).count()
    }

    /// The record of `bucket` as read from the local replica at `now_ms` (`None`: absent).
    pub fn observe_bucket(&mut self, now_ms: u64, bucket: u16, bytes: Option<Vec<u8>>, actions: &mut Vec<LeaseAction>) {
        let Some(slot) = self.buckets.get_mut(usize::from(bucket)) else { return };
        slot.seen.update(now_ms, bytes.clone());
        // The local replica includes every write of ours that completed, so a record that is
        // not ours while we hold the bucket means another node took it.
        if let Some(held) = &slot.held {
            let ours = bytes.as_deref().and_then(|b| LeaseRecord::decode(b).ok()) == Some(held.record);
            if !ours && slot.in_flight.is_none() {
                let epoch = held.record.epoch;
                slot.held = None;
                actions.push(LeaseAction::Lost { bucket, epoch, reason: "taken over" });
            }
        }
    }

    /// The heartbeat of `node` as read from the local replica at `now_ms` (`None`: absent).
    pub fn observe_heartbeat(&mut self, now_ms: u64, node: u64, bytes: Option<Vec<u8>>, actions: &mut Vec<LeaseAction>) {
        self.heartbeats.entry(node).or_default().update(now_ms, bytes.clone());
        if node == self.me.node && self.beat.in_flight.is_none() {
            if let Some(current) = self.beat.current {
                if bytes != Some(current.encode()) {
                    // Revoked (or overwritten): every bucket we held may have been taken.
                    self.drop_all(actions, "heartbeat revoked");
                    self.beat.current = None;
                }
            }
        }
    }

    fn drop_all(&mut self, actions: &mut Vec<LeaseAction>, reason: &'static str) {
        for (bucket, slot) in self.buckets.iter_mut().enumerate() {
            if let Some(held) = slot.held.take() {
                actions.push(LeaseAction::Lost { bucket: bucket as u16, epoch: held.record.epoch, reason });
            }
        }
    }

    /// The outcome of the write this core asked for on `target`.
    pub fn on_outcome(&mut self, now_ms: u64, target: LeaseTarget, outcome: LeaseOutcome, actions: &mut Vec<LeaseAction>) {
        let config = self.config;
        match target {
            LeaseTarget::Heartbeat => {
                let Some((sent_at_ms, written)) = self.beat.in_flight.take() else { return };
                match outcome {
                    LeaseOutcome::Applied => {
                        self.beat.current = Some(written);
                        self.beat.valid_until_ms = self.beat.valid_until_ms.max(sent_at_ms + config.lease_ms - config.margin_ms);
                    }
                    // The simulator's planted bug "serving after the lease lapsed": a renewal
                    // that failed is taken as one that may still land.
                    LeaseOutcome::Failed if vcos_actors::failpoints::ignore_lease_expiry() => {}
                    LeaseOutcome::Conflict | LeaseOutcome::Failed => {
                        // Revoked by a claimer, or unknown: stop serving everything and register
                        // again (buckets still naming this incarnation are claimed back).
                        let reason = if outcome == LeaseOutcome::Conflict { "heartbeat refused" } else { "heartbeat failed" };
                        self.drop_all(actions, reason);
                        self.beat.current = None;
                    }
                }
            }
            LeaseTarget::Bucket(bucket) => {
                let beating = self.beating(now_ms);
                let Some(slot) = self.buckets.get_mut(usize::from(bucket)) else { return };
                let Some(flight) = slot.in_flight.take() else { return };
                if flight.claim && outcome == LeaseOutcome::Applied {
                    slot.seen.update(now_ms, Some(flight.record.encode()));
                    let hold_ms = if flight.fallback { config.fallback_hold_ms } else { config.min_hold_ms };
                    slot.held = Some(Held { hold_until_ms: now_ms + hold_ms, record: flight.record });
                    if beating {
                        actions.push(LeaseAction::Gained { bucket, epoch: flight.record.epoch });
                    }
                } else if !flight.claim && outcome == LeaseOutcome::Applied {
                    slot.seen.update(now_ms, Some(flight.record.encode()));
                }
            }
        }
    }

    /// Decides what to do at `now_ms`: the heartbeat, expiries, releases and claims.
    pub fn poll(&mut self, now_ms: u64, actions: &mut Vec<LeaseAction>) {
        let config = self.config;
        // The heartbeat first: nothing is served or claimed without it.
        if self.beat.current.is_some() && self.lapsed(now_ms) && self.buckets.iter().any(|b| b.held.is_some()) {
            self.drop_all(actions, "lease lapsed");
        }
        if self.beat.in_flight.is_none() {
            let due = match self.beat.current {
                None => true,
                Some(_) => now_ms >= self.beat.last_sent_ms + config.renew_every_ms,
            };
            let mine = self.heartbeats.get(&self.me.node).and_then(|seen| seen.bytes.clone());
            if due {
                if let Some(observed) = mine {
                    let next = match self.beat.current {
                        Some(current) => Heartbeat { beat: current.beat + 1, ..current },
                        None => {
                            let last = observed.as_deref().and_then(|b| Heartbeat::decode(b).ok()).map_or(0, |h| h.beat);
                            Heartbeat { incarnation: self.me.incarnation, beat: last + 1, revoked: false }
                        }
                    };
                    let expect = match self.beat.current {
                        Some(current) => Some(current.encode()),
                        None => observed,
                    };
                    self.beat.last_sent_ms = now_ms;
                    self.beat.in_flight = Some((now_ms, next));
                    let key = LeaseKey::Heartbeat(self.me.node);
                    actions.push(LeaseAction::Write {
                        target: LeaseTarget::Heartbeat,
                        ops: vec![LeaseOp::Expect(key, expect), LeaseOp::Put(key, next.encode())],
                    });
                }
            }
        }
        let beating = self.beating(now_ms);
        for bucket in 0..BUCKETS {
            let intended = owner_of(bucket, self.members.iter().copied());
            let intended_stable = intended
                .and_then(|node| self.alive_since_ms.get(&node))
                .is_some_and(|&since| now_ms >= since + config.handover_stable_ms);
            let rank = self.rank(bucket);
            let me = self.me;
            let slot = &self.buckets[usize::from(bucket)];
            if slot.in_flight.is_some() {
                continue;
            }
            if let Some(held) = &slot.held {
                if intended != Some(me.node) && intended_stable && now_ms >= held.hold_until_ms {
                    // Stop serving first, then give the bucket to its intended owner.
                    let current = held.record;
                    let record = LeaseRecord { holder: None, epoch: current.epoch, beat: current.beat + 1 };
                    let slot = &mut self.buckets[usize::from(bucket)];
                    slot.held = None;
                    actions.push(LeaseAction::Lost { bucket, epoch: current.epoch, reason: "handed over" });
                    slot.in_flight = Some(InFlight { fallback: false, claim: false, record });
                    actions.push(LeaseAction::Write {
                        target: LeaseTarget::Bucket(bucket),
                        ops: vec![
                            LeaseOp::Expect(LeaseKey::Bucket(bucket), Some(current.encode())),
                            LeaseOp::Put(LeaseKey::Bucket(bucket), record.encode()),
                        ],
                    });
                }
                continue;
            }
            // Claims need our own heartbeat trusted: a claimed bucket is served at once.
            if !beating {
                continue;
            }
            let Some(rank) = rank else { continue };
            let Some(observed) = slot.seen.bytes.clone() else { continue };
            let waited_ms = now_ms.saturating_sub(slot.seen.since_ms);
            let fallback_ms = rank * config.fallback_step_ms;
            let current = match observed.as_deref().map(LeaseRecord::decode) {
                None => None,
                Some(Ok(record)) => Some(record),
                // An unreadable record is never claimed over: that needs an operator.
                Some(Err(_)) => continue,
            };
            let mut ops = vec![LeaseOp::Expect(LeaseKey::Bucket(bucket), observed.clone())];
            let claimable = match current.and_then(|r| r.holder) {
                // Free (never held, or released): the intended owner takes it at once, the
                // others in rank order if it does not.
                None => waited_ms >= fallback_ms,
                // Our own incarnation's record: nobody else can have served since.
                Some(h) if h == me => waited_ms >= fallback_ms,
                Some(holder) => {
                    let seen = self.heartbeats.get(&holder.node).cloned().unwrap_or_default();
                    let Some(hb_bytes) = seen.bytes else { continue };
                    let hb = hb_bytes.as_deref().and_then(|b| Heartbeat::decode(b).ok());
                    let dead = match hb {
                        // Absent, another incarnation's, or revoked: that holder is gone.
                        None => true,
                        Some(hb) => hb.revoked || hb.incarnation != holder.incarnation,
                    };
                    let silent_ms = now_ms.saturating_sub(seen.since_ms);
                    let ok = if dead { waited_ms >= fallback_ms } else { silent_ms >= config.lease_ms + fallback_ms };
                    if ok {
                        let key = LeaseKey::Heartbeat(holder.node);
                        ops.push(LeaseOp::Expect(key, hb_bytes.clone()));
                        if let (Some(hb), false) = (hb, dead) {
                            // Revoke it: the silent holder's next renewal fails.
                            ops.push(LeaseOp::Put(key, Heartbeat { revoked: true, ..hb }.encode()));
                        }
                    }
                    ok
                }
            };
            if claimable {
                let epoch = current.map_or(1, |r| r.epoch + 1);
                let beat = current.map_or(0, |r| r.beat + 1);
                let record = LeaseRecord { holder: Some(me), epoch, beat };
                ops.push(LeaseOp::Put(LeaseKey::Bucket(bucket), record.encode()));
                ops.push(LeaseOp::Put(LeaseKey::Epoch(bucket), epoch.to_be_bytes().to_vec()));
                self.buckets[usize::from(bucket)].in_flight = Some(InFlight { fallback: rank > 0, claim: true, record });
                actions.push(LeaseAction::Write { target: LeaseTarget::Bucket(bucket), ops });
            }
        }
    }

    /// Stops serving everything (shutdown): every held bucket is lost, and released so that its
    /// next owner need not wait out the lease.
    pub fn release_all(&mut self, actions: &mut Vec<LeaseAction>) {
        for bucket in 0..BUCKETS {
            let slot = &mut self.buckets[usize::from(bucket)];
            let Some(held) = slot.held.take() else { continue };
            actions.push(LeaseAction::Lost { bucket, epoch: held.record.epoch, reason: "leaving" });
            if slot.in_flight.is_none() {
                let record = LeaseRecord { holder: None, epoch: held.record.epoch, beat: held.record.beat + 1 };
                slot.in_flight = Some(InFlight { fallback: false, claim: false, record });
                actions.push(LeaseAction::Write {
                    target: LeaseTarget::Bucket(bucket),
                    ops: vec![
                        LeaseOp::Expect(LeaseKey::Bucket(bucket), Some(held.record.encode())),
                        LeaseOp::Put(LeaseKey::Bucket(bucket), record.encode()),
                    ],
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

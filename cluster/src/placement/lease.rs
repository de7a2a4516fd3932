//! [`Leases`]: the pure core that decides which buckets this node holds.
//!
//! Fed the alive members of the region, observations of the lease records (read from the local
//! canon replica), the outcomes of its own writes and the monotonic time; it returns
//! [`LeaseAction`]s: canon writes to make (claim, renew, release, each guarded by the record it
//! expects) and the buckets gained and lost. It reads no clock and does no I/O.
//!
//! Safety argument (no clock is compared across nodes):
//! - a holder trusts a renewal until `sent_at + lease_ms - margin_ms` by its own clock, where
//!   `sent_at` is read *before* the renewal is sent;
//! - a contender claims only a record it has observed unchanged (same bytes) for `lease_ms` by
//!   its own clock, and its claim is guarded by those bytes. The renewal it observed was applied
//!   after it was sent, so the holder stopped trusting it before the contender's claim; a later
//!   renewal changes the bytes and fails the guarded claim;
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

/// Proof that this node serves a bucket now: the epoch its canon writes must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The bucket.
    pub bucket: u16,
    /// Its fencing epoch.
    pub epoch: u64,
}

/// Which lease write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseWriteKind {
    /// Take the bucket (new epoch; also writes the epoch key).
    Claim,
    /// Extend our hold.
    Renew,
    /// Give the bucket up (its intended owner is another node).
    Release,
}

/// What the core asks of its driver, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Write `record` to the bucket's lease key if the key holds exactly `expect` (`None`:
    /// absent); a claim also sets the bucket's epoch key to `record.epoch`. Report the outcome
    /// with [`Leases::on_outcome`].
    Write {
        /// The bucket.
        bucket: u16,
        /// Which write.
        kind: LeaseWriteKind,
        /// The guard: the bytes the lease key must hold.
        expect: Option<Vec<u8>>,
        /// The new record.
        record: LeaseRecord,
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
    /// The guard failed: the record had changed.
    Conflict,
    /// Unknown (timeout, no quorum): it may or may not have been applied.
    Failed,
}

#[derive(Clone, Debug)]
struct Held {
    /// Not handed over before this time.
    hold_until_ms: u64,
    epoch: u64,
    record: LeaseRecord,
    valid_until_ms: u64,
    last_renew_sent_ms: u64,
}

#[derive(Clone, Debug)]
struct InFlight {
    /// A claim made by the fallback (this node was not the intended owner).
    fallback: bool,
    kind: LeaseWriteKind,
    sent_at_ms: u64,
    record: LeaseRecord,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// The record's bytes as last read (`None`: absent), once read at all.
    observed: Option<Option<Vec<u8>>>,
    /// When those bytes were first seen.
    observed_since_ms: u64,
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

    /// This node's rank in `bucket`'s rendezvous order among the alive members (0: the
    /// intended owner); `None` when this node is not among them.
    fn rank(&self, bucket: u16) -> Option<u64> {
        let mine = (score(bucket, self.me.node), self.me.node);
        self.members.contains(&self.me.node).then(|| self.members.iter().filter(|&&n| (score(bucket, n), n) > mine).count() as u64)
    }

    /// The alive members as last set.
    pub fn members(&self) -> &BTreeSet<u64> {
        &self.members
    }

    /// The member that should own `bucket` by the current view.
    pub fn intended_owner(&self, bucket: u16) -> Option<u64> {
        owner_of(bucket, self.members.iter().copied())
    }

    /// The holder named by the record as last read (it may have lapsed).
    pub fn recorded_holder(&self, bucket: u16) -> Option<Holder> {
        let bytes = self.buckets.get(usize::from(bucket))?.observed.as_ref()?.as_ref()?;
        LeaseRecord::decode(bytes).ok()?.holder
    }

    /// The fence under which this node serves `bucket` at `now_ms`, if it can prove its hold.
    pub fn serving(&self, now_ms: u64, bucket: u16) -> Option<Fence> {
        let held = self.buckets.get(usize::from(bucket))?.held.as_ref()?;
        (now_ms < held.valid_until_ms).then_some(Fence { bucket, epoch: held.epoch })
    }

    /// Buckets this node serves at `now_ms`.
    pub fn serving_count(&self, now_ms: u64) -> usize {
        (0..BUCKETS).filter(|&b| self.serving(now_ms, b).is_some()).count()
    }

    /// The record of `bucket` as read from the local replica at `now_ms` (`None`: absent).
    pub fn observe(&mut self, now_ms: u64, bucket: u16, bytes: Option<Vec<u8>>, actions: &mut Vec<LeaseAction>) {
        let Some(slot) = self.buckets.get_mut(usize::from(bucket)) else { return };
        if slot.observed.as_ref() != Some(&bytes) {
            slot.observed_since_ms = now_ms;
            slot.observed = Some(bytes.clone());
        }
        // The local replica includes every write of ours that completed, so a record that is
        // not ours while we hold the bucket means another node took it.
        if let Some(held) = &slot.held {
            let ours = bytes
                .as_deref()
                .and_then(|b| LeaseRecord::decode(b).ok())
                .is_some_and(|r| r.holder == Some(self.me) && r.epoch == held.epoch);
            if !ours {
                let epoch = held.epoch;
                slot.held = None;
                actions.push(LeaseAction::Lost { bucket, epoch, reason: "taken over" });
            }
        }
    }

    /// The outcome of the write this core asked for on `bucket`.
    pub fn on_outcome(&mut self, now_ms: u64, bucket: u16, outcome: LeaseOutcome, actions: &mut Vec<LeaseAction>) {
        let config = self.config;
        let Some(slot) = self.buckets.get_mut(usize::from(bucket)) else { return };
        let Some(flight) = slot.in_flight.take() else { return };
        let trusted_until = flight.sent_at_ms + config.lease_ms - config.margin_ms;
        match (flight.kind, outcome) {
            (LeaseWriteKind::Claim, LeaseOutcome::Applied) => {
                slot.observed = Some(Some(flight.record.encode()));
                slot.observed_since_ms = now_ms;
                if now_ms < trusted_until {
                    let hold_ms = if flight.fallback { config.fallback_hold_ms } else { config.min_hold_ms };
                    slot.held = Some(Held {
                        hold_until_ms: now_ms + hold_ms,
                        epoch: flight.record.epoch,
                        record: flight.record,
                        valid_until_ms: trusted_until,
                        last_renew_sent_ms: flight.sent_at_ms,
                    });
                    actions.push(LeaseAction::Gained { bucket, epoch: flight.record.epoch });
                }
                // A claim that took longer than it may be trusted is held by the record but
                // not served; the next poll claims again (the record names us).
            }
            (LeaseWriteKind::Renew, LeaseOutcome::Applied) => {
                slot.observed = Some(Some(flight.record.encode()));
                slot.observed_since_ms = now_ms;
                if let Some(held) = &mut slot.held {
                    held.record = flight.record;
                    held.valid_until_ms = held.valid_until_ms.max(trusted_until);
                }
            }
            (LeaseWriteKind::Renew, LeaseOutcome::Conflict | LeaseOutcome::Failed) => {
                // Conflict: someone else wrote the record. Failed: we no longer know its bytes.
                // Either way, stop serving; a record that still names us is claimed again.
                if let Some(held) = slot.held.take() {
                    let reason = if outcome == LeaseOutcome::Conflict { "renewal refused" } else { "renewal failed" };
                    actions.push(LeaseAction::Lost { bucket, epoch: held.epoch, reason });
                }
            }
            (LeaseWriteKind::Claim, LeaseOutcome::Conflict | LeaseOutcome::Failed)
            | (LeaseWriteKind::Release, _) => {}
        }
    }

    /// Decides what to do at `now_ms`: expiries, releases, renewals and claims.
    pub fn poll(&mut self, now_ms: u64, actions: &mut Vec<LeaseAction>) {
        let config = self.config;
        for bucket in 0..BUCKETS {
            let intended = owner_of(bucket, self.members.iter().copied());
            let intended_stable = intended
                .and_then(|node| self.alive_since_ms.get(&node))
                .is_some_and(|&since| now_ms >= since + config.handover_stable_ms);
            let rank = self.rank(bucket);
            let me = self.me;
            let slot = &mut self.buckets[usize::from(bucket)];
            if let Some(held) = &slot.held {
                if now_ms >= held.valid_until_ms {
                    let epoch = held.epoch;
                    slot.held = None;
                    actions.push(LeaseAction::Lost { bucket, epoch, reason: "lease lapsed" });
                }
            }
            if slot.in_flight.is_some() {
                continue;
            }
            if let Some(held) = &mut slot.held {
                if intended != Some(me.node) && intended_stable && now_ms >= held.hold_until_ms {
                    // Stop serving first, then give the bucket to its intended owner.
                    let (epoch, current) = (held.epoch, held.record);
                    slot.held = None;
                    actions.push(LeaseAction::Lost { bucket, epoch, reason: "handed over" });
                    let record = LeaseRecord { holder: None, epoch, beat: current.beat + 1 };
                    slot.in_flight = Some(InFlight { fallback: false, kind: LeaseWriteKind::Release, sent_at_ms: now_ms, record });
                    actions.push(LeaseAction::Write { bucket, kind: LeaseWriteKind::Release, expect: Some(current.encode()), record });
                } else if now_ms >= held.last_renew_sent_ms + config.renew_every_ms {
                    held.last_renew_sent_ms = now_ms;
                    let record = LeaseRecord { beat: held.record.beat + 1, ..held.record };
                    slot.in_flight = Some(InFlight { fallback: false, kind: LeaseWriteKind::Renew, sent_at_ms: now_ms, record });
                    actions.push(LeaseAction::Write { bucket, kind: LeaseWriteKind::Renew, expect: Some(held.record.encode()), record });
                }
                continue;
            }
            let Some(rank) = rank else { continue };
            let Some(observed) = &slot.observed else { continue };
            let fallback_ms = rank * config.fallback_step_ms;
            let current = match observed.as_deref().map(LeaseRecord::decode) {
                None => None,
                Some(Ok(record)) => Some(record),
                // An unreadable record is never claimed over: that needs an operator.
                Some(Err(_)) => continue,
            };
            let waited_ms = now_ms.saturating_sub(slot.observed_since_ms);
            let claimable = match current {
                // Free (never held, or released): the intended owner takes it at once, the
                // others in rank order if it does not.
                None | Some(LeaseRecord { holder: None, .. }) => waited_ms >= fallback_ms,
                // Our own incarnation's record: nobody else can have served since.
                Some(LeaseRecord { holder: Some(h), .. }) if h == me => waited_ms >= fallback_ms,
                // Held by another: only after a whole lease of silence.
                Some(_) => waited_ms >= config.lease_ms + fallback_ms,
            };
            if claimable {
                let epoch = current.map_or(1, |r| r.epoch + 1);
                let beat = current.map_or(0, |r| r.beat + 1);
                let record = LeaseRecord { holder: Some(me), epoch, beat };
                slot.in_flight = Some(InFlight { fallback: rank > 0, kind: LeaseWriteKind::Claim, sent_at_ms: now_ms, record });
                actions.push(LeaseAction::Write { bucket, kind: LeaseWriteKind::Claim, expect: observed.clone(), record });
            }
        }
    }

    /// Stops serving everything (shutdown): every held bucket is lost, and released so that its
    /// next owner need not wait out the lease.
    pub fn release_all(&mut self, now_ms: u64, actions: &mut Vec<LeaseAction>) {
        for bucket in 0..BUCKETS {
            let slot = &mut self.buckets[usize::from(bucket)];
            let Some(held) = slot.held.take() else { continue };
            actions.push(LeaseAction::Lost { bucket, epoch: held.epoch, reason: "leaving" });
            if slot.in_flight.is_none() {
                let record = LeaseRecord { holder: None, epoch: held.epoch, beat: held.record.beat + 1 };
                slot.in_flight = Some(InFlight { fallback: false, kind: LeaseWriteKind::Release, sent_at_ms: now_ms, record });
                actions.push(LeaseAction::Write { bucket, kind: LeaseWriteKind::Release, expect: Some(held.record.encode()), record });
            }
        }
    }
}

#[cfg(test)]
mod tests;

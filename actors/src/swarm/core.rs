//! The swarm coordinator's decisions, as a pure state machine (no tasks, no I/O, no clock):
//! which member gets which item, what happens when one fails or dies, when an item is done.
//!
//! Invariants (checked by the property tests below):
//! - an item is in exactly one of pending / in flight (with one member) / done / dead-lettered;
//! - a member never holds more than `max_in_flight` items;
//! - an item is credited at most once, and only to the member it was handed to;
//! - nothing submitted disappears: every item ends done or dead-lettered, or is still pending
//!   or in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// A member of a swarm: an IMVU, or a whole swarm nested inside this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum MemberRef {
    /// An IMVU of the swarm's tenant.
    Imvu(u64),
    /// A swarm of the same tenant.
    Swarm(u64),
}

impl std::fmt::Display for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Imvu(id) => write!(f, "imvu-{id}"),
            Self::Swarm(id) => write!(f, "swarm-{id}"),
        }
    }
}

/// Where an item stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ItemStatus {
    /// Waiting for a member.
    Pending,
    /// Handed to `member`.
    InFlight {
        /// The holder.
        member: MemberRef,
    },
    /// Completed and credited to `member`.
    Done {
        /// Who did it.
        member: MemberRef,
    },
    /// Failed `attempts` times; given up.
    DeadLettered {
        /// Last failure.
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Item {
    status: ItemStatus,
    attempts: u32,
    last_failed_by: Option<MemberRef>,
}

#[derive(Clone, Debug, Default)]
struct Member {
    in_flight: BTreeSet<u64>,
    gone: bool,
}

/// What `complete` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Credit it to the member now.
    Credit,
    /// Already done (or not this member's): ignore, credit nothing.
    Reject(String),
}

/// What `fail` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Back in the queue, for another member if there is one.
    Requeued,
    /// Attempts exhausted.
    DeadLettered,
    /// Not in flight with that member: nothing to do.
    Ignored,
}

/// Counts for progress reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Items ever submitted.
    pub submitted: u64,
    /// Waiting for a member.
    pub pending: u64,
    /// Handed out.
    pub in_flight: u64,
    /// Completed and credited.
    pub completed: u64,
    /// Given up after repeated failures.
    pub dead_lettered: u64,
    /// Members still serving.
    pub members_alive: u64,
}

/// The coordinator state.
#[derive(Clone, Debug)]
pub struct SwarmCore {
    items: BTreeMap<u64, Item>,
    pending: VecDeque<u64>,
    members: BTreeMap<MemberRef, Member>,
    max_in_flight: u32,
    max_attempts: u32,
}

/// How far `pull` looks past the head of the queue for an item this member has not failed.
const PULL_SCAN_MAX: usize = 64;

impl SwarmCore {
    /// A coordinator over `members`.
    pub fn new(
        members: impl IntoIterator<Item = MemberRef>,
        max_in_flight: u32,
        max_attempts: u32,
    ) -> Self {
        assert!(max_in_flight > 0, "a member must be able to hold one item");
        assert!(max_attempts > 0, "an item must be tried at least once");
        Self {
            items: BTreeMap::new(),
            pending: VecDeque::new(),
            members: members
                .into_iter()
                .map(|m| (m, Member::default()))
                .collect(),
            max_in_flight,
            max_attempts,
        }
    }

    /// Adds an item (or, on recovery, restores one with its status).
    pub fn submit(&mut self, id: u64, status: ItemStatus, attempts: u32) {
        let status = match status {
            // Nothing is in flight after a restart: hand it out again.
            ItemStatus::InFlight { .. } => ItemStatus::Pending,
            other => other,
        };
        if status == ItemStatus::Pending {
            self.pending.push_back(id);
        }
        let previous = self.items.insert(
            id,
            Item {
                status,
                attempts,
                last_failed_by: None,
            },
        );
        assert!(previous.is_none(), "item {id} submitted twice");
    }

    /// Whether the member may pull now.
    pub fn may_pull(&self, member: MemberRef) -> bool {
        self.members
            .get(&member)
            .is_some_and(|m| !m.gone && (m.in_flight.len() as u32) < self.max_in_flight)
    }

    /// Whether the member has left the swarm.
    pub fn is_gone(&self, member: MemberRef) -> bool {
        self.members.get(&member).is_none_or(|m| m.gone)
    }

    /// Hands the member its next item, preferring one it has not failed before.
    pub fn pull(&mut self, member: MemberRef) -> Option<u64> {
        if !self.may_pull(member) {
            return None;
        }
        let others_alive = self.members.iter().any(|(m, s)| *m != member && !s.gone);
        let position = self
            .pending
            .iter()
            .take(PULL_SCAN_MAX)
            .position(|id| !others_alive || self.items[id].last_failed_by != Some(member))?;
        let id = self
            .pending
            .remove(position)
            .expect("position is within the queue");
        let item = self.items.get_mut(&id).expect("pending items exist");
        item.status = ItemStatus::InFlight { member };
        item.attempts += 1;
        self.members
            .get_mut(&member)
            .expect("checked by may_pull")
            .in_flight
            .insert(id);
        Some(id)
    }

    /// The member finished the item successfully.
    pub fn complete(&mut self, id: u64, member: MemberRef) -> Completion {
        let Some(item) = self.items.get_mut(&id) else {
            return Completion::Reject(format!("no item {id}"));
        };
        if item.status != (ItemStatus::InFlight { member }) {
            return Completion::Reject(format!(
                "item {id} is {:?}, not in flight with {member}",
                item.status
            ));
        }
        item.status = ItemStatus::Done { member };
        if let Some(m) = self.members.get_mut(&member) {
            m.in_flight.remove(&id);
        }
        Completion::Credit
    }

    /// The member failed the item (its handler crashed).
    pub fn fail(&mut self, id: u64, member: MemberRef, reason: &str) -> Failure {
        let Some(item) = self.items.get_mut(&id) else {
            return Failure::Ignored;
        };
        if item.status != (ItemStatus::InFlight { member }) {
            return Failure::Ignored;
        }
        if let Some(m) = self.members.get_mut(&member) {
            m.in_flight.remove(&id);
        }
        item.last_failed_by = Some(member);
        if item.attempts >= self.max_attempts {
            item.status = ItemStatus::DeadLettered {
                reason: reason.to_owned(),
            };
            return Failure::DeadLettered;
        }
        item.status = ItemStatus::Pending;
        // Front of the queue: it has waited longest.
        self.pending.push_front(id);
        Failure::Requeued
    }

    /// The member refused the item as no message of its kind: dead-lettered at once (retrying
    /// cannot help). Returns whether it was in flight there.
    pub fn reject(&mut self, id: u64, member: MemberRef, reason: &str) -> bool {
        let Some(item) = self.items.get_mut(&id) else { return false };
        if item.status != (ItemStatus::InFlight { member }) {
            return false;
        }
        if let Some(m) = self.members.get_mut(&member) {
            m.in_flight.remove(&id);
        }
        item.last_failed_by = Some(member);
        item.status = ItemStatus::DeadLettered { reason: reason.to_owned() };
        true
    }

    /// The member is gone (terminated, or its sub-swarm failed): its items go back to the queue.
    /// A death is not the item's fault, so the attempt is not counted.
    pub fn member_down(&mut self, member: MemberRef) -> Vec<u64> {
        let Some(m) = self.members.get_mut(&member) else {
            return Vec::new();
        };
        m.gone = true;
        let ids: Vec<u64> = std::mem::take(&mut m.in_flight).into_iter().collect();
        for id in ids.iter().rev() {
            let item = self.items.get_mut(id).expect("in-flight items exist");
            item.status = ItemStatus::Pending;
            item.attempts = item.attempts.saturating_sub(1);
            self.pending.push_front(*id);
        }
        ids
    }

    /// Gives an item back without counting the attempt (the member could not take it through
    /// no fault of the item: a full mailbox, a stopping node).
    pub fn release(&mut self, id: u64, member: MemberRef) {
        let Some(item) = self.items.get_mut(&id) else {
            return;
        };
        if item.status != (ItemStatus::InFlight { member }) {
            return;
        }
        if let Some(m) = self.members.get_mut(&member) {
            m.in_flight.remove(&id);
        }
        item.status = ItemStatus::Pending;
        item.attempts = item.attempts.saturating_sub(1);
        self.pending.push_front(id);
    }

    /// Puts every in-flight item back (the swarm stops or restarts its members).
    pub fn requeue_all_in_flight(&mut self) {
        let members: Vec<MemberRef> = self.members.keys().copied().collect();
        for member in members {
            let gone = self.members[&member].gone;
            self.member_down(member);
            self.members.get_mut(&member).expect("listed above").gone = gone;
        }
    }

    /// Status of one item.
    pub fn status(&self, id: u64) -> Option<&ItemStatus> {
        self.items.get(&id).map(|i| &i.status)
    }

    /// Attempts made on one item.
    pub fn attempts(&self, id: u64) -> u32 {
        self.items.get(&id).map_or(0, |i| i.attempts)
    }

    /// Members, in order.
    pub fn members(&self) -> Vec<MemberRef> {
        self.members.keys().copied().collect()
    }

    /// Counts.
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            submitted: self.items.len() as u64,
            ..Progress::default()
        };
        for item in self.items.values() {
            match item.status {
                ItemStatus::Pending => p.pending += 1,
                ItemStatus::InFlight { .. } => p.in_flight += 1,
                ItemStatus::Done { .. } => p.completed += 1,
                ItemStatus::DeadLettered { .. } => p.dead_lettered += 1,
            }
        }
        p.members_alive = self.members.values().filter(|m| !m.gone).count() as u64;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Submit,
        Pull(u8),
        Complete(u8),
        Fail(u8),
        Down(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Submit),
            (0u8..4).prop_map(Op::Pull),
            (0u8..4).prop_map(Op::Complete),
            (0u8..4).prop_map(Op::Fail),
            (0u8..4).prop_map(Op::Down),
        ]
    }

    proptest! {
        #[test]
        fn no_item_lost_or_double_credited(ops in proptest::collection::vec(op(), 1..300)) {
            let members: Vec<MemberRef> = (0..4).map(MemberRef::Imvu).collect();
            let mut core = SwarmCore::new(members.clone(), 2, 3);
            let mut next = 0u64;
            let mut credited: BTreeMap<u64, MemberRef> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Submit => { core.submit(next, ItemStatus::Pending, 0); next += 1; }
                    Op::Pull(m) => { core.pull(members[m as usize]); }
                    Op::Complete(m) | Op::Fail(m) => {
                        let member = members[m as usize];
                        let held: Vec<u64> = (0..next).filter(|id| core.status(*id) == Some(&ItemStatus::InFlight { member })).collect();
                        if let Some(id) = held.first() {
                            if matches!(op, Op::Complete(_)) {
                                prop_assert_eq!(core.complete(*id, member), Completion::Credit);
                                prop_assert!(credited.insert(*id, member).is_none(), "credited twice");
                                prop_assert!(matches!(core.complete(*id, member), Completion::Reject(_)));
                            } else {
                                core.fail(*id, member, "boom");
                            }
                        }
                    }
                    Op::Down(m) => { core.member_down(members[m as usize]); }
                }
                for member in &members {
                    let held = (0..next).filter(|id| core.status(*id) == Some(&ItemStatus::InFlight { member: *member })).count();
                    prop_assert!(held <= 2, "member over its in-flight bound");
                }
                let p = core.progress();
                prop_assert_eq!(p.pending + p.in_flight + p.completed + p.dead_lettered, next, "an item went missing");
                prop_assert_eq!(p.completed, credited.len() as u64);
            }
        }
    }

    #[test]
    fn failed_item_goes_to_another_member() {
        let (a, b) = (MemberRef::Imvu(1), MemberRef::Imvu(2));
        let mut core = SwarmCore::new([a, b], 1, 3);
        core.submit(7, ItemStatus::Pending, 0);
        assert_eq!(core.pull(a), Some(7));
        assert_eq!(core.fail(7, a, "crash"), Failure::Requeued);
        assert_eq!(
            core.pull(a),
            None,
            "a failed it; b is alive and should get it"
        );
        assert_eq!(core.pull(b), Some(7));
        assert_eq!(core.complete(7, b), Completion::Credit);
    }

    #[test]
    fn dead_member_items_are_handed_out_again() {
        let (a, b) = (MemberRef::Imvu(1), MemberRef::Imvu(2));
        let mut core = SwarmCore::new([a, b], 2, 3);
        core.submit(1, ItemStatus::Pending, 0);
        core.submit(2, ItemStatus::Pending, 0);
        assert_eq!(core.pull(a), Some(1));
        assert_eq!(core.pull(a), Some(2));
        assert_eq!(core.member_down(a), vec![1, 2]);
        assert_eq!(core.pull(a), None);
        assert_eq!(core.pull(b), Some(1));
        assert_eq!(core.pull(b), Some(2));
        assert_eq!(
            core.complete(1, a),
            Completion::Reject(
                "item 1 is InFlight { member: Imvu(2) }, not in flight with imvu-1".into()
            )
        );
    }

    #[test]
    fn poisoned_item_is_dead_lettered_after_max_attempts() {
        let (a, b) = (MemberRef::Imvu(1), MemberRef::Imvu(2));
        let mut core = SwarmCore::new([a, b], 1, 2);
        core.submit(9, ItemStatus::Pending, 0);
        assert_eq!(core.pull(a), Some(9));
        assert_eq!(core.fail(9, a, "x"), Failure::Requeued);
        assert_eq!(core.pull(b), Some(9));
        assert_eq!(core.fail(9, b, "x"), Failure::DeadLettered);
        assert_eq!(core.progress().dead_lettered, 1);
    }
}

//! The supervision decision core: Erlang/OTP supervisor semantics as a plain
//! struct.
//!
//! [`Supervisor`] decides; it never acts. Drivers (the ractor driver in this
//! crate, the IMVU host in `actors`, the simulator) feed it child exits with
//! the current time and carry out the [`Directive`] it returns. There is no
//! tokio, no clock read and no randomness here: time is the `now_ms`
//! parameter, taken by the driver from an injected `Clock`, and all state is
//! in `BTreeMap`s, so one input sequence gives one output sequence.
//!
//! # Driver contract
//! - Report each exit of a child once, with [`Supervisor::handle_child_exit`].
//! - Carry out a directive completely before reporting the next exit, as an
//!   OTP supervisor does. Once a `Restart` is returned, the children in its
//!   `start` list count as running again.
//! - Exits the driver caused itself (children in a `stop` list, children
//!   stopped for [`Supervisor::handle_shutdown`]) need not be reported. A
//!   driver that does report them must report them as
//!   [`ExitReason::Shutdown`]: the core absorbs that one exit of a child it
//!   asked to stop (returns `Ignore`, counts nothing), so a restart is never
//!   counted twice.
//! - A child that fails to restart is reported as an exit with
//!   [`ExitReason::Failed`]; it counts as another restart, as in OTP.
//!
//! # Invariants
//! - Children keep the start order in which they were added; restarts do
//!   not reorder them.
//! - One restart is counted per `Restart` directive, however many children
//!   it restarts; the window never holds more than `max_restarts + 1` entries.
//! - `Restart.stop` and `Escalate.stop` are in reverse start order,
//!   `Restart.start` in start order; temporary children are never restarted.
//! - After `Escalate` or `handle_shutdown`, every exit is `Ignore`.

mod window;

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::constants::{CHILDREN_MAX, INTENSITY_RESTARTS_MAX};
use crate::error::SupervisionError;
use window::RestartWindow;

/// Which children are restarted when one of them must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// Every child: the others are stopped, then all are started again.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// When a child is restarted (OTP `restart` of a child spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted, whatever the exit reason.
    Permanent,
    /// Restarted only after an abnormal exit ([`ExitReason::Failed`]).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// Restart intensity: more than `max_restarts` restarts within `period_ms`
/// makes the supervisor give up and escalate to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within the period; `0` means any restart escalates.
    pub max_restarts: u32,
    /// Length of the sliding window, in milliseconds of the injected clock.
    pub period_ms: u64,
}

/// Why a child exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The child finished on its own, normally.
    Normal,
    /// The child was stopped by its supervisor (OTP `shutdown`). A normal exit.
    Shutdown,
    /// The child crashed or exited abnormally; the text says why.
    Failed(String),
}

impl ExitReason {
    /// `true` for [`ExitReason::Failed`]: the exits that restart transient children.
    pub fn is_abnormal(&self) -> bool {
        matches!(self, ExitReason::Failed(_))
    }
}

/// How one child is supervised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec<Id> {
    /// Unique within its supervisor.
    pub id: Id,
    /// When the child is restarted.
    pub restart: RestartType,
    /// How long a graceful stop may take before the driver kills the child.
    pub shutdown_timeout_ms: u64,
}

/// What the driver must do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive<Id> {
    /// Nothing to do (temporary child exited, transient exited normally, an
    /// exit while terminating, an unknown id). A child that will never be
    /// restarted has been removed from the set.
    Ignore,
    /// Stop `stop` (running siblings, in reverse start order), then start
    /// `start` (in start order). One-for-one: `stop = []`, `start = [id]`.
    /// One-for-all: `stop` = every other child, reverse order; `start` = all
    /// children that remain, in order (stopped temporary siblings are removed,
    /// not restarted, as OTP does). Rest-for-one: the same, limited to the
    /// child that exited and those started after it.
    Restart {
        /// Children to stop, in reverse start order.
        stop: Vec<Id>,
        /// Children to start, in start order.
        start: Vec<Id>,
    },
    /// Intensity exceeded: stop every still-running child in reverse start
    /// order, then fail to the parent with `reason`.
    Escalate {
        /// Children to stop, in reverse start order.
        stop: Vec<Id>,
        /// Why the supervisor gives up.
        reason: String,
    },
}

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handling exits.
    Active,
    /// `handle_shutdown` was called; exits are ignored.
    ShuttingDown,
    /// Intensity was exceeded; exits are ignored.
    Escalated,
}

#[derive(Debug, Clone)]
struct Child<Id> {
    spec: ChildSpec<Id>,
    /// Position in start order (key of `Supervisor::order`).
    seq: u64,
    /// The core asked the driver to stop this child; its next `Shutdown`
    /// exit is that stop, not a new event.
    stop_pending: bool,
}

/// The supervision core for children identified by `Id`.
///
/// Inputs are `add_child`, `remove_child`, `handle_child_exit` and
/// `handle_shutdown`; outputs are the returned [`Directive`]s. Getters:
/// `start_order`, `len`, `restarts_in_window`, `strategy`, `intensity`.
#[derive(Debug, Clone)]
pub struct Supervisor<Id: Ord + Clone> {
    strategy: Strategy,
    intensity: Intensity,
    children: BTreeMap<Id, Child<Id>>,
    /// Start order: sequence number -> id.
    order: BTreeMap<u64, Id>,
    next_seq: u64,
    window: RestartWindow,
    phase: Phase,
}

impl<Id: Ord + Clone + Debug> Supervisor<Id> {
    /// A supervisor with no children.
    ///
    /// # Panics
    /// If `intensity.max_restarts` exceeds `INTENSITY_RESTARTS_MAX` (a
    /// configuration bug: the window must stay bounded).
    pub fn new(strategy: Strategy, intensity: Intensity) -> Self {
        assert!(
            intensity.max_restarts <= INTENSITY_RESTARTS_MAX,
            "max_restarts above INTENSITY_RESTARTS_MAX"
        );
        Self {
            strategy,
            intensity,
            children: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            window: RestartWindow::new(intensity),
            phase: Phase::Active,
        }
    }

    /// Appends a child last in start order; it is considered running.
    pub fn add_child(&mut self, spec: ChildSpec<Id>) -> Result<(), SupervisionError> {
        if self.phase != Phase::Active {
            return Err(SupervisionError::Terminating);
        }
        if self.children.contains_key(&spec.id) {
            return Err(SupervisionError::DuplicateChild {
                id: format!("{:?}", spec.id),
            });
        }
        if self.children.len() >= CHILDREN_MAX {
            return Err(SupervisionError::TooManyChildren { max: CHILDREN_MAX });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let previous = self.order.insert(seq, spec.id.clone());
        assert!(previous.is_none(), "start sequence numbers are unique");
        let id = spec.id.clone();
        self.children.insert(
            id,
            Child {
                spec,
                seq,
                stop_pending: false,
            },
        );
        self.check_sizes();
        Ok(())
    }

    /// Removes a child without a decision, e.g. one its owner terminated on
    /// purpose. Returns its spec, or `None` for an unknown id.
    pub fn remove_child(&mut self, id: &Id) -> Option<ChildSpec<Id>> {
        let child = self.children.remove(id)?;
        let removed = self.order.remove(&child.seq);
        assert!(removed.is_some(), "every child has a start position");
        self.check_sizes();
        Some(child.spec)
    }

    /// Decides what to do about the exit of child `id` at `now_ms`.
    /// Unknown ids and exits while terminating give `Ignore`.
    pub fn handle_child_exit(&mut self, now_ms: u64, id: &Id, reason: ExitReason) -> Directive<Id> {
        if self.phase != Phase::Active {
            return Directive::Ignore;
        }
        let Some(child) = self.children.get_mut(id) else {
            return Directive::Ignore;
        };
        if child.stop_pending {
            child.stop_pending = false;
            if reason == ExitReason::Shutdown {
                // The stop we asked for: already accounted for by its directive.
                return Directive::Ignore;
            }
        }
        let restart = match child.spec.restart {
            RestartType::Permanent => true,
            RestartType::Transient => reason.is_abnormal(),
            RestartType::Temporary => false,
        };
        if !restart {
            let removed = self.remove_child(id);
            assert!(removed.is_some(), "the exited child was present");
            return Directive::Ignore;
        }
        if !self.window.record(now_ms) {
            return self.escalate(id, &reason);
        }
        let directive = self.restart(id);
        self.check_invariants();
        directive
    }

    /// Starts an orderly shutdown: returns every child in reverse start order
    /// (the order to stop them in). Later exits are `Ignore`; a second call,
    /// or a call after `Escalate`, returns an empty list.
    pub fn handle_shutdown(&mut self) -> Vec<Id> {
        if self.phase != Phase::Active {
            return Vec::new();
        }
        self.phase = Phase::ShuttingDown;
        self.reverse_order()
    }

    /// Child ids in start order.
    pub fn start_order(&self) -> Vec<Id> {
        self.order.values().cloned().collect()
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// `true` when there are no children.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// `true` when `id` is a child.
    pub fn contains(&self, id: &Id) -> bool {
        self.children.contains_key(id)
    }

    /// The spec of child `id`.
    pub fn child_spec(&self, id: &Id) -> Option<&ChildSpec<Id>> {
        self.children.get(id).map(|child| &child.spec)
    }

    /// Restarts counted within `period_ms` before `now_ms`.
    pub fn restarts_in_window(&self, now_ms: u64) -> u32 {
        self.window.count(now_ms)
    }

    /// The restart strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The restart intensity.
    pub fn intensity(&self) -> Intensity {
        self.intensity
    }

    /// Active, shutting down, or escalated.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn reverse_order(&self) -> Vec<Id> {
        self.order.values().rev().cloned().collect()
    }

    fn escalate(&mut self, id: &Id, reason: &ExitReason) -> Directive<Id> {
        self.phase = Phase::Escalated;
        let stop: Vec<Id> = self
            .order
            .values()
            .rev()
            .filter(|&other| other != id)
            .cloned()
            .collect();
        let why = match reason {
            ExitReason::Normal => "normal".to_owned(),
            ExitReason::Shutdown => "shutdown".to_owned(),
            ExitReason::Failed(text) => text.clone(),
        };
        let reason = format!(
            "reached max restart intensity ({} restarts in {} ms); last exit: child {:?}: {}",
            self.intensity.max_restarts, self.intensity.period_ms, id, why
        );
        Directive::Escalate { stop, reason }
    }

    fn restart(&mut self, id: &Id) -> Directive<Id> {
        let seq = self
            .children
            .get(id)
            .expect("restart of a present child")
            .seq;
        // Children affected besides the one that exited, in start order.
        let siblings: Vec<Id> = match self.strategy {
            Strategy::OneForOne => Vec::new(),
            Strategy::OneForAll => self
                .order
                .values()
                .filter(|&other| other != id)
                .cloned()
                .collect(),
            Strategy::RestForOne => self
                .order
                .range(seq + 1..)
                .map(|(_, other)| other.clone())
                .collect(),
        };
        let stop: Vec<Id> = siblings.iter().rev().cloned().collect();
        for sibling in &siblings {
            let child = self
                .children
                .get_mut(sibling)
                .expect("siblings are present");
            if child.spec.restart == RestartType::Temporary {
                let removed = self.remove_child(sibling);
                assert!(removed.is_some(), "the temporary sibling was present");
            } else {
                child.stop_pending = true;
            }
        }
        // Start order of what remains: the exited child and surviving siblings.
        let start: Vec<Id> = match self.strategy {
            Strategy::OneForOne => vec![id.clone()],
            Strategy::OneForAll => self.order.values().cloned().collect(),
            Strategy::RestForOne => self
                .order
                .range(seq..)
                .map(|(_, other)| other.clone())
                .collect(),
        };
        assert!(start.contains(id), "the exited child is restarted");
        assert!(!stop.contains(id), "the exited child is not stopped again");
        Directive::Restart { stop, start }
    }

    /// Cheap checks, after every mutation.
    fn check_sizes(&self) {
        assert!(
            self.children.len() == self.order.len(),
            "child set and order agree"
        );
        assert!(self.children.len() <= CHILDREN_MAX, "child set is bounded");
    }

    /// Full checks, O(children), after each restart decision.
    fn check_invariants(&self) {
        self.check_sizes();
        for (seq, id) in &self.order {
            let child = self.children.get(id).expect("ordered child is present");
            assert!(child.seq == *seq, "child knows its start position");
            assert!(*seq < self.next_seq, "positions come from the counter");
        }
    }
}

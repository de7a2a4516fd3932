//! The IMVU lifecycle: Genesis → Active ⇄ Paused → Terminated, as a pure transition table.
//!
//! Every change of state goes through [`LifecycleState::apply`], so an illegal transition is
//! an error that names the current state, wherever it was asked for.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::ActorError;

/// Where an IMVU is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    /// Created, state initialised, not yet serving.
    Genesis,
    /// Serving messages.
    Active,
    /// Suspended: state kept, messages held in a bounded queue until resumed.
    Paused,
    /// Stopped for good; the final state is recorded.
    Terminated,
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Genesis => "genesis",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Terminated => "terminated",
        })
    }
}

/// A requested change of lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Bring a new entity into existence (no previous state).
    Create,
    /// Genesis → Active.
    Activate,
    /// Active → Paused.
    Pause,
    /// Paused → Active.
    Resume,
    /// Genesis | Active | Paused → Terminated.
    Terminate,
}

impl Transition {
    /// What a caller needs to ask for it (the compliance stage, 45).
    pub fn permission(self) -> crate::auth::Permission {
        use crate::auth::Permission;
        match self {
            Self::Create | Self::Activate => Permission::Use,
            Self::Pause | Self::Resume | Self::Terminate => Permission::Operate,
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Activate => "activate",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Terminate => "terminate",
        })
    }
}

impl LifecycleState {
    /// The state after `transition`, or an error naming the current state.
    pub fn apply(current: Option<Self>, transition: Transition) -> Result<Self, ActorError> {
        use LifecycleState::*;
        use Transition::*;
        let next = match (current, transition) {
            (None, Create) => Some(Genesis),
            (Some(Genesis), Activate) => Some(Active),
            (Some(Active), Pause) => Some(Paused),
            (Some(Paused), Resume) => Some(Active),
            (Some(Genesis | Active | Paused), Terminate) => Some(Terminated),
            _ => None,
        };
        next.ok_or_else(|| ActorError::IllegalTransition {
            transition,
            current: current.map_or_else(|| "nonexistent".to_owned(), |s| s.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleState::*;
    use Transition::*;

    fn check(current: Option<LifecycleState>, t: Transition, expect: Option<LifecycleState>) {
        let got = LifecycleState::apply(current, t).ok();
        assert_eq!(got, expect, "{current:?} --{t}-->");
    }

    #[test]
    fn legal_and_illegal_transitions() {
        check(None, Create, Some(Genesis));
        check(Some(Genesis), Activate, Some(Active));
        check(Some(Active), Pause, Some(Paused));
        check(Some(Paused), Resume, Some(Active));
        check(Some(Paused), Terminate, Some(Terminated));
        check(Some(Active), Resume, None);
        check(Some(Paused), Pause, None);
        check(Some(Terminated), Resume, None);
        check(Some(Terminated), Terminate, None);
        check(Some(Active), Create, None);
    }

    #[test]
    fn illegal_transition_names_current_state() {
        let err = LifecycleState::apply(Some(Terminated), Pause).unwrap_err();
        assert!(err.to_string().contains("terminated"), "{err}");
        assert!(err.to_string().contains("pause"), "{err}");
    }
}

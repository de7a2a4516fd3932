//! The one error enum of this crate.
//!
//! Operating errors (a duplicate child id, a child that cannot start) are
//! values; broken invariants inside the core are bugs and panic instead.

/// Errors returned by the supervision core and the ractor driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisionError {
    /// A child with this id is already supervised.
    #[error("duplicate child id {id}")]
    DuplicateChild {
        /// The id, formatted with `Debug`.
        id: String,
    },
    /// The supervisor already holds `CHILDREN_MAX` children.
    #[error("supervisor is full ({max} children)")]
    TooManyChildren {
        /// The limit that was hit.
        max: usize,
    },
    /// The supervisor is shutting down or has escalated; it accepts no children.
    #[error("supervisor is terminating")]
    Terminating,
    /// A child failed to start (the ractor driver's `pre_start`).
    #[error("child {id} failed to start: {reason}")]
    StartFailed {
        /// The child id.
        id: String,
        /// The spawn error, as text.
        reason: String,
    },
    /// Restart intensity exceeded: the supervisor gave up.
    #[error("supervisor {name} escalated: {reason}")]
    Escalated {
        /// The supervisor's name.
        name: String,
        /// Why it gave up.
        reason: String,
    },
}

//! Durable workflows: a plan of steps over IMVUs, models and activities that finishes even
//! when nodes die mid-way.
//!
//! **A workflow instance is an IMVU** of the built-in kind `workflow` ([`Workflows`]). So it
//! is placed like any IMVU (its owner node holds it under the cluster's lease, every commit
//! fenced by the lease's epoch), its state is committed to the canon after every event, and
//! when its node dies it comes back on its new owner. Its state is its journal
//! ([`journal::Entry`]): each step's command, attempts, timings and outcome; timers as due
//! times; signals received. On activation ([`crate::Imvu::on_activate`]) the instance
//! re-issues the steps that were in flight and sets its timers again; a step whose outcome is
//! journaled is never run again. Running instances are listed in the tenant's index
//! [`RUNNING_INDEX`], so a node that takes over their buckets wakes them without waiting for a
//! message ([`keeper`]).
//!
//! **Two ways to write one**, one engine:
//! - in Rust, as an `async` function against a [`WorkflowContext`], registered by name on the
//!   kind ([`Workflows::register`]); run by replay against the journal (see [`context`]);
//! - as a declarative definition in JSON or YAML ([`definition`]), validated on upload,
//!   versioned, and run by [`interpret`], itself a Rust workflow, so both get the same journal,
//!   retries, timers and replay.
//!
//! **Failure handling.** A step that fails is retried by its [`journal::RetryPolicy`] without
//! the code seeing it; when retries are exhausted the code gets the error. Declarative
//! definitions compensate (sagas: the `compensate` steps of the steps that finished, in
//! reverse order) and end `compensated`; a workflow whose code fails otherwise is
//! dead-lettered (index [`DEAD_INDEX`]) with its journal, for an operator to retry the failed
//! step, skip it with a result, or cancel. Cancelling runs the compensations.
//!
//! **Effects.** A step's ask to an IMVU is an idempotent ask ([`crate::once`]) under the key
//! `wf/{workflow id}/{run}/{step}`, the same for every attempt: the target records the key in
//! the commit that applies the step, so a step sent again (its answer lost with a node, a
//! timeout, a resume elsewhere) is applied once and answered with the recorded reply. Effects
//! outside the runtime are at least once: activities get an idempotency key
//! (`wf/{tenant}/{workflow id}/{run}/{step}`) for the world to drop repeats with.

pub mod context;
pub mod definition;
pub mod examples;
pub mod expr;
pub mod interpret;
pub mod journal;
pub mod keeper;
pub mod schedule;
mod kind;

use serde::{Deserialize, Serialize};

pub use context::{join_all, join_n, Step, WorkflowContext};
pub use journal::{Command, Entry, EntryState, RetryPolicy, StepError, StepOptions};
pub use kind::{refusal, ParentRef, RustWorkflow, Status, StepView, WorkflowMsg, WorkflowState, WorkflowView, Workflows, REFUSED};

/// The kind name of workflow instances.
pub const KIND: &str = "workflow";
/// Tenant index of the workflows that are running (woken by [`keeper`]).
pub const RUNNING_INDEX: &str = "wf-running";
/// Tenant index of the dead-lettered workflows.
pub const DEAD_INDEX: &str = "wf-dead";
/// Journal entries an instance holds at most; past it the code must continue as new.
pub const JOURNAL_LEN_MAX: usize = 10_000;
/// Signals buffered before a step waits for them.
pub const SIGNALS_BUFFERED_MAX: usize = 1_000;
/// A step's input or result, a signal's body, a workflow's input: at most this many bytes of
/// JSON. The whole instance is one canon value rewritten at every event; 1 MiB keeps a commit
/// of a busy instance cheap. (Temporal caps payloads at 2 MB.)
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// How often a parent asks a child workflow how it stands (besides the child telling it).
pub const CHILD_POLL_MS: u64 = 1_000;

/// What an instance runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Program {
    /// A Rust workflow registered on the kind by this name.
    Rust {
        /// Its name.
        name: String,
    },
    /// A declarative definition, with the sub-workflows it names (resolved when it started:
    /// a running instance stays on the versions it started with).
    Definition {
        /// The definition.
        definition: Box<definition::Definition>,
        /// Its version.
        version: u32,
        /// Sub-workflow definitions by name (each with its version).
        #[serde(default)]
        library: std::collections::BTreeMap<String, (u32, definition::Definition)>,
    },
}

impl Program {
    /// A name for views and metrics.
    pub fn name(&self) -> String {
        match self {
            Self::Rust { name } => name.clone(),
            Self::Definition { definition, version, .. } => format!("{}@{version}", definition.name),
        }
    }
}

/// How workflow code ends other than with a result.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkflowError {
    /// A step failed for good (retries exhausted, or a non-retryable error).
    #[error("step {step} failed: {}: {}", error.code, error.message)]
    Step {
        /// The step.
        step: String,
        /// Why.
        error: StepError,
    },
    /// The workflow is being cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The replay asked for something other than the journal holds: the code changed under a
    /// running instance, or it is not deterministic.
    #[error("nondeterminism at step {step}: the journal holds {journaled}, the code now asks for {asked}")]
    Nondeterminism {
        /// The step.
        step: String,
        /// What the journal holds there.
        journaled: String,
        /// What the code asked for.
        asked: String,
    },
    /// A later step failed and the compensations of the earlier ones ran.
    #[error("compensated after: {cause}")]
    Compensated {
        /// The failure that started them.
        cause: String,
    },
    /// Start again with a fresh journal and this input (a loop that would outgrow the journal).
    #[error("continue as new")]
    ContinueAsNew(serde_json::Value),
    /// The workflow failed on its own terms.
    #[error("{0}")]
    Failed(String),
}

#[cfg(test)]
mod tests;

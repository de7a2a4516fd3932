//! The journal of a workflow instance: one entry per step the workflow code asked for, with
//! its command, its attempts, its timings and, once known, its outcome.
//!
//! Steps are named by where they are asked for, not by when: `3` is the fourth step of the
//! workflow's top scope, `3.1.0` the first step of branch 1 of a parallel block that is step 3.
//! So the name of a step does not depend on the order in which concurrent branches happened to
//! finish, and replaying the code against the journal finds every step under its own name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::models::ModelRequest;

/// What a step does. Part of the step's identity: a replay that asks for something else under
/// the same name is a nondeterminism error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Ask IMVU `imvu` (same tenant) `message`; the result is its reply.
    Call {
        /// The IMVU's id.
        imvu: u64,
        /// The message, as its kind reads it.
        message: Value,
    },
    /// A model request; the result is the model's answer.
    Model {
        /// What to compute.
        request: ModelRequest,
    },
    /// A registered activity; the result is its answer.
    Activity {
        /// Its registered name.
        name: String,
        /// Its input.
        input: Value,
    },
    /// Wait `ms` (durable timer); the result is `null`.
    Sleep {
        /// How long.
        ms: u64,
    },
    /// Wait for signal `name`; the result is `{"signal": body}`, or `{"timed_out": true}`
    /// after `timeout_ms`.
    Signal {
        /// The signal's name.
        name: String,
        /// Give up after this long (none: wait for ever).
        timeout_ms: Option<u64>,
    },
    /// A child workflow; the result is the child's result.
    Child {
        /// What the child runs.
        program: Box<super::Program>,
        /// Its input.
        input: Value,
    },
    /// The wall-clock time, journaled so a replay sees the same.
    Now,
}

impl Command {
    /// Short name, for metrics and views.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Call { .. } => "call",
            Self::Model { .. } => "model",
            Self::Activity { .. } => "activity",
            Self::Sleep { .. } => "sleep",
            Self::Signal { .. } => "signal",
            Self::Child { .. } => "child",
            Self::Now => "now",
        }
    }

    /// Whether the step can fail and be retried (asks, models, activities, children).
    pub(crate) fn retries(&self) -> bool {
        matches!(self, Self::Call { .. } | Self::Model { .. } | Self::Activity { .. } | Self::Child { .. })
    }
}

/// How a failing step is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Wait before the second attempt.
    pub initial_interval_ms: u64,
    /// Each wait is the previous one times this (≥ 1).
    pub multiplier: f64,
    /// Waits never exceed this.
    pub max_interval_ms: u64,
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// Error codes that end the step at once (`not_found`, `bad_request`, `failed`, …).
    pub non_retryable: Vec<String>,
}

/// Retry waits and attempts are capped: a policy asks for at most this many attempts.
pub const RETRY_ATTEMPTS_MAX: u32 = 100;

/// The error codes a default policy does not retry: a request the target cannot take, or a
/// step that failed on its own terms, fails the same way again.
const NON_RETRYABLE_DEFAULT: [&str; 4] = ["bad_request", "not_found", "unknown_kind", "terminated"];

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval_ms: 1_000,
            multiplier: 2.0,
            max_interval_ms: 60_000,
            max_attempts: 3,
            non_retryable: NON_RETRYABLE_DEFAULT.iter().map(|&code| code.to_owned()).collect(),
        }
    }
}

impl RetryPolicy {
    /// Whether this is the default policy (compared without building one: it is asked for
    /// every entry of every snapshot).
    fn is_default(&self) -> bool {
        self.initial_interval_ms == 1_000
            && self.multiplier == 2.0
            && self.max_interval_ms == 60_000
            && self.max_attempts == 3
            && self.non_retryable.iter().map(String::as_str).eq(NON_RETRYABLE_DEFAULT)
    }

    /// The wait before attempt `attempt + 1`, after `attempt` attempts failed.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let wait = self.initial_interval_ms as f64 * self.multiplier.max(1.0).powi(exponent);
        if wait.is_finite() {
            (wait as u64).min(self.max_interval_ms)
        } else {
            self.max_interval_ms
        }
    }

    /// Whether an error with `code` after `attempt` attempts is tried again.
    pub fn retries(&self, code: &str, attempt: u32) -> bool {
        attempt < self.max_attempts.min(RETRY_ATTEMPTS_MAX) && !self.non_retryable.iter().any(|c| c == code)
    }

    /// What is wrong with the policy, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.max_attempts == 0 || self.max_attempts > RETRY_ATTEMPTS_MAX {
            return Some(format!("max_attempts must be 1..={RETRY_ATTEMPTS_MAX}, got {}", self.max_attempts));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Some(format!("multiplier must be a number ≥ 1, got {}", self.multiplier));
        }
        if self.initial_interval_ms > self.max_interval_ms {
            return Some("initial_interval_ms exceeds max_interval_ms".into());
        }
        None
    }
}

/// Options of one step.
///
/// Defaults are left out of the journal: the whole instance is rewritten at every event, and
/// a default retry policy repeated in each entry was more than half of a fan-out's bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOptions {
    /// Retries (asks, models, activities and children; default: 3 attempts).
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// One attempt fails when it has not answered within this (none: the runtime's ask
    /// timeout bounds asks; activities and children wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A name to show in views (a declarative step's `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl StepOptions {
    fn is_default(&self) -> bool {
        self.retry.is_default() && self.timeout_ms.is_none() && self.label.is_none()
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// Machine-readable code (`ActorError::code`, `timeout`, `cancelled`).
    pub code: String,
    /// What happened.
    pub message: String,
}

/// Where a step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Asked for; its attempt runs (or must be issued again after a move).
    Running,
    /// An attempt failed; the next one waits for its backoff.
    Backoff,
    /// Finished: its outcome is final.
    Done,
    /// Left unfinished: the workflow ended, or the branch it was in lost a race.
    Abandoned,
}

/// One step of the journal. (Fields that are empty are left out of its JSON: see
/// [`StepOptions`].)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The step's name (see the module docs).
    pub step: String,
    /// What it does.
    pub command: Command,
    /// Its options.
    #[serde(default, skip_serializing_if = "StepOptions::is_default")]
    pub options: StepOptions,
    /// Where it stands.
    pub state: EntryState,
    /// Attempts started.
    pub attempts: u32,
    /// When it was first asked for (Unix ms).
    pub started_unix_ms: u64,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// Its outcome, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Result<Value, StepError>>,
    /// When its timer is due (a sleep's end, a backoff's end, a signal's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_unix_ms: Option<u64>,
    /// The child workflow's IMVU id, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<u64>,
    /// The last attempt's error, while it backs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
}

impl Entry {
    pub(crate) fn new(step: String, command: Command, options: StepOptions, now_unix_ms: u64) -> Self {
        Self {
            step,
            command,
            options,
            state: EntryState::Running,
            attempts: 0,
            started_unix_ms: now_unix_ms,
            finished_unix_ms: None,
            outcome: None,
            due_unix_ms: None,
            child: None,
            last_error: None,
        }
    }

    /// Whether the step still waits for something.
    pub fn open(&self) -> bool {
        matches!(self.state, EntryState::Running | EntryState::Backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_left_out_of_the_journal_and_read_back() {
        let entry = Entry::new("0.1".into(), Command::Now, StepOptions::default(), 7);
        let text = serde_json::to_string(&entry).expect("encodes");
        assert!(!text.contains("retry") && !text.contains("null"), "defaults and empty fields are left out: {text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).expect("decodes"), entry);
        assert!(RetryPolicy::default().is_default());
        let custom = StepOptions { retry: RetryPolicy { max_attempts: 5, ..RetryPolicy::default() }, label: Some("b1".into()), ..StepOptions::default() };
        let entry = Entry { options: custom, outcome: Some(Ok(Value::Null)), ..entry };
        let text = serde_json::to_string(&entry).expect("encodes");
        assert_eq!(serde_json::from_str::<Entry>(&text).expect("decodes"), entry, "{text}");
        // A journal written before defaults were left out reads the same.
        let full = r#"{"step":"0","command":{"type":"now"},"options":{"retry":{"initial_interval_ms":1000,"multiplier":2.0,"max_interval_ms":60000,"max_attempts":3,"non_retryable":["bad_request","not_found","unknown_kind","terminated"]},"timeout_ms":null,"label":null},"state":"running","attempts":0,"started_unix_ms":7,"finished_unix_ms":null,"outcome":null,"due_unix_ms":null,"child":null,"last_error":null}"#;
        assert_eq!(serde_json::from_str::<Entry>(full).expect("decodes"), Entry { step: "0".into(), ..Entry::new(String::new(), Command::Now, StepOptions::default(), 7) });
    }
}

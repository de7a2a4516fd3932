//! [`Workflows`]: the IMVU kind `workflow`, the engine that drives instances.
//!
//! Every event (a message, an answer, a timer, an activation) ends with [`Workflows::drive`]:
//! the code is replayed against the journal, new steps are issued (asks, model requests,
//! activities, timers, children), and a code that finished ends the instance. The instance
//! state is committed after every event, before any step it issued goes out (the host's
//! contract), so a step is journaled before it runs.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::context::{Replay, WorkflowContext};
use super::journal::{Command, Entry, EntryState, StepError};
use super::{Program, WorkflowError, CHILD_POLL_MS, DEAD_INDEX, JOURNAL_LEN_MAX, PAYLOAD_BYTES_MAX, RUNNING_INDEX, SIGNALS_BUFFERED_MAX};
use crate::error::ActorError;
use crate::ids::{ImvuId, ImvuKey};
use crate::imvu::{Context, Imvu};
use crate::models::ModelRequest;

/// Replays of one event at most (each resolves at least one step at once: `now`, a buffered
/// signal), so a workflow cannot spin its shard.
const REPLAYS_PER_EVENT_MAX: usize = 1_000;

/// Where an instance stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    #[default]
    Created,
    /// Running.
    Running,
    /// Finished with a result.
    Completed,
    /// A step failed and the compensations ran.
    Compensated,
    /// Cancelled (its compensations ran).
    Cancelled,
    /// Past its workflow timeout (its compensations ran).
    TimedOut,
    /// Failed: waits for an operator (retry, skip, cancel).
    DeadLettered,
}

impl Status {
    /// Its name in views (`dead_lettered`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// Whether the instance has ended (a dead-lettered one waits, but runs nothing).
    pub fn finished(self) -> bool {
        !matches!(self, Self::Created | Self::Running)
    }
}

/// The parent of a child workflow: told when the child ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent instance's IMVU id.
    pub id: u64,
    /// The parent's step that waits for this child.
    pub step: String,
}

/// What an ask or timer number stands for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Wait {
    /// The step (empty: the workflow's own deadline).
    step: String,
    /// The attempt it belongs to.
    attempt: u32,
    what: WaitKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WaitKind {
    /// The answer of a call, a model request or an activity.
    Answer,
    /// A child workflow's key.
    ChildCreated,
    /// The child's answer to its start.
    ChildStarted,
    /// The child's status.
    ChildStatus,
    /// Time to ask the child again.
    ChildPoll,
    /// A sleep's end.
    Sleep,
    /// A retry's backoff.
    Backoff,
    /// An attempt's timeout.
    Timeout,
    /// A signal's timeout.
    SignalTimeout,
    /// The workflow's timeout.
    Deadline,
}

/// One instance's state: its program, journal and standing. Committed after every event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkflowState {
    program: Option<Program>,
    input: Value,
    status: Status,
    result: Option<Value>,
    error: Option<String>,
    /// Runs started by continuing as new.
    run: u32,
    journal: Vec<Entry>,
    /// Signals received before a step waited for them.
    signals: VecDeque<(String, Value)>,
    /// Why it is being cancelled (`cancelled`, `timed_out`).
    cancel: Option<String>,
    parent: Option<ParentRef>,
    started_unix_ms: u64,
    finished_unix_ms: Option<u64>,
    deadline_unix_ms: Option<u64>,
    /// The workflow's timeout, if it has one.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Ask and timer numbers in flight, and what they stand for.
    waits: BTreeMap<u64, Wait>,
    /// The code's published variables.
    vars: Value,
    /// Steps the code waits for now.
    current: Vec<String>,
    /// The step whose failure dead-lettered the instance.
    failed_step: Option<String>,
    /// Steps finished by the event being handled (charged to the tenant).
    #[serde(skip)]
    finished_now: u64,
}

/// Messages of the `workflow` kind (JSON, `op`-tagged).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkflowMsg {
    /// Starts the instance (again: answered with its view).
    Start {
        /// What it runs.
        program: Program,
        /// Its input.
        #[serde(default)]
        input: Value,
        /// The parent, for a child workflow.
        #[serde(default)]
        parent: Option<ParentRef>,
        /// Cancel it (and compensate) if it has not finished within this.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Delivers signal `name` with `body`.
    Signal {
        /// Its name.
        name: String,
        /// Its body.
        #[serde(default)]
        body: Value,
    },
    /// Cancels the instance: its compensations run.
    Cancel,
    /// Its view.
    Get,
    /// How it stands, briefly (a parent's poll).
    Status,
    /// Dead-lettered: runs the failed step again.
    Retry,
    /// Dead-lettered: takes `result` as the failed step's result and goes on.
    Skip {
        /// The result to journal.
        #[serde(default)]
        result: Value,
    },
    /// Makes sure the instance is active (after a move): sent by the keeper.
    Wake,
    /// A child of this instance ended.
    ChildDone {
        /// The step waiting for it.
        step: String,
    },
}

/// One step as views show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepView {
    /// Its name in the journal.
    pub step: String,
    /// The declarative step's id, if any.
    pub label: Option<String>,
    /// `call`, `model`, `activity`, `sleep`, `signal`, `child`, `now`.
    pub kind: String,
    /// Where it stands.
    pub state: EntryState,
    /// Attempts started.
    pub attempts: u32,
    /// When it started (Unix ms).
    pub started_unix_ms: u64,
    /// When it finished.
    pub finished_unix_ms: Option<u64>,
    /// How long it took (ms), once finished.
    pub duration_ms: Option<u64>,
    /// Its result, once done.
    pub result: Option<Value>,
    /// Its error, once failed (or its last attempt's, while backing off).
    pub error: Option<StepError>,
    /// A child workflow's id.
    pub child: Option<u64>,
}

/// An instance as `GET` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkflowView {
    /// Where it stands.
    pub status: Status,
    /// What it runs (`name@version`, or a Rust workflow's name).
    pub workflow: Option<String>,
    /// Runs started by continuing as new.
    pub run: u32,
    /// Its input.
    pub input: Value,
    /// Its result, once completed.
    pub result: Option<Value>,
    /// Why it ended otherwise.
    pub error: Option<String>,
    /// The step that dead-lettered it.
    pub failed_step: Option<String>,
    /// Steps it waits for now.
    pub current: Vec<String>,
    /// Its variables.
    pub vars: Value,
    /// Signals received and not yet waited for.
    pub signals_buffered: usize,
    /// When it started (Unix ms).
    pub started_unix_ms: u64,
    /// When it ended.
    pub finished_unix_ms: Option<u64>,
    /// Its parent, for a child.
    pub parent: Option<ParentRef>,
    /// The journal as an execution history.
    pub steps: Vec<StepView>,
}

/// A registered Rust workflow.
pub type RustWorkflow = Arc<dyn Fn(WorkflowContext, Value) -> Pin<Box<dyn Future<Output = Result<Value, WorkflowError>>>> + Send + Sync>;

/// The `workflow` kind, with the Rust workflows it can run.
#[derive(Clone)]
pub struct Workflows {
    rust: BTreeMap<String, RustWorkflow>,
}

impl Default for Workflows {
    fn default() -> Self {
        Self { rust: BTreeMap::new() }.register(super::schedule::SCHEDULE, super::schedule::schedule)
    }
}

impl Workflows {
    /// The kind with the built-in Rust workflows only (`schedule`; declarative definitions
    /// need none).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers Rust workflow `name`: `f(ctx, input)` is its code (see
    /// [`super::context`] for the rules replay sets).
    pub fn register<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(WorkflowContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, WorkflowError>> + 'static,
    {
        self.rust.insert(name.to_owned(), Arc::new(move |ctx, input| Box::pin(f(ctx, input))));
        self
    }

    /// Names of the Rust workflows registered.
    pub fn rust_names(&self) -> Vec<String> {
        self.rust.keys().cloned().collect()
    }

    fn future_for(&self, program: &Program, ctx: WorkflowContext, input: Value) -> Pin<Box<dyn Future<Output = Result<Value, WorkflowError>>>> {
        match program {
            Program::Rust { name } => match self.rust.get(name) {
                Some(f) => f(ctx, input),
                None => {
                    let name = name.clone();
                    Box::pin(async move { Err(WorkflowError::Failed(format!("no Rust workflow named {name:?} is registered on this node"))) })
                }
            },
            Program::Definition { definition, library, .. } => Box::pin(super::interpret::run(ctx, (**definition).clone(), library.clone(), input)),
        }
    }

    /// Replays the code and acts on what it asks for, until it waits or ends.
    fn drive(&self, state: &mut WorkflowState, ctx: &mut Context<'_>) {
        for _ in 0..REPLAYS_PER_EVENT_MAX {
            if state.status != Status::Running {
                return;
            }
            let Some(program) = state.program.clone() else { return };
            let now = ctx.unix_ms();
            let journal = std::mem::take(&mut state.journal);
            let replay = std::rc::Rc::new(std::cell::RefCell::new(Replay::new(journal, now, state.cancel.is_some(), JOURNAL_LEN_MAX)));
            let polled = vcos_supervision::quiet_panic::catch(|| {
                let mut future = self.future_for(&program, WorkflowContext::root(replay.clone()), state.input.clone());
                let mut task = std::task::Context::from_waker(std::task::Waker::noop());
                future.as_mut().poll(&mut task)
            });
            let replay = std::mem::replace(&mut *replay.borrow_mut(), Replay::new(Vec::new(), now, false, 0));
            state.journal = replay.journal;
            for scope in &replay.abandoned {
                self.abandon(state, ctx, |step| step.starts_with(scope.as_str()));
            }
            if let Some(vars) = replay.vars {
                state.vars = vars;
            }
            let outcome = match (polled, replay.error) {
                (Err(panic), _) => std::task::Poll::Ready(Err(WorkflowError::Failed(format!("the workflow code panicked: {panic}")))),
                (Ok(_), Some(error)) => std::task::Poll::Ready(Err(error)),
                (Ok(poll), None) => poll,
            };
            if let std::task::Poll::Ready(result) = outcome {
                if self.finish(state, ctx, result) {
                    continue;
                }
                return;
            }
            state.current = replay.waiting.iter().filter_map(|&i| state.journal.get(i)).map(|e| e.options.label.clone().unwrap_or_else(|| e.step.clone())).collect();
            let mut resolved = false;
            for index in replay.issued {
                resolved |= self.issue(state, ctx, index);
            }
            if !resolved {
                return;
            }
        }
        self.finish(state, ctx, Err(WorkflowError::Failed(format!("more than {REPLAYS_PER_EVENT_MAX} replays for one event: the code loops on steps that answer at once"))));
    }

    /// Ends the run with `result`; `true` when it goes on (continued as new).
    fn finish(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, result: Result<Value, WorkflowError>) -> bool {
        let now = ctx.unix_ms();
        self.abandon(state, ctx, |_| true);
        state.waits.retain(|_, wait| wait.what == WaitKind::Deadline);
        state.current.clear();
        let status = match result {
            Ok(value) => {
                state.result = Some(value);
                Status::Completed
            }
            Err(WorkflowError::ContinueAsNew(input)) => {
                state.run += 1;
                state.journal.clear();
                state.signals.clear();
                state.input = input;
                return true;
            }
            Err(WorkflowError::Cancelled) if state.cancel.as_deref() == Some("timed_out") => {
                state.error = Some("the workflow timed out".into());
                Status::TimedOut
            }
            Err(WorkflowError::Cancelled) => {
                state.error = Some("cancelled".into());
                Status::Cancelled
            }
            Err(e @ WorkflowError::Compensated { .. }) => {
                state.error = Some(e.to_string());
                Status::Compensated
            }
            Err(e) => {
                state.failed_step = match &e {
                    WorkflowError::Step { .. } | WorkflowError::Nondeterminism { .. } => state.journal.iter().rev().find(|e| matches!(e.outcome, Some(Err(_)))).map(|e| e.step.clone()),
                    _ => None,
                };
                if let WorkflowError::Nondeterminism { step, .. } = &e {
                    state.failed_step = Some(step.clone());
                }
                state.error = Some(e.to_string());
                Status::DeadLettered
            }
        };
        state.status = status;
        state.waits.clear();
        state.finished_unix_ms = Some(now);
        ctx.index(RUNNING_INDEX, false);
        ctx.index(DEAD_INDEX, status == Status::DeadLettered);
        // A caller that started it and waits for its end (`wait_ms`) looks again at once.
        ctx.notify_watchers();
        let workflow = state.program.as_ref().map(Program::name).unwrap_or_default();
        metrics::counter!("vcos_workflows_finished_total", "workflow" => workflow, "status" => status.as_str()).increment(1);
        if let Some(parent) = &state.parent {
            let to = ImvuKey { tenant: ctx.key().tenant, id: ImvuId(parent.id) };
            ctx.tell(to, json!({ "op": "child_done", "step": parent.step }));
        }
        false
    }

    /// Marks open steps whose name `matches` abandoned (their children are cancelled).
    fn abandon(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, matches: impl Fn(&str) -> bool) {
        let tenant = ctx.key().tenant;
        for entry in state.journal.iter_mut().filter(|e| e.open() && matches(&e.step)) {
            entry.state = EntryState::Abandoned;
            if let Some(child) = entry.child {
                ctx.tell(ImvuKey { tenant, id: ImvuId(child) }, json!({ "op": "cancel" }));
            }
        }
        state.waits.retain(|_, wait| wait.step.is_empty() || state.journal.iter().any(|e| e.step == wait.step && e.open()));
    }

    fn index_of(state: &WorkflowState, step: &str) -> Option<usize> {
        state.journal.iter().rposition(|e| e.step == step)
    }

    /// Issues step `index` (a new attempt); `true` when it resolved at once.
    fn issue(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, index: usize) -> bool {
        let now = ctx.unix_ms();
        let me = *ctx.key();
        let Some(entry) = state.journal.get_mut(index) else { return false };
        entry.state = EntryState::Running;
        let step = entry.step.clone();
        match entry.command.clone() {
            Command::Call { imvu, message } => {
                entry.attempts += 1;
                // Every attempt under one key: the target applies the step once, however often
                // it is sent (a lost answer, a move of this workflow).
                let once = format!("wf/{}/{}/{step}", me.id.0, state.run);
                let number = ctx.ask(ImvuKey { tenant: me.tenant, id: ImvuId(imvu) }, crate::once::envelope(&once, message));
                self.wait_answer(state, ctx, index, number, WaitKind::Answer);
                false
            }
            Command::Model { request } => {
                entry.attempts += 1;
                let number = match request {
                    ModelRequest::Embed { texts } => ctx.embed(texts),
                    ModelRequest::Generate(request) => ctx.generate(request),
                };
                self.wait_answer(state, ctx, index, number, WaitKind::Answer);
                false
            }
            Command::Activity { name, input } => {
                entry.attempts += 1;
                let key = format!("wf/{}/{}/{}/{step}", me.tenant, me.id.0, state.run);
                let number = ctx.activity(&name, input, key);
                self.wait_answer(state, ctx, index, number, WaitKind::Answer);
                false
            }
            Command::Sleep { ms } => {
                let due = entry.due_unix_ms.get_or_insert(now.saturating_add(ms));
                let mut after_ms = left_ms(due, now, ms);
                let attempt = entry.attempts;
                if crate::failpoints::workflow_early_timers() {
                    after_ms /= 2;
                }
                let number = ctx.set_timer(after_ms);
                state.waits.insert(number, Wait { step, attempt, what: WaitKind::Sleep });
                false
            }
            Command::Signal { name, timeout_ms } => {
                if let Some(position) = state.signals.iter().position(|(n, _)| *n == name) {
                    let body = state.signals.remove(position).map(|(_, body)| body).unwrap_or(Value::Null);
                    Self::resolve(state, index, Ok(json!({ "signal": body })), now);
                    return true;
                }
                if let Some(timeout_ms) = timeout_ms {
                    let due = entry.due_unix_ms.get_or_insert(now.saturating_add(timeout_ms));
                    let after_ms = left_ms(due, now, timeout_ms);
                    let attempt = entry.attempts;
                    let number = ctx.set_timer(after_ms);
                    state.waits.insert(number, Wait { step, attempt, what: WaitKind::SignalTimeout });
                }
                false
            }
            Command::Child { .. } => {
                match entry.child {
                    // Created before: ask how it stands.
                    Some(child) => {
                        let attempt = entry.attempts;
                        let number = ctx.ask(ImvuKey { tenant: me.tenant, id: ImvuId(child) }, json!({ "op": "status" }));
                        state.waits.insert(number, Wait { step, attempt, what: WaitKind::ChildStatus });
                    }
                    None => {
                        entry.attempts += 1;
                        let number = ctx.create_child(super::KIND);
                        self.wait_answer(state, ctx, index, number, WaitKind::ChildCreated);
                    }
                }
                false
            }
            Command::Now => {
                Self::resolve(state, index, Ok(json!(now)), now);
                true
            }
        }
    }

    /// Records that ask `number` answers step `index`, with the attempt's timeout if any.
    fn wait_answer(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, index: usize, number: u64, what: WaitKind) {
        let entry = &state.journal[index];
        let (step, attempt, timeout_ms) = (entry.step.clone(), entry.attempts, entry.options.timeout_ms);
        state.waits.insert(number, Wait { step: step.clone(), attempt, what });
        if let Some(timeout_ms) = timeout_ms {
            let timer = ctx.set_timer(timeout_ms);
            state.waits.insert(timer, Wait { step, attempt, what: WaitKind::Timeout });
        }
    }

    fn resolve(state: &mut WorkflowState, index: usize, outcome: Result<Value, StepError>, now: u64) {
        let Some(entry) = state.journal.get_mut(index) else { return };
        let outcome = match outcome {
            Ok(value) if payload_too_large(&value) => Err(StepError { code: "too_large".into(), message: format!("the step's result is over {PAYLOAD_BYTES_MAX} bytes") }),
            other => other,
        };
        let kind = entry.command.kind();
        let duration_s = now.saturating_sub(entry.started_unix_ms) as f64 / 1000.0;
        // By step kind and by workflow (`name@version`: one series per definition version).
        let workflow = state.program.as_ref().map(Program::name).unwrap_or_default();
        metrics::histogram!("vcos_workflow_step_seconds", "kind" => kind, "workflow" => workflow.clone()).record(duration_s);
        if outcome.is_err() {
            metrics::counter!("vcos_workflow_step_failures_total", "kind" => kind, "workflow" => workflow).increment(1);
        }
        entry.state = EntryState::Done;
        entry.finished_unix_ms = Some(now);
        entry.outcome = Some(outcome);
        entry.last_error = None;
        let step = entry.step.clone();
        state.waits.retain(|_, wait| wait.step != step);
        state.finished_now += 1;
    }

    /// An attempt of step `index` failed: back off and retry, or fail the step.
    fn fail_attempt(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, index: usize, error: StepError) {
        let now = ctx.unix_ms();
        let Some(entry) = state.journal.get_mut(index) else { return };
        let step = entry.step.clone();
        if entry.command.retries() && entry.options.retry.retries(&error.code, entry.attempts) {
            let wait_ms = entry.options.retry.backoff_ms(entry.attempts);
            metrics::counter!("vcos_workflow_step_retries_total", "kind" => entry.command.kind()).increment(1);
            entry.state = EntryState::Backoff;
            entry.due_unix_ms = Some(now.saturating_add(wait_ms));
            entry.last_error = Some(error);
            if matches!(entry.command, Command::Child { .. }) {
                entry.child = None;
            }
            let attempt = entry.attempts;
            state.waits.retain(|_, wait| wait.step != step);
            let number = ctx.set_timer(wait_ms);
            state.waits.insert(number, Wait { step, attempt, what: WaitKind::Backoff });
        } else {
            Self::resolve(state, index, Err(error), now);
        }
    }

    fn on_answer(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, wait: Wait, answer: Result<Value, ActorError>) {
        let now = ctx.unix_ms();
        let Some(index) = Self::index_of(state, &wait.step) else { return };
        let entry = &state.journal[index];
        if !entry.open() || entry.attempts != wait.attempt {
            return;
        }
        match (wait.what, answer) {
            (WaitKind::Answer, Ok(value)) => Self::resolve(state, index, Ok(value), now),
            (WaitKind::ChildCreated, Ok(key)) => match key.get("id").and_then(Value::as_u64) {
                Some(child) => {
                    state.journal[index].child = Some(child);
                    Self::start_child(state, ctx, index, wait);
                }
                None => self.fail_attempt(state, ctx, index, StepError { code: "internal".into(), message: format!("a child's key came as {key}") }),
            },
            // Created but not started (the start, or its answer, was lost with a node): start it
            // again (a start is idempotent).
            (WaitKind::ChildStarted | WaitKind::ChildStatus, Ok(view)) if view.get("status").and_then(Value::as_str) == Some("created") => {
                Self::start_child(state, ctx, index, wait);
            }
            (WaitKind::ChildStarted | WaitKind::ChildStatus, Ok(view)) => match child_outcome(&view) {
                Some(outcome) => Self::resolve(state, index, outcome, now),
                None => {
                    let number = ctx.set_timer(CHILD_POLL_MS);
                    state.waits.insert(number, Wait { step: wait.step, attempt: wait.attempt, what: WaitKind::ChildPoll });
                }
            },
            // A child that cannot be asked now (its node moves) is asked again later; one that
            // is gone fails the step.
            (WaitKind::ChildStatus, Err(e)) if !matches!(e, ActorError::NotFound { .. } | ActorError::Terminated(_)) => {
                let number = ctx.set_timer(CHILD_POLL_MS);
                state.waits.insert(number, Wait { step: wait.step, attempt: wait.attempt, what: WaitKind::ChildPoll });
            }
            (_, Err(e)) => self.fail_attempt(state, ctx, index, StepError { code: e.code().into(), message: detail(&e) }),
            (_, Ok(_)) => {}
        }
    }

    /// Asks step `index`'s child (created) to start; its answer comes as `ChildStarted`.
    fn start_child(state: &mut WorkflowState, ctx: &mut Context<'_>, index: usize, wait: Wait) {
        let entry = &state.journal[index];
        let (Command::Child { program, input }, Some(child)) = (&entry.command, entry.child) else { return };
        let start = json!({ "op": "start", "program": program, "input": input, "parent": { "id": ctx.key().id.0, "step": wait.step } });
        let number = ctx.ask(ImvuKey { tenant: ctx.key().tenant, id: ImvuId(child) }, start);
        state.waits.insert(number, Wait { step: wait.step, attempt: wait.attempt, what: WaitKind::ChildStarted });
    }

    fn on_timer_wait(&self, state: &mut WorkflowState, ctx: &mut Context<'_>, wait: Wait) {
        let now = ctx.unix_ms();
        if wait.what == WaitKind::Deadline {
            if state.status == Status::Running && state.cancel.is_none() {
                state.cancel = Some("timed_out".into());
            }
            return;
        }
        let Some(index) = Self::index_of(state, &wait.step) else { return };
        let entry = &state.journal[index];
        if !entry.open() || entry.attempts != wait.attempt {
            return;
        }
        let due = entry.due_unix_ms.unwrap_or(0);
        let span_ms = span_ms(entry);
        let tenant = ctx.key().tenant;
        match wait.what {
            WaitKind::Sleep if crate::failpoints::workflow_early_timers() => Self::resolve(state, index, Ok(Value::Null), now),
            WaitKind::Sleep | WaitKind::Backoff | WaitKind::SignalTimeout if now < due => {
                // The node's clock ran faster than the wall clock: never early.
                let mut due = due;
                let after_ms = left_ms(&mut due, now, span_ms);
                state.journal[index].due_unix_ms = Some(due);
                let number = ctx.set_timer(after_ms);
                state.waits.insert(number, wait);
            }
            WaitKind::Sleep => Self::resolve(state, index, Ok(Value::Null), now),
            WaitKind::SignalTimeout => Self::resolve(state, index, Ok(json!({ "timed_out": true })), now),
            WaitKind::Backoff => {
                state.journal[index].due_unix_ms = None;
                self.issue(state, ctx, index);
            }
            WaitKind::Timeout => {
                let step = wait.step.clone();
                state.waits.retain(|_, w| !(w.step == step && w.what != WaitKind::Timeout));
                let message = format!("no answer within {} ms", entry.options.timeout_ms.unwrap_or(0));
                self.fail_attempt(state, ctx, index, StepError { code: "timeout".into(), message });
            }
            WaitKind::ChildPoll => {
                if let Some(child) = entry.child {
                    let number = ctx.ask(ImvuKey { tenant, id: ImvuId(child) }, json!({ "op": "status" }));
                    state.waits.insert(number, Wait { step: wait.step, attempt: wait.attempt, what: WaitKind::ChildStatus });
                }
            }
            WaitKind::Answer | WaitKind::ChildCreated | WaitKind::ChildStarted | WaitKind::ChildStatus | WaitKind::Deadline => {}
        }
    }

    /// After a load from canon: what was in memory (asks in flight, timers) is gone; issue
    /// and arm it again.
    fn resume(&self, state: &mut WorkflowState, ctx: &mut Context<'_>) {
        let now = ctx.unix_ms();
        state.waits.clear();
        if let Some(deadline) = state.deadline_unix_ms.as_mut() {
            let number = ctx.set_timer(left_ms(deadline, now, state.timeout_ms.unwrap_or(u64::MAX)));
            state.waits.insert(number, Wait { step: String::new(), attempt: 0, what: WaitKind::Deadline });
        }
        if crate::failpoints::workflow_rerun_journaled() {
            for entry in state.journal.iter().filter(|e| e.state == EntryState::Done) {
                if let Command::Call { imvu, message } = &entry.command {
                    ctx.tell(ImvuKey { tenant: ctx.key().tenant, id: ImvuId(*imvu) }, message.clone());
                }
            }
        }
        let open: Vec<usize> = state.journal.iter().enumerate().filter(|(_, e)| e.open()).map(|(i, _)| i).collect();
        for index in open {
            let entry = &state.journal[index];
            let (step, attempt) = (entry.step.clone(), entry.attempts);
            match (entry.state, &entry.command) {
                (EntryState::Backoff, _) => {
                    let span = span_ms(entry);
                    let mut due = entry.due_unix_ms.unwrap_or(now);
                    let after_ms = left_ms(&mut due, now, span);
                    state.journal[index].due_unix_ms = Some(due);
                    let number = ctx.set_timer(after_ms);
                    state.waits.insert(number, Wait { step, attempt, what: WaitKind::Backoff });
                }
                (_, Command::Child { .. }) if entry.child.is_some() => {
                    let number = ctx.set_timer(0);
                    state.waits.insert(number, Wait { step, attempt, what: WaitKind::ChildPoll });
                }
                _ => {
                    self.issue(state, ctx, index);
                }
            }
        }
        self.drive(state, ctx);
    }

    /// The view of an instance in `state` (what `GET` shows).
    pub fn view_of(state: &WorkflowState) -> WorkflowView {
        Self::view(state)
    }

    fn view(state: &WorkflowState) -> WorkflowView {
        WorkflowView {
            status: state.status,
            workflow: state.program.as_ref().map(Program::name),
            run: state.run,
            input: state.input.clone(),
            result: state.result.clone(),
            error: state.error.clone(),
            failed_step: state.failed_step.clone(),
            current: state.current.clone(),
            vars: state.vars.clone(),
            signals_buffered: state.signals.len(),
            started_unix_ms: state.started_unix_ms,
            finished_unix_ms: state.finished_unix_ms,
            parent: state.parent.clone(),
            steps: state
                .journal
                .iter()
                .map(|e| StepView {
                    step: e.step.clone(),
                    label: e.options.label.clone(),
                    kind: e.command.kind().to_owned(),
                    state: e.state,
                    attempts: e.attempts,
                    started_unix_ms: e.started_unix_ms,
                    finished_unix_ms: e.finished_unix_ms,
                    duration_ms: e.finished_unix_ms.map(|f| f.saturating_sub(e.started_unix_ms)),
                    result: e.outcome.as_ref().and_then(|o| o.as_ref().ok().cloned()),
                    error: e.outcome.as_ref().and_then(|o| o.as_ref().err().cloned()).or_else(|| e.last_error.clone()),
                    child: e.child,
                })
                .collect(),
        }
    }

    fn handle_msg(&self, state: &mut WorkflowState, msg: WorkflowMsg, ctx: &mut Context<'_>) -> Result<Value, ActorError> {
        let now = ctx.unix_ms();
        match msg {
            WorkflowMsg::Start { program, input, parent, timeout_ms } => {
                if state.status != Status::Created {
                    ctx.unchanged();
                    return Ok(view_value(state));
                }
                if payload_too_large(&input) {
                    return Err(ActorError::TooLarge(format!("a workflow's input is at most {PAYLOAD_BYTES_MAX} bytes of JSON")));
                }
                // A start may come straight to the IMVU, not only through the definitions
                // route: the engine checks what it runs itself (activities and sub-workflows
                // are resolved, or fail, at run time).
                if let Program::Definition { definition, library, .. } = &program {
                    let known = super::definition::Known { activity: &|_| true, workflow: &|_| true };
                    for definition in std::iter::once(&**definition).chain(library.values().map(|(_, d)| d)) {
                        super::definition::validate(definition, &known).map_err(|e| ActorError::BadRequest { field: "program".into(), reason: e.to_string() })?;
                    }
                }
                state.program = Some(program);
                state.input = input;
                state.parent = parent;
                state.status = Status::Running;
                state.started_unix_ms = now;
                ctx.index(RUNNING_INDEX, true);
                if let Some(timeout_ms) = timeout_ms {
                    let deadline = now.saturating_add(timeout_ms);
                    state.deadline_unix_ms = Some(deadline);
                    state.timeout_ms = Some(timeout_ms);
                    let number = ctx.set_timer(timeout_ms);
                    state.waits.insert(number, Wait { step: String::new(), attempt: 0, what: WaitKind::Deadline });
                }
                self.drive(state, ctx);
            }
            WorkflowMsg::Signal { name, body } => {
                if state.status.finished() || state.status == Status::Created {
                    return Err(ActorError::Conflict(format!("the workflow is {}: it takes no signals", state.status.as_str())));
                }
                if payload_too_large(&body) {
                    return Err(ActorError::TooLarge(format!("a signal's body is at most {PAYLOAD_BYTES_MAX} bytes of JSON")));
                }
                let waiting = state.journal.iter().position(|e| e.open() && matches!(&e.command, Command::Signal { name: n, .. } if *n == name));
                match waiting {
                    Some(index) => Self::resolve(state, index, Ok(json!({ "signal": body })), now),
                    None if state.signals.len() >= SIGNALS_BUFFERED_MAX => {
                        return Err(ActorError::QueueFull(format!("{SIGNALS_BUFFERED_MAX} signals already wait for the workflow to ask for them")));
                    }
                    None => state.signals.push_back((name, body)),
                }
                self.drive(state, ctx);
            }
            WorkflowMsg::Cancel => {
                if state.status == Status::DeadLettered {
                    state.status = Status::Cancelled;
                    state.error = Some("cancelled while dead-lettered".into());
                    state.finished_unix_ms = Some(now);
                    ctx.index(DEAD_INDEX, false);
                    ctx.notify_watchers();
                } else if state.status.finished() {
                    return Err(ActorError::Conflict(format!("the workflow already ended: {}", state.status.as_str())));
                } else if state.status == Status::Created {
                    state.status = Status::Cancelled;
                    state.finished_unix_ms = Some(now);
                    ctx.notify_watchers();
                } else {
                    state.cancel.get_or_insert_with(|| "cancelled".into());
                    self.drive(state, ctx);
                }
            }
            WorkflowMsg::Get => ctx.unchanged(),
            WorkflowMsg::Status => {
                ctx.unchanged();
                return Ok(json!({ "status": state.status, "result": state.result, "error": state.error }));
            }
            WorkflowMsg::Retry | WorkflowMsg::Skip { .. } => {
                if state.status != Status::DeadLettered {
                    return Err(ActorError::Conflict(format!("only a dead-lettered workflow is retried or skipped; this one is {}", state.status.as_str())));
                }
                let failed = state.failed_step.as_ref().and_then(|step| Self::index_of(state, step));
                let skip = match msg {
                    WorkflowMsg::Skip { result } => Some(result),
                    _ => None,
                };
                match failed {
                    Some(index) => {
                        let entry = &mut state.journal[index];
                        match skip {
                            Some(result) => {
                                entry.state = EntryState::Done;
                                entry.outcome = Some(Ok(result));
                                entry.finished_unix_ms = Some(now);
                            }
                            None => {
                                entry.state = EntryState::Running;
                                entry.outcome = None;
                                entry.attempts = 0;
                                entry.finished_unix_ms = None;
                                entry.child = None;
                                entry.due_unix_ms = None;
                            }
                        }
                    }
                    // Failed outside a step (the code itself, a journal limit): run it again.
                    None if skip.is_some() => return Err(ActorError::Conflict("the workflow failed outside any step: retry it, or cancel it".into())),
                    None => {}
                }
                state.status = Status::Running;
                state.error = None;
                state.failed_step = None;
                state.finished_unix_ms = None;
                ctx.index(DEAD_INDEX, false);
                ctx.index(RUNNING_INDEX, true);
                self.resume(state, ctx);
            }
            WorkflowMsg::Wake => {
                // The activation before this message did the work.
                ctx.unchanged();
                return Ok(json!({ "status": state.status }));
            }
            WorkflowMsg::ChildDone { step } => {
                if let Some(index) = Self::index_of(state, &step).filter(|&i| state.journal[i].open()) {
                    let entry = &state.journal[index];
                    if let Some(child) = entry.child {
                        let number = ctx.ask(ImvuKey { tenant: ctx.key().tenant, id: ImvuId(child) }, json!({ "op": "status" }));
                        state.waits.insert(number, Wait { step, attempt: entry.attempts, what: WaitKind::ChildStatus });
                    }
                } else {
                    ctx.unchanged();
                }
                return Ok(Value::Null);
            }
        }
        Ok(view_value(state))
    }
}

/// How long a timer due at `due` waits from `now`, at most `span_ms` (its whole duration): a due
/// time set by a node whose wall clock ran ahead (a jump, a skew between nodes) would otherwise
/// hold the timer that much longer. `due` moves back when it is cut. On one node a timer never
/// fires early (the check in `on_timer_wait`); after a move to a node whose clock is behind, it
/// is late by at most its own duration.
fn left_ms(due: &mut u64, now: u64, span_ms: u64) -> u64 {
    let left = due.saturating_sub(now);
    if left > span_ms {
        *due = now.saturating_add(span_ms);
        span_ms
    } else {
        left
    }
}

/// The whole duration of step `entry`'s timer: its sleep, its signal timeout, its backoff.
fn span_ms(entry: &Entry) -> u64 {
    match &entry.command {
        Command::Sleep { ms } => *ms,
        Command::Signal { timeout_ms: Some(ms), .. } => *ms,
        _ if entry.state == EntryState::Backoff => entry.options.retry.backoff_ms(entry.attempts),
        _ => u64::MAX,
    }
}

/// The key of a refusal in a reply of the `workflow` kind.
pub const REFUSED: &str = "refused";

/// The error a reply of the `workflow` kind stands for, if it is a refusal.
pub fn refusal(reply: &Value) -> Option<ActorError> {
    let refused = reply.get(REFUSED)?;
    let code = refused.get("code").and_then(Value::as_str).unwrap_or("");
    let message = refused.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
    Some(match code {
        "conflict" => ActorError::Conflict(message),
        "too_large" => ActorError::TooLarge(message),
        "queue_full" => ActorError::QueueFull(message),
        _ => ActorError::Failed(message),
    })
}

/// An error's own words, without the prefix its `Display` adds (`conflict: …`).
fn detail(e: &ActorError) -> String {
    match e {
        ActorError::Conflict(m) | ActorError::TooLarge(m) | ActorError::QueueFull(m) | ActorError::Failed(m) | ActorError::Unavailable(m) | ActorError::Store(m) => m.clone(),
        other => other.to_string(),
    }
}

fn view_value(state: &WorkflowState) -> Value {
    serde_json::to_value(Workflows::view(state)).unwrap_or(Value::Null)
}

fn payload_too_large(value: &Value) -> bool {
    serde_json::to_vec(value).map_or(true, |bytes| bytes.len() > PAYLOAD_BYTES_MAX)
}

/// A child's outcome from its status answer, once it ended.
fn child_outcome(view: &Value) -> Option<Result<Value, StepError>> {
    let status: Status = serde_json::from_value(view.get("status")?.clone()).ok()?;
    match status {
        Status::Created | Status::Running => None,
        Status::Completed => Some(Ok(view.get("result").cloned().unwrap_or(Value::Null))),
        other => {
            let message = view.get("error").and_then(Value::as_str).unwrap_or("the child workflow failed").to_owned();
            Some(Err(StepError { code: format!("child_{}", other.as_str()), message }))
        }
    }
}

impl Imvu for Workflows {
    const KIND: &'static str = super::KIND;
    type State = WorkflowState;
    type Msg = WorkflowMsg;
    /// The view, or `{"refused": {"code": …, "message": …}}`.
    type Reply = Value;

    fn genesis(&self) -> WorkflowState {
        WorkflowState::default()
    }

    fn handle(&self, state: &mut WorkflowState, msg: WorkflowMsg, ctx: &mut Context<'_>) -> Value {
        let reply = self.handle_msg(state, msg, ctx);
        ctx.meter_steps(std::mem::take(&mut state.finished_now));
        reply.unwrap_or_else(|e| json!({ REFUSED: { "code": e.code(), "message": detail(&e) } }))
    }

    fn on_reply(&self, state: &mut WorkflowState, correlation: u64, reply: Result<Value, ActorError>, ctx: &mut Context<'_>) {
        if let Some(wait) = state.waits.remove(&correlation) {
            self.on_answer(state, ctx, wait, reply);
            self.drive(state, ctx);
        }
        ctx.meter_steps(std::mem::take(&mut state.finished_now));
    }

    fn batches_replies(&self) -> bool {
        true
    }

    /// Every answer recorded first, then one replay: a fan-out's answers that arrive together
    /// cost one replay and one snapshot, not one each (answers of one wake count as
    /// simultaneous: a race between them is decided by the code's order, as on replay).
    fn on_replies(&self, state: &mut WorkflowState, replies: Vec<(u64, Result<Value, ActorError>)>, ctx: &mut Context<'_>) {
        let mut answered = false;
        for (correlation, reply) in replies {
            if let Some(wait) = state.waits.remove(&correlation) {
                self.on_answer(state, ctx, wait, reply);
                answered = true;
            }
        }
        if answered {
            self.drive(state, ctx);
        }
        ctx.meter_steps(std::mem::take(&mut state.finished_now));
    }

    fn on_timer(&self, state: &mut WorkflowState, timer_id: u64, ctx: &mut Context<'_>) {
        if let Some(wait) = state.waits.remove(&timer_id) {
            self.on_timer_wait(state, ctx, wait);
            self.drive(state, ctx);
        }
        ctx.meter_steps(std::mem::take(&mut state.finished_now));
    }

    fn keep_resident(&self, state: &WorkflowState) -> bool {
        state.status == Status::Running
    }

    fn resumes(&self) -> bool {
        true
    }

    fn on_activate(&self, state: &mut WorkflowState, ctx: &mut Context<'_>) {
        if state.status == Status::Running {
            self.resume(state, ctx);
        } else {
            ctx.unchanged();
        }
        ctx.meter_steps(std::mem::take(&mut state.finished_now));
    }

    fn description(&self) -> &'static str {
        "a durable workflow instance: journaled steps over IMVUs, models and activities (see /v1/tenants/{t}/workflows)"
    }
}

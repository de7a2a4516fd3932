//! [`WorkflowContext`]: what workflow code calls, and the replay that runs it.
//!
//! Workflow code is an `async` function, but it is not run as a task. Each time something
//! happens to the instance (a step answered, a timer, a signal), the engine runs the code
//! again from the start, polling it once, against the journal: a step whose outcome is
//! journaled resolves at once with it; a step that is journaled but open stays pending; a step
//! not journaled yet is recorded as new, for the engine to issue. When the poll ends pending,
//! the instance waits for the next event. Nothing but the journal carries over between
//! polls, so a workflow resumes on another node, after a crash, from the journal alone, and a
//! step that finished is never run again.
//!
//! The code must therefore be deterministic: the same journal, the same steps asked for in
//! the same places. Time comes from [`WorkflowContext::now_unix_ms`] (journaled), never from
//! the OS. Concurrency goes through [`WorkflowContext::branch`]: each branch has its own scope
//! of step names, so that branches finishing in another order do not rename each other's
//! steps. A scope that asks for a step while its previous one is still open (two steps of one
//! scope in flight at once) is refused with a nondeterminism error, as is a replay that asks
//! for another command than the journal holds under that name.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};

use serde_json::Value;

use super::journal::{Command, Entry, EntryState, StepError, StepOptions};
use super::WorkflowError;
use crate::models::{GenerateRequest, ModelRequest};

/// One replay: the journal it runs against and what it found.
pub(crate) struct Replay {
    pub(crate) journal: Vec<Entry>,
    /// Step name → index in `journal`.
    by_step: BTreeMap<String, usize>,
    pub(crate) now_unix_ms: u64,
    /// Indexes of steps recorded by this replay (to issue).
    pub(crate) issued: Vec<usize>,
    /// The first nondeterminism found.
    pub(crate) error: Option<WorkflowError>,
    /// Whether the workflow is being cancelled.
    pub(crate) cancelling: bool,
    /// Variables the code published (a declarative workflow's `vars`).
    pub(crate) vars: Option<Value>,
    /// Scopes whose open steps are no longer awaited (the losers of a race).
    pub(crate) abandoned: Vec<String>,
    /// Step names polled while open: what the workflow waits for now.
    pub(crate) waiting: Vec<usize>,
    /// Journal entries allowed at most (a replay past it fails the workflow).
    journal_max: usize,
}

impl Replay {
    pub(crate) fn new(journal: Vec<Entry>, now_unix_ms: u64, cancelling: bool, journal_max: usize) -> Self {
        let by_step = journal.iter().enumerate().map(|(i, e)| (e.step.clone(), i)).collect();
        Self { journal, by_step, now_unix_ms, issued: Vec::new(), error: None, cancelling, vars: None, abandoned: Vec::new(), waiting: Vec::new(), journal_max }
    }
}

/// What workflow code asks the runtime for. Cheap to clone; every clone names steps in the
/// same scope (use [`WorkflowContext::branch`] for concurrent work).
#[derive(Clone)]
pub struct WorkflowContext {
    replay: Rc<RefCell<Replay>>,
    scope: Rc<str>,
    /// Steps named in this scope so far.
    counter: Rc<Cell<u32>>,
    /// The scope's last step, to refuse two open steps in one scope.
    last: Rc<Cell<Option<usize>>>,
    /// Whether cancellation reaches this scope's steps (compensations run in scopes it does
    /// not reach).
    cancellable: bool,
}

impl WorkflowContext {
    pub(crate) fn root(replay: Rc<RefCell<Replay>>) -> Self {
        Self { replay, scope: Rc::from(""), counter: Rc::default(), last: Rc::default(), cancellable: true }
    }

    fn child_scope(&self, name: String, cancellable: bool) -> Self {
        Self { replay: self.replay.clone(), scope: Rc::from(name), counter: Rc::default(), last: Rc::default(), cancellable }
    }

    fn next_name(&self) -> String {
        let n = self.counter.get();
        self.counter.set(n + 1);
        format!("{}{n}", self.scope)
    }

    /// Scopes for `n` concurrent branches (one name of this scope for the whole block).
    /// Poll them together with [`join_all`] or [`join_n`].
    pub fn branches(&self, n: usize) -> Vec<WorkflowContext> {
        let block = self.next_name();
        (0..n).map(|i| self.child_scope(format!("{block}.{i}."), self.cancellable)).collect()
    }

    /// One scope for a single branch (see [`WorkflowContext::branches`]).
    pub fn branch(&self) -> WorkflowContext {
        let block = self.next_name();
        self.child_scope(format!("{block}.0."), self.cancellable)
    }

    /// A scope that cancellation does not reach: for compensations and clean-up that must run
    /// while the workflow is being cancelled.
    pub fn uncancellable(&self) -> WorkflowContext {
        let block = self.next_name();
        self.child_scope(format!("{block}.c."), false)
    }

    /// Whether the workflow is being cancelled (or timed out).
    pub fn cancelling(&self) -> bool {
        self.replay.borrow().cancelling
    }

    /// Publishes the workflow's variables (shown by `GET` of the instance).
    pub fn set_vars(&self, vars: Value) {
        self.replay.borrow_mut().vars = Some(vars);
    }

    /// Asks for a step: finds it in the journal or records it.
    pub fn step(&self, command: Command, options: StepOptions) -> Step {
        let name = self.next_name();
        let mut replay = self.replay.borrow_mut();
        if let Some(previous) = self.last.get().filter(|&i| replay.journal.get(i).is_some_and(Entry::open)) {
            let open = replay.journal[previous].step.clone();
            replay.error.get_or_insert(WorkflowError::Nondeterminism {
                step: name.clone(),
                journaled: format!("step {open} still open in the same scope"),
                asked: format!("{} (concurrent steps need WorkflowContext::branches)", command.kind()),
            });
            return Step { replay: self.replay.clone(), index: None, cancellable: self.cancellable };
        }
        let index = match replay.by_step.get(&name).copied() {
            Some(i) => {
                let entry = &replay.journal[i];
                if entry.command != command {
                    let journaled = serde_json::to_string(&entry.command).unwrap_or_default();
                    let asked = serde_json::to_string(&command).unwrap_or_default();
                    replay.error.get_or_insert(WorkflowError::Nondeterminism { step: name, journaled, asked });
                    return Step { replay: self.replay.clone(), index: None, cancellable: self.cancellable };
                }
                i
            }
            None if replay.journal.len() >= replay.journal_max => {
                let max = replay.journal_max;
                replay.error.get_or_insert(WorkflowError::Failed(format!(
                    "the journal holds {max} steps, its limit: continue as new (WorkflowError::ContinueAsNew) to go on"
                )));
                return Step { replay: self.replay.clone(), index: None, cancellable: self.cancellable };
            }
            None => {
                let entry = Entry::new(name.clone(), command, options, replay.now_unix_ms);
                replay.journal.push(entry);
                let i = replay.journal.len() - 1;
                replay.by_step.insert(name, i);
                replay.issued.push(i);
                i
            }
        };
        self.last.set(Some(index));
        Step { replay: self.replay.clone(), index: Some(index), cancellable: self.cancellable }
    }

    /// Asks IMVU `imvu` of the workflow's tenant `message`; its reply.
    pub async fn call(&self, imvu: u64, message: Value) -> Result<Value, WorkflowError> {
        self.step(Command::Call { imvu, message }, StepOptions::default()).await
    }

    /// [`WorkflowContext::call`] with options (retries, timeout).
    pub async fn call_with(&self, imvu: u64, message: Value, options: StepOptions) -> Result<Value, WorkflowError> {
        self.step(Command::Call { imvu, message }, options).await
    }

    /// Runs activity `name` on `input`; its answer.
    pub async fn activity(&self, name: &str, input: Value) -> Result<Value, WorkflowError> {
        self.step(Command::Activity { name: name.to_owned(), input }, StepOptions::default()).await
    }

    /// Embeds `texts`: `{"embeddings": [[…]…], "tokens": n}`.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Value, WorkflowError> {
        self.step(Command::Model { request: ModelRequest::Embed { texts } }, StepOptions::default()).await
    }

    /// Generates: `{"text": …, "finish_reason": …, …}`.
    pub async fn generate(&self, request: GenerateRequest) -> Result<Value, WorkflowError> {
        self.step(Command::Model { request: ModelRequest::Generate(request) }, StepOptions::default()).await
    }

    /// Waits `ms` on a durable timer (it survives crashes and moves; never fires early).
    pub async fn sleep(&self, ms: u64) -> Result<(), WorkflowError> {
        self.step(Command::Sleep { ms }, StepOptions::default()).await.map(|_| ())
    }

    /// Waits for signal `name`: its body, or `None` after `timeout_ms`.
    pub async fn signal(&self, name: &str, timeout_ms: Option<u64>) -> Result<Option<Value>, WorkflowError> {
        let outcome = self.step(Command::Signal { name: name.to_owned(), timeout_ms }, StepOptions::default()).await?;
        Ok(outcome.get("signal").cloned())
    }

    /// Runs a child workflow to its end; its result.
    pub async fn child(&self, program: super::Program, input: Value) -> Result<Value, WorkflowError> {
        self.step(Command::Child { program: Box::new(program), input }, StepOptions::default()).await
    }

    /// The wall-clock time (Unix ms), journaled: a replay sees the same.
    pub async fn now_unix_ms(&self) -> Result<u64, WorkflowError> {
        let value = self.step(Command::Now, StepOptions::default()).await?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// Stops polling this scope's open steps (a race was decided without them).
    pub(crate) fn abandon(&self) {
        self.replay.borrow_mut().abandoned.push(self.scope.to_string());
    }
}

/// A step being awaited.
pub struct Step {
    replay: Rc<RefCell<Replay>>,
    /// `None`: refused (the replay's error says why); pending for ever.
    index: Option<usize>,
    cancellable: bool,
}

impl Future for Step {
    type Output = Result<Value, WorkflowError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let Some(index) = self.index else { return Poll::Pending };
        let mut replay = self.replay.borrow_mut();
        let cancelling = replay.cancelling;
        let entry = &replay.journal[index];
        match (&entry.state, &entry.outcome) {
            (EntryState::Done, Some(Ok(value))) => Poll::Ready(Ok(value.clone())),
            (EntryState::Done, Some(Err(e))) => Poll::Ready(Err(WorkflowError::Step { step: label_of(entry), error: e.clone() })),
            _ if cancelling && self.cancellable => Poll::Ready(Err(WorkflowError::Cancelled)),
            _ => {
                replay.waiting.push(index);
                Poll::Pending
            }
        }
    }
}

fn label_of(entry: &Entry) -> String {
    entry.options.label.clone().unwrap_or_else(|| entry.step.clone())
}

/// The error value of a failed step, as declarative workflows see it.
pub(crate) fn step_error_value(error: &StepError) -> Value {
    serde_json::json!({ "code": error.code, "message": error.message })
}

/// Polls `futures` together until all are ready: their results in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let n = futures.len();
    join_n(futures, n, Vec::new()).await.into_iter().map(|r| r.expect("join_n with n = len waits for every future")).collect()
}

/// Polls `futures` together until `n` of them are ready; the others' scopes (`scopes`, one per
/// future, may be empty) are abandoned. Results in order, `None` for those not awaited.
pub async fn join_n<F: Future>(futures: Vec<F>, n: usize, scopes: Vec<WorkflowContext>) -> Vec<Option<F::Output>> {
    JoinN { futures: futures.into_iter().map(|f| Some(Box::pin(f))).collect(), results: Vec::new(), n, scopes }.await
}

struct JoinN<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    results: Vec<Option<F::Output>>,
    n: usize,
    scopes: Vec<WorkflowContext>,
}

// Nothing is pinned through a `JoinN`: its futures are boxed, its results plain values.
impl<F: Future> Unpin for JoinN<F> {}

impl<F: Future> Future for JoinN<F> {
    type Output = Vec<Option<F::Output>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (futures are boxed).
        let this = self.get_mut();
        if this.results.is_empty() {
            this.results = this.futures.iter().map(|_| None).collect();
        }
        for (i, slot) in this.futures.iter_mut().enumerate() {
            if let Some(future) = slot {
                if let Poll::Ready(output) = future.as_mut().poll(cx) {
                    this.results[i] = Some(output);
                    *slot = None;
                }
            }
        }
        let ready = this.results.iter().filter(|r| r.is_some()).count();
        if ready >= this.n.min(this.futures.len()) {
            for (i, slot) in this.futures.iter().enumerate() {
                if slot.is_some() {
                    if let Some(scope) = this.scopes.get(i) {
                        scope.abandon();
                    }
                }
            }
            return Poll::Ready(std::mem::take(&mut this.results));
        }
        Poll::Pending
    }
}

//! The interpreter of declarative definitions: itself a Rust workflow, so a definition gets
//! the same journal, retries, timers and replay as code.
//!
//! The scope an expression sees: `input`, `vars`, `steps` (`steps.<id>.result`, or
//! `steps.<id>.error` for a step that failed with `on_error: continue`), `result` in a step's
//! `set` and `compensate`, and a loop's element and `index`. A `parallel` branch starts from a
//! copy of the scope; when the block ends, the branches' variables and step results are merged
//! in branch order (a later branch wins a variable both set).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use super::context::{join_n, WorkflowContext};
use super::definition::{Definition, Join, JoinName, OnError, StepDef};
use super::expr::{self, Expr};
use super::journal::{Command, RetryPolicy, StepError, StepOptions};
use super::{Program, WorkflowError};
use crate::models::{ChatTurn, GenerateRequest, ModelRequest};

/// Sub-workflow definitions by name, with their versions.
pub type Library = BTreeMap<String, (u32, Definition)>;

/// The data a definition's expressions read.
#[derive(Clone, Debug)]
struct Scope {
    input: Value,
    vars: Map<String, Value>,
    steps: Map<String, Value>,
    locals: Map<String, Value>,
}

impl Scope {
    fn value(&self, result: Option<&Value>) -> Value {
        let mut scope = self.locals.clone();
        scope.insert("input".into(), self.input.clone());
        scope.insert("vars".into(), Value::Object(self.vars.clone()));
        scope.insert("steps".into(), Value::Object(self.steps.clone()));
        if let Some(result) = result {
            scope.insert("result".into(), result.clone());
        }
        Value::Object(scope)
    }
}

/// A compensation to run if a later step fails: the step, and the scope it saw (with its
/// step's `result`).
type Compensation = (StepDef, Value);

/// Loop iterations one replay may run, all loops together: `max` bounds each loop, but nested
/// loops multiply, and a replay runs on its shard's task.
pub const ITERATIONS_PER_REPLAY_MAX: u64 = 100_000;

struct Run<'a> {
    definition: &'a Definition,
    library: &'a Library,
    iterations: std::cell::Cell<u64>,
}

impl Run<'_> {
    /// Counts one loop iteration against [`ITERATIONS_PER_REPLAY_MAX`].
    fn iterate(&self, step: &StepDef) -> Result<(), WorkflowError> {
        let n = self.iterations.get() + 1;
        self.iterations.set(n);
        if n > ITERATIONS_PER_REPLAY_MAX {
            return Err(failed(step, format!("more than {ITERATIONS_PER_REPLAY_MAX} loop iterations in all: nested loops multiply")));
        }
        Ok(())
    }
}

/// Runs `definition` on `input`.
pub async fn run(ctx: WorkflowContext, definition: Definition, library: Library, input: Value) -> Result<Value, WorkflowError> {
    let run = Run { definition: &definition, library: &library, iterations: std::cell::Cell::new(0) };
    let mut scope = Scope { input, vars: definition.vars.clone().into_iter().collect(), steps: Map::new(), locals: Map::new() };
    ctx.set_vars(Value::Object(scope.vars.clone()));
    let mut compensations = Vec::new();
    match run.steps(&ctx, &definition.steps, &mut scope, &mut compensations).await {
        Ok(()) => match &definition.output {
            Some(output) => expr::render(output, &scope.value(None)).map_err(|e| WorkflowError::Failed(format!("/output: {e}"))),
            None => Ok(Value::Object(scope.vars)),
        },
        Err(error) if compensations.is_empty() => Err(error),
        Err(error) => {
            let cleanup = ctx.uncancellable();
            for (step, seen) in compensations.iter().rev() {
                if let Err(e) = run.action(&cleanup, step, seen).await {
                    return Err(WorkflowError::Failed(format!("compensation {} failed: {e} (after: {error})", step.id)));
                }
            }
            match error {
                WorkflowError::Cancelled => Err(WorkflowError::Cancelled),
                other => Err(WorkflowError::Compensated { cause: other.to_string() }),
            }
        }
    }
}

fn failed(step: &StepDef, what: impl std::fmt::Display) -> WorkflowError {
    WorkflowError::Failed(format!("step {}: {what}", step.id))
}

fn eval(step: &StepDef, source: &str, scope: &Value) -> Result<Value, WorkflowError> {
    let text = source.trim();
    let inner = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).unwrap_or(text);
    let parsed = Expr::parse(inner).map_err(|e| failed(step, e))?;
    parsed.eval(scope).map_err(|e| failed(step, e))
}

fn render(step: &StepDef, template: &Value, scope: &Value) -> Result<Value, WorkflowError> {
    expr::render(template, scope).map_err(|e| failed(step, e))
}

impl Run<'_> {
    fn steps<'s>(&'s self, ctx: &'s WorkflowContext, steps: &'s [StepDef], scope: &'s mut Scope, compensations: &'s mut Vec<Compensation>) -> Pin<Box<dyn Future<Output = Result<(), WorkflowError>> + 's>> {
        Box::pin(async move {
            for step in steps {
                self.step(ctx, step, scope, compensations).await?;
                ctx.set_vars(Value::Object(scope.vars.clone()));
            }
            Ok(())
        })
    }

    async fn step(&self, ctx: &WorkflowContext, step: &StepDef, scope: &mut Scope, compensations: &mut Vec<Compensation>) -> Result<(), WorkflowError> {
        let seen = scope.value(None);
        if step.is_action() {
            let result = match self.action(ctx, step, &seen).await {
                Ok(result) => result,
                Err(WorkflowError::Step { error, .. }) if step.on_error == Some(OnError::Continue) => {
                    scope.steps.insert(step.id.clone(), json!({ "error": super::context::step_error_value(&error) }));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let with_result = scope.value(Some(&result));
            scope.steps.insert(step.id.clone(), json!({ "result": result }));
            if let Some(compensate) = &step.compensate {
                compensations.push(((**compensate).clone(), with_result.clone()));
            }
            return self.assign(step, scope, &with_result);
        }
        if let Some(condition) = &step.if_ {
            let holds = eval(step, condition, &seen)?;
            let Some(holds) = holds.as_bool() else { return Err(failed(step, format!("`if` needs a boolean, got {holds}"))) };
            let branch = if holds { step.then.as_deref() } else { step.else_.as_deref() };
            scope.steps.insert(step.id.clone(), json!({ "result": holds }));
            return self.steps(ctx, branch.unwrap_or(&[]), scope, compensations).await;
        }
        if let Some(switch) = &step.switch {
            let value = eval(step, &switch.value, &seen)?;
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            let branch = switch.cases.get(&text).unwrap_or(&switch.default);
            scope.steps.insert(step.id.clone(), json!({ "result": text }));
            return self.steps(ctx, branch, scope, compensations).await;
        }
        if let Some(parallel) = &step.parallel {
            return self.parallel(ctx, step, &parallel.branches, &parallel.join, scope, compensations).await;
        }
        if let Some(each) = &step.for_each {
            let over = eval(step, &each.over, &seen)?;
            let Value::Array(items) = over else { return Err(failed(step, format!("`for_each` needs an array, got {over}"))) };
            if items.len() > each.max as usize {
                return Err(failed(step, format!("{} elements, over the loop's max of {}", items.len(), each.max)));
            }
            for (index, item) in items.into_iter().enumerate() {
                self.iterate(step)?;
                scope.locals.insert(each.as_name.clone(), item);
                scope.locals.insert("index".into(), json!(index));
                let body = ctx.branch();
                self.steps(&body, &each.steps, scope, compensations).await?;
            }
            scope.locals.remove(&each.as_name);
            scope.locals.remove("index");
            return self.assign(step, scope, &scope.value(None));
        }
        if let Some(repeat) = &step.repeat {
            let mut index = 0u32;
            loop {
                scope.locals.insert("index".into(), json!(index));
                let holds = eval(step, &repeat.while_, &scope.value(None))?;
                if holds.as_bool() != Some(true) {
                    break;
                }
                self.iterate(step)?;
                if index >= repeat.max {
                    return Err(failed(step, format!("`repeat` reached its max of {} iterations", repeat.max)));
                }
                let body = ctx.branch();
                self.steps(&body, &repeat.steps, scope, compensations).await?;
                index += 1;
            }
            scope.locals.remove("index");
            return self.assign(step, scope, &scope.value(None));
        }
        // Only `set`.
        self.assign(step, scope, &seen)
    }

    fn assign(&self, step: &StepDef, scope: &mut Scope, seen: &Value) -> Result<(), WorkflowError> {
        if let Some(set) = &step.set {
            let mut values = Vec::with_capacity(set.len());
            for (name, template) in set {
                values.push((name.clone(), render(step, template, seen)?));
            }
            scope.vars.extend(values);
        }
        Ok(())
    }

    async fn parallel(&self, ctx: &WorkflowContext, step: &StepDef, branches: &[Vec<StepDef>], join: &Join, scope: &mut Scope, compensations: &mut Vec<Compensation>) -> Result<(), WorkflowError> {
        let scopes = ctx.branches(branches.len());
        let need = match join {
            Join::Named(JoinName::All) => branches.len(),
            Join::Named(JoinName::Any) => 1,
            Join::N { n } => *n,
        };
        let futures: Vec<_> = branches
            .iter()
            .zip(scopes.iter().cloned())
            .map(|(steps, branch_ctx)| {
                let mut branch_scope = scope.clone();
                async move {
                    let mut branch_compensations = Vec::new();
                    let outcome = self.steps(&branch_ctx, steps, &mut branch_scope, &mut branch_compensations).await;
                    (outcome, branch_scope, branch_compensations)
                }
            })
            .collect();
        let results = join_n(futures, need, scopes).await;
        let mut first_error = None;
        let mut finished = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            let Some((outcome, branch_scope, branch_compensations)) = result else { continue };
            compensations.extend(branch_compensations);
            match outcome {
                Ok(()) => {
                    scope.vars.extend(branch_scope.vars);
                    scope.steps.extend(branch_scope.steps);
                    finished.push(json!(index));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        scope.steps.insert(step.id.clone(), json!({ "result": { "branches": finished } }));
        Ok(())
    }

    /// Runs an action step against the scope it saw; its result.
    async fn action(&self, ctx: &WorkflowContext, step: &StepDef, seen: &Value) -> Result<Value, WorkflowError> {
        let options = StepOptions {
            retry: step.retry.clone().or_else(|| self.definition.retry.clone()).unwrap_or_else(RetryPolicy::default),
            timeout_ms: step.timeout_ms,
            label: Some(step.id.clone()),
        };
        let command = if let Some(call) = &step.call {
            let imvu = render(step, &call.imvu, seen)?;
            let Some(imvu) = imvu.as_u64() else { return Err(failed(step, format!("`call.imvu` must give an IMVU id, got {imvu}"))) };
            Command::Call { imvu, message: render(step, &call.message, seen)? }
        } else if let Some(model) = &step.model {
            let request = match (&model.embed, &model.generate) {
                (Some(texts), _) => {
                    let texts = render(step, texts, seen)?;
                    let texts: Vec<String> = serde_json::from_value(texts).map_err(|e| failed(step, format!("`model.embed` must give a list of strings: {e}")))?;
                    ModelRequest::Embed { texts }
                }
                (None, Some(generate)) => {
                    let messages = render(step, &generate.messages, seen)?;
                    let messages: Vec<ChatTurn> = serde_json::from_value(messages).map_err(|e| failed(step, format!("`model.generate.messages` must give [{{role, content}}…]: {e}")))?;
                    let mut request = GenerateRequest::greedy(messages, generate.max_tokens);
                    request.temperature = generate.temperature;
                    request.seed = generate.seed;
                    ModelRequest::Generate(request)
                }
                (None, None) => return Err(failed(step, "a model step is `embed` or `generate`")),
            };
            Command::Model { request }
        } else if let Some(activity) = &step.activity {
            Command::Activity { name: activity.name.clone(), input: render(step, &activity.input, seen)? }
        } else if let Some(sub) = &step.workflow {
            let Some((version, definition)) = self.library.get(&sub.name) else {
                return Err(failed(step, format!("sub-workflow `{}` was not resolved when the workflow started", sub.name)));
            };
            let program = Program::Definition { definition: Box::new(definition.clone()), version: *version, library: self.library.clone() };
            Command::Child { program: Box::new(program), input: render(step, &sub.input, seen)? }
        } else if let Some(sleep) = &step.sleep_ms {
            let ms = render(step, sleep, seen)?;
            let Some(ms) = ms.as_u64() else { return Err(failed(step, format!("`sleep_ms` must give milliseconds, got {ms}"))) };
            Command::Sleep { ms }
        } else if let Some(wait) = &step.wait {
            Command::Signal { name: wait.signal.clone(), timeout_ms: wait.timeout_ms }
        } else if let Some(message) = &step.fail {
            let message = render(step, message, seen)?;
            let text = message.as_str().map_or_else(|| message.to_string(), str::to_owned);
            return Err(WorkflowError::Step { step: step.id.clone(), error: StepError { code: "failed".into(), message: text } });
        } else {
            return Err(failed(step, "not an action"));
        };
        ctx.step(command, options).await
    }
}

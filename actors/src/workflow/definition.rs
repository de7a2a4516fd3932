//! Declarative workflow definitions (JSON or YAML): the model, and validation on upload.
//!
//! ```yaml
//! name: order                       # letters, digits, `-`, `_`, `.`; 1–128
//! vars: { total: 0 }                # variables and their first values
//! timeout_ms: 600000                # the whole workflow (optional)
//! retry: { max_attempts: 5 }        # default retry policy of its steps (optional)
//! steps:
//!   - id: reserve                   # unique in the definition
//!     call: { imvu: "${input.stock}", message: { op: add, n: -1 } }
//!     timeout_ms: 5000              # per attempt
//!     retry: { max_attempts: 3, initial_interval_ms: 200 }
//!     compensate: { id: unreserve, call: { imvu: "${input.stock}", message: { op: add, n: 1 } } }
//!     set: { total: "${vars.total + result}" }
//!   - id: approve
//!     wait: { signal: approval, timeout_ms: 86400000 }
//!   - id: decide
//!     if: "${steps.approve.result.signal.ok == true}"
//!     then: [ { id: ship, activity: { name: echo, input: "${input}" } } ]
//!     else: [ { id: refuse, fail: "not approved" } ]
//! output: "${vars.total}"
//! ```
//!
//! A step has an `id` and exactly one of:
//! - actions: `call` (`imvu`, `message`: ask an IMVU of the tenant), `model` (`embed`: texts,
//!   or `generate`: `messages`, `max_tokens`, `temperature`, `seed`), `activity` (`name`,
//!   `input`), `workflow` (`name`, `input`: a sub-workflow, another definition of the tenant,
//!   at its latest version when the parent started), `sleep_ms`, `wait` (`signal`,
//!   `timeout_ms`), `fail` (a message: fails the workflow);
//! - blocks: `if` (with `then`, `else`), `switch` (`value`, `cases`, `default`), `parallel`
//!   (`branches`, `join`: `all`, `any` or `{n: k}`), `for_each` (`over`, `as`, `max`,
//!   `steps`), `repeat` (`while`, `max`, `steps`);
//! - or only `set`: assignments.
//!
//! Actions may add `retry`, `timeout_ms`, `compensate` (an action step run, in reverse order,
//! when a later step fails for good), `on_error: continue` (the failure is recorded in
//! `steps.<id>.error` and the workflow goes on) and `set` (assignments after the step, with
//! `result` bound to its result).
//!
//! Strings hold expressions (`${…}`, see [`super::expr`]) over `input`, `vars`,
//! `steps.<id>.result` / `.error`, `result` (in a step's `set`), and a loop's `as` name and
//! `index`. Validation refuses, with the path of the fault: unknown keys and step kinds,
//! duplicate ids, unbound variables, loops without a `max` (or one over
//! [`LOOP_ITERATIONS_MAX`]), known type mismatches (a condition that is not a boolean, a loop
//! over something that is not an array, a number expected and a string given), unknown
//! activities and sub-workflows, and definitions over [`DEFINITION_BYTES_MAX`],
//! [`DEFINITION_STEPS_MAX`] steps or [`DEFINITION_DEPTH_MAX`] levels.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::expr::{self, Expr, Type};
use super::journal::RetryPolicy;

/// A definition's JSON is at most this many bytes.
pub const DEFINITION_BYTES_MAX: usize = 256 * 1024;
/// Steps in a definition, at every level, at most.
pub const DEFINITION_STEPS_MAX: usize = 1_000;
/// Nesting of blocks at most.
pub const DEFINITION_DEPTH_MAX: usize = 16;
/// A loop's `max` at most.
pub const LOOP_ITERATIONS_MAX: u32 = 10_000;
/// Branches of a `parallel` at most.
pub const PARALLEL_BRANCHES_MAX: usize = 1_000;

/// A workflow definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Variables and their first values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Value>,
    /// The steps.
    pub steps: Vec<StepDef>,
    /// The result (a template; default: the variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Cancel (and compensate) if not finished within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Default retry policy of the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// `call`: ask an IMVU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDef {
    /// The IMVU's id (a number or a template).
    pub imvu: Value,
    /// The message (a template).
    pub message: Value,
}

/// `model`: `embed` or `generate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    /// Texts to embed (a template giving an array of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<Value>,
    /// A generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<GenerateDef>,
}

/// `model.generate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateDef {
    /// The conversation: `[{role, content}…]` (a template).
    pub messages: Value,
    /// Tokens to generate at most.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// 0: greedy.
    #[serde(default)]
    pub temperature: f64,
    /// The sampler's seed.
    #[serde(default)]
    pub seed: u64,
}

fn default_max_tokens() -> u32 {
    64
}

/// `activity`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityDef {
    /// The registered name.
    pub name: String,
    /// The input (a template).
    #[serde(default)]
    pub input: Value,
}

/// `workflow`: a sub-workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubDef {
    /// The definition's name (the tenant's).
    pub name: String,
    /// The input (a template).
    #[serde(default)]
    pub input: Value,
}

/// `wait`: for a signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitDef {
    /// The signal's name.
    pub signal: String,
    /// Give up after this long (the result is then `{"timed_out": true}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `switch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchDef {
    /// The value compared (an expression).
    pub value: String,
    /// Steps by the value's text (a string as is, others as JSON).
    pub cases: BTreeMap<String, Vec<StepDef>>,
    /// Steps when no case matches.
    #[serde(default)]
    pub default: Vec<StepDef>,
}

/// How a `parallel` block joins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Join {
    /// `all` or `any`.
    Named(JoinName),
    /// `{n: k}`: the first k.
    N {
        /// How many branches.
        n: usize,
    },
}

/// `all` / `any`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinName {
    /// Every branch.
    All,
    /// The first branch.
    Any,
}

impl Default for Join {
    fn default() -> Self {
        Self::Named(JoinName::All)
    }
}

/// `parallel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelDef {
    /// The branches, each a list of steps.
    pub branches: Vec<Vec<StepDef>>,
    /// When the block is done.
    #[serde(default)]
    pub join: Join,
}

/// `for_each`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForEachDef {
    /// The array (an expression).
    pub over: String,
    /// The element's name (default `item`); `index` is its position.
    #[serde(default = "default_item", rename = "as")]
    pub as_name: String,
    /// Iterations at most (required: no unbounded loops).
    pub max: u32,
    /// The body.
    pub steps: Vec<StepDef>,
}

fn default_item() -> String {
    "item".into()
}

/// `repeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatDef {
    /// Runs the body while this holds (an expression, checked before each iteration).
    #[serde(rename = "while")]
    pub while_: String,
    /// Iterations at most (required).
    pub max: u32,
    /// The body.
    pub steps: Vec<StepDef>,
}

/// What a failed action does to the workflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail (compensate, or dead-letter).
    #[default]
    Fail,
    /// Record the error in `steps.<id>.error` and go on.
    Continue,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct StepDef {
    /// Unique in the definition.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<SubDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<Value>,
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub if_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Vec<StepDef>>,
    #[serde(default, rename = "else", skip_serializing_if = "Option::is_none")]
    pub else_: Option<Vec<StepDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEachDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatDef>,
    /// Assignments: `name: template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Box<StepDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// The kinds a step may be, by key.
const ACTIONS: [&str; 7] = ["call", "model", "activity", "workflow", "sleep_ms", "wait", "fail"];
const BLOCKS: [&str; 5] = ["if", "switch", "parallel", "for_each", "repeat"];
const STEP_KEYS: [&str; 8] = ["id", "set", "retry", "timeout_ms", "compensate", "on_error", "then", "else"];

impl StepDef {
    /// The step's kind: one of the action or block keys, or `set`.
    pub fn kind(&self) -> &'static str {
        match self {
            s if s.call.is_some() => "call",
            s if s.model.is_some() => "model",
            s if s.activity.is_some() => "activity",
            s if s.workflow.is_some() => "workflow",
            s if s.sleep_ms.is_some() => "sleep_ms",
            s if s.wait.is_some() => "wait",
            s if s.fail.is_some() => "fail",
            s if s.if_.is_some() => "if",
            s if s.switch.is_some() => "switch",
            s if s.parallel.is_some() => "parallel",
            s if s.for_each.is_some() => "for_each",
            s if s.repeat.is_some() => "repeat",
            _ => "set",
        }
    }

    /// Whether it is an action (runs one journaled step).
    pub fn is_action(&self) -> bool {
        ACTIONS.contains(&self.kind())
    }
}

/// Why a definition is refused: where, and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DefinitionError {
    /// JSON pointer to the fault (`/steps/2/call/imvu`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn fault(path: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError { path: if path.is_empty() { "/".into() } else { path.into() }, message: message.into() }
}

/// What validation needs to know of the world.
pub struct Known<'a> {
    /// Whether an activity of this name is registered.
    pub activity: &'a dyn Fn(&str) -> bool,
    /// Whether the tenant has a definition of this name (a sub-workflow; its own name counts).
    pub workflow: &'a dyn Fn(&str) -> bool,
}

/// Parses and validates a definition given as JSON.
pub fn parse_json(bytes: &[u8], known: &Known<'_>) -> Result<Definition, DefinitionError> {
    if bytes.len() > DEFINITION_BYTES_MAX {
        return Err(fault("", format!("the definition is {} bytes; at most {DEFINITION_BYTES_MAX}", bytes.len())));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| fault("", format!("not JSON: {e}")))?;
    parse_value(&value, known)
}

/// Parses and validates a definition already read as a JSON value (from JSON or YAML).
pub fn parse_value(value: &Value, known: &Known<'_>) -> Result<Definition, DefinitionError> {
    let size = serde_json::to_vec(value).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > DEFINITION_BYTES_MAX {
        return Err(fault("", format!("the definition is {size} bytes of JSON; at most {DEFINITION_BYTES_MAX}")));
    }
    check_shape(value)?;
    let definition: Definition = serde_json::from_value(value.clone()).map_err(|e| fault("", e.to_string()))?;
    validate(&definition, known)?;
    Ok(definition)
}

/// Keys and kinds, with paths, before serde reads the typed model (whose errors name no path).
fn check_shape(value: &Value) -> Result<(), DefinitionError> {
    let Some(object) = value.as_object() else { return Err(fault("", "a definition is an object")) };
    for key in object.keys() {
        if !["name", "description", "vars", "steps", "output", "timeout_ms", "retry"].contains(&key.as_str()) {
            return Err(fault(&format!("/{key}"), format!("unknown key `{key}`")));
        }
    }
    match object.get("steps") {
        Some(Value::Array(steps)) => check_steps(steps, "/steps", 1),
        Some(_) => Err(fault("/steps", "`steps` is a list of steps")),
        None => Err(fault("/steps", "a definition needs `steps`")),
    }
}

fn check_steps(steps: &[Value], path: &str, depth: usize) -> Result<(), DefinitionError> {
    if depth > DEFINITION_DEPTH_MAX {
        return Err(fault(path, format!("blocks nest at most {DEFINITION_DEPTH_MAX} deep")));
    }
    for (i, step) in steps.iter().enumerate() {
        check_step(step, &format!("{path}/{i}"), depth)?;
    }
    Ok(())
}

fn list<'a>(value: Option<&'a Value>, path: &str) -> Result<&'a [Value], DefinitionError> {
    match value {
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(fault(path, "a list of steps")),
        None => Ok(&[]),
    }
}

fn check_step(step: &Value, path: &str, depth: usize) -> Result<(), DefinitionError> {
    let Some(object) = step.as_object() else { return Err(fault(path, "a step is an object")) };
    let mut kinds = Vec::new();
    for key in object.keys() {
        if ACTIONS.contains(&key.as_str()) || BLOCKS.contains(&key.as_str()) {
            kinds.push(key.as_str());
        } else if !STEP_KEYS.contains(&key.as_str()) {
            return Err(fault(&format!("{path}/{key}"), format!("unknown step key `{key}` (step kinds: {}, {}, or only `set`)", ACTIONS.join(", "), BLOCKS.join(", "))));
        }
    }
    if !object.contains_key("id") {
        return Err(fault(path, "a step needs an `id`"));
    }
    if kinds.len() > 1 {
        return Err(fault(path, format!("a step is one kind; this one is {}", kinds.join(" and "))));
    }
    let kind = kinds.first().copied().unwrap_or("set");
    if kind == "set" && !object.contains_key("set") {
        return Err(fault(path, format!("a step needs a kind: one of {}, {}, or `set`", ACTIONS.join(", "), BLOCKS.join(", "))));
    }
    let is_action = ACTIONS.contains(&kind);
    for key in ["retry", "timeout_ms", "compensate", "on_error"] {
        if object.contains_key(key) && !is_action {
            return Err(fault(&format!("{path}/{key}"), format!("`{key}` belongs to action steps, not to `{kind}`")));
        }
    }
    if (object.contains_key("then") || object.contains_key("else")) && kind != "if" {
        return Err(fault(path, "`then` and `else` belong to `if` steps"));
    }
    if let Some(compensate) = object.get("compensate") {
        let inner = format!("{path}/compensate");
        check_step(compensate, &inner, depth + 1)?;
        let is_action = compensate.as_object().is_some_and(|o| o.keys().any(|k| ACTIONS.contains(&k.as_str()) && k != "fail"));
        if !is_action || compensate.get("compensate").is_some() {
            return Err(fault(&inner, "a compensation is one action step (call, model, activity, workflow, sleep_ms, wait) without its own compensation"));
        }
    }
    match kind {
        "if" => {
            check_steps(list(object.get("then"), &format!("{path}/then"))?, &format!("{path}/then"), depth + 1)?;
            check_steps(list(object.get("else"), &format!("{path}/else"))?, &format!("{path}/else"), depth + 1)?;
        }
        "switch" => {
            let switch = &object["switch"];
            if let Some(cases) = switch.get("cases").and_then(Value::as_object) {
                for (case, steps) in cases {
                    let inner = format!("{path}/switch/cases/{case}");
                    check_steps(list(Some(steps), &inner)?, &inner, depth + 1)?;
                }
            }
            let inner = format!("{path}/switch/default");
            check_steps(list(switch.get("default"), &inner)?, &inner, depth + 1)?;
        }
        "parallel" => {
            let branches = object["parallel"].get("branches").and_then(Value::as_array).ok_or_else(|| fault(&format!("{path}/parallel/branches"), "`branches` is a list of lists of steps"))?;
            for (b, branch) in branches.iter().enumerate() {
                let inner = format!("{path}/parallel/branches/{b}");
                check_steps(list(Some(branch), &inner)?, &inner, depth + 1)?;
            }
        }
        "for_each" | "repeat" => {
            let inner = format!("{path}/{kind}/steps");
            check_steps(list(object[kind].get("steps"), &inner)?, &inner, depth + 1)?;
            if object[kind].get("max").is_none() {
                return Err(fault(&format!("{path}/{kind}/max"), format!("a loop needs `max` (1..={LOOP_ITERATIONS_MAX}): no unbounded loops")));
            }
        }
        _ => {}
    }
    // The typed read, here, for its error to carry the step's path.
    serde_json::from_value::<StepDef>(step.clone()).map(|_| ()).map_err(|e| fault(path, e.to_string()))
}

/// Names bound where an expression is read.
#[derive(Clone, Default)]
struct Bound {
    /// Loop variables in reach (`item`, `index`, …).
    locals: BTreeSet<String>,
    /// Whether `result` is bound (a step's `set`, `compensate`).
    result: bool,
}

struct Checker<'a> {
    known: &'a Known<'a>,
    ids: BTreeSet<String>,
    vars: BTreeSet<String>,
    steps: usize,
}

/// Checks a parsed definition: names, ids, bindings, types, limits.
pub fn validate(definition: &Definition, known: &Known<'_>) -> Result<(), DefinitionError> {
    check_name(&definition.name).map_err(|m| fault("/name", m))?;
    let mut vars: BTreeSet<String> = definition.vars.keys().cloned().collect();
    let mut ids = BTreeSet::new();
    collect(&definition.steps, "/steps", &mut ids, &mut vars)?;
    if let Some(retry) = &definition.retry {
        if let Some(problem) = retry.problem() {
            return Err(fault("/retry", problem));
        }
    }
    let mut checker = Checker { known, ids, vars, steps: 0 };
    checker.steps(&definition.steps, "/steps", &Bound::default())?;
    if let Some(output) = &definition.output {
        checker.template(output, "/output", &Bound::default(), Type::Any)?;
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("names are 1–128 letters, digits, `-`, `_` or `.`; got {name:?}"))
    }
}

/// Every step id (unique) and every variable assigned.
fn collect(steps: &[StepDef], path: &str, ids: &mut BTreeSet<String>, vars: &mut BTreeSet<String>) -> Result<(), DefinitionError> {
    for (i, step) in steps.iter().enumerate() {
        let path = format!("{path}/{i}");
        check_name(&step.id).map_err(|m| fault(&format!("{path}/id"), m))?;
        if !ids.insert(step.id.clone()) {
            return Err(fault(&format!("{path}/id"), format!("step id `{}` is used twice", step.id)));
        }
        if let Some(set) = &step.set {
            vars.extend(set.keys().cloned());
        }
        if let Some(compensate) = &step.compensate {
            collect(std::slice::from_ref(&**compensate), &format!("{path}/compensate"), ids, vars)?;
        }
        for (inner, steps) in children(step, &path) {
            collect(steps, &inner, ids, vars)?;
        }
    }
    Ok(())
}

/// The nested step lists of a block, with their paths.
fn children<'a>(step: &'a StepDef, path: &str) -> Vec<(String, &'a [StepDef])> {
    let mut out = Vec::new();
    if let Some(then) = &step.then {
        out.push((format!("{path}/then"), then.as_slice()));
    }
    if let Some(otherwise) = &step.else_ {
        out.push((format!("{path}/else"), otherwise.as_slice()));
    }
    if let Some(switch) = &step.switch {
        for (case, steps) in &switch.cases {
            out.push((format!("{path}/switch/cases/{case}"), steps.as_slice()));
        }
        out.push((format!("{path}/switch/default"), switch.default.as_slice()));
    }
    if let Some(parallel) = &step.parallel {
        for (b, branch) in parallel.branches.iter().enumerate() {
            out.push((format!("{path}/parallel/branches/{b}"), branch.as_slice()));
        }
    }
    if let Some(each) = &step.for_each {
        out.push((format!("{path}/for_each/steps"), each.steps.as_slice()));
    }
    if let Some(repeat) = &step.repeat {
        out.push((format!("{path}/repeat/steps"), repeat.steps.as_slice()));
    }
    out
}

fn root_type(root: &str) -> Type {
    match root {
        "input" | "result" | "item" => Type::Any,
        "vars" | "steps" => Type::Object,
        "index" => Type::Number,
        _ => Type::Any,
    }
}

impl Checker<'_> {
    fn steps(&mut self, steps: &[StepDef], path: &str, bound: &Bound) -> Result<(), DefinitionError> {
        for (i, step) in steps.iter().enumerate() {
            self.step(step, &format!("{path}/{i}"), bound)?;
        }
        Ok(())
    }

    fn step(&mut self, step: &StepDef, path: &str, bound: &Bound) -> Result<(), DefinitionError> {
        self.steps += 1;
        if self.steps > DEFINITION_STEPS_MAX {
            return Err(fault(path, format!("a definition has at most {DEFINITION_STEPS_MAX} steps")));
        }
        if let Some(retry) = &step.retry {
            if let Some(problem) = retry.problem() {
                return Err(fault(&format!("{path}/retry"), problem));
            }
        }
        if let Some(call) = &step.call {
            self.template(&call.imvu, &format!("{path}/call/imvu"), bound, Type::Number)?;
            if !(call.imvu.is_string() || call.imvu.as_u64().is_some()) {
                return Err(fault(&format!("{path}/call/imvu"), "an IMVU id: a number, or a template giving one"));
            }
            self.template(&call.message, &format!("{path}/call/message"), bound, Type::Any)?;
        }
        if let Some(model) = &step.model {
            match (&model.embed, &model.generate) {
                (Some(texts), None) => self.template(texts, &format!("{path}/model/embed"), bound, Type::Array)?,
                (None, Some(generate)) => self.template(&generate.messages, &format!("{path}/model/generate/messages"), bound, Type::Array)?,
                _ => return Err(fault(&format!("{path}/model"), "a model step is `embed` or `generate`, one of them")),
            }
        }
        if let Some(activity) = &step.activity {
            if !(self.known.activity)(&activity.name) {
                return Err(fault(&format!("{path}/activity/name"), format!("no activity named `{}` is registered", activity.name)));
            }
            self.template(&activity.input, &format!("{path}/activity/input"), bound, Type::Any)?;
        }
        if let Some(sub) = &step.workflow {
            if !(self.known.workflow)(&sub.name) {
                return Err(fault(&format!("{path}/workflow/name"), format!("the tenant has no workflow definition named `{}`", sub.name)));
            }
            self.template(&sub.input, &format!("{path}/workflow/input"), bound, Type::Any)?;
        }
        if let Some(sleep) = &step.sleep_ms {
            if !(sleep.is_string() || sleep.as_u64().is_some()) {
                return Err(fault(&format!("{path}/sleep_ms"), "milliseconds: a number, or a template giving one"));
            }
            self.template(sleep, &format!("{path}/sleep_ms"), bound, Type::Number)?;
        }
        if let Some(message) = &step.fail {
            self.template(message, &format!("{path}/fail"), bound, Type::Any)?;
        }
        if let Some(condition) = &step.if_ {
            self.expression(condition, &format!("{path}/if"), bound, Type::Bool)?;
        }
        if let Some(switch) = &step.switch {
            self.expression(&switch.value, &format!("{path}/switch/value"), bound, Type::Any)?;
        }
        if let Some(parallel) = &step.parallel {
            let branches = parallel.branches.len();
            if branches == 0 || branches > PARALLEL_BRANCHES_MAX {
                return Err(fault(&format!("{path}/parallel/branches"), format!("1..={PARALLEL_BRANCHES_MAX} branches")));
            }
            if let Join::N { n } = parallel.join {
                if n == 0 || n > branches {
                    return Err(fault(&format!("{path}/parallel/join"), format!("`n` must be 1..={branches} (the branches)")));
                }
            }
        }
        let mut inner = bound.clone();
        if let Some(each) = &step.for_each {
            if each.max == 0 || each.max > LOOP_ITERATIONS_MAX {
                return Err(fault(&format!("{path}/for_each/max"), format!("`max` is 1..={LOOP_ITERATIONS_MAX}")));
            }
            check_name(&each.as_name).map_err(|m| fault(&format!("{path}/for_each/as"), m))?;
            self.expression(&each.over, &format!("{path}/for_each/over"), bound, Type::Array)?;
            inner.locals.insert(each.as_name.clone());
            inner.locals.insert("index".into());
        }
        if let Some(repeat) = &step.repeat {
            if repeat.max == 0 || repeat.max > LOOP_ITERATIONS_MAX {
                return Err(fault(&format!("{path}/repeat/max"), format!("`max` is 1..={LOOP_ITERATIONS_MAX}")));
            }
            self.expression(&repeat.while_, &format!("{path}/repeat/while"), bound, Type::Bool)?;
            inner.locals.insert("index".into());
        }
        for (child_path, steps) in children(step, path) {
            self.steps(steps, &child_path, &inner)?;
        }
        let with_result = Bound { result: step.is_action(), ..bound.clone() };
        if let Some(set) = &step.set {
            for (name, value) in set {
                self.template(value, &format!("{path}/set/{name}"), &with_result, Type::Any)?;
            }
        }
        if let Some(compensate) = &step.compensate {
            self.step(compensate, &format!("{path}/compensate"), &with_result)?;
        }
        Ok(())
    }

    fn expression(&self, source: &str, path: &str, bound: &Bound, want: Type) -> Result<(), DefinitionError> {
        let text = source.trim();
        let inner = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).unwrap_or(text);
        let expr = Expr::parse(inner).map_err(|e| fault(path, format!("expression: {e}")))?;
        self.check_expr(&expr, path, bound, want)
    }

    fn template(&self, template: &Value, path: &str, bound: &Bound, want: Type) -> Result<(), DefinitionError> {
        let parsed = expr::parse_template(template).map_err(|(inner, e)| fault(&format!("{path}{inner}"), format!("expression: {e}")))?;
        // A whole-string template gives its expression's type; anything else is what it is.
        let whole = template.as_str().is_some_and(|s| s.trim_start().starts_with("${") && parsed.len() == 1);
        for (inner, expr) in &parsed {
            let want = if whole { want } else { Type::Any };
            self.check_expr(expr, &format!("{path}{inner}"), bound, want)?;
        }
        if !whole && !parsed.is_empty() && template.is_string() && matches!(want, Type::Number | Type::Array | Type::Bool) {
            return Err(fault(path, format!("expected a {want:?} here; text with `${{…}}` inside is a string").to_lowercase()));
        }
        Ok(())
    }

    fn check_expr(&self, expr: &Expr, path: &str, bound: &Bound, want: Type) -> Result<(), DefinitionError> {
        for root in expr.roots() {
            let ok = match root.as_str() {
                "input" | "vars" | "steps" => true,
                "result" => bound.result,
                other => bound.locals.contains(other),
            };
            if !ok {
                let hint = if root == "result" { " (`result` is bound in an action's `set` and `compensate`)" } else { "" };
                return Err(fault(path, format!("unbound variable `{root}`{hint}")));
            }
        }
        for var in expr.fields_of("vars") {
            if !self.vars.contains(&var) {
                return Err(fault(path, format!("unbound variable `vars.{var}`: declare it in `vars` or assign it with `set`")));
            }
        }
        for id in expr.fields_of("steps") {
            if !self.ids.contains(&id) {
                return Err(fault(path, format!("no step has the id `{id}`")));
            }
        }
        let types = |root: &str| root_type(root);
        if let Some(problem) = expr.type_error(&types) {
            return Err(fault(path, format!("type mismatch: {problem}")));
        }
        let got = expr.static_type(&types);
        if want != Type::Any && got != Type::Any && got != want {
            return Err(fault(path, format!("type mismatch: expected {want:?}, the expression gives {got:?}").to_lowercase()));
        }
        Ok(())
    }
}

/// Every sub-workflow name a definition uses.
pub fn sub_workflows(definition: &Definition) -> BTreeSet<String> {
    fn walk(steps: &[StepDef], out: &mut BTreeSet<String>) {
        for step in steps {
            if let Some(sub) = &step.workflow {
                out.insert(sub.name.clone());
            }
            if let Some(compensate) = &step.compensate {
                walk(std::slice::from_ref(&**compensate), out);
            }
            for (_, steps) in children(step, "") {
                walk(steps, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&definition.steps, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn known_activity(name: &str) -> bool {
        ["echo", "fail"].contains(&name)
    }

    fn known_workflow(name: &str) -> bool {
        name == "child"
    }

    /// Validates `definition`; `Err` is the refusal's text (path: message).
    fn check(definition: Value) -> Result<Definition, String> {
        let known = Known { activity: &known_activity, workflow: &known_workflow };
        parse_value(&definition, &known).map_err(|e| e.to_string())
    }

    fn refused(definition: Value, path: &str, words: &str) {
        match check(definition) {
            Ok(_) => panic!("accepted; expected a refusal at {path}"),
            Err(e) => assert!(e.starts_with(&format!("{path}: ")) && e.contains(words), "expected {path}: …{words}…, got {e}"),
        }
    }

    #[test]
    fn a_definition_with_every_kind_of_step_is_accepted() {
        let definition = json!({"name": "all", "vars": {"n": 0, "items": []}, "timeout_ms": 60_000, "retry": {"max_attempts": 5}, "steps": [
            {"id": "a", "call": {"imvu": "${input.counter}", "message": {"op": "add", "n": "${vars.n + 1}"}}, "timeout_ms": 100,
             "compensate": {"id": "undo_a", "call": {"imvu": "${input.counter}", "message": {"op": "add", "n": "${0 - result}"}}}, "set": {"n": "${result}"}},
            {"id": "m", "model": {"embed": "${[input.text]}"}},
            {"id": "g", "model": {"generate": {"messages": [{"role": "user", "content": "${input.text}"}], "max_tokens": 8}}},
            {"id": "e", "activity": {"name": "echo", "input": {"x": "${steps.a.result}"}}, "on_error": "continue"},
            {"id": "c", "workflow": {"name": "child", "input": "${input}"}},
            {"id": "s", "sleep_ms": 10},
            {"id": "w", "wait": {"signal": "go", "timeout_ms": 1_000}},
            {"id": "i", "if": "${vars.n > 1}", "then": [{"id": "t", "set": {"n": 2}}], "else": [{"id": "f", "fail": "too small: ${vars.n}"}]},
            {"id": "sw", "switch": {"value": "${input.kind}", "cases": {"x": [{"id": "sx", "sleep_ms": 1}]}, "default": []}},
            {"id": "p", "parallel": {"join": {"n": 1}, "branches": [[{"id": "p1", "sleep_ms": 1}], [{"id": "p2", "sleep_ms": 2}]]}},
            {"id": "fe", "for_each": {"over": "${vars.items}", "as": "it", "max": 10, "steps": [{"id": "body", "set": {"n": "${vars.n + it + index}"}}]}},
            {"id": "r", "repeat": {"while": "${vars.n < 5}", "max": 10, "steps": [{"id": "inc", "set": {"n": "${vars.n + 1}"}}]}}
        ], "output": "${vars.n}"});
        let parsed = check(definition).expect("valid");
        assert_eq!(parsed.steps.len(), 12);
        assert_eq!(sub_workflows(&parsed).into_iter().collect::<Vec<_>>(), vec!["child".to_owned()]);
    }

    #[test]
    fn refusals_name_the_path_and_the_fault() {
        refused(json!({"name": "x", "steps": [{"id": "a", "cal": {}}]}), "/steps/0/cal", "unknown step key");
        refused(json!({"name": "x", "steps": [{"id": "a", "sleep_ms": 1, "wait": {"signal": "s"}}]}), "/steps/0", "one kind");
        refused(json!({"name": "x", "steps": [{"sleep_ms": 1}]}), "/steps/0", "needs an `id`");
        refused(json!({"name": "x", "steps": [{"id": "a"}]}), "/steps/0", "needs a kind");
        refused(json!({"name": "x", "steps": [{"id": "a", "sleep_ms": 1}, {"id": "a", "sleep_ms": 1}]}), "/steps/1/id", "used twice");
        refused(json!({"name": "x", "steps": [{"id": "a", "set": {"y": "${vars.nope}"}}]}), "/steps/0/set/y", "unbound variable `vars.nope`");
        refused(json!({"name": "x", "steps": [{"id": "a", "set": {"y": "${item}"}}]}), "/steps/0/set/y", "unbound variable `item`");
        refused(json!({"name": "x", "steps": [{"id": "a", "set": {"y": "${steps.b.result}"}}]}), "/steps/0/set/y", "no step has the id `b`");
        refused(json!({"name": "x", "steps": [{"id": "a", "repeat": {"while": "${true}", "steps": []}}]}), "/steps/0/repeat/max", "no unbounded loops");
        refused(json!({"name": "x", "steps": [{"id": "a", "for_each": {"over": "${[]}", "max": 20_000, "steps": []}}]}), "/steps/0/for_each/max", "1..=10000");
        refused(json!({"name": "x", "steps": [{"id": "a", "if": "${1 + 1}", "then": []}]}), "/steps/0/if", "expected bool");
        refused(json!({"name": "x", "steps": [{"id": "a", "for_each": {"over": "${'text'}", "max": 2, "steps": []}}]}), "/steps/0/for_each/over", "expected array");
        refused(json!({"name": "x", "steps": [{"id": "a", "sleep_ms": "${'a' - 1}"}]}), "/steps/0/sleep_ms", "type mismatch");
        refused(json!({"name": "x", "steps": [{"id": "a", "activity": {"name": "nope"}}]}), "/steps/0/activity/name", "no activity named");
        refused(json!({"name": "x", "steps": [{"id": "a", "workflow": {"name": "nope"}}]}), "/steps/0/workflow/name", "no workflow definition");
        refused(json!({"name": "x", "steps": [{"id": "a", "set": {"y": 1}, "retry": {}}]}), "/steps/0/retry", "belongs to action steps");
        refused(json!({"name": "x", "steps": [{"id": "a", "sleep_ms": 1, "retry": {"max_attempts": 0}}]}), "/steps/0/retry", "max_attempts");
        refused(json!({"name": "x", "steps": [{"id": "a", "sleep_ms": 1, "compensate": {"id": "b", "if": "${true}", "then": []}}]}), "/steps/0/compensate", "one action step");
        refused(json!({"name": "x y", "steps": []}), "/name", "names are");
        refused(json!({"name": "x", "steps": [], "extra": 1}), "/extra", "unknown key");
        refused(json!({"name": "x", "steps": [{"id": "p", "parallel": {"join": {"n": 3}, "branches": [[], []]}}]}), "/steps/0/parallel/join", "`n` must be");
    }

    #[test]
    fn too_large_too_deep_and_too_many_steps_are_refused() {
        let big = "x".repeat(DEFINITION_BYTES_MAX);
        refused(json!({"name": "x", "description": big, "steps": []}), "/", "at most");
        let mut nested = json!([{"id": "leaf", "sleep_ms": 1}]);
        for depth in 0..=DEFINITION_DEPTH_MAX {
            nested = json!([{"id": format!("if{depth}"), "if": "${true}", "then": nested}]);
        }
        match check(json!({"name": "x", "steps": nested})) {
            Ok(_) => panic!("accepted a definition nested past the limit"),
            Err(e) => assert!(e.contains("nest at most"), "{e}"),
        }
        let many: Vec<Value> = (0..=DEFINITION_STEPS_MAX).map(|i| json!({"id": format!("s{i}"), "sleep_ms": 1})).collect();
        match check(json!({"name": "x", "steps": many})) {
            Ok(_) => panic!("accepted too many steps"),
            Err(e) => assert!(e.contains("at most 1000 steps"), "{e}"),
        }
    }

    #[test]
    fn a_definition_survives_its_own_export() {
        let definition = check(json!({"name": "round", "vars": {"n": 1}, "steps": [{"id": "a", "sleep_ms": 5, "set": {"n": 2}}], "output": "${vars.n}"})).expect("valid");
        let exported = serde_json::to_value(&definition).expect("serialises");
        assert_eq!(check(exported).expect("valid again"), definition);
    }
}

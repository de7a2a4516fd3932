//! The engine driven directly as an IMVU behaviour: a small world answers its asks, model
//! requests and activities, fires its timers, and crashes it (a reload from its last state).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::imvu::{Context, Imvu, Outgoing};
use crate::ids::{ImvuId, ImvuKey, TenantId};
use crate::ActorError;

/// A workflow instance and the world around it.
struct World {
    kind: Workflows,
    state: WorkflowState,
    key: ImvuKey,
    now_ms: u64,
    /// Asks, model requests and activities in flight: number → what.
    pending: BTreeMap<u64, Outgoing>,
    /// Timers: number → due.
    timers: BTreeMap<u64, u64>,
    /// Children created: number → (key json).
    next_number: u64,
    /// The IMVU `counter` the workflows call: its total, and each `add` applied, in order.
    counter: i64,
    applied: Vec<i64>,
    /// Asks answered with an error this many times first.
    failures_left: u32,
    /// Notices to watchers raised so far.
    notified: u32,
}

impl World {
    fn new(kind: Workflows) -> Self {
        let key = ImvuKey { tenant: TenantId::new("t").expect("valid"), id: ImvuId(100) };
        Self { kind, state: WorkflowState::default(), key, now_ms: 1_000_000, pending: BTreeMap::new(), timers: BTreeMap::new(), next_number: 0, counter: 0, applied: Vec::new(), failures_left: 0, notified: 0 }
    }

    fn with_ctx<R>(&mut self, f: impl FnOnce(&Workflows, &mut WorkflowState, &mut Context<'_>) -> R) -> R {
        let key = self.key;
        let mut ctx = Context::for_test(&key, self.now_ms);
        ctx.next_number = self.next_number;
        let out = f(&self.kind, &mut self.state, &mut ctx);
        self.next_number = ctx.next_number;
        for outgoing in ctx.outgoing {
            match outgoing {
                Outgoing::Timer { timer_id, after_ms } => {
                    self.timers.insert(timer_id, self.now_ms + after_ms);
                }
                Outgoing::Send { correlation: None, .. } => {}
                Outgoing::Notify => self.notified += 1,
                Outgoing::Send { correlation: Some(n), .. } | Outgoing::CreateChild { correlation: n, .. } | Outgoing::Model { correlation: n, .. } | Outgoing::Activity { correlation: n, .. } => {
                    self.pending.insert(n, outgoing);
                }
            }
        }
        out
    }

    fn send(&mut self, msg: Value) -> Value {
        let msg: WorkflowMsg = serde_json::from_value(msg).expect("a workflow message");
        self.with_ctx(|kind, state, ctx| kind.handle(state, msg, ctx))
    }

    fn start(&mut self, program: Program, input: Value) -> Value {
        self.send(json!({ "op": "start", "program": program, "input": input }))
    }

    /// Answers everything in flight, in number order.
    fn answer_all(&mut self) {
        while let Some((n, outgoing)) = self.pending.pop_first() {
            let answer = match outgoing {
                Outgoing::Send { msg, .. } => {
                    let (once, msg) = crate::once::split(msg).expect("an envelope");
                    assert!(once.is_some(), "workflow calls are idempotent asks");
                    if self.failures_left > 0 {
                        self.failures_left -= 1;
                        Err(ActorError::Unavailable("the owner moves".into()))
                    } else {
                        let add = msg.get("n").and_then(Value::as_i64).unwrap_or(0);
                        self.counter += add;
                        self.applied.push(add);
                        Ok(json!(self.counter))
                    }
                }
                Outgoing::Activity { name, input, .. } if name == "fail" => Err(ActorError::Failed(input.to_string())),
                Outgoing::Activity { input, .. } => Ok(input),
                Outgoing::Model { .. } => Ok(json!({ "text": "hi" })),
                Outgoing::CreateChild { .. } | Outgoing::Timer { .. } | Outgoing::Notify => Err(ActorError::Unavailable("not in this world".into())),
            };
            self.with_ctx(|kind, state, ctx| kind.on_reply(state, n, answer, ctx));
        }
    }

    /// Advances time to the next timer and fires every timer due.
    fn tick(&mut self) -> bool {
        let Some(due) = self.timers.values().min().copied() else { return false };
        self.now_ms = self.now_ms.max(due);
        let fired: Vec<u64> = self.timers.iter().filter(|(_, d)| **d <= self.now_ms).map(|(n, _)| *n).collect();
        for n in fired {
            self.timers.remove(&n);
            self.with_ctx(|kind, state, ctx| kind.on_timer(state, n, ctx));
        }
        true
    }

    /// Runs until nothing is in flight and no timer is set.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            self.answer_all();
            if !self.tick() && self.pending.is_empty() {
                return;
            }
        }
        panic!("the world did not settle");
    }

    /// The node dies: what was in memory goes, the state is reloaded from its last commit (here:
    /// the same value, as every event commits it) and activated.
    fn crash(&mut self) {
        self.pending.clear();
        self.timers.clear();
        let reloaded: WorkflowState = serde_json::from_value(serde_json::to_value(&self.state).expect("serialises")).expect("reads");
        self.state = reloaded;
        self.with_ctx(|kind, state, ctx| kind.on_activate(state, ctx));
    }

    fn view(&mut self) -> WorkflowView {
        serde_json::from_value(self.send(json!({ "op": "get" }))).expect("a view")
    }
}

fn definition(yaml: &str) -> Program {
    let value: Value = serde_yaml_value(yaml);
    let known = definition::Known { activity: &|_| true, workflow: &|_| true };
    let definition = definition::parse_value(&value, &known).unwrap_or_else(|e| panic!("valid definition: {e}"));
    Program::Definition { definition: Box::new(definition), version: 1, library: BTreeMap::new() }
}

/// The tests write definitions as JSON-in-YAML-free JSON (the crate has no YAML parser).
fn serde_yaml_value(json_text: &str) -> Value {
    serde_json::from_str(json_text).expect("test definitions are JSON")
}

fn tally() -> Program {
    Program::Rust { name: "tally".into() }
}

#[test]
fn rust_workflow_runs_its_steps_in_order_and_completes() {
    let mut world = World::new(examples::shipped());
    world.start(tally(), json!({ "counter": 1, "times": 3, "pause_ms": 500 }));
    world.answer_all();
    assert_eq!(world.notified, 0, "watchers are told of the end only");
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed);
    assert_eq!(world.notified, 1, "a caller waiting for the end is told once");
    assert_eq!(view.result, Some(json!(3)));
    assert_eq!(world.applied, vec![1, 1, 1]);
    let kinds: Vec<&str> = view.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["call", "sleep", "call", "sleep", "call", "sleep"]);
    assert!(view.steps.iter().filter(|s| s.kind == "sleep").all(|s| s.duration_ms == Some(500)), "durable timers wait their time: {:?}", view.steps);
}

#[test]
fn a_crash_at_every_step_boundary_resumes_without_running_a_journaled_step_again() {
    for crash_after in 0..6 {
        let mut world = World::new(examples::shipped());
        world.start(tally(), json!({ "counter": 1, "times": 3, "pause_ms": 100 }));
        // Run `crash_after` events, then crash with the rest in flight.
        for _ in 0..crash_after {
            world.answer_all();
            world.tick();
        }
        let answered_before = world.applied.len();
        world.crash();
        world.settle();
        let view = world.view();
        assert_eq!(view.status, Status::Completed, "crash after {crash_after} events");
        assert_eq!(view.result, Some(json!(3)), "crash after {crash_after} events");
        // The asks that were answered before the crash were journaled: never sent again.
        assert_eq!(world.applied.len(), 3, "crash after {crash_after}: answered before {answered_before}, applied {:?}", world.applied);
    }
}

#[test]
fn failed_attempts_back_off_and_retry_without_the_code_seeing_them() {
    let mut world = World::new(examples::shipped());
    world.failures_left = 2;
    world.start(tally(), json!({ "counter": 1, "times": 1 }));
    world.answer_all();
    let view = world.view();
    assert_eq!(view.steps[0].state, EntryState::Backoff);
    assert_eq!(view.steps[0].error.as_ref().map(|e| e.code.as_str()), Some("unavailable"));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed);
    assert_eq!(view.steps[0].attempts, 3);
    // Backoff: 1 s, then 2 s (the default policy).
    assert_eq!(view.steps[0].duration_ms, Some(3_000));
}

#[test]
fn exhausted_retries_dead_letter_and_an_operator_retries_or_skips() {
    let mut world = World::new(examples::shipped());
    world.failures_left = 3;
    world.start(tally(), json!({ "counter": 1, "times": 1 }));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    assert_eq!(view.failed_step.as_deref(), Some("0"));
    // Retry: the failed step runs again, from attempt 1.
    world.send(json!({ "op": "retry" }));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(world.applied, vec![1]);

    let mut world = World::new(examples::shipped());
    world.failures_left = 3;
    world.start(tally(), json!({ "counter": 1, "times": 1 }));
    world.settle();
    world.send(json!({ "op": "skip", "result": 41 }));
    world.settle();
    let view = world.view();
    assert_eq!((view.status, view.result), (Status::Completed, Some(json!(41))));
    assert!(world.applied.is_empty());
}

#[test]
fn changed_code_under_a_running_instance_is_a_nondeterminism_error_naming_both_commands() {
    let mut world = World::new(examples::shipped());
    world.start(tally(), json!({ "counter": 1, "times": 2, "pause_ms": 100 }));
    world.answer_all();
    // The code changes: it now runs an activity where the journal holds a sleep.
    world.kind = Workflows::new().register("tally", |ctx: WorkflowContext, _input: Value| async move {
        ctx.call(1, json!({ "op": "add", "n": 1 })).await?;
        ctx.activity("echo", json!(1)).await
    });
    world.crash();
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    let error = view.error.unwrap_or_default();
    assert!(error.contains("nondeterminism at step 1") && error.contains("sleep") && error.contains("activity"), "{error}");
}

#[test]
fn signals_are_buffered_until_asked_for_and_time_out() {
    let mut world = World::new(Workflows::new());
    let program = definition(r#"{"name":"w","steps":[{"id":"first","wait":{"signal":"go","timeout_ms":1000}},{"id":"second","wait":{"signal":"go","timeout_ms":1000}}],
        "output":"${[steps.first.result, steps.second.result]}"}"#);
    world.start(program, json!(null));
    world.send(json!({ "op": "signal", "name": "go", "body": 7 }));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed);
    assert_eq!(view.result, Some(json!([{ "signal": 7 }, { "timed_out": true }])));
    assert_eq!(view.steps[1].duration_ms, Some(1_000), "the timeout waited its time");
    let refused = world.send(json!({ "op": "signal", "name": "go" }));
    assert_eq!(refused["refused"]["code"], "conflict", "{refused}");
}

#[test]
fn a_failure_after_several_steps_runs_their_compensations_in_reverse_order() {
    let mut world = World::new(Workflows::new());
    let program = definition(r#"{"name":"saga","steps":[
        {"id":"a","call":{"imvu":1,"message":{"n":1}},"compensate":{"id":"undo_a","call":{"imvu":1,"message":{"n":-1}}}},
        {"id":"b","call":{"imvu":1,"message":{"n":10}},"compensate":{"id":"undo_b","call":{"imvu":1,"message":{"n":-10}}}},
        {"id":"c","activity":{"name":"fail","input":"no"},"retry":{"max_attempts":1}}]}"#);
    world.start(program, json!(null));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Compensated, "{view:?}");
    assert_eq!(world.applied, vec![1, 10, -10, -1]);
    assert_eq!(world.counter, 0);
}

#[test]
fn cancelling_runs_the_compensations_and_ends_cancelled() {
    let mut world = World::new(Workflows::new());
    let program = definition(r#"{"name":"c","steps":[
        {"id":"a","call":{"imvu":1,"message":{"n":5}},"compensate":{"id":"undo","call":{"imvu":1,"message":{"n":-5}}}},
        {"id":"wait","wait":{"signal":"never"}}]}"#);
    world.start(program, json!(null));
    world.answer_all();
    world.send(json!({ "op": "cancel" }));
    world.settle();
    assert_eq!(world.view().status, Status::Cancelled);
    assert_eq!(world.applied, vec![5, -5]);
}

#[test]
fn parallel_branches_keep_their_step_names_whatever_order_they_finish_in() {
    let program = definition(r#"{"name":"p","vars":{"n":0},"steps":[{"id":"fan","parallel":{"branches":[
        [{"id":"a1","call":{"imvu":1,"message":{"n":1}}},{"id":"a2","call":{"imvu":1,"message":{"n":2}}}],
        [{"id":"b1","call":{"imvu":1,"message":{"n":3}}},{"id":"b2","call":{"imvu":1,"message":{"n":4}},"set":{"n":"${result}"}}]]}}]}"#);
    let mut world = World::new(Workflows::new());
    world.start(program, json!(null));
    // Answer branch b first, then a: a replay must find every step under its own name.
    let mut numbers: Vec<u64> = world.pending.keys().copied().collect();
    numbers.reverse();
    for n in numbers {
        if let Some(Outgoing::Send { msg, .. }) = world.pending.remove(&n) {
            let (_, msg) = crate::once::split(msg).expect("an envelope");
            let add = msg["n"].as_i64().unwrap_or(0);
            world.counter += add;
            world.applied.push(add);
            let total = world.counter;
            world.with_ctx(|kind, state, ctx| kind.on_reply(state, n, Ok(json!(total)), ctx));
        }
    }
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    let mut applied = world.applied.clone();
    applied.sort_unstable();
    assert_eq!(applied, vec![1, 2, 3, 4], "each step applied once");
    let names: Vec<&str> = view.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["0.0.0", "0.1.0", "0.1.1", "0.0.1"]);
}

#[test]
fn join_any_abandons_the_losing_branches() {
    let program = definition(r#"{"name":"race","steps":[{"id":"race","parallel":{"join":"any","branches":[
        [{"id":"fast","activity":{"name":"echo","input":1}}],
        [{"id":"slow","wait":{"signal":"never"}}]]}}]}"#);
    let mut world = World::new(Workflows::new());
    world.start(program, json!(null));
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.steps[1].state, EntryState::Abandoned);
}

#[test]
fn loops_are_bounded_and_continue_as_new_starts_a_fresh_journal() {
    let mut world = World::new(Workflows::new().register("counts", |ctx: WorkflowContext, input: Value| async move {
        let round = input.as_u64().unwrap_or(0);
        ctx.activity("echo", json!(round)).await?;
        if round < 3 {
            return Err(WorkflowError::ContinueAsNew(json!(round + 1)));
        }
        Ok(json!(round))
    }));
    world.start(Program::Rust { name: "counts".into() }, json!(0));
    world.settle();
    let view = world.view();
    assert_eq!((view.status, view.result, view.run), (Status::Completed, Some(json!(3)), 3));
    assert_eq!(view.steps.len(), 1, "one run's journal");
}

#[test]
fn two_steps_of_one_scope_in_flight_are_refused() {
    let mut world = World::new(Workflows::new().register("racy", |ctx: WorkflowContext, _input: Value| async move {
        let a = ctx.call(1, json!({ "n": 1 }));
        let b = ctx.call(1, json!({ "n": 2 }));
        let both = join_all(vec![Box::pin(a) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>, Box::pin(b)]).await;
        Ok(json!(both.len()))
    }));
    world.start(Program::Rust { name: "racy".into() }, json!(null));
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    assert!(view.error.unwrap_or_default().contains("branches"));
}

#[test]
fn a_panicking_workflow_is_dead_lettered_not_restarted_for_ever() {
    let mut world = World::new(Workflows::new().register("panics", |_ctx: WorkflowContext, _input: Value| async move {
        if true {
            panic!("boom");
        }
        Ok(Value::Null)
    }));
    world.start(Program::Rust { name: "panics".into() }, json!(null));
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    assert!(view.error.unwrap_or_default().contains("boom"));
}

#[test]
fn a_schedule_fires_once_per_aligned_slot_and_ends_after_its_count() {
    let mut world = World::new(Workflows::new());
    world.now_ms = 1_000_250;
    let input = json!({ "program": { "type": "rust", "name": "missing" }, "input": 1, "every_ms": 1_000, "count": 3 });
    world.start(Program::Rust { name: schedule::SCHEDULE.into() }, input);
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    // Its children cannot be created in this world: each slot's run fails, the schedule goes on.
    assert_eq!(view.result, Some(json!({ "fired": 3, "failed": 3 })));
    let slept: Vec<u64> = view.steps.iter().filter(|s| s.kind == "sleep").filter_map(|s| s.finished_unix_ms).collect();
    assert_eq!(slept.len(), 3);
    assert!(slept.iter().all(|t| t % 1_000 == 0), "slots on the second: {slept:?}");
    assert_eq!(slept[0], 1_001_000);
}

#[test]
fn timers_never_fire_early_when_the_node_clock_runs_ahead_of_the_wall() {
    let mut world = World::new(examples::shipped());
    world.start(tally(), json!({ "counter": 1, "times": 1, "pause_ms": 1_000 }));
    world.answer_all();
    // The timer fires, but the wall clock says only 400 ms passed: it is set again.
    let (&n, _) = world.timers.iter().next().expect("a sleep");
    world.timers.remove(&n);
    world.now_ms += 400;
    world.with_ctx(|kind, state, ctx| kind.on_timer(state, n, ctx));
    assert_eq!(world.view().status, Status::Running);
    world.settle();
    let view = world.view();
    assert_eq!(view.status, Status::Completed);
    assert!(view.steps[1].duration_ms >= Some(1_000));
}

#[test]
fn payloads_over_the_limit_are_refused_and_results_over_it_fail_the_step() {
    let mut world = World::new(examples::shipped());
    let big = "x".repeat(PAYLOAD_BYTES_MAX);
    let refused = world.start(tally(), json!({ "counter": 1, "blob": big }));
    assert_eq!(refused["refused"]["code"], "too_large", "{refused}");
    assert_eq!(world.view().status, Status::Created);

    let mut world = World::new(Workflows::new().register("echo-big", |ctx: WorkflowContext, input: Value| async move { ctx.activity("echo", input).await }));
    world.start(Program::Rust { name: "echo-big".into() }, json!(null));
    // The activity answers more than the limit: the step fails `too_large`, once (not retried).
    let (&n, _) = world.pending.iter().next().expect("the activity");
    world.pending.remove(&n);
    world.with_ctx(|kind, state, ctx| kind.on_reply(state, n, Ok(json!("y".repeat(PAYLOAD_BYTES_MAX))), ctx));
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    assert_eq!(view.steps[0].error.as_ref().map(|e| e.code.as_str()), Some("too_large"));
}

#[test]
fn a_timer_set_by_a_clock_that_ran_ahead_waits_at_most_its_duration_after_a_move() {
    let mut world = World::new(examples::shipped());
    world.start(tally(), json!({ "counter": 1, "times": 1, "pause_ms": 1_000 }));
    world.answer_all();
    // The node that set the sleep's due time was 30 s ahead; the next owner's clock is right.
    world.now_ms -= 30_000;
    world.crash();
    let waits: Vec<u64> = world.timers.values().map(|due| due - world.now_ms).collect();
    assert_eq!(waits, vec![1_000], "cut to the sleep's own duration, not 31 s");
    world.settle();
    assert_eq!(world.view().status, Status::Completed);
}

#[test]
fn nested_loops_are_bounded_per_replay_and_unvalidated_definitions_are_refused() {
    let mut world = World::new(Workflows::new());
    let program = definition(r#"{"name":"spin","vars":{"n":0},"steps":[{"id":"outer","for_each":{"over":"${range(1000)}","max":1000,"steps":[
        {"id":"inner","repeat":{"while":"${index < 200}","max":10000,"steps":[{"id":"inc","set":{"n":"${vars.n + 1}"}}]}}]}}]}"#);
    world.start(program, json!(null));
    let view = world.view();
    assert_eq!(view.status, Status::DeadLettered);
    assert!(view.error.unwrap_or_default().contains("loop iterations"));

    // A start sent straight to the IMVU with a definition that never went through validation.
    let mut world = World::new(Workflows::new());
    let unchecked = json!({"type": "definition", "version": 1, "definition": {"name": "x", "steps": [{"id": "a", "set": {"y": "${vars.nope}"}}]}});
    let refused = world.send(json!({ "op": "start", "program": unchecked }));
    assert_eq!(refused["refused"]["code"], "bad_request", "{refused}");
    assert_eq!(world.view().status, Status::Created);
}

//! The shard core driven directly: a script of inputs in, a transcript of what callers heard
//! and what canon holds out, compared with [`check`].
//!
//! Script lines (ids are of the default tenant; `t2:ID` is tenant `t2`'s):
//! - `create ID`, `ask ID add N|get|crash`, `tell ID add N|crash`, `pause ID`, `resume ID`,
//!   `terminate ID`, `inspect ID`, `evict ID`, `passivate IDLE_MS`: a command (its answer is
//!   printed, prefixed by the line number, once it comes);
//! - `complete [N]`: the store completes the first N (default: all) commits in flight;
//! - `fail`: the store fails the first commit in flight (nothing of it is applied);
//! - `now MS UNIX_MS`: the time;
//! - `canon ID`: prints the IMVU's meta lifecycle, snapshot and history from canon;
//! - `resident`: prints which IMVUs are in memory and which are loading.

use std::collections::VecDeque;
use std::fmt::Write as _;

use tokio::sync::oneshot;

use super::*;
use crate::kinds::{Counter, CounterMsg};
use crate::store::OrderedKv;

enum Answer {
    Ask(oneshot::Receiver<Result<i64, ActorError>>),
    Info(oneshot::Receiver<Result<ImvuInfo, ActorError>>),
    Count(oneshot::Receiver<usize>),
}

struct Harness {
    core: ShardCore<Counter>,
    canon: OrderedKv,
    in_flight: VecDeque<(u64, Vec<CanonWrite>)>,
    answers: Vec<(usize, Answer)>,
    out: String,
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant name")
}

fn key(word: &str) -> ImvuKey {
    let (tenant_name, id) = word.split_once(':').unwrap_or(("default", word));
    ImvuKey { tenant: tenant(tenant_name), id: ImvuId(id.parse().expect("numeric id")) }
}

impl Harness {
    fn new() -> Self {
        let tenants = Arc::new(Tenants::default());
        for name in ["default", "t2"] {
            tenants.upsert(tenant(name), crate::tenants::TenantPolicy { max_restarts: 2, restart_period_ms: 1_000, ..Default::default() }, 0, None);
        }
        let core = ShardCore::new(CoreEnv {
            behaviour: Arc::new(Counter),
            tenants,
            handshake: Handshake::standard(),
            node: NodeHealth::new(1_000),
            shard_intensity: Intensity { max_restarts: 1, period_ms: 1_000 },
            ownership: Arc::new(crate::ownership::SoleOwner),
        });
        Self { core, canon: OrderedKv::default(), in_flight: VecDeque::new(), answers: Vec::new(), out: String::new() }
    }

    fn run(&mut self, script: &str) -> String {
        for (n, line) in script.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
            let line_no = n + 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            let internal = |k: &ImvuKey| Box::new(Caller::internal(&k.tenant, "test"));
            if let ["wake", rest @ ..] = words.as_slice() {
                // Several commands in one wake of the driver: effects performed after each,
                // deferred commits sent once at the end.
                let rest = rest.join(" ");
                for part in rest.split('|') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    let command = match words.as_slice() {
                        ["ask", id, msg @ ..] => {
                            let (reply, rx) = oneshot::channel();
                            self.answers.push((line_no, Answer::Ask(rx)));
                            Command::Ask { key: key(id), msg: parse_msg(msg), reply }
                        }
                        ["tell", id, msg @ ..] => Command::Tell { key: key(id), msg: parse_msg(msg) },
                        other => panic!("unknown command in a wake {other:?}"),
                    };
                    if let Err(reason) = self.core.handle_command(command) {
                        let _ = writeln!(self.out, "{line_no} escalated: {reason}");
                    }
                    self.perform();
                }
                self.pump();
                self.collect_answers();
                continue;
            }
            let command = match words.as_slice() {
                ["create", id] => {
                    let (reply, rx) = oneshot::channel();
                    self.answers.push((line_no, Answer::Info(rx)));
                    Some(Command::Create { key: key(id), caller: internal(&key(id)), reply })
                }
                ["ask", id, msg @ ..] => {
                    let (reply, rx) = oneshot::channel();
                    self.answers.push((line_no, Answer::Ask(rx)));
                    Some(Command::Ask { key: key(id), msg: parse_msg(msg), reply })
                }
                ["tell", id, msg @ ..] => Some(Command::Tell { key: key(id), msg: parse_msg(msg) }),
                [verb @ ("pause" | "resume" | "terminate"), id] => {
                    let transition = match *verb {
                        "pause" => Transition::Pause,
                        "resume" => Transition::Resume,
                        _ => Transition::Terminate,
                    };
                    let (reply, rx) = oneshot::channel();
                    self.answers.push((line_no, Answer::Info(rx)));
                    Some(Command::Lifecycle { key: key(id), transition, caller: internal(&key(id)), reply })
                }
                ["inspect", id] => {
                    let (reply, rx) = oneshot::channel();
                    self.answers.push((line_no, Answer::Info(rx)));
                    Some(Command::Inspect { key: key(id), reply })
                }
                ["evict", id] => Some(Command::Evict { key: key(id) }),
                ["passivate", idle_ms] => {
                    let (reply, rx) = oneshot::channel();
                    self.answers.push((line_no, Answer::Count(rx)));
                    Some(Command::Passivate { idle_ms: idle_ms.parse().expect("ms"), reply })
                }
                ["complete"] => {
                    self.complete(usize::MAX);
                    None
                }
                ["complete", n] => {
                    self.complete(n.parse().expect("count"));
                    None
                }
                ["fail"] => {
                    let (token, _) = self.in_flight.pop_front().expect("a commit in flight to fail");
                    self.core.handle_committed(token, Err(StoreError::Io("injected".into())));
                    self.pump();
                    None
                }
                ["now", now_ms, unix_ms] => {
                    self.core.set_now(now_ms.parse().expect("ms"), unix_ms.parse().expect("ms"));
                    None
                }
                ["canon", id] => {
                    self.print_canon(&key(id));
                    None
                }
                ["resident"] => {
                    let mut ids: Vec<u64> = self.core.cells.keys().copied().collect();
                    ids.sort_unstable();
                    let loading: Vec<u64> = self.core.loading.keys().copied().collect();
                    let _ = writeln!(self.out, "resident {ids:?} loading {loading:?}");
                    None
                }
                other => panic!("unknown script line {other:?}"),
            };
            if let Some(command) = command {
                if let Err(reason) = self.core.handle_command(command) {
                    // The first clause names who gave up; the rest is the chain of causes.
                    let _ = writeln!(self.out, "{line_no} escalated: {}", reason.split(';').next().unwrap_or_default());
                }
                self.pump();
            }
            self.collect_answers();
        }
        std::mem::take(&mut self.out)
    }

    /// Ends a wake as the driver does: performs the effects, then sends the deferred
    /// commits, until neither is left. Commits stay in flight until the script completes (or
    /// fails) them.
    fn pump(&mut self) {
        loop {
            self.perform();
            if !self.core.has_deferred() {
                return;
            }
            self.core.flush();
        }
    }

    /// Performs the effects produced so far.
    fn perform(&mut self) {
        let mut effects = Vec::new();
        loop {
            self.core.take_effects(&mut effects);
            if effects.is_empty() {
                return;
            }
            for effect in effects.drain(..) {
                match effect {
                    Effect::Commit { token, writes } => self.in_flight.push_back((token, writes)),
                    Effect::Load { key } => {
                        let loaded = Ok((self.canon.get(&records::meta_key(&key)), self.canon.get(&records::snap_key(&key)), Vec::new()));
                        if let Err(reason) = self.core.handle_loaded(key, loaded) {
                            let _ = writeln!(self.out, "escalated: {reason}");
                        }
                    }
                    Effect::ReplyAsk(reply, value) => {
                        let _ = reply.send(value);
                    }
                    Effect::ReplyInfo(reply, value) => {
                        let _ = reply.send(value);
                    }
                    Effect::ReplyCount(reply, count) => {
                        let _ = reply.send(count);
                    }
                    Effect::Route { .. } | Effect::CreateChild { .. } | Effect::Model { .. } | Effect::Activity { .. } | Effect::Notify { .. } => {
                        unreachable!("counters send nothing to other IMVUs or models")
                    }
                }
            }
        }
    }

    fn complete(&mut self, mut n: usize) {
        while n > 0 {
            let Some((token, writes)) = self.in_flight.pop_front() else { return };
            let result = self.canon.apply(writes);
            self.core.handle_committed(token, result);
            self.pump();
            n -= 1;
        }
    }

    fn collect_answers(&mut self) {
        let out = &mut self.out;
        self.answers.retain_mut(|(line_no, answer)| {
            let text = match answer {
                Answer::Ask(rx) => match rx.try_recv() {
                    Ok(Ok(total)) => format!("= {total}"),
                    Ok(Err(e)) => format!("! {}", e.code()),
                    Err(oneshot::error::TryRecvError::Empty) => return true,
                    Err(oneshot::error::TryRecvError::Closed) => "dropped".into(),
                },
                Answer::Info(rx) => match rx.try_recv() {
                    Ok(Ok(info)) => format!("= {} {}", info.lifecycle, info.state),
                    Ok(Err(e)) => format!("! {}", e.code()),
                    Err(oneshot::error::TryRecvError::Empty) => return true,
                    Err(oneshot::error::TryRecvError::Closed) => "dropped".into(),
                },
                Answer::Count(rx) => match rx.try_recv() {
                    Ok(count) => format!("= {count}"),
                    Err(oneshot::error::TryRecvError::Empty) => return true,
                    Err(oneshot::error::TryRecvError::Closed) => "dropped".into(),
                },
            };
            let _ = writeln!(out, "{line_no} {text}");
            false
        });
    }

    fn print_canon(&mut self, key: &ImvuKey) {
        let meta = self.canon.get(&records::meta_key(key)).map(|b| records::decode::<ImvuMeta>("meta", &b).expect("meta"));
        let snap = self.canon.get(&records::snap_key(key)).map(|b| String::from_utf8(b).expect("utf-8"));
        let _ = write!(
            self.out,
            "canon {}: {} snap {} created {} |",
            key.id,
            meta.as_ref().map_or("-".to_owned(), |m| m.lifecycle.to_string()),
            snap.unwrap_or_else(|| "-".into()),
            meta.map_or(0, |m| m.created_unix_ms),
        );
        for (k, v) in self.canon.scan_prefix(&records::history_prefix(key), None, 100) {
            let event: HistoryEvent = records::decode(&k, &v).expect("history");
            let _ = match event {
                HistoryEvent::Transition(t) => write!(self.out, " {}@{}", t.transition, t.unix_ms),
                HistoryEvent::Supervision(s) => write!(self.out, " {}@{}", s.decision, s.unix_ms),
            };
        }
        let _ = writeln!(self.out);
    }
}

fn parse_msg(words: &[&str]) -> CounterMsg {
    match words {
        ["add", n] => CounterMsg::Add { n: n.parse().expect("number") },
        ["get"] => CounterMsg::Get,
        ["crash"] => CounterMsg::Crash,
        other => panic!("unknown message {other:?}"),
    }
}

/// Runs `script` on a fresh core and compares the transcript with `expect` (trimmed lines).
fn check(script: &str, expect: &str) {
    let actual = Harness::new().run(script);
    let expect: String = expect.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| format!("{l}\n")).collect();
    assert_eq!(actual, expect, "\n--- actual ---\n{actual}--- expected ---\n{expect}");
}

#[test]
fn create_and_ask_reply_only_once_durable_and_records_carry_the_time() {
    check(
        "
        now 5 1700000000000
        create 1
        ask 1 add 2
        ask 1 add 3
        complete 2
        complete
        canon 1
        ",
        "
        2 = active 0
        3 = 2
        4 = 5
        canon 1: active snap 5 created 1700000000000 | create@1700000000000 activate@1700000000000
        ",
    );
}

#[test]
fn tell_commits_silently_and_inspect_reads_memory() {
    check(
        "
        create 1
        tell 1 add 4
        inspect 1
        complete
        ask 1 get
        complete
        ",
        "
        3 = active 4
        1 = active 0
        5 = 4
        ",
    );
}

#[test]
fn a_crash_restarts_from_the_last_durable_snapshot_and_later_messages_wait_in_order() {
    check(
        "
        now 0 1000
        create 1
        ask 1 add 2
        complete
        ask 1 crash
        ask 1 add 10
        resident
        complete
        resident
        canon 1
        ",
        "
        2 = active 0
        3 = 2
        5 ! imvu_crashed
        resident [] loading [1]
        6 = 12
        resident [1] loading []
        canon 1: active snap 12 created 1000 | create@1000 activate@1000 restarted@1000
        ",
    );
}

#[test]
fn past_the_tenants_intensity_its_imvus_stop_and_the_shard_escalates_past_its_own() {
    check(
        "
        create 1
        complete
        ask 1 crash
        complete
        ask 1 crash
        complete
        ask 1 crash
        complete
        resident
        create t2:2
        complete
        ask t2:2 crash
        complete
        ask t2:2 crash
        complete
        ask t2:2 crash
        ",
        "
        1 = active 0
        3 ! imvu_crashed
        5 ! imvu_crashed
        7 ! imvu_crashed
        resident [] loading []
        10 = active 0
        12 ! imvu_crashed
        14 ! imvu_crashed
        16 escalated: counter shard supervisor: reached max restart intensity (1 restarts in 1000 ms)
        16 ! imvu_crashed
        ",
    );
}

#[test]
fn pause_holds_messages_in_order_and_resume_delivers_them() {
    check(
        "
        create 1
        pause 1
        ask 1 add 1
        tell 1 add 2
        ask 1 get
        inspect 1
        complete
        resume 1
        complete
        canon 1
        ",
        "
        6 = paused 0
        1 = active 0
        2 = paused 0
        3 = 1
        5 = 3
        8 = active 0
        canon 1: active snap 3 created 0 | create@0 activate@0 pause@0 resume@0
        ",
    );
}

#[test]
fn the_paused_queue_is_bounded() {
    let mut h = Harness::new();
    h.run("create 1\ncomplete\npause 1\ncomplete");
    for _ in 0..PAUSED_QUEUE_LEN_MAX {
        h.run("tell 1 add 1");
    }
    assert_eq!(h.run("ask 1 get"), "1 ! queue_full\n");
    assert_eq!(h.run("inspect 1"), "1 = paused 0\n");
    let mut out = h.run("resume 1\ncomplete\nask 1 get\ncomplete");
    out = out.lines().filter(|l| !l.starts_with("1 ")).map(|l| format!("{l}\n")).collect();
    assert_eq!(out, format!("3 = {PAUSED_QUEUE_LEN_MAX}\n"));
}

#[test]
fn terminate_answers_held_asks_and_later_messages_are_refused() {
    check(
        "
        create 1
        pause 1
        ask 1 add 1
        terminate 1
        complete
        ask 1 get
        terminate 1
        canon 1
        ",
        "
        3 ! terminated
        1 = active 0
        2 = paused 0
        4 = terminated 0
        6 ! terminated
        7 ! illegal_transition
        canon 1: terminated snap 0 created 0 | create@0 activate@0 pause@0 terminate@0
        ",
    );
}

#[test]
fn passivation_answers_once_durable_and_the_next_message_reloads() {
    check(
        "
        now 0 0
        create 1
        create 2
        complete
        now 100 100
        ask 2 add 5
        passivate 50
        resident
        complete
        ask 1 add 1
        resident
        complete
        ",
        "
        2 = active 0
        3 = active 0
        resident [2] loading []
        6 = 5
        7 = 1
        resident [1, 2] loading []
        10 = 1
        ",
    );
}

#[test]
fn an_evicted_imvu_with_a_commit_in_flight_reloads_after_a_barrier() {
    check(
        "
        create 1
        ask 1 add 3
        evict 1
        ask 1 get
        resident
        complete 2
        resident
        complete
        resident
        ",
        "
        resident [] loading [1]
        1 = active 0
        2 = 3
        resident [] loading [1]
        4 = 3
        resident [1] loading []
        ",
    );
}

#[test]
fn a_failed_commit_poisons_the_cell_and_no_later_message_runs_on_that_state() {
    check(
        "
        create 1
        complete
        ask 1 add 5
        fail
        ask 1 add 1
        resident
        complete
        canon 1
        ",
        "
        1 = active 0
        3 ! store_error
        resident [] loading [1]
        5 = 1
        canon 1: active snap 1 created 0 | create@0 activate@0
        ",
    );
}

#[test]
fn a_failed_barrier_keeps_the_imvu_unloaded_and_answers_a_retryable_error() {
    check(
        "
        create 1
        complete
        ask 1 add 5
        fail
        ask 1 get
        tell 1 add 1
        fail
        resident
        ask 1 get
        complete
        resident
        ",
        "
        1 = active 0
        3 ! store_error
        5 ! unavailable
        resident [] loading []
        9 = 0
        resident [1] loading []
        ",
    );
}

#[test]
fn handlers_of_one_imvu_in_one_wake_share_one_commit_and_answer_once_it_is_durable() {
    check(
        "
        create 1
        create 2
        complete
        wake ask 1 add 2 | tell 2 add 7 | ask 1 add 3 | tell 1 add 5 | ask 2 get
        complete 1
        canon 1
        complete 1
        canon 2
        ask 1 add 1
        fail
        ask 1 get
        complete
        ",
        "
        1 = active 0
        2 = active 0
        4 = 2
        4 = 5
        canon 1: active snap 10 created 0 | create@0 activate@0
        4 = 7
        canon 2: active snap 7 created 0 | create@0 activate@0
        9 ! store_error
        11 = 10
        ",
    );
}

#[test]
fn a_failed_joined_commit_fails_every_handler_it_carried() {
    check(
        "
        create 1
        complete
        wake ask 1 add 2 | ask 1 add 3
        fail
        ask 1 get
        complete
        ",
        "
        1 = active 0
        3 ! store_error
        3 ! store_error
        5 = 0
        ",
    );
}

#[test]
fn other_tenants_and_unknown_ids_are_not_found() {
    check(
        "
        create 1
        complete
        ask t2:1 get
        evict 1
        inspect t2:1
        ask 1 get
        ask 9 get
        terminate 9
        complete
        ",
        "
        1 = active 0
        3 ! not_found
        5 ! not_found
        7 ! not_found
        8 ! not_found
        6 = 0
        ",
    );
}

//! Directive tests for the supervision core, all through one `check` helper.
//!
//! A test names the strategy, the intensity, the children and a script of
//! inputs; `check` renders every output as one line and compares the whole
//! transcript, so the core's API can change without rewriting the tests.

use vcos_supervision::{
    ChildSpec, Directive, ExitReason, Intensity, RestartType, Strategy, Supervisor,
};

/// `children`: "a:perm b:trans c:temp". `script`, one input per line:
/// `<now_ms> <id> crash|normal|shutdown`, `<now_ms> window`, `shutdown`,
/// `order`, `remove <id>`. Each line is echoed with its output after `->`.
#[track_caller]
fn check(strategy: Strategy, intensity: (u32, u64), children: &str, script: &str, expect: &str) {
    let (max_restarts, period_ms) = intensity;
    let mut sup = Supervisor::new(
        strategy,
        Intensity {
            max_restarts,
            period_ms,
        },
    );
    for child in children.split_whitespace() {
        let (id, restart) = child.split_once(':').expect("child is id:type");
        let restart = match restart {
            "perm" => RestartType::Permanent,
            "trans" => RestartType::Transient,
            "temp" => RestartType::Temporary,
            other => panic!("unknown restart type {other}"),
        };
        let spec = ChildSpec {
            id: id.to_owned(),
            restart,
            shutdown_timeout_ms: 100,
        };
        sup.add_child(spec).expect("test children are unique");
    }
    let mut transcript = Vec::new();
    for line in script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let output = match words.as_slice() {
            ["shutdown"] => list(&sup.handle_shutdown()),
            ["order"] => list(&sup.start_order()),
            ["remove", id] => format!(
                "{:?}",
                sup.remove_child(&(*id).to_owned()).map(|spec| spec.id)
            ),
            [now, "window"] => sup
                .restarts_in_window(now.parse().expect("now_ms"))
                .to_string(),
            [now, id, reason] => {
                let reason = match *reason {
                    "crash" => ExitReason::Failed("boom".to_owned()),
                    "normal" => ExitReason::Normal,
                    "shutdown" => ExitReason::Shutdown,
                    other => panic!("unknown reason {other}"),
                };
                let now_ms = now.parse().expect("now_ms");
                render(&sup.handle_child_exit(now_ms, &(*id).to_owned(), reason))
            }
            _ => panic!("bad script line {line:?}"),
        };
        transcript.push(format!("{line} -> {output}"));
    }
    let actual = transcript.join("\n");
    let expect: Vec<&str> = expect
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(
        actual,
        expect.join("\n"),
        "\nactual transcript:\n{actual}\n"
    );
}

fn list(ids: &[String]) -> String {
    format!("[{}]", ids.join(","))
}

fn render(directive: &Directive<String>) -> String {
    match directive {
        Directive::Ignore => "ignore".to_owned(),
        Directive::Restart { stop, start } => {
            format!("restart stop={} start={}", list(stop), list(start))
        }
        Directive::Escalate { stop, reason } => {
            assert!(reason.contains("max restart intensity"), "{reason}");
            format!("escalate stop={}", list(stop))
        }
    }
}

const ABC: &str = "a:perm b:perm c:perm";
const ROOMY: (u32, u64) = (10, 1_000);

#[test]
fn one_for_one_restarts_only_the_child() {
    check(
        Strategy::OneForOne,
        ROOMY,
        ABC,
        "0 b crash
         1 a normal
         2 window
         order",
        "0 b crash -> restart stop=[] start=[b]
         1 a normal -> restart stop=[] start=[a]
         2 window -> 2
         order -> [a,b,c]",
    );
}

#[test]
fn one_for_all_stops_others_in_reverse_and_starts_all_in_order() {
    check(
        Strategy::OneForAll,
        ROOMY,
        ABC,
        "0 b crash
         1 window",
        "0 b crash -> restart stop=[c,a] start=[a,b,c]
         1 window -> 1",
    );
}

#[test]
fn one_for_all_drops_stopped_temporary_siblings() {
    check(
        Strategy::OneForAll,
        ROOMY,
        "a:temp b:perm c:trans d:temp",
        "0 b crash
         order",
        "0 b crash -> restart stop=[d,c,a] start=[b,c]
         order -> [b,c]",
    );
}

#[test]
fn rest_for_one_restarts_the_child_and_later_ones() {
    check(
        Strategy::RestForOne,
        ROOMY,
        "a:perm b:perm c:temp d:perm",
        "0 b crash
         1 d crash
         2 a crash
         order",
        "0 b crash -> restart stop=[d,c] start=[b,d]
         1 d crash -> restart stop=[] start=[d]
         2 a crash -> restart stop=[d,b] start=[a,b,d]
         order -> [a,b,d]",
    );
}

#[test]
fn restart_types_follow_otp() {
    check(
        Strategy::OneForOne,
        ROOMY,
        "p:perm t:trans x:temp",
        "0 p normal
         1 p shutdown
         2 t crash
         3 t shutdown
         4 x crash
         5 window
         order",
        "0 p normal -> restart stop=[] start=[p]
         1 p shutdown -> restart stop=[] start=[p]
         2 t crash -> restart stop=[] start=[t]
         3 t shutdown -> ignore
         4 x crash -> ignore
         5 window -> 3
         order -> [p]",
    );
}

#[test]
fn transient_normal_exit_leaves_siblings_alone_under_one_for_all() {
    check(
        Strategy::OneForAll,
        ROOMY,
        "a:perm t:trans c:perm",
        "0 t normal
         order
         1 t crash",
        "0 t normal -> ignore
         order -> [a,c]
         1 t crash -> ignore",
    );
}

#[test]
fn intensity_escalates_at_exactly_max_plus_one_within_period() {
    check(
        Strategy::OneForOne,
        (2, 1_000),
        ABC,
        "0 a crash
         500 b crash
         1000 c crash
         1001 a crash",
        "0 a crash -> restart stop=[] start=[a]
         500 b crash -> restart stop=[] start=[b]
         1000 c crash -> escalate stop=[b,a]
         1001 a crash -> ignore",
    );
}

#[test]
fn intensity_tolerates_restarts_spaced_beyond_the_period() {
    check(
        Strategy::OneForOne,
        (2, 1_000),
        ABC,
        "0 a crash
         600 a crash
         1601 a crash
         2202 a crash
         2202 window
         3203 window",
        "0 a crash -> restart stop=[] start=[a]
         600 a crash -> restart stop=[] start=[a]
         1601 a crash -> restart stop=[] start=[a]
         2202 a crash -> restart stop=[] start=[a]
         2202 window -> 2
         3203 window -> 0",
    );
}

#[test]
fn zero_max_restarts_escalates_on_the_first_restart() {
    check(
        Strategy::OneForOne,
        (0, 1_000),
        "a:perm b:trans c:temp",
        "0 c crash
         1 b normal
         2 a crash",
        "0 c crash -> ignore
         1 b normal -> ignore
         2 a crash -> escalate stop=[]",
    );
}

#[test]
fn escalation_stops_everyone_else_in_reverse_start_order() {
    check(
        Strategy::RestForOne,
        (0, 1_000),
        "a:perm b:perm c:temp d:trans",
        "0 b crash
         shutdown",
        "0 b crash -> escalate stop=[d,c,a]
         shutdown -> []",
    );
}

#[test]
fn shutdown_is_reverse_start_order_and_silences_exits() {
    check(
        Strategy::OneForAll,
        ROOMY,
        "a:perm b:trans c:temp",
        "shutdown
         0 a crash
         shutdown",
        "shutdown -> [c,b,a]
         0 a crash -> ignore
         shutdown -> []",
    );
}

#[test]
fn reported_stop_of_a_sibling_is_not_counted_again() {
    check(
        Strategy::OneForAll,
        (1, 1_000),
        ABC,
        "0 a crash
         1 c shutdown
         2 b shutdown
         3 window
         4 c crash",
        "0 a crash -> restart stop=[c,b] start=[a,b,c]
         1 c shutdown -> ignore
         2 b shutdown -> ignore
         3 window -> 1
         4 c crash -> escalate stop=[b,a]",
    );
}

#[test]
fn unknown_and_removed_children_are_ignored() {
    check(
        Strategy::OneForAll,
        ROOMY,
        ABC,
        "remove b
         remove b
         0 b crash
         0 z crash
         order
         1 a crash",
        "remove b -> Some(\"b\")
         remove b -> None
         0 b crash -> ignore
         0 z crash -> ignore
         order -> [a,c]
         1 a crash -> restart stop=[c] start=[a,c]",
    );
}

#[test]
fn add_child_rejects_duplicates_and_late_children() {
    let spec = |id: &str| ChildSpec {
        id: id.to_owned(),
        restart: RestartType::Permanent,
        shutdown_timeout_ms: 0,
    };
    let mut sup = Supervisor::new(
        Strategy::OneForOne,
        Intensity {
            max_restarts: 1,
            period_ms: 10,
        },
    );
    assert!(sup.is_empty());
    assert_eq!(sup.add_child(spec("a")), Ok(()));
    assert!(matches!(
        sup.add_child(spec("a")),
        Err(vcos_supervision::SupervisionError::DuplicateChild { .. })
    ));
    assert_eq!(sup.len(), 1);
    assert_eq!(sup.strategy(), Strategy::OneForOne);
    assert_eq!(
        sup.intensity(),
        Intensity {
            max_restarts: 1,
            period_ms: 10
        }
    );
    let _ = sup.handle_shutdown();
    assert_eq!(
        sup.add_child(spec("b")),
        Err(vcos_supervision::SupervisionError::Terminating)
    );
}

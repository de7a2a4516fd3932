//! Property tests of the supervision core over random exit sequences.
//!
//! Properties: (1) restarts within any `period_ms` window never exceed
//! `max_restarts` (the exit that would exceed it escalates instead);
//! (2) `Restart.stop` is a reverse-start-order subsequence and `Restart.start`
//! a start-order subsequence; (3) after `Escalate` every exit is `Ignore`;
//! (4) temporary children are never in a start list. Also: escalation stops
//! every other child in reverse start order, and a reported stop of a sibling
//! never counts as a restart.

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use vcos_supervision::{
    ChildSpec, Directive, ExitReason, Intensity, RestartType, Strategy, Supervisor,
};

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Exit { child: usize, reason: ExitReason },
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::OneForOne),
        Just(Strategy::OneForAll),
        Just(Strategy::RestForOne)
    ]
}

fn restart_type() -> impl proptest::strategy::Strategy<Value = RestartType> {
    prop_oneof![
        Just(RestartType::Permanent),
        Just(RestartType::Transient),
        Just(RestartType::Temporary)
    ]
}

fn reason() -> impl proptest::strategy::Strategy<Value = ExitReason> {
    prop_oneof![
        Just(ExitReason::Normal),
        Just(ExitReason::Shutdown),
        "[a-z]{0,4}".prop_map(ExitReason::Failed),
    ]
}

fn op(children: usize) -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        1 => (0_u64..400).prop_map(Op::Advance),
        3 => (0..children, reason()).prop_map(|(child, reason)| Op::Exit { child, reason }),
    ]
}

fn position(order: &[u32], id: u32) -> usize {
    order
        .iter()
        .position(|&other| other == id)
        .expect("directive ids are children")
}

fn strictly_increasing(positions: &[usize]) -> bool {
    positions.windows(2).all(|pair| pair[0] < pair[1])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn directives_respect_otp_invariants(
        strategy in strategy(),
        max_restarts in 0_u32..5,
        period_ms in 0_u64..2_000,
        types in proptest::collection::vec(restart_type(), 1..8),
        ops in proptest::collection::vec(op(8), 0..200),
    ) {
        let mut sup = Supervisor::new(strategy, Intensity { max_restarts, period_ms });
        for (id, &restart) in types.iter().enumerate() {
            let id = u32::try_from(id).expect("few children");
            sup.add_child(ChildSpec { id, restart, shutdown_timeout_ms: 0 }).expect("unique ids");
        }
        let mut now_ms = 0_u64;
        let mut restart_times_ms: Vec<u64> = Vec::new();
        let mut escalated = false;
        for op in ops {
            let (child, reason) = match op {
                Op::Advance(ms) => { now_ms += ms; continue; }
                Op::Exit { child, reason } => (child, reason),
            };
            let id = u32::try_from(child).expect("few children");
            let order_before = sup.start_order();
            let counted_before = sup.restarts_in_window(now_ms);
            let directive = sup.handle_child_exit(now_ms, &id, reason.clone());
            let order_after = sup.start_order();
            if escalated {
                // (3) Nothing happens after escalation.
                prop_assert_eq!(&directive, &Directive::Ignore);
                continue;
            }
            match directive {
                Directive::Ignore => {
                    prop_assert_eq!(sup.restarts_in_window(now_ms), counted_before);
                }
                Directive::Restart { stop, start } => {
                    restart_times_ms.push(now_ms);
                    // (1) The window holds at most max_restarts restarts.
                    let recent = restart_times_ms.iter().filter(|&&t| now_ms - t <= period_ms).count();
                    prop_assert!(recent <= max_restarts as usize);
                    prop_assert_eq!(sup.restarts_in_window(now_ms) as usize, recent);
                    // (2) Orders.
                    let mut stop_positions: Vec<usize> = stop.iter().map(|&s| position(&order_before, s)).collect();
                    stop_positions.reverse();
                    prop_assert!(strictly_increasing(&stop_positions));
                    let start_positions: Vec<usize> = start.iter().map(|&s| position(&order_after, s)).collect();
                    prop_assert!(strictly_increasing(&start_positions));
                    prop_assert!(start.contains(&id));
                    prop_assert!(!stop.contains(&id));
                    // (4) Temporary children are never started again.
                    for started in &start {
                        let spec = sup.child_spec(started).expect("started children are kept");
                        prop_assert_ne!(spec.restart, RestartType::Temporary);
                    }
                    // Everything stopped is either restarted or was temporary (and is gone).
                    for stopped in &stop {
                        let kept = start.contains(stopped);
                        let removed = !order_after.contains(stopped);
                        prop_assert!(kept != removed);
                    }
                    // The stop this directive asked for, when reported, is absorbed.
                    if let Some(&sibling) = stop.iter().find(|s| start.contains(s)) {
                        let counted = sup.restarts_in_window(now_ms);
                        let echo = sup.handle_child_exit(now_ms, &sibling, ExitReason::Shutdown);
                        prop_assert_eq!(echo, Directive::Ignore);
                        prop_assert_eq!(sup.restarts_in_window(now_ms), counted);
                    }
                }
                Directive::Escalate { stop, reason: why } => {
                    escalated = true;
                    prop_assert!(!why.is_empty());
                    // Exceeding: the restarts already in the window plus this one.
                    prop_assert_eq!(counted_before, max_restarts);
                    let expected: Vec<u32> = order_before.iter().rev().copied().filter(|&other| other != id).collect();
                    prop_assert_eq!(stop, expected);
                    prop_assert!(sup.handle_shutdown().is_empty());
                }
            }
        }
    }
}

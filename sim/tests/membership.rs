//! The membership scenario in the default suite: a few seeds of 50 members pass (every view
//! agrees after the heal, crashes are detected), and a seed replays to the same trace.

use vcos_sim::scenarios;
use vcos_sim::{run, RunOptions};

/// Seeds in the default suite (each runs 50 members for ~20 simulated seconds: 40–80 s of wall
/// time in a debug build on 2 cores, so the suite keeps 2; sweeps run with `vcos sim
/// --scenario membership --seeds A..B`).
const SEEDS: u64 = 2;

#[test]
fn membership_seeds_pass_and_replay() {
    let scenario = scenarios::by_name("membership").expect("scenario");
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let report = run(scenario, seed, &RunOptions::default());
        if !report.passed() {
            failures.push(format!("seed {seed}: {:?} (plan {})", report.violations, report.plan));
        }
        if !report.passed() {
            eprintln!("seed {seed} trace (last 40 events):\n{}", report.trace[report.trace.len().saturating_sub(40)..].join("\n"));
        }
        if seed == 0 {
            let again = run(scenario, seed, &RunOptions::default());
            assert_eq!(again.trace_hash, report.trace_hash, "membership seed {seed} is not deterministic: repro `vcos sim --scenario membership --seed {seed} --check-determinism`");
        }
    }
    assert!(failures.is_empty(), "membership failed:\n{}", failures.join("\n"));
}

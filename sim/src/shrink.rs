//! Shrinking: remove faults from a failing plan one at a time, keeping each removal that still
//! fails, until no single removal does. The result is 1-minimal: every fault left is needed.

use crate::plan::FaultPlan;
use crate::scenarios::Scenario;
use crate::world::{run, RunOptions, RunReport};

/// Most runs one shrink may spend.
pub const SHRINK_RUNS_MAX: usize = 200;

/// Minimises `report`'s plan; returns the smallest failing run found.
pub fn shrink(scenario: &dyn Scenario, report: &RunReport, options: &RunOptions) -> RunReport {
    let mut best = report.clone();
    let mut runs = 0;
    let mut progress = true;
    while progress && runs < SHRINK_RUNS_MAX {
        progress = false;
        let mut i = 0;
        while i < best.plan.faults.len() && runs < SHRINK_RUNS_MAX {
            let candidate: FaultPlan = best.plan.without(i);
            runs += 1;
            let attempt = run(scenario, best.seed, &RunOptions { plan: Some(candidate), ..options.clone() });
            if attempt.passed() {
                i += 1;
            } else {
                best = attempt;
                progress = true;
            }
        }
    }
    best
}

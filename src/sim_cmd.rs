//! `vcos sim`: run scenarios of the deterministic simulator, sweep seeds, check determinism,
//! print traces, shrink failing plans to a minimal repro.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use vcos_sim::scenarios::{self, Scenario};
use vcos_sim::{run, FaultPlan, PlantedBugs, RunOptions, RunReport};

/// Options of `vcos sim`.
#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Scenario: supervision, swarm, durability, canon, membership, durability-raft,
    /// placement, desktop, workflows, inference, membership-200 (by name only: 200 members),
    /// or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A sweep of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Run each seed twice and compare trace hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Print every event of the trace (single seed).
    #[arg(long)]
    trace: bool,
    /// Replay this fault plan instead of the seed's (as printed by a failure).
    #[arg(long)]
    plan: Option<String>,
    /// Do not shrink failing plans.
    #[arg(long)]
    no_shrink: bool,
    /// Plant a bug, to watch the checkers catch it.
    #[arg(long, value_enum)]
    bug: Option<Bug>,
    /// Worker threads for sweeps (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Bug {
    /// Tenant supervisors ignore their restart intensity.
    IgnoreIntensity,
    /// The canon store acknowledges before fsync.
    AckBeforeFsync,
    /// Canon followers serve "linearizable" reads without the leader's read index.
    StaleReads,
    /// Nodes serve any IMVU without checking their lease (placement).
    SkipLeaseCheck,
    /// Nodes keep serving their buckets after their lease lapsed (placement).
    IgnoreLeaseExpiry,
    /// Workflows resuming after a load run their journaled calls again (workflows).
    RerunJournaledSteps,
    /// Workflow sleeps end early (workflows).
    EarlyTimers,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or("expected A..B, e.g. 1..1000")?;
    let a: u64 = a.trim().parse().map_err(|_| format!("{a:?} is not a seed"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("{b:?} is not a seed"))?;
    if b <= a {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok(a..b)
}

/// Stamps log lines with the simulated time of the host that logs (empty outside a host).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>8}", vcos_sim::node_env::sim_now_ms())
    }
}

pub(crate) fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    // `RUST_LOG` logs the simulated nodes (openraft, turmoil's network, ours) to stderr, stamped
    // with simulated time: two runs of one seed can be diffed to find where they part.
    if std::env::var_os("RUST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::from_default_env();
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_timer(SimTime).with_ansi(false).with_writer(std::io::stderr).try_init();
    }
    if !cfg!(tokio_unstable) {
        eprintln!("warning: this binary was built without `--cfg tokio_unstable` (a RUSTFLAGS variable overrides .cargo/config.toml): seeds may not replay identically");
    }
    let chosen: Vec<&'static dyn Scenario> = if args.scenario == "all" {
        scenarios::all().to_vec()
    } else {
        match scenarios::by_name(&args.scenario) {
            Some(s) => vec![s],
            None => bail!(
                "unknown scenario {:?}; choose one of: all, {}",
                args.scenario,
                scenarios::all().map(|s| s.name()).join(", ")
            ),
        }
    };
    let plan = match &args.plan {
        Some(text) => Some(text.parse::<FaultPlan>().context("--plan")?),
        None => None,
    };
    let bugs = match args.bug {
        Some(Bug::IgnoreIntensity) => PlantedBugs { ignore_intensity: true, ..PlantedBugs::default() },
        Some(Bug::AckBeforeFsync) => PlantedBugs { ack_before_fsync: true, ..PlantedBugs::default() },
        Some(Bug::StaleReads) => PlantedBugs { stale_follower_reads: true, ..PlantedBugs::default() },
        Some(Bug::SkipLeaseCheck) => PlantedBugs { skip_lease_check: true, ..PlantedBugs::default() },
        Some(Bug::IgnoreLeaseExpiry) => PlantedBugs { ignore_lease_expiry: true, ..PlantedBugs::default() },
        Some(Bug::RerunJournaledSteps) => PlantedBugs { workflow_rerun_journaled: true, ..PlantedBugs::default() },
        Some(Bug::EarlyTimers) => PlantedBugs { workflow_early_timers: true, ..PlantedBugs::default() },
        None => PlantedBugs::default(),
    };
    let options = RunOptions { plan, bugs };
    let seeds = match (args.seed, args.seeds.clone()) {
        (Some(seed), _) => seed..seed + 1,
        (None, Some(range)) => range,
        (None, None) => 1..2,
    };
    let mut failed = false;
    for scenario in chosen {
        failed |= if seeds.end - seeds.start == 1 {
            single(scenario, seeds.start, &args, &options)
        } else {
            sweep(scenario, seeds.clone(), &args, &options)
        };
    }
    if failed {
        bail!("simulation found failures (repro lines above)");
    }
    Ok(())
}

fn repro(report: &RunReport, args: &SimArgs, with_plan: bool) -> String {
    let mut line = format!("vcos sim --scenario {} --seed {}", report.scenario, report.seed);
    if let Some(bug) = args.bug {
        line.push_str(&format!(" --bug {}", bug.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()));
    }
    if with_plan {
        line.push_str(&format!(" --plan '{}'", report.plan));
    }
    line
}

fn single(scenario: &dyn Scenario, seed: u64, args: &SimArgs, options: &RunOptions) -> bool {
    let started = Instant::now();
    let report = run(scenario, seed, options);
    let wall = started.elapsed();
    if args.trace {
        for event in &report.trace {
            println!("{event}");
        }
    }
    println!("scenario {} seed {}: plan {}", report.scenario, seed, report.plan);
    println!(
        "trace hash {:016x} ({} events), {} ms simulated in {:.0} ms ({:.0}:1)",
        report.trace_hash,
        report.trace.len(),
        report.sim_ms,
        wall.as_secs_f64() * 1e3,
        report.sim_ms as f64 / (wall.as_secs_f64() * 1e3).max(1e-3)
    );
    // Scenarios that measure something (membership: detection, convergence) say so in the trace.
    for line in report.trace.iter().filter(|l| l.trim_start().split_once(' ').is_some_and(|(_, e)| e.starts_with("summary:"))) {
        println!("{}", line.trim_start().split_once(' ').map_or(line.as_str(), |(_, e)| e));
    }
    let mut failed = false;
    if args.check_determinism {
        tracing::info!(seed, "second run");
        let again = run(scenario, seed, options);
        if again.trace_hash == report.trace_hash {
            println!("determinism: same hash on a second run");
        } else {
            failed = true;
            println!("DETERMINISM BROKEN: {:016x} then {:016x}", report.trace_hash, again.trace_hash);
            if let Some((a, b)) = report.trace.iter().zip(&again.trace).find(|(a, b)| a != b) {
                println!("first difference:\n  {a}\n  {b}");
            }
        }
    }
    if report.passed() {
        println!("verdict: PASS");
    } else {
        failed = true;
        report_failure(scenario, &report, args, options);
    }
    failed
}

fn report_failure(scenario: &dyn Scenario, report: &RunReport, args: &SimArgs, options: &RunOptions) {
    println!("verdict: FAIL");
    for v in &report.violations {
        println!("  violation: {v}");
    }
    println!("repro: {}", repro(report, args, options.plan.is_some()));
    if !args.no_shrink && !report.plan.faults.is_empty() {
        let minimal = vcos_sim::shrink::shrink(scenario, report, options);
        println!("minimal plan ({} of {} faults): {}", minimal.plan.faults.len(), report.plan.faults.len(), minimal.plan);
        println!("minimal repro: {}", repro(&minimal, args, true));
    }
}

fn sweep(scenario: &dyn Scenario, seeds: Range<u64>, args: &SimArgs, options: &RunOptions) -> bool {
    let total = seeds.end - seeds.start;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} seeds, {per_sec}, eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(scenario.name().to_owned());
    let next = AtomicU64::new(seeds.start);
    let sim_ms = AtomicU64::new(0);
    let failures: Mutex<Vec<RunReport>> = Mutex::new(Vec::new());
    let nondeterministic: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let report = run(scenario, seed, options);
                sim_ms.fetch_add(report.sim_ms, Ordering::Relaxed);
                if args.check_determinism && run(scenario, seed, options).trace_hash != report.trace_hash {
                    nondeterministic.lock().unwrap_or_else(|p| p.into_inner()).push(seed);
                }
                if !report.passed() {
                    bar.println(format!("seed {seed} FAILED: {}", report.violations.join("; ")));
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(report);
                }
                bar.inc(1);
            });
        }
    });
    bar.finish();
    let wall = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().unwrap_or_default();
    let nondeterministic = nondeterministic.into_inner().unwrap_or_default();
    let sim_total = sim_ms.load(Ordering::Relaxed) as f64;
    println!(
        "{}: {total} runs, {} failures, {} nondeterministic; sim/wall {:.0}:1, {:.1} seeds/s ({:.0} seeds/hour) on {jobs} threads",
        scenario.name(),
        failures.len(),
        nondeterministic.len(),
        sim_total / (wall * 1e3).max(1e-3),
        total as f64 / wall.max(1e-9),
        total as f64 / wall.max(1e-9) * 3600.0,
    );
    for seed in &nondeterministic {
        println!("nondeterministic seed {seed}: repro: vcos sim --scenario {} --seed {seed} --check-determinism", scenario.name());
    }
    if let Some(first) = failures.iter().min_by_key(|r| r.seed) {
        report_failure(scenario, first, args, options);
        for other in failures.iter().filter(|r| r.seed != first.seed) {
            println!("also failed: {}", repro(other, args, false));
        }
    }
    !failures.is_empty() || !nondeterministic.is_empty()
}

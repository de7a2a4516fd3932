//! Fault plans: what goes wrong, when. Generated from the seed, printed as one line, parsed
//! back for replay (so a shrunk plan replays exactly too).
//!
//! Syntax: faults separated by `;`, each `AT_MS:name(args)`, e.g.
//! `1200:crash(n1,800);3000:partition(n0,1500);4000:panic(2,3)`.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One fault. `node` is a node index, `*_ms` are simulated milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // The fields are the same few everywhere; the line above documents them.
pub enum FaultKind {
    /// Crash the node; restart it `down_ms` later (keeping what was fsynced).
    Crash { node: u8, down_ms: u64 },
    /// Cut client ↔ node both ways for `ms`.
    Partition { node: u8, ms: u64 },
    /// Cut node → client only (replies lost, requests arrive) for `ms`.
    PartitionReplies { node: u8, ms: u64 },
    /// Hold (delay) every message on client ↔ node for `ms`, then release them.
    Delay { node: u8, ms: u64 },
    /// Step the node's wall clock by `jump_ms` (may be negative).
    ClockJump { node: u8, jump_ms: i64 },
    /// The node's fsyncs fail for `ms`.
    DiskFail { node: u8, ms: u64 },
    /// The node's fsyncs take `fsync_ms` each for `ms`.
    DiskSlow { node: u8, fsync_ms: u64, ms: u64 },
    /// The next `count` messages to the workload's IMVU number `imvu` panic in the handler.
    HandlerPanic { imvu: u32, count: u32 },
    /// Cut the node off from the other nodes (not from the client) both ways for `ms`: a
    /// partitioned minority that clients still reach.
    Isolate { node: u8, ms: u64 },
    /// Stop the node as SIGSTOP does for `ms`: its clock stands still and nothing reaches it
    /// or leaves it (held, delivered on SIGCONT), then time jumps ahead.
    Pause { node: u8, ms: u64 },
}

/// A fault and its time (simulated ms since start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When.
    pub at_ms: u64,
    /// What.
    pub kind: FaultKind,
}

/// The ordered faults of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Faults in time order.
    pub faults: Vec<Fault>,
}

/// Which faults a scenario wants, and how many.
#[derive(Clone, Copy, Debug)]
pub struct FaultMix {
    /// Nodes in the world.
    pub nodes: u8,
    /// Length of the fault phase.
    pub duration_ms: u64,
    /// Faults to draw.
    pub count: u32,
    /// Workload IMVUs that handler panics may target.
    pub imvus: u32,
    /// Allow node crashes.
    pub crashes: bool,
    /// Allow disk faults.
    pub disk: bool,
    /// Allow network faults.
    pub network: bool,
    /// Allow handler panics (weight: how many draws out of 10).
    pub panics: u32,
    /// Allow faults between nodes of a cluster (isolation, pauses).
    pub cluster: bool,
}

impl FaultPlan {
    /// Draws a plan from the seed.
    pub fn generate(seed: u64, mix: FaultMix) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17);
        let mut faults = Vec::new();
        for _ in 0..mix.count {
            let at_ms = rng.random_range(0..mix.duration_ms.max(1));
            let node = rng.random_range(0..mix.nodes.max(1));
            let ms = rng.random_range(100..3_000);
            let roll = rng.random_range(0..10u32);
            let kind = if roll < mix.panics && mix.imvus > 0 {
                FaultKind::HandlerPanic { imvu: rng.random_range(0..mix.imvus), count: rng.random_range(1..6) }
            } else {
                let mut options = Vec::new();
                if mix.crashes {
                    options.push(FaultKind::Crash { node, down_ms: ms });
                }
                if mix.network {
                    options.push(FaultKind::Partition { node, ms });
                    options.push(FaultKind::PartitionReplies { node, ms });
                    options.push(FaultKind::Delay { node, ms: ms / 3 });
                    options.push(FaultKind::ClockJump { node, jump_ms: rng.random_range(-5_000..60_000) });
                }
                if mix.cluster {
                    options.push(FaultKind::Isolate { node, ms });
                    options.push(FaultKind::Pause { node, ms });
                }
                if mix.disk {
                    options.push(FaultKind::DiskFail { node, ms });
                    options.push(FaultKind::DiskSlow { node, fsync_ms: rng.random_range(5..200), ms });
                }
                if options.is_empty() {
                    continue;
                }
                let pick = rng.random_range(0..options.len());
                options.swap_remove(pick)
            };
            faults.push(Fault { at_ms, kind });
        }
        faults.sort_by_key(|f| f.at_ms);
        Self { faults }
    }

    /// The plan without fault `index` (for shrinking).
    pub fn without(&self, index: usize) -> Self {
        let mut faults = self.faults.clone();
        if index < faults.len() {
            faults.remove(index);
        }
        Self { faults }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Crash { node, down_ms } => write!(f, "crash(n{node},{down_ms})"),
            Self::Partition { node, ms } => write!(f, "partition(n{node},{ms})"),
            Self::PartitionReplies { node, ms } => write!(f, "partition_replies(n{node},{ms})"),
            Self::Delay { node, ms } => write!(f, "delay(n{node},{ms})"),
            Self::ClockJump { node, jump_ms } => write!(f, "clock_jump(n{node},{jump_ms})"),
            Self::DiskFail { node, ms } => write!(f, "disk_fail(n{node},{ms})"),
            Self::DiskSlow { node, fsync_ms, ms } => write!(f, "disk_slow(n{node},{fsync_ms},{ms})"),
            Self::HandlerPanic { imvu, count } => write!(f, "panic({imvu},{count})"),
            Self::Isolate { node, ms } => write!(f, "isolate(n{node},{ms})"),
            Self::Pause { node, ms } => write!(f, "pause(n{node},{ms})"),
        }
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.faults.is_empty() {
            return f.write_str("none");
        }
        for (i, fault) in self.faults.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}:{}", fault.at_ms, fault.kind)?;
        }
        Ok(())
    }
}

/// Why a plan did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad fault plan at {at:?}: {reason}")]
pub struct PlanParseError {
    /// The offending piece.
    pub at: String,
    /// What was wrong.
    pub reason: String,
}

impl FromStr for FaultPlan {
    type Err = PlanParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(Self::default());
        }
        let mut faults = Vec::new();
        for piece in text.split(';') {
            let err = |reason: &str| PlanParseError { at: piece.to_owned(), reason: reason.to_owned() };
            let (at, call) = piece.split_once(':').ok_or_else(|| err("expected AT_MS:fault(args)"))?;
            let at_ms: u64 = at.trim().parse().map_err(|_| err("time is not a number of ms"))?;
            let (name, args) = call.trim().strip_suffix(')').and_then(|c| c.split_once('(')).ok_or_else(|| err("expected name(args)"))?;
            let args: Vec<&str> = args.split(',').map(str::trim).collect();
            let node = |i: usize| -> Result<u8, PlanParseError> {
                args.get(i).and_then(|a| a.strip_prefix('n')).and_then(|n| n.parse().ok()).ok_or_else(|| err("expected a node like n0"))
            };
            let num = |i: usize| -> Result<u64, PlanParseError> {
                args.get(i).and_then(|a| a.parse().ok()).ok_or_else(|| err("expected a number"))
            };
            let want = |n: usize| if args.len() == n { Ok(()) } else { Err(err(&format!("expected {n} arguments"))) };
            let kind = match name {
                "crash" => { want(2)?; FaultKind::Crash { node: node(0)?, down_ms: num(1)? } }
                "partition" => { want(2)?; FaultKind::Partition { node: node(0)?, ms: num(1)? } }
                "partition_replies" => { want(2)?; FaultKind::PartitionReplies { node: node(0)?, ms: num(1)? } }
                "delay" => { want(2)?; FaultKind::Delay { node: node(0)?, ms: num(1)? } }
                "isolate" => { want(2)?; FaultKind::Isolate { node: node(0)?, ms: num(1)? } }
                "pause" => { want(2)?; FaultKind::Pause { node: node(0)?, ms: num(1)? } }
                "clock_jump" => {
                    want(2)?;
                    let jump_ms = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(|| err("expected a signed number"))?;
                    FaultKind::ClockJump { node: node(0)?, jump_ms }
                }
                "disk_fail" => { want(2)?; FaultKind::DiskFail { node: node(0)?, ms: num(1)? } }
                "disk_slow" => { want(3)?; FaultKind::DiskSlow { node: node(0)?, fsync_ms: num(1)?, ms: num(2)? } }
                "panic" => {
                    want(2)?;
                    let imvu = u32::try_from(num(0)?).map_err(|_| err("imvu number too large"))?;
                    let count = u32::try_from(num(1)?).map_err(|_| err("count too large"))?;
                    FaultKind::HandlerPanic { imvu, count }
                }
                other => return Err(err(&format!("unknown fault {other:?}"))),
            };
            faults.push(Fault { at_ms, kind });
        }
        faults.sort_by_key(|f| f.at_ms);
        Ok(Self { faults })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_print_and_parse_back() {
        let mix = FaultMix { nodes: 3, duration_ms: 10_000, count: 40, imvus: 5, crashes: true, disk: true, network: true, panics: 3, cluster: true };
        for seed in 0..50 {
            let plan = FaultPlan::generate(seed, mix);
            let again: FaultPlan = plan.to_string().parse().expect("parses");
            assert_eq!(again, plan);
            assert_eq!(FaultPlan::generate(seed, mix), plan, "same seed, same plan");
        }
    }

    #[test]
    fn bad_plans_name_the_piece() {
        let err = "10:crash(x1,5)".parse::<FaultPlan>().unwrap_err();
        assert_eq!(err.at, "10:crash(x1,5)");
        assert!("10:explode(n1)".parse::<FaultPlan>().unwrap_err().reason.contains("unknown fault"));
        assert_eq!("none".parse::<FaultPlan>(), Ok(FaultPlan::default()));
    }
}

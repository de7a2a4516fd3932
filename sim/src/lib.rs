//! Deterministic simulation of v-COS nodes: production code on simulated time, network and
//! disks, faults from a seed, checkers, same seed ⇒ same trace, and shrinking of failing plans.
//!
//! - [`world::run`] runs one seed of one scenario and returns a [`RunReport`] (trace, hash,
//!   violations).
//! - [`plan::FaultPlan`]: the faults of a run, generated from the seed, printable and parseable.
//! - [`scenarios`]: workloads and checkers (supervision, swarm, durability).
//! - [`shrink::shrink`]: a failing plan minimised fault by fault.
//!
//! Determinism: one thread; turmoil steps every host's current-thread tokio runtime (FIFO task
//! order; every `select!` in the workspace is `biased`, so tokio's RNG is never consulted); disks, clocks and
//! the workload draw from seeded ChaCha RNGs; node state uses ordered maps or fixed-seed
//! hashers; ractor's global actor ids never reach the trace. See ARCHITECTURE.md.

pub mod cluster_env;
pub mod desktop_env;
pub mod inference_env;
pub mod keys;
pub mod linearizability;
pub mod net;
pub mod node_env;
pub mod plan;
mod raft_env;
pub mod scenarios;
pub mod shrink;
pub mod sockets;
pub mod trace;
pub mod world;

pub use plan::{FaultMix, FaultPlan};
pub use world::{run, PlantedBugs, RunOptions, RunReport};

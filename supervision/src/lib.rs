//! Supervisors with Erlang/OTP semantics for v-COS swarm.
//!
//! One pure decision core, [`core::Supervisor`], used by two drivers: the
//! ractor driver here ([`ractor_driver::SupervisorActor`], for node-level
//! system actors) and the IMVU host in `actors`, which calls the core
//! directly. The simulator drives the same core with a [`clock::ManualClock`].
//!
//! Why a separate core: restart strategies, restart intensity and escalation
//! are where OTP's decades of experience live, and they must behave the same
//! under ractor, under the IMVU host and under simulation. Keeping them in a
//! sans-IO struct (time is a `now_ms` parameter; no tokio, no OS clock, no
//! randomness, `BTreeMap`s only) makes every decision replayable and
//! property-testable.
//!
//! Modules:
//! - [`core`]: strategies, restart types, intensity window, directives.
//! - [`clock`]: the injected time source (`SystemClock`, `ManualClock`).
//! - [`quiet_panic`]: caught panics become restarts without printing or
//!   capturing backtraces.
//! - [`ractor_driver`]: `SupervisorActor`, the thin ractor driver.
//! - [`error`]: [`SupervisionError`]; [`constants`]: every limit.
//!
//! Architecture invariant: `core` knows no actor framework and no clock; only
//! `ractor_driver` imports ractor, only `clock::SystemClock` reads the OS clock.

pub mod clock;
pub mod constants;
pub mod core;
pub mod error;
pub mod quiet_panic;
pub mod ractor_driver;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::core::{
    ChildSpec, Directive, ExitReason, Intensity, Phase, RestartType, Strategy, Supervisor,
};
pub use crate::error::SupervisionError;
pub use crate::ractor_driver::{ChildDef, SupervisorActor, SupervisorArgs, SupervisorMsg};

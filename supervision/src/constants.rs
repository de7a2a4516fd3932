//! Limits of the supervision crate, in one place.
//!
//! Every collection a supervisor owns has a ceiling: the child set, the
//! restart window (bounded by `max_restarts + 1`, itself bounded here) and the
//! number of restart attempts a driver makes while handling a single exit.

/// Most children one supervisor may hold. A node-level tree is small; IMVU
/// swarms that need more use several supervisors.
pub const CHILDREN_MAX: usize = 4096;

/// Largest accepted `Intensity::max_restarts`. The restart window keeps at
/// most `max_restarts + 1` timestamps, so this also bounds its memory.
pub const INTENSITY_RESTARTS_MAX: u32 = 65_536;

/// Most restart directives a driver carries out while handling one exit
/// (a restart whose start fails is fed back as another exit). Intensity
/// normally ends the loop first; this stops a slow clock from looping forever.
pub const RESTART_ATTEMPTS_PER_EXIT_MAX: u32 = 64;

/// How long the ractor driver waits for a child to die after a hard kill.
pub const KILL_WAIT_MS: u64 = 5_000;

const _: () = assert!(CHILDREN_MAX > 0);
const _: () = assert!(INTENSITY_RESTARTS_MAX < u32::MAX);
const _: () = assert!(RESTART_ATTEMPTS_PER_EXIT_MAX > 0);

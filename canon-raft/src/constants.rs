//! Limits of the canon layer, named `*_max` (see STYLE.md, "Bound everything").

/// The most clients whose last response the state machine keeps for dedup. Past it, the client
/// whose last request was applied earliest is forgotten (a retry from that client after that
/// would be applied again, so the bound is sized far above the number of live clients).
pub const CLIENTS_MAX: usize = 65_536;

/// The most entries one [`crate::KvState::range`] call returns, whatever limit it asks for.
pub const RANGE_LIMIT_MAX: usize = 10_000;

/// The most operations in one `Op::Batch`, nested operations included.
pub const BATCH_OPS_MAX: usize = 16_384;

/// The deepest nesting of `Op::Batch` inside `Op::Batch`.
pub const BATCH_DEPTH_MAX: usize = 4;

const _: () = assert!(CLIENTS_MAX > 0);
const _: () = assert!(RANGE_LIMIT_MAX > 0);
const _: () = assert!(BATCH_DEPTH_MAX >= 1);

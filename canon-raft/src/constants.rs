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

/// The server-side deadline of every canon request (a write, forwarded or local; a read
/// barrier; a group commit of the `CanonStore` seam; a membership change): past it the caller
/// gets `CanonError::Unavailable`, a retryable error (HTTP 503 `canon_unavailable` with
/// `Retry-After`), instead of waiting for a quorum that may never answer. 5 s covers a few
/// leader elections (400–800 ms each); a write that timed out may still be applied later (it is
/// deduplicated, so retrying it is safe).
pub const CANON_REQUEST_DEADLINE_MS: u64 = 5_000;

/// How long adding a voter waits for the new learner to catch up (to answer, and come within
/// `membership::PROMOTE_LAG_MAX` entries of the leader) before it gives up and leaves it a
/// learner. A learner never counts for the quorum, so one that never answers costs nothing.
pub const PROMOTE_CATCH_UP_MS: u64 = 5_000;

/// How long stopping one group's Raft may take before the node stops waiting for it.
pub const CANON_SHUTDOWN_MAX_MS: u64 = 3_000;

/// The page cache of one group's redb file (log and state) unless the node is told otherwise
/// (`vcos up --canon-cache-mb`). The state lives on disk; this bounds what it keeps in memory.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

const _: () = assert!(CLIENTS_MAX > 0);
const _: () = assert!(CANON_REQUEST_DEADLINE_MS >= 1_000);
const _: () = assert!(CANON_SHUTDOWN_MAX_MS < CANON_REQUEST_DEADLINE_MS);
const _: () = assert!(RANGE_LIMIT_MAX > 0);
const _: () = assert!(BATCH_DEPTH_MAX >= 1);

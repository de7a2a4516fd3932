//! Placement: which node of a region owns an IMVU, and how it proves it.
//!
//! - [`rendezvous`]: an IMVU `tenant/id` hashes to one of [`BUCKETS`] buckets; a bucket's
//!   *intended* owner is the alive member of the region with the highest rendezvous score for
//!   it. When a member joins or leaves, only the buckets it wins or held move (about 1/N).
//! - [`lease`]: the owner *holds* a bucket through a lease record in the region's canon, with
//!   a fencing epoch that grows with every new holder. The pure core [`lease::Leases`] decides
//!   claims, renewals and releases from the membership view, observations of the records and
//!   the injected monotonic clock; a driver performs its writes through the `CanonStore` seam.
//!
//! Why buckets and not one lease per IMVU: a million IMVUs would need a million renewals per
//! lease period. 256 buckets per region cost 256 small records and, at one renewal per bucket
//! every [`lease::LeaseConfig::renew_every_ms`], a few hundred canon operations per second that
//! group-commit into a handful of Raft entries.
//!
//! Invariant (at most one activation): a node serves an IMVU only while it can prove its hold
//! on the bucket by its own clock ([`lease::Leases::serving`]), and every canon write it makes
//! for that IMVU carries the epoch it was activated under, which the state machine checks
//! (`Expect` on the bucket's epoch key). No wall clocks are compared across nodes: a
//! contender takes a bucket only after it has seen the lease record unchanged for a whole
//! lease period by its own clock, which is longer than the holder may trust a renewal.

pub mod lease;
pub mod rendezvous;

pub use lease::{Fence, LeaseAction, LeaseConfig, LeaseOutcome, LeaseRecord, Leases};
pub use rendezvous::{bucket_of, owner_of, BUCKETS};

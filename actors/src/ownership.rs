//! The [`Ownership`] seam: may this node serve an IMVU now, and under which fence.
//!
//! On a single node every IMVU is this node's ([`SoleOwner`]). In a cluster, placement (the
//! `cluster` crate) owns the answer: an IMVU is served only by the node holding its bucket's
//! lease, and every canon write made for it carries the lease's fencing epoch as a guard
//! ([`Ownership::guard`]), so that a node which lost the lease (partitioned, paused, slow) can
//! never commit for that IMVU again.
//!
//! The host asks [`Ownership::fence`] when it activates an IMVU and again before every message;
//! a fence that changed since the activation means another node may have served the IMVU in
//! between, so the in-memory copy is dropped and reloaded from canon.

use crate::error::ActorError;
use crate::ids::ImvuKey;
use crate::store::CanonWrite;

/// Proof that this node serves an IMVU: which lease, in which epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The lease (a bucket of IMVUs).
    pub lease: u16,
    /// Its fencing epoch.
    pub epoch: u64,
}

/// Placement's answer for this node. See the module docs.
pub trait Ownership: Send + Sync + 'static {
    /// The fence under which this node may serve `key` at `now_ms` (monotonic, from the
    /// node's clock); `Ok(None)` when no fence is needed (a single node); an error (normally
    /// [`ActorError::Unavailable`]) when this node may not serve it now.
    fn fence(&self, key: &ImvuKey, now_ms: u64) -> Result<Option<Fence>, ActorError>;

    /// The guard every commit made under `fence` carries.
    fn guard(&self, fence: Fence) -> CanonWrite;
}

/// A node that owns every IMVU (no cluster): no fence, no guard.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoleOwner;

impl Ownership for SoleOwner {
    fn fence(&self, _key: &ImvuKey, _now_ms: u64) -> Result<Option<Fence>, ActorError> {
        Ok(None)
    }

    fn guard(&self, fence: Fence) -> CanonWrite {
        // Never asked: `fence` gives none. Answer with a guard that always fails rather than
        // one that always passes.
        CanonWrite::Expect { key: format!("ownership/sole/{}", fence.lease), value: Some(fence.epoch.to_be_bytes().to_vec()) }
    }
}

//! The actor API for IMVU authors, and the runtime that hosts IMVUs.
//!
//! - [`Imvu`]: what an author implements (typed state, messages, replies, lifecycle hooks).
//! - [`Runtime`]: registers kinds, creates and addresses IMVUs, runs the supervision tree.
//! - [`CanonStore`]: the seam to the Canon Memory Layer; [`RedbStore`] is the durable
//!   single-node implementation, [`MemoryStore`] the in-memory one.
//! - [`Handshake`]: the 55-45-17 admission check run at every lifecycle transition.
//! - [`swarm`]: coordinators, members, credit, shared memory and votes.
//!
//! Invariants: this crate knows no network and no HTTP; every canon write goes through
//! `CanonStore`; time comes from the injected `Clock`; a handler panic never escapes a shard.

pub mod activities;
pub mod audit;
pub mod auth;
pub mod erasure;
pub mod error;
pub mod export;
pub mod failpoints;
pub mod handshake;
mod host;
pub mod ids;
pub mod imvu;
mod kind;
pub mod kinds;
pub mod lifecycle;
pub mod metering;
pub mod models;
pub mod notices;
pub mod once;
pub mod ownership;
pub mod quota;
pub mod records;
pub mod router;
mod runtime;
mod shard_actor;
pub mod store;
pub mod swarm;
pub mod tenants;
pub mod workflow;

pub use error::ActorError;
pub use handshake::{
    AdmissionRequest, AdmissionStage, Handshake, HandshakeOutcome, NodeHealth, Stage,
};
pub use host::{ImvuInfo, PAUSED_QUEUE_LEN_MAX};
pub use ids::{Caller, ImvuId, ImvuKey, SwarmId, SwarmKey, TenantId};
pub use imvu::{AskToken, Context, Imvu, Outgoing, Persistence};
pub use kind::{BoxFuture, ErasedKind, JsonReply, KindRef};
pub use lifecycle::{LifecycleState, Transition};
pub use router::Router;
pub use runtime::{KindInfo, Placement, Runtime, RuntimeBuilder, RuntimeConfig, WeakRuntime, ESCALATIONS_PREFIX};
pub use store::{CanonStore, CanonWrite, MemoryStore, RedbStore, StoreError};
pub use tenants::{LimitOverrides, TenantEntry, TenantLimits, TenantPolicy, Tier};
pub use vcos_supervision::{Clock, ManualClock, RestartType, SystemClock};

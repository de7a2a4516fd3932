//! What the cluster needs of a runtime: creating an IMVU under an id allocated on another
//! node, and tenants created through another node.

use std::sync::{Arc, Weak};

use super::Runtime;
use crate::error::ActorError;
use crate::host::ImvuInfo;
use crate::ids::{Caller, ImvuKey, TenantId};
use crate::kind::BoxFuture;
use crate::lifecycle::Transition;
use crate::records;
use crate::tenants::{TenantEntry, TenantPolicy};

impl Runtime {
    /// Creates an IMVU of `kind` under `key`, whose id was allocated by [`Runtime::allocate_id`]
    /// (on this node or another node of the region: ids come from one canon counter).
    pub async fn create_imvu_at(&self, key: &ImvuKey, kind: &str, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        let kind = self.kind(kind)?;
        crate::quota::admit_growth(&*self.tenant_or_load(&key.tenant)?)?;
        if self.store().get(&records::meta_key(key))?.is_some() {
            return Err(ActorError::Conflict(format!("IMVU {key} already exists")));
        }
        self.remember_kind(key.id.0, &kind);
        let result = kind.create(key.clone(), caller.clone()).await;
        if result.is_err() {
            self.directory_shard(key.id.0).write().unwrap_or_else(|p| p.into_inner()).remove(&key.id.0);
        }
        result
    }

    /// A tenant, read from canon when this node has not seen it yet (it was created through
    /// another node of the region).
    pub fn tenant_or_load(&self, id: &TenantId) -> Result<Arc<TenantEntry>, ActorError> {
        if let Ok(entry) = self.inner.tenants.get(id) {
            return Ok(entry);
        }
        let key = records::tenant_key(id);
        let Some(bytes) = self.store().get(&key)? else {
            return Err(ActorError::not_found("tenant", id));
        };
        let policy: TenantPolicy = records::decode(&key, &bytes)?;
        let fence = self.store().get(&records::tenant_fence_key(id))?.map(Vec::into_boxed_slice);
        Ok(self.inner.tenants.upsert(id.clone(), policy, 0, fence))
    }
}

impl Runtime {
    /// Delivers a JSON message to a local IMVU without waiting for it to be handled (at most
    /// once; in the IMVU's mailbox order).
    pub async fn tell_json(&self, key: &ImvuKey, message: serde_json::Value) -> Result<(), ActorError> {
        self.route(key)?.tell_json(*key, message).await
    }

    /// Enqueues an ask to a local IMVU (in its mailbox order) and returns the future of its
    /// reply, so that the next message can be enqueued before this one is handled.
    pub async fn ask_json_enqueued(&self, key: &ImvuKey, message: serde_json::Value) -> Result<crate::kind::JsonReply, ActorError> {
        self.route(key)?.ask_json_enqueued(*key, message).await
    }
}

/// Where IMVUs live in a cluster: requests that the runtime itself makes for other IMVUs (a
/// swarm's members) go through it to whichever node owns them. The cluster crate implements
/// it and binds it with [`Runtime::set_placement`].
pub trait Placement: Send + Sync + 'static {
    /// Creates an IMVU of `kind` on the node that will own it.
    fn create<'a>(&'a self, tenant: &'a TenantId, kind: &'a str, caller: &'a Caller) -> BoxFuture<'a, Result<ImvuInfo, ActorError>>;
    /// Asks `key`, wherever it lives.
    fn ask_json<'a>(&'a self, key: &'a ImvuKey, message: serde_json::Value, caller: &'a Caller) -> BoxFuture<'a, Result<serde_json::Value, ActorError>>;
    /// Runs a lifecycle transition on `key`, wherever it lives.
    fn transition<'a>(&'a self, key: &'a ImvuKey, transition: Transition, caller: &'a Caller) -> BoxFuture<'a, Result<ImvuInfo, ActorError>>;
}

impl Runtime {
    /// Routes the runtime's own requests for other IMVUs through `placement` from now on
    /// (the first call wins; a weak reference, since the cluster holds the runtime).
    pub fn set_placement(&self, placement: Weak<dyn Placement>) {
        let _ = self.inner.placement.set(placement);
    }

    fn placement(&self) -> Option<Arc<dyn Placement>> {
        self.inner.placement.get().and_then(Weak::upgrade)
    }

    /// Creates an IMVU where placement puts it (here on a single node).
    pub async fn create_placed(&self, tenant: &TenantId, kind: &str, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        match self.placement() {
            Some(placement) => placement.create(tenant, kind, caller).await,
            None => self.create_imvu(tenant, kind, caller).await,
        }
    }

    /// Asks an IMVU wherever it lives.
    pub async fn ask_placed(&self, key: &ImvuKey, message: serde_json::Value, caller: &Caller) -> Result<serde_json::Value, ActorError> {
        match self.placement() {
            Some(placement) => placement.ask_json(key, message, caller).await,
            None => self.ask_json(key, message).await,
        }
    }

    /// Runs a transition on an IMVU wherever it lives.
    pub async fn transition_placed(&self, key: &ImvuKey, transition: Transition, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        match self.placement() {
            Some(placement) => placement.transition(key, transition, caller).await,
            None => self.transition(key, transition, caller).await,
        }
    }
}

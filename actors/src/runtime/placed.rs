//! What the cluster needs of a runtime: creating an IMVU under an id allocated on another
//! node, and tenants created through another node.

use std::sync::Arc;

use super::Runtime;
use crate::error::ActorError;
use crate::host::ImvuInfo;
use crate::ids::{Caller, ImvuKey, TenantId};
use crate::records;
use crate::tenants::{TenantEntry, TenantPolicy};

impl Runtime {
    /// Creates an IMVU of `kind` under `key`, whose id was allocated by [`Runtime::allocate_id`]
    /// (on this node or another node of the region: ids come from one canon counter).
    pub async fn create_imvu_at(&self, key: &ImvuKey, kind: &str, caller: &Caller) -> Result<ImvuInfo, ActorError> {
        let kind = self.kind(kind)?;
        self.tenant_or_load(&key.tenant)?;
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
        Ok(self.inner.tenants.upsert(id.clone(), policy, 0))
    }
}

impl Runtime {
    /// Delivers a JSON message to a local IMVU without waiting for it to be handled (at most
    /// once; in the IMVU's mailbox order).
    pub async fn tell_json(&self, key: &ImvuKey, message: serde_json::Value) -> Result<(), ActorError> {
        self.route(key)?.tell_json(*key, message).await
    }
}

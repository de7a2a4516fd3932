//! The runtime's side of tenant fences and erasure (see [`crate::erasure`]): drawing a
//! tenant's fence, the sweep that lets go of tenants erased elsewhere, and the erasure jobs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};

use super::{Inner, Runtime};
use crate::audit::{AuditEntry, Chain};
use crate::erasure::{self, ErasureRecord, FENCE_SWEEP_MS};
use crate::error::ActorError;
use crate::ids::TenantId;
use crate::records;
use crate::store::{commit_durable, CanonWrite, StoreError};
use crate::tenants::TenantEntry;

/// Bytes of a tenant's fence.
const FENCE_LEN: usize = 16;
/// Sweeps between two looks for erasures under way that no job of this node runs (an
/// erasure whose node died resumes on the others).
const RESUME_EVERY_SWEEPS: u64 = 30;
/// Sweeps in a row that must find a tenant's fence absent (and no erasure recorded) before
/// the node lets go of it.
const FENCE_ABSENT_SWEEPS: u32 = 5;

/// Erasure jobs running on this node, by tenant.
#[derive(Default)]
pub(super) struct Erasing {
    running: Mutex<BTreeSet<TenantId>>,
}

impl Runtime {
    /// `tenant`'s fence as it stands in canon; when it has none and `draw` is set, a new one
    /// is drawn and written (only if still absent: two nodes drawing at once agree on one).
    pub(super) async fn tenant_fence(&self, tenant: &TenantId, draw: bool) -> Result<Option<Box<[u8]>>, ActorError> {
        let key = records::tenant_fence_key(tenant);
        if let Some(fence) = self.store().get(&key)? {
            return Ok(Some(fence.into_boxed_slice()));
        }
        if !draw {
            return Ok(None);
        }
        let mut fence = vec![0u8; FENCE_LEN];
        self.secrets().fill(&mut fence);
        let writes = vec![CanonWrite::Expect { key: key.clone(), value: None }, CanonWrite::Put { key: key.clone(), value: fence.clone() }];
        match commit_durable(&**self.store(), writes).await {
            Ok(_) => Ok(Some(fence.into_boxed_slice())),
            Err(StoreError::Conflict { .. }) => Ok(self.store().get(&key)?.map(Vec::into_boxed_slice)),
            Err(e) => Err(e.into()),
        }
    }

    /// Erases `tenant` (see [`crate::erasure`]): fences it now (no node can write anything of
    /// it from this commit on, its keys stop working) and deletes its records in the
    /// background. `by` names who asked. Returns the erasure's record.
    pub async fn erase_tenant(&self, tenant: &TenantId, by: &str) -> Result<ErasureRecord, ActorError> {
        let entry = self.tenant_or_load(tenant)?;
        let key_ids: Vec<String> = self.keys().list(Some(tenant), crate::auth::registry::KEYS_PER_OWNER_MAX)?.into_iter().map(|k| k.id).collect();
        let record = ErasureRecord { tenant: tenant.to_string(), by: by.to_owned(), started_unix_ms: self.clock().unix_ms(), keys_revoked: key_ids.len() as u64 };
        let writes = erasure::fence_writes(tenant, entry.fence.as_deref(), &key_ids, &record)?;
        match commit_durable(&**self.store(), writes).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(match erasure::status(&**self.store(), tenant)? {
                    Some(_) => ActorError::Conflict(format!("tenant {tenant} is being erased already")),
                    None => ActorError::not_found("tenant", tenant),
                })
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("vcos_erasures_total", "outcome" => "fenced").increment(1);
        tracing::info!(%tenant, by, keys = key_ids.len(), "tenant fenced for erasure");
        self.keys().forget_cached(&key_ids);
        self.forget_tenant(tenant);
        self.spawn_erasure(record.clone());
        Ok(record)
    }

    /// The erasure of `tenant` under way, if any.
    pub fn erasure_status(&self, tenant: &TenantId) -> Result<Option<ErasureRecord>, ActorError> {
        erasure::status(&**self.store(), tenant)
    }

    /// Lets go of a tenant erased (here or elsewhere): it is no longer found, its resident
    /// IMVUs drop their memory at their next command, its swarm coordinators stop.
    fn forget_tenant(&self, tenant: &TenantId) {
        if self.inner.tenants.forget(tenant).is_some() {
            crate::swarm::stop_tenant(self.swarms(), tenant);
            metrics::counter!("vcos_tenants_forgotten_total").increment(1);
            tracing::info!(%tenant, "tenant erased: let go of on this node");
        }
    }

    /// Runs `record`'s deletion step in the background, unless a job of this node runs it;
    /// retries until it completes (or another node completes it).
    fn spawn_erasure(&self, record: ErasureRecord) {
        let Ok(tenant) = TenantId::new(&record.tenant) else {
            tracing::error!(tenant = record.tenant, "an erasure record names an invalid tenant; left as is");
            return;
        };
        if !self.inner.erasing.running.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let store = inner.config.store.clone();
                drop(inner);
                match erasure::complete(&*store, &tenant, &record).await {
                    Ok(deleted) => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.erasing.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
                        if let Some(deleted) = deleted {
                            metrics::counter!("vcos_erasures_total", "outcome" => "completed").increment(1);
                            tracing::info!(%tenant, deleted, "tenant erased");
                            let at = inner.config.clock.unix_ms();
                            inner.audit.record(Chain::Cluster, AuditEntry::erased(&record, deleted, at));
                        }
                        return;
                    }
                    Err(e) => {
                        attempt = attempt.saturating_add(1);
                        tracing::warn!(%tenant, error = %e, attempt, "tenant erasure did not complete; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(1_000 * u64::from(attempt.min(30)))).await;
                    }
                }
            }
        });
    }

    /// Resumes the erasures under way that no job of this node runs.
    pub(super) fn resume_erasures(&self) -> Result<(), ActorError> {
        for record in erasure::under_way(&**self.store())? {
            if let Ok(tenant) = TenantId::new(&record.tenant) {
                self.forget_tenant(&tenant);
            }
            self.spawn_erasure(record);
        }
        Ok(())
    }

    /// One sweep: tenants whose fence changed (erased, or erased and created again) are let
    /// go of; a tenant loaded without a fence (written before fences existed) gets one.
    ///
    /// A fence that is merely absent is read as an erasure only when an erasure is recorded,
    /// or after [`FENCE_ABSENT_SWEEPS`] sweeps in a row: this node's replica may not have
    /// applied a tenant created a moment ago (the erasure record itself is gone once the
    /// erasure completes, so a node that was away all along needs the second rule).
    async fn sweep_fences(&self) -> Result<(), ActorError> {
        for entry in self.inner.tenants.list() {
            let current = self.store().get(&records::tenant_fence_key(&entry.id))?;
            match (&entry.fence, current) {
                (Some(held), Some(now)) if **held == *now => {
                    entry.fence_seen(true);
                }
                (None, _) => self.adopt_fence(&entry).await?,
                (Some(_), Some(_)) => self.forget_tenant(&entry.id),
                (Some(_), None) => {
                    let absent_for = entry.fence_seen(false);
                    if absent_for >= FENCE_ABSENT_SWEEPS || erasure::status(&**self.store(), &entry.id)?.is_some() {
                        self.forget_tenant(&entry.id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives a tenant loaded without a fence its fence (drawn now if its policy is still
    /// there); its IMVUs activated from now on write under it.
    async fn adopt_fence(&self, entry: &TenantEntry) -> Result<(), ActorError> {
        if self.store().get(&records::tenant_key(&entry.id))?.is_none() {
            self.forget_tenant(&entry.id);
            return Ok(());
        }
        let fence = self.tenant_fence(&entry.id, true).await?;
        let live = entry.live_imvus.load(std::sync::atomic::Ordering::Relaxed);
        self.inner.tenants.upsert(entry.id.clone(), entry.policy.clone(), live, fence);
        Ok(())
    }
}

/// Sweeps the node's tenants every [`FENCE_SWEEP_MS`] while the runtime lives, and resumes
/// erasures under way every [`RESUME_EVERY_SWEEPS`] sweeps (the first one at once).
pub(super) fn spawn_fence_sweeper(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(FENCE_SWEEP_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for sweep in 0u64.. {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let runtime = Runtime { inner };
            if let Err(e) = runtime.sweep_fences().await {
                tracing::debug!(error = %e, "tenant fences are checked again at the next sweep");
            }
            if sweep % RESUME_EVERY_SWEEPS == 0 {
                if let Err(e) = runtime.resume_erasures() {
                    tracing::warn!(error = %e, "erasures under way could not be listed; looking again later");
                }
            }
        }
    });
}

//! Tenants and their policies. Policies live in canon (`tenant/{name}`) and in memory as
//! `Arc<TenantEntry>`, which resident IMVUs point at (8 bytes each, instead of a name).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use vcos_supervision::Intensity;

use crate::error::ActorError;
use crate::ids::TenantId;
use crate::lifecycle::Transition;

/// What a tenant may do; read by the handshake and by the tenant's supervisors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// Read from records written before keys were issued by the server (a plain-text key
    /// chosen by the client), ignored, and dropped when the policy is next written.
    #[serde(rename = "api_key", skip_serializing)]
    pub legacy_api_key: Option<String>,
    /// Most IMVUs alive (not terminated) at once.
    pub max_imvus: u64,
    /// Transitions the tenant forbids (stage 17).
    pub denied_transitions: Vec<Transition>,
    /// Kinds the tenant may create; `None` = all.
    pub allowed_kinds: Option<Vec<String>>,
    /// Restart intensity of the tenant's IMVU supervisor: at most this many restarts…
    pub max_restarts: u32,
    /// …within this many milliseconds, else it escalates.
    pub restart_period_ms: u64,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            legacy_api_key: None,
            max_imvus: 10_000_000,
            denied_transitions: Vec::new(),
            allowed_kinds: None,
            max_restarts: 1000,
            restart_period_ms: 1000,
        }
    }
}

impl TenantPolicy {
    /// Checks the policy's limits; the error names the offending field.
    pub fn validate(&self) -> Result<(), ActorError> {
        let max = vcos_supervision::constants::INTENSITY_RESTARTS_MAX;
        if self.max_restarts > max {
            return Err(ActorError::BadRequest {
                field: "policy.max_restarts".into(),
                reason: format!("at most {max}"),
            });
        }
        if self.restart_period_ms == 0 {
            return Err(ActorError::BadRequest {
                field: "policy.restart_period_ms".into(),
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// The supervisor intensity this policy asks for.
    pub fn intensity(&self) -> Intensity {
        Intensity {
            max_restarts: self.max_restarts,
            period_ms: self.restart_period_ms,
        }
    }
}

/// A tenant as held in memory.
#[derive(Debug)]
pub struct TenantEntry {
    /// Name.
    pub id: TenantId,
    /// Policy.
    pub policy: TenantPolicy,
    /// IMVUs created and not terminated (quota, stage 45).
    pub live_imvus: AtomicU64,
}

/// All tenants of the node.
#[derive(Default)]
pub struct Tenants {
    by_id: RwLock<BTreeMap<TenantId, Arc<TenantEntry>>>,
}

impl Tenants {
    /// Looks a tenant up.
    pub fn get(&self, id: &TenantId) -> Result<Arc<TenantEntry>, ActorError> {
        self.read()
            .get(id)
            .cloned()
            .ok_or_else(|| ActorError::not_found("tenant", id))
    }

    /// Adds or replaces a tenant's entry (the live count carries over).
    pub fn upsert(&self, id: TenantId, policy: TenantPolicy, live_imvus: u64) -> Arc<TenantEntry> {
        let entry = Arc::new(TenantEntry {
            id: id.clone(),
            policy,
            live_imvus: AtomicU64::new(live_imvus),
        });
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        entry
    }

    /// Names of all tenants, sorted.
    pub fn list(&self) -> Vec<Arc<TenantEntry>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TenantId, Arc<TenantEntry>>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }
}

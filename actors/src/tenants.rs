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
    /// The tier: its prices and its default limits.
    pub tier: Tier,
    /// Limits that replace the tier's (each absent field keeps the tier's).
    pub limits: LimitOverrides,
    /// When a desktop node dies, start its sessions of this tenant afresh on another desktop
    /// node (a new desktop, the same session) instead of ending them Terminated.
    pub desktop_failover: bool,
}

/// A pricing tier: the defaults of a tenant's limits (and, with metering, its prices).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Small workloads.
    #[default]
    Basic,
    /// Production workloads.
    Pro,
    /// Large fleets.
    Enterprise,
}

/// The request limits a node enforces for one tenant (per node: a cluster of `n` nodes admits
/// up to `n` times as much).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Sustained requests per second (token bucket rate).
    pub requests_per_s: u32,
    /// Requests admitted at once above the rate (bucket size).
    pub burst: u32,
    /// Requests in progress at once.
    pub concurrent_requests: u32,
    /// Messages the tenant's IMVUs handle per UTC day, in the whole region (see
    /// [`crate::quota`] for how close to it a cluster stops).
    pub messages_per_day: u64,
    /// Bytes the tenant may keep in the canon (keys and values of all its records); past it,
    /// what would add records (new IMVUs, swarms, key-value entries) is refused.
    pub canon_bytes_stored: u64,
}

/// One GiB.
const GIB: u64 = 1 << 30;

impl Tier {
    /// The tier's limits.
    pub fn limits(self) -> TenantLimits {
        match self {
            Self::Basic => TenantLimits { requests_per_s: 50, burst: 100, concurrent_requests: 16, messages_per_day: 1_000_000, canon_bytes_stored: GIB },
            Self::Pro => TenantLimits { requests_per_s: 500, burst: 1_000, concurrent_requests: 128, messages_per_day: 50_000_000, canon_bytes_stored: 50 * GIB },
            Self::Enterprise => TenantLimits {
                requests_per_s: 5_000,
                burst: 10_000,
                concurrent_requests: 1_024,
                messages_per_day: 1_000_000_000,
                canon_bytes_stored: 1_024 * GIB,
            },
        }
    }
}

/// Per-tenant replacements of the tier's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    /// Replaces [`TenantLimits::requests_per_s`].
    pub requests_per_s: Option<u32>,
    /// Replaces [`TenantLimits::burst`].
    pub burst: Option<u32>,
    /// Replaces [`TenantLimits::concurrent_requests`].
    pub concurrent_requests: Option<u32>,
    /// Replaces [`TenantLimits::messages_per_day`].
    pub messages_per_day: Option<u64>,
    /// Replaces [`TenantLimits::canon_bytes_stored`].
    pub canon_bytes_stored: Option<u64>,
}

impl TenantPolicy {
    /// The limits in force: the tier's, with the overrides applied.
    pub fn limits(&self) -> TenantLimits {
        let tier = self.tier.limits();
        TenantLimits {
            requests_per_s: self.limits.requests_per_s.unwrap_or(tier.requests_per_s),
            burst: self.limits.burst.unwrap_or(tier.burst),
            concurrent_requests: self.limits.concurrent_requests.unwrap_or(tier.concurrent_requests),
            messages_per_day: self.limits.messages_per_day.unwrap_or(tier.messages_per_day),
            canon_bytes_stored: self.limits.canon_bytes_stored.unwrap_or(tier.canon_bytes_stored),
        }
    }
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
            tier: Tier::Basic,
            limits: LimitOverrides::default(),
            desktop_failover: false,
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
        for (field, value) in [
            ("policy.requests_per_s", self.limits.requests_per_s),
            ("policy.burst", self.limits.burst),
            ("policy.concurrent_requests", self.limits.concurrent_requests),
        ] {
            if value == Some(0) {
                return Err(ActorError::BadRequest {
                    field: field.into(),
                    reason: "must be at least 1 (a tenant that may do nothing has no use for a key)".into(),
                });
            }
        }
        for (field, value) in [("policy.messages_per_day", self.limits.messages_per_day), ("policy.canon_bytes_stored", self.limits.canon_bytes_stored)] {
            if value == Some(0) {
                return Err(ActorError::BadRequest { field: field.into(), reason: "must be at least 1".into() });
            }
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
    /// What the tenant used on this node since the meter last took it.
    pub usage: crate::metering::TenantUsage,
    /// How much of its quotas the tenant used, as last measured.
    pub quota: crate::quota::QuotaUse,
    /// The value of the tenant's fence record (`tenant-fence/{name}`) when it was loaded:
    /// drawn at creation, deleted first by an erasure. Every commit made for the tenant's
    /// IMVUs, audit chain and usage expects it, so that no node (however stale its memory)
    /// writes anything of an erased tenant, or of an earlier tenant of the same name, again.
    /// `None` only for entries built without a canon (unit tests).
    pub fence: Option<Box<[u8]>>,
    /// Set when this node learns that the tenant was erased: resident IMVUs that point at
    /// this entry drop their memory at their next command.
    erased: std::sync::atomic::AtomicBool,
    /// Fence sweeps in a row that found the fence record absent.
    fence_absent_sweeps: std::sync::atomic::AtomicU32,
}

impl TenantEntry {
    /// An entry with nothing used and nothing resident yet.
    pub fn new(id: TenantId, policy: TenantPolicy, live_imvus: u64, fence: Option<Box<[u8]>>) -> Self {
        Self {
            id,
            policy,
            live_imvus: AtomicU64::new(live_imvus),
            usage: crate::metering::TenantUsage::default(),
            quota: crate::quota::QuotaUse::default(),
            fence,
            erased: std::sync::atomic::AtomicBool::new(false),
            fence_absent_sweeps: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Counts a fence sweep that found the fence (`present`) or not; returns the sweeps in a
    /// row that did not.
    pub fn fence_seen(&self, present: bool) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        if present {
            self.fence_absent_sweeps.store(0, Relaxed);
            0
        } else {
            self.fence_absent_sweeps.fetch_add(1, Relaxed) + 1
        }
    }

    /// The guard a commit for this tenant carries: its fence record still holds what it
    /// held when this entry was loaded.
    pub fn guard(&self) -> Option<crate::store::CanonWrite> {
        self.fence.as_ref().map(|fence| crate::store::CanonWrite::Expect {
            key: crate::records::tenant_fence_key(&self.id),
            value: Some(fence.to_vec()),
        })
    }

    /// Whether this node learnt that the tenant was erased.
    pub fn is_erased(&self) -> bool {
        self.erased.load(std::sync::atomic::Ordering::Relaxed)
    }
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
    pub fn upsert(&self, id: TenantId, policy: TenantPolicy, live_imvus: u64, fence: Option<Box<[u8]>>) -> Arc<TenantEntry> {
        let entry = Arc::new(TenantEntry::new(id.clone(), policy, live_imvus, fence));
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        entry
    }

    /// Forgets an erased tenant: it is no longer found, and its entry is marked so that what
    /// still points at it (resident IMVUs) lets go. Returns the entry, if it was known.
    pub fn forget(&self, id: &TenantId) -> Option<Arc<TenantEntry>> {
        let entry = self.by_id.write().unwrap_or_else(|p| p.into_inner()).remove(id)?;
        entry.erased.store(true, std::sync::atomic::Ordering::Relaxed);
        Some(entry)
    }

    /// Names of all tenants, sorted.
    pub fn list(&self) -> Vec<Arc<TenantEntry>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TenantId, Arc<TenantEntry>>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }
}

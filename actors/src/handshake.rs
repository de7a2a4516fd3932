//! The 55-45-17 handshake: a three-stage admission check run at every lifecycle transition.
//!
//! Stages run in a fixed order and the first refusal wins:
//! - **55, system integrity**: the node is healthy, resources are within limits, the entity is
//!   isolated to its tenant;
//! - **45, compliance**: the caller is authorised for the tenant, the tenant's quota holds;
//! - **17, tenant governance**: the tenant's own policy allows the transition.
//!
//! Stages are pluggable ([`AdmissionStage`]); [`Handshake::standard`] installs one built-in
//! check per stage. The outcome is recorded with every transition, refused or not.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ids::{Caller, TenantId};
use crate::lifecycle::Transition;
use crate::tenants::TenantEntry;

/// One of the three stages, numbered as the handshake names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// 55: node health, resource limits, tenant isolation.
    SystemIntegrity,
    /// 45: caller authorisation and tenant quota.
    Compliance,
    /// 17: the tenant's own policy.
    TenantGovernance,
}

impl Stage {
    /// The stage's number: 55, 45 or 17.
    pub fn number(self) -> u8 {
        match self {
            Self::SystemIntegrity => 55,
            Self::Compliance => 45,
            Self::TenantGovernance => 17,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::SystemIntegrity => "system integrity",
            Self::Compliance => "compliance",
            Self::TenantGovernance => "tenant governance",
        };
        write!(f, "{} ({name})", self.number())
    }
}

/// The outcome recorded with a transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HandshakeOutcome {
    /// All three stages admitted it.
    Admitted,
    /// `stage` refused it for `reason`.
    Refused {
        /// The refusing stage.
        stage: Stage,
        /// Why.
        reason: String,
        /// The refusal is about the node's condition right now (shutting down, canon store
        /// failing, resident limit), not about the request: the same request may succeed later
        /// or on another node, so callers get a retryable error (HTTP 503), not a refusal.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        transient: bool,
    },
}

/// Health of the node, shared by every host; read by stage 55.
#[derive(Debug)]
pub struct NodeHealth {
    /// Set when the node begins to stop: no new activations.
    pub shutting_down: AtomicBool,
    /// IMVUs resident in memory right now.
    pub resident_imvus: AtomicU64,
    /// Ceiling on resident IMVUs; activations beyond it are refused.
    pub resident_imvus_max: u64,
    /// Cleared while the canon store reports failures.
    pub store_healthy: AtomicBool,
}

impl NodeHealth {
    /// A healthy node allowing `resident_imvus_max` resident IMVUs.
    pub fn new(resident_imvus_max: u64) -> Arc<Self> {
        Arc::new(Self {
            shutting_down: AtomicBool::new(false),
            resident_imvus: AtomicU64::new(0),
            resident_imvus_max,
            store_healthy: AtomicBool::new(true),
        })
    }
}

/// Everything a stage may look at.
pub struct AdmissionRequest<'a> {
    /// The transition asked for.
    pub transition: Transition,
    /// The tenant the request is addressed to.
    pub tenant: &'a TenantEntry,
    /// The tenant recorded on the entity (differs from `tenant` only on an isolation breach).
    pub entity_tenant: &'a TenantId,
    /// The entity's kind.
    pub kind: &'a str,
    /// Who asks.
    pub caller: &'a Caller,
    /// The node.
    pub node: &'a NodeHealth,
}

/// A pluggable check belonging to one stage.
pub trait AdmissionStage: Send + Sync + 'static {
    /// Which stage this check belongs to.
    fn stage(&self) -> Stage;
    /// `Err(reason)` refuses the transition.
    fn check(&self, request: &AdmissionRequest<'_>) -> Result<(), String>;
    /// Whether this check's refusals are about the node's condition right now, so that a retry
    /// may succeed (see [`HandshakeOutcome::Refused::transient`]).
    fn transient(&self) -> bool {
        false
    }
}

/// The ordered set of checks.
#[derive(Clone)]
pub struct Handshake {
    checks: Vec<Arc<dyn AdmissionStage>>,
}

impl Handshake {
    /// The built-in check of each stage.
    pub fn standard() -> Self {
        Self {
            checks: vec![
                Arc::new(SystemIntegrityCheck),
                Arc::new(NodeHealthCheck),
                Arc::new(ComplianceCheck),
                Arc::new(GovernanceCheck),
            ],
        }
    }

    /// Adds a check; it runs with the others of its stage, after them.
    pub fn with_check(mut self, check: Arc<dyn AdmissionStage>) -> Self {
        self.checks.push(check);
        // Stable sort keeps insertion order within a stage; stages run 55, 45, 17.
        self.checks
            .sort_by_key(|c| std::cmp::Reverse(c.stage().number()));
        self
    }

    /// Runs the stages in order; the first refusal wins.
    pub fn admit(&self, request: &AdmissionRequest<'_>) -> HandshakeOutcome {
        for check in &self.checks {
            if let Err(reason) = check.check(request) {
                metrics::counter!("vcos_handshake_refusals_total", "stage" => check.stage().number().to_string())
                    .increment(1);
                return HandshakeOutcome::Refused {
                    stage: check.stage(),
                    reason,
                    transient: check.transient(),
                };
            }
        }
        HandshakeOutcome::Admitted
    }
}

struct SystemIntegrityCheck;

impl AdmissionStage for SystemIntegrityCheck {
    fn stage(&self) -> Stage {
        Stage::SystemIntegrity
    }

    fn check(&self, r: &AdmissionRequest<'_>) -> Result<(), String> {
        if r.entity_tenant != &r.tenant.id {
            return Err(format!(
                "entity belongs to tenant {} and is isolated from tenant {}",
                r.entity_tenant, r.tenant.id
            ));
        }
        Ok(())
    }
}

/// Stage 55's checks of the node's condition: refusals that a retry may not meet.
struct NodeHealthCheck;

impl AdmissionStage for NodeHealthCheck {
    fn stage(&self) -> Stage {
        Stage::SystemIntegrity
    }

    fn transient(&self) -> bool {
        true
    }

    fn check(&self, r: &AdmissionRequest<'_>) -> Result<(), String> {
        let brings_to_life = matches!(
            r.transition,
            Transition::Create | Transition::Activate | Transition::Resume
        );
        if brings_to_life && r.node.shutting_down.load(Ordering::Relaxed) {
            return Err("node is shutting down".into());
        }
        if brings_to_life && !r.node.store_healthy.load(Ordering::Relaxed) {
            return Err("canon store is failing writes".into());
        }
        let resident = r.node.resident_imvus.load(Ordering::Relaxed);
        if r.transition == Transition::Create && resident >= r.node.resident_imvus_max {
            return Err(format!(
                "node holds {resident} resident IMVUs, its limit is {}",
                r.node.resident_imvus_max
            ));
        }
        Ok(())
    }
}

struct ComplianceCheck;

impl AdmissionStage for ComplianceCheck {
    fn stage(&self) -> Stage {
        Stage::Compliance
    }

    fn check(&self, r: &AdmissionRequest<'_>) -> Result<(), String> {
        let needed = r.transition.permission();
        if !r.caller.may(&r.tenant.id, needed) {
            return Err(match r.caller.role {
                None => format!("caller {:?} presented no key for tenant {}", r.caller.principal, r.tenant.id),
                Some(role) if r.caller.authenticated_tenant.as_ref() == Some(&r.tenant.id) => {
                    format!("caller {:?} is {role}; `{}` needs a role with `{needed}`", r.caller.principal, r.transition)
                }
                Some(_) => format!("caller {:?} is not authorised for tenant {}", r.caller.principal, r.tenant.id),
            });
        }
        if r.transition == Transition::Create {
            let live = r.tenant.live_imvus.load(Ordering::Relaxed);
            if live >= r.tenant.policy.max_imvus {
                return Err(format!(
                    "tenant quota exceeded: {live} of {} IMVUs",
                    r.tenant.policy.max_imvus
                ));
            }
        }
        Ok(())
    }
}

struct GovernanceCheck;

impl AdmissionStage for GovernanceCheck {
    fn stage(&self) -> Stage {
        Stage::TenantGovernance
    }

    fn check(&self, r: &AdmissionRequest<'_>) -> Result<(), String> {
        if r.tenant.policy.denied_transitions.contains(&r.transition) {
            return Err(format!("tenant policy denies `{}`", r.transition));
        }
        if r.transition == Transition::Create {
            if let Some(allowed) = &r.tenant.policy.allowed_kinds {
                if !allowed.iter().any(|k| k == r.kind) {
                    return Err(format!("tenant policy does not allow kind {:?}", r.kind));
                }
            }
        }
        Ok(())
    }
}

/// Shorthand used by tests and the node: live tenant counters.
pub(crate) fn bump(counter: &AtomicU64, up: bool) {
    if up {
        counter.fetch_add(1, Ordering::Relaxed);
    } else {
        // Saturating: a double decrement is a bug we log rather than wrap.
        let previous = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
        if previous == Ok(0) {
            tracing::warn!("counter decremented below zero");
        }
    }
}

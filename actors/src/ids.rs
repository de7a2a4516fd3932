//! Names of entities. Every entity is keyed by tenant first (`tenant/id`), so isolation is a
//! property of the key, not of a check someone may forget.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::ActorError;
use crate::auth::{Permission, Role};

/// Longest tenant name accepted. Short enough that a tenant id is a 32-byte `Copy` value:
/// every message carries its target's tenant, and a heap string there would cost an
/// allocation per message.
pub const TENANT_NAME_LEN_MAX: usize = 31;

/// A tenant: an isolated customer. 1..=31 characters of lower-case ASCII letters, digits,
/// `-` and `_`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId {
    len: u8,
    bytes: [u8; TENANT_NAME_LEN_MAX],
}

impl TenantId {
    /// Validates `name` and makes it a tenant id.
    pub fn new(name: &str) -> Result<Self, ActorError> {
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if name.is_empty() || name.len() > TENANT_NAME_LEN_MAX || !name.chars().all(valid_char) {
            return Err(ActorError::BadRequest {
                field: "tenant".into(),
                reason: format!(
                    "tenant names are 1..={TENANT_NAME_LEN_MAX} characters of a-z, 0-9, '-', '_' (got {name:?})"
                ),
            });
        }
        let mut bytes = [0u8; TENANT_NAME_LEN_MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The tenant `vcos up` creates on first start.
    pub fn default_tenant() -> Self {
        Self::new("default").expect("\"default\" is a valid tenant name")
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("validated as ASCII in TenantId::new")
    }
}

impl PartialOrd for TenantId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TenantId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({:?})", self.as_str())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// The node-assigned number of an IMVU. Numbers are never reused: the allocator's high-water
/// mark lives in canon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImvuId(pub u64);

impl ImvuId {
    /// Bits of an id below its region tag: the sequence its home region hands out.
    pub const SEQUENCE_BITS: u32 = 40;
    /// The largest region tag. Tag and sequence together stay below 2^53, so an id is exact
    /// in every JSON client (JavaScript reads numbers as doubles).
    pub const REGION_TAG_MAX: u16 = (1 << 13) - 1;

    /// The id numbered `sequence` by the region tagged `region_tag` (0: untagged, a node that
    /// is not in a cluster of regions). `None` when either is out of range.
    pub fn tagged(region_tag: u16, sequence: u64) -> Option<Self> {
        (region_tag <= Self::REGION_TAG_MAX && sequence < (1 << Self::SEQUENCE_BITS))
            .then(|| Self((u64::from(region_tag) << Self::SEQUENCE_BITS) | sequence))
    }

    /// The tag of the region that created this id, whose canon holds the IMVU: 0 for an id
    /// made before tags (its region is the one asked). An id from outside may carry a tag no
    /// region has, up to `u16::MAX`; it names no IMVU.
    pub fn region_tag(self) -> u16 {
        u16::try_from(self.0 >> Self::SEQUENCE_BITS).unwrap_or(u16::MAX)
    }
}

impl fmt::Display for ImvuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `tenant/id`: the full key of an IMVU (40 bytes, `Copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImvuKey {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Number within the node's id space.
    pub id: ImvuId,
}

impl fmt::Display for ImvuKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.id)
    }
}

/// The number of a swarm; swarms share the IMVU id space so that a key names one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SwarmId(pub u64);

impl fmt::Display for SwarmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `tenant/swarm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SwarmKey {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Swarm number.
    pub id: SwarmId,
}

impl fmt::Display for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/swarm-{}", self.tenant, self.id)
    }
}

/// Who is asking: the tenant the caller proved it acts for (by key), and the role it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Tenant the caller acts for; `None` for an anonymous caller. A cluster admin acting on a
    /// tenant carries that tenant here.
    pub authenticated_tenant: Option<TenantId>,
    /// The role of its key (in-process callers: `tenant_admin` of their tenant); `None` for an
    /// anonymous caller.
    pub role: Option<Role>,
    /// A name for logs and records (`key:<id>`, "swarm-7", "bench").
    pub principal: String,
}

impl Caller {
    /// An in-process caller acting for `tenant` with every right on it (embedders, swarms,
    /// IMVU-to-IMVU messages, tests).
    pub fn internal(tenant: &TenantId, principal: &str) -> Self {
        Self {
            authenticated_tenant: Some(tenant.clone()),
            role: Some(Role::TenantAdmin),
            principal: principal.to_owned(),
        }
    }

    /// A caller who presented no key.
    pub fn anonymous(principal: &str) -> Self {
        Self {
            authenticated_tenant: None,
            role: None,
            principal: principal.to_owned(),
        }
    }

    /// A caller authenticated by key `key_id` with `role`, acting on `tenant`.
    pub fn keyed(tenant: &TenantId, role: Role, key_id: &str) -> Self {
        Self {
            authenticated_tenant: Some(tenant.clone()),
            role: Some(role),
            principal: format!("key:{key_id}"),
        }
    }

    /// Whether the caller may do what `permission` covers on `tenant`.
    pub fn may(&self, tenant: &TenantId, permission: Permission) -> bool {
        match self.role {
            Some(Role::ClusterAdmin) => true,
            Some(role) => self.authenticated_tenant.as_ref() == Some(tenant) && role.grants(permission),
            None => false,
        }
    }
}

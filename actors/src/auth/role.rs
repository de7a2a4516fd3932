//! Roles and the permissions they grant.
//!
//! A route (or a lifecycle transition) needs one [`Permission`]; a key carries one [`Role`].
//! Tenant roles act on their own tenant only; cluster roles on the cluster (and, for the
//! cluster admin, on every tenant).
//!
//! | role            | read | use | operate | administer | cluster | scrape |
//! |-----------------|------|-----|---------|------------|---------|--------|
//! | `viewer`        | ✓    |     |         |            |         |        |
//! | `app`           | ✓    | ✓   |         |            |         |        |
//! | `operator`      | ✓    |     | ✓       |            |         |        |
//! | `tenant_admin`  | ✓    | ✓   | ✓       | ✓          |         |        |
//! | `cluster_admin` | ✓    | ✓   | ✓       | ✓          | ✓       | ✓      |
//! | `metrics`       |      |     |         |            |         | ✓      |

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the tenant's IMVUs, swarms, histories and data.
    Read,
    /// Create IMVUs and swarms, send messages, write the tenant's data.
    Use,
    /// Pause, resume and terminate IMVUs.
    Operate,
    /// Keys, policy, audit and export of the tenant.
    Administer,
    /// Tenants, membership and canon internals.
    Cluster,
    /// Read `/metrics`.
    Scrape,
}

impl Permission {
    /// Every permission, in table order.
    pub const ALL: [Self; 6] = [
        Self::Read,
        Self::Use,
        Self::Operate,
        Self::Administer,
        Self::Cluster,
        Self::Scrape,
    ];

    /// Name as in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Use => "use",
            Self::Operate => "operate",
            Self::Administer => "administer",
            Self::Cluster => "cluster",
            Self::Scrape => "scrape",
        }
    }
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read only, within one tenant.
    Viewer,
    /// An application: create IMVUs, send messages, swarms; within one tenant.
    App,
    /// Pause / resume / terminate and read, within one tenant.
    Operator,
    /// Everything within one tenant: keys, policy, audit, export.
    TenantAdmin,
    /// Everything, on every tenant and the cluster.
    ClusterAdmin,
    /// Scrapes `/metrics`, nothing else.
    Metrics,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 6] = [
        Self::Viewer,
        Self::App,
        Self::Operator,
        Self::TenantAdmin,
        Self::ClusterAdmin,
        Self::Metrics,
    ];

    /// Whether this role grants `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Self::Viewer => permission == P::Read,
            Self::App => matches!(permission, P::Read | P::Use),
            Self::Operator => matches!(permission, P::Read | P::Operate),
            Self::TenantAdmin => matches!(permission, P::Read | P::Use | P::Operate | P::Administer),
            Self::ClusterAdmin => true,
            Self::Metrics => permission == P::Scrape,
        }
    }

    /// Whether the role belongs to the cluster (a key with no tenant), not to one tenant.
    pub fn is_cluster_role(self) -> bool {
        matches!(self, Self::ClusterAdmin | Self::Metrics)
    }

    /// Whether a holder of this role may issue a key of `other`: never one that grants a
    /// permission this role lacks (no key raises its own rights).
    pub fn covers(self, other: Self) -> bool {
        Permission::ALL
            .iter()
            .all(|p| !other.grants(*p) || self.grants(*p))
    }

    /// The roles that grant `permission`.
    pub fn granting(permission: Permission) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|r| r.grants(permission))
            .collect()
    }

    /// Name as in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::App => "app",
            Self::Operator => "operator",
            Self::TenantAdmin => "tenant_admin",
            Self::ClusterAdmin => "cluster_admin",
            Self::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_covers_one_with_more_rights() {
        assert!(Role::TenantAdmin.covers(Role::App));
        assert!(Role::TenantAdmin.covers(Role::TenantAdmin));
        assert!(!Role::TenantAdmin.covers(Role::ClusterAdmin));
        assert!(!Role::App.covers(Role::Operator));
        assert!(!Role::Operator.covers(Role::App));
        assert!(!Role::Metrics.covers(Role::Viewer));
        for role in Role::ALL {
            assert!(Role::ClusterAdmin.covers(role));
            assert!(role.covers(role));
        }
    }

    #[test]
    fn only_cluster_roles_touch_the_cluster() {
        for role in Role::ALL {
            assert_eq!(role.grants(Permission::Cluster), role == Role::ClusterAdmin);
            if !role.is_cluster_role() {
                assert!(!role.grants(Permission::Scrape));
            }
        }
    }
}

//! What a tenant owns in the canon, for export (and, later, erasure): every prefix its records
//! live under, in one place, so that a new kind of record cannot be forgotten by one of them.

use crate::ids::TenantId;

/// One kind of a tenant's records: a name for export lines, and the canon prefix or key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// `policy`, `imvus` (meta, snapshots, histories), `swarms`, `refused`, `kv`, `usage`,
    /// `usage_days`, `alerts`, `audit`, `audit_head`, `key_index`.
    pub name: &'static str,
    /// Canon keys starting with this (a single key when [`Self::single`]).
    pub prefix: String,
    /// One key, read exactly (`tenant/a` must not take in `tenant/ab`).
    pub single: bool,
}

/// Every section of `tenant`'s records, in export order.
pub fn sections(tenant: &TenantId) -> Vec<Section> {
    let s = |name, prefix: String| Section { name, prefix, single: false };
    let one = |name, key: String| Section { name, prefix: key, single: true };
    vec![
        one("policy", crate::records::tenant_key(tenant)),
        s("imvus", crate::records::tenant_imvus_prefix(tenant)),
        s("swarms", format!("t/{tenant}/swarm/")),
        s("refused", crate::records::refused_prefix(tenant)),
        s("kv", format!("tkv/{tenant}/")),
        s("usage", format!("usage/{tenant}/")),
        s("usage_days", crate::quota::day_prefix(tenant)),
        s("alerts", format!("t/{tenant}/alerts/")),
        s("audit", format!("audit/t/{tenant}/")),
        one("audit_head", format!("audit/head/t/{tenant}")),
        s("key_index", format!("auth/tenant-keys/{tenant}/")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_section_of_one_tenant_covers_another_tenants_records() {
        let (a, ab) = (TenantId::new("a").expect("a"), TenantId::new("ab").expect("ab"));
        for (sa, sab) in sections(&a).iter().zip(sections(&ab)) {
            if sa.single {
                assert_ne!(sa.prefix, sab.prefix);
            } else {
                assert!(!sab.prefix.starts_with(&sa.prefix), "{} of a covers {}", sa.prefix, sab.prefix);
            }
        }
    }
}

//! Erasing a tenant: everything it owns leaves the canon, and no node can write any of it back.
//!
//! The hard part is not deleting: it is the nodes that still hold the tenant in memory (its
//! resident IMVUs, swarm coordinators, audit records and usage counts waiting to be written)
//! and would write them back after the deletion. Each tenant has a **fence** record
//! (`tenant-fence/{name}`, random bytes drawn at creation), and every commit made for the
//! tenant expects it (see [`crate::TenantEntry::guard`]). Erasure runs in two steps:
//!
//! 1. **Fence** (synchronous, one atomic commit): delete the fence, the policy and the
//!    tenant's key records, and record the erasure under way (`erasure/{name}`). From this
//!    commit on, every guarded write of the tenant fails, on every node, whatever its memory
//!    holds; its keys stop authenticating (within a key cache's TTL on other nodes).
//! 2. **Delete** (in the background, resumable): after [`ERASURE_SETTLE_MS`], in which every
//!    node's sweep ([`FENCE_SWEEP_MS`]) forgets the tenant and lets its IMVUs go, delete every
//!    record under the tenant's prefixes (those of [`crate::export::sections`], plus all of
//!    `t/{name}/`) in pages; wait once more and check that nothing came back; then remove the
//!    erasure record (guarded, so one node finishes it) and write one record to the cluster's
//!    audit log. A node that restarts resumes the erasures it finds under way, so an erasure
//!    that was acknowledged always completes.
//!
//! The canon's own snapshots stop holding the data once they are next built (openraft builds
//! them from the state machine, which no longer has it) and the Raft log entries that carried
//! it are purged with the log.

use serde::{Deserialize, Serialize};

use crate::error::ActorError;
use crate::ids::TenantId;
use crate::store::{commit_durable, CanonStore, CanonWrite, StoreError};

/// How often a node checks that the tenants it holds still have their fence.
pub const FENCE_SWEEP_MS: u64 = 1_000;
/// How long an erasure waits after fencing before it deletes, and again before it checks that
/// nothing came back: a few sweeps, so every reachable node has let the tenant go.
pub const ERASURE_SETTLE_MS: u64 = 3 * FENCE_SWEEP_MS;
/// Keys deleted per commit.
pub const ERASURE_PAGE_LEN: usize = 512;
/// Deletion passes at most (each after a settle); records still coming back after them are
/// reported as an error and the erasure is retried.
const ERASURE_PASSES_MAX: u32 = 5;
/// Erasure records read when looking for erasures to resume.
const ERASURES_SCANNED_MAX: usize = 10_000;
const ERASURE_PREFIX: &str = "erasure/";

/// An erasure under way, as stored in `erasure/{name}` until it completes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRecord {
    /// The tenant being erased.
    pub tenant: String,
    /// Who asked (a key id).
    pub by: String,
    /// When it was asked (unix ms).
    pub started_unix_ms: u64,
    /// Key records deleted with the fence.
    pub keys_revoked: u64,
}

/// Where an erasure's record lives.
pub fn erasure_key(tenant: &TenantId) -> String {
    format!("{ERASURE_PREFIX}{tenant}")
}

/// Every prefix (and single key) an erasure empties, the tenant's IMVU, swarm and refusal
/// records first (`t/{name}/` whole, so that a kind of record added there later is covered).
pub(crate) fn erased_prefixes(tenant: &TenantId) -> Vec<(String, bool)> {
    let mut out = vec![(format!("t/{tenant}/"), false)];
    for section in crate::export::sections(tenant) {
        if !section.prefix.starts_with(&out[0].0) {
            out.push((section.prefix, section.single));
        }
    }
    out
}

/// The commit that fences `tenant` (step 1): `fence` is the value its fence record must still
/// hold (`None`: a tenant whose fence was never written), `key_ids` its keys.
pub(crate) fn fence_writes(tenant: &TenantId, fence: Option<&[u8]>, key_ids: &[String], record: &ErasureRecord) -> Result<Vec<CanonWrite>, ActorError> {
    let value = serde_json::to_vec(record).map_err(|e| ActorError::Store(format!("erasure record: {e}")))?;
    let fence_key = crate::records::tenant_fence_key(tenant);
    let mut writes = vec![
        CanonWrite::Expect { key: fence_key.clone(), value: fence.map(<[u8]>::to_vec) },
        CanonWrite::Expect { key: erasure_key(tenant), value: None },
        CanonWrite::Delete { key: fence_key },
        CanonWrite::Delete { key: crate::records::tenant_key(tenant) },
        CanonWrite::Put { key: erasure_key(tenant), value },
    ];
    writes.extend(key_ids.iter().map(|id| CanonWrite::Delete { key: format!("auth/keys/{id}") }));
    Ok(writes)
}

/// Deletes every record of `tenant` (step 2, one pass); returns how many there were.
pub(crate) async fn delete_records(store: &dyn CanonStore, tenant: &TenantId) -> Result<u64, ActorError> {
    let mut deleted = 0u64;
    for (prefix, single) in erased_prefixes(tenant) {
        if single {
            if store.get(&prefix)?.is_some() {
                commit_durable(store, vec![CanonWrite::Delete { key: prefix }]).await?;
                deleted += 1;
            }
            continue;
        }
        let mut after: Option<String> = None;
        loop {
            let page = store.scan_prefix(&prefix, after.as_deref(), ERASURE_PAGE_LEN)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            deleted += page.len() as u64;
            let writes = page.into_iter().map(|(key, _)| CanonWrite::Delete { key }).collect();
            commit_durable(store, writes).await?;
        }
    }
    metrics::counter!("vcos_erasure_records_deleted_total").increment(deleted);
    Ok(deleted)
}

/// Runs step 2 of `record`'s erasure to its end: deletion passes until one finds nothing,
/// then the erasure record is removed. Returns the records deleted, or `None` when another
/// node finished the erasure first.
pub(crate) async fn complete(store: &dyn CanonStore, tenant: &TenantId, record: &ErasureRecord) -> Result<Option<u64>, ActorError> {
    let mut total = 0;
    for pass in 0..ERASURE_PASSES_MAX {
        tokio::time::sleep(std::time::Duration::from_millis(ERASURE_SETTLE_MS)).await;
        let deleted = delete_records(store, tenant).await?;
        total += deleted;
        if deleted == 0 && pass > 0 {
            let value = serde_json::to_vec(record).map_err(|e| ActorError::Store(format!("erasure record: {e}")))?;
            let key = erasure_key(tenant);
            return match commit_durable(store, vec![CanonWrite::Expect { key: key.clone(), value: Some(value) }, CanonWrite::Delete { key }]).await {
                Ok(_) => Ok(Some(total)),
                Err(StoreError::Conflict { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
    }
    Err(ActorError::Unavailable(format!("records of tenant {tenant} kept coming back after {ERASURE_PASSES_MAX} passes; the erasure is retried")))
}

/// The erasures under way (their records), to resume.
pub(crate) fn under_way(store: &dyn CanonStore) -> Result<Vec<ErasureRecord>, ActorError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    while out.len() < ERASURES_SCANNED_MAX {
        let page = store.scan_prefix(ERASURE_PREFIX, after.as_deref(), 256)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in page {
            out.push(serde_json::from_slice(&value).map_err(|e| ActorError::Store(format!("erasure record {key}: {e}")))?);
        }
    }
    Ok(out)
}

/// The erasure of `tenant` under way, if any.
pub fn status(store: &dyn CanonStore, tenant: &TenantId) -> Result<Option<ErasureRecord>, ActorError> {
    match store.get(&erasure_key(tenant))? {
        None => Ok(None),
        Some(value) => serde_json::from_slice(&value).map(Some).map_err(|e| ActorError::Store(format!("erasure record of {tenant}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_erased_prefixes_cover_every_exported_section_and_nothing_of_another_tenant() {
        let a = TenantId::new("a").expect("name");
        let erased = erased_prefixes(&a);
        for section in crate::export::sections(&a) {
            assert!(erased.iter().any(|(p, _)| section.prefix.starts_with(p.as_str())), "{} is not erased", section.prefix);
        }
        let ab = TenantId::new("ab").expect("name");
        for section in crate::export::sections(&ab) {
            for (prefix, single) in &erased {
                let covers = if *single { &section.prefix == prefix } else { section.prefix.starts_with(prefix.as_str()) };
                assert!(!covers, "erasing a takes {} of ab", section.prefix);
            }
        }
    }
}

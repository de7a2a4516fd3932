//! The audit log: who did what to which tenant, hash-chained in canon.
//!
//! One chain per tenant and one for the cluster. Record `n` of a chain lives at
//! `audit/t/{tenant}/{n:020}` (the cluster's at `audit/c/{n:020}`), holds the SHA-256 of record
//! `n - 1` (zeros for the first), and the chain's head — count and hash of the last record —
//! is kept apart at `audit/head/…`. [`AuditLog::verify`] walks a chain and reports every
//! record altered (its successor's link or the head no longer matches), removed (a gap), or
//! truncated (the head counts more than there are), and records past the head.
//!
//! Writing: [`AuditLog::record`] never blocks a request; records wait in memory and a flush
//! (every [`AUDIT_FLUSH_MS`], and at shutdown) appends each chain's batch in one commit guarded
//! by the head it read, so concurrent writers on several nodes interleave without breaking the
//! chain (the loser of a race reads the head again). A crash loses at most the records of the
//! last interval; past [`AUDIT_PENDING_MAX`] waiting records new ones are dropped and counted
//! (`vcos_audit_dropped_total`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vcos_supervision::Clock;

use crate::error::ActorError;
use crate::ids::TenantId;
use crate::store::{commit_durable, CanonStore, CanonWrite, StoreError};

/// How often waiting records are written.
pub const AUDIT_FLUSH_MS: u64 = 100;
/// Records waiting to be written, at most, on one node.
pub const AUDIT_PENDING_MAX: usize = 100_000;
/// Records one commit appends to a chain, at most.
const BATCH_MAX: usize = 512;
/// Attempts of one chain's batch when other writers move its head meanwhile.
const APPEND_ATTEMPTS: u32 = 5;
/// The link of a chain's first record.
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which chain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// A tenant's.
    Tenant(TenantId),
    /// The cluster's (tenants created or erased, cluster keys, canon and membership changes,
    /// sampled refusals of unauthenticated callers).
    Cluster,
}

impl Chain {
    fn prefix(&self) -> String {
        match self {
            Self::Tenant(t) => format!("audit/t/{t}/"),
            Self::Cluster => "audit/c/".to_owned(),
        }
    }

    fn head_key(&self) -> String {
        match self {
            Self::Tenant(t) => format!("audit/head/t/{t}"),
            Self::Cluster => "audit/head/c".to_owned(),
        }
    }

    fn record_key(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.prefix())
    }
}

/// What happened (everything but the chain's own fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// When (unix ms).
    pub at_ms: u64,
    /// The request's id (`x-request-id`).
    pub request_id: String,
    /// The key that asked (its id, never the secret); `None` for an unauthenticated caller.
    pub key_id: Option<String>,
    /// Its role.
    pub role: Option<String>,
    /// The operation: method and route template (`POST /v1/tenants/{tenant}/imvus`).
    pub action: String,
    /// What it was applied to: the request's path.
    pub target: String,
    /// The HTTP status it ended with.
    pub outcome: u16,
    /// The caller's address, when known.
    pub source: Option<String>,
    /// Requests this record stands for: 1, or for a data-plane request (a message, work
    /// items) the requests alike (key, action, target, outcome, source address) within one
    /// [`COUNTED_WINDOW_MS`], `at_ms` and `request_id` being the first one's.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// How long data-plane requests alike are counted into one record.
pub const COUNTED_WINDOW_MS: u64 = 1_000;

/// What makes data-plane requests alike (see [`AuditEntry::count`]).
type CountKey = (Chain, Option<String>, Option<String>, String, String, u16, Option<String>);

impl AuditEntry {
    /// The record an erasure leaves in the cluster's log when it completes.
    pub fn erased(record: &crate::erasure::ErasureRecord, records_deleted: u64, at_ms: u64) -> Self {
        Self {
            at_ms,
            request_id: format!("erasure-{}-{}", record.tenant, record.started_unix_ms),
            key_id: Some(record.by.clone()),
            role: None,
            action: format!("ERASED tenant ({records_deleted} records deleted, {} keys revoked)", record.keys_revoked),
            target: format!("/v1/tenants/{}", record.tenant),
            outcome: 200,
            source: None,
            count: 1,
        }
    }
}

/// A record as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in its chain, from 1.
    pub seq: u64,
    /// SHA-256 (hex) of the previous record as stored.
    pub prev_hash: String,
    /// What happened.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// A chain's head: how many records, and the hash of the last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// Records in the chain.
    pub count: u64,
    /// SHA-256 (hex) of the last record.
    pub hash: String,
}

/// What [`AuditLog::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records the head counts.
    pub count: u64,
    /// Records checked and found linked.
    pub checked: u64,
    /// Each problem, in chain order (`[]`: intact).
    pub problems: Vec<String>,
}

/// Which records a page holds.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// At or after (unix ms).
    pub from_ms: Option<u64>,
    /// Before (unix ms).
    pub to_ms: Option<u64>,
    /// By this key.
    pub key_id: Option<String>,
    /// Whose action starts so (`POST`, `DELETE /v1/tenants/{tenant}/keys`).
    pub action: Option<String>,
}

/// The audit log of a node's canon.
pub struct AuditLog {
    store: Arc<dyn CanonStore>,
    clock: Arc<dyn Clock>,
    pending: Mutex<BTreeMap<Chain, Vec<AuditEntry>>>,
    pending_len: std::sync::atomic::AtomicUsize,
    /// One flush at a time (the periodic one and the shutdown one).
    flushing: tokio::sync::Mutex<()>,
    /// The node's tenants, when the log belongs to a runtime: a tenant chain is written only
    /// under its tenant's fence, and the records of a tenant erased meanwhile are dropped.
    tenants: Option<Arc<crate::tenants::Tenants>>,
    /// Data-plane requests being counted, and when the window began (unix ms).
    counted: Mutex<(u64, BTreeMap<CountKey, AuditEntry>)>,
}

fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> ActorError {
    ActorError::Store(format!("audit record {key}: {e}"))
}

impl AuditLog {
    /// The log over `store`.
    pub fn new(store: Arc<dyn CanonStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            pending: Mutex::new(BTreeMap::new()),
            pending_len: std::sync::atomic::AtomicUsize::new(0),
            flushing: tokio::sync::Mutex::new(()),
            tenants: None,
            counted: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// The log of a runtime holding `tenants` (see the field's docs).
    pub fn guarded_by(mut self, tenants: Arc<crate::tenants::Tenants>) -> Self {
        self.tenants = Some(tenants);
        self
    }

    /// The time records are stamped with (unix ms).
    pub fn now_ms(&self) -> u64 {
        self.clock.unix_ms()
    }

    /// Queues `entry` for `chain` (written by the next flush).
    pub fn record(&self, chain: Chain, entry: AuditEntry) {
        use std::sync::atomic::Ordering;
        if self.pending_len.load(Ordering::Relaxed) >= AUDIT_PENDING_MAX {
            metrics::counter!("vcos_audit_dropped_total").increment(1);
            return;
        }
        self.pending_len.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(chain).or_default().push(entry);
    }

    /// Counts a data-plane request into the record of the requests alike in the current
    /// window (see [`AuditEntry::count`]); the source is kept without its port.
    pub fn record_counted(&self, chain: Chain, mut entry: AuditEntry) {
        if let Some(source) = &entry.source {
            entry.source = Some(source.parse::<std::net::SocketAddr>().map_or_else(|_| source.clone(), |a| a.ip().to_string()));
        }
        let key = (chain, entry.key_id.clone(), entry.role.clone(), entry.action.clone(), entry.target.clone(), entry.outcome, entry.source.clone());
        let full = {
            let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            if counted.1.is_empty() {
                counted.0 = entry.at_ms;
            }
            match counted.1.get_mut(&key) {
                Some(first) => first.count += 1,
                None => {
                    counted.1.insert(key, entry);
                }
            }
            counted.1.len() >= AUDIT_PENDING_MAX / 2
        };
        if full {
            self.close_window(u64::MAX);
        }
    }

    /// Moves the counted records into the waiting ones once their window is over at `now_ms`.
    fn close_window(&self, now_ms: u64) {
        let records = {
            let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            if counted.1.is_empty() || now_ms.saturating_sub(counted.0) < COUNTED_WINDOW_MS {
                return;
            }
            std::mem::take(&mut counted.1)
        };
        for ((chain, ..), entry) in records {
            self.record(chain, entry);
        }
    }

    /// Writes every waiting record; records of a chain that could not be written wait for the
    /// next flush (in order, ahead of newer ones). Counted records go once their window is over.
    pub async fn flush(&self) -> Result<(), ActorError> {
        use std::sync::atomic::Ordering;
        let _one = self.flushing.lock().await;
        self.close_window(self.clock.unix_ms());
        let batches = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut first_error = None;
        for (chain, entries) in batches {
            let mut written = 0;
            for batch in entries.chunks(BATCH_MAX) {
                match self.append(&chain, batch).await {
                    Ok(()) => written += batch.len(),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        break;
                    }
                }
            }
            self.pending_len.fetch_sub(written, Ordering::Relaxed);
            if written < entries.len() {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let newer = pending.remove(&chain).unwrap_or_default();
                let mut kept = entries[written..].to_vec();
                kept.extend(newer);
                pending.insert(chain, kept);
            }
        }
        metrics::counter!("vcos_audit_flushes_total").increment(1);
        first_error.map_or(Ok(()), Err)
    }

    async fn append(&self, chain: &Chain, entries: &[AuditEntry]) -> Result<(), ActorError> {
        let head_key = chain.head_key();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.store.get(&head_key)?;
            let head: AuditHead = match &before {
                Some(bytes) => serde_json::from_slice(bytes).map_err(|e| corrupt(&head_key, e))?,
                None => AuditHead { count: 0, hash: GENESIS_HASH.to_owned() },
            };
            let mut writes = vec![CanonWrite::Expect { key: head_key.clone(), value: before }];
            if let (Chain::Tenant(tenant), Some(tenants)) = (chain, &self.tenants) {
                match tenants.get(tenant) {
                    Ok(entry) => writes.extend(entry.guard()),
                    Err(_) => {
                        // Erased (and let go of by this node): its records go with it.
                        metrics::counter!("vcos_audit_dropped_total").increment(entries.len() as u64);
                        return Ok(());
                    }
                }
            }
            let (mut seq, mut prev) = (head.count, head.hash);
            for entry in entries {
                seq += 1;
                let record = AuditRecord { seq, prev_hash: prev, entry: entry.clone() };
                let bytes = serde_json::to_vec(&record).map_err(|e| corrupt("new", e))?;
                prev = hash_hex(&bytes);
                writes.push(CanonWrite::Put { key: chain.record_key(seq), value: bytes });
            }
            let head = serde_json::to_vec(&AuditHead { count: seq, hash: prev }).map_err(|e| corrupt(&head_key, e))?;
            writes.push(CanonWrite::Put { key: head_key.clone(), value: head });
            match commit_durable(self.store.as_ref(), writes).await {
                Ok(_) => {
                    metrics::counter!("vcos_audit_records_total").increment(entries.len() as u64);
                    return Ok(());
                }
                // Another writer appended first (or this replica lags): read the head again.
                Err(StoreError::Conflict { .. }) if attempt < APPEND_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The chain's head (count 0 for a chain never written).
    pub fn head(&self, chain: &Chain) -> Result<AuditHead, ActorError> {
        let key = chain.head_key();
        match self.store.get(&key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&key, e)),
            None => Ok(AuditHead { count: 0, hash: GENESIS_HASH.to_owned() }),
        }
    }

    /// Records of `chain` newest first, starting below `before` (a cursor: `None` starts at
    /// the newest), that pass `filter`: at most `limit`, looking at most at `scan_max`.
    /// Returns them and the cursor of the next page (`None`: nothing older).
    pub fn page(&self, chain: &Chain, before: Option<u64>, limit: usize, scan_max: u64, filter: &AuditFilter) -> Result<(Vec<AuditRecord>, Option<u64>), ActorError> {
        let head = self.head(chain)?;
        let mut seq = before.map_or(head.count, |b| b.saturating_sub(1).min(head.count));
        let mut out = Vec::new();
        let mut scanned = 0;
        while seq > 0 && out.len() < limit && scanned < scan_max {
            let key = chain.record_key(seq);
            scanned += 1;
            if let Some(bytes) = self.store.get(&key)? {
                let record: AuditRecord = serde_json::from_slice(&bytes).map_err(|e| corrupt(&key, e))?;
                let e = &record.entry;
                let keep = filter.from_ms.is_none_or(|f| e.at_ms >= f)
                    && filter.to_ms.is_none_or(|t| e.at_ms < t)
                    && filter.key_id.as_ref().is_none_or(|k| e.key_id.as_ref() == Some(k))
                    && filter.action.as_ref().is_none_or(|a| e.action.starts_with(a.as_str()));
                if keep {
                    out.push(record);
                }
            }
            seq -= 1;
        }
        Ok((out, (seq > 0).then_some(seq + 1)))
    }

    /// Walks `chain` from its first record to its head; see the module docs.
    pub fn verify(&self, chain: &Chain) -> Result<VerifyReport, ActorError> {
        let head = self.head(chain)?;
        let mut problems = Vec::new();
        let mut expected_prev = GENESIS_HASH.to_owned();
        let mut checked = 0;
        for seq in 1..=head.count {
            let key = chain.record_key(seq);
            let Some(bytes) = self.store.get(&key)? else {
                problems.push(format!("record {seq} is missing (removed, or the chain was truncated)"));
                expected_prev = String::new();
                continue;
            };
            let hash = hash_hex(&bytes);
            match serde_json::from_slice::<AuditRecord>(&bytes) {
                Err(e) => problems.push(format!("record {seq} is unreadable (altered): {e}")),
                Ok(record) if record.seq != seq => problems.push(format!("record {seq} says it is record {} (altered)", record.seq)),
                Ok(record) if !expected_prev.is_empty() && record.prev_hash != expected_prev => {
                    problems.push(format!("record {seq} does not link to record {} (one of them was altered)", seq - 1));
                }
                Ok(_) => checked += 1,
            }
            expected_prev = hash;
        }
        if head.count > 0 && !expected_prev.is_empty() && expected_prev != head.hash {
            problems.push(format!("record {} does not match the head (altered)", head.count));
        }
        let past = self.store.scan_prefix(&chain.prefix(), Some(&chain.record_key(head.count)), 1)?;
        if let Some((key, _)) = past.first() {
            problems.push(format!("{key} lies past the head (written outside the chain)"));
        }
        Ok(VerifyReport { count: head.count, checked, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use vcos_supervision::ManualClock;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            at_ms: 1_000 + i,
            request_id: format!("r{i}"),
            key_id: Some("0123456789abcdef".into()),
            role: Some("app".into()),
            action: if i % 2 == 0 { "POST /v1/tenants/{tenant}/imvus".into() } else { "DELETE /v1/tenants/{tenant}/keys/{key_id}".into() },
            target: format!("/v1/tenants/acme/imvus/{i}"),
            outcome: 201,
            source: Some("127.0.0.1:5000".into()),
            count: 1,
        }
    }

    async fn log_with(n: u64) -> (AuditLog, Arc<MemoryStore>, Chain) {
        let store = Arc::new(MemoryStore::new());
        let log = AuditLog::new(store.clone(), Arc::new(ManualClock::new(0)));
        let chain = Chain::Tenant(TenantId::new("acme").expect("tenant"));
        for i in 1..=n {
            log.record(chain.clone(), entry(i));
            if i % 4 == 0 {
                log.flush().await.expect("flush");
            }
        }
        log.flush().await.expect("flush");
        (log, store, chain)
    }

    async fn put(store: &MemoryStore, key: String, value: Option<Vec<u8>>) {
        let write = match value {
            Some(value) => CanonWrite::Put { key, value },
            None => CanonWrite::Delete { key },
        };
        commit_durable(store, vec![write]).await.expect("write");
    }

    #[tokio::test]
    async fn an_intact_chain_verifies_and_pages_newest_first() {
        let (log, _, chain) = log_with(10).await;
        let report = log.verify(&chain).expect("verify");
        assert_eq!((report.count, report.checked, report.problems.len()), (10, 10, 0), "{report:?}");
        let (page, next) = log.page(&chain, None, 3, 1_000, &AuditFilter::default()).expect("page");
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [10, 9, 8]);
        let (page, _) = log.page(&chain, next, 100, 1_000, &AuditFilter::default()).expect("page");
        assert_eq!(page.first().map(|r| r.seq), Some(7));
        let deletes = AuditFilter { action: Some("DELETE".into()), ..AuditFilter::default() };
        let (page, _) = log.page(&chain, None, 100, 1_000, &deletes).expect("page");
        assert_eq!(page.len(), 5);
    }

    #[tokio::test]
    async fn tampering_removal_and_truncation_are_each_reported() {
        let (log, store, chain) = log_with(8).await;
        // Altered: a record's outcome rewritten.
        let key = chain.record_key(3);
        let mut record: AuditRecord = serde_json::from_slice(&store.get(&key).expect("get").expect("present")).expect("record");
        record.entry.outcome = 200;
        put(&store, key, Some(serde_json::to_vec(&record).expect("json"))).await;
        let report = log.verify(&chain).expect("verify");
        assert!(report.problems.iter().any(|p| p.contains("record 4 does not link to record 3")), "{report:?}");
        // Removed: record 5 deleted.
        put(&store, chain.record_key(5), None).await;
        let report = log.verify(&chain).expect("verify");
        assert!(report.problems.iter().any(|p| p.contains("record 5 is missing")), "{report:?}");
        // Truncated: the last two records deleted (the head still counts them).
        put(&store, chain.record_key(7), None).await;
        put(&store, chain.record_key(8), None).await;
        let report = log.verify(&chain).expect("verify");
        assert!(report.problems.iter().any(|p| p.contains("record 8 is missing")), "{report:?}");
    }
}

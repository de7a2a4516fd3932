//! Tenant quotas measured across the region: messages per UTC day and canon bytes stored
//! (the limits themselves are part of the policy: [`crate::TenantLimits`]), and the usage
//! alerts sent as a tenant nears them.
//!
//! **Messages per day.** Each node writes, with its usage intervals, its running total of the
//! day per tenant (`usage-day/{tenant}/{day:06}/{writer}`, one record per node process and
//! day). Every [`crate::metering::USAGE_INTERVAL_MS`] a node sums the day's records of each
//! tenant ([`QuotaUse::messages_today`]); a message is refused when that sum plus what this
//! node handled since its last write reaches the quota. So a region stops within one interval
//! of traffic of the other nodes past the quota (at most `(nodes - 1) × rate × 10 s` messages
//! over), never later; the refusal is a 429 with `Retry-After` until the next UTC midnight.
//!
//! **Canon bytes stored.** What a tenant stores is the keys and values of every record under
//! its prefixes ([`counted_tenant`] says which tenant a key counts for). A store that keeps
//! those sums as it applies writes ([`CanonStore::stored_bytes`]: the Raft canon that
//! `vcos up` runs keeps them in its state machine) is read every [`STORAGE_COUNTED_MS`], in a
//! few reads per tenant. Other stores (the single-process and in-memory ones) are measured by
//! reading every record under each tenant's prefixes (pages of [`STORAGE_PAGE_LEN`], yielding
//! between them) every [`STORAGE_MEASURE_MS`]; such a measurement reads the whole replica, so
//! on a large one the pause after it is [`STORAGE_MEASURE_PAUSE_PER_COST`] times what it took
//! ([`storage_measure_pause_ms`]). (Before the Raft canon counted, three voters of 10 M
//! passivated IMVUs each scanned 18 GB back to back and never went idle: creation slowed from
//! 9 k/s to 3.5 k/s as the canon grew, and activations measured after it had a p99 of 12.6 ms.)
//! Past the quota, what would add records is refused (IMVU and swarm creation, key-value
//! writes); messages to existing IMVUs are not (their snapshots replace the previous ones), nor
//! are deletions.
//!
//! **Alerts.** When a measurement crosses [`ALERT_PERCENTS`] of a quota, the first node to
//! record it (`t/{tenant}/alerts/{quota}/{period}/{percent}`, written only if absent) counts
//! it in `vcos_usage_alerts_total` and appends it to the tenant's audit log: one alert per
//! tenant, quota, period and threshold in the whole region.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::{AuditEntry, AuditLog, Chain};
use crate::error::ActorError;
use crate::ids::TenantId;
use crate::store::{commit_durable, CanonStore, CanonWrite, StoreError};
use crate::tenants::TenantEntry;

/// Percentages of a quota at which an alert is recorded.
pub const ALERT_PERCENTS: [u64; 2] = [80, 100];
/// How often a node reads the canon bytes its tenants store from a store that counts them.
pub const STORAGE_COUNTED_MS: u64 = 5_000;
/// How often a node measures the canon bytes its tenants store by reading their records.
pub const STORAGE_MEASURE_MS: u64 = 60_000;
/// The pause after a measurement, at least, in multiples of what it took (see the module's doc).
pub const STORAGE_MEASURE_PAUSE_PER_COST: u64 = 20;
/// Records read per page when measuring.
pub const STORAGE_PAGE_LEN: usize = 1_024;
const DAY_MS: u64 = 86_400_000;

/// The UTC day (days since 1970-01-01) of `unix_ms`.
pub fn day_of(unix_ms: u64) -> u64 {
    unix_ms / DAY_MS
}

/// Where node `writer`'s running totals of `day` for `tenant` are kept.
pub fn day_record_key(tenant: &TenantId, day: u64, writer: &str) -> String {
    format!("{}{day:06}/{writer}", day_prefix(tenant))
}

/// Where all of `tenant`'s day records are kept.
pub fn day_prefix(tenant: &TenantId) -> String {
    format!("usage-day/{tenant}/")
}

/// How much of its quotas a tenant used, as last measured on this node.
#[derive(Debug, Default)]
pub struct QuotaUse {
    /// The day [`Self::messages`] counts (days since 1970).
    day: AtomicU64,
    /// Messages handled in the region on that day, from the day records.
    messages: AtomicU64,
    /// Canon bytes stored, at the last measurement.
    stored_bytes: AtomicU64,
    /// When it was measured (unix ms; 0: not yet).
    stored_at_ms: AtomicU64,
}

impl QuotaUse {
    /// Messages handled in the region on the day of `now_unix_ms`, as of the last refresh.
    pub fn messages_today(&self, now_unix_ms: u64) -> u64 {
        if self.day.load(Ordering::Relaxed) == day_of(now_unix_ms) {
            self.messages.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Canon bytes stored and when that was measured, if it was.
    pub fn stored_bytes(&self) -> Option<(u64, u64)> {
        let at = self.stored_at_ms.load(Ordering::Relaxed);
        (at > 0).then(|| (self.stored_bytes.load(Ordering::Relaxed), at))
    }

    fn set_messages(&self, day: u64, messages: u64) {
        self.day.store(day, Ordering::Relaxed);
        self.messages.store(messages, Ordering::Relaxed);
    }

    fn set_stored(&self, bytes: u64, at_ms: u64) {
        self.stored_bytes.store(bytes, Ordering::Relaxed);
        self.stored_at_ms.store(at_ms.max(1), Ordering::Relaxed);
    }
}

/// Refuses a message for `tenant` at `now_unix_ms` once its messages of the day reach its
/// quota (the region's total at the last refresh plus this node's since).
pub fn admit_message(tenant: &TenantEntry, now_unix_ms: u64) -> Result<(), ActorError> {
    let limit = tenant.policy.limits().messages_per_day;
    let used = tenant.quota.messages_today(now_unix_ms).saturating_add(tenant.usage.unwritten(crate::metering::UsageUnit::Messages));
    if used < limit {
        return Ok(());
    }
    metrics::counter!("vcos_quota_refusals_total", "quota" => "messages_per_day").increment(1);
    let next_day_ms = (day_of(now_unix_ms) + 1) * DAY_MS;
    Err(ActorError::QuotaExceeded {
        quota: "messages_per_day".into(),
        reason: format!("tenant {} handled {used} messages today (UTC), its quota is {limit}; it renews at midnight UTC", tenant.id),
        retry_after_s: Some((next_day_ms - now_unix_ms).div_ceil(1_000)),
    })
}

/// Refuses what would add records for `tenant` once its measured canon bytes reach its quota.
pub fn admit_growth(tenant: &TenantEntry) -> Result<(), ActorError> {
    let limit = tenant.policy.limits().canon_bytes_stored;
    match tenant.quota.stored_bytes() {
        Some((stored, _)) if stored >= limit => {
            metrics::counter!("vcos_quota_refusals_total", "quota" => "canon_bytes_stored").increment(1);
            Err(ActorError::QuotaExceeded {
                quota: "canon_bytes_stored".into(),
                reason: format!("tenant {} stores {stored} bytes in the canon, its quota is {limit}; delete records or raise the quota", tenant.id),
                retry_after_s: None,
            })
        }
        _ => Ok(()),
    }
}

/// Sums `tenant`'s day records of `day` (every node's running total of the day).
pub fn messages_of_day(store: &dyn CanonStore, tenant: &TenantId, day: u64) -> Result<u64, ActorError> {
    let prefix = format!("{}{day:06}/", day_prefix(tenant));
    let mut total = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_prefix(&prefix, after.as_deref(), 256)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in page {
            let record: crate::metering::UsageRecord = serde_json::from_slice(&value).map_err(|e| ActorError::Store(format!("usage day record {key}: {e}")))?;
            total = total.saturating_add(record.units.get(&crate::metering::UsageUnit::Messages).copied().unwrap_or(0));
        }
    }
    Ok(total)
}

/// Refreshes every tenant's messages of the day from the day records, and records the alerts
/// the new totals cross.
pub async fn refresh_messages(store: &dyn CanonStore, audit: &AuditLog, tenants: &[std::sync::Arc<TenantEntry>], now_unix_ms: u64) -> Result<(), ActorError> {
    let day = day_of(now_unix_ms);
    for tenant in tenants {
        let messages = messages_of_day(store, &tenant.id, day)?;
        tenant.quota.set_messages(day, messages);
        let limit = tenant.policy.limits().messages_per_day;
        alert_crossings(store, audit, tenant, "messages_per_day", &format!("{day:06}"), messages, limit, now_unix_ms).await?;
    }
    Ok(())
}

/// How long to wait for the next measurement after one that took `took_ms`:
/// [`STORAGE_MEASURE_MS`], or [`STORAGE_MEASURE_PAUSE_PER_COST`] times `took_ms` if longer.
pub fn storage_measure_pause_ms(took_ms: u64) -> u64 {
    STORAGE_MEASURE_MS.max(took_ms.saturating_mul(STORAGE_MEASURE_PAUSE_PER_COST))
}

/// The prefixes under which a key counts for a tenant's stored bytes: `(prefix, whole)`,
/// where the tenant's name follows `prefix` and ends the key (`whole`) or the next `/`.
/// These are [`crate::erasure`]'s prefixes of a tenant, which [`measure_storage`] reads where
/// the store does not count (a test holds the two lists together).
const COUNTED_PREFIXES: [(&[u8], bool); 8] = [
    (b"t/", false),
    (b"tenant/", true),
    (b"tkv/", false),
    (b"usage/", false),
    (b"usage-day/", false),
    (b"audit/t/", false),
    (b"audit/head/t/", true),
    (b"auth/tenant-keys/", false),
];

/// The tenant whose stored bytes `key` counts for, if any: the name of a valid tenant
/// ([`TenantId`]'s rules) in one of the tenant's prefixes.
///
/// A store that counts stored bytes as it applies writes calls this on every key it writes or
/// deletes, so what it answers is part of the replicated state: a change here is a change of
/// the store's format (the Raft canon's `FORMAT_VERSION` counts with this rule).
pub fn counted_tenant(key: &[u8]) -> Option<&[u8]> {
    COUNTED_PREFIXES.iter().find_map(|(prefix, whole)| {
        let rest = key.strip_prefix(*prefix)?;
        let name = if *whole {
            rest
        } else {
            let end = rest.iter().position(|&b| b == b'/')?;
            &rest[..end]
        };
        let valid = !name.is_empty()
            && name.len() <= crate::ids::TENANT_NAME_LEN_MAX
            && name.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        valid.then_some(name)
    })
}

/// Whether the last [`measure_storage`] read counts the store keeps or read every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMeasure {
    /// Read from the store's counts ([`CanonStore::stored_bytes`]).
    Counted,
    /// Summed over every record (a store that does not count).
    Scanned,
}

/// How long to wait for the next measurement after one of `kind` that took `took_ms`.
pub fn next_storage_measure_ms(kind: StorageMeasure, took_ms: u64) -> u64 {
    match kind {
        StorageMeasure::Counted => STORAGE_COUNTED_MS.max(took_ms.saturating_mul(STORAGE_MEASURE_PAUSE_PER_COST)),
        StorageMeasure::Scanned => storage_measure_pause_ms(took_ms),
    }
}

/// Measures the canon bytes of every tenant (keys and values under its prefixes: from the
/// store's counts where it keeps them, else by reading the records), and records the alerts
/// the new figures cross.
pub async fn measure_storage(store: &dyn CanonStore, audit: &AuditLog, tenants: &[std::sync::Arc<TenantEntry>], now_unix_ms: u64) -> Result<StorageMeasure, ActorError> {
    let mut kind = StorageMeasure::Counted;
    for tenant in tenants {
        let bytes = match store.stored_bytes(&tenant.id)? {
            Some(bytes) => bytes,
            None => {
                kind = StorageMeasure::Scanned;
                scan_stored_bytes(store, &tenant.id).await?
            }
        };
        tenant.quota.set_stored(bytes, now_unix_ms);
        let limit = tenant.policy.limits().canon_bytes_stored;
        // Storage does not renew: its alerts are per month, so a tenant that stays near its
        // quota hears of it again each month.
        let month = now_unix_ms / (30 * DAY_MS);
        alert_crossings(store, audit, tenant, "canon_bytes_stored", &format!("m{month:05}"), bytes, limit, now_unix_ms).await?;
    }
    Ok(kind)
}

/// The canon bytes of `tenant`, summed over every record under its prefixes.
pub async fn scan_stored_bytes(store: &dyn CanonStore, tenant: &TenantId) -> Result<u64, ActorError> {
    let mut bytes = 0u64;
    for (prefix, single) in crate::erasure::erased_prefixes(tenant) {
        if single {
            bytes += store.get(&prefix)?.map_or(0, |v| (prefix.len() + v.len()) as u64);
            continue;
        }
        let mut after: Option<String> = None;
        loop {
            let page = store.scan_prefix(&prefix, after.as_deref(), STORAGE_PAGE_LEN)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            bytes += page.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
            // A large tenant does not hold the node's other tasks up.
            tokio::task::yield_now().await;
        }
    }
    Ok(bytes)
}

/// Records an alert for each of [`ALERT_PERCENTS`] of `limit` that `after` reaches, once per
/// tenant, quota, period and threshold (the alert's record is written only if absent).
#[allow(clippy::too_many_arguments)]
async fn alert_crossings(store: &dyn CanonStore, audit: &AuditLog, tenant: &TenantEntry, quota: &str, period: &str, after: u64, limit: u64, now_unix_ms: u64) -> Result<(), ActorError> {
    for percent in ALERT_PERCENTS {
        if u128::from(after) * 100 < u128::from(limit) * u128::from(percent) {
            continue;
        }
        let key = format!("t/{}/alerts/{quota}/{period}/{percent:03}", tenant.id);
        if store.get(&key)?.is_some() {
            continue;
        }
        let value = format!("{{\"used\":{after},\"limit\":{limit},\"at_ms\":{now_unix_ms}}}").into_bytes();
        let mut writes = vec![CanonWrite::Expect { key: key.clone(), value: None }, CanonWrite::Put { key, value }];
        writes.extend(tenant.guard());
        match commit_durable(store, writes).await {
            Ok(_) => {}
            // Another node recorded it first (or the tenant is being erased).
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("vcos_usage_alerts_total", "quota" => quota.to_owned(), "percent" => percent.to_string()).increment(1);
        tracing::warn!(tenant = %tenant.id, quota, percent, used = after, limit, "tenant usage alert");
        let entry = AuditEntry {
            at_ms: now_unix_ms,
            request_id: format!("alert-{quota}-{period}-{percent}"),
            key_id: None,
            role: None,
            action: format!("ALERT {quota} at {percent}% ({after} of {limit})"),
            target: format!("/v1/tenants/{}/usage", tenant.id),
            outcome: if percent >= 100 { 429 } else { 200 },
            source: None,
            count: 1,
        };
        audit.record(Chain::Tenant(tenant.id.clone()), entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::UsageUnit;
    use crate::tenants::{LimitOverrides, TenantPolicy};
    use std::sync::Arc;

    fn tenant(messages_per_day: u64) -> Arc<TenantEntry> {
        let policy = TenantPolicy { limits: LimitOverrides { messages_per_day: Some(messages_per_day), ..LimitOverrides::default() }, ..TenantPolicy::default() };
        Arc::new(TenantEntry::new(TenantId::new("acme").expect("name"), policy, 0, None))
    }

    #[test]
    fn messages_are_refused_at_the_quota_until_midnight() {
        let t = tenant(10);
        let now = 3 * DAY_MS + 1_000;
        t.quota.set_messages(3, 7);
        t.usage.add(UsageUnit::Messages, 2);
        assert!(admit_message(&t, now).is_ok(), "7 in the region and 2 here: 9 of 10");
        t.usage.add(UsageUnit::Messages, 1);
        match admit_message(&t, now) {
            Err(ActorError::QuotaExceeded { quota, retry_after_s, .. }) => {
                assert_eq!(quota, "messages_per_day");
                assert_eq!(retry_after_s, Some((DAY_MS - 1_000) / 1_000));
            }
            other => panic!("expected the quota, got {other:?}"),
        }
        // A new day: the region's count of yesterday no longer counts.
        t.usage.take();
        assert!(admit_message(&t, 4 * DAY_MS).is_ok());
    }

    #[test]
    fn a_key_counts_for_the_tenant_whose_records_it_is() {
        for name in ["a", "ab", "acme-1_x"] {
            let tenant = TenantId::new(name).expect("name");
            let prefixes = crate::erasure::erased_prefixes(&tenant);
            assert_eq!(prefixes.len(), COUNTED_PREFIXES.len(), "one counted prefix per prefix of the tenant's records");
            for (prefix, single) in prefixes {
                let key = if single { prefix.clone() } else { format!("{prefix}x/y") };
                assert_eq!(counted_tenant(key.as_bytes()), Some(name.as_bytes()), "{key}");
            }
        }
        let too_long = format!("t/{}/x", "a".repeat(crate::ids::TENANT_NAME_LEN_MAX + 1));
        for key in ["t/a", "tenant/a/b", "t/A/x", "k/a/x", "tenant/", "t//x", "tenant-fence/a", too_long.as_str()] {
            assert_eq!(counted_tenant(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn a_long_measurement_spaces_the_next_in_proportion() {
        assert_eq!(next_storage_measure_ms(StorageMeasure::Counted, 3), STORAGE_COUNTED_MS);
        assert_eq!(next_storage_measure_ms(StorageMeasure::Counted, 1_000), 20_000, "counts of many tenants");
        assert_eq!(next_storage_measure_ms(StorageMeasure::Scanned, 3), STORAGE_MEASURE_MS);
        assert_eq!(storage_measure_pause_ms(0), STORAGE_MEASURE_MS);
        assert_eq!(storage_measure_pause_ms(2_000), STORAGE_MEASURE_MS, "40 s: the minute holds");
        assert_eq!(storage_measure_pause_ms(90_000), 1_800_000, "90 s measuring, 30 min pause: under 5 % of the node");
        assert_eq!(storage_measure_pause_ms(u64::MAX), u64::MAX);
    }

    #[tokio::test]
    async fn alerts_are_recorded_once_per_threshold_and_period() {
        let store = crate::store::MemoryStore::new();
        let audit = AuditLog::new(Arc::new(crate::store::MemoryStore::new()), Arc::new(vcos_supervision::ManualClock::new(0)));
        let t = tenant(10);
        for (used, expected) in [(5, 0), (8, 1), (9, 1), (12, 2), (12, 2)] {
            alert_crossings(&store, &audit, &t, "messages_per_day", "000003", used, 10, 1).await.expect("alerts");
            let alerts = store.scan_prefix("t/acme/alerts/", None, 10).expect("scan").len();
            assert_eq!(alerts, expected, "at {used} of 10");
        }
    }
}

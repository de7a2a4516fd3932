//! Usage metering and billing: what each tenant used, measured where the work happens, kept
//! in canon as interval records, priced by its tier in NexCoin.
//!
//! - Counting: each tenant's [`TenantUsage`] holds one atomic counter per [`UsageUnit`]. Shards
//!   add the messages they handle and the canon bytes their commits write; the tenant KV
//!   routes add theirs; the inference, desktop and workflow workers will add tokens, desktop
//!   seconds and workflow steps through [`crate::Runtime::meter`].
//! - Recording: every [`USAGE_INTERVAL_MS`] a node takes what its counters hold and writes, per
//!   tenant and interval, one record `usage/{tenant}/{interval start:020}/{writer}` with its
//!   running totals for that interval (a put, never a read-modify-write: each node writes its
//!   own records, so nodes never conflict). A crash loses what was counted since the last
//!   write: at most one interval of that node's usage, never a record already written.
//! - Reading: [`Usage`] sums the records of a time range; [`Bill`] prices them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::ActorError;
use crate::ids::TenantId;
use crate::store::{commit_durable, CanonStore, CanonWrite};
use crate::tenants::{TenantEntry, Tier};

/// How often a node writes its usage records.
pub const USAGE_INTERVAL_MS: u64 = 10_000;
/// (tenant, interval) totals a node keeps unwritten, at most (the canon unavailable for long):
/// past it the oldest are dropped and counted (`vcos_usage_dropped_total`).
pub const USAGE_PENDING_MAX: usize = 100_000;
/// Records one usage query reads, at most.
pub const USAGE_RECORDS_SCANNED_MAX: usize = 200_000;

/// What is metered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageUnit {
    /// Messages handled by the tenant's IMVUs.
    Messages,
    /// Bytes written to the canon for the tenant (IMVU state, its key-value store).
    CanonBytes,
    /// Model tokens (inference workers).
    Tokens,
    /// Seconds of virtual desktops (desktop workers).
    DesktopSeconds,
    /// Durable workflow steps (workflow workers).
    WorkflowSteps,
}

impl UsageUnit {
    /// Every unit.
    pub const ALL: [Self; 5] = [Self::Messages, Self::CanonBytes, Self::Tokens, Self::DesktopSeconds, Self::WorkflowSteps];

    fn index(self) -> usize {
        self as usize
    }

    /// Name as in records and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::CanonBytes => "canon_bytes",
            Self::Tokens => "tokens",
            Self::DesktopSeconds => "desktop_seconds",
            Self::WorkflowSteps => "workflow_steps",
        }
    }

    /// Price of `quantity` units in millionths of a NexCoin under `tier` (canon bytes are
    /// priced per KiB started).
    pub fn price_micro_nxc(self, tier: Tier, quantity: u64) -> u64 {
        let (per, base) = match self {
            Self::Messages => (1, 10),
            Self::CanonBytes => (1_024, 5),
            Self::Tokens => (1, 2),
            Self::DesktopSeconds => (1, 500),
            Self::WorkflowSteps => (1, 50),
        };
        let percent = match tier {
            Tier::Basic => 100,
            Tier::Pro => 70,
            Tier::Enterprise => 50,
        };
        quantity.div_ceil(per).saturating_mul(base).saturating_mul(percent) / 100
    }
}

/// A tenant's counters on this node, since they were last taken.
#[derive(Debug, Default)]
pub struct TenantUsage {
    counts: [AtomicU64; 5],
    /// Nothing is counted while set: only `vcos bench http` sets it ([`Self::pause_for_benchmark`]).
    paused: AtomicBool,
}

impl TenantUsage {
    /// Adds `n` of `unit`.
    pub fn add(&self, unit: UsageUnit, n: u64) {
        // One relaxed load per count: what the benchmark's switch costs everyone else.
        if self.paused.load(Ordering::Relaxed) {
            return;
        }
        self.counts[unit.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Stops (`true`) or resumes (`false`) counting this tenant's usage on this node — and so
    /// writing its usage records, since nothing is counted. For `vcos bench http` only, which
    /// measures the HTTP facade with metering off against the same run with it on, in-process:
    /// no route, option of `vcos up` or other caller in the node reaches it (an unmetered
    /// tenant is an unbilled one).
    #[doc(hidden)]
    pub fn pause_for_benchmark(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// What the counter of `unit` holds (counted and not yet taken by the meter).
    pub fn unwritten(&self, unit: UsageUnit) -> u64 {
        self.counts[unit.index()].load(Ordering::Relaxed)
    }

    /// What the counters hold, leaving them at zero.
    pub fn take(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.counts[i].swap(0, Ordering::Relaxed))
    }
}

/// One node's totals for one tenant and interval, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// The interval's start (unix ms, a multiple of its length).
    pub interval_start_ms: u64,
    /// Its length.
    pub interval_ms: u64,
    /// Units used in it, by unit name.
    pub units: BTreeMap<UsageUnit, u64>,
}

/// What a node has counted and not yet written, per tenant and interval.
#[derive(Default)]
pub struct Meter {
    pending: std::sync::Mutex<BTreeMap<(TenantId, u64), [u64; 5]>>,
    /// This node's running totals per tenant and UTC day (today's and yesterday's), written
    /// as day records for the daily quotas ([`crate::quota`]).
    days: std::sync::Mutex<BTreeMap<(TenantId, u64), [u64; 5]>>,
}

fn usage_prefix(tenant: &TenantId) -> String {
    format!("usage/{tenant}/")
}

impl Meter {
    /// Takes every tenant's counters into the interval of `now_unix_ms`, then writes the
    /// records of every interval with something in it; on failure they stay for the next
    /// write. `writer` names this node's records.
    pub async fn write(&self, store: &dyn CanonStore, tenants: &[std::sync::Arc<TenantEntry>], now_unix_ms: u64, writer: &str) -> Result<(), ActorError> {
        let interval_start = now_unix_ms - now_unix_ms % USAGE_INTERVAL_MS;
        let held: BTreeMap<&TenantId, &TenantEntry> = tenants.iter().map(|t| (&t.id, &**t)).collect();
        let snapshot: Vec<((TenantId, u64), [u64; 5])> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for tenant in tenants {
                let taken = tenant.usage.take();
                if taken.iter().any(|n| *n > 0) {
                    let mut days = self.days.lock().unwrap_or_else(|p| p.into_inner());
                    let day = days.entry((tenant.id.clone(), crate::quota::day_of(now_unix_ms))).or_insert([0; 5]);
                    for (total, n) in day.iter_mut().zip(taken) {
                        *total = total.saturating_add(n);
                    }
                    let slot = pending.entry((tenant.id.clone(), interval_start)).or_insert([0; 5]);
                    for (total, n) in slot.iter_mut().zip(taken) {
                        *total = total.saturating_add(n);
                    }
                }
            }
            // A tenant no longer held was erased: what it used goes with it.
            let before = pending.len();
            pending.retain(|(tenant, _), _| held.contains_key(tenant));
            metrics::counter!("vcos_usage_dropped_total").increment((before - pending.len()) as u64);
            while pending.len() > USAGE_PENDING_MAX {
                let Some(oldest) = pending.keys().min_by_key(|(_, start)| *start).cloned() else { break };
                pending.remove(&oldest);
                metrics::counter!("vcos_usage_dropped_total").increment(1);
            }
            pending.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let today = crate::quota::day_of(now_unix_ms);
        let day_totals: Vec<((TenantId, u64), [u64; 5])> = {
            let mut days = self.days.lock().unwrap_or_else(|p| p.into_inner());
            days.retain(|(tenant, day), _| *day + 1 >= today && held.contains_key(tenant));
            days.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        let mut writes = Vec::with_capacity(snapshot.len() + 1);
        // Each tenant's records under its fence (see `TenantEntry::fence`): records of a
        // tenant erased meanwhile fail the commit, and are dropped at the next write.
        let mut guarded: Option<&TenantId> = None;
        for ((tenant, start), counts) in &snapshot {
            if guarded != Some(tenant) {
                guarded = Some(tenant);
                writes.extend(held.get(tenant).and_then(|t| t.guard()));
            }
            let units = UsageUnit::ALL.iter().zip(counts).filter(|(_, n)| **n > 0).map(|(u, n)| (*u, *n)).collect();
            let record = UsageRecord { interval_start_ms: *start, interval_ms: USAGE_INTERVAL_MS, units };
            let value = serde_json::to_vec(&record).map_err(|e| ActorError::Store(format!("usage record: {e}")))?;
            writes.push(CanonWrite::Put { key: format!("{}{start:020}/{writer}", usage_prefix(tenant)), value });
        }
        // The day records of the tenants written now: running totals, so rewriting one
        // after a failed write loses nothing.
        let written: std::collections::BTreeSet<&TenantId> = snapshot.iter().map(|((t, _), _)| t).collect();
        for ((tenant, day), counts) in &day_totals {
            if !written.contains(tenant) {
                continue;
            }
            let units = UsageUnit::ALL.iter().zip(counts).filter(|(_, n)| **n > 0).map(|(u, n)| (*u, *n)).collect();
            let record = UsageRecord { interval_start_ms: day * 86_400_000, interval_ms: 86_400_000, units };
            let value = serde_json::to_vec(&record).map_err(|e| ActorError::Store(format!("usage day record: {e}")))?;
            writes.push(CanonWrite::Put { key: crate::quota::day_record_key(tenant, *day, writer), value });
        }
        commit_durable(store, writes).await?;
        // Written: past intervals are done; the current one keeps its running totals (the next
        // write replaces its record with larger ones).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|(_, start), _| *start >= interval_start);
        Ok(())
    }
}

/// A tenant's usage over a time range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Range start (unix ms, included).
    pub from_ms: u64,
    /// Range end (unix ms, excluded).
    pub to_ms: u64,
    /// Units used, by unit.
    pub totals: BTreeMap<UsageUnit, u64>,
    /// Interval records summed.
    pub records: u64,
}

/// Sums `tenant`'s records of intervals starting in `[from_ms, to_ms)`.
pub fn usage(store: &dyn CanonStore, tenant: &TenantId, from_ms: u64, to_ms: u64) -> Result<Usage, ActorError> {
    let prefix = usage_prefix(tenant);
    let mut out = Usage { from_ms, to_ms, ..Usage::default() };
    let first = from_ms - from_ms % USAGE_INTERVAL_MS;
    // Keys sort by interval start: begin just before the first interval of the range.
    let mut after = (first > 0).then(|| format!("{prefix}{:020}", first - 1));
    let mut scanned = 0;
    loop {
        let page = store.scan_prefix(&prefix, after.as_deref(), 512)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in &page {
            scanned += 1;
            let record: UsageRecord = serde_json::from_slice(value).map_err(|e| ActorError::Store(format!("usage record {key}: {e}")))?;
            if record.interval_start_ms >= to_ms {
                return Ok(out);
            }
            if record.interval_start_ms >= from_ms {
                out.records += 1;
                for (unit, n) in record.units {
                    *out.totals.entry(unit).or_insert(0) += n;
                }
            }
        }
        if scanned >= USAGE_RECORDS_SCANNED_MAX {
            return Err(ActorError::BadRequest { field: "from".into(), reason: format!("the range holds over {USAGE_RECORDS_SCANNED_MAX} usage records; ask for a shorter one") });
        }
    }
    Ok(out)
}

/// One line of a bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BillLine {
    /// The unit.
    pub unit: UsageUnit,
    /// Units used.
    pub quantity: u64,
    /// Its price, millionths of a NexCoin.
    pub amount_micro_nxc: u64,
}

/// A tenant's bill for a range, from its usage records and its tier's prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bill {
    /// The tier priced at.
    pub tier: Tier,
    /// What was used and what it costs.
    pub lines: Vec<BillLine>,
    /// The sum, millionths of a NexCoin.
    pub total_micro_nxc: u64,
    /// The usage it prices.
    pub usage: Usage,
}

impl Bill {
    /// Prices `usage` at `tier`.
    pub fn of(usage: Usage, tier: Tier) -> Self {
        let lines: Vec<BillLine> = usage
            .totals
            .iter()
            .map(|(unit, quantity)| BillLine { unit: *unit, quantity: *quantity, amount_micro_nxc: unit.price_micro_nxc(tier, *quantity) })
            .collect();
        let total_micro_nxc = lines.iter().map(|l| l.amount_micro_nxc).sum();
        Self { tier, lines, total_micro_nxc, usage }
    }
}

/// The unix-ms range `[start, end)` of calendar month `period` (`YYYY-MM`, UTC).
pub fn month_range(period: &str) -> Option<(u64, u64)> {
    let (year, month) = period.split_once('-')?;
    let (year, month): (i64, i64) = (year.parse().ok()?, month.parse().ok()?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || period.len() != 7 {
        return None;
    }
    let start = days_from_civil(year, month, 1);
    let end = if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) };
    Some((u64::try_from(start).ok()? * 86_400_000, u64::try_from(end).ok()? * 86_400_000))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Millionths of a NexCoin as a decimal (`1.250000`).
pub fn format_nxc(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::tenants::TenantPolicy;
    use std::sync::Arc;

    fn entry(name: &str) -> Arc<TenantEntry> {
        Arc::new(TenantEntry::new(TenantId::new(name).expect("name"), TenantPolicy::default(), 0, None))
    }

    #[tokio::test]
    async fn counted_usage_is_written_per_interval_and_summed_and_priced() {
        let store = MemoryStore::new();
        let meter = Meter::default();
        let (acme, globex) = (entry("acme"), entry("globex"));
        let tenants = vec![acme.clone(), globex.clone()];
        acme.usage.add(UsageUnit::Messages, 7);
        acme.usage.add(UsageUnit::CanonBytes, 3_000);
        meter.write(&store, &tenants, 20_500, "n1").await.expect("write");
        acme.usage.add(UsageUnit::Messages, 3);
        meter.write(&store, &tenants, 25_000, "n1").await.expect("same interval: its record grows");
        acme.usage.add(UsageUnit::Messages, 2);
        meter.write(&store, &tenants, 31_000, "n1").await.expect("next interval");
        // Another node's meter writes records of its own.
        let other = Meter::default();
        acme.usage.add(UsageUnit::Messages, 3);
        globex.usage.add(UsageUnit::Tokens, 100);
        other.write(&store, &tenants, 32_000, "n2").await.expect("another node");
        let all = usage(&store, &acme.id, 0, 1_000_000).expect("usage");
        assert_eq!(all.totals[&UsageUnit::Messages], 15);
        assert_eq!(all.totals[&UsageUnit::CanonBytes], 3_000);
        assert!(!all.totals.contains_key(&UsageUnit::Tokens), "globex's tokens are globex's");
        let first = usage(&store, &acme.id, 20_000, 30_000).expect("usage");
        assert_eq!(first.totals[&UsageUnit::Messages], 10);
        let bill = Bill::of(all, Tier::Pro);
        // 15 messages × 10 µNXC × 70 % + 3 KiB started × 5 µNXC × 70 %.
        assert_eq!(bill.total_micro_nxc, 105 + 10);
        assert_eq!(format_nxc(1_250_000), "1.250000");
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_range("1970-01"), Some((0, 31 * 86_400_000)));
        let (start, end) = month_range("2024-02").expect("leap February");
        assert_eq!((end - start) / 86_400_000, 29);
        assert_eq!(month_range("2026-11").map(|(s, _)| s), Some(1_793_491_200_000));
        for bad in ["2026-13", "26-11", "2026-1", "2026/11", "x"] {
            assert_eq!(month_range(bad), None, "{bad}");
        }
    }
}

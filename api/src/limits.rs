//! Rate limits: a tenant's requests per second (token bucket with a burst) and requests in
//! progress, per node, from its policy (`TenantPolicy::limits`: the tier's, with overrides);
//! and callers that keep presenting bad keys, per source address.
//!
//! Only tenant keys are limited (a cluster admin acting on a tenant is not: an operator must be
//! able to repair a tenant that floods). Past a limit: 429 with `Retry-After`, recorded in the
//! audit log and counted (`vcos_http_throttled_total{kind}`). Time is the runtime's injected
//! clock; state is bounded by the number of tenants and [`FAILURE_SOURCES_MAX`] addresses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vcos_actors::{TenantId, TenantLimits};

use crate::error::ApiError;

/// Failed authentications from one address within [`FAILURE_WINDOW_MS`] before it is refused
/// for the rest of the window.
pub(crate) const FAILURES_PER_WINDOW: u32 = 20;
/// The window of [`FAILURES_PER_WINDOW`].
pub(crate) const FAILURE_WINDOW_MS: u64 = 10_000;
/// Addresses remembered at once, at most (then the memory starts afresh).
pub(crate) const FAILURE_SOURCES_MAX: usize = 10_000;

/// A tenant's bucket: tokens in thousandths, and when it was last filled.
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
}

/// The limits' state on this node.
#[derive(Default)]
pub(crate) struct Limiter {
    buckets: Mutex<BTreeMap<TenantId, Bucket>>,
    in_flight: Arc<Mutex<BTreeMap<TenantId, u32>>>,
    failures: Mutex<BTreeMap<String, (u64, u32)>>,
}

/// Ends a request's share of its tenant's concurrency when dropped.
pub(crate) struct InFlight {
    tenant: TenantId,
    counts: Arc<Mutex<BTreeMap<TenantId, u32>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

fn throttled(kind: &'static str, message: String, retry_after_ms: u64) -> ApiError {
    metrics::counter!("vcos_http_throttled_total", "kind" => kind).increment(1);
    ApiError::Throttled { code: kind, message, retry_after_s: retry_after_ms.div_ceil(1_000).max(1) }
}

impl Limiter {
    /// Admits one request of `tenant` at `now_ms` under `limits`, or says when to retry.
    pub(crate) fn admit(&self, tenant: &TenantId, limits: TenantLimits, now_ms: u64) -> Result<InFlight, ApiError> {
        let rate = u64::from(limits.requests_per_s.max(1));
        let capacity = u64::from(limits.burst.max(1)) * 1_000;
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let bucket = buckets.entry(tenant.clone()).or_insert(Bucket { milli_tokens: capacity, at_ms: now_ms });
            // `rate` tokens a second is `rate` thousandths a millisecond.
            let refill = now_ms.saturating_sub(bucket.at_ms).saturating_mul(rate);
            bucket.milli_tokens = bucket.milli_tokens.saturating_add(refill).min(capacity);
            bucket.at_ms = now_ms;
            if bucket.milli_tokens < 1_000 {
                let wait_ms = (1_000 - bucket.milli_tokens).div_ceil(rate);
                return Err(throttled(
                    "rate_limited",
                    format!("tenant {tenant} is over {} requests/s (burst {}) on this node; retry after the Retry-After seconds", limits.requests_per_s, limits.burst),
                    wait_ms,
                ));
            }
            bucket.milli_tokens -= 1_000;
        }
        let mut counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(tenant.clone()).or_insert(0);
        if *n >= limits.concurrent_requests.max(1) {
            return Err(throttled(
                "too_many_concurrent",
                format!("tenant {tenant} has {} requests in progress on this node, its most", limits.concurrent_requests),
                1_000,
            ));
        }
        *n += 1;
        Ok(InFlight { tenant: tenant.clone(), counts: Arc::clone(&self.in_flight) })
    }

    /// Refuses `source` while it is over [`FAILURES_PER_WINDOW`] failed authentications in the
    /// current window.
    pub(crate) fn check_source(&self, source: &str, now_ms: u64) -> Result<(), ApiError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(source) {
            Some((start, count)) if *count >= FAILURES_PER_WINDOW && now_ms.saturating_sub(*start) < FAILURE_WINDOW_MS => Err(throttled(
                "too_many_failures",
                format!("{count} failed authentications from this address; wait before trying again"),
                FAILURE_WINDOW_MS - now_ms.saturating_sub(*start),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `source`.
    pub(crate) fn failed(&self, source: &str, now_ms: u64) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURE_SOURCES_MAX && !failures.contains_key(source) {
            failures.clear();
        }
        let entry = failures.entry(source.to_owned()).or_insert((now_ms, 0));
        if now_ms.saturating_sub(entry.0) >= FAILURE_WINDOW_MS {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, concurrent: u32) -> TenantLimits {
        TenantLimits { requests_per_s: rate, burst, concurrent_requests: concurrent, ..vcos_actors::Tier::Basic.limits() }
    }

    #[test]
    fn a_burst_then_the_rate_then_a_retry_after() {
        let limiter = Limiter::default();
        let t = TenantId::new("acme").expect("tenant");
        let l = limits(10, 5, 100);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(limiter.admit(&t, l, 0).expect("within the burst"));
        }
        match limiter.admit(&t, l, 0) {
            Err(ApiError::Throttled { code, retry_after_s, .. }) => assert_eq!((code, retry_after_s), ("rate_limited", 1)),
            other => panic!("expected a 429, got {:?}", other.map(|_| ())),
        }
        // 100 ms at 10/s is one token.
        assert!(limiter.admit(&t, l, 100).is_ok());
        assert!(limiter.admit(&t, l, 100).is_err());
        let other = TenantId::new("globex").expect("tenant");
        assert!(limiter.admit(&other, l, 100).is_ok(), "tenants do not share buckets");
    }

    #[test]
    fn concurrency_is_released_when_a_request_ends() {
        let limiter = Limiter::default();
        let t = TenantId::new("acme").expect("tenant");
        let l = limits(1_000, 1_000, 2);
        let (a, _b) = (limiter.admit(&t, l, 0).expect("1"), limiter.admit(&t, l, 0).expect("2"));
        assert!(matches!(limiter.admit(&t, l, 0), Err(ApiError::Throttled { code: "too_many_concurrent", .. })));
        drop(a);
        assert!(limiter.admit(&t, l, 0).is_ok());
    }

    #[test]
    fn an_address_that_keeps_failing_waits_out_the_window() {
        let limiter = Limiter::default();
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(limiter.check_source("10.0.0.1", 5).is_ok());
            limiter.failed("10.0.0.1", 5);
        }
        assert!(limiter.check_source("10.0.0.1", 6).is_err());
        assert!(limiter.check_source("10.0.0.2", 6).is_ok(), "others are not affected");
        assert!(limiter.check_source("10.0.0.1", 5 + FAILURE_WINDOW_MS).is_ok());
    }
}

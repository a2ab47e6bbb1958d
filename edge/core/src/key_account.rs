//! The per-key account kept by the key's Durable Object: concurrency leases.
//!
//! A lease is taken before the upstream call and released when the response
//! ends. Leases carry an expiry so that a request that crashed, or whose
//! release was lost, frees its slot by itself (the object's alarm calls
//! [`Leases::expire`]). All methods take `now_ms`; the object passes its own
//! clock, never a caller's.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default lease lifetime: longer than any request the gateway lets run.
pub const DEFAULT_LEASE_MS: i64 = 10 * 60 * 1000;

/// The limits of a key as the worker last read them from KV. The object keeps
/// the newest version it has seen (from admission calls or from the admin's
/// pushes) and enforces that one, so a revocation or quota change pushed to
/// the object applies on the next request even while KV still serves the old
/// record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// `KeyRecord::version`.
    #[serde(default)]
    pub version: u64,
    /// The key is disabled (revoked).
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Total spend allowed, micro-units; `None` = unlimited.
    #[serde(default)]
    pub quota_micros: Option<i64>,
}

/// What the worker sends to admit a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitRequest {
    pub request_id: String,
    /// Limits from the worker's copy of the key record.
    #[serde(default)]
    pub limits: KeyLimits,
    /// Worst-case cost to reserve against the quota, micro-units.
    #[serde(default)]
    pub reserve_micros: i64,
    /// Estimated tokens (prompt + max output) counted against TPM until settled.
    #[serde(default)]
    pub estimated_tokens: u64,
    /// Lease lifetime in ms; default [`DEFAULT_LEASE_MS`].
    #[serde(default)]
    pub lease_ms: Option<i64>,
    /// Older callers only sent this; kept so both versions work during a deploy.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

/// Why the object refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Too many requests in flight.
    Concurrency,
    /// Requests-per-minute window full.
    Rpm,
    /// Tokens-per-minute window full.
    Tpm,
    /// The reservation would exceed the quota.
    Quota,
    /// The key was disabled.
    Revoked,
}

/// The object's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum AdmitDecision {
    /// Go ahead; `in_flight` counts this request.
    Admitted { in_flight: u32, lease_expires_at_ms: i64 },
    /// Too many in flight; retry after the given seconds. (Kept for callers of
    /// the first protocol version.)
    ConcurrencyLimited { in_flight: u32, retry_after_secs: u64 },
    /// Refused for `reason`; retry after the given seconds when it can pass later.
    Refused { reason: Refusal, retry_after_secs: Option<u64> },
}

/// What the worker sends when a request ends: the settled usage event, which
/// the object stores in its outbox before answering and then publishes to the
/// usage queue (retrying by alarm until the queue accepts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleRequest {
    pub request_id: String,
    /// `None` releases the lease and the reservation without billing (for
    /// requests refused before they reached a provider).
    #[serde(default)]
    pub event: Option<crate::usage::UsageEvent>,
}

/// What the worker sends when a request ends (first protocol version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub request_id: String,
}

/// The live leases of one key, keyed by request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    by_request: BTreeMap<String, i64>,
}

impl Leases {
    /// Rebuilds from stored `(request id, expiry)` pairs.
    pub fn from_stored(entries: impl IntoIterator<Item = (String, i64)>) -> Self {
        Self { by_request: entries.into_iter().collect() }
    }

    /// Requests currently holding a lease (expired ones included until
    /// [`Leases::expire`] runs).
    pub fn in_flight(&self) -> u32 {
        u32::try_from(self.by_request.len()).unwrap_or(u32::MAX)
    }

    /// Admits or refuses. Expired leases are dropped first, so a leak can
    /// never block a key for longer than a lease lifetime. Admitting the same
    /// request id twice renews its lease rather than taking a second slot.
    pub fn admit(&mut self, req: &AdmitRequest, now_ms: i64) -> (AdmitDecision, Vec<String>) {
        let expired = self.expire(now_ms);
        let lease_ms = req.lease_ms.unwrap_or(DEFAULT_LEASE_MS).max(1);
        let renewing = self.by_request.contains_key(&req.request_id);
        if let Some(limit) = req.limits.max_concurrency.or(req.max_concurrency) {
            if !renewing && self.in_flight() >= limit {
                let soonest = self.by_request.values().min().copied().unwrap_or(now_ms);
                let wait_ms = (soonest - now_ms).clamp(0, 60_000);
                return (
                    AdmitDecision::ConcurrencyLimited {
                        in_flight: self.in_flight(),
                        // Slots usually free long before the lease expires: suggest a short wait.
                        retry_after_secs: u64::try_from(wait_ms / 1000).unwrap_or(1).clamp(1, 5),
                    },
                    expired,
                );
            }
        }
        let expires = now_ms.saturating_add(lease_ms);
        self.by_request.insert(req.request_id.clone(), expires);
        (AdmitDecision::Admitted { in_flight: self.in_flight(), lease_expires_at_ms: expires }, expired)
    }

    /// Releases a lease; false when it was not held (already released or expired).
    pub fn release(&mut self, request_id: &str) -> bool {
        self.by_request.remove(request_id).is_some()
    }

    /// Drops expired leases and returns their request ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let expired: Vec<String> =
            self.by_request.iter().filter(|(_, &at)| at <= now_ms).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.by_request.remove(id);
        }
        expired
    }

    /// When the next lease expires, for the object's alarm.
    pub fn next_expiry(&self) -> Option<i64> {
        self.by_request.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(l: &mut Leases, id: &str, max: Option<u32>, now: i64) -> AdmitDecision {
        let req = AdmitRequest {
            request_id: id.into(),
            limits: KeyLimits { max_concurrency: max, ..Default::default() },
            reserve_micros: 0,
            estimated_tokens: 0,
            lease_ms: Some(1000),
            max_concurrency: None,
        };
        l.admit(&req, now).0
    }

    #[test]
    fn limit_holds_and_release_frees() {
        let mut l = Leases::default();
        assert!(matches!(admit(&mut l, "a", Some(2), 0), AdmitDecision::Admitted { in_flight: 1, .. }));
        assert!(matches!(admit(&mut l, "b", Some(2), 0), AdmitDecision::Admitted { in_flight: 2, .. }));
        assert!(matches!(
            admit(&mut l, "c", Some(2), 0),
            AdmitDecision::ConcurrencyLimited { in_flight: 2, .. }
        ));
        assert!(l.release("a"));
        assert!(!l.release("a"), "double release is harmless");
        assert!(matches!(admit(&mut l, "c", Some(2), 0), AdmitDecision::Admitted { .. }));
    }

    #[test]
    fn leaked_leases_expire() {
        let mut l = Leases::default();
        admit(&mut l, "a", Some(1), 0);
        assert!(matches!(admit(&mut l, "b", Some(1), 999), AdmitDecision::ConcurrencyLimited { .. }));
        assert!(matches!(admit(&mut l, "b", Some(1), 1000), AdmitDecision::Admitted { in_flight: 1, .. }));
        assert_eq!(l.next_expiry(), Some(2000));
        assert_eq!(l.expire(2000), vec!["b".to_string()]);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn readmitting_renews_instead_of_taking_a_slot() {
        let mut l = Leases::default();
        admit(&mut l, "a", Some(1), 0);
        assert!(matches!(
            admit(&mut l, "a", Some(1), 500),
            AdmitDecision::Admitted { in_flight: 1, lease_expires_at_ms: 1500 }
        ));
    }

    #[test]
    fn unlimited_still_counts() {
        let mut l = Leases::default();
        for i in 0..50 {
            admit(&mut l, &i.to_string(), None, 0);
        }
        assert_eq!(l.in_flight(), 50);
        let stored = Leases::from_stored(vec![("x".to_string(), 5)]);
        assert_eq!(stored.in_flight(), 1);
    }
}

//! The account's read-only view (`GET /internal/keys/{digest}/account`):
//! limits, spend, holds, leases, windows, outbox and counters.

use super::{BalanceDraw, Counters, Finished, KeyAccountState, KeyLimits};
use serde::{Deserialize, Serialize};

/// A read-only view of the account (`GET /internal/keys/{digest}/account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub limits: Option<KeyLimits>,
    pub expires_at: Option<i64>,
    pub spent_micros: i64,
    /// Held by live reservations and stale holds.
    pub reserved_micros: i64,
    /// `quota - spent - reserved`; `None` without a quota.
    pub available_micros: Option<i64>,
    /// Requests in flight: single leases plus the slots slices hold.
    pub in_flight: u32,
    /// Isolates holding a slice of the account.
    #[serde(default)]
    pub slices: u32,
    /// Live leases, soonest expiry first (at most 100 listed).
    pub leases: Vec<LeaseView>,
    pub stale_holds: u32,
    pub outbox_pending: u32,
    pub finished_tracked: u32,
    pub rpm_used: u64,
    pub tpm_used: u64,
    pub window_ms: i64,
    pub counters: Counters,
    pub next_wakeup_ms: Option<i64>,
    /// The draw on the key's user's balance (keys with a user).
    #[serde(default)]
    pub balance: Option<BalanceDraw>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub request_id: String,
    pub expires_at_ms: i64,
    pub reserved_micros: i64,
}

impl KeyAccountState {
    /// The read-only view.
    pub fn snapshot(&self, now_ms: i64) -> AccountSnapshot {
        let mut leases: Vec<LeaseView> = self
            .in_flight
            .iter()
            .map(|(id, r)| LeaseView {
                request_id: id.clone(),
                expires_at_ms: r.lease_expires_at_ms,
                reserved_micros: r.reserved_micros,
            })
            .collect();
        leases.sort_by_key(|l| l.expires_at_ms);
        leases.truncate(100);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let limits = self.core.limits.clone().unwrap_or_default();
        let quota = self.quota_in_force(&limits);
        AccountSnapshot {
            limits: self.core.limits.clone(),
            expires_at: self.core.expires_at,
            spent_micros: self.core.spent_micros,
            reserved_micros: self.reserved_micros,
            available_micros: quota
                .map(|q| q.saturating_sub(self.core.spent_micros).saturating_sub(self.reserved_micros)),
            in_flight: self.in_flight(),
            slices: count(self.slices.len()),
            leases,
            stale_holds: count(
                self.expired_ids
                    .iter()
                    .filter(|id| {
                        matches!(self.finished.get(*id), Some(Finished::Expired { held_micros, .. }) if *held_micros > 0)
                    })
                    .count(),
            ),
            outbox_pending: count(self.outbox.len()),
            finished_tracked: count(self.finished.len()),
            rpm_used: self.core.rpm.used(now_ms),
            tpm_used: self.core.tpm.used(now_ms),
            window_ms: self.core.rpm.window_ms(),
            counters: self.core.counters.clone(),
            next_wakeup_ms: self.next_wakeup(now_ms),
            balance: self.core.balance.clone(),
        }
    }
}

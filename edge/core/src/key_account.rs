//! The per-key account kept by the key's Durable Object: concurrency leases,
//! sliding-window RPM/TPM, the quota ledger (reserve → settle) and the usage
//! outbox, as one plain state machine. All methods take `now_ms`; the object
//! passes its own clock, never a caller's.
//!
//! **Protocol.** One admission call and one settle call per request. Admission
//! takes a lease (a concurrency slot that expires by itself), counts the
//! request and its estimated tokens in the RPM/TPM windows, and reserves the
//! worst-case cost against the quota. Settling releases the lease and the
//! reservation, books the actual cost, replaces the token estimate with the
//! real count and puts the usage event in the outbox, which the object
//! publishes to the usage queue until the queue accepts it.
//!
//! **Invariants** (property-tested below; `docs/key-accounts.md` says how the
//! object and the worker keep them):
//! - I1: `spent + reserved ≤ quota` after every operation, as long as callers
//!   keep their side of the contract (the reservation is a true worst case and
//!   a settle arrives before its reservation's hold ends). A breach of that
//!   contract is never hidden: it is billed (the provider did the work) and
//!   measured in [`Counters::overrun_micros`], so always
//!   `spent + reserved ≤ quota + overrun`.
//! - Each request id is settled at most once: a second settle changes nothing.
//! - `reserved` is exactly the sum of the live reservations and stale holds.
//! - `in_flight ≤ max_concurrency` for admissions made under that limit.
//!
//! **Storage shape.** The state persists as one small `core` record (limits,
//! spend, windows, counters) plus one record per request id
//! ([`RequestRecord`]). Every operation returns the [`Writes`] it needs, so an
//! admission is one write of two small values and a settle is one write of
//! the core and the request's record (which carries the outbox copy of the
//! event).

use crate::error::GatewayError;
use crate::key_record::{KeyRecord, KeyStatus};
use crate::rate_window::{retry_after_secs, SlidingWindow, MINUTE_MS};
use crate::usage::UsageEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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

/// How long a reservation whose lease expired is still held against the
/// quota, waiting for a late settle, before it is released.
pub const LATE_SETTLE_GRACE_MS: i64 = DEFAULT_LEASE_MS;
/// How long a settled request id is remembered so a repeated settle is
/// recognised (bounded by [`MAX_TRACKED_FINISHED`]).
pub const FINISHED_RETENTION_MS: i64 = 15 * 60 * 1000;
/// Forgetting waits this much longer than the retention, so one alarm
/// forgets a minute's worth of ids instead of waking up for each.
pub const FORGET_SLACK_MS: i64 = 60_000;
/// Most finished request ids remembered; the oldest settled ones are
/// forgotten first (stale holds are never forgotten early).
pub const MAX_TRACKED_FINISHED: usize = 10_000;
/// Longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 200;
/// Most events published to the queue in one batch.
pub const OUTBOX_BATCH: usize = 100;
/// Longest wait between two publication attempts of the outbox.
pub const OUTBOX_MAX_BACKOFF_MS: i64 = 60_000;

impl KeyLimits {
    /// The limits a key record sets.
    pub fn from_record(record: &KeyRecord) -> Self {
        Self {
            version: record.version,
            disabled: record.status != KeyStatus::Active,
            max_concurrency: record.max_concurrency,
            rpm: record.rpm,
            tpm: record.tpm,
            quota_micros: record.quota_micros,
        }
    }
}

impl KeyLimits {
    /// Whether the account has anything to enforce per request.
    pub fn enforces_anything(&self) -> bool {
        self.disabled
            || self.max_concurrency.is_some()
            || self.rpm.is_some()
            || self.tpm.is_some()
            || self.quota_micros.is_some()
    }
}

impl From<&KeyRecord> for KeyLimits {
    fn from(record: &KeyRecord) -> Self {
        Self::from_record(record)
    }
}

impl Refusal {
    /// The error the client sees: 429 with `Retry-After` for concurrency and
    /// rate windows, OpenAI's `insufficient_quota` for quota, the invalid-key
    /// error for a revoked key. `retry_after_secs` defaults to 1 s for
    /// concurrency and to a minute for a window the request can never fit.
    pub fn into_error(self, retry_after_secs: Option<u64>) -> GatewayError {
        match self {
            Self::Concurrency => GatewayError::RateLimited {
                message:
                    "Too many concurrent requests for this API key. Retry when one of them has finished."
                        .into(),
                retry_after_secs: retry_after_secs.unwrap_or(1).max(1),
            },
            Self::Rpm => GatewayError::RateLimited {
                message: "Rate limit reached for requests per minute (RPM) on this API key.".into(),
                retry_after_secs: retry_after_secs.unwrap_or(60).max(1),
            },
            Self::Tpm => GatewayError::RateLimited {
                message: match retry_after_secs {
                    Some(_) => "Rate limit reached for tokens per minute (TPM) on this API key.".into(),
                    None => "This request needs more tokens than this API key's tokens-per-minute (TPM) \
                             limit allows. Lower max_tokens or shorten the prompt."
                        .into(),
                },
                retry_after_secs: retry_after_secs.unwrap_or(60).max(1),
            },
            Self::Quota => GatewayError::InsufficientQuota,
            Self::Revoked => GatewayError::InvalidApiKey,
        }
    }
}

/// A live admission: the lease and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub lease_expires_at_ms: i64,
    /// Worst-case cost held against the quota, micro-units.
    pub reserved_micros: i64,
    /// Tokens counted in the TPM window at admission.
    pub estimated_tokens: u64,
    pub admitted_at_ms: i64,
}

/// What the object stores per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestRecord {
    /// Admitted, not yet settled.
    InFlight(Reservation),
    /// Settled; `pending` is the usage event until the queue accepted it.
    Settled {
        at_ms: i64,
        #[serde(default)]
        pending: Option<Box<UsageEvent>>,
    },
    /// The lease expired without a settle. `held_micros` stays reserved until
    /// `hold_until_ms` so a late settle cannot push spend over the quota.
    Expired { at_ms: i64, held_micros: i64, hold_until_ms: i64 },
}

/// Storage work an operation needs: the `core` record and request records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub core: bool,
    pub put: Vec<(String, RequestRecord)>,
    pub delete: Vec<String>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        !self.core && self.put.is_empty() && self.delete.is_empty()
    }

    /// Adds `other`; a later put or delete of the same id replaces an earlier one.
    pub fn merge(&mut self, other: Writes) {
        self.core |= other.core;
        for (id, record) in other.put {
            self.delete.retain(|d| d != &id);
            self.put.retain(|(p, _)| p != &id);
            self.put.push((id, record));
        }
        for id in other.delete {
            self.put.retain(|(p, _)| p != &id);
            if !self.delete.contains(&id) {
                self.delete.push(id);
            }
        }
    }
}

/// Running totals, for the account snapshot and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub admitted: u64,
    pub refused_concurrency: u64,
    pub refused_rpm: u64,
    pub refused_tpm: u64,
    pub refused_quota: u64,
    pub refused_revoked: u64,
    pub settled: u64,
    /// Settles that changed nothing because the request was already settled.
    pub duplicate_settles: u64,
    /// Settles that arrived after the lease expired.
    pub late_settles: u64,
    /// Settles for request ids this object never admitted (billed anyway).
    pub unknown_settles: u64,
    pub leases_expired: u64,
    pub events_published: u64,
    pub publish_failures: u64,
    /// Spend booked beyond what was reserved for it (a reservation that was
    /// not a true worst case, or a settle after its hold ended).
    pub overrun_micros: i64,
}

/// The persistent scalar part of the account (storage key `core`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountCore {
    /// Newest limits seen; `None` until the first admission or push.
    pub limits: Option<KeyLimits>,
    /// Expiry (unix seconds) from the newest pushed key record.
    pub expires_at: Option<i64>,
    /// Committed spend, micro-units.
    pub spent_micros: i64,
    pub rpm: SlidingWindow,
    pub tpm: SlidingWindow,
    pub counters: Counters,
}

/// How a settle call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleOutcome {
    /// Lease and reservation released, cost booked.
    Settled,
    /// Settled after the lease had expired.
    Late,
    /// Never admitted here: billed, nothing to release.
    Unknown,
    /// Already settled: nothing changed.
    Duplicate,
}

/// Whatever a finished request id is remembered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Settled { at_ms: i64 },
    Expired { at_ms: i64, held_micros: i64, hold_until_ms: i64 },
}

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
    pub in_flight: u32,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub request_id: String,
    pub expires_at_ms: i64,
    pub reserved_micros: i64,
}

/// The whole account of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAccountState {
    core: AccountCore,
    in_flight: BTreeMap<String, Reservation>,
    /// Settled events not yet accepted by the queue.
    outbox: BTreeMap<String, UsageEvent>,
    finished: BTreeMap<String, Finished>,
    /// The settled ids of `finished`, oldest first (so forgetting is O(1) per id).
    settled_order: VecDeque<(i64, String)>,
    /// The expired ids of `finished` (few: only requests whose settle never came).
    expired_ids: BTreeSet<String>,
    /// Sum of live reservations and stale holds (derived; rebuilt on load).
    reserved_micros: i64,
    /// Outbox publication back-off (memory only: a restart retries at once).
    outbox_failures: u32,
    outbox_next_attempt_ms: Option<i64>,
}

fn record_key_ok(request_id: &str) -> bool {
    !request_id.is_empty() && request_id.len() <= MAX_REQUEST_ID_LEN
}

impl KeyAccountState {
    /// An empty account whose RPM/TPM windows are `window_ms` long.
    pub fn new(window_ms: i64) -> Self {
        let mut state = Self::default();
        state.set_window_ms(window_ms);
        state
    }

    /// Rebuilds from storage: the `core` record and every request record.
    pub fn from_stored(
        core: Option<AccountCore>,
        records: impl IntoIterator<Item = (String, RequestRecord)>,
        window_ms: i64,
    ) -> Self {
        let mut state = Self { core: core.unwrap_or_default(), ..Self::default() };
        state.set_window_ms(window_ms);
        for (id, record) in records {
            match record {
                RequestRecord::InFlight(r) => {
                    state.reserved_micros = state.reserved_micros.saturating_add(r.reserved_micros);
                    state.in_flight.insert(id, r);
                }
                RequestRecord::Settled { at_ms, pending } => {
                    match pending {
                        Some(event) => {
                            state.outbox.insert(id, *event);
                        }
                        None => state.remember_settled(id, at_ms),
                    };
                }
                RequestRecord::Expired { at_ms, held_micros, hold_until_ms } => {
                    state.reserved_micros = state.reserved_micros.saturating_add(held_micros);
                    state.remember_expired(id, Finished::Expired { at_ms, held_micros, hold_until_ms });
                }
            }
        }
        state.settled_order.make_contiguous().sort();
        state
    }

    fn remember_settled(&mut self, id: String, at_ms: i64) {
        self.settled_order.push_back((at_ms, id.clone()));
        self.finished.insert(id, Finished::Settled { at_ms });
    }

    fn remember_expired(&mut self, id: String, finished: Finished) {
        self.expired_ids.insert(id.clone());
        self.finished.insert(id, finished);
    }

    /// Sets the RPM/TPM window length (one minute in production).
    pub fn set_window_ms(&mut self, window_ms: i64) {
        let window_ms = if window_ms > 0 { window_ms } else { MINUTE_MS };
        self.core.rpm.set_window_ms(window_ms);
        self.core.tpm.set_window_ms(window_ms);
    }

    pub fn core(&self) -> &AccountCore {
        &self.core
    }

    pub fn spent_micros(&self) -> i64 {
        self.core.spent_micros
    }

    pub fn reserved_micros(&self) -> i64 {
        self.reserved_micros
    }

    pub fn in_flight(&self) -> u32 {
        u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX)
    }

    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The limits in force: the newest seen, or `offered` when it is newer.
    fn adopt(&mut self, offered: &KeyLimits) -> bool {
        let newer = match &self.core.limits {
            None => true,
            Some(current) => offered.version > current.version,
        };
        if newer {
            self.core.limits = Some(offered.clone());
        }
        newer
    }

    /// Admits or refuses `req` at `now_ms`.
    pub fn admit(&mut self, req: &AdmitRequest, now_ms: i64) -> (AdmitDecision, Writes) {
        let mut writes = self.expire(now_ms);
        let mut offered = req.limits.clone();
        if offered.max_concurrency.is_none() {
            offered.max_concurrency = req.max_concurrency;
        }
        writes.core |= self.adopt(&offered);
        let limits = self.core.limits.clone().unwrap_or_default();
        let refuse = |state: &mut Self, reason: Refusal, retry: Option<u64>| {
            let c = &mut state.core.counters;
            match reason {
                Refusal::Concurrency => c.refused_concurrency += 1,
                Refusal::Rpm => c.refused_rpm += 1,
                Refusal::Tpm => c.refused_tpm += 1,
                Refusal::Quota => c.refused_quota += 1,
                Refusal::Revoked => c.refused_revoked += 1,
            }
            AdmitDecision::Refused { reason, retry_after_secs: retry }
        };

        if let Some(lease) = self.in_flight.get_mut(&req.request_id) {
            // A retried admission: renew the lease, count nothing twice.
            let lease_ms = req.lease_ms.unwrap_or(DEFAULT_LEASE_MS).max(1);
            lease.lease_expires_at_ms = lease.lease_expires_at_ms.max(now_ms.saturating_add(lease_ms));
            let lease = *lease;
            writes.put.push((req.request_id.clone(), RequestRecord::InFlight(lease)));
            let decision = AdmitDecision::Admitted {
                in_flight: self.in_flight(),
                lease_expires_at_ms: lease.lease_expires_at_ms,
            };
            return (decision, writes);
        }
        if limits.disabled || self.core.expires_at.is_some_and(|at| now_ms.div_euclid(1000) >= at) {
            return (refuse(self, Refusal::Revoked, None), writes);
        }
        if !record_key_ok(&req.request_id)
            || self.outbox.contains_key(&req.request_id)
            || self.finished.contains_key(&req.request_id)
        {
            // Request ids are single-use; a settled one cannot hold a slot again.
            return (refuse(self, Refusal::Concurrency, None), writes);
        }
        if let Some(limit) = limits.max_concurrency {
            if self.in_flight() >= limit {
                let soonest = self.in_flight.values().map(|r| r.lease_expires_at_ms).min().unwrap_or(now_ms);
                // Slots usually free long before a lease expires: suggest a short wait.
                let wait = retry_after_secs(soonest - now_ms).clamp(1, 5);
                return (refuse(self, Refusal::Concurrency, Some(wait)), writes);
            }
        }
        if let Some(rpm) = limits.rpm {
            if let Err(wait) = self.core.rpm.check(now_ms, 1, u64::from(rpm)) {
                return (refuse(self, Refusal::Rpm, wait.map(retry_after_secs)), writes);
            }
        }
        if let Some(tpm) = limits.tpm {
            if let Err(wait) = self.core.tpm.check(now_ms, req.estimated_tokens, tpm) {
                return (refuse(self, Refusal::Tpm, wait.map(retry_after_secs)), writes);
            }
        }
        let reserve = req.reserve_micros.max(0);
        if let Some(quota) = limits.quota_micros {
            let needed =
                i128::from(self.core.spent_micros) + i128::from(self.reserved_micros) + i128::from(reserve);
            if needed > i128::from(quota) {
                return (refuse(self, Refusal::Quota, None), writes);
            }
        }

        self.core.rpm.add(now_ms, 1);
        self.core.tpm.add(now_ms, req.estimated_tokens);
        let lease_ms = req.lease_ms.unwrap_or(DEFAULT_LEASE_MS).max(1);
        let lease = Reservation {
            lease_expires_at_ms: now_ms.saturating_add(lease_ms),
            reserved_micros: reserve,
            estimated_tokens: req.estimated_tokens,
            admitted_at_ms: now_ms,
        };
        self.in_flight.insert(req.request_id.clone(), lease);
        self.reserved_micros = self.reserved_micros.saturating_add(reserve);
        self.core.counters.admitted += 1;
        writes.core = true;
        writes.put.push((req.request_id.clone(), RequestRecord::InFlight(lease)));
        let decision = AdmitDecision::Admitted {
            in_flight: self.in_flight(),
            lease_expires_at_ms: lease.lease_expires_at_ms,
        };
        (decision, writes)
    }

    /// Books `event`'s cost; `held` is what was reserved for it.
    fn book(&mut self, event: Option<&UsageEvent>, held: i64) {
        let cost = event.map_or(0, |e| e.cost_micros.max(0));
        self.core.spent_micros = self.core.spent_micros.saturating_add(cost);
        if cost > held {
            self.core.counters.overrun_micros = self.core.counters.overrun_micros.saturating_add(cost - held);
        }
    }

    fn finish(&mut self, request_id: &str, event: Option<UsageEvent>, now_ms: i64, writes: &mut Writes) {
        let record = match event {
            Some(event) => {
                self.outbox.insert(request_id.to_string(), event.clone());
                RequestRecord::Settled { at_ms: now_ms, pending: Some(Box::new(event)) }
            }
            None => {
                self.remember_settled(request_id.to_string(), now_ms);
                RequestRecord::Settled { at_ms: now_ms, pending: None }
            }
        };
        writes.core = true;
        writes.put.push((request_id.to_string(), record));
    }

    /// Ends a request: releases its lease and reservation, books the actual
    /// cost, replaces the token estimate with the real count, and puts the
    /// event in the outbox. Repeating it changes nothing.
    pub fn settle(&mut self, req: &SettleRequest, now_ms: i64) -> (SettleOutcome, Writes) {
        let mut writes = Writes::default();
        let id = req.request_id.as_str();
        let actual_tokens = req.event.as_ref().map_or(0, |e| e.usage.total());
        if let Some(lease) = self.in_flight.remove(id) {
            self.reserved_micros = self.reserved_micros.saturating_sub(lease.reserved_micros);
            self.core.tpm.adjust(now_ms, lease.admitted_at_ms, lease.estimated_tokens, actual_tokens);
            self.book(req.event.as_ref(), lease.reserved_micros);
            self.core.counters.settled += 1;
            self.finish(id, req.event.clone(), now_ms, &mut writes);
            return (SettleOutcome::Settled, writes);
        }
        if self.outbox.contains_key(id) {
            self.core.counters.duplicate_settles += 1;
            return (SettleOutcome::Duplicate, writes);
        }
        match self.finished.get(id).copied() {
            Some(Finished::Settled { .. }) => {
                self.core.counters.duplicate_settles += 1;
                (SettleOutcome::Duplicate, writes)
            }
            Some(Finished::Expired { held_micros, .. }) => {
                self.finished.remove(id);
                self.expired_ids.remove(id);
                self.reserved_micros = self.reserved_micros.saturating_sub(held_micros);
                self.book(req.event.as_ref(), held_micros);
                self.core.counters.settled += 1;
                self.core.counters.late_settles += 1;
                self.finish(id, req.event.clone(), now_ms, &mut writes);
                (SettleOutcome::Late, writes)
            }
            None if !record_key_ok(id) => (SettleOutcome::Duplicate, writes),
            None => {
                // Never admitted here (or forgotten long ago): the usage is
                // real, so it is billed and published, never dropped.
                self.book(req.event.as_ref(), 0);
                self.core.counters.settled += 1;
                self.core.counters.unknown_settles += 1;
                self.finish(id, req.event.clone(), now_ms, &mut writes);
                (SettleOutcome::Unknown, writes)
            }
        }
    }

    /// Applies a key record pushed by the admin when it is at least as new as
    /// the limits in force (the same version pushed twice is harmless).
    pub fn configure(&mut self, record: &KeyRecord) -> Writes {
        let offered = KeyLimits::from_record(record);
        let newer = match &self.core.limits {
            None => true,
            Some(current) => offered.version >= current.version,
        };
        if newer && (self.core.limits.as_ref() != Some(&offered) || self.core.expires_at != record.expires_at)
        {
            self.core.limits = Some(offered);
            self.core.expires_at = record.expires_at;
            return Writes { core: true, ..Writes::default() };
        }
        Writes::default()
    }

    /// Expires leases whose time is up (their slot frees; their reservation
    /// is held until [`LATE_SETTLE_GRACE_MS`] later), releases holds whose
    /// grace ended, and forgets old finished request ids.
    pub fn expire(&mut self, now_ms: i64) -> Writes {
        let mut writes = Writes::default();
        let due: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, r)| r.lease_expires_at_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(r) = self.in_flight.remove(&id) {
                let hold_until_ms = r.lease_expires_at_ms.saturating_add(LATE_SETTLE_GRACE_MS);
                let finished = if hold_until_ms > now_ms {
                    Finished::Expired { at_ms: now_ms, held_micros: r.reserved_micros, hold_until_ms }
                } else {
                    self.reserved_micros = self.reserved_micros.saturating_sub(r.reserved_micros);
                    Finished::Expired { at_ms: now_ms, held_micros: 0, hold_until_ms }
                };
                self.core.counters.leases_expired += 1;
                writes.core = true;
                writes.put.push((id.clone(), finished.record()));
                self.remember_expired(id, finished);
            }
        }
        // Stale holds whose grace is over.
        let released: Vec<(String, Finished)> = self
            .expired_ids
            .iter()
            .filter_map(|id| match self.finished.get(id).copied() {
                Some(Finished::Expired { at_ms, held_micros, hold_until_ms })
                    if held_micros > 0 && hold_until_ms <= now_ms =>
                {
                    Some((id.clone(), Finished::Expired { at_ms, held_micros: 0, hold_until_ms }))
                }
                _ => None,
            })
            .collect();
        for (id, f) in released {
            if let Some(Finished::Expired { held_micros, .. }) = self.finished.get(&id).copied() {
                self.reserved_micros = self.reserved_micros.saturating_sub(held_micros);
            }
            writes.core = true;
            writes.put.push((id.clone(), f.record()));
            self.finished.insert(id, f);
        }
        writes.merge(self.forget_finished(now_ms));
        writes
    }

    /// Forgets finished ids past retention, and the oldest settled ones
    /// beyond the cap (stale holds are kept until released).
    fn forget_finished(&mut self, now_ms: i64) -> Writes {
        let mut writes = Writes::default();
        while let Some(&(at, _)) = self.settled_order.front() {
            let over_cap = self.finished.len() > MAX_TRACKED_FINISHED;
            if !over_cap && at.saturating_add(FINISHED_RETENTION_MS) > now_ms {
                break;
            }
            let Some((at, id)) = self.settled_order.pop_front() else { break };
            if matches!(self.finished.get(&id), Some(Finished::Settled { at_ms }) if *at_ms == at) {
                self.finished.remove(&id);
                writes.delete.push(id);
            }
        }
        let done: Vec<String> = self
            .expired_ids
            .iter()
            .filter(|id| {
                matches!(self.finished.get(*id), Some(Finished::Expired { at_ms, held_micros: 0, hold_until_ms })
                    if (*at_ms).max(*hold_until_ms).saturating_add(FINISHED_RETENTION_MS) <= now_ms)
            })
            .cloned()
            .collect();
        for id in done {
            self.finished.remove(&id);
            self.expired_ids.remove(&id);
            writes.delete.push(id);
        }
        writes
    }

    /// Up to `max` outbox events to publish now, or none while backing off.
    pub fn outbox_batch(&self, now_ms: i64, max: usize) -> Vec<UsageEvent> {
        if self.outbox_next_attempt_ms.is_some_and(|at| at > now_ms) {
            return Vec::new();
        }
        self.outbox.values().take(max).cloned().collect()
    }

    /// The queue accepted these events: out of the outbox, remembered as settled.
    pub fn mark_published(&mut self, request_ids: &[String], now_ms: i64) -> Writes {
        let mut writes = Writes::default();
        for id in request_ids {
            if self.outbox.remove(id).is_some() {
                self.remember_settled(id.clone(), now_ms);
                writes.put.push((id.clone(), RequestRecord::Settled { at_ms: now_ms, pending: None }));
                self.core.counters.events_published += 1;
            }
        }
        if !writes.put.is_empty() {
            writes.core = true;
        }
        self.outbox_failures = 0;
        self.outbox_next_attempt_ms = None;
        writes
    }

    /// The queue refused a batch: back off (1 s, 2 s, 4 s, … up to a minute).
    pub fn publish_failed(&mut self, now_ms: i64) -> i64 {
        self.outbox_failures = self.outbox_failures.saturating_add(1);
        self.core.counters.publish_failures += 1;
        let exponent = self.outbox_failures.saturating_sub(1).min(16);
        let backoff = 1000i64.saturating_mul(1 << exponent).min(OUTBOX_MAX_BACKOFF_MS);
        let at = now_ms.saturating_add(backoff);
        self.outbox_next_attempt_ms = Some(at);
        at
    }

    /// When the object must wake up next (its alarm): a lease expiry, a hold
    /// release, a finished id to forget, or an outbox retry.
    pub fn next_wakeup(&self, now_ms: i64) -> Option<i64> {
        let leases = self.in_flight.values().map(|r| r.lease_expires_at_ms);
        let settled = self
            .settled_order
            .front()
            .map(|(at, _)| at.saturating_add(FINISHED_RETENTION_MS + FORGET_SLACK_MS));
        let expired = self.expired_ids.iter().filter_map(|id| match self.finished.get(id).copied() {
            Some(Finished::Expired { hold_until_ms, held_micros, at_ms }) => Some(if held_micros > 0 {
                hold_until_ms
            } else {
                at_ms.max(hold_until_ms).saturating_add(FINISHED_RETENTION_MS + FORGET_SLACK_MS)
            }),
            _ => None,
        });
        let over_cap = (self.finished.len() > MAX_TRACKED_FINISHED).then_some(now_ms);
        let outbox = (!self.outbox.is_empty()).then(|| self.outbox_next_attempt_ms.unwrap_or(now_ms));
        leases.chain(settled).chain(expired).chain(over_cap).chain(outbox).min()
    }

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
        let quota = self.core.limits.as_ref().and_then(|l| l.quota_micros);
        AccountSnapshot {
            limits: self.core.limits.clone(),
            expires_at: self.core.expires_at,
            spent_micros: self.core.spent_micros,
            reserved_micros: self.reserved_micros,
            available_micros: quota
                .map(|q| q.saturating_sub(self.core.spent_micros).saturating_sub(self.reserved_micros)),
            in_flight: self.in_flight(),
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
        }
    }
}

impl Finished {
    fn record(&self) -> RequestRecord {
        match *self {
            Finished::Settled { at_ms } => RequestRecord::Settled { at_ms, pending: None },
            Finished::Expired { at_ms, held_micros, hold_until_ms } => {
                RequestRecord::Expired { at_ms, held_micros, hold_until_ms }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{RequestOutcome, TokenUsage, UsageSource};
    use proptest::prelude::*;

    const MIN: i64 = MINUTE_MS;

    fn limits(quota: Option<i64>, conc: Option<u32>, rpm: Option<u32>, tpm: Option<u64>) -> KeyLimits {
        KeyLimits { version: 1, disabled: false, max_concurrency: conc, rpm, tpm, quota_micros: quota }
    }

    fn admit_req(id: &str, limits: &KeyLimits, reserve: i64, tokens: u64) -> AdmitRequest {
        AdmitRequest {
            request_id: id.into(),
            limits: limits.clone(),
            reserve_micros: reserve,
            estimated_tokens: tokens,
            lease_ms: Some(1_000),
            max_concurrency: None,
        }
    }

    fn event(id: &str, cost: i64, tokens: u64) -> UsageEvent {
        UsageEvent {
            request_id: id.into(),
            key_digest: "d".into(),
            owner: String::new(),
            user_id: None,
            group: "default".into(),
            price_ratio_ppm: crate::pricing::RATIO_ONE_PPM,
            model: "m".into(),
            upstream_model: "m".into(),
            channel: "c".into(),
            provider: "p".into(),
            usage: TokenUsage { input_uncached: tokens, ..Default::default() },
            cost_micros: cost,
            status: 200,
            outcome: RequestOutcome::Completed,
            usage_source: UsageSource::Provider,
            stream: true,
            latency_ms: 1,
            ttft_ms: None,
            created_at_ms: 0,
        }
    }

    fn settle_req(id: &str, ev: Option<UsageEvent>) -> SettleRequest {
        SettleRequest { request_id: id.into(), event: ev }
    }

    fn refused(d: &AdmitDecision) -> Option<(Refusal, Option<u64>)> {
        match d {
            AdmitDecision::Refused { reason, retry_after_secs } => Some((*reason, *retry_after_secs)),
            _ => None,
        }
    }

    /// Storage as the object keeps it: `core` + `r:<id>`, JSON text.
    #[derive(Default)]
    struct FakeStore(BTreeMap<String, String>);

    impl FakeStore {
        fn apply(&mut self, state: &KeyAccountState, writes: &Writes) {
            if writes.core {
                self.0.insert("core".into(), serde_json::to_string(state.core()).unwrap());
            }
            for (id, record) in &writes.put {
                self.0.insert(format!("r:{id}"), serde_json::to_string(record).unwrap());
            }
            for id in &writes.delete {
                self.0.remove(&format!("r:{id}"));
            }
        }

        fn load(&self, window_ms: i64) -> KeyAccountState {
            let core = self.0.get("core").map(|t| serde_json::from_str(t).unwrap());
            let records = self.0.iter().filter_map(|(k, v)| {
                k.strip_prefix("r:").map(|id| (id.to_string(), serde_json::from_str(v).unwrap()))
            });
            KeyAccountState::from_stored(core, records, window_ms)
        }
    }

    /// What must survive a restart (counters of refusals are written lazily).
    fn durable(s: &KeyAccountState) -> (Option<KeyLimits>, i64, i64, usize, usize, usize, SlidingWindow) {
        (
            s.core.limits.clone(),
            s.core.spent_micros,
            s.reserved_micros,
            s.in_flight.len(),
            s.outbox.len(),
            s.finished.len(),
            s.core.rpm.clone(),
        )
    }

    #[test]
    fn admission_checks_in_order_with_retry_hints() {
        let mut s = KeyAccountState::new(MIN);
        let l = limits(Some(100), Some(2), Some(3), Some(1_000));
        assert!(matches!(
            s.admit(&admit_req("a", &l, 40, 10), 0).0,
            AdmitDecision::Admitted { in_flight: 1, .. }
        ));
        assert!(matches!(
            s.admit(&admit_req("b", &l, 40, 10), 0).0,
            AdmitDecision::Admitted { in_flight: 2, .. }
        ));
        let (reason, retry) = refused(&s.admit(&admit_req("c", &l, 1, 10), 0).0).unwrap();
        assert_eq!((reason, retry), (Refusal::Concurrency, Some(1)));
        s.settle(&settle_req("a", Some(event("a", 30, 10))), 10);
        // Quota: 30 spent + 40 reserved + 40 > 100.
        assert_eq!(refused(&s.admit(&admit_req("c", &l, 40, 10), 20).0), Some((Refusal::Quota, None)));
        assert!(matches!(s.admit(&admit_req("c", &l, 30, 10), 20).0, AdmitDecision::Admitted { .. }));
        s.settle(&settle_req("b", None), 30);
        s.settle(&settle_req("c", None), 30);
        // RPM: three admitted at t=0..20 ms; the fourth waits for the first bucket to leave.
        let (reason, retry) = refused(&s.admit(&admit_req("d", &l, 0, 10), 40).0).unwrap();
        assert_eq!((reason, retry), (Refusal::Rpm, Some(61)));
        assert!(matches!(s.admit(&admit_req("d", &l, 0, 10), 61_000).0, AdmitDecision::Admitted { .. }));
        // TPM: more than the limit can never pass; less waits.
        assert_eq!(refused(&s.admit(&admit_req("e", &l, 0, 1_001), 61_000).0), Some((Refusal::Tpm, None)));
        let c = s.counters().clone();
        assert_eq!(
            (c.admitted, c.refused_concurrency, c.refused_quota, c.refused_rpm, c.refused_tpm),
            (4, 1, 1, 1, 1)
        );
    }

    #[test]
    fn settle_books_actual_cost_and_is_idempotent() {
        let mut s = KeyAccountState::new(MIN);
        let l = limits(Some(1_000), None, None, Some(10_000));
        s.admit(&admit_req("a", &l, 500, 300), 0);
        assert_eq!((s.spent_micros(), s.reserved_micros()), (0, 500));
        assert_eq!(s.core().tpm.used(0), 300);
        let (outcome, writes) = s.settle(&settle_req("a", Some(event("a", 120, 40))), 5);
        assert_eq!(outcome, SettleOutcome::Settled);
        assert!(writes.core && writes.put.len() == 1 && writes.delete.is_empty());
        assert_eq!((s.spent_micros(), s.reserved_micros(), s.in_flight()), (120, 0, 0));
        assert_eq!(s.core().tpm.used(5), 40, "the estimate is replaced by the real count");
        assert_eq!(s.outbox_len(), 1);
        let before = s.clone();
        let (outcome, writes) = s.settle(&settle_req("a", Some(event("a", 999, 1))), 6);
        assert_eq!(outcome, SettleOutcome::Duplicate);
        assert!(writes.is_empty());
        assert_eq!(durable(&s), durable(&before));
        // After publication it is still recognised.
        s.mark_published(&["a".to_string()], 7);
        assert_eq!(s.settle(&settle_req("a", None), 8).0, SettleOutcome::Duplicate);
        assert_eq!(s.counters().duplicate_settles, 2);
        // No event: released, billed nothing.
        s.admit(&admit_req("b", &l, 700, 0), 10);
        s.settle(&settle_req("b", None), 11);
        assert_eq!((s.spent_micros(), s.reserved_micros(), s.outbox_len()), (120, 0, 0));
    }

    #[test]
    fn readmission_renews_without_counting_twice() {
        let mut s = KeyAccountState::new(MIN);
        let l = limits(Some(100), Some(1), Some(10), None);
        s.admit(&admit_req("a", &l, 60, 0), 0);
        let (d, _) = s.admit(&admit_req("a", &l, 60, 0), 500);
        assert_eq!(d, AdmitDecision::Admitted { in_flight: 1, lease_expires_at_ms: 1_500 });
        assert_eq!((s.reserved_micros(), s.core().rpm.used(500)), (60, 1));
        // A settled id cannot come back.
        s.settle(&settle_req("a", None), 600);
        assert_eq!(refused(&s.admit(&admit_req("a", &l, 1, 0), 700).0), Some((Refusal::Concurrency, None)));
    }

    #[test]
    fn leases_expire_but_holds_keep_the_quota_until_a_late_settle() {
        let mut s = KeyAccountState::new(MIN);
        let l = limits(Some(100), Some(1), None, None);
        s.admit(&admit_req("a", &l, 80, 0), 0);
        assert_eq!(s.next_wakeup(0), Some(1_000));
        // The slot frees at expiry...
        assert!(matches!(s.admit(&admit_req("b", &l, 10, 0), 1_000).0, AdmitDecision::Admitted { .. }));
        assert_eq!(s.counters().leases_expired, 1);
        // ...but the reservation is still held: 80 + 10 + 20 > 100.
        assert_eq!(
            refused(&s.admit(&admit_req("c", &l, 20, 0), 1_001).0).map(|r| r.0),
            Some(Refusal::Concurrency)
        );
        s.settle(&settle_req("b", None), 1_002);
        assert_eq!(refused(&s.admit(&admit_req("c", &l, 21, 0), 1_003).0), Some((Refusal::Quota, None)));
        // The late settle replaces the hold with the actual cost.
        assert_eq!(s.settle(&settle_req("a", Some(event("a", 70, 1))), 2_000).0, SettleOutcome::Late);
        assert_eq!((s.spent_micros(), s.reserved_micros()), (70, 0));
        assert_eq!(s.counters().overrun_micros, 0);
        assert_eq!(s.settle(&settle_req("a", Some(event("a", 70, 1))), 2_001).0, SettleOutcome::Duplicate);
        // A hold whose grace ended is released; a settle after that is an overrun.
        s.admit(&admit_req("d", &l, 30, 0), 3_000);
        s.expire(4_000 + LATE_SETTLE_GRACE_MS);
        assert_eq!(s.reserved_micros(), 0);
        assert_eq!(
            s.settle(&settle_req("d", Some(event("d", 25, 1))), 4_001 + LATE_SETTLE_GRACE_MS).0,
            SettleOutcome::Late
        );
        assert_eq!((s.spent_micros(), s.counters().overrun_micros), (95, 25));
    }

    #[test]
    fn unknown_settles_are_billed_not_dropped() {
        let mut s = KeyAccountState::new(MIN);
        assert_eq!(s.settle(&settle_req("x", Some(event("x", 9, 1))), 0).0, SettleOutcome::Unknown);
        assert_eq!((s.spent_micros(), s.outbox_len(), s.counters().unknown_settles), (9, 1, 1));
        assert_eq!(s.settle(&settle_req("y", None), 0).0, SettleOutcome::Unknown);
        assert_eq!(s.settle(&settle_req("y", None), 0).0, SettleOutcome::Duplicate);
        assert_eq!(
            s.settle(&settle_req("", None), 0).0,
            SettleOutcome::Duplicate,
            "invalid ids change nothing"
        );
    }

    #[test]
    fn configure_newest_version_wins_and_revokes_at_once() {
        let mut s = KeyAccountState::new(MIN);
        let kv = limits(Some(1_000), None, None, None);
        assert!(matches!(s.admit(&admit_req("a", &kv, 1, 0), 0).0, AdmitDecision::Admitted { .. }));
        let mut record: KeyRecord =
            serde_json::from_str(r#"{"digest":"d","version":2,"status":"disabled"}"#).unwrap();
        assert!(s.configure(&record).core);
        assert!(s.configure(&record).is_empty(), "the same push twice changes nothing");
        // KV still serves version 1 (active): the object refuses anyway.
        assert_eq!(refused(&s.admit(&admit_req("b", &kv, 1, 0), 1).0), Some((Refusal::Revoked, None)));
        // An older push is ignored.
        record.version = 1;
        record.status = KeyStatus::Active;
        assert!(s.configure(&record).is_empty());
        // A newer one re-enables, with a new quota and an expiry.
        record.version = 3;
        record.quota_micros = Some(5);
        record.expires_at = Some(10);
        s.configure(&record);
        assert_eq!(refused(&s.admit(&admit_req("b", &kv, 6, 0), 2).0), Some((Refusal::Quota, None)));
        assert!(matches!(s.admit(&admit_req("b", &kv, 4, 0), 3).0, AdmitDecision::Admitted { .. }));
        assert_eq!(refused(&s.admit(&admit_req("c", &kv, 0, 0), 10_000).0), Some((Refusal::Revoked, None)));
        // Old callers that only send max_concurrency still get it enforced.
        let mut fresh = KeyAccountState::new(MIN);
        let mut old = admit_req("a", &KeyLimits::default(), 0, 0);
        old.max_concurrency = Some(1);
        fresh.admit(&old, 0);
        old.request_id = "b".into();
        assert_eq!(refused(&fresh.admit(&old, 0).0).map(|r| r.0), Some(Refusal::Concurrency));
    }

    #[test]
    fn outbox_publication_backs_off_and_drains() {
        let mut s = KeyAccountState::new(MIN);
        for i in 0..150 {
            s.settle(&settle_req(&format!("r{i}"), Some(event(&format!("r{i}"), 1, 1))), 0);
        }
        assert_eq!(s.next_wakeup(0), Some(0), "pending events: publish now");
        let batch = s.outbox_batch(0, OUTBOX_BATCH);
        assert_eq!(batch.len(), 100);
        assert_eq!(s.publish_failed(0), 1_000);
        assert!(s.outbox_batch(500, OUTBOX_BATCH).is_empty(), "backing off");
        assert_eq!(s.publish_failed(1_000), 3_000);
        let ids: Vec<String> =
            s.outbox_batch(3_000, OUTBOX_BATCH).iter().map(|e| e.request_id.clone()).collect();
        let writes = s.mark_published(&ids, 3_000);
        assert_eq!(writes.put.len(), 100);
        assert_eq!(s.outbox_len(), 50);
        assert_eq!(s.outbox_batch(3_000, OUTBOX_BATCH).len(), 50, "success resets the back-off");
        for _ in 0..20 {
            s.publish_failed(0);
        }
        assert_eq!(s.outbox_next_attempt_ms, Some(OUTBOX_MAX_BACKOFF_MS));
    }

    #[test]
    fn finished_ids_are_forgotten_after_retention_or_beyond_the_cap() {
        let mut s = KeyAccountState::new(MIN);
        s.settle(&settle_req("old", None), 0);
        assert_eq!(s.next_wakeup(1), Some(FINISHED_RETENTION_MS + FORGET_SLACK_MS));
        let writes = s.expire(FINISHED_RETENTION_MS);
        assert_eq!(writes.delete, vec!["old".to_string()]);
        assert_eq!(s.next_wakeup(FINISHED_RETENTION_MS), None);
        for i in 0..(MAX_TRACKED_FINISHED + 5) {
            s.settle(&settle_req(&format!("{i:06}"), None), i as i64);
        }
        let writes = s.expire(MAX_TRACKED_FINISHED as i64 + 10);
        assert_eq!(writes.delete.len(), 5);
        assert_eq!(writes.delete[0], "000000", "oldest first");
    }

    #[test]
    fn refusals_map_to_client_errors() {
        let e = Refusal::Rpm.into_error(Some(7));
        assert_eq!((e.status(), e.retry_after_secs()), (429, Some(7)));
        let e = Refusal::Concurrency.into_error(None);
        assert_eq!((e.status(), e.retry_after_secs()), (429, Some(1)));
        let e = Refusal::Tpm.into_error(None);
        assert_eq!((e.status(), e.retry_after_secs()), (429, Some(60)));
        assert!(e.message().contains("TPM"));
        assert_eq!(Refusal::Quota.into_error(Some(3)), GatewayError::InsufficientQuota);
        assert_eq!(Refusal::Quota.into_error(None).retry_after_secs(), None);
        assert_eq!(Refusal::Revoked.into_error(None), GatewayError::InvalidApiKey);
    }

    #[test]
    fn protocol_versions_interoperate() {
        // An old worker's admission body still parses.
        let old: AdmitRequest = serde_json::from_str(r#"{"request_id":"a","max_concurrency":3}"#).unwrap();
        assert_eq!(old.max_concurrency, Some(3));
        assert_eq!(old.limits, KeyLimits::default());
        let d = AdmitDecision::Refused { reason: Refusal::Quota, retry_after_secs: None };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#"{"decision":"refused","reason":"quota","retry_after_secs":null}"#);
        let r = RequestRecord::InFlight(Reservation {
            lease_expires_at_ms: 1,
            reserved_micros: 2,
            estimated_tokens: 3,
            admitted_at_ms: 4,
        });
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RequestRecord>(&text).unwrap(), r);
        assert!(text.len() < 120, "{text}");
    }

    #[test]
    fn from_record_copies_the_limits() {
        let record: KeyRecord = serde_json::from_str(
            r#"{"digest":"d","version":4,"quota_micros":9,"rpm":1,"tpm":2,"max_concurrency":3}"#,
        )
        .unwrap();
        assert_eq!(
            KeyLimits::from(&record),
            KeyLimits {
                version: 4,
                disabled: false,
                max_concurrency: Some(3),
                rpm: Some(1),
                tpm: Some(2),
                quota_micros: Some(9),
            }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit {
            reserve: i64,
            tokens: u64,
        },
        /// Settle the `pick`-th admitted request (maybe again) with `percent` of its reservation.
        Settle {
            pick: usize,
            percent: i64,
            with_event: bool,
        },
        /// Settle an id that was never admitted.
        SettleUnknown {
            cost: i64,
        },
        Advance {
            ms: i64,
        },
        Publish {
            fail: bool,
        },
        RaiseQuota {
            by: i64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..300, 0u64..50).prop_map(|(reserve, tokens)| Op::Admit { reserve, tokens }),
            4 => (0usize..64, 0i64..=100, prop::bool::weighted(0.9))
                .prop_map(|(pick, percent, with_event)| Op::Settle { pick, percent, with_event }),
            1 => (0i64..50).prop_map(|cost| Op::SettleUnknown { cost }),
            2 => prop_oneof![0i64..2_000, Just(DEFAULT_LEASE_MS), Just(LATE_SETTLE_GRACE_MS + DEFAULT_LEASE_MS)]
                .prop_map(|ms| Op::Advance { ms }),
            1 => prop::bool::ANY.prop_map(|fail| Op::Publish { fail }),
            1 => (0i64..200).prop_map(|by| Op::RaiseQuota { by }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// I1 and friends over random interleavings of admissions, settles
        /// (duplicate, late, unknown, unbilled), lease expiry, publication and
        /// quota raises; and after every step the stored records rebuild the
        /// same account.
        #[test]
        fn invariants_hold_under_any_interleaving(
            quota in 0i64..2_000,
            conc in prop::option::of(1u32..6),
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let mut s = KeyAccountState::new(MIN);
            let mut store = FakeStore::default();
            let mut quota = quota;
            let mut lim = limits(Some(quota), conc, None, None);
            let mut now = 0i64;
            let mut admitted: Vec<String> = Vec::new();
            let mut billed: BTreeMap<String, i64> = BTreeMap::new();
            let mut settled_at: BTreeMap<String, i64> = BTreeMap::new();
            let mut next_id = 0u32;
            let mut breach = false;
            for op in ops {
                match op {
                    Op::Admit { reserve, tokens } => {
                        next_id += 1;
                        let id = format!("req{next_id}");
                        let mut req = admit_req(&id, &lim, reserve, tokens);
                        req.lease_ms = Some(DEFAULT_LEASE_MS);
                        let (decision, writes) = s.admit(&req, now);
                        store.apply(&s, &writes);
                        if matches!(decision, AdmitDecision::Admitted { .. }) {
                            admitted.push(id);
                        }
                    }
                    Op::Settle { pick, percent, with_event } => {
                        if admitted.is_empty() { continue; }
                        let id = admitted[pick % admitted.len()].clone();
                        // Duplicates are recognised for FINISHED_RETENTION_MS (documented horizon).
                        if settled_at.get(&id).is_some_and(|at| at + FINISHED_RETENTION_MS <= now) {
                            continue;
                        }
                        let held = s.in_flight.get(&id).map(|r| r.reserved_micros).or(
                            match s.finished.get(&id) {
                                Some(Finished::Expired { held_micros, .. }) => Some(*held_micros),
                                _ => None,
                            });
                        // Within the contract the cost is at most what is held; a settle
                        // after its hold ended (nothing held) costs 50 at most: a breach.
                        let cost = match held { Some(h) if h > 0 => h * percent / 100, _ => 50 * percent / 100 };
                        let ev = with_event.then(|| event(&id, cost, 1));
                        let (outcome, writes) = s.settle(&settle_req(&id, ev), now);
                        store.apply(&s, &writes);
                        match outcome {
                            SettleOutcome::Duplicate => prop_assert!(writes.is_empty()),
                            _ => {
                                prop_assert!(!billed.contains_key(&id), "{id} billed twice");
                                billed.insert(id.clone(), if with_event { cost } else { 0 });
                                settled_at.insert(id.clone(), now);
                                if with_event && cost > held.unwrap_or(0) { breach = true; }
                            }
                        }
                    }
                    Op::SettleUnknown { cost } => {
                        next_id += 1;
                        let id = format!("unknown{next_id}");
                        let (outcome, writes) = s.settle(&settle_req(&id, Some(event(&id, cost, 1))), now);
                        store.apply(&s, &writes);
                        prop_assert_eq!(outcome, SettleOutcome::Unknown);
                        billed.insert(id, cost);
                        if cost > 0 { breach = true; }
                    }
                    Op::Advance { ms } => {
                        now += ms;
                        let writes = s.expire(now);
                        store.apply(&s, &writes);
                    }
                    Op::Publish { fail } => {
                        let batch = s.outbox_batch(now, OUTBOX_BATCH);
                        if fail {
                            s.publish_failed(now);
                        } else {
                            let ids: Vec<String> = batch.iter().map(|e| e.request_id.clone()).collect();
                            let writes = s.mark_published(&ids, now);
                            store.apply(&s, &writes);
                        }
                    }
                    Op::RaiseQuota { by } => {
                        quota += by;
                        lim = KeyLimits { version: lim.version + 1, quota_micros: Some(quota), ..lim.clone() };
                    }
                }
                // I1, measured.
                let overrun = s.counters().overrun_micros;
                prop_assert!(s.spent_micros() + s.reserved_micros() <= quota + overrun,
                    "spent {} + reserved {} > quota {} + overrun {}", s.spent_micros(), s.reserved_micros(), quota, overrun);
                if !breach {
                    prop_assert_eq!(overrun, 0);
                    prop_assert!(s.spent_micros() + s.reserved_micros() <= quota);
                }
                prop_assert!(s.spent_micros() >= 0 && s.reserved_micros() >= 0);
                // Reserved is exactly what is held.
                let held: i64 = s.in_flight.values().map(|r| r.reserved_micros).sum::<i64>()
                    + s.finished.values().map(|f| match f { Finished::Expired { held_micros, .. } => *held_micros, _ => 0 }).sum::<i64>();
                prop_assert_eq!(held, s.reserved_micros());
                // Billed exactly once each.
                prop_assert_eq!(s.spent_micros(), billed.values().sum::<i64>());
                if let Some(c) = conc { prop_assert!(s.in_flight() <= c); }
                // Storage rebuilds the same account.
                let reloaded = store.load(MIN);
                prop_assert_eq!(durable(&reloaded), durable(&s));
                prop_assert_eq!(&reloaded.in_flight, &s.in_flight);
                prop_assert_eq!(&reloaded.outbox, &s.outbox);
                prop_assert_eq!(&reloaded.finished, &s.finished);
                // The indexes over `finished` agree with it.
                let expired: BTreeSet<String> = s.finished.iter()
                    .filter(|(_, f)| matches!(f, Finished::Expired { .. })).map(|(id, _)| id.clone()).collect();
                prop_assert_eq!(&expired, &s.expired_ids);
                for (id, f) in &s.finished {
                    if let Finished::Settled { at_ms } = f {
                        prop_assert!(s.settled_order.iter().any(|(at, i)| at == at_ms && i == id), "{id} not indexed");
                    }
                }
            }
        }
    }
}

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

pub mod balance;
mod outbox;
pub mod slice;
mod snapshot;
pub use balance::BalanceDraw;
pub use slice::{ClosedGrant, RateGrant, SliceGrant, SliceRecord, SliceRenewal, SliceSettle, SliceWant};
pub use snapshot::{AccountSnapshot, LeaseView};

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
    /// The user whose balance the key draws on ([`balance`]); `None` = a
    /// standalone key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
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
    /// The key was disabled (or its user was).
    Revoked,
    /// The key's user's balance cannot cover the reservation.
    Balance,
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
            user_id: record.user_id.clone(),
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
            || self.user_id.is_some()
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
            Self::Balance => GatewayError::InsufficientBalance,
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
    /// An isolate's slice of the account ([`slice`]).
    Slice(Box<SliceRecord>),
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
    /// Refused because the user's balance could not cover the reservation.
    pub refused_balance: u64,
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
    /// The draw on the key's user's balance (keys with a user).
    pub balance: Option<BalanceDraw>,
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
    /// Isolates' slices, by slice id ([`slice`]).
    slices: BTreeMap<String, SliceRecord>,
    /// Sum of live reservations, slice holds and stale holds (derived; rebuilt on load).
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
                RequestRecord::Slice(slice) => {
                    state.reserved_micros = state.reserved_micros.saturating_add(slice.hold_micros);
                    state.slices.insert(id, *slice);
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

    /// Requests in flight: single leases plus the slots slices hold.
    pub fn in_flight(&self) -> u32 {
        u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX).saturating_add(self.slice_slots())
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
            self.bind_balance();
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
                Refusal::Balance => c.refused_balance += 1,
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
        if limits.disabled
            || self.user_disabled(&limits)
            || self.core.expires_at.is_some_and(|at| now_ms.div_euclid(1000) >= at)
        {
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
        if let Some(quota) = self.quota_in_force(&limits) {
            let needed =
                i128::from(self.core.spent_micros) + i128::from(self.reserved_micros) + i128::from(reserve);
            if needed > i128::from(quota) {
                let reason = self.quota_refusal(&limits, needed);
                return (refuse(self, reason, None), writes);
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
            self.bind_balance();
            return Writes { core: true, ..Writes::default() };
        }
        Writes::default()
    }

    /// Expires leases whose time is up (their slot frees; their reservation
    /// is held until [`LATE_SETTLE_GRACE_MS`] later), releases holds whose
    /// grace ended, and forgets old finished request ids.
    pub fn expire(&mut self, now_ms: i64) -> Writes {
        let mut writes = Writes::default();
        self.expire_slices(now_ms, &mut writes);
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

    /// When the object must wake up next (its alarm): a lease expiry, a hold
    /// release, a finished id to forget, or an outbox retry.
    pub fn next_wakeup(&self, now_ms: i64) -> Option<i64> {
        let leases = self
            .in_flight
            .values()
            .map(|r| r.lease_expires_at_ms)
            .chain(self.slices.values().map(|s| s.lease_expires_at_ms));
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
mod tests;

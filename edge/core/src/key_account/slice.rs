//! Slices: the part of a key's account one isolate may spend locally.
//!
//! A key with limits would otherwise cost two Durable Object round trips per
//! request (admit, settle). Instead an isolate holds a **slice** of the
//! account: concurrency slots, a quota hold, and a request and token budget
//! for the current window bucket. It admits and settles requests against the
//! slice by itself ([`crate::pipeline::account_slice`]) and renews the slice
//! from time to time in one call that also reports what was settled. The
//! account keeps every slice as a record, so its totals count what the slices
//! hold:
//!
//! - **Quota (I1).** A slice's hold is part of `reserved`; it is granted only
//!   from what is free (`quota − spent − reserved`), and the isolate admits a
//!   request only when its worst case fits in the hold minus what its
//!   in-flight requests reserve and its settled requests cost. A report books
//!   each cost out of the hold into `spent`. So `spent + reserved ≤ quota`
//!   holds as for single requests, and a cost beyond its reservation is an
//!   overrun, counted, never hidden.
//! - **Concurrency.** A slice's slots count in `in_flight`; slots are granted
//!   only while `in_flight + slots ≤ max_concurrency`, and the isolate runs at
//!   most its slots at once.
//! - **RPM/TPM windows.** A slice's request and token budget is added to the
//!   window at grant time, in the bucket of the grant, and the isolate may
//!   admit against it only until that bucket ends (measured from when it sent
//!   the renewal, so clock skew between machines cannot stretch it). Every
//!   acceptance is then inside the bucket it was counted in, which is exactly
//!   what the window's proof needs (`rate_window.rs`): the last decision
//!   among those counted in any window saw all the others. Unused budget is
//!   given back to its bucket at the next renewal (it was never accepted).
//! - **Revocation and limit changes** reach the isolate in the reply to its
//!   next renewal, which comes within a bucket (one second) under load and
//!   at the latest [`MAX_ADMIT_FOR_MS`] after the last one.
//! - **Crashes.** A slice whose isolate vanished expires after its lease:
//!   its slots free, its hold stays reserved for [`super::LATE_SETTLE_GRACE_MS`]
//!   (for a late report), then is released. An isolate that is idle gives its
//!   slice back at once.
//!
//! Renewals are idempotent: a repeated `seq` gets the stored reply and
//! changes nothing, and each settled request id is booked at most once.

use super::{Finished, KeyAccountState, KeyLimits, Refusal, RequestRecord, Writes};
use crate::rate_window::retry_after_secs;
use crate::usage::UsageEvent;
use serde::{Deserialize, Serialize};

/// Longest time an isolate may admit against a grant, whatever its limits:
/// the bound on how late it sees a revocation or a new limit.
pub const MAX_ADMIT_FOR_MS: i64 = 2_000;
/// Lease of a slice at the account: longer than any request runs (a stream's
/// lease), renewed by every renewal. An idle isolate releases its slice.
pub const SLICE_LEASE_MS: i64 = 30 * 60 * 1000;

/// A request an isolate settled against its slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceSettle {
    pub event: UsageEvent,
    /// Tokens counted for it against TPM at admission (its estimate).
    pub estimated_tokens: u64,
    /// The grant (account clock) it was admitted under.
    pub granted_at_ms: i64,
}

/// What the isolate wants to hold from now on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceWant {
    pub slots: u32,
    pub quota_micros: i64,
    pub requests: u32,
    pub tokens: u64,
}

/// One renewal (or the first grant, or the release) of an isolate's slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRenewal {
    pub slice_id: String,
    /// Strictly increasing per slice; a repeat is answered from memory.
    pub seq: u64,
    /// Limits from the isolate's copy of the key record.
    #[serde(default)]
    pub limits: KeyLimits,
    /// Requests settled since the last renewal.
    #[serde(default)]
    pub settled: Vec<SliceSettle>,
    /// Rate grants the isolate admits no more against (expired or used
    /// up), with what was admitted under each: the unused part goes back to
    /// its bucket.
    #[serde(default)]
    pub closed: Vec<ClosedGrant>,
    /// Give the slice back: holdings shrink to what is in use (the isolate
    /// admits nothing while this is in flight). Otherwise holdings only grow,
    /// since the isolate keeps admitting while a renewal is in flight.
    #[serde(default)]
    pub release: bool,
    /// Held by requests still in flight (never taken back).
    #[serde(default)]
    pub in_use_slots: u32,
    #[serde(default)]
    pub in_use_micros: i64,
    #[serde(default)]
    pub want: SliceWant,
    /// What the isolate's waiting request needs, if one waits: when even
    /// this cannot be granted the reply says why.
    #[serde(default)]
    pub need: Option<SliceWant>,
}

/// A rate grant the isolate closed, and what it admitted under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedGrant {
    pub granted_at_ms: i64,
    pub used_requests: u32,
    pub used_tokens: u64,
}

/// A request and token budget counted in the bucket of `granted_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateGrant {
    pub granted_at_ms: i64,
    pub requests: u32,
    pub tokens: u64,
}

/// Most open rate grants a slice keeps; beyond, the oldest is dropped without
/// a refund (its budget stays counted: an early refusal, never an overshoot).
pub const MAX_OPEN_GRANTS: usize = 16;

/// The account's answer: what the slice holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceGrant {
    pub seq: u64,
    /// The limits in force (the newest version the account has seen).
    pub limits: KeyLimits,
    /// Revoked or expired: admit nothing.
    pub revoked: bool,
    /// Slots held (`None`: no concurrency limit).
    pub slots: Option<u32>,
    /// Quota hold after booking the settled costs (`None`: no quota).
    pub quota_micros: Option<i64>,
    /// The new rate grant's request and token budgets (`None`: no such limit).
    pub requests: Option<u32>,
    pub tokens: Option<u64>,
    /// The new rate grant's time on the account's clock.
    pub granted_at_ms: i64,
    /// How long, from when the isolate sent the renewal, it may admit against
    /// the new rate grant.
    pub admit_for_ms: i64,
    /// Why the waiting request cannot be admitted, and when to retry.
    #[serde(default)]
    pub refusal: Option<(Refusal, Option<u64>)>,
}

/// A slice as the account keeps it (storage record `r:<slice id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub slots: u32,
    pub hold_micros: i64,
    /// Rate grants not yet closed by the isolate.
    #[serde(default)]
    pub grants: Vec<RateGrant>,
    pub lease_expires_at_ms: i64,
    pub last_seq: u64,
    pub last_reply: Option<SliceGrant>,
}

impl KeyAccountState {
    /// Slots held by slices.
    pub(super) fn slice_slots(&self) -> u32 {
        self.slices.values().fold(0u32, |n, s| n.saturating_add(s.slots))
    }

    /// Renews (opens, releases) the isolate's slice at `now_ms`.
    pub fn renew_slice(&mut self, req: &SliceRenewal, now_ms: i64) -> (SliceGrant, Writes) {
        let mut writes = self.expire(now_ms);
        if let Some(slice) = self.slices.get(&req.slice_id) {
            if req.seq <= slice.last_seq {
                if let Some(reply) = slice.last_reply.clone() {
                    return (reply, writes);
                }
            }
        }
        writes.core |= self.adopt(&req.limits);
        let limits = self.core.limits.clone().unwrap_or_default();
        if !self.slices.contains_key(&req.slice_id)
            && matches!(self.finished.get(&req.slice_id), Some(Finished::Settled { .. }))
        {
            // A renewal that reaches the account after its slice was given
            // back (an isolate never reuses a slice id, so it is stale): its
            // settles are booked if new, and it gets nothing.
            return (self.stale_renewal(req, &limits, now_ms, &mut writes), writes);
        }
        let mut slice = match self.slices.remove(&req.slice_id) {
            Some(slice) => slice,
            None => SliceRecord {
                slots: 0,
                // A slice that expired here while its isolate lived on: its
                // stale hold is what the late report is booked against.
                hold_micros: self.take_expired_hold(&req.slice_id, &mut writes),
                grants: Vec::new(),
                lease_expires_at_ms: now_ms,
                last_seq: 0,
                last_reply: None,
            },
        };
        // The slice's hold leaves `reserved` while it is worked out, and
        // what it holds afterwards goes back in.
        self.reserved_micros = self.reserved_micros.saturating_sub(slice.hold_micros);

        // 1. Book what was settled (each request id once).
        for settle in &req.settled {
            let id = settle.event.request_id.as_str();
            if self.outbox.contains_key(id) || self.finished.contains_key(id) {
                self.core.counters.duplicate_settles += 1;
                continue;
            }
            let cost = settle.event.cost_micros.max(0);
            let taken = cost.min(slice.hold_micros.max(0));
            slice.hold_micros -= taken;
            self.book(Some(&settle.event), taken);
            let actual = settle.event.usage.total();
            self.core.tpm.adjust(now_ms, settle.granted_at_ms, settle.estimated_tokens, actual);
            self.core.counters.admitted += 1;
            self.core.counters.settled += 1;
            self.finish(id, Some(settle.event.clone()), now_ms, &mut writes);
        }
        // 2. Give the unused part of closed grants back to their buckets
        //    (it was never accepted).
        for closed in &req.closed {
            if let Some(i) = slice.grants.iter().position(|g| g.granted_at_ms == closed.granted_at_ms) {
                let g = slice.grants.remove(i);
                let used_requests = u64::from(closed.used_requests.min(g.requests));
                self.core.rpm.adjust(now_ms, g.granted_at_ms, u64::from(g.requests), used_requests);
                self.core.tpm.adjust(now_ms, g.granted_at_ms, g.tokens, closed.used_tokens.min(g.tokens));
            }
        }

        // 3. What the slice may hold from now on.
        let revoked = limits.disabled
            || self.user_disabled(&limits)
            || self.core.expires_at.is_some_and(|at| now_ms.div_euclid(1000) >= at);
        let want = if revoked { SliceWant::default() } else { req.want };
        let in_use_slots = req.in_use_slots;
        let in_use_micros = req.in_use_micros.max(0).min(slice.hold_micros.max(0));
        // The slice is out of `slices` here: `in_flight` counts the others.
        let others_slots = self.in_flight();
        let old_slots = slice.slots;
        let old_hold = slice.hold_micros.max(0);
        let quota_in_force = self.quota_in_force(&limits);
        let free_micros = match quota_in_force {
            Some(quota) => quota.saturating_sub(self.core.spent_micros).saturating_sub(self.reserved_micros),
            None => i64::MAX,
        };
        let (slots, hold) = if req.release || revoked {
            (in_use_slots, in_use_micros)
        } else {
            // The isolate may be admitting against what it holds while this
            // renewal is on its way: holdings never shrink here.
            let slots = match limits.max_concurrency {
                Some(limit) => want.slots.min(limit.saturating_sub(others_slots)),
                None => want.slots,
            };
            let mut hold = want.quota_micros.max(0).min(free_micros.max(0)).max(old_hold);
            if req.need.is_some_and(|need| hold < in_use_micros.saturating_add(need.quota_micros)) {
                // The waiting request will not fit: a hold too small for it
                // would only keep from the key's other isolates (and the
                // user's other keys) what they could use.
                hold = old_hold;
            }
            (slots.max(old_slots).max(in_use_slots), hold)
        };
        slice.slots = slots;
        slice.hold_micros = hold.max(in_use_micros);
        let requests = match limits.rpm {
            Some(rpm) => {
                let free = u64::from(rpm).saturating_sub(self.core.rpm.used(now_ms));
                u32::try_from(u64::from(want.requests).min(free)).unwrap_or(u32::MAX)
            }
            None => want.requests,
        };
        let tokens = match limits.tpm {
            Some(tpm) => want.tokens.min(tpm.saturating_sub(self.core.tpm.used(now_ms))),
            None => want.tokens,
        };
        let (requests, tokens) = if req.release || revoked { (0, 0) } else { (requests, tokens) };
        if requests > 0 || tokens > 0 {
            self.core.rpm.add(now_ms, u64::from(requests));
            self.core.tpm.add(now_ms, tokens);
            slice.grants.push(RateGrant { granted_at_ms: now_ms, requests, tokens });
            if slice.grants.len() > MAX_OPEN_GRANTS {
                slice.grants.remove(0);
            }
        }

        // 4. Could the waiting request get in?
        let refusal = match req.need {
            _ if revoked => Some((Refusal::Revoked, None)),
            None => None,
            Some(need) => self.slice_refusal(
                &limits,
                &slice,
                in_use_slots,
                in_use_micros,
                requests,
                tokens,
                need,
                now_ms,
            ),
        };
        if refusal.is_some() {
            self.count_refusal(refusal.map(|(r, _)| r));
        }

        let admit_for_ms = if revoked {
            0
        } else {
            let mut horizon = MAX_ADMIT_FOR_MS;
            if limits.rpm.is_some() {
                horizon = horizon.min(self.core.rpm.bucket_end_ms(now_ms) - now_ms);
            }
            if limits.tpm.is_some() {
                horizon = horizon.min(self.core.tpm.bucket_end_ms(now_ms) - now_ms);
            }
            horizon.max(0)
        };
        let reply = SliceGrant {
            seq: req.seq,
            limits: limits.clone(),
            revoked,
            slots: limits.max_concurrency.map(|_| slice.slots),
            quota_micros: quota_in_force.map(|_| slice.hold_micros),
            requests: limits.rpm.map(|_| requests),
            tokens: limits.tpm.map(|_| tokens),
            granted_at_ms: now_ms,
            admit_for_ms,
            refusal,
        };
        writes.core = true;
        let released = slice.slots == 0 && slice.hold_micros == 0;
        if released && req.release {
            // Given back whole: only a tombstone remains, so a late renewal
            // of this slice cannot bring it back.
            self.remember_settled(req.slice_id.clone(), now_ms);
            writes.put.push((req.slice_id.clone(), Finished::Settled { at_ms: now_ms }.record()));
            return (reply, writes);
        }
        slice.last_seq = req.seq;
        slice.last_reply = Some(reply.clone());
        slice.lease_expires_at_ms = now_ms.saturating_add(SLICE_LEASE_MS);
        self.reserved_micros = self.reserved_micros.saturating_add(slice.hold_micros);
        writes.put.push((req.slice_id.clone(), RequestRecord::Slice(Box::new(slice.clone()))));
        self.slices.insert(req.slice_id.clone(), slice);
        (reply, writes)
    }

    #[allow(clippy::too_many_arguments)]
    fn slice_refusal(
        &self,
        limits: &KeyLimits,
        slice: &SliceRecord,
        in_use_slots: u32,
        in_use_micros: i64,
        requests: u32,
        tokens: u64,
        need: SliceWant,
        now_ms: i64,
    ) -> Option<(Refusal, Option<u64>)> {
        if limits.max_concurrency.is_some() && slice.slots < in_use_slots.saturating_add(need.slots) {
            return Some((Refusal::Concurrency, Some(1)));
        }
        if let Some(rpm) = limits.rpm {
            if requests < need.requests {
                let wait =
                    self.core.rpm.check(now_ms, u64::from(need.requests), u64::from(rpm)).err().flatten();
                return Some((Refusal::Rpm, Some(wait.map_or(60, retry_after_secs))));
            }
        }
        if let Some(tpm) = limits.tpm {
            if tokens < need.tokens {
                let wait = self.core.tpm.check(now_ms, need.tokens, tpm);
                return Some((Refusal::Tpm, wait.err().flatten().map(retry_after_secs)));
            }
        }
        if self.quota_in_force(limits).is_some()
            && slice.hold_micros < in_use_micros.saturating_add(need.quota_micros)
        {
            let needed = i128::from(self.core.spent_micros)
                + i128::from(self.reserved_micros)
                + i128::from(in_use_micros)
                + i128::from(need.quota_micros);
            return Some((self.quota_refusal(limits, needed), None));
        }
        None
    }

    fn count_refusal(&mut self, reason: Option<Refusal>) {
        let c = &mut self.core.counters;
        match reason {
            Some(Refusal::Concurrency) => c.refused_concurrency += 1,
            Some(Refusal::Rpm) => c.refused_rpm += 1,
            Some(Refusal::Tpm) => c.refused_tpm += 1,
            Some(Refusal::Quota) => c.refused_quota += 1,
            Some(Refusal::Revoked) => c.refused_revoked += 1,
            Some(Refusal::Balance) => c.refused_balance += 1,
            None => {}
        }
    }

    fn stale_renewal(
        &mut self,
        req: &SliceRenewal,
        limits: &KeyLimits,
        now_ms: i64,
        writes: &mut Writes,
    ) -> SliceGrant {
        for settle in &req.settled {
            let id = settle.event.request_id.as_str();
            if self.outbox.contains_key(id) || self.finished.contains_key(id) {
                self.core.counters.duplicate_settles += 1;
                continue;
            }
            self.book(Some(&settle.event), 0);
            self.core.counters.admitted += 1;
            self.core.counters.settled += 1;
            self.finish(id, Some(settle.event.clone()), now_ms, writes);
        }
        SliceGrant {
            seq: req.seq,
            limits: limits.clone(),
            revoked: false,
            slots: limits.max_concurrency.map(|_| 0),
            quota_micros: self.quota_in_force(limits).map(|_| 0),
            requests: limits.rpm.map(|_| 0),
            tokens: limits.tpm.map(|_| 0),
            granted_at_ms: now_ms,
            admit_for_ms: 0,
            refusal: req.need.map(|_| (Refusal::Concurrency, Some(1))),
        }
    }

    /// Takes the stale hold of a slice that expired (still in `reserved`).
    fn take_expired_hold(&mut self, slice_id: &str, writes: &mut Writes) -> i64 {
        match self.finished.get(slice_id).copied() {
            Some(Finished::Expired { held_micros, .. }) => {
                self.finished.remove(slice_id);
                self.expired_ids.remove(slice_id);
                writes.delete.push(slice_id.to_string());
                held_micros
            }
            _ => 0,
        }
    }

    /// Expires slices whose lease passed (their isolate is gone): slots free,
    /// the hold stays reserved for the grace period, as a lease's does.
    pub(super) fn expire_slices(&mut self, now_ms: i64, writes: &mut Writes) {
        let due: Vec<String> = self
            .slices
            .iter()
            .filter(|(_, s)| s.lease_expires_at_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(slice) = self.slices.remove(&id) {
                let hold_until_ms = slice.lease_expires_at_ms.saturating_add(super::LATE_SETTLE_GRACE_MS);
                let finished =
                    Finished::Expired { at_ms: now_ms, held_micros: slice.hold_micros, hold_until_ms };
                self.core.counters.leases_expired += 1;
                writes.core = true;
                writes.put.push((id.clone(), finished.record()));
                self.remember_expired(id, finished);
            }
        }
    }
}

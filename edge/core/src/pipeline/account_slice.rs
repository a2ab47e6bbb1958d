//! The isolate's side of key-account slices ([`crate::key_account::slice`]):
//! admitting and settling requests of keys with limits locally, against the
//! slots and quota hold the account granted this isolate and its rate grants
//! (request and token budgets, each usable only inside the window bucket it
//! was counted in), and the renewals that report what was settled and ask for
//! more.
//!
//! **Renewals never stop admissions.** Holdings only grow on a renewal
//! (except the release of an idle slice, during which nothing is admitted),
//! and a renewal never touches a rate grant that is still open: it reports
//! the grants the isolate has closed (expired or used up) with their final
//! counts, and brings a new one. So requests keep being admitted against
//! what the isolate holds while a renewal is on its way; a request waits only
//! when nothing it holds can take it and a renewal is already in flight.
//!
//! **One call at a time per key.** The account sees an isolate's renewals in
//! order. A renewal whose reply is lost is not retried as such: what it
//! carried is reported again by the next one, each settled request id is
//! booked once, and a closed grant is refunded only while the account still
//! has it.
//!
//! Time is the isolate's clock; a rate grant's horizon is measured from when
//! its renewal was sent, so it ends no later than the account said.

use crate::key_account::{ClosedGrant, KeyLimits, Refusal, SliceGrant, SliceRenewal, SliceSettle, SliceWant};
use crate::usage::UsageEvent;
use std::collections::HashMap;

/// How long an idle slice is kept before it is given back, ms.
pub const SLICE_IDLE_RELEASE_MS: u64 = 1_000;
/// How long settled requests wait for others to join their report, ms.
pub const REPORT_WINDOW_MS: u64 = 20;
/// How long a request waits between looks at a renewal in flight, ms.
pub const RENEWAL_POLL_MS: u64 = 1;
/// Most settled requests carried by one renewal (the account object takes
/// bodies up to 256 KiB; an event is well under 1 KiB).
pub const MAX_REPORT: usize = 200;
/// A call to the account that has not come back in this long is taken as
/// failed (the request that made it is gone), ms.
pub const CALL_TIMEOUT_MS: i64 = 10_000;
/// Requests a rate grant is sized for at first; it doubles while grants are
/// used up, up to [`MAX_GRANT_REQUESTS`].
pub const FIRST_GRANT_REQUESTS: u32 = 4;
pub const MAX_GRANT_REQUESTS: u32 = 256;

/// What one request needs from the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Worst-case cost held against the quota.
    pub reserve_micros: i64,
    /// Tokens counted against TPM (the estimate).
    pub tokens: u64,
}

/// A request admitted against a slice: what it holds until settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub digest: String,
    pub need: Need,
    /// The rate grant (account clock) it was counted under.
    pub granted_at_ms: i64,
}

/// The answer to a local admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAdmit {
    Admitted(Ticket),
    /// Send this renewal to the key's account; then [`IsolateSlices::renewed`].
    Renew(Box<SliceRenewal>),
    /// A renewal is in flight and nothing held can take the request: look again shortly.
    Wait,
    /// The account refused (its reason, and when to retry).
    Refused(Refusal, Option<u64>),
}

/// What a renewal's reply meant for the request that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Its waiting request was admitted by the account.
    Admitted(Ticket),
    /// Its waiting request was refused.
    Refused(Refusal, Option<u64>),
    /// The grant is applied (the waiting request, if any, admits again).
    Applied,
}

/// What a report step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportAction {
    /// Send this renewal; then [`IsolateSlices::renewed`].
    Send(Box<SliceRenewal>),
    /// A call is in flight: look again shortly.
    Wait,
    /// Nothing to report.
    Nothing,
}

/// What to do after a local settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportStep {
    /// This settle opened the report: wait [`REPORT_WINDOW_MS`], then
    /// [`IsolateSlices::report`].
    WaitThenReport,
    /// A report is already scheduled; it will carry this one.
    Joined,
}

/// A rate grant as the isolate uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalGrant {
    granted_at_ms: i64,
    /// `None`: no such limit.
    requests: Option<u32>,
    tokens: Option<u64>,
    admit_until_ms: i64,
    used_requests: u32,
    used_tokens: u64,
}

impl LocalGrant {
    fn open(&self, now_ms: i64) -> bool {
        now_ms < self.admit_until_ms && self.requests.is_none_or(|n| self.used_requests < n)
    }

    fn takes(&self, need: Need, now_ms: i64) -> bool {
        self.open(now_ms) && self.tokens.is_none_or(|n| self.used_tokens.saturating_add(need.tokens) <= n)
    }

    /// Half of it is left (a report then asks for the next one).
    fn plenty(&self, now_ms: i64) -> bool {
        self.open(now_ms) && self.requests.is_none_or(|n| self.used_requests.saturating_mul(2) < n)
    }

    fn closed(&self) -> ClosedGrant {
        ClosedGrant {
            granted_at_ms: self.granted_at_ms,
            used_requests: self.used_requests,
            used_tokens: self.used_tokens,
        }
    }
}

/// One key's slice in this isolate.
#[derive(Debug, Clone)]
struct KeySlice {
    id: String,
    seq: u64,
    /// The last reply (limits, holdings, a refusal).
    reply: Option<SliceGrant>,
    /// Until when (isolate clock) the last reply's refusal stands.
    refused_until_ms: i64,
    grants: Vec<LocalGrant>,
    /// Closed grants carried by the call in flight.
    closing: Vec<LocalGrant>,
    in_flight: u32,
    reserved_micros: i64,
    /// Settled, not yet reported; and the cost of those.
    settled: Vec<SliceSettle>,
    settled_micros: i64,
    /// Settled requests carried by the call in flight.
    reporting: Vec<SliceSettle>,
    call_in_flight: bool,
    call_started_ms: i64,
    /// The call in flight gives the slice back (nothing is admitted meanwhile).
    release_in_flight: bool,
    /// A release's answer was lost: the account may have taken the slice
    /// back, so nothing is admitted against it until a release is answered.
    release_unconfirmed: bool,
    released: bool,
    report_open: bool,
    settles_taken: u64,
    settles_acked: u64,
    settles_in_call: u64,
    grant_size: u32,
    last_active_ms: i64,
}

/// Every key's slice in this isolate.
#[derive(Debug, Default)]
pub struct IsolateSlices {
    /// Makes slice ids unique to this isolate.
    isolate_id: String,
    /// Numbers slices: a slice id is never used twice by an isolate.
    next_slice: u64,
    slices: HashMap<String, KeySlice>,
}

impl IsolateSlices {
    /// `isolate_id`: random, unique to this isolate.
    pub fn new(isolate_id: String) -> Self {
        Self { isolate_id, next_slice: 0, slices: HashMap::new() }
    }

    /// Names this isolate (random, once per isolate).
    pub fn set_isolate_id(&mut self, isolate_id: String) {
        self.isolate_id = isolate_id;
    }

    fn slice(&mut self, digest: &str, now_ms: i64) -> &mut KeySlice {
        if !self.slices.contains_key(digest) {
            self.next_slice += 1;
        }
        let id = format!("s_{}_{}", self.isolate_id, self.next_slice);
        self.slices.entry(digest.to_string()).or_insert_with(|| KeySlice {
            id,
            seq: 0,
            reply: None,
            refused_until_ms: 0,
            grants: Vec::new(),
            closing: Vec::new(),
            in_flight: 0,
            reserved_micros: 0,
            settled: Vec::new(),
            settled_micros: 0,
            reporting: Vec::new(),
            call_in_flight: false,
            call_started_ms: 0,
            release_in_flight: false,
            release_unconfirmed: false,
            released: false,
            report_open: false,
            settles_taken: 0,
            settles_acked: 0,
            settles_in_call: 0,
            grant_size: FIRST_GRANT_REQUESTS,
            last_active_ms: now_ms,
        })
    }

    /// Admits a request of the key `digest` locally when its slice can take
    /// it, or says what to do instead.
    pub fn admit(&mut self, digest: &str, limits: &KeyLimits, need: Need, now_ms: i64) -> LocalAdmit {
        // A slice given back whole is finished at the account: a new one
        // (with a new id) takes the request.
        self.released(digest);
        let slice = self.slice(digest, now_ms);
        slice.last_active_ms = now_ms;
        if slice.call_in_flight && now_ms - slice.call_started_ms > CALL_TIMEOUT_MS {
            slice.call_failed();
        }
        if slice.release_unconfirmed {
            // Its holdings may be gone at the account: confirm the release first.
            if slice.call_in_flight {
                return LocalAdmit::Wait;
            }
            return LocalAdmit::Renew(Box::new(slice.renewal(limits, None, true, now_ms)));
        }
        if !slice.release_in_flight && slice.holdings_take(need) {
            if let Some(ticket) = slice.take_from_grants(digest, need, now_ms) {
                return LocalAdmit::Admitted(ticket);
            }
        }
        if let Some((reason, retry)) = slice.reply.as_ref().and_then(|r| r.refusal) {
            if now_ms < slice.refused_until_ms {
                return LocalAdmit::Refused(reason, retry);
            }
        }
        if slice.call_in_flight {
            return LocalAdmit::Wait;
        }
        LocalAdmit::Renew(Box::new(slice.renewal(limits, Some(need), false, now_ms)))
    }

    /// The account answered a renewal sent at `sent_at_ms` (isolate clock).
    /// When the renewal carried a waiting request's `need` and the account
    /// admitted it (at its own time, inside the new grant's bucket), its
    /// ticket is returned if what the isolate holds can take it now.
    pub fn renewed(
        &mut self,
        digest: &str,
        reply: SliceGrant,
        sent_at_ms: i64,
        need: Option<Need>,
    ) -> Renewed {
        let Some(slice) = self.slices.get_mut(digest) else { return Renewed::Applied };
        slice.call_in_flight = false;
        slice.released = std::mem::take(&mut slice.release_in_flight);
        slice.release_unconfirmed &= !slice.released;
        slice.reporting.clear();
        slice.settles_acked = slice.settles_in_call;
        // Costs reported are out of the hold the account sends back.
        slice.settled_micros = slice.settled.iter().map(|s| s.event.cost_micros.max(0)).sum();
        if slice.closing.iter().any(|g| g.requests.is_some_and(|n| g.used_requests >= n)) {
            slice.grant_size = slice.grant_size.saturating_mul(2).min(MAX_GRANT_REQUESTS);
        }
        slice.closing.clear();
        let refused = reply.refusal;
        let admit_until_ms = sent_at_ms.saturating_add(reply.admit_for_ms);
        // A refusal stands until the grant's horizon, except the balance's:
        // a top-up must let the next request in at once.
        let stands = refused.is_some_and(|(reason, _)| reason != crate::key_account::Refusal::Balance);
        slice.refused_until_ms = if stands { admit_until_ms } else { 0 };
        let fresh = !reply.revoked
            && reply.admit_for_ms > 0
            && (reply.requests.is_none_or(|n| n > 0) || reply.tokens.is_some_and(|n| n > 0));
        let granted_at_ms = reply.granted_at_ms;
        if fresh {
            slice.grants.push(LocalGrant {
                granted_at_ms,
                requests: reply.requests,
                tokens: reply.tokens,
                admit_until_ms,
                used_requests: 0,
                used_tokens: 0,
            });
        }
        if reply.revoked {
            slice.grants.clear();
        }
        slice.reply = Some(reply);
        let Some(need) = need else { return Renewed::Applied };
        if let Some((reason, retry)) = refused {
            return Renewed::Refused(reason, retry);
        }
        if !fresh || !slice.holdings_take(need) {
            return Renewed::Applied;
        }
        // The account decided inside the grant's bucket: the grant takes it
        // even if its horizon has passed here.
        let Some(grant) = slice.grants.last_mut() else { return Renewed::Applied };
        if grant.tokens.is_some_and(|n| grant.used_tokens.saturating_add(need.tokens) > n) {
            return Renewed::Applied;
        }
        grant.used_requests = grant.used_requests.saturating_add(1);
        grant.used_tokens = grant.used_tokens.saturating_add(need.tokens);
        slice.in_flight += 1;
        slice.reserved_micros = slice.reserved_micros.saturating_add(need.reserve_micros);
        Renewed::Admitted(Ticket { digest: digest.to_string(), need, granted_at_ms })
    }

    /// A renewal failed (the account was unreachable): what it carried is
    /// reported next time.
    pub fn renewal_failed(&mut self, digest: &str) {
        if let Some(slice) = self.slices.get_mut(digest) {
            slice.call_failed();
        }
    }

    /// Settles an admitted request locally; its event is reported with the
    /// next renewal. Returns the settle's number (see [`Self::acked`]).
    pub fn settle(&mut self, ticket: &Ticket, event: UsageEvent, now_ms: i64) -> (u64, ReportStep) {
        let slice = self.slice(&ticket.digest, now_ms);
        slice.in_flight = slice.in_flight.saturating_sub(1);
        slice.reserved_micros = slice.reserved_micros.saturating_sub(ticket.need.reserve_micros);
        slice.settled_micros = slice.settled_micros.saturating_add(event.cost_micros.max(0));
        slice.settled.push(SliceSettle {
            event,
            estimated_tokens: ticket.need.tokens,
            granted_at_ms: ticket.granted_at_ms,
        });
        slice.settles_taken += 1;
        slice.last_active_ms = now_ms;
        let number = slice.settles_taken;
        if std::mem::replace(&mut slice.report_open, true) {
            return (number, ReportStep::Joined);
        }
        (number, ReportStep::WaitThenReport)
    }

    /// Releases a ticket that never reached an upstream (no event).
    pub fn release(&mut self, ticket: &Ticket) {
        if let Some(slice) = self.slices.get_mut(&ticket.digest) {
            slice.in_flight = slice.in_flight.saturating_sub(1);
            slice.reserved_micros = slice.reserved_micros.saturating_sub(ticket.need.reserve_micros);
        }
    }

    /// The report a settle scheduled (or a stream's own, or an idle
    /// slice's release): a renewal reporting what was settled and topping the
    /// slice up, or giving it back when the key has been idle for
    /// [`SLICE_IDLE_RELEASE_MS`].
    pub fn report(&mut self, digest: &str, limits: &KeyLimits, now_ms: i64) -> ReportAction {
        let Some(slice) = self.slices.get_mut(digest) else { return ReportAction::Nothing };
        if slice.call_in_flight && now_ms - slice.call_started_ms > CALL_TIMEOUT_MS {
            slice.call_failed();
        }
        let idle = slice.in_flight == 0
            && slice.reply.is_some()
            && !slice.released
            && (slice.release_unconfirmed || now_ms - slice.last_active_ms >= SLICE_IDLE_RELEASE_MS as i64);
        if slice.settled.is_empty() && !idle {
            slice.report_open = false;
            return ReportAction::Nothing;
        }
        if slice.call_in_flight {
            return ReportAction::Wait;
        }
        slice.report_open = false;
        let release = idle && slice.settled.is_empty();
        ReportAction::Send(Box::new(slice.renewal(limits, None, release, now_ms)))
    }

    /// Whether the settle numbered `number` is in the account's outbox.
    pub fn acked(&self, digest: &str, number: u64) -> bool {
        self.slices.get(digest).is_some_and(|s| s.settles_acked >= number)
    }

    /// Settled requests the account could not be told of (it stayed
    /// unreachable): for the queue directly, so their usage is not lost.
    pub fn take_unreported(&mut self, digest: &str) -> Vec<UsageEvent> {
        let Some(slice) = self.slices.get_mut(digest) else { return Vec::new() };
        slice.settles_acked = slice.settles_taken;
        slice.settles_in_call = slice.settles_taken;
        slice.settled_micros = 0;
        std::mem::take(&mut slice.settled).into_iter().map(|s| s.event).collect()
    }

    /// Forgets what the isolate holds of a key (after a revocation push);
    /// the account expires what the slice held.
    pub fn forget(&mut self, digest: &str) {
        if let Some(slice) = self.slices.get_mut(digest) {
            slice.reply = None;
            slice.grants.clear();
        }
    }

    /// Nothing of the key runs or waits to be reported here.
    pub fn idle(&self, digest: &str) -> bool {
        self.slices.get(digest).is_some_and(|s| {
            s.in_flight == 0 && s.settled.is_empty() && !s.call_in_flight && s.reply.is_some() && !s.released
        })
    }

    /// The slice was given back whole; its entry is dropped.
    pub fn released(&mut self, digest: &str) -> bool {
        let done = self
            .slices
            .get(digest)
            .is_some_and(|s| s.released && s.in_flight == 0 && s.settled.is_empty() && !s.call_in_flight);
        if done {
            self.slices.remove(digest);
        }
        done
    }
}

impl KeySlice {
    /// Slots and the quota hold can take one more request.
    fn holdings_take(&self, need: Need) -> bool {
        let Some(r) = &self.reply else { return false };
        if r.revoked || r.slots.is_some_and(|slots| self.in_flight >= slots) {
            return false;
        }
        match r.quota_micros {
            Some(hold) => {
                let committed = i128::from(self.reserved_micros) + i128::from(self.settled_micros);
                committed + i128::from(need.reserve_micros) <= i128::from(hold)
            }
            None => true,
        }
    }

    fn take_from_grants(&mut self, digest: &str, need: Need, now_ms: i64) -> Option<Ticket> {
        let grant = self.grants.iter_mut().find(|g| g.takes(need, now_ms))?;
        grant.used_requests = grant.used_requests.saturating_add(1);
        grant.used_tokens = grant.used_tokens.saturating_add(need.tokens);
        let granted_at_ms = grant.granted_at_ms;
        self.in_flight += 1;
        self.reserved_micros = self.reserved_micros.saturating_add(need.reserve_micros);
        Some(Ticket { digest: digest.to_string(), need, granted_at_ms })
    }

    /// The call in flight failed or was lost: what it reported goes back in
    /// front; closed grants are reported again (refunded only while the
    /// account still has them).
    fn call_failed(&mut self) {
        self.call_in_flight = false;
        // A release may have reached the account even if its answer did not.
        self.release_unconfirmed |= std::mem::take(&mut self.release_in_flight);
        let mut back = std::mem::take(&mut self.reporting);
        back.append(&mut self.settled);
        self.settled = back;
        let mut closing = std::mem::take(&mut self.closing);
        closing.append(&mut self.grants);
        self.grants = closing;
        self.settles_in_call = self.settles_acked;
    }

    /// A renewal: everything settled, the grants closed since the last one,
    /// and what the slice should hold from now on.
    fn renewal(
        &mut self,
        limits: &KeyLimits,
        need: Option<Need>,
        release: bool,
        now_ms: i64,
    ) -> SliceRenewal {
        self.seq += 1;
        self.call_in_flight = true;
        self.call_started_ms = now_ms;
        self.release_in_flight = release;
        let take = self.settled.len().min(MAX_REPORT);
        self.reporting = self.settled.drain(..take).collect();
        self.settles_in_call = self.settles_acked + take as u64;
        let reported_micros: i64 = self.reporting.iter().map(|s| s.event.cost_micros.max(0)).sum();
        // Grants that take nothing more are closed; when releasing, all are.
        let (closing, open): (Vec<LocalGrant>, Vec<LocalGrant>) =
            std::mem::take(&mut self.grants).into_iter().partition(|g| release || !g.open(now_ms));
        self.grants = open;
        self.closing = closing;
        let size = self.grant_size;
        let per_request = need.unwrap_or(Need { reserve_micros: 0, tokens: 0 });
        let wants_rate = !release && !self.grants.iter().any(|g| g.plenty(now_ms));
        let (requests, tokens) = if wants_rate {
            let tokens_per = if per_request.tokens > 0 { per_request.tokens } else { 4_096 };
            (size, tokens_per.saturating_mul(u64::from(size)))
        } else {
            (0, 0)
        };
        let reserve_per = per_request.reserve_micros.max(self.typical_reserve());
        let want = if release {
            SliceWant::default()
        } else {
            SliceWant {
                slots: self.in_flight.saturating_add(size.min(limits.max_concurrency.unwrap_or(size))),
                // In the account's terms after it books what this reports.
                quota_micros: self
                    .reserved_micros
                    .saturating_add(self.settled_micros.saturating_sub(reported_micros))
                    .saturating_add(reserve_per.saturating_mul(i64::from(size))),
                requests,
                tokens,
            }
        };
        SliceRenewal {
            slice_id: self.id.clone(),
            seq: self.seq,
            limits: limits.clone(),
            settled: self.reporting.clone(),
            closed: self.closing.iter().map(LocalGrant::closed).collect(),
            release,
            in_use_slots: self.in_flight,
            in_use_micros: self.reserved_micros,
            want,
            // The rate part of the need only when a rate grant is asked for
            // (otherwise an open grant takes the request once holdings grow).
            need: need.map(|n| SliceWant {
                slots: 1,
                quota_micros: n.reserve_micros,
                requests: u32::from(wants_rate),
                tokens: if wants_rate { n.tokens } else { 0 },
            }),
        }
    }

    /// A request's reservation as seen lately (to size top-ups in reports).
    fn typical_reserve(&self) -> i64 {
        match self.in_flight {
            0 => 0,
            n => self.reserved_micros / i64::from(n),
        }
    }
}

//! The isolate's side of key-account slices ([`crate::key_account::slice`]):
//! admitting and settling requests of keys with limits locally, against the
//! slots, quota hold and request/token budget the account granted this
//! isolate, and the renewals that report what was settled and ask for more.
//!
//! **One call at a time per key.** Renewals of one slice are serialized: a
//! renewal closes the grant it reports on (no admission under it after the
//! renewal is sent, so the "used" counts it carries are final), and a request
//! that finds a renewal in flight waits for its reply. The account therefore
//! sees renewals in order, and what it grants always matches what the isolate
//! believes it holds.
//!
//! Time is the isolate's clock; the grant's admission horizon is measured
//! from when the renewal was sent, so it ends no later than the account said.

use crate::key_account::{KeyLimits, Refusal, SliceGrant, SliceRenewal, SliceSettle, SliceWant};
use crate::usage::UsageEvent;
use std::collections::HashMap;

/// How long an idle slice is kept before it is given back, ms.
pub const SLICE_IDLE_RELEASE_MS: u64 = 1_000;
/// How long settled requests wait for others to join their report, ms.
pub const REPORT_WINDOW_MS: u64 = 20;
/// How long a request waits between looks at a renewal another request
/// has in flight, ms.
pub const RENEWAL_POLL_MS: u64 = 1;
/// Most settled requests carried by one renewal (the account object takes
/// bodies up to 256 KiB; an event is well under 1 KiB).
pub const MAX_REPORT: usize = 200;
/// A call to the account that has not come back in this long is taken as
/// failed (the request that made it is gone), ms.
pub const CALL_TIMEOUT_MS: i64 = 10_000;
/// Requests a grant is sized for at first; it doubles while the isolate
/// keeps using whole grants, up to [`MAX_GRANT_REQUESTS`].
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
    /// The grant (account clock) it was counted under.
    pub granted_at_ms: i64,
}

/// The answer to a local admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAdmit {
    Admitted(Ticket),
    /// Send this renewal to the key's account; then [`IsolateSlices::renewed`].
    Renew(Box<SliceRenewal>),
    /// Another request's renewal is in flight: look again shortly.
    Wait,
    /// The account refused (its reason, and when to retry).
    Refused(Refusal, Option<u64>),
}

/// A grant as the isolate applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    reply: SliceGrant,
    /// Until when (isolate clock) it may be admitted against.
    admit_until_ms: i64,
    /// The reply said the waiting request cannot get in.
    refused: Option<(Refusal, Option<u64>)>,
}

/// One key's slice in this isolate.
#[derive(Debug, Clone)]
struct KeySlice {
    id: String,
    seq: u64,
    grant: Option<Grant>,
    /// The grant accepts no more admissions (a renewal reported on it).
    closed: bool,
    in_flight: u32,
    reserved_micros: i64,
    used_requests: u32,
    used_tokens: u64,
    /// Settled, not yet reported; and the cost of those.
    settled: Vec<SliceSettle>,
    settled_micros: i64,
    /// Settled requests handed to the renewal in flight.
    reporting: Vec<SliceSettle>,
    call_in_flight: bool,
    call_started_ms: i64,
    /// A report is scheduled (a request waits out the report window).
    report_open: bool,
    /// Count of settles so far, and how many of them the account has.
    settles_taken: u64,
    settles_acked: u64,
    settles_in_call: u64,
    /// Requests the next grant is sized for.
    grant_size: u32,
    /// The renewal in flight gives the slice back; and the last one did.
    release_sent: bool,
    released: bool,
    last_active_ms: i64,
}

/// What to do after a local settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportStep {
    /// This settle opened the report: wait [`REPORT_WINDOW_MS`], then
    /// [`IsolateSlices::report`].
    WaitThenReport,
    /// A report is already scheduled or in flight; it will carry this one.
    Joined,
}

/// What a renewal's reply meant for the request that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Its waiting request was admitted by the account.
    Admitted(Ticket),
    /// Its waiting request was refused.
    Refused(Refusal, Option<u64>),
    /// A report: the grant is applied.
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
            grant: None,
            closed: false,
            in_flight: 0,
            reserved_micros: 0,
            used_requests: 0,
            used_tokens: 0,
            settled: Vec::new(),
            settled_micros: 0,
            reporting: Vec::new(),
            call_in_flight: false,
            call_started_ms: 0,
            report_open: false,
            settles_taken: 0,
            settles_acked: 0,
            settles_in_call: 0,
            grant_size: FIRST_GRANT_REQUESTS,
            release_sent: false,
            released: false,
            last_active_ms: now_ms,
        })
    }

    /// Admits a request of the key `digest` locally when its slice allows,
    /// or says what to do instead.
    pub fn admit(&mut self, digest: &str, limits: &KeyLimits, need: Need, now_ms: i64) -> LocalAdmit {
        let slice = self.slice(digest, now_ms);
        slice.last_active_ms = now_ms;
        if slice.call_in_flight && now_ms - slice.call_started_ms > CALL_TIMEOUT_MS {
            slice.call_failed();
        }
        if let Some(grant) = &slice.grant {
            if !slice.closed && now_ms < grant.admit_until_ms && slice.fits(grant, need) {
                slice.in_flight += 1;
                slice.reserved_micros = slice.reserved_micros.saturating_add(need.reserve_micros);
                slice.used_requests = slice.used_requests.saturating_add(1);
                slice.used_tokens = slice.used_tokens.saturating_add(need.tokens);
                return LocalAdmit::Admitted(Ticket {
                    digest: digest.to_string(),
                    need,
                    granted_at_ms: grant.reply.granted_at_ms,
                });
            }
            // The account refused a request this grant could not hold: while
            // the grant lasts, one that does not fit is refused the same way
            // without asking again.
            if let Some((reason, retry)) = grant.refused {
                if now_ms < grant.admit_until_ms {
                    return LocalAdmit::Refused(reason, retry);
                }
            }
        }
        if slice.call_in_flight {
            return LocalAdmit::Wait;
        }
        LocalAdmit::Renew(Box::new(slice.renewal(limits, Some(need), now_ms)))
    }

    /// The account answered a renewal sent at `sent_at_ms` (isolate clock).
    /// When the renewal carried a waiting request's `need` and the account
    /// did not refuse it, the account admitted that request at its own time
    /// (inside the grant's bucket): its ticket is returned, whatever the
    /// isolate's clock says now.
    pub fn renewed(
        &mut self,
        digest: &str,
        reply: SliceGrant,
        sent_at_ms: i64,
        need: Option<Need>,
    ) -> Renewed {
        let Some(slice) = self.slices.get_mut(digest) else { return Renewed::Applied };
        slice.call_in_flight = false;
        slice.released = std::mem::take(&mut slice.release_sent);
        slice.reporting.clear();
        slice.settles_acked = slice.settles_in_call;
        // Costs reported are now out of the hold the account sends back.
        slice.settled_micros = slice.settled.iter().map(|s| s.event.cost_micros.max(0)).sum();
        if slice.used_requests >= slice.grant_requests() && slice.grant_requests() > 0 {
            slice.grant_size = slice.grant_size.saturating_mul(2).min(MAX_GRANT_REQUESTS);
        }
        slice.used_requests = 0;
        slice.used_tokens = 0;
        slice.closed = false;
        let refused = reply.refusal;
        let granted_at_ms = reply.granted_at_ms;
        slice.grant =
            Some(Grant { admit_until_ms: sent_at_ms.saturating_add(reply.admit_for_ms), reply, refused });
        let Some(need) = need else { return Renewed::Applied };
        if let Some((reason, retry)) = refused {
            return Renewed::Refused(reason, retry);
        }
        slice.in_flight += 1;
        slice.reserved_micros = slice.reserved_micros.saturating_add(need.reserve_micros);
        slice.used_requests = slice.used_requests.saturating_add(1);
        slice.used_tokens = slice.used_tokens.saturating_add(need.tokens);
        Renewed::Admitted(Ticket { digest: digest.to_string(), need, granted_at_ms })
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

    /// A renewal failed (the account was unreachable): what it carried is
    /// reported next time.
    pub fn renewal_failed(&mut self, digest: &str) {
        if let Some(slice) = self.slices.get_mut(digest) {
            slice.call_failed();
        }
    }

    /// Settles an admitted request locally. Its event is reported to the
    /// account with the next renewal.
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
        if slice.report_open || slice.call_in_flight {
            return (number, ReportStep::Joined);
        }
        slice.report_open = true;
        (number, ReportStep::WaitThenReport)
    }

    /// Releases a ticket that never reached an upstream (billed nothing, no event).
    pub fn release(&mut self, ticket: &Ticket) {
        if let Some(slice) = self.slices.get_mut(&ticket.digest) {
            slice.in_flight = slice.in_flight.saturating_sub(1);
            slice.reserved_micros = slice.reserved_micros.saturating_sub(ticket.need.reserve_micros);
        }
    }

    /// The report a settle scheduled (or a stream's own, or an idle
    /// slice's release): a renewal keeping what the slice holds, or giving it
    /// back when the key has been idle for [`SLICE_IDLE_RELEASE_MS`].
    pub fn report(&mut self, digest: &str, limits: &KeyLimits, now_ms: i64) -> ReportAction {
        let Some(slice) = self.slices.get_mut(digest) else { return ReportAction::Nothing };
        if slice.call_in_flight && now_ms - slice.call_started_ms > CALL_TIMEOUT_MS {
            slice.call_failed();
        }
        let idle = slice.in_flight == 0
            && slice.grant.is_some()
            && now_ms - slice.last_active_ms >= SLICE_IDLE_RELEASE_MS as i64;
        if slice.settled.is_empty() && !idle {
            slice.report_open = false;
            return ReportAction::Nothing;
        }
        if slice.call_in_flight {
            return ReportAction::Wait;
        }
        slice.report_open = false;
        let mut renewal = slice.renewal(limits, None, now_ms);
        if idle && renewal.settled.is_empty() {
            renewal.want = SliceWant::default();
            slice.release_sent = true;
        }
        ReportAction::Send(Box::new(renewal))
    }

    /// Whether the settle numbered `number` is in the account's outbox.
    pub fn acked(&self, digest: &str, number: u64) -> bool {
        self.slices.get(digest).is_some_and(|s| s.settles_acked >= number)
    }

    /// Whether a call to `digest`'s account is in flight.
    pub fn call_in_flight(&self, digest: &str) -> bool {
        self.slices.get(digest).is_some_and(|s| s.call_in_flight)
    }

    /// Forgets a key's slice (after a revocation push); its account expires
    /// what the slice held.
    pub fn forget(&mut self, digest: &str) {
        if let Some(slice) = self.slices.get_mut(digest) {
            slice.grant = None;
            slice.closed = true;
        }
    }

    /// Nothing of the key runs or waits to be reported in this isolate.
    pub fn idle(&self, digest: &str) -> bool {
        self.slices.get(digest).is_some_and(|s| {
            s.in_flight == 0 && s.settled.is_empty() && !s.call_in_flight && s.grant.is_some()
        })
    }

    /// The slice was given back whole (its renewal wanted nothing).
    pub fn released(&mut self, digest: &str) -> bool {
        let done = self.slices.get(digest).is_some_and(|s| {
            s.in_flight == 0
                && s.settled.is_empty()
                && !s.call_in_flight
                && s.grant.as_ref().is_some_and(|g| {
                    g.reply.slots.unwrap_or(0) == 0 && g.reply.quota_micros.unwrap_or(0) == 0
                })
        });
        if done {
            self.slices.remove(digest);
        }
        done
    }
}

impl KeySlice {
    fn grant_requests(&self) -> u32 {
        self.grant.as_ref().and_then(|g| g.reply.requests).unwrap_or(0)
    }

    fn fits(&self, grant: &Grant, need: Need) -> bool {
        let r = &grant.reply;
        if r.revoked {
            return false;
        }
        if r.slots.is_some_and(|slots| self.in_flight >= slots) {
            return false;
        }
        if r.requests.is_some_and(|n| self.used_requests >= n) {
            return false;
        }
        if r.tokens.is_some_and(|n| self.used_tokens.saturating_add(need.tokens) > n) {
            return false;
        }
        if let Some(hold) = r.quota_micros {
            let committed = i128::from(self.reserved_micros) + i128::from(self.settled_micros);
            if committed + i128::from(need.reserve_micros) > i128::from(hold) {
                return false;
            }
        }
        true
    }

    /// The call in flight failed or was lost: what it reported goes back in
    /// front of what was settled since; the grant stays closed (its "used"
    /// counts are final and are reported again, naming that grant, so a
    /// renewal the account did apply is never refunded twice).
    fn call_failed(&mut self) {
        self.call_in_flight = false;
        self.release_sent = false;
        let mut back = std::mem::take(&mut self.reporting);
        back.append(&mut self.settled);
        self.settled = back;
        self.settles_in_call = self.settles_acked;
        self.closed = true;
    }

    /// A renewal reporting everything settled, closing the current grant.
    fn renewal(&mut self, limits: &KeyLimits, need: Option<Need>, now_ms: i64) -> SliceRenewal {
        self.seq += 1;
        self.closed = true;
        self.call_in_flight = true;
        self.call_started_ms = now_ms;
        let take = self.settled.len().min(MAX_REPORT);
        self.reporting = self.settled.drain(..take).collect();
        self.settles_in_call = self.settles_acked + take as u64;
        let size = self.grant_size;
        let per_request = need.unwrap_or(Need { reserve_micros: 0, tokens: 0 });
        let last = self.grant.as_ref().map(|g| &g.reply);
        // Keep what is held, and room for `size` more requests like this one.
        let want = SliceWant {
            slots: self.in_flight.saturating_add(size.min(limits.max_concurrency.unwrap_or(size))),
            quota_micros: self
                .reserved_micros
                .saturating_add(per_request.reserve_micros.saturating_mul(i64::from(size)))
                .max(last.and_then(|r| r.quota_micros).unwrap_or(0).saturating_sub(self.settled_micros)),
            requests: size,
            tokens: per_request.tokens.saturating_mul(u64::from(size)),
        };
        SliceRenewal {
            slice_id: self.id.clone(),
            seq: self.seq,
            limits: limits.clone(),
            settled: self.reporting.clone(),
            used_requests: self.used_requests,
            used_tokens: self.used_tokens,
            used_of_granted_at_ms: last.map(|r| r.granted_at_ms),
            in_use_slots: self.in_flight,
            in_use_micros: self.reserved_micros,
            want,
            need: need.map(|n| SliceWant {
                slots: 1,
                quota_micros: n.reserve_micros,
                requests: 1,
                tokens: n.tokens,
            }),
        }
    }
}

//! A key's draw on its user's balance: the key account's side of
//! [`crate::user_account`].
//!
//! A key with a `user_id` spends from its user's balance. Its account holds
//! an **allowance** granted by the user's account (cumulative, in the user's
//! terms) and enforces it exactly as it enforces the key's own quota: the
//! quota in force is `min(quota, base + allowance)`, where `base` is the
//! key's spend when it was bound to the user. Every admission rule of the
//! account (single requests and isolate slices, I1 included) then keeps
//! `spent + reserved ≤ base + allowance`, i.e. the key's spend on the balance
//! plus everything held for it stays inside what the user account granted.
//!
//! The object asks the user account for more before a decision the
//! allowance cannot cover ([`KeyAccountState::balance_request_for_slice`],
//! [`KeyAccountState::balance_request_for_admit`]), applies the answer
//! ([`KeyAccountState::apply_allowance`]), and gives back what it does not
//! use once nothing of the key is held ([`KeyAccountState::allowance_release`]).
//!
//! **Why the key's belief never exceeds the user account's grant.** The
//! allowance counted on here rises only to a value the user account
//! answered, and the user account lowers an allowance only on a release
//! newer than every request it processed before. A release lowers the
//! allowance here *before* it is sent, and an answer to a request older than
//! the last release cannot raise it past what that release keeps. So at every
//! moment the allowance counted on here is at most the one the user account
//! holds for this key, and B1 there bounds the sum over the user's keys.

use super::{KeyAccountState, KeyLimits, Refusal, SliceRenewal, Writes};
use crate::user_account::{AllowanceGrant, AllowanceRequest};
use serde::{Deserialize, Serialize};

/// The key's draw on its user's balance, as its account keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalanceDraw {
    pub user_id: String,
    /// The key's `spent_micros` when it was bound to this user.
    pub base_micros: i64,
    /// The allowance counted on (user terms, cumulative).
    pub allowance_micros: i64,
    /// Last request sent to the user account (strictly increasing).
    pub seq: u64,
    /// Newest request whose answer was applied.
    pub applied_seq: u64,
    /// The last release sent.
    pub release_seq: u64,
    /// The admin has pushed the user's account.
    pub known: bool,
    /// The user is disabled.
    pub disabled: bool,
    /// What the user could still be granted at the last answer.
    pub available_micros: i64,
}

impl KeyAccountState {
    /// Binds the account to the user its limits name (a new draw, based at
    /// the current spend). Limits that name no user (a deleted key) keep the
    /// draw, so what it holds can still be given back; the key is then
    /// standalone. Returns whether `core` changed.
    pub(super) fn bind_balance(&mut self) -> bool {
        let Some(user) = self.core.limits.as_ref().and_then(|l| l.user_id.clone()) else { return false };
        if self.core.balance.as_ref().is_some_and(|d| d.user_id == user) {
            return false;
        }
        self.core.balance = Some(BalanceDraw {
            user_id: user,
            base_micros: self.core.spent_micros,
            ..BalanceDraw::default()
        });
        true
    }

    /// The draw, when `limits` name the user it belongs to.
    fn draw_for(&self, limits: &KeyLimits) -> Option<&BalanceDraw> {
        self.core.balance.as_ref().filter(|d| limits.user_id.as_deref() == Some(d.user_id.as_str()))
    }

    /// The quota in force: the key's own and what its user's allowance
    /// covers, whichever is smaller (`None`: neither applies).
    pub(super) fn quota_in_force(&self, limits: &KeyLimits) -> Option<i64> {
        let balance = self.draw_for(limits).map(|d| d.base_micros.saturating_add(d.allowance_micros));
        match (limits.quota_micros, balance) {
            (Some(quota), Some(balance)) => Some(quota.min(balance)),
            (quota, balance) => quota.or(balance),
        }
    }

    /// The key's user is disabled.
    pub(super) fn user_disabled(&self, limits: &KeyLimits) -> bool {
        self.draw_for(limits).is_some_and(|d| d.disabled)
    }

    /// Why a request needing `needed` (spent + reserved with it) is refused:
    /// the key's own quota when that is what it passes, else the balance.
    pub(super) fn quota_refusal(&self, limits: &KeyLimits, needed: i128) -> Refusal {
        match limits.quota_micros {
            Some(quota) if needed > i128::from(quota) => Refusal::Quota,
            _ if self.draw_for(limits).is_some() => Refusal::Balance,
            _ => Refusal::Quota,
        }
    }

    /// What the key has spent on its user's balance.
    pub fn balance_spent(&self) -> i64 {
        self.core.balance.as_ref().map_or(0, |d| self.core.spent_micros.saturating_sub(d.base_micros))
    }

    /// The request to send when `required` (the account's spent + reserved
    /// after a decision) needs more allowance than is counted on.
    /// `needed` is what the waiting request cannot do without (≤ `wanted`).
    /// A disabled user is asked again every time (it may be enabled again).
    fn balance_request(&mut self, limits: &KeyLimits, wanted: i64, needed: i64) -> Option<AllowanceRequest> {
        let cap = |v: i64| limits.quota_micros.map_or(v, |quota| v.min(quota));
        let spent = self.balance_spent();
        let draw =
            self.core.balance.as_mut().filter(|d| limits.user_id.as_deref() == Some(d.user_id.as_str()))?;
        let want = cap(wanted).saturating_sub(draw.base_micros);
        let need = cap(needed.min(wanted)).saturating_sub(draw.base_micros);
        if want <= draw.allowance_micros && !draw.disabled {
            return None;
        }
        draw.seq += 1;
        Some(AllowanceRequest {
            key_id: String::new(),
            seq: draw.seq,
            spent_micros: spent,
            want_micros: want,
            need_micros: need,
            release: false,
            in_use_micros: 0,
        })
    }

    /// Before [`Self::renew_slice`]: adopts the renewal's limits and returns
    /// the allowance request to make first, if the renewal wants more than
    /// the allowance covers. `writes` must be persisted before it is sent.
    pub fn balance_request_for_slice(&mut self, req: &SliceRenewal) -> (Option<AllowanceRequest>, Writes) {
        let core = self.adopt(&req.limits);
        let limits = self.core.limits.clone().unwrap_or_default();
        if req.release || limits.disabled {
            return (None, Writes { core, ..Writes::default() });
        }
        let hold = self.slices.get(&req.slice_id).map_or(0, |s| s.hold_micros.max(0));
        let reported: i64 = req.settled.iter().map(|s| s.event.cost_micros.max(0)).sum();
        let needed_hold = req.in_use_micros.saturating_add(req.need.map_or(0, |n| n.quota_micros));
        let wanted_hold = req.want.quota_micros.max(needed_hold);
        // Spend and every other hold, after this renewal books its settles.
        let others = self
            .core
            .spent_micros
            .saturating_add(self.reserved_micros.saturating_sub(hold))
            .saturating_add(reported);
        let wanted = others.saturating_add(wanted_hold.max(hold));
        let needed = others.saturating_add(needed_hold);
        let ask = self.balance_request(&limits, wanted, needed);
        let core = core || ask.is_some();
        (ask, Writes { core, ..Writes::default() })
    }

    /// Before [`Self::admit`]: as [`Self::balance_request_for_slice`], for one request.
    pub fn balance_request_for_admit(
        &mut self,
        req: &super::AdmitRequest,
    ) -> (Option<AllowanceRequest>, Writes) {
        let core = self.adopt(&req.limits);
        let limits = self.core.limits.clone().unwrap_or_default();
        if limits.disabled || self.in_flight.contains_key(&req.request_id) {
            return (None, Writes { core, ..Writes::default() });
        }
        let required = self
            .core
            .spent_micros
            .saturating_add(self.reserved_micros)
            .saturating_add(req.reserve_micros.max(0));
        let ask = self.balance_request(&limits, required, required);
        let core = core || ask.is_some();
        (ask, Writes { core, ..Writes::default() })
    }

    /// The user account's answer.
    pub fn apply_allowance(&mut self, grant: &AllowanceGrant) -> Writes {
        let Some(draw) = self.core.balance.as_mut() else { return Writes::default() };
        draw.known = grant.known;
        draw.disabled = grant.disabled;
        draw.available_micros = grant.available_micros;
        if grant.seq > draw.applied_seq {
            draw.applied_seq = grant.seq;
            draw.allowance_micros = if grant.seq < draw.release_seq {
                // Answered before the last release was processed: that
                // release may still lower it, so it cannot raise it.
                grant.allowance_micros.min(draw.allowance_micros)
            } else {
                grant.allowance_micros
            };
        }
        Writes { core: true, ..Writes::default() }
    }

    /// When nothing of the key is held (no request in flight, no quota held
    /// by a slice, no stale hold) and it counts on more allowance than it spent, or a
    /// request is still unanswered (a lost answer may have granted more than
    /// is counted on here): the release to send. The allowance counted on
    /// drops to the spend at once.
    pub fn allowance_release(&mut self) -> Option<(AllowanceRequest, Writes)> {
        if !self.in_flight.is_empty() || self.reserved_micros != 0 {
            return None;
        }
        let spent = self.balance_spent();
        let draw = self.core.balance.as_mut()?;
        if draw.allowance_micros <= spent && draw.applied_seq >= draw.seq {
            return None;
        }
        draw.seq += 1;
        draw.release_seq = draw.seq;
        draw.allowance_micros = draw.allowance_micros.min(spent);
        let request = AllowanceRequest {
            key_id: String::new(),
            seq: draw.seq,
            spent_micros: spent,
            want_micros: 0,
            need_micros: 0,
            release: true,
            in_use_micros: 0,
        };
        Some((request, Writes { core: true, ..Writes::default() }))
    }

    /// The user account says the user was disabled or enabled again (it
    /// tells every key it granted to when that changes).
    pub fn user_notice(&mut self, disabled: bool) -> Writes {
        match self.core.balance.as_mut() {
            Some(draw) if draw.disabled != disabled => {
                draw.disabled = disabled;
                Writes { core: true, ..Writes::default() }
            }
            _ => Writes::default(),
        }
    }

    /// The user whose balance the key draws on.
    pub fn balance_user(&self) -> Option<&str> {
        self.core.balance.as_ref().map(|d| d.user_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AdmitDecision, AdmitRequest, KeyAccountState, KeyLimits, Refusal};
    use crate::user_account::{AllowanceRequest, UserAccountPush, UserAccountState};

    fn limits() -> KeyLimits {
        KeyLimits { version: 1, user_id: Some("usr_1".into()), ..KeyLimits::default() }
    }

    fn admit(id: &str, reserve: i64) -> AdmitRequest {
        AdmitRequest {
            request_id: id.into(),
            limits: limits(),
            reserve_micros: reserve,
            estimated_tokens: 1,
            lease_ms: None,
            max_concurrency: None,
        }
    }

    fn user(credit: i64) -> UserAccountState {
        let mut user = UserAccountState::default();
        user.configure(&UserAccountPush {
            user_id: "usr_1".into(),
            credited_micros: credit,
            version: 1,
            disabled: false,
        });
        user
    }

    fn send(user: &mut UserAccountState, mut req: AllowanceRequest) -> crate::user_account::AllowanceGrant {
        req.key_id = "k".into();
        user.draw(&req).0
    }

    #[test]
    fn a_key_admits_only_what_its_allowance_covers_and_asks_for_more() {
        let mut user = user(1_000);
        let mut key = KeyAccountState::new(60_000);
        let (ask, _) = key.balance_request_for_admit(&admit("a", 300));
        let ask = ask.expect("no allowance yet: ask first");
        assert_eq!(ask.want_micros, 300);
        key.apply_allowance(&send(&mut user, ask));
        assert!(matches!(key.admit(&admit("a", 300), 1).0, AdmitDecision::Admitted { .. }));
        // 800 more cannot be covered: the user account grants what is free.
        let ask = key.balance_request_for_admit(&admit("b", 800)).0.expect("more needed");
        key.apply_allowance(&send(&mut user, ask));
        let (decision, _) = key.admit(&admit("b", 800), 2);
        assert_eq!(decision, AdmitDecision::Refused { reason: Refusal::Balance, retry_after_secs: None });
        assert_eq!(Refusal::Balance.into_error(None), crate::error::GatewayError::InsufficientBalance);
        assert!(crate::error::GatewayError::InsufficientBalance.message().contains("balance"));
    }

    #[test]
    fn a_release_stops_the_key_counting_on_it_before_it_is_sent() {
        let mut user = user(1_000);
        let mut key = KeyAccountState::new(60_000);
        let ask = key.balance_request_for_admit(&admit("a", 400)).0.unwrap();
        key.apply_allowance(&send(&mut user, ask));
        // Idle and holding 400 it does not use: the release is built and,
        // before it is even sent, the key counts on nothing more.
        let (release, _) = key.allowance_release().expect("a release");
        assert_eq!(key.snapshot(3).balance.unwrap().allowance_micros, 0);
        assert!(key.balance_request_for_admit(&admit("b", 10)).0.is_some(), "a new request must ask again");
        let grant = send(&mut user, release);
        assert_eq!(grant.allowance_micros, 0);
        assert_eq!(user.snapshot().reserved_micros, 0);
    }

    #[test]
    fn an_answer_older_than_a_release_cannot_raise_the_allowance() {
        let mut user = user(1_000);
        let mut key = KeyAccountState::new(60_000);
        let first = key.balance_request_for_admit(&admit("a", 100)).0.unwrap();
        key.apply_allowance(&send(&mut user, first));
        // A grow is processed by the user account, its answer still on the way…
        let grow = key.balance_request_for_admit(&admit("b", 800)).0.unwrap();
        let late = send(&mut user, grow);
        assert_eq!(late.allowance_micros, 800);
        // …when the key, idle, releases; the user account processes the release.
        let (release, _) = key.allowance_release().unwrap();
        let released = send(&mut user, release);
        assert_eq!(released.allowance_micros, 0);
        // The late answer arrives: it must not make the key count on 800.
        key.apply_allowance(&late);
        key.apply_allowance(&released);
        let counted = key.snapshot(3).balance.unwrap().allowance_micros;
        assert!(counted <= user.keys["k"].allowance_micros, "counts on {counted}");
    }

    #[test]
    fn a_lost_answer_is_given_back_once_idle() {
        let mut user = user(1_000);
        let mut key = KeyAccountState::new(60_000);
        let ask = key.balance_request_for_admit(&admit("a", 300)).0.unwrap();
        let _lost = send(&mut user, ask);
        assert_eq!(user.snapshot().reserved_micros, 300, "granted, but the key never heard");
        let (release, _) = key.allowance_release().expect("an unanswered request is released");
        key.apply_allowance(&send(&mut user, release));
        assert_eq!(user.snapshot().reserved_micros, 0);
        assert!(key.allowance_release().is_none(), "answered: nothing more to send");
    }
}

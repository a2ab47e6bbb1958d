//! The per-user account kept by the user's Durable Object (`UserAccount`,
//! one per admin user id): the user's balance as the edge enforces it, for
//! every key the user owns, used at once from any number of places.
//!
//! **What each side knows.** The admin pushes the user's *cumulative credit*
//! (every top-up, redemption, refund and adjustment ever booked; never the
//! spend) with a version. The edge keeps the spend: each of the user's keys
//! draws on the balance through its own key account
//! ([`crate::key_account::balance`]), which holds an **allowance** granted
//! here: the most that key may have spent plus hold reserved, in the user's
//! terms, cumulative. The key account enforces `spent + reserved ≤ base +
//! allowance` with the same rules that enforce a key's own quota (isolate
//! slices included), so this account only hands out allowances and hears
//! back how much each key has spent.
//!
//! **Invariant (B1).** Allowances are granted only from what is free:
//! `free = credited − Σ_k max(allowance_k, spent_k)`. So, after every
//! operation, `Σ_k max(allowance_k, spent_k) ≤ credited` unless the credit
//! itself went down (a negative adjustment: what is already granted stays
//! granted, nothing new is). With each key's `spent_k + reserved_k ≤
//! allowance_k` (its account's I1) the user's spend plus everything held for
//! it never passes the credit: the user can never spend past the balance.
//!
//! **Messages are idempotent.** A key reports its spend as a cumulative
//! figure (the max is kept, so a repeated or late report changes nothing),
//! and each key's requests carry a strictly increasing `seq`: a request
//! whose `seq` is not newer than the last one processed changes only the
//! spend and is answered with the current allowance. An allowance only
//! grows, except on a release, which the key sends when nothing of it is
//! held (it stops counting on the released part before sending).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest user id accepted (admin ids are short).
pub const MAX_USER_ID_LEN: usize = 128;
/// Most keys one user account tracks; a new key beyond is refused an allowance.
pub const MAX_KEYS_PER_USER: usize = 10_000;

/// Whether `id` may name a user account (admin ids: letters, digits, `_`, `-`).
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The admin's push (`PUT /internal/users/{id}/account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAccountPush {
    pub user_id: String,
    /// Every credit ever booked for the user, micro-units (spend excluded).
    pub credited_micros: i64,
    /// The admin's account version: strictly increases with every change.
    pub version: u64,
    /// A disabled user's keys are refused.
    #[serde(default)]
    pub disabled: bool,
}

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Newer than what was held: in force from now on.
    Applied,
    /// The same version with the same content again (a full sync): nothing changes.
    Unchanged,
    /// Older, or the same version with other content: refused (409).
    NotNewer { stored: u64 },
}

/// A key account's request for (or release of) its allowance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceRequest {
    /// A stable id of the key's account (its Durable Object id; filled in
    /// by the object): one allowance per key.
    pub key_id: String,
    /// Strictly increasing per key.
    pub seq: u64,
    /// What the key has spent on this balance so far (cumulative).
    pub spent_micros: i64,
    /// The allowance the key would like to hold (cumulative, ≥ its spend).
    #[serde(default)]
    pub want_micros: i64,
    /// The allowance without which the request waiting on this cannot be
    /// admitted (≤ `want_micros`). When the balance is short, a key gets
    /// what it needs and at most half of what is free beyond, so one busy
    /// key cannot take what the user's other keys need.
    #[serde(default)]
    pub need_micros: i64,
    /// Give back what is not in use: the allowance becomes at most
    /// `spent + in_use`.
    #[serde(default)]
    pub release: bool,
    #[serde(default)]
    pub in_use_micros: i64,
}

/// The answer: the allowance the key holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceGrant {
    /// The request's `seq` when it was processed; the last processed one otherwise.
    pub seq: u64,
    pub allowance_micros: i64,
    /// The admin has pushed this account (otherwise the credit is 0).
    pub known: bool,
    pub disabled: bool,
    /// What the user could still be granted, for the refusal message and logs.
    pub available_micros: i64,
}

/// One key's draw on the balance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDraw {
    pub allowance_micros: i64,
    pub spent_micros: i64,
    pub seq: u64,
}

impl KeyDraw {
    /// What this key takes from the balance: its allowance, or its spend
    /// when a cost ran past its reservation.
    fn taken(&self) -> i64 {
        self.allowance_micros.max(self.spent_micros)
    }
}

/// Running totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserCounters {
    pub grants: u64,
    /// Requests that got less than they wanted (the balance ran out).
    pub short_grants: u64,
    pub releases: u64,
    /// Requests whose `seq` was not newer (repeats, late arrivals).
    pub stale_requests: u64,
    pub pushes_applied: u64,
    pub pushes_refused: u64,
}

/// The whole account, stored as one record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserAccountState {
    /// The newest push; `None` until the admin pushed the account.
    pub config: Option<UserAccountPush>,
    pub keys: BTreeMap<String, KeyDraw>,
    pub counters: UserCounters,
}

/// The read-only view (`GET /internal/users/{id}/account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccountSnapshot {
    pub user_id: Option<String>,
    /// The admin has pushed this account.
    pub known: bool,
    pub version: u64,
    pub disabled: bool,
    pub credited_micros: i64,
    /// What the user's keys have reported spending.
    pub spent_micros: i64,
    /// Allowances granted and not yet spent.
    pub reserved_micros: i64,
    /// `credited − spent − reserved` (negative only after a negative adjustment
    /// or a cost past its reservation).
    pub available_micros: i64,
    /// Spend past what was granted for it (costs beyond their reservation).
    pub overrun_micros: i64,
    pub keys: u32,
    pub counters: UserCounters,
}

impl UserAccountState {
    fn credited(&self) -> i64 {
        self.config.as_ref().map_or(0, |c| c.credited_micros)
    }

    fn taken(&self) -> i64 {
        self.keys.values().fold(0i64, |sum, d| sum.saturating_add(d.taken()))
    }

    /// What can still be granted.
    pub fn free_micros(&self) -> i64 {
        self.credited().saturating_sub(self.taken())
    }

    /// Applies the admin's push when it is newer (or the same again).
    pub fn configure(&mut self, push: &UserAccountPush) -> PushOutcome {
        let outcome = match &self.config {
            None => PushOutcome::Applied,
            Some(held) if push.version > held.version => PushOutcome::Applied,
            Some(held) if held == push => PushOutcome::Unchanged,
            Some(held) => PushOutcome::NotNewer { stored: held.version },
        };
        match outcome {
            PushOutcome::Applied => {
                self.config = Some(push.clone());
                self.counters.pushes_applied += 1;
            }
            PushOutcome::NotNewer { .. } => self.counters.pushes_refused += 1,
            PushOutcome::Unchanged => {}
        }
        outcome
    }

    /// Grants, grows or releases a key's allowance. Returns the answer and
    /// whether anything changed (to persist).
    pub fn draw(&mut self, req: &AllowanceRequest) -> (AllowanceGrant, bool) {
        let disabled = self.config.as_ref().is_some_and(|c| c.disabled);
        let known = self.config.is_some();
        if !self.keys.contains_key(&req.key_id) && self.keys.len() >= MAX_KEYS_PER_USER {
            let grant = AllowanceGrant {
                seq: req.seq,
                allowance_micros: 0,
                known,
                disabled,
                available_micros: self.free_micros(),
            };
            return (grant, false);
        }
        let draw = self.keys.entry(req.key_id.clone()).or_default();
        let mut changed = false;
        // Spend is a cumulative fact: the largest report is the truth.
        if req.spent_micros > draw.spent_micros {
            draw.spent_micros = req.spent_micros;
            changed = true;
        }
        let current = *draw;
        if req.seq <= current.seq {
            self.counters.stale_requests += 1;
        } else {
            let mut next = KeyDraw { seq: req.seq, ..current };
            changed = true;
            if req.release {
                let keep = current.spent_micros.saturating_add(req.in_use_micros.max(0));
                next.allowance_micros = current.allowance_micros.min(keep);
                self.counters.releases += 1;
            } else if req.want_micros > current.allowance_micros && !disabled {
                // `free` counts this key's draw as it is now: the grant may
                // take the key's share to at most its draw plus what is free.
                let free = self.free_micros().max(0);
                let taken = current.taken();
                let reachable = taken.saturating_add(free);
                let target = if req.want_micros <= reachable {
                    req.want_micros
                } else {
                    // Short: what is needed, or half of what is free.
                    req.need_micros.min(req.want_micros).max(taken.saturating_add(free / 2))
                };
                next.allowance_micros = target.min(reachable).max(current.allowance_micros);
                if next.allowance_micros < req.want_micros {
                    self.counters.short_grants += 1;
                }
                self.counters.grants += 1;
            }
            self.keys.insert(req.key_id.clone(), next);
        }
        let draw = self.keys.get(&req.key_id).copied().unwrap_or_default();
        let grant = AllowanceGrant {
            seq: draw.seq,
            allowance_micros: draw.allowance_micros,
            known,
            disabled,
            available_micros: self.free_micros(),
        };
        (grant, changed)
    }

    /// Whether the user is disabled.
    pub fn disabled(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.disabled)
    }

    /// The keys that hold or held an allowance (ids of their accounts).
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn snapshot(&self) -> UserAccountSnapshot {
        let spent = self.keys.values().fold(0i64, |s, d| s.saturating_add(d.spent_micros));
        let reserved = self
            .keys
            .values()
            .fold(0i64, |s, d| s.saturating_add(d.allowance_micros.saturating_sub(d.spent_micros).max(0)));
        let overrun = self
            .keys
            .values()
            .fold(0i64, |s, d| s.saturating_add(d.spent_micros.saturating_sub(d.allowance_micros).max(0)));
        let credited = self.credited();
        UserAccountSnapshot {
            user_id: self.config.as_ref().map(|c| c.user_id.clone()),
            known: self.config.is_some(),
            version: self.config.as_ref().map_or(0, |c| c.version),
            disabled: self.config.as_ref().is_some_and(|c| c.disabled),
            credited_micros: credited,
            spent_micros: spent,
            reserved_micros: reserved,
            available_micros: credited.saturating_sub(spent).saturating_sub(reserved),
            overrun_micros: overrun,
            keys: u32::try_from(self.keys.len()).unwrap_or(u32::MAX),
            counters: self.counters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(credited: i64, version: u64) -> UserAccountPush {
        UserAccountPush { user_id: "usr_1".into(), credited_micros: credited, version, disabled: false }
    }

    fn ask(key: &str, seq: u64, spent: i64, want: i64) -> AllowanceRequest {
        AllowanceRequest {
            key_id: key.into(),
            seq,
            spent_micros: spent,
            want_micros: want,
            need_micros: want,
            release: false,
            in_use_micros: 0,
        }
    }

    #[test]
    fn newer_pushes_win_and_the_same_push_again_is_harmless() {
        let mut a = UserAccountState::default();
        assert_eq!(a.configure(&push(100, 2)), PushOutcome::Applied);
        assert_eq!(a.configure(&push(100, 2)), PushOutcome::Unchanged, "a full sync repeats it");
        assert_eq!(
            a.configure(&push(999, 2)),
            PushOutcome::NotNewer { stored: 2 },
            "same version, other body"
        );
        assert_eq!(a.configure(&push(50, 1)), PushOutcome::NotNewer { stored: 2 }, "an older push");
        assert_eq!(a.snapshot().credited_micros, 100);
        assert_eq!(a.configure(&push(300, 3)), PushOutcome::Applied);
        assert_eq!(a.snapshot().credited_micros, 300);
    }

    #[test]
    fn allowances_come_only_from_what_is_free() {
        let mut a = UserAccountState::default();
        assert_eq!(a.draw(&ask("k1", 1, 0, 50)).0.allowance_micros, 0, "nothing before the admin pushed");
        a.configure(&push(100, 1));
        assert_eq!(a.draw(&ask("k1", 2, 0, 70)).0.allowance_micros, 70);
        let (g, _) = a.draw(&ask("k2", 1, 0, 70));
        assert_eq!((g.allowance_micros, g.available_micros), (30, 0), "k2 gets what k1 left");
        // k1 spent 40 of its 70 and releases what it does not use.
        let release = AllowanceRequest { release: true, in_use_micros: 0, ..ask("k1", 3, 40, 0) };
        assert_eq!(a.draw(&release).0.allowance_micros, 40);
        assert_eq!(a.draw(&ask("k2", 2, 0, 60)).0.allowance_micros, 60);
        let s = a.snapshot();
        assert_eq!((s.spent_micros, s.reserved_micros, s.available_micros), (40, 60, 0));
    }

    #[test]
    fn repeated_and_late_requests_change_nothing_but_the_spend() {
        let mut a = UserAccountState::default();
        a.configure(&push(100, 1));
        a.draw(&ask("k1", 1, 0, 80));
        let release = AllowanceRequest { release: true, in_use_micros: 10, ..ask("k1", 2, 20, 0) };
        assert_eq!(a.draw(&release).0.allowance_micros, 30);
        assert_eq!(a.draw(&ask("k1", 3, 20, 90)).0.allowance_micros, 90);
        // The release arrives again, late: it must not shrink what seq 3 granted.
        let (g, _) = a.draw(&release);
        assert_eq!((g.seq, g.allowance_micros), (3, 90));
        // The same grow again (a retry) grants nothing twice.
        assert_eq!(a.draw(&ask("k1", 3, 20, 95)).0.allowance_micros, 90);
        // A late report with an older, smaller spend does not lower it.
        a.draw(&ask("k1", 1, 5, 0));
        assert_eq!(a.snapshot().spent_micros, 20);
        assert_eq!(a.counters.stale_requests, 3);
    }

    #[test]
    fn spend_past_an_allowance_is_counted_and_taken_from_what_is_free() {
        let mut a = UserAccountState::default();
        a.configure(&push(100, 1));
        a.draw(&ask("k1", 1, 0, 50));
        // A cost past its reservation: k1 reports 60 spent against 50.
        let (g, _) = a.draw(&ask("k1", 2, 60, 60));
        assert_eq!(g.allowance_micros, 60);
        assert_eq!(a.snapshot().overrun_micros, 0, "covered now");
        a.draw(&ask("k2", 1, 0, 100));
        assert_eq!(a.keys["k2"].allowance_micros, 40, "k1's overrun was taken first");
        let s = a.snapshot();
        assert!(s.spent_micros + s.reserved_micros <= s.credited_micros);
    }

    #[test]
    fn when_the_balance_is_short_a_key_gets_its_need_or_half_of_what_is_free() {
        let mut a = UserAccountState::default();
        a.configure(&push(1_000, 1));
        let greedy = AllowanceRequest { need_micros: 100, ..ask("k1", 1, 0, 5_000) };
        assert_eq!(a.draw(&greedy).0.allowance_micros, 500, "half of what is free");
        let greedy = AllowanceRequest { need_micros: 100, ..ask("k2", 1, 0, 5_000) };
        assert_eq!(a.draw(&greedy).0.allowance_micros, 250);
        let needy = AllowanceRequest { need_micros: 240, ..ask("k3", 1, 0, 5_000) };
        assert_eq!(a.draw(&needy).0.allowance_micros, 240, "its need, which is more than half");
        let too_much = AllowanceRequest { need_micros: 50, ..ask("k4", 1, 0, 5_000) };
        assert_eq!(a.draw(&too_much).0.allowance_micros, 10, "never more than is free");
        assert_eq!(a.snapshot().available_micros, 0);
        // Plenty: the whole want.
        let mut b = UserAccountState::default();
        b.configure(&push(10_000, 1));
        assert_eq!(
            b.draw(&AllowanceRequest { need_micros: 1, ..ask("k1", 1, 0, 5_000) }).0.allowance_micros,
            5_000
        );
    }

    #[test]
    fn a_disabled_user_is_granted_nothing_new() {
        let mut a = UserAccountState::default();
        a.configure(&push(100, 1));
        a.draw(&ask("k1", 1, 0, 30));
        a.configure(&UserAccountPush { disabled: true, ..push(100, 2) });
        let (g, _) = a.draw(&ask("k1", 2, 0, 90));
        assert!(g.disabled);
        assert_eq!(g.allowance_micros, 30, "what was granted stays; nothing grows");
    }

    #[test]
    fn user_ids_are_plain_tokens() {
        assert!(is_valid_user_id("usr_01HZX-ab"));
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(MAX_USER_ID_LEN + 1)] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
    }
}

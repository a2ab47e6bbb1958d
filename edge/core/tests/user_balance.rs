//! Property test of user balances: one user account, three keys of that user
//! (each its own key account, one with a smaller quota of its own), two
//! isolates spending slices of every key, under random interleavings:
//! admissions, settles, reports, slice renewals delayed or with their reply
//! lost, isolates that crash, allowance requests and releases between the
//! key accounts and the user account delivered late, twice, out of order or
//! with their answer lost, top-ups, time passing. After every step:
//!
//! - B1 at the user account: `Σ_k max(allowance_k, spent_k) ≤ credited`;
//! - no key counts on more allowance than the user account granted it;
//! - each key account: `spent + reserved ≤ base + allowance` (and its own quota);
//! - **the user's spend plus everything held for it never passes the
//!   credit**, summed over every key and isolate, whatever was lost;
//!
//! and at the end, once everything is settled and idle: the user account's
//! spend equals what the key accounts booked, nothing stays reserved, and a
//! top-up re-admits a key that was refused.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::key_account::{KeyAccountState, KeyLimits, Refusal, SliceGrant, SliceRenewal};
use edgeway_core::pipeline::account_slice::{IsolateSlices, LocalAdmit, Need, Renewed, ReportAction, Ticket};
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use edgeway_core::user_account::{AllowanceGrant, AllowanceRequest, UserAccountPush, UserAccountState};
use proptest::prelude::*;
use std::collections::HashSet;

const WINDOW_MS: i64 = 6_000;
const KEYS: usize = 3;
const ISOLATES: usize = 2;
const FIRST_CREDIT: i64 = 3_000;
/// Key 2's own quota, smaller than the balance.
const KEY2_QUOTA: i64 = 800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Now,
    Lost,
    Later,
}

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        isolate: usize,
        key: usize,
        reserve: i64,
        cost_pct: i64,
    },
    Settle {
        isolate: usize,
    },
    Report {
        isolate: usize,
        key: usize,
    },
    /// The slice call of `isolate` for `key` reaches its key account; the
    /// key account's allowance request is answered at once, or its answer
    /// is lost, or comes back only later (the object stopped waiting).
    Deliver {
        isolate: usize,
        key: usize,
        lose_reply: bool,
        allowance: Answer,
    },
    /// An answer of the user account that was on its way reaches key `key`.
    Answer {
        key: usize,
        newest: bool,
    },
    /// A request between key `key` and the user account that is still on
    /// its way (a release, or a retried grow) arrives: the oldest or the
    /// newest, its answer applied or lost, and kept for a repeat or not.
    DeliverUser {
        key: usize,
        newest: bool,
        lose_reply: bool,
        again: bool,
    },
    Crash {
        isolate: usize,
    },
    TopUp {
        amount: i64,
    },
    Tick {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..ISOLATES, 0..KEYS, 1..300i64, 0..=100i64)
            .prop_map(|(isolate, key, reserve, cost_pct)| Op::Arrive { isolate, key, reserve, cost_pct }),
        4 => (0..ISOLATES).prop_map(|isolate| Op::Settle { isolate }),
        3 => (0..ISOLATES, 0..KEYS).prop_map(|(isolate, key)| Op::Report { isolate, key }),
        4 => (0..ISOLATES, 0..KEYS, proptest::bool::weighted(0.1), prop_oneof![6 => Just(Answer::Now), 1 => Just(Answer::Lost), 2 => Just(Answer::Later)])
            .prop_map(|(isolate, key, lose_reply, allowance)| Op::Deliver { isolate, key, lose_reply, allowance }),
        2 => (0..KEYS, any::<bool>()).prop_map(|(key, newest)| Op::Answer { key, newest }),
        4 => (0..KEYS, any::<bool>(), proptest::bool::weighted(0.2), proptest::bool::weighted(0.3))
            .prop_map(|(key, newest, lose_reply, again)| Op::DeliverUser { key, newest, lose_reply, again }),
        1 => (0..ISOLATES).prop_map(|isolate| Op::Crash { isolate }),
        1 => (1..1_500i64).prop_map(|amount| Op::TopUp { amount }),
        2 => (0..400i64).prop_map(|ms| Op::Tick { ms }),
        2 => (1_000..6_500i64).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn digest(key: usize) -> String {
    format!("key{key}")
}

fn event(key: usize, id: &str, cost: i64) -> UsageEvent {
    UsageEvent {
        request_id: id.into(),
        key_digest: digest(key),
        owner: String::new(),
        user_id: Some("usr_1".into()),
        group: "default".into(),
        price_ratio_ppm: 1_000_000,
        model: "m".into(),
        upstream_model: "m".into(),
        channel: "c".into(),
        provider: "mock".into(),
        endpoint: Default::default(),
        unit: None,
        unit_count: 0,
        usage: TokenUsage { input_uncached: 1, ..Default::default() },
        cost_micros: cost,
        status: 200,
        outcome: RequestOutcome::Completed,
        usage_source: UsageSource::Provider,
        stream: false,
        latency_ms: 1,
        ttft_ms: None,
        served_model: String::new(),
        attempts: Vec::new(),
        created_at_ms: 0,
    }
}

struct Call {
    key: usize,
    renewal: SliceRenewal,
    sent_at: i64,
    waiting: Option<(Need, i64, String)>,
}

struct Isolate {
    slices: IsolateSlices,
    in_flight: Vec<(Ticket, usize, i64, String)>,
    /// At most one call per key in flight.
    calls: Vec<Call>,
}

struct World {
    user: UserAccountState,
    push: UserAccountPush,
    keys: Vec<KeyAccountState>,
    limits: Vec<KeyLimits>,
    /// Requests between each key account and the user account still on their way.
    to_user: Vec<Vec<AllowanceRequest>>,
    /// The user account's answers still on their way back.
    answers: Vec<Vec<AllowanceGrant>>,
    isolates: Vec<Isolate>,
    now: i64,
    next_id: u64,
    generation: u64,
    refused_balance: u64,
}

impl World {
    fn new() -> Self {
        let push = UserAccountPush {
            user_id: "usr_1".into(),
            credited_micros: FIRST_CREDIT,
            version: 1,
            disabled: false,
        };
        let mut user = UserAccountState::default();
        user.configure(&push);
        let limits = (0..KEYS)
            .map(|k| KeyLimits {
                version: 1,
                disabled: false,
                max_concurrency: None,
                rpm: None,
                tpm: None,
                quota_micros: (k == 2).then_some(KEY2_QUOTA),
                user_id: Some("usr_1".into()),
            })
            .collect();
        Self {
            user,
            push,
            keys: (0..KEYS).map(|_| KeyAccountState::new(WINDOW_MS)).collect(),
            limits,
            to_user: vec![Vec::new(); KEYS],
            answers: vec![Vec::new(); KEYS],
            isolates: (0..ISOLATES).map(|i| Self::isolate(i, 0)).collect(),
            now: 1_000_000,
            next_id: 0,
            generation: 0,
            refused_balance: 0,
        }
    }

    fn isolate(i: usize, generation: u64) -> Isolate {
        Isolate {
            slices: IsolateSlices::new(format!("iso{i}g{generation}")),
            in_flight: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// Key `k`'s request reaches the user account; its answer is applied
    /// unless lost.
    fn send_to_user(&mut self, k: usize, req: AllowanceRequest, lose_reply: bool) {
        self.send_answering(k, req, if lose_reply { Answer::Lost } else { Answer::Now });
    }

    fn send_answering(&mut self, k: usize, mut req: AllowanceRequest, answer: Answer) {
        req.key_id = digest(k);
        let (grant, _) = self.user.draw(&req);
        match answer {
            Answer::Now => {
                let _ = self.keys[k].apply_allowance(&grant);
            }
            Answer::Later => self.answers[k].push(grant),
            Answer::Lost => {}
        }
    }

    /// What the key account object does when nothing of the key is held.
    fn maybe_release(&mut self, k: usize) {
        if let Some((release, _)) = self.keys[k].allowance_release() {
            self.to_user[k].push(release);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Arrive { isolate, key, reserve, cost_pct } => {
                if self.isolates[isolate].calls.iter().any(|c| c.key == key) {
                    return;
                }
                self.next_id += 1;
                let id = format!("r{}", self.next_id);
                let cost = reserve * cost_pct / 100;
                let need = Need { reserve_micros: reserve, tokens: 10 };
                let limits = self.limits[key].clone();
                match self.isolates[isolate].slices.admit(&digest(key), &limits, need, self.now) {
                    LocalAdmit::Admitted(ticket) => {
                        self.isolates[isolate].in_flight.push((ticket, key, cost, id))
                    }
                    LocalAdmit::Renew(renewal) => {
                        let call = Call {
                            key,
                            renewal: *renewal,
                            sent_at: self.now,
                            waiting: Some((need, cost, id)),
                        };
                        self.isolates[isolate].calls.push(call);
                    }
                    LocalAdmit::Wait | LocalAdmit::Refused(..) => {}
                }
            }
            Op::Settle { isolate } => {
                if self.isolates[isolate].in_flight.is_empty() {
                    return;
                }
                let (ticket, key, cost, id) = self.isolates[isolate].in_flight.remove(0);
                let now = self.now;
                let _ = self.isolates[isolate].slices.settle(&ticket, event(key, &id, cost), now);
            }
            Op::Report { isolate, key } => {
                if self.isolates[isolate].calls.iter().any(|c| c.key == key) {
                    return;
                }
                let limits = self.limits[key].clone();
                if let ReportAction::Send(renewal) =
                    self.isolates[isolate].slices.report(&digest(key), &limits, self.now)
                {
                    let call = Call { key, renewal: *renewal, sent_at: self.now, waiting: None };
                    self.isolates[isolate].calls.push(call);
                }
            }
            Op::Deliver { isolate, key, lose_reply, allowance } => {
                let Some(pos) = self.isolates[isolate].calls.iter().position(|c| c.key == key) else {
                    return;
                };
                let call = self.isolates[isolate].calls.remove(pos);
                // The key account object: ask the user account first when the
                // renewal wants more than the allowance covers.
                let (ask, _) = self.keys[key].balance_request_for_slice(&call.renewal);
                if let Some(ask) = ask {
                    // The request may also be repeated later (a retry).
                    self.to_user[key].push(ask.clone());
                    self.send_answering(key, ask, allowance);
                }
                let (grant, _) = self.keys[key].renew_slice(&call.renewal, self.now);
                let grant: SliceGrant =
                    serde_json::from_str(&serde_json::to_string(&grant).unwrap()).unwrap();
                self.maybe_release(key);
                let d = digest(key);
                if lose_reply {
                    self.isolates[isolate].slices.renewal_failed(&d);
                    return;
                }
                let need = call.waiting.as_ref().map(|(need, _, _)| *need);
                match self.isolates[isolate].slices.renewed(&d, grant, call.sent_at, need) {
                    Renewed::Admitted(ticket) => {
                        let (_, cost, id) = call.waiting.unwrap();
                        self.isolates[isolate].in_flight.push((ticket, key, cost, id));
                    }
                    Renewed::Refused(Refusal::Balance, _) => self.refused_balance += 1,
                    Renewed::Refused(..) | Renewed::Applied => {}
                }
            }
            Op::DeliverUser { key, newest, lose_reply, again } => {
                let pending = &mut self.to_user[key];
                if pending.is_empty() {
                    return;
                }
                let pick = if newest { pending.len() - 1 } else { 0 };
                let req = if again { pending[pick].clone() } else { pending.remove(pick) };
                self.send_to_user(key, req, lose_reply);
            }
            Op::Answer { key, newest } => {
                if self.answers[key].is_empty() {
                    return;
                }
                let pick = if newest { self.answers[key].len() - 1 } else { 0 };
                let grant = self.answers[key].remove(pick);
                let _ = self.keys[key].apply_allowance(&grant);
            }
            Op::Crash { isolate } => {
                self.generation += 1;
                self.isolates[isolate] = Self::isolate(isolate, self.generation);
            }
            Op::TopUp { amount } => {
                self.push.credited_micros += amount;
                self.push.version += 1;
                self.user.configure(&self.push);
            }
            Op::Tick { ms } => {
                self.now += ms;
                for k in 0..KEYS {
                    let _ = self.keys[k].expire(self.now);
                    // The alarm: a release still unanswered is sent again.
                    self.maybe_release(k);
                }
            }
        }
    }

    fn check(&self) {
        let credited = self.push.credited_micros;
        let taken: i64 = self.user.keys.values().map(|d| d.allowance_micros.max(d.spent_micros)).sum();
        assert!(taken <= credited, "B1: the user account granted {taken} of {credited}");
        let mut held_and_spent = 0i64;
        for (k, account) in self.keys.iter().enumerate() {
            let snapshot = account.snapshot(self.now);
            let Some(draw) = snapshot.balance.as_ref() else {
                // Not used yet: bound on its first renewal.
                assert_eq!(account.spent_micros() + account.reserved_micros(), 0);
                continue;
            };
            let granted = self.user.keys.get(&digest(k)).map_or(0, |d| d.allowance_micros);
            assert!(
                draw.allowance_micros <= granted,
                "key {k} counts on {} but the user account granted {granted}",
                draw.allowance_micros
            );
            let used = account.balance_spent() + account.reserved_micros();
            assert!(
                used <= draw.allowance_micros,
                "key {k}: spent {} + reserved {} past its allowance {}",
                account.balance_spent(),
                account.reserved_micros(),
                draw.allowance_micros
            );
            if k == 2 {
                assert!(
                    account.spent_micros() + account.reserved_micros() <= KEY2_QUOTA,
                    "key 2's own quota"
                );
            }
            assert_eq!(account.counters().overrun_micros, 0);
            held_and_spent += used;
        }
        assert!(held_and_spent <= credited, "the user's keys spent and hold {held_and_spent} of {credited}");
    }

    /// Settles everything, reports until every call is answered, delivers
    /// every message, lets slices go idle and released.
    fn drain(&mut self) {
        for i in 0..ISOLATES {
            while !self.isolates[i].in_flight.is_empty() {
                self.step(&Op::Settle { isolate: i });
            }
        }
        for _ in 0..20 {
            for i in 0..ISOLATES {
                for k in 0..KEYS {
                    self.step(&Op::Deliver { isolate: i, key: k, lose_reply: false, allowance: Answer::Now });
                    self.step(&Op::Report { isolate: i, key: k });
                    self.step(&Op::Deliver { isolate: i, key: k, lose_reply: false, allowance: Answer::Now });
                }
            }
            // Idle slices are given back by the next report (after 1 s idle).
            self.step(&Op::Tick { ms: 1_500 });
        }
        // Crashed isolates' slices expire, their holds are released.
        self.step(&Op::Tick { ms: 31 * 60 * 1000 + 11 * 60 * 1000 });
        for k in 0..KEYS {
            self.answers[k].clear();
            self.maybe_release(k);
            while let Some(req) = self.to_user[k].pop() {
                self.send_to_user(k, req, false);
            }
            self.maybe_release(k);
            while let Some(req) = self.to_user[k].pop() {
                self.send_to_user(k, req, false);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn a_users_keys_never_spend_past_the_balance(ops in prop::collection::vec(op(), 1..300)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
            w.check();
        }
        w.drain();
        w.check();
        let booked: i64 = w.keys.iter().map(KeyAccountState::balance_spent).sum();
        let snapshot = w.user.snapshot();
        prop_assert_eq!(snapshot.spent_micros, booked, "the user account heard of every cost");
        prop_assert_eq!(snapshot.reserved_micros, 0, "idle keys hold nothing");
        prop_assert!(snapshot.available_micros >= 0);
        let ids: HashSet<String> =
            w.keys.iter().flat_map(|k| k.outbox_batch(w.now, usize::MAX)).map(|e| e.request_id).collect();
        let events: usize = w.keys.iter().map(|k| k.outbox_len()).sum();
        prop_assert_eq!(ids.len(), events, "each request booked once");
    }
}

/// Spends key 0 down to a refusal, then a top-up lets the next request in.
#[test]
fn a_refused_key_is_admitted_again_right_after_a_top_up() {
    let mut w = World::new();
    let mut refused = false;
    for _ in 0..200 {
        w.step(&Op::Arrive { isolate: 0, key: 0, reserve: 250, cost_pct: 100 });
        w.step(&Op::Deliver { isolate: 0, key: 0, lose_reply: false, allowance: Answer::Now });
        w.step(&Op::Settle { isolate: 0 });
        w.check();
        if w.refused_balance > 0 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the balance ran out");
    let spent = w.keys[0].balance_spent();
    assert!(spent <= FIRST_CREDIT && spent > FIRST_CREDIT - 2 * 250, "spent {spent} of {FIRST_CREDIT}");
    w.step(&Op::TopUp { amount: 1_000 });
    w.step(&Op::Arrive { isolate: 0, key: 0, reserve: 250, cost_pct: 100 });
    w.step(&Op::Deliver { isolate: 0, key: 0, lose_reply: false, allowance: Answer::Now });
    assert_eq!(w.isolates[0].in_flight.len(), 1, "admitted at once after the top-up");
    w.check();
}

/// The key's own smaller quota refuses as a quota, not as the balance.
#[test]
fn a_keys_own_quota_is_refused_as_the_quota() {
    let mut w = World::new();
    let mut reasons = Vec::new();
    for _ in 0..40 {
        let limits = w.limits[2].clone();
        let need = Need { reserve_micros: 300, tokens: 1 };
        match w.isolates[0].slices.admit(&digest(2), &limits, need, w.now) {
            LocalAdmit::Admitted(ticket) => w.isolates[0].in_flight.push((ticket, 2, 300, "x".into())),
            LocalAdmit::Renew(renewal) => {
                let (ask, _) = w.keys[2].balance_request_for_slice(&renewal);
                if let Some(ask) = ask {
                    w.send_to_user(2, ask, false);
                }
                let (grant, _) = w.keys[2].renew_slice(&renewal, w.now);
                if let Renewed::Refused(reason, _) =
                    w.isolates[0].slices.renewed(&digest(2), grant, w.now, Some(need))
                {
                    reasons.push(reason);
                    break;
                }
            }
            LocalAdmit::Wait | LocalAdmit::Refused(..) => {}
        }
        w.check();
    }
    assert_eq!(reasons, vec![Refusal::Quota]);
}

//! Property test of key-account slices: several isolates spend slices of one
//! account under random interleavings (admissions, settles, reports,
//! renewals whose delivery is delayed or whose reply is lost, isolates that
//! crash, time passing), and after every step:
//!
//! - I1: the account's `spent + reserved ≤ quota` (plus measured overrun,
//!   which stays 0 because every cost is within its reservation);
//! - requests in flight across all isolates ≤ `max_concurrency`;
//! - requests accepted in every window of the RPM length ≤ `rpm`;
//! - every settled request is booked at most once, and once reported, exactly
//!   once.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::key_account::{KeyAccountState, KeyLimits, SliceGrant, SliceRenewal};
use edgeway_core::pipeline::account_slice::{IsolateSlices, LocalAdmit, Need, Renewed, ReportAction, Ticket};
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const DIGEST: &str = "d";
const WINDOW_MS: i64 = 6_000;
const QUOTA: i64 = 5_000;
const RPM: u32 = 12;
const CONCURRENCY: u32 = 5;

#[derive(Debug, Clone)]
enum Op {
    /// Isolate `i` gets a request needing `reserve` (and costing `cost_pct`% of it when settled).
    Arrive {
        isolate: usize,
        reserve: i64,
        cost_pct: i64,
    },
    /// The oldest in-flight request of isolate `i` settles.
    Settle {
        isolate: usize,
    },
    /// Isolate `i` sends the report its settles scheduled.
    Report {
        isolate: usize,
    },
    /// The call isolate `i` has in flight reaches the account; its reply arrives (or is lost).
    Deliver {
        isolate: usize,
        lose_reply: bool,
    },
    /// Isolate `i` crashes: its memory is gone; its slice expires at the account.
    Crash {
        isolate: usize,
    },
    Tick {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..400i64, 0..=100i64).prop_map(|(isolate, reserve, cost_pct)| Op::Arrive { isolate, reserve, cost_pct }),
        3 => (0..3usize).prop_map(|isolate| Op::Settle { isolate }),
        1 => (0..3usize).prop_map(|isolate| Op::Report { isolate }),
        3 => (0..3usize, proptest::bool::weighted(0.1)).prop_map(|(isolate, lose_reply)| Op::Deliver { isolate, lose_reply }),
        1 => (0..3usize).prop_map(|isolate| Op::Crash { isolate }),
        2 => (0..400i64).prop_map(|ms| Op::Tick { ms }),
        1 => (1_500..6_500i64).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn event(id: &str, cost: i64) -> UsageEvent {
    UsageEvent {
        request_id: id.into(),
        key_digest: DIGEST.into(),
        owner: String::new(),
        user_id: None,
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

/// A call in flight from an isolate: the renewal, when it was sent, and
/// whether it carries a waiting request (with what it costs when settled).
struct Call {
    renewal: SliceRenewal,
    sent_at: i64,
    waiting: Option<(Need, i64, String)>,
    /// The isolate gave up on it (timed out): it may still reach the
    /// account, in any order, but its reply is not applied.
    stale: bool,
}

struct Isolate {
    slices: IsolateSlices,
    in_flight: Vec<(Ticket, i64, String)>,
    calls: Vec<Call>,
}

impl Isolate {
    fn live_call(&self) -> bool {
        self.calls.iter().any(|c| !c.stale)
    }

    /// A new call: any earlier one was given up on by the isolate.
    fn send(&mut self, call: Call) {
        assert!(
            !self.live_call()
                || call.sent_at - self.calls.iter().map(|c| c.sent_at).max().unwrap_or(0) > 10_000,
            "one call in flight per key, unless the last one timed out"
        );
        for c in &mut self.calls {
            c.stale = true;
        }
        self.calls.push(call);
    }
}

struct World {
    account: KeyAccountState,
    isolates: Vec<Isolate>,
    limits: KeyLimits,
    now: i64,
    next_id: u64,
    generation: u64,
    accepted_at: Vec<i64>,
    /// Ids whose settle was handed to an isolate, and those the account booked.
    settled_ids: HashSet<String>,
}

impl World {
    fn new() -> Self {
        let limits = KeyLimits {
            version: 1,
            disabled: false,
            max_concurrency: Some(CONCURRENCY),
            rpm: Some(RPM),
            tpm: None,
            quota_micros: Some(QUOTA),
            user_id: None,
        };
        Self {
            account: KeyAccountState::new(WINDOW_MS),
            isolates: (0..3).map(|i| Self::isolate(i, 0)).collect(),
            limits,
            now: 1_000_000,
            next_id: 0,
            generation: 0,
            accepted_at: Vec::new(),
            settled_ids: HashSet::new(),
        }
    }

    fn isolate(i: usize, generation: u64) -> Isolate {
        Isolate {
            slices: IsolateSlices::new(format!("iso{i}g{generation}")),
            in_flight: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn accept(&mut self, i: usize, ticket: Ticket, cost: i64, id: String) {
        // The window proof's premise: accepted inside the bucket it was counted in.
        let bucket = |t: i64| t.div_euclid(WINDOW_MS / 60);
        assert_eq!(
            bucket(self.now),
            bucket(ticket.granted_at_ms),
            "accepted at {} under a grant of {}",
            self.now,
            ticket.granted_at_ms
        );
        self.accepted_at.push(self.now);
        self.isolates[i].in_flight.push((ticket, cost, id));
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Arrive { isolate, reserve, cost_pct } => {
                // Admissions go on while a renewal is in flight.
                self.next_id += 1;
                let id = format!("r{}", self.next_id);
                let cost = reserve * cost_pct / 100;
                let need = Need { reserve_micros: reserve, tokens: 10 };
                let limits = self.limits.clone();
                match self.isolates[isolate].slices.admit(DIGEST, &limits, need, self.now) {
                    LocalAdmit::Admitted(ticket) => self.accept(isolate, ticket, cost, id),
                    LocalAdmit::Renew(renewal) => {
                        let waiting = Some((need, cost, id));
                        let call = Call { renewal: *renewal, sent_at: self.now, waiting, stale: false };
                        self.isolates[isolate].send(call);
                    }
                    LocalAdmit::Wait | LocalAdmit::Refused(..) => {}
                }
            }
            Op::Settle { isolate } => {
                if self.isolates[isolate].in_flight.is_empty() {
                    return;
                }
                let (ticket, cost, id) = self.isolates[isolate].in_flight.remove(0);
                self.settled_ids.insert(id.clone());
                let now = self.now;
                let _ = self.isolates[isolate].slices.settle(&ticket, event(&id, cost), now);
            }
            Op::Report { isolate } => {
                let limits = self.limits.clone();
                if let ReportAction::Send(renewal) =
                    self.isolates[isolate].slices.report(DIGEST, &limits, self.now)
                {
                    let call = Call { renewal: *renewal, sent_at: self.now, waiting: None, stale: false };
                    self.isolates[isolate].send(call);
                }
            }
            Op::Deliver { isolate, lose_reply } => {
                if self.isolates[isolate].calls.is_empty() {
                    return;
                }
                // Stale calls may arrive in any order: take the oldest or the newest.
                let pick = if lose_reply { 0 } else { self.isolates[isolate].calls.len() - 1 };
                let call = self.isolates[isolate].calls.remove(pick);
                let (grant, _) = self.account.renew_slice(&call.renewal, self.now);
                let grant: SliceGrant =
                    serde_json::from_str(&serde_json::to_string(&grant).unwrap()).unwrap();
                if call.stale {
                    return;
                }
                if lose_reply {
                    self.isolates[isolate].slices.renewal_failed(DIGEST);
                    return;
                }
                let need = call.waiting.as_ref().map(|(need, _, _)| *need);
                match self.isolates[isolate].slices.renewed(DIGEST, grant, call.sent_at, need) {
                    Renewed::Admitted(ticket) => {
                        let (_, cost, id) = call.waiting.unwrap();
                        // Accepted at the account's decision, inside the grant's bucket.
                        self.accept(isolate, ticket, cost, id);
                    }
                    Renewed::Refused(..) | Renewed::Applied => {}
                }
            }
            Op::Crash { isolate } => {
                self.generation += 1;
                // Requests it had in flight die with it; their settles never come.
                self.isolates[isolate] = Self::isolate(isolate, self.generation);
            }
            Op::Tick { ms } => {
                self.now += ms;
                let _ = self.account.expire(self.now);
            }
        }
    }

    fn check(&self) {
        let spent = self.account.spent_micros();
        let reserved = self.account.reserved_micros();
        let overrun = self.account.counters().overrun_micros;
        assert_eq!(overrun, 0, "no cost beyond its reservation");
        assert!(spent + reserved <= QUOTA, "I1: spent {spent} + reserved {reserved} > quota {QUOTA}");
        assert!(reserved >= 0 && spent >= 0);
        let in_flight: usize = self.isolates.iter().map(|i| i.in_flight.len()).sum();
        assert!(in_flight as u32 <= CONCURRENCY, "{in_flight} in flight > {CONCURRENCY}");
        assert!(
            self.account.in_flight() <= CONCURRENCY,
            "account counts {} in flight",
            self.account.in_flight()
        );
        // Every window [t - W, t) over acceptance times.
        let mut times = self.accepted_at.clone();
        times.sort_unstable();
        for (k, &t) in times.iter().enumerate() {
            let in_window = times[k..].iter().take_while(|&&u| u < t + WINDOW_MS).count();
            assert!(in_window as u32 <= RPM, "{in_window} requests accepted within {WINDOW_MS} ms of {t}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn slices_keep_quota_concurrency_and_windows_exact(ops in prop::collection::vec(op(), 1..300)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
            w.check();
        }
        // Drain: settle everything, report until every call is answered.
        for i in 0..3 {
            while !w.isolates[i].in_flight.is_empty() {
                w.step(&Op::Settle { isolate: i });
            }
        }
        for _ in 0..20 {
            for i in 0..3 {
                w.step(&Op::Deliver { isolate: i, lose_reply: false });
                w.step(&Op::Tick { ms: 1_500 });
                w.step(&Op::Report { isolate: i });
                w.step(&Op::Deliver { isolate: i, lose_reply: false });
            }
        }
        w.check();
        // What every live isolate settled reached the account exactly once.
        let booked: Vec<String> = w.account.outbox_batch(w.now, usize::MAX).into_iter().map(|e| e.request_id).collect();
        let unique: HashSet<&String> = booked.iter().collect();
        prop_assert_eq!(unique.len(), booked.len(), "an event booked twice");
        let counters = w.account.counters();
        prop_assert!(counters.settled as usize <= w.settled_ids.len());
        // Once the isolates are idle and their slices given back or expired,
        // nothing stays reserved but stale holds of crashed isolates.
        w.step(&Op::Tick { ms: 31 * 60 * 1000 + 11 * 60 * 1000 });
        prop_assert_eq!(w.account.reserved_micros(), 0);
        prop_assert_eq!(w.account.in_flight(), 0);
    }
}

#[test]
fn one_isolate_needs_few_renewals_for_many_requests() {
    let mut w = World::new();
    w.limits.rpm = Some(10_000);
    w.limits.quota_micros = Some(i64::MAX / 4);
    w.limits.max_concurrency = Some(100);
    let mut renewals = 0;
    let mut ids = HashMap::new();
    for n in 0..200 {
        w.step(&Op::Arrive { isolate: 0, reserve: 10, cost_pct: 50 });
        if w.isolates[0].live_call() {
            renewals += 1;
            w.step(&Op::Deliver { isolate: 0, lose_reply: false });
        }
        w.step(&Op::Settle { isolate: 0 });
        ids.insert(n, ());
        w.now += 2;
    }
    assert!(renewals <= 12, "{renewals} renewals for 200 requests");
    assert_eq!(w.accepted_at.len(), 200);
}

#[test]
fn holdings_never_shrink_while_the_isolate_may_be_admitting() {
    use edgeway_core::key_account::SliceWant;
    let mut account = KeyAccountState::new(WINDOW_MS);
    let limits = World::new().limits;
    let renewal = |seq, want_slots, quota, release| SliceRenewal {
        slice_id: "s_a_1".into(),
        seq,
        limits: limits.clone(),
        settled: Vec::new(),
        closed: Vec::new(),
        release,
        in_use_slots: 0,
        in_use_micros: 0,
        want: SliceWant { slots: want_slots, quota_micros: quota, requests: 1, tokens: 0 },
        need: None,
    };
    let (g, _) = account.renew_slice(&renewal(1, 5, 1_000, false), 1_000_000);
    assert_eq!((g.slots, g.quota_micros), (Some(5), Some(1_000)));
    // A top-up asking for less: the isolate may be using all it held meanwhile.
    let (g, _) = account.renew_slice(&renewal(2, 1, 10, false), 1_000_010);
    assert_eq!((g.slots, g.quota_micros), (Some(5), Some(1_000)));
    assert_eq!(account.in_flight(), 5);
    // Only a release (during which the isolate admits nothing) gives them back.
    let (g, _) = account.renew_slice(&renewal(3, 0, 0, true), 1_000_020);
    assert_eq!((g.slots, g.quota_micros), (Some(0), Some(0)));
    assert_eq!((account.in_flight(), account.reserved_micros()), (0, 0));
    // A late renewal of the released slice gets nothing and holds nothing.
    let (g, _) = account.renew_slice(&renewal(2, 5, 1_000, false), 1_000_030);
    assert_eq!((g.slots, g.admit_for_ms), (Some(0), 0));
    assert_eq!((account.in_flight(), account.reserved_micros()), (0, 0));
}

#[test]
fn a_quota_refusal_is_a_quota_refusal_while_rate_grants_are_plenty() {
    let mut w = World::new();
    w.limits.rpm = Some(1_000);
    w.limits.tpm = Some(u64::MAX);
    w.limits.quota_micros = Some(100);
    let small = Need { reserve_micros: 10, tokens: 10 };
    let LocalAdmit::Renew(renewal) = w.isolates[0].slices.admit(DIGEST, &w.limits.clone(), small, w.now)
    else {
        panic!("first request renews")
    };
    let (grant, _) = w.account.renew_slice(&renewal, w.now);
    assert!(matches!(w.isolates[0].slices.renewed(DIGEST, grant, w.now, Some(small)), Renewed::Admitted(_)));
    // The rate grant has plenty left; the hold cannot take this one.
    let big = Need { reserve_micros: 1_000, tokens: 10 };
    let LocalAdmit::Renew(renewal) = w.isolates[0].slices.admit(DIGEST, &w.limits.clone(), big, w.now) else {
        panic!("the hold is too small: renew")
    };
    let (grant, _) = w.account.renew_slice(&renewal, w.now);
    assert!(matches!(
        w.isolates[0].slices.renewed(DIGEST, grant, w.now, Some(big)),
        Renewed::Refused(edgeway_core::key_account::Refusal::Quota, _)
    ));
}

#[test]
fn a_renewal_whose_waiting_request_cannot_fit_takes_no_hold() {
    use edgeway_core::key_account::{Refusal, SliceWant};
    let mut account = KeyAccountState::new(WINDOW_MS);
    let mut limits = World::new().limits;
    limits.quota_micros = Some(100);
    let renewal = SliceRenewal {
        slice_id: "s_b_1".into(),
        seq: 1,
        limits,
        settled: Vec::new(),
        closed: Vec::new(),
        release: false,
        in_use_slots: 0,
        in_use_micros: 0,
        want: SliceWant { slots: 5, quota_micros: 1_000, requests: 1, tokens: 0 },
        need: Some(SliceWant { slots: 1, quota_micros: 500, requests: 1, tokens: 0 }),
    };
    let (g, _) = account.renew_slice(&renewal, 1_000_000);
    assert!(matches!(g.refusal, Some((Refusal::Quota, _))), "{g:?}");
    assert_eq!(g.quota_micros, Some(0), "a hold too small for the waiting request is not taken");
    assert_eq!(account.reserved_micros(), 0);
}

/// Found by the property test (its seed is in slices.proptest-regressions):
/// an idle isolate gives its slice back, the account takes it back, but the
/// answer is lost. The isolate must not admit against the holdings it had:
/// the account no longer counts them, and a cost booked against them was an
/// overrun. It confirms the release first, then works from a new slice.
#[test]
fn a_release_whose_answer_is_lost_admits_nothing_until_it_is_confirmed() {
    use Op::*;
    let mut w = World::new();
    for op in [
        Arrive { isolate: 1, reserve: 76, cost_pct: 0 },
        Deliver { isolate: 1, lose_reply: false },
        Settle { isolate: 1 },
        Tick { ms: 1500 },
        Report { isolate: 1 },
        Deliver { isolate: 1, lose_reply: false },
        // Idle: the next report gives the slice back; its answer is lost.
        Report { isolate: 1 },
        Deliver { isolate: 1, lose_reply: true },
    ] {
        w.step(&op);
        w.check();
    }
    assert_eq!(w.account.reserved_micros(), 0, "the account took the slice back");
    w.step(&Arrive { isolate: 1, reserve: 3, cost_pct: 34 });
    assert!(w.isolates[1].in_flight.is_empty(), "nothing admitted against the released holdings");
    assert!(w.isolates[1].calls.iter().any(|c| c.renewal.release), "the release is sent again");
    w.step(&Deliver { isolate: 1, lose_reply: false });
    // Confirmed: the next request gets a new slice, and its cost is within its reservation.
    w.step(&Arrive { isolate: 1, reserve: 3, cost_pct: 34 });
    w.step(&Deliver { isolate: 1, lose_reply: false });
    assert_eq!(w.isolates[1].in_flight.len(), 1, "admitted from a new slice");
    w.step(&Settle { isolate: 1 });
    w.step(&Tick { ms: 1500 });
    w.step(&Report { isolate: 1 });
    w.step(&Deliver { isolate: 1, lose_reply: false });
    w.check();
    assert_eq!(w.account.spent_micros(), 1);
}

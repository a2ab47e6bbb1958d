//! Tests of the key account state machine (unit and property tests).
use super::*;
use crate::usage::{RequestOutcome, TokenUsage, UsageSource};
use proptest::prelude::*;

const MIN: i64 = MINUTE_MS;

fn limits(quota: Option<i64>, conc: Option<u32>, rpm: Option<u32>, tpm: Option<u64>) -> KeyLimits {
    KeyLimits {
        version: 1,
        disabled: false,
        max_concurrency: conc,
        rpm,
        tpm,
        quota_micros: quota,
        user_id: None,
    }
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
        endpoint: Default::default(),
        unit: None,
        unit_count: 0,
        usage: TokenUsage { input_uncached: tokens, ..Default::default() },
        cost_micros: cost,
        status: 200,
        outcome: RequestOutcome::Completed,
        usage_source: UsageSource::Provider,
        stream: true,
        latency_ms: 1,
        ttft_ms: None,
        served_model: String::new(),
        attempts: Vec::new(),
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
    assert_eq!(s.settle(&settle_req("", None), 0).0, SettleOutcome::Duplicate, "invalid ids change nothing");
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
    let ids: Vec<String> = s.outbox_batch(3_000, OUTBOX_BATCH).iter().map(|e| e.request_id.clone()).collect();
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
            user_id: None,
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

//! Circuits shared across isolates and locations: one record per channel
//! (kept by the channel's `ChannelHealth` Durable Object), and each
//! isolate's short-lived copy of the records of the channels it routes to.
//!
//! - **The record** ([`ChannelBoard`]) is the channel's authority: every
//!   isolate reports the outcomes that count (failures, and successes of
//!   circuits it knew), so N failures anywhere within the window open the
//!   circuit everywhere; a cool-down's one probe is granted here, so one
//!   request in the whole deployment probes a half-open circuit; and the
//!   cron's health checks land here ([`super::check`]).
//! - **The isolate's copy** ([`HealthSync`]) is what routing reads: no
//!   round trip per request. An isolate sends its outcomes and refreshes
//!   the copy of a channel it routed to at most every [`HEALTH_SYNC_MS`],
//!   after its requests (off their critical path). Only the request that
//!   would probe a circuit whose cool-down has ended asks the record first
//!   (one round trip, once per cool-down): the record's answer decides
//!   whether it probes, tries the channel (closed elsewhere) or skips it
//!   (another request probes).
//!
//! An isolate that cannot reach the record keeps deciding alone, as
//! before: its own failures still open its own copy.

use super::breaker::{Admission, BreakerPolicy, Breakers, Circuit, CircuitId};
use super::check::{CheckRecord, CheckResult};
use super::Failure;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How old an isolate's copy of a channel's circuits may grow while it
/// routes to the channel: a circuit opened elsewhere is skipped here within
/// this long.
pub const HEALTH_SYNC_MS: i64 = 2_000;
/// A sync with no answer after this long is given up (and sent again).
pub const SYNC_TIMEOUT_MS: i64 = 10_000;
/// Most outcomes an isolate holds for one channel while the record is out
/// of reach (the oldest go first).
pub const MAX_PENDING_OUTCOMES: usize = 64;

/// One attempt's outcome, as an isolate reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The channel's upstream model.
    pub model: String,
    /// The credential the attempt used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
    pub policy: BreakerPolicy,
    /// `None`: served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// When it happened (the reporting isolate's clock; only used to
    /// replay it on the isolate's own copy).
    pub at_ms: i64,
}

impl Outcome {
    fn record(&self, breakers: &mut Breakers, channel: &str, now_ms: i64) -> bool {
        breakers.record_outcome(
            channel,
            &self.model,
            self.credential,
            &self.policy,
            self.failure.as_ref(),
            now_ms,
        )
    }
}

/// What an isolate sends a channel's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    /// The circuit this request would probe: may it?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<CircuitId>,
}

/// The record's answer: the channel's circuits now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub circuits: Vec<(String, Circuit)>,
    /// The answer to a claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimAnswer>,
}

/// What the request that claimed a circuit may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAnswer {
    /// It is the probe.
    Probe,
    /// The circuit is closed (a probe elsewhere closed it): a plain attempt.
    Try,
    /// Another request probes it, or it opened again: skip the channel.
    Skip,
}

impl From<Admission> for ClaimAnswer {
    fn from(admission: Admission) -> Self {
        match admission {
            Admission::Probe => Self::Probe,
            Admission::Try => Self::Try,
            Admission::Skip => Self::Skip,
        }
    }
}

/// One channel's shared record: its circuits and its last health checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelBoard {
    circuits: Vec<(String, Circuit)>,
    #[serde(default)]
    checks: Vec<CheckRecord>,
}

/// A channel's record as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardView {
    pub circuits: Vec<super::breaker::CircuitView>,
    /// The last health check of each credential.
    pub checks: Vec<CheckRecord>,
}

impl ChannelBoard {
    /// Applies an isolate's outcomes (at the record's clock, `now_ms`) and
    /// answers its claim.
    pub fn sync(&mut self, channel: &str, request: &SyncRequest, now_ms: i64) -> SyncReply {
        let mut breakers = self.breakers(channel);
        for outcome in &request.outcomes {
            outcome.record(&mut breakers, channel, now_ms);
        }
        let claim = request.claim.as_ref().map(|id| breakers.admit_id(channel, id, now_ms).into());
        self.circuits = breakers.export(channel);
        SyncReply { circuits: self.circuits.clone(), claim }
    }

    /// Records the results of a round of health checks: a refused
    /// credential leaves rotation, a reachable channel is let back in.
    pub fn record_checks(&mut self, channel: &str, results: &[CheckResult], now_ms: i64) {
        let mut breakers = self.breakers(channel);
        self.checks = results.iter().map(|result| result.apply(&mut breakers, channel, now_ms)).collect();
        self.circuits = breakers.export(channel);
    }

    pub fn view(&self, channel: &str, now_ms: i64) -> BoardView {
        BoardView { circuits: self.breakers(channel).view(now_ms), checks: self.checks.clone() }
    }

    fn breakers(&self, channel: &str) -> Breakers {
        let mut breakers = Breakers::default();
        breakers.adopt(channel, self.circuits.clone());
        breakers
    }
}

/// An isolate's side: the outcomes it owes each channel's record, and how
/// fresh its copy of each is.
#[derive(Debug, Default)]
pub struct HealthSync {
    channels: HashMap<String, ChannelSync>,
    /// Nothing is due before this (isolate clock), unless an outcome waits.
    next_due_ms: i64,
    pending: bool,
}

#[derive(Debug, Default)]
struct ChannelSync {
    synced_at_ms: i64,
    /// Last routed to (an attempt's outcome).
    used_at_ms: i64,
    pending: Vec<Outcome>,
    /// A sync was sent at this time and has not been answered.
    in_flight_since: Option<i64>,
}

impl HealthSync {
    /// Notes that `channel` was routed to now (tried, or skipped for its
    /// circuit), with the `outcome` the record must hear of, if any.
    pub fn note(&mut self, channel: &str, outcome: Option<Outcome>, now_ms: i64) {
        let sync = match self.channels.get_mut(channel) {
            Some(sync) => sync,
            None => self.channels.entry(channel.to_string()).or_default(),
        };
        sync.used_at_ms = now_ms;
        if let Some(outcome) = outcome {
            if sync.pending.len() >= MAX_PENDING_OUTCOMES {
                sync.pending.remove(0);
            }
            sync.pending.push(outcome);
            self.pending = true;
        }
        self.next_due_ms = self.next_due_ms.min(sync.synced_at_ms + HEALTH_SYNC_MS);
    }

    /// The syncs due now, as (channel, JSON of its [`SyncRequest`]): every
    /// channel with outcomes to send, and every channel routed to since its
    /// copy was refreshed, once that is [`HEALTH_SYNC_MS`] old. Each is
    /// marked in flight until [`Self::answered`].
    pub fn due(&mut self, now_ms: i64) -> Vec<(String, String)> {
        if !self.pending && now_ms < self.next_due_ms {
            return Vec::new();
        }
        let mut due = Vec::new();
        let mut next = i64::MAX;
        let mut still_pending = false;
        for (channel, sync) in &mut self.channels {
            if sync.in_flight_since.is_some_and(|at| now_ms - at < SYNC_TIMEOUT_MS) {
                // Its outcomes go with the next sync, after the answer.
                still_pending |= !sync.pending.is_empty();
                next = next.min(now_ms + HEALTH_SYNC_MS);
                continue;
            }
            let stale = sync.used_at_ms >= sync.synced_at_ms && now_ms - sync.synced_at_ms >= HEALTH_SYNC_MS;
            if !sync.pending.is_empty() || stale {
                let request = SyncRequest { outcomes: std::mem::take(&mut sync.pending), claim: None };
                if let Ok(json) = serde_json::to_string(&request) {
                    sync.in_flight_since = Some(now_ms);
                    due.push((channel.clone(), json));
                }
            } else if sync.used_at_ms >= sync.synced_at_ms {
                next = next.min(sync.synced_at_ms + HEALTH_SYNC_MS);
            }
        }
        self.pending = still_pending;
        self.next_due_ms = next;
        due
    }

    /// The record's answer to a sync `due` sent (`status` 0: no answer).
    /// A good answer replaces the isolate's copy of the channel's circuits
    /// (then the outcomes noted since are replayed on it); a failed one puts
    /// the sent outcomes back, to go with the next sync.
    pub fn answered(
        &mut self,
        breakers: &mut Breakers,
        channel: &str,
        sent: &str,
        status: u16,
        body: &str,
        now_ms: i64,
    ) -> Option<SyncReply> {
        let sync = self.channels.get_mut(channel)?;
        sync.in_flight_since = None;
        sync.synced_at_ms = now_ms;
        let Some(reply) = parse_reply(status, body) else {
            if let Ok(request) = serde_json::from_str::<SyncRequest>(sent) {
                let mut outcomes = request.outcomes;
                outcomes.append(&mut sync.pending);
                let excess = outcomes.len().saturating_sub(MAX_PENDING_OUTCOMES);
                outcomes.drain(..excess);
                sync.pending = outcomes;
                self.pending |= !sync.pending.is_empty();
            }
            return None;
        };
        Self::adopt(sync, breakers, channel, &reply);
        Some(reply)
    }

    /// The JSON of a claim of `circuit` (with nothing else).
    pub fn claim_request(circuit: &CircuitId) -> String {
        let request = SyncRequest { outcomes: Vec::new(), claim: Some(circuit.clone()) };
        serde_json::to_string(&request).unwrap_or_default()
    }

    /// The record's answer to a claim: its circuits are adopted as a sync's
    /// answer (the periodic sync, if one is out, is still awaited); what
    /// the claiming request may do. No answer: it probes, as the isolate's
    /// own copy said.
    pub fn claim_answered(
        &mut self,
        breakers: &mut Breakers,
        channel: &str,
        status: u16,
        body: &str,
        now_ms: i64,
    ) -> ClaimAnswer {
        let Some(reply) = parse_reply(status, body) else { return ClaimAnswer::Probe };
        let sync = match self.channels.get_mut(channel) {
            Some(sync) => sync,
            None => self.channels.entry(channel.to_string()).or_default(),
        };
        sync.synced_at_ms = now_ms;
        Self::adopt(sync, breakers, channel, &reply);
        reply.claim.unwrap_or(ClaimAnswer::Probe)
    }

    /// Replaces the isolate's copy of `channel`'s circuits with the
    /// record's, then replays the outcomes noted since the sync was sent.
    fn adopt(sync: &ChannelSync, breakers: &mut Breakers, channel: &str, reply: &SyncReply) {
        breakers.adopt(channel, reply.circuits.clone());
        for outcome in &sync.pending {
            outcome.record(breakers, channel, outcome.at_ms);
        }
    }
}

/// A record's answer, if it is one.
fn parse_reply(status: u16, body: &str) -> Option<SyncReply> {
    (status == 200).then(|| serde_json::from_str(body).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_health::breaker::CircuitState;

    const POLICY: BreakerPolicy = BreakerPolicy { failures: 3, window_ms: 10_000, open_ms: 5_000 };
    const SERVER: Failure = Failure::Server { status: 500 };

    fn failure(at_ms: i64) -> Outcome {
        Outcome { model: "m".into(), credential: None, policy: POLICY, failure: Some(SERVER), at_ms }
    }

    /// One isolate: its breakers and its sync state, syncing with `board`.
    #[derive(Default)]
    struct Isolate {
        breakers: Breakers,
        sync: HealthSync,
    }

    impl Isolate {
        fn fail(&mut self, now: i64) {
            let outcome = failure(now);
            let shared = outcome.record(&mut self.breakers, "a", now);
            self.sync.note("a", shared.then_some(outcome), now);
        }

        fn sync_with(&mut self, board: &mut ChannelBoard, now: i64) -> usize {
            let due = self.sync.due(now);
            for (channel, sent) in &due {
                let request: SyncRequest = serde_json::from_str(sent).unwrap();
                let reply = serde_json::to_string(&board.sync(channel, &request, now)).unwrap();
                self.sync.answered(&mut self.breakers, channel, sent, 200, &reply, now);
            }
            due.len()
        }

        fn claim(&mut self, board: &mut ChannelBoard, now: i64) -> ClaimAnswer {
            let circuit = CircuitId::Model("m".into());
            let request: SyncRequest = serde_json::from_str(&HealthSync::claim_request(&circuit)).unwrap();
            let reply = serde_json::to_string(&board.sync("a", &request, now)).unwrap();
            self.sync.claim_answered(&mut self.breakers, "a", 200, &reply, now)
        }
    }

    #[test]
    fn failures_in_different_isolates_open_the_circuit_everywhere() {
        let mut board = ChannelBoard::default();
        let (mut one, mut two, mut three) = (Isolate::default(), Isolate::default(), Isolate::default());
        one.fail(0);
        two.fail(10);
        three.fail(20);
        for isolate in [&one, &two, &three] {
            assert_eq!(isolate.breakers.clone().admit("a", "m", 30), Admission::Try, "one failure each");
        }
        assert_eq!(one.sync_with(&mut board, 30), 1);
        assert_eq!(two.sync_with(&mut board, 31), 1);
        assert_eq!(three.sync_with(&mut board, 32), 1);
        assert_eq!(three.breakers.admit("a", "m", 33), Admission::Skip, "the third report opened it");
        // The others learn it at their next refresh, once they route there.
        two.sync.note("a", None, 40);
        assert_eq!(two.sync_with(&mut board, 41), 0, "refreshed 10 ms ago");
        assert_eq!(two.sync_with(&mut board, 31 + HEALTH_SYNC_MS), 1);
        assert_eq!(two.breakers.admit("a", "m", 31 + HEALTH_SYNC_MS), Admission::Skip);
        assert_eq!(one.sync_with(&mut board, 31 + HEALTH_SYNC_MS), 0, "not routed to since: no refresh");
    }

    #[test]
    fn one_probe_in_the_whole_deployment() {
        let mut board = ChannelBoard::default();
        let mut isolates: Vec<Isolate> = (0..4).map(|_| Isolate::default()).collect();
        for t in 0..3 {
            isolates[0].fail(t);
        }
        isolates[0].sync_with(&mut board, 3);
        for isolate in &mut isolates[1..] {
            isolate.sync.note("a", None, 3);
            isolate.sync_with(&mut board, HEALTH_SYNC_MS + 3);
        }
        // Every isolate's copy says the cool-down is over: each would probe.
        let after = 5_003 + HEALTH_SYNC_MS;
        let answers: Vec<ClaimAnswer> = isolates
            .iter_mut()
            .map(|isolate| {
                assert_eq!(isolate.breakers.admit("a", "m", after), Admission::Probe);
                isolate.claim(&mut board, after)
            })
            .collect();
        assert_eq!(answers, [ClaimAnswer::Probe, ClaimAnswer::Skip, ClaimAnswer::Skip, ClaimAnswer::Skip]);
        for isolate in &mut isolates[1..] {
            assert_eq!(isolate.breakers.admit("a", "m", after + 1), Admission::Skip, "half-open elsewhere");
        }
        // The probe succeeds; its report closes the record, and the others
        // are told when they claim next.
        let prober = &mut isolates[0];
        let served = Outcome { failure: None, ..failure(after + 5) };
        let shared = served.record(&mut prober.breakers, "a", after + 5);
        assert!(shared, "a success of a known circuit is shared");
        prober.sync.note("a", shared.then_some(served), after + 5);
        prober.sync_with(&mut board, after + 6);
        let late = after + PROBE_TIMEOUT;
        assert_eq!(isolates[1].breakers.admit("a", "m", late), Admission::Probe);
        assert_eq!(isolates[1].claim(&mut board, late), ClaimAnswer::Try, "closed by the probe elsewhere");
        assert_eq!(isolates[1].breakers.admit("a", "m", late + 1), Admission::Try);
    }

    const PROBE_TIMEOUT: i64 = crate::channel_health::breaker::PROBE_TIMEOUT_MS;

    #[test]
    fn an_unreachable_record_keeps_the_outcomes_and_the_isolate_decides_alone() {
        let mut one = Isolate::default();
        for t in 0..3 {
            one.fail(t);
        }
        assert_eq!(one.breakers.admit("a", "m", 4), Admission::Skip, "its own copy opened");
        let due = one.sync.due(5);
        assert_eq!(due.len(), 1);
        one.sync.answered(&mut one.breakers, "a", &due[0].1, 0, "", 5);
        assert_eq!(one.breakers.admit("a", "m", 6), Admission::Skip, "nothing adopted");
        let again = one.sync.due(6);
        let request: SyncRequest = serde_json::from_str(&again[0].1).unwrap();
        assert_eq!(request.outcomes.len(), 3, "sent again with the next sync");
        let answer = one.sync.claim_answered(&mut one.breakers, "a", 0, "", 7);
        assert_eq!(answer, ClaimAnswer::Probe, "no answer: the isolate's own copy decides");
    }

    #[test]
    fn outcomes_noted_while_a_sync_is_in_flight_survive_its_answer() {
        let mut board = ChannelBoard::default();
        let mut one = Isolate::default();
        one.fail(0);
        let due = one.sync.due(1);
        one.fail(2);
        one.fail(3);
        assert!(one.sync.due(4).is_empty(), "one sync in flight per channel");
        let request: SyncRequest = serde_json::from_str(&due[0].1).unwrap();
        let reply = serde_json::to_string(&board.sync("a", &request, 5)).unwrap();
        one.sync.answered(&mut one.breakers, "a", &due[0].1, 200, &reply, 5);
        assert_eq!(one.breakers.admit("a", "m", 6), Admission::Skip, "1 adopted + 2 replayed = 3");
        assert_eq!(one.sync_with(&mut board, 7), 1);
        let view = board.view("a", 8);
        assert_eq!(view.circuits[0].state, CircuitState::Open { until_ms: 5_007 });
    }
}

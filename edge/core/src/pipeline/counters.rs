//! The isolate's own counters of what the generation pipeline decided:
//! requests by endpoint family, client dialect and status class; upstream
//! attempts by channel and outcome, and failovers by the channel that failed;
//! admission refusals by reason; response-cache verdicts; how streams ended.
//! The machine ([`super::generation`]) increments them where it makes each
//! decision; the internal API serves a [`CountersSnapshot`]
//! (`GET /internal/counters`) that the admin exports as Prometheus counters.
//!
//! **Key design decision:** plain integers in fixed arrays indexed by the
//! pipeline's own enums, held in the isolate's memory: an increment is an
//! index and an add, with no allocation (a channel's row is allocated once,
//! the first time the channel is tried), no I/O and no lock (an isolate runs
//! one thing at a time). They are **per isolate**: Cloudflare runs many
//! isolates per deployment and recycles them, so a snapshot is one isolate's
//! counts since `started_at_ms`, named by a random `isolate_id`; a reader
//! that sees a new id is looking at a fresh set (a counter reset), not at
//! traffic that vanished.

use crate::channel_health::{Failure, TimeoutPhase};
use crate::family::Family;
use crate::key_account::Refusal;
use crate::translate::ClientDialect;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const FAMILIES: usize = Family::ALL.len();
const CLIENTS: usize = ClientDialect::ALL.len();

/// The status class of a request's answer, as its label says.
pub const STATUS_CLASSES: [&str; 5] = ["2xx", "4xx", "5xx", "other", "none"];

/// An upstream attempt's outcome: `served`, or the failure class
/// ([`Failure::kind`]).
pub const ATTEMPT_OUTCOMES: [&str; 11] = [
    "served",
    "connect",
    "timeout_headers",
    "timeout_first_content",
    "timeout_idle",
    "server_error",
    "rate_limited",
    "quota_exhausted",
    "credential_refused",
    "client_error",
    "stream_broken",
];

/// Why an account refused a request, as [`Refusal`]'s wire names.
pub const REFUSAL_REASONS: [&str; 6] = ["concurrency", "rpm", "tpm", "quota", "balance", "revoked"];

/// A response-cache verdict, as the `x-edgeway-cache` header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheVerdict {
    Hit,
    Miss,
    /// The model caches but the request is not deterministic.
    Bypass,
}

/// The labels of [`CacheVerdict`], in its order.
pub const CACHE_VERDICTS: [&str; 3] = ["hit", "miss", "bypass"];

/// How a streamed answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnding {
    /// The upstream's stream completed and the client had it all.
    Completed,
    /// The client disconnected mid-stream (the upstream was drained for
    /// its usage).
    ClientAborted,
    /// The stream ended with an in-stream error: the upstream broke or went
    /// quiet past its idle limit after content, or every candidate failed
    /// after the head went out with a keepalive.
    Failed,
}

/// The labels of [`StreamEnding`], in its order.
pub const STREAM_ENDINGS: [&str; 3] = ["completed", "client_aborted", "failed"];

/// Most channels counted by name; attempts at any further channel are
/// counted under [`OTHER_CHANNELS`] (routing configs hold far fewer).
pub const MAX_COUNTED_CHANNELS: usize = 1_000;
/// The channel label of attempts past [`MAX_COUNTED_CHANNELS`].
pub const OTHER_CHANNELS: &str = "_other";

/// One channel's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChannelCounts {
    /// By [`ATTEMPT_OUTCOMES`].
    attempts: [u64; ATTEMPT_OUTCOMES.len()],
    /// Failed attempts at this channel that another attempt followed.
    failovers: u64,
}

/// The isolate's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCounters {
    isolate_id: String,
    started_at_ms: i64,
    /// By family, client dialect and [`STATUS_CLASSES`].
    requests: [[[u64; STATUS_CLASSES.len()]; CLIENTS]; FAMILIES],
    /// By [`REFUSAL_REASONS`].
    refusals: [u64; REFUSAL_REASONS.len()],
    /// By [`CACHE_VERDICTS`].
    cache: [u64; CACHE_VERDICTS.len()],
    /// By [`STREAM_ENDINGS`].
    streams: [u64; STREAM_ENDINGS.len()],
    channels: HashMap<String, ChannelCounts>,
}

impl Default for EdgeCounters {
    fn default() -> Self {
        Self {
            isolate_id: String::new(),
            started_at_ms: 0,
            requests: [[[0; STATUS_CLASSES.len()]; CLIENTS]; FAMILIES],
            refusals: [0; REFUSAL_REASONS.len()],
            cache: [0; CACHE_VERDICTS.len()],
            streams: [0; STREAM_ENDINGS.len()],
            channels: HashMap::new(),
        }
    }
}

/// The index of `status` in [`STATUS_CLASSES`] (`None`: the client left
/// before it was answered).
fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(200..=299) => 0,
        Some(400..=499) => 1,
        Some(500..=599) => 2,
        Some(_) => 3,
        None => 4,
    }
}

/// The index of an attempt's outcome in [`ATTEMPT_OUTCOMES`] (`None`: served).
fn attempt_outcome(failure: Option<&Failure>) -> usize {
    match failure {
        None => 0,
        Some(Failure::Connect) => 1,
        Some(Failure::Timeout(TimeoutPhase::Headers)) => 2,
        Some(Failure::Timeout(TimeoutPhase::FirstContent)) => 3,
        Some(Failure::Timeout(TimeoutPhase::Idle)) => 4,
        Some(Failure::Server { .. }) => 5,
        Some(Failure::RateLimited { .. }) => 6,
        Some(Failure::QuotaExhausted { .. }) => 7,
        Some(Failure::CredentialRefused { .. }) => 8,
        Some(Failure::ClientFault { .. }) => 9,
        Some(Failure::StreamBroken) => 10,
    }
}

fn refusal_reason(reason: Refusal) -> usize {
    match reason {
        Refusal::Concurrency => 0,
        Refusal::Rpm => 1,
        Refusal::Tpm => 2,
        Refusal::Quota => 3,
        Refusal::Balance => 4,
        Refusal::Revoked => 5,
    }
}

fn position<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter().position(|v| v == value).unwrap_or(0)
}

impl EdgeCounters {
    /// Names the isolate (a random id) and starts its counts at `now_ms`.
    pub fn begin(&mut self, isolate_id: String, now_ms: i64) {
        *self = Self { isolate_id, started_at_ms: now_ms, ..Self::default() };
    }

    /// A request of `family` from a `client` was answered with `status`
    /// (`None`: it ended unanswered, its client gone while it waited).
    pub fn request(&mut self, family: Family, client: ClientDialect, status: Option<u16>) {
        let f = position(&Family::ALL, &family);
        let c = position(&ClientDialect::ALL, &client);
        self.requests[f][c][status_class(status)] += 1;
    }

    /// Counts into `channel`'s row (created the first time it is seen).
    fn count_channel(&mut self, channel: &str, count: impl FnOnce(&mut ChannelCounts)) {
        // Looked up by `&str`: a known channel costs no allocation.
        let key = if self.channels.contains_key(channel) || self.channels.len() < MAX_COUNTED_CHANNELS {
            channel
        } else {
            OTHER_CHANNELS
        };
        if let Some(row) = self.channels.get_mut(key) {
            return count(row);
        }
        let mut row = ChannelCounts::default();
        count(&mut row);
        self.channels.insert(key.to_string(), row);
    }

    /// An upstream attempt at `channel` ended: served (`None`) or `failure`.
    pub fn attempt(&mut self, channel: &str, failure: Option<&Failure>) {
        self.count_channel(channel, |row| row.attempts[attempt_outcome(failure)] += 1);
    }

    /// A failed attempt at `channel` was followed by another attempt.
    pub fn failover(&mut self, channel: &str) {
        self.count_channel(channel, |row| row.failovers += 1);
    }

    /// The key's account (or the isolate's slice of it) refused a request.
    pub fn refusal(&mut self, reason: Refusal) {
        self.refusals[refusal_reason(reason)] += 1;
    }

    pub fn cache(&mut self, verdict: CacheVerdict) {
        self.cache[verdict as usize] += 1;
    }

    pub fn stream_ended(&mut self, ending: StreamEnding) {
        self.streams[ending as usize] += 1;
    }

    /// Every count that is not zero, at `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> CountersSnapshot {
        let mut requests = Vec::new();
        for (f, family) in Family::ALL.iter().enumerate() {
            for (c, client) in ClientDialect::ALL.iter().enumerate() {
                for (s, status) in STATUS_CLASSES.iter().enumerate() {
                    let count = self.requests[f][c][s];
                    if count > 0 {
                        requests.push(RequestCount {
                            family: family.as_str().to_string(),
                            client: client.name().to_string(),
                            status: (*status).to_string(),
                            count,
                        });
                    }
                }
            }
        }
        let mut names: Vec<&String> = self.channels.keys().collect();
        names.sort();
        let mut attempts = Vec::new();
        let mut failovers = Vec::new();
        for name in names {
            let Some(counts) = self.channels.get(name) else { continue };
            for (i, outcome) in ATTEMPT_OUTCOMES.iter().enumerate() {
                if counts.attempts[i] > 0 {
                    attempts.push(AttemptCount {
                        channel: name.clone(),
                        outcome: (*outcome).to_string(),
                        count: counts.attempts[i],
                    });
                }
            }
            if counts.failovers > 0 {
                failovers.push(ChannelCount { channel: name.clone(), count: counts.failovers });
            }
        }
        let labelled = |labels: &[&str], counts: &[u64]| -> Vec<LabelCount> {
            labels
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(label, n)| LabelCount { label: (*label).to_string(), count: *n })
                .collect()
        };
        CountersSnapshot {
            isolate_id: self.isolate_id.clone(),
            started_at_ms: self.started_at_ms,
            now_ms,
            requests,
            attempts,
            failovers,
            admission_refusals: labelled(&REFUSAL_REASONS, &self.refusals),
            response_cache: labelled(&CACHE_VERDICTS, &self.cache),
            streams: labelled(&STREAM_ENDINGS, &self.streams),
        }
    }
}

/// `GET /internal/counters`: one isolate's counts (zeros left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    /// Random, unique to the isolate that answered.
    pub isolate_id: String,
    /// When that isolate started counting (Unix ms).
    pub started_at_ms: i64,
    /// When it answered.
    pub now_ms: i64,
    pub requests: Vec<RequestCount>,
    pub attempts: Vec<AttemptCount>,
    /// Failed attempts another attempt followed, by the channel that failed.
    pub failovers: Vec<ChannelCount>,
    /// By reason ([`REFUSAL_REASONS`]).
    pub admission_refusals: Vec<LabelCount>,
    /// By verdict ([`CACHE_VERDICTS`]).
    pub response_cache: Vec<LabelCount>,
    /// By ending ([`STREAM_ENDINGS`]).
    pub streams: Vec<LabelCount>,
}

/// Requests of one family, client dialect and status class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    pub family: String,
    pub client: String,
    pub status: String,
    pub count: u64,
}

/// Attempts at one channel with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptCount {
    pub channel: String,
    pub outcome: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub channel: String,
    pub count: u64,
}

/// The count of one label value (a reason, a verdict, an ending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    pub label: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_the_failure_kinds() {
        let failures = [
            Failure::Connect,
            Failure::Timeout(TimeoutPhase::Headers),
            Failure::Timeout(TimeoutPhase::FirstContent),
            Failure::Timeout(TimeoutPhase::Idle),
            Failure::Server { status: 502 },
            Failure::RateLimited { retry_after_ms: None },
            Failure::QuotaExhausted { retry_after_ms: Some(1) },
            Failure::CredentialRefused { status: 401 },
            Failure::ClientFault { status: 400 },
            Failure::StreamBroken,
        ];
        assert_eq!(ATTEMPT_OUTCOMES[attempt_outcome(None)], "served");
        for f in &failures {
            assert_eq!(ATTEMPT_OUTCOMES[attempt_outcome(Some(f))], f.kind());
        }
        let mut seen: Vec<usize> = failures.iter().map(|f| attempt_outcome(Some(f))).collect();
        seen.dedup();
        assert_eq!(seen.len(), failures.len(), "each class its own slot");
    }

    #[test]
    fn refusal_labels_are_the_wire_names() {
        for r in [
            Refusal::Concurrency,
            Refusal::Rpm,
            Refusal::Tpm,
            Refusal::Quota,
            Refusal::Balance,
            Refusal::Revoked,
        ] {
            let wire = serde_json::to_value(r).unwrap_or_default();
            assert_eq!(Some(REFUSAL_REASONS[refusal_reason(r)]), wire.as_str());
        }
    }

    #[test]
    fn counts_land_under_their_labels_and_zeros_are_left_out() {
        let mut c = EdgeCounters::default();
        c.begin("iso1".into(), 1_000);
        c.request(Family::Chat, ClientDialect::OpenAiChat, Some(200));
        c.request(Family::Chat, ClientDialect::OpenAiChat, Some(201));
        c.request(Family::Embeddings, ClientDialect::OpenAiChat, Some(429));
        c.request(Family::Chat, ClientDialect::Anthropic, Some(502));
        c.request(Family::Chat, ClientDialect::Gemini, None);
        c.request(Family::Rerank, ClientDialect::OpenAiChat, Some(304));
        c.attempt("b", Some(&Failure::Server { status: 500 }));
        c.failover("b");
        c.attempt("a", None);
        c.attempt("a", None);
        c.refusal(Refusal::Rpm);
        c.refusal(Refusal::Balance);
        c.refusal(Refusal::Balance);
        c.cache(CacheVerdict::Hit);
        c.cache(CacheVerdict::Bypass);
        c.stream_ended(StreamEnding::ClientAborted);
        let s = c.snapshot(2_000);
        assert_eq!((s.isolate_id.as_str(), s.started_at_ms, s.now_ms), ("iso1", 1_000, 2_000));
        let req = |f: &str, cl: &str, st: &str| {
            s.requests.iter().find(|r| r.family == f && r.client == cl && r.status == st).map(|r| r.count)
        };
        assert_eq!(req("chat", "openai_chat", "2xx"), Some(2));
        assert_eq!(req("embeddings", "openai_chat", "4xx"), Some(1));
        assert_eq!(req("chat", "anthropic", "5xx"), Some(1));
        assert_eq!(req("chat", "gemini", "none"), Some(1));
        assert_eq!(req("rerank", "openai_chat", "other"), Some(1));
        assert_eq!(s.requests.len(), 5, "only the counts that moved");
        let attempts: Vec<(&str, &str, u64)> =
            s.attempts.iter().map(|a| (a.channel.as_str(), a.outcome.as_str(), a.count)).collect();
        assert_eq!(attempts, [("a", "served", 2), ("b", "server_error", 1)], "sorted by channel");
        assert_eq!(s.failovers, [ChannelCount { channel: "b".into(), count: 1 }]);
        let labels = |v: &[LabelCount]| v.iter().map(|l| (l.label.clone(), l.count)).collect::<Vec<_>>();
        assert_eq!(labels(&s.admission_refusals), [("rpm".into(), 1), ("balance".into(), 2)]);
        assert_eq!(labels(&s.response_cache), [("hit".into(), 1), ("bypass".into(), 1)]);
        assert_eq!(labels(&s.streams), [("client_aborted".into(), 1)]);
        // The wire form reads back as it was written (the admin reads it).
        let text = serde_json::to_string(&s).unwrap_or_default();
        assert_eq!(serde_json::from_str::<CountersSnapshot>(&text).ok(), Some(s));
        // A new isolate id starts from zero.
        c.begin("iso2".into(), 3_000);
        let fresh = c.snapshot(3_000);
        assert!(fresh.requests.is_empty() && fresh.attempts.is_empty() && fresh.streams.is_empty());
        assert_eq!(fresh.isolate_id, "iso2");
    }

    #[test]
    fn channels_past_the_cap_are_counted_together() {
        let mut c = EdgeCounters::default();
        for i in 0..MAX_COUNTED_CHANNELS {
            c.attempt(&format!("ch{i}"), None);
        }
        c.attempt("one-too-many", None);
        c.attempt("another", Some(&Failure::Connect));
        c.attempt("ch0", None);
        let s = c.snapshot(0);
        let count = |ch: &str, outcome: &str| {
            s.attempts.iter().find(|a| a.channel == ch && a.outcome == outcome).map(|a| a.count)
        };
        assert_eq!(count("ch0", "served"), Some(2), "a counted channel keeps its row");
        assert_eq!(count(OTHER_CHANNELS, "served"), Some(1));
        assert_eq!(count(OTHER_CHANNELS, "connect"), Some(1));
        assert_eq!(count("one-too-many", "served"), None);
    }
}

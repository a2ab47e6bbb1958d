//! The circuit breaker: one circuit per (channel, upstream model), fed the
//! classified outcome of every attempt ([`super::Failure`]), consulted by
//! the request machine before it tries a candidate.
//!
//! - **Closed**: failures that count against the channel
//!   ([`super::Failure::counts_against_channel`]; a client's own 400 never
//!   does) are remembered for `window_ms`; `failures` of them within the
//!   window open the circuit for `open_ms`. A failure that names its own
//!   cool-down (an upstream `Retry-After` on a 429, an exhausted quota)
//!   opens it at once for that long.
//! - **Open**: routing skips the channel until the cool-down ends.
//! - **Half-open**: then exactly one request is let through as a probe (the
//!   others keep skipping the channel); its success closes the circuit, its
//!   failure opens it again for twice as long (up to [`MAX_OPEN_MS`]). A
//!   probe whose outcome never comes (its request vanished) gives way to a
//!   new probe after [`PROBE_TIMEOUT_MS`].
//!
//! Time is an argument; the state is plain data (so it can be shown, and
//! kept anywhere).

use super::Failure;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Longest a circuit stays open (after repeated failed probes, or for a
/// longer `Retry-After` or quota cool-down): a probe every 5 min at most.
pub const MAX_OPEN_MS: u64 = 5 * 60_000;
/// A probe that has not reported after this long is replaced.
pub const PROBE_TIMEOUT_MS: i64 = 120_000;
/// Most circuits remembered (the least recently failed closed ones go first).
pub const MAX_CIRCUITS: usize = 4_096;

/// When a channel's circuit opens (a field of its routing row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Failures within `window_ms` that open the circuit (0 = the breaker is
    /// off for the channel: nothing opens it, not even a `Retry-After`).
    pub failures: u32,
    pub window_ms: u64,
    /// First cool-down; doubled after each failed probe.
    pub open_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { failures: 5, window_ms: 30_000, open_ms: 15_000 }
    }
}

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open {
        until_ms: i64,
    },
    /// A probe was let through at `probe_since_ms`.
    HalfOpen {
        probe_since_ms: i64,
    },
}

/// What routing may do with a candidate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: try it.
    Try,
    /// Half-open: this request is the one probe.
    Probe,
    /// Open, or a probe is out: skip it.
    Skip,
}

/// One circuit's whole state: plain data, so that a channel's circuits can
/// be handed between an isolate and the channel's shared record
/// ([`super::shared`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "CircuitWire", from = "CircuitWire")]
pub struct Circuit {
    state: CircuitState,
    /// Times of the failures counted in the window.
    failures: VecDeque<i64>,
    /// Cool-down of the last opening (doubles after a failed probe).
    open_ms: u64,
    last_failure: Option<String>,
    last_change_ms: i64,
    /// The policy's window, for the view.
    window_ms: i64,
}

/// [`Circuit`]'s wire form: the state as a number and a time, so that the
/// wasm build decodes it without serde's buffering of tagged enums.
#[derive(Serialize, Deserialize)]
struct CircuitWire {
    /// 0 closed, 1 open (until `at`), 2 half-open (probe since `at`).
    state: u8,
    #[serde(default)]
    at: i64,
    #[serde(default)]
    failures: VecDeque<i64>,
    open_ms: u64,
    #[serde(default)]
    last_failure: Option<String>,
    last_change_ms: i64,
    window_ms: i64,
}

impl From<Circuit> for CircuitWire {
    fn from(c: Circuit) -> Self {
        let (state, at) = match c.state {
            CircuitState::Closed => (0, 0),
            CircuitState::Open { until_ms } => (1, until_ms),
            CircuitState::HalfOpen { probe_since_ms } => (2, probe_since_ms),
        };
        Self {
            state,
            at,
            failures: c.failures,
            open_ms: c.open_ms,
            last_failure: c.last_failure,
            last_change_ms: c.last_change_ms,
            window_ms: c.window_ms,
        }
    }
}

impl From<CircuitWire> for Circuit {
    fn from(w: CircuitWire) -> Self {
        let state = match w.state {
            1 => CircuitState::Open { until_ms: w.at },
            2 => CircuitState::HalfOpen { probe_since_ms: w.at },
            _ => CircuitState::Closed,
        };
        Self {
            state,
            failures: w.failures,
            open_ms: w.open_ms,
            last_failure: w.last_failure,
            last_change_ms: w.last_change_ms,
            window_ms: w.window_ms,
        }
    }
}

/// Which circuit of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitId {
    /// The channel's upstream model.
    Model(String),
    /// The channel's credential at this index of its rotation.
    Credential(usize),
}

/// A circuit as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitView {
    pub channel: String,
    /// The upstream model; empty for a credential's circuit.
    pub model: String,
    /// The credential's index in the channel's rotation, for its circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
    #[serde(flatten)]
    pub state: CircuitState,
    pub recent_failures: u32,
    pub last_failure: Option<String>,
    pub since_ms: i64,
}

/// Every circuit an isolate knows of: per (channel, upstream model), and
/// per (channel, credential) for the failures that are a credential's own
/// (refused, or its quota exhausted), which take that key out of rotation.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    circuits: HashMap<(String, String), Circuit>,
}

/// The circuit name of a channel's credential `index` (never a model name:
/// those have no NUL).
fn credential_circuit(index: usize) -> String {
    format!("\u{0}key{index}")
}

/// Whether a failure is the credential's own rather than the channel's: it
/// was refused ([`Failure::refuses_credential`]), or its quota is exhausted.
pub fn is_credential_failure(failure: &Failure) -> bool {
    failure.refuses_credential() || matches!(failure, Failure::QuotaExhausted { .. })
}

/// How long a refused credential stays out of rotation before one request
/// tries it again.
pub const REFUSED_CREDENTIAL_MS: u64 = MAX_OPEN_MS;

impl Breakers {
    /// Whether the candidate (`channel`, `model`) may be tried at `now_ms`;
    /// a [`Admission::Probe`] answer makes this request the probe.
    pub fn admit(&mut self, channel: &str, model: &str, now_ms: i64) -> Admission {
        if self.circuits.is_empty() {
            // Nothing has failed: no lookup (and no key to build) per request.
            return Admission::Try;
        }
        let Some(circuit) = self.circuits.get_mut(&(channel.to_string(), model.to_string())) else {
            return Admission::Try;
        };
        match circuit.state {
            CircuitState::Closed => Admission::Try,
            CircuitState::Open { until_ms } if now_ms < until_ms => Admission::Skip,
            CircuitState::HalfOpen { probe_since_ms } if now_ms - probe_since_ms < PROBE_TIMEOUT_MS => {
                Admission::Skip
            }
            CircuitState::Open { .. } | CircuitState::HalfOpen { .. } => {
                circuit.state = CircuitState::HalfOpen { probe_since_ms: now_ms };
                circuit.last_change_ms = now_ms;
                Admission::Probe
            }
        }
    }

    /// Whether the channel's credential `index` may be used now (a
    /// [`Admission::Probe`] makes this request its probe).
    pub fn admit_credential(&mut self, channel: &str, index: usize, now_ms: i64) -> Admission {
        if self.circuits.is_empty() {
            return Admission::Try;
        }
        self.admit(channel, &credential_circuit(index), now_ms)
    }

    /// A request with the channel's credential `index` was served; whether
    /// its circuit was known.
    pub fn record_credential_success(&mut self, channel: &str, index: usize, now_ms: i64) -> bool {
        !self.circuits.is_empty() && self.record_success(channel, &credential_circuit(index), now_ms)
    }

    /// Records one attempt's outcome at `channel` (`failure` `None`:
    /// served) with the model's `circuit` and the `credential` it used.
    /// Whether the outcome is worth sharing with other isolates: every
    /// failure that counts, and a success of a circuit that was known.
    pub fn record_outcome(
        &mut self,
        channel: &str,
        model: &str,
        credential: Option<usize>,
        policy: &BreakerPolicy,
        failure: Option<&Failure>,
        now_ms: i64,
    ) -> bool {
        match (failure, credential) {
            (Some(failure), Some(key)) if is_credential_failure(failure) && policy.failures > 0 => {
                self.record_credential_failure(channel, key, failure, now_ms);
                true
            }
            (Some(failure), _) => {
                self.record_failure(channel, model, failure, policy, now_ms);
                failure.counts_against_channel() && policy.failures > 0
            }
            (None, key) => {
                let model_known = self.record_success(channel, model, now_ms);
                let key_known = key.is_some_and(|key| self.record_credential_success(channel, key, now_ms));
                model_known || key_known
            }
        }
    }

    /// [`Self::admit`] or [`Self::admit_credential`], by id.
    pub fn admit_id(&mut self, channel: &str, circuit: &CircuitId, now_ms: i64) -> Admission {
        match circuit {
            CircuitId::Model(model) => self.admit(channel, model, now_ms),
            CircuitId::Credential(index) => self.admit_credential(channel, *index, now_ms),
        }
    }

    /// Every circuit of `channel`, by name (in no particular order).
    pub fn export(&self, channel: &str) -> Vec<(String, Circuit)> {
        self.circuits
            .iter()
            .filter(|((c, _), _)| c == channel)
            .map(|((_, name), circuit)| (name.clone(), circuit.clone()))
            .collect()
    }

    /// Replaces what is known of `channel`'s circuits with `circuits` (as
    /// [`Self::export`] gave them elsewhere).
    pub fn adopt(&mut self, channel: &str, circuits: Vec<(String, Circuit)>) {
        self.circuits.retain(|(c, _), _| c != channel);
        for (name, circuit) in circuits.into_iter().take(MAX_CIRCUITS) {
            if self.circuits.len() >= MAX_CIRCUITS {
                self.forget_one();
            }
            self.circuits.insert((channel.to_string(), name), circuit);
        }
    }

    /// A check found the channel reachable with its credential `index`
    /// (`None`: it has none): that credential is back in rotation, and every
    /// open model circuit of the channel lets its probe through now instead
    /// of at the end of its cool-down.
    pub fn channel_recovered(&mut self, channel: &str, credential: Option<usize>, now_ms: i64) {
        if let Some(index) = credential {
            self.record_credential_success(channel, index, now_ms);
        }
        for ((c, name), circuit) in &mut self.circuits {
            if c == channel && !name.starts_with('\u{0}') {
                if let CircuitState::Open { until_ms } = &mut circuit.state {
                    *until_ms = (*until_ms).min(now_ms);
                }
            }
        }
    }

    /// The credential was refused or its quota is exhausted: out of
    /// rotation at once, for the upstream's `Retry-After` or
    /// [`REFUSED_CREDENTIAL_MS`].
    pub fn record_credential_failure(&mut self, channel: &str, index: usize, failure: &Failure, now_ms: i64) {
        // Opened at once: a refused key will not work again soon.
        let cool_down = failure.cool_down_ms().unwrap_or(REFUSED_CREDENTIAL_MS);
        let policy = BreakerPolicy { failures: 1, window_ms: 1, open_ms: REFUSED_CREDENTIAL_MS };
        self.record(channel, &credential_circuit(index), failure, Some(cool_down), &policy, now_ms);
    }

    /// The attempt at (`channel`, `model`) was served. Whether the circuit
    /// was known (its record has changed, or may have: worth sharing).
    pub fn record_success(&mut self, channel: &str, model: &str, now_ms: i64) -> bool {
        if self.circuits.is_empty() {
            return false;
        }
        let Some(circuit) = self.circuits.get_mut(&(channel.to_string(), model.to_string())) else {
            return false;
        };
        if circuit.state != CircuitState::Closed {
            circuit.state = CircuitState::Closed;
            circuit.last_change_ms = now_ms;
            circuit.failures.clear();
        }
        true
    }

    /// The attempt at (`channel`, `model`) failed with `failure`.
    pub fn record_failure(
        &mut self,
        channel: &str,
        model: &str,
        failure: &Failure,
        policy: &BreakerPolicy,
        now_ms: i64,
    ) {
        self.record(channel, model, failure, failure.cool_down_ms(), policy, now_ms);
    }

    /// Counts `failure` against the circuit; `cool_down` (ms) opens it at
    /// once for that long instead of counting towards the threshold.
    fn record(
        &mut self,
        channel: &str,
        model: &str,
        failure: &Failure,
        cool_down: Option<u64>,
        policy: &BreakerPolicy,
        now_ms: i64,
    ) {
        if !failure.counts_against_channel() || policy.failures == 0 {
            return;
        }
        if self.circuits.len() >= MAX_CIRCUITS {
            self.forget_one();
        }
        let circuit = self.circuits.entry((channel.to_string(), model.to_string())).or_insert(Circuit {
            state: CircuitState::Closed,
            failures: VecDeque::new(),
            open_ms: policy.open_ms,
            last_failure: None,
            last_change_ms: now_ms,
            window_ms: 0,
        });
        circuit.last_failure = Some(failure.kind().to_string());
        let window = i64::try_from(policy.window_ms).unwrap_or(i64::MAX);
        circuit.window_ms = window;
        let open_for = |circuit: &mut Circuit, ms: u64, now_ms: i64| {
            circuit.state = CircuitState::Open {
                until_ms: now_ms.saturating_add(i64::try_from(ms.min(MAX_OPEN_MS)).unwrap_or(i64::MAX)),
            };
            circuit.last_change_ms = now_ms;
            circuit.failures.clear();
        };
        match circuit.state {
            CircuitState::HalfOpen { .. } => {
                // The probe failed: open again, for longer.
                let ms = cool_down.unwrap_or_else(|| circuit.open_ms.saturating_mul(2).min(MAX_OPEN_MS));
                circuit.open_ms = ms.max(policy.open_ms).min(MAX_OPEN_MS);
                open_for(circuit, ms, now_ms);
            }
            CircuitState::Open { .. } => {}
            CircuitState::Closed => {
                if let Some(ms) = cool_down {
                    open_for(circuit, ms, now_ms);
                    return;
                }
                while circuit.failures.front().is_some_and(|&at| now_ms - at >= window) {
                    circuit.failures.pop_front();
                }
                circuit.failures.push_back(now_ms);
                if circuit.failures.len() >= policy.failures as usize {
                    circuit.open_ms = policy.open_ms;
                    open_for(circuit, policy.open_ms, now_ms);
                }
            }
        }
    }

    /// Forgets the closed circuit that changed longest ago (or any).
    fn forget_one(&mut self) {
        let oldest = self
            .circuits
            .iter()
            .min_by_key(|(_, c)| (c.state != CircuitState::Closed, c.last_change_ms))
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.circuits.remove(&key);
        }
    }

    /// Every circuit that is not closed or has recent failures.
    pub fn view(&self, now_ms: i64) -> Vec<CircuitView> {
        let mut views: Vec<CircuitView> = self
            .circuits
            .iter()
            .map(|((channel, model), c)| CircuitView {
                channel: channel.clone(),
                model: if model.starts_with('\u{0}') { String::new() } else { model.clone() },
                credential: model.strip_prefix("\u{0}key").and_then(|i| i.parse().ok()),
                state: c.state,
                recent_failures: u32::try_from(
                    c.failures.iter().filter(|&&at| now_ms - at < c.window_ms).count(),
                )
                .unwrap_or(u32::MAX),
                last_failure: c.last_failure.clone(),
                since_ms: c.last_change_ms,
            })
            .filter(|v| v.state != CircuitState::Closed || v.recent_failures > 0)
            .collect();
        views.sort_by(|a, b| (&a.channel, &a.model, a.credential).cmp(&(&b.channel, &b.model, b.credential)));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy { failures: 3, window_ms: 10_000, open_ms: 5_000 };
    const SERVER: Failure = Failure::Server { status: 500 };

    #[test]
    fn failures_within_the_window_open_and_the_open_circuit_is_skipped() {
        let mut b = Breakers::default();
        b.record_failure("a", "m", &SERVER, &POLICY, 0);
        b.record_failure("a", "m", &SERVER, &POLICY, 1_000);
        assert_eq!(b.admit("a", "m", 1_500), Admission::Try, "two of three");
        // The first failure leaves the window before the third comes.
        b.record_failure("a", "m", &SERVER, &POLICY, 10_500);
        assert_eq!(b.admit("a", "m", 10_600), Admission::Try);
        b.record_failure("a", "m", &SERVER, &POLICY, 10_700);
        assert_eq!(b.admit("a", "m", 10_800), Admission::Skip, "three within 10 s");
        assert_eq!(b.admit("b", "m", 10_800), Admission::Try, "other channels are untouched");
        assert_eq!(b.admit("a", "other", 10_800), Admission::Try, "and other models of the channel");
        assert_eq!(b.admit("a", "m", 15_699), Admission::Skip);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_outcome_decides() {
        let mut b = Breakers::default();
        for t in 0..3 {
            b.record_failure("a", "m", &SERVER, &POLICY, t);
        }
        assert_eq!(b.admit("a", "m", 5_002), Admission::Probe);
        for t in 5_003..5_100 {
            assert_eq!(b.admit("a", "m", t), Admission::Skip, "one probe at a time");
        }
        // The probe fails: open again for twice as long.
        b.record_failure("a", "m", &SERVER, &POLICY, 5_100);
        assert_eq!(b.admit("a", "m", 15_099), Admission::Skip);
        assert_eq!(b.admit("a", "m", 15_100), Admission::Probe);
        b.record_success("a", "m", 15_200);
        assert_eq!(b.admit("a", "m", 15_201), Admission::Try, "closed by the probe's success");
        assert!(b.view(15_201).is_empty());
    }

    #[test]
    fn a_vanished_probe_is_replaced_and_retry_after_sets_the_cool_down() {
        let mut b = Breakers::default();
        let rate = Failure::RateLimited { retry_after_ms: Some(30_000) };
        b.record_failure("a", "m", &rate, &POLICY, 0);
        assert_eq!(b.admit("a", "m", 29_999), Admission::Skip, "opened at once for the Retry-After");
        assert_eq!(b.admit("a", "m", 30_000), Admission::Probe);
        assert_eq!(b.admit("a", "m", 30_000 + PROBE_TIMEOUT_MS - 1), Admission::Skip);
        assert_eq!(
            b.admit("a", "m", 30_000 + PROBE_TIMEOUT_MS),
            Admission::Probe,
            "the lost probe is replaced"
        );
    }

    #[test]
    fn the_clients_own_faults_never_open_and_a_zero_policy_never_opens() {
        let mut b = Breakers::default();
        for t in 0..50 {
            b.record_failure("a", "m", &Failure::ClientFault { status: 400 }, &POLICY, t);
            b.record_failure("b", "m", &SERVER, &BreakerPolicy { failures: 0, ..POLICY }, t);
        }
        assert_eq!(b.admit("a", "m", 60), Admission::Try);
        assert_eq!(b.admit("b", "m", 60), Admission::Try);
    }

    #[test]
    fn a_refused_credential_is_out_of_rotation_at_once_and_probed_later() {
        let mut b = Breakers::default();
        b.record_credential_failure("a", 1, &Failure::CredentialRefused { status: 401 }, 0);
        assert_eq!(b.admit_credential("a", 1, 1), Admission::Skip);
        assert_eq!(b.admit_credential("a", 0, 1), Admission::Try, "the channel's other keys are untouched");
        assert_eq!(b.admit("a", "m", 1), Admission::Try, "and so are its models");
        let view = b.view(1);
        assert_eq!((view[0].credential, view[0].model.as_str()), (Some(1), ""));
        assert_eq!(view[0].last_failure.as_deref(), Some("credential_refused"));
        assert_eq!(b.admit_credential("a", 1, REFUSED_CREDENTIAL_MS as i64), Admission::Probe);
        b.record_credential_success("a", 1, REFUSED_CREDENTIAL_MS as i64 + 5);
        assert_eq!(b.admit_credential("a", 1, REFUSED_CREDENTIAL_MS as i64 + 6), Admission::Try);
        // An exhausted quota without Retry-After: out for the quota cool-down
        // (capped, so a probe comes every 5 min at most).
        b.record_credential_failure("a", 0, &Failure::QuotaExhausted { retry_after_ms: None }, 0);
        assert_eq!(b.admit_credential("a", 0, MAX_OPEN_MS as i64 - 1), Admission::Skip);
        assert_eq!(b.admit_credential("a", 0, MAX_OPEN_MS as i64), Admission::Probe);
        assert!(is_credential_failure(&Failure::CredentialRefused { status: 403 }));
        assert!(!is_credential_failure(&Failure::Server { status: 500 }));
    }

    #[test]
    fn the_view_names_open_circuits_and_their_last_failure() {
        let mut b = Breakers::default();
        for t in 0..3 {
            b.record_failure("a", "m", &Failure::Connect, &POLICY, t);
        }
        b.record_failure("b", "m", &SERVER, &POLICY, 5);
        let v = b.view(10);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].state, CircuitState::Open { until_ms: 5_002 });
        assert_eq!(v[0].last_failure.as_deref(), Some("connect"));
        assert_eq!((v[1].state, v[1].recent_failures), (CircuitState::Closed, 1));
        let json = serde_json::to_value(&v[0]).unwrap();
        assert_eq!(json["state"], "open");
        assert_eq!(json["until_ms"], 5_002);
    }
}

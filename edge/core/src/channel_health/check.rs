//! Health checks, run by the worker's cron trigger (the JS shell sends the
//! requests [`plan`] lists and hands back what it saw, [`CheckAnswer`]): each
//! enabled channel is sent a tiny request per credential (its provider's models list where it
//! has one, else a one-token completion; [`crate::provider::HealthCheck`]),
//! and the answers land in the channel's shared record
//! ([`super::shared::ChannelBoard`]).
//!
//! - A credential the provider refuses (401/403) leaves rotation, as if
//!   traffic had been refused with it; a channel whose every credential is
//!   refused is disabled (routing skips it) and its view says why.
//! - A channel that answers is let back in: its credential returns to
//!   rotation and its open circuits let their probe through at once.
//! - Other failures (unreachable, 5xx, timeout) are only recorded: traffic
//!   and its breaker decide about those, per model.

use super::breaker::Breakers;
use super::Failure;
use crate::family::Family;
use crate::provider::{provider_by_id, HealthCheck, ProviderDialect};
use crate::routing::RoutingConfig;
use serde::{Deserialize, Serialize};

/// Longest a check waits for its answer's headers, ms.
pub const CHECK_TIMEOUT_MS: u64 = 10_000;

/// One check to send (as JSON, to the shell that sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRequest {
    pub channel: String,
    /// The credential's index in the channel's rotation; `None`: it has none.
    pub credential: Option<usize>,
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Longest wait for the answer's headers.
    pub timeout_ms: u64,
}

/// What the shell saw of one check's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckAnswer {
    pub channel: String,
    #[serde(default)]
    pub credential: Option<usize>,
    /// 0: no answer.
    pub status: u16,
    #[serde(default)]
    pub retry_after: Option<String>,
    /// The start of an error answer's body.
    #[serde(default)]
    pub body: String,
    /// No answer within [`CheckRequest::timeout_ms`].
    #[serde(default)]
    pub timed_out: bool,
    pub latency_ms: u64,
}

/// A round's answers as results, grouped by channel (in first-seen order).
pub fn results_by_channel(answers: &[CheckAnswer], now_ms: i64) -> Vec<(String, Vec<CheckResult>)> {
    let mut out: Vec<(String, Vec<CheckResult>)> = Vec::new();
    for a in answers {
        let result = CheckResult::of_answer(
            a.credential,
            a.status,
            a.retry_after.as_deref(),
            a.body.as_bytes(),
            a.timed_out,
            a.latency_ms,
            now_ms,
        );
        match out.iter_mut().find(|(channel, _)| *channel == a.channel) {
            Some((_, results)) => results.push(result),
            None => out.push((a.channel.clone(), vec![result])),
        }
    }
    out
}

/// One check's result, as the cron hands it to the channel's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
    /// The answer's status; 0 when none came.
    pub status: u16,
    /// `None`: the channel answered 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub latency_ms: u64,
}

/// A check as the record keeps it and the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
    pub status: u16,
    /// `ok`, or the failure's kind ([`Failure::kind`]).
    pub outcome: String,
    pub latency_ms: u64,
    pub at_ms: i64,
}

impl CheckResult {
    /// The result of an answer with `status` (and its `Retry-After` and
    /// body start), or of none (`status` 0, `timed_out`).
    pub fn of_answer(
        credential: Option<usize>,
        status: u16,
        retry_after: Option<&str>,
        body: &[u8],
        timed_out: bool,
        latency_ms: u64,
        now_ms: i64,
    ) -> Self {
        let failure = match status {
            0 if timed_out => Some(Failure::Timeout(super::TimeoutPhase::Headers)),
            0 => Some(Failure::Connect),
            200..=299 => None,
            _ => Some(Failure::from_status(status, retry_after, body, now_ms)),
        };
        Self { credential, status, failure, latency_ms }
    }

    /// Applies the check to the channel's circuits; the record to keep.
    pub(super) fn apply(&self, breakers: &mut Breakers, channel: &str, now_ms: i64) -> CheckRecord {
        match &self.failure {
            None => breakers.channel_recovered(channel, self.credential, now_ms),
            Some(failure) if failure.refuses_credential() => {
                // Index 0 stands for a channel with one credential held in a secret.
                breakers.record_credential_failure(channel, self.credential.unwrap_or(0), failure, now_ms)
            }
            Some(_) => {}
        }
        CheckRecord {
            credential: self.credential,
            status: self.status,
            outcome: self.failure.map_or("ok", |f| f.kind()).to_string(),
            latency_ms: self.latency_ms,
            at_ms: now_ms,
        }
    }
}

/// Why a channel is disabled by its checks (a [`CheckRecord`] list, as
/// JSON): every credential was refused at the last round. `None`: it is not.
pub fn disabled_reason(checks: &serde_json::Value) -> Option<String> {
    let checks = checks.as_array().filter(|c| !c.is_empty())?;
    let refused = checks.iter().all(|c| c["outcome"] == "credential_refused");
    refused.then(|| {
        let statuses: Vec<String> = checks.iter().map(|c| c["status"].to_string()).collect();
        format!("every credential was refused by the provider ({})", statuses.join(", "))
    })
}

/// The checks of a round: one per credential of every enabled channel whose
/// provider can be checked. `secret` reads a worker secret by name (a
/// channel's `api_key_secret`).
pub fn plan(config: &RoutingConfig, secret: &dyn Fn(&str) -> Option<String>) -> Vec<CheckRequest> {
    let mut out = Vec::new();
    for channel in config.channels.iter().filter(|c| c.enabled) {
        let Some(provider) = provider_by_id(&channel.provider) else { continue };
        if provider.health_check == HealthCheck::None || provider.dialect == ProviderDialect::Mock {
            continue;
        }
        let base = channel.base_url.as_deref().unwrap_or(provider.base_url).trim_end_matches('/');
        if base.is_empty() {
            continue;
        }
        // The channel's first model, for a completion check.
        let model = config.models.iter().find_map(|m| {
            m.targets
                .iter()
                .find(|t| t.channel == channel.id)
                .map(|t| t.upstream_model.clone().unwrap_or_else(|| m.name.clone()))
        });
        let (method, path, body) = match (provider.health_check, provider.dialect) {
            (HealthCheck::ModelsList, _) => ("GET", provider.models_path.to_string(), None),
            (_, _) if model.is_none() => continue,
            (_, ProviderDialect::Anthropic) => (
                "POST",
                "/messages".to_string(),
                Some(
                    serde_json::json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}),
                ),
            ),
            (_, ProviderDialect::Gemini) => (
                "POST",
                format!("/models/{}:generateContent", model.as_deref().unwrap_or_default()),
                Some(
                    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "ping"}]}], "generationConfig": {"maxOutputTokens": 1}}),
                ),
            ),
            (_, _) => {
                let mut body =
                    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}]});
                body[provider.output_limit.field(false)] = 1.into();
                ("POST", provider.path(Family::Chat).to_string(), Some(body))
            }
        };
        let inline = channel.credentials();
        let credentials: Vec<(Option<usize>, Option<String>)> = if !inline.is_empty() {
            inline.into_iter().enumerate().map(|(i, key)| (Some(i), Some(key))).collect()
        } else if let Some(name) = &channel.api_key_secret {
            vec![(Some(0), secret(name))]
        } else {
            vec![(None, None)]
        };
        for (credential, key) in credentials {
            let mut headers: Vec<(String, String)> =
                provider.static_headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            if body.is_some() {
                headers.push(("content-type".into(), "application/json".into()));
            }
            headers.extend(key.as_deref().and_then(|key| provider.auth.header(key)));
            out.push(CheckRequest {
                channel: channel.id.clone(),
                credential,
                method,
                url: provider.url(
                    base,
                    &path,
                    // A models list is resource-wide; a completion names its deployment.
                    body.is_some().then_some(model.as_deref()).flatten(),
                    channel.api_version.as_deref(),
                ),
                headers,
                body: body.as_ref().map(|b| b.to_string()),
                timeout_ms: CHECK_TIMEOUT_MS,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_health::breaker::{Admission, BreakerPolicy};
    use crate::channel_health::shared::ChannelBoard;

    fn config(json: serde_json::Value) -> RoutingConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_round_checks_every_credential_of_every_enabled_checkable_channel() {
        let config = config(serde_json::json!({
            "channels": [
                {"id": "oa", "provider": "openai", "api_key": "k0", "api_keys": ["k1"]},
                {"id": "an", "provider": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
                {"id": "px", "provider": "perplexity", "api_key": "p"},
                {"id": "local", "provider": "ollama"},
                {"id": "off", "provider": "openai", "api_key": "x", "enabled": false},
                {"id": "mock", "provider": "mock"},
                {"id": "self", "provider": "openai-compatible", "base_url": "http://10.0.0.2:8000/v1/"},
                {"id": "az", "provider": "azure", "base_url": "https://res.openai.azure.com", "api_key": "a", "api_version": "2025-04-01-preview"},
                {"id": "co", "provider": "cohere", "api_key": "c"},
                {"id": "glm", "provider": "zhipu", "api_key": "z"},
                {"id": "jina", "provider": "jina", "api_key": "j"}
            ],
            "models": [
                {"name": "sonar", "targets": [{"channel": "px", "upstream_model": "sonar-pro"}]},
                {"name": "glm-4.6", "targets": [{"channel": "glm"}]}
            ]
        }));
        let checks = plan(&config, &|name| (name == "ANTHROPIC_KEY").then(|| "sk-ant".to_string()));
        let summary: Vec<(&str, Option<usize>, &str, &str)> =
            checks.iter().map(|c| (c.channel.as_str(), c.credential, c.method, c.url.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("oa", Some(0), "GET", "https://api.openai.com/v1/models"),
                ("oa", Some(1), "GET", "https://api.openai.com/v1/models"),
                ("an", Some(0), "GET", "https://api.anthropic.com/v1/models"),
                ("px", Some(0), "POST", "https://api.perplexity.ai/chat/completions"),
                ("local", None, "GET", "http://127.0.0.1:11434/v1/models"),
                ("self", None, "GET", "http://10.0.0.2:8000/v1/models"),
                (
                    "az",
                    Some(0),
                    "GET",
                    "https://res.openai.azure.com/openai/models?api-version=2025-04-01-preview"
                ),
                ("co", Some(0), "GET", "https://api.cohere.com/v1/models"),
                ("glm", Some(0), "POST", "https://open.bigmodel.cn/api/paas/v4/chat/completions"),
            ]
        );
        assert!(checks[6].headers.contains(&("api-key".into(), "a".into())), "Azure's header");
        assert!(checks[1].headers.contains(&("authorization".into(), "Bearer k1".into())));
        assert!(checks[2].headers.contains(&("x-api-key".into(), "sk-ant".into())));
        assert!(checks[2].headers.contains(&("anthropic-version".into(), "2023-06-01".into())));
        let body: serde_json::Value = serde_json::from_str(checks[3].body.as_deref().unwrap()).unwrap();
        assert_eq!((body["model"].as_str(), body["max_tokens"].as_u64()), (Some("sonar-pro"), Some(1)));
        assert!(checks[4].headers.is_empty(), "no credential, no auth header");
    }

    #[test]
    fn answers_become_results_per_channel() {
        let answers: Vec<CheckAnswer> = serde_json::from_value(serde_json::json!([
            {"channel": "a", "credential": 0, "status": 200, "latency_ms": 5},
            {"channel": "b", "status": 0, "timed_out": true, "latency_ms": 10_000},
            {"channel": "a", "credential": 1, "status": 429, "retry_after": "30",
             "body": "{\"error\":{\"type\":\"insufficient_quota\"}}", "latency_ms": 7}
        ]))
        .unwrap();
        let grouped = results_by_channel(&answers, 0);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].0, "a");
        assert_eq!(grouped[0].1[0].failure, None);
        assert_eq!(grouped[0].1[1].failure, Some(Failure::QuotaExhausted { retry_after_ms: Some(30_000) }));
        assert_eq!(
            grouped[1].1[0].failure,
            Some(Failure::Timeout(crate::channel_health::TimeoutPhase::Headers))
        );
    }

    #[test]
    fn a_refused_credential_leaves_rotation_and_a_good_answer_brings_the_channel_back() {
        let mut board = ChannelBoard::default();
        let refused = |credential| CheckResult::of_answer(Some(credential), 401, None, b"{}", false, 12, 0);
        let fine = |credential| CheckResult::of_answer(Some(credential), 200, None, b"{}", false, 9, 0);
        board.record_checks("a", &[fine(0), refused(1)], 1_000);
        let view = board.view("a", 1_001);
        assert_eq!(view.circuits.len(), 1);
        assert_eq!(view.circuits[0].credential, Some(1));
        assert_eq!(view.checks[1].outcome, "credential_refused");
        assert_eq!(
            disabled_reason(&serde_json::to_value(&view.checks).unwrap()),
            None,
            "one credential still works"
        );
        board.record_checks("a", &[refused(0), refused(1)], 2_000);
        let view = board.view("a", 2_001);
        assert_eq!(
            disabled_reason(&serde_json::to_value(&view.checks).unwrap()).as_deref(),
            Some("every credential was refused by the provider (401, 401)")
        );
        assert_eq!(view.circuits.len(), 2);
        // Recovered: both back in rotation at the next round.
        board.record_checks("a", &[fine(0), fine(1)], 3_000);
        let view = board.view("a", 3_001);
        assert!(view.circuits.is_empty(), "{:?}", view.circuits);
        assert_eq!(disabled_reason(&serde_json::to_value(&view.checks).unwrap()), None);
    }

    #[test]
    fn a_reachable_channel_lets_its_open_circuits_probe_at_once_and_failures_are_only_recorded() {
        let policy = BreakerPolicy { failures: 1, window_ms: 1_000, open_ms: 60_000 };
        let mut breakers = Breakers::default();
        breakers.record_failure("a", "m", &Failure::Server { status: 500 }, &policy, 0);
        let unreachable = CheckResult::of_answer(None, 0, None, b"", false, 3, 10);
        assert_eq!(unreachable.apply(&mut breakers, "a", 10).outcome, "connect");
        assert_eq!(breakers.admit("a", "m", 20), Admission::Skip, "a failed check changes nothing");
        let slow = CheckResult::of_answer(None, 0, None, b"", true, CHECK_TIMEOUT_MS, 10);
        assert_eq!(slow.failure, Some(Failure::Timeout(crate::channel_health::TimeoutPhase::Headers)));
        let fine = CheckResult::of_answer(None, 200, None, b"", false, 5, 30);
        assert_eq!(fine.apply(&mut breakers, "a", 30).outcome, "ok");
        assert_eq!(breakers.admit("a", "m", 31), Admission::Probe, "the cool-down ended with the check");
    }
}

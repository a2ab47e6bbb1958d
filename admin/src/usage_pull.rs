//! The pull consumer (`USAGE_SOURCE=pull`): reads the edge's usage queue over
//! Cloudflare's Queues HTTP pull-consumer API and feeds the same idempotent
//! [`crate::usage::ingest_events`] as the edge's pushes.
//!
//! **Key design decision: commit, then ack.** A pulled batch is inserted in
//! one transaction first and its leases are acknowledged only after the
//! commit. If the process dies in between, the queue offers the messages
//! again after the visibility timeout and the ingest ignores request ids it
//! already holds, so every request is in the ledger exactly once. Messages
//! that cannot be read are handed back for a retry (never acknowledged), so
//! after the queue's `max_retries` they reach its dead-letter queue instead of
//! vanishing.
//!
//! API (`{CF_API_BASE}/accounts/{CF_ACCOUNT_ID}/queues/{CF_QUEUE_ID}/messages`):
//! `POST …/pull` with `{"batch_size", "visibility_timeout_ms"}` returns
//! `{"success", "result": {"messages": [{"id", "body", "attempts",
//! "lease_id", "metadata", "timestamp_ms"}]}}`; `POST …/ack` with
//! `{"acks": [{"lease_id"}], "retries": [{"lease_id", "delay_seconds"}]}`.
//! Both take `Authorization: Bearer {CF_API_TOKEN}`.

use crate::config::PullConfig;
use crate::usage::{check_event, ingest_events, IngestResult};
use crate::AppState;
use base64::Engine;
use edgeway_core::usage::UsageEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Time limit of one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait after consecutive failures.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Why a pull round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("queue API unreachable")]
    Unreachable,
    #[error("queue API answered HTTP {0}")]
    Status(u16),
    #[error("queue API answered something unreadable")]
    Malformed,
    #[error("ledger write failed: {0}")]
    Ledger(String),
}

/// One pulled message.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PulledMessage {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub body: Value,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub lease_id: String,
    #[serde(default)]
    pub metadata: Value,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    result: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
struct PullResult {
    #[serde(default)]
    messages: Vec<PulledMessage>,
}

#[derive(Debug, Serialize)]
struct PullBody {
    batch_size: u32,
    visibility_timeout_ms: u64,
}

#[derive(Debug, Serialize)]
struct Lease<'a> {
    lease_id: &'a str,
}

#[derive(Debug, Serialize)]
struct Retry<'a> {
    lease_id: &'a str,
    delay_seconds: u32,
}

#[derive(Debug, Serialize)]
struct AckBody<'a> {
    acks: Vec<Lease<'a>>,
    retries: Vec<Retry<'a>>,
}

/// The usage event a message carries. Messages the edge sends have the
/// `json` content type, whose body the API returns as JSON text; `text` is
/// the same; `bytes`, and bodies that do not parse as they are, are tried as
/// base64 of JSON. Anything else (a `v8` structured clone) is unreadable here.
pub fn decode_body(message: &PulledMessage) -> Result<UsageEvent, String> {
    let text = match &message.body {
        Value::String(text) => text.clone(),
        Value::Object(_) => {
            return serde_json::from_value(message.body.clone())
                .map_err(|e| format!("not a usage event: {e}"))
        }
        other => return Err(format!("unexpected body type: {other}")),
    };
    let content_type = message
        .metadata
        .get("CF-Content-Type")
        .or_else(|| message.metadata.get("content_type"))
        .and_then(Value::as_str)
        .unwrap_or("json");
    if content_type != "bytes" && content_type != "v8" {
        if let Ok(event) = serde_json::from_str::<UsageEvent>(&text) {
            return Ok(event);
        }
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("body of content type `{content_type}` is neither JSON nor base64"))?;
    serde_json::from_slice::<UsageEvent>(&decoded).map_err(|e| format!("not a usage event: {e}"))
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub pulled: usize,
    pub acked: usize,
    pub retried: usize,
    pub ingest: IngestResult,
}

/// A client of one queue's pull-consumer API.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    http: reqwest::Client,
    config: PullConfig,
}

impl PullConsumer {
    pub fn new(config: PullConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(API_TIMEOUT)
            .connect_timeout(API_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, config })
    }

    fn url(&self, action: &str) -> String {
        format!(
            "{}/accounts/{}/queues/{}/messages/{action}",
            self.config.api_base, self.config.account_id, self.config.queue_id
        )
    }

    async fn post<B: Serialize, R: for<'de> Deserialize<'de> + Default>(
        &self,
        action: &str,
        body: &B,
    ) -> Result<R, PullError> {
        let response = self
            .http
            .post(self.url(action))
            .bearer_auth(&self.config.api_token)
            .json(body)
            .send()
            .await
            .map_err(|_| PullError::Unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(PullError::Status(status.as_u16()));
        }
        let envelope: Envelope<R> = response.json().await.map_err(|_| PullError::Malformed)?;
        if !envelope.success {
            return Err(PullError::Malformed);
        }
        Ok(envelope.result.unwrap_or_default())
    }

    /// Leases up to `batch_size` messages.
    pub async fn pull(&self) -> Result<Vec<PulledMessage>, PullError> {
        let body = PullBody {
            batch_size: self.config.batch_size,
            visibility_timeout_ms: self.config.visibility_timeout_ms,
        };
        let result: PullResult = self.post("pull", &body).await?;
        Ok(result.messages)
    }

    /// Acknowledges `acks` and hands `retries` back with the configured delay.
    pub async fn ack(&self, acks: &[&str], retries: &[&str]) -> Result<(), PullError> {
        if acks.is_empty() && retries.is_empty() {
            return Ok(());
        }
        let body = AckBody {
            acks: acks.iter().map(|lease_id| Lease { lease_id }).collect(),
            retries: retries
                .iter()
                .map(|lease_id| Retry { lease_id, delay_seconds: self.config.retry_delay_secs })
                .collect(),
        };
        let _: Value = self.post("ack", &body).await?;
        Ok(())
    }

    /// One round: pull, insert what is readable in one transaction, then
    /// acknowledge it; unreadable messages (and, if the insert fails, all of
    /// them) go back for a retry.
    pub async fn round(&self, state: &AppState) -> Result<RoundReport, PullError> {
        let messages = self.pull().await?;
        let mut report = RoundReport { pulled: messages.len(), ..RoundReport::default() };
        if messages.is_empty() {
            return Ok(report);
        }
        let mut events = Vec::new();
        let mut good: Vec<&str> = Vec::new();
        let mut bad: Vec<&str> = Vec::new();
        for message in &messages {
            match decode_body(message).and_then(|event| check_event(&event).map(|()| event)) {
                Ok(event) => {
                    events.push(event);
                    good.push(&message.lease_id);
                }
                Err(reason) => {
                    tracing::error!(
                        message_id = %message.id,
                        attempts = message.attempts,
                        %reason,
                        "unreadable usage message handed back (it ends in the dead-letter queue)"
                    );
                    bad.push(&message.lease_id);
                }
            }
        }
        match ingest_events(state, &events).await {
            Ok(ingest) => {
                report.ingest = ingest;
                self.ack(&good, &bad).await?;
                report.acked = good.len();
                report.retried = bad.len();
                Ok(report)
            }
            Err(err) => {
                let all: Vec<&str> = good.iter().chain(bad.iter()).copied().collect();
                // If this fails too, the visibility timeout hands them back anyway.
                let _ = self.ack(&[], &all).await;
                Err(PullError::Ledger(err.to_string()))
            }
        }
    }
}

/// Runs the pull consumer until the process ends: back to back while the
/// queue has messages, `idle_ms` apart when it is empty, backing off (1 s,
/// 2 s, … 30 s) while the API or the database fails.
pub fn spawn(state: AppState, config: PullConfig) -> Result<tokio::task::JoinHandle<()>, reqwest::Error> {
    let idle = Duration::from_millis(config.idle_ms);
    let consumer = PullConsumer::new(config)?;
    Ok(tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            match consumer.round(&state).await {
                Ok(report) => {
                    failures = 0;
                    if report.pulled > 0 {
                        tracing::info!(
                            pulled = report.pulled,
                            inserted = report.ingest.inserted,
                            duplicates = report.ingest.duplicates,
                            retried = report.retried,
                            "usage pulled"
                        );
                    } else {
                        tokio::time::sleep(idle).await;
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << failures.min(5).saturating_sub(1))
                        .min(MAX_FAILURE_BACKOFF);
                    tracing::warn!(%err, retry_in_ms = backoff.as_millis() as u64, "usage pull failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_json() -> Value {
        serde_json::json!({
            "request_id": "req_1", "key_digest": "d", "model": "m", "channel": "c",
            "usage": {"input_uncached": 1}, "cost_micros": 5, "status": 200, "outcome": "completed",
            "usage_source": "provider", "stream": false, "latency_ms": 1, "created_at_ms": 1
        })
    }

    fn message(body: Value, content_type: &str) -> PulledMessage {
        PulledMessage {
            id: "m1".into(),
            body,
            attempts: 1,
            lease_id: "l1".into(),
            metadata: serde_json::json!({ "CF-Content-Type": content_type }),
        }
    }

    #[test]
    fn bodies_decode_in_every_shape_the_api_uses() {
        let text = event_json().to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        for m in [
            message(Value::String(text.clone()), "json"),
            message(Value::String(text.clone()), "text"),
            message(Value::String(b64.clone()), "bytes"),
            message(Value::String(b64), "json"),
            message(event_json(), "json"),
        ] {
            assert_eq!(decode_body(&m).unwrap().request_id, "req_1", "{m:?}");
        }
        assert!(decode_body(&message(Value::String("not json".into()), "json")).is_err());
        assert!(decode_body(&message(Value::String("{}".into()), "json")).is_err());
        assert!(decode_body(&message(Value::Null, "json")).is_err());
        assert!(decode_body(&message(serde_json::json!(5), "json")).is_err());
    }
}

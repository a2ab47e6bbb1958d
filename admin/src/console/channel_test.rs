//! The channel test button: `POST /api/channels/{id}/test` sends a tiny chat
//! request (`"ping"`, one output token) through the edge, pinned to that
//! channel with a signed pin (`edgeway_core::pin`: HMAC over the channel,
//! the time and the body's digest with `EDGE_ADMIN_SECRET`), and answers the
//! status, the latency seen from here and the channel that served.
//!
//! A pinned request tries only that channel (no failover; its breaker,
//! enabled flag and groups are ignored), so a disabled channel can be tested
//! before it is enabled. The request is made with a key this service issues
//! to itself once per process (`console channel test`, no user, owner
//! `console`); it is billed like any request, so tests show in the logs.

use crate::config::EdgeTarget;
use crate::db::routing::load_routing_config_consistent;
use crate::error::{ApiError, ApiResult};
use crate::extract::PathParam;
use crate::keys::{build_key, issue, CreateKey};
use crate::{now_secs, AppState};
use axum::extract::State;
use axum::Json;
use edgeway_core::pin::{
    sign_pin, PIN_CHANNEL_HEADER, PIN_SIGNATURE_HEADER, PIN_TIMESTAMP_HEADER, SERVED_CHANNEL_HEADER,
};
use serde::Serialize;

/// Name of the key the channel test uses.
pub const TEST_KEY_NAME: &str = "console channel test";

/// The console's per-process state.
#[derive(Default)]
pub struct ConsoleState {
    /// Where the edge is and its secret (`EDGE_URL`, `EDGE_ADMIN_SECRET`).
    pub edge: Option<EdgeTarget>,
    /// The test key, once issued (plaintext exists only in this process).
    pub test_key: tokio::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState").field("edge", &self.edge).field("test_key", &"<redacted>").finish()
    }
}

/// What a test found.
#[derive(Debug, Serialize)]
pub struct TestResult {
    pub channel: String,
    /// The public model name the test asked for.
    pub model: String,
    /// Whether the edge answered 2xx.
    pub ok: bool,
    /// The edge's HTTP status.
    pub status: u16,
    /// From sending the request to the end of the response body, ms.
    pub latency_ms: u64,
    /// The edge's `x-edgeway-channel` (the channel that served or last failed).
    pub served_channel: Option<String>,
    /// The edge's error message (never a provider's body), or the first
    /// characters of the reply.
    pub message: String,
}

/// The test request's body.
pub fn test_body(model: &str) -> Vec<u8> {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
        "stream": false,
    })
    .to_string()
    .into_bytes()
}

async fn test_key(state: &AppState) -> ApiResult<String> {
    let mut slot = state.console().test_key.lock().await;
    if let Some(key) = slot.as_ref() {
        return Ok(key.clone());
    }
    let body =
        CreateKey { name: TEST_KEY_NAME.into(), owner: Some("console".into()), ..CreateKey::default() };
    let (key, stored) = build_key(body, None)?;
    let created = issue(state, key, stored).await?;
    if !created.edge_synced {
        return Err(ApiError::EdgeSyncFailed("the edge did not take the test key; is it reachable?".into()));
    }
    *slot = Some(created.key.clone());
    Ok(created.key)
}

/// The message of an edge answer: its error message, or the reply's start.
pub fn summarize(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = value["error"]["message"]
        .as_str()
        .or_else(|| value["choices"][0]["message"]["content"].as_str())
        .unwrap_or("");
    text.chars().take(300).collect()
}

/// `POST /api/channels/{id}/test`.
pub async fn test_channel(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<TestResult>> {
    let config = load_routing_config_consistent(state.db()).await?;
    if !config.channels.iter().any(|c| c.id == id) {
        return Err(ApiError::NotFound(format!("no channel with id `{id}`")));
    }
    let model = config
        .models
        .iter()
        .find(|m| m.targets.iter().any(|t| t.channel == id))
        .map(|m| m.name.clone())
        .ok_or_else(|| ApiError::bad_request(format!("channel `{id}` serves no model to test")))?;
    let edge = state.console().edge.clone().ok_or_else(|| {
        ApiError::NotConfigured("EDGE_URL is not set: there is no edge to test through".into())
    })?;
    let key = test_key(&state).await?;
    let body = test_body(&model);
    let timestamp = now_secs();
    let signature = sign_pin(&edge.secret, &id, timestamp, &body);
    let started = std::time::Instant::now();
    let sent = state
        .http()
        .post(format!("{}/v1/chat/completions", edge.url.trim_end_matches('/')))
        .bearer_auth(&key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(PIN_CHANNEL_HEADER, &id)
        .header(PIN_TIMESTAMP_HEADER, timestamp.to_string())
        .header(PIN_SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(channel = %id, error = %err, "channel test: edge unreachable");
            return Err(ApiError::EdgeSyncFailed("the edge is unreachable".into()));
        }
    };
    let status = response.status().as_u16();
    let served_channel =
        response.headers().get(SERVED_CHANNEL_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = response.bytes().await.unwrap_or_default();
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let message = summarize(&bytes);
    tracing::info!(channel = %id, status, latency_ms, "channel tested");
    Ok(Json(TestResult {
        channel: id,
        model,
        ok: (200..300).contains(&status),
        status,
        latency_ms,
        served_channel,
        message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_take_the_error_or_the_reply() {
        assert_eq!(summarize(br#"{"error":{"message":"no such model"}}"#), "no such model");
        assert_eq!(summarize(br#"{"choices":[{"message":{"content":"pong"}}]}"#), "pong");
        assert_eq!(summarize(b"not json"), "");
        assert_eq!(
            summarize(format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(500)).as_bytes()).len(),
            300
        );
    }

    #[test]
    fn the_test_body_is_tiny() {
        let body: serde_json::Value = serde_json::from_slice(&test_body("m")).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["max_tokens"], 1);
    }
}

//! The OpenAI Chat Completions relay: request preparation and the stream tap.
//!
//! For an OpenAI-compatible upstream the gateway does not rebuild the request
//! or the response; it changes only what it must:
//! * the request's `model` becomes the channel's upstream model, and a stream
//!   always asks for usage (`stream_options.include_usage`), because provider
//!   usage is what gets billed;
//! * the response stream passes event by event through [`ChatStreamTap`], which
//!   reads usage, finish reasons and content size without re-serializing the
//!   chunks, drops the usage-only chunk when the client did not ask for it,
//!   replaces upstream error payloads with redacted ones, and guarantees the
//!   client a well-formed end.

use crate::error::{redact_secrets, GatewayError};
use crate::limits::MAX_SSE_LINE_BYTES;
use crate::sse::{encode_event, SseDecoder, SseEvent};
use crate::usage::{estimate_tokens, OpenAiUsage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Body fields a client may never set: they would let a caller choose where
/// the gateway sends its provider credentials (LiteLLM CVE-2024-6587).
pub const FORBIDDEN_CLIENT_FIELDS: &[&str] =
    &["api_base", "base_url", "api_key", "custom_llm_provider", "azure_endpoint"];

/// A validated chat completion request.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    /// Public model name the client asked for.
    pub model: String,
    pub stream: bool,
    /// The client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// `max_completion_tokens` or `max_tokens`, when given.
    pub max_output_tokens: Option<u64>,
    /// Bytes of message content: the basis of a prompt estimate.
    pub prompt_bytes: usize,
    body: Map<String, Value>,
}

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::InvalidRequest { message: message.into(), param: Some(param.to_string()) }
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn parse_chat_request(body: &[u8]) -> Result<PreparedChat, GatewayError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson { detail: e.to_string() })?;
    let Value::Object(mut body) = value else {
        return Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    };
    if let Some(field) = FORBIDDEN_CLIENT_FIELDS.iter().find(|f| body.contains_key(**f)) {
        return Err(invalid(
            format!("`{field}` cannot be set by clients; upstreams are chosen by the gateway."),
            field,
        ));
    }
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(_) => return Err(invalid("`model` must be a non-empty string.", "model")),
        None => return Err(invalid("You must provide a model parameter.", "model")),
    };
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid("`messages` must contain at least one message.", "messages"))
        }
        Some(_) => return Err(invalid("`messages` must be an array.", "messages")),
        None => return Err(invalid("Missing required parameter: 'messages'.", "messages")),
    };
    let mut prompt_bytes = 0usize;
    for (i, message) in messages.iter().enumerate() {
        let Some(obj) = message.as_object() else {
            return Err(invalid(format!("`messages[{i}]` must be an object."), "messages"));
        };
        if !obj.get("role").is_some_and(Value::is_string) {
            return Err(invalid(
                format!("`messages[{i}].role` is required and must be a string."),
                "messages",
            ));
        }
        prompt_bytes += obj.get("content").map_or(0, content_bytes);
    }
    // Media URLs pass the one URL policy and are forwarded normalized.
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        crate::url_policy::check_openai_chat_media(messages)?;
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("`stream` must be a boolean.", "stream")),
    };
    let client_wants_usage = stream
        && body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool)
            == Some(true);
    let max_output_tokens = ["max_completion_tokens", "max_tokens"].iter().find_map(|f| match body.get(*f) {
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    });
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = body.get(field) {
            if !(v.is_null() || v.as_u64().is_some()) {
                return Err(invalid(format!("`{field}` must be a non-negative integer."), field));
            }
        }
    }
    if let Some(tools) = body.get("tools") {
        prompt_bytes += tools.to_string().len();
    }
    Ok(PreparedChat { model, stream, client_wants_usage, max_output_tokens, prompt_bytes, body })
}

fn content_bytes(content: &Value) -> usize {
    match content {
        Value::String(s) => s.len(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(t)) => t.len(),
                // images and audio: a flat allowance rather than their base64 size
                _ => 1024,
            })
            .sum(),
        _ => 0,
    }
}

impl PreparedChat {
    /// The body sent upstream: `model` rewritten, usage always requested on
    /// streams when the provider understands it.
    pub fn upstream_body(&self, upstream_model: &str, stream_usage_option: bool) -> Vec<u8> {
        let mut body = self.body.clone();
        body.insert("model".into(), Value::String(upstream_model.to_string()));
        if self.stream && stream_usage_option {
            let mut options = match body.remove("stream_options") {
                Some(Value::Object(o)) => o,
                _ => Map::new(),
            };
            options.insert("include_usage".into(), Value::Bool(true));
            body.insert("stream_options".into(), Value::Object(options));
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }

    /// Sets `max_tokens` when the client set no output limit, so that a
    /// quota reservation based on `limit` really bounds the cost.
    pub fn cap_output_tokens(&mut self, limit: u64) {
        if self.max_output_tokens.is_none() {
            self.body.insert("max_tokens".into(), Value::from(limit));
            self.max_output_tokens = Some(limit);
        }
    }

    /// The request body as JSON (for the built-in mock).
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// Prompt tokens estimated from the request.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        estimate_tokens(self.prompt_bytes)
    }
}

/// What a finished (or abandoned) stream reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Last usage object the upstream sent.
    pub usage: Option<OpenAiUsage>,
    /// Some choice carried a `finish_reason`.
    pub saw_finish: bool,
    /// Upstream sent `[DONE]`.
    pub saw_done: bool,
    /// Upstream sent an error payload in the stream.
    pub saw_error: bool,
    /// Bytes of content and tool-call arguments forwarded (for estimates).
    pub content_bytes: usize,
    /// A content or tool-call delta has been forwarded.
    pub first_content_sent: bool,
}

impl StreamSummary {
    /// The stream ended as a success.
    pub fn completed(&self) -> bool {
        (self.saw_finish || self.saw_done) && !self.saw_error
    }
}

#[derive(Deserialize)]
struct ChunkProbe<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaProbe<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaProbe<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallProbe<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallProbe<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionProbe<'a>>,
}

#[derive(Deserialize)]
struct FunctionProbe<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// Passes an upstream OpenAI SSE stream to the client, event by event.
#[derive(Debug)]
pub struct ChatStreamTap {
    decoder: SseDecoder,
    strip_usage_chunk: bool,
    secrets: Vec<String>,
    summary: StreamSummary,
    events: Vec<SseEvent>,
    ended: bool,
}

impl ChatStreamTap {
    /// `client_wants_usage`: keep the usage-only chunk. `secrets`: strings to
    /// redact from any upstream error payload (the channel credential).
    pub fn new(client_wants_usage: bool, secrets: Vec<String>) -> Self {
        Self {
            decoder: SseDecoder::new(MAX_SSE_LINE_BYTES),
            strip_usage_chunk: !client_wants_usage,
            secrets,
            summary: StreamSummary::default(),
            events: Vec::new(),
            ended: false,
        }
    }

    /// Feeds upstream bytes; returns the bytes to send to the client now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 16);
        if self.ended {
            return out;
        }
        if self.decoder.feed(chunk, &mut self.events).is_err() {
            self.fail(&mut out, "The upstream stream sent an oversized line.");
            return out;
        }
        self.forward_events(&mut out);
        out
    }

    /// The upstream closed: returns the bytes that end the client stream well.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.decoder.finish(&mut self.events);
        self.forward_events(&mut out);
        if self.ended {
            return out;
        }
        if self.summary.saw_finish {
            encode_event(&mut out, None, "[DONE]");
            self.ended = true;
        } else {
            self.fail(&mut out, "The upstream stream ended before the response was complete.");
        }
        out
    }

    /// What has been seen so far.
    pub fn summary(&self) -> &StreamSummary {
        &self.summary
    }

    /// The client stream has been ended (by `[DONE]` or an error event).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        let payload = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_stream_error"}});
        encode_event(out, None, &payload.to_string());
        self.summary.saw_error = true;
        self.ended = true;
    }

    fn forward_events(&mut self, out: &mut Vec<u8>) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if self.ended {
                break;
            }
            self.forward_event(event, out);
        }
        self.events = events;
        self.events.clear();
    }

    fn forward_event(&mut self, event: &SseEvent, out: &mut Vec<u8>) {
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.summary.saw_done = true;
            self.ended = true;
            encode_event(out, None, "[DONE]");
            return;
        }
        let Ok(probe) = serde_json::from_str::<ChunkProbe<'_>>(data) else {
            // Not JSON: pass nothing of it on.
            return;
        };
        if let Some(error) = probe.error {
            let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
            let raw = error.get("message").and_then(Value::as_str).unwrap_or("upstream error");
            let message = redact_secrets(raw, &secrets);
            let payload = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_stream_error"}});
            encode_event(out, None, &payload.to_string());
            self.summary.saw_error = true;
            self.ended = true;
            return;
        }
        if let Some(usage) = probe.usage {
            self.summary.usage = Some(usage);
        }
        let choices = probe.choices.unwrap_or_default();
        for choice in &choices {
            if choice.finish_reason.is_some() {
                self.summary.saw_finish = true;
            }
            if let Some(delta) = &choice.delta {
                let mut bytes = delta.content.as_deref().map_or(0, str::len)
                    + delta.reasoning_content.as_deref().map_or(0, str::len);
                for call in delta.tool_calls.iter().flatten() {
                    if let Some(f) = &call.function {
                        bytes += f.name.as_deref().map_or(0, str::len)
                            + f.arguments.as_deref().map_or(0, str::len);
                    }
                }
                if bytes > 0 {
                    self.summary.content_bytes += bytes;
                    self.summary.first_content_sent = true;
                }
            }
        }
        let usage_only = choices.is_empty() && self.summary.usage.is_some();
        if usage_only && self.strip_usage_chunk {
            return;
        }
        encode_event(out, None, data);
    }
}

/// Usage from a non-streaming chat completion body.
pub fn response_usage(body: &[u8]) -> Option<OpenAiUsage> {
    #[derive(Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<OpenAiUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body).ok().and_then(|u| u.usage)
}

/// Bytes of assistant content in a non-streaming body (for estimates).
pub fn response_content_bytes(body: &[u8]) -> usize {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return 0 };
    value
        .get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .iter()
                .filter_map(|c| c.get("message"))
                .map(|m| {
                    m.get("content").and_then(Value::as_str).map_or(0, str::len)
                        + m.get("tool_calls").map_or(0, |t| t.to_string().len())
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseDecoder;

    fn parse(s: &str) -> Result<PreparedChat, GatewayError> {
        parse_chat_request(s.as_bytes())
    }

    #[test]
    fn validation_errors_are_specific() {
        assert!(matches!(parse("{nope"), Err(GatewayError::InvalidJson { .. })));
        assert!(matches!(parse("[]"), Err(GatewayError::InvalidRequest { .. })));
        let err = parse(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap_err();
        assert_eq!(err.to_json(crate::error::Dialect::OpenAi)["error"]["param"], "model");
        let err = parse(r#"{"model":"m"}"#).unwrap_err();
        assert!(err.message().contains("messages"));
        assert!(parse(r#"{"model":"m","messages":[]}"#).is_err());
        assert!(parse(r#"{"model":"m","messages":[{"content":"x"}]}"#).is_err());
        assert!(parse(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).is_err());
        assert!(parse(r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#).is_err());
        let err =
            parse(r#"{"model":"m","messages":[{"role":"user"}],"api_base":"http://evil"}"#).unwrap_err();
        assert!(err.message().contains("api_base"));
    }

    #[test]
    fn deep_nesting_is_a_clean_400() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = format!(r#"{{"model":"m","messages":{deep}}}"#);
        assert!(matches!(parse(&body), Err(GatewayError::InvalidJson { .. })));
    }

    #[test]
    fn upstream_body_rewrites_model_and_forces_usage() {
        let p = parse(r#"{"model":"alias","messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"x":1}}"#).unwrap();
        assert!(p.stream);
        assert!(!p.client_wants_usage);
        let up: Value = serde_json::from_slice(&p.upstream_body("real-model", true)).unwrap();
        assert_eq!(up["model"], "real-model");
        assert_eq!(up["stream_options"]["include_usage"], true);
        assert_eq!(up["stream_options"]["x"], 1);
        let up: Value = serde_json::from_slice(&p.upstream_body("real-model", false)).unwrap();
        assert_eq!(up["stream_options"].get("include_usage"), None);
        let p = parse(r#"{"model":"alias","messages":[{"role":"user","content":"hello"}],"max_tokens":7}"#)
            .unwrap();
        let up: Value = serde_json::from_slice(&p.upstream_body("real", true)).unwrap();
        assert!(up.get("stream_options").is_none(), "non-stream requests are not given stream_options");
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.prompt_bytes, 5);
    }

    #[test]
    fn output_cap_applies_only_when_the_client_set_none() {
        let mut p = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        p.cap_output_tokens(100);
        assert_eq!(p.max_output_tokens, Some(100));
        let up: Value = serde_json::from_slice(&p.upstream_body("m", true)).unwrap();
        assert_eq!(up["max_tokens"], 100);
        let mut p =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":7}"#)
                .unwrap();
        p.cap_output_tokens(100);
        assert_eq!(p.max_output_tokens, Some(7));
        let up: Value = serde_json::from_slice(&p.upstream_body("m", true)).unwrap();
        assert!(up.get("max_tokens").is_none());
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(tap: &mut ChatStreamTap, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(tap.feed(c));
        }
        out.extend(tap.finish());
        out
    }

    fn data_lines(bytes: &[u8]) -> Vec<String> {
        let mut d = SseDecoder::new(1 << 20);
        let mut ev = Vec::new();
        d.feed(bytes, &mut ev).unwrap();
        d.finish(&mut ev);
        ev.into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn usage_chunk_stripped_unless_asked_and_usage_always_read() {
        let mut tap = ChatStreamTap::new(false, vec![]);
        let out = data_lines(&run(&mut tap, &[STREAM.as_bytes()]));
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|d| !d.contains("\"choices\":[]")));
        assert_eq!(out.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(tap.summary().usage.as_ref().map(|u| u.total_tokens), Some(11));
        assert_eq!(tap.summary().content_bytes, 5);
        assert!(tap.summary().completed());

        let mut tap = ChatStreamTap::new(true, vec![]);
        let out = data_lines(&run(&mut tap, &[STREAM.as_bytes()]));
        assert_eq!(out.len(), 5);
        assert!(out[3].contains("\"usage\":{\"prompt_tokens\":9"));
    }

    #[test]
    fn output_is_identical_for_every_split() {
        let bytes = STREAM.as_bytes();
        let whole = run(&mut ChatStreamTap::new(false, vec![]), &[bytes]);
        for i in 0..=bytes.len() {
            let mut tap = ChatStreamTap::new(false, vec![]);
            assert_eq!(run(&mut tap, &[&bytes[..i], &bytes[i..]]), whole, "split at {i}");
            assert_eq!(tap.summary().usage.as_ref().map(|u| u.prompt_tokens), Some(9));
        }
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_event() {
        let cut = &STREAM[..STREAM.find("Hel").unwrap() + 10];
        let mut tap = ChatStreamTap::new(false, vec![]);
        let out = data_lines(&run(&mut tap, &[cut.as_bytes()]));
        assert!(out.last().unwrap().contains("\"error\""));
        assert!(!tap.summary().completed());
        assert!(tap.summary().usage.is_none());
    }

    #[test]
    fn finish_without_done_gets_a_done() {
        let no_done = STREAM.replace("data: [DONE]\n\n", "");
        let mut tap = ChatStreamTap::new(false, vec![]);
        let out = data_lines(&run(&mut tap, &[no_done.as_bytes()]));
        assert_eq!(out.last().map(String::as_str), Some("[DONE]"));
        assert!(tap.summary().completed());
    }

    #[test]
    fn upstream_error_payloads_are_redacted() {
        let s = "data: {\"error\":{\"message\":\"invalid key canary-provider-key-123\"}}\n\n";
        let mut tap = ChatStreamTap::new(false, vec!["canary-provider-key-123".into()]);
        let out = String::from_utf8(run(&mut tap, &[s.as_bytes()])).unwrap();
        assert!(!out.contains("canary-provider-key-123"), "{out}");
        assert!(out.contains("[redacted]"));
        assert!(tap.summary().saw_error);
    }

    #[test]
    fn tool_call_fragments_count_as_content() {
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n";
        let mut tap = ChatStreamTap::new(false, vec![]);
        let _ = tap.feed(s.as_bytes());
        assert!(tap.summary().first_content_sent);
        assert_eq!(tap.summary().content_bytes, 3 + 4);
    }

    #[test]
    fn non_stream_usage_and_content() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"abcd"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        assert_eq!(response_usage(body).map(|u| u.prompt_tokens), Some(3));
        assert_eq!(response_content_bytes(body), 4);
        assert!(response_usage(b"{}").is_none());
    }
}

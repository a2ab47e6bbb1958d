//! The OpenAI Chat Completions relay, response side: the stream tap and the
//! usage of a whole answer. (The request side, validated by the OpenAI
//! translator's parser in its passthrough mode, is
//! [`crate::pipeline::inbound`].)
//!
//! For an OpenAI-compatible upstream the gateway does not rebuild the
//! response; it changes only what it must:
//! * the response stream passes event by event through [`ChatStreamTap`], which
//!   reads usage, finish reasons and content size without re-serializing the
//!   chunks, drops the usage-only chunk when the client did not ask for it,
//!   replaces upstream error payloads with redacted ones, and guarantees the
//!   client a well-formed end;
//! * every chunk, and a whole answer, names the public model the client
//!   asked for, not the upstream's name for it ([`replace_model_name`]); a
//!   chunk that already does is passed on as it came;
//! * a client that asked for the usage chunk gets one even when the upstream
//!   sends none (llama.cpp, some vLLM builds): the gateway's estimate, the
//!   figures that are billed, marked `"estimated": true`, just before
//!   `[DONE]` ([`ChatStreamTap::estimating`]).

use crate::error::{redact_secrets, GatewayError};
use crate::limits::MAX_SSE_LINE_BYTES;
use crate::sse::{encode_event, SseDecoder, SseEvent};
use crate::usage::{estimated_usage, OpenAiUsage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

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
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<i64>,
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
    /// Legacy text completions (`/v1/completions`) stream `text`, not a delta.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    /// Moonshot's stream reports usage in its last chunk's choice.
    #[serde(default)]
    usage: Option<OpenAiUsage>,
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
    /// The model name every chunk must show.
    public_model: Option<String>,
    /// Prompt estimate for a usage chunk the upstream did not send.
    prompt_estimate: Option<u64>,
    /// `id`, `model`, `created` of the upstream's first chunk, for that chunk.
    first_chunk: Option<(String, String, i64)>,
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
            public_model: None,
            prompt_estimate: None,
            first_chunk: None,
        }
    }

    /// Every chunk forwarded names `model` (the public name).
    pub fn with_public_model(mut self, model: &str) -> Self {
        self.public_model = Some(model.to_string());
        self
    }

    /// When the client asked for the usage chunk and the upstream sends
    /// none, send the gateway's estimate instead
    /// ([`crate::usage::estimated_usage`] of `prompt_estimate` and the content
    /// forwarded: the figures that are billed), marked `"estimated": true`.
    pub fn estimating(mut self, prompt_estimate: u64) -> Self {
        self.prompt_estimate = Some(prompt_estimate);
        self
    }

    /// The estimated usage chunk, when one is owed.
    fn estimated_usage_chunk(&self, out: &mut Vec<u8>) {
        let Some(prompt) = self.prompt_estimate else { return };
        if self.strip_usage_chunk || self.summary.usage.is_some() {
            return;
        }
        let usage = estimated_usage(prompt, self.summary.content_bytes);
        let (id, upstream_model, created) = self.first_chunk.clone().unwrap_or_default();
        let model = self.public_model.clone().unwrap_or(upstream_model);
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [],
            "usage": crate::translate::mark_estimated(serde_json::to_value(usage.to_openai()).unwrap_or_default()),
        });
        encode_event(out, None, &chunk.to_string());
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
            self.estimated_usage_chunk(&mut out);
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

    /// Ends the client stream with `error` (nothing follows).
    pub fn abort(&mut self, error: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let mut payload = error.to_json(crate::error::Dialect::OpenAi);
        if let Some(e) = payload.get_mut("error") {
            e["code"] = json!("upstream_stream_error");
        }
        encode_event(&mut out, None, &payload.to_string());
        self.summary.saw_error = true;
        self.ended = true;
        out
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
            self.estimated_usage_chunk(out);
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
        let top_level_usage = probe.usage.is_some();
        if let Some(usage) = probe.usage {
            self.summary.usage = Some(usage);
        }
        if self.first_chunk.is_none() {
            if let Some(id) = &probe.id {
                let model = probe.model.as_deref().unwrap_or_default().to_string();
                self.first_chunk = Some((id.to_string(), model, probe.created.unwrap_or(0)));
            }
        }
        let choices = probe.choices.unwrap_or_default();
        if !top_level_usage {
            if let Some(usage) = choices.iter().find_map(|c| c.usage.clone()) {
                self.summary.usage = Some(usage);
            }
        }
        for choice in &choices {
            if choice.finish_reason.is_some() {
                self.summary.saw_finish = true;
            }
            let text = choice.text.as_deref().map_or(0, str::len);
            if text > 0 {
                self.summary.content_bytes += text;
                self.summary.first_content_sent = true;
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
        if let (Some(public), Some(shown)) = (&self.public_model, &probe.model) {
            if shown != public {
                if let Some(renamed) = replace_model_name(data, public) {
                    encode_event(out, None, &renamed);
                    return;
                }
            }
        }
        encode_event(out, None, data);
    }
}

/// `json` (an object) with its top-level `"model"` string set to `model`;
/// `None` when it has no such member or already shows that name. Only the
/// object's own member is touched (a scan that skips strings and nested
/// values), the rest of the text is kept byte for byte.
pub fn replace_model_name(json: &str, model: &str) -> Option<String> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let mut key_start: Option<usize> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i = string_end(bytes, i)?;
                // A string at depth 1 followed by `:` is a member name.
                if depth == 1 && &json[start..i] == "\"model\"" {
                    key_start = Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
        if let Some(after_key) = key_start.take() {
            let rest = json[after_key..].trim_start();
            let Some(rest) = rest.strip_prefix(':') else { continue };
            let value_at = json.len() - rest.trim_start().len();
            if bytes.get(value_at) != Some(&b'"') {
                return None;
            }
            let value_end = string_end(bytes, value_at)?;
            let wanted = serde_json::to_string(model).ok()?;
            if json[value_at..value_end] == wanted {
                return None;
            }
            let mut out = String::with_capacity(json.len() + wanted.len());
            out.push_str(&json[..value_at]);
            out.push_str(&wanted);
            out.push_str(&json[value_end..]);
            return Some(out);
        }
    }
    None
}

/// The index just past the JSON string starting at `start` (a `"`).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
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

/// Bytes of assistant content in a non-streaming body (for estimates): chat
/// messages and tool calls, or legacy completions' `text`. (The body is read
/// whole: not for embeddings lists, which carry no output.)
pub fn response_content_bytes(body: &[u8]) -> usize {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return 0 };
    value
        .get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .iter()
                .map(|c| {
                    c.get("text").and_then(Value::as_str).map_or(0, str::len)
                        + c.get("message").map_or(0, |m| {
                            m.get("content").and_then(Value::as_str).map_or(0, str::len)
                                + m.get("tool_calls").map_or(0, |t| t.to_string().len())
                        })
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseDecoder;

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
    fn usage_in_the_last_chunks_choice_is_read_as_moonshot_sends_it() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",",
            "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1,\"total_tokens\":9}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = ChatStreamTap::new(true, vec![]);
        let out = data_lines(&run(&mut tap, &[stream.as_bytes()]));
        assert_eq!(
            tap.summary().usage.as_ref().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((8, 1))
        );
        assert_eq!(out.len(), 3, "no estimated usage chunk added: the upstream's was read");
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
    fn a_client_that_asked_for_usage_gets_the_estimate_when_the_upstream_sends_none() {
        let no_usage = STREAM.replace(
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
            "",
        );
        for ending in [no_usage.clone(), no_usage.replace("data: [DONE]\n\n", "")] {
            let mut tap = ChatStreamTap::new(true, vec![]).estimating(40);
            let out = data_lines(&run(&mut tap, &[ending.as_bytes()]));
            let usage: Value = serde_json::from_str(&out[out.len() - 2]).unwrap_or_default();
            assert_eq!(usage["id"], "c1");
            assert_eq!(usage["choices"], json!([]));
            // 5 bytes of content forwarded: 2 tokens; the prompt estimate as given
            assert_eq!(usage["usage"]["prompt_tokens"], 40);
            assert_eq!(usage["usage"]["completion_tokens"], 2);
            assert_eq!(usage["usage"]["estimated"], true);
            assert_eq!(out.last().map(String::as_str), Some("[DONE]"));
            assert!(tap.summary().usage.is_none(), "what was reported stays none: the meter estimates");
        }
        // reported usage is passed on, never replaced; a client that did not ask gets none
        let mut tap = ChatStreamTap::new(true, vec![]).estimating(40);
        let out = String::from_utf8(run(&mut tap, &[STREAM.as_bytes()])).unwrap_or_default();
        assert!(!out.contains("estimated") && out.contains("\"prompt_tokens\":9"));
        let mut tap = ChatStreamTap::new(false, vec![]).estimating(40);
        let out = String::from_utf8(run(&mut tap, &[no_usage.as_bytes()])).unwrap_or_default();
        assert!(!out.contains("usage\":{"), "{out}");
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
    fn chunks_and_answers_name_the_public_model() {
        let s = "data: {\"id\":\"c\",\"model\":\"up-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"model\\\": \\\"x\\\"\"}}]}\n\n";
        let mut tap = ChatStreamTap::new(false, vec![]).with_public_model("h-fo");
        let out = String::from_utf8(tap.feed(s.as_bytes())).unwrap();
        let v: Value = serde_json::from_str(out.trim().trim_start_matches("data: ")).unwrap();
        assert_eq!(v["model"], "h-fo");
        assert_eq!(v["choices"][0]["delta"]["content"], "\"model\": \"x\"", "content untouched");
        let same = s.replace("up-chat", "h-fo");
        let mut tap = ChatStreamTap::new(false, vec![]).with_public_model("h-fo");
        assert_eq!(tap.feed(same.as_bytes()), same.as_bytes(), "already public: unchanged bytes");

        let body = r#"{"id":"x","object":"chat.completion","model" : "gpt-4o-2024-08-06","choices":[{"message":{"content":"{\"model\":\"no\"}","tool_calls":[{"function":{"arguments":"{}"}}]}}],"meta":{"model":"deep"}}"#;
        let renamed = replace_model_name(body, "gpt-4o").unwrap();
        let v: Value = serde_json::from_str(&renamed).unwrap();
        assert_eq!((v["model"].as_str(), v["meta"]["model"].as_str()), (Some("gpt-4o"), Some("deep")));
        assert_eq!(v["choices"][0]["message"]["content"], "{\"model\":\"no\"}");
        assert_eq!(replace_model_name(&renamed, "gpt-4o"), None);
        assert_eq!(replace_model_name(r#"{"a":{"model":"x"}}"#, "m"), None, "nested only: nothing");
        assert_eq!(replace_model_name(r#"{"model":null}"#, "m"), None);
        assert_eq!(replace_model_name(r#"{"model":"x\"y"}"#, "a\"b").as_deref(), Some(r#"{"model":"a\"b"}"#));
        assert_eq!(replace_model_name("{\"model\":\"unterminated", "m"), None);
    }

    #[test]
    fn non_stream_usage_and_content() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"abcd"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        assert_eq!(response_usage(body).map(|u| u.prompt_tokens), Some(3));
        assert_eq!(response_content_bytes(body), 4);
        assert!(response_usage(b"{}").is_none());
        let legacy = br#"{"object":"text_completion","choices":[{"text":"abcdef","index":0}],"usage":{"prompt_tokens":2}}"#;
        assert_eq!(response_content_bytes(legacy), 6);
        let embeddings = br#"{"object":"list","data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        assert_eq!(
            (response_content_bytes(embeddings), response_usage(embeddings).map(|u| u.prompt_tokens)),
            (0, Some(2))
        );
    }

    #[test]
    fn legacy_completion_text_counts_as_content() {
        let mut tap = ChatStreamTap::new(false, vec![]);
        let out = tap.feed(b"data: {\"choices\":[{\"text\":\"Hi\",\"index\":0,\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n");
        assert!(tap.summary().first_content_sent && tap.summary().saw_finish);
        assert_eq!(tap.summary().content_bytes, 2);
        assert_eq!(tap.summary().usage.as_ref().map(|u| u.completion_tokens), Some(1));
        assert!(!String::from_utf8_lossy(&out).contains("usage"), "usage chunk stripped");
    }
}

//! The built-in `mock` provider: deterministic OpenAI-format replies with
//! realistic streaming, tool calls when tools are offered, and usage. It runs
//! inside the worker (no network), serves the demo key out of the box, and is
//! the upstream for load tests. The same request always gets the same reply.

use crate::usage::{estimate_tokens, OpenAiUsage};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// A reply decided from a request.
#[derive(Debug, Clone, PartialEq)]
pub struct MockReply {
    pub id: String,
    pub model: String,
    pub created: i64,
    /// Text pieces, one per stream chunk; empty for a tool call.
    pub pieces: Vec<String>,
    /// `(call id, function name, JSON arguments)` when a tool is called.
    pub tool_call: Option<(String, String, String)>,
    pub finish_reason: &'static str,
    pub usage: OpenAiUsage,
}

pub(crate) fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn sample_for_schema(schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first().cloned())
            .unwrap_or_else(|| Value::String("mock".into())),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("object") => {
            let mut out = Map::new();
            let props = schema.get("properties").and_then(Value::as_object);
            let required = schema.get("required").and_then(Value::as_array);
            if let (Some(props), Some(required)) = (props, required) {
                for name in required.iter().filter_map(Value::as_str) {
                    if let Some(prop) = props.get(name) {
                        out.insert(name.to_string(), sample_for_schema(prop));
                    }
                }
            }
            Value::Object(out)
        }
        _ => Value::Null,
    }
}

impl MockReply {
    /// Decides the reply to an OpenAI chat request body.
    /// `prompt_tokens`: the gateway's estimate of the prompt (what the mock reports).
    pub fn for_request(body: &Map<String, Value>, model: &str, created: i64, prompt_tokens: u64) -> Self {
        let messages = body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        let last = messages.last().cloned().unwrap_or(Value::Null);
        let last_role = last.get("role").and_then(Value::as_str).unwrap_or("user");
        let seed = serde_json::to_string(&messages).unwrap_or_default();
        let id = format!("chatcmpl-mock-{}", short_hash(&seed));
        let prompt_tokens = prompt_tokens.max(1);
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|f| body.get(*f).and_then(Value::as_u64))
            .unwrap_or(u64::MAX);

        let tools: Vec<Value> = body.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
        let tool_choice = body.get("tool_choice");
        let tools_disabled = tool_choice.and_then(Value::as_str) == Some("none");
        if !tools.is_empty() && !tools_disabled && last_role != "tool" {
            let forced = tool_choice.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str);
            let tool = forced
                .and_then(|name| {
                    tools.iter().find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
                })
                .or_else(|| tools.first());
            let name =
                tool.and_then(|t| t.pointer("/function/name")).and_then(Value::as_str).unwrap_or("tool");
            let args = tool
                .and_then(|t| t.pointer("/function/parameters"))
                .map(sample_for_schema)
                .unwrap_or_else(|| json!({}));
            let args = args.to_string();
            let call_id = format!("call_mock_{}", &short_hash(&format!("{seed}{name}"))[..12]);
            let completion_tokens = estimate_tokens(name.len() + args.len()).max(1);
            return Self {
                id,
                model: model.to_string(),
                created,
                pieces: Vec::new(),
                tool_call: Some((call_id, name.to_string(), args)),
                finish_reason: "tool_calls",
                usage: usage(prompt_tokens, completion_tokens),
            };
        }

        let text = if last_role == "tool" {
            format!("The tool returned: {}", truncate(&message_text(&last), 120))
        } else {
            let said = messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(message_text)
                .unwrap_or_default();
            format!("Hello from the edgeway mock provider. You said: \"{}\"", truncate(&said, 80))
        };
        let mut pieces: Vec<String> = text
            .split(' ')
            .enumerate()
            .map(|(i, w)| if i == 0 { w.to_string() } else { format!(" {w}") })
            .collect();
        let mut finish_reason = "stop";
        if pieces.len() as u64 > max_tokens {
            pieces.truncate(usize::try_from(max_tokens).unwrap_or(usize::MAX));
            finish_reason = "length";
        }
        let completion_tokens = pieces.len() as u64;
        Self {
            id,
            model: model.to_string(),
            created,
            pieces,
            tool_call: None,
            finish_reason,
            usage: usage(prompt_tokens, completion_tokens),
        }
    }

    /// The whole reply text.
    pub fn text(&self) -> String {
        self.pieces.concat()
    }

    /// Non-streaming `chat.completion` body.
    pub fn completion_json(&self) -> Value {
        let message = match &self.tool_call {
            Some((id, name, args)) => json!({
                "role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": args}}]
            }),
            None => json!({"role": "assistant", "content": self.text()}),
        };
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason}],
            "usage": self.usage,
            "system_fingerprint": "fp_edgeway_mock",
        })
    }

    /// The `data:` payloads of a streaming reply, `[DONE]` last. The usage-only
    /// chunk is included when `include_usage` (the gateway always asks).
    pub fn stream_payloads(&self, include_usage: bool) -> Vec<String> {
        let chunk = |delta: Value, finish: Option<&str>| {
            let mut c = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_edgeway_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c.to_string()
        };
        let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        match &self.tool_call {
            Some((id, name, args)) => {
                out.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                // arguments in fragments, as real providers send them
                let chars: Vec<char> = args.chars().collect();
                for fragment in chars.chunks(8) {
                    let fragment: String = fragment.iter().collect();
                    out.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                        None,
                    ));
                }
            }
            None => {
                for piece in &self.pieces {
                    out.push(chunk(json!({"content": piece}), None));
                }
            }
        }
        out.push(chunk(json!({}), Some(self.finish_reason)));
        if include_usage {
            out.push(
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "system_fingerprint": "fp_edgeway_mock", "choices": [], "usage": self.usage,
                })
                .to_string(),
            );
        }
        out.push("[DONE]".into());
        out
    }
}

pub(crate) fn usage(prompt_tokens: u64, completion_tokens: u64) -> OpenAiUsage {
    OpenAiUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: Some(crate::usage::PromptTokensDetails { cached_tokens: Some(0) }),
        completion_tokens_details: Some(crate::usage::CompletionTokensDetails { reasoning_tokens: Some(0) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai_relay::ChatStreamTap;
    use crate::pipeline::inbound::Inbound;
    use crate::sse::encode_event;
    use crate::translate::ClientDialect;

    fn reply(body: &str) -> MockReply {
        let p = Inbound::read(ClientDialect::OpenAiChat, body.as_bytes(), None, false).unwrap();
        MockReply::for_request(p.passthrough_body().unwrap(), &p.model, 1_700_000_000, p.prompt.estimate)
    }

    #[test]
    fn deterministic_text_reply() {
        let body = r#"{"model":"mock-1","messages":[{"role":"user","content":"What is edgeway?"}]}"#;
        let a = reply(body);
        assert_eq!(a, reply(body));
        assert_eq!(a.text(), "Hello from the edgeway mock provider. You said: \"What is edgeway?\"");
        assert_eq!(a.finish_reason, "stop");
        assert_eq!(a.usage.completion_tokens, a.pieces.len() as u64);
        let v = a.completion_json();
        assert_eq!(v["choices"][0]["message"]["content"], a.text());
        assert_eq!(v["usage"]["total_tokens"], a.usage.total_tokens);
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let r = reply(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#);
        assert_eq!(r.pieces.len(), 3);
        assert_eq!(r.finish_reason, "length");
    }

    #[test]
    fn tools_get_a_tool_call_with_required_arguments() {
        let r = reply(
            r#"{"model":"m","messages":[{"role":"user","content":"weather?"}],
                "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
                "properties":{"city":{"type":"string"},"days":{"type":"integer"},"unit":{"type":"string","enum":["c","f"]}},
                "required":["city","unit"]}}}]}"#,
        );
        let (id, name, args) = r.tool_call.clone().unwrap();
        assert!(id.starts_with("call_mock_"));
        assert_eq!(name, "get_weather");
        assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "mock", "unit": "c"}));
        assert_eq!(r.finish_reason, "tool_calls");
        let after = reply(
            r#"{"model":"m","messages":[{"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"sunny, 21C"}],
                "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#,
        );
        assert!(after.tool_call.is_none());
        assert_eq!(after.text(), "The tool returned: sunny, 21C");
    }

    #[test]
    fn stream_reassembles_through_the_tap() {
        let r = reply(
            r#"{"model":"m","messages":[{"role":"user","content":"stream please"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}}]}"#,
        );
        let mut bytes = Vec::new();
        for p in r.stream_payloads(true) {
            encode_event(&mut bytes, None, &p);
        }
        let mut tap = ChatStreamTap::new(false, vec![]);
        let mut out = tap.feed(&bytes);
        out.extend(tap.finish());
        assert!(tap.summary().completed());
        assert_eq!(tap.summary().usage.as_ref(), Some(&r.usage));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"choices\":[]"));
        let args: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        assert_eq!(args, r#"{"q":"mock"}"#);
    }
}

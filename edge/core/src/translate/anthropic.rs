//! Anthropic Messages, both as the client's dialect and as an upstream's.

use super::canonical::*;
use super::json_fields::*;
use super::media::{
    check_public_url, image_media_type, normalize_base64, MediaKind, ANTHROPIC_MEDIA, IMAGE_MEDIA_TYPES,
};
use super::normalize::{anthropic_tool_id, normalize_messages};
use super::reasoning::{budget_for, ANTHROPIC_MIN_BUDGET};
use super::stream::{ClientRenderer, UpstreamParser};
use super::UpstreamCall;
use crate::error::{Dialect, GatewayError};
use crate::sse::{encode_event, SseEvent};
use crate::usage::TokenUsage;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `max_tokens` sent when the client gave none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Name of the forced tool that carries structured output (`response_format`)
/// to Anthropic; its input is returned to the client as the text answer.
pub const STRUCTURED_OUTPUT_TOOL: &str = "structured_output";

const SUPPORTED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];
const UNSUPPORTED_FIELDS: &[&str] = &["container", "mcp_servers", "context_management"];

/// Parses a `/v1/messages` body (or `/v1/messages/count_tokens` when
/// `count_tokens`, where `max_tokens` is not required).
pub(crate) fn parse_request(body: &[u8], count_tokens: bool) -> Result<CanonicalRequest, GatewayError> {
    let obj = parse_object(body)?;
    check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    let mut req = CanonicalRequest { model: req_str(&obj, "model", "")?.to_string(), ..Default::default() };
    req.stream = opt_bool(&obj, "stream", "")?.unwrap_or(false);
    req.max_output_tokens = opt_u64(&obj, "max_tokens", "")?;
    if req.max_output_tokens.is_none() && !count_tokens {
        return Err(invalid("Missing required parameter: `max_tokens`.", "max_tokens"));
    }
    req.temperature = opt_number(&obj, "temperature", "")?;
    req.top_p = opt_number(&obj, "top_p", "")?;
    req.top_k = opt_u64(&obj, "top_k", "")?;
    if let Some(stops) = opt_array(&obj, "stop_sequences", "")? {
        req.stop_sequences = stops
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("`stop_sequences` must be strings.", "stop_sequences"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(metadata) = opt_object(&obj, "metadata", "")? {
        check_fields(metadata, &["user_id"], &[], "metadata")?;
        req.user = opt_str(metadata, "user_id", "metadata")?.map(str::to_string);
    }
    if let Some(thinking) = opt_object(&obj, "thinking", "")? {
        req.reasoning = Some(match req_str(thinking, "type", "thinking")? {
            "enabled" => {
                Reasoning::Budget(opt_u64(thinking, "budget_tokens", "thinking")?.ok_or_else(|| {
                    invalid("Missing required parameter: `thinking.budget_tokens`.", "thinking.budget_tokens")
                })?)
            }
            "disabled" => Reasoning::Disabled,
            "adaptive" => Reasoning::Effort(ReasoningEffort::Medium),
            other => {
                return Err(invalid(format!("`thinking.type` `{other}` is not valid."), "thinking.type"))
            }
        });
    }
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => req.system.push(SystemBlock { text: s.clone(), cache_control: None }),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let path = format!("system[{i}]");
                let b = as_object(block, &path)?;
                if req_str(b, "type", &path)? != "text" {
                    return Err(invalid("System blocks must be `text` blocks.", &format!("{path}.type")));
                }
                req.system.push(SystemBlock {
                    text: req_str(b, "text", &path)?.to_string(),
                    cache_control: b.get("cache_control").filter(|v| !v.is_null()).cloned(),
                });
            }
        }
        Some(_) => return Err(invalid("`system` must be a string or an array of text blocks.", "system")),
    }
    if let Some(tools) = opt_array(&obj, "tools", "")? {
        req.tools = tools.iter().enumerate().map(|(i, t)| parse_tool(t, i)).collect::<Result<_, _>>()?;
    }
    if let Some(choice) = opt_object(&obj, "tool_choice", "")? {
        req.tool_choice = Some(match req_str(choice, "type", "tool_choice")? {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(req_str(choice, "name", "tool_choice")?.to_string()),
            other => {
                return Err(invalid(
                    format!("`tool_choice.type` `{other}` is not valid."),
                    "tool_choice.type",
                ))
            }
        });
        if opt_bool(choice, "disable_parallel_tool_use", "tool_choice")? == Some(true) {
            req.parallel_tool_calls = Some(false);
        }
    }
    let messages = opt_array(&obj, "messages", "")?
        .ok_or_else(|| invalid("Missing required parameter: `messages`.", "messages"))?;
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_object(message, &path)?;
        let role = match req_str(m, "role", &path)? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(invalid(
                    format!("`{path}.role` must be `user` or `assistant`, not `{other}`."),
                    &format!("{path}.role"),
                ))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => vec![ContentPart::text(s.clone())],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| parse_block(b, &format!("{path}.content[{j}]")))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            _ => {
                return Err(invalid(
                    format!("`{path}.content` must be a string or an array."),
                    &format!("{path}.content"),
                ))
            }
        };
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => req.messages.push(Message { role, content }),
        }
    }
    Ok(req)
}

fn parse_tool(tool: &Value, i: usize) -> Result<ToolDefinition, GatewayError> {
    let path = format!("tools[{i}]");
    let obj = as_object(tool, &path)?;
    if let Some(kind) = opt_str(obj, "type", &path)?.filter(|k| *k != "custom") {
        return Err(invalid(
            format!("Server tool `{kind}` is not supported through edgeway's translation layer; only custom (function) tools are."),
            &format!("{path}.type"),
        ));
    }
    Ok(ToolDefinition {
        name: req_str(obj, "name", &path)?.to_string(),
        description: opt_str(obj, "description", &path)?.map(str::to_string),
        parameters: obj.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        strict: None,
        cache_control: obj.get("cache_control").filter(|v| !v.is_null()).cloned(),
    })
}

fn parse_source(
    source: &Map<String, Value>,
    path: &str,
    image: bool,
) -> Result<Option<MediaSource>, GatewayError> {
    match req_str(source, "type", path)? {
        "base64" => {
            let media_type = req_str(source, "media_type", path)?.to_string();
            if image && !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Err(invalid(
                    format!("Image media type `{media_type}` is not supported."),
                    &format!("{path}.media_type"),
                ));
            }
            let data =
                normalize_base64(req_str(source, "data", path)?, &format!("{path}.data"))?.into_owned();
            let media_type = if image { image_media_type(&media_type, &data) } else { media_type };
            Ok(Some(MediaSource::Base64 { media_type, data }))
        }
        "url" => {
            let url = req_str(source, "url", path)?;
            Ok(Some(MediaSource::Url { url: check_public_url(url, &format!("{path}.url"))? }))
        }
        "text" => Ok(None),
        other => {
            Err(invalid(format!("Source type `{other}` cannot be translated."), &format!("{path}.type")))
        }
    }
}

fn parse_block(block: &Value, path: &str) -> Result<Option<ContentPart>, GatewayError> {
    let b = as_object(block, path)?;
    let cache_control = b.get("cache_control").filter(|v| !v.is_null()).cloned();
    Ok(Some(match req_str(b, "type", path)? {
        "text" => ContentPart::Text { text: req_str(b, "text", path)?.to_string(), cache_control },
        "image" => {
            let spath = format!("{path}.source");
            let source = opt_object(b, "source", path)?
                .ok_or_else(|| invalid(format!("`{spath}` is required."), &spath))?;
            match parse_source(source, &spath, true)? {
                Some(source) => ContentPart::Image { source, cache_control },
                None => return Err(invalid("Images need a base64 or url source.", &spath)),
            }
        }
        "document" => {
            let spath = format!("{path}.source");
            let source = opt_object(b, "source", path)?
                .ok_or_else(|| invalid(format!("`{spath}` is required."), &spath))?;
            match parse_source(source, &spath, false)? {
                Some(media) => ContentPart::Document {
                    source: media,
                    filename: opt_str(b, "title", path)?.map(str::to_string),
                    cache_control,
                },
                // Plain-text documents are text.
                None => {
                    ContentPart::Text { text: req_str(source, "data", &spath)?.to_string(), cache_control }
                }
            }
        }
        "tool_use" => ContentPart::ToolCall {
            id: req_str(b, "id", path)?.to_string(),
            name: req_str(b, "name", path)?.to_string(),
            arguments: b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
            signature: None,
        },
        "tool_result" => {
            let content = match b.get("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![ToolResultPart::Text(s.clone())],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(k, p)| match parse_block(p, &format!("{path}.content[{k}]")) {
                        Ok(Some(ContentPart::Text { text, .. })) => Ok(ToolResultPart::Text(text)),
                        Ok(Some(ContentPart::Image { source, .. })) => Ok(ToolResultPart::Image(source)),
                        Ok(_) => Err(invalid(
                            "Tool results may contain only text and images.",
                            &format!("{path}.content[{k}]"),
                        )),
                        Err(e) => Err(e),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(invalid(
                        format!("`{path}.content` must be a string or an array."),
                        &format!("{path}.content"),
                    ))
                }
            };
            ContentPart::ToolResult {
                tool_call_id: req_str(b, "tool_use_id", path)?.to_string(),
                name: None,
                content,
                is_error: opt_bool(b, "is_error", path)?.unwrap_or(false),
                cache_control,
            }
        }
        "thinking" => ContentPart::Thinking {
            text: opt_str(b, "thinking", path)?.unwrap_or("").to_string(),
            signature: opt_str(b, "signature", path)?.filter(|s| !s.is_empty()).map(str::to_string),
        },
        "redacted_thinking" => ContentPart::RedactedThinking { data: req_str(b, "data", path)?.to_string() },
        other => {
            return Err(invalid(
                format!("Content block type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ))
        }
    }))
}

fn source_json(source: &MediaSource, image: bool, param: &str) -> Result<Value, GatewayError> {
    match source {
        MediaSource::Base64 { media_type, data } => {
            let kind = if image { MediaKind::Image } else { MediaKind::Document };
            ANTHROPIC_MEDIA.check_part(kind, media_type, data, param)?;
            Ok(json!({"type": "base64", "media_type": media_type, "data": data}))
        }
        MediaSource::Url { url } => Ok(json!({"type": "url", "url": url})),
        MediaSource::File { .. } => {
            Err(invalid("Provider file references cannot be sent to Anthropic; send the data inline.", param))
        }
    }
}

fn with_cache_control(mut block: Value, cache_control: &Option<Value>) -> Value {
    if let Some(cc) = cache_control {
        block["cache_control"] = cc.clone();
    }
    block
}

fn parse_arguments(arguments: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(invalid("Tool call `arguments` must be a JSON object to be sent to Anthropic.", "messages")),
    }
}

fn blocks_for(message: &Message) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = Vec::new();
    for part in &message.content {
        match part {
            ContentPart::Text { text, cache_control } => {
                blocks.push(with_cache_control(json!({"type": "text", "text": text}), cache_control))
            }
            ContentPart::Image { source, cache_control } => blocks.push(with_cache_control(
                json!({"type": "image", "source": source_json(source, true, "messages")?}),
                cache_control,
            )),
            ContentPart::Document { source, filename, cache_control } => {
                let mut block = json!({"type": "document", "source": source_json(source, false, "messages")?});
                if let Some(title) = filename {
                    block["title"] = json!(title);
                }
                blocks.push(with_cache_control(block, cache_control));
            }
            ContentPart::Audio { .. } => {
                return Err(invalid("Audio input is not supported by Anthropic upstreams.", "messages"));
            }
            ContentPart::Thinking { text, signature: Some(signature) } if message.role == Role::Assistant => {
                blocks.push(json!({"type": "thinking", "thinking": text, "signature": signature}))
            }
            ContentPart::Thinking { .. } => {}
            ContentPart::RedactedThinking { data } if message.role == Role::Assistant => {
                blocks.push(json!({"type": "redacted_thinking", "data": data}))
            }
            ContentPart::RedactedThinking { .. } => {}
            ContentPart::ToolCall { id, name, arguments, .. } => blocks.push(json!({
                "type": "tool_use", "id": anthropic_tool_id(id), "name": name, "input": parse_arguments(arguments)?,
            })),
            ContentPart::ToolResult { tool_call_id, content, is_error, cache_control, .. } => {
                let mut parts = Vec::new();
                for p in content {
                    match p {
                        ToolResultPart::Text(t) if !t.is_empty() => parts.push(json!({"type": "text", "text": t})),
                        ToolResultPart::Text(_) => {}
                        ToolResultPart::Image(source) => {
                            parts.push(json!({"type": "image", "source": source_json(source, true, "messages")?}))
                        }
                    }
                }
                let mut block = json!({"type": "tool_result", "tool_use_id": anthropic_tool_id(tool_call_id)});
                // No empty text block: an empty result has no content at all.
                let content = match parts.as_slice() {
                    [] => None,
                    [only] if only["type"] == "text" => Some(only["text"].clone()),
                    _ => Some(Value::Array(parts)),
                };
                if let Some(content) = content {
                    block["content"] = content;
                }
                if *is_error {
                    block["is_error"] = json!(true);
                }
                blocks.push(with_cache_control(block, cache_control));
            }
        }
    }
    Ok(blocks)
}

/// With thinking on, Anthropic requires the assistant turn whose tool calls
/// the conversation is answering to start with its signed thinking. A client
/// that cannot carry signatures (OpenAI chat without server-side
/// preservation) leaves it out; thinking is then left off for this request
/// rather than sending a request Anthropic is known to refuse.
fn tool_turn_lacks_signed_thinking(messages: &[Message]) -> bool {
    let Some(last_assistant) = messages.iter().rev().find(|m| m.role == Role::Assistant) else {
        return false;
    };
    let calls_tools = last_assistant.content.iter().any(|p| matches!(p, ContentPart::ToolCall { .. }));
    let signed = last_assistant.content.iter().any(|p| {
        matches!(p, ContentPart::Thinking { signature: Some(_), .. } | ContentPart::RedactedThinking { .. })
    });
    let answered_last = messages.last().is_some_and(|m| {
        m.role == Role::User && m.content.iter().any(|p| matches!(p, ContentPart::ToolResult { .. }))
    });
    calls_tools && answered_last && !signed
}

fn unsupported(param: &str) -> GatewayError {
    invalid(format!("`{param}` is not supported by Anthropic upstreams."), param)
}

/// Builds a `/messages` body.
pub(crate) fn build_request(
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<UpstreamCall, GatewayError> {
    if req.candidate_count.unwrap_or(1) > 1 {
        return Err(invalid(
            "`n` > 1 is not supported by Anthropic upstreams: Claude returns one choice.",
            "n",
        ));
    }
    if req.logprobs {
        return Err(unsupported("logprobs"));
    }
    if req.seed.is_some() {
        return Err(unsupported("seed"));
    }
    if req.presence_penalty.is_some() {
        return Err(unsupported("presence_penalty"));
    }
    if req.frequency_penalty.is_some() {
        return Err(unsupported("frequency_penalty"));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    let messages = normalize_messages(&req.messages);
    let budget = req.reasoning.and_then(budget_for).filter(|_| !tool_turn_lacks_signed_thinking(&messages));
    let max_tokens = match (req.max_output_tokens, budget) {
        (Some(max), _) => max,
        (None, Some(budget)) => budget.saturating_add(DEFAULT_MAX_TOKENS),
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    body.insert("max_tokens".into(), json!(max_tokens));
    if !req.system.is_empty() {
        let system = if req.system.len() == 1 && req.system[0].cache_control.is_none() {
            json!(req.system[0].text)
        } else {
            Value::Array(
                req.system
                    .iter()
                    .map(|b| with_cache_control(json!({"type": "text", "text": b.text}), &b.cache_control))
                    .collect(),
            )
        };
        body.insert("system".into(), system);
    }
    let mut wire_messages = Vec::new();
    for message in &messages {
        let content = blocks_for(message)?;
        if content.is_empty() {
            continue;
        }
        let role = if message.role == Role::User { "user" } else { "assistant" };
        wire_messages.push(json!({"role": role, "content": content}));
    }
    body.insert("messages".into(), Value::Array(wire_messages));
    if let Some(budget) = budget {
        let budget = if req.max_output_tokens.is_some() && budget >= max_tokens {
            // `budget_tokens` must stay below `max_tokens`.
            if max_tokens <= ANTHROPIC_MIN_BUDGET {
                return Err(invalid(
                    format!("Reasoning on Anthropic needs `max_tokens` above {ANTHROPIC_MIN_BUDGET}."),
                    "max_tokens",
                ));
            }
            max_tokens - 1
        } else {
            budget.max(ANTHROPIC_MIN_BUDGET)
        };
        if req.temperature.as_ref().is_some_and(|t| t.as_f64() != Some(1.0)) {
            return Err(invalid(
                "`temperature` must be 1 or unset when reasoning is enabled on Anthropic.",
                "temperature",
            ));
        }
        if req.top_k.is_some() {
            return Err(invalid("`top_k` cannot be used when reasoning is enabled on Anthropic.", "top_k"));
        }
        body.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
    }
    if let Some(t) = &req.temperature {
        body.insert("temperature".into(), Value::Number(t.clone()));
    }
    if let Some(p) = &req.top_p {
        body.insert("top_p".into(), Value::Number(p.clone()));
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if !req.stop_sequences.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop_sequences));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.stream {
        body.insert("stream".into(), json!(true));
    }
    let mut tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.parameters});
            if let Some(d) = &t.description {
                tool["description"] = json!(d);
            }
            with_cache_control(tool, &t.cache_control)
        })
        .collect();
    let mut tool_choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool(name)) => Some(json!({"type": "tool", "name": name})),
    };
    let schema = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.clone()),
    };
    if let Some(schema) = schema {
        if !req.tools.is_empty() {
            return Err(invalid(
                "`response_format` cannot be combined with `tools` on Anthropic upstreams.",
                "response_format",
            ));
        }
        if budget.is_some() {
            return Err(invalid(
                "`response_format` cannot be combined with reasoning on Anthropic upstreams.",
                "response_format",
            ));
        }
        if schema.get("type").and_then(Value::as_str).is_some_and(|t| t != "object") {
            return Err(invalid(
                "Anthropic upstreams need a `response_format` schema of type `object`.",
                "response_format",
            ));
        }
        tools.push(json!({
            "name": STRUCTURED_OUTPUT_TOOL,
            "description": "Give the final answer as this JSON object.",
            "input_schema": schema,
        }));
        tool_choice = Some(json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}));
    }
    if req.parallel_tool_calls == Some(false) && !tools.is_empty() {
        let mut choice = tool_choice.unwrap_or_else(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        tool_choice = Some(choice);
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }
    Ok(UpstreamCall { path: "/messages".into(), body: to_bytes(&Value::Object(body)), stream: req.stream })
}

/// Anthropic `stop_reason` → canonical.
pub(crate) fn parse_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        "pause_turn" => FinishReason::PauseTurn,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → Anthropic `stop_reason`.
pub(crate) fn stop_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other(_) | FinishReason::MalformedToolCall => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter | FinishReason::Refusal => "refusal",
        FinishReason::PauseTurn => "pause_turn",
    }
}

/// Anthropic usage → disjoint buckets (`input_tokens` already excludes cache
/// reads and writes; writes split by TTL when the breakdown is given).
pub(crate) fn parse_usage(usage: &Value, into: &mut TokenUsage) {
    if let Some(n) = usage.get("input_tokens").and_then(Value::as_u64) {
        into.input_uncached = n;
    }
    if let Some(n) = usage.get("cache_read_input_tokens").and_then(Value::as_u64) {
        into.cache_read = n;
    }
    match usage.get("cache_creation").filter(|c| c.is_object()) {
        Some(breakdown) => {
            into.cache_write_5m = u64_at(breakdown, "ephemeral_5m_input_tokens");
            into.cache_write_1h = u64_at(breakdown, "ephemeral_1h_input_tokens");
        }
        None => {
            if let Some(n) = usage.get("cache_creation_input_tokens").and_then(Value::as_u64) {
                into.cache_write_5m = n;
                into.cache_write_1h = 0;
            }
        }
    }
    if let Some(n) = usage.get("output_tokens").and_then(Value::as_u64) {
        into.output = n;
    }
    *into = super::clamp_usage(*into);
}

/// Disjoint buckets → Anthropic usage.
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    json!({
        "input_tokens": usage.input_uncached,
        "cache_creation_input_tokens": usage.cache_write_5m.saturating_add(usage.cache_write_1h),
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m,
            "ephemeral_1h_input_tokens": usage.cache_write_1h,
        },
        "output_tokens": usage.output,
    })
}

/// Parses a non-streaming upstream `message`.
pub(crate) fn parse_response(body: &[u8]) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    if value.get("type").and_then(Value::as_str) != Some("message") {
        return Err(GatewayError::UpstreamUnavailable);
    }
    let mut content = Vec::new();
    let mut structured = false;
    for block in value.get("content").and_then(Value::as_array).into_iter().flatten() {
        match str_at(block, "type") {
            "text" => content.push(ContentPart::text(str_at(block, "text"))),
            "thinking" => content.push(ContentPart::Thinking {
                text: str_at(block, "thinking").to_string(),
                signature: block.get("signature").and_then(Value::as_str).map(str::to_string),
            }),
            "redacted_thinking" => {
                content.push(ContentPart::RedactedThinking { data: str_at(block, "data").to_string() })
            }
            "tool_use" if str_at(block, "name") == STRUCTURED_OUTPUT_TOOL => {
                structured = true;
                content.push(ContentPart::text(block.get("input").map(Value::to_string).unwrap_or_default()));
            }
            "tool_use" => content.push(ContentPart::ToolCall {
                id: str_at(block, "id").to_string(),
                name: str_at(block, "name").to_string(),
                arguments: block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                signature: None,
            }),
            _ => {}
        }
    }
    let mut finish_reason = parse_stop_reason(str_at(&value, "stop_reason"));
    if structured
        && finish_reason == FinishReason::ToolCalls
        && !content.iter().any(|p| matches!(p, ContentPart::ToolCall { .. }))
    {
        finish_reason = FinishReason::Stop;
    }
    let mut usage = TokenUsage::default();
    let usage_value = value.get("usage").filter(|u| u.is_object());
    if let Some(u) = usage_value {
        parse_usage(u, &mut usage);
    }
    Ok(CanonicalResponse {
        id: str_at(&value, "id").to_string(),
        model: str_at(&value, "model").to_string(),
        created: 0,
        content,
        finish_reason,
        stop_sequence: value.get("stop_sequence").and_then(Value::as_str).map(str::to_string),
        usage,
        usage_reported: usage_value.is_some(),
        usage_estimated: false,
    })
}

fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Renders a `message` for an Anthropic client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Value {
    let mut content = Vec::new();
    for part in &resp.content {
        match part {
            ContentPart::Text { text, .. } if !text.is_empty() => content.push(json!({"type": "text", "text": text})),
            ContentPart::Thinking { text, signature } => {
                content.push(json!({"type": "thinking", "thinking": text, "signature": signature.clone().unwrap_or_default()}))
            }
            ContentPart::RedactedThinking { data } => content.push(json!({"type": "redacted_thinking", "data": data})),
            ContentPart::ToolCall { id, name, arguments, signature } => {
                if let Some(sig) = signature {
                    content.push(json!({"type": "thinking", "thinking": "", "signature": sig}));
                }
                content.push(json!({"type": "tool_use", "id": id, "name": name, "input": arguments_object(arguments)}));
            }
            _ => {}
        }
    }
    json!({
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": stop_reason_word(&resp.finish_reason),
        "stop_sequence": resp.stop_sequence,
        "usage": super::marked(usage_json(&resp.usage), resp.usage_estimated),
    })
}

/// HTTP status for an Anthropic error `type`.
pub(crate) fn status_for_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamBlock {
    Text,
    Thinking,
    Tool(usize),
    StructuredOutput,
    Ignored,
}

/// Reads an upstream Anthropic SSE stream.
#[derive(Debug, Default)]
pub(crate) struct MessagesStreamParser {
    /// Anthropic content block index → what it is (the index counts text,
    /// thinking and tool blocks alike, so it is not the tool ordinal).
    blocks: HashMap<u64, UpstreamBlock>,
    next_tool_index: usize,
    usage: TokenUsage,
    structured_output: bool,
}

impl UpstreamParser for MessagesStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { return };
        let kind = data.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").cloned().unwrap_or(Value::Null);
                if let Some(usage) = message.get("usage").filter(|u| u.is_object()) {
                    parse_usage(usage, &mut self.usage);
                    out.push(StreamEvent::Usage(self.usage));
                }
                out.push(StreamEvent::Start {
                    id: message.get("id").and_then(Value::as_str).map(str::to_string),
                    model: message.get("model").and_then(Value::as_str).map(str::to_string),
                });
            }
            "content_block_start" => {
                let index = u64_at(&data, "index");
                let block = data.get("content_block").cloned().unwrap_or(Value::Null);
                let kind = match str_at(&block, "type") {
                    "text" => {
                        let text = str_at(&block, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta(text.to_string()));
                        }
                        UpstreamBlock::Text
                    }
                    "thinking" => {
                        let text = str_at(&block, "thinking");
                        if !text.is_empty() {
                            out.push(StreamEvent::ThinkingDelta(text.to_string()));
                        }
                        UpstreamBlock::Thinking
                    }
                    "redacted_thinking" => {
                        out.push(StreamEvent::RedactedThinking(str_at(&block, "data").to_string()));
                        UpstreamBlock::Ignored
                    }
                    "tool_use" if str_at(&block, "name") == STRUCTURED_OUTPUT_TOOL => {
                        self.structured_output = true;
                        UpstreamBlock::StructuredOutput
                    }
                    "tool_use" => {
                        let tool_index = self.next_tool_index;
                        self.next_tool_index += 1;
                        out.push(StreamEvent::ToolCallStart {
                            tool_index,
                            id: str_at(&block, "id").to_string(),
                            name: str_at(&block, "name").to_string(),
                            signature: None,
                        });
                        if let Some(input) =
                            block.get("input").filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            out.push(StreamEvent::ToolCallArguments {
                                tool_index,
                                fragment: input.to_string(),
                            });
                        }
                        UpstreamBlock::Tool(tool_index)
                    }
                    _ => UpstreamBlock::Ignored,
                };
                self.blocks.insert(index, kind);
            }
            "content_block_delta" => {
                let block =
                    self.blocks.get(&u64_at(&data, "index")).copied().unwrap_or(UpstreamBlock::Ignored);
                let delta = data.get("delta").cloned().unwrap_or(Value::Null);
                match (str_at(&delta, "type"), block) {
                    ("text_delta", _) => {
                        let text = str_at(&delta, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta(text.to_string()));
                        }
                    }
                    ("thinking_delta", _) => {
                        let text = str_at(&delta, "thinking");
                        if !text.is_empty() {
                            out.push(StreamEvent::ThinkingDelta(text.to_string()));
                        }
                    }
                    ("signature_delta", _) => {
                        out.push(StreamEvent::ThinkingSignature(str_at(&delta, "signature").to_string()))
                    }
                    ("input_json_delta", UpstreamBlock::Tool(tool_index)) => {
                        let fragment = str_at(&delta, "partial_json");
                        if !fragment.is_empty() {
                            out.push(StreamEvent::ToolCallArguments {
                                tool_index,
                                fragment: fragment.to_string(),
                            });
                        }
                    }
                    ("input_json_delta", UpstreamBlock::StructuredOutput) => {
                        let fragment = str_at(&delta, "partial_json");
                        if !fragment.is_empty() {
                            out.push(StreamEvent::TextDelta(fragment.to_string()));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
                    parse_usage(usage, &mut self.usage);
                    out.push(StreamEvent::Usage(self.usage));
                }
                let delta = data.get("delta").cloned().unwrap_or(Value::Null);
                if let Some(reason) = delta.get("stop_reason").and_then(Value::as_str) {
                    let mut reason = parse_stop_reason(reason);
                    if self.structured_output
                        && self.next_tool_index == 0
                        && reason == FinishReason::ToolCalls
                    {
                        reason = FinishReason::Stop;
                    }
                    out.push(StreamEvent::Finish {
                        reason,
                        stop_sequence: delta.get("stop_sequence").and_then(Value::as_str).map(str::to_string),
                    });
                }
            }
            "message_stop" => out.push(StreamEvent::End),
            "error" => {
                let error = data.get("error").cloned().unwrap_or(Value::Null);
                out.push(StreamEvent::Error(super::upstream_error_from_message(
                    status_for_error_type(str_at(&error, "type")),
                    str_at(&error, "message"),
                )));
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
    Tool(usize),
}

/// Writes a Messages SSE stream for an Anthropic client.
#[derive(Debug)]
pub(crate) struct MessagesStreamRenderer {
    id: String,
    model: String,
    started: bool,
    open: Option<(usize, OpenBlock)>,
    next_block: usize,
    tool_blocks: HashMap<usize, usize>,
    usage: TokenUsage,
}

impl MessagesStreamRenderer {
    pub(crate) fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: HashMap::new(),
            usage: TokenUsage::default(),
        }
    }

    fn emit(out: &mut Vec<u8>, name: &str, mut data: Value) {
        data["type"] = json!(name);
        encode_event(out, Some(name), &data.to_string());
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut usage = usage_json(&self.usage);
        usage["output_tokens"] = json!(0);
        Self::emit(
            out,
            "message_start",
            json!({"message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
            }}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            Self::emit(out, "content_block_stop", json!({"index": index}));
        }
    }

    fn open(&mut self, kind: OpenBlock, block: Value, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        Self::emit(out, "content_block_start", json!({"index": index, "content_block": block}));
        self.open = Some((index, kind));
        index
    }

    fn delta(out: &mut Vec<u8>, index: usize, delta: Value) {
        Self::emit(out, "content_block_delta", json!({"index": index, "delta": delta}));
    }
}

impl ClientRenderer for MessagesStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        if let StreamEvent::Usage(usage) = event {
            self.usage = *usage;
            return;
        }
        self.ensure_started(out);
        match event {
            StreamEvent::TextDelta(text) => {
                let index = match self.open {
                    Some((i, OpenBlock::Text)) => i,
                    _ => self.open(OpenBlock::Text, json!({"type": "text", "text": ""}), out),
                };
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
            StreamEvent::ThinkingDelta(text) => {
                let index = match self.open {
                    Some((i, OpenBlock::Thinking)) => i,
                    _ => self.open(
                        OpenBlock::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    ),
                };
                Self::delta(out, index, json!({"type": "thinking_delta", "thinking": text}));
            }
            StreamEvent::ThinkingSignature(signature) => {
                let index = match self.open {
                    Some((i, OpenBlock::Thinking)) => i,
                    _ => self.open(
                        OpenBlock::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    ),
                };
                Self::delta(out, index, json!({"type": "signature_delta", "signature": signature}));
                self.close(out);
            }
            StreamEvent::RedactedThinking(data) => {
                self.open(OpenBlock::Thinking, json!({"type": "redacted_thinking", "data": data}), out);
                self.close(out);
            }
            StreamEvent::ToolCallStart { tool_index, id, name, signature } => {
                if let Some(sig) = signature {
                    let index = self.open(
                        OpenBlock::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    );
                    Self::delta(out, index, json!({"type": "signature_delta", "signature": sig}));
                }
                let index = self.open(
                    OpenBlock::Tool(*tool_index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tool_blocks.insert(*tool_index, index);
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                if let Some(&index) = self.tool_blocks.get(tool_index) {
                    Self::delta(out, index, json!({"type": "input_json_delta", "partial_json": fragment}));
                }
            }
            StreamEvent::Finish { .. } => self.close(out),
            StreamEvent::Start { .. } | StreamEvent::Usage(_) | StreamEvent::Error(_) | StreamEvent::End => {}
        }
    }

    fn end(
        &mut self,
        reason: &FinishReason,
        stop_sequence: Option<&str>,
        usage: Option<&TokenUsage>,
        estimated: bool,
        out: &mut Vec<u8>,
    ) {
        if let Some(usage) = usage {
            self.usage = *usage;
        }
        self.ensure_started(out);
        self.close(out);
        Self::emit(
            out,
            "message_delta",
            json!({"delta": {"stop_reason": stop_reason_word(reason), "stop_sequence": stop_sequence}, "usage": super::marked(usage_json(&self.usage), estimated)}),
        );
        Self::emit(out, "message_stop", json!({}));
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, Some("error"), &error.body(Dialect::Anthropic));
    }
}

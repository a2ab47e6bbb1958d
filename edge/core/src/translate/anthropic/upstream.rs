//! Provider side: the `/messages` body built from the hub, and the
//! upstream's answer read back into it (a whole `message`, or an event
//! stream through [`MessagesStreamParser`]).

use super::super::canonical::*;
use super::super::json_fields::{invalid, read, to_bytes};
use super::super::media::{MediaKind, ANTHROPIC_MEDIA};
use super::super::normalize::{anthropic_tool_id, normalize_messages};
use super::super::reasoning::{budget_for, ANTHROPIC_MIN_BUDGET};
use super::super::stream::UpstreamParser;
use super::super::UpstreamCall;
use super::wire::*;
use super::{
    parse_stop_reason, parse_usage, status_for_error_type, DEFAULT_MAX_TOKENS, STRUCTURED_OUTPUT_TOOL,
};
use crate::error::GatewayError;
use crate::sse::SseEvent;
use crate::usage::TokenUsage;
use serde_json::{json, Value};
use std::collections::HashMap;

fn source<'a>(source: &'a MediaSource, image: bool, param: &str) -> Result<Source<'a>, GatewayError> {
    match source {
        MediaSource::Base64 { media_type, data } => {
            let kind = if image { MediaKind::Image } else { MediaKind::Document };
            ANTHROPIC_MEDIA.check_part(kind, media_type, data, param)?;
            Ok(Source { data: Some(data), media_type: Some(media_type), kind: "base64", url: None })
        }
        MediaSource::Url { url } => Ok(Source { data: None, media_type: None, kind: "url", url: Some(url) }),
        MediaSource::File { .. } => {
            Err(invalid("Provider file references cannot be sent to Anthropic; send the data inline.", param))
        }
    }
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

fn text_block<'a>(text: &'a str, cache_control: &'a Option<Value>) -> OutBlock<'a> {
    OutBlock { cache_control: cache_control.as_ref(), text: Some(text), kind: "text", ..Default::default() }
}

fn image_block<'a>(
    media: &'a MediaSource,
    cache_control: &'a Option<Value>,
) -> Result<OutBlock<'a>, GatewayError> {
    let source = source(media, true, "messages")?;
    Ok(OutBlock {
        cache_control: cache_control.as_ref(),
        source: Some(source),
        kind: "image",
        ..Default::default()
    })
}

fn blocks_for(message: &Message) -> Result<Vec<OutBlock<'_>>, GatewayError> {
    let assistant = message.role == Role::Assistant;
    let mut blocks = Vec::new();
    for part in &message.content {
        match part {
            ContentPart::Text { text, cache_control } => blocks.push(text_block(text, cache_control)),
            ContentPart::Image { source, cache_control } => blocks.push(image_block(source, cache_control)?),
            ContentPart::Document { source: media, filename, cache_control } => blocks.push(OutBlock {
                cache_control: cache_control.as_ref(),
                source: Some(source(media, false, "messages")?),
                title: filename.as_deref(),
                kind: "document",
                ..Default::default()
            }),
            ContentPart::Audio { .. } => {
                return Err(invalid("Audio input is not supported by Anthropic upstreams.", "messages"));
            }
            ContentPart::Thinking { text, signature: Some(signature) } if assistant => {
                blocks.push(OutBlock {
                    signature: Some(signature),
                    thinking: Some(text),
                    kind: "thinking",
                    ..Default::default()
                })
            }
            ContentPart::RedactedThinking { data } if assistant => {
                blocks.push(OutBlock { data: Some(data), kind: "redacted_thinking", ..Default::default() })
            }
            ContentPart::Thinking { .. } | ContentPart::RedactedThinking { .. } => {}
            ContentPart::ToolCall { id, name, arguments, .. } => blocks.push(OutBlock {
                id: Some(anthropic_tool_id(id)),
                input: Some(parse_arguments(arguments)?),
                name: Some(name),
                kind: "tool_use",
                ..Default::default()
            }),
            ContentPart::ToolResult { tool_call_id, content, is_error, cache_control, .. } => {
                let mut parts = Vec::new();
                for p in content {
                    match p {
                        ToolResultPart::Text(t) if !t.is_empty() => parts.push(text_block(t, &None)),
                        ToolResultPart::Text(_) => {}
                        ToolResultPart::Image(source) => parts.push(image_block(source, &None)?),
                    }
                }
                // No empty text block: an empty result has no content at all.
                let content = match parts.as_slice() {
                    [] => None,
                    [OutBlock { kind: "text", text: Some(text), .. }] => Some(ToolResultContent::Text(text)),
                    _ => Some(ToolResultContent::Blocks(parts)),
                };
                blocks.push(OutBlock {
                    cache_control: cache_control.as_ref(),
                    content,
                    is_error: *is_error,
                    tool_use_id: Some(anthropic_tool_id(tool_call_id)),
                    kind: "tool_result",
                    ..Default::default()
                });
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
    let normalized = normalize_messages(&req.messages);
    let budget = req.reasoning.and_then(budget_for).filter(|_| !tool_turn_lacks_signed_thinking(&normalized));
    let max_tokens = match (req.max_output_tokens, budget) {
        (Some(max), _) => max,
        (None, Some(budget)) => budget.saturating_add(DEFAULT_MAX_TOKENS),
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    let system = match req.system.as_slice() {
        [] => None,
        [only] if only.cache_control.is_none() => Some(System::Text(&only.text)),
        blocks => {
            Some(System::Blocks(blocks.iter().map(|b| text_block(&b.text, &b.cache_control)).collect()))
        }
    };
    let mut messages = Vec::new();
    for message in &normalized {
        let content = blocks_for(message)?;
        if !content.is_empty() {
            let role = if message.role == Role::User { "user" } else { "assistant" };
            messages.push(OutMessage { content, role });
        }
    }
    let thinking = match budget {
        None => None,
        Some(budget) => {
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
                return Err(invalid(
                    "`top_k` cannot be used when reasoning is enabled on Anthropic.",
                    "top_k",
                ));
            }
            Some(Thinking { budget_tokens: budget, kind: "enabled" })
        }
    };
    let mut tools: Vec<OutTool<'_>> = req
        .tools
        .iter()
        .map(|t| OutTool {
            cache_control: t.cache_control.as_ref(),
            description: t.description.as_deref(),
            input_schema: &t.parameters,
            name: &t.name,
        })
        .collect();
    let choice = |kind, name| OutToolChoice { disable_parallel_tool_use: false, name, kind };
    let mut tool_choice = req.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => choice("auto", None),
        ToolChoice::None => choice("none", None),
        ToolChoice::Required => choice("any", None),
        ToolChoice::Tool(name) => choice("tool", Some(name.as_str())),
    });
    let object_schema = json!({"type": "object"});
    let schema = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(&object_schema),
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema),
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
        tools.push(OutTool {
            cache_control: None,
            description: Some("Give the final answer as this JSON object."),
            input_schema: schema,
            name: STRUCTURED_OUTPUT_TOOL,
        });
        tool_choice = Some(choice("tool", Some(STRUCTURED_OUTPUT_TOOL)));
    }
    if req.parallel_tool_calls == Some(false) && !tools.is_empty() {
        let mut forbid = tool_choice.unwrap_or_else(|| choice("auto", None));
        forbid.disable_parallel_tool_use = forbid.kind != "none";
        tool_choice = Some(forbid);
    }
    let body = MessagesRequest {
        max_tokens,
        messages,
        metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
        model: upstream_model,
        stop_sequences: &req.stop_sequences,
        stream: req.stream,
        system,
        temperature: req.temperature.as_ref(),
        thinking,
        tool_choice,
        tools,
        top_k: req.top_k,
        top_p: req.top_p.as_ref(),
    };
    Ok(UpstreamCall { path: "/messages".into(), body: to_bytes(&body), stream: req.stream })
}

/// Parses a non-streaming upstream `message`.
pub(crate) fn parse_response(body: &[u8]) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    let message: WireMessage = read(&value).ok_or(GatewayError::UpstreamUnavailable)?;
    if message.kind.as_str() != "message" {
        return Err(GatewayError::UpstreamUnavailable);
    }
    let mut content = Vec::new();
    let mut structured = false;
    for block in message.content.iter() {
        match block.kind.as_str() {
            "text" => content.push(ContentPart::text(block.text.as_str())),
            "thinking" => content.push(ContentPart::Thinking {
                text: block.thinking.to_string(),
                signature: block.signature.clone(),
            }),
            "redacted_thinking" => {
                content.push(ContentPart::RedactedThinking { data: block.data.to_string() })
            }
            "tool_use" if block.name.as_str() == STRUCTURED_OUTPUT_TOOL => {
                structured = true;
                content
                    .push(ContentPart::text(block.input.as_ref().map(Value::to_string).unwrap_or_default()));
            }
            "tool_use" => content.push(ContentPart::ToolCall {
                id: block.id.to_string(),
                name: block.name.to_string(),
                arguments: block.input.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into()),
                signature: None,
            }),
            _ => {}
        }
    }
    let mut finish_reason = parse_stop_reason(&message.stop_reason);
    if structured
        && finish_reason == FinishReason::ToolCalls
        && !content.iter().any(|p| matches!(p, ContentPart::ToolCall { .. }))
    {
        finish_reason = FinishReason::Stop;
    }
    let mut usage = TokenUsage::default();
    if let Some(u) = message.usage.as_ref() {
        parse_usage(u, &mut usage);
    }
    Ok(CanonicalResponse {
        id: message.id.clone().unwrap_or_default(),
        model: message.model.clone().unwrap_or_default(),
        created: 0,
        content,
        finish_reason,
        stop_sequence: message.stop_sequence.clone(),
        usage,
        usage_reported: message.usage.is_some(),
        usage_estimated: false,
    })
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

/// `text` as a delta event, unless it is empty.
fn non_empty(text: &str, event: fn(String) -> StreamEvent, out: &mut Vec<StreamEvent>) {
    if !text.is_empty() {
        out.push(event(text.to_string()));
    }
}

impl UpstreamParser for MessagesStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else { return };
        let data: Event = read(&value).unwrap_or_default();
        match data.kind.as_deref().or(event.event.as_deref()).unwrap_or("") {
            "message_start" => {
                if let Some(usage) = data.message.usage.as_ref() {
                    parse_usage(usage, &mut self.usage);
                    out.push(StreamEvent::Usage(self.usage));
                }
                out.push(StreamEvent::Start {
                    id: data.message.id.clone(),
                    model: data.message.model.clone(),
                });
            }
            "content_block_start" => {
                let block = &data.content_block;
                let kind = match block.kind.as_str() {
                    "text" => {
                        non_empty(&block.text, StreamEvent::TextDelta, out);
                        UpstreamBlock::Text
                    }
                    "thinking" => {
                        non_empty(&block.thinking, StreamEvent::ThinkingDelta, out);
                        UpstreamBlock::Thinking
                    }
                    "redacted_thinking" => {
                        out.push(StreamEvent::RedactedThinking(block.data.to_string()));
                        UpstreamBlock::Ignored
                    }
                    "tool_use" if block.name.as_str() == STRUCTURED_OUTPUT_TOOL => {
                        self.structured_output = true;
                        UpstreamBlock::StructuredOutput
                    }
                    "tool_use" => {
                        let tool_index = self.next_tool_index;
                        self.next_tool_index += 1;
                        out.push(StreamEvent::ToolCallStart {
                            tool_index,
                            id: block.id.to_string(),
                            name: block.name.to_string(),
                            signature: None,
                        });
                        if let Some(input) =
                            block.input.as_ref().filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
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
                self.blocks.insert(*data.index, kind);
            }
            "content_block_delta" => {
                let block = self.blocks.get(&data.index).copied().unwrap_or(UpstreamBlock::Ignored);
                let delta = &data.delta;
                match (delta.kind.as_str(), block) {
                    ("text_delta", _) => non_empty(&delta.text, StreamEvent::TextDelta, out),
                    ("thinking_delta", _) => non_empty(&delta.thinking, StreamEvent::ThinkingDelta, out),
                    ("signature_delta", _) => {
                        out.push(StreamEvent::ThinkingSignature(delta.signature.to_string()))
                    }
                    ("input_json_delta", UpstreamBlock::Tool(tool_index))
                        if !delta.partial_json.is_empty() =>
                    {
                        let fragment = delta.partial_json.to_string();
                        out.push(StreamEvent::ToolCallArguments { tool_index, fragment });
                    }
                    ("input_json_delta", UpstreamBlock::StructuredOutput) => {
                        non_empty(&delta.partial_json, StreamEvent::TextDelta, out)
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = data.usage.as_ref() {
                    parse_usage(usage, &mut self.usage);
                    out.push(StreamEvent::Usage(self.usage));
                }
                if let Some(reason) = data.delta.stop_reason.as_deref() {
                    let mut reason = parse_stop_reason(reason);
                    if self.structured_output
                        && self.next_tool_index == 0
                        && reason == FinishReason::ToolCalls
                    {
                        reason = FinishReason::Stop;
                    }
                    out.push(StreamEvent::Finish { reason, stop_sequence: data.delta.stop_sequence.clone() });
                }
            }
            "message_stop" => out.push(StreamEvent::End),
            "error" => out.push(StreamEvent::Error(super::super::upstream_error_from_message(
                status_for_error_type(&data.error.kind),
                &data.error.message,
            ))),
            _ => {}
        }
    }
}

//! Provider side: the `/chat/completions` body built from the hub, and the
//! upstream's answer read back into it (a whole `chat.completion`, or a
//! chunk stream through [`ChatStreamParser`]).

use super::super::canonical::*;
use super::super::json_fields::{invalid, read, to_bytes};
use super::super::media::{data_uri, MediaKind, OPENAI_MEDIA};
use super::super::normalize::{normalize_messages, tool_result_text};
use super::super::reasoning::{effort_for, effort_word};
use super::super::stream::UpstreamParser;
use super::super::UpstreamCall;
use super::wire::*;
use super::{parse_finish_reason, parse_usage, status_for_error_type};
use crate::error::GatewayError;
use crate::provider::OutputLimit;
use crate::sse::SseEvent;
use serde_json::Value;
use std::collections::BTreeMap;

/// Builds a `/chat/completions` body, with the output limit in the field
/// `output_limit` names (the provider row's).
pub(crate) fn build_request(
    req: &CanonicalRequest,
    upstream_model: &str,
    output_limit: OutputLimit,
) -> Result<UpstreamCall, GatewayError> {
    if req.candidate_count.unwrap_or(1) > 1 {
        return Err(invalid("`n` > 1 cannot be translated between API dialects.", "n"));
    }
    if req.logprobs {
        return Err(invalid("`logprobs` cannot be translated between API dialects.", "logprobs"));
    }
    let normalized = normalize_messages(&req.messages);
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        let text = req.system.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join("\n\n");
        messages.push(OutMessage {
            content: OutContent::Text(text),
            role: "system",
            tool_call_id: None,
            tool_calls: Vec::new(),
        });
    }
    for message in &normalized {
        match message.role {
            Role::Assistant => messages.push(assistant_message(&message.content)),
            Role::User => user_messages(&message.content, &mut messages)?,
        }
    }
    if req.top_k.is_some() {
        return Err(invalid("`top_k` is not supported by OpenAI-format upstreams.", "top_k"));
    }
    let limit_field = output_limit.field(req.reasoning.is_some());
    let max_output_tokens = |field: &str| req.max_output_tokens.filter(|_| limit_field == field);
    let body = ChatRequest {
        model: upstream_model,
        messages,
        stream: req.stream,
        stream_options: req.stream.then_some(IncludeUsage { include_usage: true }),
        max_completion_tokens: max_output_tokens("max_completion_tokens"),
        max_tokens: max_output_tokens("max_tokens"),
        temperature: req.temperature.as_ref(),
        top_p: req.top_p.as_ref(),
        presence_penalty: req.presence_penalty.as_ref(),
        frequency_penalty: req.frequency_penalty.as_ref(),
        seed: req.seed,
        stop: &req.stop_sequences,
        user: req.user.as_deref(),
        reasoning_effort: req.reasoning.and_then(effort_for).map(effort_word),
        response_format: match &req.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => {
                Some(OutResponseFormat { json_schema: None, kind: "json_object" })
            }
            Some(ResponseFormat::JsonSchema { name, schema, strict }) => Some(OutResponseFormat {
                json_schema: Some(OutJsonSchema { name, schema, strict: *strict }),
                kind: "json_schema",
            }),
        },
        tools: req
            .tools
            .iter()
            .map(|t| OutTool {
                function: OutFunction {
                    description: t.description.as_deref(),
                    name: &t.name,
                    parameters: &t.parameters,
                    strict: t.strict,
                },
                kind: "function",
            })
            .collect(),
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| !req.tools.is_empty()),
        tool_choice: req.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => OutToolChoice::Mode("auto"),
            ToolChoice::None => OutToolChoice::Mode("none"),
            ToolChoice::Required => OutToolChoice::Mode("required"),
            ToolChoice::Tool(name) => OutToolChoice::Function { function: Named { name }, kind: "function" },
        }),
    };
    Ok(UpstreamCall { path: "/chat/completions".into(), body: to_bytes(&body), stream: req.stream })
}

/// A whole tool call, as a request's or a response's message carries it.
pub(super) fn tool_call<'a>(id: &'a str, name: &'a str, arguments: &'a str) -> OutToolCall<'a> {
    OutToolCall {
        function: OutFunctionCall { arguments, name: Some(name) },
        id: Some(id),
        index: None,
        kind: Some("function"),
    }
}

/// An assistant turn's text (`null` when it is only tool calls) and calls.
pub(super) fn assistant_content(content: &[ContentPart]) -> (Option<String>, Vec<OutToolCall<'_>>) {
    let text: String = content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<OutToolCall<'_>> = content
        .iter()
        .filter_map(|p| match p {
            ContentPart::ToolCall { id, name, arguments, .. } => Some(tool_call(id, name, arguments)),
            _ => None,
        })
        .collect();
    let text = if text.is_empty() && !calls.is_empty() { None } else { Some(text) };
    (text, calls)
}

fn assistant_message(content: &[ContentPart]) -> OutMessage<'_> {
    let (text, tool_calls) = assistant_content(content);
    OutMessage {
        content: text.map_or(OutContent::Null, OutContent::Text),
        role: "assistant",
        tool_call_id: None,
        tool_calls,
    }
}

/// An image as OpenAI's `image_url` part, inline data checked against what
/// OpenAI-format upstreams accept.
fn image_part(source: &MediaSource) -> Result<OutPart<'static>, GatewayError> {
    if let MediaSource::Base64 { media_type, data } = source {
        OPENAI_MEDIA.check_part(MediaKind::Image, media_type, data, "messages")?;
    }
    let url = match source {
        MediaSource::Base64 { media_type, data } => data_uri(media_type, data),
        MediaSource::Url { url } => url.clone(),
        MediaSource::File { uri, .. } => uri.clone(),
    };
    Ok(OutPart { image_url: Some(OutImageUrl { url }), kind: "image_url", ..Default::default() })
}

fn user_messages<'a>(
    content: &'a [ContentPart],
    messages: &mut Vec<OutMessage<'a>>,
) -> Result<(), GatewayError> {
    let mut parts: Vec<OutPart<'a>> = Vec::new();
    for part in content {
        match part {
            ContentPart::ToolResult { tool_call_id, content, is_error, .. } => {
                let mut text = tool_result_text(content);
                if *is_error && !text.is_empty() {
                    text = format!("Error: {text}");
                } else if *is_error {
                    text = "Error".into();
                }
                messages.push(OutMessage {
                    content: OutContent::Text(text),
                    role: "tool",
                    tool_call_id: Some(tool_call_id),
                    tool_calls: Vec::new(),
                });
                // Images in tool results: OpenAI tool messages carry text only,
                // so they follow in the next user message.
                for p in content {
                    if let ToolResultPart::Image(source) = p {
                        parts.push(image_part(source)?);
                    }
                }
            }
            ContentPart::Text { text, .. } => {
                parts.push(OutPart { text: Some(text), kind: "text", ..Default::default() })
            }
            ContentPart::Image { source, .. } => {
                if let MediaSource::File { .. } = source {
                    return Err(invalid(
                        "Provider file references cannot be sent to OpenAI-format upstreams.",
                        "messages",
                    ));
                }
                parts.push(image_part(source)?);
            }
            ContentPart::Document { source, filename, .. } => match source {
                MediaSource::Base64 { media_type, data } => {
                    OPENAI_MEDIA.check_part(MediaKind::Document, media_type, data, "messages")?;
                    let file = OutFile {
                        file_data: data_uri(media_type, data),
                        filename: filename.clone().unwrap_or_else(|| "document.pdf".into()),
                    };
                    parts.push(OutPart { file: Some(file), kind: "file", ..Default::default() });
                }
                _ => return Err(invalid(
                    "Documents given by URL cannot be sent to OpenAI-format upstreams; send them as base64.",
                    "messages",
                )),
            },
            ContentPart::Audio { data, format } => {
                let media_type = super::super::media::audio_media_type(format);
                OPENAI_MEDIA.check_part(MediaKind::Audio, &media_type, data, "messages")?;
                let format = super::super::media::audio_format(&media_type);
                let audio = OutAudio { data, format };
                parts.push(OutPart { input_audio: Some(audio), kind: "input_audio", ..Default::default() })
            }
            ContentPart::Thinking { .. }
            | ContentPart::RedactedThinking { .. }
            | ContentPart::ToolCall { .. } => {}
        }
    }
    if !parts.is_empty() {
        let content = match parts.as_slice() {
            [OutPart { kind: "text", text: Some(text), .. }] => OutContent::Text(text.to_string()),
            _ => OutContent::Parts(parts),
        };
        messages.push(OutMessage { content, role: "user", tool_call_id: None, tool_calls: Vec::new() });
    }
    Ok(())
}

/// Parses a non-streaming upstream `chat.completion`.
pub(crate) fn parse_response(body: &[u8]) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    let completion: Completion = read(&value).ok_or(GatewayError::UpstreamUnavailable)?;
    let choice = completion.choices.first().ok_or(GatewayError::UpstreamUnavailable)?;
    let message = &choice.message;
    let mut content = Vec::new();
    if let Some(text) = message.reasoning_text() {
        content.push(ContentPart::Thinking { text: text.to_string(), signature: None });
    }
    if let Some(text) = message.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(ContentPart::text(text));
    }
    let refusal = message.refusal.as_deref().filter(|t| !t.is_empty());
    if let Some(text) = refusal {
        content.push(ContentPart::text(text));
    }
    for call in message.tool_calls.iter() {
        content.push(ContentPart::ToolCall {
            id: call.id.clone().unwrap_or_default(),
            name: call.function.name.clone().unwrap_or_default(),
            arguments: call.function.arguments.clone().unwrap_or_else(|| "{}".into()),
            signature: None,
        });
    }
    let mut finish_reason = parse_finish_reason(choice.finish_reason.as_deref().unwrap_or(""));
    if refusal.is_some() {
        finish_reason = FinishReason::Refusal;
    }
    let usage = completion.usage.as_ref().and_then(parse_usage);
    Ok(CanonicalResponse {
        id: completion.id.clone().unwrap_or_default(),
        model: completion.model.clone().unwrap_or_default(),
        created: *completion.created,
        content,
        finish_reason,
        stop_sequence: None,
        usage_reported: usage.is_some(),
        usage_estimated: false,
        usage: usage.unwrap_or_default(),
    })
}

/// Reads an upstream OpenAI chat SSE stream.
#[derive(Debug, Default)]
pub(crate) struct ChatStreamParser {
    started: bool,
    /// OpenAI `tool_calls[].index` → canonical tool state.
    tools: BTreeMap<u64, PendingTool>,
    next_tool_index: usize,
}

#[derive(Debug, Default)]
struct PendingTool {
    canonical_index: Option<usize>,
    id: Option<String>,
    name: Option<String>,
    buffered_arguments: String,
}

impl UpstreamParser for ChatStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.flush_unnamed_tools(out);
            out.push(StreamEvent::End);
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(data) else { return };
        let chunk: Completion = read(&value).unwrap_or_default();
        if let Some(error) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            let error: StreamError = read(error).unwrap_or_default();
            let status = error
                .code
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or_else(|| status_for_error_type(&error.kind, error.code.as_str().unwrap_or("")));
            out.push(StreamEvent::Error(super::super::upstream_error_from_message(status, &error.message)));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start { id: chunk.id.0.clone(), model: chunk.model.0.clone() });
        }
        let mut finish = None;
        if let Some(choice) = chunk.choices.first() {
            let delta = &choice.delta;
            if let Some(text) = delta.reasoning_text() {
                out.push(StreamEvent::ThinkingDelta(text.to_string()));
            }
            for text in [&delta.content, &delta.refusal] {
                if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(text.to_string()));
                }
            }
            for call in delta.tool_calls.iter() {
                self.on_tool_delta(call, out);
            }
            finish = choice.finish_reason.as_deref().map(parse_finish_reason);
        }
        let usage = chunk.usage.as_ref().or_else(|| chunk.choices.iter().find_map(|c| c.usage.as_ref()));
        if let Some(usage) = usage.and_then(parse_usage) {
            out.push(StreamEvent::Usage(usage));
        }
        if let Some(reason) = finish {
            self.flush_unnamed_tools(out);
            out.push(StreamEvent::Finish { reason, stop_sequence: None });
        }
    }
}

impl ChatStreamParser {
    fn on_tool_delta(&mut self, call: &ToolCall, out: &mut Vec<StreamEvent>) {
        let key = call.index.unwrap_or(self.tools.len() as u64);
        let fragment = call.function.arguments.as_deref().unwrap_or("");
        let tool = self.tools.entry(key).or_default();
        if let Some(id) = call.id.as_deref().filter(|s| !s.is_empty()) {
            tool.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(name) = call.function.name.as_deref().filter(|s| !s.is_empty()) {
            tool.name.get_or_insert_with(|| name.to_string());
        }
        match tool.canonical_index {
            Some(index) => {
                if !fragment.is_empty() {
                    out.push(StreamEvent::ToolCallArguments {
                        tool_index: index,
                        fragment: fragment.to_string(),
                    });
                }
            }
            None => {
                tool.buffered_arguments.push_str(fragment);
                if tool.name.is_some() {
                    self.start_tool(key, out);
                }
            }
        }
    }

    fn start_tool(&mut self, key: u64, out: &mut Vec<StreamEvent>) {
        let index = self.next_tool_index;
        let Some(tool) = self.tools.get_mut(&key) else { return };
        if tool.canonical_index.is_some() {
            return;
        }
        self.next_tool_index += 1;
        tool.canonical_index = Some(index);
        let id = match &tool.id {
            Some(id) => id.clone(),
            None => format!("call_{index}"),
        };
        out.push(StreamEvent::ToolCallStart {
            tool_index: index,
            id,
            name: tool.name.clone().unwrap_or_default(),
            signature: None,
        });
        let buffered = std::mem::take(&mut tool.buffered_arguments);
        if !buffered.is_empty() {
            out.push(StreamEvent::ToolCallArguments { tool_index: index, fragment: buffered });
        }
    }

    /// Tools whose name never came are started (with an empty name) at the end
    /// rather than lost.
    fn flush_unnamed_tools(&mut self, out: &mut Vec<StreamEvent>) {
        let keys: Vec<u64> =
            self.tools.iter().filter(|(_, t)| t.canonical_index.is_none()).map(|(k, _)| *k).collect();
        for key in keys {
            self.start_tool(key, out);
        }
    }
}

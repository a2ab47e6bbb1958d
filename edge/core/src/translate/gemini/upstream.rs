//! Provider side: the `generateContent` / `streamGenerateContent` body built
//! from the hub, and the upstream's answer read back into it (a whole
//! response, or a chunk stream through [`GeminiStreamParser`]).

use super::super::canonical::*;
use super::super::json_fields::{invalid, read, to_bytes};
use super::super::media::{audio_media_type, media_type_from_url, MediaKind, GEMINI_MEDIA};
use super::super::normalize::{normalize_messages, tool_names_by_id, tool_result_text};
use super::super::reasoning::effort_budget;
use super::super::schema_sanitize::sanitize_for_gemini;
use super::super::stream::UpstreamParser;
use super::super::UpstreamCall;
use super::wire::{self, *};
use super::{parse_finish_reason, parse_usage, GEMINI_FILE_URI_PREFIX, SKIP_SIGNATURE_VALIDATOR};
use crate::error::GatewayError;
use crate::sse::SseEvent;
use serde_json::{json, Value};
use std::collections::HashMap;

fn media_part(source: &MediaSource, kind: MediaKind) -> Result<OutPart<'_>, GatewayError> {
    let default_type = if kind == MediaKind::Image { "image/jpeg" } else { "application/pdf" };
    let file = |file_uri, mime_type: Option<&str>| OutPart {
        file_data: Some(FileData { file_uri, mime_type: mime_type.unwrap_or(default_type).to_string() }),
        ..Default::default()
    };
    match source {
        MediaSource::Base64 { media_type, data } => {
            GEMINI_MEDIA.check_part(kind, media_type, data, "messages")?;
            Ok(OutPart { inline_data: Some(InlineData { data, mime_type: media_type.clone() }), ..Default::default() })
        }
        MediaSource::File { uri, media_type } => {
            Ok(file(uri, media_type.as_deref().or_else(|| media_type_from_url(uri))))
        }
        MediaSource::Url { url } if url.starts_with(GEMINI_FILE_URI_PREFIX) => Ok(file(url, media_type_from_url(url))),
        MediaSource::Url { .. } => Err(invalid(
            "Gemini upstreams cannot fetch media URLs and edgeway does not fetch them: send the image or file as a base64 data URI.",
            "messages",
        )),
    }
}

fn function_response(text: &str, is_error: bool) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) if !is_error => v,
        _ if is_error => json!({"error": text}),
        _ => json!({"result": text}),
    }
}

/// A thought part carrying only a signature.
pub(super) fn signature_part<'a>(signature: String) -> OutPart<'a> {
    OutPart { text: Some(""), thought: true, thought_signature: Some(signature), ..Default::default() }
}

fn contents_for(messages: &[Message]) -> Result<Vec<OutContent<'_>>, GatewayError> {
    let mut contents: Vec<OutContent<'_>> = Vec::new();
    // Tool call id → function name, as of the current point in the
    // conversation, so a result finds the latest call with its id even when
    // ids repeat across turns.
    let mut names: HashMap<String, String> = HashMap::new();
    for message in messages {
        if message.role == Role::Assistant {
            names.extend(tool_names_by_id(std::slice::from_ref(message)));
        }
        let mut parts: Vec<OutPart<'_>> = Vec::new();
        let mut pending_signature: Option<String> = None;
        let mut first_call = true;
        for part in &message.content {
            let mut out = match part {
                ContentPart::Text { text, .. } => OutPart { text: Some(text), ..Default::default() },
                ContentPart::Image { source, .. } => media_part(source, MediaKind::Image)?,
                ContentPart::Document { source, .. } => media_part(source, MediaKind::Document)?,
                ContentPart::Audio { data, format } => {
                    let mime_type = audio_media_type(format);
                    GEMINI_MEDIA.check_part(MediaKind::Audio, &mime_type, data, "messages")?;
                    OutPart { inline_data: Some(InlineData { data, mime_type }), ..Default::default() }
                }
                ContentPart::Thinking { text, signature } => {
                    if message.role != Role::Assistant || signature.is_none() {
                        continue;
                    }
                    if text.is_empty() {
                        pending_signature.clone_from(signature);
                        continue;
                    }
                    OutPart { text: Some(text), thought: true, ..Default::default() }
                }
                ContentPart::RedactedThinking { .. } => continue,
                ContentPart::ToolCall { name, arguments, signature, .. } => {
                    let args = match serde_json::from_str::<Value>(arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ if arguments.trim().is_empty() => json!({}),
                        _ => {
                            return Err(invalid(
                                "Tool call `arguments` must be a JSON object to be sent to Gemini.",
                                "messages",
                            ))
                        }
                    };
                    let signature = signature
                        .clone()
                        .or_else(|| pending_signature.take())
                        .or_else(|| first_call.then(|| SKIP_SIGNATURE_VALIDATOR.to_string()));
                    first_call = false;
                    OutPart {
                        function_call: Some(OutFunctionCall { args, id: None, name }),
                        thought_signature: signature,
                        ..Default::default()
                    }
                }
                ContentPart::ToolResult { tool_call_id, name, content, is_error, .. } => {
                    let name = names.get(tool_call_id).cloned().or_else(|| name.clone()).ok_or_else(|| {
                        invalid(
                            format!("The tool result for call `{tool_call_id}` does not follow a tool call with that id; Gemini needs the function name."),
                            "messages",
                        )
                    })?;
                    let response = function_response(&tool_result_text(content), *is_error);
                    parts.push(OutPart {
                        function_response: Some(FunctionResponse { name, response }),
                        ..Default::default()
                    });
                    for p in content {
                        if let ToolResultPart::Image(source) = p {
                            parts.push(media_part(source, MediaKind::Image)?);
                        }
                    }
                    continue;
                }
            };
            if let Some(sig) = pending_signature.take() {
                out.thought_signature.get_or_insert(sig);
            }
            if let ContentPart::Thinking { signature: Some(sig), .. } = part {
                out.thought_signature = Some(sig.clone());
            }
            parts.push(out);
        }
        if let Some(sig) = pending_signature {
            parts.push(signature_part(sig));
        }
        if parts.is_empty() {
            continue;
        }
        let role = if message.role == Role::User { "user" } else { "model" };
        match contents.last_mut() {
            Some(last) if last.role == Some(role) => last.parts.extend(parts),
            _ => contents.push(OutContent { parts, role: Some(role) }),
        }
    }
    Ok(contents)
}

/// Builds a `generateContent` / `streamGenerateContent` call.
pub(crate) fn build_request(
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<UpstreamCall, GatewayError> {
    if req.candidate_count.unwrap_or(1) > 1 {
        return Err(invalid(
            "`n` > 1 cannot be translated to Gemini upstreams: one candidate is returned.",
            "n",
        ));
    }
    if req.logprobs {
        return Err(invalid(
            "`logprobs` is not supported through translation to Gemini upstreams.",
            "logprobs",
        ));
    }
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        return Err(invalid(
            "Gemini upstreams cannot forbid parallel tool calls; remove `parallel_tool_calls: false` (or `disable_parallel_tool_use`).",
            "parallel_tool_calls",
        ));
    }
    let normalized = normalize_messages(&req.messages);
    let contents = contents_for(&normalized)?;
    let system = req.system.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join("\n\n");
    let (response_mime_type, response_schema) = match &req.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            (Some("application/json"), Some(sanitize_for_gemini(schema)))
        }
    };
    let thinking = |thinking_budget, include_thoughts| ThinkingConfig { include_thoughts, thinking_budget };
    let config = GenerationConfig {
        temperature: req.temperature.as_ref(),
        top_p: req.top_p.as_ref(),
        top_k: req.top_k,
        max_output_tokens: req.max_output_tokens,
        stop_sequences: &req.stop_sequences,
        seed: req.seed,
        presence_penalty: req.presence_penalty.as_ref(),
        frequency_penalty: req.frequency_penalty.as_ref(),
        response_mime_type,
        response_schema,
        thinking_config: match req.reasoning {
            None => None,
            Some(Reasoning::Disabled) | Some(Reasoning::Budget(0)) => Some(thinking(0, false)),
            Some(Reasoning::Effort(effort)) => Some(thinking(effort_budget(effort), true)),
            Some(Reasoning::Budget(budget)) => Some(thinking(budget, true)),
        },
    };
    let declarations = req
        .tools
        .iter()
        .map(|t| {
            let params = sanitize_for_gemini(&t.parameters);
            FunctionDeclaration {
                description: t.description.as_deref(),
                name: &t.name,
                parameters: params.get("properties").is_some().then_some(params),
            }
        })
        .collect::<Vec<_>>();
    let body = GenerateRequest {
        contents,
        generation_config: Some(config).filter(|c| !c.is_empty()),
        safety_settings: req.gemini_safety_settings.as_ref(),
        system_instruction: (!req.system.is_empty()).then(|| OutContent {
            parts: vec![OutPart { text: Some(&system), ..Default::default() }],
            role: None,
        }),
        tool_config: req.tool_choice.as_ref().map(|choice| {
            let (mode, allowed_function_names) = match choice {
                ToolChoice::Auto => ("AUTO", None),
                ToolChoice::None => ("NONE", None),
                ToolChoice::Required => ("ANY", None),
                ToolChoice::Tool(name) => ("ANY", Some([name.as_str()])),
            };
            ToolConfig { function_calling_config: FunctionCallingConfig { allowed_function_names, mode } }
        }),
        tools: (!declarations.is_empty()).then_some([OutTools { function_declarations: declarations }]),
    };
    let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
    let path = if req.stream {
        format!("/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/models/{model}:generateContent")
    };
    Ok(UpstreamCall { path, body: to_bytes(&body), stream: req.stream })
}

/// Stable ids for Gemini function calls, which come without any.
fn synthesized_call_id(seed: &str, n: usize) -> String {
    let seed: String = seed.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
    if seed.is_empty() {
        format!("call_gemini_{n}")
    } else {
        format!("call_{seed}_{n}")
    }
}

fn parts_to_content(parts: &[Part], seed: &str, calls: &mut usize, content: &mut Vec<ContentPart>) {
    for part in parts {
        let signature = part.thought_signature.clone();
        if let Some(call) = part.function_call.as_ref() {
            let id = match call.id.as_deref().filter(|s| !s.is_empty()) {
                Some(id) => id.to_string(),
                None => synthesized_call_id(seed, *calls),
            };
            *calls += 1;
            content.push(ContentPart::ToolCall {
                id,
                name: call.name.to_string(),
                arguments: call.args.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into()),
                signature,
            });
        } else if let Some(text) = part.text.as_deref() {
            if *part.thought {
                content.push(ContentPart::Thinking { text: text.to_string(), signature });
            } else {
                if let Some(sig) = signature {
                    content.push(ContentPart::Thinking { text: String::new(), signature: Some(sig) });
                }
                if !text.is_empty() {
                    match content.last_mut() {
                        Some(ContentPart::Text { text: existing, .. }) => existing.push_str(text),
                        _ => content.push(ContentPart::text(text)),
                    }
                }
            }
        } else if let Some(sig) = signature {
            content.push(ContentPart::Thinking { text: String::new(), signature: Some(sig) });
        }
    }
}

/// The finish reason a candidate says, or a blocked prompt implies.
fn finish_reason(response: &wire::Response) -> Option<FinishReason> {
    match response.candidates.first().and_then(|c| c.finish_reason.as_deref()) {
        Some(reason) => Some(parse_finish_reason(reason)),
        None if response.prompt_feedback.block_reason.is_some() => Some(FinishReason::ContentFilter),
        None => None,
    }
}

/// The first candidate's parts.
fn first_parts(response: &wire::Response) -> &[Part] {
    response.candidates.first().map_or(&[], |c| c.content.parts.as_slice())
}

/// Parses a non-streaming `GenerateContentResponse`. `id_seed` makes the
/// synthesized tool call ids (the upstream `responseId` when empty).
pub(crate) fn parse_response(body: &[u8], id_seed: &str) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    if !value.is_object() || value.get("error").is_some() {
        return Err(GatewayError::UpstreamUnavailable);
    }
    let response: wire::Response = read(&value).unwrap_or_default();
    let response_id = response.response_id.as_deref().unwrap_or("");
    let seed = if id_seed.is_empty() { response_id } else { id_seed };
    let mut content = Vec::new();
    let mut calls = 0;
    parts_to_content(first_parts(&response), seed, &mut calls, &mut content);
    let mut finish_reason = finish_reason(&response).unwrap_or(FinishReason::Stop);
    if calls > 0 && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    let usage = response.usage_metadata.as_ref().map(parse_usage);
    Ok(CanonicalResponse {
        id: response_id.to_string(),
        model: response.model_version.clone().unwrap_or_default(),
        created: 0,
        content,
        finish_reason,
        stop_sequence: None,
        usage_reported: usage.is_some(),
        usage_estimated: false,
        usage: usage.unwrap_or_default(),
    })
}

/// Reads an upstream `streamGenerateContent?alt=sse` stream.
#[derive(Debug)]
pub(crate) struct GeminiStreamParser {
    id_seed: String,
    started: bool,
    calls: usize,
}

impl GeminiStreamParser {
    pub(crate) fn new(id_seed: &str) -> Self {
        Self { id_seed: id_seed.to_string(), started: false, calls: 0 }
    }
}

impl UpstreamParser for GeminiStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else { return };
        let chunk: wire::Response = read(&value).unwrap_or_default();
        if let Some(error) = chunk.error.as_ref().filter(|e| e.is_object()) {
            let error: StreamError = read(error).unwrap_or_default();
            let status = error.code.and_then(|c| u16::try_from(c).ok()).filter(|c| (400..600).contains(c));
            out.push(StreamEvent::Error(super::super::upstream_error_from_message(
                status.unwrap_or(500),
                &error.message,
            )));
            return;
        }
        // Usage first, so a client stream that starts now can show the prompt count.
        if let Some(meta) = chunk.usage_metadata.as_ref() {
            out.push(StreamEvent::Usage(parse_usage(meta)));
        }
        if !self.started {
            self.started = true;
            if self.id_seed.is_empty() {
                self.id_seed = chunk.response_id.clone().unwrap_or_default();
            }
            out.push(StreamEvent::Start {
                id: chunk.response_id.clone(),
                model: chunk.model_version.clone(),
            });
        }
        let mut content = Vec::new();
        let mut tool_index = self.calls;
        parts_to_content(first_parts(&chunk), &self.id_seed, &mut self.calls, &mut content);
        for part in content {
            match part {
                ContentPart::Text { text, .. } => out.push(StreamEvent::TextDelta(text)),
                ContentPart::Thinking { text, signature } => {
                    if !text.is_empty() {
                        out.push(StreamEvent::ThinkingDelta(text));
                    }
                    if let Some(sig) = signature {
                        out.push(StreamEvent::ThinkingSignature(sig));
                    }
                }
                ContentPart::ToolCall { id, name, arguments, signature } => {
                    out.push(StreamEvent::ToolCallStart { tool_index, id, name, signature });
                    out.push(StreamEvent::ToolCallArguments { tool_index, fragment: arguments });
                    tool_index += 1;
                }
                _ => {}
            }
        }
        if let Some(reason) = finish_reason(&chunk) {
            out.push(StreamEvent::Finish { reason, stop_sequence: None });
        }
    }
}

//! OpenAI Responses (`/v1/responses`) as a client dialect. The parser is
//! stateless: the conversation comes whole in `input`; a request with
//! `previous_response_id` is expanded with its stored conversation before it
//! gets here ([`super::responses_state`]).
//!
//! Reasoning travels as `reasoning` items: the summary text is the thinking
//! text and `encrypted_content` carries the provider signature (Anthropic
//! `signature` or Gemini `thoughtSignature`), so signed reasoning survives a
//! round trip through a Responses client.

use super::canonical::*;
use super::json_fields::*;
use super::media::{normalize_base64, parse_data_uri, source_from_url_or_data};
use super::openai_chat::parse_response_format;
use super::reasoning::parse_effort;
use super::stream::ClientRenderer;
use super::REDACTED_THINKING_PREFIX;
use crate::error::{Dialect, GatewayError};
use crate::sse::encode_event;
use crate::usage::TokenUsage;
use serde_json::{json, Value};
use std::collections::HashMap;

const SUPPORTED_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "reasoning",
    "text",
    "user",
    "metadata",
    "store",
    "include",
    "truncation",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "top_logprobs",
    "stream_options",
];
const UNSUPPORTED_FIELDS: &[&str] =
    &["previous_response_id", "background", "conversation", "prompt", "max_tool_calls"];

/// Parses a `/v1/responses` body.
pub(crate) fn parse_request(body: &[u8]) -> Result<CanonicalRequest, GatewayError> {
    let obj = parse_object(body)?;
    if obj.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "edgeway's Responses API is stateless: `previous_response_id` is not supported; send the whole conversation in `input`.",
            "previous_response_id",
        ));
    }
    check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    let mut req = CanonicalRequest { model: req_str(&obj, "model", "")?.to_string(), ..Default::default() };
    req.stream = opt_bool(&obj, "stream", "")?.unwrap_or(false);
    req.max_output_tokens = opt_u64(&obj, "max_output_tokens", "")?;
    req.temperature = opt_number(&obj, "temperature", "")?;
    req.top_p = opt_number(&obj, "top_p", "")?;
    req.logprobs = opt_u64(&obj, "top_logprobs", "")?.unwrap_or(0) > 0;
    req.user = opt_str(&obj, "user", "")?.or(opt_str(&obj, "safety_identifier", "")?).map(str::to_string);
    req.parallel_tool_calls = opt_bool(&obj, "parallel_tool_calls", "")?;
    if let Some(instructions) = opt_str(&obj, "instructions", "")?.filter(|s| !s.is_empty()) {
        req.system.push(SystemBlock { text: instructions.to_string(), cache_control: None });
    }
    if let Some(reasoning) = opt_object(&obj, "reasoning", "")? {
        if let Some(word) = opt_str(reasoning, "effort", "reasoning")? {
            req.reasoning = Some(parse_effort(word).ok_or_else(|| {
                invalid(format!("`reasoning.effort` `{word}` is not valid."), "reasoning.effort")
            })?);
        }
    }
    if let Some(text) = opt_object(&obj, "text", "")? {
        if let Some(format) = opt_object(text, "format", "text")? {
            req.response_format = Some(match req_str(format, "type", "text.format")? {
                "json_schema" => ResponseFormat::JsonSchema {
                    name: opt_str(format, "name", "text.format")?.unwrap_or("response").to_string(),
                    schema: format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                    strict: opt_bool(format, "strict", "text.format")?,
                },
                _ => parse_response_format(format)?,
            });
        }
    }
    if let Some(tools) = opt_array(&obj, "tools", "")? {
        for (i, tool) in tools.iter().enumerate() {
            let path = format!("tools[{i}]");
            let t = as_object(tool, &path)?;
            let kind = req_str(t, "type", &path)?;
            if kind != "function" {
                return Err(invalid(
                    format!("Tool type `{kind}` cannot be translated; only `function` tools can."),
                    &format!("{path}.type"),
                ));
            }
            req.tools.push(ToolDefinition {
                name: req_str(t, "name", &path)?.to_string(),
                description: opt_str(t, "description", &path)?.map(str::to_string),
                parameters: t
                    .get("parameters")
                    .filter(|p| !p.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: opt_bool(t, "strict", &path)?,
                cache_control: None,
            });
        }
    }
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            req.tool_choice = Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(invalid(format!("`tool_choice` `{other}` is not valid."), "tool_choice"))
                }
            })
        }
        Some(Value::Object(choice)) => match req_str(choice, "type", "tool_choice")? {
            "function" => {
                req.tool_choice = Some(ToolChoice::Tool(req_str(choice, "name", "tool_choice")?.to_string()))
            }
            other => {
                return Err(invalid(
                    format!("`tool_choice.type` `{other}` cannot be translated."),
                    "tool_choice.type",
                ))
            }
        },
        Some(_) => return Err(invalid("`tool_choice` must be a string or an object.", "tool_choice")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => {
            req.messages.push(Message { role: Role::User, content: vec![ContentPart::text(s.clone())] })
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                parse_item(item, &format!("input[{i}]"), &mut req)?;
            }
        }
        None | Some(Value::Null) => return Err(invalid("Missing required parameter: `input`.", "input")),
        Some(_) => return Err(invalid("`input` must be a string or an array of items.", "input")),
    }
    Ok(req)
}

fn push(req: &mut CanonicalRequest, role: Role, content: Vec<ContentPart>) {
    match req.messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(content),
        _ => req.messages.push(Message { role, content }),
    }
}

fn parse_item(item: &Value, path: &str, req: &mut CanonicalRequest) -> Result<(), GatewayError> {
    let obj = as_object(item, path)?;
    let kind = opt_str(obj, "type", path)?.unwrap_or("message");
    match kind {
        "message" => {
            let role = req_str(obj, "role", path)?;
            let parts = parse_message_content(obj.get("content"), &format!("{path}.content"))?;
            match role {
                "system" | "developer" => {
                    for part in parts {
                        if let ContentPart::Text { text, .. } = part {
                            req.system.push(SystemBlock { text, cache_control: None });
                        }
                    }
                }
                "user" => push(req, Role::User, parts),
                "assistant" => push(req, Role::Assistant, parts),
                other => {
                    return Err(invalid(
                        format!("`{path}.role` `{other}` is not valid."),
                        &format!("{path}.role"),
                    ))
                }
            }
        }
        "function_call" => push(
            req,
            Role::Assistant,
            vec![ContentPart::ToolCall {
                id: req_str(obj, "call_id", path)?.to_string(),
                name: req_str(obj, "name", path)?.to_string(),
                arguments: opt_str(obj, "arguments", path)?.unwrap_or("{}").to_string(),
                signature: None,
            }],
        ),
        "function_call_output" => {
            let content = match obj.get("output") {
                Some(Value::String(s)) => vec![ToolResultPart::Text(s.clone())],
                Some(Value::Array(_)) => parse_message_content(obj.get("output"), &format!("{path}.output"))?
                    .into_iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text, .. } => Some(ToolResultPart::Text(text)),
                        ContentPart::Image { source, .. } => Some(ToolResultPart::Image(source)),
                        _ => None,
                    })
                    .collect(),
                _ => {
                    return Err(invalid(
                        format!("`{path}.output` must be a string or an array."),
                        &format!("{path}.output"),
                    ))
                }
            };
            push(
                req,
                Role::User,
                vec![ContentPart::ToolResult {
                    tool_call_id: req_str(obj, "call_id", path)?.to_string(),
                    name: None,
                    content,
                    is_error: false,
                    cache_control: None,
                }],
            );
        }
        "reasoning" => {
            let text: String = opt_array(obj, "summary", path)?
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n\n");
            let signature = opt_str(obj, "encrypted_content", path)?.filter(|s| !s.is_empty());
            let part = match signature.and_then(|s| s.strip_prefix(REDACTED_THINKING_PREFIX)) {
                Some(data) if text.is_empty() => ContentPart::RedactedThinking { data: data.to_string() },
                _ => ContentPart::Thinking { text, signature: signature.map(str::to_string) },
            };
            push(req, Role::Assistant, vec![part]);
        }
        other => {
            return Err(invalid(
                format!("Input item type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ));
        }
    }
    Ok(())
}

fn parse_message_content(content: Option<&Value>, path: &str) -> Result<Vec<ContentPart>, GatewayError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(vec![ContentPart::text(s.clone())]),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(invalid(format!("`{path}` must be a string or an array."), path)),
    };
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let ppath = format!("{path}[{i}]");
            let p = as_object(part, &ppath)?;
            Ok(match req_str(p, "type", &ppath)? {
                "input_text" | "output_text" | "text" => ContentPart::text(req_str(p, "text", &ppath)?),
                "refusal" => ContentPart::text(req_str(p, "refusal", &ppath)?),
                "input_image" => {
                    if p.get("file_id").is_some_and(|v| !v.is_null()) {
                        return Err(invalid(
                            "Uploaded `file_id` images cannot be translated; send `image_url`.",
                            &format!("{ppath}.file_id"),
                        ));
                    }
                    let url = req_str(p, "image_url", &ppath)?;
                    ContentPart::Image {
                        source: source_from_url_or_data(url, &format!("{ppath}.image_url"))?,
                        cache_control: None,
                    }
                }
                "input_file" => {
                    if let Some(url) = opt_str(p, "file_url", &ppath)? {
                        ContentPart::Document {
                            source: source_from_url_or_data(url, &format!("{ppath}.file_url"))?,
                            filename: opt_str(p, "filename", &ppath)?.map(str::to_string),
                            cache_control: None,
                        }
                    } else {
                        let data = opt_str(p, "file_data", &ppath)?.ok_or_else(|| {
                            invalid(
                                "`input_file` needs `file_data` (a base64 data URI) or `file_url`.",
                                &format!("{ppath}.file_data"),
                            )
                        })?;
                        let (media_type, data) = parse_data_uri(data, &format!("{ppath}.file_data"))?;
                        ContentPart::Document {
                            source: MediaSource::Base64 { media_type, data },
                            filename: opt_str(p, "filename", &ppath)?.map(str::to_string),
                            cache_control: None,
                        }
                    }
                }
                "input_audio" => {
                    let audio = opt_object(p, "input_audio", &ppath)?.unwrap_or(p);
                    let data = normalize_base64(req_str(audio, "data", &ppath)?, &format!("{ppath}.data"))?;
                    ContentPart::Audio {
                        data: data.into_owned(),
                        format: req_str(audio, "format", &ppath)?.to_string(),
                    }
                }
                other => {
                    return Err(invalid(
                        format!("Content part type `{other}` cannot be translated."),
                        &format!("{ppath}.type"),
                    ))
                }
            })
        })
        .collect()
}

fn id_suffix(id: &str) -> String {
    let s: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).take(24).collect();
    if s.is_empty() {
        "0".into()
    } else {
        s
    }
}

fn usage_json(usage: &TokenUsage) -> Value {
    json!({
        "input_tokens": usage.prompt_total(),
        "input_tokens_details": {"cached_tokens": usage.cache_read},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total(),
    })
}

fn status_of(reason: &FinishReason) -> (&'static str, Value) {
    match reason {
        FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter | FinishReason::Refusal => {
            ("incomplete", json!({"reason": "content_filter"}))
        }
        _ => ("completed", Value::Null),
    }
}

fn reasoning_item(id: String, text: &str, signature: Option<&str>) -> Value {
    let summary = if text.is_empty() { json!([]) } else { json!([{"type": "summary_text", "text": text}]) };
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
    if let Some(sig) = signature {
        item["encrypted_content"] = json!(sig);
    }
    item
}

fn message_item(id: String, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn function_item(id: String, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

fn response_object(
    id: &str,
    model: &str,
    created: i64,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    })
}

/// Renders a `response` object for a Responses client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Value {
    let suffix = id_suffix(&resp.id);
    let mut output: Vec<Value> = Vec::new();
    let mut text = String::new();
    let flush_text = |text: &mut String, output: &mut Vec<Value>| {
        if !text.is_empty() {
            output.push(message_item(format!("msg_{suffix}_{}", output.len()), text, "completed"));
            text.clear();
        }
    };
    for part in &resp.content {
        match part {
            ContentPart::Text { text: t, .. } => text.push_str(t),
            ContentPart::Thinking { text: t, signature } => {
                flush_text(&mut text, &mut output);
                output.push(reasoning_item(format!("rs_{suffix}_{}", output.len()), t, signature.as_deref()));
            }
            ContentPart::RedactedThinking { data } => {
                flush_text(&mut text, &mut output);
                output.push(reasoning_item(
                    format!("rs_{suffix}_{}", output.len()),
                    "",
                    Some(&format!("{REDACTED_THINKING_PREFIX}{data}")),
                ));
            }
            ContentPart::ToolCall { id, name, arguments, signature } => {
                flush_text(&mut text, &mut output);
                if let Some(sig) = signature {
                    output.push(reasoning_item(format!("rs_{suffix}_{}", output.len()), "", Some(sig)));
                }
                output.push(function_item(
                    format!("fc_{suffix}_{}", output.len()),
                    id,
                    name,
                    arguments,
                    "completed",
                ));
            }
            _ => {}
        }
    }
    flush_text(&mut text, &mut output);
    let (status, incomplete) = status_of(&resp.finish_reason);
    response_object(
        &resp.id,
        &resp.model,
        resp.created,
        status,
        incomplete,
        output,
        super::marked(usage_json(&resp.usage), resp.usage_estimated),
    )
}

#[derive(Debug)]
enum OpenItem {
    Reasoning {
        output_index: usize,
        item_id: String,
        text: String,
        summary_open: bool,
    },
    Message {
        output_index: usize,
        item_id: String,
        text: String,
    },
    Function {
        output_index: usize,
        item_id: String,
        tool_index: usize,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Writes a Responses SSE stream: `response.created` → `output_item.added` →
/// `content_part.added` → `output_text.delta` … → `response.completed` (or
/// `response.incomplete`), every event with its `sequence_number`.
#[derive(Debug)]
pub(crate) struct ResponsesStreamRenderer {
    id: String,
    model: String,
    created: i64,
    suffix: String,
    sequence: u64,
    started: bool,
    open: Option<OpenItem>,
    output: Vec<Value>,
    /// tool index → output index of its finished item (for late fragments).
    finished_tools: HashMap<usize, usize>,
}

impl ResponsesStreamRenderer {
    pub(crate) fn new(id: String, model: String, created: i64) -> Self {
        let suffix = id_suffix(&id);
        Self {
            id,
            model,
            created,
            suffix,
            sequence: 0,
            started: false,
            open: None,
            output: Vec::new(),
            finished_tools: HashMap::new(),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        encode_event(out, Some(name), &data.to_string());
    }

    fn snapshot(&self, status: &str, incomplete: Value, usage: Value) -> Value {
        response_object(&self.id, &self.model, self.created, status, incomplete, self.output.clone(), usage)
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.snapshot("in_progress", Value::Null, Value::Null);
        self.emit(out, "response.created", json!({"response": response}));
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn next_index(&self) -> usize {
        self.output.len()
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let output_index = self.next_index();
        let item_id = format!("rs_{}_{output_index}", self.suffix);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": reasoning_item(item_id.clone(), "", None)}),
        );
        self.open =
            Some(OpenItem::Reasoning { output_index, item_id, text: String::new(), summary_open: false });
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        self.close_with_signature(None, out);
    }

    fn close_with_signature(&mut self, signature: Option<&str>, out: &mut Vec<u8>) {
        let Some(item) = self.open.take() else { return };
        match item {
            OpenItem::Reasoning { output_index, item_id, text, summary_open } => {
                if summary_open {
                    self.emit(out, "response.reasoning_summary_text.done", json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "text": text}));
                    self.emit(out, "response.reasoning_summary_part.done", json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "part": {"type": "summary_text", "text": text}}));
                }
                let item = reasoning_item(item_id, &text, signature);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
                self.output.push(item);
            }
            OpenItem::Message { output_index, item_id, text } => {
                self.emit(out, "response.output_text.done", json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(out, "response.content_part.done", json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                let item = message_item(item_id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
                self.output.push(item);
            }
            OpenItem::Function { output_index, item_id, tool_index, call_id, name, arguments } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "arguments": arguments}),
                );
                let item = function_item(item_id, &call_id, &name, &arguments, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
                self.output.push(item);
                self.finished_tools.insert(tool_index, output_index);
            }
        }
    }
}

impl ClientRenderer for ResponsesStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        if matches!(event, StreamEvent::Usage(_)) {
            return;
        }
        self.ensure_started(out);
        match event {
            StreamEvent::TextDelta(delta) => {
                if !matches!(self.open, Some(OpenItem::Message { .. })) {
                    self.close(out);
                    let output_index = self.next_index();
                    let item_id = format!("msg_{}_{output_index}", self.suffix);
                    self.emit(out, "response.output_item.added", json!({"output_index": output_index,
                        "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
                    self.emit(
                        out,
                        "response.content_part.added",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
                    );
                    self.open = Some(OpenItem::Message { output_index, item_id, text: String::new() });
                }
                if let Some(OpenItem::Message { output_index, item_id, text }) = &mut self.open {
                    text.push_str(delta);
                    let data = json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": []});
                    self.emit(out, "response.output_text.delta", data);
                }
            }
            StreamEvent::ThinkingDelta(delta) => {
                if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                    self.open_reasoning(out);
                }
                if let Some(OpenItem::Reasoning { output_index, item_id, text, summary_open }) =
                    &mut self.open
                {
                    let (output_index, item_id) = (*output_index, item_id.clone());
                    let first = !*summary_open;
                    *summary_open = true;
                    text.push_str(delta);
                    if first {
                        self.emit(
                            out,
                            "response.reasoning_summary_part.added",
                            json!({"item_id": item_id, "output_index": output_index, "summary_index": 0,
                            "part": {"type": "summary_text", "text": ""}}),
                        );
                    }
                    self.emit(out, "response.reasoning_summary_text.delta", json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "delta": delta}));
                }
            }
            StreamEvent::ThinkingSignature(signature) => {
                if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                    self.open_reasoning(out);
                }
                self.close_with_signature(Some(signature), out);
            }
            StreamEvent::RedactedThinking(data) => {
                self.open_reasoning(out);
                self.close_with_signature(Some(&format!("{REDACTED_THINKING_PREFIX}{data}")), out);
            }
            StreamEvent::ToolCallStart { tool_index, id, name, signature } => {
                if let Some(sig) = signature {
                    self.open_reasoning(out);
                    self.close_with_signature(Some(sig), out);
                }
                self.close(out);
                let output_index = self.next_index();
                let item_id = format!("fc_{}_{output_index}", self.suffix);
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index,
                    "item": function_item(item_id.clone(), id, name, "", "in_progress")}),
                );
                self.open = Some(OpenItem::Function {
                    output_index,
                    item_id,
                    tool_index: *tool_index,
                    call_id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => match &mut self.open {
                Some(OpenItem::Function {
                    output_index, item_id, tool_index: open_index, arguments, ..
                }) if open_index == tool_index => {
                    arguments.push_str(fragment);
                    let data = json!({"item_id": item_id, "output_index": output_index, "delta": fragment});
                    self.emit(out, "response.function_call_arguments.delta", data);
                }
                _ => {
                    // A fragment for a call already closed: keep it in the final output.
                    if let Some(item) =
                        self.finished_tools.get(tool_index).and_then(|&i| self.output.get_mut(i))
                    {
                        let joined = format!("{}{fragment}", item["arguments"].as_str().unwrap_or(""));
                        item["arguments"] = json!(joined);
                    }
                }
            },
            StreamEvent::Finish { .. } => self.close(out),
            StreamEvent::Start { .. } | StreamEvent::Usage(_) | StreamEvent::Error(_) | StreamEvent::End => {}
        }
    }

    fn end(
        &mut self,
        reason: &FinishReason,
        _stop_sequence: Option<&str>,
        usage: Option<&TokenUsage>,
        estimated: bool,
        out: &mut Vec<u8>,
    ) {
        self.ensure_started(out);
        self.close(out);
        let (status, incomplete) = status_of(reason);
        let usage = super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated);
        let response = self.snapshot(status, incomplete, usage);
        let name = if status == "completed" { "response.completed" } else { "response.incomplete" };
        self.emit(out, name, json!({"response": response}));
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        let body = error.to_json(Dialect::OpenAi);
        let detail = body.get("error").cloned().unwrap_or(Value::Null);
        let code =
            detail.get("code").cloned().filter(|c| !c.is_null()).unwrap_or_else(|| detail["type"].clone());
        self.emit(
            out,
            "error",
            json!({"code": code, "message": detail["message"], "param": detail["param"]}),
        );
        if self.started {
            // The item cut short is reported as it stood, marked incomplete.
            match self.open.take() {
                Some(OpenItem::Message { item_id, text, .. }) => {
                    self.output.push(message_item(item_id, &text, "incomplete"))
                }
                Some(OpenItem::Function { item_id, call_id, name, arguments, .. }) => {
                    self.output.push(function_item(item_id, &call_id, &name, &arguments, "incomplete"))
                }
                Some(OpenItem::Reasoning { item_id, text, .. }) => {
                    self.output.push(reasoning_item(item_id, &text, None))
                }
                None => {}
            }
            let mut response = self.snapshot("failed", Value::Null, Value::Null);
            response["error"] = json!({"code": code, "message": detail["message"]});
            self.emit(out, "response.failed", json!({"response": response}));
        }
    }
}

//! Client side, outbound: the `response` object a Responses client gets,
//! and the event stream written by [`ResponsesStreamRenderer`].

use super::super::canonical::*;
use super::super::json_fields::{to_bytes, to_text};
use super::super::stream::ClientRenderer;
use super::super::REDACTED_THINKING_PREFIX;
use super::wire::*;
use crate::error::{Dialect, GatewayError};
use crate::sse::encode_event;
use crate::usage::TokenUsage;
use serde_json::{json, Value};
use std::collections::HashMap;

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

fn status_of(reason: &FinishReason) -> (&'static str, Option<Incomplete>) {
    match reason {
        FinishReason::Length => ("incomplete", Some(Incomplete { reason: "max_output_tokens" })),
        FinishReason::ContentFilter | FinishReason::Refusal => {
            ("incomplete", Some(Incomplete { reason: "content_filter" }))
        }
        _ => ("completed", None),
    }
}

fn output_text(text: &str) -> TextPart {
    TextPart { annotations: Some([]), text: text.to_string(), kind: "output_text" }
}

fn summary_text(text: &str) -> TextPart {
    TextPart { annotations: None, text: text.to_string(), kind: "summary_text" }
}

fn reasoning_item(id: String, text: &str, signature: Option<&str>) -> Item {
    let summary = if text.is_empty() { Vec::new() } else { vec![summary_text(text)] };
    Item {
        encrypted_content: signature.map(str::to_string),
        id,
        summary: Some(summary),
        kind: "reasoning",
        ..Default::default()
    }
}

fn message_item(id: String, text: &str, status: &'static str) -> Item {
    Item {
        content: Some(vec![output_text(text)]),
        id,
        role: Some("assistant"),
        status: Some(status),
        kind: "message",
        ..Default::default()
    }
}

fn function_item(id: String, call_id: &str, name: &str, arguments: &str, status: &'static str) -> Item {
    Item {
        arguments: Some(arguments.to_string()),
        call_id: Some(call_id.to_string()),
        id,
        name: Some(name.to_string()),
        status: Some(status),
        kind: "function_call",
        ..Default::default()
    }
}

/// A `response` object (`error` is set by the caller when the stream failed).
fn response_object<'a>(
    id: &'a str,
    model: &'a str,
    created: i64,
    (status, incomplete): (&'static str, Option<Incomplete>),
    output: &'a [Item],
    usage: Option<Value>,
) -> OutResponse<'a> {
    OutResponse {
        created_at: created,
        error: Value::Null,
        id,
        incomplete_details: incomplete,
        model,
        object: "response",
        output,
        parallel_tool_calls: true,
        status,
        tool_choice: "auto",
        tools: [],
        usage,
    }
}

/// Renders a `response` object for a Responses client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Vec<u8> {
    let suffix = id_suffix(&resp.id);
    let mut output: Vec<Item> = Vec::new();
    let mut text = String::new();
    let flush_text = |text: &mut String, output: &mut Vec<Item>| {
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
                let item_id = format!("fc_{suffix}_{}", output.len());
                output.push(function_item(item_id, id, name, arguments, "completed"));
            }
            _ => {}
        }
    }
    flush_text(&mut text, &mut output);
    let usage = super::super::marked(usage_json(&resp.usage), resp.usage_estimated);
    to_bytes(&response_object(
        &resp.id,
        &resp.model,
        resp.created,
        status_of(&resp.finish_reason),
        &output,
        Some(usage),
    ))
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

/// Numbers and writes the events (a field of its own, so that an event may
/// borrow the rest of the renderer's state).
#[derive(Debug, Default)]
struct Sequence {
    next: u64,
}

impl Sequence {
    fn emit(&mut self, out: &mut Vec<u8>, name: &'static str, mut event: OutEvent<'_>) {
        event.kind = name;
        event.sequence_number = self.next;
        self.next += 1;
        encode_event(out, Some(name), &to_text(&event));
    }
}

/// An event about `item_id` at `output_index`.
fn about<'a>(item_id: &'a str, output_index: usize) -> OutEvent<'a> {
    OutEvent { item_id: Some(item_id), output_index: Some(output_index), ..Default::default() }
}

/// An event that carries a whole item.
fn with_item(output_index: usize, item: &Item) -> OutEvent<'_> {
    OutEvent { item: Some(item), output_index: Some(output_index), ..Default::default() }
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
    events: Sequence,
    started: bool,
    open: Option<OpenItem>,
    output: Vec<Item>,
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
            events: Sequence::default(),
            started: false,
            open: None,
            output: Vec::new(),
            finished_tools: HashMap::new(),
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for name in ["response.created", "response.in_progress"] {
            let response = response_object(
                &self.id,
                &self.model,
                self.created,
                ("in_progress", None),
                &self.output,
                None,
            );
            self.events.emit(out, name, OutEvent { response: Some(response), ..Default::default() });
        }
    }

    fn next_index(&self) -> usize {
        self.output.len()
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let output_index = self.next_index();
        let item_id = format!("rs_{}_{output_index}", self.suffix);
        let item = reasoning_item(item_id.clone(), "", None);
        self.events.emit(out, "response.output_item.added", with_item(output_index, &item));
        self.open =
            Some(OpenItem::Reasoning { output_index, item_id, text: String::new(), summary_open: false });
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        self.close_with_signature(None, out);
    }

    fn close_with_signature(&mut self, signature: Option<&str>, out: &mut Vec<u8>) {
        let Some(item) = self.open.take() else { return };
        let (output_index, item) = match item {
            OpenItem::Reasoning { output_index, item_id, text, summary_open } => {
                if summary_open {
                    let summary = |part| OutEvent {
                        part,
                        summary_index: Some(0),
                        text: Some(&text),
                        ..about(&item_id, output_index)
                    };
                    self.events.emit(out, "response.reasoning_summary_text.done", summary(None));
                    let mut done = summary(Some(summary_text(&text)));
                    done.text = None;
                    self.events.emit(out, "response.reasoning_summary_part.done", done);
                }
                (output_index, reasoning_item(item_id, &text, signature))
            }
            OpenItem::Message { output_index, item_id, text } => {
                let event = OutEvent {
                    content_index: Some(0),
                    logprobs: Some([]),
                    text: Some(&text),
                    ..about(&item_id, output_index)
                };
                self.events.emit(out, "response.output_text.done", event);
                let event = OutEvent {
                    content_index: Some(0),
                    part: Some(output_text(&text)),
                    ..about(&item_id, output_index)
                };
                self.events.emit(out, "response.content_part.done", event);
                (output_index, message_item(item_id, &text, "completed"))
            }
            OpenItem::Function { output_index, item_id, tool_index, call_id, name, arguments } => {
                let event = OutEvent { arguments: Some(&arguments), ..about(&item_id, output_index) };
                self.events.emit(out, "response.function_call_arguments.done", event);
                self.finished_tools.insert(tool_index, output_index);
                (output_index, function_item(item_id, &call_id, &name, &arguments, "completed"))
            }
        };
        self.events.emit(out, "response.output_item.done", with_item(output_index, &item));
        self.output.push(item);
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
                    let item = Item {
                        content: Some(Vec::new()),
                        status: Some("in_progress"),
                        ..message_item(item_id.clone(), "", "in_progress")
                    };
                    self.events.emit(out, "response.output_item.added", with_item(output_index, &item));
                    let event = OutEvent {
                        content_index: Some(0),
                        part: Some(output_text("")),
                        ..about(&item_id, output_index)
                    };
                    self.events.emit(out, "response.content_part.added", event);
                    self.open = Some(OpenItem::Message { output_index, item_id, text: String::new() });
                }
                if let Some(OpenItem::Message { output_index, item_id, text }) = &mut self.open {
                    text.push_str(delta);
                    let event = OutEvent {
                        content_index: Some(0),
                        delta: Some(delta),
                        logprobs: Some([]),
                        ..about(item_id, *output_index)
                    };
                    self.events.emit(out, "response.output_text.delta", event);
                }
            }
            StreamEvent::ThinkingDelta(delta) => {
                if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                    self.open_reasoning(out);
                }
                if let Some(OpenItem::Reasoning { output_index, item_id, text, summary_open }) =
                    &mut self.open
                {
                    text.push_str(delta);
                    if !*summary_open {
                        *summary_open = true;
                        let event = OutEvent {
                            part: Some(summary_text("")),
                            summary_index: Some(0),
                            ..about(item_id, *output_index)
                        };
                        self.events.emit(out, "response.reasoning_summary_part.added", event);
                    }
                    let event = OutEvent {
                        delta: Some(delta),
                        summary_index: Some(0),
                        ..about(item_id, *output_index)
                    };
                    self.events.emit(out, "response.reasoning_summary_text.delta", event);
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
                let item = function_item(item_id.clone(), id, name, "", "in_progress");
                self.events.emit(out, "response.output_item.added", with_item(output_index, &item));
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
                    let event = OutEvent { delta: Some(fragment), ..about(item_id, *output_index) };
                    self.events.emit(out, "response.function_call_arguments.delta", event);
                }
                _ => {
                    // A fragment for a call already closed: keep it in the final output.
                    if let Some(item) =
                        self.finished_tools.get(tool_index).and_then(|&i| self.output.get_mut(i))
                    {
                        item.arguments.get_or_insert_with(String::new).push_str(fragment);
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
        let status = status_of(reason);
        let name = if status.0 == "completed" { "response.completed" } else { "response.incomplete" };
        let usage = super::super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated);
        let response =
            response_object(&self.id, &self.model, self.created, status, &self.output, Some(usage));
        self.events.emit(out, name, OutEvent { response: Some(response), ..Default::default() });
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        let body = error.to_json(Dialect::OpenAi);
        let detail = body.get("error").cloned().unwrap_or(Value::Null);
        let code =
            detail.get("code").cloned().filter(|c| !c.is_null()).unwrap_or_else(|| detail["type"].clone());
        let event = OutEvent {
            code: Some(code.clone()),
            message: Some(detail["message"].clone()),
            param: Some(detail["param"].clone()),
            ..Default::default()
        };
        self.events.emit(out, "error", event);
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
            let mut response =
                response_object(&self.id, &self.model, self.created, ("failed", None), &self.output, None);
            response.error = json!({"code": code, "message": detail["message"]});
            self.events.emit(
                out,
                "response.failed",
                OutEvent { response: Some(response), ..Default::default() },
            );
        }
    }
}

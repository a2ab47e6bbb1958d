//! Client side, outbound: the `message` an Anthropic client gets, and the
//! event stream written by [`MessagesStreamRenderer`].

use super::super::canonical::*;
use super::super::json_fields::{to_bytes, to_text};
use super::super::stream::ClientRenderer;
use super::wire::*;
use super::{stop_reason_word, usage_json};
use crate::error::{Dialect, GatewayError};
use crate::sse::encode_event;
use crate::usage::TokenUsage;
use serde_json::{json, Value};
use std::collections::HashMap;

fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn thinking_block<'a>(thinking: &'a str, signature: &'a str) -> OutBlock<'a> {
    OutBlock { signature: Some(signature), thinking: Some(thinking), kind: "thinking", ..Default::default() }
}

fn tool_use_block<'a>(id: &str, name: &'a str, input: Value) -> OutBlock<'a> {
    OutBlock {
        id: Some(id.to_string()),
        input: Some(input),
        name: Some(name),
        kind: "tool_use",
        ..Default::default()
    }
}

/// Renders a `message` for an Anthropic client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Vec<u8> {
    let mut content = Vec::new();
    for part in &resp.content {
        match part {
            ContentPart::Text { text, .. } if !text.is_empty() => {
                content.push(OutBlock { text: Some(text), kind: "text", ..Default::default() })
            }
            ContentPart::Thinking { text, signature } => {
                content.push(thinking_block(text, signature.as_deref().unwrap_or("")))
            }
            ContentPart::RedactedThinking { data } => {
                content.push(OutBlock { data: Some(data), kind: "redacted_thinking", ..Default::default() })
            }
            ContentPart::ToolCall { id, name, arguments, signature } => {
                if let Some(sig) = signature {
                    content.push(thinking_block("", sig));
                }
                content.push(tool_use_block(id, name, arguments_object(arguments)));
            }
            _ => {}
        }
    }
    to_bytes(&OutResponse {
        content,
        id: &resp.id,
        model: &resp.model,
        role: "assistant",
        stop_reason: Some(stop_reason_word(&resp.finish_reason)),
        stop_sequence: resp.stop_sequence.as_deref(),
        kind: "message",
        usage: super::super::marked(usage_json(&resp.usage), resp.usage_estimated),
    })
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

    fn emit(out: &mut Vec<u8>, event: OutEvent<'_>) {
        encode_event(out, Some(event.kind), &to_text(&event));
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut usage = usage_json(&self.usage);
        usage["output_tokens"] = json!(0);
        let message = OutResponse {
            content: Vec::new(),
            id: &self.id,
            model: &self.model,
            role: "assistant",
            stop_reason: None,
            stop_sequence: None,
            kind: "message",
            usage,
        };
        Self::emit(out, OutEvent { message: Some(message), kind: "message_start", ..Default::default() });
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            Self::emit(
                out,
                OutEvent { index: Some(index), kind: "content_block_stop", ..Default::default() },
            );
        }
    }

    fn open(&mut self, kind: OpenBlock, block: OutBlock<'_>, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        let start = OutEvent {
            content_block: Some(block),
            index: Some(index),
            kind: "content_block_start",
            ..Default::default()
        };
        Self::emit(out, start);
        self.open = Some((index, kind));
        index
    }

    /// The open thinking block, or a new one.
    fn thinking_index(&mut self, out: &mut Vec<u8>) -> usize {
        match self.open {
            Some((i, OpenBlock::Thinking)) => i,
            _ => self.open(OpenBlock::Thinking, thinking_block("", ""), out),
        }
    }

    fn delta(out: &mut Vec<u8>, index: usize, delta: OutDelta<'_>) {
        let event = OutEvent {
            delta: Some(delta),
            index: Some(index),
            kind: "content_block_delta",
            ..Default::default()
        };
        Self::emit(out, event);
    }

    fn signature_delta(out: &mut Vec<u8>, index: usize, signature: &str) {
        Self::delta(
            out,
            index,
            OutDelta { signature: Some(signature), kind: Some("signature_delta"), ..Default::default() },
        );
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
                    _ => self.open(
                        OpenBlock::Text,
                        OutBlock { text: Some(""), kind: "text", ..Default::default() },
                        out,
                    ),
                };
                Self::delta(
                    out,
                    index,
                    OutDelta { text: Some(text), kind: Some("text_delta"), ..Default::default() },
                );
            }
            StreamEvent::ThinkingDelta(text) => {
                let index = self.thinking_index(out);
                let delta =
                    OutDelta { thinking: Some(text), kind: Some("thinking_delta"), ..Default::default() };
                Self::delta(out, index, delta);
            }
            StreamEvent::ThinkingSignature(signature) => {
                let index = self.thinking_index(out);
                Self::signature_delta(out, index, signature);
                self.close(out);
            }
            StreamEvent::RedactedThinking(data) => {
                let block = OutBlock { data: Some(data), kind: "redacted_thinking", ..Default::default() };
                self.open(OpenBlock::Thinking, block, out);
                self.close(out);
            }
            StreamEvent::ToolCallStart { tool_index, id, name, signature } => {
                if let Some(sig) = signature {
                    let index = self.open(OpenBlock::Thinking, thinking_block("", ""), out);
                    Self::signature_delta(out, index, sig);
                }
                let index = self.open(OpenBlock::Tool(*tool_index), tool_use_block(id, name, json!({})), out);
                self.tool_blocks.insert(*tool_index, index);
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                if let Some(&index) = self.tool_blocks.get(tool_index) {
                    let delta = OutDelta {
                        partial_json: Some(fragment),
                        kind: Some("input_json_delta"),
                        ..Default::default()
                    };
                    Self::delta(out, index, delta);
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
        let delta = OutDelta {
            stop_reason: Some(stop_reason_word(reason)),
            stop_sequence: Some(stop_sequence),
            ..Default::default()
        };
        Self::emit(
            out,
            OutEvent {
                delta: Some(delta),
                kind: "message_delta",
                usage: Some(super::super::marked(usage_json(&self.usage), estimated)),
                ..Default::default()
            },
        );
        Self::emit(out, OutEvent { kind: "message_stop", ..Default::default() });
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, Some("error"), &error.body(Dialect::Anthropic));
    }
}

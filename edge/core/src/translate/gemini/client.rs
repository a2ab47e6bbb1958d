//! Client side, outbound: the `GenerateContentResponse` a Gemini client
//! gets, and the chunk stream written by [`GeminiStreamRenderer`].

use super::super::canonical::*;
use super::super::json_fields::{to_bytes, to_text};
use super::super::stream::ClientRenderer;
use super::super::REDACTED_THINKING_PREFIX;
use super::upstream::signature_part;
use super::wire::*;
use super::{finish_reason_word, usage_json};
use crate::error::{Dialect, GatewayError};
use crate::sse::encode_event;
use crate::usage::TokenUsage;
use serde_json::{json, Value};

fn parts_json(content: &[ContentPart]) -> Vec<OutPart<'_>> {
    let mut parts = Vec::new();
    let mut pending_signature: Option<String> = None;
    for part in content {
        let mut out = match part {
            ContentPart::Text { text, .. } => OutPart { text: Some(text), ..Default::default() },
            ContentPart::Thinking { text, signature } if text.is_empty() => {
                pending_signature.clone_from(signature);
                continue;
            }
            ContentPart::Thinking { text, signature } => OutPart {
                text: Some(text),
                thought: true,
                thought_signature: signature.clone(),
                ..Default::default()
            },
            ContentPart::RedactedThinking { data } => {
                signature_part(format!("{REDACTED_THINKING_PREFIX}{data}"))
            }
            ContentPart::ToolCall { id, name, arguments, signature } => {
                let args = serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                OutPart {
                    function_call: Some(OutFunctionCall { args, id: Some(id), name }),
                    thought_signature: signature.clone(),
                    ..Default::default()
                }
            }
            _ => continue,
        };
        if let Some(sig) = pending_signature.take() {
            out.thought_signature.get_or_insert(sig);
        }
        parts.push(out);
    }
    if let Some(sig) = pending_signature {
        parts.push(signature_part(sig));
    }
    if parts.is_empty() {
        parts.push(OutPart { text: Some(""), ..Default::default() });
    }
    parts
}

/// A response or chunk: one candidate, from the model.
fn response<'a>(
    parts: Vec<OutPart<'a>>,
    finish_reason: Option<&'static str>,
    usage_metadata: Option<Value>,
    model: &'a str,
    id: &'a str,
) -> OutResponse<'a> {
    OutResponse {
        candidates: [OutCandidate {
            content: OutContent { parts, role: Some("model") },
            finish_reason,
            index: 0,
        }],
        model_version: model,
        response_id: id,
        usage_metadata,
    }
}

/// Renders a `GenerateContentResponse` for a Gemini client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Vec<u8> {
    let usage = super::super::marked(usage_json(&resp.usage), resp.usage_estimated);
    let finish = finish_reason_word(&resp.finish_reason);
    to_bytes(&response(parts_json(&resp.content), Some(finish), Some(usage), &resp.model, &resp.id))
}

#[derive(Debug)]
struct BufferedCall {
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
}

/// Writes a `streamGenerateContent?alt=sse` stream for a Gemini client.
/// Function calls are sent whole, in the final chunk, as Gemini does.
#[derive(Debug)]
pub(crate) struct GeminiStreamRenderer {
    id: String,
    model: String,
    calls: Vec<BufferedCall>,
}

impl GeminiStreamRenderer {
    pub(crate) fn new(id: String, model: String) -> Self {
        Self { id, model, calls: Vec::new() }
    }

    fn chunk(&self, part: OutPart<'_>, out: &mut Vec<u8>) {
        encode_event(out, None, &to_text(&response(vec![part], None, None, &self.model, &self.id)));
    }
}

impl ClientRenderer for GeminiStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::TextDelta(text) => {
                self.chunk(OutPart { text: Some(text), ..Default::default() }, out)
            }
            StreamEvent::ThinkingDelta(text) => {
                self.chunk(OutPart { text: Some(text), thought: true, ..Default::default() }, out)
            }
            StreamEvent::ThinkingSignature(sig) => self.chunk(signature_part(sig.clone()), out),
            StreamEvent::RedactedThinking(data) => {
                self.chunk(signature_part(format!("{REDACTED_THINKING_PREFIX}{data}")), out)
            }
            StreamEvent::ToolCallStart { id, name, signature, .. } => self.calls.push(BufferedCall {
                id: id.clone(),
                name: name.clone(),
                arguments: String::new(),
                signature: signature.clone(),
            }),
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                if let Some(call) = self.calls.get_mut(*tool_index) {
                    call.arguments.push_str(fragment);
                }
            }
            StreamEvent::Start { .. }
            | StreamEvent::Usage(_)
            | StreamEvent::Finish { .. }
            | StreamEvent::Error(_)
            | StreamEvent::End => {}
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
        let content: Vec<ContentPart> = self
            .calls
            .drain(..)
            .map(|c| ContentPart::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
                signature: c.signature,
            })
            .collect();
        let usage = super::super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated);
        let chunk = response(
            parts_json(&content),
            Some(finish_reason_word(reason)),
            Some(usage),
            &self.model,
            &self.id,
        );
        encode_event(out, None, &to_text(&chunk));
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, None, &error.body(Dialect::Gemini));
    }
}

//! Client side, outbound: the `chat.completion` an OpenAI client gets, and
//! the chunk stream written by [`ChatStreamRenderer`].

use super::super::canonical::*;
use super::super::json_fields::{to_bytes, to_text};
use super::super::stream::ClientRenderer;
use super::upstream::assistant_content;
use super::wire::*;
use super::{finish_reason_word, usage_json};
use crate::error::{Dialect, GatewayError};
use crate::sse::encode_event;
use crate::usage::TokenUsage;

/// Renders a `chat.completion` for an OpenAI client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Vec<u8> {
    let reasoning: String = resp
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Thinking { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let (content, tool_calls) = assistant_content(&resp.content);
    let message = OutResponseMessage {
        content,
        reasoning_content: Some(reasoning).filter(|r| !r.is_empty()),
        refusal: None,
        role: "assistant",
        tool_calls,
    };
    to_bytes(&OutCompletion {
        choices: vec![OutChoice {
            delta: None,
            finish_reason: Some(finish_reason_word(&resp.finish_reason)),
            index: 0,
            logprobs: None,
            message: Some(message),
        }],
        created: resp.created,
        id: &resp.id,
        model: &resp.model,
        object: "chat.completion",
        usage: Some(super::super::marked(usage_json(&resp.usage), resp.usage_estimated)),
    })
}

/// Writes a Chat Completions SSE stream for an OpenAI client.
#[derive(Debug)]
pub(crate) struct ChatStreamRenderer {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    sent_role: bool,
    finish_sent: bool,
}

impl ChatStreamRenderer {
    pub(crate) fn new(id: String, model: String, created: i64, include_usage: bool) -> Self {
        Self { id, model, created, include_usage, sent_role: false, finish_sent: false }
    }

    fn completion(&self, choices: Vec<OutChoice<'_>>, usage: Option<serde_json::Value>) -> String {
        to_text(&OutCompletion {
            choices,
            created: self.created,
            id: &self.id,
            model: &self.model,
            object: "chat.completion.chunk",
            usage,
        })
    }

    fn chunk(&self, delta: OutDelta<'_>, finish_reason: Option<&'static str>, out: &mut Vec<u8>) {
        let choice = OutChoice { delta: Some(delta), finish_reason, index: 0, logprobs: None, message: None };
        encode_event(out, None, &self.completion(vec![choice], None));
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.sent_role {
            self.sent_role = true;
            self.chunk(
                OutDelta { content: Some(""), role: Some("assistant"), ..Default::default() },
                None,
                out,
            );
        }
    }
}

impl ClientRenderer for ChatStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { .. } => self.ensure_role(out),
            StreamEvent::TextDelta(text) => {
                self.ensure_role(out);
                self.chunk(OutDelta { content: Some(text), ..Default::default() }, None, out);
            }
            StreamEvent::ThinkingDelta(text) => {
                self.ensure_role(out);
                self.chunk(OutDelta { reasoning_content: Some(text), ..Default::default() }, None, out);
            }
            StreamEvent::ToolCallStart { tool_index, id, name, .. } => {
                self.ensure_role(out);
                let call = OutToolCall {
                    function: OutFunctionCall { arguments: "", name: Some(name) },
                    id: Some(id),
                    index: Some(*tool_index),
                    kind: Some("function"),
                };
                self.chunk(OutDelta { tool_calls: vec![call], ..Default::default() }, None, out);
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                self.ensure_role(out);
                let call = OutToolCall {
                    function: OutFunctionCall { arguments: fragment, name: None },
                    id: None,
                    index: Some(*tool_index),
                    kind: None,
                };
                self.chunk(OutDelta { tool_calls: vec![call], ..Default::default() }, None, out);
            }
            StreamEvent::Finish { reason, .. } => {
                self.ensure_role(out);
                if !self.finish_sent {
                    self.finish_sent = true;
                    self.chunk(OutDelta::default(), Some(finish_reason_word(reason)), out);
                }
            }
            StreamEvent::ThinkingSignature(_)
            | StreamEvent::RedactedThinking(_)
            | StreamEvent::Usage(_)
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
        self.on_event(&StreamEvent::Finish { reason: reason.clone(), stop_sequence: None }, out);
        if self.include_usage {
            let usage = super::super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated);
            let chunk = self.completion(Vec::new(), Some(usage));
            encode_event(out, None, &chunk);
        }
        encode_event(out, None, "[DONE]");
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, None, &error.body(Dialect::OpenAi));
    }
}

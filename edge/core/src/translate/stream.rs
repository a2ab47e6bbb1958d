//! Streaming translation: upstream SSE bytes in, client SSE bytes out.
//!
//! A [`StreamTranslator`] is three synchronous stages: the shared
//! [`SseDecoder`], an upstream parser that turns provider events into
//! [`StreamEvent`]s (tool-call index maps, id synthesis, usage snapshots), and
//! a client renderer that turns those into the client dialect's events
//! (block starts and stops, Responses item order, a well-formed end). The
//! translator itself owns the rules every pair shares:
//!
//! * a turn that made tool calls ends with `tool_calls` / `tool_use` even if
//!   the provider said `STOP`;
//! * usage is the latest cumulative snapshot, whenever it arrives (before or
//!   after the finish reason, or never);
//! * the client always gets a well-formed end: the upstream's terminator, or
//!   (when the upstream just closes after its finish reason, as Gemini does)
//!   the end at [`StreamTranslator::finish`], or an in-stream error in the
//!   client's dialect when the upstream failed or closed too early;
//! * output does not depend on how the input bytes were split.

use super::canonical::{CanonicalResponse, ContentPart, FinishReason, StreamEvent};
use super::tool_emulation::StreamEmulator;
use super::{anthropic, gemini, openai_chat, openai_responses, ClientDialect, UpstreamDialect};
use crate::error::{redact_secrets, GatewayError};
use crate::limits::MAX_SSE_LINE_BYTES;
use crate::sse::{SseDecoder, SseEvent};
use crate::usage::{estimated_usage, TokenUsage};

/// What opens folded thinking in the content ([`StreamOptions::fold_thinking`]).
pub const THINK_OPEN: &str = "<think>\n";
/// What closes it.
pub const THINK_CLOSE: &str = "\n</think>\n\n";
use std::collections::HashMap;
use std::fmt::Debug;

/// Turns one upstream SSE event into canonical events.
pub(crate) trait UpstreamParser: Debug {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>);
}

/// Writes canonical events in a client dialect.
pub(crate) trait ClientRenderer: Debug {
    /// Content, start, usage and finish events.
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>);
    /// The well-formed end of the stream; `estimated`: `usage` is the
    /// gateway's estimate (the upstream reported none), marked as such.
    fn end(
        &mut self,
        reason: &FinishReason,
        stop_sequence: Option<&str>,
        usage: Option<&TokenUsage>,
        estimated: bool,
        out: &mut Vec<u8>,
    );
    /// An in-stream error; nothing follows it.
    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>);
}

/// What the caller decides for a stream (so the output is deterministic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Id the client sees (`chatcmpl-…`, `msg_…`, `resp_…`; used as given).
    pub response_id: String,
    /// Model name the client sees.
    pub model: String,
    /// Unix seconds for `created` / `created_at`.
    pub created: i64,
    /// OpenAI chat clients: send the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Strings to redact from upstream error messages (the channel credential).
    pub secrets: Vec<String>,
    /// When set, a stream whose upstream reports no usage ends with the
    /// gateway's estimate ([`crate::usage::estimated_usage`] of this prompt
    /// estimate and the content streamed), marked estimated: the figures
    /// that are billed. `None`: the end carries zeros, as the upstream said.
    pub prompt_estimate: Option<u64>,
    /// OpenAI chat clients: reasoning text is sent as content, between
    /// `<think>` and `</think>`, for clients that cannot show
    /// `reasoning_content` (the operator's `fold_thinking`).
    pub fold_thinking: bool,
    /// The tools offered to a model without native tools
    /// ([`super::tool_emulation`]): its reply is read back into tool calls.
    pub emulated_tools: Option<Vec<String>>,
}

/// How a stream ended, once it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Still running.
    Open,
    /// Ended well (upstream finish reason or terminator seen).
    Completed,
    /// Ended with an in-stream error (upstream error, cut short, garbage).
    Failed,
}

/// Translates one upstream stream into one client stream.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    parser: Box<dyn UpstreamParser>,
    renderer: Box<dyn ClientRenderer>,
    options: StreamOptions,
    sse_events: Vec<SseEvent>,
    canonical_events: Vec<StreamEvent>,
    finish: Option<(FinishReason, Option<String>)>,
    usage: Option<TokenUsage>,
    saw_content: bool,
    saw_tool_call: bool,
    outcome: StreamOutcome,
    content_bytes: usize,
    snapshot: ContentAccumulator,
    upstream_id: Option<String>,
    /// Folding thinking into text, and a `<think>` is open.
    fold: Option<bool>,
    /// Reading an emulated tool call back from the reply's text.
    emulator: Option<StreamEmulator>,
}

impl StreamTranslator {
    /// A translator from `upstream`'s stream format to `client`'s.
    pub fn new(upstream: UpstreamDialect, client: ClientDialect, options: StreamOptions) -> Self {
        let parser: Box<dyn UpstreamParser> = match upstream {
            UpstreamDialect::OpenAiChat => Box::<openai_chat::ChatStreamParser>::default(),
            UpstreamDialect::Anthropic => Box::<anthropic::MessagesStreamParser>::default(),
            UpstreamDialect::Gemini => Box::new(gemini::GeminiStreamParser::new(&options.response_id)),
        };
        let renderer: Box<dyn ClientRenderer> = match client {
            ClientDialect::OpenAiChat => Box::new(openai_chat::ChatStreamRenderer::new(
                options.response_id.clone(),
                options.model.clone(),
                options.created,
                options.include_usage,
            )),
            ClientDialect::Anthropic => Box::new(anthropic::MessagesStreamRenderer::new(
                options.response_id.clone(),
                options.model.clone(),
            )),
            ClientDialect::Gemini => Box::new(gemini::GeminiStreamRenderer::new(
                options.response_id.clone(),
                options.model.clone(),
            )),
            ClientDialect::OpenAiResponses => Box::new(openai_responses::ResponsesStreamRenderer::new(
                options.response_id.clone(),
                options.model.clone(),
                options.created,
            )),
        };
        let fold = (options.fold_thinking && client == ClientDialect::OpenAiChat).then_some(false);
        let emulator = options
            .emulated_tools
            .clone()
            .map(|offered| StreamEmulator::new(offered, options.response_id.clone()));
        Self {
            decoder: SseDecoder::new(MAX_SSE_LINE_BYTES),
            parser,
            renderer,
            options,
            sse_events: Vec::new(),
            canonical_events: Vec::new(),
            finish: None,
            usage: None,
            saw_content: false,
            saw_tool_call: false,
            outcome: StreamOutcome::Open,
            content_bytes: 0,
            snapshot: ContentAccumulator::default(),
            upstream_id: None,
            fold,
            emulator,
        }
    }

    /// Feeds upstream bytes; returns the client bytes to send now.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.outcome != StreamOutcome::Open {
            return out;
        }
        if self.decoder.feed(bytes, &mut self.sse_events).is_err() {
            self.sse_events.clear();
            self.fail(GatewayError::UpstreamUnavailable, &mut out);
            return out;
        }
        self.drain(&mut out);
        out
    }

    /// The upstream closed: returns the bytes that end the client stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.outcome != StreamOutcome::Open {
            return out;
        }
        self.decoder.finish(&mut self.sse_events);
        self.drain(&mut out);
        if self.outcome != StreamOutcome::Open {
            return out;
        }
        if self.finish.is_some() {
            self.end(&mut out);
        } else {
            self.fail(GatewayError::UpstreamUnavailable, &mut out);
        }
        out
    }

    /// Ends the client stream with `error`, in its dialect; nothing follows.
    pub fn abort(&mut self, error: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        if self.outcome == StreamOutcome::Open {
            self.fail(error.clone(), &mut out);
        }
        out
    }

    /// Latest usage the upstream reported (`None`: estimate it).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The usage the client is shown at the end, and whether it is the
    /// gateway's estimate.
    pub fn usage_shown(&self) -> (Option<TokenUsage>, bool) {
        match (self.usage, self.options.prompt_estimate) {
            (Some(usage), _) => (Some(usage), false),
            (None, Some(prompt)) => (Some(estimated_usage(prompt, self.content_bytes)), true),
            (None, None) => (None, false),
        }
    }

    /// Some text, reasoning or tool call has been sent to the client.
    pub fn saw_content(&self) -> bool {
        self.saw_content
    }

    /// Bytes of text, reasoning and tool arguments seen (basis of an estimate).
    pub fn content_bytes(&self) -> usize {
        self.content_bytes
    }

    /// How the stream ended so far.
    pub fn outcome(&self) -> StreamOutcome {
        self.outcome
    }

    /// The finish reason, once known.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref().map(|(r, _)| r)
    }

    /// Everything streamed so far as a response (for reasoning preservation
    /// and logs). `id` is the upstream's id when it sent one.
    pub fn response_snapshot(&self) -> CanonicalResponse {
        CanonicalResponse {
            id: self.upstream_id.clone().unwrap_or_else(|| self.options.response_id.clone()),
            model: self.options.model.clone(),
            created: self.options.created,
            content: self.snapshot.parts.clone(),
            finish_reason: self.finish.as_ref().map(|(r, _)| r.clone()).unwrap_or(FinishReason::Stop),
            stop_sequence: self.finish.as_ref().and_then(|(_, s)| s.clone()),
            usage: self.usage.unwrap_or_default(),
            usage_reported: self.usage.is_some(),
            usage_estimated: false,
        }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        let sse_events = std::mem::take(&mut self.sse_events);
        for event in &sse_events {
            if self.outcome != StreamOutcome::Open {
                break;
            }
            self.parser.on_event(event, &mut self.canonical_events);
            let mut canonical = std::mem::take(&mut self.canonical_events);
            if let Some(emulator) = &mut self.emulator {
                let mut read = Vec::with_capacity(canonical.len());
                for event in canonical {
                    emulator.on_event(event, &mut read);
                }
                canonical = read;
            }
            for event in canonical {
                if self.outcome != StreamOutcome::Open {
                    break;
                }
                self.handle(event, out);
            }
        }
        self.sse_events = sse_events;
        self.sse_events.clear();
    }

    fn handle(&mut self, event: StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Usage(usage) => {
                self.usage = Some(usage);
                self.renderer.on_event(&StreamEvent::Usage(usage), out);
            }
            StreamEvent::Finish { reason, stop_sequence } => {
                let reason = if self.saw_tool_call && reason == FinishReason::Stop {
                    FinishReason::ToolCalls
                } else {
                    reason
                };
                self.finish = Some((reason.clone(), stop_sequence.clone()));
                self.close_fold(out);
                self.renderer.on_event(&StreamEvent::Finish { reason, stop_sequence }, out);
            }
            StreamEvent::End => {
                if self.finish.is_none() {
                    let reason =
                        if self.saw_tool_call { FinishReason::ToolCalls } else { FinishReason::Stop };
                    self.handle(StreamEvent::Finish { reason, stop_sequence: None }, out);
                }
                self.end(out);
            }
            StreamEvent::Error(error) => self.fail(error, out),
            StreamEvent::Start { ref id, .. } => {
                if self.upstream_id.is_none() {
                    self.upstream_id.clone_from(id);
                }
                self.renderer.on_event(&event, out);
            }
            content => {
                match &content {
                    StreamEvent::TextDelta(t) | StreamEvent::ThinkingDelta(t) => {
                        self.content_bytes += t.len()
                    }
                    StreamEvent::ToolCallStart { name, .. } => {
                        self.saw_tool_call = true;
                        self.content_bytes += name.len();
                    }
                    StreamEvent::ToolCallArguments { fragment, .. } => self.content_bytes += fragment.len(),
                    _ => {}
                }
                self.saw_content = true;
                self.snapshot.add(&content);
                self.render_content(content, out);
            }
        }
    }

    /// Renders a content event, folding thinking into text when asked.
    fn render_content(&mut self, content: StreamEvent, out: &mut Vec<u8>) {
        let Some(open) = self.fold else {
            self.renderer.on_event(&content, out);
            return;
        };
        match content {
            StreamEvent::ThinkingDelta(text) => {
                if !open {
                    self.fold = Some(true);
                    self.renderer.on_event(&StreamEvent::TextDelta(THINK_OPEN.into()), out);
                }
                self.renderer.on_event(&StreamEvent::TextDelta(text), out);
            }
            StreamEvent::ThinkingSignature(_) | StreamEvent::RedactedThinking(_) => {
                self.renderer.on_event(&content, out)
            }
            other => {
                self.close_fold(out);
                self.renderer.on_event(&other, out);
            }
        }
    }

    fn close_fold(&mut self, out: &mut Vec<u8>) {
        if self.fold == Some(true) {
            self.fold = Some(false);
            self.renderer.on_event(&StreamEvent::TextDelta(THINK_CLOSE.into()), out);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let (reason, stop_sequence) = self.finish.clone().unwrap_or((FinishReason::Stop, None));
        let (usage, estimated) = self.usage_shown();
        self.renderer.end(&reason, stop_sequence.as_deref(), usage.as_ref(), estimated, out);
        self.outcome = StreamOutcome::Completed;
    }

    fn fail(&mut self, error: GatewayError, out: &mut Vec<u8>) {
        let error = match error {
            GatewayError::Upstream { status, message } => {
                let secrets: Vec<&str> = self.options.secrets.iter().map(String::as_str).collect();
                GatewayError::Upstream { status, message: redact_secrets(&message, &secrets) }
            }
            other => other,
        };
        self.renderer.error(&error, out);
        self.outcome = StreamOutcome::Failed;
    }
}

/// Rebuilds content parts from stream events.
#[derive(Debug, Default)]
struct ContentAccumulator {
    parts: Vec<ContentPart>,
    tool_positions: HashMap<usize, usize>,
}

impl ContentAccumulator {
    fn add(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::TextDelta(delta) => match self.parts.last_mut() {
                Some(ContentPart::Text { text, .. }) => text.push_str(delta),
                _ => self.parts.push(ContentPart::text(delta.clone())),
            },
            StreamEvent::ThinkingDelta(delta) => match self.parts.last_mut() {
                Some(ContentPart::Thinking { text, signature: None }) => text.push_str(delta),
                _ => self.parts.push(ContentPart::Thinking { text: delta.clone(), signature: None }),
            },
            StreamEvent::ThinkingSignature(sig) => match self.parts.last_mut() {
                Some(ContentPart::Thinking { signature: signature @ None, .. }) => {
                    *signature = Some(sig.clone())
                }
                _ => self
                    .parts
                    .push(ContentPart::Thinking { text: String::new(), signature: Some(sig.clone()) }),
            },
            StreamEvent::RedactedThinking(data) => {
                self.parts.push(ContentPart::RedactedThinking { data: data.clone() })
            }
            StreamEvent::ToolCallStart { tool_index, id, name, signature } => {
                self.tool_positions.insert(*tool_index, self.parts.len());
                self.parts.push(ContentPart::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    signature: signature.clone(),
                });
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                if let Some(ContentPart::ToolCall { arguments, .. }) =
                    self.tool_positions.get(tool_index).and_then(|&i| self.parts.get_mut(i))
                {
                    arguments.push_str(fragment);
                }
            }
            _ => {}
        }
    }
}

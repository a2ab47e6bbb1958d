//! The hub: one request, response and stream-event model that every dialect
//! converts to and from. Nothing here knows any wire format.
//!
//! Invariants:
//! * a [`CanonicalRequest`] has only `User` and `Assistant` messages; system
//!   and developer instructions live in [`CanonicalRequest::system`];
//! * tool calls are [`ContentPart::ToolCall`] parts of an assistant message and
//!   tool results are [`ContentPart::ToolResult`] parts of a user message, so
//!   "a tool message" of any dialect is just a user turn here;
//! * tool-call arguments are kept as the JSON text the model produced, never
//!   re-serialized, so fragments and odd whitespace survive a round trip;
//! * sampling numbers are kept as [`serde_json::Number`] so `0.7` is sent on as
//!   `0.7` (no float rounding on the way through).

use crate::error::GatewayError;
use crate::usage::TokenUsage;
use serde_json::{Number, Value};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// Where the bytes of an image or document are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    /// Inline base64 (from a data URI or a provider's inline form).
    Base64 { media_type: String, data: String },
    /// A public `http(s)` URL; already checked to point at no private host.
    Url { url: String },
    /// A provider file reference (Gemini `fileData.fileUri`, Anthropic file id).
    File { uri: String, media_type: Option<String> },
}

/// One piece of content. The same type serves requests and responses.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text {
        text: String,
        /// Anthropic `cache_control`, kept as given.
        cache_control: Option<Value>,
    },
    Image {
        source: MediaSource,
        cache_control: Option<Value>,
    },
    /// PDF or other document.
    Document {
        source: MediaSource,
        filename: Option<String>,
        cache_control: Option<Value>,
    },
    /// Base64 audio with its format (`wav`, `mp3`).
    Audio {
        data: String,
        format: String,
    },
    /// Model reasoning. `signature` is the provider's opaque proof (Anthropic
    /// `signature`, Gemini `thoughtSignature`, Responses `encrypted_content`).
    /// An empty `text` with a signature carries a signature alone.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Anthropic `redacted_thinking`: opaque, passed back unchanged.
    RedactedThinking {
        data: String,
    },
    /// A call the model made.
    ToolCall {
        id: String,
        name: String,
        /// JSON text of the arguments object.
        arguments: String,
        /// Gemini `thoughtSignature` carried on the function call part.
        signature: Option<String>,
    },
    /// The caller's answer to a tool call.
    ToolResult {
        tool_call_id: String,
        /// Function name when the client dialect says it (Gemini does).
        name: Option<String>,
        content: Vec<ToolResultPart>,
        is_error: bool,
        cache_control: Option<Value>,
    },
}

/// What a tool result may contain.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResultPart {
    Text(String),
    Image(MediaSource),
}

impl ContentPart {
    /// A text part without cache control.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into(), cache_control: None }
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentPart>,
}

/// One system instruction block.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemBlock {
    pub text: String,
    pub cache_control: Option<Value>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object, as the client gave it.
    pub parameters: Value,
    pub strict: Option<bool>,
    pub cache_control: Option<Value>,
}

/// Which tools the model may or must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Must call some tool (OpenAI `required`, Anthropic `any`, Gemini `ANY`).
    Required,
    /// Must call this tool.
    Tool(String),
}

/// Requested output format.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { name: String, schema: Value, strict: Option<bool> },
}

/// Reasoning effort levels shared by every dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    Minimal,
    Low,
    Medium,
    High,
}

/// What the client asked for about reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasoning {
    /// Explicitly off.
    Disabled,
    /// An effort level (OpenAI `reasoning_effort`, model-name suffixes).
    Effort(ReasoningEffort),
    /// An explicit token budget (Anthropic `budget_tokens`, Gemini `thinkingBudget`).
    Budget(u64),
}

/// A chat request in dialect-neutral form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CanonicalRequest {
    /// Model name exactly as the client sent it.
    pub model: String,
    /// `model` without a reasoning suffix (`-high`, `-thinking`, …), when it had one.
    pub model_without_suffix: Option<String>,
    pub stream: bool,
    /// OpenAI client asked for `stream_options.include_usage`.
    pub stream_include_usage: bool,
    pub system: Vec<SystemBlock>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDefinition>,
    pub tool_choice: Option<ToolChoice>,
    /// `false` forbids several tool calls in one turn.
    pub parallel_tool_calls: Option<bool>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<Number>,
    pub top_p: Option<Number>,
    pub top_k: Option<u64>,
    pub stop_sequences: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<Number>,
    pub frequency_penalty: Option<Number>,
    pub response_format: Option<ResponseFormat>,
    pub reasoning: Option<Reasoning>,
    /// End-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// Choices asked for (OpenAI `n`, Gemini `candidateCount`); only 1 translates.
    pub candidate_count: Option<u64>,
    /// Log probabilities asked for; never translated.
    pub logprobs: bool,
    /// Gemini `safetySettings`, passed on to Gemini upstreams only (other
    /// providers have no per-request safety thresholds).
    pub gemini_safety_settings: Option<Value>,
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end of turn.
    Stop,
    /// A stop sequence matched.
    StopSequence,
    /// Output token limit.
    Length,
    /// The turn ends with tool calls.
    ToolCalls,
    /// Provider safety system stopped or blocked the output.
    ContentFilter,
    /// The model declined (Anthropic `refusal`).
    Refusal,
    /// Anthropic `pause_turn`: a long server-side turn was paused.
    PauseTurn,
    /// The model produced a malformed tool call (Gemini).
    MalformedToolCall,
    /// Any other provider reason, kept verbatim.
    Other(String),
}

/// A complete (non-streaming) model answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalResponse {
    pub id: String,
    pub model: String,
    /// Unix seconds; the worker sets it when the upstream did not say.
    pub created: i64,
    pub content: Vec<ContentPart>,
    pub finish_reason: FinishReason,
    /// The stop sequence that matched, when the provider says.
    pub stop_sequence: Option<String>,
    pub usage: TokenUsage,
    /// The provider reported usage (otherwise `usage` is zero and the caller estimates).
    pub usage_reported: bool,
    /// `usage` is the gateway's estimate (set by the caller that filled it
    /// in); renderers mark it so in the client's usage object.
    pub usage_estimated: bool,
}

/// One step of a streamed answer, in provider-neutral form.
///
/// `tool_index` is the ordinal of the tool call within the response (0, 1,
/// …) whatever the provider's own indexing (Anthropic block index, OpenAI
/// `tool_calls[].index`, Gemini part order).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The upstream started the message.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    TextDelta(String),
    ThinkingDelta(String),
    /// Signature closing the current thinking block.
    ThinkingSignature(String),
    RedactedThinking(String),
    ToolCallStart {
        tool_index: usize,
        id: String,
        name: String,
        signature: Option<String>,
    },
    ToolCallArguments {
        tool_index: usize,
        fragment: String,
    },
    /// Usage so far, cumulative (replaces earlier snapshots).
    Usage(TokenUsage),
    /// The model finished; more usage may still follow.
    Finish {
        reason: FinishReason,
        stop_sequence: Option<String>,
    },
    /// The upstream failed mid-stream.
    Error(GatewayError),
    /// The upstream's own end marker (`[DONE]`, `message_stop`).
    End,
}

//! The Messages API wire shapes, private to this dialect.
//!
//! * What an upstream sends (a `message`, the stream's events) is read
//!   leniently from a parsed value: every field is [`Lax`], so a missing,
//!   `null` or oddly typed field is its default rather than a lost response
//!   or event.
//! * What the gateway writes (the upstream request body, the `message` and
//!   the events an Anthropic client gets) is serialized from borrowing
//!   structs whose fields are declared in **alphabetical order** of the wire
//!   names: serde writes fields in declaration order, and the bytes must stay
//!   those the golden stream fixtures pin (written when these bodies were
//!   sorted-key `serde_json::Value`s).

use super::super::json_fields::Lax;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

// --- read from an upstream -------------------------------------------------

/// A `message`, or the `message` of a stream's `message_start`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WireMessage {
    #[serde(rename = "type")]
    pub kind: Lax<String>,
    pub id: Lax<Option<String>>,
    pub model: Lax<Option<String>>,
    pub content: Lax<Vec<Block>>,
    pub stop_reason: Lax<String>,
    pub stop_sequence: Lax<Option<String>>,
    pub usage: Lax<Option<Usage>>,
}

/// A content block of a `message`, or of a `content_block_start`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Block {
    #[serde(rename = "type")]
    pub kind: Lax<String>,
    pub text: Lax<String>,
    pub thinking: Lax<String>,
    pub signature: Lax<Option<String>>,
    /// `redacted_thinking`.
    pub data: Lax<String>,
    pub id: Lax<String>,
    pub name: Lax<String>,
    /// `tool_use`: the arguments object.
    pub input: Lax<Option<Value>>,
}

/// `usage`: input and cache counts (`message_start`), cumulative output
/// (`message_delta`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Usage {
    pub input_tokens: Lax<Option<u64>>,
    pub cache_read_input_tokens: Lax<Option<u64>>,
    pub cache_creation_input_tokens: Lax<Option<u64>>,
    /// The cache writes split by TTL, when given.
    pub cache_creation: Lax<Option<CacheCreation>>,
    pub output_tokens: Lax<Option<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CacheCreation {
    pub ephemeral_5m_input_tokens: Lax<u64>,
    pub ephemeral_1h_input_tokens: Lax<u64>,
}

/// One stream event; `type` (or the SSE event name) says which of the
/// other fields it has.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Event {
    #[serde(rename = "type")]
    pub kind: Lax<Option<String>>,
    /// `message_start`.
    pub message: Lax<WireMessage>,
    /// `content_block_*`: the block index (text, thinking and tool blocks alike).
    pub index: Lax<u64>,
    /// `content_block_start`.
    pub content_block: Lax<Block>,
    /// `content_block_delta` and `message_delta`.
    pub delta: Lax<Delta>,
    /// `message_delta`.
    pub usage: Lax<Option<Usage>>,
    /// `error`.
    pub error: Lax<ErrorBody>,
}

/// A `content_block_delta`'s or a `message_delta`'s `delta`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Delta {
    #[serde(rename = "type")]
    pub kind: Lax<String>,
    pub text: Lax<String>,
    pub thinking: Lax<String>,
    pub signature: Lax<String>,
    pub partial_json: Lax<String>,
    pub stop_reason: Lax<Option<String>>,
    pub stop_sequence: Lax<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: Lax<String>,
    pub message: Lax<String>,
}

// --- written by the gateway (fields in alphabetical order) ------------------

/// A `/messages` request body.
#[derive(Debug, Default, Serialize)]
pub(super) struct MessagesRequest<'a> {
    pub max_tokens: u64,
    pub messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata<'a>>,
    pub model: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<System<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<&'a Number>,
}

#[derive(Debug, Serialize)]
pub(super) struct Metadata<'a> {
    pub user_id: &'a str,
}

/// `system`: one plain string, or text blocks (to carry `cache_control`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum System<'a> {
    Text(&'a str),
    Blocks(Vec<OutBlock<'a>>),
}

#[derive(Debug, Serialize)]
pub(super) struct Thinking {
    pub budget_tokens: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct OutMessage<'a> {
    pub content: Vec<OutBlock<'a>>,
    pub role: &'static str,
}

/// Any content block the gateway writes: `text`, `image`, `document`,
/// `thinking`, `redacted_thinking`, `tool_use`, `tool_result`.
#[derive(Debug, Default, Serialize)]
pub(super) struct OutBlock<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<&'a Value>,
    /// `tool_result`: a string, or blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<ToolResultContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum ToolResultContent<'a> {
    Text(&'a str),
    Blocks(Vec<OutBlock<'a>>),
}

/// An image's or a document's `source`: base64 or a URL.
#[derive(Debug, Serialize)]
pub(super) struct Source<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(super) struct OutTool<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub input_schema: &'a Value,
    pub name: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct OutToolChoice<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_parallel_tool_use: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A `message` for an Anthropic client, or the `message` of `message_start`.
#[derive(Debug, Serialize)]
pub(super) struct OutResponse<'a> {
    pub content: Vec<OutBlock<'a>>,
    pub id: &'a str,
    pub model: &'a str,
    pub role: &'static str,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub usage: Value,
}

/// A stream event for an Anthropic client: `type` and, per event, some of
/// the other fields.
#[derive(Debug, Default, Serialize)]
pub(super) struct OutEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_block: Option<OutBlock<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<OutDelta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<OutResponse<'a>>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

/// A `content_block_delta`'s delta (`type` and one of the content fields),
/// or a `message_delta`'s (`stop_reason`, `stop_sequence`, no `type`).
#[derive(Debug, Default, Serialize)]
pub(super) struct OutDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_json: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<&'static str>,
    /// Written (as `null` too) exactly when `stop_reason` is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

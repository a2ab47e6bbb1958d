//! The Chat Completions wire shapes, private to this dialect.
//!
//! * What an upstream sends (a `chat.completion`, a `chat.completion.chunk`)
//!   is read leniently from a parsed value: every field is [`Lax`], so a
//!   missing, `null` or oddly typed field is its default rather than a lost
//!   response or chunk.
//! * What the gateway writes (the upstream request body, the completion and
//!   chunks an OpenAI client gets) is serialized from borrowing structs.
//!   Their fields are declared in **alphabetical order** of the wire names:
//!   serde writes struct fields in declaration order, and the bytes must stay
//!   those the golden stream fixtures pin (written when these bodies were
//!   sorted-key `serde_json::Value`s).

use super::super::json_fields::Lax;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

// --- read from an upstream -------------------------------------------------

/// A `chat.completion`, or one `chat.completion.chunk` of a stream (whose
/// choices carry `delta` where a completion's carry `message`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Completion {
    pub id: Lax<Option<String>>,
    pub model: Lax<Option<String>>,
    pub created: Lax<i64>,
    pub choices: Lax<Vec<Choice>>,
    /// Read by [`super::parse_usage`].
    pub usage: Lax<Option<Value>>,
    /// An in-stream error: any value but `null` (read with [`StreamError`]).
    pub error: Lax<Option<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Choice {
    pub message: Lax<AssistantMessage>,
    pub delta: Lax<AssistantMessage>,
    pub finish_reason: Lax<Option<String>>,
    /// Moonshot's stream reports usage in its last chunk's choice.
    pub usage: Lax<Option<Value>>,
}

/// A completion's `message` or a chunk's `delta`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct AssistantMessage {
    pub content: Lax<Option<String>>,
    /// DeepSeek, vLLM and others; `reasoning` on OpenRouter and Ollama.
    pub reasoning_content: Lax<Option<String>>,
    pub reasoning: Lax<Option<String>>,
    pub refusal: Lax<Option<String>>,
    pub tool_calls: Lax<Vec<ToolCall>>,
}

impl AssistantMessage {
    /// `reasoning_content`, else `reasoning`, when not empty.
    pub fn reasoning_text(&self) -> Option<&str> {
        self.reasoning_content.as_deref().or(self.reasoning.as_deref()).filter(|t| !t.is_empty())
    }
}

/// A whole tool call, or a chunk's fragment of one (`index` says which).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ToolCall {
    pub index: Lax<Option<u64>>,
    pub id: Lax<Option<String>>,
    pub function: Lax<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct FunctionCall {
    pub name: Lax<Option<String>>,
    pub arguments: Lax<Option<String>>,
}

/// `{"error": {message, type, code}}` inside a stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct StreamError {
    pub message: Lax<String>,
    #[serde(rename = "type")]
    pub kind: Lax<String>,
    /// An HTTP status (number) or an error code (string).
    pub code: Lax<Value>,
}

// --- written by the gateway (fields in alphabetical order) ------------------

/// A `/chat/completions` request body.
#[derive(Debug, Default, Serialize)]
pub(super) struct ChatRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    pub messages: Vec<OutMessage<'a>>,
    pub model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<OutResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<IncludeUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(super) struct IncludeUsage {
    pub include_usage: bool,
}

/// One message of a request body.
#[derive(Debug, Serialize)]
pub(super) struct OutMessage<'a> {
    pub content: OutContent<'a>,
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall<'a>>,
}

/// A message's `content`: `null` (an assistant turn of tool calls only), a
/// string, or parts.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum OutContent<'a> {
    Null,
    Text(String),
    Parts(Vec<OutPart<'a>>),
}

/// A user content part: `text`, `image_url`, `file` or `input_audio`.
#[derive(Debug, Default, Serialize)]
pub(super) struct OutPart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<OutFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<OutImageUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_audio: Option<OutAudio<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct OutFile {
    pub file_data: String,
    pub filename: String,
}

#[derive(Debug, Serialize)]
pub(super) struct OutImageUrl {
    pub url: String,
}

#[derive(Debug, Serialize)]
pub(super) struct OutAudio<'a> {
    pub data: &'a str,
    pub format: String,
}

/// A tool call in a message, or a chunk's fragment of one.
#[derive(Debug, Serialize)]
pub(super) struct OutToolCall<'a> {
    pub function: OutFunctionCall<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(super) struct OutFunctionCall<'a> {
    pub arguments: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

/// `{"type": "function", "function": {...}}`.
#[derive(Debug, Serialize)]
pub(super) struct OutTool<'a> {
    pub function: OutFunction<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct OutFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub name: &'a str,
    pub parameters: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `"auto"` / `"none"` / `"required"`, or one function by name.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum OutToolChoice<'a> {
    Mode(&'static str),
    Function {
        function: Named<'a>,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

#[derive(Debug, Serialize)]
pub(super) struct Named<'a> {
    pub name: &'a str,
}

/// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`.
#[derive(Debug, Serialize)]
pub(super) struct OutResponseFormat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<OutJsonSchema<'a>>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct OutJsonSchema<'a> {
    pub name: &'a str,
    pub schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A `chat.completion` (with `message`s) or a `chat.completion.chunk` (with
/// `delta`s) for an OpenAI client.
#[derive(Debug, Serialize)]
pub(super) struct OutCompletion<'a> {
    pub choices: Vec<OutChoice<'a>>,
    pub created: i64,
    pub id: &'a str,
    pub model: &'a str,
    pub object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

#[derive(Debug, Serialize)]
pub(super) struct OutChoice<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<OutDelta<'a>>,
    pub finish_reason: Option<&'static str>,
    pub index: u32,
    /// Always `null`.
    pub logprobs: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<OutResponseMessage<'a>>,
}

/// The assistant message of a `chat.completion`.
#[derive(Debug, Serialize)]
pub(super) struct OutResponseMessage<'a> {
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Always `null`: a refusal is sent as content.
    pub refusal: Option<()>,
    pub role: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall<'a>>,
}

/// A chunk's `delta`.
#[derive(Debug, Default, Serialize)]
pub(super) struct OutDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall<'a>>,
}

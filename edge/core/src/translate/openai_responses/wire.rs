//! The Responses API wire shapes the gateway writes, private to this
//! dialect: the `response` object, its output items and the stream events.
//! (Requests are read field by field in `request`, for their exact 400s.)
//!
//! Fields are declared in **alphabetical order** of the wire names: serde
//! writes struct fields in declaration order, and the bytes must stay those
//! the golden stream fixtures pin (written when these bodies were
//! sorted-key `serde_json::Value`s).

use serde::Serialize;
use serde_json::Value;

/// A `response` object: the whole answer, or a stream event's snapshot.
#[derive(Debug, Serialize)]
pub(super) struct OutResponse<'a> {
    pub created_at: i64,
    /// `null`, or `{code, message}` when the stream failed.
    pub error: Value,
    pub id: &'a str,
    pub incomplete_details: Option<Incomplete>,
    pub model: &'a str,
    pub object: &'static str,
    pub output: &'a [Item],
    pub parallel_tool_calls: bool,
    pub status: &'static str,
    pub tool_choice: &'static str,
    pub tools: [(); 0],
    pub usage: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Incomplete {
    pub reason: &'static str,
}

/// An output item: a `message`, a `function_call` or a `reasoning` item.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Item {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<TextPart>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Vec<TextPart>>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// An `output_text` part (with its `annotations`) or a `summary_text` part.
#[derive(Debug, Clone, Serialize)]
pub(super) struct TextPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<[(); 0]>,
    pub text: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// One stream event: `type`, `sequence_number` and, per event, some of the
/// other fields.
#[derive(Debug, Default, Serialize)]
pub(super) struct OutEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<&'a Item>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<&'a str>,
    /// Always `[]` where present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<[(); 0]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<TextPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<OutResponse<'a>>,
    pub sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

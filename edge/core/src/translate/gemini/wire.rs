//! The `generateContent` wire shapes, private to this dialect.
//!
//! * What an upstream sends (a `GenerateContentResponse`, or one chunk of a
//!   stream, which has the same shape) is read leniently from a parsed value:
//!   every field is [`Lax`], so a missing, `null` or oddly typed field is its
//!   default rather than a lost response or chunk.
//! * What the gateway writes (the upstream request body, the response and
//!   chunks a Gemini client gets) is serialized from borrowing structs whose
//!   fields are declared in **byte order of the wire names** (`fileData`
//!   before `functionCall`, `responseMimeType` before `responseSchema`):
//!   serde writes fields in declaration order, and the bytes must stay those
//!   the golden stream fixtures pin (written when these bodies were
//!   sorted-key `serde_json::Value`s).

use super::super::json_fields::Lax;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

// --- read from an upstream -------------------------------------------------

/// A `GenerateContentResponse`, or one chunk of a stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct Response {
    pub candidates: Lax<Vec<Candidate>>,
    pub prompt_feedback: Lax<PromptFeedback>,
    pub usage_metadata: Lax<Option<UsageMetadata>>,
    pub model_version: Lax<Option<String>>,
    pub response_id: Lax<Option<String>>,
    /// An error body instead of an answer.
    pub error: Lax<Option<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct Candidate {
    pub content: Lax<CandidateContent>,
    pub finish_reason: Lax<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CandidateContent {
    pub parts: Lax<Vec<Part>>,
}

/// A part of an answer: text (a thought when `thought`), or a function call.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct Part {
    pub text: Lax<Option<String>>,
    pub thought: Lax<bool>,
    pub thought_signature: Lax<Option<String>>,
    pub function_call: Lax<Option<FunctionCall>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct FunctionCall {
    pub id: Lax<Option<String>>,
    pub name: Lax<String>,
    pub args: Lax<Option<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    /// Set when the prompt itself was blocked.
    pub block_reason: Lax<Option<Value>>,
}

/// `usageMetadata` (cumulative on every chunk of a stream).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    pub prompt_token_count: Lax<u64>,
    pub cached_content_token_count: Lax<u64>,
    pub candidates_token_count: Lax<u64>,
    pub thoughts_token_count: Lax<u64>,
    pub tool_use_prompt_token_count: Lax<u64>,
}

/// `{"error": {code, message, status}}` inside a stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct StreamError {
    pub code: Lax<Option<u64>>,
    pub message: Lax<String>,
}

// --- written by the gateway (fields in byte order of the wire names) -------

/// A `generateContent` request body.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateRequest<'a> {
    pub contents: Vec<OutContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_settings: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<OutContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<[OutTools<'a>; 1]>,
}

/// A turn (`role` `user` or `model`), or the system instruction (no role).
#[derive(Debug, Serialize)]
pub(super) struct OutContent<'a> {
    pub parts: Vec<OutPart<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

/// One part: text (a thought when `thought`), inline data, a file, a
/// function call or a function response; any may carry a signature.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutPart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<OutFunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<InlineData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub thought: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileData<'a> {
    pub file_uri: &'a str,
    pub mime_type: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InlineData<'a> {
    pub data: &'a str,
    pub mime_type: String,
}

#[derive(Debug, Serialize)]
pub(super) struct OutFunctionCall<'a> {
    pub args: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub name: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct FunctionResponse {
    pub name: String,
    pub response: Value,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<&'a Number>,
}

impl GenerationConfig<'_> {
    /// Nothing set (the body then has no `generationConfig`).
    pub fn is_empty(&self) -> bool {
        matches!(
            self,
            GenerationConfig {
                frequency_penalty: None,
                max_output_tokens: None,
                presence_penalty: None,
                response_mime_type: None,
                response_schema: None,
                seed: None,
                stop_sequences: [],
                temperature: None,
                thinking_config: None,
                top_k: None,
                top_p: None,
            }
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ThinkingConfig {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_thoughts: bool,
    pub thinking_budget: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutTools<'a> {
    pub function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Debug, Serialize)]
pub(super) struct FunctionDeclaration<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolConfig<'a> {
    pub function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FunctionCallingConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_function_names: Option<[&'a str; 1]>,
    pub mode: &'static str,
}

/// A `GenerateContentResponse` for a Gemini client, or one chunk of a stream.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutResponse<'a> {
    pub candidates: [OutCandidate<'a>; 1],
    pub model_version: &'a str,
    pub response_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutCandidate<'a> {
    pub content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
    pub index: u32,
}

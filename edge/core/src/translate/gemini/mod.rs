//! Google Gemini `generateContent`, both as the client's dialect and as an
//! upstream's.
//!
//! | file | role |
//! |---|---|
//! | `request` | a client's `generateContent` (or `countTokens`) body → the hub |
//! | `upstream` | the hub → a `generateContent` body; the upstream's response or chunk stream → the hub |
//! | `client` | the hub → the response or chunk stream a Gemini client gets |
//! | `wire` | the typed wire shapes the last two read and write |
//! | `embeddings` | `:embedContent` / `:batchEmbedContents`, client and upstream |

mod client;
pub(crate) mod embeddings;
mod request;
mod upstream;
mod wire;

pub(crate) use client::{render_response, GeminiStreamRenderer};
pub(crate) use request::parse_request;
pub(crate) use upstream::{build_request, parse_response, GeminiStreamParser};

use super::canonical::FinishReason;
use crate::usage::TokenUsage;
use serde_json::{json, Value};

/// Signature Gemini documents for function calls whose real signature was
/// lost (history from another model or a client that dropped it).
pub const SKIP_SIGNATURE_VALIDATOR: &str = "skip_thought_signature_validator";

/// Only Gemini's own file URIs may be sent as `fileData`.
const GEMINI_FILE_URI_PREFIX: &str = "https://generativelanguage.googleapis.com/";

/// Gemini `finishReason` → canonical.
pub(crate) fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "LANGUAGE"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            FinishReason::MalformedToolCall
        }
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → Gemini `finishReason`.
pub(crate) fn finish_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop
        | FinishReason::StopSequence
        | FinishReason::ToolCalls
        | FinishReason::PauseTurn => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter | FinishReason::Refusal => "SAFETY",
        FinishReason::MalformedToolCall => "MALFORMED_FUNCTION_CALL",
        FinishReason::Other(_) => "OTHER",
    }
}

/// `usageMetadata` → disjoint buckets: `promptTokenCount` includes
/// `cachedContentTokenCount`; `thoughtsTokenCount` is beside
/// `candidatesTokenCount`; tool-use prompt tokens are input.
fn parse_usage(meta: &wire::UsageMetadata) -> TokenUsage {
    let count = |n: u64| n.min(super::MAX_REPORTED_TOKENS);
    let prompt = count(*meta.prompt_token_count);
    let cached = count(*meta.cached_content_token_count).min(prompt);
    let thoughts = count(*meta.thoughts_token_count);
    super::clamp_usage(TokenUsage {
        input_uncached: prompt - cached + count(*meta.tool_use_prompt_token_count),
        cache_read: cached,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: count(*meta.candidates_token_count) + thoughts,
        reasoning: thoughts,
    })
}

/// Disjoint buckets → `usageMetadata` (cache writes count as prompt).
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    let mut meta = json!({
        "promptTokenCount": usage.prompt_total(),
        "candidatesTokenCount": usage.output - usage.reasoning.min(usage.output),
        "totalTokenCount": usage.total(),
    });
    if usage.cache_read > 0 {
        meta["cachedContentTokenCount"] = json!(usage.cache_read);
    }
    if usage.reasoning > 0 {
        meta["thoughtsTokenCount"] = json!(usage.reasoning);
    }
    meta
}

//! OpenAI Chat Completions, both as the client's dialect and as an upstream's.
//!
//! | file | role |
//! |---|---|
//! | `request` | a client's `/v1/chat/completions` body → the hub (strict, or lenient for passthrough) |
//! | `upstream` | the hub → a `/chat/completions` body; the upstream's completion or chunk stream → the hub |
//! | `client` | the hub → the `chat.completion` or chunk stream an OpenAI client gets |
//! | `wire` | the typed wire shapes the last two read and write |

mod client;
mod request;
mod upstream;
mod wire;

pub(crate) use client::{render_response, ChatStreamRenderer};
pub(crate) use request::{parse_chat, parse_request, ChatMode, ParsedChat};
pub use request::{FORBIDDEN_CLIENT_FIELDS, MAX_OUTPUT_TOKENS_ACCEPTED};
pub(crate) use upstream::{build_request, parse_response, ChatStreamParser};

use super::canonical::FinishReason;
use crate::usage::{OpenAiUsage, TokenUsage};
use serde_json::Value;

/// OpenAI `finish_reason` → canonical.
pub(crate) fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → OpenAI `finish_reason`.
pub(crate) fn finish_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop
        | FinishReason::StopSequence
        | FinishReason::PauseTurn
        | FinishReason::Other(_) => "stop",
        FinishReason::MalformedToolCall => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filter",
    }
}

/// Usage object in OpenAI's shape.
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    serde_json::to_value(usage.to_openai()).unwrap_or(Value::Null)
}

/// Usage from an OpenAI usage value.
pub(crate) fn parse_usage(value: &Value) -> Option<TokenUsage> {
    let mut usage: OpenAiUsage = serde_json::from_value(value.clone()).ok()?;
    usage.prompt_tokens = usage.prompt_tokens.min(super::MAX_REPORTED_TOKENS);
    usage.completion_tokens = usage.completion_tokens.min(super::MAX_REPORTED_TOKENS);
    Some(super::clamp_usage(TokenUsage::from_openai(&usage)))
}

/// Maps an OpenAI error `type`/`code` in a stream to an HTTP status.
pub(crate) fn status_for_error_type(kind: &str, code: &str) -> u16 {
    match (kind, code) {
        (_, "rate_limit_exceeded") | ("rate_limit_error", _) | ("insufficient_quota", _) => 429,
        ("invalid_request_error", _) => 400,
        ("server_error", _) | ("api_error", _) => 500,
        (_, "overloaded") | ("overloaded_error", _) => 529,
        _ => 500,
    }
}

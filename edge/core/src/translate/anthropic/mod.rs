//! Anthropic Messages, both as the client's dialect and as an upstream's.
//!
//! | file | role |
//! |---|---|
//! | `request` | a client's `/v1/messages` (or `count_tokens`) body → the hub |
//! | `upstream` | the hub → a `/messages` body; the upstream's `message` or event stream → the hub |
//! | `client` | the hub → the `message` or event stream an Anthropic client gets |
//! | `wire` | the typed wire shapes the last two read and write |

mod client;
mod request;
mod upstream;
mod wire;

pub(crate) use client::{render_response, MessagesStreamRenderer};
pub(crate) use request::parse_request;
pub(crate) use upstream::{build_request, parse_response, MessagesStreamParser};

use super::canonical::FinishReason;
use crate::usage::TokenUsage;
use serde_json::{json, Value};

/// `max_tokens` sent when the client gave none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Name of the forced tool that carries structured output (`response_format`)
/// to Anthropic; its input is returned to the client as the text answer.
pub const STRUCTURED_OUTPUT_TOOL: &str = "structured_output";

/// Anthropic `stop_reason` → canonical.
pub(crate) fn parse_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        "pause_turn" => FinishReason::PauseTurn,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → Anthropic `stop_reason`.
pub(crate) fn stop_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other(_) | FinishReason::MalformedToolCall => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter | FinishReason::Refusal => "refusal",
        FinishReason::PauseTurn => "pause_turn",
    }
}

/// Anthropic usage → disjoint buckets (`input_tokens` already excludes cache
/// reads and writes; writes split by TTL when the breakdown is given).
fn parse_usage(usage: &wire::Usage, into: &mut TokenUsage) {
    if let Some(n) = *usage.input_tokens {
        into.input_uncached = n;
    }
    if let Some(n) = *usage.cache_read_input_tokens {
        into.cache_read = n;
    }
    match usage.cache_creation.as_ref() {
        Some(breakdown) => {
            into.cache_write_5m = *breakdown.ephemeral_5m_input_tokens;
            into.cache_write_1h = *breakdown.ephemeral_1h_input_tokens;
        }
        None => {
            if let Some(n) = *usage.cache_creation_input_tokens {
                into.cache_write_5m = n;
                into.cache_write_1h = 0;
            }
        }
    }
    if let Some(n) = *usage.output_tokens {
        into.output = n;
    }
    *into = super::clamp_usage(*into);
}

/// Disjoint buckets → Anthropic usage.
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    json!({
        "input_tokens": usage.input_uncached,
        "cache_creation_input_tokens": usage.cache_write_5m.saturating_add(usage.cache_write_1h),
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m,
            "ephemeral_1h_input_tokens": usage.cache_write_1h,
        },
        "output_tokens": usage.output,
    })
}

/// HTTP status for an Anthropic error `type`.
pub(crate) fn status_for_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

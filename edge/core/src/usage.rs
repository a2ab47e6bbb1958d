//! Token usage in disjoint buckets, and the usage event every request yields.
//!
//! Buckets never overlap: `input_uncached + cache_read + cache_write_5m +
//! cache_write_1h` is the whole prompt, `output` is the whole completion and
//! `reasoning` is the part of `output` spent thinking. Provider-reported counts
//! are the truth; an estimate is used only when the provider reported nothing,
//! and the event says which.

use crate::family::Family;
use serde::{Deserialize, Serialize};

/// Token counts in disjoint buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens not served from or written to a cache.
    #[serde(default)]
    pub input_uncached: u64,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cache_read: u64,
    /// Prompt tokens written to a 5-minute cache.
    #[serde(default)]
    pub cache_write_5m: u64,
    /// Prompt tokens written to a 1-hour cache.
    #[serde(default)]
    pub cache_write_1h: u64,
    /// Completion tokens, reasoning included.
    #[serde(default)]
    pub output: u64,
    /// Of `output`, tokens spent on reasoning.
    #[serde(default)]
    pub reasoning: u64,
}

impl TokenUsage {
    /// Every prompt token, whatever its cache bucket.
    pub fn prompt_total(&self) -> u64 {
        self.input_uncached + self.cache_read + self.cache_write_5m + self.cache_write_1h
    }

    /// Prompt plus completion.
    pub fn total(&self) -> u64 {
        self.prompt_total() + self.output
    }

    /// From OpenAI's `usage` object, where `prompt_tokens` includes
    /// `prompt_tokens_details.cached_tokens` and `completion_tokens` includes
    /// `completion_tokens_details.reasoning_tokens`.
    pub fn from_openai(usage: &OpenAiUsage) -> Self {
        let cached = usage.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0);
        let reasoning =
            usage.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0);
        Self {
            input_uncached: usage.prompt_tokens.saturating_sub(cached),
            cache_read: cached.min(usage.prompt_tokens),
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: usage.completion_tokens,
            reasoning: reasoning.min(usage.completion_tokens),
        }
    }

    /// Back to OpenAI's overlapping shape.
    pub fn to_openai(&self) -> OpenAiUsage {
        OpenAiUsage {
            prompt_tokens: self.prompt_total(),
            completion_tokens: self.output,
            total_tokens: self.total(),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: Some(self.cache_read) }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: Some(self.reasoning),
            }),
        }
    }
}

/// OpenAI's wire `usage` object (the fields edgeway reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// Where a usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the provider.
    Provider,
    /// Estimated by the gateway because the provider reported nothing.
    Estimated,
    /// No tokens were used (request refused or failed before the upstream).
    None,
    /// A response-cache hit: the usage of the answer it replayed
    /// ([`crate::response_cache`]), billed as the model's cache option says.
    Cache,
}

impl UsageSource {
    /// The wire and column text (`provider`, `estimated`, `none`, `cache`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Estimated => "estimated",
            Self::None => "none",
            Self::Cache => "cache",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Provider, Self::Estimated, Self::None, Self::Cache].into_iter().find(|v| v.as_str() == text)
    }
}

/// How the request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Completed and delivered.
    Completed,
    /// Upstream or gateway failure.
    Failed,
    /// The client went away before the end.
    ClientAborted,
}

impl RequestOutcome {
    /// The wire and column text (`completed`, `failed`, `client_aborted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::ClientAborted => "client_aborted",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Completed, Self::Failed, Self::ClientAborted].into_iter().find(|v| v.as_str() == text)
    }
}

/// A unit other than tokens that a request is billed by (serialized as
/// [`Unit::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// An image at standard quality, no side over 1024 pixels.
    Image,
    /// An image at high quality (`hd`, `high`), no side over 1024 pixels.
    ImageHd,
    /// An image at standard quality with a side over 1024 pixels.
    ImageLarge,
    /// An image at high quality with a side over 1024 pixels.
    ImageHdLarge,
    /// A second of audio (rounded up).
    AudioSecond,
    /// A character of text (Unicode scalar values).
    Character,
}

impl Unit {
    /// Every unit.
    pub const ALL: [Unit; 6] = [
        Self::Image,
        Self::ImageHd,
        Self::ImageLarge,
        Self::ImageHdLarge,
        Self::AudioSecond,
        Self::Character,
    ];

    /// The wire and column text (`image`, `audio_second`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::ImageHd => "image_hd",
            Self::ImageLarge => "image_large",
            Self::ImageHdLarge => "image_hd_large",
            Self::AudioSecond => "audio_second",
            Self::Character => "character",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.as_str() == text)
    }
}

serde_as_str!(Unit, "unit");

/// One request's usage, sent to the Queue and stored (idempotently on
/// `request_id`) in D1 and the admin ledger. Never contains a plaintext key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per request; the idempotency key of every store.
    pub request_id: String,
    /// SHA-256 hex of the client key.
    pub key_digest: String,
    /// Key owner as known at the edge.
    #[serde(default)]
    pub owner: String,
    /// The user whose balance paid for the request (the key record's
    /// `user_id`); `None` for a standalone key.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The key's pricing group.
    #[serde(default = "default_group")]
    pub group: String,
    /// The group's price ratio applied to `cost_micros`, parts per million.
    #[serde(default = "default_ratio")]
    pub price_ratio_ppm: u32,
    /// Model name the client asked for.
    pub model: String,
    /// Model name sent upstream.
    #[serde(default)]
    pub upstream_model: String,
    /// Channel id that served the request.
    pub channel: String,
    /// Provider id of that channel.
    #[serde(default)]
    pub provider: String,
    /// The endpoint family the request was for.
    #[serde(default)]
    pub endpoint: Family,
    /// Tokens in disjoint buckets.
    pub usage: TokenUsage,
    /// The non-token unit the request was billed by, if any…
    #[serde(default)]
    pub unit: Option<Unit>,
    /// …and how many of it (0 without a unit).
    #[serde(default)]
    pub unit_count: u64,
    /// Price of `usage` and `units` at `price_ratio_ppm`, integer micro-units.
    pub cost_micros: i64,
    /// HTTP status returned to the client.
    pub status: u16,
    pub outcome: RequestOutcome,
    pub usage_source: UsageSource,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Request start to end, ms.
    pub latency_ms: u64,
    /// Request start to first content byte, ms (streams only).
    #[serde(default)]
    pub ttft_ms: Option<u64>,
    /// The public model that served, when it is not `model` (a fallback,
    /// or the base of a reasoning-suffixed name); billed at its price.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub served_model: String,
    /// Every upstream attempt, in order; only the one that served is billed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<crate::channel_health::Attempt>,
    /// Unix ms when the request started.
    pub created_at_ms: i64,
}

fn default_group() -> String {
    "default".into()
}

fn default_ratio() -> u32 {
    crate::pricing::RATIO_ONE_PPM
}

/// Rough token count for text: one token per four bytes, rounded up. Used only
/// when a provider reports no usage.
pub fn estimate_tokens(text_bytes: usize) -> u64 {
    (text_bytes as u64).div_ceil(4)
}

/// The gateway's estimate of a reply's usage when the provider reported
/// none: the prompt estimate as uncached input, the content forwarded as
/// output. The one formula behind what is billed and what the client is
/// shown, so the two are always the same figures.
pub fn estimated_usage(estimated_prompt_tokens: u64, forwarded_content_bytes: usize) -> TokenUsage {
    TokenUsage {
        input_uncached: estimated_prompt_tokens,
        output: estimate_tokens(forwarded_content_bytes),
        ..Default::default()
    }
}

/// The usage to bill for a request, by the rule "the provider is the truth":
/// provider-reported usage is used as is (an explicit zero stays zero); only
/// when the provider reported nothing and it did produce output is usage
/// estimated from the prompt and the bytes forwarded. A request that never
/// reached a provider, or that the provider refused, uses nothing.
pub fn settle_usage(
    reported: Option<TokenUsage>,
    upstream_succeeded: bool,
    estimated_prompt_tokens: u64,
    forwarded_content_bytes: usize,
) -> (TokenUsage, UsageSource) {
    match reported {
        Some(usage) => (usage, UsageSource::Provider),
        None if upstream_succeeded => {
            (estimated_usage(estimated_prompt_tokens, forwarded_content_bytes), UsageSource::Estimated)
        }
        None => (TokenUsage::default(), UsageSource::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_prefers_the_provider_and_keeps_explicit_zero() {
        let zero = TokenUsage::default();
        assert_eq!(settle_usage(Some(zero), true, 100, 400), (TokenUsage::default(), UsageSource::Provider));
        let (u, s) = settle_usage(None, true, 100, 400);
        assert_eq!((u.input_uncached, u.output, s), (100, 100, UsageSource::Estimated));
        assert_eq!(settle_usage(None, false, 100, 400), (TokenUsage::default(), UsageSource::None));
    }

    #[test]
    fn openai_usage_becomes_disjoint_buckets() {
        let u: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,
                "prompt_tokens_details":{"cached_tokens":30},
                "completion_tokens_details":{"reasoning_tokens":20}}"#,
        )
        .unwrap_or_default();
        let t = TokenUsage::from_openai(&u);
        assert_eq!(t.input_uncached, 70);
        assert_eq!(t.cache_read, 30);
        assert_eq!(t.output, 50);
        assert_eq!(t.reasoning, 20);
        assert_eq!(t.prompt_total(), 100);
        assert_eq!(t.total(), 150);
        let back = t.to_openai();
        assert_eq!(back.prompt_tokens, 100);
        assert_eq!(back.total_tokens, 150);
    }

    #[test]
    fn inconsistent_details_do_not_underflow() {
        let u = OpenAiUsage {
            prompt_tokens: 5,
            completion_tokens: 1,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: Some(9) }),
            completion_tokens_details: Some(CompletionTokensDetails { reasoning_tokens: Some(3) }),
            ..Default::default()
        };
        let t = TokenUsage::from_openai(&u);
        assert_eq!((t.input_uncached, t.cache_read, t.reasoning), (0, 5, 1));
    }

    #[test]
    fn enum_text_matches_serde() {
        for o in [RequestOutcome::Completed, RequestOutcome::Failed, RequestOutcome::ClientAborted] {
            assert_eq!(serde_json::to_value(o).ok(), Some(serde_json::Value::from(o.as_str())));
            assert_eq!(RequestOutcome::parse(o.as_str()), Some(o));
        }
        for u in [UsageSource::Provider, UsageSource::Estimated, UsageSource::None] {
            assert_eq!(serde_json::to_value(u).ok(), Some(serde_json::Value::from(u.as_str())));
            assert_eq!(UsageSource::parse(u.as_str()), Some(u));
        }
        assert_eq!(UsageSource::parse("x"), None);
        for u in Unit::ALL {
            assert_eq!(serde_json::to_value(u).ok(), Some(serde_json::Value::from(u.as_str())));
            assert_eq!(Unit::parse(u.as_str()), Some(u));
        }
    }

    #[test]
    fn old_events_parse_with_account_defaults() {
        let old = r#"{"request_id":"r","key_digest":"d","model":"m","channel":"c","usage":{},
            "cost_micros":5,"status":200,"outcome":"completed","usage_source":"provider",
            "stream":false,"latency_ms":1,"created_at_ms":0}"#;
        let e: UsageEvent = serde_json::from_str(old).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((e.user_id, e.group.as_str(), e.price_ratio_ppm), (None, "default", 1_000_000));
        assert_eq!((e.endpoint, e.unit, e.unit_count), (Family::Chat, None, 0));
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }
}

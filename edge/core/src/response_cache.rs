//! The exact-match response cache: the rules. A model opts in through its
//! operator option [`CacheOption`] (`options.cache` in the routing config);
//! a request to it is cached only when it is deterministic ([`cacheable`]:
//! temperature 0 or a seed, no tools, one choice), and only for the key that
//! asked ([`cache_url`] hashes the key digest in: tenants never share).
//! A hit is the answer the client got the first time, byte for byte (a
//! stream is replayed as the same stream), marked `x-edgeway-cache: hit`
//! and, in its usage event, `usage_source: "cache"`; it is billed as the
//! option says ([`CacheBilling`]).
//!
//! **Key design decision:** the Workers Cache API (`caches.default`), not
//! KV. A cache needs no consistency across locations (a miss elsewhere only
//! costs one upstream call), and the Cache API is free, answers within the
//! location in about a millisecond and expires entries by itself
//! (`Cache-Control: max-age`), while KV bills every write and allows one per
//! second per name. The limits that follow: entries live in one location
//! (each location warms its own), the Cache API may evict them before their
//! TTL, and on `*.workers.dev` hosts it is a no-op (a custom domain is
//! needed in production). The key is the exact request body: a reordered
//! field or a changed space is another entry.

use crate::family::Family;
use crate::pricing::ModelPrice;
use crate::translate::{CanonicalRequest, ClientDialect};
use crate::usage::{TokenUsage, UsageSource};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Response header: `hit`, `miss` (and stored), or `bypass` (the model
/// caches, this request is not deterministic).
pub const CACHE_HEADER: &str = "x-edgeway-cache";
/// Largest answer kept (bytes the client received).
pub const MAX_CACHED_BYTES: usize = 1024 * 1024;
/// Longest TTL honoured.
pub const MAX_TTL_SECS: u32 = 7 * 24 * 3600;

/// How a hit is billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBilling {
    /// A hit costs nothing (its tokens are still recorded).
    #[default]
    Free,
    /// A hit's prompt tokens at the model's cache-read price, no output.
    CacheRead,
    /// As if the upstream had answered.
    Full,
}

/// A model's cache option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheOption {
    /// How long an answer is served from the cache (at most [`MAX_TTL_SECS`]).
    pub ttl_secs: u32,
    #[serde(default)]
    pub billing: CacheBilling,
}

impl CacheOption {
    /// The TTL used.
    pub fn ttl(&self) -> u32 {
        self.ttl_secs.min(MAX_TTL_SECS)
    }

    /// What a hit with `usage` costs at `ratio_ppm`.
    pub fn hit_cost(&self, price: &ModelPrice, usage: &TokenUsage, ratio_ppm: u32) -> i64 {
        match self.billing {
            CacheBilling::Free => 0,
            CacheBilling::Full => price.cost_micros_at_ratio(usage, ratio_ppm),
            CacheBilling::CacheRead => {
                let read = TokenUsage { cache_read: usage.prompt_total(), ..TokenUsage::default() };
                let price = ModelPrice { per_request: 0, ..*price };
                price.cost_micros_at_ratio(&read, ratio_ppm)
            }
        }
    }
}

/// Whether `req` is deterministic enough to cache: temperature 0 or a
/// seed, no tools (a tool call's effects are not the gateway's to repeat),
/// a single choice.
pub fn cacheable(req: &CanonicalRequest) -> bool {
    let zero_temperature = req.temperature.as_ref().is_some_and(|t| t.as_f64() == Some(0.0));
    (zero_temperature || req.seed.is_some()) && req.tools.is_empty() && req.candidate_count.unwrap_or(1) <= 1
}

/// What makes two requests the same answer.
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    pub key_digest: &'a str,
    pub client: ClientDialect,
    pub family: Family,
    /// Gemini's model in the path.
    pub path_model: Option<&'a str>,
    pub path_stream: bool,
    /// SHA-256 hex of the body the client sent.
    pub body_sha256: &'a str,
}

fn client_name(client: ClientDialect) -> &'static str {
    match client {
        ClientDialect::OpenAiChat => "openai_chat",
        ClientDialect::OpenAiResponses => "openai_responses",
        ClientDialect::Anthropic => "anthropic",
        ClientDialect::Gemini => "gemini",
    }
}

/// The Cache API URL of an answer (never fetched: a cache key only).
pub fn cache_url(key: &CacheKey<'_>) -> String {
    let mut hash = Sha256::new();
    for part in [
        "edgeway-cache-v1",
        key.key_digest,
        client_name(key.client),
        key.family.as_str(),
        key.path_model.unwrap_or(""),
        if key.path_stream { "stream" } else { "" },
        key.body_sha256,
    ] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    format!("https://response-cache.edgeway.invalid/{}", hex::encode(hash.finalize()))
}

/// A cached answer: what the client received, and the usage it was billed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The response body (a whole answer) or the stream's bytes, as sent.
    pub body: String,
    pub stream: bool,
    pub content_type: String,
    pub usage: TokenUsage,
    /// Where the first answer's usage came from.
    pub usage_source: UsageSource,
    pub channel: String,
    pub provider: String,
    pub upstream_model: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Number;

    fn req(temperature: Option<f64>, seed: Option<i64>) -> CanonicalRequest {
        CanonicalRequest { temperature: temperature.and_then(Number::from_f64), seed, ..Default::default() }
    }

    #[test]
    fn only_deterministic_requests_are_cached() {
        assert!(cacheable(&req(Some(0.0), None)));
        assert!(cacheable(&req(Some(0.7), Some(42))));
        assert!(!cacheable(&req(None, None)), "the default temperature samples");
        assert!(!cacheable(&req(Some(0.2), None)));
        let mut tools = req(Some(0.0), None);
        tools.tools.push(crate::translate::canonical::ToolDefinition {
            name: "f".into(),
            description: None,
            parameters: serde_json::json!({}),
            strict: None,
            cache_control: None,
        });
        assert!(!cacheable(&tools));
        let mut n = req(Some(0.0), None);
        n.candidate_count = Some(2);
        assert!(!cacheable(&n));
    }

    #[test]
    fn keys_never_share_and_bodies_match_exactly() {
        let key = |digest, body: &'static [u8], stream| {
            let body_sha256 = hex::encode(Sha256::digest(body));
            cache_url(&CacheKey {
                key_digest: digest,
                client: ClientDialect::OpenAiChat,
                family: Family::Chat,
                path_model: None,
                path_stream: stream,
                body_sha256: &body_sha256,
            })
        };
        let a = key("d1", br#"{"model":"m","temperature":0}"#, false);
        assert_eq!(a, key("d1", br#"{"model":"m","temperature":0}"#, false));
        assert_ne!(a, key("d2", br#"{"model":"m","temperature":0}"#, false), "another tenant");
        assert_ne!(a, key("d1", br#"{"temperature":0,"model":"m"}"#, false));
        assert_ne!(a, key("d1", br#"{"model":"m","temperature":0}"#, true), "a Gemini stream path");
        assert!(a.starts_with("https://response-cache.edgeway.invalid/"));
    }

    #[test]
    fn hits_are_billed_as_configured() {
        let price = ModelPrice {
            input: 1_000_000,
            output: 2_000_000,
            cache_read: Some(100_000),
            cache_write_5m: None,
            cache_write_1h: None,
            per_request: 0,
        };
        let usage = TokenUsage { input_uncached: 1_000, output: 500, ..TokenUsage::default() };
        let option = |billing| CacheOption { ttl_secs: 60, billing };
        assert_eq!(option(CacheBilling::Free).hit_cost(&price, &usage, 1_000_000), 0);
        assert_eq!(option(CacheBilling::Full).hit_cost(&price, &usage, 1_000_000), 2_000);
        assert_eq!(option(CacheBilling::CacheRead).hit_cost(&price, &usage, 1_000_000), 100);
        assert_eq!(CacheOption { ttl_secs: u32::MAX, billing: CacheBilling::Free }.ttl(), MAX_TTL_SECS);
    }
}

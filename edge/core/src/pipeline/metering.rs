//! The usage event of a request, from how it ended, and the ids the client
//! sees.

use crate::family::Family;
use crate::pricing::ModelPrice;
use crate::translate::{CanonicalResponse, ClientDialect, ContentPart};
use crate::usage::{settle_usage, RequestOutcome, TokenUsage, UsageEvent};

/// What a request's usage event needs that is known before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub request_id: String,
    pub key_digest: String,
    pub owner: String,
    /// The user whose balance pays (the key record's `user_id`).
    pub user_id: Option<String>,
    /// The key's pricing group and its price ratio (ppm) applied to the cost.
    pub group: String,
    pub price_ratio_ppm: u32,
    /// Model name the client asked for.
    pub model: String,
    /// The endpoint family asked for.
    pub endpoint: Family,
    pub stream: bool,
    pub started_ms: i64,
    /// Prompt tokens estimated: billed only when the provider reports none.
    pub prompt_estimate: u64,
    pub price: ModelPrice,
    /// The operator's `empty_reply_free`: a completed reply with no content
    /// costs nothing.
    pub empty_reply_free: bool,
}

/// Which channel served the request (or last failed it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub channel: String,
    pub provider: String,
    pub upstream_model: String,
}

/// How a request ended, as far as billing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// HTTP status the client saw.
    pub status: u16,
    pub outcome: RequestOutcome,
    /// Usage the provider reported, if any.
    pub reported: Option<TokenUsage>,
    /// The provider produced output (so a missing usage report is estimated).
    pub upstream_succeeded: bool,
    /// Bytes of content forwarded (the basis of an output estimate).
    pub content_bytes: usize,
    pub ttft_ms: Option<u64>,
}

impl Ending {
    /// Failed before any upstream produced output: billed nothing.
    pub fn failed(status: u16) -> Self {
        Self {
            status,
            outcome: RequestOutcome::Failed,
            reported: None,
            upstream_succeeded: false,
            content_bytes: 0,
            ttft_ms: None,
        }
    }

    /// A whole (non-streamed) answer delivered.
    pub fn completed(reported: Option<TokenUsage>, content_bytes: usize) -> Self {
        Self {
            status: 200,
            outcome: RequestOutcome::Completed,
            reported,
            upstream_succeeded: true,
            content_bytes,
            ttft_ms: None,
        }
    }
}

impl Meter {
    /// The usage event of a request that ended at `now_ms`: the provider's
    /// usage when reported (an explicit zero stays zero), an estimate only
    /// when it reported nothing after producing output, priced in integer
    /// micro-units.
    pub fn event(&self, served: &Served, ending: Ending, now_ms: i64) -> UsageEvent {
        let (usage, usage_source) = settle_usage(
            ending.reported,
            ending.upstream_succeeded,
            self.prompt_estimate,
            ending.content_bytes,
        );
        let free =
            self.empty_reply_free && ending.outcome == RequestOutcome::Completed && ending.content_bytes == 0;
        UsageEvent {
            request_id: self.request_id.clone(),
            key_digest: self.key_digest.clone(),
            owner: self.owner.clone(),
            user_id: self.user_id.clone(),
            group: self.group.clone(),
            price_ratio_ppm: self.price_ratio_ppm,
            model: self.model.clone(),
            upstream_model: served.upstream_model.clone(),
            channel: served.channel.clone(),
            provider: served.provider.clone(),
            endpoint: self.endpoint,
            unit: None,
            unit_count: 0,
            cost_micros: if free { 0 } else { self.price.cost_micros_at_ratio(&usage, self.price_ratio_ppm) },
            usage,
            status: ending.status,
            outcome: ending.outcome,
            usage_source,
            stream: self.stream,
            latency_ms: u64::try_from(now_ms - self.started_ms).unwrap_or(0),
            ttft_ms: ending.ttft_ms,
            served_model: String::new(),
            attempts: Vec::new(),
            created_at_ms: self.started_ms,
        }
    }
}

/// Response header saying the usage in the body is the gateway's estimate
/// (the upstream reported none): `x-edgeway-usage: estimated`.
pub const USAGE_HEADER: &str = "x-edgeway-usage";

/// A relayed OpenAI chat body that carries no usage, with the estimate
/// that is billed put in (marked `"estimated": true`); `None` when the body
/// is not a JSON object (it is then passed on as it came).
pub fn relay_body_with_usage(body: &[u8], usage: &TokenUsage) -> Option<Vec<u8>> {
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let shown = serde_json::to_value(usage.to_openai()).ok()?;
    value.insert("usage".into(), crate::translate::mark_estimated(shown));
    serde_json::to_vec(&value).ok()
}

/// The response id the client sees, in its dialect's shape, from the
/// gateway's request id (`req_<hex>`).
pub fn client_response_id(client: ClientDialect, request_id: &str) -> String {
    let bare = request_id.trim_start_matches("req_");
    match client {
        ClientDialect::OpenAiChat => format!("chatcmpl-{bare}"),
        ClientDialect::Anthropic => format!("msg_{bare}"),
        ClientDialect::Gemini => bare.to_string(),
        ClientDialect::OpenAiResponses => format!("resp_{bare}"),
    }
}

/// Bytes of content in a translated answer (the basis of an output estimate).
pub fn response_content_bytes(resp: &CanonicalResponse) -> usize {
    resp.content
        .iter()
        .map(|p| match p {
            ContentPart::Text { text, .. } | ContentPart::Thinking { text, .. } => text.len(),
            ContentPart::ToolCall { name, arguments, .. } => name.len() + arguments.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageSource;

    fn meter() -> Meter {
        Meter {
            request_id: "req_abc".into(),
            key_digest: "d".into(),
            owner: "o".into(),
            user_id: None,
            group: "default".into(),
            price_ratio_ppm: 1_000_000,
            model: "m".into(),
            endpoint: Family::Chat,
            stream: true,
            started_ms: 1_000,
            prompt_estimate: 10,
            price: ModelPrice { input: 1_000_000, output: 2_000_000, ..Default::default() },
            empty_reply_free: false,
        }
    }

    #[test]
    fn provider_usage_is_billed_and_estimates_only_fill_silence() {
        let served = Served { channel: "c".into(), provider: "openai".into(), upstream_model: "u".into() };
        let reported = TokenUsage { input_uncached: 3, output: 4, ..Default::default() };
        let e = meter().event(&served, Ending::completed(Some(reported), 999), 1_250);
        assert_eq!((e.cost_micros, e.usage_source, e.latency_ms), (3 + 8, UsageSource::Provider, 250));
        assert_eq!((e.channel.as_str(), e.upstream_model.as_str(), e.model.as_str()), ("c", "u", "m"));
        let e = meter().event(&served, Ending::completed(None, 8), 1_000);
        assert_eq!((e.usage.input_uncached, e.usage.output, e.usage_source), (10, 2, UsageSource::Estimated));
        let e = meter().event(&served, Ending::failed(502), 1_000);
        assert_eq!((e.cost_micros, e.usage_source, e.status), (0, UsageSource::None, 502));
        let zero = Ending::completed(Some(TokenUsage::default()), 100);
        assert_eq!(meter().event(&served, zero, 1_000).cost_micros, 0, "an explicit zero stays zero");
    }

    #[test]
    fn empty_replies_are_free_only_when_the_operator_says() {
        let served = Served::default();
        let reported = TokenUsage { input_uncached: 3, output: 4, ..Default::default() };
        let mut m = meter();
        assert_eq!(m.event(&served, Ending::completed(Some(reported), 0), 1_000).cost_micros, 11);
        m.empty_reply_free = true;
        let e = m.event(&served, Ending::completed(Some(reported), 0), 1_000);
        assert_eq!((e.cost_micros, e.usage), (0, reported), "tokens recorded, cost zero");
        assert_eq!(m.event(&served, Ending::completed(Some(reported), 1), 1_000).cost_micros, 11);
    }

    #[test]
    fn relayed_bodies_get_the_estimate_marked() {
        let usage = TokenUsage { input_uncached: 7, output: 2, ..Default::default() };
        let body = relay_body_with_usage(br#"{"id":"x","choices":[]}"#, &usage).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()),
            (Some(7), Some(2))
        );
        assert_eq!(v["usage"]["estimated"], true);
        assert_eq!(relay_body_with_usage(b"[1]", &usage), None);
    }

    #[test]
    fn response_ids_per_dialect() {
        assert_eq!(client_response_id(ClientDialect::OpenAiChat, "req_ab"), "chatcmpl-ab");
        assert_eq!(client_response_id(ClientDialect::Anthropic, "req_ab"), "msg_ab");
        assert_eq!(client_response_id(ClientDialect::Gemini, "req_ab"), "ab");
        assert_eq!(client_response_id(ClientDialect::OpenAiResponses, "req_ab"), "resp_ab");
    }
}

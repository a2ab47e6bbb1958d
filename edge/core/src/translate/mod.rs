//! Protocol translation: any client dialect to any provider dialect, through
//! one canonical hub ([`canonical`]). No pairwise converters: each dialect
//! module parses into and renders from the hub, in both roles.
//!
//! | module | client-facing | provider-facing |
//! |---|---|---|
//! | `openai_chat` | `/v1/chat/completions` | `/chat/completions` |
//! | `anthropic` | `/v1/messages`, `/v1/messages/count_tokens` | `/messages` |
//! | `gemini` | `/v1beta/models/{m}:generateContent`, `:streamGenerateContent`, `:countTokens` | `/models/{m}:generateContent`, `:streamGenerateContent?alt=sse` |
//! | `openai_responses` | `/v1/responses` (state: [`responses_state`]) | — |
//!
//! OpenAI → OpenAI-compatible traffic keeps using [`crate::openai_relay`]
//! (no rebuild); this module is for every other pair.
//!
//! # How the worker uses it
//!
//! ```text
//! let req  = parse_client_request(client, body, path_model, path_stream)?;   // 400s here
//! let call = build_upstream_request(upstream, &req, &route.upstream_model)?;   // and here
//! // POST {base_url}{call.path} with call.body
//! if !status.is_success() { return parse_upstream_error(upstream, status, body) }  // rendered in client dialect
//! if req.stream {
//!     let mut t = StreamTranslator::new(upstream, client, StreamOptions { .. });
//!     for chunk in upstream_body { send(t.feed(chunk)) }  send(t.finish());
//!     record(t.usage());                                 // None → estimate
//! } else {
//!     let resp = parse_upstream_response(upstream, body)?;
//!     send(render_client_response(client, &resp));
//! }
//! ```
//!
//! Token counting: [`parse_count_tokens_request`], then either
//! [`build_upstream_count_tokens`] + [`parse_upstream_count_tokens`] (Anthropic
//! and Gemini upstreams) or [`count_tokens_estimate`]; answer with
//! [`render_count_tokens`]. Signed reasoning for OpenAI chat clients:
//! [`preserved_reasoning`] after a response (or
//! [`StreamTranslator::response_snapshot`] after a stream), stored by tool
//! call id, and [`restore_reasoning`] on the next request.
//!
//! # Policies (decided here, tested by the golden fixtures)
//!
//! * **System messages**: every `system`/`developer` message, wherever it is
//!   in the conversation, is hoisted in order into the single top-level system
//!   instruction (Anthropic `system`, Gemini `systemInstruction`, one OpenAI
//!   `system` message). A mid-conversation system message therefore loses its
//!   position but never its text: no provider but OpenAI can express it in
//!   place.
//! * **Unsupported parameters** are refused with a 400 naming the parameter
//!   (`n` > 1, `logprobs`, `logit_bias`, `top_k` to OpenAI, `seed` and
//!   penalties to Anthropic, audio output, server-side tools, Responses
//!   `previous_response_id`, …); parameters left at their default value are
//!   accepted. Unknown top-level fields are refused like the providers do.
//! * **Accepted but not forwarded** (they change nothing the model does):
//!   OpenAI `metadata`, `store`, `service_tier`, `prompt_cache_key`, image
//!   `detail`; Anthropic `service_tier`; Gemini `labels`, `mediaResolution`;
//!   `user` to Gemini (no such field); Gemini `safetySettings` to non-Gemini
//!   upstreams; unsigned reasoning text to Anthropic and Gemini (they accept
//!   only their own signed reasoning).
//! * **Media URLs** are never fetched. Anthropic gets `url` sources; Gemini
//!   accepts only its own file URIs, so other URLs are a 400 asking for a data
//!   URI; every URL passes the one URL policy ([`crate::url_policy`]) and is
//!   forwarded normalized; inline data is capped at
//!   [`media::MAX_INLINE_MEDIA_BYTES`].
//! * **Inline media** is normalized once, when parsed: base64 in the standard
//!   alphabet with padding (the Gemini SDKs send URL-safe base64), an image's
//!   media type taken from its bytes when they say another image type. Each
//!   upstream's rules ([`media_rules`]) are checked when its request is built:
//!   media types it refuses are a 400 naming them, an image or a request's
//!   inline total over its limits a 413.
//! * **Tool calls left unanswered** get an `is_error` result saying so, since
//!   Anthropic and Gemini refuse an unanswered call.
//! * **Thinking**: Anthropic `thinking`/`redacted_thinking` and Gemini
//!   `thoughtSignature`s round-trip through Anthropic, Gemini and Responses
//!   clients (Responses: `reasoning` items with `encrypted_content`). OpenAI
//!   chat clients see `reasoning_content` and cannot send signatures back:
//!   the [`signature_vault`] keeps them at the edge keyed by tool call id and
//!   puts them back ([`preserved_reasoning`] / [`restore_reasoning`], called
//!   by the generation machine). A Gemini function call with no signature
//!   gets Gemini's documented validator-skip value.
//! * **Structured output to Anthropic** is a forced tool named
//!   [`anthropic::STRUCTURED_OUTPUT_TOOL`]; its input comes back as text.
//! * **Reasoning effort** ↔ budgets: see [`reasoning`].

pub mod canonical;
mod client_body;
pub(crate) mod json_fields;
pub mod media;
mod normalize;
pub mod reasoning;
pub mod responses_state;
pub mod schema_sanitize;
pub mod signature_vault;
pub mod stream;
pub mod tool_emulation;

pub mod anthropic;
pub mod gemini;
mod openai_chat;
mod openai_responses;

pub use canonical::{CanonicalRequest, CanonicalResponse, ContentPart, FinishReason, StreamEvent};
pub use openai_chat::{FORBIDDEN_CLIENT_FIELDS, MAX_OUTPUT_TOKENS_ACCEPTED};
pub use signature_vault::{preserved_reasoning, restore_reasoning, PreservedReasoning};
pub use stream::{StreamOptions, StreamOutcome, StreamTranslator};

use crate::error::{
    redact_secrets, upstream_error_message, Dialect, GatewayError, MAX_UPSTREAM_MESSAGE_CHARS,
};
use crate::family::Family;
use crate::provider::{OutputLimit, Provider, ProviderDialect};
use crate::usage::{estimate_tokens, TokenUsage};
use canonical::ToolResultPart;
use serde_json::json;

/// The API a client speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientDialect {
    OpenAiChat,
    Anthropic,
    Gemini,
    OpenAiResponses,
}

impl ClientDialect {
    /// Every client dialect.
    pub const ALL: [ClientDialect; 4] =
        [Self::OpenAiChat, Self::Anthropic, Self::Gemini, Self::OpenAiResponses];

    /// The error shape this client understands.
    pub fn error_dialect(self) -> Dialect {
        match self {
            Self::OpenAiChat | Self::OpenAiResponses => Dialect::OpenAi,
            Self::Anthropic => Dialect::Anthropic,
            Self::Gemini => Dialect::Gemini,
        }
    }

    /// Short name used in fixture file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAiChat => "openai_chat",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::OpenAiResponses => "openai_responses",
        }
    }
}

/// The API an upstream provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamDialect {
    OpenAiChat,
    Anthropic,
    Gemini,
}

impl UpstreamDialect {
    /// Every upstream dialect.
    pub const ALL: [UpstreamDialect; 3] = [Self::OpenAiChat, Self::Anthropic, Self::Gemini];

    /// The dialect of a provider-table row (`None` for the built-in mock).
    pub fn from_provider(dialect: ProviderDialect) -> Option<Self> {
        match dialect {
            ProviderDialect::OpenAiChat => Some(Self::OpenAiChat),
            ProviderDialect::Anthropic => Some(Self::Anthropic),
            ProviderDialect::Gemini => Some(Self::Gemini),
            ProviderDialect::Mock => None,
        }
    }

    /// Short name used in fixture file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAiChat => "openai_chat",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }
}

/// What to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCall {
    /// Appended to the provider's base URL (which ends in its version prefix),
    /// query string included: `/chat/completions`, `/messages`,
    /// `/models/{m}:streamGenerateContent?alt=sse`.
    pub path: String,
    /// JSON body.
    pub body: Vec<u8>,
    /// The response will be an SSE stream.
    pub stream: bool,
}

/// Parses a client request body. Gemini carries the model and streaming in
/// the URL: pass them as `path_model` / `path_stream` (they win over the body).
/// A model-name reasoning suffix (`-high`, `-thinking`, …) sets
/// [`CanonicalRequest::reasoning`] unless the body set it, and
/// [`CanonicalRequest::model_without_suffix`] for routing.
pub fn parse_client_request(
    dialect: ClientDialect,
    body: &[u8],
    path_model: Option<&str>,
    path_stream: bool,
) -> Result<CanonicalRequest, GatewayError> {
    let mut req = match dialect {
        ClientDialect::OpenAiChat => openai_chat::parse_request(body)?,
        ClientDialect::Anthropic => anthropic::parse_request(body, false)?,
        ClientDialect::Gemini => gemini::parse_request(body, false)?,
        ClientDialect::OpenAiResponses => openai_responses::parse_request(body)?,
    };
    apply_path(&mut req, path_model, path_stream)?;
    Ok(req)
}

/// Parses an OpenAI chat request leniently, for an OpenAI-compatible
/// upstream that gets the body as sent (see `openai_chat::ChatMode`). The
/// model-name rules of [`parse_client_request`] apply.
pub(crate) fn parse_openai_chat_passthrough(body: &[u8]) -> Result<openai_chat::ParsedChat, GatewayError> {
    let mut parsed = openai_chat::parse_chat(body, openai_chat::ChatMode::Passthrough)?;
    apply_path(&mut parsed.canonical, None, false)?;
    Ok(parsed)
}

/// Parses a token-counting request: Anthropic `/v1/messages/count_tokens`
/// (no `max_tokens` needed) or Gemini `:countTokens` (`contents` or a whole
/// `generateContentRequest`).
pub fn parse_count_tokens_request(
    dialect: ClientDialect,
    body: &[u8],
    path_model: Option<&str>,
) -> Result<CanonicalRequest, GatewayError> {
    let mut req = match dialect {
        ClientDialect::Anthropic => anthropic::parse_request(body, true)?,
        ClientDialect::Gemini => gemini::parse_request(body, true)?,
        ClientDialect::OpenAiChat | ClientDialect::OpenAiResponses => return Err(GatewayError::NotFound),
    };
    apply_path(&mut req, path_model, false)?;
    Ok(req)
}

fn apply_path(
    req: &mut CanonicalRequest,
    path_model: Option<&str>,
    path_stream: bool,
) -> Result<(), GatewayError> {
    if let Some(model) = path_model {
        req.model = model.strip_prefix("models/").unwrap_or(model).to_string();
    }
    if path_stream {
        req.stream = true;
    }
    if req.model.trim().is_empty() {
        return Err(json_fields::invalid("You must provide a model parameter.", "model"));
    }
    if let Some((base, reasoning)) = reasoning::split_model_suffix(&req.model) {
        req.model_without_suffix = Some(base.to_string());
        if req.reasoning.is_none() {
            req.reasoning = Some(reasoning);
        }
    }
    Ok(())
}

/// Builds the upstream request for `upstream_model` (the route's model name)
/// in `dialect`, for a server of that dialect with no quirks (the golden
/// fixtures' upstream; an OpenAI-compatible one takes `max_tokens`, or
/// `max_completion_tokens` when reasoning is asked for).
pub fn build_upstream_request(
    dialect: UpstreamDialect,
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<UpstreamCall, GatewayError> {
    build_dialect_request(dialect, req, upstream_model, OutputLimit::ByRequest)
}

fn build_dialect_request(
    dialect: UpstreamDialect,
    req: &CanonicalRequest,
    upstream_model: &str,
    output_limit: OutputLimit,
) -> Result<UpstreamCall, GatewayError> {
    media_rules(dialect).check_total(inline_media_bytes(req))?;
    match dialect {
        UpstreamDialect::OpenAiChat => openai_chat::build_request(req, upstream_model, output_limit),
        UpstreamDialect::Anthropic => anthropic::build_request(req, upstream_model),
        UpstreamDialect::Gemini => gemini::build_request(req, upstream_model),
    }
}

/// Builds the upstream request in `dialect` for a channel of `provider`:
/// the row's output-limit field, chat path and parameter quirks applied.
/// Also the parameters dropped for the provider
/// ([`crate::provider::body_quirks`]).
pub fn build_provider_request(
    dialect: UpstreamDialect,
    provider: &Provider,
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<(UpstreamCall, Vec<&'static str>), GatewayError> {
    let mut call = build_dialect_request(dialect, req, upstream_model, provider.output_limit)?;
    if dialect != UpstreamDialect::OpenAiChat {
        return Ok((call, Vec::new()));
    }
    call.path = provider.path(Family::Chat).to_string();
    if provider.quirks.is_empty() {
        return Ok((call, Vec::new()));
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&call.body) else {
        return Err(GatewayError::Internal);
    };
    let dropped = provider.quirks.apply(&mut body);
    call.body = json_fields::to_bytes(&body);
    Ok((call, dropped))
}

/// What inline media `dialect` accepts.
pub fn media_rules(dialect: UpstreamDialect) -> &'static media::UpstreamMediaRules {
    match dialect {
        UpstreamDialect::OpenAiChat => &media::OPENAI_MEDIA,
        UpstreamDialect::Anthropic => &media::ANTHROPIC_MEDIA,
        UpstreamDialect::Gemini => &media::GEMINI_MEDIA,
    }
}

/// Decoded bytes of every inline image, document and audio part of `req`.
pub fn inline_media_bytes(req: &CanonicalRequest) -> usize {
    let inline = |source: &canonical::MediaSource| match source {
        canonical::MediaSource::Base64 { data, .. } => media::base64_decoded_len(data),
        _ => 0,
    };
    let mut total = 0usize;
    for part in req.messages.iter().flat_map(|m| &m.content) {
        total = total.saturating_add(match part {
            ContentPart::Image { source, .. } | ContentPart::Document { source, .. } => inline(source),
            ContentPart::Audio { data, .. } => media::base64_decoded_len(data),
            ContentPart::ToolResult { content, .. } => content
                .iter()
                .map(|p| match p {
                    ToolResultPart::Image(source) => inline(source),
                    ToolResultPart::Text(_) => 0,
                })
                .sum(),
            _ => 0,
        });
    }
    total
}

/// Parses a successful non-streaming upstream body. Garbage is
/// [`GatewayError::UpstreamUnavailable`] (502).
pub fn parse_upstream_response(
    dialect: UpstreamDialect,
    body: &[u8],
) -> Result<CanonicalResponse, GatewayError> {
    parse_upstream_response_seeded(dialect, body, "")
}

/// [`parse_upstream_response`], with ids made for Gemini function calls
/// (which come without any) derived from `id_seed` (the request's id), so
/// they are unique across requests: the vault keeps state under them.
pub fn parse_upstream_response_seeded(
    dialect: UpstreamDialect,
    body: &[u8],
    id_seed: &str,
) -> Result<CanonicalResponse, GatewayError> {
    match dialect {
        UpstreamDialect::OpenAiChat => openai_chat::parse_response(body),
        UpstreamDialect::Anthropic => anthropic::parse_response(body),
        UpstreamDialect::Gemini => gemini::parse_response(body, id_seed),
    }
}

/// Renders a response body in the client's dialect.
pub fn render_client_response(dialect: ClientDialect, resp: &CanonicalResponse) -> Vec<u8> {
    match dialect {
        ClientDialect::OpenAiChat => openai_chat::render_response(resp),
        ClientDialect::Anthropic => anthropic::render_response(resp),
        ClientDialect::Gemini => gemini::render_response(resp),
        ClientDialect::OpenAiResponses => openai_responses::render_response(resp),
    }
}

/// An error body in the client's dialect (status: [`GatewayError::status`]).
pub fn render_client_error(dialect: ClientDialect, error: &GatewayError) -> Vec<u8> {
    error.body(dialect.error_dialect()).into_bytes()
}

/// An upstream error response as a gateway error: the status is kept (429
/// stays 429, Anthropic 529 renders as overloaded), the message is extracted
/// from the provider's error shape, redacted and truncated; the raw body is
/// never passed on.
pub fn parse_upstream_error(dialect: UpstreamDialect, status: u16, body: &[u8]) -> GatewayError {
    parse_upstream_error_redacting(dialect, status, body, &[])
}

/// [`parse_upstream_error`], also redacting the channel's own credentials
/// (`secrets`) wherever they appear in the message. Redaction happens before
/// truncation, so a secret cut at the length limit cannot leave a prefix.
pub fn parse_upstream_error_redacting(
    dialect: UpstreamDialect,
    status: u16,
    body: &[u8],
    secrets: &[&str],
) -> GatewayError {
    let mut message = upstream_error_message(body, secrets);
    if message.is_empty() && dialect == UpstreamDialect::Gemini {
        let status_word = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.pointer("/error/status").and_then(|s| s.as_str()).map(str::to_string));
        message = status_word.unwrap_or_default();
    }
    GatewayError::Upstream { status, message }
}

/// A client usage object, marked `"estimated": true` when the figures are
/// the gateway's estimate rather than the provider's report.
pub(crate) fn marked(usage: serde_json::Value, estimated: bool) -> serde_json::Value {
    if estimated {
        mark_estimated(usage)
    } else {
        usage
    }
}

/// A client usage object marked `"estimated": true`.
pub fn mark_estimated(mut usage: serde_json::Value) -> serde_json::Value {
    if let Some(object) = usage.as_object_mut() {
        object.insert("estimated".into(), serde_json::Value::Bool(true));
    }
    usage
}

/// Folds reasoning text into the content, between [`stream::THINK_OPEN`]
/// and [`stream::THINK_CLOSE`], ahead of the reply's text (the operator's
/// `fold_thinking`, for OpenAI chat clients that cannot show
/// `reasoning_content`). Signatures stay where they were.
pub fn fold_thinking(resp: &mut CanonicalResponse) {
    let mut thinking = String::new();
    for part in resp.content.iter_mut() {
        if let ContentPart::Thinking { text, .. } = part {
            thinking.push_str(&std::mem::take(text));
        }
    }
    resp.content.retain(|p| !matches!(p, ContentPart::Thinking { text, signature: None } if text.is_empty()));
    if thinking.is_empty() {
        return;
    }
    let folded = format!("{}{thinking}{}", stream::THINK_OPEN, stream::THINK_CLOSE);
    match resp.content.iter_mut().find_map(|p| match p {
        ContentPart::Text { text, .. } => Some(text),
        _ => None,
    }) {
        Some(text) => text.insert_str(0, &folded),
        None => resp.content.insert(0, ContentPart::text(folded.trim_end())),
    }
}

/// Largest token count believed from a provider; anything above is clamped so
/// sums of buckets can never overflow.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 40;

/// Clamps every bucket to [`MAX_REPORTED_TOKENS`] and `reasoning` to `output`.
pub(crate) fn clamp_usage(usage: TokenUsage) -> TokenUsage {
    let c = |n: u64| n.min(MAX_REPORTED_TOKENS);
    TokenUsage {
        input_uncached: c(usage.input_uncached),
        cache_read: c(usage.cache_read),
        cache_write_5m: c(usage.cache_write_5m),
        cache_write_1h: c(usage.cache_write_1h),
        output: c(usage.output),
        reasoning: c(usage.reasoning).min(c(usage.output)),
    }
}

/// An upstream error met inside a stream.
pub(crate) fn upstream_error_from_message(status: u16, raw: &str) -> GatewayError {
    let redacted = redact_secrets(raw, &[]);
    let message = match redacted.char_indices().nth(MAX_UPSTREAM_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &redacted[..i]),
        None => redacted,
    };
    GatewayError::Upstream { status, message }
}

/// Flat token allowance for one image, document or audio part.
const MEDIA_TOKEN_ALLOWANCE: u64 = 1_000;

/// Tokens a provider adds around messages (roles, separators), reserved on
/// top of the prompt's own bytes.
pub const PROMPT_OVERHEAD_TOKENS: u64 = 64;

/// Tokens a chat template adds per message (the role and the separators
/// around it: OpenAI's documented count is 3, Llama 3's and ChatML's 4 to
/// 5; the system instruction counts as one message).
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// Tokens a chat template adds once, to prime the reply (`<|start|>assistant`).
pub const REPLY_PRIMING_TOKENS: u64 = 3;

/// How big a prompt is, in the two ways the gateway needs: an estimate (for
/// billing when the provider reports nothing, and for token counting) and a
/// bound no tokenizer exceeds (for the quota reservation, which must be a
/// true worst case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptSize {
    /// One token per four bytes of text, a flat allowance per media part,
    /// and the chat template's own tokens: [`TOKENS_PER_MESSAGE`] per message
    /// (the system instruction is one) and [`REPLY_PRIMING_TOKENS`].
    pub estimate: u64,
    /// One token per byte of text, the larger of four allowances and the
    /// inline size per media part, twice the template's tokens, plus
    /// [`PROMPT_OVERHEAD_TOKENS`].
    pub upper_bound: u64,
}

/// Sizes a request's prompt: system text, tool definitions, message text,
/// tool calls and results, and media parts. The one estimator every client
/// dialect (and the OpenAI passthrough) goes through.
pub fn prompt_size(req: &CanonicalRequest) -> PromptSize {
    let mut bytes: usize = req.system.iter().map(|s| s.text.len()).sum();
    let mut media = 0u64;
    let mut media_bound = 0u64;
    let mut add_media = |inline_bytes: usize| {
        media += MEDIA_TOKEN_ALLOWANCE;
        media_bound = media_bound.saturating_add((inline_bytes as u64).max(4 * MEDIA_TOKEN_ALLOWANCE));
    };
    let inline = |source: &canonical::MediaSource| match source {
        canonical::MediaSource::Base64 { data, .. } => data.len(),
        _ => 0,
    };
    for tool in &req.tools {
        bytes += tool.name.len()
            + tool.description.as_ref().map_or(0, String::len)
            + tool.parameters.to_string().len();
    }
    for message in &req.messages {
        for part in &message.content {
            match part {
                ContentPart::Text { text, .. } | ContentPart::Thinking { text, .. } => bytes += text.len(),
                ContentPart::ToolCall { name, arguments, .. } => bytes += name.len() + arguments.len(),
                ContentPart::ToolResult { content, .. } => {
                    for p in content {
                        match p {
                            ToolResultPart::Text(t) => bytes += t.len(),
                            ToolResultPart::Image(source) => add_media(inline(source)),
                        }
                    }
                }
                ContentPart::Image { source, .. } | ContentPart::Document { source, .. } => {
                    add_media(inline(source))
                }
                ContentPart::Audio { data, .. } => add_media(data.len()),
                ContentPart::RedactedThinking { .. } => {}
            }
        }
    }
    let turns = req.messages.len() as u64 + u64::from(!req.system.is_empty());
    let template = turns.saturating_mul(TOKENS_PER_MESSAGE).saturating_add(REPLY_PRIMING_TOKENS);
    PromptSize {
        estimate: estimate_tokens(bytes).saturating_add(media).saturating_add(template),
        upper_bound: (bytes as u64)
            .saturating_add(media_bound)
            .saturating_add(2 * template)
            .saturating_add(PROMPT_OVERHEAD_TOKENS),
    }
}

/// Prompt tokens estimated from a request ([`PromptSize::estimate`]). Used
/// for Anthropic `count_tokens` and Gemini `countTokens` when no upstream
/// count is asked for, and for billing when a provider reports nothing.
pub fn count_tokens_estimate(req: &CanonicalRequest) -> u64 {
    prompt_size(req).estimate
}

/// The token-count answer in the client's dialect: Anthropic
/// `{"input_tokens": n}`, Gemini `{"totalTokens": n}`.
pub fn render_count_tokens(dialect: ClientDialect, tokens: u64) -> Vec<u8> {
    let value = match dialect {
        ClientDialect::Gemini => json!({"totalTokens": tokens}),
        _ => json!({"input_tokens": tokens}),
    };
    json_fields::to_bytes(&value)
}

/// The provider's own token-counting call for `req`, when it has one
/// (Anthropic `/messages/count_tokens`, Gemini `:countTokens`); `None` for
/// OpenAI-format upstreams, which have none: use [`count_tokens_estimate`].
pub fn build_upstream_count_tokens(
    dialect: UpstreamDialect,
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<Option<UpstreamCall>, GatewayError> {
    let mut plain = req.clone();
    plain.stream = false;
    let call = match dialect {
        UpstreamDialect::OpenAiChat => return Ok(None),
        UpstreamDialect::Anthropic => anthropic::build_request(&plain, upstream_model)?,
        UpstreamDialect::Gemini => gemini::build_request(&plain, upstream_model)?,
    };
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice::<serde_json::Value>(&call.body)
    else {
        return Err(GatewayError::Internal);
    };
    let (path, body) = match dialect {
        UpstreamDialect::Anthropic => {
            for key in ["max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata"]
            {
                body.remove(key);
            }
            ("/messages/count_tokens".to_string(), serde_json::Value::Object(body))
        }
        _ => {
            let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
            body.insert("model".into(), json!(format!("models/{model}")));
            (format!("/models/{model}:countTokens"), json!({"generateContentRequest": body}))
        }
    };
    Ok(Some(UpstreamCall { path, body: json_fields::to_bytes(&body), stream: false }))
}

/// The count from a provider's token-counting answer (`input_tokens` or
/// `totalTokens`); `None` when the body has neither.
pub fn parse_upstream_count_tokens(dialect: UpstreamDialect, body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = if dialect == UpstreamDialect::Gemini { "totalTokens" } else { "input_tokens" };
    value.get(key).and_then(serde_json::Value::as_u64)
}

/// Marks Anthropic `redacted_thinking` data carried in a signature field by
/// dialects that have no such block (Gemini `thoughtSignature`, Responses
/// `encrypted_content`), so it round-trips back to a `redacted_thinking` block.
pub const REDACTED_THINKING_PREFIX: &str = "redacted_thinking:";

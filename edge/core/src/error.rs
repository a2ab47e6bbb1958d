//! One error type for everything the gateway refuses or fails at, rendered in
//! one place in the caller's dialect. Internal detail is never part of the
//! rendered body; upstream messages are passed through [`redact_secrets`] and
//! truncated, never echoed verbatim.

use serde_json::json;
use std::fmt;

/// The API dialect a client speaks; errors are rendered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions / Responses: `{"error": {message, type, param, code}}`.
    OpenAi,
    /// Anthropic Messages: `{"type": "error", "error": {type, message}}`.
    Anthropic,
    /// Google Gemini: `{"error": {code, message, status}}`.
    Gemini,
}

/// Everything the gateway can answer with instead of a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No key in `Authorization: Bearer`, `x-api-key` or `x-goog-api-key`.
    MissingApiKey,
    /// The key is unknown, disabled or expired. One variant, one message, so a
    /// caller cannot probe which keys exist.
    InvalidApiKey,
    /// The key exists but may not use this model.
    ModelNotAllowed { model: String },
    /// The key's IP allow-list does not include the caller's address.
    IpNotAllowed,
    /// No route serves this model.
    ModelNotFound { model: String },
    /// The body is not valid JSON (or nests too deep).
    InvalidJson { detail: String },
    /// The JSON is valid but a field is missing or wrong.
    InvalidRequest { message: String, param: Option<String> },
    /// The body is larger than the configured limit.
    PayloadTooLarge { limit_bytes: usize },
    /// Part of the request (inline media) is larger than the chosen upstream
    /// accepts; `message` says which part and the limit.
    ContentTooLarge { message: String },
    /// No such route.
    NotFound,
    /// `GET`/`DELETE /v1/responses/{id}`: no response of that id is stored
    /// for this key.
    ResponseNotFound { id: String },
    /// Route exists, method does not.
    MethodNotAllowed,
    /// Too many requests in the rate window or too many in flight.
    RateLimited { message: String, retry_after_secs: u64 },
    /// The key's quota cannot cover this request.
    InsufficientQuota,
    /// The balance of the key's user cannot cover this request.
    InsufficientBalance,
    /// Upstream answered with an error status; `message` is already redacted.
    Upstream { status: u16, message: String },
    /// Upstream could not be reached, reset the connection or sent garbage.
    UpstreamUnavailable,
    /// Upstream did not answer within the time limit.
    UpstreamTimeout,
    /// A request pinned to a channel without a valid admin signature (and
    /// from a key not allowed to pin unsigned).
    PinRefused,
    /// A `block` rule of the operator's request policy matched the prompt
    /// ([`crate::request_policy`]).
    PolicyRefused { rule: String },
    /// A bug or platform failure on our side; detail is logged, not shown.
    Internal,
}

impl GatewayError {
    /// HTTP status for this error (the same in every dialect).
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey | Self::PinRefused => 401,
            Self::ModelNotAllowed { .. } | Self::IpNotAllowed => 403,
            Self::ModelNotFound { .. } | Self::NotFound | Self::ResponseNotFound { .. } => 404,
            Self::InvalidJson { .. } | Self::InvalidRequest { .. } | Self::PolicyRefused { .. } => 400,
            Self::PayloadTooLarge { .. } | Self::ContentTooLarge { .. } => 413,
            Self::MethodNotAllowed => 405,
            Self::RateLimited { .. } | Self::InsufficientQuota | Self::InsufficientBalance => 429,
            Self::Upstream { status, .. } => upstream_status_to_client(*status),
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// Seconds for a `Retry-After` header, when the caller should retry later.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The human-readable message shown to the caller.
    pub fn message(&self) -> String {
        match self {
            Self::MissingApiKey => "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.".into(),
            Self::InvalidApiKey => "Incorrect API key provided, or the key is disabled or expired.".into(),
            Self::ModelNotAllowed { model } => {
                format!("This API key is not allowed to use the model `{}`.", truncate_chars(model, MAX_ECHOED_NAME_CHARS))
            }
            Self::IpNotAllowed => "This API key may not be used from this IP address.".into(),
            Self::ModelNotFound { model } => format!(
                "The model `{}` does not exist or you do not have access to it.",
                truncate_chars(model, MAX_ECHOED_NAME_CHARS)
            ),
            Self::InvalidJson { detail } => format!("We could not parse the JSON body of your request: {detail}"),
            Self::InvalidRequest { message, .. } | Self::ContentTooLarge { message } => {
                truncate_chars(message, MAX_MESSAGE_CHARS)
            }
            Self::PayloadTooLarge { limit_bytes } => format!("Request body is too large: the limit is {limit_bytes} bytes."),
            Self::NotFound => "Unknown request URL. Check the path and the HTTP method.".into(),
            Self::ResponseNotFound { id } => format!(
                "No response with id '{}' found: it was not stored (`store: true`), has expired or was deleted.",
                truncate_chars(id, MAX_ECHOED_NAME_CHARS)
            ),
            Self::MethodNotAllowed => "Method not allowed for this URL.".into(),
            Self::RateLimited { message, .. } => message.clone(),
            Self::InsufficientQuota => "You exceeded your current quota. Ask the administrator to raise it.".into(),
            Self::InsufficientBalance => "Your account balance is too low for this request. Top up or redeem a code to continue.".into(),
            Self::Upstream { status, message } => {
                if message.is_empty() {
                    format!("The upstream provider returned HTTP {status}.")
                } else {
                    format!("The upstream provider returned HTTP {status}: {message}")
                }
            }
            Self::UpstreamUnavailable => "The upstream provider could not be reached or returned an invalid response.".into(),
            Self::UpstreamTimeout => "The upstream provider did not respond in time.".into(),
            Self::PinRefused => "Pinning a request to a channel needs a valid admin signature (x-edgeway-pin-signature) or a key allowed to pin.".into(),
            Self::PolicyRefused { rule } => format!(
                "This request was refused by the gateway's request policy (rule `{}`).",
                truncate_chars(rule, MAX_ECHOED_NAME_CHARS)
            ),
            Self::Internal => "The gateway hit an internal error. The request was not completed.".into(),
        }
    }

    /// OpenAI `error.type`.
    fn openai_type(&self) -> &'static str {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey | Self::PinRefused => "invalid_request_error",
            Self::ModelNotAllowed { .. } | Self::IpNotAllowed => "permission_error",
            Self::ModelNotFound { .. }
            | Self::InvalidJson { .. }
            | Self::InvalidRequest { .. }
            | Self::PolicyRefused { .. }
            | Self::PayloadTooLarge { .. }
            | Self::ContentTooLarge { .. }
            | Self::NotFound
            | Self::ResponseNotFound { .. }
            | Self::MethodNotAllowed => "invalid_request_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::InsufficientQuota | Self::InsufficientBalance => "insufficient_quota",
            Self::Upstream { status, .. } if *status < 500 && *status != 429 => "invalid_request_error",
            Self::Upstream { status: 429, .. } => "rate_limit_error",
            Self::Upstream { .. } | Self::UpstreamUnavailable | Self::UpstreamTimeout => "upstream_error",
            Self::Internal => "server_error",
        }
    }

    /// OpenAI `error.code`.
    fn openai_code(&self) -> Option<&'static str> {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey => Some("invalid_api_key"),
            Self::ModelNotAllowed { .. } => Some("model_not_allowed"),
            Self::IpNotAllowed => Some("ip_not_allowed"),
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::InvalidJson { .. } => Some("invalid_json"),
            Self::PayloadTooLarge { .. } | Self::ContentTooLarge { .. } => Some("request_too_large"),
            Self::RateLimited { .. } => Some("rate_limit_exceeded"),
            Self::InsufficientQuota | Self::InsufficientBalance => Some("insufficient_quota"),
            Self::UpstreamTimeout => Some("upstream_timeout"),
            Self::PinRefused => Some("pin_refused"),
            Self::PolicyRefused { .. } => Some("request_policy"),
            Self::UpstreamUnavailable => Some("upstream_unavailable"),
            Self::Upstream { .. } => Some("upstream_error"),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound { .. } | Self::ModelNotAllowed { .. } => Some("model"),
            _ => None,
        }
    }

    /// Anthropic `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self.status() {
            400 | 405 | 413 => {
                if matches!(self, Self::PayloadTooLarge { .. } | Self::ContentTooLarge { .. }) {
                    "request_too_large"
                } else {
                    "invalid_request_error"
                }
            }
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// Gemini `error.status` (Google RPC code name).
    fn gemini_status(&self) -> &'static str {
        match self.status() {
            400 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            405 => "UNIMPLEMENTED",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    }

    /// The error body as JSON in `dialect`.
    pub fn to_json(&self, dialect: Dialect) -> serde_json::Value {
        let message = self.message();
        match dialect {
            Dialect::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": self.openai_type(),
                    "param": self.param(),
                    "code": self.openai_code(),
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type(), "message": message }
            }),
            Dialect::Gemini => json!({
                "error": { "code": self.status(), "message": message, "status": self.gemini_status() }
            }),
        }
    }

    /// The error body serialized in `dialect`.
    pub fn body(&self, dialect: Dialect) -> String {
        self.to_json(dialect).to_string()
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.message())
    }
}

impl std::error::Error for GatewayError {}

/// Which status a client sees when the upstream answered `status`.
///
/// 4xx that describe the client's request keep their status; the upstream
/// rejecting *our* channel credentials (401/403) is a gateway-side fault and
/// becomes 502 so the caller does not think their own key is wrong; 429 stays
/// 429; Anthropic's 529 "overloaded" becomes 503; other 5xx become 502.
pub fn upstream_status_to_client(status: u16) -> u16 {
    match status {
        401 | 403 | 407 => 502,
        400..=499 => status,
        503 | 529 => 503,
        504 => 504,
        _ => 502,
    }
}

/// Longest client-chosen name (a model) echoed in an error message.
pub const MAX_ECHOED_NAME_CHARS: usize = 128;

/// Longest validation message shown (they may quote what the client sent).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// Longest upstream message passed on to a client.
pub const MAX_UPSTREAM_MESSAGE_CHARS: usize = 400;

/// Pulls a human message out of an upstream error body (OpenAI, Anthropic or
/// Gemini shape), removes anything that looks like a credential, and truncates.
/// Returns an empty string when nothing usable is found; the raw body is never
/// returned.
pub fn upstream_error_message(body: &[u8], secrets: &[&str]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let raw = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message").or_else(|| v.pointer("/message")).or_else(|| v.pointer("/error"))
        })
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let redacted = redact_secrets(raw, secrets);
    truncate_chars(&redacted, MAX_UPSTREAM_MESSAGE_CHARS)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_string(),
    }
}

/// Replaces each known secret, and every token that looks like an API key
/// (`sk-…`, `AIza…`, or any run of 24+ key characters mixing letters and
/// digits), with `[redacted]`.
pub fn redact_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "[redacted]");
    }
    let mut result = String::with_capacity(out.len());
    let mut token = String::new();
    let flush = |token: &mut String, result: &mut String| {
        if looks_like_credential(token) {
            result.push_str("[redacted]");
        } else {
            result.push_str(token);
        }
        token.clear();
    };
    for ch in out.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
            token.push(ch);
        } else {
            flush(&mut token, &mut result);
            result.push(ch);
        }
    }
    flush(&mut token, &mut result);
    result
}

fn looks_like_credential(token: &str) -> bool {
    if token.starts_with("sk-") && token.len() >= 12 || token.starts_with("AIza") && token.len() >= 20 {
        return true;
    }
    token.len() >= 24
        && token.chars().any(|c| c.is_ascii_digit())
        && token.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_names_and_messages_are_truncated() {
        let huge = "m".repeat(100_000);
        let body = GatewayError::ModelNotFound { model: huge.clone() }.body(Dialect::OpenAi);
        assert!(body.len() < 600, "{} bytes", body.len());
        assert!(body.contains(&format!("`{}…`", "m".repeat(MAX_ECHOED_NAME_CHARS))));
        let body = GatewayError::ModelNotAllowed { model: "é".repeat(10_000) }.body(Dialect::Anthropic);
        assert!(body.len() < 800);
        let body = GatewayError::InvalidRequest { message: huge, param: None }.body(Dialect::Gemini);
        assert!(body.len() < MAX_MESSAGE_CHARS + 200);
    }

    #[test]
    fn statuses_match_the_contract() {
        assert_eq!(GatewayError::InvalidApiKey.status(), 401);
        assert_eq!(GatewayError::ModelNotAllowed { model: "m".into() }.status(), 403);
        assert_eq!(GatewayError::IpNotAllowed.status(), 403);
        assert_eq!(
            GatewayError::IpNotAllowed.to_json(Dialect::Anthropic)["error"]["type"],
            "permission_error"
        );
        assert_eq!(GatewayError::ModelNotFound { model: "m".into() }.status(), 404);
        assert_eq!(GatewayError::InvalidJson { detail: "x".into() }.status(), 400);
        assert_eq!(GatewayError::PayloadTooLarge { limit_bytes: 1 }.status(), 413);
        assert_eq!(GatewayError::UpstreamUnavailable.status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        assert_eq!(GatewayError::Upstream { status: 429, message: String::new() }.status(), 429);
        assert_eq!(GatewayError::Upstream { status: 401, message: String::new() }.status(), 502);
        assert_eq!(GatewayError::Upstream { status: 529, message: String::new() }.status(), 503);
        assert_eq!(GatewayError::Upstream { status: 500, message: String::new() }.status(), 502);
        assert_eq!(GatewayError::Upstream { status: 400, message: String::new() }.status(), 400);
    }

    #[test]
    fn openai_shape_has_all_four_fields() {
        let v = GatewayError::ModelNotFound { model: "gpt-x".into() }.to_json(Dialect::OpenAi);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("gpt-x")));
        let v = GatewayError::InsufficientQuota.to_json(Dialect::OpenAi);
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn anthropic_and_gemini_shapes() {
        let v = GatewayError::InvalidApiKey.to_json(Dialect::Anthropic);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let v = GatewayError::Upstream { status: 529, message: String::new() }.to_json(Dialect::Anthropic);
        assert_eq!(v["error"]["type"], "overloaded_error");
        let v = GatewayError::RateLimited { message: "slow".into(), retry_after_secs: 3 }
            .to_json(Dialect::Gemini);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["code"], 429);
    }

    #[test]
    fn upstream_messages_are_redacted_and_truncated() {
        // Key-shaped test values are assembled at run time: no credential-looking literal in the tree.
        let fake_key = ["sk", "proj", "testonly0000fake"].join("-");
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {fake_key}. You can find your key at ...","type":"invalid_request_error"}}}}"#
        );
        let msg = upstream_error_message(body.as_bytes(), &[]);
        assert!(!msg.contains("sk-proj"), "{msg}");
        assert!(msg.contains("[redacted]"));
        let canary = "canary-Secret-Value";
        let body = format!(r#"{{"error":{{"message":"bad key {canary}"}}}}"#);
        let msg = upstream_error_message(body.as_bytes(), &[canary]);
        assert!(!msg.contains(canary));
        let long = format!(r#"{{"message":"{}"}}"#, "a ".repeat(1000));
        assert!(
            upstream_error_message(long.as_bytes(), &[]).chars().count() <= MAX_UPSTREAM_MESSAGE_CHARS + 1
        );
        assert_eq!(upstream_error_message(b"<html>502 bad gateway</html>", &[]), "");
    }

    #[test]
    fn redaction_keeps_ordinary_words() {
        let text = "This model's maximum context length is 128000 tokens";
        assert_eq!(redact_secrets(text, &[]), text);
        let fake_google_key = format!("AIza{}", "Test0000fake0000only00");
        assert_eq!(redact_secrets(&format!("key {fake_google_key} end"), &[]), "key [redacted] end");
    }
}

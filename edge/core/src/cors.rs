//! CORS for browser clients of the public API.
//!
//! The official SDKs run in browsers (`dangerouslyAllowBrowser`) and send
//! headers of their own (`x-stainless-*`, `anthropic-dangerous-direct-browser-
//! access`, `x-goog-api-client`, …), so a preflight must allow them.
//!
//! **Key design decision:** preflights are answered for the public API routes
//! only, never for `/internal/*`, and the requested headers are reflected only
//! when each is one the gateway knows to be harmless ([`header_allowed`]): the
//! credential headers it reads, the content negotiation headers, and the
//! SDKs' own families. Allowed origins are configurable ([`CorsPolicy::parse`],
//! worker var `CORS_ALLOW_ORIGINS`): by default any origin, since the API is
//! authenticated by a key in a header, not by cookies (credentials mode is
//! never allowed). Responses expose `Retry-After` and the request id.

/// Which origins may call the public API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// Any origin (`Access-Control-Allow-Origin: *`).
    AnyOrigin,
    /// Only these origins (`scheme://host[:port]`, lower-case), echoed with `Vary: Origin`.
    Origins(Vec<String>),
    /// No browser access at all.
    Disabled,
}

impl CorsPolicy {
    /// From the `CORS_ALLOW_ORIGINS` var: unset or `*` = any origin, `none` or
    /// empty = disabled, otherwise a comma-separated list of origins.
    pub fn parse(var: Option<&str>) -> Self {
        let Some(var) = var.map(str::trim) else { return Self::AnyOrigin };
        if var == "*" {
            return Self::AnyOrigin;
        }
        let origins: Vec<String> = var
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty() && o != "none")
            .collect();
        if origins.is_empty() {
            Self::Disabled
        } else {
            Self::Origins(origins)
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`.
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        match self {
            Self::AnyOrigin => Some("*".into()),
            Self::Origins(list) => {
                let origin = origin?.trim().to_ascii_lowercase();
                list.contains(&origin).then_some(origin)
            }
            Self::Disabled => None,
        }
    }
}

/// Methods the public API answers.
pub const ALLOWED_METHODS: &str = "GET, POST, HEAD, OPTIONS";
/// Response headers a browser client may read.
pub const EXPOSED_HEADERS: &str = "retry-after, x-request-id, request-id, x-edgeway-channel";
/// How long a browser may cache a preflight (Chromium caps it at 2 hours).
pub const MAX_AGE_SECS: u32 = 7200;

/// Headers any client may send that the gateway reads or the SDKs add.
const ALLOWED_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "authorization",
    "content-type",
    "x-api-key",
    "x-goog-api-key",
    "x-goog-api-client",
    "x-goog-user-project",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "idempotency-key",
    "x-request-id",
];
/// Header families the official SDKs use (`x-stainless-os`, `x-stainless-retry-count`, …).
const ALLOWED_PREFIXES: &[&str] = &["x-stainless-"];
/// Most headers reflected from one preflight.
const MAX_REQUESTED_HEADERS: usize = 64;

/// Whether a requested header name may be allowed: a valid token in the
/// lists above.
pub fn header_allowed(name: &str) -> bool {
    let token = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    token
        && (ALLOWED_HEADERS.contains(&name)
            || ALLOWED_PREFIXES.iter().any(|p| name.len() > p.len() && name.starts_with(p)))
}

/// The `Access-Control-Allow-Headers` value for a preflight's
/// `Access-Control-Request-Headers`: the requested headers that are allowed,
/// lower-cased, in order. Others are left out, so the browser refuses the
/// request that would send them.
pub fn allow_headers(requested: Option<&str>) -> String {
    let mut out: Vec<String> = Vec::new();
    for name in requested.unwrap_or("").split(',').take(MAX_REQUESTED_HEADERS) {
        let name = name.trim().to_ascii_lowercase();
        if header_allowed(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return "authorization, content-type".into();
    }
    out.join(", ")
}

/// Headers of a preflight answer from `origin`, or `None` when the origin is
/// not allowed (answered 403 without CORS headers).
pub fn preflight_headers(
    policy: &CorsPolicy,
    origin: Option<&str>,
    requested_headers: Option<&str>,
) -> Option<Vec<(&'static str, String)>> {
    let allow_origin = policy.allow_origin(origin)?;
    let mut headers = vec![
        ("access-control-allow-methods", ALLOWED_METHODS.to_string()),
        ("access-control-allow-headers", allow_headers(requested_headers)),
        ("access-control-max-age", MAX_AGE_SECS.to_string()),
    ];
    if allow_origin != "*" {
        headers.push(("vary", "Origin, Access-Control-Request-Headers".into()));
    } else {
        headers.push(("vary", "Access-Control-Request-Headers".into()));
    }
    headers.push(("access-control-allow-origin", allow_origin));
    Some(headers)
}

/// CORS headers of an actual public API response from `origin` (empty when
/// the origin is not allowed: the browser then hides the response).
pub fn response_headers(policy: &CorsPolicy, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let Some(allow_origin) = policy.allow_origin(origin) else { return Vec::new() };
    let mut headers = vec![("access-control-expose-headers", EXPOSED_HEADERS.to_string())];
    if allow_origin != "*" {
        headers.push(("vary", "Origin".into()));
    }
    headers.push(("access-control-allow-origin", allow_origin));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_headers_are_reflected_and_others_left_out() {
        let requested = "Authorization, Content-Type, X-Stainless-OS, x-stainless-retry-count, \
                         anthropic-dangerous-direct-browser-access, anthropic-version, x-goog-api-client, \
                         x-goog-api-key, cookie, x-forwarded-for, cf-connecting-ip, bad header, x-stainless-os";
        assert_eq!(
            allow_headers(Some(requested)),
            "authorization, content-type, x-stainless-os, x-stainless-retry-count, \
             anthropic-dangerous-direct-browser-access, anthropic-version, x-goog-api-client, x-goog-api-key"
        );
        assert_eq!(allow_headers(None), "authorization, content-type");
        assert!(!header_allowed("x-stainless-"));
        assert!(header_allowed("x-stainless-package-version"));
    }

    #[test]
    fn origins() {
        assert_eq!(CorsPolicy::parse(None), CorsPolicy::AnyOrigin);
        assert_eq!(CorsPolicy::parse(Some("*")), CorsPolicy::AnyOrigin);
        assert_eq!(CorsPolicy::parse(Some("none")), CorsPolicy::Disabled);
        assert_eq!(CorsPolicy::parse(Some("")), CorsPolicy::Disabled);
        let list = CorsPolicy::parse(Some("https://App.example.com/, http://localhost:5173"));
        assert_eq!(
            list.allow_origin(Some("https://app.example.com")).as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(list.allow_origin(Some("https://evil.example")), None);
        assert_eq!(list.allow_origin(None), None);
        assert_eq!(CorsPolicy::AnyOrigin.allow_origin(None).as_deref(), Some("*"));
        assert!(preflight_headers(&list, Some("https://evil.example"), None).is_none());
        let h = preflight_headers(&list, Some("http://localhost:5173"), Some("x-stainless-lang")).unwrap();
        assert!(h.contains(&("vary", "Origin, Access-Control-Request-Headers".into())));
        assert!(h.contains(&("access-control-allow-origin", "http://localhost:5173".into())));
        let r = response_headers(&CorsPolicy::AnyOrigin, Some("https://x.example"));
        assert!(r.contains(&("access-control-expose-headers", EXPOSED_HEADERS.into())));
        assert!(response_headers(&CorsPolicy::Disabled, Some("https://x.example")).is_empty());
    }
}

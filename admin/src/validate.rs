//! Input checks shared by the key and channel endpoints. Each returns a 400
//! with a message naming the field and the rule.

use crate::error::ApiError;
use std::net::IpAddr;

/// Largest amount of micro-units, tokens per minute or price accepted:
/// 2^53 - 1. The edge reads KV exactly, but usage rows reach D1 through the
/// Workers runtime as JavaScript numbers and every JSON client (the official
/// SDKs, browsers) parses numbers as doubles, which are exact only up to here.
/// In money that is about 9 billion units of currency.
pub const MAX_SAFE_NUMBER: i64 = (1 << 53) - 1;

/// Refuses a number past [`MAX_SAFE_NUMBER`].
pub fn safe_number(field: &str, value: i64) -> Result<i64, ApiError> {
    if value > MAX_SAFE_NUMBER {
        return Err(bad(format!("`{field}` must be at most {MAX_SAFE_NUMBER} (2^53 - 1)")));
    }
    Ok(value)
}

/// Longest free-text field (names, owners, model names).
pub const MAX_TEXT: usize = 200;
/// Longest list (allowed models, allowed IPs, models of a channel).
pub const MAX_LIST: usize = 1000;

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// Trimmed text of 1..=`MAX_TEXT` characters without control characters.
pub fn text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(bad(format!("`{field}` must not be empty")));
    }
    optional_text(field, value)
}

/// Like [`text`] but may be empty.
pub fn optional_text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.chars().count() > MAX_TEXT {
        return Err(bad(format!("`{field}` must be at most {MAX_TEXT} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(format!("`{field}` must not contain control characters")));
    }
    Ok(value.to_string())
}

/// An identifier: 1..=64 of `A-Z a-z 0-9 _ . -`.
pub fn ident(field: &str, value: &str) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad(format!("`{field}` must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.`, `-`")))
    }
}

/// A list of model names: each valid text, duplicates dropped, order kept.
/// An empty list becomes `None` (every model), matching the edge's rule.
pub fn model_list(field: &str, list: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = list else { return Ok(None) };
    if list.len() > MAX_LIST {
        return Err(bad(format!("`{field}` may hold at most {MAX_LIST} entries")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for item in &list {
        let item = text(field, item)?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// A list of client IPs or CIDR ranges (`203.0.113.0/24`, `2001:db8::/32`).
/// An empty list becomes `None` (any address).
pub fn ip_list(list: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = list else { return Ok(None) };
    if list.len() > MAX_LIST {
        return Err(bad(format!("`allowed_ips` may hold at most {MAX_LIST} entries")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for item in &list {
        let item = item.trim();
        if !is_ip_or_cidr(item) {
            return Err(bad(format!("`allowed_ips`: `{item}` is not an IP address or CIDR range")));
        }
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn is_ip_or_cidr(value: &str) -> bool {
    let (addr, prefix) = match value.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (value, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => true,
        Some(p) => {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|n| n <= max)
        }
    }
}

/// An http(s) URL of at most 2048 characters.
pub fn http_url(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(value).map_err(|_| bad(format!("`{field}` is not a valid URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad(format!("`{field}` must be an http(s) URL")));
    }
    if value.len() > 2048 {
        return Err(bad(format!("`{field}` must be at most 2048 characters")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(format!("`{field}` must not contain credentials; use `api_key`")));
    }
    // Private servers (a vLLM on the same network, localhost) are fine; the
    // cloud metadata service and link-local addresses never are.
    if let Some(reason) = edgeway_core::url_policy::base_url_refusal(value) {
        return Err(bad(format!("`{field}` {reason}")));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        for ok in ["10.0.0.1", "10.0.0.0/8", "0.0.0.0/0", "2001:db8::/32", "::1", "::/0"] {
            assert!(is_ip_or_cidr(ok), "{ok}");
        }
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "10.0.0.0/", "host", "::/129", "1.2.3.4/+8"] {
            assert!(!is_ip_or_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn lists_are_normalised() {
        assert_eq!(model_list("m", Some(vec![])).unwrap(), None);
        assert_eq!(
            model_list("m", Some(vec![" a ".into(), "a".into(), "b".into()])).unwrap(),
            Some(vec!["a".into(), "b".into()])
        );
        assert!(model_list("m", Some(vec!["".into()])).is_err());
        assert_eq!(ip_list(Some(vec![])).unwrap(), None);
    }

    #[test]
    fn idents_and_urls() {
        assert!(ident("id", "openai-main_1.x").is_ok());
        assert!(ident("id", "").is_err());
        assert!(ident("id", "has space").is_err());
        assert!(ident("id", "a/b").is_err());
        assert_eq!(http_url("u", "https://api.example.com/v1/").unwrap(), "https://api.example.com/v1");
        assert!(http_url("u", "ftp://x").is_err());
        assert!(http_url("u", "https://user:pw@x").is_err());
        assert!(http_url("u", "not a url").is_err());
        for metadata in ["http://169.254.169.254/v1", "http://[fe80::1]/", "http://metadata.google.internal/"]
        {
            assert!(http_url("u", metadata).is_err(), "{metadata}");
        }
        assert!(http_url("u", "http://127.0.0.1:11434/v1").is_ok());
    }

    #[test]
    fn text_rules() {
        assert_eq!(text("name", "  ci  ").unwrap(), "ci");
        assert!(text("name", "  ").is_err());
        assert!(text("name", "a\u{0}b").is_err());
        assert!(text("name", &"x".repeat(MAX_TEXT + 1)).is_err());
        assert_eq!(optional_text("owner", "").unwrap(), "");
    }
}

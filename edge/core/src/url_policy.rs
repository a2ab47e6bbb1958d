//! The one URL policy: which media URLs a client may hand to a provider, and
//! which base URLs an operator may point a channel at.
//!
//! The gateway never fetches a media URL; it passes it to a provider that may
//! (Anthropic `url` sources, an OpenAI-compatible server such as vLLM or
//! Ollama that downloads `image_url`s). A URL that names a loopback, private,
//! link-local, metadata or otherwise non-public host would let a client make
//! that provider reach into its own network, so every path (the OpenAI relay
//! and every translated dialect) calls [`check_media_url`] on every URL.
//!
//! **Key design decision:** the URL is parsed the way browsers and most HTTP
//! stacks parse it (WHATWG URL Standard, the `url` crate), and the decision is
//! taken on the parsed host after IDNA mapping and percent-decoding, never on
//! the text: `http://127.0.0.%31/`, full-width digits, `http://2130706433/`,
//! `http://0x7f.1/`, a tab inside the host and `http://127.0.0.1\x.example.com/`
//! all parse to the IPv4 host 127.0.0.1 and are refused. The URL forwarded is
//! the normalized serialization, so a provider whose parser differs from the
//! standard sees the host the policy saw; backslashes, whitespace and control
//! characters, on which parsers disagree, are refused outright.
//!
//! What is refused (media URLs):
//! * schemes other than `http` and `https` (`file:`, `gopher:`, `ftp:` …);
//!   `data:` URIs are inline data, handled by the callers;
//! * user info (`http://user:pass@host/`) and URLs over [`MAX_MEDIA_URL_BYTES`];
//! * IPv4 hosts that are not globally routable: loopback, RFC 1918, link-local
//!   (169.254/16, the cloud metadata address), CGNAT (100.64/10, Alibaba's
//!   metadata address), 0/8, IETF protocol assignments (192.0.0/24, Oracle's
//!   metadata address), documentation, benchmarking, 6to4 relay anycast,
//!   multicast, reserved and broadcast;
//! * IPv6 hosts outside global unicast `2000::/3` (loopback, unspecified,
//!   IPv4-mapped and -compatible forms, NAT64 `64:ff9b::/96` and
//!   `64:ff9b:1::/48`, unique-local, link-local, site-local, multicast), and
//!   inside it documentation, ORCHID and benchmarking ranges, plus 6to4
//!   (`2002::/16`) and Teredo (`2001::/32`) addresses whose embedded IPv4
//!   address is one of the above;
//! * names that are local by definition or convention: `localhost` and
//!   `*.localhost`, single-label names (`intranet`, `metadata`),
//!   `.local`, `.internal`, `.intranet`, `.lan`, `.home.arpa`, `.corp`,
//!   `.private`, `.localdomain`, and the metadata names
//!   `metadata.google.internal` and `metadata.goog`; also the public wildcard
//!   DNS services that map names to any address (`nip.io`, `sslip.io`,
//!   `xip.io`, `localtest.me`, `lvh.me`), as a courtesy only.
//!
//! What it cannot do: a DNS name is checked as a name. A public-looking name
//! whose DNS answer is a private address (or changes between the check and the
//! fetch) can only be stopped by whoever fetches it, that is the provider or
//! the operator's model server. Operators of self-hosted servers that fetch
//! URLs should configure that server's own egress rules; see docs/security.md.

use crate::error::GatewayError;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// Longest URL accepted for a media part.
pub const MAX_MEDIA_URL_BYTES: usize = 8 * 1024;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlRefusal {
    /// Longer than [`MAX_MEDIA_URL_BYTES`].
    TooLong,
    /// Not a URL by the WHATWG rules, or has no host.
    Malformed,
    /// Backslash, whitespace or a control character: parsers disagree on these.
    AmbiguousCharacters,
    /// A scheme other than `http`/`https`.
    Scheme,
    /// Carries a user name or password.
    Credentials,
    /// The host is loopback, private, link-local, metadata or otherwise not public.
    NonPublicHost,
}

impl UrlRefusal {
    /// The 400 shown to the client for `param`.
    pub fn to_error(&self, param: &str) -> GatewayError {
        let message = match self {
            Self::TooLong => format!("`{param}` is longer than {MAX_MEDIA_URL_BYTES} bytes."),
            Self::Malformed => format!("`{param}` is not a valid URL."),
            Self::AmbiguousCharacters => format!(
                "`{param}` contains a backslash, whitespace or a control character; percent-encode them."
            ),
            Self::Scheme => format!("`{param}` must be an http(s) URL or a base64 data URI."),
            Self::Credentials => format!("`{param}` must not contain credentials."),
            Self::NonPublicHost => format!(
                "`{param}` points at a private, loopback or link-local address; only public URLs are accepted."
            ),
        };
        GatewayError::InvalidRequest { message, param: Some(param.to_string()) }
    }
}

/// A URL that passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// The WHATWG serialization: what is forwarded.
    pub normalized: String,
    /// The parsed host (IPv6 in brackets), as an operator lists it.
    pub host: String,
    /// The host is not public and passed only because the operator listed it.
    pub by_allowance: bool,
}

/// Checks a media URL against the policy, with `allowed_hosts` (normalized
/// hosts an operator listed) passing even when not public. Pure: the
/// function every other check here is built on.
pub fn check_url(url: &str, allowed_hosts: &[String]) -> Result<CheckedUrl, UrlRefusal> {
    let (normalized, host, public) = parse_media_url(url)?;
    let by_allowance = !public && allowed_hosts.iter().any(|h| h == &host);
    if !public && !by_allowance {
        return Err(UrlRefusal::NonPublicHost);
    }
    Ok(CheckedUrl { normalized, host, by_allowance })
}

/// Parses a media URL by the policy's rules except the host's: its
/// normalized serialization, its host as an operator lists it, and whether
/// that host is public.
fn parse_media_url(url: &str) -> Result<(String, String, bool), UrlRefusal> {
    if url.len() > MAX_MEDIA_URL_BYTES {
        return Err(UrlRefusal::TooLong);
    }
    if url.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        return Err(UrlRefusal::AmbiguousCharacters);
    }
    let parsed = Url::parse(url).map_err(|_| UrlRefusal::Malformed)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlRefusal::Credentials);
    }
    let host = parsed.host().ok_or(UrlRefusal::Malformed)?;
    let host_text = host_text(&host);
    let public = host_is_public(&host);
    Ok((parsed.into(), host_text, public))
}

/// Whether `url` is refused only because its host is not public (a well-formed
/// http(s) URL an operator could allow for a channel).
pub fn only_host_is_private(url: &str) -> bool {
    matches!(parse_media_url(url), Ok((_, _, false)))
}

fn host_text(host: &Host<&str>) -> String {
    match host {
        Host::Domain(d) => d.trim_end_matches('.').to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    }
}

/// Normalizes a host as an operator writes it in an allowance list
/// (`minio.lan`, `10.0.0.9`, `[fd00::1]`, `Bücher.example`), with the same
/// parser as the URLs it is compared with. `None` when it is not a host.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim();
    if host.is_empty() || host.contains(['/', '?', '#', '@', '\\']) || host.chars().any(char::is_whitespace) {
        return None;
    }
    let port_given = if host.starts_with('[') { !host.ends_with(']') } else { host.contains(':') };
    if port_given {
        return None;
    }
    let parsed = Url::parse(&format!("http://{host}/")).ok()?;
    parsed.host().map(|h| host_text(&h))
}

/// Whether a parsed host is public (see the module documentation).
pub fn host_is_public(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => v4_is_public(*ip),
        Host::Ipv6(ip) => v6_is_public(*ip),
        Host::Domain(name) => domain_is_public(name),
    }
}

fn v4_is_public(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT, incl. 100.100.100.200 (Alibaba metadata)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, incl. 192.0.0.192 (Oracle metadata)
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn v6_is_public(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast 2000::/3 is public; this refuses loopback,
    // unspecified, IPv4-mapped/-compatible/-translated forms, NAT64,
    // unique-local, link-local, site-local and multicast in one rule.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match (s[0], s[1]) {
        (0x2001, 0x0db8) => false,                         // documentation
        (0x2001, 0x0002) if s[2] == 0 => false,            // benchmarking 2001:2::/48
        (0x2001, x) if (0x10..0x30).contains(&x) => false, // ORCHID, ORCHIDv2
        // Teredo: server IPv4 in bits 32..64, client IPv4 inverted in the last 32 bits.
        (0x2001, 0x0000) => v4_is_public(embedded(s[2], s[3])) && v4_is_public(embedded(!s[6], !s[7])),
        // 6to4: the IPv4 address in bits 16..48.
        (0x2002, _) => v4_is_public(embedded(s[1], s[2])),
        _ => true,
    }
}

/// Names that are local by definition or convention.
const LOCAL_SUFFIXES: &[&str] =
    &["localhost", "local", "internal", "intranet", "lan", "home.arpa", "corp", "private", "localdomain"];

/// Names that resolve to the cloud metadata service.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// Public wildcard DNS services that answer any address embedded in the
/// name (`127.0.0.1.nip.io`). Refused as a courtesy; a real defense against
/// names resolving to private addresses lies with the fetcher.
const WILDCARD_DNS: &[&str] = &["nip.io", "sslip.io", "xip.io", "localtest.me", "lvh.me"];

fn domain_is_public(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.is_empty() || !name.contains('.') {
        return false;
    }
    let under = |suffix: &str| name == suffix || name.ends_with(&format!(".{suffix}"));
    !(LOCAL_SUFFIXES.iter().any(|s| under(s))
        || METADATA_NAMES.iter().any(|s| under(s))
        || WILDCARD_DNS.iter().any(|s| under(s)))
}

/// The media URL check every request parser calls: refuses by
/// [`check_url`] with no allowance, returns the normalized URL to forward.
pub fn check_media_url(url: &str, param: &str) -> Result<String, GatewayError> {
    check_url(url, &[]).map(|c| c.normalized).map_err(|r| r.to_error(param))
}

/// Key names that hold a URL in a content part of an OpenAI-format request.
fn is_url_key(key: &str) -> bool {
    key == "url" || key == "uri" || key.ends_with("_url") || key.ends_with("_uri")
}

/// Media URLs of an OpenAI Chat request whose hosts are not public. Only a
/// channel whose operator listed every one of these hosts
/// ([`crate::routing::Channel::media_hosts`]) may receive the request; for
/// every other channel it is `refusal`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateMedia {
    /// Normalized hosts, each once, in order of first appearance.
    pub hosts: Vec<String>,
    /// The 400 of the first such URL (set when `hosts` is not empty).
    pub refusal: Option<GatewayError>,
}

impl PrivateMedia {
    /// Whether a channel listing `media_hosts` may receive the request.
    pub fn allowed_by(&self, media_hosts: &[String]) -> bool {
        self.hosts.iter().all(|h| media_hosts.contains(h))
    }

    fn add(&mut self, host: String, param: &str) {
        if self.refusal.is_none() {
            self.refusal = Some(UrlRefusal::NonPublicHost.to_error(param));
        }
        if !self.hosts.contains(&host) {
            self.hosts.push(host);
        }
    }
}

/// Checks every media URL in the `messages` of an OpenAI Chat request, in
/// place: `image_url` (string or `{url}`), `file` (`file_data`, `file_url`),
/// `input_audio` and the other non-text parts OpenAI-compatible servers take
/// (`audio_url`, `video_url`, …). Inside a non-text part, every string under
/// a URL-named key, and every string that starts with a URL scheme (other than
/// inline `data:`), must pass the policy and is replaced by its normalized
/// form. A URL refused only for its non-public host is not an error here: it
/// is listed in the returned [`PrivateMedia`], for routing to decide. Text is
/// never inspected.
pub fn check_openai_chat_media(messages: &mut [Value]) -> Result<PrivateMedia, GatewayError> {
    let mut private = PrivateMedia::default();
    for (i, message) in messages.iter_mut().enumerate() {
        let Some(Value::Array(parts)) = message.get_mut("content") else { continue };
        for (j, part) in parts.iter_mut().enumerate() {
            if part.get("type").and_then(Value::as_str) == Some("text") {
                continue;
            }
            check_part_value(part, &format!("messages[{i}].content[{j}]"), false, 0, &mut private)?;
        }
    }
    Ok(private)
}

/// Deepest nesting inside a content part that is inspected; deeper is refused.
const MAX_PART_DEPTH: usize = 8;

fn check_part_value(
    value: &mut Value,
    path: &str,
    url_key: bool,
    depth: usize,
    private: &mut PrivateMedia,
) -> Result<(), GatewayError> {
    if depth > MAX_PART_DEPTH {
        return Err(GatewayError::InvalidRequest {
            message: format!("`{path}` nests too deep."),
            param: Some(path.to_string()),
        });
    }
    match value {
        Value::String(s) => {
            if s.starts_with("data:") {
                return Ok(());
            }
            if url_key || has_scheme(s) {
                let (normalized, host, public) = parse_media_url(s).map_err(|r| r.to_error(path))?;
                if !public {
                    private.add(host, path);
                }
                *s = normalized;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                check_part_value(v, &format!("{path}.{key}"), is_url_key(key), depth + 1, private)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (k, v) in items.iter_mut().enumerate() {
                check_part_value(v, &format!("{path}[{k}]"), url_key, depth + 1, private)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Starts like `scheme:` or `//` (after leading whitespace, which URL
/// parsers skip), or contains `://` anywhere. Base64 has no `:` and does not
/// start with `//`, so inline data never matches.
fn has_scheme(s: &str) -> bool {
    let t = s.trim_start_matches(|c: char| c.is_whitespace() || c.is_control());
    if s.contains("://") || t.starts_with("//") {
        return true;
    }
    let Some((scheme, _)) = t.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Why a channel `base_url` is refused, if it is. Unlike media URLs, base
/// URLs are chosen by the operator and may name private servers (a vLLM
/// or Ollama on the same network, `localhost` in development); what is
/// refused is what can never be a model server: link-local addresses (the
/// cloud metadata service lives there), the metadata names and addresses,
/// unspecified, multicast and broadcast addresses, non-http(s) schemes and
/// user info.
pub fn base_url_refusal(base_url: &str) -> Option<&'static str> {
    if base_url.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        return Some("must not contain backslashes, whitespace or control characters");
    }
    let Ok(parsed) = Url::parse(base_url) else { return Some("is not a valid URL") };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some("must be an http(s) URL");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some("must not contain credentials");
    }
    let metadata = "points at a link-local or cloud metadata address";
    match parsed.host() {
        None => Some("has no host"),
        Some(Host::Ipv4(ip)) => {
            let [a, b, c, d] = ip.octets();
            let metadata_ip = (a, b, c, d) == (100, 100, 100, 200) || (a, b, c, d) == (192, 0, 0, 192);
            if ip.is_link_local() || metadata_ip {
                Some(metadata)
            } else if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0 {
                Some("points at an unspecified, multicast or broadcast address")
            } else {
                None
            }
        }
        Some(Host::Ipv6(ip)) => {
            let s = ip.segments();
            let mapped_bad = ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local() || v4.is_unspecified());
            if (s[0] & 0xffc0) == 0xfe80
                || mapped_bad
                || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            {
                Some(metadata)
            } else if ip.is_unspecified() || ip.is_multicast() {
                Some("points at an unspecified or multicast address")
            } else {
                None
            }
        }
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            if METADATA_NAMES.iter().any(|m| name == *m || name.ends_with(&format!(".{m}")))
                || name == "metadata"
            {
                Some(metadata)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way seen or known to name a non-public host, including the
    /// string-matching bypasses of the old check (shared with the e2e suite).
    fn bypasses() -> Vec<String> {
        let doc: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/url_bypasses.json")).unwrap();
        serde_json::from_value(doc["urls"].clone()).unwrap()
    }

    #[test]
    fn every_bypass_is_refused() {
        let urls = bypasses();
        assert!(urls.len() >= 60);
        for url in &urls {
            assert!(check_url(url, &[]).is_err(), "{url:?} should be refused, got {:?}", check_url(url, &[]));
        }
    }

    #[test]
    fn public_urls_pass_normalized() {
        for (url, normalized) in [
            ("https://example.com/cat.png", "https://example.com/cat.png"),
            ("http://8.8.8.8/a.jpg", "http://8.8.8.8/a.jpg"),
            ("https://[2606:4700::1]/x", "https://[2606:4700::1]/x"),
            ("https://cdn.example.org:8443/a?b=c", "https://cdn.example.org:8443/a?b=c"),
            ("HTTPS://Example.COM:443/a/../b.png", "https://example.com/b.png"),
            ("https://bücher.example/x.png", "https://xn--bcher-kva.example/x.png"),
            ("http://[2002:0808:0808::1]/x", "http://[2002:808:808::1]/x"),
            ("https://example.com/@127.0.0.1/x", "https://example.com/@127.0.0.1/x"),
        ] {
            assert_eq!(check_url(url, &[]).map(|c| c.normalized), Ok(normalized.to_string()), "{url}");
        }
    }

    #[test]
    fn refusal_reasons() {
        assert_eq!(check_url("file:///etc/passwd", &[]), Err(UrlRefusal::Scheme));
        assert_eq!(check_url("http://a:b@example.com/", &[]), Err(UrlRefusal::Credentials));
        assert_eq!(check_url("http://127.0.0.1\\x.example.com/", &[]), Err(UrlRefusal::AmbiguousCharacters));
        assert_eq!(check_url("http://[::1]/", &[]), Err(UrlRefusal::NonPublicHost));
        assert_eq!(check_url("http:///", &[]), Err(UrlRefusal::Malformed));
        let long = format!("https://example.com/{}", "a".repeat(MAX_MEDIA_URL_BYTES));
        assert_eq!(check_url(&long, &[]), Err(UrlRefusal::TooLong));
    }

    #[test]
    fn allowance_lets_listed_hosts_pass_and_nothing_else() {
        let allowed = vec![normalize_host("Minio.LAN").unwrap(), normalize_host("10.0.0.9").unwrap()];
        assert_eq!(allowed, vec!["minio.lan".to_string(), "10.0.0.9".to_string()]);
        let ok = check_url("http://minio.lan:9000/b/cat.png", &allowed).unwrap();
        assert!(ok.by_allowance);
        assert_eq!(ok.host, "minio.lan");
        assert!(
            check_url("http://0x0a000009/x", &allowed).unwrap().by_allowance,
            "same host in any notation"
        );
        assert_eq!(check_url("http://10.0.0.8/x", &allowed), Err(UrlRefusal::NonPublicHost));
        assert_eq!(check_url("file://minio.lan/x", &allowed), Err(UrlRefusal::Scheme));
        assert!(!check_url("https://example.com/x", &allowed).unwrap().by_allowance);
        assert_eq!(normalize_host("[FD00::0001]").as_deref(), Some("[fd00::1]"));
        assert_eq!(normalize_host("a.example:80"), None);
        assert_eq!(normalize_host("[::1]:80"), None);
        assert_eq!(normalize_host("a/b"), None);
        assert_eq!(normalize_host(""), None);
    }

    #[test]
    fn openai_chat_parts_are_walked_and_normalized() {
        let mut messages: Vec<Value> = serde_json::from_str(
            r#"[{"role":"user","content":[
                {"type":"text","text":"see http://127.0.0.1/ and file:///etc/passwd"},
                {"type":"image_url","image_url":{"url":"HTTPS://Example.com/a.png","detail":"low"}},
                {"type":"image_url","image_url":"https://example.com/b.png"},
                {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},
                {"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERi0=","filename":"a.pdf"}}
            ]},{"role":"assistant","content":"http://127.0.0.1/"}]"#,
        )
        .unwrap();
        check_openai_chat_media(&mut messages).unwrap();
        assert_eq!(messages[0]["content"][1]["image_url"]["url"], "https://example.com/a.png");
        for (part, param) in [
            (
                r#"{"type":"image_url","image_url":{"url":"http://169.254.169.254/"}}"#,
                "messages[0].content[0].image_url.url",
            ),
            (r#"{"type":"image_url","image_url":"http://[::1]/"}"#, "messages[0].content[0].image_url"),
            (
                r#"{"type":"file","file":{"file_data":"file:///etc/passwd"}}"#,
                "messages[0].content[0].file.file_data",
            ),
            (r#"{"type":"file","file":{"file_url":"gopher://x/"}}"#, "messages[0].content[0].file.file_url"),
            (
                r#"{"type":"input_audio","input_audio":{"data":"http://127.0.0.1/a.wav"}}"#,
                "messages[0].content[0].input_audio.data",
            ),
            (
                r#"{"type":"audio_url","audio_url":{"url":"http://2130706433/"}}"#,
                "messages[0].content[0].audio_url.url",
            ),
            (
                r#"{"type":"video_url","video_url":{"url":"not a url"}}"#,
                "messages[0].content[0].video_url.url",
            ),
            (r#"{"image_url":{"url":"http://localhost/"}}"#, "messages[0].content[0].image_url.url"),
        ] {
            let mut messages: Vec<Value> =
                serde_json::from_str(&format!(r#"[{{"role":"user","content":[{part}]}}]"#)).unwrap();
            // A refusal, or (for a well-formed URL on a non-public host) the
            // refusal routing gives every channel that does not list the host.
            let err = match check_openai_chat_media(&mut messages) {
                Err(err) => err,
                Ok(private) => {
                    assert!(!private.hosts.is_empty() && !private.allowed_by(&[]), "{part}");
                    private.refusal.unwrap()
                }
            };
            assert_eq!(err.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{part}");
        }
        let mut messages: Vec<Value> = serde_json::from_str(
            r#"[{"role":"user","content":[
                {"type":"image_url","image_url":{"url":"http://MinIO.lan:9000/a/../b.png"}},
                {"type":"audio_url","audio_url":{"url":"http://10.0.0.9/c.wav"}},
                {"type":"image_url","image_url":"http://minio.lan/d.png"}]}]"#,
        )
        .unwrap();
        let private = check_openai_chat_media(&mut messages).unwrap();
        assert_eq!(private.hosts, vec!["minio.lan".to_string(), "10.0.0.9".to_string()]);
        assert_eq!(
            messages[0]["content"][0]["image_url"]["url"], "http://minio.lan:9000/b.png",
            "normalized"
        );
        assert!(private.allowed_by(&["10.0.0.9".into(), "minio.lan".into(), "x.lan".into()]));
        assert!(!private.allowed_by(&["minio.lan".into()]), "every host must be listed");
    }

    #[test]
    fn base_urls_refuse_metadata_and_link_local_only() {
        for bad in [
            "http://169.254.169.254/v1",
            "http://[fe80::1]/v1",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/v1",
            "http://metadata/",
            "http://100.100.100.200/",
            "http://0.0.0.0:8000/v1",
            "http://[::]:8000/v1",
            "http://224.0.0.1/",
            "ftp://example.com/",
            "http://u:p@example.com/",
            "http://a\\b/",
            "not a url",
        ] {
            assert!(base_url_refusal(bad).is_some(), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:11434/v1",
            "http://10.0.0.5:8000/v1",
            "https://api.openai.com/v1",
            "http://vllm.lan/v1",
        ] {
            assert_eq!(base_url_refusal(ok), None, "{ok}");
        }
    }
}

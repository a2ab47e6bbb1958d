//! Multimodal inputs: data URIs, and the policy for URLs.
//!
//! The gateway never fetches a URL. A URL is passed to a provider that fetches
//! it itself (Anthropic `url` sources) or refused; either way it must name a
//! public host: loopback, private, link-local, CGNAT, unique-local and
//! multicast addresses, numeric hosts in odd notations, `localhost` and
//! internal-looking names are refused, so the gateway cannot be used to make a
//! provider reach into a private network. Inline data is capped at
//! [`MAX_INLINE_MEDIA_BYTES`] decoded bytes per part.

use super::canonical::MediaSource;
use super::json_fields::invalid;
use crate::error::GatewayError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest decoded size of one inline image, document or audio part.
pub const MAX_INLINE_MEDIA_BYTES: usize = 20 * 1024 * 1024;

/// Longest URL accepted for a media part.
pub const MAX_MEDIA_URL_BYTES: usize = 8 * 1024;

/// Image types every provider accepts.
pub const IMAGE_MEDIA_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Decoded size of base64 text (ignoring padding).
pub fn base64_decoded_len(data: &str) -> usize {
    let trimmed = data.trim_end_matches('=');
    trimmed.len() / 4 * 3 + (trimmed.len() % 4).saturating_sub(1)
}

/// Checks size and alphabet of inline base64 data.
pub fn check_base64(data: &str, param: &str) -> Result<(), GatewayError> {
    if base64_decoded_len(data) > MAX_INLINE_MEDIA_BYTES {
        return Err(invalid(
            format!("`{param}` is larger than the {MAX_INLINE_MEDIA_BYTES}-byte limit for inline media."),
            param,
        ));
    }
    let valid =
        data.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'));
    if !valid {
        return Err(invalid(format!("`{param}` is not valid base64 data."), param));
    }
    Ok(())
}

/// Splits `data:<media type>[;params];base64,<data>`.
pub fn parse_data_uri(uri: &str, param: &str) -> Result<(String, String), GatewayError> {
    let Some(rest) = uri.strip_prefix("data:") else {
        return Err(invalid(format!("`{param}` must be a data URI."), param));
    };
    let Some((header, data)) = rest.split_once(',') else {
        return Err(invalid(format!("`{param}` is not a valid data URI."), param));
    };
    let mut fields = header.split(';');
    let media_type = fields.next().unwrap_or("").trim().to_ascii_lowercase();
    if !fields.any(|f| f.eq_ignore_ascii_case("base64")) {
        return Err(invalid(
            format!("`{param}` must be a base64 data URI (`data:<type>;base64,...`)."),
            param,
        ));
    }
    if media_type.is_empty() {
        return Err(invalid(format!("`{param}` has no media type."), param));
    }
    check_base64(data, param)?;
    Ok((media_type, data.to_string()))
}

/// A data URI or a public http(s) URL as a media source.
pub fn source_from_url_or_data(uri: &str, param: &str) -> Result<MediaSource, GatewayError> {
    if uri.starts_with("data:") {
        let (media_type, data) = parse_data_uri(uri, param)?;
        return Ok(MediaSource::Base64 { media_type, data });
    }
    check_public_url(uri, param)?;
    Ok(MediaSource::Url { url: uri.to_string() })
}

/// Renders a base64 source back into a data URI.
pub fn data_uri(media_type: &str, data: &str) -> String {
    format!("data:{media_type};base64,{data}")
}

/// Refuses URLs that are not `http(s)` to a public host.
pub fn check_public_url(url: &str, param: &str) -> Result<(), GatewayError> {
    if url.len() > MAX_MEDIA_URL_BYTES {
        return Err(invalid(format!("`{param}` is longer than {MAX_MEDIA_URL_BYTES} bytes."), param));
    }
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) else {
        return Err(invalid(format!("`{param}` must be an http(s) URL or a base64 data URI."), param));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if authority.contains('@') {
        return Err(invalid(format!("`{param}` must not contain credentials."), param));
    }
    let host = if let Some(stripped) = host_port.strip_prefix('[') {
        stripped.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.');
    if host_is_private(host) {
        return Err(invalid(
            format!("`{param}` points at a private, loopback or link-local address; only public URLs are accepted."),
            param,
        ));
    }
    Ok(())
}

fn host_is_private(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip_is_private(ip);
    }
    // Numeric hosts in other notations (decimal, octal, hex, short forms) are
    // resolved differently by different stacks: refuse them all.
    let numeric_like = host.split('.').all(|label| {
        !label.is_empty()
            && (label.bytes().all(|b| b.is_ascii_digit())
                || label.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())))
    });
    if numeric_like || !host.contains('.') {
        return true;
    }
    const PRIVATE_SUFFIXES: &[&str] =
        &[".localhost", ".local", ".internal", ".intranet", ".lan", ".home.arpa", ".corp", ".private"];
    host == "localhost" || PRIVATE_SUFFIXES.iter().any(|s| host.ends_with(s))
}

fn ip_is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_private(v4),
        IpAddr::V6(v6) => v6_is_private(v6),
    }
}

fn v4_is_private(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240
}

fn v6_is_private(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_is_private(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 to anything
        || first == 0 // IPv4-compatible and other reserved forms
}

/// Media type guessed from a URL's extension, for providers that need one.
pub fn media_type_from_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or("").to_ascii_lowercase();
    let ext = path.rsplit('.').next().unwrap_or("");
    Some(match ext {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        _ => return None,
    })
}

/// Audio format (`wav`, `mp3`, …) to media type.
pub fn audio_media_type(format: &str) -> String {
    match format {
        "mp3" | "mpeg" => "audio/mp3".into(),
        other => format!("audio/{other}"),
    }
}

/// Audio media type to the OpenAI `input_audio.format` word.
pub fn audio_format(media_type: &str) -> String {
    let sub = media_type.strip_prefix("audio/").unwrap_or(media_type);
    match sub {
        "mpeg" | "mp3" => "mp3".into(),
        "x-wav" | "wave" => "wav".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_hosts_are_refused() {
        for url in [
            "http://localhost/a.png",
            "http://127.0.0.1/a.png",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://2130706433/x",
            "http://0x7f.1/x",
            "http://100.64.0.1/x",
            "http://metadata.google.internal/x",
            "http://printer.local/x",
            "http://user:pass@example.com/x",
            "http://intranet/x",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://0.0.0.0/x",
        ] {
            assert!(check_public_url(url, "u").is_err(), "{url} should be refused");
        }
        for url in [
            "https://example.com/cat.png",
            "http://8.8.8.8/a.jpg",
            "https://[2606:4700::1]/x",
            "https://cdn.example.org:8443/a?b=c",
        ] {
            assert!(check_public_url(url, "u").is_ok(), "{url} should pass");
        }
    }

    #[test]
    fn data_uris() {
        let (t, d) = parse_data_uri("data:image/png;base64,iVBORw0KGgo=", "p").unwrap();
        assert_eq!((t.as_str(), d.as_str()), ("image/png", "iVBORw0KGgo="));
        assert!(parse_data_uri("data:image/png,rawdata", "p").is_err());
        assert!(parse_data_uri("data:;base64,AAAA", "p").is_err());
        assert!(parse_data_uri("data:image/png;base64,<script>", "p").is_err());
        assert_eq!(base64_decoded_len("AAAA"), 3);
        assert_eq!(base64_decoded_len("AAA="), 2);
        assert_eq!(base64_decoded_len("AA=="), 1);
    }

    #[test]
    fn oversized_inline_data_is_refused() {
        let big = "A".repeat(MAX_INLINE_MEDIA_BYTES / 3 * 4 + 8);
        assert!(check_base64(&big, "p").is_err());
    }
}

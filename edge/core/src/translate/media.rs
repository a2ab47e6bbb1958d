//! Multimodal inputs: data URIs and media URLs.
//!
//! The gateway never fetches a URL. A URL is passed to a provider that fetches
//! it itself (Anthropic `url` sources) or refused; either way it must pass the
//! one URL policy, [`crate::url_policy`], and what is forwarded is its
//! normalized form. Inline data is capped at [`MAX_INLINE_MEDIA_BYTES`]
//! decoded bytes per part.

use super::canonical::MediaSource;
use super::json_fields::invalid;
use crate::error::GatewayError;
pub use crate::url_policy::MAX_MEDIA_URL_BYTES;
use std::borrow::Cow;

/// Largest decoded size of one inline image, document or audio part.
pub const MAX_INLINE_MEDIA_BYTES: usize = 20 * 1024 * 1024;

/// Image types every provider accepts.
pub const IMAGE_MEDIA_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Decoded size of base64 text (ignoring padding).
pub fn base64_decoded_len(data: &str) -> usize {
    let trimmed = data.trim_end_matches('=');
    trimmed.len() / 4 * 3 + (trimmed.len() % 4).saturating_sub(1)
}

/// Inline base64 data in the one form every upstream takes: the standard
/// alphabet (`+`, `/`) with padding, no whitespace. Accepts what clients
/// send: the URL-safe alphabet (`-`, `_`, as the Gemini SDKs encode bytes),
/// missing padding, and MIME line breaks. Refuses anything else, and data
/// whose decoded size is over [`MAX_INLINE_MEDIA_BYTES`]. Data already in
/// standard form is returned as is, without a copy.
pub fn normalize_base64<'a>(data: &'a str, param: &str) -> Result<Cow<'a, str>, GatewayError> {
    if base64_decoded_len(data) > MAX_INLINE_MEDIA_BYTES {
        return Err(invalid(
            format!("`{param}` is larger than the {MAX_INLINE_MEDIA_BYTES}-byte limit for inline media."),
            param,
        ));
    }
    let not_base64 = || invalid(format!("`{param}` is not valid base64 data."), param);
    let body = data.trim_end_matches('=');
    let padding = data.len() - body.len();
    let standard = body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if standard && data.len().is_multiple_of(4) && padding <= 2 {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = String::with_capacity(data.len() + 3);
    for b in body.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => out.push(char::from(b)),
            b'-' => out.push('+'),
            b'_' => out.push('/'),
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => return Err(not_base64()),
        }
    }
    match out.len() % 4 {
        0 => {}
        1 => return Err(not_base64()),
        n => out.extend(std::iter::repeat_n('=', 4 - n)),
    }
    Ok(Cow::Owned(out))
}

/// The first bytes of base64 data, decoded (at most `n`; fewer when the
/// data is shorter). For sniffing a media type.
fn decode_prefix(data: &str, n: usize) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(n + 2);
    for quad in data.as_bytes().chunks(4).take(n.div_ceil(3)) {
        let mut acc = 0u32;
        let mut bits = 0;
        for &c in quad {
            let Some(v) = value(c) else { break };
            acc = (acc << 6) | v;
            bits += 6;
        }
        let bytes = (acc << (24 - bits)).to_be_bytes();
        out.extend_from_slice(&bytes[1..1 + bits / 8]);
    }
    out.truncate(n);
    out
}

/// The media type the bytes of `data` (base64) say they are, for the
/// formats whose signature is certain: PNG, JPEG, GIF, WebP and PDF.
pub fn sniff_media_type(data: &str) -> Option<&'static str> {
    let head = decode_prefix(data, 12);
    Some(match head.as_slice() {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P'] => "image/webp",
        [b'%', b'P', b'D', b'F', ..] => "application/pdf",
        _ => return None,
    })
}

/// The media type to send for an inline image: what its bytes are when
/// they say so and the client's label is another image type (clients
/// mislabel, and Anthropic refuses a label that does not match the
/// bytes), else the label.
pub fn image_media_type(declared: &str, data: &str) -> String {
    match sniff_media_type(data) {
        Some(actual) if actual.starts_with("image/") && actual != declared => actual.to_string(),
        _ => declared.to_string(),
    }
}

/// Splits `data:<media type>[;params];base64,<data>`; the data normalized
/// ([`normalize_base64`]).
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
    let data = normalize_base64(data, param)?.into_owned();
    Ok((media_type, data))
}

/// What kind of part inline media is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Document,
    Audio,
}

impl MediaKind {
    fn word(self) -> &'static str {
        match self {
            Self::Image => "images",
            Self::Document => "documents",
            Self::Audio => "audio",
        }
    }
}

/// What one upstream dialect accepts inline, from the providers' API
/// references. A type ending in `/` admits its whole family (`text/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamMediaRules {
    pub provider: &'static str,
    pub images: &'static [&'static str],
    pub documents: &'static [&'static str],
    pub audio: &'static [&'static str],
    /// Largest decoded image.
    pub max_image_bytes: usize,
    /// Largest decoded inline media of one request, all parts together.
    pub max_inline_bytes: usize,
}

const MIB: usize = 1024 * 1024;

/// Anthropic: four image types, 5 MB per image, 32 MB per request; PDFs.
pub const ANTHROPIC_MEDIA: UpstreamMediaRules = UpstreamMediaRules {
    provider: "Anthropic",
    images: IMAGE_MEDIA_TYPES,
    documents: &["application/pdf"],
    audio: &[],
    max_image_bytes: 5 * MIB,
    max_inline_bytes: 32 * MIB,
};

/// OpenAI chat: four image types, 20 MB per image; PDF files; wav and mp3.
pub const OPENAI_MEDIA: UpstreamMediaRules = UpstreamMediaRules {
    provider: "OpenAI-format",
    images: IMAGE_MEDIA_TYPES,
    documents: &["application/pdf"],
    audio: &["audio/wav", "audio/mp3"],
    max_image_bytes: 20 * MIB,
    max_inline_bytes: 50 * MIB,
};

/// Gemini: PNG, JPEG, WebP, HEIC, HEIF (no GIF); PDF, text and video;
/// six audio types; 20 MB of inline data per request.
pub const GEMINI_MEDIA: UpstreamMediaRules = UpstreamMediaRules {
    provider: "Gemini",
    images: &["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"],
    documents: &["application/pdf", "text/", "video/"],
    audio: &["audio/wav", "audio/mp3", "audio/aiff", "audio/aac", "audio/ogg", "audio/flac"],
    max_image_bytes: 20 * MIB,
    max_inline_bytes: 20 * MIB,
};

impl UpstreamMediaRules {
    /// Checks one inline part (`data` already normalized).
    pub fn check_part(
        &self,
        kind: MediaKind,
        media_type: &str,
        data: &str,
        param: &str,
    ) -> Result<(), GatewayError> {
        let allowed = match kind {
            MediaKind::Image => self.images,
            MediaKind::Document => self.documents,
            MediaKind::Audio => self.audio,
        };
        let admits = |t: &&str| if t.ends_with('/') { media_type.starts_with(*t) } else { media_type == *t };
        if !allowed.iter().any(admits) {
            let list = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(invalid(
                format!(
                    "{} upstreams do not accept `{media_type}` {} (accepted: {list}).",
                    self.provider,
                    kind.word()
                ),
                param,
            ));
        }
        let size = base64_decoded_len(data);
        if kind == MediaKind::Image && size > self.max_image_bytes {
            return Err(GatewayError::ContentTooLarge {
                message: format!(
                    "An image of {size} bytes is larger than {} upstreams accept ({} bytes per image).",
                    self.provider, self.max_image_bytes
                ),
            });
        }
        Ok(())
    }

    /// Checks the total of a request's inline media (decoded bytes).
    pub fn check_total(&self, total: usize) -> Result<(), GatewayError> {
        if total > self.max_inline_bytes {
            return Err(GatewayError::ContentTooLarge {
                message: format!(
                    "The request carries {total} bytes of inline media; {} upstreams accept at most {} per request.",
                    self.provider, self.max_inline_bytes
                ),
            });
        }
        Ok(())
    }
}

/// A data URI or a public http(s) URL as a media source.
pub fn source_from_url_or_data(uri: &str, param: &str) -> Result<MediaSource, GatewayError> {
    if uri.starts_with("data:") {
        let (media_type, data) = parse_data_uri(uri, param)?;
        let media_type =
            if media_type.starts_with("image/") { image_media_type(&media_type, &data) } else { media_type };
        return Ok(MediaSource::Base64 { media_type, data });
    }
    Ok(MediaSource::Url { url: check_public_url(uri, param)? })
}

/// Renders a base64 source back into a data URI.
pub fn data_uri(media_type: &str, data: &str) -> String {
    format!("data:{media_type};base64,{data}")
}

/// Checks a media URL against [`crate::url_policy`]; the normalized URL
/// to forward.
pub fn check_public_url(url: &str, param: &str) -> Result<String, GatewayError> {
    crate::url_policy::check_media_url(url, param)
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
    fn urls_go_through_the_policy_normalized() {
        assert!(check_public_url("http://127.0.0.%31/a.png", "u").is_err());
        assert_eq!(
            source_from_url_or_data("HTTPS://Example.com/a.png", "u"),
            Ok(MediaSource::Url { url: "https://example.com/a.png".into() })
        );
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
        assert!(normalize_base64(&big, "p").is_err());
    }

    /// Standard base64 of `bytes`, written independently of the code under test.
    fn std_b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn url_safe_unpadded_and_wrapped_base64_becomes_standard() {
        // Every byte value, at every length mod 3, so `+`, `/` and padding all occur.
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for len in [0, 1, 2, 3, 62, 63, 64, 256] {
            let standard = std_b64(&bytes[..len]);
            let url_safe = standard.replace('+', "-").replace('/', "_");
            let unpadded = url_safe.trim_end_matches('=').to_string();
            let wrapped: String = standard
                .as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\r\n");
            for input in [&standard, &url_safe, &unpadded, &wrapped] {
                assert_eq!(
                    normalize_base64(input, "p").as_deref(),
                    Ok(standard.as_str()),
                    "len {len}: {input}"
                );
            }
            assert!(
                matches!(normalize_base64(&standard, "p"), Ok(Cow::Borrowed(_))),
                "no copy when standard"
            );
        }
        for bad in ["A", "AAAAA", "AA=A", "AA==A", "AAA*", "<script>"] {
            assert!(normalize_base64(bad, "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn images_are_labelled_by_their_bytes() {
        let png = std_b64(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
        let jpeg = std_b64(b"\xff\xd8\xff\xe0\0\x10JFIF");
        let webp = std_b64(b"RIFF\x24\0\0\0WEBPVP8 ");
        assert_eq!(sniff_media_type(&png), Some("image/png"));
        assert_eq!(sniff_media_type(&jpeg), Some("image/jpeg"));
        assert_eq!(sniff_media_type(&webp), Some("image/webp"));
        assert_eq!(sniff_media_type(&std_b64(b"GIF89a")), Some("image/gif"));
        assert_eq!(sniff_media_type(&std_b64(b"%PDF-1.7")), Some("application/pdf"));
        assert_eq!(sniff_media_type("AAAA"), None);
        assert_eq!(image_media_type("image/jpeg", &png), "image/png");
        assert_eq!(image_media_type("image/heic", "AAAA"), "image/heic", "unknown bytes keep the label");
    }

    #[test]
    fn each_upstream_checks_types_and_sizes() {
        assert!(ANTHROPIC_MEDIA.check_part(MediaKind::Image, "image/gif", "AAAA", "p").is_ok());
        let e = GEMINI_MEDIA.check_part(MediaKind::Image, "image/gif", "AAAA", "p").err();
        assert!(e.as_ref().is_some_and(|e| e.status() == 400 && e.message().contains("image/gif")), "{e:?}");
        assert!(GEMINI_MEDIA.check_part(MediaKind::Document, "text/csv", "AAAA", "p").is_ok());
        assert!(OPENAI_MEDIA.check_part(MediaKind::Audio, "audio/ogg", "AAAA", "p").is_err());
        assert!(ANTHROPIC_MEDIA.check_part(MediaKind::Audio, "audio/wav", "AAAA", "p").is_err());
        let six_mb = "A".repeat(6 * MIB / 3 * 4);
        let e = ANTHROPIC_MEDIA.check_part(MediaKind::Image, "image/png", &six_mb, "p").err();
        assert_eq!(e.map(|e| e.status()), Some(413));
        assert!(OPENAI_MEDIA.check_part(MediaKind::Image, "image/png", &six_mb, "p").is_ok());
        assert_eq!(GEMINI_MEDIA.check_total(21 * MIB).err().map(|e| e.status()), Some(413));
    }
}

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

/// Largest decoded size of one inline image, document or audio part.
pub const MAX_INLINE_MEDIA_BYTES: usize = 20 * 1024 * 1024;

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
        assert!(check_base64(&big, "p").is_err());
    }
}

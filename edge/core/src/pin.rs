//! Pinning a request to one channel (for debugging and the console's channel
//! test button): the request headers, the admin's signature over them, and
//! its check. Contract: `CONTRACT-pinning.md`.
//!
//! A pin is signed by the admin with the secret it shares with the edge
//! (`EDGE_ADMIN_SECRET`): HMAC-SHA256 over `pin\n<channel>\n<timestamp>\n<hex
//! sha256 of the body>`, the timestamp within the internal API's skew window.
//! A key whose record says `pin_allowed` (test keys) may pin unsigned. A
//! pinned request tries only that channel: no failover, and the channel's
//! breaker, enabled flag and groups are ignored, so an operator can test a
//! channel that routing would skip.

use crate::internal_auth::{MAX_CLOCK_SKEW_SECS, MIN_SECRET_LEN};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Request header naming the channel to pin to.
pub const PIN_CHANNEL_HEADER: &str = "x-edgeway-pin-channel";
/// Request header with the unix-seconds timestamp that was signed.
pub const PIN_TIMESTAMP_HEADER: &str = "x-edgeway-pin-timestamp";
/// Request header with the lower-case hex HMAC of [`pin_message`].
pub const PIN_SIGNATURE_HEADER: &str = "x-edgeway-pin-signature";
/// Response header naming the channel that served (or last failed) a request.
pub const SERVED_CHANNEL_HEADER: &str = "x-edgeway-channel";
/// Response header naming the public model that served (the asked one, or
/// the fallback that served it).
pub const SERVED_MODEL_HEADER: &str = "x-edgeway-model";
/// Name of the worker secret that signs pins.
pub const PIN_SECRET_NAME: &str = "EDGE_ADMIN_SECRET";

/// The pin headers of a request, as presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinRequest {
    pub channel: String,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
}

impl PinRequest {
    /// The pin of a request, when it names a channel.
    pub fn from_headers(
        channel: Option<String>,
        timestamp: Option<String>,
        signature: Option<String>,
    ) -> Option<Self> {
        let channel = channel.map(|c| c.trim().to_string()).filter(|c| !c.is_empty())?;
        Some(Self { channel, timestamp, signature })
    }
}

/// Why a pin was refused (logged; the caller sees one 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRefusal {
    /// The edge has no usable secret: only `pin_allowed` keys can pin.
    NotConfigured,
    /// Timestamp or signature header missing or malformed.
    Malformed,
    /// Timestamp outside the skew window.
    Stale,
    BadSignature,
}

/// Lower-case hex SHA-256 of a request body, as signed.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The text the pin HMAC is computed over.
pub fn pin_message(channel: &str, timestamp: i64, body_digest: &str) -> String {
    format!("pin\n{channel}\n{timestamp}\n{body_digest}")
}

/// The signature of a pin (what the admin sends in [`PIN_SIGNATURE_HEADER`]).
pub fn sign_pin(secret: &str, channel: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(pin_message(channel, timestamp, &body_digest(body)).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signed pin at `now_secs`, over the request body's
/// [`body_digest`].
pub fn verify_pin(
    secret: Option<&str>,
    pin: &PinRequest,
    body_digest: &str,
    now_secs: i64,
) -> Result<(), PinRefusal> {
    let secret = secret.filter(|s| s.len() >= MIN_SECRET_LEN).ok_or(PinRefusal::NotConfigured)?;
    let timestamp: i64 =
        pin.timestamp.as_deref().and_then(|t| t.trim().parse().ok()).ok_or(PinRefusal::Malformed)?;
    let signature = pin
        .signature
        .as_deref()
        .map(str::trim)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(PinRefusal::Malformed)?
        .to_ascii_lowercase();
    if now_secs.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS as u64 {
        return Err(PinRefusal::Stale);
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return Err(PinRefusal::NotConfigured);
    };
    mac.update(pin_message(&pin.channel, timestamp, body_digest).as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if expected.as_bytes().ct_eq(signature.as_bytes()).into() {
        Ok(())
    } else {
        Err(PinRefusal::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "pin-secret-0123456789";

    fn pin(channel: &str, ts: i64, sig: String) -> PinRequest {
        PinRequest { channel: channel.into(), timestamp: Some(ts.to_string()), signature: Some(sig) }
    }

    #[test]
    fn a_signed_pin_is_accepted_and_every_alteration_refused() {
        let raw = br#"{"model":"m"}"#;
        let body = &body_digest(raw);
        let good = pin("ch-a", 1000, sign_pin(SECRET, "ch-a", 1000, raw));
        assert_eq!(verify_pin(Some(SECRET), &good, body, 1000), Ok(()));
        assert_eq!(verify_pin(Some(SECRET), &good, body, 1000 + MAX_CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(verify_pin(Some(SECRET), &good, &body_digest(b"{}"), 1000), Err(PinRefusal::BadSignature));
        let mut other = good.clone();
        other.channel = "ch-b".into();
        assert_eq!(verify_pin(Some(SECRET), &other, body, 1000), Err(PinRefusal::BadSignature));
        assert_eq!(
            verify_pin(Some(SECRET), &good, body, 1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(PinRefusal::Stale)
        );
        assert_eq!(verify_pin(Some("other-secret-000000"), &good, body, 1000), Err(PinRefusal::BadSignature));
        assert_eq!(verify_pin(None, &good, body, 1000), Err(PinRefusal::NotConfigured));
        assert_eq!(verify_pin(Some("short"), &good, body, 1000), Err(PinRefusal::NotConfigured));
        let unsigned = PinRequest { channel: "ch-a".into(), ..Default::default() };
        assert_eq!(verify_pin(Some(SECRET), &unsigned, body, 1000), Err(PinRefusal::Malformed));
        let upper = pin("ch-a", 1000, sign_pin(SECRET, "ch-a", 1000, raw).to_ascii_uppercase());
        assert_eq!(verify_pin(Some(SECRET), &upper, body, 1000), Ok(()), "hex case does not matter");
    }

    #[test]
    fn only_a_named_channel_is_a_pin() {
        assert_eq!(PinRequest::from_headers(None, Some("1".into()), None), None);
        assert_eq!(PinRequest::from_headers(Some("  ".into()), None, None), None);
        assert_eq!(
            PinRequest::from_headers(Some(" a ".into()), None, None).map(|p| p.channel),
            Some("a".into())
        );
    }
}

//! Authentication of the admin → edge internal API.
//!
//! The admin signs each request with HMAC-SHA256 over the method, path,
//! timestamp and body digest, using a secret both sides hold
//! (`EDGE_ADMIN_SECRET`). The edge accepts a signature only within
//! [`MAX_CLOCK_SKEW_SECS`] of its own clock, so a captured request cannot be
//! replayed later, and refuses everything when the secret is unset or short.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Header carrying the unix-seconds timestamp that was signed.
pub const TIMESTAMP_HEADER: &str = "x-edgeway-timestamp";
/// Header carrying the lower-case hex HMAC.
pub const SIGNATURE_HEADER: &str = "x-edgeway-signature";
/// Largest accepted difference between the signer's and the verifier's clocks.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Shortest secret accepted; a shorter one disables the internal API.
pub const MIN_SECRET_LEN: usize = 16;

/// Why an internal request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalAuthError {
    /// The secret is unset or too short: the internal API is disabled.
    NotConfigured,
    /// Headers missing or malformed.
    Malformed,
    /// Timestamp outside the skew window.
    Stale,
    /// Signature does not match.
    BadSignature,
}

fn canonical_message(method: &str, path: &str, timestamp: i64, body: &[u8]) -> String {
    format!("{}\n{}\n{}\n{}", method.to_ascii_uppercase(), path, timestamp, hex::encode(Sha256::digest(body)))
}

/// Signature for a request; the admin puts it in [`SIGNATURE_HEADER`].
pub fn sign(secret: &str, method: &str, path: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(canonical_message(method, path, timestamp, body).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signed internal request at `now` (unix seconds).
pub fn verify(
    secret: Option<&str>,
    method: &str,
    path: &str,
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), InternalAuthError> {
    let secret = secret.filter(|s| s.len() >= MIN_SECRET_LEN).ok_or(InternalAuthError::NotConfigured)?;
    let timestamp: i64 =
        timestamp_header.and_then(|t| t.trim().parse().ok()).ok_or(InternalAuthError::Malformed)?;
    let signature = signature_header.map(str::trim).ok_or(InternalAuthError::Malformed)?;
    if (now - timestamp).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(InternalAuthError::Stale);
    }
    let expected = sign(secret, method, path, timestamp, body);
    if expected.as_bytes().ct_eq(signature.as_bytes()).into() {
        Ok(())
    } else {
        Err(InternalAuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";

    #[test]
    fn round_trip() {
        let sig = sign(SECRET, "put", "/internal/keys/ab", 1000, b"{}");
        assert_eq!(
            verify(Some(SECRET), "PUT", "/internal/keys/ab", Some("1000"), Some(&sig), b"{}", 1100),
            Ok(())
        );
    }

    #[test]
    fn every_part_is_covered() {
        let sig = sign(SECRET, "PUT", "/internal/keys/ab", 1000, b"{}");
        let check =
            |m: &str, p: &str, b: &[u8]| verify(Some(SECRET), m, p, Some("1000"), Some(&sig), b, 1000);
        assert_eq!(check("DELETE", "/internal/keys/ab", b"{}"), Err(InternalAuthError::BadSignature));
        assert_eq!(check("PUT", "/internal/keys/cd", b"{}"), Err(InternalAuthError::BadSignature));
        assert_eq!(check("PUT", "/internal/keys/ab", b"{ }"), Err(InternalAuthError::BadSignature));
        assert_eq!(
            verify(
                Some("another-secret-0000"),
                "PUT",
                "/internal/keys/ab",
                Some("1000"),
                Some(&sig),
                b"{}",
                1000
            ),
            Err(InternalAuthError::BadSignature)
        );
    }

    #[test]
    fn stale_and_missing_and_unconfigured() {
        let sig = sign(SECRET, "PUT", "/p", 1000, b"");
        assert_eq!(
            verify(Some(SECRET), "PUT", "/p", Some("1000"), Some(&sig), b"", 1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(InternalAuthError::Stale)
        );
        assert_eq!(
            verify(Some(SECRET), "PUT", "/p", None, Some(&sig), b"", 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            verify(Some(SECRET), "PUT", "/p", Some("x"), Some(&sig), b"", 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            verify(None, "PUT", "/p", Some("1000"), Some(&sig), b"", 1000),
            Err(InternalAuthError::NotConfigured)
        );
        assert_eq!(
            verify(
                Some("short"),
                "PUT",
                "/p",
                Some("1000"),
                Some(&sign("short", "PUT", "/p", 1000, b"")),
                b"",
                1000
            ),
            Err(InternalAuthError::NotConfigured)
        );
    }
}

//! Authentication of the signed internal API (admin → edge pushes, edge →
//! admin usage ingest).
//!
//! A request is signed with HMAC-SHA256, keyed by the secret both sides hold
//! (`EDGE_ADMIN_SECRET`), over [`canonical_message`]: a version tag, the
//! method, the URL path, the URL query, the unix-seconds timestamp, a random
//! nonce and the SHA-256 of the body. The verifier
//! * refuses a request whose signature headers are missing or malformed, or
//!   whose timestamp is more than [`MAX_CLOCK_SKEW_SECS`] from its own clock,
//!   *before* reading the body ([`precheck`]);
//! * then checks the HMAC over everything ([`verify`]), in constant time;
//! * then claims the nonce in a memory that keeps every nonce until its
//!   timestamp leaves the window ([`NonceMemory`]): a captured request cannot
//!   be sent again, neither within the window (nonce seen) nor after it (stale).
//!
//! Every refusal is the same 401 text ([`REFUSED_MESSAGE`]) so a caller learns
//! nothing about which part failed; the reason is logged.
//!
//! **Transition.** The first scheme (`x-edgeway-signature` over method, path,
//! timestamp and body only) is no longer accepted. Signers still send it
//! beside the new headers ([`signed_headers`]), so a new admin can push to an
//! edge that is not yet upgraded and a new edge can post usage to an old
//! admin; deploy order does not matter, and once both sides run this version
//! the old header is ignored. It will be dropped from signers in a later
//! release.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use subtle::ConstantTimeEq;

/// Header carrying the unix-seconds timestamp that was signed.
pub const TIMESTAMP_HEADER: &str = "x-edgeway-timestamp";
/// Header carrying the random nonce that was signed.
pub const NONCE_HEADER: &str = "x-edgeway-nonce";
/// Header carrying the lower-case hex HMAC of [`canonical_message`].
pub const SIGNATURE_HEADER: &str = "x-edgeway-signature-v2";
/// Header of the first scheme, sent for not-yet-upgraded verifiers only.
pub const LEGACY_SIGNATURE_HEADER: &str = "x-edgeway-signature";
/// Largest accepted difference between the signer's and the verifier's clocks.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Shortest secret accepted; a shorter one disables the internal API.
pub const MIN_SECRET_LEN: usize = 16;
/// Nonce length bounds (characters of `A-Z a-z 0-9 - _`).
pub const MIN_NONCE_LEN: usize = 16;
pub const MAX_NONCE_LEN: usize = 128;
/// The one message of every refusal.
pub const REFUSED_MESSAGE: &str = "invalid or missing request signature";

const SCHEME: &str = "EDGEWAY-HMAC-SHA256-2";

/// Why an internal request was refused (logged, never shown).
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
    /// The nonce was seen before within the window.
    Replayed,
}

/// What is signed, besides the secret.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    /// The URL path as serialized (`/internal/keys/ab`).
    pub path: &'a str,
    /// The URL query as serialized, without `?`; empty when there is none.
    pub query: &'a str,
    pub timestamp: i64,
    pub nonce: &'a str,
    pub body: &'a [u8],
}

/// The text the HMAC is computed over, one field per line.
pub fn canonical_message(parts: &SignedParts<'_>) -> String {
    format!(
        "{SCHEME}\n{}\n{}\n{}\n{}\n{}\n{}",
        parts.method.to_ascii_uppercase(),
        parts.path,
        parts.query,
        parts.timestamp,
        parts.nonce,
        hex::encode(Sha256::digest(parts.body))
    )
}

fn hmac_hex(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Signature of a request; goes in [`SIGNATURE_HEADER`].
pub fn sign(secret: &str, parts: &SignedParts<'_>) -> String {
    hmac_hex(secret, &canonical_message(parts))
}

/// The first scheme's signature (method, path, timestamp, body), for
/// verifiers that are not yet upgraded. Not accepted by [`verify`].
pub fn sign_legacy(secret: &str, method: &str, path: &str, timestamp: i64, body: &[u8]) -> String {
    let message = format!(
        "{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        timestamp,
        hex::encode(Sha256::digest(body))
    );
    hmac_hex(secret, &message)
}

/// Every header a signer sends: timestamp, nonce, signature, and the legacy
/// signature for the transition. `nonce` must be fresh randomness
/// (16 bytes as hex is plenty).
pub fn signed_headers(secret: &str, parts: &SignedParts<'_>) -> [(&'static str, String); 4] {
    [
        (TIMESTAMP_HEADER, parts.timestamp.to_string()),
        (NONCE_HEADER, parts.nonce.to_string()),
        (SIGNATURE_HEADER, sign(secret, parts)),
        (LEGACY_SIGNATURE_HEADER, sign_legacy(secret, parts.method, parts.path, parts.timestamp, parts.body)),
    ]
}

/// Signature headers that look right, checked before the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prechecked {
    pub timestamp: i64,
    pub nonce: String,
    signature: String,
}

impl Prechecked {
    /// Until when (unix seconds) the nonce must be remembered: after that
    /// the timestamp alone refuses the request.
    pub fn remember_until(&self) -> i64 {
        self.timestamp.saturating_add(MAX_CLOCK_SKEW_SECS)
    }
}

fn valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len())
        && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks what can be checked without the body: the secret is configured,
/// the headers are present and well-formed, the timestamp is within the
/// window of `now` (unix seconds).
pub fn precheck(
    secret: Option<&str>,
    timestamp_header: Option<&str>,
    nonce_header: Option<&str>,
    signature_header: Option<&str>,
    now: i64,
) -> Result<Prechecked, InternalAuthError> {
    secret.filter(|s| s.len() >= MIN_SECRET_LEN).ok_or(InternalAuthError::NotConfigured)?;
    let timestamp: i64 =
        timestamp_header.and_then(|t| t.trim().parse().ok()).ok_or(InternalAuthError::Malformed)?;
    let nonce = nonce_header.map(str::trim).filter(|n| valid_nonce(n)).ok_or(InternalAuthError::Malformed)?;
    let signature = signature_header
        .map(str::trim)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(InternalAuthError::Malformed)?;
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS as u64 {
        return Err(InternalAuthError::Stale);
    }
    Ok(Prechecked { timestamp, nonce: nonce.to_string(), signature: signature.to_ascii_lowercase() })
}

/// Checks the signature of a prechecked request over method, path, query and
/// body. The caller then claims [`Prechecked::nonce`] in its [`NonceMemory`].
pub fn verify(
    secret: Option<&str>,
    pre: &Prechecked,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<(), InternalAuthError> {
    let secret = secret.filter(|s| s.len() >= MIN_SECRET_LEN).ok_or(InternalAuthError::NotConfigured)?;
    let parts = SignedParts { method, path, query, timestamp: pre.timestamp, nonce: &pre.nonce, body };
    let expected = sign(secret, &parts);
    if expected.as_bytes().ct_eq(pre.signature.as_bytes()).into() {
        Ok(())
    } else {
        Err(InternalAuthError::BadSignature)
    }
}

/// Nonces seen within the replay window. Each is kept until its request's
/// timestamp leaves the window, so memory is bounded by the signed traffic
/// of one window (unsigned requests never reach it).
#[derive(Debug, Default, Clone)]
pub struct NonceMemory {
    by_expiry: BTreeMap<i64, Vec<String>>,
    seen: HashSet<String>,
}

impl NonceMemory {
    /// Records `nonce` (remembered until `until`, unix seconds) unless it was
    /// seen before; `false` = a replay. Forgets what expired by `now` first.
    pub fn claim(&mut self, nonce: &str, until: i64, now: i64) -> bool {
        self.forget_expired(now);
        if self.seen.contains(nonce) {
            return false;
        }
        self.seen.insert(nonce.to_string());
        self.by_expiry.entry(until).or_default().push(nonce.to_string());
        true
    }

    /// Forgets nonces whose window ended before `now`; returns them.
    pub fn forget_expired(&mut self, now: i64) -> Vec<String> {
        let keep = self.by_expiry.split_off(&now);
        let expired = std::mem::replace(&mut self.by_expiry, keep);
        let mut out = Vec::new();
        for nonce in expired.into_values().flatten() {
            self.seen.remove(&nonce);
            out.push(nonce);
        }
        out
    }

    /// Puts back a nonce loaded from storage (no replay check).
    pub fn restore(&mut self, nonce: &str, until: i64) {
        if self.seen.insert(nonce.to_string()) {
            self.by_expiry.entry(until).or_default().push(nonce.to_string());
        }
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The earliest time something expires, for a clean-up alarm.
    pub fn next_expiry(&self) -> Option<i64> {
        self.by_expiry.keys().next().copied()
    }
}

/// The version of something pushed (the routing config, one key record) and
/// the digest of the body that carried it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionStamp {
    pub version: u64,
    pub body_sha256: String,
}

impl VersionStamp {
    pub fn of(version: u64, body: &[u8]) -> Self {
        Self { version, body_sha256: hex::encode(Sha256::digest(body)) }
    }
}

/// Whether a pushed version may replace the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDecision {
    /// Newer than the stored one (or nothing stored): store it.
    Newer,
    /// The stored version pushed again with the same body (a full sync, a
    /// retry after a failed write): store it again, nothing changes.
    Same,
    /// Older than the stored one, or the same version with another body: refused.
    NotNewer { stored: u64 },
}

/// Decides a push of `incoming` over `stored`.
pub fn decide_version(stored: Option<&VersionStamp>, incoming: &VersionStamp) -> VersionDecision {
    match stored {
        None => VersionDecision::Newer,
        Some(s) if incoming.version > s.version => VersionDecision::Newer,
        Some(s) if incoming.version == s.version && incoming.body_sha256 == s.body_sha256 => {
            VersionDecision::Same
        }
        Some(s) => VersionDecision::NotNewer { stored: s.version },
    }
}

/// What the verifier asks its guard once a signature checked out: claim the
/// nonce, and for a push, the version of what it carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaimRequest {
    pub nonce: String,
    /// Unix seconds until which the nonce is remembered ([`Prechecked::remember_until`]).
    pub until: i64,
    #[serde(default)]
    pub version: Option<VersionClaim>,
}

/// The version a push carries, in its scope (`routing`, `key:<digest>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionClaim {
    pub scope: String,
    pub stamp: VersionStamp,
    /// The version already stored where the guard has no record yet (what
    /// KV holds from before the guard existed): nothing older is accepted.
    #[serde(default)]
    pub floor: u64,
}

/// The guard's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ClaimReply {
    /// Go ahead; `unchanged`: the same version and body as stored.
    Accepted { unchanged: bool },
    /// The nonce was seen within the window: refuse as a bad signature.
    Replayed,
    /// The push is not newer than what is stored: refuse with a 409.
    NotNewer { stored: u64 },
}

/// Decides a claim at `now` (unix seconds): the reply, and the stamp to store
/// for the claim's scope, if any. The nonce is remembered whatever the
/// version decision (an authenticated request is used up either way).
pub fn decide_claim(
    memory: &mut NonceMemory,
    stored: Option<&VersionStamp>,
    claim: &ClaimRequest,
    now: i64,
) -> (ClaimReply, Option<VersionStamp>) {
    if !memory.claim(&claim.nonce, claim.until, now) {
        return (ClaimReply::Replayed, None);
    }
    let Some(version) = &claim.version else { return (ClaimReply::Accepted { unchanged: false }, None) };
    if stored.is_none() && version.stamp.version < version.floor {
        return (ClaimReply::NotNewer { stored: version.floor }, None);
    }
    match decide_version(stored, &version.stamp) {
        VersionDecision::Newer => (ClaimReply::Accepted { unchanged: false }, Some(version.stamp.clone())),
        VersionDecision::Same => (ClaimReply::Accepted { unchanged: true }, None),
        VersionDecision::NotNewer { stored } => (ClaimReply::NotNewer { stored }, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";
    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn parts<'a>(method: &'a str, path: &'a str, query: &'a str, body: &'a [u8]) -> SignedParts<'a> {
        SignedParts { method, path, query, timestamp: 1000, nonce: NONCE, body }
    }

    fn pre(signature: &str) -> Prechecked {
        precheck(Some(SECRET), Some("1000"), Some(NONCE), Some(signature), 1100).unwrap()
    }

    #[test]
    fn round_trip() {
        let sig = sign(SECRET, &parts("put", "/internal/keys/ab", "", b"{}"));
        assert_eq!(verify(Some(SECRET), &pre(&sig), "PUT", "/internal/keys/ab", "", b"{}"), Ok(()));
    }

    #[test]
    fn every_part_is_covered() {
        let sig = sign(SECRET, &parts("POST", "/internal/usage/dead-letters/replay", "limit=1", b"{}"));
        let p = pre(&sig);
        let check = |m: &str, path: &str, q: &str, b: &[u8]| verify(Some(SECRET), &p, m, path, q, b);
        assert_eq!(check("POST", "/internal/usage/dead-letters/replay", "limit=1", b"{}"), Ok(()));
        assert_eq!(
            check("PUT", "/internal/usage/dead-letters/replay", "limit=1", b"{}"),
            Err(InternalAuthError::BadSignature)
        );
        assert_eq!(
            check("POST", "/internal/usage/requeue", "limit=1", b"{}"),
            Err(InternalAuthError::BadSignature)
        );
        assert_eq!(
            check("POST", "/internal/usage/dead-letters/replay", "limit=1000", b"{}"),
            Err(InternalAuthError::BadSignature)
        );
        assert_eq!(
            check("POST", "/internal/usage/dead-letters/replay", "", b"{}"),
            Err(InternalAuthError::BadSignature)
        );
        assert_eq!(
            check("POST", "/internal/usage/dead-letters/replay", "limit=1", b"{ }"),
            Err(InternalAuthError::BadSignature)
        );
        let other_nonce =
            precheck(Some(SECRET), Some("1000"), Some("ffffffffffffffffffffffffffffffff"), Some(&sig), 1000)
                .unwrap();
        assert_eq!(
            verify(
                Some(SECRET),
                &other_nonce,
                "POST",
                "/internal/usage/dead-letters/replay",
                "limit=1",
                b"{}"
            ),
            Err(InternalAuthError::BadSignature)
        );
        let other_time = precheck(Some(SECRET), Some("1001"), Some(NONCE), Some(&sig), 1000).unwrap();
        assert_eq!(
            verify(
                Some(SECRET),
                &other_time,
                "POST",
                "/internal/usage/dead-letters/replay",
                "limit=1",
                b"{}"
            ),
            Err(InternalAuthError::BadSignature)
        );
        assert_eq!(
            verify(
                Some("another-secret-0000"),
                &p,
                "POST",
                "/internal/usage/dead-letters/replay",
                "limit=1",
                b"{}"
            ),
            Err(InternalAuthError::BadSignature)
        );
    }

    #[test]
    fn the_legacy_signature_is_not_accepted() {
        let legacy = sign_legacy(SECRET, "PUT", "/internal/routing", 1000, b"{}");
        assert_eq!(
            verify(Some(SECRET), &pre(&legacy), "PUT", "/internal/routing", "", b"{}"),
            Err(InternalAuthError::BadSignature)
        );
        let headers = signed_headers(SECRET, &parts("PUT", "/internal/routing", "", b"{}"));
        assert_eq!(headers[3], (LEGACY_SIGNATURE_HEADER, legacy));
        assert_eq!(headers[2].1, sign(SECRET, &parts("PUT", "/internal/routing", "", b"{}")));
    }

    #[test]
    fn precheck_refuses_before_the_body() {
        let sig = "a".repeat(64);
        let check = |s: Option<&str>, t: Option<&str>, n: Option<&str>, g: Option<&str>, now: i64| {
            precheck(s, t, n, g, now)
        };
        assert_eq!(
            check(None, Some("1000"), Some(NONCE), Some(&sig), 1000),
            Err(InternalAuthError::NotConfigured)
        );
        assert_eq!(
            check(Some("short"), Some("1000"), Some(NONCE), Some(&sig), 1000),
            Err(InternalAuthError::NotConfigured)
        );
        assert_eq!(
            check(Some(SECRET), None, Some(NONCE), Some(&sig), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("x"), Some(NONCE), Some(&sig), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), None, Some(&sig), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some("short"), Some(&sig), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some("0123456789abcdef!x"), Some(&sig), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some(NONCE), None, 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some(NONCE), Some("abc"), 1000),
            Err(InternalAuthError::Malformed)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some(NONCE), Some(&sig), 1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(InternalAuthError::Stale)
        );
        assert_eq!(
            check(Some(SECRET), Some("1000"), Some(NONCE), Some(&sig), 1000 - MAX_CLOCK_SKEW_SECS - 1),
            Err(InternalAuthError::Stale)
        );
        assert_eq!(
            check(Some(SECRET), Some(&i64::MIN.to_string()), Some(NONCE), Some(&sig), i64::MAX),
            Err(InternalAuthError::Stale)
        );
        assert!(
            check(Some(SECRET), Some("1000"), Some(NONCE), Some(&sig), 1000 + MAX_CLOCK_SKEW_SECS).is_ok()
        );
    }

    #[test]
    fn nonces_are_remembered_for_the_window_then_forgotten() {
        let mut memory = NonceMemory::default();
        assert!(memory.claim("a", 1300, 1000));
        assert!(!memory.claim("a", 1300, 1001), "replay within the window");
        assert!(memory.claim("b", 1310, 1002));
        assert_eq!(memory.len(), 2);
        assert_eq!(memory.next_expiry(), Some(1300));
        assert_eq!(memory.forget_expired(1305), vec!["a".to_string()]);
        assert_eq!(memory.len(), 1);
        // Once forgotten, the timestamp alone refuses the request (precheck).
        assert!(memory.claim("a", 1600, 1305));
        assert!(!memory.claim("b", 1310, 1309));
        assert!(memory.claim("b", 1999, 1311));
    }

    #[test]
    fn versions_must_be_newer_or_the_same_body_again() {
        let v5 = VersionStamp::of(5, b"five");
        assert_eq!(decide_version(None, &v5), VersionDecision::Newer);
        assert_eq!(decide_version(Some(&v5), &VersionStamp::of(6, b"six")), VersionDecision::Newer);
        assert_eq!(decide_version(Some(&v5), &VersionStamp::of(5, b"five")), VersionDecision::Same);
        assert_eq!(
            decide_version(Some(&v5), &VersionStamp::of(5, b"other")),
            VersionDecision::NotNewer { stored: 5 }
        );
        assert_eq!(
            decide_version(Some(&v5), &VersionStamp::of(4, b"four")),
            VersionDecision::NotNewer { stored: 5 }
        );
    }

    #[test]
    fn claims_refuse_replays_then_old_versions() {
        let mut memory = NonceMemory::default();
        let claim = |nonce: &str, version: u64, body: &[u8], floor: u64| ClaimRequest {
            nonce: nonce.into(),
            until: 1300,
            version: Some(VersionClaim {
                scope: "routing".into(),
                stamp: VersionStamp::of(version, body),
                floor,
            }),
        };
        let (reply, store) = decide_claim(&mut memory, None, &claim("n1", 7, b"seven", 5), 1000);
        assert_eq!(reply, ClaimReply::Accepted { unchanged: false });
        let stored = store.unwrap();
        assert_eq!(
            decide_claim(&mut memory, Some(&stored), &claim("n1", 7, b"seven", 5), 1001).0,
            ClaimReply::Replayed
        );
        assert_eq!(
            decide_claim(&mut memory, Some(&stored), &claim("n2", 6, b"six", 5), 1001).0,
            ClaimReply::NotNewer { stored: 7 }
        );
        assert_eq!(
            decide_claim(&mut memory, Some(&stored), &claim("n3", 7, b"seven", 5), 1001),
            (ClaimReply::Accepted { unchanged: true }, None)
        );
        assert_eq!(
            decide_claim(&mut memory, None, &claim("n4", 4, b"four", 5), 1001).0,
            ClaimReply::NotNewer { stored: 5 }
        );
        assert_eq!(
            decide_claim(&mut memory, None, &claim("n5", 5, b"five", 5), 1001).0,
            ClaimReply::Accepted { unchanged: false }
        );
        let plain = ClaimRequest { nonce: "n6".into(), until: 1300, version: None };
        assert_eq!(
            decide_claim(&mut memory, None, &plain, 1001),
            (ClaimReply::Accepted { unchanged: false }, None)
        );
        assert_eq!(decide_claim(&mut memory, None, &plain, 1002).0, ClaimReply::Replayed);
    }
}

//! Client API keys: where they are read from, how they are digested, and how
//! digests are compared. Only the SHA-256 digest of a key is ever stored or
//! logged; the plaintext exists only in the request that carries it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every key edgeway issues (`sk-ew-` + 43 base62 characters).
pub const KEY_PREFIX: &str = "sk-ew-";

/// The credential headers a request carried, as the platform gave them.
#[derive(Debug, Default, Clone, Copy)]
pub struct CredentialHeaders<'a> {
    /// `Authorization` (OpenAI SDKs: `Bearer <key>`).
    pub authorization: Option<&'a str>,
    /// `x-api-key` (Anthropic SDKs).
    pub x_api_key: Option<&'a str>,
    /// `x-goog-api-key` (Gemini SDKs).
    pub x_goog_api_key: Option<&'a str>,
    /// `?key=` query parameter (Gemini REST).
    pub query_key: Option<&'a str>,
}

/// Finds the presented key, in order of precedence: Bearer, `x-api-key`,
/// `x-goog-api-key`, `?key=`. Empty values count as absent.
pub fn presented_key<'a>(headers: &CredentialHeaders<'a>) -> Option<&'a str> {
    let bearer = headers.authorization.and_then(|value| {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    [bearer, headers.x_api_key, headers.x_goog_api_key, headers.query_key]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|k| !k.is_empty())
}

/// Lower-case hex SHA-256 of the key: the only form in which a key is stored.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time equality of two digests (or any two byte strings of equal
/// length; different lengths compare unequal without leaking where).
pub fn digests_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// KV key under which the record for `digest` is stored.
pub fn kv_key_for_digest(digest: &str) -> String {
    format!("key:{digest}")
}

/// Whether `digest` is well formed (64 lower-case hex characters), so it can be
/// used in a KV key or a Durable Object name without further escaping.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// First characters of a digest, safe to show in logs and dashboards.
pub fn digest_label(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_wins_and_scheme_is_case_insensitive() {
        let h = CredentialHeaders {
            authorization: Some("bearer  sk-ew-one "),
            x_api_key: Some("sk-ew-two"),
            ..Default::default()
        };
        assert_eq!(presented_key(&h), Some("sk-ew-one"));
    }

    #[test]
    fn falls_back_through_the_header_list() {
        let h = CredentialHeaders {
            authorization: Some("Basic abc"),
            x_api_key: Some(""),
            x_goog_api_key: Some("g"),
            query_key: Some("q"),
        };
        assert_eq!(presented_key(&h), Some("g"));
        let h = CredentialHeaders { query_key: Some("q"), ..Default::default() };
        assert_eq!(presented_key(&h), Some("q"));
        assert_eq!(presented_key(&CredentialHeaders::default()), None);
        let h = CredentialHeaders { authorization: Some("Bearer "), ..Default::default() };
        assert_eq!(presented_key(&h), None);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(key_digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(is_valid_digest(&key_digest("x")));
        assert!(!is_valid_digest("ABC"));
        assert!(!is_valid_digest(&"g".repeat(64)));
    }

    #[test]
    fn digest_comparison() {
        let d = key_digest("k");
        assert!(digests_match(&d, &key_digest("k")));
        assert!(!digests_match(&d, &key_digest("j")));
        assert!(!digests_match(&d, &d[..10]));
        assert_eq!(kv_key_for_digest("ab"), "key:ab");
        assert_eq!(digest_label(&d).len(), 12);
    }
}

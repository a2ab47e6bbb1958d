//! Issuing client keys: `sk-ew-` + 43 base62 characters (about 256 bits) drawn
//! from the operating system's random number generator. The plaintext exists
//! only in the response that hands it out; the database keeps its digest.

use edgeway_core::api_key::KEY_PREFIX;

/// Random characters after the prefix.
pub const KEY_RANDOM_CHARS: usize = 43;
/// Characters of the key kept as a display label (`sk-ew-AbCd`).
pub const KEY_LABEL_CHARS: usize = 10;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` uniformly random base62 characters. Bytes at or above 248 (= 4 × 62)
/// are redrawn, so there is no modulo bias.
pub fn random_base62(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if out.len() == n {
                break;
            }
            if b < 248 {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// A new client key.
pub fn generate_key() -> Result<String, getrandom::Error> {
    Ok(format!("{KEY_PREFIX}{}", random_base62(KEY_RANDOM_CHARS)?))
}

/// The non-secret label of a key: its first [`KEY_LABEL_CHARS`] characters.
pub fn key_label(key: &str) -> String {
    key.chars().take(KEY_LABEL_CHARS).collect()
}

/// A new random object id with a type prefix (`key_…`).
pub fn new_id(prefix: &str) -> Result<String, getrandom::Error> {
    Ok(format!("{prefix}_{}", random_base62(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_have_the_documented_shape() {
        let key = generate_key().unwrap();
        assert!(key.starts_with("sk-ew-"));
        assert_eq!(key.len(), 6 + 43);
        assert!(key[6..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(key_label(&key).len(), 10);
        assert!(key.starts_with(&key_label(&key)));
    }

    #[test]
    fn keys_are_distinct_and_use_the_whole_alphabet() {
        let keys: HashSet<String> = (0..200).map(|_| generate_key().unwrap()).collect();
        assert_eq!(keys.len(), 200);
        let seen: HashSet<u8> = keys.iter().flat_map(|k| k.as_bytes()[6..].to_vec()).collect();
        assert_eq!(seen.len(), 62);
    }
}

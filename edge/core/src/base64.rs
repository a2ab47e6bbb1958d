//! Base64 encoding (RFC 4648, standard alphabet with padding): the few lines
//! the gateway needs, instead of a crate in the wasm. Used where an answer
//! carries binary data as text (embeddings with `encoding_format: base64`,
//! written for a client and read from an upstream).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in standard padded base64.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of base64 `text`: either alphabet (standard, or URL-safe `-`
/// and `_`), padding optional. `None` when `text` is not base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let body = text.strip_suffix("==").or_else(|| text.strip_suffix('=')).unwrap_or(text);
    if body.len() % 4 == 1 || (body.len() != text.len() && !text.len().is_multiple_of(4)) {
        return None;
    }
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
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for quad in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in quad {
            acc = (acc << 6) | value(c)?;
        }
        let bits = 6 * quad.len();
        let bytes = (acc << (24 - bits)).to_be_bytes();
        out.extend_from_slice(&bytes[1..1 + bits / 8]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(input.as_bytes()), output);
        }
        assert_eq!(encode(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn decodes_what_it_encodes_in_either_alphabet() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode(&bytes);
            assert_eq!(decode(&text), Some(bytes.clone()), "{text}");
            assert_eq!(decode(text.trim_end_matches('=')), Some(bytes.clone()), "unpadded {text}");
            let url_safe = text.replace('+', "-").replace('/', "_");
            assert_eq!(decode(&url_safe), Some(bytes), "{url_safe}");
        }
        assert_eq!(decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        for bad in ["Z", "Zm9v!", "Zm9=v", "Zg=", "Zm9vY", "===="] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}

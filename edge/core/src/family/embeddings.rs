//! `POST /v1/embeddings`: the request read and checked once at the edge, and
//! the mock's deterministic vectors.
//!
//! The mock's vector for an input is a function of the model and the input
//! only (SHA-256 blocks spread over [-1, 1], scaled to unit length), of the
//! requested `dimensions`, as floats or as base64 of little-endian `f32`s
//! (what the `openai` SDKs ask for by default and decode themselves).

use super::{read_text_inputs, FamilyRequest};
use crate::error::GatewayError;
use crate::translate::json_fields::{invalid, opt_str, opt_u64};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// Largest `dimensions` accepted.
pub const MAX_DIMENSIONS: u64 = 16_384;
/// The mock's dimensions when the request sets none.
pub const MOCK_DEFAULT_DIMENSIONS: usize = 1536;

/// Reads an embeddings request (`model` already read).
pub(super) fn read(model: String, obj: Map<String, Value>) -> Result<FamilyRequest, GatewayError> {
    let inputs = read_text_inputs(&obj, "input", MAX_INPUTS, false)?;
    match opt_str(&obj, "encoding_format", "")? {
        None | Some("float" | "base64") => {}
        Some(_) => {
            return Err(invalid("`encoding_format` must be `float` or `base64`.", "encoding_format"));
        }
    }
    if let Some(d) = opt_u64(&obj, "dimensions", "")? {
        if d == 0 || d > MAX_DIMENSIONS {
            return Err(invalid(
                format!("`dimensions` must be between 1 and {MAX_DIMENSIONS}."),
                "dimensions",
            ));
        }
    }
    opt_str(&obj, "user", "")?;
    Ok(FamilyRequest {
        model,
        stream: false,
        client_wants_usage: false,
        max_output_tokens: Some(0),
        prompt: inputs.prompt_size(),
        body: obj,
    })
}

/// The mock's vector for `input`: unit length, `dims` long.
pub fn mock_vector(model: &str, input: &str, dims: usize) -> Vec<f32> {
    let seed = Sha256::new().chain_update(model.as_bytes()).chain_update([0]).chain_update(input).finalize();
    let mut out = Vec::with_capacity(dims);
    let mut block = 0u32;
    while out.len() < dims {
        let bytes = Sha256::new().chain_update(seed).chain_update(block.to_le_bytes()).finalize();
        for word in bytes.chunks_exact(4) {
            if out.len() == dims {
                break;
            }
            let v = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            out.push((f64::from(v) / f64::from(u32::MAX) * 2.0 - 1.0) as f32);
        }
        block += 1;
    }
    let norm = out.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for v in &mut out {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
    out
}

/// The mock's `list` of embeddings for a request body (already read).
pub(super) fn mock_answer(body: &Map<String, Value>, model: &str, prompt_tokens: u64) -> Vec<u8> {
    let inputs = read_text_inputs(body, "input", MAX_INPUTS, false).unwrap_or_default();
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(MOCK_DEFAULT_DIMENSIONS);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut out = String::with_capacity(inputs.items.len() * dims * 11 + 200);
    out.push_str(r#"{"object":"list","data":["#);
    for (index, input) in inputs.items.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, r#"{{"object":"embedding","index":{index},"embedding":"#);
        let vector = mock_vector(model, input, dims);
        if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            let _ = write!(out, "\"{}\"", crate::base64::encode(&bytes));
        } else {
            out.push('[');
            for (i, v) in vector.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // The shortest text that reads back as the same `f32` (ryu,
                // through serde_json: no float formatting of core's in the wasm).
                out.push_str(&serde_json::to_string(v).unwrap_or_default());
            }
            out.push(']');
        }
        out.push('}');
    }
    let tokens = prompt_tokens.max(1);
    let _ = write!(
        out,
        r#"],"model":{},"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}"#,
        Value::from(model)
    );
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::{read_request, Family};

    fn read_ok(body: &str) -> FamilyRequest {
        read_request(Family::Embeddings, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn requests_are_checked_and_sized() {
        let r = read_ok(r#"{"model":"e","input":["hello world","bye"],"dimensions":8,"vendor":{"x":1}}"#);
        assert_eq!((r.model.as_str(), r.stream, r.max_output_tokens), ("e", false, Some(0)));
        assert_eq!(r.prompt.estimate, 3 + 1);
        assert!(r.body.contains_key("vendor"), "unknown fields pass through");
        for (body, param) in [
            (r#"{"model":"e","input":"x","encoding_format":"int8"}"#, "encoding_format"),
            (r#"{"model":"e","input":"x","dimensions":0}"#, "dimensions"),
            (r#"{"model":"e","input":"x","dimensions":99999}"#, "dimensions"),
            (r#"{"model":"e","input":"x","dimensions":"8"}"#, "dimensions"),
            (r#"{"model":"e","input":"x","user":5}"#, "user"),
            (r#"{"model":"e"}"#, "input"),
        ] {
            let error =
                read_request(Family::Embeddings, body.as_bytes()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
    }

    #[test]
    fn mock_vectors_are_deterministic_unit_vectors_of_the_asked_size() {
        let a = mock_vector("m", "hello", 5);
        assert_eq!(a, mock_vector("m", "hello", 5));
        assert_ne!(a, mock_vector("m", "hello!", 5));
        assert_ne!(a, mock_vector("n", "hello", 5));
        assert_eq!(mock_vector("m", "hello", 3000).len(), 3000);
        let norm: f64 = a.iter().map(|v| f64::from(*v).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }

    #[test]
    fn mock_answers_floats_and_base64() {
        let r = read_ok(r#"{"model":"e","input":["a","b"],"dimensions":4}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&r.body, "up-e", 7)).unwrap_or_default();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "up-e");
        assert_eq!(v["usage"], serde_json::json!({"prompt_tokens": 7, "total_tokens": 7}));
        assert_eq!(v["data"][1]["index"], 1);
        let floats: Vec<f32> = v["data"][0]["embedding"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).map(|f| f as f32).collect())
            .unwrap_or_default();
        assert_eq!(floats, mock_vector("up-e", "a", 4), "floats read back exactly");

        let r = read_ok(r#"{"model":"e","input":"a","dimensions":4,"encoding_format":"base64"}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&r.body, "up-e", 1)).unwrap_or_default();
        let bytes: Vec<u8> = mock_vector("up-e", "a", 4).iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(v["data"][0]["embedding"], crate::base64::encode(&bytes));

        let r = read_ok(r#"{"model":"e","input":[1,2,3]}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&r.body, "up-e", 3)).unwrap_or_default();
        assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(MOCK_DEFAULT_DIMENSIONS));
    }
}

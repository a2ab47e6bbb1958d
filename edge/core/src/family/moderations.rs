//! `POST /v1/moderations`: the request read and checked once at the edge,
//! and the mock's deterministic verdicts.
//!
//! `input` is a string, an array of strings, or an array of typed parts
//! (`{"type": "text", "text": …}`, `{"type": "image_url", "image_url":
//! {"url": …}}`, as `omni-moderation` takes them). Image URLs are passed on,
//! never fetched. The mock flags an input whose text holds one of its
//! category's marker words (so a test can ask for either verdict), and
//! scores every other category low, deterministically.

use super::{read_text_inputs, FamilyRequest};
use crate::error::GatewayError;
use crate::translate::json_fields::invalid;
use crate::translate::{PromptSize, PROMPT_OVERHEAD_TOKENS};
use crate::usage::estimate_tokens;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Most inputs in one request.
pub const MAX_INPUTS: usize = 1024;
/// What an image part weighs in the prompt estimate (tokens).
pub const IMAGE_PART_TOKENS: u64 = 256;

/// The categories of OpenAI's moderation model, each with the mock's
/// marker word.
pub const CATEGORIES: [(&str, &str); 11] = [
    ("harassment", "harass"),
    ("harassment/threatening", "threaten"),
    ("hate", "hateful"),
    ("hate/threatening", "exterminate"),
    ("illicit", "contraband"),
    ("illicit/violent", "bomb"),
    ("self-harm", "selfharm"),
    ("self-harm/intent", "suicidal"),
    ("sexual", "explicit"),
    ("sexual/minors", "underage"),
    ("violence", "kill"),
];

/// Reads a moderations request (`model` already read).
pub(super) fn read(model: String, obj: Map<String, Value>) -> Result<FamilyRequest, GatewayError> {
    let prompt = match obj.get("input") {
        Some(Value::Array(items)) if items.iter().any(Value::is_object) => typed_parts(items)?,
        _ => read_text_inputs(&obj, "input", MAX_INPUTS, true)?.prompt_size(),
    };
    Ok(FamilyRequest {
        model,
        stream: false,
        client_wants_usage: false,
        max_output_tokens: Some(0),
        prompt,
        body: obj,
    })
}

/// The size of an array of typed parts.
fn typed_parts(items: &[Value]) -> Result<PromptSize, GatewayError> {
    if items.len() > MAX_INPUTS {
        return Err(invalid(format!("`input` holds more than {MAX_INPUTS} inputs."), "input"));
    }
    let (mut text_bytes, mut images) = (0usize, 0u64);
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        match (item.get("type").and_then(Value::as_str), item) {
            (Some("text"), _) => match item.get("text") {
                Some(Value::String(text)) => text_bytes += text.len(),
                _ => return Err(invalid(format!("`{param}.text` must be a string."), &param)),
            },
            (Some("image_url"), _) => match item.get("image_url").and_then(|u| u.get("url")) {
                Some(Value::String(url)) if !url.is_empty() => images += 1,
                _ => return Err(invalid(format!("`{param}.image_url.url` must be a URL."), &param)),
            },
            _ => {
                return Err(invalid(
                    format!("`{param}` must be a string or a part of type `text` or `image_url`."),
                    &param,
                ))
            }
        }
    }
    let image_tokens = images.saturating_mul(IMAGE_PART_TOKENS);
    Ok(PromptSize {
        estimate: estimate_tokens(text_bytes).saturating_add(image_tokens),
        upper_bound: (text_bytes as u64).saturating_add(image_tokens).saturating_add(PROMPT_OVERHEAD_TOKENS),
    })
}

/// The texts to judge: one per input string, or one for an array of parts.
fn texts(body: &Map<String, Value>) -> Vec<String> {
    match body.get("input") {
        Some(Value::Array(items)) if items.iter().any(Value::is_object) => {
            let text: Vec<&str> =
                items.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            vec![text.join(" ")]
        }
        _ => read_text_inputs(body, "input", MAX_INPUTS, true).map(|i| i.items).unwrap_or_default(),
    }
}

/// The mock's verdicts for a request body (already read).
pub(super) fn mock_answer(body: &Map<String, Value>, model: &str) -> Vec<u8> {
    let inputs = texts(body);
    let results: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let lower = text.to_lowercase();
            let digest = Sha256::digest(text.as_bytes());
            let mut categories = Map::new();
            let mut scores = Map::new();
            let mut flagged = false;
            for (i, (name, marker)) in CATEGORIES.iter().enumerate() {
                let hit = lower.contains(marker);
                flagged |= hit;
                // Low scores in [0, 0.01) for the rest, from the text's digest.
                let low = f64::from(digest[i % digest.len()]) / 25_600.0;
                categories.insert(name.to_string(), Value::Bool(hit));
                scores.insert(name.to_string(), json!(if hit { 0.99 } else { low }));
            }
            json!({"flagged": flagged, "categories": categories, "category_scores": scores})
        })
        .collect();
    let id = crate::mock_provider::short_hash(&inputs.join("\u{0}"));
    json!({"id": format!("modr-{id}"), "model": model, "results": results}).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::{read_request, Family};

    fn read_ok(body: &str) -> FamilyRequest {
        read_request(Family::Moderations, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn every_input_shape_is_read_and_sized() {
        let r = read_ok(r#"{"model":"omni-moderation-latest","input":"hello there"}"#);
        assert_eq!((r.stream, r.max_output_tokens), (false, Some(0)));
        assert_eq!(r.prompt.estimate, estimate_tokens(11));
        let r = read_ok(r#"{"model":"m","input":["a","bb"]}"#);
        assert_eq!(r.prompt.estimate, estimate_tokens(3));
        let r = read_ok(
            r#"{"model":"m","input":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}"#,
        );
        assert_eq!(r.prompt.estimate, estimate_tokens(4) + IMAGE_PART_TOKENS);
        for (body, param) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":7}"#, "input"),
            (r#"{"model":"m","input":[{"type":"audio"}]}"#, "input[0]"),
            (r#"{"model":"m","input":[{"type":"text","text":5}]}"#, "input[0]"),
            (r#"{"model":"m","input":[{"type":"image_url","image_url":{}}]}"#, "input[0]"),
        ] {
            let error =
                read_request(Family::Moderations, body.as_bytes()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
    }

    #[test]
    fn the_mock_flags_its_marker_words_and_scores_the_rest_low() {
        let r = read_ok(r#"{"model":"m","input":["a sunny day","I will KILL the lights"]}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&r.body, "up-mod")).unwrap();
        assert_eq!(v["model"], "up-mod");
        assert!(v["id"].as_str().is_some_and(|id| id.starts_with("modr-")));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["flagged"], false);
        assert_eq!(results[1]["flagged"], true);
        assert_eq!(results[1]["categories"]["violence"], true);
        assert_eq!(results[1]["category_scores"]["violence"], 0.99);
        assert_eq!(results[1]["categories"]["hate"], false);
        for (name, _) in CATEGORIES {
            assert!(results[0]["category_scores"][name].as_f64().is_some_and(|s| (0.0..0.01).contains(&s)));
        }
        assert_eq!(mock_answer(&r.body, "up-mod"), mock_answer(&r.body, "up-mod"), "deterministic");
        let parts = read_ok(r#"{"model":"m","input":[{"type":"text","text":"a bomb"}]}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&parts.body, "m")).unwrap();
        assert_eq!(v["results"][0]["categories"]["illicit/violent"], true);
    }
}

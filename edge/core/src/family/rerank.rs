//! `POST /v1/rerank` (also `/v2/rerank`, where Cohere's clients send it):
//! the request read and checked once at the edge, and the mock's ranking.
//!
//! The request is the shape Cohere, Jina, Voyage and the OpenAI-compatible
//! servers that rerank (vLLM, SiliconFlow) share: `query`, `documents`
//! (strings, or objects with a `text`), `top_n`, `return_documents`. What
//! it weighs is the query once per document plus the documents: that is
//! what a cross-encoder reads. The mock ranks by the share of the query's
//! words a document holds, deterministically, and answers in the common
//! response shape (`results` of `index` and `relevance_score`, each with its
//! `document` when asked, `usage` and Cohere's `meta.billed_units`).

use super::FamilyRequest;
use crate::error::GatewayError;
use crate::translate::json_fields::{invalid, opt_bool, opt_u64};
use crate::translate::{PromptSize, PROMPT_OVERHEAD_TOKENS};
use crate::usage::estimate_tokens;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// Most documents in one request (Cohere's limit).
pub const MAX_DOCUMENTS: usize = 1000;

/// Reads a rerank request (`model` already read).
pub(super) fn read(model: String, obj: Map<String, Value>) -> Result<FamilyRequest, GatewayError> {
    let query = match obj.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.len(),
        Some(Value::String(_)) => return Err(invalid("`query` must not be empty.", "query")),
        None | Some(Value::Null) => return Err(invalid("Missing required parameter: `query`.", "query")),
        Some(_) => return Err(invalid("`query` must be a string.", "query")),
    };
    let documents = documents(&obj)?;
    if let Some(top_n) = opt_u64(&obj, "top_n", "")? {
        if top_n == 0 {
            return Err(invalid("`top_n` must be at least 1.", "top_n"));
        }
    }
    opt_bool(&obj, "return_documents", "")?;
    let pairs = documents.len() as u64;
    let document_bytes: usize = documents.iter().map(|d| d.len()).sum();
    let bytes = (query as u64).saturating_mul(pairs).saturating_add(document_bytes as u64);
    let prompt = PromptSize {
        estimate: estimate_tokens(usize::try_from(bytes).unwrap_or(usize::MAX)),
        upper_bound: bytes.saturating_add(PROMPT_OVERHEAD_TOKENS),
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

/// The documents' texts, checked.
fn documents(obj: &Map<String, Value>) -> Result<Vec<&str>, GatewayError> {
    let items = match obj.get("documents") {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid("`documents` must not be an empty array.", "documents"));
        }
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(invalid("Missing required parameter: `documents`.", "documents"));
        }
        Some(_) => return Err(invalid("`documents` must be an array.", "documents")),
    };
    if items.len() > MAX_DOCUMENTS {
        return Err(invalid(format!("`documents` holds more than {MAX_DOCUMENTS} documents."), "documents"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) => Ok(text.as_str()),
            Value::Object(doc) => match doc.get("text") {
                Some(Value::String(text)) => Ok(text.as_str()),
                _ => Err(invalid(
                    format!("`documents[{i}].text` must be a string."),
                    &format!("documents[{i}]"),
                )),
            },
            _ => Err(invalid(
                format!("`documents[{i}]` must be a string or an object with a `text`."),
                &format!("documents[{i}]"),
            )),
        })
        .collect()
}

/// Lower-case words of `text`.
fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The mock's ranking for a request body (already read), with the gateway's
/// estimate of the prompt as its reported tokens.
pub(super) fn mock_answer(body: &Map<String, Value>, model: &str, prompt_tokens: u64) -> Vec<u8> {
    let query = words(body.get("query").and_then(Value::as_str).unwrap_or_default());
    let documents = documents(body).unwrap_or_default();
    let mut scored: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(index, doc)| {
            let doc_words = words(doc);
            let shared = query.iter().filter(|w| doc_words.contains(*w)).count();
            // The share of the query's words found, with a small tie-break
            // for shorter documents; in [0, 1].
            let share = if query.is_empty() { 0.0 } else { shared as f64 / query.len() as f64 };
            let brevity = 1.0 / (1.0 + doc_words.len() as f64);
            (index, share * 0.9 + brevity * 0.1)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top_n = body.get("top_n").and_then(Value::as_u64).map_or(scored.len(), |n| n as usize);
    let return_documents = body.get("return_documents").and_then(Value::as_bool).unwrap_or(false);
    let results: Vec<Value> = scored
        .into_iter()
        .take(top_n)
        .map(|(index, score)| {
            let mut result = json!({"index": index, "relevance_score": (score * 1e6).round() / 1e6});
            if return_documents {
                result["document"] = json!({"text": documents[index]});
            }
            result
        })
        .collect();
    let tokens = prompt_tokens.max(1);
    let id = crate::mock_provider::short_hash(&documents.join("\u{0}"));
    json!({
        "id": format!("rerank-{id}"),
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "meta": {"billed_units": {"search_units": 1}},
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::{read_request, Family};

    fn read_ok(body: &str) -> FamilyRequest {
        read_request(Family::Rerank, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn requests_are_checked_and_weighed_as_pairs() {
        let r =
            read_ok(r#"{"model":"rr","query":"abcd","documents":["12345678",{"text":"1234"}],"top_n":1}"#);
        assert_eq!(r.max_output_tokens, Some(0));
        assert_eq!(
            r.prompt.estimate,
            estimate_tokens(4 * 2 + 12),
            "the query once per document, and the documents"
        );
        for (body, param) in [
            (r#"{"model":"rr","documents":["a"]}"#, "query"),
            (r#"{"model":"rr","query":" ","documents":["a"]}"#, "query"),
            (r#"{"model":"rr","query":5,"documents":["a"]}"#, "query"),
            (r#"{"model":"rr","query":"q"}"#, "documents"),
            (r#"{"model":"rr","query":"q","documents":[]}"#, "documents"),
            (r#"{"model":"rr","query":"q","documents":"a"}"#, "documents"),
            (r#"{"model":"rr","query":"q","documents":["a",7]}"#, "documents[1]"),
            (r#"{"model":"rr","query":"q","documents":[{"title":"x"}]}"#, "documents[0]"),
            (r#"{"model":"rr","query":"q","documents":["a"],"top_n":0}"#, "top_n"),
            (r#"{"model":"rr","query":"q","documents":["a"],"return_documents":"yes"}"#, "return_documents"),
        ] {
            let error = read_request(Family::Rerank, body.as_bytes()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
    }

    #[test]
    fn the_mock_ranks_by_shared_words_and_honours_top_n_and_return_documents() {
        let r = read_ok(
            r#"{"model":"rr","query":"capital of France","documents":["Berlin is in Germany","Paris is the capital of France","France"],"top_n":2,"return_documents":true}"#,
        );
        let v: Value = serde_json::from_slice(&mock_answer(&r.body, "up-rr", 42)).unwrap();
        assert_eq!(v["model"], "up-rr");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "top_n");
        assert_eq!(results[0]["index"], 1);
        assert_eq!(results[0]["document"]["text"], "Paris is the capital of France");
        assert_eq!(results[1]["index"], 2);
        assert!(results[0]["relevance_score"].as_f64() > results[1]["relevance_score"].as_f64());
        assert_eq!(v["usage"]["total_tokens"], 42);
        assert_eq!(v["meta"]["billed_units"]["search_units"], 1);
        let plain = read_ok(r#"{"model":"rr","query":"x","documents":["x","y"]}"#);
        let v: Value = serde_json::from_slice(&mock_answer(&plain.body, "m", 1)).unwrap();
        assert_eq!(v["results"].as_array().map(Vec::len), Some(2), "every document without top_n");
        assert!(v["results"][0].get("document").is_none(), "no documents unless asked");
    }
}

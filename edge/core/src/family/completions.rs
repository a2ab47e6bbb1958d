//! `POST /v1/completions` (legacy text completions): the request read and
//! checked once at the edge, and the mock's answer, whole or streamed.
//!
//! The API's documented default output limit (16 tokens) is made explicit
//! in the body passed on, so the limit the quota reservation counts is the
//! one every upstream applies; `n` and `best_of` multiply it.

use super::{read_text_inputs, FamilyRequest, MockAnswer};
use crate::error::GatewayError;
use crate::mock_provider::{short_hash, truncate, usage};
use crate::translate::json_fields::{invalid, opt_bool, opt_i64, opt_number, opt_object, opt_str, opt_u64};
use crate::translate::MAX_OUTPUT_TOKENS_ACCEPTED;
use serde_json::{json, Map, Value};

/// `max_tokens` when the request sets none (the API's documented default).
pub const DEFAULT_MAX_TOKENS: u64 = 16;
/// Most prompts in one request.
pub const MAX_PROMPTS: usize = 2048;
/// Largest `n` / `best_of` accepted.
pub const MAX_CHOICES: u64 = 128;

/// Reads a completions request (`model` already read).
pub(super) fn read(model: String, mut obj: Map<String, Value>) -> Result<FamilyRequest, GatewayError> {
    let prompts = read_text_inputs(&obj, "prompt", MAX_PROMPTS, true)?;
    let stream = opt_bool(&obj, "stream", "")?.unwrap_or(false);
    let client_wants_usage = match opt_object(&obj, "stream_options", "")? {
        Some(options) => opt_bool(options, "include_usage", "stream_options")?.unwrap_or(false),
        None => false,
    };
    for key in ["temperature", "top_p", "presence_penalty", "frequency_penalty"] {
        opt_number(&obj, key, "")?;
    }
    opt_bool(&obj, "echo", "")?;
    for key in ["suffix", "user"] {
        opt_str(&obj, key, "")?;
    }
    opt_i64(&obj, "seed", "")?;
    opt_u64(&obj, "logprobs", "")?;
    opt_object(&obj, "logit_bias", "")?;
    match obj.get("stop") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {}
        Some(_) => return Err(invalid("`stop` must be a string or an array of strings.", "stop")),
    }
    let mut choices = 1u64;
    for key in ["n", "best_of"] {
        if let Some(n) = opt_u64(&obj, key, "")? {
            if n == 0 || n > MAX_CHOICES {
                return Err(invalid(format!("`{key}` must be between 1 and {MAX_CHOICES}."), key));
            }
            choices = choices.max(n);
        }
    }
    let max_tokens = match opt_u64(&obj, "max_tokens", "")? {
        Some(n) if n > MAX_OUTPUT_TOKENS_ACCEPTED => {
            return Err(invalid(
                format!("`max_tokens` is too large: at most {MAX_OUTPUT_TOKENS_ACCEPTED} tokens."),
                "max_tokens",
            ));
        }
        Some(n) => n,
        None => {
            obj.insert("max_tokens".into(), Value::from(DEFAULT_MAX_TOKENS));
            DEFAULT_MAX_TOKENS
        }
    };
    Ok(FamilyRequest {
        model,
        stream,
        client_wants_usage,
        max_output_tokens: Some(max_tokens.saturating_mul(choices)),
        prompt: prompts.prompt_size(),
        body: obj,
    })
}

/// The mock's completion: a greeting quoting the (first) prompt, one token
/// per word, cut at `max_tokens` (finish reason `length`).
pub(super) fn mock_answer(
    body: &Map<String, Value>,
    model: &str,
    created: i64,
    prompt_tokens: u64,
) -> MockAnswer {
    let prompt = read_text_inputs(body, "prompt", usize::MAX, true)
        .ok()
        .and_then(|p| p.items.into_iter().next())
        .unwrap_or_default();
    let id = format!("cmpl-mock-{}", short_hash(&prompt));
    let text = format!("Hello from the edgeway mock provider. You said: \"{}\"", truncate(&prompt, 80));
    let mut pieces: Vec<String> = text
        .split(' ')
        .enumerate()
        .map(|(i, w)| if i == 0 { w.to_string() } else { format!(" {w}") })
        .collect();
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_TOKENS);
    let mut finish = "stop";
    if pieces.len() as u64 > max_tokens {
        pieces.truncate(usize::try_from(max_tokens).unwrap_or(usize::MAX));
        finish = "length";
    }
    let usage = usage(prompt_tokens.max(1), pieces.len() as u64);
    let chunk = |text: &str, finish: Option<&str>| {
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
    };
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut whole = chunk(&pieces.concat(), Some(finish));
        whole["usage"] = json!(usage);
        return MockAnswer::Whole(whole.to_string().into_bytes());
    }
    let mut payloads: Vec<String> = pieces.iter().map(|p| chunk(p, None).to_string()).collect();
    payloads.push(chunk("", Some(finish)).to_string());
    payloads.push(
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": [], "usage": usage})
        .to_string(),
    );
    payloads.push("[DONE]".into());
    MockAnswer::Stream(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::{read_request, Family};

    fn read_ok(body: &str) -> FamilyRequest {
        read_request(Family::Completions, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn requests_are_checked_and_the_default_limit_made_explicit() {
        let r = read_ok(
            r#"{"model":"c","prompt":"Say hi","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert!(r.stream && r.client_wants_usage);
        assert_eq!(r.max_output_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(r.body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(r.prompt.estimate, 2);
        let r = read_ok(r#"{"model":"c","prompt":["a",""],"max_tokens":10,"n":3,"best_of":4}"#);
        assert_eq!(r.max_output_tokens, Some(40), "best_of candidates are all generated");
        for (body, param) in [
            (r#"{"model":"c"}"#, "prompt"),
            (r#"{"model":"c","prompt":"x","stream":"yes"}"#, "stream"),
            (
                r#"{"model":"c","prompt":"x","stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"model":"c","prompt":"x","max_tokens":-1}"#, "max_tokens"),
            (r#"{"model":"c","prompt":"x","max_tokens":9223372036854775807}"#, "max_tokens"),
            (r#"{"model":"c","prompt":"x","n":0}"#, "n"),
            (r#"{"model":"c","prompt":"x","temperature":"hot"}"#, "temperature"),
            (r#"{"model":"c","prompt":"x","stop":[1]}"#, "stop"),
            (r#"{"model":"c","prompt":"x","echo":"no"}"#, "echo"),
        ] {
            let error =
                read_request(Family::Completions, body.as_bytes()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
    }

    #[test]
    fn mock_whole_and_streamed_answers_agree() {
        let r = read_ok(r#"{"model":"c","prompt":"What is edgeway?","max_tokens":100}"#);
        let MockAnswer::Whole(body) = mock_answer(&r.body, "up-c", 5, 4) else { panic!("whole") };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = v["choices"][0]["text"].as_str().unwrap_or_default().to_string();
        assert_eq!(text, "Hello from the edgeway mock provider. You said: \"What is edgeway?\"");
        assert_eq!(
            (v["object"].as_str(), v["choices"][0]["finish_reason"].as_str()),
            (Some("text_completion"), Some("stop"))
        );
        assert_eq!(v["usage"]["completion_tokens"], 11);
        assert_eq!(v["usage"]["prompt_tokens"], 4);

        let mut streamed = r.body.clone();
        streamed.insert("stream".into(), Value::Bool(true));
        let MockAnswer::Stream(payloads) = mock_answer(&streamed, "up-c", 5, 4) else { panic!("stream") };
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = payloads.iter().filter_map(|p| serde_json::from_str(p).ok()).collect();
        let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(joined, text);
        assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 11, "usage-only chunk last");

        let short = read_ok(r#"{"model":"c","prompt":"What is edgeway?"}"#);
        let MockAnswer::Whole(body) = mock_answer(&short.body, "up-c", 5, 4) else { panic!("whole") };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "11 words fit the default 16");
        let tiny = read_ok(r#"{"model":"c","prompt":"What is edgeway?","max_tokens":2}"#);
        let MockAnswer::Whole(body) = mock_answer(&tiny.body, "up-c", 5, 4) else { panic!("whole") };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            (v["choices"][0]["text"].as_str(), v["choices"][0]["finish_reason"].as_str()),
            (Some("Hello from"), Some("length"))
        );
    }
}

//! `POST /v1/embeddings`: the request read and checked once at the edge, the
//! mock's deterministic vectors, and embeddings across dialects.
//!
//! An OpenAI-format request to an OpenAI-format upstream is passed through.
//! Every other pair (a Gemini client, `:embedContent` /
//! `:batchEmbedContents`, or a Gemini channel) goes through
//! [`EmbedRequest`]: the inputs and options in no dialect, built for the
//! upstream ([`crate::translate::gemini::embeddings`] for Gemini; the
//! OpenAI-format body otherwise), and the upstream's vectors ([`Embedded`])
//! rendered in the shape the client asked for ([`EmbedAnswer`]).
//!
//! The mock's vector for an input is a function of the model and the input
//! only (SHA-256 blocks spread over [-1, 1], scaled to unit length), of the
//! requested `dimensions`, as floats or as base64 of little-endian `f32`s
//! (what the `openai` SDKs ask for by default and decode themselves).

use super::{read_text_inputs, FamilyRequest, TextInputs};
use crate::error::GatewayError;
use crate::translate::gemini::embeddings as gemini;
use crate::translate::json_fields::{invalid, opt_str, opt_u64, parse_object};
use crate::translate::UpstreamDialect;
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

/// Reads a Gemini client's `:embedContent` or `:batchEmbedContents` body
/// (the body's shape says which: `requests` is a batch) for `path_model`:
/// the request as an OpenAI-format body (inputs, `dimensions`), checked as
/// one, and what else it carries.
pub fn read_gemini(body: &[u8], path_model: &str) -> Result<(FamilyRequest, EmbedOptions), GatewayError> {
    let value = Value::Object(parse_object(body)?);
    let batch = value.get("requests").is_some();
    let read = gemini::read_client_request(&value, path_model, batch)?;
    let mut obj = Map::new();
    obj.insert("model".into(), Value::from(path_model));
    obj.insert("input".into(), Value::from(read.texts));
    if let Some(d) = read.dimensions {
        obj.insert("dimensions".into(), Value::from(d));
    }
    let param = |p: &str| if batch { "requests".to_string() } else { p.to_string() };
    let request = self::read(path_model.to_string(), obj).map_err(|error| match error {
        // The checks of the OpenAI-format body, named in the client's terms.
        GatewayError::InvalidRequest { message, param: Some(p) } if p.starts_with("input") => {
            GatewayError::InvalidRequest {
                message: message.replace("`input`", "`requests`"),
                param: Some(param("content")),
            }
        }
        GatewayError::InvalidRequest { param: Some(p), .. } if p == "dimensions" => {
            GatewayError::InvalidRequest {
                message: format!("`outputDimensionality` must be between 1 and {MAX_DIMENSIONS}."),
                param: Some("outputDimensionality".into()),
            }
        }
        other => other,
    })?;
    Ok((request, read.options))
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
    let base64 = asks_base64(body);
    let vectors: Vec<Vec<f32>> = inputs.items.iter().map(|input| mock_vector(model, input, dims)).collect();
    openai_list(&vectors, base64, model, prompt_tokens.max(1))
}

/// Whether an OpenAI-format body asks for base64 vectors.
pub fn asks_base64(body: &Map<String, Value>) -> bool {
    body.get("encoding_format").and_then(Value::as_str) == Some("base64")
}

/// Most inputs in one request to a Gemini upstream (its
/// `batchEmbedContents` refuses more: "at most 100 requests can be in one batch").
pub const MAX_GEMINI_INPUTS: usize = 100;

/// The shape of the answer the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedAnswer {
    /// An OpenAI `list`, vectors as floats or as base64 of little-endian `f32`s.
    OpenAi { base64: bool },
    /// Gemini `:embedContent`: `{"embedding": {"values": […]}}`.
    GeminiOne,
    /// Gemini `:batchEmbedContents`: `{"embeddings": [{"values": […]}, …]}`.
    GeminiBatch,
}

/// What a request not in OpenAI format carries beyond its OpenAI-format
/// body (its inputs and `dimensions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOptions {
    pub answer: EmbedAnswer,
    /// Gemini's `taskType` (one per request).
    pub task_type: Option<String>,
    /// Gemini's `title` of each input (`RETRIEVAL_DOCUMENT`); empty if none.
    pub titles: Vec<Option<String>>,
}

impl EmbedOptions {
    /// The parameters an OpenAI-format upstream has no field for (named in
    /// `x-edgeway-dropped-params`).
    pub fn dropped_for_openai(&self) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        if self.task_type.is_some() {
            dropped.push("taskType");
        }
        if self.titles.iter().any(Option::is_some) {
            dropped.push("title");
        }
        dropped
    }
}

/// An embeddings request for a translation to a Gemini upstream: its inputs
/// and options.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub inputs: TextInputs,
    pub dimensions: Option<u64>,
    pub task_type: Option<String>,
    pub titles: Vec<Option<String>>,
}

impl EmbedRequest {
    /// The request in `body` (OpenAI format, already read), with the options
    /// of a client of another dialect (`None`: an OpenAI-format client).
    pub fn new(body: &Map<String, Value>, options: Option<&EmbedOptions>) -> Self {
        Self {
            inputs: read_text_inputs(body, "input", MAX_INPUTS, false).unwrap_or_default(),
            dimensions: body.get("dimensions").and_then(Value::as_u64),
            task_type: options.and_then(|o| o.task_type.clone()),
            titles: options.map(|o| o.titles.clone()).unwrap_or_default(),
        }
    }

    /// The upstream call for a Gemini upstream: path (query included) and body.
    pub fn gemini_call(&self, upstream_model: &str) -> Result<(String, Vec<u8>), GatewayError> {
        if self.inputs.token_ids > 0 {
            return Err(invalid(
                "Token-id inputs can only be sent to OpenAI-format upstreams; this model's channel is Gemini.",
                "input",
            ));
        }
        if self.inputs.items.len() > MAX_GEMINI_INPUTS {
            return Err(invalid(
                format!("A Gemini channel takes at most {MAX_GEMINI_INPUTS} inputs in one request."),
                "input",
            ));
        }
        Ok(gemini::upstream_call(self, upstream_model))
    }
}

/// The vectors an upstream answered, in input order, and the prompt tokens
/// it reported (`None`: it reported none, and the estimate is billed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: Option<u64>,
}

/// Reads an upstream's answer in `dialect`. An answer that is not one is
/// the upstream's failure ([`GatewayError::UpstreamUnavailable`]).
pub fn parse_upstream(dialect: UpstreamDialect, body: &[u8]) -> Result<Embedded, GatewayError> {
    match dialect {
        UpstreamDialect::Gemini => gemini::parse_upstream(body),
        UpstreamDialect::OpenAiChat | UpstreamDialect::Anthropic => parse_openai_list(body),
    }
}

/// The client's answer: `embedded` in the shape `answer`, from `model`,
/// billed `prompt_tokens`.
pub fn render_answer(answer: EmbedAnswer, embedded: &Embedded, model: &str, prompt_tokens: u64) -> Vec<u8> {
    match answer {
        EmbedAnswer::OpenAi { base64 } => openai_list(&embedded.vectors, base64, model, prompt_tokens),
        EmbedAnswer::GeminiOne | EmbedAnswer::GeminiBatch => {
            gemini::client_answer(answer == EmbedAnswer::GeminiBatch, &embedded.vectors, prompt_tokens)
        }
    }
}

/// An OpenAI `list` answer (`data[i].embedding`: floats, or base64 of
/// little-endian `f32`s).
fn parse_openai_list(body: &[u8]) -> Result<Embedded, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    let data = value.get("data").and_then(Value::as_array).ok_or(GatewayError::UpstreamUnavailable)?;
    let mut indexed = Vec::with_capacity(data.len());
    for (position, item) in data.iter().enumerate() {
        let index = item.get("index").and_then(Value::as_u64).map_or(position, |i| i as usize);
        let vector = match item.get("embedding") {
            Some(Value::Array(values)) => values.iter().map(|v| v.as_f64().map(|f| f as f32)).collect(),
            Some(Value::String(text)) => {
                crate::base64::decode(text).filter(|b| b.len().is_multiple_of(4)).map(|bytes| {
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                })
            }
            _ => None,
        };
        indexed.push((index, vector.ok_or(GatewayError::UpstreamUnavailable)?));
    }
    indexed.sort_by_key(|(index, _)| *index);
    Ok(Embedded {
        vectors: indexed.into_iter().map(|(_, v)| v).collect(),
        prompt_tokens: value.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
    })
}

/// Writes `v` as the shortest text that reads back as the same `f32` (ryu,
/// through serde_json: no float formatting of core's in the wasm).
pub(crate) fn push_f32(out: &mut String, v: f32) {
    match serde_json::to_string(&v) {
        // A non-finite value has no JSON form; no model answers one.
        Ok(text) if v.is_finite() => out.push_str(&text),
        _ => out.push('0'),
    }
}

/// An OpenAI `list` of `vectors`.
fn openai_list(vectors: &[Vec<f32>], base64: bool, model: &str, tokens: u64) -> Vec<u8> {
    let dims = vectors.first().map_or(0, Vec::len);
    let mut out = String::with_capacity(vectors.len() * (dims * 11 + 48) + 200);
    out.push_str(r#"{"object":"list","data":["#);
    for (index, vector) in vectors.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, r#"{{"object":"embedding","index":{index},"embedding":"#);
        if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            let _ = write!(out, "\"{}\"", crate::base64::encode(&bytes));
        } else {
            out.push('[');
            for (i, v) in vector.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_f32(&mut out, *v);
            }
            out.push(']');
        }
        out.push('}');
    }
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
    fn a_gemini_clients_request_reads_into_an_openai_body() {
        let (read, options) = read_gemini(
            br#"{"requests":[{"model":"models/e","content":{"parts":[{"text":"hello world"}]},"title":"T","taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":8},
                             {"content":{"parts":[{"text":"bye"}]}}]}"#,
            "e",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            Value::Object(read.body.clone()),
            serde_json::json!({"model": "e", "input": ["hello world", "bye"], "dimensions": 8})
        );
        assert_eq!(read.prompt.estimate, 3 + 1, "sized as the same OpenAI request");
        assert_eq!(options.answer, EmbedAnswer::GeminiBatch);
        assert_eq!(options.dropped_for_openai(), ["taskType", "title"]);
        let (one, options) =
            read_gemini(br#"{"content":{"parts":[{"text":"x"}]}}"#, "e").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (one.body["input"].clone(), options.answer),
            (serde_json::json!(["x"]), EmbedAnswer::GeminiOne)
        );
        assert!(options.dropped_for_openai().is_empty());
        for (body, param) in [
            (
                &br#"{"content":{"parts":[{"text":"x"}]},"outputDimensionality":99999}"#[..],
                "outputDimensionality",
            ),
            (br#"[1]"#, ""),
        ] {
            let error = read_gemini(body, "e").err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400);
            assert_eq!(
                error.to_json(crate::error::Dialect::OpenAi)["error"]["param"].as_str().unwrap_or(""),
                param
            );
        }
    }

    #[test]
    fn a_gemini_upstream_takes_text_inputs_up_to_its_batch_limit() {
        let req = |input: Value| {
            let read = read_ok(&serde_json::json!({"model": "e", "input": input}).to_string());
            EmbedRequest::new(&read.body, None)
        };
        assert!(req(serde_json::json!(["a"])).gemini_call("m").is_ok());
        let tokens =
            req(serde_json::json!([[1, 2]])).gemini_call("m").err().unwrap_or(GatewayError::Internal);
        assert_eq!(tokens.to_json(crate::error::Dialect::OpenAi)["error"]["param"], "input");
        let many: Vec<String> = (0..=MAX_GEMINI_INPUTS).map(|i| format!("t{i}")).collect();
        assert_eq!(req(serde_json::json!(many)).gemini_call("m").err().map(|e| e.status()), Some(400));
        assert_eq!(
            req(serde_json::json!(many[1..])).gemini_call("m").map(|(path, _)| path).ok().as_deref(),
            Some("/models/m:batchEmbedContents")
        );
    }

    #[test]
    fn openai_lists_are_read_in_index_order_floats_or_base64() {
        let b64 =
            crate::base64::encode(&[0.5f32, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        let body = format!(
            r#"{{"object":"list","data":[{{"index":1,"embedding":"{b64}"}},{{"index":0,"embedding":[0.25,0.125]}}],"usage":{{"prompt_tokens":6}}}}"#
        );
        let read = parse_upstream(UpstreamDialect::OpenAiChat, body.as_bytes()).unwrap_or_default();
        assert_eq!(
            read,
            Embedded { vectors: vec![vec![0.25, 0.125], vec![0.5, -1.0]], prompt_tokens: Some(6) }
        );
        for bad in [
            r#"{}"#,
            r#"{"data":[{"embedding":"!!"}]}"#,
            r#"{"data":[{"embedding":"AAA="}]}"#,
            r#"{"data":[{"embedding":{}}]}"#,
            "x",
        ] {
            assert!(
                matches!(
                    parse_upstream(UpstreamDialect::OpenAiChat, bad.as_bytes()),
                    Err(GatewayError::UpstreamUnavailable)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_render_in_the_shape_asked_for() {
        let embedded = Embedded { vectors: vec![vec![0.1, 0.2], vec![-0.5, 1.0]], prompt_tokens: None };
        let list: Value = serde_json::from_slice(&render_answer(
            EmbedAnswer::OpenAi { base64: false },
            &embedded,
            "pub",
            5,
        ))
        .unwrap_or_default();
        assert_eq!(list["data"][1]["embedding"], serde_json::json!([-0.5, 1.0]));
        assert_eq!(
            (list["model"].clone(), list["usage"]["prompt_tokens"].clone()),
            (Value::from("pub"), Value::from(5))
        );
        let b64: Value =
            serde_json::from_slice(&render_answer(EmbedAnswer::OpenAi { base64: true }, &embedded, "pub", 5))
                .unwrap_or_default();
        let back =
            parse_upstream(UpstreamDialect::OpenAiChat, b64.to_string().as_bytes()).unwrap_or_default();
        assert_eq!(back.vectors, embedded.vectors, "base64 carries the f32s exactly");
        let batch: Value =
            serde_json::from_slice(&render_answer(EmbedAnswer::GeminiBatch, &embedded, "pub", 5))
                .unwrap_or_default();
        assert_eq!(batch["embeddings"][0]["values"], serde_json::json!([0.1, 0.2]));
        let one: Value = serde_json::from_slice(&render_answer(EmbedAnswer::GeminiOne, &embedded, "pub", 5))
            .unwrap_or_default();
        assert_eq!(one["embedding"]["values"], serde_json::json!([0.1, 0.2]));
        assert_eq!(one["usageMetadata"]["promptTokenCount"], 5);
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

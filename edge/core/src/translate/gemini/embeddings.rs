//! Gemini embeddings, both as the client's dialect (`:embedContent`,
//! `:batchEmbedContents`) and as an upstream's (`:batchEmbedContents`, which
//! takes one input or many), read and written as the private typed shapes
//! below. Only text parts are embedded; one `taskType` and one
//! `outputDimensionality` per request (the other dialects have one field for
//! each), a `title` per input.

use super::super::client_body;
use super::super::json_fields::{invalid, to_bytes};
use crate::error::GatewayError;
use crate::family::embeddings::{push_f32, EmbedAnswer, EmbedOptions, EmbedRequest, Embedded};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An `:embedContent` body, or one request of a `:batchEmbedContents` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmbedOne<'a> {
    model: Option<&'a str>,
    content: Option<Content<'a>>,
    #[serde(alias = "task_type")]
    task_type: Option<&'a str>,
    title: Option<&'a str>,
    #[serde(alias = "output_dimensionality")]
    output_dimensionality: Option<u64>,
}

/// A `:batchEmbedContents` body.
#[derive(Deserialize)]
struct EmbedBatch<'a> {
    #[serde(borrow)]
    requests: Vec<EmbedOne<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    parts: Vec<Part<'a>>,
}

/// A part: only `text` is embedded; the other kinds are named in the 400.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    text: Option<&'a str>,
    #[serde(alias = "inline_data")]
    inline_data: Option<IgnoredAny>,
    #[serde(alias = "file_data")]
    file_data: Option<IgnoredAny>,
}

/// A Gemini client's embeddings request, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientEmbed {
    /// Each input's text (its text parts joined by a newline).
    pub texts: Vec<String>,
    pub dimensions: Option<u64>,
    pub options: EmbedOptions,
}

/// Reads a client's `:embedContent` (`batch` false) or `:batchEmbedContents`
/// body for `path_model` (a request's own `model`, when set, must name it).
pub(crate) fn read_client_request(
    value: &Value,
    path_model: &str,
    batch: bool,
) -> Result<ClientEmbed, GatewayError> {
    let requests = if batch {
        let body: EmbedBatch = client_body::read(value, "")?;
        if body.requests.is_empty() {
            return Err(invalid("`requests` must not be empty.", "requests"));
        }
        body.requests
    } else {
        vec![client_body::read::<EmbedOne>(value, "")?]
    };
    let mut out = ClientEmbed {
        texts: Vec::with_capacity(requests.len()),
        dimensions: None,
        options: EmbedOptions {
            answer: if batch { EmbedAnswer::GeminiBatch } else { EmbedAnswer::GeminiOne },
            task_type: None,
            titles: Vec::with_capacity(requests.len()),
        },
    };
    for (i, request) in requests.iter().enumerate() {
        let at = |key: &str| if batch { format!("requests[{i}].{key}") } else { key.to_string() };
        if let Some(model) = request.model {
            if model.strip_prefix("models/").unwrap_or(model) != path_model {
                return Err(invalid(
                    format!("`{}` must name the model in the path (`models/{path_model}`).", at("model")),
                    &at("model"),
                ));
            }
        }
        let content = request.content.as_ref().ok_or_else(|| client_body::missing(&at("content")))?;
        let mut text = String::new();
        for (j, part) in content.parts.iter().enumerate() {
            let Some(part_text) = part.text else {
                let param = format!("{}[{j}]", at("content.parts"));
                let kind = match (&part.inline_data, &part.file_data) {
                    (Some(_), _) => "inlineData",
                    (_, Some(_)) => "fileData",
                    _ => "no text",
                };
                return Err(invalid(
                    format!("`{param}`: only text parts can be embedded through edgeway (got `{kind}`)."),
                    &param,
                ));
            };
            if j > 0 {
                text.push('\n');
            }
            text.push_str(part_text);
        }
        if text.is_empty() {
            let param = at("content.parts");
            return Err(invalid(format!("`{param}` must hold some text."), &param));
        }
        out.texts.push(text);
        out.options.titles.push(request.title.map(str::to_string));
        same(&mut out.options.task_type, request.task_type.map(str::to_string), &at("taskType"))?;
        match request.output_dimensionality {
            Some(0) => {
                let param = at("outputDimensionality");
                return Err(invalid(format!("`{param}` must be at least 1."), &param));
            }
            dims => same(&mut out.dimensions, dims, &at("outputDimensionality"))?,
        }
    }
    if out.options.titles.iter().all(Option::is_none) {
        out.options.titles.clear();
    }
    Ok(out)
}

/// Keeps the first request's value of a per-request option; a later
/// request with another value is a 400 naming it.
fn same<T: PartialEq>(kept: &mut Option<T>, value: Option<T>, param: &str) -> Result<(), GatewayError> {
    match (kept.as_ref(), value) {
        (_, None) => Ok(()),
        (None, value) => {
            *kept = value;
            Ok(())
        }
        (Some(k), Some(v)) if *k == v => Ok(()),
        (Some(_), Some(_)) => Err(invalid(
            format!("`{param}` differs from the first request's; edgeway takes one per request."),
            param,
        )),
    }
}

#[derive(Serialize)]
struct UpstreamBatch<'a> {
    requests: Vec<UpstreamOne<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamOne<'a> {
    model: &'a str,
    content: UpstreamContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u64>,
}

#[derive(Serialize)]
struct UpstreamContent<'a> {
    parts: [UpstreamPart<'a>; 1],
}

#[derive(Serialize)]
struct UpstreamPart<'a> {
    text: &'a str,
}

/// `req` as a `:batchEmbedContents` call to `upstream_model`: the path
/// (under the channel's base URL) and the body.
pub(crate) fn upstream_call(req: &EmbedRequest, upstream_model: &str) -> (String, Vec<u8>) {
    let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
    let name = format!("models/{model}");
    let body = UpstreamBatch {
        requests: req
            .inputs
            .items
            .iter()
            .enumerate()
            .map(|(i, text)| UpstreamOne {
                model: &name,
                content: UpstreamContent { parts: [UpstreamPart { text }] },
                task_type: req.task_type.as_deref(),
                title: req.titles.get(i).and_then(Option::as_deref),
                output_dimensionality: req.dimensions,
            })
            .collect(),
    };
    (format!("/{name}:batchEmbedContents"), to_bytes(&body))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamAnswer {
    embeddings: Vec<Values>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
}

/// A `:batchEmbedContents` answer (its `usageMetadata`, when present, is
/// what is billed).
pub(crate) fn parse_upstream(body: &[u8]) -> Result<Embedded, GatewayError> {
    let answer: UpstreamAnswer =
        serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    Ok(Embedded {
        vectors: answer.embeddings.into_iter().map(|e| e.values).collect(),
        prompt_tokens: answer.usage_metadata.and_then(|u| u.prompt_token_count),
    })
}

/// A Gemini client's answer: `{"embedding": …}` for `:embedContent`,
/// `{"embeddings": […]}` for `:batchEmbedContents`, with the prompt tokens
/// billed as its `usageMetadata`.
pub(crate) fn client_answer(batch: bool, vectors: &[Vec<f32>], prompt_tokens: u64) -> Vec<u8> {
    let dims = vectors.first().map_or(0, Vec::len);
    let mut out = String::with_capacity(vectors.len() * (dims * 11 + 16) + 96);
    let write_values = |out: &mut String, vector: &[f32]| {
        out.push_str(r#"{"values":["#);
        for (i, v) in vector.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_f32(out, *v);
        }
        out.push_str("]}");
    };
    if batch {
        out.push_str(r#"{"embeddings":["#);
        for (i, vector) in vectors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_values(&mut out, vector);
        }
        out.push(']');
    } else {
        out.push_str(r#"{"embedding":"#);
        write_values(&mut out, vectors.first().map_or(&[], Vec::as_slice));
    }
    out.push_str(&format!(
        r#","usageMetadata":{{"promptTokenCount":{prompt_tokens},"totalTokenCount":{prompt_tokens}}}}}"#
    ));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::embeddings::EmbedRequest;
    use serde_json::json;

    fn read(value: Value, batch: bool) -> Result<ClientEmbed, GatewayError> {
        read_client_request(&value, "text-embedding-004", batch)
    }

    fn param(result: Result<ClientEmbed, GatewayError>) -> String {
        let error = result.err().unwrap_or(GatewayError::Internal);
        assert_eq!(error.status(), 400, "{error:?}");
        error.to_json(crate::error::Dialect::Gemini)["error"]["message"].as_str().unwrap_or("").to_string()
    }

    #[test]
    fn reads_one_and_batches_as_the_sdks_send_them() {
        let one = read(
            json!({"content": {"parts": [{"text": "hello"}, {"text": "world"}]}, "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 8}),
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(one.texts, ["hello\nworld"]);
        assert_eq!(one.dimensions, Some(8));
        assert_eq!(one.options.task_type.as_deref(), Some("RETRIEVAL_QUERY"));
        assert_eq!(one.options.answer, EmbedAnswer::GeminiOne);
        assert!(one.options.titles.is_empty());
        // What @google/genai's `models.embedContent` sends.
        let batch = read(
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}], "role": "user"}, "title": "Doc A", "task_type": "RETRIEVAL_DOCUMENT"},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "taskType": "RETRIEVAL_DOCUMENT"}
            ]}),
            true,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(batch.texts, ["a", "b"]);
        assert_eq!(batch.options.titles, [Some("Doc A".to_string()), None]);
        assert_eq!(batch.options.answer, EmbedAnswer::GeminiBatch);
    }

    #[test]
    fn refuses_what_it_cannot_embed_naming_the_field() {
        for (body, batch, names) in [
            (json!({}), false, "`content`"),
            (json!({"requests": []}), true, "`requests`"),
            (json!({"requests": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}}]}), true, "`requests[0].content.parts[0]`: only text parts can be embedded through edgeway (got `inlineData`)"),
            (json!({"content": {"parts": []}}), false, "`content.parts` must hold some text"),
            (json!({"content": {"parts": [{"text": 5}]}}), false, "content.parts[0].text"),
            (json!({"model": "models/other", "content": {"parts": [{"text": "a"}]}}), false, "`model` must name the model in the path"),
            (json!({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}), false, "`outputDimensionality` must be at least 1"),
            (json!({"requests": [
                {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
                {"content": {"parts": [{"text": "b"}]}, "outputDimensionality": 16}
            ]}), true, "`requests[1].outputDimensionality` differs from the first request's"),
            (json!({"requests": [
                {"content": {"parts": [{"text": "a"}]}, "taskType": "CLUSTERING"},
                {"content": {"parts": [{"text": "b"}]}, "taskType": "CLASSIFICATION"}
            ]}), true, "`requests[1].taskType` differs"),
        ] {
            let message = param(read(body.clone(), batch));
            assert!(message.contains(names), "{body}: {message}");
        }
    }

    #[test]
    fn builds_one_batch_call_and_reads_its_answer() {
        let body = json!({"model": "m", "input": ["a", "b"], "dimensions": 4});
        let options = EmbedOptions {
            answer: EmbedAnswer::OpenAi { base64: false },
            task_type: Some("CLUSTERING".into()),
            titles: vec![None, Some("B".into())],
        };
        let req = EmbedRequest::new(body.as_object().unwrap_or(&serde_json::Map::new()), Some(&options));
        let (path, bytes) = upstream_call(&req, "models/gemini-embedding-001");
        assert_eq!(path, "/models/gemini-embedding-001:batchEmbedContents");
        let sent: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(
            sent,
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "taskType": "CLUSTERING", "outputDimensionality": 4},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "taskType": "CLUSTERING", "title": "B", "outputDimensionality": 4}
            ]})
        );
        let answer = parse_upstream(br#"{"embeddings":[{"values":[0.25,-1]},{"values":[0.5,0]}]}"#)
            .unwrap_or_default();
        assert_eq!(answer, Embedded { vectors: vec![vec![0.25, -1.0], vec![0.5, 0.0]], prompt_tokens: None });
        let with_usage =
            parse_upstream(br#"{"embeddings":[{"values":[1]}],"usageMetadata":{"promptTokenCount":7}}"#)
                .unwrap_or_default();
        assert_eq!(with_usage.prompt_tokens, Some(7));
        for bad in [&b"{}"[..], b"[]", b"{\"embeddings\":[{\"values\":\"x\"}]}", b"nope"] {
            assert!(matches!(parse_upstream(bad), Err(GatewayError::UpstreamUnavailable)));
        }
    }

    #[test]
    fn answers_a_gemini_client_in_its_shapes() {
        let vectors = vec![vec![0.1f32, -2.5], vec![3.0]];
        let batch: Value = serde_json::from_slice(&client_answer(true, &vectors, 9)).unwrap_or_default();
        assert_eq!(
            batch,
            json!({"embeddings": [{"values": [0.1, -2.5]}, {"values": [3.0]}], "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}})
        );
        let one: Value = serde_json::from_slice(&client_answer(false, &vectors[..1], 2)).unwrap_or_default();
        assert_eq!(one["embedding"], json!({"values": [0.1, -2.5]}));
        assert!(String::from_utf8_lossy(&client_answer(false, &vectors[..1], 2)).contains("[0.1,-2.5]"));
    }
}

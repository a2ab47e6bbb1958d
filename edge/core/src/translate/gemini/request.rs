//! Client side, inbound: a client's `generateContent` (or `countTokens`)
//! body read into the hub, camelCase or snake_case (serde aliases). The body
//! is read as the private typed shapes below ([`client_body::read`]), so a
//! 400 names the parameter exactly (`contents[0].parts[1].inlineData.mimeType`);
//! which tools, parts and configs translate is checked after.

use super::super::canonical::*;
use super::super::client_body;
use super::super::json_fields::{check_fields, invalid, parse_object};
use super::super::media::{
    audio_format, check_public_url, image_media_type, media_type_from_url, normalize_base64,
};
use super::super::REDACTED_THINKING_PREFIX;
use super::GEMINI_FILE_URI_PREFIX;
use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

const SUPPORTED_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "model",
    "labels",
];
const UNSUPPORTED_FIELDS: &[&str] = &["cachedContent", "cached_content"];

const GENERATION_FIELDS: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "maxOutputTokens",
    "stopSequences",
    "candidateCount",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
    "responseLogprobs",
    "logprobs",
    "responseModalities",
    "mediaResolution",
];
const UNSUPPORTED_GENERATION_FIELDS: &[&str] =
    &["speechConfig", "routingConfig", "enableEnhancedCivicAnswers"];

/// A `generateContent` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateBody<'a> {
    model: Option<&'a str>,
    contents: Vec<WireContent<'a>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<WireContent<'a>>,
    #[serde(alias = "safety_settings")]
    safety_settings: Option<Vec<Value>>,
    #[serde(alias = "generation_config")]
    generation_config: Option<GenerationConfig<'a>>,
    tools: Option<Vec<WireTool<'a>>>,
    #[serde(alias = "tool_config")]
    tool_config: Option<ToolConfig<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    temperature: Option<Number>,
    #[serde(alias = "top_p")]
    top_p: Option<Number>,
    #[serde(alias = "top_k")]
    top_k: Option<u64>,
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(alias = "candidate_count")]
    candidate_count: Option<u64>,
    seed: Option<i64>,
    #[serde(alias = "presence_penalty")]
    presence_penalty: Option<Number>,
    #[serde(alias = "frequency_penalty")]
    frequency_penalty: Option<Number>,
    #[serde(alias = "response_logprobs")]
    response_logprobs: Option<bool>,
    #[serde(alias = "stop_sequences")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(alias = "response_modalities")]
    response_modalities: Option<Vec<&'a str>>,
    #[serde(alias = "response_mime_type")]
    response_mime_type: Option<&'a str>,
    #[serde(alias = "response_schema")]
    response_schema: Option<Value>,
    #[serde(alias = "response_json_schema")]
    response_json_schema: Option<Value>,
    #[serde(alias = "thinking_config")]
    thinking_config: Option<ThinkingConfig<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig<'a> {
    #[serde(alias = "thinking_level")]
    thinking_level: Option<&'a str>,
    #[serde(alias = "thinking_budget")]
    thinking_budget: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTool<'a> {
    #[serde(alias = "function_declarations", borrow)]
    function_declarations: Option<Vec<FunctionDeclaration<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    description: Option<&'a str>,
    #[serde(alias = "parameters_json_schema")]
    parameters_json_schema: Option<Value>,
    parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    #[serde(alias = "function_calling_config", borrow)]
    function_calling_config: Option<FunctionCallingConfig<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: Option<&'a str>,
    #[serde(alias = "allowed_function_names")]
    allowed_function_names: Option<Vec<&'a str>>,
}

/// A turn of `contents`, or the `systemInstruction`.
#[derive(Deserialize)]
struct WireContent<'a> {
    role: Option<&'a str>,
    #[serde(borrow)]
    parts: Option<Vec<Part<'a>>>,
}

/// A part of any kind: which payload field is set says which.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    text: Option<&'a str>,
    thought: Option<bool>,
    #[serde(alias = "thought_signature")]
    thought_signature: Option<&'a str>,
    #[serde(alias = "inline_data")]
    inline_data: Option<InlineData<'a>>,
    #[serde(alias = "file_data")]
    file_data: Option<FileData<'a>>,
    #[serde(alias = "function_call")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(alias = "function_response")]
    function_response: Option<FunctionResponse<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InlineData<'a> {
    #[serde(alias = "mime_type")]
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(alias = "file_uri")]
    file_uri: &'a str,
    #[serde(alias = "mime_type")]
    mime_type: Option<&'a str>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    name: &'a str,
    id: Option<&'a str>,
    args: Option<Value>,
}

#[derive(Deserialize)]
struct FunctionResponse<'a> {
    name: &'a str,
    id: Option<&'a str>,
    response: Option<Value>,
}

/// `snake_case` → `camelCase`.
fn camel(key: &str) -> String {
    let mut camel = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.extend(c.to_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    camel
}

/// The object at `value`'s `key` (camelCase or snake_case) with camelCase keys.
fn camel_object(value: &Value, camel_key: &str, snake_key: &str) -> Option<Map<String, Value>> {
    let object = value.get(camel_key).or_else(|| value.get(snake_key))?.as_object()?;
    Some(object.iter().map(|(k, v)| (camel(k), v.clone())).collect())
}

/// Parses a `generateContent` body (or a `countTokens` body when `count_tokens`).
pub(crate) fn parse_request(body: &[u8], count_tokens: bool) -> Result<CanonicalRequest, GatewayError> {
    let mut value = Value::Object(parse_object(body)?);
    if count_tokens {
        if let Some(inner) =
            value.get("generateContentRequest").or_else(|| value.get("generate_content_request"))
        {
            if inner.is_object() {
                value = inner.clone();
            }
        }
    }
    check_untranslatable_keys(&value)?;
    let body: GenerateBody = client_body::read(&value, "")?;
    let mut req = CanonicalRequest {
        model: body.model.map(|m| m.strip_prefix("models/").unwrap_or(m).to_string()).unwrap_or_default(),
        gemini_safety_settings: body.safety_settings.map(Value::Array),
        ..Default::default()
    };
    let system_parts = body.system_instruction.and_then(|s| s.parts).into_iter().flatten();
    for text in system_parts.filter_map(|p| p.text).filter(|t| !t.is_empty()) {
        req.system.push(SystemBlock { text: text.to_string(), cache_control: None });
    }
    if let Some(config) = body.generation_config {
        parse_generation_config(config, &mut req)?;
    }
    for tool in body.tools.into_iter().flatten() {
        for decl in tool.function_declarations.into_iter().flatten() {
            req.tools.push(ToolDefinition {
                name: decl.name.to_string(),
                description: decl.description.map(str::to_string),
                parameters: decl
                    .parameters_json_schema
                    .or(decl.parameters)
                    .map(|schema| lowercase_types(&schema))
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: None,
                cache_control: None,
            });
        }
    }
    if let Some(fcc) = body.tool_config.and_then(|c| c.function_calling_config) {
        let allowed = fcc.allowed_function_names.unwrap_or_default();
        req.tool_choice = match fcc.mode.unwrap_or("AUTO") {
            "AUTO" | "MODE_UNSPECIFIED" => Some(ToolChoice::Auto),
            "NONE" => Some(ToolChoice::None),
            "ANY" | "VALIDATED" if allowed.len() == 1 => {
                allowed.first().map(|n| ToolChoice::Tool(n.to_string()))
            }
            "ANY" | "VALIDATED" if allowed.is_empty() => Some(ToolChoice::Required),
            "ANY" | "VALIDATED" => return Err(invalid(
                "`allowedFunctionNames` with more than one name cannot be translated; list one name or none.",
                "toolConfig.functionCallingConfig.allowedFunctionNames",
            )),
            other => {
                return Err(invalid(
                    format!("`functionCallingConfig.mode` `{other}` is not valid."),
                    "toolConfig.functionCallingConfig.mode",
                ))
            }
        };
    }
    let mut pending_calls: Vec<(String, String)> = Vec::new();
    for (i, content) in body.contents.into_iter().enumerate() {
        let path = format!("contents[{i}]");
        let role = match content.role.unwrap_or("user") {
            "user" | "function" | "tool" => Role::User,
            "model" => Role::Assistant,
            other => {
                return Err(invalid(
                    format!("`{path}.role` must be `user` or `model`, not `{other}`."),
                    &format!("{path}.role"),
                ))
            }
        };
        let mut turn = Turn { index: i, parts: Vec::new(), calls: Vec::new(), pending: &mut pending_calls };
        for (j, part) in content.parts.into_iter().flatten().enumerate() {
            turn.read_part(part, &format!("{path}.parts[{j}]"))?;
        }
        let Turn { parts, calls, .. } = turn;
        if role == Role::Assistant {
            pending_calls = calls;
        }
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(parts),
            _ => req.messages.push(Message { role, content: parts }),
        }
    }
    Ok(req)
}

/// What serde ignores but the gateway must refuse: unknown or unsupported
/// top-level and `generationConfig` fields, tools other than function
/// declarations, and parts of a kind that cannot be translated.
fn check_untranslatable_keys(body: &Value) -> Result<(), GatewayError> {
    if let Some(obj) = body.as_object() {
        check_fields(obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    }
    if let Some(config) = camel_object(body, "generationConfig", "generation_config") {
        check_fields(&config, GENERATION_FIELDS, UNSUPPORTED_GENERATION_FIELDS, "generationConfig")?;
    }
    for (i, tool) in body.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for key in tool.as_object().into_iter().flat_map(Map::keys).map(|k| camel(k)) {
            if key != "functionDeclarations" {
                return Err(invalid(
                    format!("Gemini tool `{key}` is not supported through edgeway's translation layer; only function declarations are."),
                    &format!("tools[{i}].{key}"),
                ));
            }
        }
    }
    const PAYLOADS: [&str; 5] = ["text", "inlineData", "fileData", "functionCall", "functionResponse"];
    const BESIDE: [&str; 4] = ["thought", "thoughtSignature", "videoMetadata", "partMetadata"];
    let contents = body.get("contents").and_then(Value::as_array).into_iter().flatten();
    for (i, content) in contents.enumerate() {
        for (j, part) in content.get("parts").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let keys: Vec<(String, bool)> =
                part.as_object().into_iter().flatten().map(|(k, v)| (camel(k), v.is_null())).collect();
            let has_payload = keys.iter().any(|(k, null)| !null && PAYLOADS.contains(&k.as_str()));
            if let Some((key, _)) = keys.iter().find(|(k, _)| !has_payload && !BESIDE.contains(&k.as_str())) {
                return Err(invalid(
                    format!("Gemini part `{key}` cannot be translated."),
                    &format!("contents[{i}].parts[{j}].{key}"),
                ));
            }
        }
    }
    Ok(())
}

/// Gemini's OpenAPI schemas use upper-case types (`STRING`); JSON Schema
/// wants lower case.
fn lowercase_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        ("properties", Value::Object(props)) => Value::Object(
                            props.iter().map(|(name, s)| (name.clone(), lowercase_types(s))).collect(),
                        ),
                        (_, other) => lowercase_types(other),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lowercase_types).collect()),
        other => other.clone(),
    }
}

fn parse_generation_config(config: GenerationConfig, req: &mut CanonicalRequest) -> Result<(), GatewayError> {
    let nonzero = |n: Option<Number>| n.filter(|n| n.as_f64() != Some(0.0));
    req.temperature = config.temperature;
    req.top_p = config.top_p;
    req.top_k = config.top_k;
    req.max_output_tokens = config.max_output_tokens;
    req.candidate_count = config.candidate_count;
    req.seed = config.seed;
    req.presence_penalty = nonzero(config.presence_penalty);
    req.frequency_penalty = nonzero(config.frequency_penalty);
    req.logprobs = config.response_logprobs.unwrap_or(false);
    req.stop_sequences = config.stop_sequences.into_iter().flatten().map(str::to_string).collect();
    if config.response_modalities.into_iter().flatten().any(|m| !m.eq_ignore_ascii_case("text")) {
        return Err(invalid(
            "Only the TEXT response modality can be translated.",
            "generationConfig.responseModalities",
        ));
    }
    let schema = config.response_json_schema.or(config.response_schema);
    match (config.response_mime_type, schema) {
        (Some("application/json"), Some(schema)) => {
            req.response_format = Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                schema: lowercase_types(&schema),
                strict: None,
            })
        }
        (Some("application/json"), None) => req.response_format = Some(ResponseFormat::JsonObject),
        (Some("text/plain") | None, None) => {}
        (Some(other), _) => {
            return Err(invalid(
                format!("`responseMimeType` `{other}` cannot be translated."),
                "generationConfig.responseMimeType",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "`responseSchema` needs `responseMimeType: application/json`.",
                "generationConfig.responseSchema",
            ))
        }
    }
    let Some(thinking) = config.thinking_config else { return Ok(()) };
    if let Some(level) = thinking.thinking_level {
        req.reasoning = Some(match level.to_ascii_lowercase().as_str() {
            "minimal" => Reasoning::Effort(ReasoningEffort::Minimal),
            "low" => Reasoning::Effort(ReasoningEffort::Low),
            "medium" => Reasoning::Effort(ReasoningEffort::Medium),
            "high" => Reasoning::Effort(ReasoningEffort::High),
            other => {
                return Err(invalid(
                    format!("`thinkingLevel` `{other}` is not valid."),
                    "generationConfig.thinkingConfig.thinkingLevel",
                ))
            }
        });
    } else if let Some(budget) = thinking.thinking_budget {
        req.reasoning = Some(match budget {
            0 => Reasoning::Disabled,
            b if b < 0 => Reasoning::Effort(ReasoningEffort::Medium),
            b => Reasoning::Budget(b.unsigned_abs()),
        });
    }
    Ok(())
}

/// One turn of `contents` being read: its parts, the function calls it
/// makes (for a model turn) and the calls of the previous model turn still
/// waiting for a response (a `functionResponse` without an id answers the
/// first one of its name).
struct Turn<'p> {
    index: usize,
    parts: Vec<ContentPart>,
    calls: Vec<(String, String)>,
    pending: &'p mut Vec<(String, String)>,
}

impl Turn<'_> {
    fn read_part(&mut self, part: Part, path: &str) -> Result<(), GatewayError> {
        let signature = part.thought_signature.map(str::to_string);
        if let Some(text) = part.text {
            if part.thought == Some(true) {
                self.parts.push(thinking_part(text.to_string(), signature));
            } else {
                if let Some(sig) = signature {
                    self.parts.push(thinking_part(String::new(), Some(sig)));
                }
                self.parts.push(ContentPart::text(text));
            }
        } else if let Some(inline) = part.inline_data {
            let media_type = inline.mime_type.to_ascii_lowercase();
            let data = normalize_base64(inline.data, &format!("{path}.inlineData.data"))?.into_owned();
            let media_type = if media_type.starts_with("image/") {
                image_media_type(&media_type, &data)
            } else {
                media_type
            };
            let source = MediaSource::Base64 { media_type: media_type.clone(), data: data.clone() };
            self.parts.push(media_part(source, &media_type, Some(data)));
        } else if let Some(file) = part.file_data {
            let media_type = file.mime_type.map(str::to_ascii_lowercase);
            // Every URI goes through the URL policy; only Gemini's own Files API
            // URIs become file references (any other scheme is refused there).
            let url = check_public_url(file.file_uri, &format!("{path}.fileData.fileUri"))?;
            let kind = media_type
                .clone()
                .or_else(|| media_type_from_url(file.file_uri).map(str::to_string))
                .unwrap_or_default();
            let source = if url.starts_with(GEMINI_FILE_URI_PREFIX) {
                MediaSource::File { uri: url, media_type }
            } else {
                MediaSource::Url { url }
            };
            self.parts.push(media_part(source, &kind, None));
        } else if let Some(call) = part.function_call {
            let id = match call.id {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => format!("call_{}_{}", self.index, self.calls.len()),
            };
            self.calls.push((id.clone(), call.name.to_string()));
            self.parts.push(ContentPart::ToolCall {
                id,
                name: call.name.to_string(),
                arguments: call.args.map(|a| a.to_string()).unwrap_or_else(|| "{}".into()),
                signature,
            });
        } else if let Some(response) = part.function_response {
            let result = self.tool_result(response);
            self.parts.push(result);
        } else if let Some(sig) = signature {
            self.parts.push(thinking_part(String::new(), Some(sig)));
        }
        Ok(())
    }

    fn tool_result(&mut self, response: FunctionResponse) -> ContentPart {
        let name = response.name;
        let id = match response.id.filter(|id| !id.is_empty()) {
            Some(id) => {
                self.pending.retain(|(pending, _)| pending != id);
                id.to_string()
            }
            None => match self.pending.iter().position(|(_, n)| n == name) {
                Some(pos) => self.pending.remove(pos).0,
                None => format!("call_{}_{name}", self.index),
            },
        };
        let payload = response.response.unwrap_or_else(|| json!({}));
        let is_error = payload.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("error"));
        let text = match &payload {
            Value::Object(o) if o.len() == 1 => match o.values().next() {
                Some(Value::String(s))
                    if o.contains_key("result")
                        || o.contains_key("output")
                        || o.contains_key("content")
                        || is_error =>
                {
                    s.clone()
                }
                _ => payload.to_string(),
            },
            _ => payload.to_string(),
        };
        ContentPart::ToolResult {
            tool_call_id: id,
            name: Some(name.to_string()),
            content: vec![ToolResultPart::Text(text)],
            is_error,
            cache_control: None,
        }
    }
}

fn thinking_part(text: String, signature: Option<String>) -> ContentPart {
    match signature.as_deref().and_then(|s| s.strip_prefix(REDACTED_THINKING_PREFIX)) {
        Some(data) if text.is_empty() => ContentPart::RedactedThinking { data: data.to_string() },
        _ => ContentPart::Thinking { text, signature },
    }
}

fn media_part(source: MediaSource, media_type: &str, base64: Option<String>) -> ContentPart {
    if media_type.starts_with("image/") {
        ContentPart::Image { source, cache_control: None }
    } else if let (Some(data), true) = (base64, media_type.starts_with("audio/")) {
        ContentPart::Audio { data, format: audio_format(media_type) }
    } else {
        ContentPart::Document { source, filename: None, cache_control: None }
    }
}

//! Client side, inbound: a client's `generateContent` (or `countTokens`)
//! body read into the hub, camelCase or snake_case. Every field is
//! type-checked where it is read, so a 400 names the parameter exactly
//! (`contents[0].parts[1].inlineData.mimeType`).

use super::super::canonical::*;
use super::super::json_fields::*;
use super::super::media::{
    audio_format, check_public_url, image_media_type, media_type_from_url, normalize_base64,
};
use super::super::REDACTED_THINKING_PREFIX;
use super::GEMINI_FILE_URI_PREFIX;
use crate::error::GatewayError;
use serde_json::{json, Map, Value};

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

/// The value under `camel` or its snake_case alias.
fn either<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake)).filter(|v| !v.is_null())
}

fn snake_to_camel(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| {
            let mut camel = String::with_capacity(k.len());
            let mut upper = false;
            for c in k.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    camel.extend(c.to_uppercase());
                    upper = false;
                } else {
                    camel.push(c);
                }
            }
            (camel, v.clone())
        })
        .collect()
}

/// Parses a `generateContent` body (or a `countTokens` body when `count_tokens`).
pub(crate) fn parse_request(body: &[u8], count_tokens: bool) -> Result<CanonicalRequest, GatewayError> {
    let mut obj = parse_object(body)?;
    if count_tokens {
        if let Some(Value::Object(inner)) =
            obj.get("generateContentRequest").or_else(|| obj.get("generate_content_request")).cloned()
        {
            obj = inner;
        }
    }
    check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    let mut req = CanonicalRequest {
        model: opt_str(&obj, "model", "")?
            .map(|m| m.strip_prefix("models/").unwrap_or(m).to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(system) = either(&obj, "systemInstruction", "system_instruction") {
        let sys = as_object(system, "systemInstruction")?;
        for (i, part) in opt_array(sys, "parts", "systemInstruction")?.into_iter().flatten().enumerate() {
            let path = format!("systemInstruction.parts[{i}]");
            let text = opt_str(as_object(part, &path)?, "text", &path)?.unwrap_or("");
            if !text.is_empty() {
                req.system.push(SystemBlock { text: text.to_string(), cache_control: None });
            }
        }
    }
    if let Some(settings) = either(&obj, "safetySettings", "safety_settings") {
        if !settings.is_array() {
            return Err(invalid("`safetySettings` must be an array.", "safetySettings"));
        }
        req.gemini_safety_settings = Some(settings.clone());
    }
    if let Some(config) = either(&obj, "generationConfig", "generation_config") {
        parse_generation_config(&snake_to_camel(as_object(config, "generationConfig")?), &mut req)?;
    }
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        let tools = tools.as_array().ok_or_else(|| invalid("`tools` must be an array.", "tools"))?;
        for (i, tool) in tools.iter().enumerate() {
            let path = format!("tools[{i}]");
            let t = snake_to_camel(as_object(tool, &path)?);
            for key in t.keys() {
                if key != "functionDeclarations" {
                    return Err(invalid(
                        format!("Gemini tool `{key}` is not supported through edgeway's translation layer; only function declarations are."),
                        &format!("{path}.{key}"),
                    ));
                }
            }
            for (j, decl) in opt_array(&t, "functionDeclarations", &path)?.into_iter().flatten().enumerate() {
                let dpath = format!("{path}.functionDeclarations[{j}]");
                let d = snake_to_camel(as_object(decl, &dpath)?);
                req.tools.push(ToolDefinition {
                    name: req_str(&d, "name", &dpath)?.to_string(),
                    description: opt_str(&d, "description", &dpath)?.map(str::to_string),
                    parameters: d
                        .get("parametersJsonSchema")
                        .or_else(|| d.get("parameters"))
                        .filter(|p| !p.is_null())
                        .map(lowercase_types)
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                    strict: None,
                    cache_control: None,
                });
            }
        }
    }
    if let Some(config) = either(&obj, "toolConfig", "tool_config") {
        let config = snake_to_camel(as_object(config, "toolConfig")?);
        if let Some(fcc) = config.get("functionCallingConfig").filter(|v| !v.is_null()) {
            let fcc = snake_to_camel(as_object(fcc, "toolConfig.functionCallingConfig")?);
            let allowed: Vec<String> =
                opt_array(&fcc, "allowedFunctionNames", "toolConfig.functionCallingConfig")?
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect();
            req.tool_choice = match opt_str(&fcc, "mode", "toolConfig.functionCallingConfig")?.unwrap_or("AUTO") {
                "AUTO" | "MODE_UNSPECIFIED" => Some(ToolChoice::Auto),
                "NONE" => Some(ToolChoice::None),
                "ANY" | "VALIDATED" if allowed.len() == 1 => allowed.first().cloned().map(ToolChoice::Tool),
                "ANY" | "VALIDATED" if allowed.is_empty() => Some(ToolChoice::Required),
                "ANY" | "VALIDATED" => {
                    return Err(invalid(
                        "`allowedFunctionNames` with more than one name cannot be translated; list one name or none.",
                        "toolConfig.functionCallingConfig.allowedFunctionNames",
                    ))
                }
                other => {
                    return Err(invalid(format!("`functionCallingConfig.mode` `{other}` is not valid."), "toolConfig.functionCallingConfig.mode"))
                }
            };
        }
    }
    let contents = opt_array(&obj, "contents", "")?
        .ok_or_else(|| invalid("Missing required parameter: `contents`.", "contents"))?;
    let mut pending_calls: Vec<(String, String)> = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let path = format!("contents[{i}]");
        let c = as_object(content, &path)?;
        let role = match opt_str(c, "role", &path)?.unwrap_or("user") {
            "user" | "function" | "tool" => Role::User,
            "model" => Role::Assistant,
            other => {
                return Err(invalid(
                    format!("`{path}.role` must be `user` or `model`, not `{other}`."),
                    &format!("{path}.role"),
                ))
            }
        };
        let mut parts = Vec::new();
        let mut calls_this_turn = Vec::new();
        for (j, part) in opt_array(c, "parts", &path)?.into_iter().flatten().enumerate() {
            let ppath = format!("{path}.parts[{j}]");
            parse_part(
                &snake_to_camel(as_object(part, &ppath)?),
                &ppath,
                i,
                &mut parts,
                &mut calls_this_turn,
                &mut pending_calls,
            )?;
        }
        if role == Role::Assistant {
            pending_calls = calls_this_turn;
        }
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(parts),
            _ => req.messages.push(Message { role, content: parts }),
        }
    }
    Ok(req)
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

fn parse_generation_config(
    config: &Map<String, Value>,
    req: &mut CanonicalRequest,
) -> Result<(), GatewayError> {
    const P: &str = "generationConfig";
    check_fields(config, GENERATION_FIELDS, UNSUPPORTED_GENERATION_FIELDS, P)?;
    req.temperature = opt_number(config, "temperature", P)?;
    req.top_p = opt_number(config, "topP", P)?;
    req.top_k = opt_u64(config, "topK", P)?;
    req.max_output_tokens = opt_u64(config, "maxOutputTokens", P)?;
    req.candidate_count = opt_u64(config, "candidateCount", P)?;
    req.seed = opt_i64(config, "seed", P)?;
    req.presence_penalty = opt_number(config, "presencePenalty", P)?.filter(|n| n.as_f64() != Some(0.0));
    req.frequency_penalty = opt_number(config, "frequencyPenalty", P)?.filter(|n| n.as_f64() != Some(0.0));
    req.logprobs = opt_bool(config, "responseLogprobs", P)?.unwrap_or(false);
    if let Some(stops) = opt_array(config, "stopSequences", P)? {
        req.stop_sequences = stops.iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
    }
    if let Some(modalities) = opt_array(config, "responseModalities", P)? {
        if modalities.iter().any(|m| !m.as_str().is_some_and(|s| s.eq_ignore_ascii_case("text"))) {
            return Err(invalid(
                "Only the TEXT response modality can be translated.",
                "generationConfig.responseModalities",
            ));
        }
    }
    let schema =
        config.get("responseJsonSchema").or_else(|| config.get("responseSchema")).filter(|s| !s.is_null());
    match (opt_str(config, "responseMimeType", P)?, schema) {
        (Some("application/json"), Some(schema)) => {
            req.response_format = Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                schema: lowercase_types(schema),
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
    if let Some(thinking) = config.get("thinkingConfig").filter(|v| !v.is_null()) {
        let thinking = snake_to_camel(as_object(thinking, "generationConfig.thinkingConfig")?);
        let path = "generationConfig.thinkingConfig";
        if let Some(level) = opt_str(&thinking, "thinkingLevel", path)? {
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
        } else if let Some(budget) = opt_i64(&thinking, "thinkingBudget", path)? {
            req.reasoning = Some(match budget {
                0 => Reasoning::Disabled,
                b if b < 0 => Reasoning::Effort(ReasoningEffort::Medium),
                b => Reasoning::Budget(b.unsigned_abs()),
            });
        }
    }
    Ok(())
}

fn parse_part(
    part: &Map<String, Value>,
    path: &str,
    turn: usize,
    parts: &mut Vec<ContentPart>,
    calls_this_turn: &mut Vec<(String, String)>,
    pending_calls: &mut Vec<(String, String)>,
) -> Result<(), GatewayError> {
    let signature = opt_str(part, "thoughtSignature", path)?.map(str::to_string);
    if let Some(text) = part.get("text").filter(|v| !v.is_null()) {
        let text = text
            .as_str()
            .ok_or_else(|| invalid(format!("`{path}.text` must be a string."), &format!("{path}.text")))?;
        if opt_bool(part, "thought", path)? == Some(true) {
            parts.push(thinking_part(text.to_string(), signature));
        } else {
            if let Some(sig) = signature {
                parts.push(thinking_part(String::new(), Some(sig)));
            }
            parts.push(ContentPart::text(text));
        }
        return Ok(());
    }
    if let Some(inline) = part.get("inlineData").filter(|v| !v.is_null()) {
        let ipath = format!("{path}.inlineData");
        let inline = snake_to_camel(as_object(inline, &ipath)?);
        let media_type = req_str(&inline, "mimeType", &ipath)?.to_ascii_lowercase();
        let data =
            normalize_base64(req_str(&inline, "data", &ipath)?, &format!("{ipath}.data"))?.into_owned();
        let media_type =
            if media_type.starts_with("image/") { image_media_type(&media_type, &data) } else { media_type };
        parts.push(media_part(
            MediaSource::Base64 { media_type: media_type.clone(), data: data.clone() },
            &media_type,
            Some(data),
        ));
        return Ok(());
    }
    if let Some(file) = part.get("fileData").filter(|v| !v.is_null()) {
        let fpath = format!("{path}.fileData");
        let file = snake_to_camel(as_object(file, &fpath)?);
        let uri = req_str(&file, "fileUri", &fpath)?;
        let media_type = opt_str(&file, "mimeType", &fpath)?.map(str::to_ascii_lowercase);
        // Every URI goes through the URL policy; only Gemini's own Files API
        // URIs become file references (any other scheme is refused there).
        let url = check_public_url(uri, &format!("{fpath}.fileUri"))?;
        let source = if url.starts_with(GEMINI_FILE_URI_PREFIX) {
            MediaSource::File { uri: url, media_type: media_type.clone() }
        } else {
            MediaSource::Url { url }
        };
        let kind =
            media_type.clone().or_else(|| media_type_from_url(uri).map(str::to_string)).unwrap_or_default();
        parts.push(media_part(source, &kind, None));
        return Ok(());
    }
    if let Some(call) = part.get("functionCall").filter(|v| !v.is_null()) {
        let cpath = format!("{path}.functionCall");
        let call = as_object(call, &cpath)?;
        let name = req_str(call, "name", &cpath)?.to_string();
        let id = match opt_str(call, "id", &cpath)? {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("call_{turn}_{}", calls_this_turn.len()),
        };
        calls_this_turn.push((id.clone(), name.clone()));
        parts.push(ContentPart::ToolCall {
            id,
            name,
            arguments: call
                .get("args")
                .filter(|a| !a.is_null())
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into()),
            signature,
        });
        return Ok(());
    }
    if let Some(response) = part.get("functionResponse").filter(|v| !v.is_null()) {
        let rpath = format!("{path}.functionResponse");
        let response = as_object(response, &rpath)?;
        let name = req_str(response, "name", &rpath)?.to_string();
        let id = match opt_str(response, "id", &rpath)?.filter(|id| !id.is_empty()) {
            Some(id) => {
                pending_calls.retain(|(pending, _)| pending != id);
                id.to_string()
            }
            None => match pending_calls.iter().position(|(_, n)| *n == name) {
                Some(pos) => pending_calls.remove(pos).0,
                None => format!("call_{turn}_{name}"),
            },
        };
        let payload = response.get("response").cloned().unwrap_or_else(|| json!({}));
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
        parts.push(ContentPart::ToolResult {
            tool_call_id: id,
            name: Some(name),
            content: vec![ToolResultPart::Text(text)],
            is_error,
            cache_control: None,
        });
        return Ok(());
    }
    for key in part.keys() {
        if !matches!(key.as_str(), "thought" | "thoughtSignature" | "videoMetadata" | "partMetadata") {
            return Err(invalid(
                format!("Gemini part `{key}` cannot be translated."),
                &format!("{path}.{key}"),
            ));
        }
    }
    if let Some(sig) = signature {
        parts.push(thinking_part(String::new(), Some(sig)));
    }
    Ok(())
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

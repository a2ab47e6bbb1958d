//! Google Gemini `generateContent`, both as the client's dialect and as an
//! upstream's.

use super::canonical::*;
use super::json_fields::*;
use super::media::{
    audio_format, audio_media_type, check_public_url, image_media_type, media_type_from_url,
    normalize_base64, MediaKind, GEMINI_MEDIA,
};
use super::normalize::{normalize_messages, tool_names_by_id, tool_result_text};
use super::reasoning::effort_budget;
use super::schema_sanitize::sanitize_for_gemini;
use super::stream::{ClientRenderer, UpstreamParser};
use super::{UpstreamCall, REDACTED_THINKING_PREFIX};
use crate::error::{Dialect, GatewayError};
use crate::sse::{encode_event, SseEvent};
use crate::usage::TokenUsage;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Signature Gemini documents for function calls whose real signature was
/// lost (history from another model or a client that dropped it).
pub const SKIP_SIGNATURE_VALIDATOR: &str = "skip_thought_signature_validator";

/// Only Gemini's own file URIs may be sent as `fileData`.
const GEMINI_FILE_URI_PREFIX: &str = "https://generativelanguage.googleapis.com/";

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

fn media_json(source: &MediaSource, kind: MediaKind) -> Result<Value, GatewayError> {
    let default_type = if kind == MediaKind::Image { "image/jpeg" } else { "application/pdf" };
    match source {
        MediaSource::Base64 { media_type, data } => {
            GEMINI_MEDIA.check_part(kind, media_type, data, "messages")?;
            Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}))
        }
        MediaSource::File { uri, media_type } => Ok(json!({"fileData": {
            "mimeType": media_type.clone().or_else(|| media_type_from_url(uri).map(str::to_string)).unwrap_or_else(|| default_type.to_string()),
            "fileUri": uri,
        }})),
        MediaSource::Url { url } if url.starts_with(GEMINI_FILE_URI_PREFIX) => Ok(json!({"fileData": {
            "mimeType": media_type_from_url(url).unwrap_or(default_type),
            "fileUri": url,
        }})),
        MediaSource::Url { .. } => Err(invalid(
            "Gemini upstreams cannot fetch media URLs and edgeway does not fetch them: send the image or file as a base64 data URI.",
            "messages",
        )),
    }
}

fn function_response(text: &str, is_error: bool) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) if !is_error => v,
        _ if is_error => json!({"error": text}),
        _ => json!({"result": text}),
    }
}

fn contents_for(messages: &[Message]) -> Result<Vec<Value>, GatewayError> {
    let mut contents = Vec::new();
    // Tool call id → function name, as of the current point in the
    // conversation, so a result finds the latest call with its id even when
    // ids repeat across turns.
    let mut names: HashMap<String, String> = HashMap::new();
    for message in messages {
        if message.role == Role::Assistant {
            names.extend(tool_names_by_id(std::slice::from_ref(message)));
        }
        let mut parts: Vec<Value> = Vec::new();
        let mut pending_signature: Option<String> = None;
        let mut first_call = true;
        for part in &message.content {
            let mut value = match part {
                ContentPart::Text { text, .. } => json!({"text": text}),
                ContentPart::Image { source, .. } => media_json(source, MediaKind::Image)?,
                ContentPart::Document { source, .. } => media_json(source, MediaKind::Document)?,
                ContentPart::Audio { data, format } => {
                    let media_type = audio_media_type(format);
                    GEMINI_MEDIA.check_part(MediaKind::Audio, &media_type, data, "messages")?;
                    json!({"inlineData": {"mimeType": media_type, "data": data}})
                }
                ContentPart::Thinking { text, signature } => {
                    if message.role != Role::Assistant || signature.is_none() {
                        continue;
                    }
                    if text.is_empty() {
                        pending_signature.clone_from(signature);
                        continue;
                    }
                    json!({"text": text, "thought": true})
                }
                ContentPart::RedactedThinking { .. } => continue,
                ContentPart::ToolCall { name, arguments, signature, .. } => {
                    let args = match serde_json::from_str::<Value>(arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ if arguments.trim().is_empty() => json!({}),
                        _ => {
                            return Err(invalid(
                                "Tool call `arguments` must be a JSON object to be sent to Gemini.",
                                "messages",
                            ))
                        }
                    };
                    let mut call = json!({"functionCall": {"name": name, "args": args}});
                    let sig = signature.clone().or_else(|| pending_signature.take());
                    match sig {
                        Some(sig) => call["thoughtSignature"] = json!(sig),
                        None if first_call => call["thoughtSignature"] = json!(SKIP_SIGNATURE_VALIDATOR),
                        None => {}
                    }
                    first_call = false;
                    call
                }
                ContentPart::ToolResult { tool_call_id, name, content, is_error, .. } => {
                    let name = names.get(tool_call_id).cloned().or_else(|| name.clone()).ok_or_else(|| {
                        invalid(
                            format!("The tool result for call `{tool_call_id}` does not follow a tool call with that id; Gemini needs the function name."),
                            "messages",
                        )
                    })?;
                    parts.push(json!({"functionResponse": {"name": name, "response": function_response(&tool_result_text(content), *is_error)}}));
                    for p in content {
                        if let ToolResultPart::Image(source) = p {
                            parts.push(media_json(source, MediaKind::Image)?);
                        }
                    }
                    continue;
                }
            };
            if let Some(sig) = pending_signature.take() {
                if value.get("thoughtSignature").is_none() {
                    value["thoughtSignature"] = json!(sig);
                }
            }
            if let ContentPart::Thinking { signature: Some(sig), .. } = part {
                value["thoughtSignature"] = json!(sig);
            }
            parts.push(value);
        }
        if let Some(sig) = pending_signature {
            parts.push(json!({"text": "", "thought": true, "thoughtSignature": sig}));
        }
        if parts.is_empty() {
            continue;
        }
        let role = if message.role == Role::User { "user" } else { "model" };
        match contents.last_mut() {
            Some(Value::Object(last)) if last.get("role").and_then(Value::as_str) == Some(role) => {
                if let Some(Value::Array(existing)) = last.get_mut("parts") {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    Ok(contents)
}

/// Builds a `generateContent` / `streamGenerateContent` call.
pub(crate) fn build_request(
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<UpstreamCall, GatewayError> {
    if req.candidate_count.unwrap_or(1) > 1 {
        return Err(invalid(
            "`n` > 1 cannot be translated to Gemini upstreams: one candidate is returned.",
            "n",
        ));
    }
    if req.logprobs {
        return Err(invalid(
            "`logprobs` is not supported through translation to Gemini upstreams.",
            "logprobs",
        ));
    }
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        return Err(invalid(
            "Gemini upstreams cannot forbid parallel tool calls; remove `parallel_tool_calls: false` (or `disable_parallel_tool_use`).",
            "parallel_tool_calls",
        ));
    }
    let messages = normalize_messages(&req.messages);
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents_for(&messages)?));
    if !req.system.is_empty() {
        let text = req.system.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join("\n\n");
        body.insert("systemInstruction".into(), json!({"parts": [{"text": text}]}));
    }
    let mut config = Map::new();
    if let Some(t) = &req.temperature {
        config.insert("temperature".into(), Value::Number(t.clone()));
    }
    if let Some(p) = &req.top_p {
        config.insert("topP".into(), Value::Number(p.clone()));
    }
    if let Some(k) = req.top_k {
        config.insert("topK".into(), json!(k));
    }
    if let Some(max) = req.max_output_tokens {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    if !req.stop_sequences.is_empty() {
        config.insert("stopSequences".into(), json!(req.stop_sequences));
    }
    if let Some(seed) = req.seed {
        config.insert("seed".into(), json!(seed));
    }
    if let Some(p) = &req.presence_penalty {
        config.insert("presencePenalty".into(), Value::Number(p.clone()));
    }
    if let Some(f) = &req.frequency_penalty {
        config.insert("frequencyPenalty".into(), Value::Number(f.clone()));
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseSchema".into(), sanitize_for_gemini(schema));
        }
    }
    match req.reasoning {
        None => {}
        Some(Reasoning::Disabled) | Some(Reasoning::Budget(0)) => {
            config.insert("thinkingConfig".into(), json!({"thinkingBudget": 0}));
        }
        Some(Reasoning::Effort(effort)) => {
            config.insert(
                "thinkingConfig".into(),
                json!({"thinkingBudget": effort_budget(effort), "includeThoughts": true}),
            );
        }
        Some(Reasoning::Budget(budget)) => {
            config
                .insert("thinkingConfig".into(), json!({"thinkingBudget": budget, "includeThoughts": true}));
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(settings) = &req.gemini_safety_settings {
        body.insert("safetySettings".into(), settings.clone());
    }
    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut decl = json!({"name": t.name});
                if let Some(d) = &t.description {
                    decl["description"] = json!(d);
                }
                let params = sanitize_for_gemini(&t.parameters);
                if params.get("properties").is_some() {
                    decl["parameters"] = params;
                }
                decl
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
    }
    let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
    let path = if req.stream {
        format!("/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/models/{model}:generateContent")
    };
    Ok(UpstreamCall { path, body: to_bytes(&Value::Object(body)), stream: req.stream })
}

/// Gemini `finishReason` → canonical.
pub(crate) fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "LANGUAGE"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            FinishReason::MalformedToolCall
        }
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → Gemini `finishReason`.
pub(crate) fn finish_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop
        | FinishReason::StopSequence
        | FinishReason::ToolCalls
        | FinishReason::PauseTurn => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter | FinishReason::Refusal => "SAFETY",
        FinishReason::MalformedToolCall => "MALFORMED_FUNCTION_CALL",
        FinishReason::Other(_) => "OTHER",
    }
}

/// `usageMetadata` → disjoint buckets: `promptTokenCount` includes
/// `cachedContentTokenCount`; `thoughtsTokenCount` is beside
/// `candidatesTokenCount`; tool-use prompt tokens are input.
pub(crate) fn parse_usage(meta: &Value) -> TokenUsage {
    let count = |key: &str| u64_at(meta, key).min(super::MAX_REPORTED_TOKENS);
    let prompt = count("promptTokenCount");
    let cached = count("cachedContentTokenCount").min(prompt);
    let thoughts = count("thoughtsTokenCount");
    super::clamp_usage(TokenUsage {
        input_uncached: prompt - cached + count("toolUsePromptTokenCount"),
        cache_read: cached,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: count("candidatesTokenCount") + thoughts,
        reasoning: thoughts,
    })
}

/// Disjoint buckets → `usageMetadata` (cache writes count as prompt).
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    let mut meta = json!({
        "promptTokenCount": usage.prompt_total(),
        "candidatesTokenCount": usage.output - usage.reasoning.min(usage.output),
        "totalTokenCount": usage.total(),
    });
    if usage.cache_read > 0 {
        meta["cachedContentTokenCount"] = json!(usage.cache_read);
    }
    if usage.reasoning > 0 {
        meta["thoughtsTokenCount"] = json!(usage.reasoning);
    }
    meta
}

/// Stable ids for Gemini function calls, which come without any.
fn synthesized_call_id(seed: &str, n: usize) -> String {
    let seed: String = seed.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
    if seed.is_empty() {
        format!("call_gemini_{n}")
    } else {
        format!("call_{seed}_{n}")
    }
}

fn parts_to_content(parts: &[Value], seed: &str, calls: &mut usize, content: &mut Vec<ContentPart>) {
    for part in parts {
        let signature = part.get("thoughtSignature").and_then(Value::as_str).map(str::to_string);
        if let Some(call) = part.get("functionCall") {
            let id = match call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(id) => id.to_string(),
                None => synthesized_call_id(seed, *calls),
            };
            *calls += 1;
            content.push(ContentPart::ToolCall {
                id,
                name: str_at(call, "name").to_string(),
                arguments: call
                    .get("args")
                    .filter(|a| !a.is_null())
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
                signature,
            });
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                content.push(ContentPart::Thinking { text: text.to_string(), signature });
            } else {
                if let Some(sig) = signature {
                    content.push(ContentPart::Thinking { text: String::new(), signature: Some(sig) });
                }
                if !text.is_empty() {
                    match content.last_mut() {
                        Some(ContentPart::Text { text: existing, .. }) => existing.push_str(text),
                        _ => content.push(ContentPart::text(text)),
                    }
                }
            }
        } else if let Some(sig) = signature {
            content.push(ContentPart::Thinking { text: String::new(), signature: Some(sig) });
        }
    }
}

/// Parses a non-streaming `GenerateContentResponse`. `id_seed` makes the
/// synthesized tool call ids (the upstream `responseId` when empty).
pub(crate) fn parse_response(body: &[u8], id_seed: &str) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    if !value.is_object() || value.get("error").is_some() {
        return Err(GatewayError::UpstreamUnavailable);
    }
    let response_id = str_at(&value, "responseId");
    let seed = if id_seed.is_empty() { response_id } else { id_seed };
    let candidate = value.get("candidates").and_then(|c| c.get(0)).cloned().unwrap_or(Value::Null);
    let mut content = Vec::new();
    let mut calls = 0;
    if let Some(parts) = candidate.pointer("/content/parts").and_then(Value::as_array) {
        parts_to_content(parts, seed, &mut calls, &mut content);
    }
    let mut finish_reason = match candidate.get("finishReason").and_then(Value::as_str) {
        Some(reason) => parse_finish_reason(reason),
        None if value.pointer("/promptFeedback/blockReason").is_some() => FinishReason::ContentFilter,
        None => FinishReason::Stop,
    };
    if calls > 0 && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    let usage = value.get("usageMetadata").filter(|u| u.is_object()).map(parse_usage);
    Ok(CanonicalResponse {
        id: response_id.to_string(),
        model: str_at(&value, "modelVersion").to_string(),
        created: 0,
        content,
        finish_reason,
        stop_sequence: None,
        usage_reported: usage.is_some(),
        usage_estimated: false,
        usage: usage.unwrap_or_default(),
    })
}

fn parts_json(content: &[ContentPart]) -> Vec<Value> {
    let mut parts = Vec::new();
    let mut pending_signature: Option<String> = None;
    for part in content {
        let mut value = match part {
            ContentPart::Text { text, .. } => json!({"text": text}),
            ContentPart::Thinking { text, signature } if text.is_empty() => {
                pending_signature.clone_from(signature);
                continue;
            }
            ContentPart::Thinking { text, signature } => {
                let mut v = json!({"text": text, "thought": true});
                if let Some(sig) = signature {
                    v["thoughtSignature"] = json!(sig);
                }
                v
            }
            ContentPart::RedactedThinking { data } => {
                json!({"text": "", "thought": true, "thoughtSignature": format!("{REDACTED_THINKING_PREFIX}{data}")})
            }
            ContentPart::ToolCall { id, name, arguments, signature } => {
                let args = serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                let mut v = json!({"functionCall": {"id": id, "name": name, "args": args}});
                if let Some(sig) = signature {
                    v["thoughtSignature"] = json!(sig);
                }
                v
            }
            _ => continue,
        };
        if let Some(sig) = pending_signature.take() {
            if value.get("thoughtSignature").is_none() {
                value["thoughtSignature"] = json!(sig);
            }
        }
        parts.push(value);
    }
    if let Some(sig) = pending_signature {
        parts.push(json!({"text": "", "thought": true, "thoughtSignature": sig}));
    }
    parts
}

/// Renders a `GenerateContentResponse` for a Gemini client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Value {
    let mut parts = parts_json(&resp.content);
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": finish_reason_word(&resp.finish_reason),
            "index": 0,
        }],
        "usageMetadata": super::marked(usage_json(&resp.usage), resp.usage_estimated),
        "modelVersion": resp.model,
        "responseId": resp.id,
    })
}

/// Reads an upstream `streamGenerateContent?alt=sse` stream.
#[derive(Debug)]
pub(crate) struct GeminiStreamParser {
    id_seed: String,
    started: bool,
    calls: usize,
}

impl GeminiStreamParser {
    pub(crate) fn new(id_seed: &str) -> Self {
        Self { id_seed: id_seed.to_string(), started: false, calls: 0 }
    }
}

impl UpstreamParser for GeminiStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { return };
        if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(500);
            out.push(StreamEvent::Error(super::upstream_error_from_message(
                status,
                str_at(error, "message"),
            )));
            return;
        }
        // Usage first, so a client stream that starts now can show the prompt count.
        if let Some(meta) = chunk.get("usageMetadata").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage(parse_usage(meta)));
        }
        if !self.started {
            self.started = true;
            if self.id_seed.is_empty() {
                self.id_seed = str_at(&chunk, "responseId").to_string();
            }
            out.push(StreamEvent::Start {
                id: chunk.get("responseId").and_then(Value::as_str).map(str::to_string),
                model: chunk.get("modelVersion").and_then(Value::as_str).map(str::to_string),
            });
        }
        let candidate = chunk.get("candidates").and_then(|c| c.get(0)).cloned().unwrap_or(Value::Null);
        let mut content = Vec::new();
        if let Some(parts) = candidate.pointer("/content/parts").and_then(Value::as_array) {
            let first_call = self.calls;
            parts_to_content(parts, &self.id_seed, &mut self.calls, &mut content);
            let mut tool_index = first_call;
            for part in content {
                match part {
                    ContentPart::Text { text, .. } => out.push(StreamEvent::TextDelta(text)),
                    ContentPart::Thinking { text, signature } => {
                        if !text.is_empty() {
                            out.push(StreamEvent::ThinkingDelta(text));
                        }
                        if let Some(sig) = signature {
                            out.push(StreamEvent::ThinkingSignature(sig));
                        }
                    }
                    ContentPart::ToolCall { id, name, arguments, signature } => {
                        out.push(StreamEvent::ToolCallStart { tool_index, id, name, signature });
                        out.push(StreamEvent::ToolCallArguments { tool_index, fragment: arguments });
                        tool_index += 1;
                    }
                    _ => {}
                }
            }
        }
        let reason = match candidate.get("finishReason").and_then(Value::as_str) {
            Some(reason) => Some(parse_finish_reason(reason)),
            None if chunk.pointer("/promptFeedback/blockReason").is_some() => {
                Some(FinishReason::ContentFilter)
            }
            None => None,
        };
        if let Some(reason) = reason {
            out.push(StreamEvent::Finish { reason, stop_sequence: None });
        }
    }
}

#[derive(Debug)]
struct BufferedCall {
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
}

/// Writes a `streamGenerateContent?alt=sse` stream for a Gemini client.
/// Function calls are sent whole, in the final chunk, as Gemini does.
#[derive(Debug)]
pub(crate) struct GeminiStreamRenderer {
    id: String,
    model: String,
    calls: Vec<BufferedCall>,
}

impl GeminiStreamRenderer {
    pub(crate) fn new(id: String, model: String) -> Self {
        Self { id, model, calls: Vec::new() }
    }

    fn chunk(&self, parts: Vec<Value>, out: &mut Vec<u8>) {
        let chunk = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self.model,
            "responseId": self.id,
        });
        encode_event(out, None, &chunk.to_string());
    }
}

impl ClientRenderer for GeminiStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::TextDelta(text) => self.chunk(vec![json!({"text": text})], out),
            StreamEvent::ThinkingDelta(text) => self.chunk(vec![json!({"text": text, "thought": true})], out),
            StreamEvent::ThinkingSignature(sig) => {
                self.chunk(vec![json!({"text": "", "thought": true, "thoughtSignature": sig})], out)
            }
            StreamEvent::RedactedThinking(data) => self.chunk(
                vec![json!({"text": "", "thought": true, "thoughtSignature": format!("{REDACTED_THINKING_PREFIX}{data}")})],
                out,
            ),
            StreamEvent::ToolCallStart { id, name, signature, .. } => self.calls.push(BufferedCall {
                id: id.clone(),
                name: name.clone(),
                arguments: String::new(),
                signature: signature.clone(),
            }),
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                if let Some(call) = self.calls.get_mut(*tool_index) {
                    call.arguments.push_str(fragment);
                }
            }
            StreamEvent::Start { .. }
            | StreamEvent::Usage(_)
            | StreamEvent::Finish { .. }
            | StreamEvent::Error(_)
            | StreamEvent::End => {}
        }
    }

    fn end(
        &mut self,
        reason: &FinishReason,
        _stop_sequence: Option<&str>,
        usage: Option<&TokenUsage>,
        estimated: bool,
        out: &mut Vec<u8>,
    ) {
        let content: Vec<ContentPart> = self
            .calls
            .drain(..)
            .map(|c| ContentPart::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
                signature: c.signature,
            })
            .collect();
        let mut parts = parts_json(&content);
        if parts.is_empty() {
            parts.push(json!({"text": ""}));
        }
        let chunk = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish_reason_word(reason), "index": 0}],
            "usageMetadata": super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated),
            "modelVersion": self.model,
            "responseId": self.id,
        });
        encode_event(out, None, &chunk.to_string());
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, None, &error.body(Dialect::Gemini));
    }
}

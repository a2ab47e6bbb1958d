//! Client side, inbound: a `/v1/responses` body read into the hub. Every
//! field is type-checked where it is read, so a 400 names the parameter
//! exactly (`input[2].content[0].image_url`).

use super::super::canonical::*;
use super::super::json_fields::*;
use super::super::media::{normalize_base64, parse_data_uri, source_from_url_or_data};
use super::super::openai_chat::parse_response_format;
use super::super::reasoning::parse_effort;
use super::super::REDACTED_THINKING_PREFIX;
use crate::error::GatewayError;
use serde_json::{json, Value};

const SUPPORTED_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "reasoning",
    "text",
    "user",
    "metadata",
    "store",
    "include",
    "truncation",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "top_logprobs",
    "stream_options",
];
const UNSUPPORTED_FIELDS: &[&str] =
    &["previous_response_id", "background", "conversation", "prompt", "max_tool_calls"];

/// Parses a `/v1/responses` body.
pub(crate) fn parse_request(body: &[u8]) -> Result<CanonicalRequest, GatewayError> {
    let obj = parse_object(body)?;
    if obj.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "edgeway's Responses API is stateless: `previous_response_id` is not supported; send the whole conversation in `input`.",
            "previous_response_id",
        ));
    }
    check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    let mut req = CanonicalRequest { model: req_str(&obj, "model", "")?.to_string(), ..Default::default() };
    req.stream = opt_bool(&obj, "stream", "")?.unwrap_or(false);
    req.max_output_tokens = opt_u64(&obj, "max_output_tokens", "")?;
    req.temperature = opt_number(&obj, "temperature", "")?;
    req.top_p = opt_number(&obj, "top_p", "")?;
    req.logprobs = opt_u64(&obj, "top_logprobs", "")?.unwrap_or(0) > 0;
    req.user = opt_str(&obj, "user", "")?.or(opt_str(&obj, "safety_identifier", "")?).map(str::to_string);
    req.parallel_tool_calls = opt_bool(&obj, "parallel_tool_calls", "")?;
    if let Some(instructions) = opt_str(&obj, "instructions", "")?.filter(|s| !s.is_empty()) {
        req.system.push(SystemBlock { text: instructions.to_string(), cache_control: None });
    }
    if let Some(reasoning) = opt_object(&obj, "reasoning", "")? {
        if let Some(word) = opt_str(reasoning, "effort", "reasoning")? {
            req.reasoning = Some(parse_effort(word).ok_or_else(|| {
                invalid(format!("`reasoning.effort` `{word}` is not valid."), "reasoning.effort")
            })?);
        }
    }
    if let Some(text) = opt_object(&obj, "text", "")? {
        if let Some(format) = opt_object(text, "format", "text")? {
            req.response_format = Some(match req_str(format, "type", "text.format")? {
                "json_schema" => ResponseFormat::JsonSchema {
                    name: opt_str(format, "name", "text.format")?.unwrap_or("response").to_string(),
                    schema: format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                    strict: opt_bool(format, "strict", "text.format")?,
                },
                _ => parse_response_format(format)?,
            });
        }
    }
    if let Some(tools) = opt_array(&obj, "tools", "")? {
        for (i, tool) in tools.iter().enumerate() {
            let path = format!("tools[{i}]");
            let t = as_object(tool, &path)?;
            let kind = req_str(t, "type", &path)?;
            if kind != "function" {
                return Err(invalid(
                    format!("Tool type `{kind}` cannot be translated; only `function` tools can."),
                    &format!("{path}.type"),
                ));
            }
            req.tools.push(ToolDefinition {
                name: req_str(t, "name", &path)?.to_string(),
                description: opt_str(t, "description", &path)?.map(str::to_string),
                parameters: t
                    .get("parameters")
                    .filter(|p| !p.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: opt_bool(t, "strict", &path)?,
                cache_control: None,
            });
        }
    }
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            req.tool_choice = Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(invalid(format!("`tool_choice` `{other}` is not valid."), "tool_choice"))
                }
            })
        }
        Some(Value::Object(choice)) => match req_str(choice, "type", "tool_choice")? {
            "function" => {
                req.tool_choice = Some(ToolChoice::Tool(req_str(choice, "name", "tool_choice")?.to_string()))
            }
            other => {
                return Err(invalid(
                    format!("`tool_choice.type` `{other}` cannot be translated."),
                    "tool_choice.type",
                ))
            }
        },
        Some(_) => return Err(invalid("`tool_choice` must be a string or an object.", "tool_choice")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => {
            req.messages.push(Message { role: Role::User, content: vec![ContentPart::text(s.clone())] })
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                parse_item(item, &format!("input[{i}]"), &mut req)?;
            }
        }
        None | Some(Value::Null) => return Err(invalid("Missing required parameter: `input`.", "input")),
        Some(_) => return Err(invalid("`input` must be a string or an array of items.", "input")),
    }
    Ok(req)
}

fn push(req: &mut CanonicalRequest, role: Role, content: Vec<ContentPart>) {
    match req.messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(content),
        _ => req.messages.push(Message { role, content }),
    }
}

fn parse_item(item: &Value, path: &str, req: &mut CanonicalRequest) -> Result<(), GatewayError> {
    let obj = as_object(item, path)?;
    let kind = opt_str(obj, "type", path)?.unwrap_or("message");
    match kind {
        "message" => {
            let role = req_str(obj, "role", path)?;
            let parts = parse_message_content(obj.get("content"), &format!("{path}.content"))?;
            match role {
                "system" | "developer" => {
                    for part in parts {
                        if let ContentPart::Text { text, .. } = part {
                            req.system.push(SystemBlock { text, cache_control: None });
                        }
                    }
                }
                "user" => push(req, Role::User, parts),
                "assistant" => push(req, Role::Assistant, parts),
                other => {
                    return Err(invalid(
                        format!("`{path}.role` `{other}` is not valid."),
                        &format!("{path}.role"),
                    ))
                }
            }
        }
        "function_call" => push(
            req,
            Role::Assistant,
            vec![ContentPart::ToolCall {
                id: req_str(obj, "call_id", path)?.to_string(),
                name: req_str(obj, "name", path)?.to_string(),
                arguments: opt_str(obj, "arguments", path)?.unwrap_or("{}").to_string(),
                signature: None,
            }],
        ),
        "function_call_output" => {
            let content = match obj.get("output") {
                Some(Value::String(s)) => vec![ToolResultPart::Text(s.clone())],
                Some(Value::Array(_)) => parse_message_content(obj.get("output"), &format!("{path}.output"))?
                    .into_iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text, .. } => Some(ToolResultPart::Text(text)),
                        ContentPart::Image { source, .. } => Some(ToolResultPart::Image(source)),
                        _ => None,
                    })
                    .collect(),
                _ => {
                    return Err(invalid(
                        format!("`{path}.output` must be a string or an array."),
                        &format!("{path}.output"),
                    ))
                }
            };
            push(
                req,
                Role::User,
                vec![ContentPart::ToolResult {
                    tool_call_id: req_str(obj, "call_id", path)?.to_string(),
                    name: None,
                    content,
                    is_error: false,
                    cache_control: None,
                }],
            );
        }
        "reasoning" => {
            let text: String = opt_array(obj, "summary", path)?
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n\n");
            let signature = opt_str(obj, "encrypted_content", path)?.filter(|s| !s.is_empty());
            let part = match signature.and_then(|s| s.strip_prefix(REDACTED_THINKING_PREFIX)) {
                Some(data) if text.is_empty() => ContentPart::RedactedThinking { data: data.to_string() },
                _ => ContentPart::Thinking { text, signature: signature.map(str::to_string) },
            };
            push(req, Role::Assistant, vec![part]);
        }
        other => {
            return Err(invalid(
                format!("Input item type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ));
        }
    }
    Ok(())
}

fn parse_message_content(content: Option<&Value>, path: &str) -> Result<Vec<ContentPart>, GatewayError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(vec![ContentPart::text(s.clone())]),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(invalid(format!("`{path}` must be a string or an array."), path)),
    };
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let ppath = format!("{path}[{i}]");
            let p = as_object(part, &ppath)?;
            Ok(match req_str(p, "type", &ppath)? {
                "input_text" | "output_text" | "text" => ContentPart::text(req_str(p, "text", &ppath)?),
                "refusal" => ContentPart::text(req_str(p, "refusal", &ppath)?),
                "input_image" => {
                    if p.get("file_id").is_some_and(|v| !v.is_null()) {
                        return Err(invalid(
                            "Uploaded `file_id` images cannot be translated; send `image_url`.",
                            &format!("{ppath}.file_id"),
                        ));
                    }
                    let url = req_str(p, "image_url", &ppath)?;
                    ContentPart::Image {
                        source: source_from_url_or_data(url, &format!("{ppath}.image_url"))?,
                        cache_control: None,
                    }
                }
                "input_file" => {
                    if let Some(url) = opt_str(p, "file_url", &ppath)? {
                        ContentPart::Document {
                            source: source_from_url_or_data(url, &format!("{ppath}.file_url"))?,
                            filename: opt_str(p, "filename", &ppath)?.map(str::to_string),
                            cache_control: None,
                        }
                    } else {
                        let data = opt_str(p, "file_data", &ppath)?.ok_or_else(|| {
                            invalid(
                                "`input_file` needs `file_data` (a base64 data URI) or `file_url`.",
                                &format!("{ppath}.file_data"),
                            )
                        })?;
                        let (media_type, data) = parse_data_uri(data, &format!("{ppath}.file_data"))?;
                        ContentPart::Document {
                            source: MediaSource::Base64 { media_type, data },
                            filename: opt_str(p, "filename", &ppath)?.map(str::to_string),
                            cache_control: None,
                        }
                    }
                }
                "input_audio" => {
                    let audio = opt_object(p, "input_audio", &ppath)?.unwrap_or(p);
                    let data = normalize_base64(req_str(audio, "data", &ppath)?, &format!("{ppath}.data"))?;
                    ContentPart::Audio {
                        data: data.into_owned(),
                        format: req_str(audio, "format", &ppath)?.to_string(),
                    }
                }
                other => {
                    return Err(invalid(
                        format!("Content part type `{other}` cannot be translated."),
                        &format!("{ppath}.type"),
                    ))
                }
            })
        })
        .collect()
}

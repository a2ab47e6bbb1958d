//! Client side, inbound: a client's `/v1/messages` (or `count_tokens`) body
//! read into the hub. Every field is type-checked where it is read, so a 400
//! names the parameter exactly (`messages[1].content[0].source.media_type`).

use super::super::canonical::*;
use super::super::json_fields::*;
use super::super::media::{check_public_url, image_media_type, normalize_base64, IMAGE_MEDIA_TYPES};
use crate::error::GatewayError;
use serde_json::{json, Map, Value};

const SUPPORTED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];
const UNSUPPORTED_FIELDS: &[&str] = &["container", "mcp_servers", "context_management"];

/// Parses a `/v1/messages` body (or `/v1/messages/count_tokens` when
/// `count_tokens`, where `max_tokens` is not required).
pub(crate) fn parse_request(body: &[u8], count_tokens: bool) -> Result<CanonicalRequest, GatewayError> {
    let obj = parse_object(body)?;
    check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    let mut req = CanonicalRequest { model: req_str(&obj, "model", "")?.to_string(), ..Default::default() };
    req.stream = opt_bool(&obj, "stream", "")?.unwrap_or(false);
    req.max_output_tokens = opt_u64(&obj, "max_tokens", "")?;
    if req.max_output_tokens.is_none() && !count_tokens {
        return Err(invalid("Missing required parameter: `max_tokens`.", "max_tokens"));
    }
    req.temperature = opt_number(&obj, "temperature", "")?;
    req.top_p = opt_number(&obj, "top_p", "")?;
    req.top_k = opt_u64(&obj, "top_k", "")?;
    if let Some(stops) = opt_array(&obj, "stop_sequences", "")? {
        req.stop_sequences = stops
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("`stop_sequences` must be strings.", "stop_sequences"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(metadata) = opt_object(&obj, "metadata", "")? {
        check_fields(metadata, &["user_id"], &[], "metadata")?;
        req.user = opt_str(metadata, "user_id", "metadata")?.map(str::to_string);
    }
    if let Some(thinking) = opt_object(&obj, "thinking", "")? {
        req.reasoning = Some(match req_str(thinking, "type", "thinking")? {
            "enabled" => {
                Reasoning::Budget(opt_u64(thinking, "budget_tokens", "thinking")?.ok_or_else(|| {
                    invalid("Missing required parameter: `thinking.budget_tokens`.", "thinking.budget_tokens")
                })?)
            }
            "disabled" => Reasoning::Disabled,
            "adaptive" => Reasoning::Effort(ReasoningEffort::Medium),
            other => {
                return Err(invalid(format!("`thinking.type` `{other}` is not valid."), "thinking.type"))
            }
        });
    }
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => req.system.push(SystemBlock { text: s.clone(), cache_control: None }),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let path = format!("system[{i}]");
                let b = as_object(block, &path)?;
                if req_str(b, "type", &path)? != "text" {
                    return Err(invalid("System blocks must be `text` blocks.", &format!("{path}.type")));
                }
                req.system.push(SystemBlock {
                    text: req_str(b, "text", &path)?.to_string(),
                    cache_control: b.get("cache_control").filter(|v| !v.is_null()).cloned(),
                });
            }
        }
        Some(_) => return Err(invalid("`system` must be a string or an array of text blocks.", "system")),
    }
    if let Some(tools) = opt_array(&obj, "tools", "")? {
        req.tools = tools.iter().enumerate().map(|(i, t)| parse_tool(t, i)).collect::<Result<_, _>>()?;
    }
    if let Some(choice) = opt_object(&obj, "tool_choice", "")? {
        req.tool_choice = Some(match req_str(choice, "type", "tool_choice")? {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(req_str(choice, "name", "tool_choice")?.to_string()),
            other => {
                return Err(invalid(
                    format!("`tool_choice.type` `{other}` is not valid."),
                    "tool_choice.type",
                ))
            }
        });
        if opt_bool(choice, "disable_parallel_tool_use", "tool_choice")? == Some(true) {
            req.parallel_tool_calls = Some(false);
        }
    }
    let messages = opt_array(&obj, "messages", "")?
        .ok_or_else(|| invalid("Missing required parameter: `messages`.", "messages"))?;
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_object(message, &path)?;
        let role = match req_str(m, "role", &path)? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(invalid(
                    format!("`{path}.role` must be `user` or `assistant`, not `{other}`."),
                    &format!("{path}.role"),
                ))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => vec![ContentPart::text(s.clone())],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| parse_block(b, &format!("{path}.content[{j}]")))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            _ => {
                return Err(invalid(
                    format!("`{path}.content` must be a string or an array."),
                    &format!("{path}.content"),
                ))
            }
        };
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => req.messages.push(Message { role, content }),
        }
    }
    Ok(req)
}

fn parse_tool(tool: &Value, i: usize) -> Result<ToolDefinition, GatewayError> {
    let path = format!("tools[{i}]");
    let obj = as_object(tool, &path)?;
    if let Some(kind) = opt_str(obj, "type", &path)?.filter(|k| *k != "custom") {
        return Err(invalid(
            format!("Server tool `{kind}` is not supported through edgeway's translation layer; only custom (function) tools are."),
            &format!("{path}.type"),
        ));
    }
    Ok(ToolDefinition {
        name: req_str(obj, "name", &path)?.to_string(),
        description: opt_str(obj, "description", &path)?.map(str::to_string),
        parameters: obj.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        strict: None,
        cache_control: obj.get("cache_control").filter(|v| !v.is_null()).cloned(),
    })
}

fn parse_source(
    source: &Map<String, Value>,
    path: &str,
    image: bool,
) -> Result<Option<MediaSource>, GatewayError> {
    match req_str(source, "type", path)? {
        "base64" => {
            let media_type = req_str(source, "media_type", path)?.to_string();
            if image && !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Err(invalid(
                    format!("Image media type `{media_type}` is not supported."),
                    &format!("{path}.media_type"),
                ));
            }
            let data =
                normalize_base64(req_str(source, "data", path)?, &format!("{path}.data"))?.into_owned();
            let media_type = if image { image_media_type(&media_type, &data) } else { media_type };
            Ok(Some(MediaSource::Base64 { media_type, data }))
        }
        "url" => {
            let url = req_str(source, "url", path)?;
            Ok(Some(MediaSource::Url { url: check_public_url(url, &format!("{path}.url"))? }))
        }
        "text" => Ok(None),
        other => {
            Err(invalid(format!("Source type `{other}` cannot be translated."), &format!("{path}.type")))
        }
    }
}

fn parse_block(block: &Value, path: &str) -> Result<Option<ContentPart>, GatewayError> {
    let b = as_object(block, path)?;
    let cache_control = b.get("cache_control").filter(|v| !v.is_null()).cloned();
    Ok(Some(match req_str(b, "type", path)? {
        "text" => ContentPart::Text { text: req_str(b, "text", path)?.to_string(), cache_control },
        "image" => {
            let spath = format!("{path}.source");
            let source = opt_object(b, "source", path)?
                .ok_or_else(|| invalid(format!("`{spath}` is required."), &spath))?;
            match parse_source(source, &spath, true)? {
                Some(source) => ContentPart::Image { source, cache_control },
                None => return Err(invalid("Images need a base64 or url source.", &spath)),
            }
        }
        "document" => {
            let spath = format!("{path}.source");
            let source = opt_object(b, "source", path)?
                .ok_or_else(|| invalid(format!("`{spath}` is required."), &spath))?;
            match parse_source(source, &spath, false)? {
                Some(media) => ContentPart::Document {
                    source: media,
                    filename: opt_str(b, "title", path)?.map(str::to_string),
                    cache_control,
                },
                // Plain-text documents are text.
                None => {
                    ContentPart::Text { text: req_str(source, "data", &spath)?.to_string(), cache_control }
                }
            }
        }
        "tool_use" => ContentPart::ToolCall {
            id: req_str(b, "id", path)?.to_string(),
            name: req_str(b, "name", path)?.to_string(),
            arguments: b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
            signature: None,
        },
        "tool_result" => {
            let content = match b.get("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![ToolResultPart::Text(s.clone())],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(k, p)| match parse_block(p, &format!("{path}.content[{k}]")) {
                        Ok(Some(ContentPart::Text { text, .. })) => Ok(ToolResultPart::Text(text)),
                        Ok(Some(ContentPart::Image { source, .. })) => Ok(ToolResultPart::Image(source)),
                        Ok(_) => Err(invalid(
                            "Tool results may contain only text and images.",
                            &format!("{path}.content[{k}]"),
                        )),
                        Err(e) => Err(e),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(invalid(
                        format!("`{path}.content` must be a string or an array."),
                        &format!("{path}.content"),
                    ))
                }
            };
            ContentPart::ToolResult {
                tool_call_id: req_str(b, "tool_use_id", path)?.to_string(),
                name: None,
                content,
                is_error: opt_bool(b, "is_error", path)?.unwrap_or(false),
                cache_control,
            }
        }
        "thinking" => ContentPart::Thinking {
            text: opt_str(b, "thinking", path)?.unwrap_or("").to_string(),
            signature: opt_str(b, "signature", path)?.filter(|s| !s.is_empty()).map(str::to_string),
        },
        "redacted_thinking" => ContentPart::RedactedThinking { data: req_str(b, "data", path)?.to_string() },
        other => {
            return Err(invalid(
                format!("Content block type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ))
        }
    }))
}

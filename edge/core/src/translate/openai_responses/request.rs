//! Client side, inbound: a `/v1/responses` body read into the hub. The body
//! is read as the private typed shapes below ([`client_body::read`]), so a
//! 400 names the parameter exactly (`input[2].content[0].image_url`); which
//! item, part and tool types translate is checked after.

use super::super::canonical::*;
use super::super::client_body::{self, need, TextOrList, TextOrObject};
use super::super::json_fields::{check_fields, invalid, parse_object};
use super::super::media::{normalize_base64, parse_data_uri, source_from_url_or_data};
use super::super::reasoning::parse_effort;
use super::super::REDACTED_THINKING_PREFIX;
use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::{json, Number, Value};

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

/// A `/v1/responses` body.
#[derive(Deserialize)]
struct ResponsesBody<'a> {
    model: &'a str,
    input: TextOrList<'a, Item<'a>>,
    instructions: Option<&'a str>,
    tools: Option<Vec<Tool<'a>>>,
    tool_choice: Option<TextOrObject<'a, WireToolChoice<'a>>>,
    parallel_tool_calls: Option<bool>,
    max_output_tokens: Option<u64>,
    temperature: Option<Number>,
    top_p: Option<Number>,
    stream: Option<bool>,
    reasoning: Option<ReasoningParam<'a>>,
    text: Option<TextParam<'a>>,
    user: Option<&'a str>,
    safety_identifier: Option<&'a str>,
    top_logprobs: Option<u64>,
}

#[derive(Deserialize)]
struct ReasoningParam<'a> {
    effort: Option<&'a str>,
}

#[derive(Deserialize)]
struct TextParam<'a> {
    #[serde(borrow)]
    format: Option<Format<'a>>,
}

/// `text.format`: the JSON Schema fields sit beside `type`.
#[derive(Deserialize)]
struct Format<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: Option<&'a str>,
    schema: Option<Value>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: Option<&'a str>,
    description: Option<&'a str>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: Option<&'a str>,
}

/// An input item of any type (a message when `type` is absent).
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    /// `message`.
    role: Option<ItemRole>,
    content: Option<TextOrList<'a, Part<'a>>>,
    /// `function_call`, `function_call_output`.
    call_id: Option<&'a str>,
    name: Option<&'a str>,
    arguments: Option<&'a str>,
    output: Option<TextOrList<'a, Part<'a>>>,
    /// `reasoning`.
    summary: Option<Vec<Summary<'a>>>,
    encrypted_content: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ItemRole {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Deserialize)]
struct Summary<'a> {
    text: Option<&'a str>,
}

/// A content part of any type: `type` says which of the other fields it needs.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    text: Option<&'a str>,
    refusal: Option<&'a str>,
    /// `input_image`.
    image_url: Option<&'a str>,
    file_id: Option<&'a str>,
    /// `input_file`.
    file_url: Option<&'a str>,
    file_data: Option<&'a str>,
    filename: Option<&'a str>,
    /// `input_audio`: nested, or `data` and `format` beside `type`.
    #[serde(borrow)]
    input_audio: Option<Audio<'a>>,
    data: Option<&'a str>,
    format: Option<&'a str>,
}

#[derive(Deserialize)]
struct Audio<'a> {
    data: Option<&'a str>,
    format: Option<&'a str>,
}

/// Parses a `/v1/responses` body.
pub(crate) fn parse_request(body: &[u8]) -> Result<CanonicalRequest, GatewayError> {
    let value = Value::Object(parse_object(body)?);
    if value.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "edgeway's Responses API is stateless: `previous_response_id` is not supported; send the whole conversation in `input`.",
            "previous_response_id",
        ));
    }
    if let Value::Object(obj) = &value {
        check_fields(obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    }
    let body: ResponsesBody = client_body::read(&value, "")?;
    let mut req = CanonicalRequest {
        model: body.model.to_string(),
        stream: body.stream.unwrap_or(false),
        max_output_tokens: body.max_output_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        logprobs: body.top_logprobs.unwrap_or(0) > 0,
        user: body.user.or(body.safety_identifier).map(str::to_string),
        parallel_tool_calls: body.parallel_tool_calls,
        ..Default::default()
    };
    if let Some(instructions) = body.instructions.filter(|s| !s.is_empty()) {
        req.system.push(SystemBlock { text: instructions.to_string(), cache_control: None });
    }
    if let Some(word) = body.reasoning.and_then(|r| r.effort) {
        req.reasoning = Some(parse_effort(word).ok_or_else(|| {
            invalid(format!("`reasoning.effort` `{word}` is not valid."), "reasoning.effort")
        })?);
    }
    if let Some(format) = body.text.and_then(|t| t.format) {
        req.response_format = Some(match format.kind {
            "text" => ResponseFormat::Text,
            "json_object" => ResponseFormat::JsonObject,
            "json_schema" => ResponseFormat::JsonSchema {
                name: format.name.unwrap_or("response").to_string(),
                schema: format.schema.unwrap_or_else(|| json!({"type": "object"})),
                strict: format.strict,
            },
            other => {
                return Err(invalid(
                    format!("`text.format.type` `{other}` is not supported."),
                    "text.format.type",
                ))
            }
        });
    }
    for (i, tool) in body.tools.into_iter().flatten().enumerate() {
        let path = format!("tools[{i}]");
        if tool.kind != "function" {
            return Err(invalid(
                format!("Tool type `{}` cannot be translated; only `function` tools can.", tool.kind),
                &format!("{path}.type"),
            ));
        }
        req.tools.push(ToolDefinition {
            name: need(tool.name, &path, "name")?.to_string(),
            description: tool.description.map(str::to_string),
            parameters: tool.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: tool.strict,
            cache_control: None,
        });
    }
    req.tool_choice = match body.tool_choice {
        None => None,
        Some(TextOrObject::Text("auto")) => Some(ToolChoice::Auto),
        Some(TextOrObject::Text("none")) => Some(ToolChoice::None),
        Some(TextOrObject::Text("required")) => Some(ToolChoice::Required),
        Some(TextOrObject::Text(other)) => {
            return Err(invalid(format!("`tool_choice` `{other}` is not valid."), "tool_choice"))
        }
        Some(TextOrObject::Object(WireToolChoice { kind: "function", name })) => {
            Some(ToolChoice::Tool(need(name, "tool_choice", "name")?.to_string()))
        }
        Some(TextOrObject::Object(WireToolChoice { kind, .. })) => {
            return Err(invalid(
                format!("`tool_choice.type` `{kind}` cannot be translated."),
                "tool_choice.type",
            ))
        }
    };
    match body.input {
        TextOrList::Text(text) => {
            req.messages.push(Message { role: Role::User, content: vec![ContentPart::text(text)] })
        }
        TextOrList::List(items) => {
            for (i, item) in items.into_iter().enumerate() {
                parse_item(item, &format!("input[{i}]"), &mut req)?;
            }
        }
    }
    Ok(req)
}

fn push(req: &mut CanonicalRequest, role: Role, content: Vec<ContentPart>) {
    match req.messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(content),
        _ => req.messages.push(Message { role, content }),
    }
}

fn parse_item(item: Item, path: &str, req: &mut CanonicalRequest) -> Result<(), GatewayError> {
    match item.kind.unwrap_or("message") {
        "message" => {
            let role = need(item.role, path, "role")?;
            let parts = parse_content(item.content, &format!("{path}.content"))?;
            match role {
                ItemRole::System | ItemRole::Developer => {
                    for part in parts {
                        if let ContentPart::Text { text, .. } = part {
                            req.system.push(SystemBlock { text, cache_control: None });
                        }
                    }
                }
                ItemRole::User => push(req, Role::User, parts),
                ItemRole::Assistant => push(req, Role::Assistant, parts),
            }
        }
        "function_call" => push(
            req,
            Role::Assistant,
            vec![ContentPart::ToolCall {
                id: need(item.call_id, path, "call_id")?.to_string(),
                name: need(item.name, path, "name")?.to_string(),
                arguments: item.arguments.unwrap_or("{}").to_string(),
                signature: None,
            }],
        ),
        "function_call_output" => {
            let output = need(item.output, path, "output")?;
            let content = parse_content(Some(output), &format!("{path}.output"))?
                .into_iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text, .. } => Some(ToolResultPart::Text(text)),
                    ContentPart::Image { source, .. } => Some(ToolResultPart::Image(source)),
                    _ => None,
                })
                .collect();
            let tool_call_id = need(item.call_id, path, "call_id")?.to_string();
            push(
                req,
                Role::User,
                vec![ContentPart::ToolResult {
                    tool_call_id,
                    name: None,
                    content,
                    is_error: false,
                    cache_control: None,
                }],
            );
        }
        "reasoning" => {
            let text =
                item.summary.into_iter().flatten().filter_map(|s| s.text).collect::<Vec<_>>().join("\n\n");
            let signature = item.encrypted_content.filter(|s| !s.is_empty());
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

fn parse_content(content: Option<TextOrList<Part>>, path: &str) -> Result<Vec<ContentPart>, GatewayError> {
    let parts = match content {
        None => return Ok(Vec::new()),
        Some(TextOrList::Text(text)) => return Ok(vec![ContentPart::text(text)]),
        Some(TextOrList::List(parts)) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        out.push(parse_part(part, &format!("{path}[{i}]"))?);
    }
    Ok(out)
}

fn parse_part(part: Part, path: &str) -> Result<ContentPart, GatewayError> {
    Ok(match part.kind {
        "input_text" | "output_text" | "text" => ContentPart::text(need(part.text, path, "text")?),
        "refusal" => ContentPart::text(need(part.refusal, path, "refusal")?),
        "input_image" => {
            if part.file_id.is_some() {
                return Err(invalid(
                    "Uploaded `file_id` images cannot be translated; send `image_url`.",
                    &format!("{path}.file_id"),
                ));
            }
            let url = need(part.image_url, path, "image_url")?;
            ContentPart::Image {
                source: source_from_url_or_data(url, &format!("{path}.image_url"))?,
                cache_control: None,
            }
        }
        "input_file" => {
            let filename = part.filename.map(str::to_string);
            let source = match (part.file_url, part.file_data) {
                (Some(url), _) => source_from_url_or_data(url, &format!("{path}.file_url"))?,
                (None, Some(data)) => {
                    let (media_type, data) = parse_data_uri(data, &format!("{path}.file_data"))?;
                    MediaSource::Base64 { media_type, data }
                }
                (None, None) => {
                    return Err(invalid(
                        "`input_file` needs `file_data` (a base64 data URI) or `file_url`.",
                        &format!("{path}.file_data"),
                    ))
                }
            };
            ContentPart::Document { source, filename, cache_control: None }
        }
        "input_audio" => {
            let (audio_path, data, format) = match part.input_audio {
                Some(audio) => (format!("{path}.input_audio"), audio.data, audio.format),
                None => (path.to_string(), part.data, part.format),
            };
            let data = normalize_base64(need(data, &audio_path, "data")?, &format!("{audio_path}.data"))?;
            ContentPart::Audio {
                data: data.into_owned(),
                format: need(format, &audio_path, "format")?.to_string(),
            }
        }
        other => {
            return Err(invalid(
                format!("Content part type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ))
        }
    })
}

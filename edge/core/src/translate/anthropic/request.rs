//! Client side, inbound: a client's `/v1/messages` (or `count_tokens`) body
//! read into the hub. The body is read as the private typed shapes below
//! ([`client_body::read`]), so a 400 names the parameter exactly
//! (`messages[1].content[0].source.media_type`); what serde cannot say
//! (which block types and sources translate, media types) is checked after.

use super::super::canonical::*;
use super::super::client_body::{self, need, TextOrList};
use super::super::json_fields::{check_fields, invalid, parse_object};
use super::super::media::{check_public_url, image_media_type, normalize_base64, IMAGE_MEDIA_TYPES};
use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::{json, Number, Value};

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

/// A `/v1/messages` body.
#[derive(Deserialize)]
struct MessagesBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
    temperature: Option<Number>,
    top_p: Option<Number>,
    top_k: Option<u64>,
    stop_sequences: Option<Vec<&'a str>>,
    metadata: Option<Metadata<'a>>,
    thinking: Option<Thinking>,
    system: Option<TextOrList<'a, Block<'a>>>,
    tools: Option<Vec<Tool<'a>>>,
    tool_choice: Option<WireToolChoice<'a>>,
}

/// Anthropic refuses any other metadata field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata<'a> {
    user_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: ThinkingKind,
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ThinkingKind {
    Enabled,
    Disabled,
    Adaptive,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    name: Option<&'a str>,
    description: Option<&'a str>,
    input_schema: Option<Value>,
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type")]
    kind: ChoiceKind,
    name: Option<&'a str>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChoiceKind {
    Auto,
    Any,
    None,
    Tool,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    role: WireRole,
    #[serde(borrow)]
    content: TextOrList<'a, Block<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireRole {
    User,
    Assistant,
}

/// A content block (or a system block) of any type: `type` says which of
/// the other fields it needs.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    text: Option<&'a str>,
    /// `image`, `document`.
    source: Option<Source<'a>>,
    /// `document`.
    title: Option<&'a str>,
    /// `tool_use`.
    id: Option<&'a str>,
    name: Option<&'a str>,
    input: Option<Value>,
    /// `tool_result`.
    tool_use_id: Option<&'a str>,
    content: Option<TextOrList<'a, Block<'a>>>,
    is_error: Option<bool>,
    /// `thinking`.
    thinking: Option<&'a str>,
    signature: Option<&'a str>,
    /// `redacted_thinking`.
    data: Option<&'a str>,
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    media_type: Option<&'a str>,
    data: Option<&'a str>,
    url: Option<&'a str>,
}

/// Parses a `/v1/messages` body (or `/v1/messages/count_tokens` when
/// `count_tokens`, where `max_tokens` is not required).
pub(crate) fn parse_request(body: &[u8], count_tokens: bool) -> Result<CanonicalRequest, GatewayError> {
    let value = Value::Object(parse_object(body)?);
    if let Value::Object(obj) = &value {
        check_fields(obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "")?;
    }
    let body: MessagesBody = client_body::read(&value, "")?;
    if body.max_tokens.is_none() && !count_tokens {
        return Err(client_body::missing("max_tokens"));
    }
    let mut req = CanonicalRequest {
        model: body.model.to_string(),
        stream: body.stream.unwrap_or(false),
        max_output_tokens: body.max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        stop_sequences: body.stop_sequences.into_iter().flatten().map(str::to_string).collect(),
        user: body.metadata.and_then(|m| m.user_id).map(str::to_string),
        ..Default::default()
    };
    if let Some(thinking) = body.thinking {
        req.reasoning = Some(match thinking.kind {
            ThinkingKind::Enabled => {
                Reasoning::Budget(need(thinking.budget_tokens, "thinking", "budget_tokens")?)
            }
            ThinkingKind::Disabled => Reasoning::Disabled,
            ThinkingKind::Adaptive => Reasoning::Effort(ReasoningEffort::Medium),
        });
    }
    match body.system {
        None => {}
        Some(TextOrList::Text("")) => {}
        Some(TextOrList::Text(text)) => {
            req.system.push(SystemBlock { text: text.to_string(), cache_control: None })
        }
        Some(TextOrList::List(blocks)) => {
            for (i, block) in blocks.into_iter().enumerate() {
                let path = format!("system[{i}]");
                if block.kind != "text" {
                    return Err(invalid("System blocks must be `text` blocks.", &format!("{path}.type")));
                }
                let text = need(block.text, &path, "text")?.to_string();
                req.system.push(SystemBlock { text, cache_control: block.cache_control });
            }
        }
    }
    for (i, tool) in body.tools.into_iter().flatten().enumerate() {
        req.tools.push(parse_tool(tool, i)?);
    }
    if let Some(choice) = body.tool_choice {
        req.tool_choice = Some(match choice.kind {
            ChoiceKind::Auto => ToolChoice::Auto,
            ChoiceKind::Any => ToolChoice::Required,
            ChoiceKind::None => ToolChoice::None,
            ChoiceKind::Tool => ToolChoice::Tool(need(choice.name, "tool_choice", "name")?.to_string()),
        });
        if choice.disable_parallel_tool_use == Some(true) {
            req.parallel_tool_calls = Some(false);
        }
    }
    for (i, message) in body.messages.into_iter().enumerate() {
        let path = format!("messages[{i}].content");
        let role = match message.role {
            WireRole::User => Role::User,
            WireRole::Assistant => Role::Assistant,
        };
        let content = match message.content {
            TextOrList::Text(text) => vec![ContentPart::text(text)],
            TextOrList::List(blocks) => {
                let mut content = Vec::with_capacity(blocks.len());
                for (j, block) in blocks.into_iter().enumerate() {
                    content.push(parse_block(block, &format!("{path}[{j}]"))?);
                }
                content
            }
        };
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => req.messages.push(Message { role, content }),
        }
    }
    Ok(req)
}

fn parse_tool(tool: Tool, i: usize) -> Result<ToolDefinition, GatewayError> {
    let path = format!("tools[{i}]");
    if let Some(kind) = tool.kind.filter(|k| *k != "custom") {
        return Err(invalid(
            format!("Server tool `{kind}` is not supported through edgeway's translation layer; only custom (function) tools are."),
            &format!("{path}.type"),
        ));
    }
    Ok(ToolDefinition {
        name: need(tool.name, &path, "name")?.to_string(),
        description: tool.description.map(str::to_string),
        parameters: tool.input_schema.unwrap_or_else(|| json!({"type": "object"})),
        strict: None,
        cache_control: tool.cache_control,
    })
}

/// An `image` or `document` source; `None` for a plain-text document.
fn parse_source(source: Source, path: &str, image: bool) -> Result<Option<MediaSource>, GatewayError> {
    match source.kind {
        "base64" => {
            let media_type = need(source.media_type, path, "media_type")?;
            if image && !IMAGE_MEDIA_TYPES.contains(&media_type) {
                return Err(invalid(
                    format!("Image media type `{media_type}` is not supported."),
                    &format!("{path}.media_type"),
                ));
            }
            let data =
                normalize_base64(need(source.data, path, "data")?, &format!("{path}.data"))?.into_owned();
            let media_type = if image { image_media_type(media_type, &data) } else { media_type.to_string() };
            Ok(Some(MediaSource::Base64 { media_type, data }))
        }
        "url" => {
            let url = check_public_url(need(source.url, path, "url")?, &format!("{path}.url"))?;
            Ok(Some(MediaSource::Url { url }))
        }
        "text" => Ok(None),
        other => {
            Err(invalid(format!("Source type `{other}` cannot be translated."), &format!("{path}.type")))
        }
    }
}

fn parse_block(block: Block, path: &str) -> Result<ContentPart, GatewayError> {
    let cache_control = block.cache_control;
    Ok(match block.kind {
        "text" => ContentPart::Text { text: need(block.text, path, "text")?.to_string(), cache_control },
        "image" => {
            let spath = format!("{path}.source");
            match parse_source(need(block.source, path, "source")?, &spath, true)? {
                Some(source) => ContentPart::Image { source, cache_control },
                None => return Err(invalid("Images need a base64 or url source.", &spath)),
            }
        }
        "document" => {
            let spath = format!("{path}.source");
            let source = need(block.source, path, "source")?;
            // Plain-text documents are text.
            let text = source.data;
            match parse_source(source, &spath, false)? {
                Some(media) => ContentPart::Document {
                    source: media,
                    filename: block.title.map(str::to_string),
                    cache_control,
                },
                None => ContentPart::Text { text: need(text, &spath, "data")?.to_string(), cache_control },
            }
        }
        "tool_use" => ContentPart::ToolCall {
            id: need(block.id, path, "id")?.to_string(),
            name: need(block.name, path, "name")?.to_string(),
            arguments: block.input.map(|input| input.to_string()).unwrap_or_else(|| "{}".into()),
            signature: None,
        },
        "tool_result" => {
            let content = match block.content {
                None => Vec::new(),
                Some(TextOrList::Text(text)) => vec![ToolResultPart::Text(text.to_string())],
                Some(TextOrList::List(parts)) => {
                    let mut content = Vec::with_capacity(parts.len());
                    for (k, part) in parts.into_iter().enumerate() {
                        let ppath = format!("{path}.content[{k}]");
                        content.push(match parse_block(part, &ppath)? {
                            ContentPart::Text { text, .. } => ToolResultPart::Text(text),
                            ContentPart::Image { source, .. } => ToolResultPart::Image(source),
                            _ => {
                                return Err(invalid("Tool results may contain only text and images.", &ppath))
                            }
                        });
                    }
                    content
                }
            };
            ContentPart::ToolResult {
                tool_call_id: need(block.tool_use_id, path, "tool_use_id")?.to_string(),
                name: None,
                content,
                is_error: block.is_error.unwrap_or(false),
                cache_control,
            }
        }
        "thinking" => ContentPart::Thinking {
            text: block.thinking.unwrap_or("").to_string(),
            signature: block.signature.filter(|s| !s.is_empty()).map(str::to_string),
        },
        "redacted_thinking" => {
            ContentPart::RedactedThinking { data: need(block.data, path, "data")?.to_string() }
        }
        other => {
            return Err(invalid(
                format!("Content block type `{other}` cannot be translated."),
                &format!("{path}.type"),
            ))
        }
    })
}

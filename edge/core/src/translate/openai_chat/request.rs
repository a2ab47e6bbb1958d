//! Client side, inbound: a `/v1/chat/completions` body read into the hub,
//! strictly for translation or leniently for an OpenAI-compatible upstream
//! ([`ChatMode`]). The body is read as the private typed shapes below
//! ([`client_body::read`]), so a 400 names the parameter exactly
//! (`messages[2].content[0].image_url`); what only the hub cannot carry is
//! refused (or, in passthrough, let through) by the plain code after.

use super::super::canonical::*;
use super::super::client_body::{self, need, TextOrList, TextOrObject};
use super::super::json_fields::{check_fields, invalid, parse_object};
use super::super::media::{normalize_base64, parse_data_uri, source_from_url_or_data};
use super::super::reasoning::parse_effort;
use crate::error::GatewayError;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

const SUPPORTED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "reasoning_effort",
    "logprobs",
    "top_logprobs",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "modalities",
];

const UNSUPPORTED_FIELDS: &[&str] =
    &["logit_bias", "audio", "prediction", "web_search_options", "functions", "function_call", "verbosity"];

/// How strictly a `/v1/chat/completions` body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatMode {
    /// For translation to another dialect: everything the hub cannot carry
    /// is a 400 naming it.
    Translate,
    /// For an OpenAI-compatible upstream, which gets the body as sent: every
    /// field the gateway knows is type-checked, and what only the hub cannot
    /// carry (OpenAI-only parameters and content, unknown extension fields)
    /// is let through.
    Passthrough,
}

/// A chat request read in [`ChatMode::Passthrough`]: the body's top-level
/// object (to be forwarded), the canonical form of everything the hub can
/// carry (for estimates, the mock and token counting), and the first 400 that
/// [`ChatMode::Translate`] would have given, if any.
#[derive(Debug, Clone)]
pub(crate) struct ParsedChat {
    pub body: Map<String, Value>,
    pub canonical: CanonicalRequest,
    pub untranslatable: Option<GatewayError>,
    /// Media URLs on non-public hosts (already checked otherwise).
    pub private_media: crate::url_policy::PrivateMedia,
}

/// Parses a `/v1/chat/completions` body for translation.
pub(crate) fn parse_request(body: &[u8]) -> Result<CanonicalRequest, GatewayError> {
    let parsed = parse_chat(body, ChatMode::Translate)?;
    match parsed.untranslatable {
        Some(error) => Err(error),
        None => Ok(parsed.canonical),
    }
}

/// Records what [`ChatMode::Translate`] refuses; in that mode it is the error.
struct Deferred {
    mode: ChatMode,
    first: Option<GatewayError>,
}

impl Deferred {
    fn refuse(&mut self, error: GatewayError) -> Result<(), GatewayError> {
        match self.mode {
            ChatMode::Translate => Err(error),
            ChatMode::Passthrough => {
                self.first.get_or_insert(error);
                Ok(())
            }
        }
    }

    fn passthrough(&self) -> bool {
        self.mode == ChatMode::Passthrough
    }
}

/// Parses a `/v1/chat/completions` body in either mode. In
/// [`ChatMode::Translate`] the first refusal is returned as the error; in
/// [`ChatMode::Passthrough`] it is kept in [`ParsedChat::untranslatable`].
pub(crate) fn parse_chat(body: &[u8], mode: ChatMode) -> Result<ParsedChat, GatewayError> {
    let mut obj = parse_object(body)?;
    // Media URLs pass the one URL policy, and the passthrough body carries
    // them normalized. URLs on non-public hosts are routing's to decide on a
    // passthrough (a channel may list them); a translation refuses them.
    let mut private_media = crate::url_policy::PrivateMedia::default();
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        private_media = crate::url_policy::check_openai_chat_media(messages)?;
    }
    if let (ChatMode::Translate, Some(refusal)) = (mode, &private_media.refusal) {
        return Err(refusal.clone());
    }
    if let Some(field) = FORBIDDEN_CLIENT_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        return Err(invalid(
            format!("`{field}` cannot be set by clients; upstreams are chosen by the gateway."),
            field,
        ));
    }
    let mut deferred = Deferred { mode, first: None };
    if let Err(error) = check_fields(&obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "") {
        deferred.refuse(error)?;
    }
    let value = Value::Object(obj);
    let canonical = read_chat(client_body::read(&value, "")?, &mut deferred)?;
    let body = match value {
        Value::Object(body) => body,
        _ => Map::new(),
    };
    Ok(ParsedChat { body, canonical, untranslatable: deferred.first, private_media })
}

/// A `/v1/chat/completions` body (the fields the gateway reads).
#[derive(Deserialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    modalities: Option<Vec<&'a str>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<Number>,
    top_p: Option<Number>,
    top_k: Option<u64>,
    n: Option<u64>,
    seed: Option<i64>,
    presence_penalty: Option<Number>,
    frequency_penalty: Option<Number>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    user: Option<&'a str>,
    safety_identifier: Option<&'a str>,
    #[serde(borrow)]
    stop: Option<TextOrList<'a, &'a str>>,
    reasoning_effort: Option<&'a str>,
    response_format: Option<ResponseFormatParam<'a>>,
    tools: Option<Vec<ChatTool<'a>>>,
    #[serde(borrow)]
    tool_choice: Option<TextOrObject<'a, NamedToolChoice<'a>>>,
    parallel_tool_calls: Option<bool>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormatParam<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    json_schema: Option<JsonSchemaSpec<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaSpec<'a> {
    name: Option<&'a str>,
    schema: Option<Value>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow)]
    function: Option<FunctionDefinition<'a>>,
}

#[derive(Deserialize)]
struct FunctionDefinition<'a> {
    name: &'a str,
    description: Option<&'a str>,
    parameters: Option<Map<String, Value>>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct NamedToolChoice<'a> {
    #[serde(borrow)]
    function: FunctionName<'a>,
}

#[derive(Deserialize)]
struct FunctionName<'a> {
    name: &'a str,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    role: ChatRole,
    #[serde(borrow)]
    content: Option<TextOrList<'a, ChatPart<'a>>>,
    /// `assistant`.
    reasoning_content: Option<&'a str>,
    reasoning: Option<&'a str>,
    tool_calls: Option<Vec<ToolCall<'a>>>,
    function_call: Option<IgnoredAny>,
    /// `tool`.
    tool_call_id: Option<&'a str>,
    /// `function`.
    name: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(borrow)]
    function: CalledFunction<'a>,
}

#[derive(Deserialize)]
struct CalledFunction<'a> {
    name: &'a str,
    arguments: Option<&'a str>,
}

/// A content part of any type: `type` says which of the other fields it needs.
#[derive(Deserialize)]
struct ChatPart<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    text: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(borrow)]
    image_url: Option<TextOrObject<'a, ImageUrl<'a>>>,
    input_audio: Option<InputAudio<'a>>,
    file: Option<FileRef<'a>>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    url: &'a str,
}

#[derive(Deserialize)]
struct InputAudio<'a> {
    data: &'a str,
    format: &'a str,
}

#[derive(Deserialize)]
struct FileRef<'a> {
    filename: Option<&'a str>,
    file_id: Option<&'a str>,
    file_data: Option<&'a str>,
}

fn read_chat(body: ChatBody, deferred: &mut Deferred) -> Result<CanonicalRequest, GatewayError> {
    let stream = body.stream.unwrap_or(false);
    let nonzero = |n: Option<Number>| n.filter(|n| n.as_f64() != Some(0.0));
    let mut req = CanonicalRequest {
        model: body.model.to_string(),
        stream,
        stream_include_usage: stream && body.stream_options.and_then(|o| o.include_usage) == Some(true),
        max_output_tokens: match token_limit(body.max_completion_tokens, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => token_limit(body.max_tokens, "max_tokens")?,
        },
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        candidate_count: body.n,
        seed: body.seed,
        presence_penalty: nonzero(body.presence_penalty),
        frequency_penalty: nonzero(body.frequency_penalty),
        logprobs: body.logprobs.unwrap_or(false) || body.top_logprobs.unwrap_or(0) > 0,
        user: body.user.or(body.safety_identifier).map(str::to_string),
        stop_sequences: match body.stop {
            None => Vec::new(),
            Some(TextOrList::Text(stop)) => vec![stop.to_string()],
            Some(TextOrList::List(stops)) => stops.into_iter().map(str::to_string).collect(),
        },
        parallel_tool_calls: body.parallel_tool_calls,
        ..Default::default()
    };
    if body.modalities.into_iter().flatten().any(|m| m != "text") {
        deferred.refuse(invalid("Only the `text` output modality can be translated.", "modalities"))?;
    }
    if let Some(word) = body.reasoning_effort {
        req.reasoning = Some(parse_effort(word).ok_or_else(|| {
            invalid(
                format!("`reasoning_effort` must be none, minimal, low, medium or high, not `{word}`."),
                "reasoning_effort",
            )
        })?);
    }
    if let Some(format) = body.response_format {
        // A format the hub cannot carry is the upstream's to judge on a passthrough.
        match parse_response_format(format) {
            Ok(format) => req.response_format = Some(format),
            Err(error) => deferred.refuse(error)?,
        }
    }
    for (i, tool) in body.tools.into_iter().flatten().enumerate() {
        let path = format!("tools[{i}]");
        let kind = tool.kind.unwrap_or("function");
        if kind != "function" {
            deferred.refuse(invalid(
                format!("Tool type `{kind}` cannot be translated; only `function` tools can."),
                &format!("{path}.type"),
            ))?;
            continue;
        }
        let function = need(tool.function, &path, "function")?;
        req.tools.push(ToolDefinition {
            name: function.name.to_string(),
            description: function.description.map(str::to_string),
            parameters: function
                .parameters
                .map(Value::Object)
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: function.strict,
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
        Some(TextOrObject::Object(choice)) => Some(ToolChoice::Tool(choice.function.name.to_string())),
    };
    if body.messages.is_empty() {
        return Err(invalid("`messages` must contain at least one message.", "messages"));
    }
    for (i, message) in body.messages.into_iter().enumerate() {
        parse_message(message, i, &mut req, deferred)?;
    }
    Ok(req)
}

/// Body fields a client may never set: they would let a caller choose where
/// the gateway sends its provider credentials (LiteLLM CVE-2024-6587).
pub const FORBIDDEN_CLIENT_FIELDS: &[&str] =
    &["api_base", "base_url", "api_key", "custom_llm_provider", "azure_endpoint"];

/// Largest output-token limit accepted: no provider serves more, and the
/// gateway's reservation arithmetic stays far from overflow.
pub const MAX_OUTPUT_TOKENS_ACCEPTED: u64 = 1 << 32;

/// `max_tokens` / `max_completion_tokens`: no larger than [`MAX_OUTPUT_TOKENS_ACCEPTED`].
fn token_limit(limit: Option<u64>, key: &str) -> Result<Option<u64>, GatewayError> {
    match limit {
        Some(n) if n > MAX_OUTPUT_TOKENS_ACCEPTED => {
            Err(invalid(format!("`{key}` is too large: at most {MAX_OUTPUT_TOKENS_ACCEPTED} tokens."), key))
        }
        other => Ok(other),
    }
}

fn parse_response_format(format: ResponseFormatParam) -> Result<ResponseFormat, GatewayError> {
    match format.kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let spec = need(format.json_schema, "response_format", "json_schema")?;
            Ok(ResponseFormat::JsonSchema {
                name: spec.name.unwrap_or("response").to_string(),
                schema: spec.schema.unwrap_or_else(|| json!({"type": "object"})),
                strict: spec.strict,
            })
        }
        other => Err(invalid(
            format!("`response_format.type` `{other}` is not supported."),
            "response_format.type",
        )),
    }
}

fn parse_message(
    message: ChatMessage,
    i: usize,
    req: &mut CanonicalRequest,
    deferred: &mut Deferred,
) -> Result<(), GatewayError> {
    let path = format!("messages[{i}]");
    let content_path = format!("{path}.content");
    match message.role {
        ChatRole::System | ChatRole::Developer => {
            for text in content_texts(message.content, &content_path)? {
                if !text.is_empty() {
                    req.system.push(SystemBlock { text, cache_control: None });
                }
            }
        }
        ChatRole::User => {
            let content = parse_user_content(message.content, &content_path, deferred)?;
            push(req, Role::User, content);
        }
        ChatRole::Assistant => {
            let mut content = Vec::new();
            if let Some(text) =
                [message.reasoning_content, message.reasoning].into_iter().flatten().find(|t| !t.is_empty())
            {
                content.push(ContentPart::Thinking { text: text.to_string(), signature: None });
            }
            for text in content_texts(message.content, &content_path)? {
                content.push(ContentPart::text(text));
            }
            for call in message.tool_calls.into_iter().flatten() {
                content.push(ContentPart::ToolCall {
                    id: call.id.to_string(),
                    name: call.function.name.to_string(),
                    arguments: call.function.arguments.unwrap_or("{}").to_string(),
                    signature: None,
                });
            }
            if message.function_call.is_some() {
                deferred.refuse(invalid(
                    "Legacy `function_call` messages cannot be translated; use `tool_calls`.",
                    &format!("{path}.function_call"),
                ))?;
            }
            push(req, Role::Assistant, content);
        }
        ChatRole::Tool => {
            let tool_call_id = need(message.tool_call_id, &path, "tool_call_id")?.to_string();
            let text = content_texts(message.content, &content_path)?.join("");
            push(
                req,
                Role::User,
                vec![ContentPart::ToolResult {
                    tool_call_id,
                    name: None,
                    content: vec![ToolResultPart::Text(text)],
                    is_error: false,
                    cache_control: None,
                }],
            );
        }
        ChatRole::Function => {
            need(message.name, &path, "name")?;
            content_texts(message.content, &content_path)?;
            deferred.refuse(invalid(
                "Legacy `function` messages cannot be translated; use `tool` messages.",
                &format!("{path}.role"),
            ))?;
        }
    }
    Ok(())
}

fn push(req: &mut CanonicalRequest, role: Role, content: Vec<ContentPart>) {
    match req.messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(content),
        _ => req.messages.push(Message { role, content }),
    }
}

/// Texts of a string or text-parts content (refusal parts count as text).
fn content_texts(content: Option<TextOrList<ChatPart>>, path: &str) -> Result<Vec<String>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(TextOrList::Text(text)) => Ok(vec![text.to_string()]),
        Some(TextOrList::List(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| {
                let ppath = format!("{path}[{j}]");
                match part.kind {
                    "text" => Ok(need(part.text, &ppath, "text")?.to_string()),
                    "refusal" => Ok(need(part.refusal, &ppath, "refusal")?.to_string()),
                    other => Err(invalid(
                        format!("Content part type `{other}` is not allowed here."),
                        &format!("{ppath}.type"),
                    )),
                }
            })
            .collect(),
    }
}

fn parse_user_content(
    content: Option<TextOrList<ChatPart>>,
    path: &str,
    deferred: &mut Deferred,
) -> Result<Vec<ContentPart>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(TextOrList::Text(text)) => Ok(vec![ContentPart::text(text)]),
        Some(TextOrList::List(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                if let Some(part) = parse_user_part(part, &format!("{path}[{j}]"), deferred)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
    }
}

fn parse_user_part(
    part: ChatPart,
    path: &str,
    deferred: &mut Deferred,
) -> Result<Option<ContentPart>, GatewayError> {
    let part = match part.kind {
        "text" => ContentPart::text(need(part.text, path, "text")?),
        "image_url" => {
            let url = match need(part.image_url, path, "image_url")? {
                TextOrObject::Text(url) => url,
                TextOrObject::Object(image) => image.url,
            };
            let param = format!("{path}.image_url.url");
            let source = match source_from_url_or_data(url, &param) {
                // A passthrough may carry it to a channel that lists the
                // host (see `ParsedChat::private_media`); a translation cannot.
                Err(error) if deferred.passthrough() && crate::url_policy::only_host_is_private(url) => {
                    deferred.refuse(error)?;
                    MediaSource::Url { url: url.to_string() }
                }
                other => other?,
            };
            ContentPart::Image { source, cache_control: None }
        }
        "input_audio" => {
            let audio = need(part.input_audio, path, "input_audio")?;
            let data = normalize_base64(audio.data, &format!("{path}.input_audio.data"))?;
            ContentPart::Audio { data: data.into_owned(), format: audio.format.to_string() }
        }
        "file" => {
            let file = need(part.file, path, "file")?;
            let fpath = format!("{path}.file");
            let filename = file.filename.map(str::to_string);
            let source = if let Some(file_id) = file.file_id {
                deferred.refuse(invalid("Uploaded `file_id` references cannot be translated; send `file_data` as a base64 data URI.", &format!("{fpath}.file_id")))?;
                MediaSource::File { uri: file_id.to_string(), media_type: None }
            } else {
                let data = need(file.file_data, &fpath, "file_data")?;
                let (media_type, data) = parse_data_uri(data, &format!("{fpath}.file_data"))?;
                MediaSource::Base64 { media_type, data }
            };
            ContentPart::Document { source, filename, cache_control: None }
        }
        other => {
            deferred.refuse(invalid(
                format!("Content part type `{other}` is not supported."),
                &format!("{path}.type"),
            ))?;
            return Ok(None);
        }
    };
    Ok(Some(part))
}

//! Client side, inbound: a `/v1/chat/completions` body read into the hub,
//! strictly for translation or leniently for an OpenAI-compatible upstream
//! ([`ChatMode`]). Every field is type-checked where it is read, so a 400
//! names the parameter exactly (`messages[2].content[0].image_url`).

use super::super::canonical::*;
use super::super::json_fields::*;
use super::super::media::{normalize_base64, parse_data_uri, source_from_url_or_data};
use super::super::reasoning::parse_effort;
use crate::error::GatewayError;
use serde_json::{json, Map, Value};

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
    let mut deferred = Deferred { mode, first: None };
    let result = read_chat(&obj, &mut deferred);
    match result {
        Ok(canonical) => {
            Ok(ParsedChat { body: obj, canonical, untranslatable: deferred.first, private_media })
        }
        Err(error) => Err(error),
    }
}

fn read_chat(obj: &Map<String, Value>, deferred: &mut Deferred) -> Result<CanonicalRequest, GatewayError> {
    if let Some(field) = FORBIDDEN_CLIENT_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        return Err(invalid(
            format!("`{field}` cannot be set by clients; upstreams are chosen by the gateway."),
            field,
        ));
    }
    if let Err(error) = check_fields(obj, SUPPORTED_FIELDS, UNSUPPORTED_FIELDS, "") {
        deferred.refuse(error)?;
    }
    let mut req = CanonicalRequest { model: req_str(obj, "model", "")?.to_string(), ..Default::default() };
    req.stream = opt_bool(obj, "stream", "")?.unwrap_or(false);
    if let Some(options) = opt_object(obj, "stream_options", "")? {
        req.stream_include_usage =
            req.stream && opt_bool(options, "include_usage", "stream_options")? == Some(true);
    }
    if let Some(modalities) = opt_array(obj, "modalities", "")? {
        if modalities.iter().any(|m| !m.is_string()) {
            return Err(invalid("`modalities` must be an array of strings.", "modalities"));
        }
        if modalities.iter().any(|m| m.as_str() != Some("text")) {
            deferred.refuse(invalid("Only the `text` output modality can be translated.", "modalities"))?;
        }
    }
    req.max_output_tokens = match opt_token_limit(obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_token_limit(obj, "max_tokens")?,
    };
    req.temperature = opt_number(obj, "temperature", "")?;
    req.top_p = opt_number(obj, "top_p", "")?;
    req.top_k = opt_u64(obj, "top_k", "")?;
    req.candidate_count = opt_u64(obj, "n", "")?;
    req.seed = opt_i64(obj, "seed", "")?;
    req.presence_penalty = opt_number(obj, "presence_penalty", "")?.filter(|n| n.as_f64() != Some(0.0));
    req.frequency_penalty = opt_number(obj, "frequency_penalty", "")?.filter(|n| n.as_f64() != Some(0.0));
    req.logprobs =
        opt_bool(obj, "logprobs", "")?.unwrap_or(false) || opt_u64(obj, "top_logprobs", "")?.unwrap_or(0) > 0;
    req.user = opt_str(obj, "user", "")?.or(opt_str(obj, "safety_identifier", "")?).map(str::to_string);
    req.stop_sequences = parse_stop(obj.get("stop"))?;
    if let Some(word) = opt_str(obj, "reasoning_effort", "")? {
        req.reasoning = Some(parse_effort(word).ok_or_else(|| {
            invalid(
                format!("`reasoning_effort` must be none, minimal, low, medium or high, not `{word}`."),
                "reasoning_effort",
            )
        })?);
    }
    if let Some(format) = opt_object(obj, "response_format", "")? {
        match parse_response_format(format) {
            Ok(format) => req.response_format = Some(format),
            Err(error) if deferred.passthrough() && format.get("type").is_some_and(Value::is_string) => {
                deferred.refuse(error)?
            }
            Err(error) => return Err(error),
        }
    }
    if let Some(tools) = opt_array(obj, "tools", "")? {
        for (i, tool) in tools.iter().enumerate() {
            if let Some(tool) = parse_tool(tool, i, deferred)? {
                req.tools.push(tool);
            }
        }
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        req.tool_choice = Some(parse_tool_choice(choice)?);
    }
    req.parallel_tool_calls = opt_bool(obj, "parallel_tool_calls", "")?;
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid("`messages` must contain at least one message.", "messages"))
        }
        Some(_) => return Err(invalid("`messages` must be an array.", "messages")),
        None => return Err(invalid("Missing required parameter: `messages`.", "messages")),
    };
    for (i, message) in messages.iter().enumerate() {
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

/// `max_tokens` / `max_completion_tokens`: a non-negative integer no larger
/// than [`MAX_OUTPUT_TOKENS_ACCEPTED`].
fn opt_token_limit(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, GatewayError> {
    match opt_u64(obj, key, "")? {
        Some(n) if n > MAX_OUTPUT_TOKENS_ACCEPTED => {
            Err(invalid(format!("`{key}` is too large: at most {MAX_OUTPUT_TOKENS_ACCEPTED} tokens."), key))
        }
        other => Ok(other),
    }
}

fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, GatewayError> {
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("`stop` must be a string or an array of strings.", "stop"))
            })
            .collect(),
        Some(_) => Err(invalid("`stop` must be a string or an array of strings.", "stop")),
    }
}

pub(crate) fn parse_response_format(format: &Map<String, Value>) -> Result<ResponseFormat, GatewayError> {
    match req_str(format, "type", "response_format")? {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let spec = opt_object(format, "json_schema", "response_format")?.ok_or_else(|| {
                invalid(
                    "Missing required parameter: `response_format.json_schema`.",
                    "response_format.json_schema",
                )
            })?;
            Ok(ResponseFormat::JsonSchema {
                name: opt_str(spec, "name", "response_format.json_schema")?.unwrap_or("response").to_string(),
                schema: spec.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                strict: opt_bool(spec, "strict", "response_format.json_schema")?,
            })
        }
        other => Err(invalid(
            format!("`response_format.type` `{other}` is not supported."),
            "response_format.type",
        )),
    }
}

fn parse_tool(
    tool: &Value,
    i: usize,
    deferred: &mut Deferred,
) -> Result<Option<ToolDefinition>, GatewayError> {
    let path = format!("tools[{i}]");
    let obj = as_object(tool, &path)?;
    let kind = opt_str(obj, "type", &path)?.unwrap_or("function");
    if kind != "function" {
        deferred.refuse(invalid(
            format!("Tool type `{kind}` cannot be translated; only `function` tools can."),
            &format!("{path}.type"),
        ))?;
        return Ok(None);
    }
    let function = opt_object(obj, "function", &path)?.ok_or_else(|| {
        invalid(format!("Missing required parameter: `{path}.function`."), &format!("{path}.function"))
    })?;
    let fpath = format!("{path}.function");
    if function.get("parameters").is_some_and(|p| !(p.is_object() || p.is_null())) {
        return Err(invalid(
            format!("`{fpath}.parameters` must be a JSON Schema object."),
            &format!("{fpath}.parameters"),
        ));
    }
    Ok(Some(ToolDefinition {
        name: req_str(function, "name", &fpath)?.to_string(),
        description: opt_str(function, "description", &fpath)?.map(str::to_string),
        parameters: function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: opt_bool(function, "strict", &fpath)?,
        cache_control: None,
    }))
}

fn parse_tool_choice(choice: &Value) -> Result<ToolChoice, GatewayError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(invalid(format!("`tool_choice` `{other}` is not valid."), "tool_choice")),
        },
        Value::Object(obj) => {
            let name =
                obj.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                    invalid("`tool_choice.function.name` is required.", "tool_choice.function.name")
                })?;
            Ok(ToolChoice::Tool(name.to_string()))
        }
        _ => Err(invalid("`tool_choice` must be a string or an object.", "tool_choice")),
    }
}

fn parse_message(
    message: &Value,
    i: usize,
    req: &mut CanonicalRequest,
    deferred: &mut Deferred,
) -> Result<(), GatewayError> {
    let path = format!("messages[{i}]");
    let obj = as_object(message, &path)?;
    let role = req_str(obj, "role", &path)?;
    match role {
        "system" | "developer" => {
            for text in content_texts(obj.get("content"), &format!("{path}.content"))? {
                if !text.is_empty() {
                    req.system.push(SystemBlock { text, cache_control: None });
                }
            }
        }
        "user" => {
            let content = parse_user_content(obj.get("content"), &format!("{path}.content"), deferred)?;
            push(req, Role::User, content);
        }
        "assistant" => {
            let mut content = Vec::new();
            for key in ["reasoning_content", "reasoning"] {
                if let Some(text) = opt_str(obj, key, &path)?.filter(|t| !t.is_empty()) {
                    content.push(ContentPart::Thinking { text: text.to_string(), signature: None });
                    break;
                }
            }
            for text in content_texts(obj.get("content"), &format!("{path}.content"))? {
                content.push(ContentPart::text(text));
            }
            if let Some(calls) = opt_array(obj, "tool_calls", &path)? {
                for (j, call) in calls.iter().enumerate() {
                    let cpath = format!("{path}.tool_calls[{j}]");
                    let call = as_object(call, &cpath)?;
                    let function = opt_object(call, "function", &cpath)?.ok_or_else(|| {
                        invalid(format!("`{cpath}.function` is required."), &format!("{cpath}.function"))
                    })?;
                    content.push(ContentPart::ToolCall {
                        id: req_str(call, "id", &cpath)?.to_string(),
                        name: req_str(function, "name", &format!("{cpath}.function"))?.to_string(),
                        arguments: opt_str(function, "arguments", &format!("{cpath}.function"))?
                            .unwrap_or("{}")
                            .to_string(),
                        signature: None,
                    });
                }
            }
            if obj.get("function_call").is_some_and(|v| !v.is_null()) {
                deferred.refuse(invalid(
                    "Legacy `function_call` messages cannot be translated; use `tool_calls`.",
                    &format!("{path}.function_call"),
                ))?;
            }
            push(req, Role::Assistant, content);
        }
        "tool" => {
            let id = req_str(obj, "tool_call_id", &path)?.to_string();
            let text = content_texts(obj.get("content"), &format!("{path}.content"))?.join("");
            push(
                req,
                Role::User,
                vec![ContentPart::ToolResult {
                    tool_call_id: id,
                    name: None,
                    content: vec![ToolResultPart::Text(text)],
                    is_error: false,
                    cache_control: None,
                }],
            );
        }
        "function" => {
            req_str(obj, "name", &path)?;
            content_texts(obj.get("content"), &format!("{path}.content"))?;
            deferred.refuse(invalid(
                "Legacy `function` messages cannot be translated; use `tool` messages.",
                &format!("{path}.role"),
            ))?;
        }
        other => {
            return Err(invalid(format!("`{path}.role` `{other}` is not valid."), &format!("{path}.role")))
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
fn content_texts(content: Option<&Value>, path: &str) -> Result<Vec<String>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let ppath = format!("{path}[{j}]");
                let obj = as_object(part, &ppath)?;
                match req_str(obj, "type", &ppath)? {
                    "text" => Ok(req_str(obj, "text", &ppath)?.to_string()),
                    "refusal" => Ok(req_str(obj, "refusal", &ppath)?.to_string()),
                    other => Err(invalid(
                        format!("Content part type `{other}` is not allowed here."),
                        &format!("{ppath}.type"),
                    )),
                }
            })
            .collect(),
        Some(_) => Err(invalid(format!("`{path}` must be a string or an array."), path)),
    }
}

fn parse_user_content(
    content: Option<&Value>,
    path: &str,
    deferred: &mut Deferred,
) -> Result<Vec<ContentPart>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ContentPart::text(s.clone())]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                if let Some(part) = parse_user_part(part, &format!("{path}[{j}]"), deferred)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(format!("`{path}` must be a string or an array."), path)),
    }
}

fn parse_user_part(
    part: &Value,
    path: &str,
    deferred: &mut Deferred,
) -> Result<Option<ContentPart>, GatewayError> {
    let obj = as_object(part, path)?;
    let part = match req_str(obj, "type", path)? {
        "text" => ContentPart::text(req_str(obj, "text", path)?),
        "image_url" => {
            let url = match obj.get("image_url") {
                Some(Value::String(s)) => s.as_str(),
                Some(Value::Object(o)) => req_str(o, "url", &format!("{path}.image_url"))?,
                _ => {
                    return Err(invalid(
                        format!("`{path}.image_url` is required."),
                        &format!("{path}.image_url"),
                    ))
                }
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
            let audio = opt_object(obj, "input_audio", path)?.ok_or_else(|| {
                invalid(format!("`{path}.input_audio` is required."), &format!("{path}.input_audio"))
            })?;
            let apath = format!("{path}.input_audio");
            let data = normalize_base64(req_str(audio, "data", &apath)?, &format!("{apath}.data"))?;
            ContentPart::Audio {
                data: data.into_owned(),
                format: req_str(audio, "format", &apath)?.to_string(),
            }
        }
        "file" => {
            let file = opt_object(obj, "file", path)?
                .ok_or_else(|| invalid(format!("`{path}.file` is required."), &format!("{path}.file")))?;
            let fpath = format!("{path}.file");
            let filename = opt_str(file, "filename", &fpath)?.map(str::to_string);
            if let Some(file_id) = opt_str(file, "file_id", &fpath)? {
                deferred.refuse(invalid("Uploaded `file_id` references cannot be translated; send `file_data` as a base64 data URI.", &format!("{fpath}.file_id")))?;
                ContentPart::Document {
                    source: MediaSource::File { uri: file_id.to_string(), media_type: None },
                    filename,
                    cache_control: None,
                }
            } else {
                let (media_type, data) =
                    parse_data_uri(req_str(file, "file_data", &fpath)?, &format!("{fpath}.file_data"))?;
                ContentPart::Document {
                    source: MediaSource::Base64 { media_type, data },
                    filename,
                    cache_control: None,
                }
            }
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

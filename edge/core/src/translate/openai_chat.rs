//! OpenAI Chat Completions, both as the client's dialect and as an upstream's.

use super::canonical::*;
use super::json_fields::*;
use super::media::{
    data_uri, normalize_base64, parse_data_uri, source_from_url_or_data, MediaKind, OPENAI_MEDIA,
};
use super::normalize::{normalize_messages, tool_result_text};
use super::reasoning::{effort_for, effort_word, parse_effort};
use super::stream::{ClientRenderer, UpstreamParser};
use super::UpstreamCall;
use crate::error::{Dialect, GatewayError};
use crate::sse::{encode_event, SseEvent};
use crate::usage::{OpenAiUsage, TokenUsage};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

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

/// Models that only take `max_completion_tokens`.
fn wants_max_completion_tokens(model: &str, req: &CanonicalRequest) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    req.reasoning.is_some() || ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p))
}

/// Builds a `/chat/completions` body.
pub(crate) fn build_request(
    req: &CanonicalRequest,
    upstream_model: &str,
) -> Result<UpstreamCall, GatewayError> {
    if req.candidate_count.unwrap_or(1) > 1 {
        return Err(invalid("`n` > 1 cannot be translated between API dialects.", "n"));
    }
    if req.logprobs {
        return Err(invalid("`logprobs` cannot be translated between API dialects.", "logprobs"));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        let text = req.system.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join("\n\n");
        messages.push(json!({"role": "system", "content": text}));
    }
    for message in normalize_messages(&req.messages) {
        match message.role {
            Role::Assistant => messages.push(assistant_message(&message.content)),
            Role::User => user_messages(&message.content, &mut messages)?,
        }
    }
    body.insert("messages".into(), Value::Array(messages));
    if req.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(max) = req.max_output_tokens {
        let key = if wants_max_completion_tokens(upstream_model, req) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(max));
    }
    insert_number(&mut body, "temperature", &req.temperature);
    insert_number(&mut body, "top_p", &req.top_p);
    if req.top_k.is_some() {
        return Err(invalid("`top_k` is not supported by OpenAI-format upstreams.", "top_k"));
    }
    insert_number(&mut body, "presence_penalty", &req.presence_penalty);
    insert_number(&mut body, "frequency_penalty", &req.frequency_penalty);
    if let Some(seed) = req.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !req.stop_sequences.is_empty() {
        body.insert("stop".into(), json!(req.stop_sequences));
    }
    if let Some(user) = &req.user {
        body.insert("user".into(), json!(user));
    }
    if let Some(reasoning) = req.reasoning {
        if let Some(effort) = effort_for(reasoning) {
            body.insert("reasoning_effort".into(), json!(effort_word(effort)));
        }
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema { name, schema, strict }) => {
            let mut spec = json!({"name": name, "schema": schema});
            if let Some(strict) = strict {
                spec["strict"] = json!(strict);
            }
            body.insert("response_format".into(), json!({"type": "json_schema", "json_schema": spec}));
        }
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    function["description"] = json!(d);
                }
                if let Some(strict) = t.strict {
                    function["strict"] = json!(strict);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        if let Some(parallel) = req.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(parallel));
        }
    }
    if let Some(choice) = &req.tool_choice {
        body.insert(
            "tool_choice".into(),
            match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            },
        );
    }
    Ok(UpstreamCall {
        path: "/chat/completions".into(),
        body: to_bytes(&Value::Object(body)),
        stream: req.stream,
    })
}

fn insert_number(body: &mut Map<String, Value>, key: &str, value: &Option<serde_json::Number>) {
    if let Some(n) = value {
        body.insert(key.into(), Value::Number(n.clone()));
    }
}

fn assistant_message(content: &[ContentPart]) -> Value {
    let text: String = content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = content
        .iter()
        .filter_map(|p| match p {
            ContentPart::ToolCall { id, name, arguments, .. } => Some(
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
            ),
            _ => None,
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// An image as OpenAI's `image_url.url`, inline data checked against what
/// OpenAI-format upstreams accept.
fn image_url(source: &MediaSource) -> Result<String, GatewayError> {
    if let MediaSource::Base64 { media_type, data } = source {
        OPENAI_MEDIA.check_part(MediaKind::Image, media_type, data, "messages")?;
    }
    Ok(match source {
        MediaSource::Base64 { media_type, data } => data_uri(media_type, data),
        MediaSource::Url { url } => url.clone(),
        MediaSource::File { uri, .. } => uri.clone(),
    })
}

fn user_messages(content: &[ContentPart], messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    let mut parts: Vec<Value> = Vec::new();
    for part in content {
        match part {
            ContentPart::ToolResult { tool_call_id, content, is_error, .. } => {
                let mut text = tool_result_text(content);
                if *is_error && !text.is_empty() {
                    text = format!("Error: {text}");
                } else if *is_error {
                    text = "Error".into();
                }
                messages.push(json!({"role": "tool", "tool_call_id": tool_call_id, "content": text}));
                // Images in tool results: OpenAI tool messages carry text only,
                // so they follow in the next user message.
                for p in content {
                    if let ToolResultPart::Image(source) = p {
                        parts.push(json!({"type": "image_url", "image_url": {"url": image_url(source)?}}));
                    }
                }
            }
            ContentPart::Text { text, .. } => parts.push(json!({"type": "text", "text": text})),
            ContentPart::Image { source, .. } => {
                if let MediaSource::File { .. } = source {
                    return Err(invalid(
                        "Provider file references cannot be sent to OpenAI-format upstreams.",
                        "messages",
                    ));
                }
                parts.push(json!({"type": "image_url", "image_url": {"url": image_url(source)?}}));
            }
            ContentPart::Document { source, filename, .. } => match source {
                MediaSource::Base64 { media_type, data } => {
                    OPENAI_MEDIA.check_part(MediaKind::Document, media_type, data, "messages")?;
                    let mut file = json!({"file_data": data_uri(media_type, data)});
                    file["filename"] = json!(filename.clone().unwrap_or_else(|| "document.pdf".into()));
                    parts.push(json!({"type": "file", "file": file}));
                }
                _ => return Err(invalid(
                    "Documents given by URL cannot be sent to OpenAI-format upstreams; send them as base64.",
                    "messages",
                )),
            },
            ContentPart::Audio { data, format } => {
                let media_type = super::media::audio_media_type(format);
                OPENAI_MEDIA.check_part(MediaKind::Audio, &media_type, data, "messages")?;
                let format = super::media::audio_format(&media_type);
                parts.push(json!({"type": "input_audio", "input_audio": {"data": data, "format": format}}))
            }
            ContentPart::Thinking { .. }
            | ContentPart::RedactedThinking { .. }
            | ContentPart::ToolCall { .. } => {}
        }
    }
    if !parts.is_empty() {
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" => only["text"].clone(),
            _ => Value::Array(parts),
        };
        messages.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// OpenAI `finish_reason` → canonical.
pub(crate) fn parse_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Canonical → OpenAI `finish_reason`.
pub(crate) fn finish_reason_word(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop
        | FinishReason::StopSequence
        | FinishReason::PauseTurn
        | FinishReason::Other(_) => "stop",
        FinishReason::MalformedToolCall => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filter",
    }
}

/// Usage object in OpenAI's shape.
pub(crate) fn usage_json(usage: &TokenUsage) -> Value {
    serde_json::to_value(usage.to_openai()).unwrap_or(Value::Null)
}

/// Usage from an OpenAI usage value.
pub(crate) fn parse_usage(value: &Value) -> Option<TokenUsage> {
    let mut usage: OpenAiUsage = serde_json::from_value(value.clone()).ok()?;
    usage.prompt_tokens = usage.prompt_tokens.min(super::MAX_REPORTED_TOKENS);
    usage.completion_tokens = usage.completion_tokens.min(super::MAX_REPORTED_TOKENS);
    Some(super::clamp_usage(TokenUsage::from_openai(&usage)))
}

/// Parses a non-streaming upstream `chat.completion`.
pub(crate) fn parse_response(body: &[u8]) -> Result<CanonicalResponse, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamUnavailable)?;
    let choice = value.get("choices").and_then(|c| c.get(0)).ok_or(GatewayError::UpstreamUnavailable)?;
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    let mut content = Vec::new();
    let reasoning =
        message.get("reasoning_content").or_else(|| message.get("reasoning")).and_then(Value::as_str);
    if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
        content.push(ContentPart::Thinking { text: text.to_string(), signature: None });
    }
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(ContentPart::text(text));
    }
    let refusal = message.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty());
    if let Some(text) = refusal {
        content.push(ContentPart::text(text));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let function = call.get("function").cloned().unwrap_or(Value::Null);
        content.push(ContentPart::ToolCall {
            id: str_at(call, "id").to_string(),
            name: str_at(&function, "name").to_string(),
            arguments: function.get("arguments").and_then(Value::as_str).unwrap_or("{}").to_string(),
            signature: None,
        });
    }
    let mut finish_reason = parse_finish_reason(str_at(choice, "finish_reason"));
    if refusal.is_some() {
        finish_reason = FinishReason::Refusal;
    }
    let usage = value.get("usage").and_then(parse_usage);
    Ok(CanonicalResponse {
        id: str_at(&value, "id").to_string(),
        model: str_at(&value, "model").to_string(),
        created: value.get("created").and_then(Value::as_i64).unwrap_or(0),
        content,
        finish_reason,
        stop_sequence: None,
        usage_reported: usage.is_some(),
        usage_estimated: false,
        usage: usage.unwrap_or_default(),
    })
}

/// Renders a `chat.completion` for an OpenAI client.
pub(crate) fn render_response(resp: &CanonicalResponse) -> Value {
    let text: String = resp
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let reasoning: String = resp
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Thinking { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let mut message = assistant_message(&resp.content);
    if text.is_empty() && message.get("tool_calls").is_none() {
        message["content"] = json!("");
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    message["refusal"] = Value::Null;
    json!({
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason_word(&resp.finish_reason)}],
        "usage": super::marked(usage_json(&resp.usage), resp.usage_estimated),
    })
}

/// Maps an OpenAI error `type`/`code` in a stream to an HTTP status.
pub(crate) fn status_for_error_type(kind: &str, code: &str) -> u16 {
    match (kind, code) {
        (_, "rate_limit_exceeded") | ("rate_limit_error", _) | ("insufficient_quota", _) => 429,
        ("invalid_request_error", _) => 400,
        ("server_error", _) | ("api_error", _) => 500,
        (_, "overloaded") | ("overloaded_error", _) => 529,
        _ => 500,
    }
}

/// Reads an upstream OpenAI chat SSE stream.
#[derive(Debug, Default)]
pub(crate) struct ChatStreamParser {
    started: bool,
    /// OpenAI `tool_calls[].index` → canonical tool state.
    tools: BTreeMap<u64, PendingTool>,
    next_tool_index: usize,
}

#[derive(Debug, Default)]
struct PendingTool {
    canonical_index: Option<usize>,
    id: Option<String>,
    name: Option<String>,
    buffered_arguments: String,
}

impl UpstreamParser for ChatStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.flush_unnamed_tools(out);
            out.push(StreamEvent::End);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or_else(|| status_for_error_type(str_at(error, "type"), str_at(error, "code")));
            out.push(StreamEvent::Error(super::upstream_error_from_message(
                status,
                str_at(error, "message"),
            )));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.get("id").and_then(Value::as_str).map(str::to_string),
                model: chunk.get("model").and_then(Value::as_str).map(str::to_string),
            });
        }
        let mut finish = None;
        if let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) {
            if let Some(delta) = choice.get("delta") {
                let reasoning =
                    delta.get("reasoning_content").or_else(|| delta.get("reasoning")).and_then(Value::as_str);
                if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ThinkingDelta(text.to_string()));
                }
                for key in ["content", "refusal"] {
                    if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                        out.push(StreamEvent::TextDelta(text.to_string()));
                    }
                }
                for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    self.on_tool_delta(call, out);
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                finish = Some(parse_finish_reason(reason));
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()).and_then(parse_usage) {
            out.push(StreamEvent::Usage(usage));
        }
        if let Some(reason) = finish {
            self.flush_unnamed_tools(out);
            out.push(StreamEvent::Finish { reason, stop_sequence: None });
        }
    }
}

impl ChatStreamParser {
    fn on_tool_delta(&mut self, call: &Value, out: &mut Vec<StreamEvent>) {
        let key = call.get("index").and_then(Value::as_u64).unwrap_or(self.tools.len() as u64);
        let function = call.get("function");
        let fragment = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("");
        let tool = self.tools.entry(key).or_default();
        if let Some(id) = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            tool.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(name) =
            function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty())
        {
            tool.name.get_or_insert_with(|| name.to_string());
        }
        match tool.canonical_index {
            Some(index) => {
                if !fragment.is_empty() {
                    out.push(StreamEvent::ToolCallArguments {
                        tool_index: index,
                        fragment: fragment.to_string(),
                    });
                }
            }
            None => {
                tool.buffered_arguments.push_str(fragment);
                if tool.name.is_some() {
                    self.start_tool(key, out);
                }
            }
        }
    }

    fn start_tool(&mut self, key: u64, out: &mut Vec<StreamEvent>) {
        let index = self.next_tool_index;
        let Some(tool) = self.tools.get_mut(&key) else { return };
        if tool.canonical_index.is_some() {
            return;
        }
        self.next_tool_index += 1;
        tool.canonical_index = Some(index);
        let id = match &tool.id {
            Some(id) => id.clone(),
            None => format!("call_{index}"),
        };
        out.push(StreamEvent::ToolCallStart {
            tool_index: index,
            id,
            name: tool.name.clone().unwrap_or_default(),
            signature: None,
        });
        let buffered = std::mem::take(&mut tool.buffered_arguments);
        if !buffered.is_empty() {
            out.push(StreamEvent::ToolCallArguments { tool_index: index, fragment: buffered });
        }
    }

    /// Tools whose name never came are started (with an empty name) at the end
    /// rather than lost.
    fn flush_unnamed_tools(&mut self, out: &mut Vec<StreamEvent>) {
        let keys: Vec<u64> =
            self.tools.iter().filter(|(_, t)| t.canonical_index.is_none()).map(|(k, _)| *k).collect();
        for key in keys {
            self.start_tool(key, out);
        }
    }
}

/// Writes a Chat Completions SSE stream for an OpenAI client.
#[derive(Debug)]
pub(crate) struct ChatStreamRenderer {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    sent_role: bool,
    finish_sent: bool,
}

impl ChatStreamRenderer {
    pub(crate) fn new(id: String, model: String, created: i64, include_usage: bool) -> Self {
        Self { id, model, created, include_usage, sent_role: false, finish_sent: false }
    }

    fn chunk(&self, delta: Value, finish_reason: Value, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        encode_event(out, None, &chunk.to_string());
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if !self.sent_role {
            self.sent_role = true;
            self.chunk(json!({"role": "assistant", "content": ""}), Value::Null, out);
        }
    }
}

impl ClientRenderer for ChatStreamRenderer {
    fn on_event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { .. } => self.ensure_role(out),
            StreamEvent::TextDelta(text) => {
                self.ensure_role(out);
                self.chunk(json!({"content": text}), Value::Null, out);
            }
            StreamEvent::ThinkingDelta(text) => {
                self.ensure_role(out);
                self.chunk(json!({"reasoning_content": text}), Value::Null, out);
            }
            StreamEvent::ToolCallStart { tool_index, id, name, .. } => {
                self.ensure_role(out);
                self.chunk(
                    json!({"tool_calls": [{"index": tool_index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                    out,
                );
            }
            StreamEvent::ToolCallArguments { tool_index, fragment } => {
                self.ensure_role(out);
                self.chunk(
                    json!({"tool_calls": [{"index": tool_index, "function": {"arguments": fragment}}]}),
                    Value::Null,
                    out,
                );
            }
            StreamEvent::Finish { reason, .. } => {
                self.ensure_role(out);
                if !self.finish_sent {
                    self.finish_sent = true;
                    self.chunk(json!({}), json!(finish_reason_word(reason)), out);
                }
            }
            StreamEvent::ThinkingSignature(_)
            | StreamEvent::RedactedThinking(_)
            | StreamEvent::Usage(_)
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
        self.on_event(&StreamEvent::Finish { reason: reason.clone(), stop_sequence: None }, out);
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": super::marked(usage_json(&usage.copied().unwrap_or_default()), estimated),
            });
            encode_event(out, None, &chunk.to_string());
        }
        encode_event(out, None, "[DONE]");
    }

    fn error(&mut self, error: &GatewayError, out: &mut Vec<u8>) {
        encode_event(out, None, &error.body(Dialect::OpenAi));
    }
}

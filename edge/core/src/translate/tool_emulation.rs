//! Function-call emulation for models without native tools (opt-in per
//! channel, `emulate_tools`): the request's tools are described in the
//! system prompt and dropped from the request; the model's reply is read
//! back into proper tool calls for the client's dialect (`tool_calls`,
//! `tool_use`, `functionCall`), stream and not; a reply that does not parse
//! as a call of an offered tool is returned as the text it is.
//!
//! **Key design decision:** the emulation works on the canonical request and
//! on the canonical response and stream events, so it is one module for
//! every client and provider dialect. The model is asked to answer a call
//! with nothing but one JSON object, `{"tool_calls": [{"name": …,
//! "arguments": {…}}]}`; a stream is held only while its reply may still be
//! such an object (its first non-blank character is `{` or a code fence),
//! so plain answers stream as they come.

use super::canonical::{
    CanonicalRequest, CanonicalResponse, ContentPart, FinishReason, Message, Role, StreamEvent, SystemBlock,
    ToolChoice, ToolResultPart,
};
use serde_json::{json, Value};

/// The names of the tools a request offers, when it has tools (none are
/// offered when its tool choice is `none`: the tools are only dropped).
pub fn offered(req: &CanonicalRequest) -> Option<Vec<String>> {
    (!req.tools.is_empty()).then(|| match req.tool_choice {
        Some(ToolChoice::None) => Vec::new(),
        _ => req.tools.iter().map(|t| t.name.clone()).collect(),
    })
}

/// The request as sent to a model without tools: tools described in the
/// system prompt, past calls and results written as text.
pub fn rewrite_request(req: &CanonicalRequest) -> CanonicalRequest {
    let mut out = req.clone();
    out.tools.clear();
    out.tool_choice = None;
    out.parallel_tool_calls = None;
    if req.tool_choice != Some(ToolChoice::None) && !req.tools.is_empty() {
        out.system.push(SystemBlock { text: tools_prompt(req), cache_control: None });
    }
    for message in &mut out.messages {
        message.content = message.content.iter().map(|part| as_text(part, message.role)).collect();
    }
    merge_adjacent_text(&mut out.messages);
    out
}

/// The system prompt that offers the tools.
fn tools_prompt(req: &CanonicalRequest) -> String {
    let tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
        .collect();
    let must = match &req.tool_choice {
        Some(ToolChoice::Required) => "You must call at least one tool in this reply.\n".to_string(),
        Some(ToolChoice::Tool(name)) => format!("You must call the tool `{name}` in this reply.\n"),
        _ => String::new(),
    };
    format!(
        "You can call these tools (JSON Schema of each one's arguments):\n{}\n\n\
         To call tools, reply with nothing but one JSON object, no other text:\n\
         {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{...}}}}]}}\n\
         {must}Results of your calls come back as messages starting with `Tool result`. \
         When you need no tool, answer normally in text.",
        Value::Array(tools)
    )
}

/// A part as a model without tools reads it.
fn as_text(part: &ContentPart, role: Role) -> ContentPart {
    match part {
        ContentPart::ToolCall { name, arguments, .. } if role == Role::Assistant => {
            let arguments: Value =
                serde_json::from_str(arguments).unwrap_or(Value::Object(Default::default()));
            ContentPart::text(json!({"tool_calls": [{"name": name, "arguments": arguments}]}).to_string())
        }
        ContentPart::ToolResult { tool_call_id, name, content, is_error, .. } => {
            let text: Vec<&str> = content
                .iter()
                .filter_map(|p| match p {
                    ToolResultPart::Text(t) => Some(t.as_str()),
                    ToolResultPart::Image(_) => None,
                })
                .collect();
            let tool = name.as_deref().map(|n| format!(" of `{n}`")).unwrap_or_default();
            let failed = if *is_error { " (the call failed)" } else { "" };
            ContentPart::text(format!(
                "Tool result{tool} for call {tool_call_id}{failed}:\n{}",
                text.join("\n")
            ))
        }
        other => other.clone(),
    }
}

/// Adjacent text parts of one message joined (several calls of one turn
/// become one reply the model could have written).
fn merge_adjacent_text(messages: &mut [Message]) {
    for message in messages {
        let mut merged: Vec<ContentPart> = Vec::with_capacity(message.content.len());
        for part in message.content.drain(..) {
            match (merged.last_mut(), part) {
                (
                    Some(ContentPart::Text { text: prev, .. }),
                    ContentPart::Text { text, cache_control: None },
                ) if text.starts_with("{\"tool_calls\"") && prev.starts_with("{\"tool_calls\"") => {
                    // Two calls of one turn: one object listing both.
                    if let (Ok(mut a), Ok(b)) =
                        (serde_json::from_str::<Value>(prev), serde_json::from_str::<Value>(&text))
                    {
                        if let (Some(list), Some(more)) =
                            (a["tool_calls"].as_array_mut(), b["tool_calls"].as_array())
                        {
                            list.extend(more.iter().cloned());
                            *prev = a.to_string();
                            continue;
                        }
                    }
                    merged.push(ContentPart::text(text));
                }
                (_, part) => merged.push(part),
            }
        }
        message.content = merged;
    }
}

/// The calls a reply makes, when it is nothing but a tool-call object
/// naming offered tools (a surrounding code fence allowed).
pub fn parse_calls(reply: &str, offered: &[String]) -> Option<Vec<(String, String)>> {
    let mut text = reply.trim();
    if let Some(rest) = text.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        text = rest.strip_suffix("```")?.trim();
    }
    let value: Value = serde_json::from_str(text).ok()?;
    let calls = value.get("tool_calls")?.as_array()?;
    if calls.is_empty() {
        return None;
    }
    calls
        .iter()
        .map(|call| {
            let name = call.get("name")?.as_str()?;
            if !offered.iter().any(|o| o == name) {
                return None;
            }
            let arguments = match call.get("arguments") {
                Some(Value::Object(map)) => Value::Object(map.clone()).to_string(),
                // Some models write the arguments as a JSON string.
                Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object()) => {
                    s.clone()
                }
                None | Some(Value::Null) => "{}".to_string(),
                _ => return None,
            };
            Some((name.to_string(), arguments))
        })
        .collect()
}

/// A call id for the `index`th call of response `response_id`.
fn call_id(response_id: &str, index: usize) -> String {
    format!("call_{}", crate::mock_provider::short_hash(&format!("{response_id}:{index}")))
}

/// A whole response read back: a reply that is a tool-call object becomes
/// tool calls (finish reason `tool_calls`); anything else stays text.
pub fn read_response(response: &mut CanonicalResponse, offered: &[String]) {
    if response.content.iter().any(|p| !matches!(p, ContentPart::Text { .. } | ContentPart::Thinking { .. }))
    {
        return;
    }
    let text: String = response
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let Some(calls) = parse_calls(&text, offered) else { return };
    response.content.retain(|p| matches!(p, ContentPart::Thinking { .. }));
    for (index, (name, arguments)) in calls.into_iter().enumerate() {
        response.content.push(ContentPart::ToolCall {
            id: call_id(&response.id, index),
            name,
            arguments,
            signature: None,
        });
    }
    response.finish_reason = FinishReason::ToolCalls;
}

/// The stream stage: holds a reply's text while it may be a tool-call
/// object, then sends it on as tool calls or as the text it was.
#[derive(Debug)]
pub struct StreamEmulator {
    offered: Vec<String>,
    response_id: String,
    state: Hold,
}

#[derive(Debug, PartialEq, Eq)]
enum Hold {
    /// No text yet (or only blanks, held).
    Undecided(String),
    /// The reply may be a tool-call object: all of it is held.
    Holding(String),
    /// Plain text: passed on as it comes.
    Passing,
}

impl StreamEmulator {
    /// For a stream offering `offered` tools, answering as `response_id`.
    pub fn new(offered: Vec<String>, response_id: String) -> Self {
        // Nothing offered: nothing to read back, nothing to hold.
        let state = if offered.is_empty() { Hold::Passing } else { Hold::Undecided(String::new()) };
        Self { offered, response_id, state }
    }

    /// One upstream event in, the events to pass on out.
    pub fn on_event(&mut self, event: StreamEvent, out: &mut Vec<StreamEvent>) {
        match (event, &mut self.state) {
            (StreamEvent::TextDelta(text), Hold::Passing) => out.push(StreamEvent::TextDelta(text)),
            (StreamEvent::TextDelta(text), Hold::Holding(held)) => held.push_str(&text),
            (StreamEvent::TextDelta(text), Hold::Undecided(held)) => {
                held.push_str(&text);
                let start = held.trim_start();
                if start.is_empty() {
                    return;
                }
                if start.starts_with('{') || start.starts_with('`') {
                    self.state = Hold::Holding(std::mem::take(held));
                } else {
                    out.push(StreamEvent::TextDelta(std::mem::take(held)));
                    self.state = Hold::Passing;
                }
            }
            // The reply is over: what is held goes out before the finish
            // (whose `stop` the translator turns into `tool_calls` when
            // calls were made).
            (event @ (StreamEvent::Finish { .. } | StreamEvent::End | StreamEvent::Error(_)), _) => {
                self.release(out);
                out.push(event);
            }
            (other, _) => out.push(other),
        }
    }

    /// Sends on what is held: as tool calls when it parses, else as text.
    fn release(&mut self, out: &mut Vec<StreamEvent>) {
        let held = match std::mem::replace(&mut self.state, Hold::Passing) {
            Hold::Holding(held) | Hold::Undecided(held) => held,
            Hold::Passing => return,
        };
        match parse_calls(&held, &self.offered) {
            Some(calls) => {
                for (tool_index, (name, arguments)) in calls.into_iter().enumerate() {
                    out.push(StreamEvent::ToolCallStart {
                        tool_index,
                        id: call_id(&self.response_id, tool_index),
                        name,
                        signature: None,
                    });
                    out.push(StreamEvent::ToolCallArguments { tool_index, fragment: arguments });
                }
            }
            None if !held.is_empty() => out.push(StreamEvent::TextDelta(held)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{parse_client_request, ClientDialect};

    fn offered_names() -> Vec<String> {
        vec!["get_weather".into(), "get_time".into()]
    }

    fn request(body: Value) -> CanonicalRequest {
        parse_client_request(ClientDialect::OpenAiChat, body.to_string().as_bytes(), None, false)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn the_request_describes_the_tools_and_writes_history_as_text() {
        let req = request(json!({
            "model": "m",
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ]
        }));
        assert_eq!(offered(&req), Some(vec!["get_weather".to_string()]));
        let out = rewrite_request(&req);
        assert!(out.tools.is_empty() && out.tool_choice.is_none());
        let system = &out.system.last().map(|b| b.text.clone()).unwrap_or_default();
        assert!(
            system.contains("\"get_weather\"") && system.contains("You must call at least one tool"),
            "{system}"
        );
        let ContentPart::Text { text, .. } = &out.messages[1].content[0] else {
            panic!("{:?}", out.messages[1])
        };
        assert_eq!(out.messages[1].content.len(), 1, "one reply listing both calls");
        let calls: Value = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(calls["tool_calls"][1], json!({"name": "get_weather", "arguments": {"city": "Lyon"}}));
        let ContentPart::Text { text, .. } = &out.messages[2].content[0] else {
            panic!("{:?}", out.messages[2])
        };
        assert!(text.starts_with("Tool result") && text.contains("c1") && text.ends_with("sunny"), "{text}");
        // `none`: the tools are dropped, not described.
        let mut none = req.clone();
        none.tool_choice = Some(ToolChoice::None);
        assert_eq!(offered(&none), Some(vec![]));
        assert_eq!(rewrite_request(&none).system.len(), req.system.len());
    }

    #[test]
    fn replies_parse_into_calls_of_offered_tools_only() {
        let offered = offered_names();
        let call = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#;
        assert_eq!(
            parse_calls(call, &offered),
            Some(vec![("get_weather".to_string(), r#"{"city":"Paris"}"#.to_string())])
        );
        let fenced = format!("```json\n{call}\n```");
        assert!(parse_calls(&fenced, &offered).is_some(), "a code fence is allowed");
        let as_string = r#"{"tool_calls":[{"name":"get_time","arguments":"{\"tz\":\"UTC\"}"}]}"#;
        assert_eq!(parse_calls(as_string, &offered).map(|c| c[0].1.clone()), Some(r#"{"tz":"UTC"}"#.into()));
        for not_a_call in [
            "Sunny today.",
            r#"{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}"#,
            r#"{"tool_calls": []}"#,
            r#"{"answer": 42}"#,
            r#"{"tool_calls": [{"name": "get_time", "arguments": [1]}]}"#,
            r#"{"tool_calls": [{"name": "get_time"}]} and more"#,
        ] {
            assert_eq!(parse_calls(not_a_call, &offered), None, "{not_a_call}");
        }
    }

    #[test]
    fn a_whole_reply_becomes_tool_calls_or_stays_text() {
        let mut resp = CanonicalResponse {
            id: "r1".into(),
            model: "m".into(),
            created: 0,
            content: vec![ContentPart::text(r#"{"tool_calls":[{"name":"get_time","arguments":{}}]}"#)],
            finish_reason: FinishReason::Stop,
            stop_sequence: None,
            usage: Default::default(),
            usage_reported: false,
            usage_estimated: false,
        };
        read_response(&mut resp, &offered_names());
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert!(matches!(&resp.content[..], [ContentPart::ToolCall { name, arguments, id, .. }]
            if name == "get_time" && arguments == "{}" && id.starts_with("call_")));
        let mut text = CanonicalResponse { content: vec![ContentPart::text("{not json")], ..resp.clone() };
        text.finish_reason = FinishReason::Stop;
        read_response(&mut text, &offered_names());
        assert_eq!((text.finish_reason, text.content.len()), (FinishReason::Stop, 1));
    }

    fn run_stream(pieces: &[&str], offered: Vec<String>) -> Vec<StreamEvent> {
        let mut emulator = StreamEmulator::new(offered, "r1".into());
        let mut out = Vec::new();
        for piece in pieces {
            emulator.on_event(StreamEvent::TextDelta((*piece).to_string()), &mut out);
        }
        emulator.on_event(StreamEvent::Finish { reason: FinishReason::Stop, stop_sequence: None }, &mut out);
        out
    }

    #[test]
    fn a_stream_is_held_only_while_it_may_be_a_call() {
        // Plain text passes as it comes, the first blanks with it.
        let out = run_stream(&["  ", "Hel", "lo"], offered_names());
        assert_eq!(out[0], StreamEvent::TextDelta("  Hel".into()));
        assert_eq!(out[1], StreamEvent::TextDelta("lo".into()));
        // A call, split anywhere, is sent as one call at the end.
        let call = r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#;
        for cut in 1..call.len() {
            let out = run_stream(&[&call[..cut], &call[cut..]], offered_names());
            assert!(
                matches!(&out[..], [StreamEvent::ToolCallStart { name, .. }, StreamEvent::ToolCallArguments { fragment, .. }, StreamEvent::Finish { .. }]
                    if name == "get_weather" && fragment == r#"{"city":"Paris"}"#),
                "cut {cut}: {out:?}"
            );
        }
        // Something that looked like one and was not: the text, whole.
        let out = run_stream(&["{\"answer\"", ": 42}"], offered_names());
        assert_eq!(out[0], StreamEvent::TextDelta("{\"answer\": 42}".into()));
        // Nothing offered: nothing held.
        let out = run_stream(&["{"], Vec::new());
        assert_eq!(out[0], StreamEvent::TextDelta("{".into()));
    }
}

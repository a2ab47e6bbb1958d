//! Conversation clean-ups every provider-facing builder relies on.

use super::canonical::{ContentPart, Message, Role, ToolResultPart};
use std::collections::HashMap;

/// Text sent as the result of a tool call the conversation never answered
/// (Anthropic and Gemini refuse a tool call without its result).
pub const MISSING_TOOL_RESULT_TEXT: &str = "No result was provided for this tool call.";

/// Drops empty text parts and empty messages, merges consecutive turns of the
/// same role, puts tool results first in their user turn, and answers any
/// tool call that the next turn leaves unanswered.
pub fn normalize_messages(messages: &[Message]) -> Vec<Message> {
    let mut merged: Vec<Message> = Vec::with_capacity(messages.len());
    for message in messages {
        let content: Vec<ContentPart> = message
            .content
            .iter()
            .filter(|p| !matches!(p, ContentPart::Text { text, .. } if text.is_empty()))
            .cloned()
            .collect();
        if content.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some(last) if last.role == message.role => last.content.extend(content),
            _ => merged.push(Message { role: message.role, content }),
        }
    }
    for message in merged.iter_mut().filter(|m| m.role == Role::User) {
        // Stable partition: tool results first.
        let (mut results, rest): (Vec<_>, Vec<_>) =
            message.content.drain(..).partition(|p| matches!(p, ContentPart::ToolResult { .. }));
        results.extend(rest);
        message.content = results;
    }
    answer_missing_tool_results(merged)
}

fn answer_missing_tool_results(messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    let mut pending: Vec<String> = Vec::new();
    let count = messages.len();
    for (i, mut message) in messages.into_iter().enumerate() {
        if !pending.is_empty() {
            let answered: Vec<&str> = message
                .content
                .iter()
                .filter_map(|p| match p {
                    ContentPart::ToolResult { tool_call_id, .. } => Some(tool_call_id.as_str()),
                    _ => None,
                })
                .collect();
            let missing: Vec<ContentPart> = pending
                .iter()
                .filter(|id| !answered.contains(&id.as_str()))
                .map(|id| ContentPart::ToolResult {
                    tool_call_id: id.clone(),
                    name: None,
                    content: vec![ToolResultPart::Text(MISSING_TOOL_RESULT_TEXT.into())],
                    is_error: true,
                    cache_control: None,
                })
                .collect();
            if message.role == Role::User {
                let mut content = missing;
                content.append(&mut message.content);
                message.content = content;
            } else if !missing.is_empty() {
                out.push(Message { role: Role::User, content: missing });
            }
            pending.clear();
        }
        if message.role == Role::Assistant && i + 1 < count {
            pending = message
                .content
                .iter()
                .filter_map(|p| match p {
                    ContentPart::ToolCall { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect();
        }
        out.push(message);
    }
    out
}

/// Tool call id → function name, over the whole conversation (a later call
/// with a reused id wins, which matches how results follow their calls).
pub fn tool_names_by_id(messages: &[Message]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for message in messages {
        for part in &message.content {
            if let ContentPart::ToolCall { id, name, .. } = part {
                names.insert(id.clone(), name.clone());
            }
        }
    }
    names
}

/// Tool call ids as Anthropic accepts them (`^[a-zA-Z0-9_-]+$`): other
/// characters become `_`. Applied to calls and results alike, so pairs match.
pub fn anthropic_tool_id(id: &str) -> String {
    let cleaned: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if cleaned.is_empty() {
        "call_".into()
    } else {
        cleaned
    }
}

/// All text of a list of tool result parts, joined by newlines.
pub fn tool_result_text(parts: &[ToolResultPart]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            ToolResultPart::Text(t) => Some(t.as_str()),
            ToolResultPart::Image(_) => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ContentPart {
        ContentPart::ToolCall { id: id.into(), name: "f".into(), arguments: "{}".into(), signature: None }
    }

    fn result(id: &str) -> ContentPart {
        ContentPart::ToolResult {
            tool_call_id: id.into(),
            name: None,
            content: vec![ToolResultPart::Text("ok".into())],
            is_error: false,
            cache_control: None,
        }
    }

    #[test]
    fn merges_orders_and_answers() {
        let messages = vec![
            Message { role: Role::User, content: vec![ContentPart::text("hi")] },
            Message { role: Role::User, content: vec![ContentPart::text("")] },
            Message { role: Role::Assistant, content: vec![call("a"), call("b")] },
            Message { role: Role::User, content: vec![ContentPart::text("and")] },
            Message { role: Role::User, content: vec![result("b")] },
            Message { role: Role::Assistant, content: vec![ContentPart::text("done")] },
        ];
        let out = normalize_messages(&messages);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].content.len(), 1);
        let ids: Vec<String> = out[2]
            .content
            .iter()
            .map(|p| match p {
                ContentPart::ToolResult { tool_call_id, is_error, .. } => {
                    format!("{tool_call_id}:{is_error}")
                }
                ContentPart::Text { text, .. } => text.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(ids, ["a:true", "b:false", "and"]);
    }

    #[test]
    fn ids_are_made_anthropic_safe() {
        assert_eq!(anthropic_tool_id("call.1/x"), "call_1_x");
        assert_eq!(anthropic_tool_id(""), "call_");
    }
}

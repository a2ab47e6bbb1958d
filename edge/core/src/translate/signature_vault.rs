//! The signature vault's rules: provider state an OpenAI chat client cannot
//! hold, kept at the edge between turns and put back exactly as issued.
//!
//! Anthropic `thinking` blocks (with their `signature`) and
//! `redacted_thinking` must come back before the `tool_use` they preceded,
//! or a request with thinking on is refused; Gemini's `thoughtSignature`s on
//! function calls must come back on those calls. Anthropic, Gemini and
//! Responses clients carry them in their own protocol; an OpenAI chat client
//! (and every framework on the openai SDK) drops them. So after an answer to
//! an OpenAI chat client from an Anthropic or Gemini upstream that calls
//! tools and carries signed reasoning, [`preserved_reasoning`] says what to
//! keep, under [`vault_name`] of its first tool call id (what the client
//! sends back); before the next turn reaches such an upstream,
//! [`wanted_names`] says what to look up and [`restore_reasoning`] puts it
//! back. The store is [`crate::conversation_store`], one Durable Object per
//! client key, so another key cannot reach the state.
//!
//! **When the state is gone** (expired, evicted, never stored: another key,
//! another gateway), the documented fallback applies and the answer says so
//! in [`REASONING_STATE_HEADER`] (`fallback`): to Anthropic the turn is sent
//! with thinking off (Anthropic accepts a tool-use turn without thinking only
//! then), to Gemini the call carries Gemini's documented validator-skip
//! signature. A restored turn answers `restored`.

use super::canonical::{CanonicalRequest, CanonicalResponse, ContentPart, Message, Role};
use super::{reasoning, ClientDialect, UpstreamDialect};
use serde::{Deserialize, Serialize};

/// How long kept reasoning stays usable.
pub const VAULT_TTL_MS: i64 = 24 * 3600 * 1000;

/// Response header saying what became of the state a turn needed:
/// `restored`, or `fallback` when some was gone.
pub const REASONING_STATE_HEADER: &str = "x-edgeway-reasoning-state";

/// Longest tool call id used as a vault name (longer ones are not kept).
const MAX_ID_CHARS: usize = 256;

/// Most assistant turns looked up for one request (the latest ones).
const MAX_TURNS_LOOKED_UP: usize = 64;

/// One reasoning block kept as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeptReasoning {
    Thinking { text: String, signature: Option<String> },
    RedactedThinking { data: String },
}

impl KeptReasoning {
    fn into_part(self) -> ContentPart {
        match self {
            Self::Thinking { text, signature } => ContentPart::Thinking { text, signature },
            Self::RedactedThinking { data } => ContentPart::RedactedThinking { data },
        }
    }
}

/// Reasoning that must come back with a tool call in the next turn, for
/// clients (OpenAI chat) that cannot carry it: the thinking blocks and
/// signatures of a response, keyed by its first tool call id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreservedReasoning {
    /// The first tool call id of the response.
    pub tool_call_id: String,
    /// Signed thinking and redacted thinking, in order.
    pub reasoning: Vec<KeptReasoning>,
    /// Gemini signatures on tool calls: (tool call id, signature).
    pub tool_call_signatures: Vec<(String, String)>,
}

/// The vault entry name of the turn whose first tool call is `tool_call_id`.
pub fn vault_name(tool_call_id: &str) -> String {
    format!("v:{tool_call_id}")
}

/// Whether an answer to `client` from `upstream` may carry state the client
/// cannot hold (so [`preserved_reasoning`] is worth asking).
pub fn client_needs_vault(client: ClientDialect, upstream: UpstreamDialect) -> bool {
    client == ClientDialect::OpenAiChat && upstream != UpstreamDialect::OpenAiChat
}

/// What of `resp` to keep server-side, if anything (only responses that call
/// tools and carry signatures need it).
pub fn preserved_reasoning(resp: &CanonicalResponse) -> Option<PreservedReasoning> {
    let tool_call_id = resp.content.iter().find_map(|p| match p {
        ContentPart::ToolCall { id, .. } => Some(id.clone()),
        _ => None,
    })?;
    if tool_call_id.chars().count() > MAX_ID_CHARS {
        return None;
    }
    let reasoning: Vec<KeptReasoning> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::RedactedThinking { data } => {
                Some(KeptReasoning::RedactedThinking { data: data.clone() })
            }
            ContentPart::Thinking { text, signature: Some(sig) } => {
                Some(KeptReasoning::Thinking { text: text.clone(), signature: Some(sig.clone()) })
            }
            _ => None,
        })
        .collect();
    let tool_call_signatures: Vec<(String, String)> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::ToolCall { id, signature: Some(sig), .. } => Some((id.clone(), sig.clone())),
            _ => None,
        })
        .collect();
    if reasoning.is_empty() && tool_call_signatures.is_empty() {
        return None;
    }
    Some(PreservedReasoning { tool_call_id, reasoning, tool_call_signatures })
}

/// The first tool call id of an assistant turn that calls tools but carries
/// no signed reasoning (what the vault may fill in).
fn unsigned_tool_turn(message: &Message) -> Option<&str> {
    if message.role != Role::Assistant {
        return None;
    }
    let signed = message.content.iter().any(|p| {
        matches!(p, ContentPart::RedactedThinking { .. } | ContentPart::Thinking { signature: Some(_), .. })
            || matches!(p, ContentPart::ToolCall { signature: Some(_), .. })
    });
    if signed {
        return None;
    }
    message.content.iter().find_map(|p| match p {
        ContentPart::ToolCall { id, .. } => Some(id.as_str()),
        _ => None,
    })
}

/// The vault names to look up before `req` goes to `upstream`: its latest
/// assistant turns that call tools without the signatures the upstream
/// needs. None when the upstream needs none (OpenAI-format; Anthropic with
/// thinking off, which ignores past thinking).
pub fn wanted_names(req: &CanonicalRequest, upstream: UpstreamDialect) -> Vec<String> {
    let needed = match upstream {
        UpstreamDialect::OpenAiChat => false,
        UpstreamDialect::Anthropic => req.reasoning.and_then(reasoning::budget_for).is_some(),
        UpstreamDialect::Gemini => true,
    };
    if !needed {
        return Vec::new();
    }
    let mut names: Vec<String> = req
        .messages
        .iter()
        .rev()
        .filter_map(unsigned_tool_turn)
        .filter(|id| id.chars().count() <= MAX_ID_CHARS)
        .take(MAX_TURNS_LOOKED_UP)
        .map(vault_name)
        .collect();
    names.reverse();
    names
}

/// What [`restore_reasoning`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Turns given back their reasoning.
    pub restored: usize,
    /// Turns that needed it and found nothing (the fallback applies).
    pub missing: usize,
}

impl Restored {
    /// The [`REASONING_STATE_HEADER`] value, when any turn needed state.
    pub fn header_value(&self) -> Option<&'static str> {
        match (self.restored, self.missing) {
            (0, 0) => None,
            (_, 0) => Some("restored"),
            _ => Some("fallback"),
        }
    }
}

/// Puts preserved reasoning back: for each assistant turn that calls tools
/// but carries no signed reasoning, `lookup(first tool call id)` may return
/// what [`preserved_reasoning`] kept.
pub fn restore_reasoning(
    req: &mut CanonicalRequest,
    lookup: impl Fn(&str) -> Option<PreservedReasoning>,
) -> Restored {
    let mut done = Restored::default();
    for message in req.messages.iter_mut() {
        let Some(first_id) = unsigned_tool_turn(message).map(str::to_string) else { continue };
        match lookup(&first_id) {
            Some(kept) => {
                restore_in_message(message, kept);
                done.restored += 1;
            }
            None => done.missing += 1,
        }
    }
    done
}

fn restore_in_message(message: &mut Message, kept: PreservedReasoning) {
    for part in message.content.iter_mut() {
        if let ContentPart::ToolCall { id, signature, .. } = part {
            if let Some((_, sig)) = kept.tool_call_signatures.iter().find(|(k, _)| k == id) {
                *signature = Some(sig.clone());
            }
        }
    }
    // Unsigned reasoning text the client sent back is replaced by the signed original.
    message.content.retain(|p| !matches!(p, ContentPart::Thinking { signature: None, .. }));
    let mut content: Vec<ContentPart> = kept.reasoning.into_iter().map(KeptReasoning::into_part).collect();
    content.append(&mut message.content);
    message.content = content;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ContentPart {
        ContentPart::ToolCall { id: id.into(), name: "f".into(), arguments: "{}".into(), signature: None }
    }

    fn assistant(content: Vec<ContentPart>) -> Message {
        Message { role: Role::Assistant, content }
    }

    #[test]
    fn only_upstreams_that_need_signatures_look_them_up() {
        let mut req = CanonicalRequest {
            messages: vec![
                assistant(vec![call("a")]),
                assistant(vec![
                    ContentPart::Thinking { text: "t".into(), signature: Some("s".into()) },
                    call("b"),
                ]),
                assistant(vec![call("c"), call("d")]),
            ],
            ..Default::default()
        };
        assert_eq!(wanted_names(&req, UpstreamDialect::Gemini), ["v:a", "v:c"]);
        assert!(wanted_names(&req, UpstreamDialect::OpenAiChat).is_empty());
        assert!(wanted_names(&req, UpstreamDialect::Anthropic).is_empty(), "thinking off: not needed");
        req.reasoning = Some(super::super::canonical::Reasoning::Budget(2048));
        assert_eq!(wanted_names(&req, UpstreamDialect::Anthropic), ["v:a", "v:c"]);
    }

    #[test]
    fn kept_reasoning_round_trips_as_json_and_is_put_back_as_issued() {
        let resp = CanonicalResponse {
            id: "r".into(),
            model: "m".into(),
            created: 0,
            content: vec![
                ContentPart::Thinking { text: "plan".into(), signature: Some("sig-1".into()) },
                ContentPart::RedactedThinking { data: "opaque".into() },
                ContentPart::Thinking { text: "unsigned".into(), signature: None },
                ContentPart::ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    signature: Some("g-sig".into()),
                },
            ],
            finish_reason: super::super::canonical::FinishReason::ToolCalls,
            stop_sequence: None,
            usage: Default::default(),
            usage_reported: false,
            usage_estimated: false,
        };
        let kept = preserved_reasoning(&resp).unwrap_or_else(|| panic!("kept"));
        let text = serde_json::to_string(&kept).unwrap_or_default();
        let back: PreservedReasoning = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, kept);
        let mut req = CanonicalRequest {
            messages: vec![assistant(vec![
                ContentPart::Thinking { text: "plan".into(), signature: None },
                call("c1"),
            ])],
            ..Default::default()
        };
        let done = restore_reasoning(&mut req, |id| (id == "c1").then(|| back.clone()));
        assert_eq!(done, Restored { restored: 1, missing: 0 });
        assert_eq!(done.header_value(), Some("restored"));
        assert_eq!(
            req.messages[0].content,
            vec![
                ContentPart::Thinking { text: "plan".into(), signature: Some("sig-1".into()) },
                ContentPart::RedactedThinking { data: "opaque".into() },
                ContentPart::ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    signature: Some("g-sig".into())
                },
            ]
        );
        let mut req = CanonicalRequest { messages: vec![assistant(vec![call("zz")])], ..Default::default() };
        let done = restore_reasoning(&mut req, |_| None);
        assert_eq!(done.header_value(), Some("fallback"));
    }
}

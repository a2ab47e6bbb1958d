//! The operator's request policy: regular-expression rules over the prompt
//! text of every request, applied before routing. A `block` rule that
//! matches refuses the request with a 400 naming the rule, in the client's
//! dialect; a `replace` rule rewrites what it matches (redaction) before
//! the request goes anywhere.
//!
//! **Key design decision:** the patterns run on `regex-lite`, whose engine
//! takes time linear in the text whatever the pattern (no backtracking), so
//! a pattern like `(a+)+$` cannot stall an isolate; its wasm is a fraction
//! of `regex`'s because it has no Unicode tables (`\w`, `\d`, `\s` and case
//! folding are ASCII; literal characters of any script match as written).
//! Rules are compiled once per routing table, and a request pays for them
//! only when the operator has configured some.
//!
//! Prompt text is every string a client sends as prompt: message and
//! content-part text, system prompts and instructions, tool results, and
//! the other families' `input`, `prompt`, `query` and `documents`. Tool
//! names and arguments, media, ids and model names are not. Rules apply in
//! order, each to the text as the rules before it left it, so a redaction
//! can come before a block.

use crate::error::GatewayError;
use crate::translate::canonical::{ContentPart, ToolResultPart};
use crate::translate::CanonicalRequest;
use regex_lite::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Most rules in a policy.
pub const MAX_RULES: usize = 100;
/// Longest pattern, bytes.
pub const MAX_PATTERN_BYTES: usize = 1000;
/// Longest replacement, bytes.
pub const MAX_REPLACEMENT_BYTES: usize = 1000;
/// Compiled size limit of one pattern (bounds memory and the linear
/// engine's constant factor).
const COMPILED_SIZE_LIMIT: usize = 1 << 20;

/// JSON keys whose string values (directly, or in arrays) are prompt text.
const TEXT_KEYS: [&str; 8] =
    ["content", "text", "input", "prompt", "query", "documents", "system", "instructions"];

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Refuse the request.
    Block,
    /// Replace every match with `replacement` (`$1`, `${name}` expand groups).
    Replace,
}

/// One rule, as the operator configures it (in the routing config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Named in the refusal; letters, digits, `-`, `_`, `.`.
    pub name: String,
    pub pattern: String,
    pub action: PolicyAction,
    /// For `replace`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replacement: String,
    /// Match letters regardless of case (ASCII).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_insensitive: bool,
}

/// A policy compiled for use.
#[derive(Debug, Clone, Default)]
pub struct RequestPolicy {
    rules: Vec<(PolicyRule, Regex)>,
}

impl RequestPolicy {
    /// Checks and compiles `rules`; the error names the rule and the reason.
    pub fn compile(rules: &[PolicyRule]) -> Result<Self, String> {
        if rules.len() > MAX_RULES {
            return Err(format!("request policy: at most {MAX_RULES} rules"));
        }
        let mut compiled: Vec<(PolicyRule, Regex)> = Vec::with_capacity(rules.len());
        for rule in rules {
            let name = &rule.name;
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(format!(
                    "request policy: rule name `{name}` must be 1 to 64 of letters, digits, `-`, `_`, `.`"
                ));
            }
            if compiled.iter().any(|(r, _)| &r.name == name) {
                return Err(format!("request policy: rule `{name}` is named twice"));
            }
            if rule.pattern.is_empty() || rule.pattern.len() > MAX_PATTERN_BYTES {
                return Err(format!(
                    "request policy: rule `{name}`: the pattern must be 1 to {MAX_PATTERN_BYTES} bytes"
                ));
            }
            if rule.replacement.len() > MAX_REPLACEMENT_BYTES {
                return Err(format!(
                    "request policy: rule `{name}`: the replacement must be at most {MAX_REPLACEMENT_BYTES} bytes"
                ));
            }
            if rule.action == PolicyAction::Block && !rule.replacement.is_empty() {
                return Err(format!("request policy: rule `{name}`: a `block` rule takes no replacement"));
            }
            let regex = RegexBuilder::new(&rule.pattern)
                .case_insensitive(rule.case_insensitive)
                .size_limit(COMPILED_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("request policy: rule `{name}`: {e}"))?;
            if rule.action == PolicyAction::Replace && regex.is_match("") {
                return Err(format!(
                    "request policy: rule `{name}`: a `replace` pattern must not match the empty text"
                ));
            }
            compiled.push((rule.clone(), regex));
        }
        Ok(Self { rules: compiled })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `text` after every rule, or the name of the block rule that refuses it.
    pub fn apply_text<'t>(&self, text: &'t str) -> Result<Cow<'t, str>, &str> {
        let mut out = Cow::Borrowed(text);
        for (rule, regex) in &self.rules {
            match rule.action {
                PolicyAction::Block if regex.is_match(&out) => return Err(&rule.name),
                PolicyAction::Block => {}
                PolicyAction::Replace => {
                    if let Cow::Owned(changed) = regex.replace_all(&out, rule.replacement.as_str()) {
                        out = Cow::Owned(changed);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Applies the rules to the prompt text of an OpenAI-format body (see
    /// the module doc); `Ok(true)` when a replacement changed it.
    pub fn apply_json(&self, body: &mut Map<String, Value>) -> Result<bool, GatewayError> {
        let mut changed = false;
        body.iter_mut()
            .try_for_each(|(k, v)| self.walk_json(v, TEXT_KEYS.contains(&k.as_str()), &mut changed))?;
        Ok(changed)
    }

    fn walk_json(&self, value: &mut Value, text: bool, changed: &mut bool) -> Result<(), GatewayError> {
        match value {
            Value::String(s) if text => self.apply_in_place(s, changed),
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.walk_json(v, text, changed)),
            Value::Object(map) => map
                .iter_mut()
                .try_for_each(|(k, v)| self.walk_json(v, TEXT_KEYS.contains(&k.as_str()), changed)),
            _ => Ok(()),
        }
    }

    fn apply_in_place(&self, text: &mut String, changed: &mut bool) -> Result<(), GatewayError> {
        match self.apply_text(text) {
            Err(rule) => Err(GatewayError::PolicyRefused { rule: rule.to_string() }),
            Ok(Cow::Owned(new)) => {
                *text = new;
                *changed = true;
                Ok(())
            }
            Ok(Cow::Borrowed(_)) => Ok(()),
        }
    }

    /// Applies the rules to the prompt text of a parsed request (system,
    /// message text, tool results); `Ok(true)` when a replacement changed it.
    pub fn apply_canonical(&self, req: &mut CanonicalRequest) -> Result<bool, GatewayError> {
        let mut changed = false;
        for block in &mut req.system {
            self.apply_in_place(&mut block.text, &mut changed)?;
        }
        for part in req.messages.iter_mut().flat_map(|m| m.content.iter_mut()) {
            match part {
                ContentPart::Text { text, .. } => self.apply_in_place(text, &mut changed)?,
                ContentPart::ToolResult { content, .. } => {
                    for item in content {
                        if let ToolResultPart::Text(text) = item {
                            self.apply_in_place(text, &mut changed)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(name: &str, pattern: &str, action: PolicyAction, replacement: &str) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            pattern: pattern.into(),
            action,
            replacement: replacement.into(),
            case_insensitive: false,
        }
    }

    fn policy(rules: &[PolicyRule]) -> RequestPolicy {
        RequestPolicy::compile(rules).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rules_apply_in_order_and_block_names_the_rule() {
        let p = policy(&[
            rule("card", r"\b\d{4}(?:[ -]?\d{4}){3}\b", PolicyAction::Replace, "[card]"),
            rule("secret-word", r"(?i)\bswordfish\b", PolicyAction::Block, ""),
            rule("email", r"(?P<user>[a-z]+)@example\.com", PolicyAction::Replace, "${user}@redacted"),
        ]);
        assert_eq!(p.apply_text("pay 4111 1111 1111 1111 now").as_deref(), Ok("pay [card] now"));
        assert_eq!(p.apply_text("mail bob@example.com").as_deref(), Ok("mail bob@redacted"));
        assert!(matches!(p.apply_text("untouched"), Ok(Cow::Borrowed(_))), "no copy when nothing matches");
        assert_eq!(p.apply_text("the password is SwordFish"), Err("secret-word"));
        // a redaction before a block: the block sees the redacted text
        let p = policy(&[
            rule("mask", "swordfish", PolicyAction::Replace, "****"),
            rule("block", "swordfish", PolicyAction::Block, ""),
        ]);
        assert_eq!(p.apply_text("swordfish").as_deref(), Ok("****"));
        // non-Latin literals match as written
        let p = policy(&[rule("zh", "机密", PolicyAction::Block, "")]);
        assert_eq!(p.apply_text("这是机密文件"), Err("zh"));
    }

    #[test]
    fn catastrophic_patterns_run_in_linear_time() {
        // Exponential for a backtracking engine: 2^n paths on `a…ab`.
        let p = policy(&[
            rule("nested", "(a+)+$", PolicyAction::Block, ""),
            rule("alt", "(a|aa)+c", PolicyAction::Block, ""),
            rule("class", "([a-z]+)*[0-9]!", PolicyAction::Block, ""),
        ]);
        let text = format!("{}b", "a".repeat(200_000));
        assert_eq!(p.apply_text(&text).map(|t| t.len()), Ok(200_001), "no match, and it returns");
        let prose = "abcdefghij".repeat(20_000);
        assert!(p.apply_text(&prose).is_ok());
        let p = policy(&[rule("nested", "(a+)+$", PolicyAction::Block, "")]);
        assert_eq!(p.apply_text(&"a".repeat(100_000)), Err("nested"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        for (rules, needle) in [
            (vec![rule("x", "(", PolicyAction::Block, "")], "rule `x`"),
            (vec![rule("bad name", "a", PolicyAction::Block, "")], "rule name"),
            (vec![rule("a", "x", PolicyAction::Block, ""), rule("a", "y", PolicyAction::Block, "")], "twice"),
            (vec![rule("e", "", PolicyAction::Block, "")], "pattern must be"),
            (vec![rule("e", "x*", PolicyAction::Replace, "y")], "empty text"),
            (vec![rule("b", "x", PolicyAction::Block, "y")], "no replacement"),
            (
                vec![rule("big", &"a".repeat(MAX_PATTERN_BYTES + 1), PolicyAction::Block, "")],
                "pattern must be",
            ),
            (vec![rule("huge", "a{1000}{1000}", PolicyAction::Block, "")], "rule `huge`"),
        ] {
            let error = RequestPolicy::compile(&rules).err().unwrap_or_default();
            assert!(error.contains(needle), "{error}");
        }
        let many: Vec<PolicyRule> =
            (0..=MAX_RULES).map(|i| rule(&format!("r{i}"), "x", PolicyAction::Block, "")).collect();
        assert!(RequestPolicy::compile(&many).is_err());
    }

    #[test]
    fn only_prompt_text_of_a_body_is_touched() {
        let p = policy(&[rule("r", "text|secret", PolicyAction::Replace, "X")]);
        let body = json!({
            "model": "secret-model",
            "messages": [
                {"role": "system", "content": "a secret"},
                {"role": "user", "content": [{"type": "text", "text": "secret text"}, {"type": "image_url", "image_url": {"url": "https://h/secret.png"}}]},
                {"role": "assistant", "tool_calls": [{"id": "secret", "function": {"name": "secret", "arguments": "{\"q\":\"secret\"}"}}]},
                {"role": "tool", "tool_call_id": "secret", "content": "secret result"}
            ],
            "input": ["secret one", [1, 2]],
            "documents": [{"text": "secret doc"}, "secret"]
        });
        let body = {
            let mut map = body.as_object().cloned().unwrap_or_default();
            assert_eq!(p.apply_json(&mut map).ok(), Some(true));
            Value::Object(map)
        };
        assert_eq!(body["model"], "secret-model");
        assert_eq!(body["messages"][0]["content"], "a X");
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"type": "text", "text": "X X"}),
            "`type` untouched"
        );
        assert_eq!(body["messages"][1]["content"][1]["image_url"]["url"], "https://h/secret.png");
        assert_eq!(body["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"q\":\"secret\"}");
        assert_eq!(body["messages"][3]["content"], "X result");
        assert_eq!(body["input"], json!(["X one", [1, 2]]));
        assert_eq!(body["documents"], json!([{"text": "X doc"}, "X"]));
        let block = policy(&[rule("no-secrets", "secret", PolicyAction::Block, "")]);
        let object = |v: Value| v.as_object().cloned().unwrap_or_default();
        let error = block
            .apply_json(&mut object(json!({"prompt": "my secret"})))
            .err()
            .unwrap_or(GatewayError::Internal);
        assert_eq!(error, GatewayError::PolicyRefused { rule: "no-secrets".into() });
        assert_eq!(error.status(), 400);
        assert_eq!(
            block.apply_json(&mut object(json!({"model": "secret", "prompt": "ok"}))).ok(),
            Some(false)
        );
    }

    #[test]
    fn a_parsed_request_has_its_text_rewritten() {
        let body = br#"{"model":"m","max_tokens":9,"system":"keep secret","messages":[
            {"role":"user","content":[{"type":"text","text":"secret"},{"type":"tool_result","tool_use_id":"t","content":"secret out"}]}]}"#;
        let mut req = crate::translate::parse_client_request(
            crate::translate::ClientDialect::Anthropic,
            body,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let p = policy(&[rule("r", "secret", PolicyAction::Replace, "[x]")]);
        assert_eq!(p.apply_canonical(&mut req).ok(), Some(true));
        assert_eq!(req.system[0].text, "keep [x]");
        assert!(matches!(&req.messages[0].content[0], ContentPart::Text { text, .. } if text == "[x]"));
        assert!(matches!(&req.messages[0].content[1], ContentPart::ToolResult { content, .. }
            if content == &[ToolResultPart::Text("[x] out".into())]));
        assert_eq!(p.apply_canonical(&mut req).ok(), Some(false));
    }
}

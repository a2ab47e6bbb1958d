//! Endpoint families: the kinds of work a client asks for besides chat
//! (legacy text completions, embeddings, moderations, rerank), one module each that reads the
//! family's request, sizes it, and answers for the built-in mock.
//!
//! **Key design decision:** every family runs through the one generation
//! pipeline (authenticate → route → admit → forward → meter), not a path of
//! its own. A family contributes data to it: the path under an OpenAI-format
//! base URL, what the request weighs for the quota reservation, and the
//! mock's answer. Its OpenAI-format body is passed through to an
//! OpenAI-compatible upstream with only `model` rewritten (and usage asked
//! for on streams), as a chat body is; which providers serve a family is a
//! field of their row ([`crate::provider::Provider::families`]).

pub mod completions;
pub mod embeddings;
pub mod moderations;
pub mod rerank;

use crate::error::GatewayError;
use crate::translate::json_fields::{invalid, parse_object, req_str};
use crate::translate::{PromptSize, FORBIDDEN_CLIENT_FIELDS, PROMPT_OVERHEAD_TOKENS};
use crate::usage::estimate_tokens;
use serde_json::{Map, Value};

/// An endpoint family (serialized as [`Family::as_str`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Family {
    /// Chat in any client dialect (OpenAI chat, Responses, Anthropic, Gemini).
    #[default]
    Chat,
    /// `POST /v1/completions` (legacy text completions).
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/moderations`.
    Moderations,
    /// `POST /v1/rerank` (Cohere, Jina, Voyage and OpenAI-compatible servers).
    Rerank,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 5] =
        [Self::Chat, Self::Completions, Self::Embeddings, Self::Moderations, Self::Rerank];

    /// The wire and column text (`chat`, `completions`, `embeddings`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Moderations => "moderations",
            Self::Rerank => "rerank",
        }
    }

    /// Whether its answer is generated text (billed as output tokens);
    /// the others answer vectors, verdicts or scores.
    pub fn has_text_output(self) -> bool {
        matches!(self, Self::Chat | Self::Completions)
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The path that serves the family under an OpenAI-format base URL
    /// (`https://api.openai.com/v1`).
    pub fn openai_path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Moderations => "/moderations",
            Self::Rerank => "/rerank",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

serde_as_str!(Family, "endpoint family");

/// A set of families (which ones a provider serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families(u16);

impl Families {
    /// Chat only.
    pub const CHAT: Self = Self::of(&[Family::Chat]);
    /// What OpenAI's own API serves: every family but rerank.
    pub const OPENAI: Self =
        Self::of(&[Family::Chat, Family::Completions, Family::Embeddings, Family::Moderations]);
    /// Every family.
    pub const ALL: Self = Self::of(&Family::ALL);

    /// The set of `list`.
    pub const fn of(list: &[Family]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Whether `family` is in the set.
    pub const fn contains(self, family: Family) -> bool {
        self.0 & family.bit() != 0
    }

    /// The families in the set, in [`Family::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// A request of a family other than chat, read and validated: what routing,
/// admission and metering need, and the body passed through.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// The output limit (`Some(0)`: the family produces no output tokens).
    pub max_output_tokens: Option<u64>,
    pub prompt: PromptSize,
    /// The body as the client sent it (with any default the gateway made
    /// explicit), passed through to an OpenAI-compatible upstream.
    pub body: Map<String, Value>,
}

/// Reads an OpenAI-format request body of `family` (not chat: chat is read
/// by the translators, [`crate::pipeline::inbound`]).
pub fn read_request(family: Family, body: &[u8]) -> Result<FamilyRequest, GatewayError> {
    let obj = parse_object(body)?;
    if let Some(field) = FORBIDDEN_CLIENT_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        return Err(invalid(
            format!("`{field}` cannot be set by clients; upstreams are chosen by the gateway."),
            field,
        ));
    }
    let model = req_str(&obj, "model", "")?.to_string();
    if model.is_empty() {
        return Err(invalid("You must provide a model parameter.", "model"));
    }
    match family {
        Family::Completions => completions::read(model, obj),
        Family::Embeddings => embeddings::read(model, obj),
        Family::Moderations => moderations::read(model, obj),
        Family::Rerank => rerank::read(model, obj),
        Family::Chat => Err(GatewayError::Internal),
    }
}

/// What the built-in mock answers.
#[derive(Debug, Clone, PartialEq)]
pub enum MockAnswer {
    /// A JSON body.
    Whole(Vec<u8>),
    /// The `data:` payloads of an SSE stream, `[DONE]` last.
    Stream(Vec<String>),
}

/// The mock's answer to a request of `family` (its body as read), from
/// `model`, at `created` (unix seconds), with the gateway's estimate of the
/// prompt as its reported prompt tokens.
pub fn mock_answer(
    family: Family,
    body: &Map<String, Value>,
    model: &str,
    created: i64,
    prompt_tokens: u64,
) -> MockAnswer {
    match family {
        Family::Completions => completions::mock_answer(body, model, created, prompt_tokens),
        Family::Embeddings => MockAnswer::Whole(embeddings::mock_answer(body, model, prompt_tokens)),
        Family::Moderations => MockAnswer::Whole(moderations::mock_answer(body, model)),
        Family::Rerank => MockAnswer::Whole(rerank::mock_answer(body, model, prompt_tokens)),
        Family::Chat => MockAnswer::Whole(Vec::new()),
    }
}

/// Text inputs (`prompt`, `input`): a string, an array of strings, an array
/// of token ids or an array of such arrays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextInputs {
    /// Each input, token arrays written as their JSON text.
    pub items: Vec<String>,
    /// Bytes of text over every input.
    pub text_bytes: usize,
    /// Token ids over every input.
    pub token_ids: u64,
}

impl TextInputs {
    /// The prompt's size: token ids counted exactly, text by the one
    /// estimator (and one token per byte for the bound).
    pub fn prompt_size(&self) -> PromptSize {
        PromptSize {
            estimate: estimate_tokens(self.text_bytes).saturating_add(self.token_ids),
            upper_bound: (self.text_bytes as u64)
                .saturating_add(self.token_ids)
                .saturating_add(PROMPT_OVERHEAD_TOKENS),
        }
    }
}

/// Reads the text inputs in `key`: at most `max_items`, each string
/// non-empty unless `allow_empty`.
pub fn read_text_inputs(
    obj: &Map<String, Value>,
    key: &str,
    max_items: usize,
    allow_empty: bool,
) -> Result<TextInputs, GatewayError> {
    let shape = || {
        invalid(
            format!("`{key}` must be a string, an array of strings, an array of token ids or an array of token-id arrays."),
            key,
        )
    };
    let mut inputs = TextInputs::default();
    let text = |inputs: &mut TextInputs, s: &str, param: String| {
        if s.is_empty() && !allow_empty {
            return Err(invalid(format!("`{param}` must not be empty."), &param));
        }
        inputs.text_bytes += s.len();
        inputs.items.push(s.to_string());
        Ok(())
    };
    let tokens = |inputs: &mut TextInputs, ids: &[Value], param: String| {
        if ids.is_empty() && !allow_empty {
            return Err(invalid(format!("`{param}` must not be empty."), &param));
        }
        if ids.iter().any(|t| t.as_u64().is_none()) {
            return Err(invalid(format!("`{param}` must hold non-negative integer token ids."), &param));
        }
        inputs.token_ids = inputs.token_ids.saturating_add(ids.len() as u64);
        inputs.items.push(Value::Array(ids.to_vec()).to_string());
        Ok(())
    };
    match obj.get(key) {
        None | Some(Value::Null) => {
            return Err(invalid(format!("Missing required parameter: `{key}`."), key));
        }
        Some(Value::String(s)) => text(&mut inputs, s, key.to_string())?,
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid(format!("`{key}` must not be an empty array."), key));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            tokens(&mut inputs, items, key.to_string())?;
        }
        Some(Value::Array(items)) => {
            if items.len() > max_items {
                return Err(invalid(format!("`{key}` holds more than {max_items} inputs."), key));
            }
            for (i, item) in items.iter().enumerate() {
                let param = format!("{key}[{i}]");
                match item {
                    Value::String(s) => text(&mut inputs, s, param)?,
                    Value::Array(ids) => tokens(&mut inputs, ids, param)?,
                    _ => return Err(shape()),
                }
            }
        }
        Some(_) => return Err(shape()),
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(value: Value) -> Result<TextInputs, GatewayError> {
        let obj = json!({ "input": value });
        read_text_inputs(obj.as_object().unwrap_or(&Map::new()), "input", 3, false)
    }

    #[test]
    fn families_as_sets_and_text() {
        let set = Families::of(&[Family::Chat, Family::Embeddings]);
        assert!(set.contains(Family::Chat) && set.contains(Family::Embeddings));
        assert!(!set.contains(Family::Completions));
        assert_eq!(set.iter().collect::<Vec<_>>(), [Family::Chat, Family::Embeddings]);
        assert!(Family::ALL.iter().all(|f| Families::ALL.contains(*f)));
        assert!(serde_json::from_str::<Family>("\"nope\"").is_err());
        for f in Family::ALL {
            assert_eq!(Family::parse(f.as_str()), Some(f));
            assert_eq!(serde_json::to_value(f).ok(), Some(Value::from(f.as_str())));
            assert_eq!(serde_json::from_value::<Family>(Value::from(f.as_str())).ok(), Some(f));
        }
    }

    #[test]
    fn every_text_input_shape() {
        let one = inputs(json!("hello")).unwrap_or_default();
        assert_eq!((one.items.len(), one.text_bytes, one.token_ids), (1, 5, 0));
        let many = inputs(json!(["ab", "cd"])).unwrap_or_default();
        assert_eq!((many.items.len(), many.text_bytes), (2, 4));
        let ids = inputs(json!([1, 2, 3])).unwrap_or_default();
        assert_eq!((ids.items, ids.token_ids), (vec!["[1,2,3]".to_string()], 3));
        let nested = inputs(json!([[1, 2], [3]])).unwrap_or_default();
        assert_eq!((nested.items.len(), nested.token_ids), (2, 3));
        assert_eq!(nested.prompt_size().estimate, 3);
        assert_eq!(one.prompt_size().upper_bound, 5 + PROMPT_OVERHEAD_TOKENS);
        for (bad, param) in [
            (json!(""), "input"),
            (json!([]), "input"),
            (json!(["a", ""]), "input[1]"),
            (json!([[1], [-1]]), "input[1]"),
            (json!([1.5]), "input"),
            (json!(["a", "b", "c", "d"]), "input"),
            (json!({"x": 1}), "input"),
            (json!([{"x": 1}]), "input"),
            (Value::Null, "input"),
        ] {
            let error = inputs(bad.clone()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{bad}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{bad}");
        }
    }

    #[test]
    fn forbidden_and_missing_fields() {
        for (body, param) in [
            (r#"{"model":"m","input":"x","api_base":"http://evil"}"#, "api_base"),
            (r#"{"input":"x"}"#, "model"),
            (r#"{"model":"","input":"x"}"#, "model"),
            (r#"{"model":7,"input":"x"}"#, "model"),
        ] {
            let error =
                read_request(Family::Embeddings, body.as_bytes()).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
        assert!(matches!(read_request(Family::Embeddings, b"[1]"), Err(GatewayError::InvalidRequest { .. })));
        assert!(matches!(read_request(Family::Completions, b"{nope"), Err(GatewayError::InvalidJson { .. })));
    }
}

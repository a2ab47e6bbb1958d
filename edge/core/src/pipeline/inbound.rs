//! Reading a generation request into what routing, admission, forwarding and
//! metering need.
//!
//! Every client dialect is parsed by its translator module. OpenAI chat
//! requests are parsed once, leniently ([`Inbound::read`]): every field the
//! gateway knows is type-checked (a wrong type is a 400 before any upstream
//! is called), what only the canonical hub cannot carry is let through for
//! an OpenAI-compatible upstream, and the 400 a translation would give is
//! kept for the candidates that need one. Requests of the other endpoint
//! families (embeddings, text completions) are read by their
//! [`crate::family`] module and passed through the same way.

use crate::error::GatewayError;
use crate::family::embeddings::{self, EmbedAnswer, EmbedOptions, EmbedRequest};
use crate::family::{self, Family, FamilyRequest};
use crate::provider::body_quirks::ParamRule;
use crate::provider::Provider;
use crate::request_policy::RequestPolicy;
use crate::translate::{self, CanonicalRequest, ClientDialect, PromptSize};
use serde_json::{Map, Value};

/// The request as the client sent it, in the form its dialect allows cheaply.
#[derive(Debug, Clone)]
enum Request {
    /// OpenAI chat: the body to pass through, its canonical form, and the
    /// refusal a translation would give.
    OpenAiChat {
        body: Box<Map<String, Value>>,
        canonical: Box<CanonicalRequest>,
        untranslatable: Option<GatewayError>,
        /// Media URLs on non-public hosts, for routing to allow or refuse.
        private_media: crate::url_policy::PrivateMedia,
    },
    /// Every other dialect: the canonical form.
    Canonical(Box<CanonicalRequest>),
    /// Another endpoint family: the body to pass through, in OpenAI format
    /// (a Gemini client's embeddings request is read into one), and what a
    /// Gemini client's embeddings request carries beyond it.
    OpenAiFamily { body: Box<Map<String, Value>>, embed: Option<Box<EmbedOptions>> },
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub client: ClientDialect,
    /// The endpoint family asked for.
    pub family: Family,
    /// Model name as the client asked for it (suffix included).
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// The client's output limit, or the one the gateway imposed.
    pub max_output_tokens: Option<u64>,
    /// The output limit the gateway imposed (quota-limited keys only).
    pub output_cap: Option<u64>,
    /// Prompt size: the estimate billed when the provider reports nothing,
    /// and the bound the quota reservation uses.
    pub prompt: PromptSize,
    request: Request,
}

impl Inbound {
    /// Parses and validates a request body of `family`. Gemini carries the
    /// model and streaming in the path (`path_model`, `path_stream`).
    pub fn read_family(
        family: Family,
        client: ClientDialect,
        body: &[u8],
        path_model: Option<&str>,
        path_stream: bool,
    ) -> Result<Self, GatewayError> {
        if family == Family::Chat {
            return Self::read(client, body, path_model, path_stream);
        }
        if family == Family::Embeddings && client == ClientDialect::Gemini {
            let (read, options) = embeddings::read_gemini(body, path_model.unwrap_or_default())?;
            return Ok(Self::of_family(family, client, read, Some(Box::new(options))));
        }
        Ok(Self::of_family(family, client, family::read_request(family, body)?, None))
    }

    fn of_family(
        family: Family,
        client: ClientDialect,
        read: FamilyRequest,
        embed: Option<Box<EmbedOptions>>,
    ) -> Self {
        Self {
            client,
            family,
            model: read.model,
            stream: read.stream,
            client_wants_usage: read.client_wants_usage,
            max_output_tokens: read.max_output_tokens,
            output_cap: None,
            prompt: read.prompt,
            request: Request::OpenAiFamily { body: Box::new(read.body), embed },
        }
    }

    /// What a Gemini client's embeddings request carries beyond its
    /// OpenAI-format body; `None` otherwise.
    pub fn embed_options(&self) -> Option<&EmbedOptions> {
        match &self.request {
            Request::OpenAiFamily { embed, .. } => embed.as_deref(),
            _ => None,
        }
    }

    /// The shape of answer an embeddings request asked for; `None` for the
    /// other families.
    pub fn embed_answer(&self) -> Option<EmbedAnswer> {
        match (&self.request, self.embed_options()) {
            (_, Some(options)) => Some(options.answer),
            (Request::OpenAiFamily { body, .. }, None) if self.family == Family::Embeddings => {
                Some(EmbedAnswer::OpenAi { base64: embeddings::asks_base64(body) })
            }
            _ => None,
        }
    }

    /// An embeddings request as a translation needs it; `None` for the
    /// other families.
    pub fn embed_request(&self) -> Option<EmbedRequest> {
        match &self.request {
            Request::OpenAiFamily { body, embed } if self.family == Family::Embeddings => {
                Some(EmbedRequest::new(body, embed.as_deref()))
            }
            _ => None,
        }
    }

    /// Parses and validates a chat request body. Gemini carries the model
    /// and streaming in the path (`path_model`, `path_stream`).
    pub fn read(
        client: ClientDialect,
        body: &[u8],
        path_model: Option<&str>,
        path_stream: bool,
    ) -> Result<Self, GatewayError> {
        let request = match client {
            ClientDialect::OpenAiChat => {
                let parsed = translate::parse_openai_chat_passthrough(body)?;
                Request::OpenAiChat {
                    body: Box::new(parsed.body),
                    canonical: Box::new(parsed.canonical),
                    untranslatable: parsed.untranslatable,
                    private_media: parsed.private_media,
                }
            }
            _ => Request::Canonical(Box::new(translate::parse_client_request(
                client,
                body,
                path_model,
                path_stream,
            )?)),
        };
        let canonical = match &request {
            Request::OpenAiChat { canonical, .. } | Request::Canonical(canonical) => canonical,
            Request::OpenAiFamily { .. } => return Err(GatewayError::Internal),
        };
        Ok(Self {
            client,
            family: Family::Chat,
            model: canonical.model.clone(),
            stream: canonical.stream,
            client_wants_usage: canonical.stream_include_usage,
            max_output_tokens: canonical.max_output_tokens,
            output_cap: None,
            prompt: translate::prompt_size(canonical),
            request,
        })
    }

    /// The canonical form of a chat request (for every client; for OpenAI
    /// chat clients it may lack what only a passthrough can carry: see
    /// [`Self::for_translation`]); `None` for the other families.
    pub fn canonical(&self) -> Option<&CanonicalRequest> {
        match &self.request {
            Request::OpenAiChat { canonical, .. } | Request::Canonical(canonical) => Some(canonical),
            Request::OpenAiFamily { .. } => None,
        }
    }

    /// The canonical form, to change what a translation sends (signatures the
    /// vault restores); the passthrough body is not touched.
    pub fn canonical_mut(&mut self) -> Option<&mut CanonicalRequest> {
        match &mut self.request {
            Request::OpenAiChat { canonical, .. } | Request::Canonical(canonical) => Some(canonical),
            Request::OpenAiFamily { .. } => None,
        }
    }

    /// Media URLs on non-public hosts in the request: only a channel listing
    /// all their hosts may receive it (nothing for other dialects, whose
    /// parsers refuse such URLs).
    pub fn private_media(&self) -> Option<&crate::url_policy::PrivateMedia> {
        match &self.request {
            Request::OpenAiChat { private_media, .. } if private_media.refusal.is_some() => {
                Some(private_media)
            }
            _ => None,
        }
    }

    /// The canonical form for a candidate that needs translation, or the
    /// 400 naming what cannot be translated.
    pub fn for_translation(&self) -> Result<&CanonicalRequest, GatewayError> {
        match &self.request {
            Request::OpenAiChat { untranslatable: Some(error), .. } => Err(error.clone()),
            Request::OpenAiChat { canonical, .. } | Request::Canonical(canonical) => Ok(canonical),
            Request::OpenAiFamily { .. } => Err(GatewayError::InvalidRequest {
                message: format!(
                    "`{}` requests are served only by OpenAI-format upstreams.",
                    self.family.openai_path()
                ),
                param: Some("model".into()),
            }),
        }
    }

    /// Applies the operator's request policy to the prompt text: a block
    /// rule refuses the request; a replacement rewrites it, and the request
    /// is then read again from the rewritten body, so its passthrough body,
    /// canonical form and size stay one request.
    pub fn apply_policy(&mut self, policy: &RequestPolicy) -> Result<(), GatewayError> {
        if policy.is_empty() {
            return Ok(());
        }
        match &mut self.request {
            Request::OpenAiChat { body, .. } => {
                if policy.apply_json(body)? {
                    let rewritten = serde_json::to_vec(&**body).map_err(|_| GatewayError::Internal)?;
                    *self = Self::read(self.client, &rewritten, None, false)?;
                }
            }
            Request::OpenAiFamily { body, embed } => {
                if policy.apply_json(body)? {
                    // The body is in OpenAI format whatever the client's dialect.
                    let rewritten = serde_json::to_vec(&**body).map_err(|_| GatewayError::Internal)?;
                    let read = family::read_request(self.family, &rewritten)?;
                    *self = Self::of_family(self.family, self.client, read, embed.take());
                }
            }
            Request::Canonical(canonical) => {
                if policy.apply_canonical(canonical)? {
                    self.prompt = translate::prompt_size(canonical);
                }
            }
        }
        Ok(())
    }

    /// Imposes an output limit when the client set none, so a quota
    /// reservation based on it really bounds the cost.
    pub fn cap_output(&mut self, limit: u64) {
        if self.max_output_tokens.is_some() {
            return;
        }
        self.output_cap = Some(limit);
        self.max_output_tokens = Some(limit);
        match &mut self.request {
            Request::OpenAiChat { body, canonical, .. } => {
                body.insert("max_tokens".into(), Value::from(limit));
                canonical.max_output_tokens = Some(limit);
            }
            Request::Canonical(canonical) => canonical.max_output_tokens = Some(limit),
            Request::OpenAiFamily { body, .. } => {
                body.insert("max_tokens".into(), Value::from(limit));
            }
        }
    }

    /// The OpenAI-format body as the client sent it (with the gateway's
    /// output cap), for an OpenAI-compatible upstream or the built-in mock;
    /// `None` for other client dialects.
    pub fn passthrough_body(&self) -> Option<&Map<String, Value>> {
        match &self.request {
            Request::OpenAiChat { body, .. } | Request::OpenAiFamily { body, .. } => Some(body),
            Request::Canonical(_) => None,
        }
    }

    /// The body sent to an OpenAI-compatible upstream: the client's, with
    /// `model` rewritten, the provider row's quirks applied (parameters
    /// renamed or dropped, the output limit in the field the row takes) and,
    /// on streams, usage always asked for when the provider understands
    /// `stream_options` (provider usage is what gets billed). Also the
    /// parameters dropped. Only the top-level object is rebuilt; every value
    /// the gateway does not change is written back as parsed.
    pub fn passthrough_upstream_body(
        &self,
        upstream_model: &str,
        provider: &Provider,
    ) -> Option<(Vec<u8>, Vec<&'static str>)> {
        let body = self.passthrough_body()?;
        let mut out = Vec::with_capacity(self.prompt.upper_bound.min(1 << 20) as usize + 64);
        out.push(b'{');
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, key: &str, value: &Value| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        };
        let force_usage = self.stream && provider.stream_usage_option;
        // Chat's output limit goes in the one field the provider takes.
        let limit_field = (self.family == Family::Chat)
            .then(|| provider.output_limit.field(body.contains_key("reasoning_effort")));
        let mut dropped = Vec::new();
        for (key, value) in body.iter() {
            match key.as_str() {
                "model" => field(&mut out, key, &Value::String(upstream_model.to_string())),
                "stream_options" if force_usage => {}
                "max_tokens" | "max_completion_tokens" if limit_field.is_some() => {}
                _ => match provider.quirks.rule(key) {
                    ParamRule::Keep => field(&mut out, key, value),
                    ParamRule::Rename(to) if !body.contains_key(to) => field(&mut out, to, value),
                    ParamRule::Rename(_) => {}
                    ParamRule::Drop => {
                        dropped.extend(provider.quirks.dropped.iter().copied().find(|d| *d == key))
                    }
                },
            }
        }
        if let Some(limit_field) = limit_field {
            // Both sent: the smaller one holds (the gateway's cap is one of them).
            let limit = ["max_tokens", "max_completion_tokens"]
                .iter()
                .filter_map(|f| body.get(*f))
                .min_by_key(|v| v.as_u64().unwrap_or(u64::MAX));
            if let Some(limit) = limit {
                field(&mut out, limit_field, limit);
            }
        }
        if force_usage {
            let mut options = match body.get("stream_options") {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            options.insert("include_usage".into(), Value::Bool(true));
            field(&mut out, "stream_options", &Value::Object(options));
        }
        out.push(b'}');
        Some((out, dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::provider_by_id;

    fn read(body: &str) -> Result<Inbound, GatewayError> {
        Inbound::read(ClientDialect::OpenAiChat, body.as_bytes(), None, false)
    }

    fn openai() -> &'static Provider {
        provider_by_id("openai").unwrap_or(&crate::provider::PROVIDERS[0])
    }

    #[test]
    fn passthrough_types_are_checked_once_at_the_edge() {
        for (body, param) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#, "messages[0].role"),
            (r#"{"model":"m","messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":9223372036854775807}"#,
                "max_tokens",
            ),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"api_base":"http://evil"}"#,
                "api_base",
            ),
        ] {
            let error = read(body).err().unwrap_or(GatewayError::Internal);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.to_json(crate::error::Dialect::OpenAi)["error"]["param"], param, "{body}");
        }
        assert!(matches!(read("{nope"), Err(GatewayError::InvalidJson { .. })));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = format!(r#"{{"model":"m","messages":{deep}}}"#);
        assert!(
            matches!(read(&body), Err(GatewayError::InvalidJson { .. })),
            "nesting bombs are a clean 400"
        );
    }

    #[test]
    fn openai_only_features_pass_through_and_refuse_translation() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},
            {"type":"file","file":{"file_id":"file-abc"}}]}],"logit_bias":{"50256":-100},"vendor_extension":{"x":1}}"#;
        let inbound = read(body).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(inbound.passthrough_body().is_some_and(|b| b.contains_key("vendor_extension")));
        let error = inbound.for_translation().err().unwrap_or(GatewayError::Internal);
        assert_eq!(error.status(), 400);
        assert!(error.message().contains("logit_bias"), "{}", error.message());
        // the same body through the translator's strict parse gives the same refusal
        let strict = translate::parse_client_request(ClientDialect::OpenAiChat, body.as_bytes(), None, false);
        assert_eq!(strict.err(), Some(error));
    }

    #[test]
    fn upstream_body_rewrites_model_forces_usage_and_keeps_the_rest() {
        let inbound = read(
            r#"{"model":"alias","messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"x":1},"temperature":0.70}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(inbound.stream && !inbound.client_wants_usage);
        let body = inbound.passthrough_upstream_body("real-model", openai()).unwrap_or_default().0;
        let up: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(up["model"], "real-model");
        assert_eq!(up["stream_options"], serde_json::json!({"x": 1, "include_usage": true}));
        assert_eq!(up["messages"][0]["content"], "hello");
        assert!(String::from_utf8_lossy(&body).contains("\"temperature\":0.7"), "numbers kept");
        let mut no_option = *openai();
        no_option.stream_usage_option = false;
        let body = inbound.passthrough_upstream_body("real-model", &no_option).unwrap_or_default().0;
        let up: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(up["stream_options"], serde_json::json!({"x": 1}));
    }

    #[test]
    fn non_stream_requests_get_no_stream_options() {
        let inbound = read(r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":7}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let up: Value =
            serde_json::from_slice(&inbound.passthrough_upstream_body("m", openai()).unwrap_or_default().0)
                .unwrap_or_default();
        assert!(up.get("stream_options").is_none());
        assert_eq!(inbound.max_output_tokens, Some(7));
    }

    #[test]
    fn output_cap_applies_only_when_the_client_set_none() {
        let mut inbound = read(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        inbound.cap_output(100);
        assert_eq!((inbound.max_output_tokens, inbound.output_cap), (Some(100), Some(100)));
        assert_eq!(inbound.canonical().and_then(|c| c.max_output_tokens), Some(100));
        let up: Value =
            serde_json::from_slice(&inbound.passthrough_upstream_body("m", openai()).unwrap_or_default().0)
                .unwrap_or_default();
        assert_eq!(up["max_completion_tokens"], 100, "OpenAI's own field");
        assert!(up.get("max_tokens").is_none());
        let mut inbound =
            read(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":7}"#)
                .unwrap_or_else(|e| panic!("{e:?}"));
        inbound.cap_output(100);
        assert_eq!((inbound.max_output_tokens, inbound.output_cap), (Some(7), None));
    }

    #[test]
    fn every_dialect_sizes_its_prompt_with_the_one_estimator() {
        let openai = read(r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there"}]}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let anthropic = Inbound::read(
            ClientDialect::Anthropic,
            br#"{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":"Hello there"}]}"#,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(openai.prompt, anthropic.prompt);
        // 20 bytes of text; a system and a user message and the reply's priming
        let template = 2 * translate::TOKENS_PER_MESSAGE + translate::REPLY_PRIMING_TOKENS;
        assert_eq!(openai.prompt.estimate, 5 + template);
        assert_eq!(openai.prompt.upper_bound, 20 + 2 * template + translate::PROMPT_OVERHEAD_TOKENS);
    }

    #[test]
    fn other_families_pass_their_body_through() {
        let inbound = Inbound::read_family(
            Family::Embeddings,
            ClientDialect::OpenAiChat,
            br#"{"model":"alias","input":"hello","dimensions":8}"#,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (inbound.family, inbound.model.as_str(), inbound.max_output_tokens),
            (Family::Embeddings, "alias", Some(0))
        );
        assert!(inbound.canonical().is_none());
        assert_eq!(inbound.for_translation().err().map(|e| e.status()), Some(400));
        let up: Value = serde_json::from_slice(
            &inbound.passthrough_upstream_body("real", openai()).unwrap_or_default().0,
        )
        .unwrap_or_default();
        assert_eq!(up, serde_json::json!({"model": "real", "input": "hello", "dimensions": 8}));

        let mut inbound = Inbound::read_family(
            Family::Completions,
            ClientDialect::OpenAiChat,
            br#"{"model":"alias","prompt":"hi","stream":true}"#,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        inbound.cap_output(100);
        let up: Value = serde_json::from_slice(
            &inbound.passthrough_upstream_body("real", openai()).unwrap_or_default().0,
        )
        .unwrap_or_default();
        assert_eq!(up["stream_options"]["include_usage"], true, "usage asked for on streams");
        assert_eq!(up["max_tokens"], 16, "the documented default, explicit; no cap over it");
    }

    #[test]
    fn upstream_body_follows_the_provider_row() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":50,"seed":3,"logprobs":true,"user":"u","stream":true,"stream_options":{"include_usage":true}}"#;
        let mut inbound = read(body).unwrap_or_else(|e| panic!("{e:?}"));
        inbound.cap_output(100);
        let row = |id: &str| provider_by_id(id).unwrap_or(&crate::provider::PROVIDERS[0]);
        let sent = |id: &str| {
            let (bytes, dropped) = inbound.passthrough_upstream_body("up", row(id)).unwrap_or_default();
            (serde_json::from_slice::<Value>(&bytes).unwrap_or_default(), dropped)
        };
        let (mistral, dropped) = sent("mistral");
        assert_eq!(mistral["max_tokens"], 50, "renamed to the field Mistral takes");
        assert_eq!(mistral["random_seed"], 3);
        for gone in ["max_completion_tokens", "seed", "logprobs", "user", "stream_options"] {
            assert!(mistral.get(gone).is_none(), "{gone}: {mistral}");
        }
        assert_eq!(dropped, ["logprobs", "stream_options", "user"], "in the parsed body's order");
        let (groq, dropped) = sent("groq");
        assert_eq!((groq["seed"].clone(), groq["max_tokens"].clone()), (Value::from(3), Value::from(50)));
        assert_eq!(groq["stream_options"]["include_usage"], true);
        assert_eq!(dropped, ["logprobs"]);
        let (openai, dropped) = sent("openai");
        assert_eq!(openai["max_completion_tokens"], 50);
        assert!(dropped.is_empty() && openai["logprobs"] == true);
    }
}

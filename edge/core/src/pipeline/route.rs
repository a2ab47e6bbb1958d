//! Where a request goes: the public model that serves it, the ordered
//! candidates, how each attempt reaches its upstream, and which failures
//! fail over to the next candidate.

use crate::error::GatewayError;
use crate::family::Family;
use crate::key_record::KeyRecord;
use crate::pricing::ModelPrice;
use crate::provider::ProviderDialect;
use crate::routing::{Candidate, RoutingTable};
use crate::translate::{reasoning, ClientDialect, UpstreamDialect};

/// Most candidates tried for one request. Failover happens only before any
/// byte has reached the client.
pub const MAX_ATTEMPTS: usize = 3;

/// The route a request takes.
#[derive(Debug, Clone)]
pub struct Route<'t> {
    /// The public model that serves the request (the asked name without a
    /// reasoning suffix, when only the base model is routed).
    pub model: &'t str,
    /// The asked name carried a reasoning suffix (`-high`, `-thinking`, …)
    /// that routing stripped: the request is then rebuilt, not passed through,
    /// so the suffix becomes the upstream's reasoning parameter.
    pub suffix_stripped: bool,
    /// Candidates in the order they are tried.
    pub candidates: Vec<Candidate<'t>>,
    pub price: ModelPrice,
    /// The key's group's price ratio, parts per million (x1 = 1,000,000).
    pub price_ratio_ppm: u32,
    /// The model's fallbacks the key may use, in order, each with its
    /// candidates (none for a pinned request).
    pub fallbacks: Vec<Fallback<'t>>,
}

/// A fallback model and where it is served.
#[derive(Debug, Clone)]
pub struct Fallback<'t> {
    pub model: &'t str,
    pub candidates: Vec<Candidate<'t>>,
    pub price: ModelPrice,
}

/// Resolves `asked` for `record`. A name routed as is wins; otherwise a
/// reasoning suffix is stripped when its base model is routed. The key's
/// model allow-list applies to the routed name; only channels that serve the
/// key's group are candidates. `seed` drives the weighted order within a
/// priority (any random u64). A request `pinned` to a channel (its pin
/// already checked, [`crate::pin`]) has that channel as its only candidate,
/// whatever its enabled flag, groups and weight; a channel that does not
/// serve the model is the caller's 400.
pub fn resolve<'t>(
    table: &'t RoutingTable,
    record: &KeyRecord,
    asked: &str,
    seed: u64,
    pinned: Option<&str>,
) -> Result<Route<'t>, GatewayError> {
    let (model, suffix_stripped) = match table.model(asked) {
        Some(route) => (route, false),
        None => match reasoning::split_model_suffix(asked).and_then(|(base, _)| table.model(base)) {
            Some(route) => (route, true),
            None => return Err(GatewayError::ModelNotFound { model: asked.to_string() }),
        },
    };
    record.check_model(&model.name)?;
    let candidates = match pinned {
        Some(channel) => vec![table.pinned_candidate(&model.name, channel).ok_or_else(|| {
            GatewayError::InvalidRequest {
                message: format!("The pinned channel does not serve the model `{}`.", model.name),
                param: Some("model".into()),
            }
        })?],
        None => {
            let mut candidates = table.candidates(&model.name, seed)?;
            candidates.retain(|c| c.channel.serves_group(&record.group));
            candidates
        }
    };
    if candidates.is_empty() {
        return Err(GatewayError::ModelNotFound { model: asked.to_string() });
    }
    let fallbacks = if pinned.is_some() {
        Vec::new()
    } else {
        model
            .options
            .fallbacks
            .iter()
            .filter(|name| record.check_model(name).is_ok())
            .filter_map(|name| {
                let route = table.model(name)?;
                let mut candidates = table.candidates(name, seed).ok()?;
                candidates.retain(|c| c.channel.serves_group(&record.group));
                (!candidates.is_empty()).then_some(Fallback {
                    model: &route.name,
                    candidates,
                    price: route.price,
                })
            })
            .collect()
    };
    Ok(Route {
        model: &model.name,
        suffix_stripped,
        candidates,
        price: model.price,
        price_ratio_ppm: table.config().price_ratio_ppm(&record.group),
        fallbacks,
    })
}

/// How one attempt reaches its upstream and shapes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// OpenAI-format client, OpenAI-format upstream: the body is passed
    /// through (model rewritten, usage asked for) and so is the answer
    /// (usage tapped).
    Relay,
    /// A chat request, every other pair: through the canonical hub to this
    /// upstream dialect.
    Translate(UpstreamDialect),
    /// An embeddings request, every other pair: through
    /// [`crate::family::embeddings::EmbedRequest`] to this upstream dialect.
    Embed(UpstreamDialect),
}

impl Plan {
    /// The plan for `client` calling a provider of `provider` dialect for a
    /// request of `family`. The built-in mock speaks OpenAI. A chat request
    /// the gateway rebuilds (`rebuild`: a stripped model suffix, folded
    /// thinking, emulated tools) is translated even between OpenAI formats.
    pub fn for_attempt(
        client: ClientDialect,
        family: Family,
        provider: ProviderDialect,
        rebuild: bool,
    ) -> Self {
        let upstream = match provider {
            ProviderDialect::OpenAiChat | ProviderDialect::Mock => UpstreamDialect::OpenAiChat,
            ProviderDialect::Anthropic => UpstreamDialect::Anthropic,
            ProviderDialect::Gemini => UpstreamDialect::Gemini,
        };
        let same_dialect = client == ClientDialect::OpenAiChat && upstream == UpstreamDialect::OpenAiChat;
        match family {
            Family::Chat if same_dialect && !rebuild => Self::Relay,
            Family::Chat => Self::Translate(upstream),
            Family::Embeddings if !same_dialect => Self::Embed(upstream),
            // Every other family is OpenAI format at both ends (the
            // candidates are the rows that serve it).
            _ => Self::Relay,
        }
    }

    /// The dialect the upstream answers in.
    pub fn upstream_dialect(self) -> UpstreamDialect {
        match self {
            Self::Relay => UpstreamDialect::OpenAiChat,
            Self::Translate(dialect) | Self::Embed(dialect) => dialect,
        }
    }
}

/// What to do after an attempt that could not be made. (An upstream's
/// answer is classified by [`crate::channel_health::Failure`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// A failure of the channel, not of the request: try the next candidate.
    FailOver,
    /// The request's own fault (or a refusal every channel would repeat):
    /// answer the client with this attempt's error.
    Stop,
}

impl AttemptVerdict {
    /// After an attempt failed without an answer: unreachable upstreams and
    /// timeouts fail over; a request that cannot be built for this upstream
    /// stops.
    pub fn after_error(error: &GatewayError) -> Self {
        match error {
            GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout => Self::FailOver,
            _ => Self::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingConfig;

    fn table() -> RoutingTable {
        let config: RoutingConfig = serde_json::from_str(
            r#"{"version":1,
                "channels":[{"id":"a","provider":"openai","api_key":"k"},{"id":"c","provider":"anthropic","api_key":"k"}],
                "models":[{"name":"gpt","price":{"input":5},"targets":[{"channel":"a"}]},
                          {"name":"claude","targets":[{"channel":"c"}]},
                          {"name":"gpt-high","targets":[{"channel":"a"}]}]}"#,
        )
        .unwrap_or_default();
        RoutingTable::new(config).unwrap_or_default()
    }

    fn record(allowed: Option<&[&str]>) -> KeyRecord {
        let mut r: KeyRecord = serde_json::from_str(r#"{"digest":"d"}"#).unwrap_or_else(|e| panic!("{e}"));
        r.allowed_models = allowed.map(|a| a.iter().map(|s| s.to_string()).collect());
        r
    }

    #[test]
    fn a_routed_name_wins_over_suffix_stripping() {
        let t = table();
        let route = resolve(&t, &record(None), "gpt-high", 0, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((route.model, route.suffix_stripped), ("gpt-high", false));
        let route =
            resolve(&t, &record(None), "claude-thinking", 0, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((route.model, route.suffix_stripped), ("claude", true));
        let route = resolve(&t, &record(None), "gpt", 0, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(route.price.input, 5);
        assert!(matches!(
            resolve(&t, &record(None), "nope-high", 0, None),
            Err(GatewayError::ModelNotFound { .. })
        ));
    }

    #[test]
    fn the_allow_list_applies_to_the_routed_name() {
        let t = table();
        assert!(resolve(&t, &record(Some(&["claude"])), "claude-high", 0, None).is_ok());
        assert!(matches!(
            resolve(&t, &record(Some(&["claude"])), "gpt", 0, None),
            Err(GatewayError::ModelNotAllowed { .. })
        ));
    }

    #[test]
    fn groups_choose_channels_and_set_the_price_ratio() {
        let config: RoutingConfig = serde_json::from_str(
            r#"{"version":1,"groups":[{"name":"vip","price_ratio_ppm":800000}],
                "channels":[{"id":"pub","provider":"openai","api_key":"k"},
                            {"id":"vip","provider":"openai","api_key":"k","groups":["vip"]}],
                "models":[{"name":"gpt","targets":[{"channel":"pub"},{"channel":"vip","priority":5}]},
                          {"name":"vip-only","targets":[{"channel":"vip"}]}]}"#,
        )
        .unwrap_or_default();
        let t = RoutingTable::new(config).unwrap_or_default();
        let mut vip = record(None);
        vip.group = "vip".into();
        let route = resolve(&t, &vip, "gpt", 0, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            route.candidates.iter().map(|c| c.channel.id.as_str()).collect::<Vec<_>>(),
            ["vip", "pub"]
        );
        assert_eq!(route.price_ratio_ppm, 800_000);
        let route = resolve(&t, &record(None), "gpt", 0, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(route.candidates.iter().map(|c| c.channel.id.as_str()).collect::<Vec<_>>(), ["pub"]);
        assert_eq!(route.price_ratio_ppm, 1_000_000);
        assert!(matches!(
            resolve(&t, &record(None), "vip-only", 0, None),
            Err(GatewayError::ModelNotFound { .. })
        ));
    }

    #[test]
    fn plans() {
        use ClientDialect::*;
        use Family::{Chat, Completions, Embeddings};
        use ProviderDialect as P;
        assert_eq!(Plan::for_attempt(OpenAiChat, Chat, P::OpenAiChat, false), Plan::Relay);
        assert_eq!(Plan::for_attempt(OpenAiChat, Chat, P::Mock, false), Plan::Relay);
        assert_eq!(
            Plan::for_attempt(OpenAiChat, Chat, P::OpenAiChat, true),
            Plan::Translate(UpstreamDialect::OpenAiChat),
            "a stripped suffix becomes reasoning_effort"
        );
        assert_eq!(
            Plan::for_attempt(Anthropic, Chat, P::OpenAiChat, false),
            Plan::Translate(UpstreamDialect::OpenAiChat)
        );
        assert_eq!(
            Plan::for_attempt(Gemini, Chat, P::Anthropic, false).upstream_dialect(),
            UpstreamDialect::Anthropic
        );
        // Embeddings: passed through between OpenAI formats (a rebuild is
        // for chat only), translated otherwise.
        assert_eq!(Plan::for_attempt(OpenAiChat, Embeddings, P::OpenAiChat, true), Plan::Relay);
        assert_eq!(Plan::for_attempt(OpenAiChat, Embeddings, P::Mock, false), Plan::Relay);
        assert_eq!(
            Plan::for_attempt(OpenAiChat, Embeddings, P::Gemini, false),
            Plan::Embed(UpstreamDialect::Gemini)
        );
        assert_eq!(
            Plan::for_attempt(Gemini, Embeddings, P::Mock, false),
            Plan::Embed(UpstreamDialect::OpenAiChat)
        );
        assert_eq!(Plan::for_attempt(OpenAiChat, Completions, P::OpenAiChat, true), Plan::Relay);
    }

    #[test]
    fn failover_classification() {
        use AttemptVerdict::*;
        let after_status = |status: u16| {
            let failure = crate::channel_health::Failure::from_status(status, None, b"{}", 0);
            if failure.fails_over() {
                FailOver
            } else {
                Stop
            }
        };
        for (status, verdict) in [
            (400, Stop),
            (404, Stop),
            (413, Stop),
            (422, Stop),
            (401, FailOver),
            (403, FailOver),
            (408, FailOver),
            (429, FailOver),
            (500, FailOver),
            (503, FailOver),
            (529, FailOver),
        ] {
            assert_eq!(after_status(status), verdict, "{status}");
        }
        assert_eq!(AttemptVerdict::after_error(&GatewayError::UpstreamTimeout), FailOver);
        assert_eq!(AttemptVerdict::after_error(&GatewayError::UpstreamUnavailable), FailOver);
        let bad = GatewayError::InvalidRequest { message: "x".into(), param: None };
        assert_eq!(AttemptVerdict::after_error(&bad), Stop);
    }
}

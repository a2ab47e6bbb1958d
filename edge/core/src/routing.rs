//! Routing configuration: channels (an upstream account at a provider) and
//! models (a public model name served by one or more channels). Stored in KV
//! as JSON under [`ROUTING_KV_KEY`] (schema: `kv-schema/routing.schema.json`),
//! pushed by the admin service, compiled once per version into a
//! [`RoutingTable`] for O(1) lookups on the hot path.

use crate::error::GatewayError;
use crate::pricing::{ModelPrice, RATIO_ONE_PPM};
use crate::provider::{provider_by_id, Provider};
use crate::request_policy::RequestPolicy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// KV key of the routing configuration.
pub const ROUTING_KV_KEY: &str = "config:routing";

/// Options of the built-in mock provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockOptions {
    /// Delay before the response headers, ms.
    #[serde(default)]
    pub latency_ms: u64,
    /// Delay between stream chunks, ms.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

/// An upstream account at a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique channel id.
    pub id: String,
    /// Provider id from the provider table.
    pub provider: String,
    /// Overrides the provider's base URL (operator-set only).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Credential, inline. Prefer `api_key_secret`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Name of a worker secret holding the credential.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Upstream time limit for connecting and the response headers, ms
    /// (default: the worker's `UPSTREAM_TIMEOUT_MS`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Streams: time from the response headers to the first content, ms.
    #[serde(default)]
    pub first_content_timeout_ms: Option<u64>,
    /// Streams: longest gap between chunks once content flows, ms.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Mock provider options.
    #[serde(default)]
    pub mock: Option<MockOptions>,
    /// Groups this channel serves; empty = every group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Non-public hosts (as `url_policy::normalize_host` writes them) whose
    /// media URLs this channel may receive in a request passed through as
    /// sent: a self-hosted model server that fetches images from the
    /// operator's own network. Empty: only public media URLs.
    #[serde(default)]
    pub media_hosts: Vec<String>,
    /// When this channel's circuits open
    /// ([`crate::channel_health::breaker`]); `None`: the default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<crate::channel_health::breaker::BreakerPolicy>,
    /// More inline credentials: with `api_key`, the channel's rotation, each
    /// with its own health (a refused one is out of rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// How a request's credential is chosen when there are several.
    #[serde(default, skip_serializing_if = "KeyRotation::is_default")]
    pub key_rotation: KeyRotation,
    /// The API version every call names, for a provider whose URLs carry
    /// one (Azure OpenAI's `api-version`); `None`: the row's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The channel's models have no native tools: a request's tools are
    /// described in the prompt and the reply read back into tool calls
    /// ([`crate::translate::tool_emulation`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emulate_tools: bool,
}

/// How a channel's credentials take turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRotation {
    /// Each isolate takes them in turn.
    #[default]
    RoundRobin,
    /// At random (by the request's routing seed).
    Random,
}

impl KeyRotation {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Channel {
    /// The inline credentials in rotation order: `api_key`, then `api_keys`
    /// (empty ones and repeats left out).
    pub fn credentials(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for key in self.api_key.iter().chain(&self.api_keys) {
            if !key.is_empty() && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// Whether a key of `group` may be routed to this channel.
    pub fn serves_group(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

/// An API version as providers write them (`2024-10-21`, `2025-04-01-preview`).
fn is_api_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 40
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

fn enabled_by_default() -> bool {
    true
}

/// One channel serving a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    /// Channel id.
    pub channel: String,
    /// Model name sent upstream; default: the public name.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Higher is tried first.
    #[serde(default)]
    pub priority: i32,
    /// Share of traffic among targets of equal priority.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A public model name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRoute {
    pub name: String,
    #[serde(default)]
    pub price: ModelPrice,
    /// `owned_by` in `GET /v1/models`.
    #[serde(default)]
    pub owned_by: Option<String>,
    pub targets: Vec<RouteTarget>,
    /// What the operator chose beyond price and targets.
    #[serde(default, skip_serializing_if = "ModelOptions::is_default")]
    pub options: ModelOptions,
}

/// Most fallback models a model may name.
pub const MAX_FALLBACKS: usize = 3;

/// A model's operator options (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    /// A completed reply with no content (no text, reasoning or tool call)
    /// costs nothing: its tokens are recorded, its cost is zero.
    #[serde(default)]
    pub empty_reply_free: bool,
    /// OpenAI chat clients get reasoning as content between `<think>` and
    /// `</think>`, for clients that cannot show `reasoning_content`.
    #[serde(default)]
    pub fold_thinking: bool,
    /// Deterministic requests are answered from the exact-match response
    /// cache ([`crate::response_cache`]) for this long, billed as it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::response_cache::CacheOption>,
    /// Models tried, in order, when every channel of this one failed before
    /// the first content byte or has its circuit open; the client is billed
    /// at the model that served, and told which one did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

impl ModelOptions {
    /// Every option off.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A user group: its price ratio multiplies every model price for its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub name: String,
    /// Parts per million: `1_000_000` = x1, `1_500_000` = x1.5.
    pub price_ratio_ppm: u32,
}

/// The whole routing configuration as stored in KV.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingConfig {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub models: Vec<ModelRoute>,
    /// Groups with a price ratio; a group not listed prices at x1.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// The operator's request policy, applied in order before routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<crate::request_policy::PolicyRule>,
}

impl RoutingConfig {
    /// The price ratio of `group` in parts per million ([`RATIO_ONE_PPM`] when not listed).
    pub fn price_ratio_ppm(&self, group: &str) -> u32 {
        self.groups.iter().find(|g| g.name == group).map_or(RATIO_ONE_PPM, |g| g.price_ratio_ppm)
    }
}

/// A resolved route candidate: where to send a request for a model.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub channel: &'a Channel,
    pub provider: &'static Provider,
    pub upstream_model: &'a str,
    pub base_url: &'a str,
}

/// A validated, indexed [`RoutingConfig`].
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    config: RoutingConfig,
    model_index: HashMap<String, usize>,
    channel_index: HashMap<String, (usize, &'static Provider)>,
    policy: RequestPolicy,
}

/// Why a routing configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRouting(pub String);

impl RoutingTable {
    /// Validates and indexes a configuration: every provider exists, every
    /// target names a channel, ids are unique, non-mock channels have a base URL.
    pub fn new(config: RoutingConfig) -> Result<Self, InvalidRouting> {
        let mut channel_index = HashMap::new();
        for (i, ch) in config.channels.iter().enumerate() {
            let provider = provider_by_id(&ch.provider).ok_or_else(|| {
                InvalidRouting(format!("channel `{}`: unknown provider `{}`", ch.id, ch.provider))
            })?;
            let base = ch.base_url.as_deref().unwrap_or(provider.base_url);
            if base.is_empty() {
                return Err(InvalidRouting(format!(
                    "channel `{}`: provider `{}` needs a base_url",
                    ch.id, ch.provider
                )));
            }
            if provider.dialect != crate::provider::ProviderDialect::Mock {
                if let Some(reason) = crate::url_policy::base_url_refusal(base) {
                    return Err(InvalidRouting(format!("channel `{}`: base_url {reason}", ch.id)));
                }
            }
            if let Some(host) = ch
                .media_hosts
                .iter()
                .find(|h| crate::url_policy::normalize_host(h).as_deref() != Some(h.as_str()))
            {
                return Err(InvalidRouting(format!(
                    "channel `{}`: media host `{host}` is not a host in normal form (lower case, no port, IPv6 in brackets)",
                    ch.id
                )));
            }
            if let Some(version) = &ch.api_version {
                if !is_api_version(version) {
                    return Err(InvalidRouting(format!(
                        "channel `{}`: api_version `{version}` is not a version (letters, digits, `-`, `.`)",
                        ch.id
                    )));
                }
            }
            if channel_index.insert(ch.id.clone(), (i, provider)).is_some() {
                return Err(InvalidRouting(format!("duplicate channel id `{}`", ch.id)));
            }
        }
        for (i, group) in config.groups.iter().enumerate() {
            if config.groups[..i].iter().any(|g| g.name == group.name) {
                return Err(InvalidRouting(format!("duplicate group `{}`", group.name)));
            }
        }
        let mut model_index = HashMap::new();
        for (i, model) in config.models.iter().enumerate() {
            if model.targets.is_empty() {
                return Err(InvalidRouting(format!("model `{}` has no targets", model.name)));
            }
            for t in &model.targets {
                let Some((_, provider)) = channel_index.get(&t.channel) else {
                    return Err(InvalidRouting(format!(
                        "model `{}`: unknown channel `{}`",
                        model.name, t.channel
                    )));
                };
                let upstream = t.upstream_model.as_deref().unwrap_or(&model.name);
                if !provider.accepts_upstream_model(upstream) {
                    return Err(InvalidRouting(format!(
                        "model `{}`: `{upstream}` is not a deployment name of channel `{}` (letters, digits, `-`, `_`, `.`)",
                        model.name, t.channel
                    )));
                }
            }
            if model_index.insert(model.name.clone(), i).is_some() {
                return Err(InvalidRouting(format!("duplicate model `{}`", model.name)));
            }
        }
        for model in &config.models {
            let fallbacks = &model.options.fallbacks;
            if fallbacks.len() > MAX_FALLBACKS {
                return Err(InvalidRouting(format!(
                    "model `{}`: at most {MAX_FALLBACKS} fallbacks",
                    model.name
                )));
            }
            for (i, name) in fallbacks.iter().enumerate() {
                if name == &model.name || fallbacks[..i].contains(name) {
                    return Err(InvalidRouting(format!(
                        "model `{}`: fallback `{name}` is the model itself or named twice",
                        model.name
                    )));
                }
                if !model_index.contains_key(name) {
                    return Err(InvalidRouting(format!("model `{}`: unknown fallback `{name}`", model.name)));
                }
            }
        }
        let policy = RequestPolicy::compile(&config.policy).map_err(InvalidRouting)?;
        Ok(Self { config, model_index, channel_index, policy })
    }

    pub fn version(&self) -> u64 {
        self.config.version
    }

    /// The compiled request policy (empty when none is configured).
    pub fn policy(&self) -> &RequestPolicy {
        &self.policy
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The route for a public model name.
    pub fn model(&self, name: &str) -> Option<&ModelRoute> {
        self.model_index.get(name).and_then(|&i| self.config.models.get(i))
    }

    /// Every public model, in configuration order.
    pub fn models(&self) -> impl Iterator<Item = &ModelRoute> {
        self.config.models.iter()
    }

    /// Ordered candidates for `model`: enabled channels by descending priority;
    /// within a priority, a weighted shuffle driven by `seed` (any random u64),
    /// so traffic splits by weight and the order is reproducible in tests.
    /// Targets of weight 0 are standby: they get no share of the traffic and
    /// are tried only after every weighted target, in priority order (so a
    /// model whose targets are all at weight 0 is still served).
    pub fn candidates(&self, model: &str, seed: u64) -> Result<Vec<Candidate<'_>>, GatewayError> {
        let route =
            self.model(model).ok_or_else(|| GatewayError::ModelNotFound { model: model.to_string() })?;
        let mut eligible: Vec<(i32, u32, Candidate<'_>)> = Vec::with_capacity(route.targets.len());
        let mut standby: Vec<(i32, Candidate<'_>)> = Vec::new();
        for t in &route.targets {
            let Some(&(idx, provider)) = self.channel_index.get(&t.channel) else { continue };
            let Some(channel) = self.config.channels.get(idx) else { continue };
            if !channel.enabled {
                continue;
            }
            let base_url = channel.base_url.as_deref().unwrap_or(provider.base_url);
            let upstream_model = t.upstream_model.as_deref().unwrap_or(&route.name);
            let candidate = Candidate { channel, provider, upstream_model, base_url };
            if t.weight == 0 {
                standby.push((t.priority, candidate));
            } else {
                eligible.push((t.priority, t.weight, candidate));
            }
        }
        standby.sort_by_key(|s| std::cmp::Reverse(s.0));
        if eligible.is_empty() && standby.is_empty() {
            return Err(GatewayError::ModelNotFound { model: model.to_string() });
        }
        // Stable sort by descending priority, then a weighted draw without
        // replacement inside each priority group.
        eligible.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut rng = SplitMix64(seed);
        let mut ordered = Vec::with_capacity(eligible.len());
        while !eligible.is_empty() {
            let priority = eligible[0].0;
            let group_len = eligible.iter().take_while(|e| e.0 == priority).count();
            let mut group: Vec<_> = eligible.drain(..group_len).collect();
            while !group.is_empty() {
                let total: u64 = group.iter().map(|e| u64::from(e.1)).sum();
                let mut draw = rng.next() % total;
                let pos = group
                    .iter()
                    .position(|e| {
                        let w = u64::from(e.1);
                        if draw < w {
                            true
                        } else {
                            draw -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                ordered.push(group.remove(pos).2);
            }
        }
        ordered.extend(standby.into_iter().map(|s| s.1));
        Ok(ordered)
    }
}

impl RoutingTable {
    /// The candidate for `model` at `channel`, whatever the channel's enabled
    /// flag and the target's weight (a pinned request), if the channel
    /// serves the model.
    pub fn pinned_candidate(&self, model: &str, channel: &str) -> Option<Candidate<'_>> {
        let route = self.model(model)?;
        let target = route.targets.iter().find(|t| t.channel == channel)?;
        let &(idx, provider) = self.channel_index.get(channel)?;
        let channel = self.config.channels.get(idx)?;
        Some(Candidate {
            channel,
            provider,
            upstream_model: target.upstream_model.as_deref().unwrap_or(&route.name),
            base_url: channel.base_url.as_deref().unwrap_or(provider.base_url),
        })
    }
}

/// Small deterministic generator for the weighted shuffle.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RoutingConfig {
        serde_json::from_str(
            r#"{"version":1,
                "channels":[{"id":"a","provider":"openai","api_key":"k"},
                            {"id":"b","provider":"openai-compatible","base_url":"http://127.0.0.1:9/v1"},
                            {"id":"m","provider":"mock"},
                            {"id":"off","provider":"openai","enabled":false}],
                "models":[{"name":"gpt","targets":[{"channel":"a","priority":1,"weight":3},{"channel":"b","priority":1,"weight":1},{"channel":"m","priority":0},{"channel":"off","priority":9}]},
                          {"name":"mock-1","targets":[{"channel":"m","upstream_model":"mock-upstream"}]},
                          {"name":"dead","targets":[{"channel":"off"}]}]}"#,
        )
        .unwrap_or_default()
    }

    #[test]
    fn priorities_then_weights() {
        let table = RoutingTable::new(config()).unwrap_or_default();
        let mut first_a = 0;
        for seed in 0..4000u64 {
            let c = table.candidates("gpt", seed).unwrap_or_default();
            assert_eq!(c.len(), 3, "disabled channel skipped");
            assert_eq!(c[2].channel.id, "m", "lowest priority last");
            if c[0].channel.id == "a" {
                first_a += 1;
            }
        }
        // weight 3 vs 1: about 75% first
        assert!((2800..=3200).contains(&first_a), "{first_a}");
    }

    #[test]
    fn upstream_model_and_base_url() {
        let table = RoutingTable::new(config()).unwrap_or_default();
        let c = table.candidates("mock-1", 0).unwrap_or_default();
        assert_eq!(c[0].upstream_model, "mock-upstream");
        let c = table.candidates("gpt", 0).unwrap_or_default();
        let b = c.iter().find(|c| c.channel.id == "b").map(|c| c.base_url);
        assert_eq!(b, Some("http://127.0.0.1:9/v1"));
    }

    #[test]
    fn unknown_and_all_disabled_are_not_found() {
        let table = RoutingTable::new(config()).unwrap_or_default();
        assert!(matches!(table.candidates("nope", 0), Err(GatewayError::ModelNotFound { .. })));
        assert!(matches!(table.candidates("dead", 0), Err(GatewayError::ModelNotFound { .. })));
    }

    #[test]
    fn weight_zero_is_standby_after_every_weighted_target() {
        let mut c = config();
        c.models[0].targets[0].weight = 0; // `a`, priority 1
        let table = RoutingTable::new(c.clone()).unwrap();
        for seed in 0..200u64 {
            let order: Vec<&str> =
                table.candidates("gpt", seed).unwrap().iter().map(|c| c.channel.id.as_str()).collect();
            assert_eq!(order, ["b", "m", "a"], "standby tried last");
        }
        for t in &mut c.models[0].targets {
            t.weight = 0;
        }
        let table = RoutingTable::new(c).unwrap();
        let order: Vec<&str> =
            table.candidates("gpt", 7).unwrap().iter().map(|c| c.channel.id.as_str()).collect();
        assert_eq!(order, ["a", "b", "m"], "all standby: still served, by priority");
    }

    #[test]
    fn settings_that_would_do_nothing_are_refused() {
        let mut c = config();
        c.models[1].targets.clear();
        assert!(RoutingTable::new(c).unwrap_err().0.contains("no targets"));
        for base in [
            "http://169.254.169.254/v1",
            "http://[fe80::1]/",
            "http://metadata.google.internal/v1",
            "ftp://x/",
        ] {
            let mut c = config();
            c.channels[1].base_url = Some(base.into());
            assert!(RoutingTable::new(c).is_err(), "{base}");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = config();
        c.channels[0].provider = "nope".into();
        assert!(RoutingTable::new(c).is_err());
        let mut c = config();
        c.models[0].targets[0].channel = "zzz".into();
        assert!(RoutingTable::new(c).is_err());
        let mut c = config();
        c.channels[1].base_url = None;
        assert!(RoutingTable::new(c).is_err(), "openai-compatible needs a base_url");
        let mut c = config();
        c.channels[1].base_url = Some("file:///etc/passwd".into());
        assert!(RoutingTable::new(c).is_err());
        let mut c = config();
        let vip = GroupConfig { name: "vip".into(), price_ratio_ppm: 800_000 };
        c.groups = vec![vip.clone(), vip];
        assert!(RoutingTable::new(c).is_err(), "duplicate group");
    }

    #[test]
    fn a_pinned_candidate_ignores_enabled_and_weight_but_needs_the_model() {
        let mut c = config();
        c.models[0].targets[3].weight = 0;
        let table = RoutingTable::new(c).unwrap_or_default();
        let off = table.pinned_candidate("gpt", "off").map(|c| (c.channel.id.as_str(), c.upstream_model));
        assert_eq!(off, Some(("off", "gpt")), "a disabled channel can be tested");
        assert_eq!(table.pinned_candidate("mock-1", "m").map(|c| c.upstream_model), Some("mock-upstream"));
        assert!(table.pinned_candidate("mock-1", "a").is_none(), "a does not serve mock-1");
        assert!(table.pinned_candidate("nope", "a").is_none());
        assert!(table.pinned_candidate("gpt", "zzz").is_none());
    }

    #[test]
    fn fallbacks_must_name_other_known_models() {
        let with = |fallbacks: &[&str]| {
            let mut c = config();
            c.models[0].options.fallbacks = fallbacks.iter().map(|s| s.to_string()).collect();
            RoutingTable::new(c).map(|_| ()).map_err(|e| e.0)
        };
        assert_eq!(with(&["mock-1", "dead"]), Ok(()));
        assert!(with(&["nope"]).unwrap_err().contains("unknown fallback `nope`"));
        assert!(with(&["gpt"]).unwrap_err().contains("the model itself"));
        assert!(with(&["mock-1", "mock-1"]).unwrap_err().contains("named twice"));
        let many = with(&["mock-1", "dead", "mock-1", "dead"]);
        assert!(many.unwrap_err().contains("at most 3 fallbacks"));
    }

    #[test]
    fn groups_price_ratios_and_channel_groups() {
        let mut c = config();
        assert_eq!(c.groups, vec![], "old configs have no groups");
        assert!(c.channels.iter().all(|ch| ch.groups.is_empty() && ch.serves_group("anything")));
        c.groups = vec![GroupConfig { name: "vip".into(), price_ratio_ppm: 800_000 }];
        c.channels[0].groups = vec!["vip".into()];
        assert_eq!(c.price_ratio_ppm("vip"), 800_000);
        assert_eq!(c.price_ratio_ppm("default"), RATIO_ONE_PPM, "a group not listed is x1");
        assert!(c.channels[0].serves_group("vip"));
        assert!(!c.channels[0].serves_group("default"));
        let round: RoutingConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap_or_default()).unwrap_or_default();
        assert_eq!(round, c);
        assert!(RoutingTable::new(c).is_ok());
    }

    #[test]
    fn media_hosts_must_be_written_as_hosts() {
        let config = |hosts: serde_json::Value| -> RoutingConfig {
            serde_json::from_value(serde_json::json!({"version": 1,
                "channels": [{"id": "c", "provider": "openai-compatible", "base_url": "http://10.0.0.2/v1", "media_hosts": hosts}],
                "models": [{"name": "m", "price": {"input": 1, "output": 1}, "targets": [{"channel": "c"}]}]}))
            .unwrap()
        };
        assert!(RoutingTable::new(config(serde_json::json!(["10.0.0.9", "minio.lan", "[fd00::1]"]))).is_ok());
        for bad in ["Minio.LAN", "minio.lan:9000", "http://minio.lan", "[FD00::0001]", ""] {
            let err = RoutingTable::new(config(serde_json::json!([bad]))).err();
            assert!(err.is_some_and(|e| e.0.contains("media host")), "{bad}");
        }
    }
}

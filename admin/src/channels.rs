//! Channels (upstream accounts), models (public names with prices) and the
//! routing configuration built from them.
//!
//! Every change runs in one transaction that first bumps the routing version
//! (a single-row counter, `max(version + 1, now_ms)`, which also serialises
//! concurrent changes), then writes, then rebuilds the whole
//! [`RoutingConfig`] and validates it with [`RoutingTable::new`]: a change
//! that would leave the edge with an invalid config is rolled back with a 400.
//! After commit, the config is pushed to the edge.

use crate::audit;
use crate::auth::Caller;
use crate::db::routing::{
    self, bump_routing_version, load_routing_config, load_routing_config_consistent, NewTarget,
};
use crate::edge_sync::push_routing_if_configured;
use crate::error::{ApiError, ApiResult};
use crate::extract::{present, JsonBody, PathParam};
use crate::keys::List;
use crate::{now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use edgeway_core::channel_health::breaker::{BreakerPolicy, MAX_OPEN_MS};
use edgeway_core::pricing::ModelPrice;
use edgeway_core::provider::{provider_by_id, ProviderDialect, UrlStyle, PROVIDERS};
use edgeway_core::routing::{
    Channel, KeyRotation, MockOptions, ModelOptions, ModelRoute, RoutingConfig, RoutingTable,
};
use serde::{Deserialize, Serialize};

/// Longest upstream time limit accepted, ms.
const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest mock delay accepted, ms.
const MAX_MOCK_DELAY_MS: u64 = 60_000;
/// Largest target weight accepted.
const MAX_WEIGHT: u32 = 1_000_000;

fn check_routing(config: &RoutingConfig) -> ApiResult<()> {
    RoutingTable::new(config.clone()).map(|_| ()).map_err(|e| ApiError::BadRequest(e.0))
}

// ---- request bodies ----

/// One model served by a new channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelModel {
    /// Public model name.
    pub name: String,
    /// Name sent upstream; default: the public name.
    #[serde(default)]
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub weight: Option<u32>,
    /// Sets the model's price (for every channel serving it); absent keeps the
    /// current price, or zero for a new model.
    #[serde(default)]
    pub price: Option<ModelPrice>,
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Sets the model's options (for every channel serving it); absent keeps
    /// the current ones, or all off for a new model.
    #[serde(default)]
    pub options: Option<ModelOptions>,
}

/// `POST /api/channels` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    pub id: String,
    pub provider: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Streams: time from the response headers to the first content, ms.
    #[serde(default)]
    pub first_content_timeout_ms: Option<u64>,
    /// Streams: longest gap between chunks once content flows, ms.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub mock: Option<MockOptions>,
    /// Groups this channel serves; empty or absent = every group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Non-public hosts whose media URLs this channel may receive (a
    /// self-hosted server fetching from the operator's network).
    #[serde(default)]
    pub media_hosts: Vec<String>,
    /// When the channel's circuits open (default: 5 failures within 30 s
    /// open for 15 s).
    #[serde(default)]
    pub breaker: Option<BreakerPolicy>,
    /// More inline credentials: with `api_key`, the channel's rotation.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// `round_robin` (default) or `random`.
    #[serde(default)]
    pub key_rotation: KeyRotation,
    /// The API version a provider whose URLs carry one is called with
    /// (Azure OpenAI's `api-version`; default: the provider's).
    #[serde(default)]
    pub api_version: Option<String>,
    /// The channel's models have no native tools: tool calls are emulated
    /// in the prompt.
    #[serde(default)]
    pub emulate_tools: bool,
    #[serde(default)]
    pub models: Vec<ChannelModel>,
}

/// `PATCH /api/channels/{id}` body: the channel's own fields, each optional.
/// Absent fields stay as they are; `null` clears a field that has a default
/// (a time limit, the base URL, the breaker policy, ...). The id and the
/// provider are fixed, and the models a channel serves are not changed here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub base_url: Option<Option<String>>,
    /// Either of `api_key` and `api_keys` replaces the whole rotation of
    /// inline credentials with the ones sent (`null` or `[]`: none).
    #[serde(default, deserialize_with = "present")]
    pub api_key: Option<Option<String>>,
    #[serde(default)]
    pub api_keys: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub api_key_secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub first_content_timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub idle_timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub mock: Option<Option<MockOptions>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub media_hosts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub breaker: Option<Option<BreakerPolicy>>,
    #[serde(default)]
    pub key_rotation: Option<KeyRotation>,
    #[serde(default, deserialize_with = "present")]
    pub api_version: Option<Option<String>>,
    #[serde(default)]
    pub emulate_tools: Option<bool>,
}

impl UpdateChannel {
    fn is_empty(&self) -> bool {
        let Self {
            enabled,
            base_url,
            api_key,
            api_keys,
            api_key_secret,
            timeout_ms,
            first_content_timeout_ms,
            idle_timeout_ms,
            mock,
            groups,
            media_hosts,
            breaker,
            key_rotation,
            api_version,
            emulate_tools,
        } = self;
        enabled.is_none()
            && base_url.is_none()
            && api_key.is_none()
            && api_keys.is_none()
            && api_key_secret.is_none()
            && timeout_ms.is_none()
            && first_content_timeout_ms.is_none()
            && idle_timeout_ms.is_none()
            && mock.is_none()
            && groups.is_none()
            && media_hosts.is_none()
            && breaker.is_none()
            && key_rotation.is_none()
            && api_version.is_none()
            && emulate_tools.is_none()
    }

    /// `current` with this change applied, as a body for
    /// [`validated_channel`] (which checks a changed channel as it checks a
    /// new one).
    fn applied_to(self, current: &Channel) -> CreateChannel {
        let replace_keys = self.api_key.is_some() || self.api_keys.is_some();
        CreateChannel {
            id: current.id.clone(),
            provider: current.provider.clone(),
            base_url: self.base_url.unwrap_or_else(|| current.base_url.clone()),
            api_key: if replace_keys { self.api_key.flatten() } else { current.api_key.clone() },
            api_keys: if replace_keys { self.api_keys.unwrap_or_default() } else { current.api_keys.clone() },
            api_key_secret: self.api_key_secret.unwrap_or_else(|| current.api_key_secret.clone()),
            timeout_ms: self.timeout_ms.unwrap_or(current.timeout_ms),
            first_content_timeout_ms: self
                .first_content_timeout_ms
                .unwrap_or(current.first_content_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(current.idle_timeout_ms),
            enabled: Some(self.enabled.unwrap_or(current.enabled)),
            mock: self.mock.unwrap_or(current.mock),
            groups: self.groups.unwrap_or_else(|| current.groups.clone()),
            media_hosts: self.media_hosts.unwrap_or_else(|| current.media_hosts.clone()),
            breaker: self.breaker.unwrap_or(current.breaker),
            key_rotation: self.key_rotation.unwrap_or(current.key_rotation),
            api_version: self.api_version.unwrap_or_else(|| current.api_version.clone()),
            emulate_tools: self.emulate_tools.unwrap_or(current.emulate_tools),
            models: Vec::new(),
        }
    }
}

fn check_price(model: &str, price: &ModelPrice) -> ApiResult<()> {
    let parts =
        [Some(price.input), Some(price.output), price.cache_read, price.cache_write_5m, price.cache_write_1h];
    if parts.into_iter().flatten().chain([price.per_request]).any(|p| p < 0) {
        return Err(ApiError::bad_request(format!("model `{model}`: prices must not be negative")));
    }
    if parts.into_iter().flatten().chain([price.per_request]).any(|p| p > validate::MAX_SAFE_NUMBER) {
        return Err(ApiError::bad_request(format!(
            "model `{model}`: prices must be at most {} (2^53 - 1)",
            validate::MAX_SAFE_NUMBER
        )));
    }
    Ok(())
}

/// Checks and normalises a channel body; the routing-level checks come later.
fn validated(mut body: CreateChannel) -> ApiResult<(Channel, Vec<ChannelModel>)> {
    let models = std::mem::take(&mut body.models);
    let channel = validated_channel(body)?;
    Ok((channel, validated_models(models)?))
}

/// Checks and normalises the channel's own fields of `body` (its `models`
/// are not looked at): the one check of a channel, for a new one and for
/// one changed by `PATCH` alike.
fn validated_channel(body: CreateChannel) -> ApiResult<Channel> {
    let id = validate::ident("id", &body.id)?;
    let provider = provider_by_id(body.provider.trim()).ok_or_else(|| {
        let known: Vec<&str> = PROVIDERS.iter().map(|p| p.id).collect();
        ApiError::bad_request(format!(
            "unknown provider `{}`; known: {}",
            body.provider.trim(),
            known.join(", ")
        ))
    })?;
    let base_url = body.base_url.as_deref().map(|u| validate::http_url("base_url", u)).transpose()?;
    let api_key = match body.api_key.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(k) if k.len() > 4096 || k.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            return Err(ApiError::bad_request("`api_key` must be at most 4096 characters without spaces"));
        }
        Some(k) => Some(k.to_string()),
    };
    if body.api_keys.len() > 100 {
        return Err(ApiError::bad_request("`api_keys` may hold at most 100 credentials"));
    }
    let mut api_keys: Vec<String> = Vec::new();
    for (i, k) in body.api_keys.iter().map(|k| k.trim()).enumerate() {
        if k.is_empty() || k.len() > 4096 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::bad_request(format!(
                "`api_keys[{i}]` must be 1 to 4096 characters without spaces"
            )));
        }
        if !api_keys.iter().any(|x| x == k) && api_key.as_deref() != Some(k) {
            api_keys.push(k.to_string());
        }
    }
    let api_key_secret = match body.api_key_secret.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(name) if name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Some(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`api_key_secret` must name a worker secret: 1 to 128 of A-Z, a-z, 0-9, `_`",
            ))
        }
    };
    for (name, value) in [
        ("timeout_ms", body.timeout_ms),
        ("first_content_timeout_ms", body.first_content_timeout_ms),
        ("idle_timeout_ms", body.idle_timeout_ms),
    ] {
        if value.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
            return Err(ApiError::bad_request(format!("`{name}` must be between 1 and {MAX_TIMEOUT_MS}")));
        }
    }
    if let Some(mock) = &body.mock {
        if provider.dialect != ProviderDialect::Mock {
            return Err(ApiError::bad_request("`mock` options apply only to the `mock` provider"));
        }
        if mock.latency_ms > MAX_MOCK_DELAY_MS || mock.chunk_delay_ms > MAX_MOCK_DELAY_MS {
            return Err(ApiError::bad_request(format!(
                "`mock` delays must be at most {MAX_MOCK_DELAY_MS} ms"
            )));
        }
    }
    if body.groups.len() > 100 {
        return Err(ApiError::bad_request("`groups` may hold at most 100 entries"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in &body.groups {
        let g = validate::ident("groups[]", g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    if body.media_hosts.len() > 100 {
        return Err(ApiError::bad_request("`media_hosts` may hold at most 100 entries"));
    }
    let mut media_hosts: Vec<String> = Vec::new();
    for (i, h) in body.media_hosts.iter().enumerate() {
        let host = edgeway_core::url_policy::normalize_host(h).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`media_hosts[{i}]` is not a host name or address (no scheme, port or path)"
            ))
        })?;
        if !media_hosts.contains(&host) {
            media_hosts.push(host);
        }
    }
    if let Some(b) = &body.breaker {
        if b.failures > 10_000 || b.window_ms > 86_400_000 || b.open_ms > MAX_OPEN_MS {
            return Err(ApiError::bad_request(format!(
                "`breaker`: `failures` at most 10000, `window_ms` at most 86400000, `open_ms` at most {MAX_OPEN_MS}"
            )));
        }
        if b.failures > 0 && (b.window_ms == 0 || b.open_ms == 0) {
            // A zero window never counts a failure; a zero cool-down never skips.
            return Err(ApiError::bad_request(
                "`breaker`: `window_ms` and `open_ms` must be at least 1 while `failures` is set (`failures: 0` turns the breaker off)",
            ));
        }
    }
    let api_version = match body.api_version.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if !matches!(provider.url_style, UrlStyle::AzureDeployment { .. }) => {
            return Err(ApiError::bad_request(format!(
                "`api_version` applies only to providers whose URLs carry one (`azure`), not `{}`",
                provider.id
            )));
        }
        Some(v)
            if v.len() <= 40 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Some(v.to_string())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`api_version` must be a version such as `2024-10-21` (letters, digits, `-`, `.`)",
            ))
        }
    };
    // One rotation, one shape: its first credential is `api_key`.
    let api_key = match api_key {
        None if !api_keys.is_empty() => Some(api_keys.remove(0)),
        key => key,
    };
    Ok(Channel {
        id,
        provider: provider.id.to_string(),
        base_url,
        api_key,
        api_key_secret,
        timeout_ms: body.timeout_ms,
        first_content_timeout_ms: body.first_content_timeout_ms,
        idle_timeout_ms: body.idle_timeout_ms,
        enabled: body.enabled.unwrap_or(true),
        mock: body.mock,
        groups,
        media_hosts,
        breaker: body.breaker,
        api_keys,
        key_rotation: body.key_rotation,
        api_version,
        emulate_tools: body.emulate_tools,
    })
}

/// Checks and normalises the models of a new channel.
fn validated_models(models: Vec<ChannelModel>) -> ApiResult<Vec<ChannelModel>> {
    if models.len() > validate::MAX_LIST {
        return Err(ApiError::bad_request(format!(
            "`models` may hold at most {} entries",
            validate::MAX_LIST
        )));
    }
    if models.is_empty() {
        return Err(ApiError::bad_request(
            "`models` must list at least one model: a channel without models serves nothing",
        ));
    }
    let mut checked: Vec<ChannelModel> = Vec::with_capacity(models.len());
    for model in models {
        let name = validate::text("models[].name", &model.name)?;
        if checked.iter().any(|m| m.name == name) {
            return Err(ApiError::bad_request(format!("model `{name}` is listed twice")));
        }
        let upstream_model = model
            .upstream_model
            .as_deref()
            .map(|u| validate::text("models[].upstream_model", u))
            .transpose()?;
        let owned_by =
            model.owned_by.as_deref().map(|o| validate::text("models[].owned_by", o)).transpose()?;
        if model.weight.is_some_and(|w| w > MAX_WEIGHT) {
            return Err(ApiError::bad_request(format!(
                "model `{name}`: `weight` must be at most {MAX_WEIGHT}"
            )));
        }
        if let Some(price) = &model.price {
            check_price(&name, price)?;
        }
        checked.push(ChannelModel { name, upstream_model, owned_by, ..model });
    }
    Ok(checked)
}

// ---- responses ----

/// A channel as the API shows it: never the credential itself.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    pub id: String,
    pub provider: String,
    pub base_url: Option<String>,
    /// Whether an inline `api_key` is stored (it is never returned).
    pub has_api_key: bool,
    /// How many inline credentials are in rotation (never returned either).
    pub credentials: usize,
    pub key_rotation: KeyRotation,
    /// Name of the worker secret holding the credential.
    pub api_key_secret: Option<String>,
    pub timeout_ms: Option<u64>,
    pub first_content_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub enabled: bool,
    pub mock: Option<MockOptions>,
    /// Groups served; empty = every group.
    pub groups: Vec<String>,
    /// Non-public media hosts this channel may receive URLs of.
    pub media_hosts: Vec<String>,
    /// The channel's breaker policy (`None`: the default).
    pub breaker: Option<BreakerPolicy>,
    /// The API version its calls name (`None`: the provider's default).
    pub api_version: Option<String>,
    /// Tool calls are emulated in the prompt for its models.
    pub emulate_tools: bool,
    /// The models this channel serves and how.
    pub models: Vec<ChannelTargetView>,
}

/// One model served by a channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelTargetView {
    pub name: String,
    pub upstream_model: Option<String>,
    pub priority: i32,
    pub weight: u32,
}

fn channel_views(config: &RoutingConfig) -> Vec<ChannelView> {
    config
        .channels
        .iter()
        .map(|ch| ChannelView {
            id: ch.id.clone(),
            provider: ch.provider.clone(),
            base_url: ch.base_url.clone(),
            has_api_key: ch.api_key.is_some(),
            credentials: ch.credentials().len(),
            key_rotation: ch.key_rotation,
            api_key_secret: ch.api_key_secret.clone(),
            timeout_ms: ch.timeout_ms,
            first_content_timeout_ms: ch.first_content_timeout_ms,
            idle_timeout_ms: ch.idle_timeout_ms,
            enabled: ch.enabled,
            mock: ch.mock,
            groups: ch.groups.clone(),
            media_hosts: ch.media_hosts.clone(),
            breaker: ch.breaker,
            api_version: ch.api_version.clone(),
            emulate_tools: ch.emulate_tools,
            models: config
                .models
                .iter()
                .flat_map(|m| {
                    m.targets.iter().filter(|t| t.channel == ch.id).map(|t| ChannelTargetView {
                        name: m.name.clone(),
                        upstream_model: t.upstream_model.clone(),
                        priority: t.priority,
                        weight: t.weight,
                    })
                })
                .collect(),
        })
        .collect()
}

/// Response of a channel change.
#[derive(Debug, Serialize)]
pub struct ChannelChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    pub routing_version: u64,
    pub edge_synced: bool,
}

/// `GET /api/models` response.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub data: Vec<ModelRoute>,
    pub routing_version: u64,
}

// ---- handlers ----

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateChannel>,
) -> ApiResult<(StatusCode, Json<ChannelChange>)> {
    let (channel, models) = validated(body)?;
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    if routing::channel_exists(&mut tx, &channel.id).await? {
        return Err(ApiError::Conflict(format!("channel `{}` already exists; delete it first", channel.id)));
    }
    let targets: Vec<NewTarget> = models
        .iter()
        .map(|m| NewTarget {
            name: m.name.clone(),
            upstream_model: m.upstream_model.clone(),
            priority: m.priority.unwrap_or(0),
            weight: m.weight.unwrap_or(1),
            price: m.price,
            owned_by: m.owned_by.clone(),
            options: m.options.clone(),
        })
        .collect();
    routing::insert_channel(&mut tx, &channel, &targets, now_secs()).await?;
    let config = load_routing_config(&mut tx).await?;
    check_routing(&config)?;
    let created_view = channel_views(&config).into_iter().find(|v| v.id == channel.id);
    audit::record_in(
        &mut tx,
        &caller,
        "channel.create",
        ("channel", &channel.id),
        None::<&ChannelView>,
        created_view.as_ref(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(channel = %channel.id, provider = %channel.provider, version, "channel created");
    let edge_synced = push_routing_if_configured(&state).await;
    let view = channel_views(&config).into_iter().find(|v| v.id == channel.id);
    Ok((
        StatusCode::CREATED,
        Json(ChannelChange { channel: view, deleted: None, routing_version: version, edge_synced }),
    ))
}

/// `PATCH /api/channels/{id}`: changes the channel's own fields (see
/// [`UpdateChannel`]), checked as a new channel's are, in one transaction
/// that bumps the routing version; then pushes the routing config.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateChannel>,
) -> ApiResult<Json<ChannelChange>> {
    if body.is_empty() {
        return Err(ApiError::bad_request("nothing to change: send at least one of the channel's fields"));
    }
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    let config = load_routing_config(&mut tx).await?;
    let current = config
        .channels
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no channel with id `{id}`")))?;
    let channel = validated_channel(body.applied_to(current))?;
    let before = channel_views(&config).into_iter().find(|v| v.id == id);
    if !routing::update_channel(&mut tx, &channel).await? {
        return Err(ApiError::NotFound(format!("no channel with id `{id}`")));
    }
    let config = load_routing_config(&mut tx).await?;
    check_routing(&config)?;
    let view = channel_views(&config).into_iter().find(|v| v.id == id);
    audit::record_in(&mut tx, &caller, "channel.update", ("channel", &id), before.as_ref(), view.as_ref())
        .await?;
    tx.commit().await?;
    tracing::info!(channel = %id, enabled = channel.enabled, version, "channel updated");
    let edge_synced = push_routing_if_configured(&state).await;
    Ok(Json(ChannelChange { channel: view, deleted: None, routing_version: version, edge_synced }))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<ChannelView>>> {
    let config = load_routing_config_consistent(state.db()).await?;
    Ok(Json(List { data: channel_views(&config) }))
}

/// `GET /api/channels/{id}/health` (admin): the channel's circuits at the
/// edge (per upstream model and per credential, as every isolate shares
/// them), how many of its credentials are usable (none usable means routing
/// skips the channel), and the last round of health checks: each
/// credential's status and latency, and why the checks disabled the
/// channel, if they did.
pub async fn health(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let config = routing::load_routing_config_consistent(state.db()).await?;
    let channel = config
        .channels
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no channel with id `{id}`")))?;
    let edge = state.edge().ok_or_else(|| ApiError::NotConfigured("EDGE_URL is not set".into()))?;
    let at_edge = edge
        .get_health()
        .await
        .map_err(|e| ApiError::EdgeSyncFailed(format!("the edge did not answer with its circuits: {e}")))?;
    let circuits: Vec<serde_json::Value> = at_edge["circuits"]
        .as_array()
        .map(|all| all.iter().filter(|c| c["channel"] == id.as_str()).cloned().collect())
        .unwrap_or_default();
    let credentials = channel.credentials().len().max(usize::from(channel.api_key_secret.is_some()));
    let out_of_rotation =
        circuits.iter().filter(|c| c["credential"].is_u64() && c["state"] != "closed").count();
    let checked = &at_edge["channels"][id.as_str()];
    Ok(Json(serde_json::json!({
        "channel": id,
        "credentials": credentials,
        "usable_credentials": credentials.saturating_sub(out_of_rotation),
        "circuits": circuits,
        "checks": checked["checks"].as_array().cloned().unwrap_or_default(),
        "disabled": checked["disabled"],
    })))
}

/// `DELETE /api/channels/{id}`: removes the channel, its targets, and models
/// left with no channel.
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<ChannelChange>> {
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    let before = channel_views(&load_routing_config(&mut tx).await?).into_iter().find(|v| v.id == id);
    if !routing::delete_channel(&mut tx, &id).await? {
        return Err(ApiError::NotFound(format!("no channel with id `{id}`")));
    }
    let config = load_routing_config(&mut tx).await?;
    check_routing(&config)?;
    audit::record_in(
        &mut tx,
        &caller,
        "channel.delete",
        ("channel", &id),
        before.as_ref(),
        None::<&ChannelView>,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(channel = %id, version, "channel deleted");
    let edge_synced = push_routing_if_configured(&state).await;
    Ok(Json(ChannelChange { channel: None, deleted: Some(id), routing_version: version, edge_synced }))
}

pub async fn list_models(State(state): State<AppState>) -> ApiResult<Json<ModelList>> {
    let config = load_routing_config_consistent(state.db()).await?;
    Ok(Json(ModelList { routing_version: config.version, data: config.models }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateChannel {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn unknown_provider_lists_the_known_ones() {
        let err = validated(body(r#"{"id":"a","provider":"nope"}"#)).unwrap_err();
        assert!(err.to_string().contains("unknown provider `nope`"));
        assert!(err.to_string().contains("openai"));
    }

    #[test]
    fn channel_checks() {
        assert!(validated(body(r#"{"id":"a b","provider":"mock"}"#)).is_err());
        assert!(validated(body(r#"{"id":"a","provider":"openai","mock":{"latency_ms":1}}"#)).is_err());
        assert!(validated(body(r#"{"id":"a","provider":"openai","timeout_ms":0}"#)).is_err());
        let m = |extra: &str| format!(r#"{{"id":"a","provider":"mock","models":[{{"name":"m"}}],{extra}}}"#);
        assert!(validated(body(&m(r#""mock":{"latency_ms":60001}"#))).is_err(), "mock delays are bounded");
        assert!(validated(body(&m(r#""mock":{"latency_ms":60000,"chunk_delay_ms":5}"#))).is_ok());
        assert!(
            validated(body(&m(r#""breaker":{"failures":2,"window_ms":0}"#))).is_err(),
            "a window that counts nothing"
        );
        assert!(
            validated(body(&m(r#""breaker":{"failures":0,"window_ms":0,"open_ms":0}"#))).is_ok(),
            "the breaker off"
        );
        assert!(validated(body(&m(r#""first_content_timeout_ms":600001"#))).is_err());
        assert!(validated(body(r#"{"id":"a","provider":"openai","api_key":"has space"}"#)).is_err());
        assert!(validated(body(r#"{"id":"a","provider":"openai","api_key_secret":"BAD-NAME"}"#)).is_err());
        assert!(
            validated(body(r#"{"id":"a","provider":"mock","models":[{"name":"m"},{"name":"m"}]}"#)).is_err()
        );
        assert!(validated(body(
            r#"{"id":"a","provider":"mock","models":[{"name":"m","price":{"input":-1}}]}"#
        ))
        .is_err());
        let (ch, models) = validated(body(
            r#"{"id":"a","provider":"openai","api_key":" sk-x ","base_url":"https://x.test/v1/","models":[{"name":" m "}]}"#,
        ))
        .unwrap();
        assert_eq!(ch.api_key.as_deref(), Some("sk-x"));
        assert_eq!(ch.base_url.as_deref(), Some("https://x.test/v1"));
        assert!(ch.enabled);
        assert_eq!(models[0].name, "m");
    }

    #[test]
    fn an_api_version_only_for_providers_whose_urls_carry_one() {
        let azure = r#"{"id":"az","provider":"azure","base_url":"https://res.openai.azure.com","api_key":"k","api_version":" 2025-04-01-preview ","models":[{"name":"m"}]}"#;
        let (ch, _) = validated(body(azure)).unwrap();
        assert_eq!(ch.api_version.as_deref(), Some("2025-04-01-preview"));
        let err = validated(body(
            r#"{"id":"a","provider":"openai","api_version":"2024-10-21","models":[{"name":"m"}]}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("applies only to providers"), "{err}");
        let err = validated(body(
            r#"{"id":"az","provider":"azure","base_url":"https://r.test","api_version":"v1&x=y","models":[{"name":"m"}]}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("must be a version"), "{err}");
        let (ch, _) =
            validated(body(r#"{"id":"az","provider":"azure","base_url":"https://r.test","api_version":"","models":[{"name":"m"}]}"#))
                .unwrap();
        assert_eq!(ch.api_version, None, "blank is the default");
    }
}

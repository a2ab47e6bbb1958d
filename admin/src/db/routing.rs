//! Queries of the routing tables (`channels`, `models`, `model_targets`,
//! `routing_state`): reading the whole [`RoutingConfig`] and the writes of a
//! channel change. Writes take an open transaction; the handler bumps the
//! version first (which also takes the write lock), writes, re-reads and
//! validates the config, then commits.

use crate::db::{is_unique_violation, Db, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::now_ms;
use edgeway_core::channel_health::breaker::BreakerPolicy;
use edgeway_core::pricing::ModelPrice;
use edgeway_core::request_policy::PolicyRule;
use edgeway_core::routing::{
    Channel, GroupConfig, KeyRotation, ModelOptions, ModelRoute, RouteTarget, RoutingConfig,
};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

/// What the `settings` column of `channels` holds (JSON): the channel's
/// fields that came after its first columns. Absent fields default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_content_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "KeyRotation::is_default")]
    pub key_rotation: KeyRotation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emulate_tools: bool,
}

impl ChannelSettings {
    pub fn of(channel: &Channel) -> Self {
        Self {
            first_content_timeout_ms: channel.first_content_timeout_ms,
            idle_timeout_ms: channel.idle_timeout_ms,
            media_hosts: channel.media_hosts.clone(),
            breaker: channel.breaker,
            api_keys: channel.api_keys.clone(),
            key_rotation: channel.key_rotation,
            api_version: channel.api_version.clone(),
            emulate_tools: channel.emulate_tools,
        }
    }
}

/// One model served by a channel being added (validated by the handler).
#[derive(Debug, Clone)]
pub struct NewTarget {
    pub name: String,
    pub upstream_model: Option<String>,
    pub priority: i32,
    pub weight: u32,
    /// Sets the model's price; `None` keeps the current one (zero for a new model).
    pub price: Option<ModelPrice>,
    pub owned_by: Option<String>,
    /// Sets the model's options; `None` keeps the current ones.
    pub options: Option<ModelOptions>,
}

fn price_from_row(row: &sqlx::any::AnyRow) -> Result<ModelPrice, sqlx::Error> {
    Ok(ModelPrice {
        input: row.int("price_input")?,
        output: row.int("price_output")?,
        cache_read: row.opt_int("price_cache_read")?,
        cache_write_5m: row.opt_int("price_cache_write_5m")?,
        cache_write_1h: row.opt_int("price_cache_write_1h")?,
        per_request: row.int("price_per_request")?,
    })
}

fn non_negative_u64(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// Reads the whole routing configuration through `conn` (a pooled connection
/// or an open transaction).
pub async fn load_routing_config(conn: &mut AnyConnection) -> ApiResult<RoutingConfig> {
    let version = routing_version(conn).await?;
    let channel_rows = sqlx::query(
        "SELECT id, provider, base_url, api_key, api_key_secret, timeout_ms, enabled, mock, groups, settings \
         FROM channels ORDER BY created_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut channels = Vec::with_capacity(channel_rows.len());
    for row in &channel_rows {
        let settings: ChannelSettings = serde_json::from_str(&row.text("settings")?)?;
        channels.push(Channel {
            id: row.text("id")?,
            provider: row.text("provider")?,
            base_url: row.opt_text("base_url")?,
            api_key: row.opt_text("api_key")?,
            api_key_secret: row.opt_text("api_key_secret")?,
            timeout_ms: non_negative_u64(row.opt_int("timeout_ms")?),
            enabled: row.int("enabled")? != 0,
            mock: row.opt_text("mock")?.map(|m| serde_json::from_str(&m)).transpose()?,
            groups: serde_json::from_str(&row.text("groups")?)?,
            first_content_timeout_ms: settings.first_content_timeout_ms,
            idle_timeout_ms: settings.idle_timeout_ms,
            media_hosts: settings.media_hosts,
            breaker: settings.breaker,
            api_keys: settings.api_keys,
            key_rotation: settings.key_rotation,
            api_version: settings.api_version,
            emulate_tools: settings.emulate_tools,
        });
    }
    let model_rows = sqlx::query(
        "SELECT name, price_input, price_output, price_cache_read, price_cache_write_5m, \
         price_cache_write_1h, price_per_request, owned_by, options FROM models ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let target_rows = sqlx::query(
        "SELECT model, channel, upstream_model, priority, weight FROM model_targets \
         ORDER BY model, priority DESC, channel",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut models = Vec::with_capacity(model_rows.len());
    for row in &model_rows {
        models.push(ModelRoute {
            name: row.text("name")?,
            price: price_from_row(row)?,
            owned_by: row.opt_text("owned_by")?,
            targets: Vec::new(),
            options: row
                .opt_text("options")?
                .map(|o| serde_json::from_str(&o))
                .transpose()?
                .unwrap_or_default(),
        });
    }
    for row in &target_rows {
        let model = row.text("model")?;
        let Some(route) = models.iter_mut().find(|m| m.name == model) else { continue };
        route.targets.push(RouteTarget {
            channel: row.text("channel")?,
            upstream_model: row.opt_text("upstream_model")?,
            priority: i32::try_from(row.int("priority")?).unwrap_or(0),
            weight: u32::try_from(row.int("weight")?).unwrap_or(1),
        });
    }
    let groups = crate::db::users::groups(conn)
        .await?
        .into_iter()
        .map(|g| GroupConfig { name: g.name, price_ratio_ppm: g.price_ratio_ppm })
        .collect();
    let policy = request_policy(conn).await?;
    Ok(RoutingConfig { version, channels, models, groups, policy })
}

/// The request policy's rules, in order.
pub async fn request_policy(conn: &mut AnyConnection) -> ApiResult<Vec<PolicyRule>> {
    let text: String =
        sqlx::query_scalar("SELECT policy FROM routing_state WHERE id = 1").fetch_one(&mut *conn).await?;
    Ok(serde_json::from_str(&text)?)
}

/// Replaces the request policy's rules (the caller bumps the routing version).
pub async fn set_request_policy(conn: &mut AnyConnection, rules: &[PolicyRule]) -> ApiResult<()> {
    sqlx::query("UPDATE routing_state SET policy = $1 WHERE id = 1")
        .bind(serde_json::to_string(rules)?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn routing_version(conn: &mut AnyConnection) -> ApiResult<u64> {
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM routing_state WHERE id = 1").fetch_one(&mut *conn).await?;
    Ok(u64::try_from(version).unwrap_or(0))
}

/// Reads the routing config outside a transaction, re-reading until the
/// version did not move meanwhile, so the content matches its version.
pub async fn load_routing_config_consistent(db: &Db) -> ApiResult<RoutingConfig> {
    let mut conn = db.pool.acquire().await?;
    for _ in 0..5 {
        let config = load_routing_config(&mut conn).await?;
        if routing_version(&mut conn).await? == config.version {
            return Ok(config);
        }
    }
    Err(ApiError::Conflict("the routing config is changing too fast to read; retry".into()))
}

/// Bumps the routing version to `max(version + 1, now_ms)` and returns it.
/// Being the first write of a change, it also takes the write lock early.
pub async fn bump_routing_version(conn: &mut AnyConnection) -> ApiResult<u64> {
    sqlx::query(
        "UPDATE routing_state SET version = CASE WHEN version + 1 > $1 THEN version + 1 ELSE $1 END \
         WHERE id = 1",
    )
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    routing_version(conn).await
}

/// Whether channel `id` exists.
pub async fn channel_exists(conn: &mut AnyConnection, id: &str) -> ApiResult<bool> {
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM channels WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(exists.is_some())
}

/// Inserts a channel and its targets; models are created at their given
/// price (or zero), existing ones keep theirs unless a price is given.
pub async fn insert_channel(
    conn: &mut AnyConnection,
    channel: &Channel,
    models: &[NewTarget],
    now: i64,
) -> ApiResult<()> {
    let mock = channel.mock.as_ref().map(serde_json::to_string).transpose()?;
    let timeout = channel.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let inserted = sqlx::query(
        "INSERT INTO channels (id, provider, base_url, api_key, api_key_secret, timeout_ms, enabled, mock, created_at, groups, settings) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&channel.id)
    .bind(&channel.provider)
    .bind(&channel.base_url)
    .bind(&channel.api_key)
    .bind(&channel.api_key_secret)
    .bind(timeout)
    .bind(i64::from(channel.enabled))
    .bind(mock)
    .bind(now)
    .bind(serde_json::to_string(&channel.groups)?)
    .bind(serde_json::to_string(&ChannelSettings::of(channel))?)
    .execute(&mut *conn)
    .await;
    match inserted {
        Err(err) if is_unique_violation(&err) => {
            return Err(ApiError::Conflict(format!("channel `{}` already exists", channel.id)));
        }
        other => other?,
    };
    for model in models {
        let price = model.price.unwrap_or_default();
        // A new model starts with the given price (or zero); an existing one
        // keeps its price unless this request sets one.
        sqlx::query(
            "INSERT INTO models (name, price_input, price_output, price_cache_read, price_cache_write_5m, \
             price_cache_write_1h, price_per_request, owned_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&model.name)
        .bind(price.input)
        .bind(price.output)
        .bind(price.cache_read)
        .bind(price.cache_write_5m)
        .bind(price.cache_write_1h)
        .bind(price.per_request)
        .bind(&model.owned_by)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if let Some(price) = model.price {
            sqlx::query(
                "UPDATE models SET price_input = $1, price_output = $2, price_cache_read = $3, \
                 price_cache_write_5m = $4, price_cache_write_1h = $5, price_per_request = $6 WHERE name = $7",
            )
            .bind(price.input)
            .bind(price.output)
            .bind(price.cache_read)
            .bind(price.cache_write_5m)
            .bind(price.cache_write_1h)
            .bind(price.per_request)
            .bind(&model.name)
            .execute(&mut *conn)
            .await?;
        }
        if let Some(options) = &model.options {
            sqlx::query("UPDATE models SET options = $1 WHERE name = $2")
                .bind(serde_json::to_string(options)?)
                .bind(&model.name)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(owned_by) = &model.owned_by {
            sqlx::query("UPDATE models SET owned_by = $1 WHERE name = $2")
                .bind(owned_by)
                .bind(&model.name)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO model_targets (model, channel, upstream_model, priority, weight) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&model.name)
        .bind(&channel.id)
        .bind(&model.upstream_model)
        .bind(i64::from(model.priority))
        .bind(i64::from(model.weight))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Rewrites the stored fields of an existing channel (its targets stay);
/// whether it existed.
pub async fn update_channel(conn: &mut AnyConnection, channel: &Channel) -> ApiResult<bool> {
    let mock = channel.mock.as_ref().map(serde_json::to_string).transpose()?;
    let timeout = channel.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let updated = sqlx::query(
        "UPDATE channels SET base_url = $1, api_key = $2, api_key_secret = $3, timeout_ms = $4, \
         enabled = $5, mock = $6, groups = $7, settings = $8 WHERE id = $9",
    )
    .bind(&channel.base_url)
    .bind(&channel.api_key)
    .bind(&channel.api_key_secret)
    .bind(timeout)
    .bind(i64::from(channel.enabled))
    .bind(mock)
    .bind(serde_json::to_string(&channel.groups)?)
    .bind(serde_json::to_string(&ChannelSettings::of(channel))?)
    .bind(&channel.id)
    .execute(&mut *conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// Deletes channel `id`, its targets and the models left without a channel;
/// whether it existed.
pub async fn delete_channel(conn: &mut AnyConnection, id: &str) -> ApiResult<bool> {
    let deleted = sqlx::query("DELETE FROM channels WHERE id = $1").bind(id).execute(&mut *conn).await?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM model_targets WHERE channel = $1").bind(id).execute(&mut *conn).await?;
    sqlx::query(
        "DELETE FROM models WHERE NOT EXISTS (SELECT 1 FROM model_targets t WHERE t.model = models.name)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

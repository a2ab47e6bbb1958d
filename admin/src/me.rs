//! Self-service for every signed-in user, always scoped to the caller: their
//! profile, keys (created within the limits an admin set: `max_keys` and
//! `max_key_quota_micros`), usage and spend by day and model, API tokens,
//! invitation code, and the models they can use at their group's prices.
//! Another user's object is never found here (404), whoever asks.

use crate::auth::{self, Caller, API_TOKEN_PREFIX};
use crate::db::keys::{self as db_keys, KeyChange, StoredKey};
use crate::db::usage::{self as db_usage, DailySpend, LedgerEntry};
use crate::db::{routing, sessions, users};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::key_issue::{key_label, new_id, random_base62};
use crate::keys::{self, ChangedKey, CreateKey, CreatedKey, List};
use crate::users::{view, UpdateUser, UserView};
use crate::{now_ms, now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use edgeway_core::key_record::KeyStatus;
use edgeway_core::pricing::ModelPrice;
use serde::{Deserialize, Serialize};

async fn me(state: &AppState, caller: &Caller) -> ApiResult<users::User> {
    users::find(state.db(), &caller.user_id).await?.ok_or(ApiError::Unauthorized)
}

/// `GET /api/me`.
pub async fn profile(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<UserView>> {
    let user = me(&state, &caller).await?;
    Ok(Json(view(&state, user).await?))
}

/// `PATCH /api/me` body: what users may change of themselves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Low-balance alert threshold; `null` switches the alert off.
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub low_balance_micros: Option<Option<i64>>,
}

/// `PATCH /api/me`.
pub async fn update_profile(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<UpdateMe>,
) -> ApiResult<Json<UserView>> {
    let before = me(&state, &caller).await?;
    let change = crate::users::validated_change(
        &state,
        UpdateUser {
            email: body.email.map(Some),
            password: body.password,
            low_balance_micros: body.low_balance_micros,
            ..UpdateUser::default()
        },
    )
    .await?;
    let after = crate::users::apply(&state, &before, &change).await?;
    Ok(Json(view(&state, after).await?))
}

/// `POST /api/me/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMyKey {
    pub name: String,
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub quota_micros: Option<i64>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
}

/// `GET /api/me/keys`.
pub async fn my_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<StoredKey>>> {
    Ok(Json(List { data: db_keys::user_keys(state.db(), &caller.user_id).await? }))
}

/// `POST /api/me/keys`: a key drawing on the caller's balance.
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateMyKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let user = me(&state, &caller).await?;
    if db_keys::count_active_user_keys(state.db(), &user.id).await? >= user.max_keys {
        return Err(ApiError::forbidden(format!(
            "you may hold at most {} active keys; revoke one first",
            user.max_keys
        )));
    }
    if let Some(cap) = user.max_key_quota_micros {
        match body.quota_micros {
            Some(q) if q <= cap => {}
            _ => {
                return Err(ApiError::forbidden(format!(
                    "your keys need a `quota_micros` of at most {cap} (set by an admin)"
                )))
            }
        }
    }
    let request = CreateKey {
        name: body.name,
        allowed_models: body.allowed_models,
        expires_at: body.expires_at,
        quota_micros: body.quota_micros,
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrency: body.max_concurrency,
        max_wait_ms: body.max_wait_ms,
        allowed_ips: body.allowed_ips,
        ..CreateKey::default()
    };
    let (key, stored) = keys::build_key(request, Some(&user))?;
    Ok((StatusCode::CREATED, Json(keys::issue(&state, key, stored).await?)))
}

/// `DELETE /api/me/keys/{id}`: revokes one of the caller's keys.
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<ChangedKey>> {
    db_keys::find_user_key(state.db(), &caller.user_id, &id).await?.ok_or_else(|| keys::not_found(&id))?;
    let change = KeyChange { status: Some(KeyStatus::Disabled), ..KeyChange::default() };
    Ok(Json(keys::change_key(&state, &id, &change).await?))
}

/// `GET /api/me/usage` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    #[serde(default)]
    pub limit: Option<i64>,
    /// Days back for the daily summary (1..=366, default 30).
    #[serde(default)]
    pub days: Option<i64>,
}

/// `GET /api/me/usage`: the caller's request rows, newest first.
pub async fn my_usage(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<UsageQuery>,
) -> ApiResult<Json<List<LedgerEntry>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    Ok(Json(List { data: db_usage::list_filtered(state.db(), "", &caller.user_id, limit).await? }))
}

/// `GET /api/me/usage/daily`: requests, tokens and spend per UTC day and model.
pub async fn my_daily(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<UsageQuery>,
) -> ApiResult<Json<List<DailySpend>>> {
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::bad_request("`days` must be between 1 and 366"));
    }
    let today = now_ms().div_euclid(86_400_000);
    let since = (today - days + 1) * 86_400_000;
    Ok(Json(List { data: db_usage::daily_by_model(state.db(), &caller.user_id, since).await? }))
}

/// `POST /api/me/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
}

/// `POST /api/me/tokens` response: the token, shown once.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub stored: sessions::ApiToken,
}

/// `POST /api/me/tokens`: an API token acting as the caller (for scripts).
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = validate::text("name", &body.name)?;
    let token = format!("{API_TOKEN_PREFIX}{}", random_base62(40).map_err(ApiError::internal)?);
    let id = new_id("tok").map_err(ApiError::internal)?;
    let label = key_label(&token);
    let now = now_secs();
    sessions::insert_token(state.db(), &id, &caller.user_id, &name, &auth::hex_digest(&token), &label, now)
        .await?;
    let stored = sessions::ApiToken { id, name, prefix_label: label, created_at: now, revoked_at: None };
    Ok((StatusCode::CREATED, Json(CreatedToken { token, stored })))
}

/// `GET /api/me/tokens`.
pub async fn my_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<List<sessions::ApiToken>>> {
    Ok(Json(List { data: sessions::user_tokens(state.db(), &caller.user_id).await? }))
}

/// `DELETE /api/me/tokens/{id}`.
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    if sessions::revoke_token(state.db(), &caller.user_id, &id, now_secs()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no token with id `{id}`")))
    }
}

/// `GET /api/me/invitation`: the caller's invitation code (created on first ask).
pub async fn invitation(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    let fresh = format!("inv-{}", random_base62(12).map_err(ApiError::internal)?);
    let code = users::invitation_code(state.db(), &caller.user_id, &fresh, now_secs()).await?;
    Ok(Json(serde_json::json!({ "code": code })))
}

/// A model as a user sees it: prices at the group's ratio.
#[derive(Debug, Serialize)]
pub struct MyModel {
    pub name: String,
    /// The list price (micro-units per million tokens).
    pub price: ModelPrice,
    pub group: String,
    pub price_ratio_ppm: u32,
    /// What a million input / output tokens cost this user.
    pub input_per_million_micros: i64,
    pub output_per_million_micros: i64,
}

/// `GET /api/me/models`: models served to the caller's group, priced at its
/// ratio with the edge's own pricing code.
pub async fn my_models(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<MyModel>>> {
    let config = routing::load_routing_config_consistent(state.db()).await?;
    let ratio = config.price_ratio_ppm(&caller.group);
    let data = config
        .models
        .iter()
        .filter(|m| {
            m.targets.iter().any(|t| {
                config
                    .channels
                    .iter()
                    .any(|c| c.id == t.channel && c.enabled && c.serves_group(&caller.group))
            })
        })
        .map(|m| {
            let tokens_only = ModelPrice { per_request: 0, ..m.price };
            let per = |input: u64, output: u64| {
                let usage =
                    edgeway_core::usage::TokenUsage { input_uncached: input, output, ..Default::default() };
                tokens_only.cost_micros_at_ratio(&usage, ratio)
            };
            MyModel {
                name: m.name.clone(),
                price: m.price,
                group: caller.group.clone(),
                price_ratio_ppm: ratio,
                input_per_million_micros: per(1_000_000, 0),
                output_per_million_micros: per(0, 1_000_000),
            }
        })
        .collect();
    Ok(Json(List { data }))
}

/// `PUT /api/me/keys/{id}/budget`: a daily or monthly budget on one of my
/// keys, within the admin's `max_key_quota_micros`.
pub async fn set_key_budget(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<keys::SetBudget>,
) -> ApiResult<Json<serde_json::Value>> {
    let user = me(&state, &caller).await?;
    let key = db_keys::find_user_key(state.db(), &user.id, &id).await?.ok_or_else(|| keys::not_found(&id))?;
    if let (Some(cap), Some(b)) = (user.max_key_quota_micros, body.budget_micros) {
        if b > cap {
            return Err(ApiError::forbidden(format!(
                "a key's budget may be at most {cap} (set by an admin)"
            )));
        }
    }
    Ok(Json(keys::apply_budget(&state, &key, &body).await?))
}

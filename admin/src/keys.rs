//! Client keys: issue, list, change, revoke; each change is pushed to the edge
//! as an [`edgeway_core::key_record::KeyRecord`].
//!
//! Invariants: the plaintext key is returned once, by `POST /api/keys`, and is
//! never stored, logged or returned again; the row keeps its SHA-256 digest
//! and a 10-character label. Every change is one `UPDATE … RETURNING` that
//! also bumps `version` by one, so concurrent edits serialise in the database,
//! none is lost, and the edge can order the records it receives. Revoking disables
//! the key but keeps the row, so the ledger still resolves it.

use crate::audit;
use crate::auth::Caller;
use crate::db::keys::{all_keys, apply_change, find_key, insert_key, status_text, KeyChange, StoredKey};
use crate::db::users::{self, User};
use crate::edge_sync::{push_account_if_configured, push_key_if_configured};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam};
use crate::key_issue::{generate_key, key_label, new_id};
use crate::{now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use edgeway_core::api_key::key_digest;
use edgeway_core::key_record::KeyStatus;
use serde::{Deserialize, Serialize};

/// Latest accepted expiry (9999-12-31T23:59:59Z).
const MAX_EXPIRES_AT: i64 = 253_402_300_799;

// ---- request bodies and validation ----

/// `POST /api/keys` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    /// The user whose balance the key draws on; the key then takes the
    /// user's group (and `owner` defaults to the username).
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
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
    /// A request over `max_concurrency` waits up to this long (ms, at most
    /// 60000) for a slot, in arrival order, before it is refused.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    /// A test key: may pin requests to one channel with the unsigned
    /// `x-edgeway-pin-channel` header (for channel tests; never for customers).
    #[serde(default)]
    pub pin_allowed: bool,
}

/// `PATCH /api/keys/{id}` body: absent fields stay, `null` clears a limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub status: Option<KeyStatus>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub expires_at: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub quota_micros: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub max_concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub max_wait_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub allowed_ips: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub pin_allowed: Option<bool>,
}

impl UpdateKey {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.owner.is_none()
            && self.group.is_none()
            && self.status.is_none()
            && self.expires_at.is_none()
            && self.allowed_models.is_none()
            && self.quota_micros.is_none()
            && self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_concurrency.is_none()
            && self.max_wait_ms.is_none()
            && self.allowed_ips.is_none()
            && self.pin_allowed.is_none()
    }
}

pub fn check_expiry(expires_at: Option<i64>, now: i64) -> ApiResult<Option<i64>> {
    match expires_at {
        Some(at) if at <= now => Err(ApiError::bad_request(
            "`expires_at` (unix seconds) must be in the future; to stop a key now, set `status` to `disabled`",
        )),
        Some(at) if at > MAX_EXPIRES_AT => {
            Err(ApiError::bad_request("`expires_at` must be unix seconds, not milliseconds"))
        }
        other => Ok(other),
    }
}

pub fn check_limits(
    quota_micros: Option<i64>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
) -> ApiResult<()> {
    if quota_micros.is_some_and(|q| q < 0) {
        return Err(ApiError::bad_request("`quota_micros` must not be negative"));
    }
    if let Some(q) = quota_micros {
        validate::safe_number("quota_micros", q)?;
    }
    if let Some(t) = tpm {
        validate::safe_number("tpm", i64::try_from(t).unwrap_or(i64::MAX))?;
    }
    if rpm == Some(0) || tpm == Some(0) || max_concurrency == Some(0) {
        return Err(ApiError::bad_request(
            "`rpm`, `tpm` and `max_concurrency` must be at least 1 (null = unlimited; to block a key, disable it)",
        ));
    }
    if tpm.is_some_and(|t| i64::try_from(t).is_err()) {
        return Err(ApiError::bad_request("`tpm` is too large"));
    }
    Ok(())
}

/// `max_wait_ms`: at most a minute.
pub fn check_max_wait(max_wait_ms: Option<u64>) -> ApiResult<Option<u64>> {
    let max = edgeway_core::pipeline::wait_queue::MAX_WAIT_MS;
    match max_wait_ms {
        Some(ms) if ms > max => Err(ApiError::bad_request(format!("`max_wait_ms` must be at most {max}"))),
        other => Ok(other),
    }
}

// ---- handlers ----

/// `POST /api/keys` response: the stored key plus the plaintext, once.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    /// The plaintext key. Shown only here; store it now.
    pub key: String,
    #[serde(flatten)]
    pub stored: StoredKey,
    pub edge_synced: bool,
}

/// Response of a key change.
#[derive(Debug, Serialize)]
pub struct ChangedKey {
    #[serde(flatten)]
    pub stored: StoredKey,
    pub edge_synced: bool,
}

/// `{"data": [...]}` list envelope.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

/// Validates a new key's fields into a row (with a fresh key and id).
/// `user` is the owning user, whose group the key takes.
pub fn build_key(body: CreateKey, user: Option<&User>) -> ApiResult<(String, StoredKey)> {
    let now = now_secs();
    let key = generate_key().map_err(ApiError::internal)?;
    let owner_default = user.map(|u| u.username.clone()).unwrap_or_default();
    let group = match user {
        Some(u) => u.group.clone(),
        None => validate::ident("group", body.group.as_deref().unwrap_or("default"))?,
    };
    let stored = StoredKey {
        id: new_id("key").map_err(ApiError::internal)?,
        name: validate::text("name", &body.name)?,
        owner: validate::optional_text("owner", body.owner.as_deref().unwrap_or(&owner_default))?,
        user_id: user.map(|u| u.id.clone()),
        group,
        digest: key_digest(&key),
        key_prefix: key_label(&key),
        status: KeyStatus::Active,
        expires_at: check_expiry(body.expires_at, now)?,
        allowed_models: validate::model_list("allowed_models", body.allowed_models)?,
        quota_micros: body.quota_micros,
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrency: body.max_concurrency,
        max_wait_ms: check_max_wait(body.max_wait_ms)?,
        allowed_ips: validate::ip_list(body.allowed_ips)?,
        pin_allowed: body.pin_allowed,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    check_limits(stored.quota_micros, stored.rpm, stored.tpm, stored.max_concurrency)?;
    Ok((key, stored))
}

/// Stores a built key and pushes it (a user's account first, so the edge
/// never sees a key whose user it does not know).
pub async fn issue(state: &AppState, key: String, stored: StoredKey) -> ApiResult<CreatedKey> {
    insert_key(state.db(), &stored).await?;
    tracing::info!(id = %stored.id, label = %stored.key_prefix, "key created");
    if let Some(user_id) = &stored.user_id {
        push_account_if_configured(state, user_id).await;
    }
    let edge_synced = push_key_if_configured(state, &stored.id).await;
    Ok(CreatedKey { key, stored, edge_synced })
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let user = match &body.user_id {
        Some(id) => {
            if body.group.is_some() {
                return Err(ApiError::bad_request("a user's key takes the user's group: leave out `group`"));
            }
            Some(
                users::find(state.db(), id)
                    .await?
                    .ok_or_else(|| ApiError::bad_request(format!("no user with id `{id}`")))?,
            )
        }
        None => None,
    };
    let (key, stored) = build_key(body, user.as_ref())?;
    let created = issue(&state, key, stored).await?;
    audit::record(
        &state,
        &caller,
        "key.create",
        ("key", &created.stored.id),
        None::<&StoredKey>,
        Some(&created.stored),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<StoredKey>>> {
    Ok(Json(List { data: all_keys(state.db()).await? }))
}

pub async fn get_one(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<StoredKey>> {
    find_key(state.db(), &id).await?.map(Json).ok_or_else(|| not_found(&id))
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no key with id `{id}`"))
}

/// Applies a validated change, then pushes the key's record.
pub async fn change_key(state: &AppState, id: &str, change: &KeyChange) -> ApiResult<ChangedKey> {
    let stored = apply_change(state.db(), id, change, now_secs()).await?.ok_or_else(|| not_found(id))?;
    tracing::info!(id = %stored.id, version = stored.version, status = status_text(stored.status), "key changed");
    let edge_synced = push_key_if_configured(state, &stored.id).await;
    Ok(ChangedKey { stored, edge_synced })
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> ApiResult<Json<ChangedKey>> {
    if body.is_empty() {
        return Err(ApiError::bad_request("nothing to change: send at least one field"));
    }
    let before = find_key(state.db(), &id).await?.ok_or_else(|| not_found(&id))?;
    check_limits(
        body.quota_micros.flatten(),
        body.rpm.flatten(),
        body.tpm.flatten(),
        body.max_concurrency.flatten(),
    )?;
    let change = KeyChange {
        name: body.name.as_deref().map(|n| validate::text("name", n)).transpose()?,
        owner: body.owner.as_deref().map(|o| validate::optional_text("owner", o)).transpose()?,
        group: match body.group.as_deref() {
            None => None,
            Some(_) if before.user_id.is_some() => {
                return Err(ApiError::bad_request(
                    "a user's key takes the user's group; change the user's group",
                ))
            }
            Some(g) => Some(validate::ident("group", g)?),
        },
        status: body.status,
        expires_at: body.expires_at.map(|e| check_expiry(e, now_secs())).transpose()?,
        allowed_models: body.allowed_models.map(|m| validate::model_list("allowed_models", m)).transpose()?,
        quota_micros: body.quota_micros,
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrency: body.max_concurrency,
        max_wait_ms: body.max_wait_ms.map(check_max_wait).transpose()?,
        allowed_ips: body.allowed_ips.map(validate::ip_list).transpose()?,
        pin_allowed: body.pin_allowed,
    };
    let changed = change_key(&state, &id, &change).await?;
    audit::record(&state, &caller, "key.update", ("key", &id), Some(&before), Some(&changed.stored)).await?;
    Ok(Json(changed))
}

/// `DELETE /api/keys/{id}`: revoke (disable and push); the row stays for the ledger.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<ChangedKey>> {
    let before = find_key(state.db(), &id).await?.ok_or_else(|| not_found(&id))?;
    let change = KeyChange { status: Some(KeyStatus::Disabled), ..KeyChange::default() };
    let changed = change_key(&state, &id, &change).await?;
    audit::record(&state, &caller, "key.revoke", ("key", &id), Some(&before), Some(&changed.stored)).await?;
    Ok(Json(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let p: UpdateKey = serde_json::from_str(r#"{"rpm":null,"tpm":5}"#).unwrap();
        assert_eq!(p.rpm, Some(None));
        assert_eq!(p.tpm, Some(Some(5)));
        assert_eq!(p.max_concurrency, None);
        assert!(!p.is_empty());
        let empty: UpdateKey = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<UpdateKey>(r#"{"quota":1}"#).is_err());
    }

    #[test]
    fn expiry_rules() {
        assert!(check_expiry(Some(100), 100).is_err());
        assert_eq!(check_expiry(Some(101), 100).unwrap(), Some(101));
        assert!(check_expiry(Some(1_700_000_000_000), 100).is_err());
        assert_eq!(check_expiry(None, 100).unwrap(), None);
    }
}

/// `PUT /api/keys/{id}/budget` body: `period` `daily`, `monthly` or `none` (removes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    pub period: String,
    #[serde(default)]
    pub budget_micros: Option<i64>,
}

/// Validates and stores a key budget, and applies it to the current period at once.
pub async fn apply_budget(
    state: &AppState,
    key: &StoredKey,
    body: &SetBudget,
) -> ApiResult<serde_json::Value> {
    let budget = match (body.period.as_str(), body.budget_micros) {
        ("none", _) => None,
        ("daily" | "monthly", Some(b)) if b >= 0 => Some((body.period.as_str(), b)),
        ("daily" | "monthly", _) => {
            return Err(ApiError::bad_request(
                "`budget_micros` (not negative) is required for a daily or monthly budget",
            ))
        }
        _ => return Err(ApiError::bad_request("`period` must be `daily`, `monthly` or `none`")),
    };
    crate::db::keys::set_budget(state.db(), &key.id, budget).await?;
    crate::budgets::run_once(state, crate::now_ms()).await?;
    let stored = find_key(state.db(), &key.id).await?.ok_or_else(|| not_found(&key.id))?;
    Ok(serde_json::json!({
        "key_id": key.id, "period": body.period, "budget_micros": budget.map(|b| b.1), "quota_micros": stored.quota_micros,
    }))
}

/// `PUT /api/keys/{id}/budget` (admin).
pub async fn set_budget(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<SetBudget>,
) -> ApiResult<Json<serde_json::Value>> {
    let key = find_key(state.db(), &id).await?.ok_or_else(|| not_found(&id))?;
    let out = apply_budget(&state, &key, &body).await?;
    audit::record(&state, &caller, "key.budget", ("key", &id), Some(&key), Some(&out)).await?;
    Ok(Json(out))
}

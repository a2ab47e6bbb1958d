//! Client keys: issue, list, change, revoke; each change is pushed to the edge
//! as a [`KeyRecord`].
//!
//! Invariants: the plaintext key is returned once, by `POST /api/keys`, and is
//! never stored, logged or returned again; the row keeps its SHA-256 digest
//! and a 10-character label. Every change bumps `version` by one with a
//! compare-and-set on the old version, so concurrent edits never lose an
//! update and the edge can order the records it receives. Revoking disables
//! the key but keeps the row, so the ledger still resolves it.

use crate::db::{Db, RowExt};
use crate::edge_sync::push_key_if_configured;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam};
use crate::key_issue::{generate_key, key_label, new_id};
use crate::{now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use edgeway_core::api_key::key_digest;
use edgeway_core::key_record::{KeyRecord, KeyStatus};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::any::AnyRow;

/// Latest accepted expiry (9999-12-31T23:59:59Z).
const MAX_EXPIRES_AT: i64 = 253_402_300_799;

/// A stored key as the API shows it (never the plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub group: String,
    /// SHA-256 hex of the key.
    pub digest: String,
    /// First 10 characters of the key, for recognising it (`sk-ew-AbCd`).
    pub key_prefix: String,
    pub status: KeyStatus,
    pub expires_at: Option<i64>,
    pub allowed_models: Option<Vec<String>>,
    pub quota_micros: Option<i64>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub allowed_ips: Option<Vec<String>>,
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl StoredKey {
    /// The record the edge stores for this key.
    pub fn to_record(&self) -> KeyRecord {
        KeyRecord {
            digest: self.digest.clone(),
            owner: self.owner.clone(),
            group: self.group.clone(),
            status: self.status,
            expires_at: self.expires_at,
            allowed_models: self.allowed_models.clone(),
            quota_micros: self.quota_micros,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            allowed_ips: self.allowed_ips.clone(),
            version: self.version,
        }
    }

    fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
        let status = match row.text("status")?.as_str() {
            "active" => KeyStatus::Active,
            "disabled" => KeyStatus::Disabled,
            other => return Err(ApiError::internal(format_args!("unknown key status `{other}` in database"))),
        };
        Ok(Self {
            id: row.text("id")?,
            name: row.text("name")?,
            owner: row.text("owner")?,
            group: row.text("group_name")?,
            digest: row.text("digest")?,
            key_prefix: row.text("key_prefix_label")?,
            status,
            expires_at: row.opt_int("expires_at")?,
            allowed_models: json_list(row.opt_text("allowed_models")?)?,
            quota_micros: row.opt_int("quota_micros")?,
            rpm: opt_number(row.opt_int("rpm")?)?,
            tpm: opt_number(row.opt_int("tpm")?)?,
            max_concurrency: opt_number(row.opt_int("max_concurrency")?)?,
            allowed_ips: json_list(row.opt_text("allowed_ips")?)?,
            version: number(row.int("version")?)?,
            created_at: row.int("created_at")?,
            updated_at: row.int("updated_at")?,
        })
    }
}

fn status_text(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Disabled => "disabled",
    }
}

fn json_list(text: Option<String>) -> Result<Option<Vec<String>>, ApiError> {
    text.map(|t| serde_json::from_str(&t)).transpose().map_err(ApiError::from)
}

fn to_json_list(list: &Option<Vec<String>>) -> Result<Option<String>, ApiError> {
    list.as_ref().map(serde_json::to_string).transpose().map_err(ApiError::from)
}

fn number<T: TryFrom<i64>>(value: i64) -> Result<T, ApiError> {
    T::try_from(value).map_err(|_| ApiError::internal(format_args!("number {value} out of range in database")))
}

fn opt_number<T: TryFrom<i64>>(value: Option<i64>) -> Result<Option<T>, ApiError> {
    value.map(number).transpose()
}

fn to_db_int<T: TryInto<i64> + Copy>(field: &str, value: Option<T>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| v.try_into().map_err(|_| ApiError::bad_request(format!("`{field}` is too large"))))
        .transpose()
}

/// One key by id.
pub async fn find_key(db: &Db, id: &str) -> ApiResult<Option<StoredKey>> {
    let row = sqlx::query(
        "SELECT id, name, owner, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, allowed_ips, version, created_at, updated_at \
         FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
}

/// Every key, newest first.
pub async fn all_keys(db: &Db) -> ApiResult<Vec<StoredKey>> {
    let rows = sqlx::query(
        "SELECT id, name, owner, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, allowed_ips, version, created_at, updated_at \
         FROM api_keys ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(StoredKey::from_row).collect()
}

/// The edge record of every key (for a full sync).
pub async fn all_key_records(db: &Db) -> ApiResult<Vec<KeyRecord>> {
    Ok(all_keys(db).await?.iter().map(StoredKey::to_record).collect())
}

async fn insert_key(db: &Db, key: &StoredKey) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, owner, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, allowed_ips, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&key.id)
    .bind(&key.name)
    .bind(&key.owner)
    .bind(&key.group)
    .bind(&key.digest)
    .bind(&key.key_prefix)
    .bind(status_text(key.status))
    .bind(key.expires_at)
    .bind(to_json_list(&key.allowed_models)?)
    .bind(key.quota_micros)
    .bind(key.rpm.map(i64::from))
    .bind(to_db_int("tpm", key.tpm)?)
    .bind(key.max_concurrency.map(i64::from))
    .bind(to_json_list(&key.allowed_ips)?)
    .bind(to_db_int("version", Some(key.version))?)
    .bind(key.created_at)
    .bind(key.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Writes `next` over the row if its version is still `expected_version`.
async fn update_key_if_version(db: &Db, next: &StoredKey, expected_version: u64) -> ApiResult<bool> {
    let result = sqlx::query(
        "UPDATE api_keys SET name = $1, owner = $2, group_name = $3, status = $4, expires_at = $5, \
         allowed_models = $6, quota_micros = $7, rpm = $8, tpm = $9, max_concurrency = $10, \
         allowed_ips = $11, version = $12, updated_at = $13 WHERE id = $14 AND version = $15",
    )
    .bind(&next.name)
    .bind(&next.owner)
    .bind(&next.group)
    .bind(status_text(next.status))
    .bind(next.expires_at)
    .bind(to_json_list(&next.allowed_models)?)
    .bind(next.quota_micros)
    .bind(next.rpm.map(i64::from))
    .bind(to_db_int("tpm", next.tpm)?)
    .bind(next.max_concurrency.map(i64::from))
    .bind(to_json_list(&next.allowed_ips)?)
    .bind(to_db_int("version", Some(next.version))?)
    .bind(next.updated_at)
    .bind(&next.id)
    .bind(to_db_int("version", Some(expected_version))?)
    .execute(&db.pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

// ---- request bodies and validation ----

/// `POST /api/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
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
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
}

/// Absent → `None` (leave as is); `null` → `Some(None)` (clear); value → `Some(Some(v))`.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
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
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub quota_micros: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_ips: Option<Option<Vec<String>>>,
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
            && self.allowed_ips.is_none()
    }
}

fn check_expiry(expires_at: Option<i64>, now: i64) -> ApiResult<Option<i64>> {
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

fn check_limits(key: &StoredKey) -> ApiResult<()> {
    if key.quota_micros.is_some_and(|q| q < 0) {
        return Err(ApiError::bad_request("`quota_micros` must not be negative"));
    }
    if key.rpm == Some(0) || key.tpm == Some(0) || key.max_concurrency == Some(0) {
        return Err(ApiError::bad_request(
            "`rpm`, `tpm` and `max_concurrency` must be at least 1 (null = unlimited; to block a key, disable it)",
        ));
    }
    if key.tpm.is_some_and(|t| i64::try_from(t).is_err()) {
        return Err(ApiError::bad_request("`tpm` is too large"));
    }
    Ok(())
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

pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let now = now_secs();
    let key = generate_key().map_err(ApiError::internal)?;
    let stored = StoredKey {
        id: new_id("key").map_err(ApiError::internal)?,
        name: validate::text("name", &body.name)?,
        owner: validate::optional_text("owner", body.owner.as_deref().unwrap_or(""))?,
        group: validate::ident("group", body.group.as_deref().unwrap_or("default"))?,
        digest: key_digest(&key),
        key_prefix: key_label(&key),
        status: KeyStatus::Active,
        expires_at: check_expiry(body.expires_at, now)?,
        allowed_models: validate::model_list("allowed_models", body.allowed_models)?,
        quota_micros: body.quota_micros,
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrency: body.max_concurrency,
        allowed_ips: validate::ip_list(body.allowed_ips)?,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    check_limits(&stored)?;
    insert_key(state.db(), &stored).await?;
    tracing::info!(id = %stored.id, label = %stored.key_prefix, "key created");
    let edge_synced = push_key_if_configured(&state, &stored.to_record()).await;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, stored, edge_synced })))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<StoredKey>>> {
    Ok(Json(List { data: all_keys(state.db()).await? }))
}

pub async fn get_one(State(state): State<AppState>, PathParam(id): PathParam<String>) -> ApiResult<Json<StoredKey>> {
    find_key(state.db(), &id).await?.map(Json).ok_or_else(|| not_found(&id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no key with id `{id}`"))
}

/// Applies `change` to the current row and writes it with a version
/// compare-and-set, retrying a few times if another writer got there first.
async fn change_key(
    state: &AppState,
    id: &str,
    change: impl Fn(&mut StoredKey, i64) -> ApiResult<()>,
) -> ApiResult<ChangedKey> {
    for _ in 0..5 {
        let current = find_key(state.db(), id).await?.ok_or_else(|| not_found(id))?;
        let now = now_secs();
        let mut next = current.clone();
        change(&mut next, now)?;
        check_limits(&next)?;
        next.version = current.version.saturating_add(1);
        next.updated_at = now;
        if update_key_if_version(state.db(), &next, current.version).await? {
            tracing::info!(id = %next.id, version = next.version, status = status_text(next.status), "key changed");
            let edge_synced = push_key_if_configured(state, &next.to_record()).await;
            return Ok(ChangedKey { stored: next, edge_synced });
        }
    }
    Err(ApiError::Conflict("the key is being changed concurrently; retry".into()))
}

pub async fn update(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> ApiResult<Json<ChangedKey>> {
    if body.is_empty() {
        return Err(ApiError::bad_request("nothing to change: send at least one field"));
    }
    // Validate what can be validated once, before touching the row.
    let name = body.name.as_deref().map(|n| validate::text("name", n)).transpose()?;
    let owner = body.owner.as_deref().map(|o| validate::optional_text("owner", o)).transpose()?;
    let group = body.group.as_deref().map(|g| validate::ident("group", g)).transpose()?;
    let allowed_models =
        body.allowed_models.clone().map(|m| validate::model_list("allowed_models", m)).transpose()?;
    let allowed_ips = body.allowed_ips.clone().map(validate::ip_list).transpose()?;
    let expires_at = body.expires_at.map(|e| check_expiry(e, now_secs())).transpose()?;
    let changed = change_key(&state, &id, |key, _now| {
        if let Some(name) = &name {
            key.name.clone_from(name);
        }
        if let Some(owner) = &owner {
            key.owner.clone_from(owner);
        }
        if let Some(group) = &group {
            key.group.clone_from(group);
        }
        if let Some(status) = body.status {
            key.status = status;
        }
        if let Some(expires_at) = expires_at {
            key.expires_at = expires_at;
        }
        if let Some(models) = &allowed_models {
            key.allowed_models.clone_from(models);
        }
        if let Some(quota) = body.quota_micros {
            key.quota_micros = quota;
        }
        if let Some(rpm) = body.rpm {
            key.rpm = rpm;
        }
        if let Some(tpm) = body.tpm {
            key.tpm = tpm;
        }
        if let Some(max) = body.max_concurrency {
            key.max_concurrency = max;
        }
        if let Some(ips) = &allowed_ips {
            key.allowed_ips.clone_from(ips);
        }
        Ok(())
    })
    .await?;
    Ok(Json(changed))
}

/// `DELETE /api/keys/{id}`: revoke (disable and push); the row stays for the ledger.
pub async fn revoke(State(state): State<AppState>, PathParam(id): PathParam<String>) -> ApiResult<Json<ChangedKey>> {
    let changed = change_key(&state, &id, |key, _now| {
        key.status = KeyStatus::Disabled;
        Ok(())
    })
    .await?;
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

//! Client keys: issue, list, change, revoke; each change is pushed to the edge
//! as a [`KeyRecord`].
//!
//! Invariants: the plaintext key is returned once, by `POST /api/keys`, and is
//! never stored, logged or returned again; the row keeps its SHA-256 digest
//! and a 10-character label. Every change is one `UPDATE … RETURNING` that
//! also bumps `version` by one, so concurrent edits serialise in the database,
//! none is lost, and the edge can order the records it receives. Revoking disables
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
            other => {
                return Err(ApiError::internal(format_args!("unknown key status `{other}` in database")))
            }
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
    T::try_from(value)
        .map_err(|_| ApiError::internal(format_args!("number {value} out of range in database")))
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

/// A validated change of a key: `None` leaves a column as it is,
/// `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Debug, Default, Clone)]
struct KeyChange {
    name: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    status: Option<KeyStatus>,
    expires_at: Option<Option<i64>>,
    allowed_models: Option<Option<Vec<String>>>,
    quota_micros: Option<Option<i64>>,
    rpm: Option<Option<u32>>,
    tpm: Option<Option<u64>>,
    max_concurrency: Option<Option<u32>>,
    allowed_ips: Option<Option<Vec<String>>>,
}

/// `1` if the column is to be written, for the `CASE WHEN $n = 1` guards.
fn flag<T>(field: &Option<T>) -> i64 {
    i64::from(field.is_some())
}

/// Applies `change` and bumps `version` in one statement, so concurrent
/// changes of a key serialise in the database and none is lost. Returns the
/// row as written, or `None` if there is no such key.
async fn apply_change(db: &Db, id: &str, change: &KeyChange, now: i64) -> ApiResult<Option<StoredKey>> {
    let models = change.allowed_models.as_ref().map(to_json_list).transpose()?.flatten();
    let ips = change.allowed_ips.as_ref().map(to_json_list).transpose()?.flatten();
    let tpm = to_db_int("tpm", change.tpm.flatten())?;
    let row = sqlx::query(
        "UPDATE api_keys SET \
         name = CASE WHEN $1 = 1 THEN $2 ELSE name END, \
         owner = CASE WHEN $3 = 1 THEN $4 ELSE owner END, \
         group_name = CASE WHEN $5 = 1 THEN $6 ELSE group_name END, \
         status = CASE WHEN $7 = 1 THEN $8 ELSE status END, \
         expires_at = CASE WHEN $9 = 1 THEN $10 ELSE expires_at END, \
         allowed_models = CASE WHEN $11 = 1 THEN $12 ELSE allowed_models END, \
         quota_micros = CASE WHEN $13 = 1 THEN $14 ELSE quota_micros END, \
         rpm = CASE WHEN $15 = 1 THEN $16 ELSE rpm END, \
         tpm = CASE WHEN $17 = 1 THEN $18 ELSE tpm END, \
         max_concurrency = CASE WHEN $19 = 1 THEN $20 ELSE max_concurrency END, \
         allowed_ips = CASE WHEN $21 = 1 THEN $22 ELSE allowed_ips END, \
         version = version + 1, updated_at = $23 \
         WHERE id = $24 \
         RETURNING id, name, owner, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, allowed_ips, version, created_at, updated_at",
    )
    .bind(flag(&change.name))
    .bind(change.name.clone())
    .bind(flag(&change.owner))
    .bind(change.owner.clone())
    .bind(flag(&change.group))
    .bind(change.group.clone())
    .bind(flag(&change.status))
    .bind(change.status.map(status_text))
    .bind(flag(&change.expires_at))
    .bind(change.expires_at.flatten())
    .bind(flag(&change.allowed_models))
    .bind(models)
    .bind(flag(&change.quota_micros))
    .bind(change.quota_micros.flatten())
    .bind(flag(&change.rpm))
    .bind(change.rpm.flatten().map(i64::from))
    .bind(flag(&change.tpm))
    .bind(tpm)
    .bind(flag(&change.max_concurrency))
    .bind(change.max_concurrency.flatten().map(i64::from))
    .bind(flag(&change.allowed_ips))
    .bind(ips)
    .bind(now)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
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

fn check_limits(
    quota_micros: Option<i64>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
) -> ApiResult<()> {
    if quota_micros.is_some_and(|q| q < 0) {
        return Err(ApiError::bad_request("`quota_micros` must not be negative"));
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
    check_limits(stored.quota_micros, stored.rpm, stored.tpm, stored.max_concurrency)?;
    insert_key(state.db(), &stored).await?;
    tracing::info!(id = %stored.id, label = %stored.key_prefix, "key created");
    let edge_synced = push_key_if_configured(&state, &stored.id).await;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, stored, edge_synced })))
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

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no key with id `{id}`"))
}

/// Applies a validated change, then pushes the key's record.
async fn change_key(state: &AppState, id: &str, change: &KeyChange) -> ApiResult<ChangedKey> {
    let stored = apply_change(state.db(), id, change, now_secs()).await?.ok_or_else(|| not_found(id))?;
    tracing::info!(id = %stored.id, version = stored.version, status = status_text(stored.status), "key changed");
    let edge_synced = push_key_if_configured(state, &stored.id).await;
    Ok(ChangedKey { stored, edge_synced })
}

pub async fn update(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> ApiResult<Json<ChangedKey>> {
    if body.is_empty() {
        return Err(ApiError::bad_request("nothing to change: send at least one field"));
    }
    check_limits(
        body.quota_micros.flatten(),
        body.rpm.flatten(),
        body.tpm.flatten(),
        body.max_concurrency.flatten(),
    )?;
    let change = KeyChange {
        name: body.name.as_deref().map(|n| validate::text("name", n)).transpose()?,
        owner: body.owner.as_deref().map(|o| validate::optional_text("owner", o)).transpose()?,
        group: body.group.as_deref().map(|g| validate::ident("group", g)).transpose()?,
        status: body.status,
        expires_at: body.expires_at.map(|e| check_expiry(e, now_secs())).transpose()?,
        allowed_models: body.allowed_models.map(|m| validate::model_list("allowed_models", m)).transpose()?,
        quota_micros: body.quota_micros,
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrency: body.max_concurrency,
        allowed_ips: body.allowed_ips.map(validate::ip_list).transpose()?,
    };
    Ok(Json(change_key(&state, &id, &change).await?))
}

/// `DELETE /api/keys/{id}`: revoke (disable and push); the row stays for the ledger.
pub async fn revoke(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<ChangedKey>> {
    let change = KeyChange { status: Some(KeyStatus::Disabled), ..KeyChange::default() };
    Ok(Json(change_key(&state, &id, &change).await?))
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

//! Queries of the `api_keys` table. Every change is one `UPDATE … RETURNING`
//! that also bumps `version`, so concurrent edits serialise in the database.

use crate::db::{Db, RowExt};
use crate::error::{ApiError, ApiResult};
use edgeway_core::key_record::{KeyRecord, KeyStatus};
use serde::Serialize;
use sqlx::any::AnyRow;

/// A stored key as the API shows it (never the plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// The user whose balance the key draws on; `None` = a standalone key.
    pub user_id: Option<String>,
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
    /// How long a request over `max_concurrency` may wait for a slot, ms.
    pub max_wait_ms: Option<u64>,
    pub allowed_ips: Option<Vec<String>>,
    /// A test key: may pin requests to a channel unsigned.
    pub pin_allowed: bool,
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
            user_id: self.user_id.clone(),
            group: self.group.clone(),
            status: self.status,
            expires_at: self.expires_at,
            allowed_models: self.allowed_models.clone(),
            quota_micros: self.quota_micros,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            max_wait_ms: self.max_wait_ms,
            allowed_ips: self.allowed_ips.clone(),
            pin_allowed: self.pin_allowed,
            version: self.version,
        }
    }

    pub fn from_row(row: &AnyRow) -> Result<Self, ApiError> {
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
            user_id: row.opt_text("user_id")?,
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
            max_wait_ms: opt_number(row.opt_int("max_wait_ms")?)?,
            allowed_ips: json_list(row.opt_text("allowed_ips")?)?,
            pin_allowed: row.int("pin_allowed")? != 0,
            version: number(row.int("version")?)?,
            created_at: row.int("created_at")?,
            updated_at: row.int("updated_at")?,
        })
    }
}

pub fn status_text(status: KeyStatus) -> &'static str {
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
        "SELECT id, name, owner, user_id, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, max_wait_ms, allowed_ips, pin_allowed, version, created_at, updated_at \
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
        "SELECT id, name, owner, user_id, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, max_wait_ms, allowed_ips, pin_allowed, version, created_at, updated_at \
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

pub async fn insert_key(db: &Db, key: &StoredKey) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, owner, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, allowed_ips, version, created_at, updated_at, user_id, \
         pin_allowed, max_wait_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
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
    .bind(&key.user_id)
    .bind(i64::from(key.pin_allowed))
    .bind(to_db_int("max_wait_ms", key.max_wait_ms)?)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A validated change of a key: `None` leaves a column as it is,
/// `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Debug, Default, Clone)]
pub struct KeyChange {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub status: Option<KeyStatus>,
    pub expires_at: Option<Option<i64>>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub quota_micros: Option<Option<i64>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u64>>,
    pub max_concurrency: Option<Option<u32>>,
    pub max_wait_ms: Option<Option<u64>>,
    pub allowed_ips: Option<Option<Vec<String>>>,
    pub pin_allowed: Option<bool>,
}

/// `1` if the column is to be written, for the `CASE WHEN $n = 1` guards.
fn flag<T>(field: &Option<T>) -> i64 {
    i64::from(field.is_some())
}

/// Applies `change` and bumps `version` in one statement, so concurrent
/// changes of a key serialise in the database and none is lost. Returns the
/// row as written, or `None` if there is no such key.
pub async fn apply_change(db: &Db, id: &str, change: &KeyChange, now: i64) -> ApiResult<Option<StoredKey>> {
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
         pin_allowed = CASE WHEN $25 = 1 THEN $26 ELSE pin_allowed END, \
         max_wait_ms = CASE WHEN $27 = 1 THEN $28 ELSE max_wait_ms END, \
         version = version + 1, updated_at = $23 \
         WHERE id = $24 \
         RETURNING id, name, owner, user_id, group_name, digest, key_prefix_label, status, expires_at, \
         allowed_models, quota_micros, rpm, tpm, max_concurrency, max_wait_ms, allowed_ips, pin_allowed, version, created_at, updated_at",
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
    .bind(flag(&change.pin_allowed))
    .bind(change.pin_allowed.map(i64::from))
    .bind(flag(&change.max_wait_ms))
    .bind(to_db_int("max_wait_ms", change.max_wait_ms.flatten())?)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
}

/// Columns of every key query.
const KEY_COLUMNS: &str =
    "id, name, owner, user_id, group_name, digest, key_prefix_label, status, expires_at, \
    allowed_models, quota_micros, rpm, tpm, max_concurrency, max_wait_ms, allowed_ips, pin_allowed, version, created_at, updated_at";

/// The keys of one user, newest first.
pub async fn user_keys(db: &Db, user_id: &str) -> ApiResult<Vec<StoredKey>> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(StoredKey::from_row).collect()
}

/// One key of one user (`None` when it is not theirs).
pub async fn find_user_key(db: &Db, user_id: &str, id: &str) -> ApiResult<Option<StoredKey>> {
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
}

/// Active keys of one user.
pub async fn count_active_user_keys(db: &Db, user_id: &str) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM api_keys WHERE user_id = $1 AND status = 'active'",
    )
    .bind(user_id)
    .fetch_one(&db.pool)
    .await?)
}

/// Moves every key of a user to `group` (bumping their versions); the ids changed.
pub async fn set_user_keys_group(db: &Db, user_id: &str, group: &str, now: i64) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE api_keys SET group_name = $1, version = version + 1, updated_at = $2 \
         WHERE user_id = $3 AND group_name <> $1 RETURNING id",
    )
    .bind(group)
    .bind(now)
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?)
}

/// A key's periodic budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyBudget {
    pub key_id: String,
    /// `daily` or `monthly`.
    pub period: String,
    pub budget_micros: i64,
    /// Start (unix ms) of the period last applied; 0 = not yet.
    pub period_start_ms: i64,
}

/// Sets (or with `None` removes) a key's budget; it applies at the next run.
pub async fn set_budget(db: &Db, key_id: &str, budget: Option<(&str, i64)>) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM key_budgets WHERE key_id = $1").bind(key_id).execute(&mut *tx).await?;
    if let Some((period, micros)) = budget {
        sqlx::query(
            "INSERT INTO key_budgets (key_id, period, budget_micros, period_start_ms) VALUES ($1, $2, $3, 0)",
        )
        .bind(key_id)
        .bind(period)
        .bind(micros)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every key budget.
pub async fn budgets(db: &Db) -> ApiResult<Vec<KeyBudget>> {
    let rows =
        sqlx::query("SELECT key_id, period, budget_micros, period_start_ms FROM key_budgets ORDER BY key_id")
            .fetch_all(&db.pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyBudget {
                key_id: r.text("key_id")?,
                period: r.text("period")?,
                budget_micros: r.int("budget_micros")?,
                period_start_ms: r.int("period_start_ms")?,
            })
        })
        .collect()
}

/// Claims a budget's new period (only one runner wins): whether this call moved it.
pub async fn claim_budget_period(db: &Db, key_id: &str, start_ms: i64) -> ApiResult<bool> {
    let result =
        sqlx::query("UPDATE key_budgets SET period_start_ms = $1 WHERE key_id = $2 AND period_start_ms < $1")
            .bind(start_ms)
            .bind(key_id)
            .execute(&db.pool)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// Cost booked for a key before `before_ms`.
pub async fn spent_before(db: &Db, digest: &str, before_ms: i64) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM usage_ledger WHERE key_digest = $1 AND created_at_ms < $2",
    )
    .bind(digest)
    .bind(before_ms)
    .fetch_one(&db.pool)
    .await?)
}

//! Queries of `balance_ledger` and `redemption_codes`.
//!
//! A balance is `SUM(amount_micros)` of its user's entries, computed when
//! read, never stored: nothing can drift from the entries. Every credit (any
//! entry that is not usage spend) runs in one transaction whose first write
//! bumps the user's `account_version` (which also takes the write lock first,
//! so SQLite never has to upgrade a read transaction), so the edge can order
//! the cumulative credit it is pushed. Spend entries are written by usage
//! ingest, one per request id (`request_id` is unique).

use crate::db::{Db, RowExt};
use crate::error::{ApiError, ApiResult};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Topup,
    Redemption,
    Spend,
    Refund,
    Adjustment,
    InviteReward,
    Allowance,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topup => "topup",
            Self::Redemption => "redemption",
            Self::Spend => "spend",
            Self::Refund => "refund",
            Self::Adjustment => "adjustment",
            Self::InviteReward => "invite_reward",
            Self::Allowance => "allowance",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Topup,
            Self::Redemption,
            Self::Spend,
            Self::Refund,
            Self::Adjustment,
            Self::InviteReward,
            Self::Allowance,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: String,
    pub user_id: String,
    pub kind: EntryKind,
    pub amount_micros: i64,
    /// Who made the change (a user id); `None` = the system.
    pub actor_id: Option<String>,
    pub reason: String,
    pub request_id: Option<String>,
    pub code_id: Option<String>,
    pub created_at_ms: i64,
}

fn entry_from_row(row: &AnyRow) -> ApiResult<Entry> {
    let kind = row.text("kind")?;
    Ok(Entry {
        id: row.text("id")?,
        user_id: row.text("user_id")?,
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| ApiError::internal(format_args!("unknown ledger kind `{kind}`")))?,
        amount_micros: row.int("amount_micros")?,
        actor_id: row.opt_text("actor_id")?,
        reason: row.text("reason")?,
        request_id: row.opt_text("request_id")?,
        code_id: row.opt_text("code_id")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

/// A user's balance, derived from the entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Sum of every entry.
    pub balance_micros: i64,
    /// Sum of every entry that is not usage spend (what the edge is pushed).
    pub credited_micros: i64,
    /// Usage spend, as a positive number.
    pub spent_micros: i64,
    pub entries: i64,
}

pub async fn balance(conn: &mut AnyConnection, user_id: &str) -> ApiResult<Balance> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS total, \
         CAST(COALESCE(SUM(CASE WHEN kind = 'spend' THEN 0 ELSE amount_micros END), 0) AS BIGINT) AS credited, \
         CAST(COUNT(*) AS BIGINT) AS n FROM balance_ledger WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await?;
    let total = row.int("total")?;
    let credited = row.int("credited")?;
    Ok(Balance {
        balance_micros: total,
        credited_micros: credited,
        spent_micros: credited.saturating_sub(total),
        entries: row.int("n")?,
    })
}

/// A user's balance and their newest `limit` entries, in ONE statement (the
/// totals are window aggregates over all the user's rows, computed before
/// the limit), so both come from the same snapshot on either database.
pub async fn balance_and_entries(db: &Db, user_id: &str, limit: i64) -> ApiResult<(Balance, Vec<Entry>)> {
    let rows = sqlx::query(
        "SELECT id, user_id, kind, amount_micros, actor_id, reason, request_id, code_id, created_at_ms, \
         CAST(SUM(amount_micros) OVER () AS BIGINT) AS total, \
         CAST(SUM(CASE WHEN kind = 'spend' THEN 0 ELSE amount_micros END) OVER () AS BIGINT) AS credited, \
         CAST(COUNT(*) OVER () AS BIGINT) AS n \
         FROM balance_ledger WHERE user_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let balance = match rows.first() {
        None => Balance::default(),
        Some(r) => {
            let (total, credited) = (r.int("total")?, r.int("credited")?);
            Balance {
                balance_micros: total,
                credited_micros: credited,
                spent_micros: credited.saturating_sub(total),
                entries: r.int("n")?,
            }
        }
    };
    Ok((balance, rows.iter().map(entry_from_row).collect::<ApiResult<_>>()?))
}

/// Bumps the user's account version (the first write of a credit
/// transaction); the new version, or `None` if there is no such user.
pub async fn bump_account_version(conn: &mut AnyConnection, user_id: &str) -> ApiResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE users SET account_version = account_version + 1 WHERE id = $1 RETURNING account_version",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Inserts an entry. A spend entry whose request id is already booked is
/// skipped; whether it was inserted.
pub async fn insert_entry(conn: &mut AnyConnection, entry: &Entry) -> ApiResult<bool> {
    let result = sqlx::query(
        "INSERT INTO balance_ledger (id, user_id, kind, amount_micros, actor_id, reason, request_id, code_id, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&entry.id)
    .bind(&entry.user_id)
    .bind(entry.kind.as_str())
    .bind(entry.amount_micros)
    .bind(&entry.actor_id)
    .bind(&entry.reason)
    .bind(&entry.request_id)
    .bind(&entry.code_id)
    .bind(entry.created_at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The account the edge is pushed for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeAccount {
    pub user_id: String,
    pub credited_micros: i64,
    pub version: u64,
    pub disabled: bool,
}

/// The committed account of `user_id`, read in one transaction so the
/// credit matches its version.
pub async fn edge_account(db: &Db, user_id: &str) -> ApiResult<Option<EdgeAccount>> {
    let mut tx = db.pool.begin().await?;
    let row = sqlx::query("SELECT status, account_version FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let balance = balance(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Some(EdgeAccount {
        user_id: user_id.to_string(),
        credited_micros: balance.credited_micros,
        version: u64::try_from(row.int("account_version")?).unwrap_or(0),
        disabled: row.text("status")? != "active",
    }))
}

/// Users who own a key or have a ledger entry: the accounts a full sync pushes.
pub async fn users_with_keys_or_entries(db: &Db) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM users u WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.user_id = u.id) \
         OR EXISTS (SELECT 1 FROM balance_ledger l WHERE l.user_id = u.id) ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?)
}

/// Spend per user over `[from_ms, to_ms)` (for periodic budgets).
pub async fn spend_between(
    conn: &mut AnyConnection,
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(-SUM(amount_micros), 0) AS BIGINT) FROM balance_ledger \
         WHERE user_id = $1 AND kind = 'spend' AND created_at_ms >= $2 AND created_at_ms < $3",
    )
    .bind(user_id)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_one(&mut *conn)
    .await?)
}

/// Whether an allowance entry exists for the user since `since_ms` (so a
/// period's allowance is granted once).
pub async fn allowance_since(conn: &mut AnyConnection, user_id: &str, since_ms: i64) -> ApiResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM balance_ledger WHERE user_id = $1 AND kind = 'allowance' AND created_at_ms >= $2",
    )
    .bind(user_id)
    .bind(since_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

// ---- redemption codes ----

/// A redemption code as the API shows it (never the code itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Code {
    pub id: String,
    pub batch_id: String,
    pub label: String,
    pub value_micros: i64,
    /// `active`, `disabled` or `redeemed`.
    pub status: String,
    pub expires_at: Option<i64>,
    pub redeemed_by: Option<String>,
    pub redeemed_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

const CODE_COLUMNS: &str =
    "id, batch_id, label, value_micros, status, expires_at, redeemed_by, redeemed_at, created_by, created_at";

fn code_from_row(row: &AnyRow) -> ApiResult<Code> {
    Ok(Code {
        id: row.text("id")?,
        batch_id: row.text("batch_id")?,
        label: row.text("label")?,
        value_micros: row.int("value_micros")?,
        status: row.text("status")?,
        expires_at: row.opt_int("expires_at")?,
        redeemed_by: row.opt_text("redeemed_by")?,
        redeemed_at: row.opt_int("redeemed_at")?,
        created_by: row.text("created_by")?,
        created_at: row.int("created_at")?,
    })
}

pub async fn insert_code(conn: &mut AnyConnection, code: &Code, digest: &str) -> ApiResult<()> {
    sqlx::query(&format!(
        "INSERT INTO redemption_codes ({CODE_COLUMNS}, digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&code.id)
    .bind(&code.batch_id)
    .bind(&code.label)
    .bind(code.value_micros)
    .bind(&code.status)
    .bind(code.expires_at)
    .bind(&code.redeemed_by)
    .bind(code.redeemed_at)
    .bind(&code.created_by)
    .bind(code.created_at)
    .bind(digest)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Codes, newest first; empty filters select all.
pub async fn codes(db: &Db, batch_id: &str, status: &str, limit: i64) -> ApiResult<Vec<Code>> {
    let rows = sqlx::query(&format!(
        "SELECT {CODE_COLUMNS} FROM redemption_codes WHERE ($1 = '' OR batch_id = $1) AND ($2 = '' OR status = $2) \
         ORDER BY created_at DESC, id LIMIT $3"
    ))
    .bind(batch_id)
    .bind(status)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(code_from_row).collect()
}

pub async fn find_code(db: &Db, id: &str) -> ApiResult<Option<Code>> {
    let row = sqlx::query(&format!("SELECT {CODE_COLUMNS} FROM redemption_codes WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(code_from_row).transpose()
}

pub async fn find_code_by_digest(conn: &mut AnyConnection, digest: &str) -> ApiResult<Option<Code>> {
    let row = sqlx::query(&format!("SELECT {CODE_COLUMNS} FROM redemption_codes WHERE digest = $1"))
        .bind(digest)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(code_from_row).transpose()
}

/// Enables or disables an unredeemed code; the code as written, or `None`
/// when there is no such code or it is already redeemed.
pub async fn set_code_status(db: &Db, id: &str, status: &str) -> ApiResult<Option<Code>> {
    let row = sqlx::query(&format!(
        "UPDATE redemption_codes SET status = $1 WHERE id = $2 AND status <> 'redeemed' RETURNING {CODE_COLUMNS}"
    ))
    .bind(status)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(code_from_row).transpose()
}

/// Claims a code: ONE conditional update, so of any number of concurrent
/// claims exactly one changes the row. Returns `(code id, value)` for the
/// winner, `None` for everyone else (unknown, disabled, expired, or taken).
pub async fn claim_code(
    conn: &mut AnyConnection,
    digest: &str,
    user_id: &str,
    now: i64,
) -> ApiResult<Option<(String, i64)>> {
    let row = sqlx::query(
        "UPDATE redemption_codes SET status = 'redeemed', redeemed_by = $1, redeemed_at = $2 \
         WHERE digest = $3 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2) \
         RETURNING id, value_micros",
    )
    .bind(user_id)
    .bind(now)
    .bind(digest)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok((r.text("id")?, r.int("value_micros")?))).transpose()
}

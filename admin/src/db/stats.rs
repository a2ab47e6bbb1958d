//! Queries behind the console's dashboard, request logs and metrics: the
//! usage ledger filtered, bucketed over time, grouped by a dimension, and
//! paged with a keyset cursor (newest first) so an export of any size is
//! read in bounded pages.
//!
//! Every filter is always in the SQL with a neutral value when unset (`''`
//! or the full range), so the statement text never depends on the input;
//! the grouped column comes from the closed [`Dimension`] enum, never from
//! the request.

use crate::db::usage::{entry_from_row, LedgerEntry};
use crate::db::{Db, RowExt};
use crate::error::ApiResult;
use edgeway_core::usage_row::column_list;
use serde::Serialize;

/// Which rows of the ledger (all fields optional; unset = no condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Rows created at or after this unix time, ms.
    pub from_ms: Option<i64>,
    /// Rows created before this unix time, ms.
    pub to_ms: Option<i64>,
    pub key_digest: Option<String>,
    pub user_id: Option<String>,
    pub model: Option<String>,
    pub channel: Option<String>,
    /// Inclusive range of HTTP statuses.
    pub status: Option<(i64, i64)>,
}

/// Total tokens of a row, in SQL over the ledger alias `l`.
const TOKENS_SQL: &str = "(l.input_uncached_tokens + l.cache_read_tokens + l.cache_write_5m_tokens \
     + l.cache_write_1h_tokens + l.output_tokens)";
/// Whether a row is an error, in SQL over `l`.
const ERROR_SQL: &str = "(l.status >= 400 OR l.outcome = 'failed')";

/// The filter's WHERE clause over `l`, binding `$1`..`$8`.
fn where_sql() -> &'static str {
    "l.created_at_ms >= $1 AND l.created_at_ms < $2 \
     AND ($3 = '' OR l.key_digest = $3) AND ($4 = '' OR l.user_id = $4) \
     AND ($5 = '' OR l.model = $5) AND ($6 = '' OR l.channel = $6) \
     AND l.status >= $7 AND l.status <= $8"
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_filter<'q>(query: AnyQuery<'q>, f: &UsageFilter) -> AnyQuery<'q> {
    let (status_min, status_max) = f.status.unwrap_or((0, i64::from(u16::MAX)));
    query
        .bind(f.from_ms.unwrap_or(0))
        .bind(f.to_ms.unwrap_or(i64::MAX))
        .bind(f.key_digest.clone().unwrap_or_default())
        .bind(f.user_id.clone().unwrap_or_default())
        .bind(f.model.clone().unwrap_or_default())
        .bind(f.channel.clone().unwrap_or_default())
        .bind(status_min)
        .bind(status_max)
}

/// Where a page of rows starts: strictly older than this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub request_id: String,
}

/// A page of rows, newest first, strictly after `cursor` (in that order).
pub async fn rows_page(
    db: &Db,
    filter: &UsageFilter,
    cursor: Option<&Cursor>,
    limit: i64,
) -> ApiResult<Vec<LedgerEntry>> {
    let columns = column_list().split(", ").map(|c| format!("l.{}", c.trim())).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns}, l.ingested_at_ms FROM usage_ledger l WHERE {} \
         AND ($9 = 0 OR l.created_at_ms < $10 OR (l.created_at_ms = $10 AND l.request_id < $11)) \
         ORDER BY l.created_at_ms DESC, l.request_id DESC LIMIT $12",
        where_sql()
    );
    let query = bind_filter(sqlx::query(&sql), filter)
        .bind(i64::from(cursor.is_some()))
        .bind(cursor.map_or(0, |c| c.created_at_ms))
        .bind(cursor.map(|c| c.request_id.clone()).unwrap_or_default())
        .bind(limit);
    let rows = query.fetch_all(&db.pool).await?;
    rows.iter().map(entry_from_row).collect()
}

/// Sums over a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: i64,
    pub tokens: i64,
    pub cost_micros: i64,
    pub errors: i64,
}

fn sums_select() -> String {
    format!(
        "CAST(COUNT(*) AS BIGINT) AS requests, CAST(COALESCE(SUM({TOKENS_SQL}), 0) AS BIGINT) AS tokens, \
         CAST(COALESCE(SUM(l.cost_micros), 0) AS BIGINT) AS cost, \
         CAST(COALESCE(SUM(CASE WHEN {ERROR_SQL} THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors"
    )
}

fn sums_of(row: &sqlx::any::AnyRow) -> ApiResult<Sums> {
    Ok(Sums {
        requests: row.int("requests")?,
        tokens: row.int("tokens")?,
        cost_micros: row.int("cost")?,
        errors: row.int("errors")?,
    })
}

/// One time bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Start of the bucket, unix ms.
    pub t_ms: i64,
    #[serde(flatten)]
    pub sums: Sums,
}

/// The rows' sums per `bucket_ms` (buckets with no rows are absent).
pub async fn series(db: &Db, filter: &UsageFilter, bucket_ms: i64) -> ApiResult<Vec<Point>> {
    let sql = format!(
        "SELECT CAST(l.created_at_ms / $9 AS BIGINT) AS bucket, {} FROM usage_ledger l WHERE {} \
         GROUP BY CAST(l.created_at_ms / $9 AS BIGINT) ORDER BY bucket",
        sums_select(),
        where_sql()
    );
    let rows = bind_filter(sqlx::query(&sql), filter).bind(bucket_ms.max(1)).fetch_all(&db.pool).await?;
    rows.iter()
        .map(|row| {
            Ok(Point { t_ms: row.int("bucket")?.saturating_mul(bucket_ms.max(1)), sums: sums_of(row)? })
        })
        .collect()
}

/// What a breakdown groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Model,
    Key,
    Channel,
    User,
}

impl Dimension {
    pub const ALL: [Self; 4] = [Self::Model, Self::Key, Self::Channel, Self::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Key => "key",
            Self::Channel => "channel",
            Self::User => "user",
        }
    }

    /// The grouped expression over `l`, `k` (api_keys) and `u` (users).
    fn sql(self) -> &'static str {
        match self {
            Self::Model => "l.model",
            Self::Key => "COALESCE(k.name || ' (' || k.key_prefix_label || ')', l.key_digest)",
            Self::Channel => "l.channel",
            Self::User => "COALESCE(u.username, '')",
        }
    }
}

/// One group of a breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    #[serde(flatten)]
    pub sums: Sums,
}

/// The rows' sums per value of `dimension`, dearest first, at most `limit`.
pub async fn breakdown(
    db: &Db,
    filter: &UsageFilter,
    dimension: Dimension,
    limit: i64,
) -> ApiResult<Vec<Group>> {
    let sql = format!(
        "SELECT {dim} AS name, {sums} FROM usage_ledger l \
         LEFT JOIN api_keys k ON k.digest = l.key_digest LEFT JOIN users u ON u.id = l.user_id \
         WHERE {filter} GROUP BY {dim} ORDER BY cost DESC, requests DESC, name LIMIT $9",
        dim = dimension.sql(),
        sums = sums_select(),
        filter = where_sql()
    );
    let rows = bind_filter(sqlx::query(&sql), filter).bind(limit).fetch_all(&db.pool).await?;
    rows.iter().map(|row| Ok(Group { name: row.text("name")?, sums: sums_of(row)? })).collect()
}

/// The rows' sums overall.
pub async fn totals(db: &Db, filter: &UsageFilter) -> ApiResult<Sums> {
    let sql = format!("SELECT {} FROM usage_ledger l WHERE {}", sums_select(), where_sql());
    let row = bind_filter(sqlx::query(&sql), filter).fetch_one(&db.pool).await?;
    sums_of(&row)
}

/// Totals per model and channel over the whole ledger, plus the newest
/// row's ingest lag (for `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRow {
    pub model: String,
    pub channel: String,
    pub status_class: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
}

/// Counters per model, channel and status class (`2xx`, `4xx`, `5xx`).
pub async fn metric_rows(db: &Db) -> ApiResult<Vec<MetricRow>> {
    let rows = sqlx::query(
        "SELECT l.model AS model, l.channel AS channel, \
         CASE WHEN l.status >= 500 THEN '5xx' WHEN l.status >= 400 THEN '4xx' ELSE '2xx' END AS class, \
         CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(l.input_uncached_tokens + l.cache_read_tokens + l.cache_write_5m_tokens \
           + l.cache_write_1h_tokens), 0) AS BIGINT) AS input_sum, \
         CAST(COALESCE(SUM(l.output_tokens), 0) AS BIGINT) AS output_sum, \
         CAST(COALESCE(SUM(l.cost_micros), 0) AS BIGINT) AS cost \
         FROM usage_ledger l GROUP BY l.model, l.channel, \
         CASE WHEN l.status >= 500 THEN '5xx' WHEN l.status >= 400 THEN '4xx' ELSE '2xx' END \
         ORDER BY model, channel, class",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(MetricRow {
                model: r.text("model")?,
                channel: r.text("channel")?,
                status_class: r.text("class")?,
                requests: r.int("requests")?,
                input_tokens: r.int("input_sum")?,
                output_tokens: r.int("output_sum")?,
                cost_micros: r.int("cost")?,
            })
        })
        .collect()
}

/// `(ingested_at_ms - created_at_ms)` of the most recently ingested row.
pub async fn last_ingest_lag_ms(db: &Db) -> ApiResult<Option<i64>> {
    let row = sqlx::query(
        "SELECT CAST(ingested_at_ms - created_at_ms AS BIGINT) AS lag FROM usage_ledger \
         ORDER BY ingested_at_ms DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| r.int("lag")).transpose().map_err(Into::into)
}

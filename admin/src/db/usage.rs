//! Queries of the `usage_ledger` table: one row per request id, its columns
//! defined once in [`edgeway_core::usage_row`] (shared with D1).

use crate::db::{Db, RowExt};
use crate::error::{ApiError, ApiResult};
use edgeway_core::family::Family;
use edgeway_core::usage::{RequestOutcome, TokenUsage, Unit, UsageEvent, UsageSource};
use edgeway_core::usage_row::{
    column_list, decode_attempts, encode_attempts, insert_sql, usage_row, Placeholder, UsageValue,
};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// Inserts one event unless its request id is already there; whether it was new.
pub async fn insert_event(
    conn: &mut AnyConnection,
    event: &UsageEvent,
    ingested_at_ms: i64,
) -> ApiResult<bool> {
    let sql = insert_sql("usage_ledger", Placeholder::Dollar, &["ingested_at_ms"]);
    let mut query = sqlx::query(&sql);
    for value in usage_row(event) {
        query = match value {
            UsageValue::Text(t) => query.bind(t),
            UsageValue::Int(n) => query.bind(n),
            UsageValue::NullText => query.bind(None::<String>),
            UsageValue::NullInt => query.bind(None::<i64>),
            UsageValue::Attempts(a) => query.bind(encode_attempts(a)),
        };
    }
    let result = query.bind(ingested_at_ms).execute(&mut *conn).await?;
    Ok(result.rows_affected() == 1)
}

/// A ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    #[serde(flatten)]
    pub event: UsageEvent,
    pub ingested_at_ms: i64,
}

fn u64_col(row: &AnyRow, column: &str) -> ApiResult<u64> {
    let v = row.int(column)?;
    u64::try_from(v).map_err(|_| ApiError::internal(format_args!("negative `{column}` in ledger")))
}

pub(crate) fn entry_from_row(row: &AnyRow) -> ApiResult<LedgerEntry> {
    let text_enum = |column: &str| row.text(column);
    let outcome = text_enum("outcome")?;
    let source = text_enum("usage_source")?;
    let endpoint = text_enum("endpoint")?;
    let event = UsageEvent {
        request_id: row.text("request_id")?,
        key_digest: row.text("key_digest")?,
        owner: row.text("owner")?,
        user_id: row.opt_text("user_id")?,
        group: row.text("group_name")?,
        price_ratio_ppm: u32::try_from(row.int("price_ratio_ppm")?).unwrap_or(u32::MAX),
        model: row.text("model")?,
        upstream_model: row.text("upstream_model")?,
        channel: row.text("channel")?,
        provider: row.text("provider")?,
        endpoint: Family::parse(&endpoint)
            .ok_or_else(|| ApiError::internal(format_args!("unknown endpoint `{endpoint}` in ledger")))?,
        unit: match row.opt_text("unit")? {
            Some(unit) => Some(
                Unit::parse(&unit)
                    .ok_or_else(|| ApiError::internal(format_args!("unknown unit `{unit}` in ledger")))?,
            ),
            None => None,
        },
        unit_count: u64_col(row, "unit_count")?,
        usage: TokenUsage {
            input_uncached: u64_col(row, "input_uncached_tokens")?,
            cache_read: u64_col(row, "cache_read_tokens")?,
            cache_write_5m: u64_col(row, "cache_write_5m_tokens")?,
            cache_write_1h: u64_col(row, "cache_write_1h_tokens")?,
            output: u64_col(row, "output_tokens")?,
            reasoning: u64_col(row, "reasoning_tokens")?,
        },
        cost_micros: row.int("cost_micros")?,
        status: u16::try_from(row.int("status")?).unwrap_or(0),
        outcome: RequestOutcome::parse(&outcome)
            .ok_or_else(|| ApiError::internal(format_args!("unknown outcome `{outcome}` in ledger")))?,
        usage_source: UsageSource::parse(&source)
            .ok_or_else(|| ApiError::internal(format_args!("unknown usage source `{source}` in ledger")))?,
        stream: row.int("stream")? != 0,
        latency_ms: u64_col(row, "latency_ms")?,
        ttft_ms: row.opt_int("ttft_ms")?.and_then(|t| u64::try_from(t).ok()),
        served_model: row.text("served_model")?,
        attempts: decode_attempts(&row.text("attempts")?),
        created_at_ms: row.int("created_at_ms")?,
    };
    Ok(LedgerEntry { event, ingested_at_ms: row.int("ingested_at_ms")? })
}

/// Rows newest first; `key_digest` empty = every key, `user_id` empty = every user.
pub async fn list_filtered(
    db: &Db,
    key_digest: &str,
    user_id: &str,
    limit: i64,
) -> ApiResult<Vec<LedgerEntry>> {
    let sql = format!(
        "SELECT {}, ingested_at_ms FROM usage_ledger \
         WHERE ($1 = '' OR key_digest = $1) AND ($2 = '' OR user_id = $2) \
         ORDER BY created_at_ms DESC, request_id DESC LIMIT $3",
        column_list()
    );
    let rows = sqlx::query(&sql).bind(key_digest).bind(user_id).bind(limit).fetch_all(&db.pool).await?;
    rows.iter().map(entry_from_row).collect()
}

/// Totals of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTotals {
    /// Admin id of the key, if the key is known here.
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub key_digest: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
}

/// Requests, tokens and cost per key, dearest first.
pub async fn totals_by_key(db: &Db) -> ApiResult<Vec<KeyTotals>> {
    let rows = sqlx::query(
        "SELECT l.key_digest AS key_digest, k.id AS key_id, k.name AS key_name, \
         CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(l.input_uncached_tokens + l.cache_read_tokens + l.cache_write_5m_tokens \
           + l.cache_write_1h_tokens), 0) AS BIGINT) AS prompt_sum, \
         CAST(COALESCE(SUM(l.output_tokens), 0) AS BIGINT) AS output_sum, \
         CAST(COALESCE(SUM(l.cost_micros), 0) AS BIGINT) AS cost_sum \
         FROM usage_ledger l LEFT JOIN api_keys k ON k.digest = l.key_digest \
         GROUP BY l.key_digest, k.id, k.name ORDER BY cost_sum DESC, l.key_digest",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let prompt_tokens = row.int("prompt_sum")?;
            let output_tokens = row.int("output_sum")?;
            Ok(KeyTotals {
                key_id: row.opt_text("key_id")?,
                key_name: row.opt_text("key_name")?,
                key_digest: row.text("key_digest")?,
                requests: row.int("requests")?,
                prompt_tokens,
                output_tokens,
                total_tokens: prompt_tokens.saturating_add(output_tokens),
                cost_micros: row.int("cost_sum")?,
            })
        })
        .collect()
}

/// One day and model of a user's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailySpend {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
}

/// `YYYY-MM-DD` of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_day(days: i64) -> String {
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A user's usage per UTC day and model since `since_ms`, newest day first.
pub async fn daily_by_model(db: &Db, user_id: &str, since_ms: i64) -> ApiResult<Vec<DailySpend>> {
    let rows = sqlx::query(
        "SELECT CAST(created_at_ms / 86400000 AS BIGINT) AS day, model, CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(input_uncached_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens), 0) AS BIGINT) AS prompt_sum, \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_sum, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost_sum \
         FROM usage_ledger WHERE user_id = $1 AND created_at_ms >= $2 \
         GROUP BY CAST(created_at_ms / 86400000 AS BIGINT), model ORDER BY day DESC, model",
    )
    .bind(user_id)
    .bind(since_ms)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DailySpend {
                day: civil_day(r.int("day")?),
                model: r.text("model")?,
                requests: r.int("requests")?,
                prompt_tokens: r.int("prompt_sum")?,
                output_tokens: r.int("output_sum")?,
                cost_micros: r.int("cost_sum")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::civil_day;

    #[test]
    fn civil_days() {
        assert_eq!(civil_day(0), "1970-01-01");
        assert_eq!(civil_day(19_723), "2024-01-01");
        assert_eq!(civil_day(19_782), "2024-02-29");
        assert_eq!(civil_day(-1), "1969-12-31");
    }
}

//! The usage ledger: idempotent ingest from the edge's queue consumer, and
//! listing and per-key totals for the admin.
//!
//! Queue delivery is at-least-once, so ingest inserts each event with
//! `ON CONFLICT (request_id) DO NOTHING` inside one transaction: a batch
//! delivered again, whole or in part and in any order, leaves exactly one row
//! per request id, and the first delivery's row is the one kept. The same
//! function, [`ingest_events`], serves the edge's pushes (`POST
//! /internal/usage`) and the pull consumer (`crate::usage_pull`).

use crate::db::{Db, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::keys::{find_key, List};
use crate::{now_ms, now_secs, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use edgeway_core::internal_auth::{verify, InternalAuthError, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use serde::{Deserialize, Serialize};

/// Path the edge signs for usage ingest.
pub const INGEST_PATH: &str = "/internal/usage";
/// Most events accepted in one batch.
pub const MAX_BATCH: usize = 5000;
/// Default and largest `limit` of `GET /api/usage`.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// `POST /internal/usage` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageBatch {
    pub events: Vec<UsageEvent>,
}

/// `POST /internal/usage` response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    pub inserted: u64,
    pub duplicates: u64,
}

fn snake<T: Serialize>(value: &T) -> ApiResult<String> {
    match serde_json::to_value(value)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(ApiError::internal(format_args!("expected a string enum, got {other}"))),
    }
}

fn from_snake<T: for<'de> Deserialize<'de>>(text: String) -> ApiResult<T> {
    Ok(serde_json::from_value(serde_json::Value::String(text))?)
}

/// An event as ledger column values; refuses numbers the database can't hold.
struct LedgerRow<'a> {
    event: &'a UsageEvent,
    tokens: [i64; 6],
    latency_ms: i64,
    ttft_ms: Option<i64>,
    outcome: String,
    usage_source: String,
}

impl<'a> LedgerRow<'a> {
    fn new(index: usize, event: &'a UsageEvent) -> ApiResult<Self> {
        let bad = |what: &str| ApiError::bad_request(format!("events[{index}]: {what}"));
        if event.request_id.trim().is_empty() || event.request_id.len() > 200 {
            return Err(bad("`request_id` must be 1 to 200 characters"));
        }
        if event.key_digest.is_empty() || event.key_digest.len() > 128 {
            return Err(bad("`key_digest` must be 1 to 128 characters"));
        }
        let int = |v: u64, field: &str| i64::try_from(v).map_err(|_| bad(&format!("`{field}` is too large")));
        let u = &event.usage;
        Ok(Self {
            event,
            tokens: [
                int(u.input_uncached, "usage.input_uncached")?,
                int(u.cache_read, "usage.cache_read")?,
                int(u.cache_write_5m, "usage.cache_write_5m")?,
                int(u.cache_write_1h, "usage.cache_write_1h")?,
                int(u.output, "usage.output")?,
                int(u.reasoning, "usage.reasoning")?,
            ],
            latency_ms: int(event.latency_ms, "latency_ms")?,
            ttft_ms: event.ttft_ms.map(|t| int(t, "ttft_ms")).transpose()?,
            outcome: snake(&event.outcome)?,
            usage_source: snake(&event.usage_source)?,
        })
    }
}

/// `POST /internal/usage`: HMAC-signed by the edge; inserts idempotently.
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<IngestResult>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match verify(
        state.internal_secret(),
        "POST",
        INGEST_PATH,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now_secs(),
    ) {
        Ok(()) => {}
        Err(InternalAuthError::NotConfigured) => {
            return Err(ApiError::NotConfigured(
                "usage ingest is disabled: EDGE_ADMIN_SECRET is not set".into(),
            ))
        }
        Err(reason) => {
            tracing::warn!(?reason, "usage ingest refused: bad signature");
            return Err(ApiError::Unauthorized);
        }
    }
    let batch: UsageBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid usage batch: {e}")))?;
    if batch.events.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} events")));
    }
    Ok(Json(ingest_events(state.db(), &batch.events).await?))
}

/// Why an event cannot enter the ledger (a value the database cannot hold).
pub fn check_event(event: &UsageEvent) -> Result<(), String> {
    LedgerRow::new(0, event).map(|_| ()).map_err(|e| e.to_string())
}

/// Inserts `events` in one transaction, each at most once by request id;
/// refuses the whole batch (nothing inserted) if any event is invalid.
pub async fn ingest_events(db: &Db, events: &[UsageEvent]) -> ApiResult<IngestResult> {
    let rows = events.iter().enumerate().map(|(i, e)| LedgerRow::new(i, e)).collect::<ApiResult<Vec<_>>>()?;
    let ingested_at = now_ms();
    let mut tx = db.pool.begin().await?;
    let mut inserted = 0u64;
    for row in &rows {
        let e = row.event;
        let result = sqlx::query(
            "INSERT INTO usage_ledger (request_id, key_digest, owner, model, upstream_model, channel, provider, \
             input_uncached, cache_read, cache_write_5m, cache_write_1h, output_tokens, reasoning_tokens, \
             cost_micros, status, outcome, usage_source, stream, latency_ms, ttft_ms, created_at_ms, ingested_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&e.request_id)
        .bind(&e.key_digest)
        .bind(&e.owner)
        .bind(&e.model)
        .bind(&e.upstream_model)
        .bind(&e.channel)
        .bind(&e.provider)
        .bind(row.tokens[0])
        .bind(row.tokens[1])
        .bind(row.tokens[2])
        .bind(row.tokens[3])
        .bind(row.tokens[4])
        .bind(row.tokens[5])
        .bind(e.cost_micros)
        .bind(i64::from(e.status))
        .bind(&row.outcome)
        .bind(&row.usage_source)
        .bind(i64::from(e.stream))
        .bind(row.latency_ms)
        .bind(row.ttft_ms)
        .bind(e.created_at_ms)
        .bind(ingested_at)
        .execute(&mut *tx)
        .await?;
        inserted += result.rows_affected();
    }
    tx.commit().await?;
    let duplicates = rows.len() as u64 - inserted;
    tracing::info!(inserted, duplicates, "usage batch ingested");
    Ok(IngestResult { inserted, duplicates })
}

/// `GET /api/usage` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Rows to return, newest first (1..=1000, default 100).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Only this key's rows.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// A ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    #[serde(flatten)]
    pub event: UsageEvent,
    pub ingested_at_ms: i64,
}

fn u64_col(row: &sqlx::any::AnyRow, column: &str) -> ApiResult<u64> {
    let v = row.int(column)?;
    u64::try_from(v).map_err(|_| ApiError::internal(format_args!("negative `{column}` in ledger")))
}

fn entry_from_row(row: &sqlx::any::AnyRow) -> ApiResult<LedgerEntry> {
    let event = UsageEvent {
        request_id: row.text("request_id")?,
        key_digest: row.text("key_digest")?,
        owner: row.text("owner")?,
        model: row.text("model")?,
        upstream_model: row.text("upstream_model")?,
        channel: row.text("channel")?,
        provider: row.text("provider")?,
        usage: TokenUsage {
            input_uncached: u64_col(row, "input_uncached")?,
            cache_read: u64_col(row, "cache_read")?,
            cache_write_5m: u64_col(row, "cache_write_5m")?,
            cache_write_1h: u64_col(row, "cache_write_1h")?,
            output: u64_col(row, "output_tokens")?,
            reasoning: u64_col(row, "reasoning_tokens")?,
        },
        cost_micros: row.int("cost_micros")?,
        status: u16::try_from(row.int("status")?).unwrap_or(0),
        outcome: from_snake::<RequestOutcome>(row.text("outcome")?)?,
        usage_source: from_snake::<UsageSource>(row.text("usage_source")?)?,
        stream: row.int("stream")? != 0,
        latency_ms: u64_col(row, "latency_ms")?,
        ttft_ms: row.opt_int("ttft_ms")?.and_then(|t| u64::try_from(t).ok()),
        created_at_ms: row.int("created_at_ms")?,
    };
    Ok(LedgerEntry { event, ingested_at_ms: row.int("ingested_at_ms")? })
}

/// `GET /api/usage?limit=&key_id=`: ledger rows, newest first.
pub async fn list(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> ApiResult<Json<List<LedgerEntry>>> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be between 1 and {MAX_LIMIT}")));
    }
    // An empty digest selects every key.
    let digest = match &query.key_id {
        None => String::new(),
        Some(id) => {
            find_key(state.db(), id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no key with id `{id}`")))?
                .digest
        }
    };
    let rows = sqlx::query(
        "SELECT request_id, key_digest, owner, model, upstream_model, channel, provider, input_uncached, \
         cache_read, cache_write_5m, cache_write_1h, output_tokens, reasoning_tokens, cost_micros, status, \
         outcome, usage_source, stream, latency_ms, ttft_ms, created_at_ms, ingested_at_ms FROM usage_ledger \
         WHERE ($1 = '' OR key_digest = $1) ORDER BY created_at_ms DESC, request_id DESC LIMIT $2",
    )
    .bind(&digest)
    .bind(limit)
    .fetch_all(&state.db().pool)
    .await?;
    let data = rows.iter().map(entry_from_row).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(List { data }))
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

/// `GET /api/usage/summary` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSummary {
    pub data: Vec<KeyTotals>,
    pub totals: Totals,
}

/// Totals over every key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
}

/// `GET /api/usage/summary`: requests, tokens and cost per key, dearest first.
pub async fn summary(State(state): State<AppState>) -> ApiResult<Json<UsageSummary>> {
    let rows = sqlx::query(
        "SELECT l.key_digest AS key_digest, k.id AS key_id, k.name AS key_name, \
         CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(l.input_uncached + l.cache_read + l.cache_write_5m + l.cache_write_1h), 0) AS BIGINT) \
           AS prompt_sum, \
         CAST(COALESCE(SUM(l.output_tokens), 0) AS BIGINT) AS output_sum, \
         CAST(COALESCE(SUM(l.cost_micros), 0) AS BIGINT) AS cost_sum \
         FROM usage_ledger l LEFT JOIN api_keys k ON k.digest = l.key_digest \
         GROUP BY l.key_digest, k.id, k.name ORDER BY cost_sum DESC, l.key_digest",
    )
    .fetch_all(&state.db().pool)
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    let mut totals = Totals::default();
    for row in &rows {
        let prompt_tokens = row.int("prompt_sum")?;
        let output_tokens = row.int("output_sum")?;
        let entry = KeyTotals {
            key_id: row.opt_text("key_id")?,
            key_name: row.opt_text("key_name")?,
            key_digest: row.text("key_digest")?,
            requests: row.int("requests")?,
            prompt_tokens,
            output_tokens,
            total_tokens: prompt_tokens.saturating_add(output_tokens),
            cost_micros: row.int("cost_sum")?,
        };
        totals.requests = totals.requests.saturating_add(entry.requests);
        totals.total_tokens = totals.total_tokens.saturating_add(entry.total_tokens);
        totals.cost_micros = totals.cost_micros.saturating_add(entry.cost_micros);
        data.push(entry);
    }
    Ok(Json(UsageSummary { data, totals }))
}

//! The usage ledger: idempotent ingest from the edge's queue consumer, and
//! listing and per-key totals for the admin.
//!
//! Queue delivery is at-least-once, so ingest inserts each event with
//! `ON CONFLICT (request_id) DO NOTHING` inside one transaction: a batch
//! delivered again, whole or in part and in any order, leaves exactly one row
//! per request id, and the first delivery's row is the one kept. The same
//! function, [`ingest_events`], serves the edge's pushes (`POST
//! /internal/usage`) and the pull consumer (`crate::usage_pull`).

use crate::db::keys::find_key;
use crate::db::ledger::{self, Entry, EntryKind};
use crate::db::usage::{self as db_usage, KeyTotals, LedgerEntry};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::key_issue::new_id;
use crate::keys::List;
use crate::{now_ms, now_secs, AppState};
use axum::extract::{Request, State};
use axum::Json;
use edgeway_core::internal_auth::{
    precheck, verify, InternalAuthError, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use edgeway_core::usage::UsageEvent;
use serde::{Deserialize, Serialize};

/// Path the edge signs for usage ingest.
pub const INGEST_PATH: &str = "/internal/usage";
/// Most events accepted in one batch.
pub const MAX_BATCH: usize = 5000;
/// Largest ingest body (bytes); larger is a 413.
pub const MAX_INGEST_BODY: usize = 8 * 1024 * 1024;
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

/// Checks that an event's values fit the ledger's columns.
struct LedgerRow;

impl LedgerRow {
    fn new(index: usize, event: &UsageEvent) -> ApiResult<Self> {
        let bad = |what: &str| ApiError::bad_request(format!("events[{index}]: {what}"));
        if event.request_id.trim().is_empty() || event.request_id.len() > 200 {
            return Err(bad("`request_id` must be 1 to 200 characters"));
        }
        if event.key_digest.is_empty() || event.key_digest.len() > 128 {
            return Err(bad("`key_digest` must be 1 to 128 characters"));
        }
        if event.cost_micros < 0 {
            // A negative spend would credit the user's balance.
            return Err(bad("`cost_micros` must not be negative"));
        }
        if event.user_id.as_ref().is_some_and(|u| u.is_empty() || u.len() > 128) || event.group.len() > 128 {
            return Err(bad("`user_id` and `group` must be at most 128 characters"));
        }
        let u = &event.usage;
        for (value, field) in [
            (u.input_uncached, "usage.input_uncached"),
            (u.cache_read, "usage.cache_read"),
            (u.cache_write_5m, "usage.cache_write_5m"),
            (u.cache_write_1h, "usage.cache_write_1h"),
            (u.output, "usage.output"),
            (u.reasoning, "usage.reasoning"),
            (event.latency_ms, "latency_ms"),
            (event.ttft_ms.unwrap_or(0), "ttft_ms"),
        ] {
            if i64::try_from(value).is_err() {
                return Err(bad(&format!("`{field}` is too large")));
            }
        }
        Ok(Self)
    }
}

/// `POST /internal/usage`: HMAC-signed by the edge (method, path, query,
/// timestamp, nonce, body); inserts idempotently. The signature headers are
/// checked before the body is read, and each nonce is accepted once within
/// the replay window (this process's memory: a replay to another replica is
/// still harmless, since ingest is idempotent on the request id).
pub async fn ingest(State(state): State<AppState>, request: Request) -> ApiResult<Json<IngestResult>> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let refuse = |reason: InternalAuthError| match reason {
        InternalAuthError::NotConfigured => {
            ApiError::NotConfigured("usage ingest is disabled: EDGE_ADMIN_SECRET is not set".into())
        }
        reason => {
            tracing::warn!(?reason, "usage ingest refused: bad signature");
            ApiError::Unauthorized
        }
    };
    let secret = state.internal_secret();
    let pre = precheck(
        secret,
        header(TIMESTAMP_HEADER),
        header(NONCE_HEADER),
        header(SIGNATURE_HEADER),
        now_secs(),
    )
    .map_err(refuse)?;
    let body = axum::body::to_bytes(body, MAX_INGEST_BODY)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_INGEST_BODY))?;
    let query = parts.uri.query().unwrap_or("");
    verify(secret, &pre, "POST", INGEST_PATH, query, &body).map_err(refuse)?;
    if !claim_nonce(&pre.nonce, pre.remember_until(), now_secs()) {
        return Err(refuse(InternalAuthError::Replayed));
    }
    let batch: UsageBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid usage batch: {e}")))?;
    if batch.events.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} events")));
    }
    Ok(Json(ingest_events(&state, &batch.events).await?))
}

/// Nonces of signed usage ingests within the replay window, for this process.
static INGEST_NONCES: std::sync::Mutex<Option<edgeway_core::internal_auth::NonceMemory>> =
    std::sync::Mutex::new(None);

/// Records a signed ingest's nonce; `false` when it was seen within the window.
fn claim_nonce(nonce: &str, until: i64, now: i64) -> bool {
    let mut memory = INGEST_NONCES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    memory.get_or_insert_with(Default::default).claim(nonce, until, now)
}

/// Why an event cannot enter the ledger (a value the database cannot hold).
pub fn check_event(event: &UsageEvent) -> Result<(), String> {
    LedgerRow::new(0, event).map(|_| ()).map_err(|e| e.to_string())
}

/// Inserts `events` in one transaction, each at most once by request id;
/// refuses the whole batch (nothing inserted) if any event is invalid. An
/// event of a user's key also books its spend in the user's balance ledger
/// (`-cost_micros`, once per request id), in the same transaction; then the
/// users' low-balance alerts are re-checked.
pub async fn ingest_events(state: &AppState, events: &[UsageEvent]) -> ApiResult<IngestResult> {
    for (i, e) in events.iter().enumerate() {
        LedgerRow::new(i, e)?;
    }
    let ingested_at = now_ms();
    let mut tx = state.db().pool.begin().await?;
    let mut inserted = 0u64;
    let mut users: Vec<&str> = Vec::new();
    for e in events {
        if !db_usage::insert_event(&mut tx, e, ingested_at).await? {
            continue;
        }
        inserted += 1;
        if let Some(user_id) = &e.user_id {
            let entry = Entry {
                id: new_id("led").map_err(ApiError::internal)?,
                user_id: user_id.clone(),
                kind: EntryKind::Spend,
                amount_micros: e.cost_micros.saturating_neg(),
                actor_id: None,
                reason: format!("{} via {}", e.model, e.channel),
                request_id: Some(e.request_id.clone()),
                code_id: None,
                created_at_ms: e.created_at_ms,
            };
            ledger::insert_entry(&mut tx, &entry).await?;
            if !users.contains(&user_id.as_str()) {
                users.push(user_id);
            }
        }
    }
    tx.commit().await?;
    for user_id in users {
        crate::alerts::check_low_balance(state, user_id).await;
    }
    let duplicates = events.len() as u64 - inserted;
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
    /// Only rows paid from this user's balance.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// `GET /api/usage?limit=&key_id=&user_id=`: ledger rows, newest first.
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
    let data =
        db_usage::list_filtered(state.db(), &digest, query.user_id.as_deref().unwrap_or(""), limit).await?;
    Ok(Json(List { data }))
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
    let rows = db_usage::totals_by_key(state.db()).await?;
    let mut data = Vec::with_capacity(rows.len());
    let mut totals = Totals::default();
    for entry in rows {
        totals.requests = totals.requests.saturating_add(entry.requests);
        totals.total_tokens = totals.total_tokens.saturating_add(entry.total_tokens);
        totals.cost_micros = totals.cost_micros.saturating_add(entry.cost_micros);
        data.push(entry);
    }
    Ok(Json(UsageSummary { data, totals }))
}

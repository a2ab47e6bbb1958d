//! Balances and the ledger: credits (top-up, refund, adjustment by an admin,
//! redemption, invitation reward, periodic allowance), the self-service
//! views, and redemption of codes.
//!
//! Invariant: a balance is the sum of its user's entries, always (nothing
//! else is stored). Each credit is one transaction: bump the user's account
//! version, insert the entry, commit; then the account (cumulative credit,
//! version) is pushed to the edge at once, which enforces the balance
//! exactly. Spend entries come only from usage ingest, one per request id.

use crate::alerts;
use crate::audit;
use crate::auth::Caller;
use crate::db::ledger::{self, Balance, Entry, EntryKind};
use crate::db::users;
use crate::edge_sync::push_account_if_configured;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::key_issue::new_id;
use crate::{now_ms, now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

/// Largest single credit accepted (one million units).
pub const MAX_CREDIT_MICROS: i64 = 1_000_000_000_000;

/// A credit to book.
#[derive(Debug, Clone)]
pub struct Credit<'a> {
    pub user_id: &'a str,
    pub kind: EntryKind,
    pub amount_micros: i64,
    pub actor_id: Option<&'a str>,
    pub reason: &'a str,
    pub code_id: Option<&'a str>,
    /// When the credit happened (unix ms); `None` = now.
    pub at_ms: Option<i64>,
}

/// Books a credit in its own transaction (`NotFound` for an unknown user),
/// then pushes the account and re-checks the low-balance alert. Returns the
/// entry and whether the edge took the push.
pub async fn credit(state: &AppState, credit: Credit<'_>) -> ApiResult<(Entry, bool)> {
    let mut tx = state.db().pool.begin().await?;
    let entry = credit_in(&mut tx, &credit).await?;
    tx.commit().await?;
    Ok((entry, after_credit(state, credit.user_id).await))
}

/// Books a credit inside an open transaction; the caller commits and then
/// calls [`after_credit`].
pub async fn credit_in(conn: &mut sqlx::AnyConnection, credit: &Credit<'_>) -> ApiResult<Entry> {
    if ledger::bump_account_version(conn, credit.user_id).await?.is_none() {
        return Err(ApiError::not_found(format!("no user with id `{}`", credit.user_id)));
    }
    let entry = Entry {
        id: new_id("led").map_err(ApiError::internal)?,
        user_id: credit.user_id.to_string(),
        kind: credit.kind,
        amount_micros: credit.amount_micros,
        actor_id: credit.actor_id.map(String::from),
        reason: credit.reason.to_string(),
        request_id: None,
        code_id: credit.code_id.map(String::from),
        created_at_ms: credit.at_ms.unwrap_or_else(now_ms),
    };
    ledger::insert_entry(conn, &entry).await?;
    Ok(entry)
}

/// After a committed credit: push the account to the edge (whether it
/// landed) and re-arm or fire the low-balance alert.
pub async fn after_credit(state: &AppState, user_id: &str) -> bool {
    let synced = push_account_if_configured(state, user_id).await;
    alerts::check_low_balance(state, user_id).await;
    synced
}

/// A balance with the entries that make it up.
#[derive(Debug, Serialize)]
pub struct LedgerView {
    #[serde(flatten)]
    pub balance: Balance,
    pub data: Vec<Entry>,
}

/// `?limit=` of ledger listings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    #[serde(default)]
    pub limit: Option<i64>,
}

fn limit(q: &LimitQuery) -> ApiResult<i64> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    Ok(limit)
}

async fn ledger_view(state: &AppState, user_id: &str, limit: i64) -> ApiResult<LedgerView> {
    let (balance, data) = ledger::balance_and_entries(state.db(), user_id, limit).await?;
    Ok(LedgerView { balance, data })
}

/// `GET /api/me/ledger`: the caller's balance and entries.
pub async fn my_ledger(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<LimitQuery>,
) -> ApiResult<Json<LedgerView>> {
    Ok(Json(ledger_view(&state, &caller.user_id, limit(&q)?).await?))
}

/// `GET /api/users/{id}/ledger` (admin).
pub async fn user_ledger(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<LimitQuery>,
) -> ApiResult<Json<LedgerView>> {
    users::find(state.db(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id `{id}`")))?;
    Ok(Json(ledger_view(&state, &id, limit(&q)?).await?))
}

/// `POST /api/users/{id}/ledger` body: an admin's change of a balance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCredit {
    /// `topup`, `refund` or `adjustment` (only an adjustment may be negative).
    pub kind: EntryKind,
    pub amount_micros: i64,
    /// Why (required; goes to the ledger and the audit log).
    pub reason: String,
}

/// Response of a booked credit.
#[derive(Debug, Serialize)]
pub struct Booked {
    pub entry: Entry,
    pub balance: Balance,
    pub edge_synced: bool,
}

/// `POST /api/users/{id}/ledger` (admin): top-up, refund or adjustment, with who and why.
pub async fn admin_credit(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<AdminCredit>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    let reason = validate::text("reason", &body.reason)?;
    match body.kind {
        EntryKind::Topup | EntryKind::Refund if body.amount_micros > 0 => {}
        EntryKind::Adjustment if body.amount_micros != 0 => {}
        EntryKind::Topup | EntryKind::Refund | EntryKind::Adjustment => {
            return Err(ApiError::bad_request(
                "`amount_micros` must be positive for a top-up or refund, and non-zero for an adjustment",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "`kind` must be `topup`, `refund` or `adjustment` (spend comes from usage, redemptions from codes)",
            ))
        }
    }
    if body.amount_micros.unsigned_abs() > MAX_CREDIT_MICROS.unsigned_abs() {
        return Err(ApiError::bad_request(format!(
            "`amount_micros` must be at most {MAX_CREDIT_MICROS} in size"
        )));
    }
    let target = users::find(state.db(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id `{id}`")))?;
    // The credit's first statement writes (SQLite: a read-then-write
    // transaction could not take the write lock under contention).
    let mut tx = state.db().pool.begin().await?;
    let entry = credit_in(
        &mut tx,
        &Credit {
            user_id: &target.id,
            kind: body.kind,
            amount_micros: body.amount_micros,
            actor_id: Some(&caller.user_id),
            reason: &reason,
            code_id: None,
            at_ms: None,
        },
    )
    .await?;
    let balance = ledger::balance(&mut tx, &target.id).await?;
    let before = Balance {
        balance_micros: balance.balance_micros - entry.amount_micros,
        credited_micros: balance.credited_micros - entry.amount_micros,
        entries: balance.entries - 1,
        ..balance
    };
    audit::record_in(&mut tx, &caller, "balance.credit", ("user", &target.id), Some(&before), Some(&entry))
        .await?;
    tx.commit().await?;
    let edge_synced = after_credit(&state, &target.id).await;
    tracing::info!(user = %target.id, kind = entry.kind.as_str(), amount = entry.amount_micros, "balance credited");
    Ok((StatusCode::CREATED, Json(Booked { entry, balance, edge_synced })))
}

/// `POST /api/me/redeem` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    pub code: String,
}

/// `POST /api/me/redeem`: claims a code for the caller. The claim is one
/// conditional `UPDATE … WHERE status = 'active' AND not expired`, in the
/// same transaction as the credit, so of any number of concurrent claims of
/// one code exactly one succeeds.
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<Redeem>,
) -> ApiResult<Json<Booked>> {
    let code = body.code.trim();
    if code.is_empty() || code.len() > 128 {
        return Err(ApiError::bad_request("`code` must be 1 to 128 characters"));
    }
    let digest = crate::auth::hex_digest(code);
    let now = now_secs();
    let mut tx = state.db().pool.begin().await?;
    let Some((code_id, value)) = ledger::claim_code(&mut tx, &digest, &caller.user_id, now).await? else {
        drop(tx);
        let mut conn = state.db().pool.acquire().await?;
        let why = match ledger::find_code_by_digest(&mut conn, &digest).await? {
            None => return Err(ApiError::not_found("no such redemption code")),
            Some(c) if c.status == "redeemed" => "this code has already been redeemed",
            Some(c) if c.status == "disabled" => "this code has been disabled",
            Some(_) => "this code has expired",
        };
        return Err(ApiError::Conflict(why.into()));
    };
    let entry = credit_in(
        &mut tx,
        &Credit {
            user_id: &caller.user_id,
            kind: EntryKind::Redemption,
            amount_micros: value,
            actor_id: Some(&caller.user_id),
            reason: "redemption code",
            code_id: Some(&code_id),
            at_ms: None,
        },
    )
    .await?;
    let balance = ledger::balance(&mut tx, &caller.user_id).await?;
    tx.commit().await?;
    let edge_synced = after_credit(&state, &caller.user_id).await;
    tracing::info!(user = %caller.user_id, code = %code_id, value, "code redeemed");
    Ok(Json(Booked { entry, balance, edge_synced }))
}

/// `GET /api/users/{id}/edge-account` (admin): the user's account as the
/// edge holds it next to the ledger's, and whether the credit agrees (the
/// edge's spend runs ahead of the ledger's by what is not ingested yet).
pub async fn edge_account(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<serde_json::Value>> {
    users::find(state.db(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id `{id}`")))?;
    let edge = state.edge().ok_or_else(|| ApiError::NotConfigured("EDGE_URL is not set".into()))?;
    let mut conn = state.db().pool.acquire().await?;
    let balance = ledger::balance(&mut conn, &id).await?;
    drop(conn);
    let at_edge = edge
        .get_account(&id)
        .await
        .map_err(|e| ApiError::EdgeSyncFailed(format!("the edge did not answer with the account: {e}")))?;
    let credit_agrees =
        at_edge.get("credited_micros").and_then(serde_json::Value::as_i64) == Some(balance.credited_micros);
    Ok(Json(serde_json::json!({ "ledger": balance, "edge": at_edge, "credit_agrees": credit_agrees })))
}

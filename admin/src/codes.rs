//! Redemption codes: generated in batches by admins (count, value, expiry,
//! optional prefix), redeemed once by users (`POST /api/me/redeem`, see
//! [`crate::balances::redeem`]).
//!
//! Like client keys, codes are stored only as SHA-256 digests plus a short
//! label: the codes themselves exist only in the response that generates
//! them, as JSON or as CSV (`?format=csv`) to hand out. `GET /api/codes`
//! lists (and exports as CSV) their labels, values and status.

use crate::audit;
use crate::auth::{hex_digest, Caller};
use crate::balances::MAX_CREDIT_MICROS;
use crate::db::ledger::{self, Code};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::key_issue::{new_id, random_base62};
use crate::keys::{check_expiry, List};
use crate::{now_secs, AppState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Most codes per batch.
pub const MAX_BATCH: u32 = 1000;
/// Random characters of a code after its prefix.
pub const CODE_RANDOM_CHARS: usize = 24;

/// `POST /api/codes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub count: u32,
    pub value_micros: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Up to 16 of `A-Z a-z 0-9`; default `EW`.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `?format=csv`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub batch_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

fn wants_csv(format: &Option<String>) -> ApiResult<bool> {
    match format.as_deref() {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => Err(ApiError::bad_request("`format` must be `json` or `csv`")),
    }
}

/// A generated code, shown once.
#[derive(Debug, Serialize)]
pub struct GeneratedCode {
    pub code: String,
    #[serde(flatten)]
    pub stored: Code,
}

/// `POST /api/codes` response.
#[derive(Debug, Serialize)]
pub struct Batch {
    pub batch_id: String,
    pub data: Vec<GeneratedCode>,
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn csv_response(text: String, filename: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        text,
    )
        .into_response()
}

/// `POST /api/codes[?format=csv]`: generates a batch.
pub async fn generate(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<Format>,
    JsonBody(body): JsonBody<Generate>,
) -> ApiResult<Response> {
    let csv = wants_csv(&q.format)?;
    if body.count == 0 || body.count > MAX_BATCH {
        return Err(ApiError::bad_request(format!("`count` must be between 1 and {MAX_BATCH}")));
    }
    if body.value_micros <= 0 || body.value_micros > MAX_CREDIT_MICROS {
        return Err(ApiError::bad_request(format!(
            "`value_micros` must be between 1 and {MAX_CREDIT_MICROS}"
        )));
    }
    let now = now_secs();
    let expires_at = check_expiry(body.expires_at, now)?;
    let prefix = body.prefix.unwrap_or_else(|| "EW".into());
    if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request("`prefix` must be 1 to 16 of A-Z, a-z, 0-9"));
    }
    let batch_id = new_id("bat").map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(body.count as usize);
    let mut tx = state.db().pool.begin().await?;
    for _ in 0..body.count {
        let code = format!("{prefix}-{}", random_base62(CODE_RANDOM_CHARS).map_err(ApiError::internal)?);
        let stored = Code {
            id: new_id("code").map_err(ApiError::internal)?,
            batch_id: batch_id.clone(),
            label: code.chars().take(prefix.len() + 5).collect(),
            value_micros: body.value_micros,
            status: "active".into(),
            expires_at,
            redeemed_by: None,
            redeemed_at: None,
            created_by: caller.user_id.clone(),
            created_at: now,
        };
        ledger::insert_code(&mut tx, &stored, &hex_digest(&code)).await?;
        out.push(GeneratedCode { code, stored });
    }
    let summary = serde_json::json!({
        "batch_id": batch_id, "count": body.count, "value_micros": body.value_micros, "expires_at": expires_at,
    });
    audit::record_in(
        &mut tx,
        &caller,
        "codes.generate",
        ("code_batch", &batch_id),
        None::<&()>,
        Some(&summary),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(batch = %batch_id, count = body.count, value = body.value_micros, "redemption codes generated");
    if csv {
        let mut text = String::from("code,value_micros,expires_at,batch_id,id\n");
        for c in &out {
            text.push_str(&format!(
                "{},{},{},{},{}\n",
                csv_field(&c.code),
                c.stored.value_micros,
                opt(c.stored.expires_at),
                c.stored.batch_id,
                c.stored.id
            ));
        }
        let mut response = csv_response(text, &format!("{batch_id}.csv"));
        *response.status_mut() = StatusCode::CREATED;
        return Ok(response);
    }
    Ok((StatusCode::CREATED, Json(Batch { batch_id, data: out })).into_response())
}

/// `GET /api/codes[?batch_id=&status=&format=csv]`: labels, values, status.
pub async fn list(State(state): State<AppState>, QueryParams(q): QueryParams<Format>) -> ApiResult<Response> {
    let csv = wants_csv(&q.format)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 100000"));
    }
    let codes = ledger::codes(
        state.db(),
        q.batch_id.as_deref().unwrap_or(""),
        q.status.as_deref().unwrap_or(""),
        limit,
    )
    .await?;
    if csv {
        let mut text = String::from(
            "id,label,batch_id,value_micros,status,expires_at,redeemed_by,redeemed_at,created_at\n",
        );
        for c in &codes {
            text.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                c.id,
                csv_field(&c.label),
                c.batch_id,
                c.value_micros,
                c.status,
                opt(c.expires_at),
                c.redeemed_by.as_deref().unwrap_or(""),
                opt(c.redeemed_at),
                c.created_at
            ));
        }
        return Ok(csv_response(text, "redemption-codes.csv"));
    }
    Ok(Json(List { data: codes }).into_response())
}

/// `PATCH /api/codes/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCode {
    /// `active` or `disabled`.
    pub status: String,
}

/// `PATCH /api/codes/{id}`: disables (or re-enables) an unredeemed code.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateCode>,
) -> ApiResult<Json<Code>> {
    if body.status != "active" && body.status != "disabled" {
        return Err(ApiError::bad_request("`status` must be `active` or `disabled`"));
    }
    let before = ledger::find_code(state.db(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no code with id `{id}`")))?;
    let after = ledger::set_code_status(state.db(), &id, &body.status)
        .await?
        .ok_or_else(|| ApiError::Conflict("this code has already been redeemed".into()))?;
    audit::record(&state, &caller, "code.update", ("code", &id), Some(&before), Some(&after)).await?;
    Ok(Json(after))
}

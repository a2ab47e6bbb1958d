//! The audit log of admin actions: who (the caller), when, what, and the
//! object before and after. Written in the same transaction as the change
//! where the change is one ([`record_in`]), else right after it commits
//! ([`record`]); secrets never enter it (objects are their API views).

use crate::auth::Caller;
use crate::db::audit::{self, AuditEntry};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::key_issue::new_id;
use crate::keys::List;
use crate::{now_ms, AppState};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

fn entry<B: Serialize, A: Serialize>(
    caller: &Caller,
    action: &str,
    target_type: &str,
    target_id: &str,
    before: Option<&B>,
    after: Option<&A>,
) -> ApiResult<AuditEntry> {
    Ok(AuditEntry {
        id: new_id("aud").map_err(ApiError::internal)?,
        actor_id: caller.user_id.clone(),
        action: action.to_string(),
        target_type: target_type.to_string(),
        target_id: target_id.to_string(),
        before: before.map(serde_json::to_value).transpose()?,
        after: after.map(serde_json::to_value).transpose()?,
        at_ms: now_ms(),
    })
}

/// Records an action inside the change's own transaction.
pub async fn record_in<B: Serialize, A: Serialize>(
    conn: &mut AnyConnection,
    caller: &Caller,
    action: &str,
    target: (&str, &str),
    before: Option<&B>,
    after: Option<&A>,
) -> ApiResult<()> {
    audit::insert(conn, &entry(caller, action, target.0, target.1, before, after)?).await
}

/// Records an action after its change committed.
pub async fn record<B: Serialize, A: Serialize>(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: (&str, &str),
    before: Option<&B>,
    after: Option<&A>,
) -> ApiResult<()> {
    let mut conn = state.db().pool.acquire().await?;
    record_in(&mut conn, caller, action, target, before, after).await
}

/// `GET /api/audit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub target_type: Option<String>,
    #[serde(default)]
    pub target_id: Option<String>,
}

/// `GET /api/audit`: newest first.
pub async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<List<AuditEntry>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let data = audit::list(
        state.db(),
        q.target_type.as_deref().unwrap_or(""),
        q.target_id.as_deref().unwrap_or(""),
        limit,
    )
    .await?;
    Ok(Json(List { data }))
}

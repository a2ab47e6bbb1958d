//! Queries of `audit_log`: one row per admin action, who, when, what, and
//! the object before and after as JSON.

use crate::db::{Db, RowExt};
use crate::error::ApiResult;
use serde::Serialize;
use sqlx::AnyConnection;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub actor_id: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub at_ms: i64,
}

pub async fn insert(conn: &mut AnyConnection, entry: &AuditEntry) -> ApiResult<()> {
    let text = |v: &Option<serde_json::Value>| v.as_ref().map(serde_json::Value::to_string);
    sqlx::query(
        "INSERT INTO audit_log (id, actor_id, action, target_type, target_id, before_json, after_json, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&entry.id)
    .bind(&entry.actor_id)
    .bind(&entry.action)
    .bind(&entry.target_type)
    .bind(&entry.target_id)
    .bind(text(&entry.before))
    .bind(text(&entry.after))
    .bind(entry.at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Newest first; empty filters select all.
pub async fn list(db: &Db, target_type: &str, target_id: &str, limit: i64) -> ApiResult<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT id, actor_id, action, target_type, target_id, before_json, after_json, at_ms FROM audit_log \
         WHERE ($1 = '' OR target_type = $1) AND ($2 = '' OR target_id = $2) ORDER BY at_ms DESC, id DESC LIMIT $3",
    )
    .bind(target_type)
    .bind(target_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let json = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.text("id")?,
                actor_id: r.text("actor_id")?,
                action: r.text("action")?,
                target_type: r.text("target_type")?,
                target_id: r.text("target_id")?,
                before: json(r.opt_text("before_json")?),
                after: json(r.opt_text("after_json")?),
                at_ms: r.int("at_ms")?,
            })
        })
        .collect()
}

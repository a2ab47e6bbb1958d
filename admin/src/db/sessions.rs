//! Queries of `sessions`, `api_tokens` and `login_failures`. Session cookies
//! and API tokens are stored as SHA-256 digests only.

use crate::db::{Db, RowExt};
use crate::error::ApiResult;
use serde::Serialize;

/// A live session: its user and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

pub async fn insert_session(
    db: &Db,
    digest: &str,
    user_id: &str,
    csrf_token: &str,
    now: i64,
    expires_at: i64,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO sessions (digest, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(digest)
        .bind(user_id)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The session with this digest, if it has not expired at `now`.
pub async fn live_session(db: &Db, digest: &str, now: i64) -> ApiResult<Option<Session>> {
    let row = sqlx::query(
        "SELECT user_id, csrf_token, expires_at FROM sessions WHERE digest = $1 AND expires_at > $2",
    )
    .bind(digest)
    .bind(now)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| {
        Ok(Session {
            user_id: r.text("user_id")?,
            csrf_token: r.text("csrf_token")?,
            expires_at: r.int("expires_at")?,
        })
    })
    .transpose()
}

pub async fn delete_session(db: &Db, digest: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM sessions WHERE digest = $1").bind(digest).execute(&db.pool).await?;
    Ok(())
}

/// Ends every session of a user (password change, disabling).
pub async fn delete_user_sessions(db: &Db, user_id: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&db.pool).await?;
    Ok(())
}

/// Test hook and housekeeping: moves a session's expiry.
pub async fn set_session_expiry(db: &Db, digest: &str, expires_at: i64) -> ApiResult<()> {
    sqlx::query("UPDATE sessions SET expires_at = $1 WHERE digest = $2")
        .bind(expires_at)
        .bind(digest)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// An API token as the API shows it (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub prefix_label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn insert_token(
    db: &Db,
    id: &str,
    user_id: &str,
    name: &str,
    digest: &str,
    label: &str,
    now: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, name, digest, prefix_label, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(user_id)
    .bind(name)
    .bind(digest)
    .bind(label)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The user of a live (unrevoked) token.
pub async fn token_user(db: &Db, digest: &str) -> ApiResult<Option<String>> {
    Ok(sqlx::query_scalar("SELECT user_id FROM api_tokens WHERE digest = $1 AND revoked_at IS NULL")
        .bind(digest)
        .fetch_optional(&db.pool)
        .await?)
}

/// The caller's own tokens.
pub async fn user_tokens(db: &Db, user_id: &str) -> ApiResult<Vec<ApiToken>> {
    let rows = sqlx::query(
        "SELECT id, name, prefix_label, created_at, revoked_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ApiToken {
                id: r.text("id")?,
                name: r.text("name")?,
                prefix_label: r.text("prefix_label")?,
                created_at: r.int("created_at")?,
                revoked_at: r.opt_int("revoked_at")?,
            })
        })
        .collect()
}

/// Revokes a token of `user_id`; whether it was theirs and live.
pub async fn revoke_token(db: &Db, user_id: &str, id: &str, now: i64) -> ApiResult<bool> {
    let result = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Failed logins of `subject` since `since`.
pub async fn failures_since(db: &Db, subject: &str, since: i64) -> ApiResult<(i64, Option<i64>)> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n, MIN(at) AS oldest FROM login_failures WHERE subject = $1 AND at > $2",
    )
    .bind(subject)
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    Ok((row.int("n")?, row.opt_int("oldest")?))
}

pub async fn record_failure(db: &Db, subjects: &[String], now: i64) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    for subject in subjects {
        sqlx::query("INSERT INTO login_failures (subject, at) VALUES ($1, $2)")
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM login_failures WHERE at < $1").bind(now - 86_400).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn clear_failures(db: &Db, subject: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM login_failures WHERE subject = $1").bind(subject).execute(&db.pool).await?;
    Ok(())
}

/// A pending external login.
#[derive(Debug, Clone)]
pub struct OidcState {
    pub provider: String,
    pub nonce: String,
    pub code_verifier: String,
    pub link_user_id: Option<String>,
}

pub async fn insert_oidc_state(db: &Db, digest: &str, state: &OidcState, expires_at: i64) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO oidc_states (digest, provider, nonce, code_verifier, link_user_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(digest)
    .bind(&state.provider)
    .bind(&state.nonce)
    .bind(&state.code_verifier)
    .bind(&state.link_user_id)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    sqlx::query("DELETE FROM oidc_states WHERE expires_at < $1")
        .bind(expires_at - 3600)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Consumes a pending login: deleted whether or not it is still valid, so
/// a state works at most once. `None` if unknown or expired.
pub async fn take_oidc_state(db: &Db, digest: &str, now: i64) -> ApiResult<Option<OidcState>> {
    let row = sqlx::query(
        "DELETE FROM oidc_states WHERE digest = $1 RETURNING provider, nonce, code_verifier, link_user_id, expires_at",
    )
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    if r.int("expires_at")? <= now {
        return Ok(None);
    }
    Ok(Some(OidcState {
        provider: r.text("provider")?,
        nonce: r.text("nonce")?,
        code_verifier: r.text("code_verifier")?,
        link_user_id: r.opt_text("link_user_id")?,
    }))
}

//! Queries of the `users`, `user_groups`, `oidc_links` and `invitations`
//! tables. Role and group changes are single statements; a user's credit
//! changes bump `account_version` in the ledger's transactions
//! ([`crate::db::ledger`]).

use crate::auth::Role;
use crate::db::{Db, RowExt};
use crate::error::{ApiError, ApiResult};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub group: String,
    /// `active` or `disabled`.
    pub status: String,
    /// Most keys the user may hold at once (self-service).
    pub max_keys: i64,
    /// Largest quota a self-service key may have; `None` = no cap beyond the balance.
    pub max_key_quota_micros: Option<i64>,
    /// Low-balance alert threshold; `None` = no alert.
    pub low_balance_micros: Option<i64>,
    /// `none`, `daily` or `monthly`: how often the allowance below is granted.
    pub budget_period: String,
    /// The periodic allowance: at each period start the balance is topped up to it.
    pub budget_micros: Option<i64>,
    pub invited_by: Option<String>,
    pub has_password: bool,
    pub account_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub password_hash: Option<String>,
    #[serde(skip)]
    pub low_balance_alerted: bool,
}

const USER_COLUMNS: &str = "id, username, email, password_hash, role, group_name, status, max_keys, \
    max_key_quota_micros, low_balance_micros, low_balance_alerted, budget_period, budget_micros, invited_by, \
    account_version, created_at, updated_at";

impl User {
    fn from_row(row: &AnyRow) -> ApiResult<Self> {
        let role_text = row.text("role")?;
        let role = Role::parse(&role_text)
            .ok_or_else(|| ApiError::internal(format_args!("unknown role `{role_text}` in database")))?;
        let password_hash = row.opt_text("password_hash")?;
        Ok(Self {
            id: row.text("id")?,
            username: row.text("username")?,
            email: row.opt_text("email")?,
            role,
            group: row.text("group_name")?,
            status: row.text("status")?,
            max_keys: row.int("max_keys")?,
            max_key_quota_micros: row.opt_int("max_key_quota_micros")?,
            low_balance_micros: row.opt_int("low_balance_micros")?,
            budget_period: row.text("budget_period")?,
            budget_micros: row.opt_int("budget_micros")?,
            invited_by: row.opt_text("invited_by")?,
            has_password: password_hash.is_some(),
            account_version: row.int("account_version")?,
            created_at: row.int("created_at")?,
            updated_at: row.int("updated_at")?,
            password_hash,
            low_balance_alerted: row.int("low_balance_alerted")? != 0,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// A new user's columns.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: Role,
    pub group: String,
    pub max_keys: i64,
    pub max_key_quota_micros: Option<i64>,
    pub low_balance_micros: Option<i64>,
    pub invited_by: Option<String>,
}

/// Inserts a user; `Conflict` if the username or email is taken.
pub async fn insert(conn: &mut AnyConnection, user: &NewUser, now: i64) -> ApiResult<()> {
    let result = sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, role, group_name, status, max_keys, \
         max_key_quota_micros, low_balance_micros, invited_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $11, $11)",
    )
    .bind(&user.id)
    .bind(&user.username)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.role.as_str())
    .bind(&user.group)
    .bind(user.max_keys)
    .bind(user.max_key_quota_micros)
    .bind(user.low_balance_micros)
    .bind(&user.invited_by)
    .bind(now)
    .execute(&mut *conn)
    .await;
    match result {
        Err(err) if crate::db::is_unique_violation(&err) => {
            Err(ApiError::Conflict("that username or email is already taken".into()))
        }
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

pub async fn find(db: &Db, id: &str) -> ApiResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(User::from_row).transpose()
}

/// By username, case-insensitively (usernames are stored lower-case).
pub async fn find_by_username(db: &Db, username: &str) -> ApiResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"))
        .bind(username.to_ascii_lowercase())
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(User::from_row).transpose()
}

pub async fn find_by_email(db: &Db, email: &str) -> ApiResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"))
        .bind(email.to_ascii_lowercase())
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(User::from_row).transpose()
}

/// The first root user, if any.
pub async fn find_root(db: &Db) -> ApiResult<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE role = 'root' ORDER BY created_at, id LIMIT 1"
    ))
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(User::from_row).transpose()
}

/// Every user, oldest first.
pub async fn all(db: &Db) -> ApiResult<Vec<User>> {
    let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"))
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(User::from_row).collect()
}

/// A change of a user: `None` leaves a column as it is; for nullable limits,
/// `Some(None)` clears.
#[derive(Debug, Default, Clone)]
pub struct UserChange {
    pub email: Option<Option<String>>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub group: Option<String>,
    pub status: Option<String>,
    pub max_keys: Option<i64>,
    pub max_key_quota_micros: Option<Option<i64>>,
    pub low_balance_micros: Option<Option<i64>>,
    pub budget_period: Option<String>,
    pub budget_micros: Option<Option<i64>>,
}

fn flag<T>(field: &Option<T>) -> i64 {
    i64::from(field.is_some())
}

/// Applies `change` in one statement; bumps `account_version` when the
/// status changes (the edge's account carries `disabled`). Returns the row
/// as written, or `None` if there is no such user.
pub async fn update(db: &Db, id: &str, change: &UserChange, now: i64) -> ApiResult<Option<User>> {
    let row = sqlx::query(&format!(
        "UPDATE users SET \
         email = CASE WHEN $1 = 1 THEN $2 ELSE email END, \
         password_hash = CASE WHEN $3 = 1 THEN $4 ELSE password_hash END, \
         role = CASE WHEN $5 = 1 THEN $6 ELSE role END, \
         group_name = CASE WHEN $7 = 1 THEN $8 ELSE group_name END, \
         account_version = CASE WHEN $9 = 1 AND status <> $10 THEN account_version + 1 ELSE account_version END, \
         status = CASE WHEN $9 = 1 THEN $10 ELSE status END, \
         max_keys = CASE WHEN $11 = 1 THEN $12 ELSE max_keys END, \
         max_key_quota_micros = CASE WHEN $13 = 1 THEN $14 ELSE max_key_quota_micros END, \
         low_balance_micros = CASE WHEN $15 = 1 THEN $16 ELSE low_balance_micros END, \
         budget_period = CASE WHEN $17 = 1 THEN $18 ELSE budget_period END, \
         budget_micros = CASE WHEN $19 = 1 THEN $20 ELSE budget_micros END, \
         updated_at = $21 WHERE id = $22 RETURNING {USER_COLUMNS}"
    ))
    .bind(flag(&change.email))
    .bind(change.email.clone().flatten())
    .bind(flag(&change.password_hash))
    .bind(change.password_hash.clone())
    .bind(flag(&change.role))
    .bind(change.role.map(Role::as_str))
    .bind(flag(&change.group))
    .bind(change.group.clone())
    .bind(flag(&change.status))
    .bind(change.status.clone().unwrap_or_default())
    .bind(flag(&change.max_keys))
    .bind(change.max_keys)
    .bind(flag(&change.max_key_quota_micros))
    .bind(change.max_key_quota_micros.flatten())
    .bind(flag(&change.low_balance_micros))
    .bind(change.low_balance_micros.flatten())
    .bind(flag(&change.budget_period))
    .bind(change.budget_period.clone())
    .bind(flag(&change.budget_micros))
    .bind(change.budget_micros.flatten())
    .bind(now)
    .bind(id)
    .fetch_optional(&db.pool)
    .await;
    match row {
        Err(err) if crate::db::is_unique_violation(&err) => {
            Err(ApiError::Conflict("that email is already taken".into()))
        }
        Err(err) => Err(err.into()),
        Ok(row) => row.as_ref().map(User::from_row).transpose(),
    }
}

/// Marks whether the user's low-balance alert has fired for the current
/// crossing; returns whether this call changed it (so one caller sends it).
pub async fn set_low_balance_alerted(db: &Db, id: &str, alerted: bool) -> ApiResult<bool> {
    let result =
        sqlx::query("UPDATE users SET low_balance_alerted = $1 WHERE id = $2 AND low_balance_alerted <> $1")
            .bind(i64::from(alerted))
            .bind(id)
            .execute(&db.pool)
            .await?;
    Ok(result.rows_affected() == 1)
}

// ---- groups ----

/// A user group with its price ratio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    pub price_ratio_ppm: u32,
    pub description: String,
    pub created_at: i64,
}

fn group_from_row(row: &AnyRow) -> ApiResult<Group> {
    Ok(Group {
        name: row.text("name")?,
        price_ratio_ppm: u32::try_from(row.int("price_ratio_ppm")?).unwrap_or(u32::MAX),
        description: row.text("description")?,
        created_at: row.int("created_at")?,
    })
}

pub async fn groups(conn: &mut AnyConnection) -> ApiResult<Vec<Group>> {
    let rows =
        sqlx::query("SELECT name, price_ratio_ppm, description, created_at FROM user_groups ORDER BY name")
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().map(group_from_row).collect()
}

pub async fn find_group(conn: &mut AnyConnection, name: &str) -> ApiResult<Option<Group>> {
    let row =
        sqlx::query("SELECT name, price_ratio_ppm, description, created_at FROM user_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    row.as_ref().map(group_from_row).transpose()
}

pub async fn insert_group(conn: &mut AnyConnection, group: &Group) -> ApiResult<()> {
    let result = sqlx::query(
        "INSERT INTO user_groups (name, price_ratio_ppm, description, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&group.name)
    .bind(i64::from(group.price_ratio_ppm))
    .bind(&group.description)
    .bind(group.created_at)
    .execute(&mut *conn)
    .await;
    match result {
        Err(err) if crate::db::is_unique_violation(&err) => {
            Err(ApiError::Conflict(format!("group `{}` already exists", group.name)))
        }
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

pub async fn update_group(
    conn: &mut AnyConnection,
    name: &str,
    ratio: Option<u32>,
    description: Option<&str>,
) -> ApiResult<bool> {
    let result = sqlx::query(
        "UPDATE user_groups SET price_ratio_ppm = CASE WHEN $1 = 1 THEN $2 ELSE price_ratio_ppm END, \
         description = CASE WHEN $3 = 1 THEN $4 ELSE description END WHERE name = $5",
    )
    .bind(i64::from(ratio.is_some()))
    .bind(i64::from(ratio.unwrap_or(0)))
    .bind(i64::from(description.is_some()))
    .bind(description.unwrap_or_default())
    .bind(name)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes an unused group; `Conflict` while users or keys are in it.
pub async fn delete_group(conn: &mut AnyConnection, name: &str) -> ApiResult<bool> {
    let users: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM users WHERE group_name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if users > 0 {
        return Err(ApiError::Conflict(format!("group `{name}` still has {users} user(s); move them first")));
    }
    let result =
        sqlx::query("DELETE FROM user_groups WHERE name = $1").bind(name).execute(&mut *conn).await?;
    Ok(result.rows_affected() == 1)
}

// ---- OIDC links and invitations ----

pub async fn find_oidc_link(db: &Db, provider: &str, subject: &str) -> ApiResult<Option<String>> {
    Ok(sqlx::query_scalar("SELECT user_id FROM oidc_links WHERE provider = $1 AND subject = $2")
        .bind(provider)
        .bind(subject)
        .fetch_optional(&db.pool)
        .await?)
}

pub async fn insert_oidc_link(
    db: &Db,
    provider: &str,
    subject: &str,
    user_id: &str,
    now: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO oidc_links (provider, subject, user_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (provider, subject) DO NOTHING",
    )
    .bind(provider)
    .bind(subject)
    .bind(user_id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The user's invitation code, created on first use.
pub async fn invitation_code(db: &Db, user_id: &str, fresh_code: &str, now: i64) -> ApiResult<String> {
    sqlx::query("INSERT INTO invitations (code, user_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING")
        .bind(fresh_code)
        .bind(user_id)
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(sqlx::query_scalar("SELECT code FROM invitations WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await?)
}

/// The user who owns an invitation code.
pub async fn inviter(db: &Db, code: &str) -> ApiResult<Option<String>> {
    Ok(sqlx::query_scalar("SELECT user_id FROM invitations WHERE code = $1")
        .bind(code)
        .fetch_optional(&db.pool)
        .await?)
}

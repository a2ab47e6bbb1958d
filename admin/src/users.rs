//! Users as admins manage them: create, list, view, change role, group,
//! status and limits. Only root manages admins (creates them, changes or
//! disables them, grants the admin role); nobody demotes or disables root.
//! Every change goes to the audit log with the user before and after.

use crate::audit;
use crate::auth::{Caller, Role};
use crate::db::ledger::{self, Balance};
use crate::db::users::{self, NewUser, User, UserChange};
use crate::db::{keys, sessions};
use crate::edge_sync::{push_account_if_configured, push_key_if_configured};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam};
use crate::key_issue::new_id;
use crate::keys::List;
use crate::passwords;
use crate::{now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

/// Default number of keys a user may hold.
pub const DEFAULT_MAX_KEYS: i64 = 20;

/// A user with their balance.
#[derive(Debug, Serialize)]
pub struct UserView {
    #[serde(flatten)]
    pub user: User,
    pub balance: Balance,
}

pub async fn view(state: &AppState, user: User) -> ApiResult<UserView> {
    let mut conn = state.db().pool.acquire().await?;
    let balance = ledger::balance(&mut conn, &user.id).await?;
    Ok(UserView { user, balance })
}

/// A username: 3 to 32 of `a-z 0-9 _ . -`, stored lower-case.
pub fn check_username(name: &str) -> ApiResult<String> {
    let name = name.trim().to_ascii_lowercase();
    let ok = (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(ApiError::bad_request("`username` must be 3 to 32 characters of a-z, 0-9, `_`, `.`, `-`"))
    }
}

/// An email address (loosely checked), stored lower-case.
pub fn check_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_ascii_lowercase();
    let ok = email.len() <= 200
        && email.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(ApiError::bad_request("`email` must be an email address"))
    }
}

fn non_negative(field: &str, v: Option<i64>) -> ApiResult<Option<i64>> {
    match v {
        Some(n) if n < 0 => Err(ApiError::bad_request(format!("`{field}` must not be negative"))),
        other => Ok(other),
    }
}

/// Whether `group` exists.
pub async fn check_group(state: &AppState, group: &str) -> ApiResult<String> {
    let group = validate::ident("group", group)?;
    let mut conn = state.db().pool.acquire().await?;
    users::find_group(&mut conn, &group)
        .await?
        .map(|g| g.name)
        .ok_or_else(|| ApiError::bad_request(format!("no group named `{group}`; create it first")))
}

/// `POST /api/users` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub max_keys: Option<i64>,
    #[serde(default)]
    pub max_key_quota_micros: Option<i64>,
    #[serde(default)]
    pub low_balance_micros: Option<i64>,
}

/// Refuses role changes the caller may not make.
fn check_role_grant(caller: &Caller, role: Role) -> ApiResult<()> {
    match role {
        Role::Root => {
            Err(ApiError::bad_request("there is exactly one root user; `role` may be `user` or `admin`"))
        }
        Role::Admin if caller.role != Role::Root => Err(ApiError::forbidden("only root manages admins")),
        _ => Ok(()),
    }
}

/// Refuses changes of a user the caller may not manage.
fn check_manage(caller: &Caller, target: &User) -> ApiResult<()> {
    if target.role >= Role::Admin && caller.role != Role::Root {
        return Err(ApiError::forbidden("only root manages admins"));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let role = body.role.unwrap_or(Role::User);
    check_role_grant(&caller, role)?;
    let username = check_username(&body.username)?;
    let email = body.email.as_deref().map(check_email).transpose()?;
    let password_hash = match body.password {
        Some(p) => {
            passwords::check_password(&p)?;
            Some(passwords::hash(p).await?)
        }
        None => None,
    };
    let group = check_group(&state, body.group.as_deref().unwrap_or("default")).await?;
    let new = NewUser {
        id: new_id("usr").map_err(ApiError::internal)?,
        username,
        email,
        password_hash,
        role,
        group,
        max_keys: non_negative("max_keys", body.max_keys)?.unwrap_or(DEFAULT_MAX_KEYS),
        max_key_quota_micros: non_negative("max_key_quota_micros", body.max_key_quota_micros)?,
        low_balance_micros: body.low_balance_micros,
        invited_by: None,
    };
    let mut tx = state.db().pool.begin().await?;
    users::insert(&mut tx, &new, now_secs()).await?;
    tx.commit().await?;
    let user = users::find(state.db(), &new.id).await?.ok_or_else(|| ApiError::internal("user vanished"))?;
    audit::record(&state, &caller, "user.create", ("user", &user.id), None::<&User>, Some(&user)).await?;
    tracing::info!(user = %user.id, role = role.as_str(), "user created");
    push_account_if_configured(&state, &user.id).await;
    Ok((StatusCode::CREATED, Json(view(&state, user).await?)))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<UserView>>> {
    let mut data = Vec::new();
    for user in users::all(state.db()).await? {
        data.push(view(&state, user).await?);
    }
    Ok(Json(List { data }))
}

pub async fn get_one(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<UserView>> {
    let user = users::find(state.db(), &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&state, user).await?))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no user with id `{id}`"))
}

/// `PATCH /api/users/{id}` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub email: Option<Option<String>>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub max_keys: Option<i64>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub max_key_quota_micros: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub low_balance_micros: Option<Option<i64>>,
    #[serde(default)]
    pub budget_period: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub budget_micros: Option<Option<i64>>,
}

/// Validates a change (fields a user may change of themselves included).
pub async fn validated_change(state: &AppState, body: UpdateUser) -> ApiResult<UserChange> {
    let password_hash = match body.password {
        Some(p) => {
            passwords::check_password(&p)?;
            Some(passwords::hash(p).await?)
        }
        None => None,
    };
    if let Some(status) = &body.status {
        if status != "active" && status != "disabled" {
            return Err(ApiError::bad_request("`status` must be `active` or `disabled`"));
        }
    }
    if let Some(period) = &body.budget_period {
        if !matches!(period.as_str(), "none" | "daily" | "monthly") {
            return Err(ApiError::bad_request("`budget_period` must be `none`, `daily` or `monthly`"));
        }
    }
    let group = match &body.group {
        Some(g) => Some(check_group(state, g).await?),
        None => None,
    };
    Ok(UserChange {
        email: body.email.map(|e| e.as_deref().map(check_email).transpose()).transpose()?,
        password_hash,
        role: body.role,
        group,
        status: body.status,
        max_keys: non_negative("max_keys", body.max_keys)?,
        max_key_quota_micros: body
            .max_key_quota_micros
            .map(|v| non_negative("max_key_quota_micros", v))
            .transpose()?,
        low_balance_micros: body.low_balance_micros,
        budget_period: body.budget_period,
        budget_micros: body.budget_micros.map(|v| non_negative("budget_micros", v)).transpose()?,
    })
}

/// Applies a validated change and its consequences: keys follow the user's
/// group, a status change reaches the edge's account, disabling or a new
/// password ends the user's sessions.
pub async fn apply(state: &AppState, before: &User, change: &UserChange) -> ApiResult<User> {
    let after = users::update(state.db(), &before.id, change, now_secs())
        .await?
        .ok_or_else(|| not_found(&before.id))?;
    if after.group != before.group {
        for key_id in keys::set_user_keys_group(state.db(), &after.id, &after.group, now_secs()).await? {
            push_key_if_configured(state, &key_id).await;
        }
    }
    if after.status != before.status {
        push_account_if_configured(state, &after.id).await;
    }
    if after.status != "active" || change.password_hash.is_some() {
        sessions::delete_user_sessions(state.db(), &after.id).await?;
    }
    if change.low_balance_micros.is_some() {
        crate::alerts::check_low_balance(state, &after.id).await;
    }
    Ok(after)
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    let before = users::find(state.db(), &id).await?.ok_or_else(|| not_found(&id))?;
    check_manage(&caller, &before)?;
    if let Some(role) = body.role {
        check_role_grant(&caller, role)?;
    }
    if before.role == Role::Root
        && (body.role.is_some_and(|r| r != Role::Root) || body.status.as_deref() == Some("disabled"))
    {
        return Err(ApiError::bad_request("the root user cannot be demoted or disabled"));
    }
    let change = validated_change(&state, body).await?;
    let after = apply(&state, &before, &change).await?;
    audit::record(&state, &caller, "user.update", ("user", &after.id), Some(&before), Some(&after)).await?;
    Ok(Json(view(&state, after).await?))
}

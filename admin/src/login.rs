//! Signing in and out, and signing up.
//!
//! `POST /api/auth/login` checks a username and password (argon2id) and sets
//! the session cookie; the response carries the session's CSRF token, which
//! the browser sends back in `x-csrf-token` on every unsafe request.
//! Failed logins are throttled per account and per client address
//! ([`MAX_FAILURES_PER_ACCOUNT`], [`MAX_FAILURES_PER_ADDRESS`] in
//! [`FAILURE_WINDOW_SECS`]), counted in the database so every replica sees
//! them; a throttled attempt is refused with 429 before its password is
//! checked, so throttling cannot be used to test passwords.
//!
//! Sign-up follows `SIGNUP_MODE`: `open`, `invite` (an existing user's
//! invitation code is required) or `closed`. A sign-up with a code credits
//! both the inviter and the new user (`INVITER_REWARD_MICROS`,
//! `INVITEE_REWARD_MICROS`).

use crate::auth::{self, Caller, Role, Via, SESSION_COOKIE};
use crate::balances::{self, Credit};
use crate::config::SignupMode;
use crate::db::ledger::EntryKind;
use crate::db::sessions;
use crate::db::users::{self, NewUser, User};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientAddr, JsonBody};
use crate::key_issue::new_id;
use crate::passwords;
use crate::users::{check_email, check_username, view, UserView, DEFAULT_MAX_KEYS};
use crate::{now_secs, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Failed logins of one account allowed per window.
pub const MAX_FAILURES_PER_ACCOUNT: i64 = 5;
/// Failed logins from one address allowed per window.
pub const MAX_FAILURES_PER_ADDRESS: i64 = 20;
/// The throttling window.
pub const FAILURE_WINDOW_SECS: i64 = 15 * 60;

/// `POST /api/auth/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// A signed-in session as the API shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub user: UserView,
    /// Send this in `x-csrf-token` on POST, PUT, PATCH and DELETE.
    pub csrf_token: String,
    pub expires_at: i64,
}

/// The client address: the TCP peer, or with `TRUST_FORWARDED_FOR` the last
/// `X-Forwarded-For` entry (the one the trusted proxy appended; earlier
/// entries are the client's to forge).
fn client_addr(state: &AppState, addr: ClientAddr, headers: &HeaderMap) -> String {
    if state.accounts().trust_forwarded_for {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back();
        if let Some(ip) = last.and_then(|a| a.trim().parse::<std::net::IpAddr>().ok()) {
            return ip.to_string();
        }
    }
    addr.0.map_or_else(|| "unknown".into(), |a| a.ip().to_string())
}

async fn throttled(state: &AppState, subject: &str, max: i64, now: i64) -> ApiResult<()> {
    let (count, oldest) = sessions::failures_since(state.db(), subject, now - FAILURE_WINDOW_SECS).await?;
    if count >= max {
        let retry = oldest.map_or(FAILURE_WINDOW_SECS, |o| (o + FAILURE_WINDOW_SECS - now).max(1));
        return Err(ApiError::TooManyRequests {
            message: "too many failed logins; try again later".into(),
            retry_after_secs: u64::try_from(retry).unwrap_or(60),
        });
    }
    Ok(())
}

/// Starts a session for `user`: its `Set-Cookie` value and its view.
pub async fn new_session(state: &AppState, user: User) -> ApiResult<(String, SessionView)> {
    let now = now_secs();
    let value = auth::new_secret()?;
    let csrf_token = auth::new_secret()?;
    let ttl = state.accounts().session_ttl_secs;
    sessions::insert_session(state.db(), &auth::hex_digest(&value), &user.id, &csrf_token, now, now + ttl)
        .await?;
    let cookie = auth::set_cookie(SESSION_COOKIE, &value, ttl, state.accounts().secure_cookies(), true);
    Ok((cookie, SessionView { user: view(state, user).await?, csrf_token, expires_at: now + ttl }))
}

/// Starts a session for `user` and returns the response setting its cookie.
pub async fn start_session(state: &AppState, user: User, status: StatusCode) -> ApiResult<Response> {
    let (cookie, body) = new_session(state, user).await?;
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    Ok(response)
}

/// `POST /api/auth/login`.
pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Login>,
) -> ApiResult<Response> {
    let now = now_secs();
    let username = body.username.trim().to_ascii_lowercase();
    let account_subject = format!("user:{username}");
    let address_subject = format!("addr:{}", client_addr(&state, addr, &headers));
    throttled(&state, &address_subject, MAX_FAILURES_PER_ADDRESS, now).await?;
    throttled(&state, &account_subject, MAX_FAILURES_PER_ACCOUNT, now).await?;
    let user = if username.is_empty() || username.len() > 64 {
        None
    } else {
        users::find_by_username(state.db(), &username).await?
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = passwords::verify(body.password, hash).await;
    match user {
        Some(user) if ok && user.is_active() => {
            sessions::clear_failures(state.db(), &account_subject).await?;
            tracing::info!(user = %user.id, "login");
            start_session(&state, user, StatusCode::OK).await
        }
        _ => {
            sessions::record_failure(state.db(), &[account_subject, address_subject], now).await?;
            tracing::warn!("failed login");
            Err(ApiError::Unauthorized)
        }
    }
}

/// `POST /api/auth/logout`: ends the caller's session (a token caller has none).
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    if let Via::Session { digest } = &caller.via {
        sessions::delete_session(state.db(), digest).await?;
    }
    let cookie = auth::set_cookie(SESSION_COOKIE, "", 0, state.accounts().secure_cookies(), true);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    Ok(response)
}

/// `GET /api/auth/session`: the caller and, for a browser session, its CSRF token.
pub async fn session(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let user = users::find(state.db(), &caller.user_id).await?.ok_or(ApiError::Unauthorized)?;
    let mut out = serde_json::json!({ "user": view(&state, user).await?, "via": "token" });
    if let Some(value) = auth::cookie(&headers, SESSION_COOKIE) {
        if let Some(s) = sessions::live_session(state.db(), &auth::hex_digest(value), now_secs()).await? {
            out["via"] = "session".into();
            out["csrf_token"] = s.csrf_token.into();
            out["expires_at"] = s.expires_at.into();
        }
    }
    Ok(Json(out))
}

/// `POST /api/auth/signup` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub email: Option<String>,
    /// An existing user's invitation code (required when `SIGNUP_MODE=invite`).
    #[serde(default)]
    pub invite_code: Option<String>,
}

/// Creates a self-registered user (role `user`, group `default`), crediting
/// inviter and invitee when an invitation code was used.
pub async fn register(
    state: &AppState,
    username: String,
    email: Option<String>,
    password_hash: Option<String>,
    invite_code: Option<&str>,
) -> ApiResult<User> {
    let mode = state.accounts().signup_mode;
    let inviter = match invite_code.map(str::trim).filter(|c| !c.is_empty()) {
        Some(code) => Some(
            users::inviter(state.db(), code)
                .await?
                .ok_or_else(|| ApiError::bad_request("unknown invitation code"))?,
        ),
        None if mode == SignupMode::Invite => {
            return Err(ApiError::forbidden("sign-up is by invitation: `invite_code` is required"))
        }
        None => None,
    };
    if mode == SignupMode::Closed {
        return Err(ApiError::forbidden("sign-up is closed; ask an admin for an account"));
    }
    let new = NewUser {
        id: new_id("usr").map_err(ApiError::internal)?,
        username,
        email,
        password_hash,
        role: Role::User,
        group: "default".into(),
        max_keys: DEFAULT_MAX_KEYS,
        max_key_quota_micros: None,
        low_balance_micros: None,
        invited_by: inviter.clone(),
    };
    let accounts = state.accounts().clone();
    let mut tx = state.db().pool.begin().await?;
    users::insert(&mut tx, &new, now_secs()).await?;
    if let Some(inviter) = &inviter {
        if accounts.invitee_reward_micros > 0 {
            balances::credit_in(
                &mut tx,
                &Credit {
                    user_id: &new.id,
                    kind: EntryKind::InviteReward,
                    amount_micros: accounts.invitee_reward_micros,
                    actor_id: None,
                    reason: "signed up with an invitation",
                    code_id: None,
                    at_ms: None,
                },
            )
            .await?;
        }
        if accounts.inviter_reward_micros > 0 {
            balances::credit_in(
                &mut tx,
                &Credit {
                    user_id: inviter,
                    kind: EntryKind::InviteReward,
                    amount_micros: accounts.inviter_reward_micros,
                    actor_id: None,
                    reason: "invited a new user",
                    code_id: None,
                    at_ms: None,
                },
            )
            .await?;
        }
    }
    tx.commit().await?;
    balances::after_credit(state, &new.id).await;
    if let Some(inviter) = &inviter {
        balances::after_credit(state, inviter).await;
    }
    tracing::info!(user = %new.id, invited = inviter.is_some(), "user signed up");
    users::find(state.db(), &new.id).await?.ok_or_else(|| ApiError::internal("user vanished"))
}

/// `POST /api/auth/signup`: creates the account and signs it in.
pub async fn signup(State(state): State<AppState>, JsonBody(body): JsonBody<Signup>) -> ApiResult<Response> {
    if state.accounts().signup_mode == SignupMode::Closed {
        return Err(ApiError::forbidden("sign-up is closed; ask an admin for an account"));
    }
    let username = check_username(&body.username)?;
    let email = body.email.as_deref().map(check_email).transpose()?;
    passwords::check_password(&body.password)?;
    let hash = passwords::hash(body.password).await?;
    let user = register(&state, username, email, Some(hash), body.invite_code.as_deref()).await?;
    start_session(&state, user, StatusCode::CREATED).await
}

//! Who is calling, and what they may do.
//!
//! Three credentials, resolved in this order by [`authorize`]:
//! 1. `Authorization: Bearer <ADMIN_TOKEN>`: the root user's bootstrap token
//!    (the root user is created on first start). Compared as SHA-256 digests
//!    in constant time, so neither contents nor lengths leak through timing.
//! 2. `Authorization: Bearer ewt_…`: an API token for scripts, stored as a digest.
//! 3. The `edgeway_session` cookie of a browser login (HttpOnly, SameSite=Lax,
//!    Secure when served over TLS). Because a browser attaches it on its own,
//!    every unsafe method (POST, PUT, PATCH, DELETE) must also carry the
//!    session's CSRF token in `x-csrf-token`; bearer requests need none.
//!
//! Every route declares an [`Access`] level in the route table; the
//! middleware refuses anonymous callers with 401 and callers below the level
//! with 403, before any handler runs. Handlers then scope every query to the
//! [`Caller`] (a user's own keys, usage and ledger; only root manages admins).

use crate::db::{sessions, users};
use crate::error::{ApiError, ApiResult};
use crate::key_issue::random_base62;
use crate::{now_secs, AppState};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "edgeway_session";
/// Header carrying the CSRF token of a cookie-authenticated request.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "ewt_";
/// Username of the bootstrapped root user.
pub const ROOT_USERNAME: &str = "root";

/// A user's role. Root ⊃ admin ⊃ user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
    Root,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Root => "root",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::User, Self::Admin, Self::Root].into_iter().find(|r| r.as_str() == text)
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, OpenAPI, login, sign-up).
    Public,
    /// The edge's HMAC signature, checked by the handler.
    Signed,
    /// Any signed-in user, acting on their own objects.
    User,
    /// Admins and root.
    Admin,
    /// Root only.
    Root,
}

impl Access {
    /// The least role allowed, for the signed-in levels.
    pub fn min_role(self) -> Option<Role> {
        match self {
            Self::Public | Self::Signed => None,
            Self::User => Some(Role::User),
            Self::Admin => Some(Role::Admin),
            Self::Root => Some(Role::Root),
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `ADMIN_TOKEN` or an API token.
    Token,
    /// A browser session (its cookie's digest).
    Session { digest: String },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub group: String,
    pub via: Via,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or(ApiError::Unauthorized)
    }
}

/// SHA-256 of a token, the form in which tokens and cookies are kept.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Hex SHA-256 of a secret value.
pub fn hex_digest(value: &str) -> String {
    token_digest(value).iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header.map(str::trim).and_then(|h| h.split_once(' '))?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether an `Authorization` header value carries the expected token.
pub fn bearer_matches(header: Option<&str>, expected_digest: &[u8; 32]) -> bool {
    bearer_token(header).is_some_and(|token| bool::from(token_digest(token).ct_eq(expected_digest)))
}

/// A cookie's value from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// `Set-Cookie` value of a cookie for the whole admin. HttpOnly and
/// SameSite=Lax always; Secure when the admin is served over TLS.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool, http_only: bool) -> String {
    let mut cookie = format!("{name}={value}; Path=/; Max-Age={max_age_secs}; SameSite=Lax");
    if http_only {
        cookie.push_str("; HttpOnly");
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

/// A new random secret (cookies, CSRF tokens, API tokens): 43 base62 characters (~256 bits).
pub fn new_secret() -> ApiResult<String> {
    random_base62(43).map_err(ApiError::internal)
}

/// The root user's id, creating the root user on first use.
pub async fn root_user_id(state: &AppState) -> ApiResult<String> {
    state
        .root_id()
        .get_or_try_init(|| async {
            if let Some(root) = users::find_root(state.db()).await? {
                return Ok(root.id);
            }
            let id = crate::key_issue::new_id("usr").map_err(ApiError::internal)?;
            let user = users::NewUser {
                id: id.clone(),
                username: ROOT_USERNAME.into(),
                email: None,
                password_hash: None,
                role: Role::Root,
                group: "default".into(),
                max_keys: 1000,
                max_key_quota_micros: None,
                low_balance_micros: None,
                invited_by: None,
            };
            let mut conn = state.db().pool.acquire().await?;
            match users::insert(&mut conn, &user, now_secs()).await {
                Ok(()) => {
                    tracing::info!(user = %id, "root user bootstrapped from ADMIN_TOKEN");
                    Ok(id)
                }
                // Another process created it meanwhile.
                Err(ApiError::Conflict(_)) => users::find_root(state.db())
                    .await?
                    .map(|u| u.id)
                    .ok_or_else(|| ApiError::internal("a user named root exists but is not root")),
                Err(err) => Err(err),
            }
        })
        .await
        .cloned()
}

/// Resolves the caller of a request from its credentials, or `None`.
async fn resolve(state: &AppState, headers: &HeaderMap, method: &Method) -> ApiResult<Option<Caller>> {
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let (user_id, via) = if let Some(token) = bearer_token(authorization) {
        if bool::from(token_digest(token).ct_eq(state.admin_token_digest())) {
            (root_user_id(state).await?, Via::Token)
        } else if token.starts_with(API_TOKEN_PREFIX) {
            match sessions::token_user(state.db(), &hex_digest(token)).await? {
                Some(user) => (user, Via::Token),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        }
    } else if let Some(value) = cookie(headers, SESSION_COOKIE) {
        let digest = hex_digest(value);
        let Some(session) = sessions::live_session(state.db(), &digest, now_secs()).await? else {
            return Ok(None);
        };
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            let ok: bool = token_digest(presented).ct_eq(&token_digest(&session.csrf_token)).into();
            if !ok {
                return Err(ApiError::forbidden(
                    "CSRF check failed: send the session's csrf_token in the x-csrf-token header",
                ));
            }
        }
        (session.user_id, Via::Session { digest })
    } else {
        return Ok(None);
    };
    let Some(user) = users::find(state.db(), &user_id).await? else { return Ok(None) };
    if !user.is_active() {
        return Ok(None);
    }
    Ok(Some(Caller { user_id: user.id, username: user.username, role: user.role, group: user.group, via }))
}

/// Route middleware: refuses callers below `access` (401 anonymous, 403 too
/// low a role) and hands the [`Caller`] to the handler.
pub async fn authorize(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(min_role) = access.min_role() else { return Ok(next.run(request).await) };
    let caller = resolve(&state, request.headers(), request.method()).await?.ok_or(ApiError::Unauthorized)?;
    if caller.role < min_role {
        return Err(ApiError::forbidden(format!("this needs the {} role", min_role.as_str())));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_matching() {
        let expected = token_digest("0123456789abcdef");
        assert!(bearer_matches(Some("Bearer 0123456789abcdef"), &expected));
        assert!(bearer_matches(Some("bearer  0123456789abcdef "), &expected));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdeF"), &expected));
        assert!(!bearer_matches(Some("Basic 0123456789abcdef"), &expected));
        assert!(!bearer_matches(Some("0123456789abcdef"), &expected));
        assert!(!bearer_matches(Some("Bearer "), &expected));
        assert!(!bearer_matches(None, &expected));
    }

    #[test]
    fn roles_order_and_cookies() {
        assert!(Role::Root > Role::Admin && Role::Admin > Role::User);
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; edgeway_session=abc ; b=2".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let c = set_cookie(SESSION_COOKIE, "v", 60, true, true);
        assert!(c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax"));
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false, true).contains("Secure"));
    }
}

//! Login through OAuth 2.0 / OpenID Connect: a generic OIDC provider found
//! by discovery (`OIDC_ISSUER`), and GitHub (OAuth, not OIDC). Both use the
//! authorization-code flow with PKCE (S256) and a one-time `state`.
//!
//! 1. `GET /api/auth/oidc/{id}/start` (or, to link a login to the signed-in
//!    user, `POST /api/me/oidc/{id}/link`) stores `{state digest, nonce, PKCE
//!    verifier}` for ten minutes, sets the `edgeway_oidc` cookie to the state
//!    and redirects to the provider.
//! 2. `GET /api/auth/oidc/{id}/callback?code&state`: the state must equal the
//!    cookie and is consumed (deleted) whatever happens next; the code is
//!    exchanged at the token endpoint. For OIDC the ID token's signature is
//!    checked against the provider's JWKS (asymmetric algorithms only, so the
//!    client secret can never be used as a key), and its `iss`, `aud`, `exp`
//!    and `nonce`; the profile comes from the userinfo endpoint (same `sub`).
//!    For GitHub the profile and verified emails come from its API.
//! 3. Account linking: an identity already linked signs in its user; a
//!    pending link attaches it to the user who asked; an identity whose
//!    provider-verified email matches a user's email is linked to that user;
//!    otherwise a new user is signed up, as `SIGNUP_MODE` allows.
//! 4. A session starts and the browser is sent to `ADMIN_PUBLIC_URL`.

use crate::auth::{self, Caller};
use crate::config::{LoginProvider, ProviderKind};
use crate::db::{sessions, users};
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParam, QueryParams};
use crate::key_issue::random_base62;
use crate::login::{new_session, register};
use crate::{now_secs, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Cookie holding the pending login's state.
pub const STATE_COOKIE: &str = "edgeway_oidc";
/// How long a pending login lasts.
pub const STATE_TTL_SECS: i64 = 600;

/// The endpoints of an OIDC provider, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
}

/// Who the provider says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// Only an email the provider verified.
    pub verified_email: Option<String>,
    pub username_hint: String,
}

fn provider<'a>(state: &'a AppState, id: &str) -> ApiResult<&'a LoginProvider> {
    state
        .accounts()
        .login_providers
        .iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no login provider `{id}` is configured")))
}

fn redirect_uri(state: &AppState, p: &LoginProvider) -> ApiResult<String> {
    let base =
        state.accounts().public_url.as_deref().ok_or_else(|| ApiError::internal("ADMIN_PUBLIC_URL unset"))?;
    Ok(format!("{base}/api/auth/oidc/{}/callback", p.id))
}

fn login_failed(detail: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%detail, "external login failed");
    ApiError::bad_request("the login could not be completed; start again")
}

/// The discovery document of an issuer (cached after the first fetch).
async fn discover(state: &AppState, issuer: &str) -> ApiResult<Discovery> {
    if let Some(d) = state.oidc_discovery().read().await.get(issuer) {
        return Ok(d.clone());
    }
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let doc: Discovery = state
        .http()
        .get(&url)
        .send()
        .await
        .map_err(login_failed)?
        .error_for_status()
        .map_err(login_failed)?
        .json()
        .await
        .map_err(login_failed)?;
    if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(login_failed("discovery document names another issuer"));
    }
    state.oidc_discovery().write().await.insert(issuer.to_string(), doc.clone());
    Ok(doc)
}

/// Starts a login: the provider's authorization URL and the state cookie.
async fn begin(
    state: &AppState,
    p: &LoginProvider,
    link_user_id: Option<String>,
) -> ApiResult<(String, String)> {
    let value = auth::new_secret()?;
    let nonce = auth::new_secret()?;
    let verifier = random_base62(64).map_err(ApiError::internal)?;
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let pending = sessions::OidcState {
        provider: p.id.clone(),
        nonce: nonce.clone(),
        code_verifier: verifier,
        link_user_id,
    };
    sessions::insert_oidc_state(state.db(), &auth::hex_digest(&value), &pending, now_secs() + STATE_TTL_SECS)
        .await?;
    let (endpoint, scopes) = match &p.kind {
        ProviderKind::Oidc { issuer, scopes } => {
            (discover(state, issuer).await?.authorization_endpoint, scopes.clone())
        }
        ProviderKind::GitHub { oauth_url, .. } => {
            (format!("{oauth_url}/login/oauth/authorize"), "read:user user:email".into())
        }
    };
    let mut url = reqwest::Url::parse(&endpoint).map_err(login_failed)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.client_id)
        .append_pair("redirect_uri", &redirect_uri(state, p)?)
        .append_pair("scope", &scopes)
        .append_pair("state", &value)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let cookie =
        auth::set_cookie(STATE_COOKIE, &value, STATE_TTL_SECS, state.accounts().secure_cookies(), true);
    Ok((url.to_string(), cookie))
}

fn header_value(text: &str) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(text).map_err(ApiError::internal)
}

/// `GET /api/auth/oidc/{id}/start`: redirects to the provider.
pub async fn start(State(state): State<AppState>, PathParam(id): PathParam<String>) -> ApiResult<Response> {
    let p = provider(&state, &id)?;
    let (url, cookie) = begin(&state, p, None).await?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, header_value(&url)?);
    response.headers_mut().insert(header::SET_COOKIE, header_value(&cookie)?);
    Ok(response)
}

/// `POST /api/me/oidc/{id}/link`: starts a login that links the identity to
/// the caller; the browser goes to `authorize_url`.
pub async fn link(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Response> {
    let p = provider(&state, &id)?;
    let (url, cookie) = begin(&state, p, Some(caller.user_id.clone())).await?;
    let mut response = Json(serde_json::json!({ "authorize_url": url })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, header_value(&cookie)?);
    Ok(response)
}

/// A configured provider, for login buttons.
#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    pub start_url: String,
}

/// `GET /api/auth/providers`.
pub async fn providers(State(state): State<AppState>) -> Json<crate::keys::List<ProviderView>> {
    let data = state
        .accounts()
        .login_providers
        .iter()
        .map(|p| ProviderView {
            id: p.id.clone(),
            name: p.name.clone(),
            start_url: format!("/api/auth/oidc/{}/start", p.id),
        })
        .collect();
    Json(crate::keys::List { data })
}

/// `?code&state` (or `?error`) of the callback.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub iss: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Verifies an ID token's signature (JWKS, asymmetric algorithms only),
/// issuer, audience, expiry and nonce; its subject.
async fn verify_id_token(
    state: &AppState,
    d: &Discovery,
    p: &LoginProvider,
    token: &str,
    nonce: &str,
) -> ApiResult<String> {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let head = decode_header(token).map_err(login_failed)?;
    let asymmetric = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    if !asymmetric.contains(&head.alg) {
        return Err(login_failed(format_args!("ID token signed with {:?}", head.alg)));
    }
    let jwks: JwkSet = state
        .http()
        .get(&d.jwks_uri)
        .send()
        .await
        .map_err(login_failed)?
        .error_for_status()
        .map_err(login_failed)?
        .json()
        .await
        .map_err(login_failed)?;
    let jwk = match &head.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| login_failed("no JWKS key for the ID token"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(login_failed)?;
    let mut validation = Validation::new(head.alg);
    validation.set_issuer(&[d.issuer.as_str()]);
    validation.set_audience(&[p.client_id.as_str()]);
    let claims = decode::<IdClaims>(token, &key, &validation).map_err(login_failed)?.claims;
    let ok: bool = claims.nonce.as_deref().unwrap_or("").as_bytes().ct_eq(nonce.as_bytes()).into();
    if !ok {
        return Err(login_failed("ID token nonce mismatch"));
    }
    Ok(claims.sub)
}

fn username_hint(preferred: Option<&str>, email: Option<&str>) -> String {
    let raw = preferred.or_else(|| email.and_then(|e| e.split('@').next())).unwrap_or("user");
    let mut name: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' })
        .take(24)
        .collect();
    while name.len() < 3 {
        name.push('0');
    }
    name
}

/// Exchanges the code and learns who the caller is.
async fn identify(
    state: &AppState,
    p: &LoginProvider,
    code: &str,
    pending: &sessions::OidcState,
) -> ApiResult<Identity> {
    let redirect = redirect_uri(state, p)?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("code_verifier", pending.code_verifier.as_str()),
    ];
    match &p.kind {
        ProviderKind::Oidc { issuer, .. } => {
            let d = discover(state, issuer).await?;
            let tokens: TokenResponse = state
                .http()
                .post(&d.token_endpoint)
                .basic_auth(&p.client_id, Some(&p.client_secret))
                .form(&form)
                .send()
                .await
                .map_err(login_failed)?
                .error_for_status()
                .map_err(login_failed)?
                .json()
                .await
                .map_err(login_failed)?;
            let id_token = tokens.id_token.ok_or_else(|| login_failed("no ID token"))?;
            let subject = verify_id_token(state, &d, p, &id_token, &pending.nonce).await?;
            let profile: Option<Profile> = match &d.userinfo_endpoint {
                Some(url) => Some(
                    state
                        .http()
                        .get(url)
                        .bearer_auth(&tokens.access_token)
                        .send()
                        .await
                        .map_err(login_failed)?
                        .error_for_status()
                        .map_err(login_failed)?
                        .json()
                        .await
                        .map_err(login_failed)?,
                ),
                None => None,
            };
            let profile = profile.filter(|pr| pr.sub == subject);
            let email = profile
                .as_ref()
                .filter(|pr| pr.email_verified == Some(true))
                .and_then(|pr| pr.email.clone())
                .map(|e| e.to_ascii_lowercase());
            let preferred =
                profile.as_ref().and_then(|pr| pr.preferred_username.clone().or_else(|| pr.name.clone()));
            Ok(Identity {
                username_hint: username_hint(preferred.as_deref(), email.as_deref()),
                verified_email: email,
                subject,
            })
        }
        ProviderKind::GitHub { oauth_url, api_url } => {
            let mut with_client = form.to_vec();
            with_client.push(("client_id", p.client_id.as_str()));
            with_client.push(("client_secret", p.client_secret.as_str()));
            let tokens: TokenResponse = state
                .http()
                .post(format!("{oauth_url}/login/oauth/access_token"))
                .header(header::ACCEPT, "application/json")
                .form(&with_client)
                .send()
                .await
                .map_err(login_failed)?
                .error_for_status()
                .map_err(login_failed)?
                .json()
                .await
                .map_err(login_failed)?;
            #[derive(Deserialize)]
            struct GhUser {
                id: u64,
                login: String,
            }
            #[derive(Deserialize)]
            struct GhEmail {
                email: String,
                primary: bool,
                verified: bool,
            }
            let get = |path: &str| {
                state
                    .http()
                    .get(format!("{api_url}{path}"))
                    .bearer_auth(&tokens.access_token)
                    .header(header::ACCEPT, "application/vnd.github+json")
                    .header(header::USER_AGENT, "edgeway-admin")
            };
            let user: GhUser = get("/user")
                .send()
                .await
                .map_err(login_failed)?
                .error_for_status()
                .map_err(login_failed)?
                .json()
                .await
                .map_err(login_failed)?;
            let emails: Vec<GhEmail> = match get("/user/emails").send().await {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                _ => Vec::new(),
            };
            let email = emails.iter().find(|e| e.primary && e.verified).map(|e| e.email.to_ascii_lowercase());
            Ok(Identity {
                subject: user.id.to_string(),
                username_hint: username_hint(Some(&user.login), None),
                verified_email: email,
            })
        }
    }
}

/// The user an identity signs in, linking or signing up as the rules say.
async fn resolve_user(
    state: &AppState,
    p: &LoginProvider,
    who: &Identity,
    link_to: Option<&str>,
) -> ApiResult<users::User> {
    let now = now_secs();
    if let Some(user_id) = users::find_oidc_link(state.db(), &p.id, &who.subject).await? {
        if link_to.is_some_and(|l| l != user_id) {
            return Err(ApiError::Conflict("this login is already linked to another user".into()));
        }
        return users::find(state.db(), &user_id).await?.ok_or(ApiError::Unauthorized);
    }
    if let Some(user_id) = link_to {
        users::insert_oidc_link(state.db(), &p.id, &who.subject, user_id, now).await?;
        tracing::info!(user = %user_id, provider = %p.id, "external login linked");
        return users::find(state.db(), user_id).await?.ok_or(ApiError::Unauthorized);
    }
    if let Some(email) = &who.verified_email {
        if let Some(user) = users::find_by_email(state.db(), email).await? {
            users::insert_oidc_link(state.db(), &p.id, &who.subject, &user.id, now).await?;
            tracing::info!(user = %user.id, provider = %p.id, "external login linked by verified email");
            return Ok(user);
        }
    }
    // A new user, if sign-up is open; the username gets a suffix if taken.
    let mut username = who.username_hint.clone();
    for attempt in 0..5 {
        match register(state, username.clone(), who.verified_email.clone(), None, None).await {
            Ok(user) => {
                users::insert_oidc_link(state.db(), &p.id, &who.subject, &user.id, now).await?;
                return Ok(user);
            }
            Err(ApiError::Conflict(_)) if attempt < 4 => {
                username = format!("{}-{}", who.username_hint, random_base62(4).map_err(ApiError::internal)?.to_ascii_lowercase());
            }
            Err(ApiError::Forbidden(_)) => {
                return Err(ApiError::forbidden(
                    "no account is linked to this login and sign-up is not open; sign in and link it from your profile",
                ))
            }
            Err(err) => return Err(err),
        }
    }
    Err(ApiError::Conflict("could not pick a free username".into()))
}

/// `GET /api/auth/oidc/{id}/callback`.
pub async fn callback(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<CallbackQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = provider(&state, &id)?;
    if let Some(error) = &q.error {
        return Err(login_failed(format_args!("provider returned error `{error}`")));
    }
    let (Some(code), Some(value)) = (q.code.as_deref(), q.state.as_deref()) else {
        return Err(ApiError::bad_request("the callback needs `code` and `state`"));
    };
    let cookie = auth::cookie(&headers, STATE_COOKIE).unwrap_or("");
    let same: bool = auth::token_digest(cookie).ct_eq(&auth::token_digest(value)).into();
    if !same {
        return Err(ApiError::bad_request("the login's state does not match this browser; start again"));
    }
    let pending = sessions::take_oidc_state(state.db(), &auth::hex_digest(value), now_secs())
        .await?
        .filter(|s| s.provider == p.id)
        .ok_or_else(|| ApiError::bad_request("this login has expired or was already used; start again"))?;
    if let (ProviderKind::Oidc { issuer, .. }, Some(iss)) = (&p.kind, &q.iss) {
        if iss.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(login_failed("callback `iss` is not the configured issuer"));
        }
    }
    let who = identify(&state, p, code, &pending).await?;
    let user = resolve_user(&state, p, &who, pending.link_user_id.as_deref()).await?;
    if !user.is_active() {
        return Err(ApiError::Unauthorized);
    }
    tracing::info!(user = %user.id, provider = %p.id, "external login");
    let (session_cookie, _) = new_session(&state, user).await?;
    let home = state.accounts().public_url.clone().unwrap_or_default();
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("{home}/"))?);
    h.append(header::SET_COOKIE, header_value(&session_cookie)?);
    h.append(
        header::SET_COOKIE,
        header_value(&auth::set_cookie(STATE_COOKIE, "", 0, state.accounts().secure_cookies(), true))?,
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::username_hint;

    #[test]
    fn usernames_from_profiles() {
        assert_eq!(username_hint(Some("Octo Cat"), None), "octo-cat");
        assert_eq!(username_hint(None, Some("Ann@example.com")), "ann");
        assert_eq!(username_hint(None, None), "user");
        assert_eq!(username_hint(Some("x"), None), "x00");
    }
}

//! # edgeway-admin
//!
//! The admin/billing service of the edgeway AI gateway: it issues client keys,
//! holds channels, models and prices, keeps the usage ledger, and pushes key
//! records and the routing configuration to the edge worker over a signed
//! internal API. It is an axum service over one `sqlx::Any` pool: SQLite by
//! default, Postgres when `DATABASE_URL` says so. It also serves the web
//! console ([`console`], a client of this same API) and Prometheus
//! `/metrics` with one log line per request ([`metrics`]).
//!
//! **Key design decision:** the database here is the source of truth and the
//! edge is a replica that is allowed to lag. Every change is committed first
//! and pushed second; a failed push is reported (`edge_synced: false`), never
//! rolled back, and a full sync (on demand and at start-up) converges the edge.
//! Pushes are serialised and each one re-reads the committed state, so the
//! last push to land always carries the newest state; key records and the
//! routing config also carry monotonic versions for the edge. Plaintext client
//! keys exist only in the one response that issues them; only SHA-256 digests
//! are stored.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod balances;
pub mod budgets;
pub mod channels;
pub mod codes;
pub mod config;
pub mod console;
pub mod db;
pub mod edge_sync;
pub mod error;
pub mod extract;
pub mod groups;
pub mod key_issue;
pub mod keys;
pub mod login;
pub mod mail;
pub mod me;
pub mod metrics;
pub mod metrics_edge;
pub mod oidc;
pub mod passwords;
pub mod request_policy;
pub mod usage;
pub mod usage_pull;
pub mod users;
pub mod validate;

use crate::auth::Access;
use crate::config::{AccountsConfig, Config};
use crate::db::Db;
use crate::edge_sync::EdgeClient;
use crate::error::ApiError;
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{extract::State, Json, Router};
use serde_json::json;
use std::sync::Arc;

/// The OpenAPI 3.1 document of this service, written by hand.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

struct Inner {
    db: Db,
    edge: Option<EdgeClient>,
    admin_token_digest: [u8; 32],
    internal_secret: Option<String>,
    accounts: AccountsConfig,
    /// The root user's id, once bootstrapped.
    root_id: tokio::sync::OnceCell<String>,
    /// Client of outgoing webhooks and login providers.
    http: reqwest::Client,
    /// Discovery documents of OIDC issuers, by issuer.
    oidc_discovery: tokio::sync::RwLock<std::collections::HashMap<String, oidc::Discovery>>,
    /// Held while reading state and pushing it to the edge, so pushes leave in
    /// commit order and the last one to land carries the newest state.
    push_lock: tokio::sync::Mutex<()>,
    /// The web console's state (the channel test's key).
    console: console::channel_test::ConsoleState,
    /// Who may scrape `/metrics`, and the request counters.
    metrics: metrics::Metrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("db", &self.db)
            .field("edge", &self.edge)
            .field("admin_token_digest", &"<redacted>")
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<redacted>"))
            .field("accounts", &self.accounts)
            .finish()
    }
}

impl AppState {
    /// State for `config` over an already migrated database.
    pub fn new(db: Db, config: &Config) -> Result<Self, reqwest::Error> {
        let edge = config.edge.clone().map(EdgeClient::new).transpose()?;
        Ok(Self(Arc::new(Inner {
            db,
            edge,
            admin_token_digest: auth::token_digest(&config.admin_token),
            internal_secret: config.internal_secret.clone(),
            accounts: config.accounts.clone(),
            root_id: tokio::sync::OnceCell::new(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            oidc_discovery: tokio::sync::RwLock::new(std::collections::HashMap::new()),
            push_lock: tokio::sync::Mutex::new(()),
            console: console::channel_test::ConsoleState { edge: config.edge.clone(), ..Default::default() },
            metrics: metrics::Metrics::new(config.observability.clone()),
        })))
    }

    pub fn db(&self) -> &Db {
        &self.0.db
    }

    pub fn edge(&self) -> Option<&EdgeClient> {
        self.0.edge.as_ref()
    }

    pub fn admin_token_digest(&self) -> &[u8; 32] {
        &self.0.admin_token_digest
    }

    pub fn internal_secret(&self) -> Option<&str> {
        self.0.internal_secret.as_deref()
    }

    pub fn accounts(&self) -> &AccountsConfig {
        &self.0.accounts
    }

    pub fn root_id(&self) -> &tokio::sync::OnceCell<String> {
        &self.0.root_id
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    pub fn oidc_discovery(&self) -> &tokio::sync::RwLock<std::collections::HashMap<String, oidc::Discovery>> {
        &self.0.oidc_discovery
    }

    pub fn console(&self) -> &console::channel_test::ConsoleState {
        &self.0.console
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    /// Serialises edge pushes (see [`edge_sync`]).
    pub async fn lock_pushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.push_lock.lock().await
    }
}

/// One route of the table: method, path, who may call it, handler.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub handler: MethodRouter<AppState>,
}

pub(crate) fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Route { method, path, access, handler: on(filter, handler) }
}

/// Every route, with its access level: the router is built from this table
/// and the authorization matrix test is generated from it, so a route
/// cannot exist without a declared access level and a test of it.
pub fn route_table() -> Vec<Route> {
    use Access::{Admin, Public, Signed, User};
    let (get, post, patch, delete) = (Method::GET, Method::POST, Method::PATCH, Method::DELETE);
    let mut routes = vec![
        route(get.clone(), "/health", Public, health),
        route(get.clone(), "/api/openapi.json", Public, openapi),
        // Authenticated by the internal HMAC signature instead.
        route(post.clone(), "/internal/usage", Signed, usage::ingest),
        // Signing in and up.
        route(post.clone(), "/api/auth/login", Public, login::login),
        route(post.clone(), "/api/auth/signup", Public, login::signup),
        route(post.clone(), "/api/auth/logout", User, login::logout),
        route(get.clone(), "/api/auth/session", User, login::session),
        route(get.clone(), "/api/auth/providers", Public, oidc::providers),
        route(get.clone(), "/api/auth/oidc/{id}/start", Public, oidc::start),
        route(get.clone(), "/api/auth/oidc/{id}/callback", Public, oidc::callback),
        route(post.clone(), "/api/me/oidc/{id}/link", User, oidc::link),
        // Self-service.
        route(get.clone(), "/api/me", User, me::profile),
        route(patch.clone(), "/api/me", User, me::update_profile),
        route(get.clone(), "/api/me/keys", User, me::my_keys),
        route(post.clone(), "/api/me/keys", User, me::create_key),
        route(delete.clone(), "/api/me/keys/{id}", User, me::revoke_key),
        route(Method::PUT, "/api/me/keys/{id}/budget", User, me::set_key_budget),
        route(get.clone(), "/api/me/usage", User, me::my_usage),
        route(get.clone(), "/api/me/usage/daily", User, me::my_daily),
        route(get.clone(), "/api/me/ledger", User, balances::my_ledger),
        route(post.clone(), "/api/me/redeem", User, balances::redeem),
        route(get.clone(), "/api/me/tokens", User, me::my_tokens),
        route(post.clone(), "/api/me/tokens", User, me::create_token),
        route(delete.clone(), "/api/me/tokens/{id}", User, me::revoke_token),
        route(get.clone(), "/api/me/invitation", User, me::invitation),
        route(get.clone(), "/api/me/models", User, me::my_models),
        // Administration.
        route(post.clone(), "/api/keys", Admin, keys::create),
        route(get.clone(), "/api/keys", Admin, keys::list),
        route(get.clone(), "/api/keys/{id}", Admin, keys::get_one),
        route(patch.clone(), "/api/keys/{id}", Admin, keys::update),
        route(delete.clone(), "/api/keys/{id}", Admin, keys::revoke),
        route(Method::PUT, "/api/keys/{id}/budget", Admin, keys::set_budget),
        route(post.clone(), "/api/channels", Admin, channels::create),
        route(get.clone(), "/api/channels", Admin, channels::list),
        route(patch.clone(), "/api/channels/{id}", Admin, channels::update),
        route(delete.clone(), "/api/channels/{id}", Admin, channels::remove),
        route(get.clone(), "/api/channels/{id}/health", Admin, channels::health),
        route(get.clone(), "/api/models", Admin, channels::list_models),
        route(post.clone(), "/api/sync", Admin, edge_sync::sync_handler),
        route(get.clone(), "/api/usage", Admin, usage::list),
        route(get.clone(), "/api/usage/summary", Admin, usage::summary),
        route(get.clone(), "/api/users", Admin, users::list),
        route(post.clone(), "/api/users", Admin, users::create),
        route(get.clone(), "/api/users/{id}", Admin, users::get_one),
        route(patch.clone(), "/api/users/{id}", Admin, users::update),
        route(get.clone(), "/api/users/{id}/ledger", Admin, balances::user_ledger),
        route(post.clone(), "/api/users/{id}/ledger", Admin, balances::admin_credit),
        route(get.clone(), "/api/users/{id}/edge-account", Admin, balances::edge_account),
        route(get.clone(), "/api/groups", Admin, groups::list),
        route(post.clone(), "/api/groups", Admin, groups::create),
        route(patch.clone(), "/api/groups/{id}", Admin, groups::update),
        route(delete.clone(), "/api/groups/{id}", Admin, groups::remove),
        route(get.clone(), "/api/policy", Admin, request_policy::get),
        route(Method::PUT, "/api/policy", Admin, request_policy::put),
        route(get.clone(), "/api/codes", Admin, codes::list),
        route(post.clone(), "/api/codes", Admin, codes::generate),
        route(patch, "/api/codes/{id}", Admin, codes::update),
        route(get, "/api/audit", Admin, audit::list),
    ];
    routes.extend(console::routes());
    routes
}

/// Every route path the router serves (tests check them against the OpenAPI document).
pub fn route_paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = route_table().into_iter().map(|r| r.path).collect();
    paths.dedup();
    paths
}

/// The whole HTTP application: the route table's API, plus two routes
/// outside it that are no API: the console's files (public, they hold no
/// data) and `/metrics` (its own scrape token or address allow-list, see
/// [`metrics`]).
pub async fn app(state: AppState) -> Router {
    route_table()
        .into_iter()
        .fold(Router::new(), |router, r| {
            let guard = axum::middleware::from_fn_with_state((state.clone(), r.access), auth::authorize);
            router.route(r.path, r.handler.route_layer(guard))
        })
        .merge(console::router())
        .route("/metrics", axum::routing::get(metrics::scrape))
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::log_request))
        .with_state(state)
}

/// `GET /health`: liveness plus a database round trip.
async fn health(State(state): State<AppState>) -> Response {
    let database = state.db().backend.name();
    match sqlx::query("SELECT 1").execute(&state.db().pool).await {
        Ok(_) => Json(json!({ "status": "ok", "database": database })).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "database": database })))
                .into_response()
        }
    }
}

/// `GET /api/openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// Current unix time in seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// Current unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

//! # edgeway-admin
//!
//! The admin/billing service of the edgeway AI gateway: it issues client keys,
//! holds channels, models and prices, keeps the usage ledger, and pushes key
//! records and the routing configuration to the edge worker over a signed
//! internal API. It is an axum service over one `sqlx::Any` pool: SQLite by
//! default, Postgres when `DATABASE_URL` says so.
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

pub mod auth;
pub mod channels;
pub mod config;
pub mod db;
pub mod edge_sync;
pub mod error;
pub mod extract;
pub mod key_issue;
pub mod keys;
pub mod usage;
pub mod usage_pull;
pub mod validate;

use crate::config::Config;
use crate::db::Db;
use crate::edge_sync::EdgeClient;
use crate::error::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
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
    /// Held while reading state and pushing it to the edge, so pushes leave in
    /// commit order and the last one to land carries the newest state.
    push_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("db", &self.db)
            .field("edge", &self.edge)
            .field("admin_token_digest", &"<redacted>")
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<redacted>"))
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
            push_lock: tokio::sync::Mutex::new(()),
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

    /// Serialises edge pushes (see [`edge_sync`]).
    pub async fn lock_pushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.push_lock.lock().await
    }
}

/// Routes that need no admin token.
fn public_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/health", get(health)),
        ("/api/openapi.json", get(openapi)),
        // Authenticated by the internal HMAC signature instead.
        ("/internal/usage", post(usage::ingest)),
    ]
}

/// Routes behind `Authorization: Bearer <ADMIN_TOKEN>`.
fn admin_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/api/keys", post(keys::create).get(keys::list)),
        ("/api/keys/{id}", get(keys::get_one).patch(keys::update).delete(keys::revoke)),
        ("/api/channels", post(channels::create).get(channels::list)),
        ("/api/channels/{id}", delete(channels::remove)),
        ("/api/models", get(channels::list_models)),
        ("/api/sync", post(edge_sync::sync_handler)),
        ("/api/usage", get(usage::list)),
        ("/api/usage/summary", get(usage::summary)),
    ]
}

/// Every route path the router serves (tests check them against the OpenAPI document).
pub fn route_paths() -> Vec<&'static str> {
    public_routes().into_iter().chain(admin_routes()).map(|(path, _)| path).collect()
}

/// The whole HTTP application.
pub async fn app(state: AppState) -> Router {
    let admin = admin_routes()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| router.route(path, route))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_admin));
    public_routes()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| router.route(path, route))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Logs method, matched path and status of each request (never bodies or headers).
async fn log_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
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

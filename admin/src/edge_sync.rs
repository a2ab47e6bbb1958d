//! Pushing state to the edge worker over its signed internal API.
//!
//! After each change the admin pushes the affected key record
//! (`PUT /internal/keys/{digest}`), the whole routing config
//! (`PUT /internal/routing`), or a user's account (`PUT
//! /internal/users/{id}/account`: cumulative credit, version, disabled; see
//! `docs/key-accounts.md` ("User balances")). Each request is signed with
//! [`edgeway_core::internal_auth::signed_headers`] over method, URL path and
//! query, timestamp, a fresh random nonce and the body; the edge refuses a
//! replayed nonce and a version that is not newer than the one it holds (409;
//! the same version with the same body is accepted again, so full syncs are
//! idempotent). A failed push never rolls back the change: the response says
//! `edge_synced: false`, and a full sync (`POST /api/sync`, and once at start-up
//! with retries) converges the edge.

use crate::config::EdgeTarget;
use crate::db::ledger::{self, EdgeAccount};
use crate::db::{keys, routing};
use crate::error::{ApiError, ApiResult};
use crate::{now_secs, AppState};
use axum::extract::State;
use axum::Json;
use edgeway_core::internal_auth::{signed_headers, SignedParts};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::routing::RoutingConfig;
use serde::Serialize;
use std::time::Duration;

/// Time limit of one push.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the start-up sync keeps retrying.
pub const STARTUP_SYNC_WINDOW: Duration = Duration::from_secs(60);

/// Why a push did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The edge could not be reached (refused, timed out, TLS).
    #[error("edge unreachable")]
    Unreachable,
    /// The edge answered with a non-success status.
    #[error("edge answered {0}")]
    Status(u16),
    /// The request could not be built (bad URL, unserializable body).
    #[error("push not built: {0}")]
    Build(String),
}

/// A client of the edge's internal API.
#[derive(Debug, Clone)]
pub struct EdgeClient {
    http: reqwest::Client,
    target: EdgeTarget,
}

impl EdgeClient {
    pub fn new(mut target: EdgeTarget) -> Result<Self, reqwest::Error> {
        target.url = target.url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(PUSH_TIMEOUT)
            .connect_timeout(PUSH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, target })
    }

    /// Signs and sends `{method} {EDGE_URL}{path}` (method, path, query,
    /// timestamp, a fresh nonce and the body are signed).
    async fn send_signed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, PushError> {
        let url = reqwest::Url::parse(&format!("{}{}", self.target.url, path))
            .map_err(|e| PushError::Build(e.to_string()))?;
        let nonce = crate::key_issue::random_base62(32).map_err(|e| PushError::Build(e.to_string()))?;
        // The signature covers the path and query the edge will see, prefix included.
        let parts = SignedParts {
            method: method.as_str(),
            path: url.path(),
            query: url.query().unwrap_or(""),
            timestamp: now_secs(),
            nonce: &nonce,
            body: &body,
        };
        let mut request = self.http.request(method.clone(), url.clone());
        if !body.is_empty() {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in signed_headers(&self.target.secret, &parts) {
            request = request.header(name, value);
        }
        request.body(body).send().await.map_err(|_| PushError::Unreachable)
    }

    /// Signs and sends `PUT {EDGE_URL}{path}` with a JSON body.
    async fn put_signed(&self, path: &str, body: Vec<u8>) -> Result<(), PushError> {
        let response = self.send_signed(reqwest::Method::PUT, path, body).await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(PushError::Status(status.as_u16()))
        }
    }

    /// Reads a user's account at the edge (`GET /internal/users/{id}/account`,
    /// signed with an empty body): credited, spent, reserved, available.
    pub async fn get_account(&self, user_id: &str) -> Result<serde_json::Value, PushError> {
        let path = format!("/internal/users/{user_id}/account");
        let response = self.send_signed(reqwest::Method::GET, &path, Vec::new()).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(PushError::Status(status.as_u16()));
        }
        response.json().await.map_err(|_| PushError::Status(status.as_u16()))
    }

    /// Reads the circuits of the edge isolate that answers (`GET /internal/health`).
    pub async fn get_health(&self) -> Result<serde_json::Value, PushError> {
        self.get_json("/internal/health").await
    }

    /// Reads the edge's D1 usage totals and dead-letter counts
    /// (`GET /internal/usage/stats?limit=1`).
    pub async fn get_usage_stats(&self) -> Result<serde_json::Value, PushError> {
        self.get_json("/internal/usage/stats?limit=1").await
    }

    /// Reads the counters of the edge isolate that answers (`GET /internal/counters`).
    pub async fn get_counters(
        &self,
    ) -> Result<edgeway_core::pipeline::counters::CountersSnapshot, PushError> {
        let value = self.get_json("/internal/counters").await?;
        serde_json::from_value(value).map_err(|e| PushError::Build(format!("unreadable counters: {e}")))
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, PushError> {
        let response = self.send_signed(reqwest::Method::GET, path, Vec::new()).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(PushError::Status(status.as_u16()));
        }
        response.json().await.map_err(|_| PushError::Status(status.as_u16()))
    }

    /// Pushes one key record.
    pub async fn push_key(&self, record: &KeyRecord) -> Result<(), PushError> {
        let body = serde_json::to_vec(record).map_err(|e| PushError::Build(e.to_string()))?;
        let result = self.put_signed(&format!("/internal/keys/{}", record.digest), body).await;
        if let Err(err) = &result {
            tracing::warn!(
                key = edgeway_core::api_key::digest_label(&record.digest),
                version = record.version,
                %err,
                "key record push failed"
            );
        }
        result
    }

    /// Pushes a user's account (cumulative credit; the edge keeps the spend).
    pub async fn push_account(&self, account: &EdgeAccount) -> Result<(), PushError> {
        let body = serde_json::to_vec(account).map_err(|e| PushError::Build(e.to_string()))?;
        let result = self.put_signed(&format!("/internal/users/{}/account", account.user_id), body).await;
        if let Err(err) = &result {
            tracing::warn!(user = %account.user_id, version = account.version, %err, "account push failed");
        }
        result
    }

    /// Pushes the whole routing configuration.
    pub async fn push_routing(&self, config: &RoutingConfig) -> Result<(), PushError> {
        let body = serde_json::to_vec(config).map_err(|e| PushError::Build(e.to_string()))?;
        let result = self.put_signed("/internal/routing", body).await;
        if let Err(err) = &result {
            tracing::warn!(version = config.version, %err, "routing config push failed");
        }
        result
    }
}

/// Pushes the committed record of key `id`, if an edge is configured;
/// whether it landed. The record is read under the push lock, so concurrent
/// changes of one key reach the edge in commit order.
pub async fn push_key_if_configured(state: &AppState, id: &str) -> bool {
    let Some(edge) = state.edge() else { return false };
    let _order = state.lock_pushes().await;
    match keys::find_key(state.db(), id).await {
        Ok(Some(key)) => edge.push_key(&key.to_record()).await.is_ok(),
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(%err, "key push skipped: could not read the key");
            false
        }
    }
}

/// Pushes the committed account of user `id`, if an edge is configured;
/// whether it landed. Read under the push lock, so the last push carries
/// the newest credit.
pub async fn push_account_if_configured(state: &AppState, user_id: &str) -> bool {
    let Some(edge) = state.edge() else { return false };
    let _order = state.lock_pushes().await;
    match ledger::edge_account(state.db(), user_id).await {
        Ok(Some(account)) => edge.push_account(&account).await.is_ok(),
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(%err, "account push skipped: could not read the account");
            false
        }
    }
}

/// Pushes the committed routing config, if an edge is configured; whether it
/// landed. Read under the push lock, so the last push carries the newest config.
pub async fn push_routing_if_configured(state: &AppState) -> bool {
    let Some(edge) = state.edge() else { return false };
    let _order = state.lock_pushes().await;
    match routing::load_routing_config_consistent(state.db()).await {
        Ok(config) => edge.push_routing(&config).await.is_ok(),
        Err(err) => {
            tracing::warn!(%err, "routing push skipped: could not read the config");
            false
        }
    }
}

/// Outcome of a full sync.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether everything landed.
    pub edge_synced: bool,
    pub keys_pushed: usize,
    pub keys_failed: usize,
    pub accounts_pushed: usize,
    pub accounts_failed: usize,
    pub routing_pushed: bool,
    pub routing_version: u64,
}

/// Pushes the routing config and every key record. Stops early when the edge
/// is unreachable, so a down edge costs one time-out, not one per key. A
/// routing config this admin never changed (version 0) is not pushed, so a
/// fresh admin does not wipe an edge configured by another.
pub async fn full_sync(state: &AppState, edge: &EdgeClient) -> ApiResult<SyncReport> {
    let _order = state.lock_pushes().await;
    let config = routing::load_routing_config_consistent(state.db()).await?;
    let routing = if config.version == 0 { Ok(()) } else { edge.push_routing(&config).await };
    let records = keys::all_key_records(state.db()).await?;
    let mut report = SyncReport {
        edge_synced: false,
        keys_pushed: 0,
        keys_failed: 0,
        accounts_pushed: 0,
        accounts_failed: 0,
        routing_pushed: routing.is_ok(),
        routing_version: config.version,
    };
    // The accounts of users with keys or credit (others have nothing to enforce).
    let user_ids = ledger::users_with_keys_or_entries(state.db()).await?;
    if routing == Err(PushError::Unreachable) {
        report.keys_failed = records.len();
        report.accounts_failed = user_ids.len();
        return Ok(report);
    }
    // Accounts before keys: a user's key must never reach an edge that does
    // not know the user's credit yet.
    for user_id in &user_ids {
        let Some(account) = ledger::edge_account(state.db(), user_id).await? else { continue };
        match edge.push_account(&account).await {
            Ok(()) => report.accounts_pushed += 1,
            Err(PushError::Unreachable) => {
                report.accounts_failed = user_ids.len() - report.accounts_pushed;
                report.keys_failed = records.len();
                return Ok(report);
            }
            Err(_) => report.accounts_failed += 1,
        }
    }
    for record in &records {
        match edge.push_key(record).await {
            Ok(()) => report.keys_pushed += 1,
            Err(PushError::Unreachable) => {
                report.keys_failed = records.len() - report.keys_pushed;
                return Ok(report);
            }
            Err(_) => report.keys_failed += 1,
        }
    }
    report.edge_synced = report.routing_pushed && report.keys_failed == 0 && report.accounts_failed == 0;
    Ok(report)
}

/// `POST /api/sync`: re-pushes every key record and the routing config.
pub async fn sync_handler(State(state): State<AppState>) -> ApiResult<Json<SyncReport>> {
    let edge = state
        .edge()
        .ok_or_else(|| ApiError::NotConfigured("edge sync is disabled: EDGE_URL is not set".into()))?;
    let report = full_sync(&state, edge).await?;
    if report.edge_synced {
        tracing::info!(keys = report.keys_pushed, routing_version = report.routing_version, "edge synced");
        Ok(Json(report))
    } else {
        Err(ApiError::EdgeSyncFailed(format!(
            "edge sync incomplete: routing config {}, {} of {} key records and {} of {} accounts pushed",
            if report.routing_pushed { "pushed" } else { "not pushed" },
            report.keys_pushed,
            report.keys_pushed + report.keys_failed,
            report.accounts_pushed,
            report.accounts_pushed + report.accounts_failed
        )))
    }
}

/// Runs a full sync in the background, retrying with exponential backoff
/// (1 s, 2 s, 4 s, … capped at 15 s) for up to [`STARTUP_SYNC_WINDOW`].
pub fn spawn_startup_sync(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let edge = state.edge()?.clone();
    Some(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            match full_sync(&state, &edge).await {
                Ok(report) if report.edge_synced => {
                    tracing::info!(keys = report.keys_pushed, "start-up edge sync complete");
                    return;
                }
                Ok(report) => tracing::warn!(
                    keys_pushed = report.keys_pushed,
                    keys_failed = report.keys_failed,
                    routing_pushed = report.routing_pushed,
                    "start-up edge sync incomplete; retrying"
                ),
                Err(err) => tracing::warn!(%err, "start-up edge sync could not read the database; retrying"),
            }
            if started.elapsed() + delay > STARTUP_SYNC_WINDOW {
                tracing::error!("start-up edge sync gave up; run POST /api/sync once the edge is up");
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(15));
        }
    }))
}

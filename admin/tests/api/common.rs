//! Test harness: a fresh database per test (a temporary SQLite file, or a
//! fresh schema in the Postgres server at `TEST_POSTGRES_URL`), the app driven with `oneshot`, and a
//! fake edge worker on 127.0.0.1 that checks every signed push.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::routing::put;
use axum::Router;
use edgeway_admin::config::{AccountsConfig, Config, EdgeTarget};
use edgeway_admin::db::{Backend, Db};
use edgeway_admin::{app, now_secs, AppState};
use edgeway_core::internal_auth::{
    precheck, signed_headers, verify, SignedParts, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const SECRET: &str = "test-edge-secret-0123456789";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// `TEST_POSTGRES_URL`, if set.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_URL").ok().filter(|u| !u.trim().is_empty())
}

/// Runs a test body against SQLite and against Postgres. The Postgres
/// variant needs `TEST_POSTGRES_URL` (`scripts/test` starts a throwaway
/// server and sets it) and fails without it: a skipped database is not a pass.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::DbKind::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                assert!(
                    $crate::common::postgres_url().is_some(),
                    "TEST_POSTGRES_URL is not set: run `scripts/test`, which starts a throwaway Postgres, \
                     or point it at a server of your own"
                );
                super::$name($crate::common::DbKind::Postgres).await;
            }
        }
    };
}

/// One app over its own fresh database.
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    /// Keeps the SQLite directory alive for the test's duration.
    pub _dir: Option<tempfile::TempDir>,
    pub sqlite_path: Option<std::path::PathBuf>,
}

/// Options of a test app.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub edge_url: Option<String>,
    /// Leave `EDGE_ADMIN_SECRET` unset (usage ingest disabled).
    pub no_secret: bool,
    /// Sign pushes with this secret instead of [`SECRET`].
    pub edge_secret: Option<String>,
    /// Sign-up, sessions, rewards and alerts.
    pub accounts: Option<AccountsConfig>,
    /// `/metrics` access (default: loopback only, no token).
    pub observability: Option<edgeway_admin::config::ObservabilityConfig>,
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TestApp {
    pub async fn new(db: DbKind, options: Options) -> Self {
        let config = Config {
            database_url: String::new(),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_token: TOKEN.to_string(),
            edge: options.edge_url.map(|url| EdgeTarget {
                url,
                secret: options.edge_secret.clone().unwrap_or_else(|| SECRET.to_string()),
            }),
            internal_secret: (!options.no_secret).then(|| SECRET.to_string()),
            usage_source: Default::default(),
            accounts: options.accounts.clone().unwrap_or_default(),
            observability: options.observability.clone().unwrap_or_default(),
        };
        let (database, dir, sqlite_path) = match db {
            DbKind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("nested/admin.sqlite");
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (Db::connect(&url).await.unwrap(), Some(dir), Some(path))
            }
            DbKind::Postgres => (fresh_postgres_schema().await, None, None),
        };
        let state = AppState::new(database, &config).unwrap();
        let router = app(state.clone()).await;
        Self { router, state, _dir: dir, sqlite_path }
    }

    pub async fn sqlite() -> Self {
        Self::new(DbKind::Sqlite, Options::default()).await
    }

    /// Sends a request with the admin token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(method, path, body, Some(TOKEN)).await
    }

    /// Sends a request with the given token (or none).
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        self.send(request).await
    }

    /// Sends a raw request.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, value)
    }

    /// Posts a usage batch signed like the edge's queue consumer (a fresh nonce).
    pub async fn ingest(&self, body: &[u8], secret: &str, timestamp: i64) -> (StatusCode, Value) {
        let nonce = format!("n{}", random_suffix());
        self.ingest_signed(body, secret, timestamp, &nonce, "/internal/usage").await
    }

    /// Posts a usage batch to `uri`, signed for `/internal/usage` with `nonce`.
    pub async fn ingest_signed(
        &self,
        body: &[u8],
        secret: &str,
        timestamp: i64,
        nonce: &str,
        uri: &str,
    ) -> (StatusCode, Value) {
        let parts =
            SignedParts { method: "POST", path: "/internal/usage", query: "", timestamp, nonce, body };
        let mut request =
            Request::builder().method(Method::POST).uri(uri).header("content-type", "application/json");
        for (name, value) in signed_headers(secret, &parts) {
            request = request.header(name, value);
        }
        self.send(request.body(Body::from(body.to_vec())).unwrap()).await
    }

    /// Everything the database holds, as text: the raw SQLite files, or every
    /// Postgres row rendered as text.
    pub async fn dump(&self) -> String {
        match &self.sqlite_path {
            Some(path) => {
                let mut out = String::new();
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
                    if let Ok(bytes) = std::fs::read(&file) {
                        out.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                out
            }
            None => {
                let pool = &self.state.db().pool;
                let mut out = String::new();
                for query in [
                    "SELECT CAST(t AS TEXT) FROM users t",
                    "SELECT CAST(t AS TEXT) FROM sessions t",
                    "SELECT CAST(t AS TEXT) FROM api_tokens t",
                    "SELECT CAST(t AS TEXT) FROM redemption_codes t",
                    "SELECT CAST(t AS TEXT) FROM balance_ledger t",
                    "SELECT CAST(t AS TEXT) FROM api_keys t",
                    "SELECT CAST(t AS TEXT) FROM channels t",
                    "SELECT CAST(t AS TEXT) FROM models t",
                    "SELECT CAST(t AS TEXT) FROM model_targets t",
                    "SELECT CAST(t AS TEXT) FROM usage_ledger t",
                    "SELECT CAST(t AS TEXT) FROM routing_state t",
                ] {
                    let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(pool).await.unwrap();
                    out.push_str(&rows.join("\n"));
                    out.push('\n');
                }
                out
            }
        }
    }
}

/// A pool whose connections use a new, empty schema of `TEST_POSTGRES_URL`.
async fn fresh_postgres_schema() -> Db {
    sqlx::any::install_default_drivers();
    let base = postgres_url().unwrap();
    let schema = format!("edgeway_test_{}", random_suffix());
    let admin = AnyPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    // Test-only DDL: the schema name is generated above, never user input.
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let pool = AnyPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    let db = Db::from_pool(pool, Backend::Postgres);
    db.migrate().await.unwrap();
    db
}

/// One push the fake edge received.
#[derive(Debug, Clone)]
pub struct Push {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the signature verified with [`SECRET`].
    pub verified: bool,
}

/// A fake edge worker on 127.0.0.1 recording signed pushes.
pub struct FakeEdge {
    pub addr: SocketAddr,
    pub pushes: Arc<Mutex<Vec<Push>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEdge {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Serves on a given address (to bring a "down" edge up).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let router =
            Router::new().route("/internal/{*rest}", put(record).get(account)).with_state(pushes.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, pushes, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().unwrap().clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn record(
    State(pushes): State<Arc<Mutex<Vec<Push>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = precheck(
        Some(SECRET),
        header(TIMESTAMP_HEADER),
        header(NONCE_HEADER),
        header(SIGNATURE_HEADER),
        now_secs(),
    )
    .and_then(|pre| verify(Some(SECRET), &pre, method.as_str(), uri.path(), uri.query().unwrap_or(""), &body))
    .is_ok();
    pushes.lock().unwrap().push(Push { method, path: uri.path().to_string(), body: body.to_vec(), verified });
    if verified {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// `GET /internal/users/{id}/account` of the fake edge: the last account
/// pushed for that path, with no spend (the fake edge serves no traffic).
async fn account(
    State(pushes): State<Arc<Mutex<Vec<Push>>>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, StatusCode> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    precheck(
        Some(SECRET),
        header(TIMESTAMP_HEADER),
        header(NONCE_HEADER),
        header(SIGNATURE_HEADER),
        now_secs(),
    )
    .and_then(|pre| verify(Some(SECRET), &pre, "GET", uri.path(), uri.query().unwrap_or(""), b""))
    .map_err(|_| StatusCode::UNAUTHORIZED)?;
    let pushes = pushes.lock().unwrap();
    let last = pushes.iter().rev().find(|p| p.path == uri.path()).ok_or(StatusCode::NOT_FOUND)?;
    let pushed: Value = serde_json::from_slice(&last.body).unwrap();
    let credited = pushed["credited_micros"].as_i64().unwrap();
    Ok(axum::Json(serde_json::json!({
        "user_id": pushed["user_id"], "credited_micros": credited, "spent_micros": 0,
        "reserved_micros": 0, "available_micros": credited, "version": pushed["version"],
    })))
}

/// An address on which nothing listens (connections are refused).
pub async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A user made for a test, with an API token acting as them.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
}

impl TestApp {
    /// Creates a user through the admin API (as root) and an API token for them.
    pub async fn user(&self, username: &str, role: &str) -> TestUser {
        self.user_with(username, serde_json::json!({ "role": role })).await
    }

    /// Creates a user with extra fields (merged into the create body).
    pub async fn user_with(&self, username: &str, extra: Value) -> TestUser {
        let mut body = serde_json::json!({ "username": username });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let (status, created) = self.call(Method::POST, "/api/users", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let token = self.token_for(&id).await;
        TestUser { id, token }
    }

    /// An API token for an existing user, made directly in the database.
    pub async fn token_for(&self, user_id: &str) -> String {
        let token = format!("ewt_{}", random_suffix());
        edgeway_admin::db::sessions::insert_token(
            self.state.db(),
            &format!("tok_{}", random_suffix()),
            user_id,
            "test",
            &edgeway_admin::auth::hex_digest(&token),
            &token[..10],
            now_secs(),
        )
        .await
        .unwrap();
        token
    }

    /// Credits a user as root.
    pub async fn top_up(&self, user_id: &str, amount: i64) {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/api/users/{user_id}/ledger"),
                Some(serde_json::json!({"kind": "topup", "amount_micros": amount, "reason": "test"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// A response with its headers.
pub struct Full {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestApp {
    /// Sends a raw request and keeps the headers and the raw text.
    pub async fn send_full(&self, request: Request<Body>) -> Full {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Full { status, headers, body, text }
    }
}

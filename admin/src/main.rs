//! `edgeway-admin`: reads the configuration from the environment, migrates
//! the database, starts the background edge sync and serves the admin API.

use edgeway_admin::config::{redact_url, Config, UsageSource};
use edgeway_admin::db::Db;
use edgeway_admin::{app, budgets, edge_sync, usage_pull, AppState};
use std::net::SocketAddr;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // LOG_FORMAT is read before the rest of the configuration so that a
    // configuration error is itself logged in the chosen format.
    let json_logs = std::env::var("LOG_FORMAT").is_ok_and(|v| v.trim().eq_ignore_ascii_case("json"));
    init_tracing(json_logs);
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let db = Db::connect(&config.database_url)
        .await
        .map_err(|e| format!("database {}: {e}", redact_url(&config.database_url)))?;
    tracing::info!(database = db.backend.name(), url = %redact_url(&config.database_url), "database ready");
    let state = AppState::new(db, &config).map_err(|e| format!("edge client: {e}"))?;
    // Root is bootstrapped from ADMIN_TOKEN on first start.
    edgeway_admin::auth::root_user_id(&state).await.map_err(|e| format!("root user: {e}"))?;
    budgets::spawn(state.clone());
    match state.edge() {
        Some(_) => {
            edge_sync::spawn_startup_sync(state.clone());
        }
        None => tracing::warn!("EDGE_URL is not set: changes are stored but not pushed to an edge"),
    }
    if state.internal_secret().is_none() {
        tracing::warn!("EDGE_ADMIN_SECRET is not set: POST /internal/usage is disabled");
    }
    if let UsageSource::Pull(pull) = &config.usage_source {
        tracing::info!(queue = %pull.queue_id, "usage source: pulling from the queue's HTTP pull consumer");
        usage_pull::spawn(state.clone(), pull.clone()).map_err(|e| format!("pull consumer: {e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, "edgeway-admin listening");
    // Connect info gives the login throttle the client's address.
    axum::serve(listener, app(state).await.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))
}

/// Log level from `RUST_LOG` when it is a plain level name, else `info`;
/// with `LOG_FORMAT=json` one JSON object per line (fields flattened:
/// `{"timestamp","level","message","method","route",...}`).
fn init_tracing(json: bool) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false);
    if json {
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
    } else {
        builder.with_ansi(std::io::stdout().is_terminal()).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

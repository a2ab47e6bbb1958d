//! Names of the bindings declared in `wrangler.toml`, and typed access to them.
//! `MAX_BODY_BYTES` and `UPSTREAM_TIMEOUT_MS` (optional vars) are read by the
//! JS shell (`js/entry.mjs`) and handed to [`crate::driver::configure`].

use worker::Env;

/// KV namespace with key records (`key:<digest>`) and config (`config:routing`).
pub const KV: &str = "EDGEWAY_KV";
/// Durable Object namespace of per-key accounts.
pub const KEY_ACCOUNT: &str = "KEY_ACCOUNT";
/// Durable Object namespace of per-user accounts (balances).
pub const USER_ACCOUNT: &str = "USER_ACCOUNT";
/// Durable Object namespace of the internal API's guard (one object: nonces, versions).
pub const INTERNAL_GUARD: &str = "INTERNAL_GUARD";
/// Durable Object namespace of per-key conversation stores (signature
/// vault, stored Responses).
pub const CONVERSATION_STORE: &str = "CONVERSATION_STORE";
/// Durable Object namespace of per-channel health records (shared circuits,
/// health checks).
pub const CHANNEL_HEALTH: &str = "CHANNEL_HEALTH";
/// D1 database with usage rows.
pub const USAGE_DB: &str = "USAGE_DB";
/// Queue carrying usage events.
pub const USAGE_QUEUE: &str = "USAGE_QUEUE";
/// Secret shared with the admin service for the internal API.
pub const EDGE_ADMIN_SECRET: &str = "EDGE_ADMIN_SECRET";
/// Optional: the admin's usage ingest (`https://admin.example.com` or the full
/// `…/internal/usage` URL); when set, the queue consumer posts every batch
/// there after D1, and acknowledges only when both took it.
pub const ADMIN_INGEST_URL: &str = "ADMIN_INGEST_URL";
/// Optional: seconds before a usage batch the admin or D1 refused is
/// delivered again (default 30).
pub const USAGE_RETRY_DELAY_SECS: &str = "USAGE_RETRY_DELAY_SECS";
/// Optional: origins that may call the public API from a browser (`*` =
/// any, the default; `none`; or a comma-separated list). `/internal/*` never.
pub const CORS_ALLOW_ORIGINS: &str = "CORS_ALLOW_ORIGINS";
/// Optional, for tests: length of the RPM/TPM windows in ms (default 60000).
pub const RATE_WINDOW_MS: &str = "RATE_WINDOW_MS";

/// A plain-text var or secret, if set and non-empty.
pub fn text(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
}

/// A numeric var, or `default`.
pub fn number(env: &Env, name: &str, default: u64) -> u64 {
    text(env, name).and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

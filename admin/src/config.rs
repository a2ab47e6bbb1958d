//! Configuration from environment variables, checked before anything starts.
//! A missing or weak secret refuses start-up instead of running half-secured.

use edgeway_core::internal_auth::MIN_SECRET_LEN;
use std::fmt;
use std::net::SocketAddr;

/// Default database: a SQLite file under `.dev/`, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.dev/admin.sqlite?mode=rwc";
/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8788";
/// Shortest accepted `ADMIN_TOKEN`.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Where and how to push to the edge worker.
#[derive(Clone)]
pub struct EdgeTarget {
    /// Base URL of the worker, without a trailing slash (`http://127.0.0.1:8787`).
    pub url: String,
    /// HMAC secret shared with the worker (`EDGE_ADMIN_SECRET`).
    pub secret: String,
}

impl fmt::Debug for EdgeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeTarget").field("url", &self.url).field("secret", &"<redacted>").finish()
    }
}

/// Default Cloudflare API base of the pull consumer.
pub const DEFAULT_CF_API_BASE: &str = "https://api.cloudflare.com/client/v4";

/// Where the usage ledger's events come from (`USAGE_SOURCE`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UsageSource {
    /// The edge's queue consumer posts them to `POST /internal/usage` (default).
    #[default]
    Push,
    /// This service pulls them from the usage queue over Cloudflare's HTTP
    /// pull-consumer API (the queue then has no Worker consumer).
    Pull(PullConfig),
}

/// The queue the pull consumer reads (`USAGE_SOURCE=pull`).
#[derive(Clone, PartialEq, Eq)]
pub struct PullConfig {
    /// `CF_API_BASE` (tests point it at a fake), without a trailing slash.
    pub api_base: String,
    /// `CF_ACCOUNT_ID`.
    pub account_id: String,
    /// `CF_QUEUE_ID` (the queue's id, not its name).
    pub queue_id: String,
    /// `CF_API_TOKEN`: an API token with Queues Edit permission.
    pub api_token: String,
    /// `USAGE_PULL_BATCH_SIZE`: messages per pull, 1–100 (default 100).
    pub batch_size: u32,
    /// `USAGE_PULL_VISIBILITY_MS`: how long a pulled message stays leased to
    /// this consumer before the queue offers it again (default 60000).
    pub visibility_timeout_ms: u64,
    /// `USAGE_PULL_IDLE_MS`: wait after an empty pull (default 1000).
    pub idle_ms: u64,
    /// `USAGE_PULL_RETRY_DELAY_SECS`: delay of messages handed back for a
    /// retry (default 30).
    pub retry_delay_secs: u32,
}

impl fmt::Debug for PullConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullConfig")
            .field("api_base", &self.api_base)
            .field("account_id", &self.account_id)
            .field("queue_id", &self.queue_id)
            .field("api_token", &"<redacted>")
            .field("batch_size", &self.batch_size)
            .field("visibility_timeout_ms", &self.visibility_timeout_ms)
            .field("idle_ms", &self.idle_ms)
            .field("retry_delay_secs", &self.retry_delay_secs)
            .finish()
    }
}

/// Who may create an account (`SIGNUP_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupMode {
    /// Anyone may sign up.
    Open,
    /// Only with an existing user's invitation code.
    Invite,
    /// Only admins create users (default).
    #[default]
    Closed,
}

/// Where low-balance alerts go.
#[derive(Clone, Default)]
pub struct AlertConfig {
    /// `LOW_BALANCE_WEBHOOK_URL`: POSTed a signed JSON alert.
    pub webhook_url: Option<String>,
    /// `WEBHOOK_SECRET`: HMAC-SHA256 key of `x-edgeway-signature` (required with a URL).
    pub webhook_secret: Option<String>,
    /// `SMTP_URL` (`smtp://user:pass@host:587`, `smtps://…`, `smtp://host:25?tls=none`).
    pub smtp_url: Option<String>,
    /// `SMTP_FROM`: the sender address (required with `SMTP_URL`).
    pub smtp_from: Option<String>,
}

impl fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertConfig")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<redacted>"))
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("smtp_from", &self.smtp_from)
            .finish()
    }
}

/// What kind of login provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// Generic OpenID Connect, endpoints found by discovery at `issuer`.
    Oidc { issuer: String, scopes: String },
    /// GitHub's OAuth apps (not OIDC): `oauth_url` (github.com) and `api_url` (api.github.com).
    GitHub { oauth_url: String, api_url: String },
}

/// A configured external login.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginProvider {
    /// `oidc` or `github`: the `{id}` in `/api/auth/oidc/{id}/…`.
    pub id: String,
    /// Shown on a login button.
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for LoginProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginProvider")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Accounts: sign-up, sessions, invitation rewards, alerts.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// `SIGNUP_MODE`: `open`, `invite` or `closed` (default).
    pub signup_mode: SignupMode,
    /// `ADMIN_PUBLIC_URL`: the URL browsers reach this service at; an
    /// `https://` URL makes cookies `Secure`.
    pub public_url: Option<String>,
    /// `SESSION_TTL_SECS`: lifetime of a browser session (default 7 days).
    pub session_ttl_secs: i64,
    /// `INVITER_REWARD_MICROS`: credited to the inviter per sign-up with their code.
    pub inviter_reward_micros: i64,
    /// `INVITEE_REWARD_MICROS`: credited to the new user who signed up with a code.
    pub invitee_reward_micros: i64,
    /// Low-balance alerts.
    pub alerts: AlertConfig,
    /// External logins (OIDC, GitHub).
    pub login_providers: Vec<LoginProvider>,
    /// `TRUST_FORWARDED_FOR`: behind a reverse proxy, take the client address
    /// (for login throttling) from the last `X-Forwarded-For` entry, the one
    /// the proxy appended, instead of the TCP peer.
    pub trust_forwarded_for: bool,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            signup_mode: SignupMode::Closed,
            public_url: None,
            session_ttl_secs: 7 * 86_400,
            inviter_reward_micros: 0,
            invitee_reward_micros: 0,
            alerts: AlertConfig::default(),
            login_providers: Vec::new(),
            trust_forwarded_for: false,
        }
    }
}

impl AccountsConfig {
    /// Whether cookies get the `Secure` attribute.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
    }
}

/// The service configuration.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: `sqlite:…` or `postgres://…`.
    pub database_url: String,
    /// `ADMIN_LISTEN`.
    pub listen: SocketAddr,
    /// `ADMIN_TOKEN`: bearer token of the admin API.
    pub admin_token: String,
    /// `EDGE_URL` + `EDGE_ADMIN_SECRET`; `None` when `EDGE_URL` is unset.
    pub edge: Option<EdgeTarget>,
    /// `EDGE_ADMIN_SECRET`, also used to verify `POST /internal/usage`;
    /// `None` disables usage ingest.
    pub internal_secret: Option<String>,
    /// `USAGE_SOURCE`: `push` (default) or `pull`.
    pub usage_source: UsageSource,
    /// Users, sessions, sign-up and alerts.
    pub accounts: AccountsConfig,
    /// `/metrics` access and the log format.
    pub observability: ObservabilityConfig,
}

/// Who may scrape `/metrics`, and how logs are written.
#[derive(Clone, Default)]
pub struct ObservabilityConfig {
    /// `METRICS_TOKEN`: when set, a scrape must send `Authorization: Bearer
    /// <token>` (from any address).
    pub metrics_token: Option<String>,
    /// `METRICS_ALLOW`: without a token, the addresses (IPs or CIDR ranges,
    /// comma-separated) that may scrape; default loopback only.
    pub metrics_allow: Vec<edgeway_core::ip_allow::IpRange>,
    /// `LOG_FORMAT=json`: one JSON object per line instead of text.
    pub json_logs: bool,
    /// `GATEWAY_PUBLIC_URL`: the gateway's URL as clients reach it, shown in
    /// the console's SDK snippets (default: `EDGE_URL`).
    pub gateway_url: Option<String>,
}

impl fmt::Debug for ObservabilityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservabilityConfig")
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<redacted>"))
            .field("metrics_allow", &self.metrics_allow)
            .field("json_logs", &self.json_logs)
            .field("gateway_url", &self.gateway_url)
            .finish()
    }
}

/// Shortest accepted `METRICS_TOKEN`.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

/// `METRICS_TOKEN`, `METRICS_ALLOW`, `LOG_FORMAT`.
pub fn observability(
    non_empty: &impl Fn(&str) -> Option<String>,
) -> Result<ObservabilityConfig, ConfigError> {
    let metrics_token = non_empty("METRICS_TOKEN");
    if metrics_token.as_ref().is_some_and(|t| t.len() < MIN_METRICS_TOKEN_LEN) {
        return Err(ConfigError(format!(
            "METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LEN} characters"
        )));
    }
    let allow_text = non_empty("METRICS_ALLOW").unwrap_or_else(|| "127.0.0.0/8,::1".into());
    let mut metrics_allow = Vec::new();
    for entry in allow_text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let range = edgeway_core::ip_allow::IpRange::parse(entry).ok_or_else(|| {
            ConfigError(format!("METRICS_ALLOW: `{entry}` is not an IP address or CIDR range"))
        })?;
        metrics_allow.push(range);
    }
    let json_logs = match non_empty("LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ConfigError(format!("LOG_FORMAT must be `text` or `json`, not `{other}`")))
        }
    };
    let gateway_url = non_empty("GATEWAY_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_string());
    if gateway_url.as_deref().is_some_and(|u| reqwest::Url::parse(u).is_err()) {
        return Err(ConfigError("GATEWAY_PUBLIC_URL is not a valid URL".into()));
    }
    Ok(ObservabilityConfig { metrics_token, metrics_allow, json_logs, gateway_url })
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("admin_token", &"<redacted>")
            .field("edge", &self.edge)
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<redacted>"))
            .field("usage_source", &self.usage_source)
            .field("accounts", &self.accounts)
            .field("observability", &self.observability)
            .finish()
    }
}

/// A configuration that cannot be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());

        let database_url = non_empty("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError("DATABASE_URL must start with `sqlite:` or `postgres://`".into()));
        }

        let listen_text = non_empty("ADMIN_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError(format!("ADMIN_LISTEN `{listen_text}` is not an address like 127.0.0.1:8788"))
        })?;

        let admin_token = non_empty("ADMIN_TOKEN")
            .ok_or_else(|| ConfigError("ADMIN_TOKEN is required (the admin API bearer token)".into()))?;
        if admin_token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(ConfigError(format!(
                "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            )));
        }

        let internal_secret = non_empty("EDGE_ADMIN_SECRET");
        if internal_secret.as_ref().is_some_and(|s| s.len() < MIN_SECRET_LEN) {
            return Err(ConfigError(format!(
                "EDGE_ADMIN_SECRET must be at least {MIN_SECRET_LEN} characters"
            )));
        }

        let edge = match non_empty("EDGE_URL") {
            None => None,
            Some(url) => {
                let url = url.trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError("EDGE_URL must be an http(s) URL".into()));
                }
                if reqwest::Url::parse(&url).is_err() {
                    return Err(ConfigError("EDGE_URL is not a valid URL".into()));
                }
                let secret = internal_secret.clone().ok_or_else(|| {
                    ConfigError("EDGE_ADMIN_SECRET is required when EDGE_URL is set".into())
                })?;
                Some(EdgeTarget { url, secret })
            }
        };

        let usage_source = usage_source(&non_empty)?;
        let accounts = accounts(&non_empty)?;

        let observability = observability(&non_empty)?;
        Ok(Self {
            database_url,
            listen,
            admin_token,
            edge,
            internal_secret,
            usage_source,
            accounts,
            observability,
        })
    }
}

/// `USAGE_SOURCE` and, for `pull`, the queue and its API.
fn usage_source(non_empty: &impl Fn(&str) -> Option<String>) -> Result<UsageSource, ConfigError> {
    let mode = non_empty("USAGE_SOURCE").unwrap_or_else(|| "push".into()).to_ascii_lowercase();
    match mode.as_str() {
        "push" => return Ok(UsageSource::Push),
        "pull" => {}
        other => return Err(ConfigError(format!("USAGE_SOURCE must be `push` or `pull`, not `{other}`"))),
    }
    let required = |name: &str| {
        non_empty(name).ok_or_else(|| ConfigError(format!("{name} is required when USAGE_SOURCE=pull")))
    };
    let account_id = required("CF_ACCOUNT_ID")?;
    let queue_id = required("CF_QUEUE_ID")?;
    let api_token = required("CF_API_TOKEN")?;
    for (name, value) in [("CF_ACCOUNT_ID", &account_id), ("CF_QUEUE_ID", &queue_id)] {
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ConfigError(format!("{name} may hold only letters, digits, `-` and `_`")));
        }
    }
    let api_base = non_empty("CF_API_BASE").unwrap_or_else(|| DEFAULT_CF_API_BASE.into());
    let api_base = api_base.trim_end_matches('/').to_string();
    if !(api_base.starts_with("https://") || api_base.starts_with("http://"))
        || reqwest::Url::parse(&api_base).is_err()
    {
        return Err(ConfigError("CF_API_BASE must be an http(s) URL".into()));
    }
    let number = |name: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
        match non_empty(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ConfigError(format!("{name} must be a whole number from {min} to {max}"))),
        }
    };
    Ok(UsageSource::Pull(PullConfig {
        api_base,
        account_id,
        queue_id,
        api_token,
        batch_size: u32::try_from(number("USAGE_PULL_BATCH_SIZE", 100, 1, 100)?).unwrap_or(100),
        visibility_timeout_ms: number("USAGE_PULL_VISIBILITY_MS", 60_000, 1_000, 43_200_000)?,
        idle_ms: number("USAGE_PULL_IDLE_MS", 1_000, 10, 60_000)?,
        retry_delay_secs: u32::try_from(number("USAGE_PULL_RETRY_DELAY_SECS", 30, 0, 43_200)?).unwrap_or(30),
    }))
}

/// Sign-up, sessions, rewards and alerts.
fn accounts(non_empty: &impl Fn(&str) -> Option<String>) -> Result<AccountsConfig, ConfigError> {
    let signup_mode =
        match non_empty("SIGNUP_MODE").unwrap_or_else(|| "closed".into()).to_ascii_lowercase().as_str() {
            "open" => SignupMode::Open,
            "invite" => SignupMode::Invite,
            "closed" => SignupMode::Closed,
            other => {
                return Err(ConfigError(format!(
                    "SIGNUP_MODE must be `open`, `invite` or `closed`, not `{other}`"
                )))
            }
        };
    let url = |name: &str| -> Result<Option<String>, ConfigError> {
        match non_empty(name) {
            None => Ok(None),
            Some(u)
                if (u.starts_with("http://") || u.starts_with("https://"))
                    && reqwest::Url::parse(&u).is_ok() =>
            {
                Ok(Some(u.trim_end_matches('/').to_string()))
            }
            Some(_) => Err(ConfigError(format!("{name} must be an http(s) URL"))),
        }
    };
    let number = |name: &str, default: i64, min: i64, max: i64| -> Result<i64, ConfigError> {
        match non_empty(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ConfigError(format!("{name} must be a whole number from {min} to {max}"))),
        }
    };
    let webhook_url = url("LOW_BALANCE_WEBHOOK_URL")?;
    let webhook_secret = non_empty("WEBHOOK_SECRET");
    if webhook_url.is_some() && webhook_secret.as_ref().is_none_or(|s| s.len() < MIN_SECRET_LEN) {
        // An unsigned webhook can be forged by anyone who finds the receiver.
        return Err(ConfigError(format!(
            "WEBHOOK_SECRET (at least {MIN_SECRET_LEN} characters) is required when LOW_BALANCE_WEBHOOK_URL is set"
        )));
    }
    let smtp_url = non_empty("SMTP_URL");
    let smtp_from = non_empty("SMTP_FROM");
    if let Some(smtp) = &smtp_url {
        if !(smtp.starts_with("smtp://") || smtp.starts_with("smtps://")) {
            return Err(ConfigError("SMTP_URL must start with smtp:// or smtps://".into()));
        }
        if smtp_from.as_deref().is_none_or(|f| !f.contains('@')) {
            return Err(ConfigError("SMTP_FROM (an email address) is required when SMTP_URL is set".into()));
        }
    }
    let public_url = url("ADMIN_PUBLIC_URL")?;
    let mut login_providers = Vec::new();
    if let Some(issuer) = url("OIDC_ISSUER")? {
        let (Some(client_id), Some(client_secret)) =
            (non_empty("OIDC_CLIENT_ID"), non_empty("OIDC_CLIENT_SECRET"))
        else {
            return Err(ConfigError(
                "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are required with OIDC_ISSUER".into(),
            ));
        };
        login_providers.push(LoginProvider {
            id: "oidc".into(),
            name: non_empty("OIDC_NAME").unwrap_or_else(|| "Single sign-on".into()),
            kind: ProviderKind::Oidc {
                issuer,
                scopes: non_empty("OIDC_SCOPES").unwrap_or_else(|| "openid email profile".into()),
            },
            client_id,
            client_secret,
        });
    }
    if let Some(client_id) = non_empty("GITHUB_CLIENT_ID") {
        let client_secret = non_empty("GITHUB_CLIENT_SECRET")
            .ok_or_else(|| ConfigError("GITHUB_CLIENT_SECRET is required with GITHUB_CLIENT_ID".into()))?;
        login_providers.push(LoginProvider {
            id: "github".into(),
            name: "GitHub".into(),
            kind: ProviderKind::GitHub {
                oauth_url: url("GITHUB_OAUTH_URL")?.unwrap_or_else(|| "https://github.com".into()),
                api_url: url("GITHUB_API_URL")?.unwrap_or_else(|| "https://api.github.com".into()),
            },
            client_id,
            client_secret,
        });
    }
    if !login_providers.is_empty() && public_url.is_none() {
        return Err(ConfigError(
            "ADMIN_PUBLIC_URL is required for OIDC / GitHub login (it makes the redirect URI)".into(),
        ));
    }
    let trust_forwarded_for =
        match non_empty("TRUST_FORWARDED_FOR").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(_) => return Err(ConfigError("TRUST_FORWARDED_FOR must be `true` or `false`".into())),
        };
    Ok(AccountsConfig {
        signup_mode,
        login_providers,
        trust_forwarded_for,
        public_url,
        session_ttl_secs: number("SESSION_TTL_SECS", 7 * 86_400, 60, 366 * 86_400)?,
        inviter_reward_micros: number("INVITER_REWARD_MICROS", 0, 0, 1_000_000_000_000)?,
        invitee_reward_micros: number("INVITEE_REWARD_MICROS", 0, 0, 1_000_000_000_000)?,
        alerts: AlertConfig { webhook_url, webhook_secret, smtp_url, smtp_from },
    })
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one.
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<unparsable>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const TOKEN: (&str, &str) = ("ADMIN_TOKEN", "0123456789abcdef");

    #[test]
    fn defaults() {
        let c = config(&[TOKEN]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.edge.is_none());
        assert!(c.internal_secret.is_none());
    }

    #[test]
    fn admin_token_is_required_and_long() {
        assert!(config(&[]).is_err());
        assert!(config(&[("ADMIN_TOKEN", "short")]).is_err());
    }

    #[test]
    fn edge_url_needs_a_strong_secret() {
        assert!(config(&[TOKEN, ("EDGE_URL", "http://127.0.0.1:8787")]).is_err());
        assert!(
            config(&[TOKEN, ("EDGE_URL", "http://127.0.0.1:8787"), ("EDGE_ADMIN_SECRET", "short")]).is_err()
        );
        let c = config(&[
            TOKEN,
            ("EDGE_URL", "http://127.0.0.1:8787/"),
            ("EDGE_ADMIN_SECRET", "0123456789abcdef-secret"),
        ])
        .unwrap();
        let edge = c.edge.clone().unwrap();
        assert_eq!(edge.url, "http://127.0.0.1:8787");
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must redact secrets");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(config(&[TOKEN, ("DATABASE_URL", "mysql://x")]).is_err());
        assert!(config(&[TOKEN, ("ADMIN_LISTEN", "nope")]).is_err());
        assert!(config(&[TOKEN, ("EDGE_URL", "ftp://x"), ("EDGE_ADMIN_SECRET", "0123456789abcdef")]).is_err());
    }

    #[test]
    fn usage_source_push_by_default_pull_needs_the_queue() {
        assert_eq!(config(&[TOKEN]).unwrap().usage_source, UsageSource::Push);
        assert_eq!(config(&[TOKEN, ("USAGE_SOURCE", "PUSH")]).unwrap().usage_source, UsageSource::Push);
        assert!(config(&[TOKEN, ("USAGE_SOURCE", "poll")]).is_err());
        assert!(config(&[TOKEN, ("USAGE_SOURCE", "pull")]).is_err());
        let pull = [
            TOKEN,
            ("USAGE_SOURCE", "pull"),
            ("CF_ACCOUNT_ID", "acc123"),
            ("CF_QUEUE_ID", "q-456"),
            ("CF_API_TOKEN", "cf-token-secret-value"),
        ];
        let c = config(&pull).unwrap();
        let UsageSource::Pull(p) = &c.usage_source else { panic!("pull expected") };
        assert_eq!(p.api_base, DEFAULT_CF_API_BASE);
        assert_eq!(
            (p.batch_size, p.visibility_timeout_ms, p.idle_ms, p.retry_delay_secs),
            (100, 60_000, 1_000, 30)
        );
        assert!(!format!("{c:?}").contains("cf-token-secret-value"), "Debug must redact the API token");
        let mut more = pull.to_vec();
        more.push(("CF_API_BASE", "http://127.0.0.1:9/client/v4/"));
        more.push(("USAGE_PULL_BATCH_SIZE", "10"));
        let c = config(&more).unwrap();
        let UsageSource::Pull(p) = &c.usage_source else { panic!("pull expected") };
        assert_eq!((p.api_base.as_str(), p.batch_size), ("http://127.0.0.1:9/client/v4", 10));
        for (name, value) in [
            ("USAGE_PULL_BATCH_SIZE", "101"),
            ("USAGE_PULL_BATCH_SIZE", "0"),
            ("CF_API_BASE", "ftp://x"),
            ("CF_QUEUE_ID", "../etc"),
        ] {
            let mut bad = pull.to_vec();
            bad.retain(|(n, _)| *n != name);
            bad.push((name, value));
            assert!(config(&bad).is_err(), "{name}={value} accepted");
        }
    }

    #[test]
    fn accounts_settings() {
        let c = config(&[TOKEN]).unwrap();
        assert_eq!(c.accounts.signup_mode, SignupMode::Closed);
        assert!(!c.accounts.secure_cookies());
        let c =
            config(&[TOKEN, ("SIGNUP_MODE", "Invite"), ("ADMIN_PUBLIC_URL", "https://admin.example.com/")])
                .unwrap();
        assert_eq!(c.accounts.signup_mode, SignupMode::Invite);
        assert!(c.accounts.secure_cookies());
        assert!(config(&[TOKEN, ("SIGNUP_MODE", "maybe")]).is_err());
        assert!(config(&[TOKEN, ("SESSION_TTL_SECS", "5")]).is_err());
        assert!(
            config(&[TOKEN, ("LOW_BALANCE_WEBHOOK_URL", "https://hooks.example.com/x")]).is_err(),
            "a webhook without a secret refuses to start"
        );
        let c = config(&[
            TOKEN,
            ("LOW_BALANCE_WEBHOOK_URL", "https://hooks.example.com/x"),
            ("WEBHOOK_SECRET", "webhook-secret-0123456789"),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("webhook-secret-0123456789"));
        assert!(config(&[TOKEN, ("SMTP_URL", "smtp://mail.example.com:25")]).is_err(), "SMTP_FROM required");
        let oidc = [
            TOKEN,
            ("OIDC_ISSUER", "https://id.example.com"),
            ("OIDC_CLIENT_ID", "c"),
            ("OIDC_CLIENT_SECRET", "oidc-secret-value"),
        ];
        assert!(config(&oidc).is_err(), "a redirect URI needs ADMIN_PUBLIC_URL");
        let mut with_url = oidc.to_vec();
        with_url.push(("ADMIN_PUBLIC_URL", "https://admin.example.com"));
        with_url.push(("GITHUB_CLIENT_ID", "gh"));
        assert!(config(&with_url).is_err(), "GITHUB_CLIENT_SECRET required");
        with_url.push(("GITHUB_CLIENT_SECRET", "gh-secret-value"));
        let c = config(&with_url).unwrap();
        let ids: Vec<&str> = c.accounts.login_providers.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["oidc", "github"]);
        assert!(
            !format!("{c:?}").contains("oidc-secret-value") && !format!("{c:?}").contains("gh-secret-value")
        );
    }

    #[test]
    fn database_password_is_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:redacted@h/db");
    }
}

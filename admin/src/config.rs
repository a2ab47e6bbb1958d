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
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("admin_token", &"<redacted>")
            .field("edge", &self.edge)
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<redacted>"))
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

        Ok(Self { database_url, listen, admin_token, edge, internal_secret })
    }
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
    fn database_password_is_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:redacted@h/db");
    }
}

//! The key record: what the edge knows about a client key. Stored in KV as JSON
//! under `key:<sha256 hex>` (schema: `kv-schema/key_record.schema.json`), pushed
//! there by the admin service, cached per isolate for a short time.

use crate::error::GatewayError;
use serde::{Deserialize, Serialize};

/// Whether a key may be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    #[default]
    Active,
    Disabled,
}

/// A client key as the edge sees it. Never holds the plaintext key.
/// Unknown fields are ignored, so an admin one version ahead can push to an
/// older worker during a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// SHA-256 hex digest of the key.
    pub digest: String,
    /// Owner (user id or name in the admin service).
    #[serde(default)]
    pub owner: String,
    /// The user whose balance this key draws on (an admin user id); `None` =
    /// a standalone key, limited only by its own quota.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Pricing / routing group (the user's group for a user's key).
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub status: KeyStatus,
    /// Unix seconds after which the key is refused; `None` = never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Models this key may call; `None` or empty = every model.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Quota in micro-units of the billing currency; `None` = unlimited.
    #[serde(default)]
    pub quota_micros: Option<i64>,
    /// Requests per minute; `None` = unlimited.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute; `None` = unlimited.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once; `None` = unlimited.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A request over `max_concurrency` waits up to this long for a slot
    /// (in arrival order, [`crate::pipeline::wait_queue`]) before it is
    /// refused; `None` = refused at once.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
    /// Client IP ranges (CIDR) allowed to use the key; `None` or empty = any.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    /// A test key: may pin a request to a channel with the unsigned
    /// `x-edgeway-pin-channel` header ([`crate::pin`]).
    #[serde(default)]
    pub pin_allowed: bool,
    /// Monotonic version set by the admin; a push with an older version is ignored.
    #[serde(default)]
    pub version: u64,
}

fn default_group() -> String {
    "default".into()
}

impl KeyRecord {
    /// Whether the key may be used at `now` (unix seconds). Disabled and expired
    /// keys are refused with the same error as unknown ones.
    pub fn check_usable(&self, now: i64) -> Result<(), GatewayError> {
        if self.status != KeyStatus::Active {
            return Err(GatewayError::InvalidApiKey);
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(GatewayError::InvalidApiKey);
        }
        Ok(())
    }

    /// Whether the key may call `model`.
    pub fn check_model(&self, model: &str) -> Result<(), GatewayError> {
        match &self.allowed_models {
            Some(list) if !list.is_empty() && !list.iter().any(|m| m == model) => {
                Err(GatewayError::ModelNotAllowed { model: model.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// Whether the model is visible to this key in `GET /v1/models`.
    pub fn can_see_model(&self, model: &str) -> bool {
        self.check_model(model).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        serde_json::from_str(r#"{"digest":"00"}"#).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn defaults_are_permissive_and_active() {
        let r = record();
        assert_eq!(r.group, "default");
        assert_eq!(r.user_id, None, "a record without user_id is a standalone key");
        assert!(r.check_usable(0).is_ok());
        assert!(r.check_model("anything").is_ok());
    }

    #[test]
    fn expiry_and_status() {
        let mut r = record();
        r.expires_at = Some(100);
        assert!(r.check_usable(99).is_ok());
        assert_eq!(r.check_usable(100), Err(GatewayError::InvalidApiKey));
        r.expires_at = None;
        r.status = KeyStatus::Disabled;
        assert_eq!(r.check_usable(0), Err(GatewayError::InvalidApiKey));
    }

    #[test]
    fn model_allowlist() {
        let mut r = record();
        r.allowed_models = Some(vec!["a".into()]);
        assert!(r.check_model("a").is_ok());
        assert!(matches!(r.check_model("b"), Err(GatewayError::ModelNotAllowed { .. })));
        r.allowed_models = Some(vec![]);
        assert!(r.check_model("b").is_ok());
    }

    #[test]
    fn unknown_fields_are_tolerated_for_rolling_deploys() {
        let r: KeyRecord = serde_json::from_str(r#"{"digest":"00","future_field":5}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.digest, "00");
    }
}

//! Per-isolate caches of KV data: key records and the routing table. KV is
//! the source; these caches only spare a KV read per request, for a short TTL.
//! The internal API invalidates them in the isolate that receives a push.

use crate::bindings;
use crate::runtime::now_ms;
use edgeway_core::api_key::{digests_match, kv_key_for_digest};
use edgeway_core::error::GatewayError;
use edgeway_core::key_record::KeyRecord;
use edgeway_core::limits::{KEY_CACHE_TTL_MS, ROUTING_CACHE_TTL_MS};
use edgeway_core::routing::{RoutingConfig, RoutingTable, ROUTING_KV_KEY};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use worker::Env;

/// Most key records held per isolate; the cache is cleared when full.
const MAX_CACHED_KEYS: usize = 10_000;

/// How long an isolate trusts its key account's word that a key without
/// limits is still active (ms): the bound on how late a revocation pushed to
/// the account is seen by keys that skip per-request admission.
pub const ACCOUNT_CHECK_TTL_MS: i64 = 2_000;

thread_local! {
    static KEYS: RefCell<HashMap<String, (Rc<KeyRecord>, i64)>> = RefCell::new(HashMap::new());
    static ACCOUNT_CHECKS: RefCell<HashMap<String, (bool, i64)>> = RefCell::new(HashMap::new());
    static ROUTING: RefCell<Option<(Rc<RoutingTable>, i64)>> = const { RefCell::new(None) };
}

/// The key record for `digest`, from cache or KV. Unknown keys are
/// `InvalidApiKey`; the stored digest is compared in constant time.
pub async fn key_record(env: &Env, digest: &str) -> Result<Rc<KeyRecord>, GatewayError> {
    let now = now_ms();
    let cached = KEYS.with(|k| {
        k.borrow().get(digest).filter(|(_, at)| now - at < KEY_CACHE_TTL_MS as i64).map(|(r, _)| r.clone())
    });
    let record = match cached {
        Some(record) => record,
        None => {
            let kv = env.kv(bindings::KV).map_err(|_| GatewayError::Internal)?;
            let record: Option<KeyRecord> = kv.get(&kv_key_for_digest(digest)).json().await.map_err(|e| {
                worker::console_error!("kv key read failed: {e}");
                GatewayError::Internal
            })?;
            let record = Rc::new(record.ok_or(GatewayError::InvalidApiKey)?);
            KEYS.with(|k| {
                let mut k = k.borrow_mut();
                if k.len() >= MAX_CACHED_KEYS {
                    k.clear();
                }
                k.insert(digest.to_string(), (record.clone(), now));
            });
            record
        }
    };
    if !digests_match(&record.digest, digest) {
        return Err(GatewayError::InvalidApiKey);
    }
    Ok(record)
}

/// Forgets a cached key record (after a push or revocation).
pub fn forget_key(digest: &str) {
    KEYS.with(|k| k.borrow_mut().remove(digest));
    ACCOUNT_CHECKS.with(|c| c.borrow_mut().remove(digest));
}

/// For a key whose record sets no limits: whether it may skip per-request
/// admission. The key's account is asked at most every
/// [`ACCOUNT_CHECK_TTL_MS`] per isolate; it knows of revocations and limits
/// pushed by the admin before KV does. A revoked key is refused here.
pub async fn unlimited_key_may_skip_admission(env: &Env, record: &KeyRecord) -> Result<bool, GatewayError> {
    let now = now_ms();
    let cached = ACCOUNT_CHECKS.with(|c| {
        c.borrow().get(&record.digest).filter(|(_, at)| now - at < ACCOUNT_CHECK_TTL_MS).map(|(ok, _)| *ok)
    });
    if let Some(ok) = cached {
        return Ok(ok);
    }
    let account = crate::key_account_object::KeyAccountClient::new(env, &record.digest)?;
    let snapshot = account.snapshot().await?;
    let limits: Option<edgeway_core::key_account::KeyLimits> =
        snapshot.get("limits").cloned().and_then(|l| serde_json::from_value(l).ok());
    // An expiry pushed to the account counts as soon as the account has it.
    if snapshot.get("expires_at").and_then(serde_json::Value::as_i64).is_some_and(|at| now / 1000 >= at) {
        return Err(GatewayError::InvalidApiKey);
    }
    let may_skip = match limits {
        Some(limits) if limits.version >= record.version => {
            if limits.disabled {
                return Err(GatewayError::InvalidApiKey);
            }
            limits.max_concurrency.is_none()
                && limits.rpm.is_none()
                && limits.tpm.is_none()
                && limits.quota_micros.is_none()
        }
        _ => true,
    };
    ACCOUNT_CHECKS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= MAX_CACHED_KEYS {
            c.clear();
        }
        c.insert(record.digest.clone(), (may_skip, now));
    });
    Ok(may_skip)
}

/// The routing table, from cache or KV. An absent configuration is an empty table.
pub async fn routing_table(env: &Env) -> Result<Rc<RoutingTable>, GatewayError> {
    let now = now_ms();
    if let Some(table) = ROUTING.with(|r| {
        r.borrow().as_ref().filter(|(_, at)| now - at < ROUTING_CACHE_TTL_MS as i64).map(|(t, _)| t.clone())
    }) {
        return Ok(table);
    }
    let kv = env.kv(bindings::KV).map_err(|_| GatewayError::Internal)?;
    let config: Option<RoutingConfig> = kv.get(ROUTING_KV_KEY).json().await.map_err(|e| {
        worker::console_error!("kv routing read failed: {e}");
        GatewayError::Internal
    })?;
    let table = RoutingTable::new(config.unwrap_or_default()).map_err(|e| {
        worker::console_error!("stored routing config is invalid: {}", e.0);
        GatewayError::Internal
    })?;
    let table = Rc::new(table);
    ROUTING.with(|r| *r.borrow_mut() = Some((table.clone(), now)));
    Ok(table)
}

/// Replaces the cached routing table (after a push).
pub fn set_routing(table: RoutingTable) {
    ROUTING.with(|r| *r.borrow_mut() = Some((Rc::new(table), now_ms())));
}

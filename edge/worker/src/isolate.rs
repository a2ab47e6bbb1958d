//! The isolate's memory ([`edgeway_core::pipeline::isolate::IsolateState`]):
//! one per wasm instance, shared by the generation driver and the Rust
//! routes (model lists, token counts, the internal API), which read KV
//! through it.

use crate::bindings;
use crate::runtime::now_ms;
use edgeway_core::api_key::kv_key_for_digest;
use edgeway_core::error::GatewayError;
use edgeway_core::key_record::KeyRecord;
use edgeway_core::pipeline::isolate::{IsolateConfig, IsolateState, KeyReadError};
use edgeway_core::routing::{RoutingTable, ROUTING_KV_KEY};
use std::cell::RefCell;
use std::rc::Rc;
use worker::Env;

thread_local! {
    static ISOLATE: RefCell<IsolateState> = RefCell::new(IsolateState::default());
}

/// Runs `f` on the isolate's memory.
pub fn with<T>(f: impl FnOnce(&mut IsolateState) -> T) -> T {
    ISOLATE.with(|s| f(&mut s.borrow_mut()))
}

/// Sets the isolate's settings (from the worker's vars).
pub fn configure(config: IsolateConfig) {
    with(|s| s.config = config);
}

/// A KV value as text (never through a JS number, so 64-bit integers stay exact).
async fn kv_text(env: &Env, key: &str) -> Result<Option<String>, GatewayError> {
    let kv = env.kv(bindings::KV).map_err(|e| crate::internal("kv binding", e))?;
    kv.get(key).text().await.map_err(|e| crate::internal("kv read", e))
}

/// The key record for `digest`, from the isolate or KV. Unknown keys are
/// `InvalidApiKey`.
pub async fn key_record(env: &Env, digest: &str) -> Result<Rc<KeyRecord>, GatewayError> {
    if let Some(record) = with(|s| s.key(digest, now_ms())) {
        return Ok(record);
    }
    let text = kv_text(env, &kv_key_for_digest(digest)).await?;
    match with(|s| s.put_key(digest, text.as_deref(), now_ms())) {
        Ok(record) => Ok(record),
        Err(KeyReadError::Refused(error)) => Err(error),
        Err(KeyReadError::Unreadable(why)) => Err(crate::internal("key record unreadable", why)),
    }
}

/// The routing table, from the isolate or KV.
pub async fn routing_table(env: &Env) -> Result<Rc<RoutingTable>, GatewayError> {
    if let Some(table) = with(|s| s.routing(now_ms())) {
        return Ok(table);
    }
    let text = kv_text(env, ROUTING_KV_KEY).await?;
    with(|s| s.put_routing(text.as_deref(), now_ms())).map_err(|why| crate::internal("routing", why))
}

//! The cron's round of health checks, for the JS shell (`js/entry.mjs`),
//! which reads the routing table from KV, sends the checks
//! [`edgeway_core::channel_health::check::plan`] lists (each with its time
//! limit), and posts each channel's results to its health record
//! ([`crate::channel_health_object`]). Here only the plan and the reading
//! of the answers: the shell's own `fetch` and `AbortSignal.timeout` cost
//! the wasm nothing, where a Rust round over workers-rs cost about 20 KB.

use crate::runtime::now_ms;
use edgeway_core::channel_health::check::{self, CheckAnswer};
use edgeway_core::routing::ROUTING_KV_KEY;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

/// The KV key of the routing table.
#[wasm_bindgen]
pub fn routing_kv_key() -> String {
    ROUTING_KV_KEY.to_string()
}

/// The round's checks (JSON array of
/// [`edgeway_core::channel_health::check::CheckRequest`]) for the routing
/// table's KV text; a channel's `api_key_secret` is read off `env`.
#[wasm_bindgen]
pub fn health_check_plan(routing_text: Option<String>, env: &JsValue) -> String {
    // Read as the isolate reads it (one decoder of the routing table in the build).
    let table = match crate::isolate::with(|s| s.put_routing(routing_text.as_deref(), now_ms())) {
        Ok(table) => table,
        Err(why) => {
            worker::console_error!("health checks: {why}");
            return "[]".into();
        }
    };
    let secret = |name: &str| {
        worker::js_sys::Reflect::get(env, &JsValue::from_str(name))
            .ok()?
            .as_string()
            .filter(|s| !s.is_empty())
    };
    serde_json::to_string(&check::plan(table.config(), &secret)).unwrap_or_else(|_| "[]".into())
}

/// The round's answers (JSON array of [`CheckAnswer`]) as
/// `[channel, results JSON, channel, results JSON, …]`, each to be posted to
/// `https://channel-health/checks?channel=…`. Failures are logged.
#[wasm_bindgen]
pub fn health_check_results(answers_json: &str, now: f64) -> Vec<String> {
    let answers: Vec<CheckAnswer> = match serde_json::from_str(answers_json) {
        Ok(answers) => answers,
        Err(e) => {
            worker::console_error!("health checks: unreadable answers: {e}");
            return Vec::new();
        }
    };
    let grouped = check::results_by_channel(&answers, now as i64);
    for (channel, results) in &grouped {
        for result in results.iter().filter(|r| r.failure.is_some()) {
            let kind = result.failure.map_or("", |f| f.kind());
            worker::console_warn!(
                "health check of channel {channel} (credential {:?}): {kind} ({})",
                result.credential,
                result.status
            );
        }
    }
    grouped
        .into_iter()
        .filter_map(|(channel, results)| Some([channel, serde_json::to_string(&results).ok()?]))
        .flatten()
        .collect()
}

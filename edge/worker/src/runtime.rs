//! Time and randomness from the Workers runtime, passed into the core as values.

use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = randomUUID)]
    fn crypto_random_uuid() -> String;
    #[wasm_bindgen(js_namespace = Math, js_name = random)]
    fn math_random() -> f64;
}

/// Unix time in ms (the runtime's clock; it advances across I/O).
pub fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// A random UUID v4 from the runtime's CSPRNG.
pub fn random_uuid() -> String {
    crypto_random_uuid()
}

/// A random seed for weighted routing (not for secrets).
pub fn routing_seed() -> u64 {
    (math_random() * (u64::MAX as f64)) as u64
}

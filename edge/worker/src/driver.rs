//! The generation driver: the wasm face of
//! [`edgeway_core::pipeline::generation::Generation`] for the JS shell
//! (`js/entry.mjs`), which performs each effect with the runtime's own
//! promises and streams and feeds the result back.
//!
//! **Why the shell is JS.** Measured with a V8 CPU profile of the worker
//! under load (`tests/bench/profile.mjs`), most of a request's CPU went to
//! driving I/O from wasm, not to the gateway's rules: wasm-bindgen-futures'
//! microtask queue, reading streams chunk by chunk through wasm readers, and
//! the glue around them. Here every call is synchronous: the JS shell awaits,
//! the machine decides. Bytes the gateway does not change stay in JS (an
//! unchanged stream chunk or non-stream body is answered with the shell's own
//! buffer); bytes it does change cross once each way.
//!
//! Each input method returns the next effect's code ([`EffectCode`]); the
//! effect's details are read with the getters.

use crate::isolate;
use crate::runtime;
use edgeway_core::endpoint::{self, Endpoint};
use edgeway_core::pin::PinRequest;
use edgeway_core::pipeline::generation::{
    Credentials, Effect, Emitted, FetchFailure, Generation, Input, ResponseBody, Start,
};
use edgeway_core::pipeline::isolate::IsolateConfig;
use wasm_bindgen::prelude::wasm_bindgen;

/// Effect codes, as the JS shell switches on them.
#[wasm_bindgen]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectCode {
    KvGet = 1,
    ReadSecret = 2,
    AccountCall = 3,
    ReadRequestBody = 4,
    Fetch = 5,
    ReadUpstreamBody = 6,
    Sleep = 7,
    Respond = 8,
    ReadChunk = 9,
    Emit = 10,
    CloseStream = 11,
    PublishUsage = 12,
    Finished = 13,
    Wait = 14,
    CancelUpstream = 15,
    StoreCall = 16,
    CacheGet = 17,
    CachePut = 18,
    HealthCall = 19,
}

/// Whether `method path` is a generation request (served by the driver);
/// other routes go to the Rust fetch handler.
#[wasm_bindgen]
pub fn is_generation(method: &str, path: &str) -> bool {
    matches!(endpoint::classify(method, path), Ok(Endpoint::Generate { .. }))
}

/// Sets the isolate's limits from the worker's vars (once per isolate);
/// `shared_health`: the `CHANNEL_HEALTH` binding exists.
#[wasm_bindgen]
pub fn configure(max_body_bytes: f64, upstream_timeout_ms: f64, keepalive_ms: f64, shared_health: bool) {
    let defaults = IsolateConfig::default();
    let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
    let isolate_id = runtime::random_uuid().replace('-', "");
    isolate::with(|s| {
        s.slices.set_isolate_id(isolate_id.clone());
        s.counters.begin(isolate_id, runtime::now_ms());
    });
    isolate::configure(IsolateConfig {
        max_body_bytes: positive(max_body_bytes).map_or(defaults.max_body_bytes, |v| v as usize),
        upstream_timeout_ms: positive(upstream_timeout_ms).map_or(defaults.upstream_timeout_ms, |v| v as u64),
        keepalive_ms: positive(keepalive_ms).map_or(defaults.keepalive_ms, |v| v as u64),
        shared_health,
    });
}

/// The syncs this isolate owes the channels' health records now, as
/// `[channel, body, channel, body, …]`: the shell posts each to
/// `https://channel-health/sync?channel=…` off the request's path and hands
/// the answer to [`health_answered`].
#[wasm_bindgen]
pub fn health_syncs(now: f64) -> Vec<String> {
    let due = isolate::with(|s| s.health_sync.due(now as i64));
    due.into_iter().flat_map(|(channel, body)| [channel, body]).collect()
}

/// A health record's answer to a sync (`status` 0: the call failed).
#[wasm_bindgen]
pub fn health_answered(channel: &str, sent: &str, status: u16, body: &str, now: f64) {
    isolate::with(|s| {
        s.health_sync.answered(&mut s.breakers, channel, sent, status, body, now as i64);
    });
}

/// One generation request in flight.
#[wasm_bindgen]
pub struct Driver {
    generation: Generation,
    effect: Effect,
}

/// Starts a generation request, or `None` when `method path` is not one.
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)]
pub fn start_generation(
    method: &str,
    path: &str,
    authorization: Option<String>,
    x_api_key: Option<String>,
    x_goog_api_key: Option<String>,
    query_key: Option<String>,
    client_ip: Option<String>,
    content_length: Option<String>,
    pin_channel: Option<String>,
    pin_timestamp: Option<String>,
    pin_signature: Option<String>,
    now: f64,
) -> Option<Driver> {
    let Ok(Endpoint::Generate { client, family, path_model, path_stream }) = endpoint::classify(method, path)
    else {
        return None;
    };
    let start = Start {
        client,
        family,
        path_model,
        path_stream,
        credentials: Credentials { authorization, x_api_key, x_goog_api_key, query_key },
        client_ip,
        declared_body_len: content_length.and_then(|v| v.trim().parse().ok()),
        request_id: format!("req_{}", runtime::random_uuid().replace('-', "")),
        routing_seed: runtime::routing_seed(),
        pin: PinRequest::from_headers(pin_channel, pin_timestamp, pin_signature),
    };
    Some(Driver { generation: Generation::new(start, now as i64), effect: Effect::Finished })
}

fn code(effect: &Effect) -> EffectCode {
    match effect {
        Effect::KvGet { .. } => EffectCode::KvGet,
        Effect::ReadSecret { .. } => EffectCode::ReadSecret,
        Effect::AccountCall { .. } => EffectCode::AccountCall,
        Effect::ReadRequestBody { .. } => EffectCode::ReadRequestBody,
        Effect::Fetch(_) => EffectCode::Fetch,
        Effect::ReadUpstreamBody { .. } => EffectCode::ReadUpstreamBody,
        Effect::Sleep { .. } => EffectCode::Sleep,
        Effect::Respond(..) => EffectCode::Respond,
        Effect::ReadChunk { .. } => EffectCode::ReadChunk,
        Effect::Emit(_) => EffectCode::Emit,
        Effect::CloseStream => EffectCode::CloseStream,
        Effect::PublishUsage { .. } => EffectCode::PublishUsage,
        Effect::Finished => EffectCode::Finished,
        Effect::Wait { .. } => EffectCode::Wait,
        Effect::CancelUpstream => EffectCode::CancelUpstream,
        Effect::StoreCall { .. } => EffectCode::StoreCall,
        Effect::CacheGet { .. } => EffectCode::CacheGet,
        Effect::CachePut { .. } => EffectCode::CachePut,
        Effect::HealthCall { .. } => EffectCode::HealthCall,
    }
}

#[wasm_bindgen]
impl Driver {
    fn feed(&mut self, input: Input, now: f64) -> EffectCode {
        self.effect = isolate::with(|s| self.generation.next(s, input, now as i64));
        for line in self.generation.take_logs() {
            if line.error {
                worker::console_error!("{}", line.message);
            } else {
                worker::console_warn!("{}", line.message);
            }
        }
        code(&self.effect)
    }

    pub fn begin(&mut self, now: f64) -> EffectCode {
        self.feed(Input::Begin, now)
    }

    /// The last effect is done (`Sleep`, `Respond`, `Emit`, `CloseStream`).
    pub fn done(&mut self, now: f64) -> EffectCode {
        self.feed(Input::Done, now)
    }

    pub fn kv_value(&mut self, value: Option<String>, now: f64) -> EffectCode {
        self.feed(Input::KvValue(value), now)
    }

    pub fn kv_failed(&mut self, why: String, now: f64) -> EffectCode {
        self.feed(Input::KvFailed(why), now)
    }

    pub fn secret(&mut self, value: Option<String>, now: f64) -> EffectCode {
        self.feed(Input::Secret(value), now)
    }

    /// `status` 0: the call itself failed (`body` says why).
    pub fn account_reply(&mut self, status: u16, body: String, now: f64) -> EffectCode {
        self.feed(Input::AccountReply { status, body }, now)
    }

    pub fn request_body(&mut self, body: Vec<u8>, now: f64) -> EffectCode {
        self.feed(Input::RequestBody(body), now)
    }

    pub fn request_body_too_large(&mut self, now: f64) -> EffectCode {
        self.feed(Input::RequestBodyTooLarge, now)
    }

    pub fn request_body_unreadable(&mut self, now: f64) -> EffectCode {
        self.feed(Input::RequestBodyUnreadable, now)
    }

    pub fn upstream_head(&mut self, status: u16, retry_after: Option<String>, now: f64) -> EffectCode {
        self.feed(Input::UpstreamHead { status, retry_after }, now)
    }

    /// The wait the last `Fetch`, `ReadChunk` or `Wait` allowed passed; the
    /// operation is still pending.
    pub fn idle(&mut self, now: f64) -> EffectCode {
        self.feed(Input::Idle, now)
    }

    /// The fetch got no response (refused, reset, DNS, TLS).
    pub fn upstream_failed(&mut self, now: f64) -> EffectCode {
        self.feed(Input::UpstreamFailed(FetchFailure::Unreachable), now)
    }

    pub fn upstream_body(&mut self, body: Vec<u8>, now: f64) -> EffectCode {
        self.feed(Input::UpstreamBody(body), now)
    }

    pub fn upstream_body_failed(&mut self, now: f64) -> EffectCode {
        self.feed(Input::UpstreamBodyFailed, now)
    }

    pub fn chunk(&mut self, bytes: Vec<u8>, now: f64) -> EffectCode {
        self.feed(Input::Chunk(bytes), now)
    }

    pub fn upstream_end(&mut self, now: f64) -> EffectCode {
        self.feed(Input::UpstreamEnd, now)
    }

    pub fn upstream_broken(&mut self, why: String, now: f64) -> EffectCode {
        self.feed(Input::UpstreamBroken(why), now)
    }

    pub fn client_gone(&mut self, now: f64) -> EffectCode {
        self.feed(Input::ClientGone, now)
    }

    pub fn published(&mut self, ok: bool, now: f64) -> EffectCode {
        self.feed(Input::Published(ok), now)
    }

    /// `status` 0: the store call itself failed (`body` says why).
    pub fn store_reply(&mut self, status: u16, body: String, now: f64) -> EffectCode {
        self.feed(Input::StoreReply { status, body }, now)
    }

    /// `HealthCall` answered (`status` 0: the call failed).
    pub fn health_reply(&mut self, status: u16, body: String, now: f64) -> EffectCode {
        self.feed(Input::HealthReply { status, body }, now)
    }

    /// `CacheGet` answered (`undefined`: not cached).
    pub fn cache_value(&mut self, value: Option<String>, now: f64) -> EffectCode {
        self.feed(Input::CacheValue(value), now)
    }

    /// `KvGet` key, `ReadSecret` name, `AccountCall`/`StoreCall` digest, `Fetch`
    /// URL, `CacheGet`/`CachePut` cache URL, `HealthCall` channel.
    pub fn target(&self) -> String {
        match &self.effect {
            Effect::CacheGet { url } | Effect::CachePut { url, .. } => url.clone(),
            Effect::KvGet { key } => key.clone(),
            Effect::ReadSecret { name } => name.clone(),
            Effect::AccountCall { digest, .. } | Effect::StoreCall { digest, .. } => digest.clone(),
            Effect::Fetch(request) => request.url.clone(),
            Effect::HealthCall { channel, .. } => channel.clone(),
            _ => String::new(),
        }
    }

    /// `AccountCall`, `StoreCall`: method and path, as `"POST /admit"`.
    pub fn call(&self) -> String {
        match &self.effect {
            Effect::AccountCall { method, path, .. } => format!("{method} {path}"),
            Effect::StoreCall { path, .. } => format!("POST {path}"),
            _ => String::new(),
        }
    }

    /// `AccountCall`/`StoreCall`/`HealthCall` body, `PublishUsage` events
    /// (JSON text), `CachePut` value.
    pub fn text(&self) -> Option<String> {
        match &self.effect {
            Effect::AccountCall { body, .. } => body.clone(),
            Effect::PublishUsage { events_json, .. } => Some(events_json.clone()),
            Effect::StoreCall { body, .. } | Effect::HealthCall { body, .. } => Some(body.clone()),
            Effect::CachePut { value, .. } => Some(value.clone()),
            _ => None,
        }
    }

    /// `ReadRequestBody`/`ReadUpstreamBody` limit, `Sleep` ms, `Fetch`,
    /// `ReadChunk` and `Wait` wake time (ms, or -1 for none), `Respond`
    /// status, `CachePut` TTL (s).
    pub fn number(&self) -> f64 {
        match &self.effect {
            Effect::ReadRequestBody { limit } | Effect::ReadUpstreamBody { limit } => *limit as f64,
            Effect::Fetch(request) => request.wake_ms.map_or(-1.0, |w| w as f64),
            Effect::Sleep { ms } => *ms as f64,
            Effect::ReadChunk { wake_ms } | Effect::Wait { wake_ms } => wake_ms.map_or(-1.0, |w| w as f64),
            Effect::Respond(head, _) => f64::from(head.status),
            Effect::PublishUsage { count, .. } => *count as f64,
            Effect::CachePut { ttl_secs, .. } => f64::from(*ttl_secs),
            _ => 0.0,
        }
    }

    /// `Fetch` and `Respond` headers, as `[name, value, name, value, …]`.
    pub fn headers(&self) -> Vec<String> {
        match &self.effect {
            Effect::Fetch(request) => {
                request.headers.iter().flat_map(|(n, v)| [n.clone(), v.clone()]).collect()
            }
            Effect::Respond(head, _) => {
                head.headers.iter().flat_map(|(n, v)| [(*n).to_string(), v.clone()]).collect()
            }
            _ => Vec::new(),
        }
    }

    /// `Respond`: 0 bytes (see [`Self::take_bytes`]), 1 the upstream body the
    /// shell holds, 2 a stream. `Emit`: 0 bytes, 1 the chunk the shell holds.
    pub fn body_kind(&self) -> u8 {
        match &self.effect {
            Effect::Respond(_, ResponseBody::Bytes(_)) | Effect::Emit(Emitted::Bytes(_)) => 0,
            Effect::Respond(_, ResponseBody::UpstreamBody) | Effect::Emit(Emitted::Chunk) => 1,
            Effect::Respond(_, ResponseBody::Stream) => 2,
            _ => 0,
        }
    }

    /// The bytes of a `Fetch` body, a `Respond` body or an `Emit` (once).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        match &mut self.effect {
            Effect::Fetch(request) => std::mem::take(&mut request.body),
            Effect::Respond(_, ResponseBody::Bytes(bytes)) | Effect::Emit(Emitted::Bytes(bytes)) => {
                std::mem::take(bytes)
            }
            _ => Vec::new(),
        }
    }

    /// The body of a 500 in the client's dialect, for a request the shell
    /// could not drive to its end (its cause is in the shell's log line).
    pub fn internal_error_body(&self) -> String {
        edgeway_core::error::GatewayError::Internal.body(self.generation.client().error_dialect())
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("effect", &code(&self.effect)).finish()
    }
}

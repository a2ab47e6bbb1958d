//! Calling an upstream provider: headers from the provider table, the channel
//! credential, a time limit on the response headers, and a uniform reply type
//! shared with the built-in mock.

use edgeway_core::error::GatewayError;
use edgeway_core::provider::{AuthScheme, Provider};
use edgeway_core::routing::Channel;
use futures_util::future::{select, Either};
use futures_util::Stream;
use std::pin::Pin;
use std::time::Duration;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

/// An upstream body: a byte stream as it arrives.
pub type BodyStream = Pin<Box<dyn Stream<Item = worker::Result<Vec<u8>>>>>;

/// What an upstream (real or mock) answered.
pub struct UpstreamReply {
    pub status: u16,
    pub body: BodyStream,
}

/// The channel's credential: inline, or from the named worker secret.
pub fn channel_credential(channel: &Channel, env: &Env) -> Option<String> {
    channel
        .api_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| channel.api_key_secret.as_deref().and_then(|name| crate::bindings::text(env, name)))
}

/// POSTs `body` to `url` and waits at most `timeout_ms` for the response headers.
pub async fn post_json(
    url: &str,
    provider: &Provider,
    credential: Option<&str>,
    body: Vec<u8>,
    timeout_ms: u64,
) -> Result<UpstreamReply, GatewayError> {
    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|_| GatewayError::Internal);
    set("content-type", "application/json")?;
    set("accept", "application/json, text/event-stream")?;
    for (name, value) in provider.static_headers {
        set(name, value)?;
    }
    if let Some(key) = credential {
        match provider.auth {
            AuthScheme::Bearer => set("authorization", &format!("Bearer {key}"))?,
            AuthScheme::XApiKey => set("x-api-key", key)?,
            AuthScheme::XGoogApiKey => set("x-goog-api-key", key)?,
            AuthScheme::None => {}
        }
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(js_bytes(&body)));
    let request = Request::new_with_init(url, &init).map_err(|e| {
        worker::console_error!("bad upstream url: {e}");
        GatewayError::UpstreamUnavailable
    })?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let send = Box::pin(fetch.send_with_signal(&signal));
    let timer = Box::pin(Delay::from(Duration::from_millis(timeout_ms)));
    let raced = select(send, timer).await;
    let outcome = match raced {
        Either::Left((Ok(mut response), _)) => {
            let status = response.status_code();
            let body: BodyStream = match response.stream() {
                Ok(stream) => Box::pin(stream),
                Err(_) => Box::pin(futures_util::stream::empty()),
            };
            Ok(UpstreamReply { status, body })
        }
        Either::Left((Err(e), _)) => {
            worker::console_warn!("upstream fetch failed: {e}");
            Err(GatewayError::UpstreamUnavailable)
        }
        Either::Right(((), _)) => {
            controller.abort();
            Err(GatewayError::UpstreamTimeout)
        }
    };
    outcome
}

fn js_bytes(bytes: &[u8]) -> wasm_bindgen::JsValue {
    worker::js_sys::Uint8Array::from(bytes).into()
}

/// Reads a whole upstream body, up to `limit` bytes.
pub async fn read_all(mut body: BodyStream, limit: usize) -> Result<Vec<u8>, GatewayError> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| GatewayError::UpstreamUnavailable)?;
        if out.len() + chunk.len() > limit {
            return Err(GatewayError::UpstreamUnavailable);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

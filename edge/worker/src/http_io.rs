//! Reading requests and writing responses: bounded bodies, JSON answers,
//! errors rendered once, in the caller's dialect.

use edgeway_core::cors::{self, CorsPolicy};
use edgeway_core::error::{Dialect, GatewayError};
use futures_util::StreamExt;
use worker::{Headers, Request, Response, Result};

/// Reads the whole body, refusing more than `limit` bytes without buffering
/// them: a declared `Content-Length` over the limit is refused before reading.
pub async fn read_body_limited(
    req: &mut Request,
    limit: usize,
) -> std::result::Result<Vec<u8>, GatewayError> {
    let declared =
        req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit_bytes: limit });
    }
    let mut stream = match req.stream() {
        Ok(stream) => stream,
        Err(_) => return Ok(Vec::new()),
    };
    let mut body = Vec::with_capacity(declared.map_or(4096, |l| l as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| GatewayError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::PayloadTooLarge { limit_bytes: limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn base_headers(content_type: &str) -> Result<Headers> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    Ok(headers)
}

/// A JSON response.
pub fn json_response(status: u16, body: &serde_json::Value) -> std::result::Result<Response, GatewayError> {
    bytes_response(status, body.to_string().into_bytes(), "application/json")
}

/// A response with a fixed body.
pub fn bytes_response(
    status: u16,
    body: Vec<u8>,
    content_type: &str,
) -> std::result::Result<Response, GatewayError> {
    let headers = base_headers(content_type).map_err(|_| GatewayError::Internal)?;
    Response::from_bytes(body)
        .map(|r| r.with_status(status).with_headers(headers))
        .map_err(|_| GatewayError::Internal)
}

/// The error as a response in `dialect`, with `Retry-After` when it applies.
pub fn error_response(error: &GatewayError, dialect: Dialect) -> Result<Response> {
    let headers = base_headers("application/json")?;
    if let Some(secs) = error.retry_after_secs() {
        headers.set("retry-after", &secs.to_string())?;
    }
    if matches!(error, GatewayError::MissingApiKey | GatewayError::InvalidApiKey) {
        headers.set("www-authenticate", "Bearer")?;
    }
    Ok(Response::from_bytes(error.body(dialect).into_bytes())?
        .with_status(error.status())
        .with_headers(headers))
}

/// CORS preflight answer for a public API route (`edgeway_core::cors`):
/// 204 with the allowed methods and the safe requested headers, or 403
/// without CORS headers for an origin that is not allowed.
pub fn preflight(req: &Request, policy: &CorsPolicy) -> std::result::Result<Response, GatewayError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let origin = header("origin");
    let requested = header("access-control-request-headers");
    let build = || -> Result<Response> {
        let Some(cors_headers) = cors::preflight_headers(policy, origin.as_deref(), requested.as_deref())
        else {
            return Ok(Response::empty()?.with_status(403));
        };
        let headers = Headers::new();
        for (name, value) in cors_headers {
            headers.set(name, &value)?;
        }
        Ok(Response::empty()?.with_status(204).with_headers(headers))
    };
    build().map_err(|_| GatewayError::Internal)
}

/// Sets the CORS headers of a public API response for `origin` (replacing
/// any set earlier), or removes them when the origin is not allowed.
pub fn apply_cors(response: &Response, policy: &CorsPolicy, origin: Option<&str>) -> Result<()> {
    let headers = response.headers();
    let set = cors::response_headers(policy, origin);
    if set.is_empty() {
        headers.delete("access-control-allow-origin")?;
        headers.delete("access-control-expose-headers")?;
    }
    for (name, value) in set {
        headers.set(name, &value)?;
    }
    Ok(())
}

/// For the JS entry (generation responses are built there): the CORS headers
/// of a public API response, flattened as `[name, value, name, value, …]`;
/// empty when the origin is not allowed (the caller then removes any).
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn cors_response_headers(allow_origins: Option<String>, origin: Option<String>) -> Vec<String> {
    let policy = CorsPolicy::parse(allow_origins.as_deref());
    cors::response_headers(&policy, origin.as_deref())
        .into_iter()
        .flat_map(|(name, value)| [name.to_string(), value])
        .collect()
}

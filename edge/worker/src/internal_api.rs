//! The internal API the admin service pushes configuration through. Every
//! request is HMAC-signed (`edgeway_core::internal_auth`); with no secret
//! configured the whole API refuses, so it can never be open by mistake.

use crate::{bindings, http_io, isolate_cache, runtime::now_ms};
use edgeway_core::api_key::{is_valid_digest, kv_key_for_digest};
use edgeway_core::error::GatewayError;
use edgeway_core::internal_auth::{self, InternalAuthError, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::routing::{RoutingConfig, RoutingTable, ROUTING_KV_KEY};
use serde_json::json;
use worker::{Env, Method, Request, Response};

/// Largest internal request body (a routing config with many channels).
const MAX_INTERNAL_BODY: usize = 1024 * 1024;

pub async fn handle(mut req: Request, env: &Env) -> Result<Response, GatewayError> {
    let path = req.path();
    let method = req.method();
    let body = http_io::read_body_limited(&mut req, MAX_INTERNAL_BODY).await?;
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let secret = bindings::text(env, bindings::EDGE_ADMIN_SECRET);
    let verified = internal_auth::verify(
        secret.as_deref(),
        method.as_ref(),
        &path,
        header(TIMESTAMP_HEADER).as_deref(),
        header(SIGNATURE_HEADER).as_deref(),
        &body,
        now_ms() / 1000,
    );
    if let Err(reason) = verified {
        let message = match reason {
            InternalAuthError::NotConfigured => "internal API disabled: EDGE_ADMIN_SECRET is not set",
            InternalAuthError::Malformed => "missing or malformed signature headers",
            InternalAuthError::Stale => "signature timestamp outside the allowed clock skew",
            InternalAuthError::BadSignature => "bad signature",
        };
        return http_io::json_response(
            401,
            &json!({"error": {"message": message, "type": "authentication_error"}}),
        );
    }
    let kv = env.kv(bindings::KV).map_err(|_| GatewayError::Internal)?;
    let bad = |message: String| GatewayError::InvalidRequest { message, param: None };

    if let Some(digest) = path.strip_prefix("/internal/keys/") {
        if !is_valid_digest(digest) {
            return Err(bad("key digest must be 64 lower-case hex characters".into()));
        }
        return match method {
            Method::Put => {
                let record: KeyRecord =
                    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid key record: {e}")))?;
                if record.digest != digest {
                    return Err(bad("record digest does not match the URL".into()));
                }
                let text = serde_json::to_string(&record).map_err(|_| GatewayError::Internal)?;
                kv.put(&kv_key_for_digest(digest), text)
                    .map_err(|_| GatewayError::Internal)?
                    .execute()
                    .await
                    .map_err(|_| GatewayError::Internal)?;
                isolate_cache::forget_key(digest);
                http_io::json_response(
                    200,
                    &json!({"stored": true, "digest": digest, "version": record.version}),
                )
            }
            Method::Delete => {
                kv.delete(&kv_key_for_digest(digest)).await.map_err(|_| GatewayError::Internal)?;
                isolate_cache::forget_key(digest);
                http_io::json_response(200, &json!({"deleted": true}))
            }
            _ => Err(GatewayError::MethodNotAllowed),
        };
    }
    match (method, path.as_str()) {
        (Method::Put, "/internal/routing") => {
            let config: RoutingConfig =
                serde_json::from_slice(&body).map_err(|e| bad(format!("invalid routing config: {e}")))?;
            let table = RoutingTable::new(config.clone()).map_err(|e| bad(e.0))?;
            let text = serde_json::to_string(&config).map_err(|_| GatewayError::Internal)?;
            kv.put(ROUTING_KV_KEY, text)
                .map_err(|_| GatewayError::Internal)?
                .execute()
                .await
                .map_err(|_| GatewayError::Internal)?;
            isolate_cache::set_routing(table);
            http_io::json_response(
                200,
                &json!({"stored": true, "version": config.version, "models": config.models.len()}),
            )
        }
        (Method::Get, "/internal/routing") => {
            let table = isolate_cache::routing_table(env).await?;
            http_io::json_response(
                200,
                &serde_json::to_value(table.config()).map_err(|_| GatewayError::Internal)?,
            )
        }
        _ => Err(GatewayError::NotFound),
    }
}

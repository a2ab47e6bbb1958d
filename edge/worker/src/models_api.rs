//! The routes that answer from the gateway's own knowledge, with no upstream:
//! model lists and token counts. They authenticate like generation requests
//! (the same key records, through the isolate's memory).

use crate::http_io::{self, read_body_limited};
use crate::isolate;
use crate::runtime::now_ms;
use edgeway_core::api_key::{key_digest, presented_key, CredentialHeaders};
use edgeway_core::error::GatewayError;
use edgeway_core::ip_allow::ip_allowed;
use edgeway_core::key_record::KeyRecord;
use edgeway_core::model_catalog;
use edgeway_core::translate::{self, ClientDialect};
use std::rc::Rc;
use worker::{Env, Request, Response};

/// Resolves the caller's key record from the request's credentials.
pub(crate) async fn authenticate(req: &Request, env: &Env) -> Result<Rc<KeyRecord>, GatewayError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let authorization = header("authorization");
    let x_api_key = header("x-api-key");
    let x_goog_api_key = header("x-goog-api-key");
    let query_key = req
        .url()
        .ok()
        .and_then(|url| url.query_pairs().find(|(k, _)| k == "key").map(|(_, v)| v.into_owned()));
    let credentials = CredentialHeaders {
        authorization: authorization.as_deref(),
        x_api_key: x_api_key.as_deref(),
        x_goog_api_key: x_goog_api_key.as_deref(),
        query_key: query_key.as_deref(),
    };
    let key = presented_key(&credentials).ok_or(GatewayError::MissingApiKey)?;
    let record = isolate::key_record(env, &key_digest(key)).await?;
    record.check_usable(now_ms() / 1000)?;
    if let Some(allowed) = record.allowed_ips.as_deref().filter(|list| !list.is_empty()) {
        // Set by Cloudflare's edge (and by wrangler dev); absent means unknown: refuse.
        if !ip_allowed(allowed, &header("cf-connecting-ip").unwrap_or_default()) {
            return Err(GatewayError::IpNotAllowed);
        }
    }
    Ok(record)
}

/// `GET /v1/models` (OpenAI/Anthropic shape) or `GET /v1beta/models` (Gemini).
pub async fn list_models(req: &Request, env: &Env, gemini: bool) -> Result<Response, GatewayError> {
    let record = authenticate(req, env).await?;
    let table = isolate::routing_table(env).await?;
    let body = if gemini {
        model_catalog::gemini_models_list(&table, &record)
    } else {
        model_catalog::models_list(&table, &record)
    };
    http_io::json_response(200, &body)
}

/// Anthropic `count_tokens` / Gemini `countTokens`, answered by estimate.
pub async fn count_tokens(
    mut req: Request,
    env: &Env,
    client: ClientDialect,
    path_model: Option<String>,
) -> Result<Response, GatewayError> {
    let record = authenticate(&req, env).await?;
    let limit = isolate::with(|s| s.config.max_body_bytes);
    let body = read_body_limited(&mut req, limit).await?;
    let parsed = translate::parse_count_tokens_request(client, &body, path_model.as_deref())?;
    record.check_model(parsed.model_without_suffix.as_deref().unwrap_or(&parsed.model))?;
    let tokens = translate::count_tokens_estimate(&parsed);
    http_io::bytes_response(200, translate::render_count_tokens(client, tokens), "application/json")
}

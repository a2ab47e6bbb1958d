//! # edgeway-worker
//!
//! The edge data plane of edgeway, compiled to WebAssembly and run as a
//! Cloudflare Worker (`wrangler dev` locally, `wrangler deploy` globally).
//!
//! **Key design decision:** this crate is a thin shell. It is the only crate
//! that imports `worker`; it turns platform objects (requests, KV, the
//! per-key Durable Object, D1, the Queue) into `edgeway-core` types and back,
//! and holds no gateway rule of its own. Every decision (who the caller is,
//! where the request goes, what it costs, how the stream is tapped) is a pure
//! function in `edgeway-core`, tested natively.

mod bindings;
mod chat_handler;
mod http_io;
mod internal_api;
mod isolate_cache;
mod key_account_object;
mod mock_upstream;
mod runtime;
mod upstream;
mod usage_pipeline;

use edgeway_core::error::{Dialect, GatewayError};
use worker::{event, Context, Env, Method, Request, Response, Result};

pub use key_account_object::KeyAccount;

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    let outcome = match (method.clone(), path.as_str()) {
        (Method::Post, "/v1/chat/completions") => chat_handler::handle(req, &env, &ctx).await,
        (Method::Get, "/v1/models") => chat_handler::list_models(&req, &env).await,
        (Method::Get, "/health") | (Method::Get, "/") => http_io::json_response(
            200,
            &serde_json::json!({
                "status": "ok",
                "service": "edgeway",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
        (_, p) if p.starts_with("/internal/") => internal_api::handle(req, &env).await,
        (Method::Options, _) => http_io::preflight(),
        (_, "/v1/chat/completions") | (_, "/v1/models") => Err(GatewayError::MethodNotAllowed),
        _ => Err(GatewayError::NotFound),
    };
    match outcome {
        Ok(response) => Ok(response),
        Err(error) => http_io::error_response(&error, Dialect::OpenAi),
    }
}

#[event(queue)]
async fn queue(batch: worker::MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    usage_pipeline::consume(batch, &env).await
}

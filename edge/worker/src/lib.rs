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
mod gateway;
mod http_io;
mod internal_api;
mod isolate_cache;
mod key_account_object;
mod mock_upstream;
mod runtime;
mod upstream;
mod usage_batcher;
mod usage_pipeline;

use edgeway_core::endpoint::{self, Endpoint, NoEndpoint};
use edgeway_core::error::{Dialect, GatewayError};
use worker::{event, Context, Env, Request, Response, Result};

pub use key_account_object::KeyAccount;

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    let endpoint = endpoint::classify(method.as_ref(), &path);
    // Errors are rendered in the dialect of the endpoint that was asked for.
    let dialect = match &endpoint {
        Ok(Endpoint::Generate { client, .. }) | Ok(Endpoint::CountTokens { client, .. }) => {
            client.error_dialect()
        }
        Ok(Endpoint::ListGeminiModels) => Dialect::Gemini,
        _ => Dialect::OpenAi,
    };
    let outcome = match endpoint {
        Ok(Endpoint::Generate { client, path_model, path_stream }) => {
            gateway::generate(req, &env, &ctx, client, path_model, path_stream).await
        }
        Ok(Endpoint::CountTokens { client, path_model }) => {
            gateway::count_tokens(req, &env, client, path_model).await
        }
        Ok(Endpoint::ListModels) => gateway::list_models(&req, &env, false).await,
        Ok(Endpoint::ListGeminiModels) => gateway::list_models(&req, &env, true).await,
        Ok(Endpoint::Health) => http_io::json_response(
            200,
            &serde_json::json!({
                "status": "ok",
                "service": "edgeway",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
        Ok(Endpoint::Internal) => internal_api::handle(req, &env).await,
        Ok(Endpoint::Preflight) => http_io::preflight(),
        Err(NoEndpoint::MethodNotAllowed) => Err(GatewayError::MethodNotAllowed),
        Err(NoEndpoint::NotFound) => Err(GatewayError::NotFound),
    };
    match outcome {
        Ok(response) => Ok(response),
        Err(error) => http_io::error_response(&error, dialect),
    }
}

#[event(queue)]
async fn queue(batch: worker::MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    usage_pipeline::consume(batch, &env).await
}

//! # edgeway-worker
//!
//! The edge data plane of edgeway, compiled to WebAssembly and run as a
//! Cloudflare Worker (`wrangler dev` locally, `wrangler deploy` globally).
//!
//! **Key design decision:** this crate is a thin shell, and on the hot path
//! the shell is JavaScript. Generation requests (every chat, messages,
//! responses and Gemini generate call) are driven by `js/entry.mjs`, which
//! performs I/O with the runtime's own promises and streams and asks the
//! synchronous request machine of `edgeway-core`
//! ([`edgeway_core::pipeline::generation`]) what to do next, through
//! [`driver`]; the same shell syncs the isolate's copy of the channels'
//! health records after each request and runs the cron's health checks
//! ([`health_round`]). Everything else off the hot path (model lists, token
//! counts, stored Responses, the internal API, the per-key, per-user and
//! per-channel Durable Objects, the usage queue consumer) is Rust over
//! `workers-rs`. No gateway rule lives here: this crate converts platform
//! values into `edgeway-core` types and back.

mod bindings;
mod channel_health_object;
mod conversation_object;
mod driver;
mod health_round;
mod http_io;
mod internal_api;
mod internal_guard;
mod isolate;
mod key_account_object;
mod models_api;
mod object_call;
mod responses_api;
mod runtime;
mod usage_pipeline;
mod user_account_object;

use edgeway_core::cors::CorsPolicy;
use edgeway_core::endpoint::{self, Endpoint, NoEndpoint};
use edgeway_core::error::{Dialect, GatewayError};
use worker::{event, Context, Env, Request, Response, Result};

pub use channel_health_object::ChannelHealth;
pub use conversation_object::ConversationStore;
pub use internal_guard::InternalGuard;
pub use key_account_object::KeyAccount;
pub use user_account_object::UserAccount;

/// Logs an internal failure with its cause (never a secret) and returns the
/// error the client sees.
pub(crate) fn internal(what: &str, cause: impl std::fmt::Display) -> GatewayError {
    worker::console_error!("{what}: {cause}");
    GatewayError::Internal
}

/// Every route but generation (which `js/entry.mjs` serves through [`driver`]).
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    let endpoint = endpoint::classify(method.as_ref(), &path);
    // Errors are rendered in the dialect of the endpoint that was asked for,
    // also when the method was wrong (GET /v1/messages is Anthropic's).
    let dialect = match &endpoint {
        Ok(Endpoint::Generate { client, .. }) | Ok(Endpoint::CountTokens { client, .. }) => {
            client.error_dialect()
        }
        Ok(Endpoint::ListGeminiModels) => Dialect::Gemini,
        _ => endpoint::error_dialect(&path),
    };
    let head = method == worker::Method::Head;
    // CORS: for the public API only; /internal/* answers carry none.
    let public = !matches!(endpoint, Ok(Endpoint::Internal)) && !path.starts_with("/internal/");
    let preflight = matches!(endpoint, Ok(Endpoint::Preflight));
    let cors_policy = CorsPolicy::parse(bindings::text(&env, bindings::CORS_ALLOW_ORIGINS).as_deref());
    let origin = req.headers().get("origin").ok().flatten();
    let outcome = match endpoint {
        Ok(Endpoint::Generate { .. }) => {
            Err(internal("routing", "a generation request reached the Rust fetch handler"))
        }
        Ok(Endpoint::CountTokens { client, path_model }) => {
            models_api::count_tokens(req, &env, client, path_model).await
        }
        Ok(Endpoint::StoredResponse { id, delete }) => {
            responses_api::stored_response(&req, &env, &id, delete).await
        }
        Ok(Endpoint::ListModels) => models_api::list_models(&req, &env, false).await,
        Ok(Endpoint::ListGeminiModels) => models_api::list_models(&req, &env, true).await,
        Ok(Endpoint::Health) => http_io::json_response(
            200,
            &serde_json::json!({
                "status": "ok",
                "service": "edgeway",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
        Ok(Endpoint::Internal) => internal_api::handle(req, &env).await,
        Ok(Endpoint::Preflight) => http_io::preflight(&req, &cors_policy),
        Err(NoEndpoint::MethodNotAllowed) => Err(GatewayError::MethodNotAllowed),
        Err(NoEndpoint::NotFound) => Err(GatewayError::NotFound),
    };
    let response = match outcome {
        Ok(response) => response,
        Err(error) => http_io::error_response(&error, dialect)?,
    };
    if public && !preflight {
        http_io::apply_cors(&response, &cors_policy, origin.as_deref())?;
    } else if !public {
        response.headers().delete("access-control-allow-origin")?;
    }
    if head {
        // HEAD: the status and headers of the GET, no body.
        return Ok(Response::empty()?
            .with_status(response.status_code())
            .with_headers(response.headers().clone()));
    }
    Ok(response)
}

#[event(queue)]
async fn queue(batch: worker::MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    usage_pipeline::consume(batch, &env).await
}

//! `GET` and `DELETE /v1/responses/{id}`: responses stored with
//! `store: true`, read from and removed in the caller's key's conversation
//! store (one Durable Object per key digest, so another key's ids name
//! nothing here). The answers are `edgeway_core::translate::responses_state`'s.

use crate::bindings;
use crate::http_io;
use crate::models_api::authenticate;
use crate::runtime::now_ms;
use edgeway_core::conversation_store::{DeleteReply, DeleteRequest, GetReply, GetRequest};
use edgeway_core::error::GatewayError;
use edgeway_core::translate::responses_state::{deleted, response_name, retrieved, valid_id};
use worker::{Env, Headers, Method, Request, RequestInit, Response};

/// One call to the key's conversation store.
async fn store_call(env: &Env, digest: &str, path: &str, body: String) -> worker::Result<String> {
    let stub = env.durable_object(bindings::CONVERSATION_STORE)?.id_from_name(digest)?.get_stub()?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let request = Request::new_with_init(&format!("https://conversation-store{path}"), &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    if response.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "conversation store answered {}",
            response.status_code()
        )));
    }
    response.text().await
}

/// `GET` (or, with `delete`, `DELETE`) `/v1/responses/{id}`.
pub async fn stored_response(
    req: &Request,
    env: &Env,
    id: &str,
    delete: bool,
) -> Result<Response, GatewayError> {
    let record = authenticate(req, env).await?;
    if !valid_id(id) {
        return Err(GatewayError::ResponseNotFound { id: id.to_string() });
    }
    let names = vec![response_name(id)];
    let now_ms = now_ms();
    let (path, body) = if delete {
        ("/delete", serde_json::to_string(&DeleteRequest { names, now_ms }))
    } else {
        ("/get", serde_json::to_string(&GetRequest { names, now_ms }))
    };
    let body = body.map_err(|e| crate::internal("stored response request", e))?;
    let text = store_call(env, &record.digest, path, body)
        .await
        .map_err(|e| crate::internal("conversation store", e))?;
    let answer = if delete {
        let reply: DeleteReply =
            serde_json::from_str(&text).map_err(|e| crate::internal("store reply", e))?;
        deleted(id, &reply)?
    } else {
        let reply: GetReply = serde_json::from_str(&text).map_err(|e| crate::internal("store reply", e))?;
        retrieved(id, &reply)?
    };
    http_io::json_response(200, &answer)
}

//! Calls from the worker (or one Durable Object) to a Durable Object's
//! JSON endpoints: one place for the request, the status check and the
//! decoding, shared by the account clients.

use worker::{Headers, Method, Request, RequestInit, Result, Stub};

/// `method https://{object}{path}` with `body` as JSON; a 2xx answer's body
/// decoded as `R`, anything else an error naming `object` and its answer.
pub async fn json<T: serde::Serialize, R: serde::de::DeserializeOwned>(
    stub: &Stub,
    object: &str,
    method: Method,
    path: &str,
    body: Option<&T>,
) -> Result<R> {
    call(stub, &format!("https://{object}{path}"), method, body).await
}

/// [`json`] at a whole URL (one with a query).
pub async fn call<T: serde::Serialize, R: serde::de::DeserializeOwned>(
    stub: &Stub,
    url: &str,
    method: Method,
    body: Option<&T>,
) -> Result<R> {
    let object = url.split('/').nth(2).unwrap_or("object");
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(body) = body {
        init.with_body(Some(serde_json::to_string(body)?.into()));
    }
    let request = Request::new_with_init(url, &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    let status = response.status_code();
    if !(200..300).contains(&status) {
        let text = response.text().await.unwrap_or_default();
        return Err(worker::Error::RustError(format!("{object} answered {status}: {text}")));
    }
    response.json().await
}

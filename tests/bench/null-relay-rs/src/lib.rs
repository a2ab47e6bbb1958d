//! Null relay: body in, POST to `UPSTREAM_URL` + path, response streamed back
//! chunk by chunk through Rust (the same shape of data path as edgeway's, with
//! no gateway logic: no key lookup, no routing, no Durable Object, no queue).

use worker::{event, js_sys, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result};

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let base = env.var("UPSTREAM_URL")?.to_string();
    let url = format!("{}{}", base.trim_end_matches('/'), req.path());
    let method = req.method();
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("authorization", "Bearer sk-bench")?;
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if method == Method::Post {
        let body = req.bytes().await?;
        init.with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    }
    let upstream = Request::new_with_init(&url, &init)?;
    let mut reply = Fetch::Request(upstream).send().await?;
    let status = reply.status_code();
    let out = Headers::new();
    if let Some(content_type) = reply.headers().get("content-type")? {
        out.set("content-type", &content_type)?;
    }
    let stream = reply.stream()?;
    Ok(Response::from_stream(stream)?.with_status(status).with_headers(out))
}

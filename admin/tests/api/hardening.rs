//! What the admin refuses because the edge could not act on it (issue #13):
//! oversized bodies (413, not 400), channels that would serve nothing,
//! base URLs at link-local or metadata addresses, numbers past 2^53 - 1.

use crate::common::TestApp;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let app = TestApp::sqlite().await;
    let name = "x".repeat(5 * 1024 * 1024);
    let body = serde_json::to_vec(&json!({"name": name})).unwrap();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/keys")
        .header("authorization", format!("Bearer {}", crate::common::TOKEN))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let (status, response) = app.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    assert_eq!(response["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn settings_that_would_do_nothing_are_refused() {
    let app = TestApp::sqlite().await;
    let (status, body) = app
        .call(Method::POST, "/api/channels", Some(json!({"id": "empty", "provider": "mock", "models": []})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at least one model"), "{body}");
    for base_url in ["http://169.254.169.254/v1", "http://[fe80::1]/v1", "http://metadata.google.internal/v1"]
    {
        let channel = json!({"id": "meta", "provider": "openai-compatible", "base_url": base_url, "models": [{"name": "m"}]});
        let (status, body) = app.call(Method::POST, "/api/channels", Some(channel)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{base_url}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("metadata"), "{body}");
    }
    let local = json!({"id": "ollama", "provider": "openai-compatible", "base_url": "http://127.0.0.1:11434/v1", "models": [{"name": "llama", "weight": 0}]});
    let (status, body) = app.call(Method::POST, "/api/channels", Some(local)).await;
    assert_eq!(status, StatusCode::CREATED, "a private server and a standby weight are fine: {body}");
}

#[tokio::test]
async fn numbers_past_2_pow_53_are_refused() {
    let app = TestApp::sqlite().await;
    let limit = (1i64 << 53) - 1;
    let (status, body) =
        app.call(Method::POST, "/api/keys", Some(json!({"name": "max", "quota_micros": limit}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for bad in [
        json!({"name": "q", "quota_micros": limit + 1}),
        json!({"name": "q", "quota_micros": i64::MAX}),
        json!({"name": "t", "tpm": u64::MAX}),
    ] {
        let (status, body) = app.call(Method::POST, "/api/keys", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let channel = |price: i64| json!({"id": format!("p{price}"), "provider": "mock", "models": [{"name": format!("m{price}"), "price": {"input": price, "output": 1}}]});
    let (status, body) = app.call(Method::POST, "/api/channels", Some(channel(limit))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.call(Method::POST, "/api/channels", Some(channel(limit + 1))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

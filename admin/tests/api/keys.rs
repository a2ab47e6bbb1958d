use crate::common::{DbKind, Options, TestApp, TOKEN};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use edgeway_core::api_key::key_digest;
use serde_json::{json, Value};

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn admin_routes_refuse_missing_or_wrong_tokens() {
    let app = TestApp::sqlite().await;
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        for (method, path) in [
            (Method::GET, "/api/keys"),
            (Method::POST, "/api/keys"),
            (Method::GET, "/api/channels"),
            (Method::GET, "/api/usage"),
            (Method::POST, "/api/sync"),
        ] {
            let (status, body) = app.call_as(method.clone(), path, Some(json!({"name": "x"})), token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            assert_eq!(error_type(&body), "authentication_error");
            assert!(body["error"]["message"].is_string());
        }
    }
    // Not a bearer scheme.
    let request = axum::http::Request::builder()
        .uri("/api/keys")
        .header("authorization", format!("Basic {TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.0, StatusCode::UNAUTHORIZED);
    // Health and the OpenAPI document need no token.
    let (status, body) = app.call_as(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "database": "sqlite"}));
    let (status, body) = app.call_as(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = TestApp::sqlite().await;
    let (status, body) = app.call(Method::GET, "/api/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_type(&body), "not_found_error");
    let (status, body) = app.call(Method::PUT, "/api/keys", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_type(&body), "method_not_allowed");
}

async fn key_is_returned_once_and_only_its_digest_is_stored(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let (status, created) = app
        .call(
            Method::POST,
            "/api/keys",
            Some(json!({
                "name": "ci", "owner": "alice", "group": "team-a",
                "allowed_models": ["gpt-4o-mini", "gpt-4o-mini", "mock-small"],
                "quota_micros": 5_000_000, "rpm": 60, "tpm": 100_000, "max_concurrency": 4,
                "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"],
                "expires_at": 4_102_444_800i64
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-ew-") && key.len() == 49, "{key}");
    assert!(key[6..].bytes().all(|b| b.is_ascii_alphanumeric()));
    let digest = key_digest(&key);
    assert_eq!(created["digest"], digest);
    assert_eq!(created["key_prefix"], &key[..10]);
    assert_eq!(created["status"], "active");
    assert_eq!(created["group"], "team-a");
    assert_eq!(created["allowed_models"], json!(["gpt-4o-mini", "mock-small"]));
    assert_eq!(created["version"], 1);
    assert_eq!(created["edge_synced"], false, "no edge configured");
    let id = created["id"].as_str().unwrap().to_string();

    // Never again: not in the list, not in the single view.
    let (status, listed) = app.call(Method::GET, "/api/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&key));
    let (status, one) = app.call(Method::GET, &format!("/api/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!one.to_string().contains(&key));
    assert!(one.get("key").is_none());
    assert_eq!(one["digest"], digest);
    assert_eq!(one["rpm"], 60);
    assert_eq!(one["allowed_ips"], json!(["10.0.0.0/8", "2001:db8::/32"]));

    // The database holds the digest, never the key.
    let dump = app.dump().await;
    assert!(dump.contains(&digest), "the dump should contain the digest (sanity check of the dump)");
    assert!(!dump.contains(&key), "the plaintext key must not be stored");
    assert!(!dump.contains(&key[10..]), "no part of the key past its label may be stored");

    let (status, body) = app.call(Method::GET, "/api/keys/key_missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_type(&body), "not_found_error");
}
on_both_databases!(key_is_returned_once_and_only_its_digest_is_stored);

async fn patch_and_revoke_bump_the_version(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let (_, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k", "rpm": 10}))).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/keys/{id}");

    let (status, patched) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"rpm": null, "tpm": 500, "quota_micros": 42, "allowed_models": ["m1"], "name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["rpm"], Value::Null);
    assert_eq!(patched["tpm"], 500);
    assert_eq!(patched["quota_micros"], 42);
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["allowed_models"], json!(["m1"]));

    let (status, patched) = app.call(Method::PATCH, &path, Some(json!({"status": "disabled"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((patched["status"].as_str(), patched["version"].as_u64()), (Some("disabled"), Some(3)));
    let (_, patched) =
        app.call(Method::PATCH, &path, Some(json!({"status": "active", "allowed_models": []}))).await;
    assert_eq!((patched["status"].as_str(), patched["version"].as_u64()), (Some("active"), Some(4)));
    assert_eq!(patched["allowed_models"], Value::Null, "an empty list means every model");

    let (status, revoked) = app.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["status"], "disabled");
    assert_eq!(revoked["version"], 5);
    assert_eq!(revoked["edge_synced"], false);
    // The row stays (for the ledger), disabled.
    let (status, kept) = app.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["status"], "disabled");
    assert_eq!(kept["tpm"], 500);

    for method in [Method::PATCH, Method::DELETE] {
        let (status, _) = app.call(method, "/api/keys/key_nope", Some(json!({"rpm": 1}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
on_both_databases!(patch_and_revoke_bump_the_version);

#[tokio::test]
async fn invalid_key_input_is_a_clear_400() {
    let app = TestApp::sqlite().await;
    let cases = [
        (json!({}), "name"),
        (json!({"name": "  "}), "`name` must not be empty"),
        (json!({"name": "x", "quota": 1}), "unknown field `quota`"),
        (json!({"name": "x", "rpm": 0}), "at least 1"),
        (json!({"name": "x", "rpm": -5}), "rpm"),
        (json!({"name": "x", "quota_micros": -1}), "`quota_micros` must not be negative"),
        (json!({"name": "x", "expires_at": 1}), "`expires_at`"),
        (json!({"name": "x", "expires_at": 4_102_444_800_000i64}), "not milliseconds"),
        (json!({"name": "x", "allowed_ips": ["10.0.0.0/40"]}), "`allowed_ips`"),
        (json!({"name": "x", "allowed_ips": ["example.com"]}), "`allowed_ips`"),
        (json!({"name": "x", "group": "has space"}), "`group`"),
        (json!({"name": "x", "allowed_models": [""]}), "`allowed_models`"),
        (json!({"name": "x", "name2": 1}), "unknown field"),
        (json!("just a string"), "invalid type"),
    ];
    for (body, expected) in cases {
        let (status, response) = app.call(Method::POST, "/api/keys", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        assert_eq!(error_type(&response), "invalid_request_error", "{body}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should mention `{expected}`");
    }
    // Not JSON at all.
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/keys")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    let (status, response) = app.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_type(&response), "invalid_request_error");

    let (_, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    let path = format!("/api/keys/{}", created["id"].as_str().unwrap());
    for (body, expected) in [
        (json!({}), "nothing to change"),
        (json!({"status": "paused"}), "status"),
        (json!({"max_concurrency": 0}), "at least 1"),
        (json!({"expires_at": 5}), "`expires_at`"),
        (json!({"digest": "00"}), "unknown field"),
    ] {
        let (status, response) = app.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should mention `{expected}`");
    }
    // Nothing was changed by the refused requests.
    let (_, key) = app.call(Method::GET, &path, None).await;
    assert_eq!(key["version"], 1);
    assert_eq!(key["status"], "active");
}

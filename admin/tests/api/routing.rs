use crate::common::{DbKind, Options, TestApp};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

fn mock_channel() -> Value {
    json!({
        "id": "mock-1",
        "provider": "mock",
        "mock": {"latency_ms": 5, "chunk_delay_ms": 1},
        "models": [
            {"name": "mock-small", "price": {"input": 150000, "output": 600000}, "owned_by": "edgeway"},
            {"name": "mock-large", "upstream_model": "mock-xl", "priority": 5, "weight": 3,
             "options": {"empty_reply_free": true, "fold_thinking": true}}
        ]
    })
}

async fn channels_and_models_round_trip_without_exposing_credentials(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let (status, created) = app.call(Method::POST, "/api/channels", Some(mock_channel())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["channel"]["id"], "mock-1");
    assert_eq!(created["edge_synced"], false);
    let first_version = created["routing_version"].as_u64().unwrap();
    assert!(first_version > 0);

    let upstream = json!({
        "id": "openai-main",
        "provider": "openai",
        "api_key": "sk-upstream-canary-0123456789",
        "timeout_ms": 30000,
        "models": [{"name": "mock-small", "priority": 1}, {"name": "gpt-4o-mini", "price": {"input": 150000, "output": 600000, "cache_read": 75000}}]
    });
    let (status, created) = app.call(Method::POST, "/api/channels", Some(upstream.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created["routing_version"].as_u64().unwrap() > first_version, "versions increase");
    assert_eq!(created["channel"]["has_api_key"], true);

    let (status, channels) = app.call(Method::GET, "/api/channels", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!channels.to_string().contains("sk-upstream-canary"), "credentials are never returned");
    let list = channels["data"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["has_api_key"], false);
    assert_eq!(list[0]["mock"], json!({"latency_ms": 5, "chunk_delay_ms": 1}));
    assert_eq!(list[1]["timeout_ms"], 30000);
    assert_eq!(list[1]["models"].as_array().unwrap().len(), 2);

    let (status, models) = app.call(Method::GET, "/api/models", None).await;
    assert_eq!(status, StatusCode::OK);
    let models = models["data"].as_array().unwrap().clone();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gpt-4o-mini", "mock-large", "mock-small"]);
    let small = &models[2];
    assert_eq!(small["price"]["input"], 150000, "an existing price stays when a new channel sets none");
    assert_eq!(small["owned_by"], "edgeway");
    assert_eq!(small["targets"].as_array().unwrap().len(), 2);
    assert_eq!(models[1]["targets"][0]["upstream_model"], "mock-xl");
    assert_eq!(models[1]["targets"][0]["weight"], 3);
    assert_eq!(models[1]["options"], json!({"empty_reply_free": true, "fold_thinking": true}));
    assert!(small.get("options").is_none(), "options all off are not shown");

    // Duplicate id.
    let (status, body) = app.call(Method::POST, "/api/channels", Some(upstream)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Deleting a channel removes its targets and the models left without one.
    let (status, deleted) = app.call(Method::DELETE, "/api/channels/openai-main", None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["deleted"], "openai-main");
    let (_, models) = app.call(Method::GET, "/api/models", None).await;
    let names: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mock-large", "mock-small"]);
    assert_eq!(models["data"][1]["targets"].as_array().unwrap().len(), 1);
    let (status, _) = app.call(Method::DELETE, "/api/channels/openai-main", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
on_both_databases!(channels_and_models_round_trip_without_exposing_credentials);

async fn invalid_channels_are_refused_and_leave_nothing_behind(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let cases = [
        (json!({"id": "x", "provider": "nope"}), "unknown provider `nope`"),
        (json!({"id": "bad id", "provider": "mock"}), "`id`"),
        (json!({"provider": "mock"}), "missing field `id`"),
        // Valid alone, refused by the routing table: this provider needs a base_url.
        (json!({"id": "x", "provider": "openai-compatible", "models": [{"name": "m"}]}), "needs a base_url"),
        (json!({"id": "x", "provider": "openai", "base_url": "file:///etc/passwd"}), "`base_url`"),
        (json!({"id": "x", "provider": "openai", "timeout_ms": 0}), "`timeout_ms`"),
        (json!({"id": "x", "provider": "openai", "mock": {"latency_ms": 1}}), "only to the `mock` provider"),
        (json!({"id": "x", "provider": "mock", "models": [{"name": "m"}, {"name": "m"}]}), "listed twice"),
        (
            json!({"id": "x", "provider": "mock", "models": [{"name": "m", "price": {"input": -1}}]}),
            "negative",
        ),
        (json!({"id": "x", "provider": "mock", "models": [{"name": "m", "wieght": 2}]}), "unknown field"),
    ];
    for (body, expected) in cases {
        let (status, response) = app.call(Method::POST, "/api/channels", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should mention `{expected}`");
    }
    let (_, channels) = app.call(Method::GET, "/api/channels", None).await;
    assert_eq!(channels["data"], json!([]));
    let (_, models) = app.call(Method::GET, "/api/models", None).await;
    assert_eq!(models["data"], json!([]));
    assert_eq!(models["routing_version"], 0, "a refused change does not bump the version");
}
on_both_databases!(invalid_channels_are_refused_and_leave_nothing_behind);

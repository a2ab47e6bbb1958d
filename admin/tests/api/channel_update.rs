//! `PATCH /api/channels/{id}`: a partial change of a channel's own fields,
//! checked as a new channel is, pushed to the edge like every routing change.

use crate::common::{DbKind, FakeEdge, Options, TestApp};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use edgeway_core::routing::{KeyRotation, RoutingConfig};
use serde_json::{json, Value};

const KEY: &str = "sk-edit-canary-0123456789";

/// An OpenAI channel with every optional field set.
fn full_channel() -> Value {
    json!({
        "id": "main",
        "provider": "openai",
        "base_url": "https://upstream.test/v1",
        "api_key": KEY,
        "timeout_ms": 30000,
        "first_content_timeout_ms": 20000,
        "idle_timeout_ms": 15000,
        "groups": ["vip"],
        "media_hosts": ["files.internal"],
        "breaker": {"failures": 3, "window_ms": 10000, "open_ms": 5000},
        "key_rotation": "random",
        "models": [{"name": "gpt-edit", "upstream_model": "gpt-4o-mini", "priority": 2, "weight": 3}]
    })
}

async fn setup(db: DbKind) -> (TestApp, FakeEdge) {
    let edge = FakeEdge::start().await;
    let app = TestApp::new(db, Options { edge_url: Some(edge.url()), ..Options::default() }).await;
    let (status, created) = app.call(Method::POST, "/api/channels", Some(full_channel())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (app, edge)
}

async fn patch(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::PATCH, &format!("/api/channels/{id}"), Some(body)).await
}

async fn view(app: &TestApp, id: &str) -> Value {
    let (status, list) = app.call(Method::GET, "/api/channels", None).await;
    assert_eq!(status, StatusCode::OK);
    list["data"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap()
}

async fn routing_version(app: &TestApp) -> u64 {
    app.call(Method::GET, "/api/models", None).await.1["routing_version"].as_u64().unwrap()
}

/// The routing config of the fake edge's last push.
fn last_pushed(edge: &FakeEdge) -> RoutingConfig {
    let push = edge.pushes().into_iter().rev().find(|p| p.path == "/internal/routing").unwrap();
    assert!(push.verified);
    serde_json::from_slice(&push.body).unwrap()
}

async fn a_patch_changes_only_the_fields_it_sends(db: DbKind) {
    let (app, edge) = setup(db).await;
    let before = view(&app, "main").await;
    let version = routing_version(&app).await;

    let (status, changed) = patch(&app, "main", json!({"timeout_ms": 45000})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["edge_synced"], true);
    assert!(changed.get("deleted").is_none());
    let new_version = changed["routing_version"].as_u64().unwrap();
    assert!(new_version > version, "the routing version is bumped");
    let mut expected = before.clone();
    expected["timeout_ms"] = json!(45000);
    assert_eq!(changed["channel"], expected, "only the sent field changed");
    assert_eq!(view(&app, "main").await, expected, "and it is stored");
    let pushed = last_pushed(&edge);
    assert_eq!(pushed.version, new_version);
    let ch = &pushed.channels[0];
    assert_eq!(ch.timeout_ms, Some(45000));
    assert_eq!(ch.api_key.as_deref(), Some(KEY), "the credential stays when no key is sent");
    assert_eq!(ch.base_url.as_deref(), Some("https://upstream.test/v1"));
    assert_eq!((ch.first_content_timeout_ms, ch.idle_timeout_ms), (Some(20000), Some(15000)));
    assert_eq!(ch.groups, ["vip"]);
    assert_eq!(ch.media_hosts, ["files.internal"]);
    assert_eq!(ch.breaker.map(|b| b.failures), Some(3));
    assert_eq!(ch.key_rotation, KeyRotation::Random);
    assert_eq!(pushed.models[0].targets[0].channel, "main", "its models still route to it");
    assert_eq!(pushed.models[0].targets[0].weight, 3);

    // Disabled: still in the pushed config, with `enabled: false`.
    let (status, changed) = patch(&app, "main", json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["channel"]["enabled"], false);
    assert_eq!(changed["channel"]["timeout_ms"], 45000);
    let pushed = last_pushed(&edge);
    assert_eq!(pushed.channels.len(), 1);
    assert!(!pushed.channels[0].enabled);
    let raw: Value = serde_json::from_slice(&edge.pushes().last().unwrap().body).unwrap();
    assert_eq!(raw["channels"][0]["enabled"], false, "the edge reads `enabled: false`");
    assert_eq!(pushed.models[0].targets.len(), 1, "a disabled channel keeps its targets");
    assert_eq!(view(&app, "main").await["enabled"], false);
    let (_, changed) = patch(&app, "main", json!({"enabled": true})).await;
    assert_eq!(changed["channel"]["enabled"], true);
    assert!(last_pushed(&edge).channels[0].enabled);

    // Keys: either field replaces the whole rotation; none is ever returned.
    let (status, changed) =
        patch(&app, "main", json!({"api_keys": ["sk-edit-second-aaaa", "sk-edit-third-bbbb"]})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["channel"]["credentials"], 2);
    assert_eq!(changed["channel"]["has_api_key"], true);
    assert_eq!(last_pushed(&edge).channels[0].credentials(), ["sk-edit-second-aaaa", "sk-edit-third-bbbb"]);
    let (status, changed) =
        patch(&app, "main", json!({"api_key": null, "api_key_secret": "OPENAI_KEY"})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["channel"]["credentials"].as_u64(), changed["channel"]["has_api_key"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(changed["channel"]["api_key_secret"], "OPENAI_KEY");
    assert!(last_pushed(&edge).channels[0].credentials().is_empty());

    // `null` clears a field with a default; other fields replace.
    let (status, changed) = patch(
        &app,
        "main",
        json!({"timeout_ms": null, "breaker": null, "groups": [], "media_hosts": ["10.0.0.7"], "key_rotation": "round_robin"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let ch = &changed["channel"];
    assert_eq!((ch["timeout_ms"].clone(), ch["breaker"].clone()), (Value::Null, Value::Null));
    assert_eq!(ch["groups"], json!([]));
    assert_eq!(ch["media_hosts"], json!(["10.0.0.7"]));
    assert_eq!(ch["key_rotation"], "round_robin");
    assert_eq!(ch["idle_timeout_ms"], 15000, "unsent fields stay");
    assert_eq!(ch["models"], before["models"], "the models are not touched");

    // Recorded in the audit log, with no credential in it.
    let (_, audit) = app.call(Method::GET, "/api/audit?target_id=main", None).await;
    let updates: Vec<&Value> =
        audit["data"].as_array().unwrap().iter().filter(|a| a["action"] == "channel.update").collect();
    assert_eq!(updates.len(), 6, "{audit}");
    let text = audit.to_string();
    assert!(!text.contains("sk-edit-"), "no credential in the audit log");
    let all = app.call(Method::GET, "/api/channels", None).await.1.to_string();
    assert!(!all.contains("sk-edit-"), "no credential in the list");
    edge.stop();
}
on_both_databases!(a_patch_changes_only_the_fields_it_sends);

async fn bad_patches_are_refused_and_change_nothing(db: DbKind) {
    let (app, edge) = setup(db).await;
    let (status, created) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(
                json!({"id": "compat", "provider": "openai-compatible", "base_url": "https://compat.test/v1",
                        "models": [{"name": "c-model"}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let version = routing_version(&app).await;
    let channels = app.call(Method::GET, "/api/channels", None).await.1;
    let pushes = edge.pushes().len();
    let cases = [
        ("main", json!({}), "nothing to change"),
        ("main", json!({"provider": "anthropic"}), "unknown field `provider`"),
        ("main", json!({"id": "other"}), "unknown field `id`"),
        ("main", json!({"models": []}), "unknown field `models`"),
        ("main", json!({"timeuot_ms": 5}), "unknown field `timeuot_ms`"),
        ("main", json!({"enabled": "yes"}), "invalid type"),
        ("main", json!({"timeout_ms": 0}), "`timeout_ms`"),
        ("main", json!({"idle_timeout_ms": 600001}), "`idle_timeout_ms`"),
        ("main", json!({"base_url": "file:///etc/passwd"}), "`base_url`"),
        ("main", json!({"api_key": "has space"}), "`api_key`"),
        ("main", json!({"api_keys": ["sk-ok-1234", ""]}), "`api_keys[1]`"),
        ("main", json!({"api_key_secret": "BAD-NAME"}), "`api_key_secret`"),
        ("main", json!({"mock": {"latency_ms": 1}}), "only to the `mock` provider"),
        ("main", json!({"groups": ["bad id"]}), "`groups[]`"),
        ("main", json!({"media_hosts": ["http://files.internal/x"]}), "`media_hosts[0]`"),
        ("main", json!({"breaker": {"failures": 20000}}), "`breaker`"),
        ("main", json!({"breaker": {"failures": 1, "nope": 2}}), "unknown field `nope`"),
        ("main", json!({"breaker": {"failures": 2, "window_ms": 0}}), "at least 1 while `failures` is set"),
        ("main", json!({"breaker": {"open_ms": 0}}), "at least 1 while `failures` is set"),
        ("main", json!({"key_rotation": "sideways"}), "unknown variant"),
        // Valid alone, refused by the routing table after the write (rolled back).
        ("compat", json!({"base_url": null, "enabled": false}), "needs a base_url"),
    ];
    for (id, body, expected) in cases {
        let (status, response) = patch(&app, id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should mention `{expected}`");
        assert!(!message.contains(KEY));
    }
    let (status, response) = patch(&app, "nope", json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{response}");
    assert!(response["error"]["message"].as_str().unwrap().contains("nope"));

    assert_eq!(routing_version(&app).await, version, "a refused change does not bump the version");
    assert_eq!(app.call(Method::GET, "/api/channels", None).await.1, channels, "nothing changed");
    assert_eq!(edge.pushes().len(), pushes, "nothing pushed");
    let (_, audit) = app.call(Method::GET, "/api/audit", None).await;
    assert!(audit["data"].as_array().unwrap().iter().all(|a| a["action"] != "channel.update"));
    edge.stop();
}
on_both_databases!(bad_patches_are_refused_and_change_nothing);

async fn only_admins_change_channels(db: DbKind) {
    let (app, edge) = setup(db).await;
    let user = app.user("carol", "user").await;
    let version = routing_version(&app).await;
    let (status, _) = app
        .call_as(Method::PATCH, "/api/channels/main", Some(json!({"enabled": false})), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        app.call_as(Method::PATCH, "/api/channels/main", Some(json!({"enabled": false})), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(view(&app, "main").await["enabled"], true);
    assert_eq!(routing_version(&app).await, version);
    let admin = app.user("dave", "admin").await;
    let (status, changed) = app
        .call_as(Method::PATCH, "/api/channels/main", Some(json!({"enabled": false})), Some(&admin.token))
        .await;
    assert_eq!(status, StatusCode::OK, "an admin may: {changed}");
    assert_eq!(changed["channel"]["enabled"], false);
    edge.stop();
}
on_both_databases!(only_admins_change_channels);

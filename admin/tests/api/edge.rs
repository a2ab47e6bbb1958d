use crate::common::{closed_port, DbKind, FakeEdge, Options, TestApp};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use edgeway_core::api_key::key_digest;
use edgeway_core::key_record::{KeyRecord, KeyStatus};
use edgeway_core::routing::{RoutingConfig, RoutingTable};
use serde_json::json;
use std::time::Duration;

async fn app_with_edge(url: String) -> TestApp {
    TestApp::new(DbKind::Sqlite, Options { edge_url: Some(url), ..Options::default() }).await
}

async fn key_and_routing_changes_are_pushed_signed(db: DbKind) {
    let edge = FakeEdge::start().await;
    let app = TestApp::new(db, Options { edge_url: Some(edge.url()), ..Options::default() }).await;

    let (status, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k", "rpm": 7}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["edge_synced"], true);
    let key = created["key"].as_str().unwrap().to_string();
    let digest = key_digest(&key);
    let id = created["id"].as_str().unwrap().to_string();

    let (_, patched) = app.call(Method::PATCH, &format!("/api/keys/{id}"), Some(json!({"rpm": 9}))).await;
    assert_eq!(patched["edge_synced"], true);
    let (_, revoked) = app.call(Method::DELETE, &format!("/api/keys/{id}"), None).await;
    assert_eq!(revoked["edge_synced"], true);

    let pushes = edge.pushes();
    assert_eq!(pushes.len(), 3);
    let mut versions = Vec::new();
    for push in &pushes {
        assert_eq!(push.method, Method::PUT);
        assert_eq!(push.path, format!("/internal/keys/{digest}"));
        assert!(push.verified, "signature must verify with internal_auth::verify");
        assert!(!String::from_utf8_lossy(&push.body).contains(&key), "the key itself is never pushed");
        let record: KeyRecord = serde_json::from_slice(&push.body).unwrap();
        assert_eq!(record.digest, digest);
        versions.push(record.version);
    }
    assert_eq!(versions, [1, 2, 3]);
    let last: KeyRecord = serde_json::from_slice(&pushes[2].body).unwrap();
    assert_eq!(last.status, KeyStatus::Disabled);
    assert_eq!(last.rpm, Some(9));
    let middle: KeyRecord = serde_json::from_slice(&pushes[1].body).unwrap();
    assert_eq!(middle.status, KeyStatus::Active);

    let channel = json!({
        "id": "mock-1", "provider": "mock",
        "models": [{"name": "mock-small", "price": {"input": 1, "output": 2}}]
    });
    let (status, created) = app.call(Method::POST, "/api/channels", Some(channel)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["edge_synced"], true);
    let (_, deleted) = app.call(Method::DELETE, "/api/channels/mock-1", None).await;
    assert_eq!(deleted["edge_synced"], true);

    let routing: Vec<_> = edge.pushes().into_iter().skip(3).collect();
    assert_eq!(routing.len(), 2);
    let mut last_version = 0;
    for push in &routing {
        assert_eq!(push.path, "/internal/routing");
        assert!(push.verified);
        let config: RoutingConfig = serde_json::from_slice(&push.body).unwrap();
        assert!(config.version > last_version, "routing versions increase");
        last_version = config.version;
        RoutingTable::new(config).unwrap();
    }
    let first: RoutingConfig = serde_json::from_slice(&routing[0].body).unwrap();
    assert_eq!(first.channels.len(), 1);
    assert_eq!(first.models[0].name, "mock-small");
    assert_eq!(first.models[0].price.output, 2);
    let second: RoutingConfig = serde_json::from_slice(&routing[1].body).unwrap();
    assert!(second.channels.is_empty() && second.models.is_empty());
    edge.stop();
}
on_both_databases!(key_and_routing_changes_are_pushed_signed);

#[tokio::test]
async fn edge_down_then_sync_converges() {
    let addr = closed_port().await;
    let app = app_with_edge(format!("http://{addr}")).await;

    let (status, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    assert_eq!(status, StatusCode::CREATED, "the change is committed even when the edge is down");
    assert_eq!(created["edge_synced"], false);
    let digest = created["digest"].as_str().unwrap().to_string();
    let (status, created) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"id": "m", "provider": "mock", "models": [{"name": "x"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["edge_synced"], false);
    let routing_version = created["routing_version"].as_u64().unwrap();
    let (_, listed) = app.call(Method::GET, "/api/keys", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let (status, body) = app.call(Method::POST, "/api/sync", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["type"], "edge_sync_error");

    let edge = FakeEdge::start_on(addr).await;
    let (status, report) = app.call(Method::POST, "/api/sync", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["edge_synced"], true);
    assert_eq!(report["keys_pushed"], 1);
    assert_eq!(report["routing_version"], routing_version);
    let pushes = edge.pushes();
    assert!(pushes.iter().all(|p| p.verified));
    let paths: Vec<&str> = pushes.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["/internal/routing".to_string(), format!("/internal/keys/{digest}")]);
    let config: RoutingConfig = serde_json::from_slice(&pushes[0].body).unwrap();
    assert_eq!(config.version, routing_version);
    edge.stop();
}

#[tokio::test]
async fn edge_url_with_trailing_slash_and_refused_pushes() {
    let edge = FakeEdge::start().await;
    let app = app_with_edge(format!("{}/", edge.url())).await;
    let (_, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    assert_eq!(created["edge_synced"], true, "a trailing slash in EDGE_URL is fine");

    // An admin signing with another secret is refused by the edge (401).
    let app = TestApp::new(
        DbKind::Sqlite,
        Options {
            edge_url: Some(edge.url()),
            edge_secret: Some("another-secret-0123456789".into()),
            ..Options::default()
        },
    )
    .await;
    let (status, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["edge_synced"], false);
    assert!(!edge.pushes().last().unwrap().verified);
    let (status, body) = app.call(Method::POST, "/api/sync", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    edge.stop();
}

#[tokio::test]
async fn startup_sync_pushes_everything_once_the_edge_answers() {
    let addr = closed_port().await;
    let app = app_with_edge(format!("http://{addr}")).await;
    let (_, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    assert_eq!(created["edge_synced"], false);
    let channel = json!({"id": "m", "provider": "mock", "models": [{"name": "x"}]});
    let (_, created) = app.call(Method::POST, "/api/channels", Some(channel)).await;
    assert_eq!(created["edge_synced"], false);
    let task = edgeway_admin::edge_sync::spawn_startup_sync(app.state.clone()).unwrap();
    // The first attempt fails; the edge comes up before the retry (after 1 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edge = FakeEdge::start_on(addr).await;
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    let paths: Vec<String> = edge.pushes().into_iter().map(|p| p.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(paths[0], "/internal/routing");
    assert!(paths[1].starts_with("/internal/keys/"));
    edge.stop();
}

#[tokio::test]
async fn a_fresh_admin_does_not_wipe_the_edge_routing() {
    let edge = FakeEdge::start().await;
    let app = app_with_edge(edge.url()).await;
    let (status, report) = app.call(Method::POST, "/api/sync", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["routing_version"], 0);
    assert!(edge.pushes().is_empty(), "an empty, never-changed routing config is not pushed");
    // Once configured, even an emptied config is pushed.
    let channel = json!({"id": "m", "provider": "mock", "models": [{"name": "x"}]});
    app.call(Method::POST, "/api/channels", Some(channel)).await;
    app.call(Method::DELETE, "/api/channels/m", None).await;
    let (status, _) = app.call(Method::POST, "/api/sync", None).await;
    assert_eq!(status, StatusCode::OK);
    let last: RoutingConfig = serde_json::from_slice(&edge.pushes().last().unwrap().body).unwrap();
    assert!(last.version > 0 && last.channels.is_empty());
    edge.stop();
}

/// Concurrent changes of one key: every one lands, and the last record the
/// edge receives is the newest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_reach_the_edge_in_order() {
    let edge = FakeEdge::start().await;
    let app = std::sync::Arc::new(app_with_edge(edge.url()).await);
    let (_, created) = app.call(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    let path = format!("/api/keys/{}", created["id"].as_str().unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for rpm in 1..=8u32 {
        let (app, path) = (app.clone(), path.clone());
        tasks.spawn(async move { app.call(Method::PATCH, &path, Some(json!({"rpm": rpm}))).await });
    }
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, stored) = app.call(Method::GET, &path, None).await;
    assert_eq!(stored["version"], 9, "no change is lost");
    let last: KeyRecord = serde_json::from_slice(&edge.pushes().last().unwrap().body).unwrap();
    assert_eq!(last.version, 9);
    assert_eq!(Some(u64::from(last.rpm.unwrap())), stored["rpm"].as_u64());
    edge.stop();
}

async fn test_keys_carry_pin_allowed_to_the_edge(db: DbKind) {
    let edge = FakeEdge::start().await;
    let app = TestApp::new(db, Options { edge_url: Some(edge.url()), ..Options::default() }).await;
    let (status, created) = app
        .call(Method::POST, "/api/keys", Some(json!({"name": "channel tests", "pin_allowed": true})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["pin_allowed"], true);
    let id = created["id"].as_str().unwrap().to_string();
    let (status, ordinary) = app.call(Method::POST, "/api/keys", Some(json!({"name": "customer"}))).await;
    assert_eq!((status, &ordinary["pin_allowed"]), (StatusCode::CREATED, &json!(false)));
    let (_, patched) =
        app.call(Method::PATCH, &format!("/api/keys/{id}"), Some(json!({"pin_allowed": false}))).await;
    assert_eq!(patched["pin_allowed"], false);
    let records: Vec<KeyRecord> =
        edge.pushes().iter().map(|p| serde_json::from_slice(&p.body).unwrap()).collect();
    assert_eq!(records.iter().map(|r| r.pin_allowed).collect::<Vec<_>>(), [true, false, false]);
}

on_both_databases!(test_keys_carry_pin_allowed_to_the_edge);

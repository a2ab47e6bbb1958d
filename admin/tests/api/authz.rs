//! The authorization matrix, generated from the route table: every route ×
//! (anonymous, user A, user B, admin, root). A route added to the table
//! without a sample request here fails this test, so none can be forgotten.

use crate::common::{Options, TestApp, TestUser, TOKEN};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use edgeway_admin::auth::Access;
use edgeway_admin::config::{AccountsConfig, SignupMode};
use serde_json::{json, Value};

const A_PASSWORD: &str = "password-of-a-123";

struct World {
    app: TestApp,
    a: TestUser,
    b: TestUser,
    admin: TestUser,
    a_key: String,
    a_token_id: String,
    code_id: String,
}

/// `password`: give user A a password (argon2 is slow by design; only the
/// login route needs one).
async fn world_with(password: bool) -> World {
    let accounts = AccountsConfig { signup_mode: SignupMode::Open, ..AccountsConfig::default() };
    let app = TestApp::new(
        crate::common::DbKind::Sqlite,
        Options { accounts: Some(accounts), ..Options::default() },
    )
    .await;
    let a = if password {
        app.user_with("alice", json!({"password": A_PASSWORD})).await
    } else {
        app.user("alice", "user").await
    };
    let b = app.user("bob", "user").await;
    let admin = app.user("adam", "admin").await;
    let (status, key) =
        app.call_as(Method::POST, "/api/me/keys", Some(json!({"name": "a-key"})), Some(&a.token)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let (status, tok) =
        app.call_as(Method::POST, "/api/me/tokens", Some(json!({"name": "a-script"})), Some(&a.token)).await;
    assert_eq!(status, StatusCode::CREATED, "{tok}");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"id": "mock-1", "provider": "mock", "models": [{"name": "m"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) =
        app.call(Method::POST, "/api/groups", Some(json!({"name": "vip", "price_ratio_ppm": 800000}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, codes) =
        app.call(Method::POST, "/api/codes", Some(json!({"count": 1, "value_micros": 5}))).await;
    assert_eq!(status, StatusCode::CREATED, "{codes}");
    World {
        a_key: key["id"].as_str().unwrap().into(),
        a_token_id: tok["id"].as_str().unwrap().into(),
        code_id: codes["data"][0]["id"].as_str().unwrap().into(),
        app,
        a,
        b,
        admin,
    }
}

/// The concrete path and body of a sample call; `None` = no sample (fails).
fn sample(w: &World, method: &Method, path: &str, caller: &str) -> Option<(String, Option<Value>, bool)> {
    // (path, body, owner_scoped: only user A's call may find the object)
    let id = |v: &str| path.replace("{id}", v);
    let m = method.as_str();
    Some(match (m, path) {
        ("GET", "/health") | ("GET", "/api/openapi.json") => (path.into(), None, false),
        ("POST", "/internal/usage") => (path.into(), Some(json!({"events": []})), false),
        ("POST", "/api/auth/login") => {
            (path.into(), Some(json!({"username": "alice", "password": A_PASSWORD})), false)
        }
        ("POST", "/api/auth/signup") => (
            path.into(),
            Some(json!({"username": format!("new-{caller}"), "password": "a-new-password"})),
            false,
        ),
        ("POST", "/api/auth/logout") | ("GET", "/api/auth/session") => (path.into(), None, false),
        ("GET", "/api/auth/providers") => (path.into(), None, false),
        ("GET", "/api/auth/oidc/{id}/start") | ("GET", "/api/auth/oidc/{id}/callback") => {
            (id("oidc"), None, false)
        }
        ("POST", "/api/me/oidc/{id}/link") => (id("oidc"), None, false),
        ("GET", "/api/me") => (path.into(), None, false),
        ("PATCH", "/api/me") => (path.into(), Some(json!({"low_balance_micros": 10})), false),
        ("GET", "/api/me/keys") | ("GET", "/api/me/tokens") | ("GET", "/api/me/invitation") => {
            (path.into(), None, false)
        }
        ("GET", "/api/me/models") | ("GET", "/api/me/ledger") => (path.into(), None, false),
        ("GET", "/api/me/usage") | ("GET", "/api/me/usage/daily") => (path.into(), None, false),
        ("POST", "/api/me/keys") => (path.into(), Some(json!({"name": "k"})), false),
        ("DELETE", "/api/me/keys/{id}") => (id(&w.a_key), None, true),
        ("PUT", "/api/me/keys/{id}/budget") => {
            (id(&w.a_key), Some(json!({"period": "daily", "budget_micros": 100})), true)
        }
        ("PUT", "/api/keys/{id}/budget") => (id(&w.a_key), Some(json!({"period": "none"})), false),
        ("POST", "/api/me/redeem") => (path.into(), Some(json!({"code": "EW-not-a-code"})), false),
        ("POST", "/api/me/tokens") => (path.into(), Some(json!({"name": "t"})), false),
        ("DELETE", "/api/me/tokens/{id}") => (id(&w.a_token_id), None, true),
        ("POST", "/api/keys") => (path.into(), Some(json!({"name": "k"})), false),
        ("GET", "/api/keys") | ("GET", "/api/channels") | ("GET", "/api/models") => {
            (path.into(), None, false)
        }
        ("GET", "/api/keys/{id}") | ("DELETE", "/api/keys/{id}") => (id(&w.a_key), None, false),
        ("PATCH", "/api/keys/{id}") => (id(&w.a_key), Some(json!({"rpm": 5})), false),
        ("POST", "/api/channels") => (
            path.into(),
            Some(json!({"id": format!("ch-{caller}"), "provider": "mock", "models": [{"name": "m2"}]})),
            false,
        ),
        ("DELETE", "/api/channels/{id}") => (id("mock-1"), None, false),
        ("PATCH", "/api/channels/{id}") => (id("mock-1"), Some(json!({"enabled": false})), false),
        ("GET", "/api/channels/{id}/health") => (id("mock-1"), None, false),
        ("POST", "/api/sync") => (path.into(), None, false),
        ("GET", "/api/usage") | ("GET", "/api/usage/summary") | ("GET", "/api/users") => {
            (path.into(), None, false)
        }
        ("POST", "/api/users") => (path.into(), Some(json!({"username": format!("u-{caller}")})), false),
        ("GET", "/api/users/{id}") | ("GET", "/api/users/{id}/ledger") => (id(&w.a.id), None, false),
        ("GET", "/api/users/{id}/edge-account") => (id(&w.a.id), None, false),
        ("PATCH", "/api/users/{id}") => (id(&w.a.id), Some(json!({"max_keys": 7})), false),
        ("POST", "/api/users/{id}/ledger") => {
            (id(&w.a.id), Some(json!({"kind": "topup", "amount_micros": 1, "reason": "matrix"})), false)
        }
        ("GET", "/api/groups") | ("GET", "/api/codes") | ("GET", "/api/audit") => (path.into(), None, false),
        ("POST", "/api/groups") => {
            (path.into(), Some(json!({"name": format!("g-{caller}"), "price_ratio_ppm": 1})), false)
        }
        ("PATCH", "/api/groups/{id}") => (id("vip"), Some(json!({"price_ratio_ppm": 900000})), false),
        ("DELETE", "/api/groups/{id}") => (id("vip"), None, false),
        ("POST", "/api/codes") => (path.into(), Some(json!({"count": 1, "value_micros": 1})), false),
        ("GET", "/api/policy") => (path.into(), None, false),
        ("PUT", "/api/policy") => (path.into(), Some(json!({"rules": []})), false),
        ("PATCH", "/api/codes/{id}") => (id(&w.code_id), Some(json!({"status": "disabled"})), false),
        // The console's routes.
        ("GET", "/api/public/info") | ("GET", "/api/public/pricing") => (path.into(), None, false),
        ("GET", "/api/stats") | ("GET", "/api/me/stats") => (path.into(), None, false),
        ("GET", "/api/logs") | ("GET", "/api/me/logs") => (path.into(), None, false),
        ("POST", "/api/channels/{id}/test") => (id("mock-1"), None, false),
        _ => return None,
    })
}

async fn world() -> World {
    world_with(false).await
}

/// Checks one route as every kind of caller, in a world of its own (so a
/// DELETE of one route cannot change another's); `Err` = no sample.
async fn check_route(route: edgeway_admin::Route) -> Result<usize, String> {
    let w = world_with(route.path == "/api/auth/login").await;
    let callers: [(&str, Option<String>); 5] = [
        ("anonymous", None),
        ("user_b", Some(w.b.token.clone())),
        ("user_a", Some(w.a.token.clone())),
        ("admin", Some(w.admin.token.clone())),
        ("root", Some(TOKEN.to_string())),
    ];
    let mut checked = 0;
    for (caller, token) in &callers {
        let Some((path, body, owner_scoped)) = sample(&w, &route.method, route.path, caller) else {
            return Err(format!("{} {}", route.method, route.path));
        };
        let (status, response) = w.app.call_as(route.method.clone(), &path, body, token.as_deref()).await;
        let what = format!("{} {} as {caller}: {status} {response}", route.method, route.path);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
        let denied = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        match (route.access, *caller) {
            (Access::Public, _) => assert!(!denied, "public route refused: {what}"),
            (Access::Signed, _) => assert_eq!(status, StatusCode::UNAUTHORIZED, "unsigned ingest: {what}"),
            (_, "anonymous") => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}"),
            (Access::User, "user_a") => {
                assert!(!denied, "{what}");
                assert!(!owner_scoped || status.is_success(), "the owner must reach their object: {what}");
            }
            (Access::User, _) if owner_scoped => {
                assert_eq!(status, StatusCode::NOT_FOUND, "another user's object must not be found: {what}")
            }
            (Access::User, _) => assert!(!denied, "{what}"),
            (Access::Admin, "user_a" | "user_b") => assert_eq!(status, StatusCode::FORBIDDEN, "{what}"),
            (Access::Admin, _) => assert!(!denied, "{what}"),
            (Access::Root, "root") => assert!(!denied, "{what}"),
            (Access::Root, _) => assert_eq!(status, StatusCode::FORBIDDEN, "{what}"),
        }
        checked += 1;
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_times_every_kind_of_caller() {
    let routes = edgeway_admin::route_table();
    let n = routes.len();
    // Eight routes at a time, each in its own world.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for route in routes {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            check_route(route).await
        }));
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(c) => checked += c,
            Err(route) => missing.push(route),
        }
    }
    assert!(missing.is_empty(), "routes without a sample in the authorization matrix: {missing:?}");
    assert_eq!(checked, n * 5);
    eprintln!("authorization matrix: {n} routes x 5 callers = {checked} checks");
}

/// Only root manages admins; nobody demotes root; admins manage users.
#[tokio::test]
async fn only_root_manages_admins() {
    let w = world().await;
    let app = &w.app;
    let admin = Some(w.admin.token.as_str());
    let (status, _) = app
        .call_as(Method::POST, "/api/users", Some(json!({"username": "x-admin", "role": "admin"})), admin)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admin cannot create an admin");
    let (status, _) = app
        .call_as(Method::PATCH, &format!("/api/users/{}", w.a.id), Some(json!({"role": "admin"})), admin)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admin cannot promote");
    let other = app.user("other-admin", "admin").await;
    let (status, _) = app
        .call_as(
            Method::PATCH,
            &format!("/api/users/{}", other.id),
            Some(json!({"status": "disabled"})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admin cannot disable another admin");
    let (status, body) = app
        .call_as(Method::PATCH, &format!("/api/users/{}", w.a.id), Some(json!({"max_keys": 3})), admin)
        .await;
    assert_eq!(status, StatusCode::OK, "an admin manages users: {body}");
    let (status, _) = app
        .call(Method::PATCH, &format!("/api/users/{}", other.id), Some(json!({"status": "disabled"})))
        .await;
    assert_eq!(status, StatusCode::OK, "root manages admins");
    let (status, _) = app.call_as(Method::GET, "/api/users", None, Some(&other.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a disabled user's token stops working");
    let (_, me) = app.call(Method::GET, "/api/me", None).await;
    let root_id = me["id"].as_str().unwrap();
    assert_eq!(me["role"], "root");
    let (status, _) =
        app.call(Method::PATCH, &format!("/api/users/{root_id}"), Some(json!({"role": "user"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "root cannot be demoted");
    let (status, _) =
        app.call(Method::POST, "/api/users", Some(json!({"username": "root2", "role": "root"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "there is one root");
}

/// Every self-service listing holds only the caller's objects.
#[tokio::test]
async fn self_service_queries_are_scoped_to_the_caller() {
    let w = world().await;
    let app = &w.app;
    let (_, b_keys) = app.call_as(Method::GET, "/api/me/keys", None, Some(&w.b.token)).await;
    assert_eq!(b_keys["data"], json!([]), "B sees none of A's keys");
    let (_, a_keys) = app.call_as(Method::GET, "/api/me/keys", None, Some(&w.a.token)).await;
    assert_eq!(a_keys["data"].as_array().unwrap().len(), 1);
    let (_, b_tokens) = app.call_as(Method::GET, "/api/me/tokens", None, Some(&w.b.token)).await;
    assert!(b_tokens["data"].as_array().unwrap().iter().all(|t| t["id"] != w.a_token_id.as_str()));
    app.top_up(&w.a.id, 1000).await;
    let (_, b_ledger) = app.call_as(Method::GET, "/api/me/ledger", None, Some(&w.b.token)).await;
    assert_eq!(
        (b_ledger["balance_micros"].as_i64(), b_ledger["data"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let (_, a_ledger) = app.call_as(Method::GET, "/api/me/ledger", None, Some(&w.a.token)).await;
    assert_eq!(a_ledger["balance_micros"], 1000);
    // A cookie is not a bearer token, and a bearer that is not a token is nothing.
    let request = Request::builder()
        .uri("/api/me")
        .header("authorization", format!("Bearer {}", w.a_key))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.0, StatusCode::UNAUTHORIZED);
}

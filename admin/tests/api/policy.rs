use crate::common::{DbKind, FakeEdge, Options, TestApp};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

async fn the_request_policy_round_trips_and_reaches_the_edge(db: DbKind) {
    let edge = FakeEdge::start().await;
    let app = TestApp::new(db, Options { edge_url: Some(edge.url()), ..Options::default() }).await;
    let (status, empty) = app.call(Method::GET, "/api/policy", None).await;
    assert_eq!((status, empty["rules"].clone()), (StatusCode::OK, json!([])));
    let rules = json!([
        {"name": "card", "pattern": r"\b\d{4}(?: ?\d{4}){3}\b", "action": "replace", "replacement": "[card]"},
        {"name": "no-secrets", "pattern": "top secret", "action": "block", "case_insensitive": true}
    ]);
    let (status, put) = app.call(Method::PUT, "/api/policy", Some(json!({"rules": rules}))).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["rules"], rules);
    assert_eq!(put["edge_synced"], true);
    let version = put["routing_version"].as_u64().unwrap();
    assert!(version > empty["routing_version"].as_u64().unwrap());
    let (_, got) = app.call(Method::GET, "/api/policy", None).await;
    assert_eq!(got["rules"], rules, "stored in order");
    // The routing config the edge got carries the rules.
    let pushed: Vec<Value> = edge
        .pushes()
        .iter()
        .filter(|p| p.path == "/internal/routing")
        .map(|p| serde_json::from_slice(&p.body).unwrap())
        .collect();
    let last = pushed.last().unwrap();
    assert_eq!(last["policy"], rules);
    assert_eq!(last["version"], version);
    // Audited.
    let (_, audit) = app.call(Method::GET, "/api/audit?target_id=request", None).await;
    assert!(audit["data"].as_array().unwrap().iter().any(|a| a["action"] == "policy.update"), "{audit}");
    // Cleared again.
    let (status, cleared) = app.call(Method::PUT, "/api/policy", Some(json!({"rules": []}))).await;
    assert_eq!((status, cleared["rules"].clone()), (StatusCode::OK, json!([])));
    edge.stop();
}
on_both_databases!(the_request_policy_round_trips_and_reaches_the_edge);

async fn a_policy_that_does_not_compile_is_refused_and_nothing_is_stored(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let good = json!({"rules": [{"name": "ok", "pattern": "x", "action": "block"}]});
    assert_eq!(app.call(Method::PUT, "/api/policy", Some(good.clone())).await.0, StatusCode::OK);
    let (_, before) = app.call(Method::GET, "/api/policy", None).await;
    for (rules, needle) in [
        (json!([{"name": "broken", "pattern": "(unclosed", "action": "block"}]), "rule `broken`"),
        (json!([{"name": "e", "pattern": "a*", "action": "replace", "replacement": "b"}]), "empty text"),
        (
            json!([{"name": "x", "pattern": "x", "action": "block"}, {"name": "x", "pattern": "y", "action": "block"}]),
            "twice",
        ),
        (json!([{"name": "x", "pattern": "x", "action": "explode"}]), "explode"),
    ] {
        let (status, body) = app.call(Method::PUT, "/api/policy", Some(json!({"rules": rules}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains(needle), "{needle}: {body}");
    }
    let (_, after) = app.call(Method::GET, "/api/policy", None).await;
    assert_eq!(after, before, "nothing stored, the version unchanged");
}
on_both_databases!(a_policy_that_does_not_compile_is_refused_and_nothing_is_stored);

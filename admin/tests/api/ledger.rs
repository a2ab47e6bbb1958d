//! Balances and the ledger: conservation under concurrency, redemption
//! codes (the 100-way race, refusals, CSV), pushes of accounts to the edge,
//! spend from usage at the group ratio, low-balance alerts, periodic
//! allowances and self-service key limits.

use crate::common::{DbKind, FakeEdge, Options, TestApp, TestUser, SECRET};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use edgeway_admin::now_secs;
use edgeway_core::pricing::ModelPrice;
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

fn spend_event(request_id: &str, user_id: &str, cost: i64, ratio: u32) -> UsageEvent {
    UsageEvent {
        request_id: request_id.into(),
        key_digest: "ab".repeat(32),
        owner: "o".into(),
        user_id: Some(user_id.into()),
        group: "default".into(),
        price_ratio_ppm: ratio,
        model: "mock-small".into(),
        upstream_model: "mock-small".into(),
        channel: "mock-1".into(),
        provider: "mock".into(),
        endpoint: Default::default(),
        unit: None,
        unit_count: 0,
        usage: TokenUsage { input_uncached: 10, output: 20, ..Default::default() },
        cost_micros: cost,
        status: 200,
        outcome: RequestOutcome::Completed,
        usage_source: UsageSource::Provider,
        stream: false,
        latency_ms: 5,
        ttft_ms: None,
        served_model: String::new(),
        attempts: Vec::new(),
        created_at_ms: edgeway_admin::now_ms(),
    }
}

async fn ingest(app: &TestApp, events: &[UsageEvent]) -> Value {
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let (status, result) = app.ingest(&body, SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    result
}

async fn ledger_of(app: &TestApp, user_id: &str) -> Value {
    let (status, body) =
        app.call(Method::GET, &format!("/api/users/{user_id}/ledger?limit=1000"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Balance = sum of the listed entries, and no entry appears twice.
fn check_consistent(ledger: &Value) -> (i64, usize) {
    let entries = ledger["data"].as_array().unwrap();
    let sum: i64 = entries.iter().map(|e| e["amount_micros"].as_i64().unwrap()).sum();
    let ids: HashSet<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), entries.len(), "an entry is doubled");
    assert_eq!(ledger["entries"].as_i64().unwrap() as usize, entries.len());
    assert_eq!(ledger["balance_micros"].as_i64().unwrap(), sum, "balance != sum of entries: {ledger}");
    (sum, entries.len())
}

async fn ledger_conservation_under_concurrency(db: DbKind) {
    let app = Arc::new(TestApp::new(db, Options::default()).await);
    let mut users = Vec::new();
    for name in ["u-one", "u-two", "u-three"] {
        users.push(app.user(name, "user").await);
    }
    // Codes to redeem: 12 single-use codes of 7000.
    let (_, batch) =
        app.call(Method::POST, "/api/codes", Some(json!({"count": 12, "value_micros": 7000}))).await;
    let codes: Vec<String> =
        batch["data"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().into()).collect();
    let users = Arc::new(users);
    let codes = Arc::new(codes);
    let tasks_n = 8usize;
    let ops_per_task = 20usize;
    let mut tasks = Vec::new();
    for t in 0..tasks_n {
        let app = app.clone();
        let users = users.clone();
        let codes = codes.clone();
        tasks.push(tokio::spawn(async move {
            // expected[user] = (credits, spends), requests billed by this task
            let mut expected: BTreeMap<String, i64> = BTreeMap::new();
            let mut entries: BTreeMap<String, usize> = BTreeMap::new();
            for i in 0..ops_per_task {
                let user: &TestUser = &users[(t + i) % users.len()];
                match i % 4 {
                    0 => {
                        let amount = 1000 + (t * 100 + i) as i64;
                        app.top_up(&user.id, amount).await;
                        *expected.entry(user.id.clone()).or_default() += amount;
                        *entries.entry(user.id.clone()).or_default() += 1;
                    }
                    1 => {
                        // A spend, delivered twice (at-least-once queue): billed once.
                        let cost = 300 + i as i64;
                        let e = spend_event(&format!("req-{t}-{i}"), &user.id, cost, 1_000_000);
                        ingest(&app, std::slice::from_ref(&e)).await;
                        ingest(&app, &[e]).await;
                        *expected.entry(user.id.clone()).or_default() -= cost;
                        *entries.entry(user.id.clone()).or_default() += 1;
                    }
                    2 => {
                        let (status, body) = app
                            .call(
                                Method::POST,
                                &format!("/api/users/{}/ledger", user.id),
                                Some(json!({"kind": "refund", "amount_micros": 50, "reason": "refund"})),
                            )
                            .await;
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        *expected.entry(user.id.clone()).or_default() += 50;
                        *entries.entry(user.id.clone()).or_default() += 1;
                    }
                    _ => {
                        // Two tasks try each code; only one wins.
                        let code = &codes[(t / 2 * 5 + i / 4) % codes.len()];
                        let (status, _) = app
                            .call_as(
                                Method::POST,
                                "/api/me/redeem",
                                Some(json!({"code": code})),
                                Some(&user.token),
                            )
                            .await;
                        if status == StatusCode::OK {
                            *expected.entry(user.id.clone()).or_default() += 7000;
                            *entries.entry(user.id.clone()).or_default() += 1;
                        } else {
                            assert_eq!(status, StatusCode::CONFLICT);
                        }
                    }
                }
            }
            (expected, entries)
        }));
    }
    // A reader checks consistency while the writers run.
    let reader = {
        let app = app.clone();
        let users = users.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..30 {
                for u in users.iter() {
                    check_consistent(&ledger_of(&app, &u.id).await);
                    reads += 1;
                }
            }
            reads
        })
    };
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut entries: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let (e, n) = task.await.unwrap();
        for (k, v) in e {
            *expected.entry(k).or_default() += v;
        }
        for (k, v) in n {
            *entries.entry(k).or_default() += v;
        }
    }
    let reads = reader.await.unwrap();
    let mut total_entries = 0;
    let mut redeemed = 0;
    for u in users.iter() {
        let ledger = ledger_of(&app, &u.id).await;
        let (sum, n) = check_consistent(&ledger);
        assert_eq!(sum, expected[&u.id], "user {}: final balance", u.id);
        assert_eq!(n, entries[&u.id], "user {}: no entry lost or doubled", u.id);
        redeemed += ledger["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "redemption").count();
        total_entries += n;
    }
    let (_, codes_now) = app.call(Method::GET, "/api/codes?status=redeemed", None).await;
    assert_eq!(codes_now["data"].as_array().unwrap().len(), redeemed, "one entry per redeemed code");
    eprintln!(
        "ledger conservation ({db:?}): {tasks_n} tasks x {ops_per_task} ops, {total_entries} entries over 3 users, \
         {redeemed} codes redeemed, {reads} consistent reads during the run; balances = sums of entries = expected"
    );
}
on_both_databases!(ledger_conservation_under_concurrency);

async fn hundred_parallel_redemptions_one_success(db: DbKind) {
    let app = Arc::new(TestApp::new(db, Options::default()).await);
    let (_, batch) =
        app.call(Method::POST, "/api/codes", Some(json!({"count": 1, "value_micros": 2_500_000}))).await;
    let code = batch["data"][0]["code"].as_str().unwrap().to_string();
    let mut users = Vec::new();
    for i in 0..10 {
        users.push(app.user(&format!("racer{i}"), "user").await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, barrier, code) = (app.clone(), barrier.clone(), code.clone());
        let token = users[i % 10].token.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let (status, body) =
                app.call_as(Method::POST, "/api/me/redeem", Some(json!({"code": code})), Some(&token)).await;
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["message"], "this code has already been redeemed");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!("100 parallel redemptions of one code ({db:?}): {ok} succeeded, {conflicts} refused");
    assert_eq!((ok, conflicts), (1, 99));
    let mut credited = 0;
    for u in &users {
        let l = ledger_of(&app, &u.id).await;
        credited += l["balance_micros"].as_i64().unwrap();
    }
    assert_eq!(credited, 2_500_000, "exactly one credit of the code's value");
}
on_both_databases!(hundred_parallel_redemptions_one_success);

async fn codes_refused_clearly_and_exported_as_csv(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let user = app.user("redeemer", "user").await;
    let soon = now_secs() + 2;
    let (status, batch) = app
        .call(
            Method::POST,
            "/api/codes",
            Some(json!({"count": 3, "value_micros": 1000, "prefix": "PROMO", "expires_at": soon})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{batch}");
    let codes: Vec<Value> = batch["data"].as_array().unwrap().clone();
    assert!(codes.iter().all(|c| c["code"].as_str().unwrap().starts_with("PROMO-")));
    let redeem = |code: String| {
        let app = &app;
        let token = user.token.clone();
        async move { app.call_as(Method::POST, "/api/me/redeem", Some(json!({"code": code})), Some(&token)).await }
    };
    // Disabled.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/codes/{}", codes[0]["id"].as_str().unwrap()),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = redeem(codes[0]["code"].as_str().unwrap().into()).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::CONFLICT, Some("this code has been disabled"))
    );
    // Unknown.
    let (status, _) = redeem("PROMO-doesnotexist".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Redeemed once, then refused.
    let (status, body) = redeem(codes[1]["code"].as_str().unwrap().into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["balance"]["balance_micros"], 1000);
    let (status, body) = redeem(codes[1]["code"].as_str().unwrap().into()).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::CONFLICT, Some("this code has already been redeemed"))
    );
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/codes/{}", codes[1]["id"].as_str().unwrap()),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a redeemed code cannot be re-enabled");
    // Expired.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = redeem(codes[2]["code"].as_str().unwrap().into()).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::CONFLICT, Some("this code has expired"))
    );

    // CSV at generation holds the codes; the listing's CSV only labels.
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/codes?format=csv")
        .header("authorization", format!("Bearer {}", crate::common::TOKEN))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(json!({"count": 2, "value_micros": 5}).to_string()))
        .unwrap();
    let csv = app.send_full(request).await;
    assert_eq!(csv.status, StatusCode::CREATED);
    assert!(csv.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines[0], "code,value_micros,expires_at,batch_id,id");
    assert_eq!(lines.len(), 3);
    let new_code = lines[1].split(',').next().unwrap().to_string();
    let listing = app
        .send_full(
            axum::http::Request::builder()
                .uri("/api/codes?format=csv")
                .header("authorization", format!("Bearer {}", crate::common::TOKEN))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(listing.text.lines().count(), 1 + 5);
    assert!(!listing.text.contains(&new_code), "the listing never shows codes");
    assert!(!app.dump().await.contains(&new_code), "codes are stored as digests only");
    let (status, _) = redeem(new_code).await;
    assert_eq!(status, StatusCode::OK, "a code from the CSV redeems");
}
on_both_databases!(codes_refused_clearly_and_exported_as_csv);

async fn credits_reach_the_edge_and_spend_is_booked_at_the_group_ratio(db: DbKind) {
    let edge = FakeEdge::start().await;
    let app = TestApp::new(db, Options { edge_url: Some(edge.url()), ..Options::default() }).await;
    let (status, body) = app
        .call(Method::POST, "/api/groups", Some(json!({"name": "vip", "price_ratio_ppm": 1_500_000})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["edge_synced"], true);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"id": "mock-1", "provider": "mock", "groups": ["vip"],
                        "models": [{"name": "mock-small", "price": {"input": 150000, "output": 600000}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let routing: Value = serde_json::from_slice(
        &edge.pushes().iter().rev().find(|p| p.path == "/internal/routing").unwrap().body,
    )
    .unwrap();
    assert!(routing["groups"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "vip", "price_ratio_ppm": 1_500_000})));
    assert_eq!(routing["channels"][0]["groups"], json!(["vip"]));

    let user = app.user_with("vip-user", json!({"group": "vip"})).await;
    app.top_up(&user.id, 1_000_000).await;
    app.top_up(&user.id, 500_000).await;
    let accounts: Vec<Value> = edge
        .pushes()
        .iter()
        .filter(|p| p.path == format!("/internal/users/{}/account", user.id))
        .map(|p| {
            assert!(p.verified, "signed");
            serde_json::from_slice(&p.body).unwrap()
        })
        .collect();
    let last = accounts.last().unwrap();
    assert_eq!(last["credited_micros"], 1_500_000, "credit is cumulative");
    assert_eq!(last["disabled"], false);
    let versions: Vec<u64> = accounts.iter().map(|a| a["version"].as_u64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions increase: {versions:?}");
    let (status, both) = app.call(Method::GET, &format!("/api/users/{}/edge-account", user.id), None).await;
    assert_eq!(status, StatusCode::OK, "{both}");
    assert_eq!(
        (both["credit_agrees"].as_bool(), both["edge"]["credited_micros"].as_i64()),
        (Some(true), Some(1_500_000))
    );

    // A self-service key carries the user and the user's group.
    let (status, key) =
        app.call_as(Method::POST, "/api/me/keys", Some(json!({"name": "mine"})), Some(&user.token)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let record: Value = serde_json::from_slice(&edge.pushes().last().unwrap().body).unwrap();
    assert_eq!((record["user_id"].as_str(), record["group"].as_str()), (Some(user.id.as_str()), Some("vip")));

    // The edge prices at the ratio with edge/core; the ledger books exactly that.
    let price = ModelPrice { input: 150_000, output: 600_000, ..Default::default() };
    let usage = TokenUsage { input_uncached: 1000, output: 2000, ..Default::default() };
    let cost = price.cost_micros_at_ratio(&usage, 1_500_000);
    assert_eq!(cost, 2025, "(150 + 1200) x 1.5");
    let mut e = spend_event("vip-req-1", &user.id, cost, 1_500_000);
    e.usage = usage;
    e.group = "vip".into();
    ingest(&app, &[e.clone(), e.clone()]).await;
    let ledger = ledger_of(&app, &user.id).await;
    assert_eq!(ledger["balance_micros"], 1_500_000 - 2025);
    assert_eq!(ledger["spent_micros"], 2025);
    assert_eq!(ledger["credited_micros"], 1_500_000, "spend leaves the credit the edge was pushed unchanged");
    let (_, daily) = app.call_as(Method::GET, "/api/me/usage/daily", None, Some(&user.token)).await;
    assert_eq!(daily["data"][0]["model"], "mock-small");
    assert_eq!(
        (daily["data"][0]["requests"].as_i64(), daily["data"][0]["cost_micros"].as_i64()),
        (Some(1), Some(2025))
    );
    let (_, mine) = app.call_as(Method::GET, "/api/me/usage", None, Some(&user.token)).await;
    assert_eq!(mine["data"][0]["price_ratio_ppm"], 1_500_000);
    let (_, by_user) = app.call(Method::GET, &format!("/api/usage?user_id={}", user.id), None).await;
    assert_eq!(by_user["data"].as_array().unwrap().len(), 1);
    // A negative cost would credit the balance: refused, nothing booked.
    let mut bad = spend_event("vip-neg", &user.id, -5, 1_500_000);
    bad.group = "vip".into();
    let body = serde_json::to_vec(&json!({ "events": [bad] })).unwrap();
    let (status, _) = app.ingest(&body, SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ledger_of(&app, &user.id).await["balance_micros"], 1_500_000 - 2025);
    let (_, models) = app.call_as(Method::GET, "/api/me/models", None, Some(&user.token)).await;
    assert_eq!(models["data"][0]["input_per_million_micros"], 225_000, "0.15 x 1.5 per million");
    let other = app.user("plain-user", "user").await;
    let (_, models) = app.call_as(Method::GET, "/api/me/models", None, Some(&other.token)).await;
    assert_eq!(models["data"], json!([]), "the channel serves only vip");

    // Moving the user moves their keys; disabling reaches the edge's account.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/users/{}", user.id),
            Some(json!({"group": "default", "status": "disabled"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let pushes = edge.pushes();
    let key_push: Value = serde_json::from_slice(
        &pushes.iter().rev().find(|p| p.path.starts_with("/internal/keys/")).unwrap().body,
    )
    .unwrap();
    assert_eq!(key_push["group"], "default");
    let account: Value =
        serde_json::from_slice(&pushes.iter().rev().find(|p| p.path.ends_with("/account")).unwrap().body)
            .unwrap();
    assert_eq!(account["disabled"], true);
    // The audit log has who and what.
    let (_, audit) = app.call(Method::GET, &format!("/api/audit?target_id={}", user.id), None).await;
    let actions: Vec<&str> =
        audit["data"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"user.update")
            && actions.contains(&"balance.credit")
            && actions.contains(&"user.create"),
        "{actions:?}"
    );
    let update = audit["data"].as_array().unwrap().iter().find(|a| a["action"] == "user.update").unwrap();
    assert_eq!(
        (update["before"]["status"].as_str(), update["after"]["status"].as_str()),
        (Some("active"), Some("disabled"))
    );
    edge.stop();
}
on_both_databases!(credits_reach_the_edge_and_spend_is_booked_at_the_group_ratio);

#[tokio::test]
async fn self_service_keys_stay_within_the_admins_limits() {
    let app = TestApp::sqlite().await;
    let user = app.user_with("limited", json!({"max_keys": 2, "max_key_quota_micros": 1000})).await;
    let create = |body: Value| {
        let app = &app;
        let token = user.token.clone();
        async move { app.call_as(Method::POST, "/api/me/keys", Some(body), Some(&token)).await }
    };
    let (status, body) = create(json!({"name": "k1"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a quota is required under a cap: {body}");
    let (status, _) = create(json!({"name": "k1", "quota_micros": 2000})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "over the cap");
    let (status, k1) = create(json!({"name": "k1", "quota_micros": 1000, "rpm": 10})).await;
    assert_eq!(status, StatusCode::CREATED, "{k1}");
    assert_eq!((k1["user_id"].as_str(), k1["owner"].as_str()), (Some(user.id.as_str()), Some("limited")));
    let (status, _) = create(json!({"name": "k2", "quota_micros": 10})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = create(json!({"name": "k3", "quota_micros": 10})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, revoked) = app
        .call_as(
            Method::DELETE,
            &format!("/api/me/keys/{}", k1["id"].as_str().unwrap()),
            None,
            Some(&user.token),
        )
        .await;
    assert_eq!((status, revoked["status"].as_str()), (StatusCode::OK, Some("disabled")));
    let (status, _) = create(json!({"name": "k3", "quota_micros": 10})).await;
    assert_eq!(status, StatusCode::CREATED, "a revoked key frees a slot");
    let (status, body) = create(json!({"name": "k4", "group": "vip"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "users cannot pick a group: {body}");
}

/// Requests a fake webhook receiver got: headers and body.
type Received = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A fake webhook receiver on 127.0.0.1.
async fn webhook_receiver() -> (String, Received) {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = got.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body.to_vec()));
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

async fn wait_for(n: usize, got: &Received) {
    for _ in 0..100 {
        if got.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn low_balance_webhook_fires_once_per_crossing_and_is_signed() {
    let (url, got) = webhook_receiver().await;
    let secret = "webhook-secret-0123456789";
    let accounts = edgeway_admin::config::AccountsConfig {
        alerts: edgeway_admin::config::AlertConfig {
            webhook_url: Some(url),
            webhook_secret: Some(secret.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::new(DbKind::Sqlite, Options { accounts: Some(accounts), ..Options::default() }).await;
    let user = app.user_with("low", json!({"low_balance_micros": 500})).await;
    app.top_up(&user.id, 1000).await; // armed: 1000 >= 500
    ingest(&app, &[spend_event("lb-1", &user.id, 300, 1_000_000)]).await; // 700: above
    ingest(&app, &[spend_event("lb-2", &user.id, 300, 1_000_000)]).await; // 400: crossing
    ingest(&app, &[spend_event("lb-3", &user.id, 100, 1_000_000)]).await; // 300: still below
    ingest(&app, &[spend_event("lb-2", &user.id, 300, 1_000_000)]).await; // redelivery
    wait_for(1, &got).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(got.lock().unwrap().len(), 1, "once per crossing");
    app.top_up(&user.id, 1000).await; // 1300: re-armed
    ingest(&app, &[spend_event("lb-4", &user.id, 900, 1_000_000)]).await; // 400: crossing again
    wait_for(2, &got).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let (headers, body) = &got[1];
    let alert: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (alert["type"].as_str(), alert["balance_micros"].as_i64(), alert["threshold_micros"].as_i64()),
        (Some("low_balance"), Some(400), Some(500))
    );
    let ts: i64 = headers["x-edgeway-timestamp"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        headers["x-edgeway-signature"].to_str().unwrap(),
        edgeway_admin::alerts::sign_webhook(secret, ts, body)
    );
}

#[tokio::test]
async fn periodic_allowance_resets_the_balance_once_per_period() {
    let app = TestApp::sqlite().await;
    let user = app.user("monthly", "user").await;
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/users/{}", user.id),
            Some(json!({"budget_period": "monthly", "budget_micros": 5_000_000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let march = 1_710_504_000_000; // 2024-03-15T12:00Z
    assert_eq!(edgeway_admin::budgets::run_once(&app.state, march).await.unwrap(), 1);
    assert_eq!(
        edgeway_admin::budgets::run_once(&app.state, march + 3_600_000).await.unwrap(),
        0,
        "once per period"
    );
    assert_eq!(ledger_of(&app, &user.id).await["balance_micros"], 5_000_000);
    ingest(&app, &[spend_event("m-1", &user.id, 2_000_000, 1_000_000)]).await;
    let april = 1_712_000_000_000; // 2024-04-01T19:33Z
    assert_eq!(edgeway_admin::budgets::run_once(&app.state, april).await.unwrap(), 1);
    let ledger = ledger_of(&app, &user.id).await;
    assert_eq!(ledger["balance_micros"], 5_000_000, "topped back up to the budget");
    let allowances: Vec<i64> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "allowance")
        .map(|e| e["amount_micros"].as_i64().unwrap())
        .collect();
    assert_eq!(allowances.len(), 2);
    assert!(allowances.contains(&5_000_000) && allowances.contains(&2_000_000), "{allowances:?}");
    check_consistent(&ledger);
}

/// A minimal SMTP server on 127.0.0.1 that keeps each message's envelope and data.
async fn fake_smtp() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
                let mut message = String::new();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            sink.lock().unwrap().push(std::mem::take(&mut message));
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            message.push_str(&line);
                            message.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake.test\r\n",
                        "MAIL" | "RCPT" => {
                            message.push_str(&line);
                            message.push('\n');
                            b"250 OK\r\n"
                        }
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, got)
}

#[tokio::test]
async fn low_balance_email_is_sent_when_smtp_is_configured() {
    let (port, mails) = fake_smtp().await;
    let accounts = edgeway_admin::config::AccountsConfig {
        alerts: edgeway_admin::config::AlertConfig {
            smtp_url: Some(format!("smtp://127.0.0.1:{port}")),
            smtp_from: Some("billing@edgeway.test".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::new(DbKind::Sqlite, Options { accounts: Some(accounts), ..Options::default() }).await;
    let user =
        app.user_with("mailme", json!({"low_balance_micros": 500, "email": "mailme@example.com"})).await;
    app.top_up(&user.id, 600).await;
    ingest(&app, &[spend_event("mail-1", &user.id, 200, 1_000_000)]).await; // 400 < 500
    ingest(&app, &[spend_event("mail-2", &user.id, 100, 1_000_000)]).await; // still below: no second mail
    for _ in 0..100 {
        if !mails.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert!(mail.contains("RCPT TO:<mailme@example.com>"), "{mail}");
    assert!(mail.contains("Subject: edgeway: low balance"), "{mail}");
    assert!(mail.contains("below your alert threshold"), "{mail}");
}

#[tokio::test]
async fn key_budgets_reset_the_quota_each_period() {
    let edge = FakeEdge::start().await;
    let app =
        TestApp::new(DbKind::Sqlite, Options { edge_url: Some(edge.url()), ..Options::default() }).await;
    let (_, key) = app.call(Method::POST, "/api/keys", Some(json!({"name": "daily-key"}))).await;
    let (id, digest) = (key["id"].as_str().unwrap().to_string(), key["digest"].as_str().unwrap().to_string());
    let now = edgeway_admin::now_ms();
    let today = now.div_euclid(86_400_000) * 86_400_000;
    let mut yesterday = spend_event("kb-1", "x", 300, 1_000_000);
    yesterday.user_id = None;
    yesterday.key_digest = digest.clone();
    yesterday.created_at_ms = today - 3_600_000;
    let mut this_morning =
        UsageEvent { request_id: "kb-2".into(), cost_micros: 200, created_at_ms: now, ..yesterday.clone() };
    this_morning.created_at_ms = now;
    ingest(&app, &[yesterday, this_morning]).await;

    let (status, set) = app
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/budget"),
            Some(json!({"period": "daily", "budget_micros": 1000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(
        set["quota_micros"], 1300,
        "spend before today (300) + today's budget: 800 of it left after today's 200"
    );
    let record: Value = serde_json::from_slice(&edge.pushes().last().unwrap().body).unwrap();
    assert_eq!(record["quota_micros"], 1300, "the edge enforces the moved quota");
    assert_eq!(edgeway_admin::budgets::run_once(&app.state, now).await.unwrap(), 0, "once per period");
    assert_eq!(edgeway_admin::budgets::run_once(&app.state, today + 86_400_000 + 60_000).await.unwrap(), 1);
    let (_, key) = app.call(Method::GET, &format!("/api/keys/{id}"), None).await;
    assert_eq!(key["quota_micros"], 1500, "tomorrow: everything before it (500) + 1000");
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/budget"),
            Some(json!({"period": "hourly", "budget_micros": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        app.call(Method::PUT, &format!("/api/keys/{id}/budget"), Some(json!({"period": "none"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        edgeway_admin::budgets::run_once(&app.state, today + 3 * 86_400_000).await.unwrap(),
        0,
        "removed: a lifetime cap again"
    );
    edge.stop();
}

use crate::common::{DbKind, Options, TestApp, SECRET};
use crate::on_both_databases;
use axum::http::{Method, StatusCode};
use edgeway_admin::now_secs;
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use serde_json::{json, Value};

fn event(i: u64, key_digest: &str) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{i:04}"),
        key_digest: key_digest.to_string(),
        owner: "alice".into(),
        user_id: None,
        group: "default".into(),
        price_ratio_ppm: 1_000_000,
        model: "mock-small".into(),
        upstream_model: "mock-small".into(),
        channel: "mock-1".into(),
        provider: "mock".into(),
        endpoint: Default::default(),
        unit: None,
        unit_count: 0,
        usage: TokenUsage {
            input_uncached: 10 + i,
            cache_read: i % 3,
            cache_write_5m: 0,
            cache_write_1h: i % 2,
            output: 20 + i,
            reasoning: i % 5,
        },
        cost_micros: 100 + i as i64,
        status: 200,
        outcome: if i.is_multiple_of(7) { RequestOutcome::ClientAborted } else { RequestOutcome::Completed },
        usage_source: if i.is_multiple_of(4) { UsageSource::Estimated } else { UsageSource::Provider },
        stream: i.is_multiple_of(2),
        latency_ms: 50 + i,
        ttft_ms: i.is_multiple_of(2).then_some(5 + i),
        served_model: String::new(),
        attempts: Vec::new(),
        created_at_ms: 1_700_000_000_000 + i as i64,
    }
}

fn batch(events: &[UsageEvent]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).unwrap()
}

/// Deterministic Fisher–Yates shuffle.
fn shuffled<T: Clone>(items: &[T], mut seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    for i in (1..out.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        out.swap(i, j);
    }
    out
}

async fn ledger(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.call(Method::GET, "/api/usage?limit=1000", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn ingest_is_idempotent(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let events: Vec<UsageEvent> = (0..40).map(|i| event(i, &"ab".repeat(32))).collect();

    let (status, body) = app.ingest(&batch(&events), SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"inserted": 40, "duplicates": 0}));
    let first = ledger(&app).await;
    assert_eq!(first.len(), 40);

    for seed in [1, 2] {
        let (status, body) = app.ingest(&batch(&shuffled(&events, seed)), SECRET, now_secs()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"inserted": 0, "duplicates": 40}));
    }
    assert_eq!(ledger(&app).await, first, "re-delivery changes nothing");

    // A partial re-delivery mixed with new events; a duplicate inside one batch.
    let mut mixed = shuffled(&events[..10], 3);
    mixed.push(event(100, &"cd".repeat(32)));
    mixed.push(event(100, &"cd".repeat(32)));
    let (_, body) = app.ingest(&batch(&mixed), SECRET, now_secs()).await;
    assert_eq!(body, json!({"inserted": 1, "duplicates": 11}));

    // Rows round-trip to the same events, newest first.
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 41);
    let back: UsageEvent = serde_json::from_value(rows[0].clone()).unwrap();
    assert_eq!(back, event(100, &"cd".repeat(32)));
    let back: UsageEvent = serde_json::from_value(rows[1].clone()).unwrap();
    assert_eq!(back, events[39]);
    assert!(rows[0]["ingested_at_ms"].as_i64().unwrap() > 0);
}
on_both_databases!(ingest_is_idempotent);

async fn usage_by_key_and_summary(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let (_, a) = app.call(Method::POST, "/api/keys", Some(json!({"name": "a"}))).await;
    let (_, b) = app.call(Method::POST, "/api/keys", Some(json!({"name": "b"}))).await;
    let digest_a = a["digest"].as_str().unwrap();
    let digest_b = b["digest"].as_str().unwrap();
    let unknown = "ef".repeat(32);
    let mut events: Vec<UsageEvent> = (0..5).map(|i| event(i, digest_a)).collect();
    events.extend((5..8).map(|i| event(i, digest_b)));
    events.push(event(8, &unknown));
    let (status, _) = app.ingest(&batch(&events), SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) =
        app.call(Method::GET, &format!("/api/usage?key_id={}", a["id"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::OK);
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["key_digest"] == digest_a));
    let (_, body) = app.call(Method::GET, "/api/usage?limit=2", None).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["request_id"], "req-0008");
    for query in ["limit=0", "limit=1001", "limit=x", "bogus=1"] {
        let (status, _) = app.call(Method::GET, &format!("/api/usage?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    let (status, _) = app.call(Method::GET, "/api/usage?key_id=key_nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, summary) = app.call(Method::GET, "/api/usage/summary", None).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let data = summary["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let totals_of = |digest: &str| data.iter().find(|d| d["key_digest"] == digest).unwrap().clone();
    let expect = |evs: &[UsageEvent]| {
        let prompt: u64 = evs.iter().map(|e| e.usage.prompt_total()).sum();
        let output: u64 = evs.iter().map(|e| e.usage.output).sum();
        let cost: i64 = evs.iter().map(|e| e.cost_micros).sum();
        (evs.len() as i64, prompt as i64, output as i64, cost)
    };
    for (digest, evs, name) in [
        (digest_a, &events[..5], Some("a")),
        (digest_b, &events[5..8], Some("b")),
        (unknown.as_str(), &events[8..], None),
    ] {
        let t = totals_of(digest);
        let (requests, prompt, output, cost) = expect(evs);
        assert_eq!(t["requests"], requests);
        assert_eq!(t["prompt_tokens"], prompt);
        assert_eq!(t["output_tokens"], output);
        assert_eq!(t["total_tokens"], prompt + output);
        assert_eq!(t["cost_micros"], cost);
        assert_eq!(t["key_name"].as_str(), name);
    }
    let (requests, prompt, output, cost) = expect(&events);
    assert_eq!(
        summary["totals"],
        json!({"requests": requests, "total_tokens": prompt + output, "cost_micros": cost})
    );
    // Dearest first.
    let costs: Vec<i64> = data.iter().map(|d| d["cost_micros"].as_i64().unwrap()).collect();
    assert!(costs.windows(2).all(|w| w[0] >= w[1]), "{costs:?}");
}
on_both_databases!(usage_by_key_and_summary);

#[tokio::test]
async fn ingest_refuses_bad_signatures_and_bodies() {
    let app = TestApp::sqlite().await;
    let body = batch(&[event(1, &"ab".repeat(32))]);
    let (status, response) = app.ingest(&body, "wrong-secret-0123456789", now_secs()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{response}");
    let (status, _) = app.ingest(&body, SECRET, now_secs() - 3600).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "stale timestamps are refused");
    // A replayed nonce is refused; so is a query the signature did not cover.
    let nonce = "nonce-0123456789abcdef";
    let (status, _) = app.ingest_signed(&body, SECRET, now_secs(), nonce, "/internal/usage").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.ingest_signed(&body, SECRET, now_secs(), nonce, "/internal/usage").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a replayed nonce is refused");
    let (status, _) =
        app.ingest_signed(&body, SECRET, now_secs(), "nonce-other-0123456789", "/internal/usage?x=1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the query is signed");
    // The admin bearer token is not a substitute for the signature.
    let (status, _) =
        app.call(Method::POST, "/internal/usage", Some(serde_json::from_slice(&body).unwrap())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for bad in [
        b"{not json".to_vec(),
        br#"{"events": [{"request_id": "x"}]}"#.to_vec(),
        batch(&[UsageEvent { request_id: " ".into(), ..event(1, "ab") }]),
        batch(&[UsageEvent { latency_ms: u64::MAX, ..event(1, "ab") }]),
    ] {
        let (status, response) = app.ingest(&bad, SECRET, now_secs()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    }
    assert_eq!(ledger(&app).await.len(), 1, "refused batches insert nothing (one signed batch went in)");

    // Without EDGE_ADMIN_SECRET the ingest is disabled.
    let app = TestApp::new(DbKind::Sqlite, Options { no_secret: true, ..Options::default() }).await;
    let (status, response) = app.ingest(&body, SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
}

/// The ledger's columns are the shared usage row's (edge/core `usage_row`,
/// also D1's) plus the admin's own `ingested_at_ms`.
async fn ledger_columns_are_the_shared_usage_row(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let query = match db {
        DbKind::Sqlite => "SELECT name FROM pragma_table_info('usage_ledger') ORDER BY name",
        DbKind::Postgres => {
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
             WHERE table_name = 'usage_ledger' AND table_schema = current_schema() ORDER BY 1"
        }
    };
    let mut found: Vec<String> = sqlx::query_scalar(query).fetch_all(&app.state.db().pool).await.unwrap();
    found.sort();
    let mut expected: Vec<String> =
        edgeway_core::usage_row::USAGE_COLUMNS.iter().map(|c| c.to_string()).collect();
    expected.push("ingested_at_ms".into());
    expected.sort();
    assert_eq!(found, expected);
}
on_both_databases!(ledger_columns_are_the_shared_usage_row);

//! The pull consumer against a fake Cloudflare Queues pull-consumer API on
//! 127.0.0.1: every message delivered three times in shuffled order and in
//! every body encoding gives the fault-free ledger; leases are acknowledged
//! only after the rows are committed; unreadable messages are handed back
//! until they reach the dead-letter queue; API and ack failures lose nothing.

use crate::common::{DbKind, Options, TestApp};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use edgeway_admin::config::PullConfig;
use edgeway_admin::usage::ingest_events;
use edgeway_admin::usage_pull::{self, PullConsumer, PullError};
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ACCOUNT: &str = "acct0123";
const QUEUE: &str = "queue-4567";
const CF_TOKEN: &str = "cf-api-token-for-tests";
/// Deliveries before the fake queue moves a message to its dead-letter list.
const MAX_DELIVERIES: u32 = 3;

fn event(i: u64) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-pull-{i:04}"),
        key_digest: "cd".repeat(32),
        owner: "bob".into(),
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
        usage: TokenUsage { input_uncached: 10 + i, output: 5 + i, ..TokenUsage::default() },
        cost_micros: 1_000 + i as i64 * 7,
        status: 200,
        outcome: RequestOutcome::Completed,
        usage_source: UsageSource::Provider,
        stream: true,
        latency_ms: 10,
        ttft_ms: Some(3),
        served_model: String::new(),
        attempts: Vec::new(),
        created_at_ms: 1_700_000_000_000 + i as i64,
    }
}

#[derive(Debug, Clone)]
struct Message {
    id: String,
    body: Value,
    content_type: &'static str,
    attempts: u32,
    request_id: Option<String>,
}

#[derive(Default)]
struct FakeQueue {
    ready: VecDeque<Message>,
    leased: BTreeMap<String, Message>,
    next_lease: u64,
    /// Message ids acknowledged, in order.
    acked: Vec<String>,
    dead: Vec<Message>,
    /// Acks of a request id with no ledger row yet (commit-then-ack broken).
    violations: Vec<String>,
    fail_pulls: u32,
    fail_acks: u32,
}

#[derive(Clone)]
struct Fake {
    queue: Arc<Mutex<FakeQueue>>,
    db: edgeway_admin::db::Db,
}

fn authorized(headers: &HeaderMap, account: &str, queue: &str) -> Result<(), StatusCode> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {CF_TOKEN}")) {
        return Err(StatusCode::FORBIDDEN);
    }
    if account != ACCOUNT || queue != QUEUE {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(())
}

async fn pull(
    State(fake): State<Fake>,
    Path((account, queue)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    authorized(&headers, &account, &queue)?;
    let mut q = fake.queue.lock().unwrap();
    if q.fail_pulls > 0 {
        q.fail_pulls -= 1;
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let batch_size = body["batch_size"].as_u64().unwrap_or(10) as usize;
    assert!(body["visibility_timeout_ms"].as_u64().is_some(), "visibility timeout sent");
    let mut out = Vec::new();
    while out.len() < batch_size {
        let Some(mut message) = q.ready.pop_front() else { break };
        message.attempts += 1;
        q.next_lease += 1;
        let lease_id = format!("lease-{}", q.next_lease);
        out.push(json!({
            "id": message.id,
            "body": message.body,
            "attempts": message.attempts,
            "lease_id": lease_id,
            "timestamp_ms": 1_700_000_000_000u64,
            "metadata": {"CF-sourceMessageSource": "worker", "CF-Content-Type": message.content_type},
        }));
        q.leased.insert(lease_id, message);
    }
    Ok(Json(json!({"success": true, "errors": [], "messages": [], "result": {"messages": out}})))
}

async fn ack(
    State(fake): State<Fake>,
    Path((account, queue)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    authorized(&headers, &account, &queue)?;
    let acks: Vec<String> = body["acks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["lease_id"].as_str().unwrap().to_string())
        .collect();
    let retries: Vec<(String, u64)> = body["retries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["lease_id"].as_str().unwrap().to_string(), r["delay_seconds"].as_u64().unwrap()))
        .collect();
    {
        let mut q = fake.queue.lock().unwrap();
        if q.fail_acks > 0 {
            q.fail_acks -= 1;
            return Err(StatusCode::BAD_GATEWAY);
        }
    }
    // Commit then ack: every acknowledged event must already be in the ledger.
    let mut missing = Vec::new();
    for lease in &acks {
        let request_id = fake.queue.lock().unwrap().leased.get(lease).and_then(|m| m.request_id.clone());
        if let Some(request_id) = request_id {
            let rows: i64 =
                sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM usage_ledger WHERE request_id = $1")
                    .bind(&request_id)
                    .fetch_one(&fake.db.pool)
                    .await
                    .unwrap();
            if rows != 1 {
                missing.push(request_id);
            }
        }
    }
    let mut q = fake.queue.lock().unwrap();
    q.violations.extend(missing);
    for lease in acks {
        let message = q.leased.remove(&lease).expect("acked lease is held");
        q.acked.push(message.id);
    }
    for (lease, _delay) in &retries {
        let message = q.leased.remove(lease).expect("retried lease is held");
        if message.attempts >= MAX_DELIVERIES {
            q.dead.push(message);
        } else {
            q.ready.push_back(message);
        }
    }
    Ok(Json(json!({"success": true, "result": {"ackCount": 0, "retryCount": retries.len()}})))
}

/// Starts the fake API; returns its base URL and state.
async fn fake_api(app: &TestApp) -> (String, Arc<Mutex<FakeQueue>>) {
    let queue = Arc::new(Mutex::new(FakeQueue::default()));
    let fake = Fake { queue: queue.clone(), db: app.state.db().clone() };
    let router = Router::new()
        .route("/client/v4/accounts/{account}/queues/{queue}/messages/pull", post(pull))
        .route("/client/v4/accounts/{account}/queues/{queue}/messages/ack", post(ack))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/client/v4"), queue)
}

fn config(api_base: &str, batch_size: u32) -> PullConfig {
    PullConfig {
        api_base: api_base.to_string(),
        account_id: ACCOUNT.into(),
        queue_id: QUEUE.into(),
        api_token: CF_TOKEN.into(),
        batch_size,
        visibility_timeout_ms: 30_000,
        idle_ms: 10,
        retry_delay_secs: 0,
    }
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

/// Each event three times, in the three body shapes the API may use.
fn triple_deliveries(events: &[UsageEvent]) -> Vec<Message> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let text = serde_json::to_string(e).unwrap();
        let shapes: [(Value, &'static str); 3] = [
            (Value::String(text.clone()), "json"),
            (Value::String(base64::engine::general_purpose::STANDARD.encode(&text)), "bytes"),
            (serde_json::to_value(e).unwrap(), "json"),
        ];
        for (copy, (body, content_type)) in shapes.into_iter().enumerate() {
            out.push(Message {
                id: format!("msg-{i}-{copy}"),
                body,
                content_type,
                attempts: 0,
                request_id: Some(e.request_id.clone()),
            });
        }
    }
    out
}

async fn ledger_rows(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>("SELECT request_id, cost_micros FROM usage_ledger ORDER BY request_id")
        .fetch_all(&app.state.db().pool)
        .await
        .unwrap()
}

/// Rounds until the fake queue holds nothing (bounded).
async fn drain(consumer: &PullConsumer, app: &TestApp, queue: &Arc<Mutex<FakeQueue>>) {
    for _ in 0..500 {
        {
            let q = queue.lock().unwrap();
            if q.ready.is_empty() && q.leased.is_empty() {
                return;
            }
        }
        let _ = consumer.round(&app.state).await;
    }
    panic!("queue not drained");
}

#[tokio::test]
async fn every_message_three_times_shuffled_gives_the_fault_free_ledger() {
    let events: Vec<UsageEvent> = (0..40).map(event).collect();

    // Fault-free reference: each event ingested once.
    let reference = TestApp::new(DbKind::Sqlite, Options::default()).await;
    ingest_events(&reference.state, &events).await.unwrap();

    let app = TestApp::new(DbKind::Sqlite, Options::default()).await;
    let (base, queue) = fake_api(&app).await;
    let mut deliveries = triple_deliveries(&events);
    for (i, body) in [Value::String("not json".into()), json!({"request_id": 5})].into_iter().enumerate() {
        deliveries.push(Message {
            id: format!("junk-{i}"),
            body,
            content_type: "json",
            attempts: 0,
            request_id: None,
        });
    }
    queue.lock().unwrap().ready = shuffled(&deliveries, 0x5eed).into();

    // A small batch size spreads the copies of one event over many batches.
    let consumer = PullConsumer::new(config(&base, 7)).unwrap();
    drain(&consumer, &app, &queue).await;

    assert_eq!(ledger_rows(&app).await, ledger_rows(&reference).await, "same ledger as the fault-free run");
    let q = queue.lock().unwrap();
    assert!(q.violations.is_empty(), "acknowledged before commit: {:?}", q.violations);
    assert_eq!(q.acked.len(), 120, "every readable copy acknowledged exactly once");
    let dead: Vec<&str> = q.dead.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(dead.len(), 2, "unreadable messages end in the dead-letter queue: {dead:?}");
    assert!(q.dead.iter().all(|m| m.attempts == MAX_DELIVERIES));
}

#[tokio::test]
async fn api_and_ack_failures_lose_nothing_and_duplicate_nothing() {
    let app = TestApp::new(DbKind::Sqlite, Options::default()).await;
    let (base, queue) = fake_api(&app).await;
    let events: Vec<UsageEvent> = (0..10).map(event).collect();
    queue.lock().unwrap().ready = triple_deliveries(&events[..5]).into();

    // Wrong token: refused, nothing ingested, nothing acknowledged.
    let mut bad = config(&base, 100);
    bad.api_token = "wrong".into();
    let wrong = PullConsumer::new(bad).unwrap();
    assert_eq!(wrong.round(&app.state).await.unwrap_err(), PullError::Status(403));
    assert!(ledger_rows(&app).await.is_empty());

    let consumer = PullConsumer::new(config(&base, 100)).unwrap();
    // The API fails a pull: an error, no harm.
    queue.lock().unwrap().fail_pulls = 1;
    assert_eq!(consumer.round(&app.state).await.unwrap_err(), PullError::Status(500));

    // The ack fails after the commit: rows are in, leases still held...
    queue.lock().unwrap().fail_acks = 1;
    assert_eq!(consumer.round(&app.state).await.unwrap_err(), PullError::Status(502));
    assert_eq!(ledger_rows(&app).await.len(), 5);
    // ...so the visibility timeout hands them out again, with new events behind them.
    {
        let mut q = queue.lock().unwrap();
        let expired: Vec<Message> = std::mem::take(&mut q.leased).into_values().collect();
        q.ready.extend(expired);
        q.ready.extend(triple_deliveries(&events[5..]));
    }
    let report = consumer.round(&app.state).await.unwrap();
    assert_eq!((report.ingest.inserted, report.ingest.duplicates), (5, 25));
    drain(&consumer, &app, &queue).await;
    let rows = ledger_rows(&app).await;
    assert_eq!(rows.len(), 10, "0 lost, 0 duplicated");
    let expected: i64 = events.iter().map(|e| e.cost_micros).sum();
    assert_eq!(rows.iter().map(|(_, c)| c).sum::<i64>(), expected);
    assert!(queue.lock().unwrap().violations.is_empty());
}

#[tokio::test]
async fn the_spawned_consumer_drains_the_queue() {
    let app = TestApp::new(DbKind::Sqlite, Options::default()).await;
    let (base, queue) = fake_api(&app).await;
    let events: Vec<UsageEvent> = (0..25).map(event).collect();
    queue.lock().unwrap().ready = shuffled(&triple_deliveries(&events), 7).into();
    queue.lock().unwrap().fail_pulls = 2;
    let task = usage_pull::spawn(app.state.clone(), config(&base, 10)).unwrap();
    let started = std::time::Instant::now();
    while ledger_rows(&app).await.len() < 25 || !queue.lock().unwrap().ready.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "not drained in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(ledger_rows(&app).await.len(), 25);
}

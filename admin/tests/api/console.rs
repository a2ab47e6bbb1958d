//! The console's routes: dashboard statistics, filtered request logs with a
//! cursor and a streamed CSV export, the public pages' data, the console's
//! files and `/metrics` (parsed line by line, counters checked to move).

use crate::common::{DbKind, Options, TestApp, SECRET, TOKEN};
use crate::on_both_databases;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use edgeway_admin::config::ObservabilityConfig;
use edgeway_admin::now_secs;
use edgeway_core::usage::{RequestOutcome, TokenUsage, UsageEvent, UsageSource};
use serde_json::json;
use tower::ServiceExt;

const HOUR: i64 = 3_600_000;
/// A fixed start: 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

/// Event `i`: models alternate a/b, channel c1 for even i, status 500 for
/// every fifth, one per 10 minutes from T0, cost 10 + i, tokens 3 + 2.
fn event(i: i64, user: Option<&str>) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{i:05}"),
        key_digest: "cd".repeat(32),
        owner: "o".into(),
        user_id: user.map(str::to_string),
        group: "default".into(),
        price_ratio_ppm: 1_000_000,
        model: if i % 2 == 0 { "model-a".into() } else { "model-b".into() },
        upstream_model: "up".into(),
        channel: if i % 2 == 0 { "c1".into() } else { "c2".into() },
        provider: "mock".into(),
        endpoint: Default::default(),
        unit: None,
        unit_count: 0,
        usage: TokenUsage {
            input_uncached: 3,
            cache_read: 0,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: 2,
            reasoning: 0,
        },
        cost_micros: 10 + i,
        status: if i % 5 == 0 { 500 } else { 200 },
        outcome: if i % 5 == 0 { RequestOutcome::Failed } else { RequestOutcome::Completed },
        usage_source: UsageSource::Provider,
        stream: false,
        latency_ms: 5,
        ttft_ms: None,
        served_model: String::new(),
        attempts: Vec::new(),
        created_at_ms: T0 + i * 600_000,
    }
}

async fn ingest(app: &TestApp, events: &[UsageEvent]) {
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let (status, out) = app.ingest(&body, SECRET, now_secs()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
}

async fn get_text(app: &TestApp, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut builder = Request::builder().method(Method::GET).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let response = app.router.clone().oneshot(builder.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap();
    (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn stats_logs_and_csv(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    let alice = app.user("alice", "user").await;
    // 1200 rows over 200 hours: more than two CSV chunks of 500.
    let events: Vec<UsageEvent> =
        (0..1200).map(|i| event(i, if i % 3 == 0 { Some(alice.id.as_str()) } else { None })).collect();
    for chunk in events.chunks(400) {
        ingest(&app, chunk).await;
    }
    let to = T0 + 1200 * 600_000;

    // Totals and a breakdown over the whole range, by hour.
    let (status, s) =
        app.call(Method::GET, &format!("/api/stats?from_ms={T0}&to_ms={to}&bucket=hour"), None).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["totals"]["requests"], 1200);
    assert_eq!(s["totals"]["tokens"], 1200 * 5);
    assert_eq!(s["totals"]["errors"], 240);
    assert_eq!(s["totals"]["cost_micros"], (0..1200).map(|i| 10 + i).sum::<i64>());
    let series = s["series"].as_array().unwrap();
    assert_eq!(series.len(), 200, "six rows an hour for 200 hours");
    assert!(series.iter().all(|p| p["requests"] == 6 && (p["t_ms"].as_i64().unwrap() - T0) % HOUR == 0));
    let by_model = s["by"]["model"].as_array().unwrap();
    assert_eq!(by_model.len(), 2);
    assert_eq!(by_model[0]["name"], "model-b", "dearest first");
    assert_eq!(by_model[0]["requests"], 600);
    assert_eq!(s["by"]["channel"].as_array().unwrap().len(), 2);
    let by_user = s["by"]["user"].as_array().unwrap();
    assert!(by_user.iter().any(|g| g["name"] == "alice" && g["requests"] == 400), "{by_user:?}");

    // A sub-range and a filter.
    let (_, s) = app
        .call(Method::GET, &format!("/api/stats?from_ms={T0}&to_ms={}&model=model-a", T0 + 2 * HOUR), None)
        .await;
    assert_eq!(s["totals"]["requests"], 6, "{s}");
    assert_eq!(s["bucket_ms"], HOUR);

    // A user sees only their own rows.
    let (status, mine) = app
        .call_as(Method::GET, &format!("/api/me/stats?from_ms={T0}&to_ms={to}"), None, Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["totals"]["requests"], 400);
    assert!(mine["by"].get("channel").is_none() && mine["by"].get("user").is_none());

    // Logs: filters and pages that cover the set exactly once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .call(Method::GET, &format!("/api/logs?status=5xx&channel=c1&limit=37&cursor={cursor}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for row in page["data"].as_array().unwrap() {
            assert_eq!(row["status"], 500);
            assert_eq!(row["channel"], "c1");
            assert!(seen.insert(row["request_id"].as_str().unwrap().to_string()), "a row twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    // Every tenth row is a 500 on c1 (i % 10 == 0).
    assert_eq!(seen.len(), 120);
    let (status, _) = app.call(Method::GET, "/api/logs?status=bad", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, mine) = app.call_as(Method::GET, "/api/me/logs?limit=1000", None, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["data"].as_array().unwrap().len(), 400);
    assert!(mine["data"].as_array().unwrap().iter().all(|r| r["user_id"] == alice.id.as_str()));

    // CSV: the whole filtered set, streamed in chunks, newest first.
    let (status, content_type, csv) = get_text(&app, "/api/logs?format=csv&model=model-b", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], edgeway_admin::console::logs::CSV_HEADER.trim_end());
    assert_eq!(lines.len(), 1 + 600, "header + every model-b row");
    assert!(lines[1].contains("req-01199"), "newest first: {}", lines[1]);
    let ids: std::collections::BTreeSet<&str> =
        lines[1..].iter().map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(ids.len(), 600, "no row twice across chunks");
    let (status, _, _) = get_text(&app, "/api/logs?format=csv", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a user cannot export everyone's logs");
}
on_both_databases!(stats_logs_and_csv);

#[tokio::test]
async fn console_files_and_public_pages() {
    let app = TestApp::sqlite().await;
    let (status, content_type, html) = get_text(&app, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(html.contains("/static/app.js"));
    for file in [
        "app.js",
        "pages.js",
        "admin.js",
        "channel_settings.js",
        "i18n.js",
        "app.css",
        "uplot.js",
        "uplot.css",
        "favicon.svg",
    ] {
        let (status, _, body) = get_text(&app, &format!("/static/{file}"), None).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert!(!body.is_empty(), "{file}");
    }
    let (_, _, uplot) = get_text(&app, "/static/uplot.js", None).await;
    assert!(
        uplot.contains("uPlot") && uplot.len() > 10_000,
        "the real uPlot is embedded (run scripts/setup)"
    );
    let (status, _, _) = get_text(&app, "/static/../Cargo.toml", None).await;
    assert_ne!(status, StatusCode::OK);
    let (status, _, _) = get_text(&app, "/static/nope.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"id": "on", "provider": "mock", "models": [{"name": "shown", "price": {"input": 150000, "output": 600000}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"id": "off", "provider": "mock", "enabled": false, "models": [{"name": "hidden"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, pricing) = app.call_as(Method::GET, "/api/public/pricing", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> =
        pricing["data"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["shown"], "only models with an enabled channel");
    assert_eq!(pricing["data"][0]["price"]["output"], 600000);
    assert!(!pricing.to_string().contains("\"on\""), "no channel names on the public page");
    let (status, info) = app.call_as(Method::GET, "/api/public/info", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["signup_mode"], "closed");
    assert!(info["providers"].as_array().unwrap().iter().any(|p| p["id"] == "mock"));
}

/// One sample of the exposition: `name{labels} value`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let body = rest.strip_suffix('}')?;
        let found: Vec<(String, String)> = if body.is_empty() {
            Vec::new()
        } else {
            body.split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect()
        };
        labels
            .iter()
            .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v))
            .then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn metrics_need_the_token_and_move_with_usage() {
    let token = "scrape-token-0123456789abcdef";
    let observability =
        ObservabilityConfig { metrics_token: Some(token.into()), ..ObservabilityConfig::default() };
    let app =
        TestApp::new(DbKind::Sqlite, Options { observability: Some(observability), ..Options::default() })
            .await;
    let (status, _, _) = get_text(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get_text(&app, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the admin token is not the scrape token");

    ingest(&app, &[event(1, None), event(2, None)]).await;
    let (status, content_type, before) = get_text(&app, "/metrics", Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    // Every line is a comment or `name{labels} number`.
    for line in before.lines() {
        assert!(
            line.starts_with("# HELP ")
                || line.starts_with("# TYPE ")
                || line.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
            "{line}"
        );
    }
    let b = [("model", "model-b"), ("channel", "c2"), ("status_class", "2xx")];
    assert_eq!(sample(&before, "edgeway_usage_requests_total", &b), Some(1.0));
    assert_eq!(sample(&before, "edgeway_usage_output_tokens_total", &b), Some(2.0));
    assert_eq!(sample(&before, "edgeway_usage_cost_micros_total", &b), Some(11.0));
    assert!(sample(&before, "edgeway_db_pool_max_connections", &[]).is_some());
    assert!(sample(&before, "edgeway_usage_ingest_lag_seconds", &[]).is_some());

    ingest(&app, &[event(3, None)]).await;
    let (_, _, after) = get_text(&app, "/metrics", Some(token)).await;
    assert_eq!(sample(&after, "edgeway_usage_requests_total", &b), Some(2.0));
    assert_eq!(sample(&after, "edgeway_usage_cost_micros_total", &b), Some(24.0));
    let ingested = [("method", "POST"), ("route", "/internal/usage"), ("status", "200")];
    assert_eq!(
        sample(&before, "edgeway_admin_http_requests_total", &ingested),
        Some(1.0),
        "one batch posted"
    );
    assert_eq!(sample(&after, "edgeway_admin_http_requests_total", &ingested), Some(2.0));
}

#[tokio::test]
async fn metrics_without_a_token_only_for_allowed_addresses() {
    // In-process requests have no peer address: refused by the allow-list.
    let app = TestApp::sqlite().await;
    let (status, _, _) = get_text(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

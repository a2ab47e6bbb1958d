//! Observability of the admin service: Prometheus `/metrics` and one
//! structured log line per HTTP request.
//!
//! `GET /metrics` answers the Prometheus text format (0.0.4): this service's
//! own request counters (by method, route template and status), the usage
//! ledger's totals by model, channel and status class (requests, input and
//! output tokens, spend in micro-units: counters that move as usage is
//! ingested), the newest row's ingest lag, and the database pool. It is
//! outside the route table because it has its own guard: with
//! `METRICS_TOKEN` set a scrape must send it as a bearer token; otherwise
//! only the addresses of `METRICS_ALLOW` (default loopback) may scrape.
//!
//! The request log line carries the method, the matched route template, the
//! path (never the query, which can carry OAuth codes), the status, the
//! duration and a request id (also returned as `x-request-id`): never
//! headers, cookies or bodies, so no credential reaches the log.

use crate::config::ObservabilityConfig;
use crate::db::stats::{last_ingest_lag_ms, metric_rows};
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// `(method, route template, status)` of served requests.
type RequestKey = (String, String, u16);
/// (count, total seconds) of one [`RequestKey`].
type RequestCount = (u64, f64);
/// One ledger series: name, help, and its value in a row.
type LedgerSeries = (&'static str, &'static str, fn(&crate::db::stats::MetricRow) -> i64);

/// Counters of this process.
#[derive(Debug)]
pub struct Metrics {
    pub config: ObservabilityConfig,
    /// `(method, route, status)` → (count, total seconds).
    requests: Mutex<BTreeMap<RequestKey, RequestCount>>,
    started: std::time::Instant,
}

impl Metrics {
    pub fn new(config: ObservabilityConfig) -> Self {
        Self { config, requests: Mutex::new(BTreeMap::new()), started: std::time::Instant::now() }
    }

    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Ok(mut map) = self.requests.lock() {
            let entry = map.entry((method.to_string(), route.to_string(), status)).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += seconds;
        }
    }

    fn snapshot(&self) -> Vec<(RequestKey, RequestCount)> {
        self.requests.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }
}

/// Escapes a label value (backslash, double quote, newline).
pub fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes one metric family's header.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Whether this scrape may read the metrics.
pub fn scrape_allowed(
    config: &ObservabilityConfig,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> bool {
    match &config.metrics_token {
        Some(token) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let a = crate::auth::token_digest(presented);
            let b = crate::auth::token_digest(token);
            a.ct_eq(&b).into()
        }
        None => peer.is_some_and(|ip| {
            // An IPv4-mapped IPv6 peer is the IPv4 address it carries.
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
                v4 => v4,
            };
            config.metrics_allow.iter().any(|r| r.contains(ip))
        }),
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<AppState>, addr: ClientAddr, headers: HeaderMap) -> Response {
    let config = &state.metrics().config;
    if !scrape_allowed(config, &headers, addr.0.map(|a| a.ip())) {
        return if config.metrics_token.is_some() {
            ApiError::Unauthorized.into_response()
        } else {
            ApiError::forbidden("this address may not scrape /metrics (see METRICS_ALLOW, METRICS_TOKEN)")
                .into_response()
        };
    }
    match render(&state).await {
        Ok(text) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(err) => err.into_response(),
    }
}

/// The whole exposition.
pub async fn render(state: &AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    family(&mut out, "edgeway_admin_up", "gauge", "1 while the admin service answers.");
    let _ = writeln!(out, "edgeway_admin_up 1");
    family(&mut out, "edgeway_admin_uptime_seconds", "gauge", "Seconds since the process started.");
    let _ =
        writeln!(out, "edgeway_admin_uptime_seconds {:.3}", state.metrics().started.elapsed().as_secs_f64());

    let requests = state.metrics().snapshot();
    family(
        &mut out,
        "edgeway_admin_http_requests_total",
        "counter",
        "HTTP requests served, by method, route and status.",
    );
    for ((method, route, status), (count, _)) in &requests {
        let _ = writeln!(
            out,
            "edgeway_admin_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
            label(method),
            label(route)
        );
    }
    family(
        &mut out,
        "edgeway_admin_http_request_duration_seconds_total",
        "counter",
        "Time spent serving HTTP requests.",
    );
    for ((method, route, status), (_, seconds)) in &requests {
        let _ = writeln!(
            out,
            "edgeway_admin_http_request_duration_seconds_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {seconds:.6}",
            label(method),
            label(route)
        );
    }

    let rows = metric_rows(state.db()).await?;
    let series: [LedgerSeries; 4] = [
        (
            "edgeway_usage_requests_total",
            "Requests in the usage ledger, by model, channel and status class.",
            |r| r.requests,
        ),
        (
            "edgeway_usage_input_tokens_total",
            "Input tokens (cached and uncached) in the usage ledger.",
            |r| r.input_tokens,
        ),
        ("edgeway_usage_output_tokens_total", "Output tokens in the usage ledger.", |r| r.output_tokens),
        ("edgeway_usage_cost_micros_total", "Spend in the usage ledger, micro-units.", |r| r.cost_micros),
    ];
    for (name, help, value) in series {
        family(&mut out, name, "counter", help);
        for r in &rows {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",channel=\"{}\",status_class=\"{}\"}} {}",
                label(&r.model),
                label(&r.channel),
                label(&r.status_class),
                value(r)
            );
        }
    }
    family(
        &mut out,
        "edgeway_usage_ingest_lag_seconds",
        "gauge",
        "Time from the newest ingested request's creation at the edge to its ingest here.",
    );
    if let Some(lag) = last_ingest_lag_ms(state.db()).await? {
        let _ = writeln!(out, "edgeway_usage_ingest_lag_seconds {:.3}", lag as f64 / 1000.0);
    }

    let pool = &state.db().pool;
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    family(&mut out, "edgeway_db_pool_connections", "gauge", "Database pool connections by state.");
    let _ = writeln!(out, "edgeway_db_pool_connections{{state=\"idle\"}} {idle}");
    let _ = writeln!(out, "edgeway_db_pool_connections{{state=\"in_use\"}} {}", size.saturating_sub(idle));
    family(&mut out, "edgeway_db_pool_max_connections", "gauge", "Largest size of the database pool.");
    let _ = writeln!(out, "edgeway_db_pool_max_connections {}", pool.options().get_max_connections());
    if let Some(edge) = state.edge() {
        crate::metrics_edge::render(&mut out, edge).await;
    }
    Ok(out)
}

/// The route template that served a response (set by [`tag_route`]).
#[derive(Debug, Clone)]
struct RouteTag(String);

/// Tags the response with the matched route template, for [`log_request`]
/// (which wraps the whole router, outside the routing that knows it).
pub async fn tag_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteTag(route));
    }
    response
}

/// Counts and logs each request as one line (JSON with `LOG_FORMAT=json`).
pub async fn log_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = crate::key_issue::random_base62(16).unwrap_or_default();
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route =
        response.extensions().get::<RouteTag>().map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    state.metrics().record(method.as_str(), &route, status, elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        request_id,
        method = %method,
        route,
        path,
        status,
        ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: Option<&str>, allow: &[&str]) -> ObservabilityConfig {
        ObservabilityConfig {
            metrics_token: token.map(str::to_string),
            metrics_allow: allow.iter().filter_map(|a| edgeway_core::ip_allow::IpRange::parse(a)).collect(),
            json_logs: false,
            gateway_url: None,
        }
    }

    #[test]
    fn scrapes_need_the_token_or_an_allowed_address() {
        let mut headers = HeaderMap::new();
        let local = Some("127.0.0.1".parse().unwrap());
        let remote = Some("203.0.113.9".parse().unwrap());
        let allow = config(None, &["127.0.0.0/8"]);
        assert!(scrape_allowed(&allow, &headers, local));
        assert!(!scrape_allowed(&allow, &headers, remote));
        assert!(!scrape_allowed(&allow, &headers, None));
        let token = config(Some("scrape-token-0123456789"), &["127.0.0.0/8"]);
        assert!(!scrape_allowed(&token, &headers, local), "with a token, the address is not enough");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer scrape-token-0123456789"));
        assert!(scrape_allowed(&token, &headers, remote));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer scrape-token-012345678"));
        assert!(!scrape_allowed(&token, &headers, local));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

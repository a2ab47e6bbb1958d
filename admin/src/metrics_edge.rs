//! The edge's figures in the admin's `/metrics`, read over the edge's signed
//! internal API at each scrape: D1 usage totals and dead letters
//! (`GET /internal/usage/stats`), circuits and health checks
//! (`GET /internal/health`), and the answering isolate's own counters
//! (`GET /internal/counters`, [`edgeway_core::pipeline::counters`]).
//!
//! **Key design decision:** the edge's counters are exported as what they
//! are, one isolate's: every series carries an `isolate` label (a random id,
//! new whenever Cloudflare starts an isolate) and
//! `edgeway_edge_isolate_start_time_seconds` says when it started, so each
//! series is a true monotonic counter and a new id is a fresh set, not a
//! reset of the old one. A scrape reaches whichever isolate answers it;
//! summing across ids over time approximates the deployment, never exactly
//! (an isolate's counts go with it when it is recycled).

use crate::edge_sync::EdgeClient;
use crate::metrics::{family, label};
use edgeway_core::pipeline::counters::{
    CountersSnapshot, LabelCount, CACHE_VERDICTS, REFUSAL_REASONS, STREAM_ENDINGS,
};
use std::fmt::Write as _;

/// The edge's figures, read over its signed internal API (each read bounded
/// by the push timeout; a failed read is `edgeway_edge_up 0`, not an error).
pub async fn render(out: &mut String, edge: &EdgeClient) {
    let (stats, health, counters) =
        tokio::join!(edge.get_usage_stats(), edge.get_health(), edge.get_counters());
    family(out, "edgeway_edge_up", "gauge", "1 when the edge answered the scrape's internal API reads.");
    let up = stats.is_ok() && health.is_ok() && counters.is_ok();
    let _ = writeln!(out, "edgeway_edge_up {}", u8::from(up));
    if let Ok(stats) = stats {
        let n = |k: &str| stats[k].as_i64().unwrap_or(0);
        family(out, "edgeway_edge_usage_rows", "gauge", "Usage rows in the edge's D1.");
        let _ = writeln!(out, "edgeway_edge_usage_rows {}", n("rows"));
        family(out, "edgeway_edge_usage_cost_micros", "gauge", "Spend in the edge's D1, micro-units.");
        let _ = writeln!(out, "edgeway_edge_usage_cost_micros {}", n("cost_micros"));
        family(
            out,
            "edgeway_edge_dead_letters",
            "gauge",
            "Usage messages kept as dead letters at the edge, by state.",
        );
        let pending = n("dead_letters_pending");
        let _ = writeln!(out, "edgeway_edge_dead_letters{{state=\"pending\"}} {pending}");
        let _ =
            writeln!(out, "edgeway_edge_dead_letters{{state=\"replayed\"}} {}", n("dead_letters") - pending);
    }
    if let Ok(health) = health {
        family(
            out,
            "edgeway_edge_circuit_open",
            "gauge",
            "1 for each circuit open or half-open in the channels' shared health records (by channel, upstream model or credential).",
        );
        family(
            out,
            "edgeway_edge_circuit_recent_failures",
            "gauge",
            "Failures a circuit counts in its window.",
        );
        for c in health["circuits"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let labels = format!(
                "channel=\"{}\",model=\"{}\",credential=\"{}\",state=\"{}\"",
                label(c["channel"].as_str().unwrap_or("")),
                label(c["model"].as_str().unwrap_or("")),
                c["credential"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
                label(c["state"].as_str().unwrap_or("")),
            );
            let open = u8::from(c["state"] != "closed");
            let _ = writeln!(out, "edgeway_edge_circuit_open{{{labels}}} {open}");
            let failures = c["recent_failures"].as_u64().unwrap_or(0);
            let _ = writeln!(out, "edgeway_edge_circuit_recent_failures{{{labels}}} {failures}");
        }
        render_checks(out, &health["channels"]);
    }
    if let Ok(counters) = counters {
        render_counters(out, &counters);
    }
}

/// The last round of the edge's health checks, per channel and credential.
fn render_checks(out: &mut String, channels: &serde_json::Value) {
    let Some(channels) = channels.as_object() else { return };
    family(
        out,
        "edgeway_edge_channel_check_ok",
        "gauge",
        "1 when the last health check of a channel's credential was answered 2xx.",
    );
    family(
        out,
        "edgeway_edge_channel_check_latency_ms",
        "gauge",
        "Latency of the last health check of a channel's credential, ms.",
    );
    family(
        out,
        "edgeway_edge_channel_disabled",
        "gauge",
        "1 when the health checks disabled a channel (every credential refused).",
    );
    for (id, channel) in channels {
        let channel_label = label(id);
        for c in channel["checks"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let labels = format!(
                "channel=\"{channel_label}\",credential=\"{}\",outcome=\"{}\"",
                c["credential"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
                label(c["outcome"].as_str().unwrap_or("")),
            );
            let _ =
                writeln!(out, "edgeway_edge_channel_check_ok{{{labels}}} {}", u8::from(c["outcome"] == "ok"));
            let latency = c["latency_ms"].as_u64().unwrap_or(0);
            let _ = writeln!(out, "edgeway_edge_channel_check_latency_ms{{{labels}}} {latency}");
        }
        let disabled = u8::from(channel["disabled"].is_string());
        let _ = writeln!(out, "edgeway_edge_channel_disabled{{channel=\"{channel_label}\"}} {disabled}");
    }
}

/// A counter family whose label takes a fixed set of values: name, help,
/// label name, every value, the counts.
type FixedFamily<'a> = (&'static str, &'static str, &'static str, &'static [&'static str], &'a [LabelCount]);

/// The help text's warning on every edge counter.
const PER_ISOLATE: &str = "Per isolate: one of the edge's isolates, named by `isolate`, since its start; Cloudflare runs many and recycles them.";

/// The answering isolate's counters as Prometheus counters.
pub fn render_counters(out: &mut String, c: &CountersSnapshot) {
    let isolate = label(&c.isolate_id);
    family(
        out,
        "edgeway_edge_isolate_start_time_seconds",
        "gauge",
        "When the edge isolate that answered this scrape started counting (Unix time); a new `isolate` is a fresh set of counters.",
    );
    let start = c.started_at_ms as f64 / 1000.0;
    let _ = writeln!(out, "edgeway_edge_isolate_start_time_seconds{{isolate=\"{isolate}\"}} {start:.3}");

    let name = "edgeway_edge_requests_total";
    family(out, name, "counter", &format!("Generation requests answered at the edge, by endpoint family, client dialect and status class (`none`: the client left unanswered). {PER_ISOLATE}"));
    for r in &c.requests {
        let _ = writeln!(
            out,
            "{name}{{isolate=\"{isolate}\",family=\"{}\",client=\"{}\",status=\"{}\"}} {}",
            label(&r.family),
            label(&r.client),
            label(&r.status),
            r.count
        );
    }
    let name = "edgeway_edge_upstream_attempts_total";
    family(
        out,
        name,
        "counter",
        &format!("Upstream attempts, by channel and outcome (`served` or the failure class). {PER_ISOLATE}"),
    );
    for a in &c.attempts {
        let _ = writeln!(
            out,
            "{name}{{isolate=\"{isolate}\",channel=\"{}\",outcome=\"{}\"}} {}",
            label(&a.channel),
            label(&a.outcome),
            a.count
        );
    }
    let name = "edgeway_edge_failovers_total";
    family(out, name, "counter", &format!("Failed upstream attempts that another attempt followed, by the channel that failed. {PER_ISOLATE}"));
    for f in &c.failovers {
        let _ =
            writeln!(out, "{name}{{isolate=\"{isolate}\",channel=\"{}\"}} {}", label(&f.channel), f.count);
    }
    let fixed: [FixedFamily<'_>; 3] = [
        (
            "edgeway_edge_admission_refusals_total",
            "Requests the key's account refused, by reason (rpm, tpm, concurrency, quota, balance, revoked).",
            "reason",
            &REFUSAL_REASONS,
            &c.admission_refusals,
        ),
        (
            "edgeway_edge_response_cache_total",
            "Response-cache lookups of models that cache, by verdict.",
            "verdict",
            &CACHE_VERDICTS,
            &c.response_cache,
        ),
        (
            "edgeway_edge_streams_total",
            "Streamed answers, by how they ended (`client_aborted`: the client disconnected mid-stream).",
            "ending",
            &STREAM_ENDINGS,
            &c.streams,
        ),
    ];
    for (name, help, key, labels, counts) in fixed {
        family(out, name, "counter", &format!("{help} {PER_ISOLATE}"));
        // Every label value, zeros included: a rate starts at the first scrape.
        for value in labels {
            let n = counts.iter().find(|l| l.label == *value).map_or(0, |l| l.count);
            let _ = writeln!(out, "{name}{{isolate=\"{isolate}\",{key}=\"{value}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeway_core::pipeline::counters::{AttemptCount, ChannelCount, RequestCount};

    #[test]
    fn counters_are_per_isolate_series_with_every_fixed_label() {
        let snapshot = CountersSnapshot {
            isolate_id: "iso\"1".into(),
            started_at_ms: 1_700_000_000_500,
            now_ms: 1_700_000_009_000,
            requests: vec![RequestCount {
                family: "chat".into(),
                client: "anthropic".into(),
                status: "2xx".into(),
                count: 3,
            }],
            attempts: vec![AttemptCount { channel: "a".into(), outcome: "connect".into(), count: 2 }],
            failovers: vec![ChannelCount { channel: "a".into(), count: 2 }],
            admission_refusals: vec![LabelCount { label: "rpm".into(), count: 4 }],
            response_cache: Vec::new(),
            streams: vec![LabelCount { label: "client_aborted".into(), count: 1 }],
        };
        let mut out = String::new();
        render_counters(&mut out, &snapshot);
        let has = |line: &str| out.lines().any(|l| l == line);
        assert!(has(r#"edgeway_edge_isolate_start_time_seconds{isolate="iso\"1"} 1700000000.500"#), "{out}");
        assert!(has(
            r#"edgeway_edge_requests_total{isolate="iso\"1",family="chat",client="anthropic",status="2xx"} 3"#
        ));
        assert!(has(
            r#"edgeway_edge_upstream_attempts_total{isolate="iso\"1",channel="a",outcome="connect"} 2"#
        ));
        assert!(has(r#"edgeway_edge_failovers_total{isolate="iso\"1",channel="a"} 2"#));
        assert!(has(r#"edgeway_edge_admission_refusals_total{isolate="iso\"1",reason="rpm"} 4"#));
        assert!(has(r#"edgeway_edge_admission_refusals_total{isolate="iso\"1",reason="balance"} 0"#));
        assert!(has(r#"edgeway_edge_response_cache_total{isolate="iso\"1",verdict="hit"} 0"#));
        assert!(has(r#"edgeway_edge_streams_total{isolate="iso\"1",ending="client_aborted"} 1"#));
        for name in
            ["requests", "upstream_attempts", "failovers", "admission_refusals", "response_cache", "streams"]
        {
            assert!(has(&format!("# TYPE edgeway_edge_{name}_total counter")), "{name}");
            let help =
                out.lines().find(|l| l.starts_with(&format!("# HELP edgeway_edge_{name}_total "))).unwrap();
            assert!(help.contains("Per isolate"), "{help}");
        }
    }
}

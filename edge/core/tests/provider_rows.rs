//! The request edgeway builds for one canonical input, per provider row:
//! every quirk a row declares (output-limit field, renamed and refused
//! parameters, family paths, URL style, auth header) shows in what is sent,
//! translated or passed through; and the usage shapes providers answer
//! with are read.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::provider::{provider_by_id, Provider};
use edgeway_core::translate::{
    build_provider_request, parse_client_request, ClientDialect, StreamOptions, StreamTranslator,
    UpstreamDialect,
};
use serde_json::{json, Value};

fn row(id: &str) -> &'static Provider {
    provider_by_id(id).unwrap_or_else(|| panic!("no row {id}"))
}

/// An Anthropic SDK request with an output limit and a metadata user (sent
/// to OpenAI-format upstreams as `user`).
fn anthropic_request() -> edgeway_core::translate::CanonicalRequest {
    let body = json!({
        "model": "m",
        "max_tokens": 300,
        "metadata": {"user_id": "u-1"},
        "messages": [{"role": "user", "content": "Hello"}],
    });
    parse_client_request(ClientDialect::Anthropic, &serde_json::to_vec(&body).unwrap(), None, false).unwrap()
}

fn built(id: &str) -> (String, Value, Vec<&'static str>) {
    let req = anthropic_request();
    let (call, dropped) =
        build_provider_request(UpstreamDialect::OpenAiChat, row(id), &req, "up-model").expect("build");
    (call.path, serde_json::from_slice(&call.body).expect("json"), dropped)
}

#[test]
fn the_output_limit_goes_in_the_field_each_row_takes() {
    for (id, field) in [
        ("openai", "max_completion_tokens"),
        ("azure", "max_completion_tokens"),
        ("mistral", "max_tokens"),
        ("deepseek", "max_tokens"),
        ("groq", "max_tokens"),
        ("zhipu", "max_tokens"),
    ] {
        let (_, body, _) = built(id);
        assert_eq!(body[field], 300, "{id}: {body}");
        let other = if field == "max_tokens" { "max_completion_tokens" } else { "max_tokens" };
        assert!(body.get(other).is_none(), "{id}: {body}");
    }
}

#[test]
fn refused_parameters_are_dropped_and_named() {
    let (_, openai, dropped) = built("openai");
    assert_eq!(openai["user"], "u-1", "OpenAI takes `user`");
    assert!(dropped.is_empty());
    let (_, mistral, dropped) = built("mistral");
    assert!(mistral.get("user").is_none(), "{mistral}");
    assert_eq!(dropped, ["user"]);
    assert_eq!(mistral["messages"][0]["content"], "Hello");
}

#[test]
fn family_paths_come_from_the_row() {
    assert_eq!(built("openai").0, "/chat/completions");
    assert_eq!(built("cohere").0, "/compatibility/v1/chat/completions");
    let cohere = row("cohere");
    assert_eq!(
        cohere.url(cohere.base_url, &built("cohere").0, Some("command-a-03-2025"), None),
        "https://api.cohere.com/compatibility/v1/chat/completions"
    );
    let anthropic =
        build_provider_request(UpstreamDialect::Anthropic, row("anthropic"), &anthropic_request(), "claude")
            .expect("build");
    assert_eq!(anthropic.0.path, "/messages", "other dialects keep their own paths");
}

#[test]
fn a_stream_reporting_usage_in_its_last_choice_is_billed_from_it() {
    // Moonshot's documented stream shape, translated for an Anthropic client.
    let stream = concat!(
        "data: {\"id\":\"c\",\"model\":\"kimi\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"kimi\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",",
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}]}\n\n",
        "data: [DONE]\n\n"
    );
    let mut t = StreamTranslator::new(
        UpstreamDialect::OpenAiChat,
        ClientDialect::Anthropic,
        StreamOptions::default(),
    );
    let mut out = t.feed(stream.as_bytes());
    out.extend(t.finish());
    let usage = t.usage().expect("usage read");
    assert_eq!((usage.input_uncached, usage.output), (12, 2));
    assert!(String::from_utf8_lossy(&out).contains("\"output_tokens\":2"));
}

/// The README's providers × endpoint families table lists every row of the
/// provider table with exactly the families it serves (a column per family).
#[test]
fn the_readme_table_is_the_provider_table() {
    use edgeway_core::family::Family;
    use edgeway_core::provider::PROVIDERS;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    let lines: Vec<&str> = readme.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("| provider | name | dialect |"))
        .expect("the README's providers table (a header starting `| provider | name | dialect |`)");
    let cells = |line: &str| -> Vec<String> {
        line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
    };
    let columns = cells(lines[header]);
    for family in Family::ALL {
        assert!(
            columns.iter().any(|c| c == family.as_str()),
            "the README's providers table needs a `{}` column",
            family.as_str()
        );
    }
    let rows: Vec<Vec<String>> =
        lines[header + 2..].iter().take_while(|l| l.starts_with('|')).map(|l| cells(l)).collect();
    assert_eq!(rows.len(), PROVIDERS.len(), "one README row per provider row");
    for p in PROVIDERS {
        let row = rows
            .iter()
            .find(|r| r[0] == format!("`{}`", p.id))
            .unwrap_or_else(|| panic!("README providers table: no row for `{}`", p.id));
        for family in Family::ALL {
            let i = columns.iter().position(|c| c == family.as_str()).unwrap_or(0);
            let marked = row.get(i).is_some_and(|c| c == "✓");
            assert_eq!(
                marked,
                p.families.contains(family),
                "README providers table: `{}` {} `{}`",
                p.id,
                if p.families.contains(family) { "serves" } else { "does not serve" },
                family.as_str()
            );
        }
    }
}

//! One fuzz target per translator and parser (proptest), so each gets its own
//! execution count: every client request parser, every upstream response and
//! error parser, every (upstream → client) stream translator, the OpenAI relay
//! parser and stream tap, the SSE decoder, the URL policy, the internal API
//! signature check, endpoint classification, CORS header reflection and the
//! KV record and routing config readers. Inputs are mutated fixtures and
//! arbitrary bytes; nothing may panic and every stream must end.
//!
//! In the test suite each target runs a few cases. `scripts/fuzz` runs them
//! with `EDGEWAY_FUZZ_CASES=1000000` (10^6 executions per target) in release
//! mode, as a separate command.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::cors::{allow_headers, CorsPolicy};
use edgeway_core::endpoint::{classify, error_dialect};
use edgeway_core::internal_auth::{precheck, verify};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::openai_relay::{response_content_bytes, response_usage, ChatStreamTap};
use edgeway_core::pipeline::inbound::Inbound;
use edgeway_core::routing::{RoutingConfig, RoutingTable};
use edgeway_core::sse::SseDecoder;
use edgeway_core::translate::{
    build_upstream_request, count_tokens_estimate, parse_client_request, parse_count_tokens_request,
    parse_upstream_error, parse_upstream_response, render_client_response, ClientDialect, StreamOptions,
    StreamOutcome, StreamTranslator, UpstreamDialect,
};
use edgeway_core::url_policy::{check_openai_chat_media, check_url};
use proptest::prelude::*;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

fn cases() -> u32 {
    std::env::var("EDGEWAY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

/// Every fixture file under tests/fixtures, by name prefix, loaded once.
fn fixtures(prefix: &str) -> Vec<(String, Vec<u8>)> {
    static ALL: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/translation/cases");
        let mut out = Vec::new();
        let mut dirs: Vec<_> = fs::read_dir(root).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let mut files: Vec<_> =
                fs::read_dir(&dir).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for file in files {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                out.push((name, fs::read(&file).unwrap()));
            }
        }
        let kv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kv-schema/examples");
        for entry in fs::read_dir(kv).unwrap().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().to_string();
            out.push((format!("kv.{name}"), fs::read(entry.path()).unwrap()));
        }
        out
    });
    all.iter().filter(|(n, _)| n.starts_with(prefix)).cloned().collect()
}

fn dialect_fixtures(prefix: &str, dialect: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = fixtures(prefix)
        .into_iter()
        .filter(|(n, _)| {
            let stem = n.trim_start_matches(prefix).trim_end_matches(".json").trim_end_matches(".sse");
            stem == dialect
        })
        .map(|(_, b)| b)
        .collect();
    if out.is_empty() {
        out.push(b"{}".to_vec());
    }
    out
}

/// Byte-level mutations: overwrite, insert (random or JSON-significant
/// bytes), delete and duplicate ranges.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens: Vec<&'static [u8]> = vec![
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b",",
        b":",
        b"null",
        b"true",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"\n\n",
        b"data: ",
        b"event: ",
        b"\r",
        b"[DONE]",
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), proptest::sample::select(tokens)).prop_map(|(i, t)| Mutation::Insert(i, t.to_vec())),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let at = i % bytes.len();
                    bytes[at] = *b;
                }
            }
            Mutation::Insert(i, more) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Duplicate(i, n) => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(end..end, copy);
                }
            }
        }
    }
    bytes
}

/// A mutated fixture from `pool`, or (one case in eight) arbitrary bytes.
fn input(pool: &[Vec<u8>], pick: usize, mutations: &[Mutation], raw: &[u8]) -> Vec<u8> {
    if pick % 8 == 7 {
        return raw.to_vec();
    }
    apply(pool[pick % pool.len()].clone(), mutations)
}

fn client_name(client: ClientDialect) -> &'static str {
    match client {
        ClientDialect::OpenAiChat => "openai_chat",
        ClientDialect::OpenAiResponses => "openai_responses",
        ClientDialect::Anthropic => "anthropic",
        ClientDialect::Gemini => "gemini",
    }
}

fn upstream_name(upstream: UpstreamDialect) -> &'static str {
    match upstream {
        UpstreamDialect::OpenAiChat => "openai_chat",
        UpstreamDialect::Anthropic => "anthropic",
        UpstreamDialect::Gemini => "gemini",
    }
}

fn request_parser(client: ClientDialect, bytes: &[u8]) {
    for stream in [false, true] {
        if let Ok(req) = parse_client_request(client, bytes, Some("m"), stream) {
            let _ = count_tokens_estimate(&req);
            for upstream in UpstreamDialect::ALL {
                if let Ok(call) = build_upstream_request(upstream, &req, "up") {
                    assert!(serde_json::from_slice::<serde_json::Value>(&call.body).is_ok());
                }
            }
        }
    }
}

fn response_parser(upstream: UpstreamDialect, bytes: &[u8], status: u16) {
    if let Ok(resp) = parse_upstream_response(upstream, bytes) {
        for client in ClientDialect::ALL {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&render_client_response(client, &resp)).is_ok()
            );
        }
    }
    assert!(parse_upstream_error(upstream, status, bytes).message().chars().count() < 1200);
}

fn stream_translator(upstream: UpstreamDialect, client: ClientDialect, bytes: &[u8], cuts: &[usize]) {
    let options = StreamOptions {
        response_id: "resp_fuzz".into(),
        model: "m".into(),
        created: 1,
        include_usage: true,
        secrets: vec!["sk-fuzz-secret-0000".into()],
        ..Default::default()
    };
    let mut translator = StreamTranslator::new(upstream, client, options);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.extend(translator.feed(&bytes[start..p]));
        start = p;
    }
    out.extend(translator.feed(&bytes[start..]));
    out.extend(translator.finish());
    assert!(String::from_utf8(out).is_ok());
    assert_ne!(translator.outcome(), StreamOutcome::Open);
    let _ = translator.usage();
}

macro_rules! fuzz_requests {
    ($($name:ident => $client:expr),* $(,)?) => { proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
        $(
        #[test]
        fn $name(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                 raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let pool = dialect_fixtures("request.", client_name($client));
            request_parser($client, &input(&pool, pick, &mutations, &raw));
        }
        )*
    } };
}

fuzz_requests! {
    request_openai_chat => ClientDialect::OpenAiChat,
    request_openai_responses => ClientDialect::OpenAiResponses,
    request_anthropic => ClientDialect::Anthropic,
    request_gemini => ClientDialect::Gemini,
}

macro_rules! fuzz_responses {
    ($($name:ident => $upstream:expr),* $(,)?) => { proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
        $(
        #[test]
        fn $name(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                 raw in proptest::collection::vec(any::<u8>(), 0..256), status in 100u16..600) {
            let pool = dialect_fixtures("response.", upstream_name($upstream));
            response_parser($upstream, &input(&pool, pick, &mutations, &raw), status);
        }
        )*
    } };
}

fuzz_responses! {
    response_and_error_openai_chat => UpstreamDialect::OpenAiChat,
    response_and_error_anthropic => UpstreamDialect::Anthropic,
    response_and_error_gemini => UpstreamDialect::Gemini,
}

macro_rules! fuzz_streams {
    ($($name:ident => $upstream:expr, $client:expr);* $(;)?) => { proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
        $(
        #[test]
        fn $name(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                 raw in proptest::collection::vec(any::<u8>(), 0..256),
                 cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
            let pool = dialect_fixtures("stream.", upstream_name($upstream));
            stream_translator($upstream, $client, &input(&pool, pick, &mutations, &raw), &cuts);
        }
        )*
    } };
}

fuzz_streams! {
    stream_openai_to_openai_chat => UpstreamDialect::OpenAiChat, ClientDialect::OpenAiChat;
    stream_openai_to_responses => UpstreamDialect::OpenAiChat, ClientDialect::OpenAiResponses;
    stream_openai_to_anthropic => UpstreamDialect::OpenAiChat, ClientDialect::Anthropic;
    stream_openai_to_gemini => UpstreamDialect::OpenAiChat, ClientDialect::Gemini;
    stream_anthropic_to_openai_chat => UpstreamDialect::Anthropic, ClientDialect::OpenAiChat;
    stream_anthropic_to_responses => UpstreamDialect::Anthropic, ClientDialect::OpenAiResponses;
    stream_anthropic_to_anthropic => UpstreamDialect::Anthropic, ClientDialect::Anthropic;
    stream_anthropic_to_gemini => UpstreamDialect::Anthropic, ClientDialect::Gemini;
    stream_gemini_to_openai_chat => UpstreamDialect::Gemini, ClientDialect::OpenAiChat;
    stream_gemini_to_responses => UpstreamDialect::Gemini, ClientDialect::OpenAiResponses;
    stream_gemini_to_anthropic => UpstreamDialect::Gemini, ClientDialect::Anthropic;
    stream_gemini_to_gemini => UpstreamDialect::Gemini, ClientDialect::Gemini;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn count_tokens_anthropic_and_gemini(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                                         raw in proptest::collection::vec(any::<u8>(), 0..256), gemini in any::<bool>()) {
        let (client, name) = if gemini { (ClientDialect::Gemini, "gemini") } else { (ClientDialect::Anthropic, "anthropic") };
        let pool = dialect_fixtures("request.", name);
        if let Ok(req) = parse_count_tokens_request(client, &input(&pool, pick, &mutations, &raw), Some("m")) {
            let _ = count_tokens_estimate(&req);
        }
    }

    #[test]
    fn openai_relay_parser(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                           raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        let pool = dialect_fixtures("request.", "openai_chat");
        let bytes = input(&pool, pick, &mutations, &raw);
        if let Ok(mut inbound) = Inbound::read(ClientDialect::OpenAiChat, &bytes, None, false) {
            inbound.cap_output(100);
            let _ = inbound.for_translation();
            // Every row's quirks (renamed and dropped parameters, output-limit field).
            let providers = edgeway_core::provider::PROVIDERS;
            let provider = &providers[pick % providers.len()];
            if let Some((body, dropped)) = inbound.passthrough_upstream_body("up", provider) {
                let body = serde_json::from_slice::<serde_json::Value>(&body);
                prop_assert!(body.is_ok());
                let body = body.unwrap_or_default();
                for name in dropped.iter().chain(provider.quirks.dropped) {
                    prop_assert!(body.get(name).is_none() || (*name == "stream_options" && provider.stream_usage_option));
                }
            }
        }
        let _ = response_usage(&bytes);
        let _ = response_content_bytes(&bytes);
    }

    #[test]
    fn openai_relay_stream_tap(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                               raw in proptest::collection::vec(any::<u8>(), 0..256),
                               cuts in proptest::collection::vec(any::<usize>(), 0..4), usage in any::<bool>()) {
        let pool = dialect_fixtures("stream.", "openai_chat");
        let bytes = input(&pool, pick, &mutations, &raw);
        let mut tap = ChatStreamTap::new(usage, vec!["sk-fuzz-secret-0000".into()]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for p in points {
            out.extend(tap.feed(&bytes[start..p]));
            start = p;
        }
        out.extend(tap.feed(&bytes[start..]));
        out.extend(tap.finish());
        prop_assert!(tap.is_ended());
        prop_assert!(!String::from_utf8_lossy(&out).contains("sk-fuzz-secret-0000"));
    }

    #[test]
    fn sse_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                   cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut decoder = SseDecoder::new(1 << 12);
        let mut events = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut start = 0;
        for p in points {
            let _ = decoder.feed(&bytes[start..p], &mut events);
            start = p;
        }
        let _ = decoder.feed(&bytes[start..], &mut events);
        decoder.finish(&mut events);
    }

    #[test]
    fn url_policy(url in "[ -~\\t\\u{80}-\\u{3000}]{0,80}", prefix in proptest::sample::select(vec!["http://", "https://", "HTTP://", "file://", "", "http://[", "http://0x", "http://127."]),
                  hosts in proptest::collection::vec("[a-z0-9.\\[\\]:]{1,12}", 0..3)) {
        let full = format!("{prefix}{url}");
        if let Ok(checked) = check_url(&full, &hosts) {
            // What passes is stable: its normalized form passes too, unchanged.
            prop_assert_eq!(check_url(&checked.normalized, &hosts).map(|c| c.normalized), Ok(checked.normalized.clone()));
        }
        let mut messages = vec![serde_json::json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": full}}]})];
        let _ = check_openai_chat_media(&mut messages);
    }

    #[test]
    fn internal_signature_check(ts in proptest::option::of("[ -~]{0,24}"), nonce in proptest::option::of("[ -~]{0,140}"),
                                sig in proptest::option::of("[0-9a-fA-Fz]{0,70}"), now in any::<i64>(),
                                method in "[A-Za-z]{0,8}", path in "[ -~]{0,40}", query in "[ -~]{0,40}",
                                body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let secret = Some("fuzz-secret-0123456789");
        if let Ok(pre) = precheck(secret, ts.as_deref(), nonce.as_deref(), sig.as_deref(), now) {
            let _ = pre.remember_until();
            prop_assert!(verify(secret, &pre, &method, &path, &query, &body).is_err());
        }
    }

    #[test]
    fn endpoints_and_cors(method in "[A-Za-z]{0,8}", path in "[ -~]{0,80}", headers in "[ -~]{0,200}",
                          origins in proptest::option::of("[ -~]{0,60}")) {
        let _ = classify(&method, &path);
        let _ = error_dialect(&path);
        let _ = allow_headers(Some(&headers));
        let policy = CorsPolicy::parse(origins.as_deref());
        let _ = edgeway_core::cors::preflight_headers(&policy, Some(&path), Some(&headers));
    }

    #[test]
    fn kv_records_and_routing(pick in any::<usize>(), mutations in proptest::collection::vec(mutation(), 0..6),
                              raw in proptest::collection::vec(any::<u8>(), 0..256), seed in any::<u64>()) {
        let pool: Vec<Vec<u8>> = fixtures("kv.").into_iter().map(|(_, b)| b).collect();
        let bytes = input(&pool, pick, &mutations, &raw);
        if let Ok(record) = serde_json::from_slice::<KeyRecord>(&bytes) {
            let _ = record.check_usable(seed as i64);
            let _ = record.check_model("m");
        }
        if let Ok(config) = serde_json::from_slice::<RoutingConfig>(&bytes) {
            if let Ok(table) = RoutingTable::new(config) {
                let names: Vec<String> = table.models().map(|m| m.name.clone()).collect();
                for name in names {
                    let _ = table.candidates(&name, seed);
                }
            }
        }
    }
}

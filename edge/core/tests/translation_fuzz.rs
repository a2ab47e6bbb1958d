//! Fuzzing of the translation layer with proptest: the SSE decoder, every
//! (upstream → client) stream translator and every request parser/builder
//! are fed arbitrary bytes and mutated fixtures; nothing may panic, output is
//! always UTF-8, and every stream ends (completed or failed) at `finish`.
//!
//! The test run uses a short case count; `EDGEWAY_FUZZ_CASES=N` raises it for
//! a long run (see tests/fixtures/translation/README.md for the figures).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::sse::SseDecoder;
use edgeway_core::translate::{
    build_upstream_request, count_tokens_estimate, parse_client_request, parse_count_tokens_request,
    parse_upstream_error, parse_upstream_response, render_client_response, ClientDialect, StreamOptions,
    StreamOutcome, StreamTranslator, UpstreamDialect,
};
use proptest::prelude::*;
use std::fs;
use std::path::Path;

fn cases(default: u32) -> u32 {
    std::env::var("EDGEWAY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fixture_files(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/translation/cases");
    let mut out = Vec::new();
    let mut dirs: Vec<_> =
        fs::read_dir(root).expect("cases").filter_map(Result::ok).map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let mut files: Vec<_> =
            fs::read_dir(&dir).expect("case").filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            if name.starts_with(prefix) {
                out.push((name, fs::read(&file).expect("read")));
            }
        }
    }
    out
}

fn upstream_for(name: &str) -> UpstreamDialect {
    if name.contains("anthropic") {
        UpstreamDialect::Anthropic
    } else if name.contains("gemini") {
        UpstreamDialect::Gemini
    } else {
        UpstreamDialect::OpenAiChat
    }
}

fn client_for(name: &str) -> ClientDialect {
    if name.contains("openai_responses") {
        ClientDialect::OpenAiResponses
    } else if name.contains("anthropic") {
        ClientDialect::Anthropic
    } else if name.contains("gemini") {
        ClientDialect::Gemini
    } else {
        ClientDialect::OpenAiChat
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                Just(b"\n\n".to_vec()),
                Just(b"data: ".to_vec()),
                Just(b"\"}".to_vec()),
                Just(b"null".to_vec()),
                Just(b"[DONE]".to_vec()),
                Just(b"{\"error\":{\"message\":\"x\"}}".to_vec()),
            ]
        )
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..128).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let at = i % bytes.len();
                    bytes[at] ^= b | 1;
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

/// Client bytes for `bytes` fed in pieces cut at `cuts`.
fn translate(upstream: UpstreamDialect, client: ClientDialect, bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut translator = StreamTranslator::new(upstream, client, StreamOptions::default());
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
    out
}

fn run_stream(upstream: UpstreamDialect, client: ClientDialect, bytes: &[u8], cuts: &[usize]) {
    let mut translator = StreamTranslator::new(
        upstream,
        client,
        StreamOptions {
            response_id: "resp_fuzz".into(),
            model: "m".into(),
            created: 1,
            include_usage: true,
            secrets: vec![],
            ..Default::default()
        },
    );
    let mut out = Vec::new();
    let mut start = 0;
    let mut sorted: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    sorted.sort_unstable();
    for cut in sorted {
        out.extend(translator.feed(&bytes[start..cut]));
        start = cut;
    }
    out.extend(translator.feed(&bytes[start..]));
    out.extend(translator.finish());
    assert!(String::from_utf8(out).is_ok(), "client output is not UTF-8");
    assert_ne!(translator.outcome(), StreamOutcome::Open, "stream not ended after finish");
    assert!(translator.finish().is_empty(), "finish is idempotent");
    let _ = translator.usage();
    let _ = translator.response_snapshot();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn sse_decoder_is_split_invariant(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                      cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let decode = |pieces: &[&[u8]]| {
            let mut decoder = SseDecoder::new(1 << 16);
            let mut events = Vec::new();
            for piece in pieces {
                let _ = decoder.feed(piece, &mut events);
            }
            decoder.finish(&mut events);
            events
        };
        let whole = decode(&[&bytes]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&bytes[start..p]);
            start = p;
        }
        pieces.push(&bytes[start..]);
        prop_assert_eq!(whole, decode(&pieces));
    }

    #[test]
    fn translators_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        for upstream in UpstreamDialect::ALL {
            for client in ClientDialect::ALL {
                run_stream(upstream, client, &bytes, &cuts);
            }
        }
    }

    #[test]
    fn translators_survive_mutated_fixtures(pick in any::<usize>(),
                                            mutations in proptest::collection::vec(mutation(), 1..6),
                                            cuts in proptest::collection::vec(any::<usize>(), 0..4),
                                            client_pick in 0usize..4) {
        let fixtures = fixture_files("stream.");
        let (name, body) = &fixtures[pick % fixtures.len()];
        let mutated = apply(body.clone(), &mutations);
        run_stream(upstream_for(name), ClientDialect::ALL[client_pick], &mutated, &cuts);
    }

    #[test]
    fn request_parsers_survive_mutated_fixtures(pick in any::<usize>(),
                                                mutations in proptest::collection::vec(mutation(), 0..6)) {
        let fixtures = fixture_files("request.");
        let (name, body) = &fixtures[pick % fixtures.len()];
        let client = client_for(name);
        let mutated = apply(body.clone(), &mutations);
        for stream in [false, true] {
            if let Ok(req) = parse_client_request(client, &mutated, Some("m"), stream) {
                let _ = count_tokens_estimate(&req);
                for upstream in UpstreamDialect::ALL {
                    if let Ok(call) = build_upstream_request(upstream, &req, "up") {
                        prop_assert!(serde_json::from_slice::<serde_json::Value>(&call.body).is_ok());
                    }
                }
            }
        }
        let _ = parse_count_tokens_request(client, &mutated, Some("m"));
    }

    #[test]
    fn request_parsers_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for client in ClientDialect::ALL {
            let _ = parse_client_request(client, &bytes, None, false);
        }
    }

    #[test]
    fn response_parsers_survive_mutated_fixtures(pick in any::<usize>(),
                                                 mutations in proptest::collection::vec(mutation(), 0..6),
                                                 status in 100u16..600) {
        let fixtures = fixture_files("response.");
        let (name, body) = &fixtures[pick % fixtures.len()];
        let upstream = upstream_for(name);
        let mutated = apply(body.clone(), &mutations);
        if let Ok(resp) = parse_upstream_response(upstream, &mutated) {
            for client in ClientDialect::ALL {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&render_client_response(client, &resp)).is_ok());
            }
        }
        let error = parse_upstream_error(upstream, status, &mutated);
        prop_assert!(error.message().chars().count() < 600);
    }
}

proptest! {
    // Cheap enough for more cases in the test run: every pair, random chunking.
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn every_pair_is_split_invariant_at_random_cuts(pick in any::<usize>(),
                                                    cuts in proptest::collection::vec(any::<usize>(), 1..8),
                                                    client_pick in 0usize..4) {
        let fixtures = fixture_files("stream.");
        let (name, body) = &fixtures[pick % fixtures.len()];
        let (upstream, client) = (upstream_for(name), ClientDialect::ALL[client_pick]);
        prop_assert_eq!(translate(upstream, client, body, &[]), translate(upstream, client, body, &cuts));
    }
}

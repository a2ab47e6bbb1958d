//! Golden fixtures for protocol translation, one table for every pair.
//!
//! Every case directory under `tests/fixtures/translation/cases/` holds
//! inputs (see that folder's README); every (client dialect, upstream
//! dialect) pair is run over every input it has, and the output must equal
//! the file under `golden/`. `UPDATE_GOLDEN=1 cargo nextest run -p
//! edgeway-core --test translation_golden` rewrites the golden files (review
//! the diff before committing).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::translate::{
    build_upstream_request, parse_client_request, parse_upstream_error, parse_upstream_response,
    render_client_error, render_client_response, ClientDialect, StreamOptions, StreamOutcome,
    StreamTranslator, UpstreamDialect,
};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

const UPSTREAM_MODEL: &str = "upstream-model";
const CLIENT_MODEL: &str = "client-model";
const RESPONSE_ID: &str = "resp_0001";
const CREATED: i64 = 1_700_000_000;
const CHANNEL_SECRET: &str = "channel-secret-0001";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/translation")
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root().join("cases"))
        .expect("cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

fn pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("json");
    s.push('\n');
    s
}

fn stream_options() -> StreamOptions {
    StreamOptions {
        response_id: RESPONSE_ID.into(),
        model: CLIENT_MODEL.into(),
        created: CREATED,
        include_usage: true,
        secrets: vec![CHANNEL_SECRET.into()],
        ..Default::default()
    }
}

/// Runs a whole stream through a translator, in the given pieces.
fn translate_stream(
    upstream: UpstreamDialect,
    client: ClientDialect,
    pieces: &[&[u8]],
) -> (Vec<u8>, StreamTranslator) {
    let mut translator = StreamTranslator::new(upstream, client, stream_options());
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(translator.feed(piece));
    }
    out.extend(translator.finish());
    (out, translator)
}

struct Golden {
    update: bool,
    mismatches: Vec<String>,
    checked: usize,
}

impl Golden {
    fn new() -> Self {
        Self {
            update: std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1"),
            mismatches: Vec::new(),
            checked: 0,
        }
    }

    fn check(&mut self, case: &Path, name: &str, actual: &str) {
        self.checked += 1;
        let case_name = case.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let path = root().join("golden").join(case_name).join(name);
        if self.update {
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, actual).expect("write golden");
            return;
        }
        match fs::read_to_string(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => {
                let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
                self.mismatches.push(format!(
                    "{case_name}/{name}: differs at line {}\n  expected: {}\n  actual:   {}",
                    line + 1,
                    expected.lines().nth(line).unwrap_or(""),
                    actual.lines().nth(line).unwrap_or("")
                ));
            }
            Err(_) => self
                .mismatches
                .push(format!("{case_name}/{name}: golden file missing (run with UPDATE_GOLDEN=1)")),
        }
    }

    fn finish(self) {
        assert!(self.checked > 0, "no golden file was checked");
        assert!(
            self.mismatches.is_empty(),
            "{} golden mismatches:\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
    }
}

fn error_json(client: ClientDialect, error: &edgeway_core::error::GatewayError) -> Value {
    let body: Value = serde_json::from_slice(&render_client_error(client, error)).expect("error json");
    json!({"status": error.status(), "body": body})
}

#[test]
fn requests_translate_to_every_upstream() {
    let mut golden = Golden::new();
    for case in cases() {
        for client in ClientDialect::ALL {
            let Some(body) = read(&case.join(format!("request.{}.json", client.name()))) else { continue };
            let path_model = (client == ClientDialect::Gemini).then_some(CLIENT_MODEL);
            let parsed = parse_client_request(client, &body, path_model, false);
            for upstream in UpstreamDialect::ALL {
                let output = match &parsed {
                    Err(e) => error_json(client, e),
                    Ok(req) => match build_upstream_request(upstream, req, UPSTREAM_MODEL) {
                        Ok(call) => json!({
                            "path": call.path,
                            "stream": call.stream,
                            "body": serde_json::from_slice::<Value>(&call.body).expect("body json"),
                        }),
                        Err(e) => error_json(client, &e),
                    },
                };
                golden.check(
                    &case,
                    &format!("request.{}_to_{}.json", client.name(), upstream.name()),
                    &pretty(&output),
                );
            }
        }
    }
    golden.finish();
}

#[test]
fn responses_translate_to_every_client() {
    let mut golden = Golden::new();
    for case in cases() {
        for upstream in UpstreamDialect::ALL {
            let Some(body) = read(&case.join(format!("response.{}.json", upstream.name()))) else { continue };
            let parsed = parse_upstream_response(upstream, &body);
            if let Ok(resp) = &parsed {
                let usage = json!({"usage": resp.usage, "usage_reported": resp.usage_reported});
                golden.check(&case, &format!("usage.response.{}.json", upstream.name()), &pretty(&usage));
            }
            for client in ClientDialect::ALL {
                let output = match &parsed {
                    Err(e) => error_json(client, e),
                    Ok(resp) => {
                        let mut resp = resp.clone();
                        resp.model = CLIENT_MODEL.into();
                        resp.created = CREATED;
                        if resp.id.is_empty() {
                            resp.id = RESPONSE_ID.into();
                        }
                        serde_json::from_slice::<Value>(&render_client_response(client, &resp)).expect("json")
                    }
                };
                golden.check(
                    &case,
                    &format!("response.{}_to_{}.json", upstream.name(), client.name()),
                    &pretty(&output),
                );
            }
        }
    }
    golden.finish();
}

#[test]
fn streams_translate_to_every_client() {
    let mut golden = Golden::new();
    for case in cases() {
        for upstream in UpstreamDialect::ALL {
            let Some(body) = read(&case.join(format!("stream.{}.sse", upstream.name()))) else { continue };
            let mut usage_seen: Option<Value> = None;
            for client in ClientDialect::ALL {
                let (out, translator) = translate_stream(upstream, client, &[&body]);
                let text = String::from_utf8(out).expect("utf-8 output");
                assert!(!text.contains(CHANNEL_SECRET), "secret leaked in {case:?} {upstream:?}→{client:?}");
                golden.check(&case, &format!("stream.{}_to_{}.sse", upstream.name(), client.name()), &text);
                let summary = json!({
                    "usage": translator.usage(),
                    "outcome": match translator.outcome() {
                        StreamOutcome::Open => "open",
                        StreamOutcome::Completed => "completed",
                        StreamOutcome::Failed => "failed",
                    },
                    "saw_content": translator.saw_content(),
                    "content_bytes": translator.content_bytes(),
                });
                match &usage_seen {
                    None => {
                        golden.check(
                            &case,
                            &format!("usage.stream.{}.json", upstream.name()),
                            &pretty(&summary),
                        );
                        usage_seen = Some(summary);
                    }
                    Some(first) => {
                        assert_eq!(first, &summary, "stream summary depends on the client dialect")
                    }
                }
            }
        }
    }
    golden.finish();
}

#[test]
fn upstream_errors_render_in_every_client_dialect() {
    let mut golden = Golden::new();
    for case in cases() {
        for upstream in UpstreamDialect::ALL {
            let Some(raw) = read(&case.join(format!("error.{}.json", upstream.name()))) else { continue };
            let spec: Value = serde_json::from_slice(&raw).expect("error fixture");
            let status = spec["status"].as_u64().and_then(|s| u16::try_from(s).ok()).expect("status");
            let body = match &spec["body"] {
                Value::String(s) => s.clone().into_bytes(),
                other => serde_json::to_vec(other).expect("body"),
            };
            let error = parse_upstream_error(upstream, status, &body);
            for client in ClientDialect::ALL {
                let rendered = error_json(client, &error);
                assert!(!rendered.to_string().contains("sk-live"), "key leaked: {rendered}");
                golden.check(
                    &case,
                    &format!("error.{}_to_{}.json", upstream.name(), client.name()),
                    &pretty(&rendered),
                );
            }
        }
    }
    golden.finish();
}

/// All stream fixtures of one upstream dialect, in a stable order.
fn stream_fixtures(upstream: UpstreamDialect) -> Vec<(PathBuf, Vec<u8>)> {
    cases()
        .into_iter()
        .filter_map(|case| {
            read(&case.join(format!("stream.{}.sse", upstream.name()))).map(|body| (case, body))
        })
        .collect()
}

/// Every streaming fixture, for every client dialect, fed one byte at a time
/// (a split at every offset at once), and fed in two pieces split at every
/// byte offset for one client dialect per fixture (rotating through all four,
/// so every renderer is covered while the run stays fast): identical output.
fn assert_split_invariant(upstream: UpstreamDialect) {
    let fixtures = stream_fixtures(upstream);
    assert!(!fixtures.is_empty());
    for (n, (case, body)) in fixtures.iter().enumerate() {
        for client in ClientDialect::ALL {
            let (whole, reference) = translate_stream(upstream, client, &[body]);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            let (byte_by_byte, t) = translate_stream(upstream, client, &bytes);
            assert_eq!(whole, byte_by_byte, "{case:?} {upstream:?}→{client:?} byte by byte");
            assert_eq!(t.usage(), reference.usage());
        }
        let client = ClientDialect::ALL[n % ClientDialect::ALL.len()];
        let (whole, reference) = translate_stream(upstream, client, &[body]);
        for cut in 0..=body.len() {
            let (split, t) = translate_stream(upstream, client, &[&body[..cut], &body[cut..]]);
            assert_eq!(whole, split, "{case:?} {upstream:?}→{client:?} split at {cut}");
            assert_eq!(t.usage(), reference.usage());
        }
    }
}

#[test]
fn openai_streams_are_split_invariant() {
    assert_split_invariant(UpstreamDialect::OpenAiChat);
}

#[test]
fn anthropic_streams_are_split_invariant() {
    assert_split_invariant(UpstreamDialect::Anthropic);
}

#[test]
fn gemini_streams_are_split_invariant() {
    assert_split_invariant(UpstreamDialect::Gemini);
}

//! What the client is shown when the upstream reports no usage (the
//! estimate that is billed, marked), thinking folded into content, and
//! inline media normalized per upstream: each rule over every dialect.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::translate::{
    build_upstream_request, fold_thinking, parse_client_request, parse_upstream_response,
    render_client_response, ClientDialect, StreamOptions, StreamTranslator, UpstreamDialect,
};
use edgeway_core::usage::{estimated_usage, settle_usage, UsageSource};
use serde_json::{json, Value};

const PROMPT_ESTIMATE: u64 = 33;

/// An OpenAI-format stream with 12 bytes of content and no usage at all (as llama.cpp sends).
const NO_USAGE_SSE: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello \"}}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world!\"},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
);

fn options(prompt_estimate: Option<u64>, fold_thinking: bool) -> StreamOptions {
    StreamOptions {
        response_id: "r1".into(),
        model: "m".into(),
        created: 7,
        include_usage: true,
        prompt_estimate,
        fold_thinking,
        ..Default::default()
    }
}

fn run(
    upstream: UpstreamDialect,
    client: ClientDialect,
    sse: &str,
    options: StreamOptions,
) -> (Vec<Value>, StreamTranslator) {
    let mut t = StreamTranslator::new(upstream, client, options);
    let mut out = t.feed(sse.as_bytes());
    out.extend(t.finish());
    let text = String::from_utf8(out).expect("utf8");
    let events = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    (events, t)
}

/// (prompt, completion, marked) of the usage object in a client event.
fn usage_in(client: ClientDialect, event: &Value) -> Option<(u64, u64, bool)> {
    let (u, input, output) = match client {
        ClientDialect::OpenAiChat => (event.get("usage")?, "prompt_tokens", "completion_tokens"),
        ClientDialect::Anthropic => (event.get("usage")?, "input_tokens", "output_tokens"),
        ClientDialect::Gemini => (event.get("usageMetadata")?, "promptTokenCount", "candidatesTokenCount"),
        ClientDialect::OpenAiResponses => {
            (event.get("response")?.get("usage")?, "input_tokens", "output_tokens")
        }
    };
    if u.is_null() {
        return None;
    }
    Some((u[input].as_u64()?, u[output].as_u64()?, u["estimated"] == true))
}

#[test]
fn a_stream_without_usage_ends_with_the_billed_estimate_in_every_dialect() {
    let billed = settle_usage(None, true, PROMPT_ESTIMATE, 12);
    assert_eq!(billed, (estimated_usage(PROMPT_ESTIMATE, 12), UsageSource::Estimated));
    let expected = (PROMPT_ESTIMATE, billed.0.output, true);
    for client in ClientDialect::ALL {
        let (events, t) =
            run(UpstreamDialect::OpenAiChat, client, NO_USAGE_SSE, options(Some(PROMPT_ESTIMATE), false));
        assert_eq!(t.usage(), None, "{client:?}: nothing reported, the meter estimates");
        assert_eq!(t.content_bytes(), 12);
        let last = events.iter().rev().find_map(|e| usage_in(client, e));
        assert_eq!(last, Some(expected), "{client:?}: {events:?}");
        // Without an estimate to give, the end says zero and is not marked (what the golden files hold).
        let (events, _) = run(UpstreamDialect::OpenAiChat, client, NO_USAGE_SSE, options(None, false));
        let last = events.iter().rev().find_map(|e| usage_in(client, e));
        assert_eq!(last, Some((0, 0, false)), "{client:?}");
    }
}

#[test]
fn reported_usage_is_shown_as_reported_never_estimated() {
    let sse = NO_USAGE_SSE.replace(
        "data: [DONE]",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]",
    );
    for client in ClientDialect::ALL {
        let (events, _) =
            run(UpstreamDialect::OpenAiChat, client, &sse, options(Some(PROMPT_ESTIMATE), false));
        let last = events.iter().rev().find_map(|e| usage_in(client, e));
        assert_eq!(last, Some((9, 2, false)), "{client:?}");
    }
}

#[test]
fn a_whole_answer_marked_estimated_renders_the_mark_in_every_dialect() {
    let mut resp = parse_upstream_response(
        UpstreamDialect::OpenAiChat,
        br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world!"},"finish_reason":"stop"}]}"#,
    )
    .expect("parse");
    assert!(!resp.usage_reported);
    resp.usage = estimated_usage(PROMPT_ESTIMATE, 12);
    resp.usage_estimated = true;
    for client in ClientDialect::ALL {
        let body: Value = serde_json::from_slice(&render_client_response(client, &resp)).expect("json");
        let wrapped = if client == ClientDialect::OpenAiResponses { json!({"response": body}) } else { body };
        assert_eq!(usage_in(client, &wrapped), Some((PROMPT_ESTIMATE, 3, true)), "{client:?}");
    }
}

const THINKING_SSE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":0}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me see.\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Four.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn folded_thinking_reaches_openai_clients_as_content() {
    let (events, t) =
        run(UpstreamDialect::Anthropic, ClientDialect::OpenAiChat, THINKING_SSE, options(None, true));
    let content: String =
        events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "<think>\nLet me see.\n</think>\n\nFour.");
    assert!(events.iter().all(|e| e["choices"][0]["delta"].get("reasoning_content").is_none()));
    // The snapshot (what the vault keeps) still has the signed thinking block.
    let snapshot = t.response_snapshot();
    assert!(
        matches!(&snapshot.content[0], edgeway_core::translate::ContentPart::Thinking { signature: Some(s), .. } if s == "sig")
    );
    // Other clients can show thinking: nothing is folded for them.
    let (events, _) =
        run(UpstreamDialect::Anthropic, ClientDialect::Anthropic, THINKING_SSE, options(None, true));
    assert!(events.iter().any(|e| e["delta"]["thinking"] == "Let me see."));

    let mut resp = parse_upstream_response(
        UpstreamDialect::Anthropic,
        br#"{"type":"message","id":"m","stop_reason":"end_turn","content":[
            {"type":"thinking","thinking":"Let me see.","signature":"sig"},{"type":"text","text":"Four."}],
            "usage":{"input_tokens":5,"output_tokens":9}}"#,
    )
    .expect("parse");
    fold_thinking(&mut resp);
    let body: Value =
        serde_json::from_slice(&render_client_response(ClientDialect::OpenAiChat, &resp)).expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "<think>\nLet me see.\n</think>\n\nFour.");
    assert!(body["choices"][0]["message"].get("reasoning_content").is_none());
}

/// Standard base64 of `bytes`, written independently of the code under test.
fn std_b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// A PNG-signed image whose standard base64 has `+` and `/` and padding.
fn image_bytes() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend([0xfb, 0xff, 0xbf, 0xfe, 0x3e, 0x0f]);
    bytes
}

#[test]
fn gemini_url_safe_inline_bytes_reach_openai_and_anthropic_as_standard_base64() {
    let standard = std_b64(&image_bytes());
    assert!(standard.contains('+') && standard.contains('/') && standard.ends_with('='));
    let url_safe = standard.replace('+', "-").replace('/', "_").trim_end_matches('=').to_string();
    // The client also labels the PNG as a JPEG: the bytes decide.
    let req = parse_client_request(
        ClientDialect::Gemini,
        &serde_json::to_vec(&json!({"contents": [{"role": "user", "parts": [
            {"text": "What is this?"}, {"inlineData": {"mimeType": "image/jpeg", "data": url_safe}}]}]}))
        .expect("json"),
        Some("g"),
        false,
    )
    .expect("parse");
    let body = |dialect| -> Value {
        serde_json::from_slice(&build_upstream_request(dialect, &req, "up").expect("build").body)
            .expect("json")
    };
    let openai = body(UpstreamDialect::OpenAiChat);
    assert_eq!(
        openai["messages"][0]["content"][1]["image_url"]["url"],
        format!("data:image/png;base64,{standard}")
    );
    let anthropic = body(UpstreamDialect::Anthropic);
    assert_eq!(
        anthropic["messages"][0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": standard})
    );
    let gemini = body(UpstreamDialect::Gemini);
    assert_eq!(gemini["contents"][0]["parts"][1]["inlineData"]["data"], standard);
}

#[test]
fn each_upstream_refuses_what_it_cannot_take_with_400_or_413() {
    let gif = std_b64(b"GIF89a\x01\x00\x01\x00");
    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &serde_json::to_vec(&json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/gif;base64,{gif}")}}]}]}))
        .expect("json"),
        None,
        false,
    )
    .expect("parse");
    assert!(build_upstream_request(UpstreamDialect::Anthropic, &req, "up").is_ok());
    let e = build_upstream_request(UpstreamDialect::Gemini, &req, "up").expect_err("gif to gemini");
    assert_eq!(e.status(), 400);
    assert!(e.message().contains("image/gif"), "{}", e.message());

    // A 6 MB image: over Anthropic's 5 MB per image, within OpenAI's 20 MB.
    let mut big = image_bytes();
    big.resize(6 * 1024 * 1024, 0);
    let req = parse_client_request(
        ClientDialect::Anthropic,
        &serde_json::to_vec(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": std_b64(&big)}}]}]}))
        .expect("json"),
        None,
        false,
    )
    .expect("parse");
    let e = build_upstream_request(UpstreamDialect::Anthropic, &req, "up").expect_err("too big");
    assert_eq!(e.status(), 413);
    assert!(e.message().contains("5242880"), "{}", e.message());
    assert!(build_upstream_request(UpstreamDialect::OpenAiChat, &req, "up").is_ok());
}

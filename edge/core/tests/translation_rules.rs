//! Focused rules of the translation layer that golden files show less
//! directly: usage normalization per provider, defaults, clamps, the
//! reasoning preservation hooks and stream options.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::error::GatewayError;
use edgeway_core::translate::canonical::{Reasoning, ReasoningEffort};
use edgeway_core::translate::{
    build_upstream_request, count_tokens_estimate, parse_client_request, parse_count_tokens_request,
    parse_upstream_error, parse_upstream_response, preserved_reasoning, render_client_response,
    render_count_tokens, restore_reasoning, ClientDialect, ContentPart, StreamOptions, StreamOutcome,
    StreamTranslator, UpstreamDialect,
};
use edgeway_core::usage::TokenUsage;
use serde_json::{json, Value};

fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

fn upstream_body(dialect: UpstreamDialect, req: &edgeway_core::translate::CanonicalRequest) -> Value {
    let call = build_upstream_request(dialect, req, "up").expect("build");
    serde_json::from_slice(&call.body).expect("json")
}

fn stream(
    upstream: UpstreamDialect,
    client: ClientDialect,
    input: &str,
    include_usage: bool,
) -> (String, StreamTranslator) {
    let mut t = StreamTranslator::new(
        upstream,
        client,
        StreamOptions {
            response_id: "r1".into(),
            model: "m".into(),
            created: 7,
            include_usage,
            secrets: vec![],
            ..Default::default()
        },
    );
    let mut out = t.feed(input.as_bytes());
    out.extend(t.finish());
    (String::from_utf8(out).expect("utf8"), t)
}

#[test]
fn openai_usage_counts_cached_and_reasoning_once() {
    let resp = parse_upstream_response(
        UpstreamDialect::OpenAiChat,
        &body(json!({"id": "x", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
                      "prompt_tokens_details": {"cached_tokens": 800}, "completion_tokens_details": {"reasoning_tokens": 200}}})),
    )
    .expect("parse");
    assert_eq!(
        resp.usage,
        TokenUsage {
            input_uncached: 200,
            cache_read: 800,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: 300,
            reasoning: 200
        }
    );
    assert_eq!(resp.usage.total(), 1300);
}

#[test]
fn anthropic_usage_is_already_disjoint_and_splits_cache_writes() {
    let resp = parse_upstream_response(
        UpstreamDialect::Anthropic,
        &body(json!({"type": "message", "id": "m", "content": [], "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 500, "cache_creation_input_tokens": 300,
                      "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}, "output_tokens": 40}})),
    )
    .expect("parse");
    assert_eq!(
        resp.usage,
        TokenUsage {
            input_uncached: 10,
            cache_read: 500,
            cache_write_5m: 100,
            cache_write_1h: 200,
            output: 40,
            reasoning: 0
        }
    );
    // Without the breakdown every write is a 5-minute write.
    let resp = parse_upstream_response(
        UpstreamDialect::Anthropic,
        &body(json!({"type": "message", "content": [], "usage": {"input_tokens": 1, "cache_creation_input_tokens": 9, "output_tokens": 2}})),
    )
    .expect("parse");
    assert_eq!((resp.usage.cache_write_5m, resp.usage.cache_write_1h), (9, 0));
}

#[test]
fn gemini_usage_takes_cache_out_of_prompt_and_adds_thoughts_to_output() {
    let resp = parse_upstream_response(
        UpstreamDialect::Gemini,
        &body(json!({"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 50,
                              "thoughtsTokenCount": 70, "toolUsePromptTokenCount": 5, "totalTokenCount": 1125}})),
    )
    .expect("parse");
    assert_eq!(
        resp.usage,
        TokenUsage {
            input_uncached: 405,
            cache_read: 600,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: 120,
            reasoning: 70
        }
    );
    assert_eq!(resp.usage.total(), 1125);
}

#[test]
fn anthropic_stream_usage_merges_start_and_delta() {
    let sse = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":50,\"output_tokens\":1}}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (_, t) = stream(UpstreamDialect::Anthropic, ClientDialect::OpenAiChat, sse, false);
    assert_eq!(
        t.usage(),
        Some(TokenUsage { input_uncached: 5, cache_read: 50, output: 12, ..Default::default() })
    );
    assert_eq!(t.outcome(), StreamOutcome::Completed);
}

#[test]
fn gemini_cumulative_usage_is_not_summed() {
    let chunk = |n: u64| {
        format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"x\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":10,\"candidatesTokenCount\":{n}}}}}\n\n")
    };
    let sse =
        format!("{}{}{}", chunk(1), chunk(2), chunk(3).replace("}]}}]", "}]},\"finishReason\":\"STOP\"}]"));
    let (_, t) = stream(UpstreamDialect::Gemini, ClientDialect::Anthropic, &sse, false);
    assert_eq!(t.usage().map(|u| (u.input_uncached, u.output)), Some((10, 3)));
    assert_eq!(t.outcome(), StreamOutcome::Completed);
}

#[test]
fn openai_usage_chunk_only_when_the_client_asked() {
    let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    let (with, _) = stream(UpstreamDialect::OpenAiChat, ClientDialect::OpenAiChat, sse, true);
    let (without, t) = stream(UpstreamDialect::OpenAiChat, ClientDialect::OpenAiChat, sse, false);
    assert!(with.contains("\"usage\""));
    assert!(!without.contains("\"usage\""));
    assert_eq!(t.usage().map(|u| u.total()), Some(4), "usage is recorded either way");
}

#[test]
fn a_stream_without_usage_reports_none_for_estimation() {
    let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let (out, t) = stream(UpstreamDialect::OpenAiChat, ClientDialect::Anthropic, sse, false);
    assert_eq!(t.usage(), None);
    assert_eq!(t.content_bytes(), 4);
    assert!(out.contains("message_stop"));
}

#[test]
fn anthropic_gets_a_default_max_tokens_and_a_budget_below_it() {
    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    assert_eq!(upstream_body(UpstreamDialect::Anthropic, &req)["max_tokens"], 4096);

    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "reasoning_effort": "high", "max_completion_tokens": 5000,
                     "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    let up = upstream_body(UpstreamDialect::Anthropic, &req);
    assert_eq!(up["max_tokens"], 5000);
    assert_eq!(up["thinking"]["budget_tokens"], 4999);

    let too_small = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 800, "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    let err = build_upstream_request(UpstreamDialect::Anthropic, &too_small, "up").expect_err("too small");
    assert!(
        matches!(err, GatewayError::InvalidRequest { ref param, .. } if param.as_deref() == Some("max_tokens"))
    );

    let hot = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m-thinking", "temperature": 0.2, "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    let err = build_upstream_request(UpstreamDialect::Anthropic, &hot, "up").expect_err("temperature");
    assert!(err.message().contains("temperature"));
}

#[test]
fn model_suffixes_set_reasoning_unless_the_body_did() {
    let req = parse_client_request(
        ClientDialect::Anthropic,
        &body(json!({"model": "claude-x-low", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    assert_eq!(req.reasoning, Some(Reasoning::Effort(ReasoningEffort::Low)));
    assert_eq!(req.model_without_suffix.as_deref(), Some("claude-x"));
    let up = upstream_body(UpstreamDialect::Gemini, &req);
    assert_eq!(
        up["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 2048, "includeThoughts": true})
    );

    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "gpt-x-high", "reasoning_effort": "none", "messages": [{"role": "user", "content": "x"}]})),
        None,
        false,
    )
    .expect("parse");
    assert_eq!(req.reasoning, Some(Reasoning::Disabled));
}

#[test]
fn gemini_takes_model_and_streaming_from_the_path() {
    let req = parse_client_request(
        ClientDialect::Gemini,
        &body(json!({"contents": [{"parts": [{"text": "x"}]}]})),
        Some("models/gemini-2.5-flash"),
        true,
    )
    .expect("parse");
    assert_eq!(req.model, "gemini-2.5-flash");
    assert!(req.stream);
    let call = build_upstream_request(UpstreamDialect::Gemini, &req, "models/gemini-2.5-pro").expect("build");
    assert_eq!(call.path, "/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
    let call = build_upstream_request(UpstreamDialect::OpenAiChat, &req, "gpt").expect("build");
    let up: Value = serde_json::from_slice(&call.body).expect("json");
    assert_eq!(up["stream_options"]["include_usage"], true, "OpenAI streams always ask for usage");
    assert!(parse_client_request(ClientDialect::Gemini, &body(json!({"contents": []})), None, false).is_err());
}

#[test]
fn unsupported_parameters_are_named_in_a_400() {
    let cases = [
        (
            ClientDialect::OpenAiChat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}),
            "logit_bias",
        ),
        (
            ClientDialect::OpenAiChat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "audio": {"voice": "alloy"}}),
            "audio",
        ),
        (
            ClientDialect::OpenAiChat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "api_base": "http://evil"}),
            "api_base",
        ),
        (
            ClientDialect::Anthropic,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            ClientDialect::OpenAiResponses,
            json!({"model": "m", "input": "x", "background": true}),
            "background",
        ),
        (
            ClientDialect::Gemini,
            json!({"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "c/1"}),
            "cachedContent",
        ),
    ];
    for (client, request, param) in cases {
        let err = parse_client_request(client, &body(request), Some("m"), false).expect_err(param);
        assert_eq!(err.status(), 400);
        assert!(err.message().contains(param), "{param}: {}", err.message());
    }
    // Defaults are accepted.
    assert!(parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {}, "frequency_penalty": 0})),
        None,
        false
    )
    .is_ok());
    let seeded = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 7})),
        None,
        false,
    )
    .expect("parse");
    assert!(build_upstream_request(UpstreamDialect::Anthropic, &seeded, "up").is_err());
    assert_eq!(upstream_body(UpstreamDialect::Gemini, &seeded)["generationConfig"]["seed"], 7);
}

#[test]
fn count_tokens_requests_need_no_max_tokens() {
    let req = parse_count_tokens_request(
        ClientDialect::Anthropic,
        &body(json!({"model": "m", "system": "abcd", "messages": [{"role": "user", "content": "abcdefgh"}]})),
        None,
    )
    .expect("parse");
    // 12 bytes of text, and the template's tokens for a system and a user message
    assert_eq!(count_tokens_estimate(&req), 3 + 2 * 4 + 3);
    assert_eq!(render_count_tokens(ClientDialect::Anthropic, 3), br#"{"input_tokens":3}"#);
    let req = parse_count_tokens_request(
        ClientDialect::Gemini,
        &body(json!({"generateContentRequest": {"model": "models/g", "contents": [{"parts": [{"text": "abcd"}]}]}})),
        Some("g"),
    )
    .expect("parse");
    assert_eq!(count_tokens_estimate(&req), 1 + 4 + 3);
    assert_eq!(render_count_tokens(ClientDialect::Gemini, 1), br#"{"totalTokens":1}"#);
}

#[test]
fn signed_reasoning_can_be_kept_for_openai_clients_and_restored() {
    let resp = parse_upstream_response(
        UpstreamDialect::Anthropic,
        &body(json!({"type": "message", "id": "m", "stop_reason": "tool_use", "content": [
            {"type": "thinking", "thinking": "plan", "signature": "sig-1"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]})),
    )
    .expect("parse");
    let kept = preserved_reasoning(&resp).expect("kept");
    assert_eq!(kept.tool_call_id, "toolu_1");
    let rendered: Value =
        serde_json::from_slice(&render_client_response(ClientDialect::OpenAiChat, &resp)).expect("json");
    assert_eq!(rendered["choices"][0]["message"]["reasoning_content"], "plan");

    let mut next = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "reasoning_content": "plan", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}]})),
        None,
        false,
    )
    .expect("parse");
    // Without the signature Anthropic would refuse thinking: it is left off.
    assert!(upstream_body(UpstreamDialect::Anthropic, &next).get("thinking").is_none());
    restore_reasoning(&mut next, |id| (id == "toolu_1").then(|| kept.clone()));
    let up = upstream_body(UpstreamDialect::Anthropic, &next);
    assert_eq!(up["thinking"]["type"], "enabled");
    assert_eq!(
        up["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "plan", "signature": "sig-1"})
    );
    assert!(matches!(next.messages[1].content[0], ContentPart::Thinking { signature: Some(_), .. }));
}

#[test]
fn upstream_errors_keep_their_status_and_lose_secrets() {
    // A key-shaped test value, assembled at run time so no credential-looking
    // literal sits in the tree.
    let fake_key = ["sk", "testonly", "abcdefghijklmnop"].join("-");
    let body = format!(r#"{{"error":{{"message":"slow down {fake_key}","type":"rate_limit_error"}}}}"#);
    let err = parse_upstream_error(UpstreamDialect::OpenAiChat, 429, body.as_bytes());
    assert_eq!(err.status(), 429);
    assert!(!err.message().contains("sk-testonly"));
    let err = parse_upstream_error(
        UpstreamDialect::Anthropic,
        529,
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert_eq!(err.status(), 503);
    assert_eq!(err.to_json(edgeway_core::error::Dialect::Anthropic)["error"]["type"], "overloaded_error");
    let err = parse_upstream_error(UpstreamDialect::Gemini, 500, b"<html>oops</html>");
    assert_eq!(err.status(), 502);
    assert!(!err.message().contains("html"));
}

#[test]
fn unanswered_tool_calls_get_an_error_result() {
    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                                  {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "done"},
            {"role": "user", "content": "next"}]})),
        None,
        false,
    )
    .expect("parse");
    let up = upstream_body(UpstreamDialect::Anthropic, &req);
    let results = up["messages"][2]["content"].as_array().expect("blocks");
    assert_eq!(results[0]["tool_use_id"], "b");
    assert_eq!(results[0]["is_error"], true);
    assert_eq!(results[1]["tool_use_id"], "a");
    let gemini = upstream_body(UpstreamDialect::Gemini, &req);
    assert_eq!(gemini["contents"][2]["parts"][0]["functionResponse"]["name"], "g");
}

#[test]
fn garbage_upstream_bodies_are_502() {
    for dialect in UpstreamDialect::ALL {
        let err = parse_upstream_response(dialect, b"not json").expect_err("garbage");
        assert_eq!(err.status(), 502);
    }
}

#[test]
fn gemini_function_responses_name_the_latest_call_with_that_id() {
    let req = parse_client_request(
        ClientDialect::OpenAiChat,
        &body(json!({"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "second", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "2"}]})),
        None,
        false,
    )
    .expect("parse");
    let up = upstream_body(UpstreamDialect::Gemini, &req);
    assert_eq!(up["contents"][2]["parts"][0]["functionResponse"]["name"], "first");
    assert_eq!(up["contents"][4]["parts"][0]["functionResponse"]["name"], "second");
}

#[test]
fn channel_secrets_are_redacted_from_upstream_errors() {
    let err = edgeway_core::translate::parse_upstream_error_redacting(
        UpstreamDialect::Anthropic,
        401,
        br#"{"type":"error","error":{"type":"authentication_error","message":"bad key my-channel-key"}}"#,
        &["my-channel-key"],
    );
    assert!(!err.message().contains("my-channel-key"));
    assert_eq!(err.status(), 502, "our credential being refused is not the client's fault");
}

#[test]
fn usage_is_known_even_if_the_client_goes_away() {
    let mut t = StreamTranslator::new(
        UpstreamDialect::Anthropic,
        ClientDialect::OpenAiChat,
        StreamOptions::default(),
    );
    let _ = t.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n");
    let _ = t.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":9}}\n\n");
    // No finish(): the worker stops pumping when the client disconnects.
    assert_eq!(t.usage().map(|u| (u.input_uncached, u.output)), Some((42, 9)));
    assert_eq!(t.outcome(), StreamOutcome::Open);
}

#[test]
fn tool_names_and_arguments_may_come_late() {
    let sse = concat!(
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\":1}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"id\":\"c2\",\"function\":{\"name\":\"g\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, t) = stream(UpstreamDialect::OpenAiChat, ClientDialect::Anthropic, sse, false);
    let snapshot = t.response_snapshot();
    assert_eq!(
        snapshot.content,
        vec![
            ContentPart::ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
                signature: None
            },
            ContentPart::ToolCall {
                id: "c2".into(),
                name: "g".into(),
                arguments: "{}".into(),
                signature: None
            },
        ]
    );
    assert!(out.contains("\"stop_reason\":\"tool_use\""), "a turn with tool calls ends in tool_use: {out}");
    assert!(out.contains("\"index\":1"), "second tool is the second content block");
}

#[test]
fn token_counting_can_be_asked_of_the_provider() {
    use edgeway_core::translate::{build_upstream_count_tokens, parse_upstream_count_tokens};
    let req = parse_count_tokens_request(
        ClientDialect::Anthropic,
        &body(json!({"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "hi"}]})),
        None,
    )
    .expect("parse");
    let call = build_upstream_count_tokens(UpstreamDialect::Anthropic, &req, "claude")
        .expect("build")
        .expect("some");
    assert_eq!(call.path, "/messages/count_tokens");
    let up: Value = serde_json::from_slice(&call.body).expect("json");
    assert!(up.get("max_tokens").is_none());
    assert_eq!(up["system"], "be brief");
    let call = build_upstream_count_tokens(UpstreamDialect::Gemini, &req, "gemini-2.5-flash")
        .expect("build")
        .expect("some");
    assert_eq!(call.path, "/models/gemini-2.5-flash:countTokens");
    let up: Value = serde_json::from_slice(&call.body).expect("json");
    assert_eq!(up["generateContentRequest"]["model"], "models/gemini-2.5-flash");
    assert_eq!(up["generateContentRequest"]["systemInstruction"]["parts"][0]["text"], "be brief");
    assert!(build_upstream_count_tokens(UpstreamDialect::OpenAiChat, &req, "gpt").expect("ok").is_none());
    assert_eq!(parse_upstream_count_tokens(UpstreamDialect::Anthropic, br#"{"input_tokens":12}"#), Some(12));
    assert_eq!(parse_upstream_count_tokens(UpstreamDialect::Gemini, br#"{"totalTokens":9}"#), Some(9));
    assert_eq!(parse_upstream_count_tokens(UpstreamDialect::Gemini, b"nope"), None);
}

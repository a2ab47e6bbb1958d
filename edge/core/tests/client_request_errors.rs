//! Malformed client request bodies, per client dialect: each is a 400 whose
//! `param` names the offending field path and whose message says what was
//! expected (the typed request parsers, `translate/*/request.rs`).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::error::GatewayError;
use edgeway_core::translate::{parse_client_request, ClientDialect};
use serde_json::{json, Value};

/// The 400's `(param, message)` for `body` sent by a `dialect` client.
fn refusal(dialect: ClientDialect, body: &Value) -> (String, String) {
    let bytes = serde_json::to_vec(body).expect("json");
    match parse_client_request(dialect, &bytes, Some("m"), false) {
        Err(error @ GatewayError::InvalidRequest { .. }) => {
            assert_eq!(error.status(), 400);
            let GatewayError::InvalidRequest { param, message } = error else { unreachable!() };
            (param.unwrap_or_default(), message)
        }
        other => panic!("{body}: expected a 400, got {other:?}"),
    }
}

fn check(dialect: ClientDialect, cases: &[(Value, &str, &str)]) {
    for (body, param, message) in cases {
        assert_eq!(refusal(dialect, body), (param.to_string(), message.to_string()), "{body}");
    }
}

#[test]
fn anthropic_refusals_name_the_field() {
    let user = |content: Value| json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": content}]});
    let image =
        |source: Value| user(json!([{"type": "text", "text": "see"}, {"type": "image", "source": source}]));
    check(
        ClientDialect::Anthropic,
        &[
            (
                image(json!({"type": "base64", "media_type": "image/bmp", "data": "AAAA"})),
                "messages[0].content[1].source.media_type",
                "Image media type `image/bmp` is not supported.",
            ),
            (
                image(json!({"type": "base64", "media_type": "image/png"})),
                "messages[0].content[1].source.data",
                "Missing required parameter: `messages[0].content[1].source.data`.",
            ),
            (
                image(json!({"type": "base64", "media_type": 5, "data": "AAAA"})),
                "messages[0].content[1].source.media_type",
                "`messages[0].content[1].source.media_type` must be a string.",
            ),
            (
                image(json!({"type": "file", "file_id": "f"})),
                "messages[0].content[1].source.type",
                "Source type `file` cannot be translated.",
            ),
            (
                user(json!([{"type": "tool_result", "content": "42"}])),
                "messages[0].content[0].tool_use_id",
                "Missing required parameter: `messages[0].content[0].tool_use_id`.",
            ),
            (
                user(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "thinking"}]}])),
                "messages[0].content[0].content[0]",
                "Tool results may contain only text and images.",
            ),
            (user(json!(7)), "messages[0].content", "`messages[0].content` must be a string or an array."),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
                "`messages[0].role` must be `user` or `assistant`, not `system`.",
            ),
            (
                json!({"model": "m", "max_tokens": "8", "messages": []}),
                "max_tokens",
                "`max_tokens` must be a non-negative integer.",
            ),
            (json!({"model": "m", "messages": []}), "max_tokens", "Missing required parameter: `max_tokens`."),
            (json!({"model": "m", "max_tokens": 8}), "messages", "Missing required parameter: `messages`."),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "stop_sequences": ["a", 1]}),
                "stop_sequences[1]",
                "`stop_sequences[1]` must be a string.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "metadata": {"user_id": "u", "tier": 1}}),
                "metadata.tier",
                "Unrecognized request argument supplied: `metadata.tier`.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "thinking": {"type": "enabled"}}),
                "thinking.budget_tokens",
                "Missing required parameter: `thinking.budget_tokens`.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "thinking": {"type": "on"}}),
                "thinking.type",
                "`thinking.type` must be one of `enabled`, `disabled`, `adaptive`, not `on`.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
                "Missing required parameter: `tool_choice.name`.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "system": [{"type": "image"}]}),
                "system[0].type",
                "System blocks must be `text` blocks.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "tools": [{"description": "d"}]}),
                "tools[0].name",
                "Missing required parameter: `tools[0].name`.",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [], "container": "c"}),
                "container",
                "`container` is not supported when edgeway translates this request to another provider's API.",
            ),
        ],
    );
}

#[test]
fn responses_refusals_name_the_field() {
    let input = |items: Value| json!({"model": "m", "input": items});
    check(
        ClientDialect::OpenAiResponses,
        &[
            (
                input(json!([{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}])),
                "input[0].content[0].image_url",
                "`input[0].content[0].image_url` must be a string.",
            ),
            (
                input(json!([{"role": "user", "content": [{"type": "input_image"}]}])),
                "input[0].content[0].image_url",
                "Missing required parameter: `input[0].content[0].image_url`.",
            ),
            (
                input(
                    json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]),
                ),
                "input[0].content[0].input_audio.format",
                "Missing required parameter: `input[0].content[0].input_audio.format`.",
            ),
            (
                input(json!([{"role": "tool", "content": "x"}])),
                "input[0].role",
                "`input[0].role` must be one of `system`, `developer`, `user`, `assistant`, not `tool`.",
            ),
            (
                input(json!([{"type": "function_call_output", "call_id": "c"}])),
                "input[0].output",
                "Missing required parameter: `input[0].output`.",
            ),
            (
                input(json!([{"type": "function_call", "name": "f"}])),
                "input[0].call_id",
                "Missing required parameter: `input[0].call_id`.",
            ),
            (
                input(json!([{"type": "web_search_call"}])),
                "input[0].type",
                "Input item type `web_search_call` cannot be translated.",
            ),
            (json!({"model": "m"}), "input", "Missing required parameter: `input`."),
            (json!({"model": "m", "input": 3}), "input", "`input` must be a string or an array."),
            (
                json!({"model": "m", "input": "x", "tool_choice": 1}),
                "tool_choice",
                "`tool_choice` must be a string or an object.",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "function"}}),
                "tool_choice.name",
                "Missing required parameter: `tool_choice.name`.",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format.type",
                "`text.format.type` `xml` is not supported.",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
                "Tool type `web_search` cannot be translated; only `function` tools can.",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": -5}),
                "max_output_tokens",
                "`max_output_tokens` must be a non-negative integer.",
            ),
        ],
    );
}

#[test]
fn gemini_refusals_name_the_field_as_sent() {
    let parts = |parts: Value| json!({"contents": [{"role": "user", "parts": parts}]});
    check(
        ClientDialect::Gemini,
        &[
            (
                parts(json!([{"text": "see"}, {"inlineData": {"data": "AAAA"}}])),
                "contents[0].parts[1].inlineData.mimeType",
                "Missing required parameter: `contents[0].parts[1].inlineData.mimeType`.",
            ),
            (
                parts(json!([{"inline_data": {"mime_type": 7, "data": "AAAA"}}])),
                "contents[0].parts[0].inline_data.mime_type",
                "`contents[0].parts[0].inline_data.mime_type` must be a string.",
            ),
            (
                parts(json!([{"functionCall": {"args": {}}}])),
                "contents[0].parts[0].functionCall.name",
                "Missing required parameter: `contents[0].parts[0].functionCall.name`.",
            ),
            (
                parts(json!([{"executable_code": {"code": "1"}}])),
                "contents[0].parts[0].executableCode",
                "Gemini part `executableCode` cannot be translated.",
            ),
            (parts(json!([{"text": 1}])), "contents[0].parts[0].text", "`contents[0].parts[0].text` must be a string."),
            (
                json!({"contents": [{"role": "system", "parts": []}]}),
                "contents[0].role",
                "`contents[0].role` must be `user` or `model`, not `system`.",
            ),
            (json!({}), "contents", "Missing required parameter: `contents`."),
            (
                json!({"contents": [], "generationConfig": {"maxOutputTokens": "9"}}),
                "generationConfig.maxOutputTokens",
                "`generationConfig.maxOutputTokens` must be a non-negative integer.",
            ),
            (
                json!({"contents": [], "generation_config": {"thinking_config": {"thinking_budget": 1.5}}}),
                "generation_config.thinking_config.thinking_budget",
                "`generation_config.thinking_config.thinking_budget` must be an integer.",
            ),
            (
                json!({"contents": [], "generationConfig": {"speechConfig": {"voice": "x"}}}),
                "generationConfig.speechConfig",
                "`generationConfig.speechConfig` is not supported when edgeway translates this request to another provider's API.",
            ),
            (
                json!({"contents": [], "tools": [{"functionDeclarations": [{"name": "f"}]}, {"code_execution": {}}]}),
                "tools[1].codeExecution",
                "Gemini tool `codeExecution` is not supported through edgeway's translation layer; only function declarations are.",
            ),
            (
                json!({"contents": [], "safetySettings": {"category": "x"}}),
                "safetySettings",
                "`safetySettings` must be an array.",
            ),
        ],
    );
}

#[test]
fn openai_chat_refusals_name_the_field() {
    let chat = |messages: Value| json!({"model": "m", "messages": messages});
    let user = |content: Value| chat(json!([{"role": "user", "content": content}]));
    check(
        ClientDialect::OpenAiChat,
        &[
            (
                user(json!([{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": 5}}])),
                "messages[0].content[1].image_url.url",
                "`messages[0].content[1].image_url.url` must be a string.",
            ),
            (
                user(json!([{"type": "image_url"}])),
                "messages[0].content[0].image_url",
                "Missing required parameter: `messages[0].content[0].image_url`.",
            ),
            (
                user(json!([{"type": "input_audio", "input_audio": {"data": "AAAA"}}])),
                "messages[0].content[0].input_audio.format",
                "Missing required parameter: `messages[0].content[0].input_audio.format`.",
            ),
            (
                user(json!([{"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}])),
                "messages[0].content[0].type",
                "Content part type `video_url` is not supported.",
            ),
            (
                chat(json!([{"role": "system", "content": [{"type": "file", "file": {}}]}])),
                "messages[0].content[0].type",
                "Content part type `file` is not allowed here.",
            ),
            (
                chat(json!([{"role": "user", "content": "x"},
                            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}])),
                "messages[1].tool_calls[0].function.name",
                "Missing required parameter: `messages[1].tool_calls[0].function.name`.",
            ),
            (
                chat(json!([{"role": "tool", "content": "42"}])),
                "messages[0].tool_call_id",
                "Missing required parameter: `messages[0].tool_call_id`.",
            ),
            (
                chat(json!([{"role": "robot", "content": "x"}])),
                "messages[0].role",
                "`messages[0].role` must be one of `system`, `developer`, `user`, `assistant`, `tool`, `function`, not `robot`.",
            ),
            (chat(json!([])), "messages", "`messages` must contain at least one message."),
            (json!({"model": "m"}), "messages", "Missing required parameter: `messages`."),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", 1]}),
                "stop[1]",
                "`stop[1]` must be a string.",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function"}}),
                "tool_choice.function",
                "Missing required parameter: `tool_choice.function`.",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
                "tools[0].function.parameters",
                "`tools[0].function.parameters` must be an object.",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
                "Missing required parameter: `response_format.json_schema`.",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1_u64 << 40}),
                "max_tokens",
                "`max_tokens` is too large: at most 4294967296 tokens.",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": -1}),
                "n",
                "`n` must be a non-negative integer.",
            ),
        ],
    );
}

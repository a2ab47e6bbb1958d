//! The URL policy on every request parser: each URL of the shared bypass list
//! (`tests/fixtures/url_bypasses.json`) is refused with a 400 by the OpenAI
//! relay (`image_url`, `file`, `input_audio`, `audio_url` parts; a URL refused
//! only for its non-public host is refused at routing, by every channel that
//! does not list the host in `media_hosts`) and by every translated client
//! dialect (OpenAI Chat, Anthropic, Gemini, Responses).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::error::GatewayError;
use edgeway_core::pipeline::inbound::Inbound;
use edgeway_core::provider::provider_by_id;
use edgeway_core::translate::{parse_client_request, ClientDialect};
use serde_json::{json, Value};

fn bypasses() -> Vec<String> {
    let doc: Value = serde_json::from_str(include_str!("../../../tests/fixtures/url_bypasses.json")).unwrap();
    serde_json::from_value(doc["urls"].clone()).unwrap()
}

fn chat(part: Value) -> Vec<u8> {
    json!({"model": "m", "messages": [{"role": "user", "content": [part]}]}).to_string().into_bytes()
}

/// (path name, client dialect or None for the relay, request body) per URL.
fn requests(url: &str) -> Vec<(&'static str, Option<ClientDialect>, Vec<u8>)> {
    let image_url = chat(json!({"type": "image_url", "image_url": {"url": url}}));
    vec![
        ("relay image_url", None, image_url.clone()),
        ("relay image_url string", None, chat(json!({"type": "image_url", "image_url": url}))),
        ("relay file", None, chat(json!({"type": "file", "file": {"file_data": url, "filename": "a.pdf"}}))),
        ("relay input_audio", None, chat(json!({"type": "input_audio", "input_audio": {"data": url, "format": "wav"}}))),
        ("relay audio_url", None, chat(json!({"type": "audio_url", "audio_url": {"url": url}}))),
        ("openai chat translated", Some(ClientDialect::OpenAiChat), image_url),
        (
            "anthropic image",
            Some(ClientDialect::Anthropic),
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": url}}]}]})
            .to_string()
            .into_bytes(),
        ),
        (
            "anthropic document",
            Some(ClientDialect::Anthropic),
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "url", "url": url}}]}]})
            .to_string()
            .into_bytes(),
        ),
        (
            "gemini fileData",
            Some(ClientDialect::Gemini),
            json!({"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": url}}]}]})
                .to_string()
                .into_bytes(),
        ),
        (
            "responses input_image",
            Some(ClientDialect::OpenAiResponses),
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": url}]}]})
                .to_string()
                .into_bytes(),
        ),
        (
            "responses input_file",
            Some(ClientDialect::OpenAiResponses),
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_url": url}]}]})
                .to_string()
                .into_bytes(),
        ),
    ]
}

fn parse(dialect: Option<ClientDialect>, body: &[u8]) -> Result<(), GatewayError> {
    match dialect {
        // The relay refuses a non-public host at routing, for every channel
        // that does not list it (none here): the refusal it will give.
        None => Inbound::read(ClientDialect::OpenAiChat, body, None, false).and_then(|inbound| match inbound
            .private_media()
            .and_then(|p| p.refusal.clone())
        {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }),
        Some(d) => parse_client_request(d, body, Some("m"), false).map(|_| ()),
    }
}

#[test]
fn every_bypass_is_a_400_on_every_path() {
    let urls = bypasses();
    let mut checked = 0;
    let mut passed = Vec::new();
    for url in &urls {
        for (name, dialect, body) in requests(url) {
            let data_field = name == "relay file" || name == "relay input_audio";
            if data_field && !url.contains(':') && !url.starts_with("//") {
                continue; // not URL-shaped: inline data the provider validates
            }
            match parse(dialect, &body) {
                Err(e) if e.status() == 400 => checked += 1,
                other => passed.push(format!("{name}: {url:?} → {other:?}")),
            }
        }
    }
    assert!(
        passed.is_empty(),
        "{} of {} not refused:\n{}",
        passed.len(),
        checked + passed.len(),
        passed.join("\n")
    );
    assert!(checked >= urls.len() * 11 - 2, "{checked}");
}

#[test]
fn public_urls_pass_on_every_path_normalized() {
    for (name, dialect, body) in requests("HTTPS://Example.COM/a/../cat.png") {
        if name.contains("input_audio") || name.contains("relay file") {
            continue; // those fields hold inline data; a URL there is refused like any odd value
        }
        assert!(parse(dialect, &body).is_ok(), "{name}");
    }
    let p = Inbound::read(
        ClientDialect::OpenAiChat,
        &chat(json!({"type": "image_url", "image_url": {"url": "HTTPS://Example.COM/a/../cat.png"}})),
        None,
        false,
    )
    .unwrap();
    let up: Value = serde_json::from_slice(
        &p.passthrough_upstream_body("real", provider_by_id("openai").unwrap()).unwrap().0,
    )
    .unwrap();
    assert_eq!(up["messages"][0]["content"][0]["image_url"]["url"], "https://example.com/cat.png");
}

//! The built-in mock provider, served in-process: the reply comes from
//! `edgeway_core::mock_provider` and is framed exactly like an upstream's, so
//! it flows through the same relay path as a real provider.

use crate::upstream::{BodyStream, UpstreamReply};
use edgeway_core::mock_provider::MockReply;
use edgeway_core::openai_relay::PreparedChat;
use edgeway_core::routing::MockOptions;
use edgeway_core::sse::encode_event;
use std::time::Duration;
use worker::Delay;

/// Answers like an OpenAI-compatible upstream would.
pub async fn reply(
    prepared: &PreparedChat,
    upstream_model: &str,
    options: MockOptions,
    now_ms: i64,
) -> UpstreamReply {
    if options.latency_ms > 0 {
        Delay::from(Duration::from_millis(options.latency_ms)).await;
    }
    let reply = MockReply::for_request(prepared.body(), upstream_model, now_ms / 1000, prepared.prompt_bytes);
    if !prepared.stream {
        let body = reply.completion_json().to_string().into_bytes();
        let stream: BodyStream = Box::pin(futures_util::stream::iter([Ok(body)]));
        return UpstreamReply { status: 200, body: stream };
    }
    let frames: Vec<Vec<u8>> = reply
        .stream_payloads(true)
        .into_iter()
        .map(|payload| {
            let mut frame = Vec::with_capacity(payload.len() + 8);
            encode_event(&mut frame, None, &payload);
            frame
        })
        .collect();
    let delay_ms = options.chunk_delay_ms;
    let stream: BodyStream = if delay_ms == 0 {
        Box::pin(futures_util::stream::iter([Ok(frames.concat())]))
    } else {
        Box::pin(futures_util::stream::unfold(
            (frames.into_iter(), true),
            move |(mut frames, first)| async move {
                let frame = frames.next()?;
                if !first {
                    Delay::from(Duration::from_millis(delay_ms)).await;
                }
                Some((Ok(frame), (frames, false)))
            },
        ))
    };
    UpstreamReply { status: 200, body: stream }
}

//! One interface over the two ways a streamed response is shaped for the
//! client: the OpenAI passthrough tap ([`ChatStreamTap`]) when client and
//! upstream both speak OpenAI chat, and the [`StreamTranslator`] for every
//! other pair. The worker's pump drives either the same way.

use crate::error::GatewayError;
use crate::openai_relay::ChatStreamTap;
use crate::translate::{ClientDialect, StreamOptions, StreamOutcome, StreamTranslator, UpstreamDialect};
use crate::usage::TokenUsage;

/// A client-stream shaper.
#[derive(Debug)]
pub enum StreamShaper {
    /// OpenAI → OpenAI: pass chunks through, tap usage.
    Relay(Box<ChatStreamTap>),
    /// Any other pair: translate through the canonical hub.
    Translate(Box<StreamTranslator>),
}

impl StreamShaper {
    /// Upstream bytes in, client bytes out.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Self::Relay(tap) => tap.feed(bytes),
            Self::Translate(t) => t.feed(bytes),
        }
    }

    /// The upstream closed; the bytes that end the client stream well.
    pub fn finish(&mut self) -> Vec<u8> {
        match self {
            Self::Relay(tap) => tap.finish(),
            Self::Translate(t) => t.finish(),
        }
    }

    /// Ends the client stream with `error` in its dialect (an upstream that
    /// went quiet, say); nothing follows.
    pub fn abort(&mut self, error: &GatewayError) -> Vec<u8> {
        match self {
            Self::Relay(tap) => tap.abort(error),
            Self::Translate(t) => t.abort(error),
        }
    }

    /// A whole client stream that is only `error`, in `client`'s dialect
    /// (the request failed after its stream's head went out).
    pub fn error_bytes(client: ClientDialect, error: &GatewayError) -> Vec<u8> {
        let mut shaper = match client {
            ClientDialect::OpenAiChat => Self::Relay(Box::new(ChatStreamTap::new(false, Vec::new()))),
            _ => Self::Translate(Box::new(StreamTranslator::new(
                UpstreamDialect::OpenAiChat,
                client,
                StreamOptions::default(),
            ))),
        };
        shaper.abort(error)
    }

    /// The client stream has ended (terminator or error sent).
    pub fn is_ended(&self) -> bool {
        match self {
            Self::Relay(tap) => tap.is_ended(),
            Self::Translate(t) => t.outcome() != StreamOutcome::Open,
        }
    }

    /// Ended well.
    pub fn completed(&self) -> bool {
        match self {
            Self::Relay(tap) => tap.summary().completed(),
            Self::Translate(t) => t.outcome() == StreamOutcome::Completed,
        }
    }

    /// Provider-reported usage so far, in disjoint buckets.
    pub fn usage(&self) -> Option<TokenUsage> {
        match self {
            Self::Relay(tap) => tap.summary().usage.as_ref().map(TokenUsage::from_openai),
            Self::Translate(t) => t.usage(),
        }
    }

    /// Content (text, reasoning, tool calls) has reached the client.
    pub fn saw_content(&self) -> bool {
        match self {
            Self::Relay(tap) => tap.summary().first_content_sent,
            Self::Translate(t) => t.saw_content(),
        }
    }

    /// What a translated stream said, as a whole response (`None` for the
    /// relay, whose answers carry no provider state to keep).
    pub fn snapshot(&self) -> Option<crate::translate::CanonicalResponse> {
        match self {
            Self::Relay(_) => None,
            Self::Translate(t) => Some(t.response_snapshot()),
        }
    }

    /// Bytes of content forwarded (basis of an estimate).
    pub fn content_bytes(&self) -> usize {
        match self {
            Self::Relay(tap) => tap.summary().content_bytes,
            Self::Translate(t) => t.content_bytes(),
        }
    }
}

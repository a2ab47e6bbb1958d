//! # edgeway-core
//!
//! The pure heart of the edgeway AI gateway: everything the edge worker decides
//! (who the caller is, which channel serves a model, how one API dialect is
//! translated into another, what a request costs, what a key's account admits,
//! how an upstream SSE stream is tapped for usage, how an error is shown to the
//! caller, what conversation state is kept between turns and which answers
//! are cached) lives here as plain Rust, with no dependency on the Cloudflare
//! `worker` crate.
//!
//! **Key design decision:** the worker crate is a thin shell that converts
//! platform types into the types of this crate and back. Anything that depends on
//! time takes `now` as an argument, money is always integer micro-units, and
//! stream processing is a synchronous state machine fed bytes, so every rule here
//! is tested natively (`cargo nextest`) and fed split at every byte offset.

/// Implements `Serialize` and `Deserialize` of a field-less enum as its
/// `as_str()` text, read back with `parse()`. Serde's derive would
/// instantiate a visitor per deserializer the worker uses; this reuses the
/// `String` one (a few hundred bytes of wasm saved per type).
macro_rules! serde_as_str {
    ($ty:ty, $what:literal) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text)
                    .ok_or_else(|| serde::de::Error::custom(format_args!("unknown {} `{text}`", $what)))
            }
        }
    };
}

pub mod api_key;
pub mod base64;
pub mod channel_health;
pub mod conversation_store;
pub mod cors;
pub mod endpoint;
pub mod error;
pub mod family;
pub mod internal_auth;
pub mod ip_allow;
pub mod key_account;
pub mod key_record;
pub mod limits;
pub mod mock_provider;
pub mod model_catalog;
pub mod openai_relay;
pub mod pin;
pub mod pipeline;
pub mod pricing;
pub mod provider;
pub mod rate_window;
pub mod request_policy;
pub mod response_cache;
pub mod routing;
pub mod sse;
pub mod stream_shaper;
pub mod translate;
pub mod url_policy;
pub mod usage;
pub mod usage_row;
pub mod user_account;

//! OpenAI Responses (`/v1/responses`) as a client dialect. The parser is
//! stateless: the conversation comes whole in `input`; a request with
//! `previous_response_id` is expanded with its stored conversation before it
//! gets here ([`super::responses_state`]).
//!
//! Reasoning travels as `reasoning` items: the summary text is the thinking
//! text and `encrypted_content` carries the provider signature (Anthropic
//! `signature` or Gemini `thoughtSignature`), so signed reasoning survives a
//! round trip through a Responses client.
//!
//! | file | role |
//! |---|---|
//! | `request` | a client's `/v1/responses` body → the hub |
//! | `client` | the hub → the `response` object or event stream a Responses client gets |
//! | `wire` | the typed shapes `client` writes |

mod client;
mod request;
mod wire;

pub(crate) use client::{render_response, ResponsesStreamRenderer};
pub(crate) use request::parse_request;

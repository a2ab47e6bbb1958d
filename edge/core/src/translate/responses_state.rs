//! Responses API state over any upstream: `store: true` keeps a response
//! (the whole conversation that led to it, and the response object) in the
//! key's conversation store ([`crate::conversation_store`], entries `r:<id>`);
//! `previous_response_id` expands a request with the stored conversation
//! before it is parsed, so the upstream, whatever its dialect, gets the whole
//! history; `GET` and `DELETE /v1/responses/{id}` read and remove stored
//! responses.
//!
//! **Key design decision:** the conversation is kept in the client's own
//! wire format, as Responses input items (the items the client sent, then
//! the output items it was answered with), so expanding a request is
//! splicing JSON arrays and the one Responses parser reads the result: the
//! stored reasoning items carry their `encrypted_content` (the provider's
//! signatures), so signed reasoning reaches the next turn exactly as issued.
//! Each entry holds the whole conversation up to its response (one lookup per
//! turn, no chain to walk), so a conversation is bounded by
//! [`crate::conversation_store::MAX_ENTRY_BYTES`]; beyond it the response is
//! answered but not stored (logged), and a later `previous_response_id`
//! naming it is a 400 as for any unknown id.
//!
//! Without `store: true` nothing is kept (OpenAI's own default is to store;
//! edgeway keeps nothing unless asked). As with OpenAI, `instructions` are
//! not carried over to the next turn; input items of the `developer` or
//! `system` role are.

use super::json_fields::{invalid, parse_object};
use crate::conversation_store::{DeleteReply, GetReply};
use crate::error::GatewayError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How long a stored response is kept (OpenAI keeps them 30 days).
pub const RESPONSE_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

/// Longest response id accepted (ids are `resp_<hex>`).
const MAX_ID_CHARS: usize = 128;

/// The state fields of a Responses request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateFields {
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `store: true`.
    pub store: bool,
}

/// A stored response: the conversation up to it, and the object `GET` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// Input items then output items, oldest first.
    pub items: Vec<Value>,
    /// The response object as the client received it.
    pub response: Value,
}

/// The store entry name of response `id`.
pub fn response_name(id: &str) -> String {
    format!("r:{id}")
}

/// Whether `id` can name a stored response (the path segment of `GET` /
/// `DELETE`, or `previous_response_id`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `previous_response_id` and `store` from a Responses body (a wrong
/// type is a 400; the rest of the body is checked by the parser later).
pub fn read_state_fields(body: &[u8]) -> Result<StateFields, GatewayError> {
    let obj = parse_object(body)?;
    let previous_response_id = match obj.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_id(id) => Some(id.clone()),
        Some(Value::String(id)) => return Err(not_found(id)),
        Some(_) => return Err(invalid("`previous_response_id` must be a string.", "previous_response_id")),
    };
    let store = match obj.get("store") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("`store` must be a boolean.", "store")),
    };
    Ok(StateFields { previous_response_id, store })
}

/// The 400 for a `previous_response_id` that names nothing this key stored.
pub fn not_found(id: &str) -> GatewayError {
    let shown: String = id.chars().take(MAX_ID_CHARS).collect();
    invalid(format!("Previous response with id '{shown}' not found."), "previous_response_id")
}

/// The input items of a body (`input` as a string is one user message).
fn input_items(obj: &Map<String, Value>) -> Result<Vec<Value>, GatewayError> {
    match obj.get("input") {
        Some(Value::String(text)) => Ok(vec![json!({"type": "message", "role": "user", "content": text})]),
        Some(Value::Array(items)) => Ok(items.clone()),
        None | Some(Value::Null) => Err(invalid("Missing required parameter: `input`.", "input")),
        Some(_) => Err(invalid("`input` must be a string or an array of items.", "input")),
    }
}

/// The request as the parser reads it: `previous`'s conversation, then the
/// body's input, as one `input`, without `previous_response_id`. Returns the
/// new body and its input items (what a stored answer keeps).
pub fn expand(body: &[u8], previous: Option<&StoredResponse>) -> Result<(Vec<u8>, Vec<Value>), GatewayError> {
    let mut obj = parse_object(body)?;
    let mut items = previous.map(|p| p.items.clone()).unwrap_or_default();
    items.extend(input_items(&obj)?);
    obj.remove("previous_response_id");
    obj.insert("input".into(), Value::Array(items.clone()));
    let bytes = serde_json::to_vec(&Value::Object(obj)).map_err(|_| GatewayError::Internal)?;
    Ok((bytes, items))
}

/// What is stored for an answer: the conversation (`input` items, then the
/// response's output items) and the response object, which gets the
/// `store` and `previous_response_id` fields a stored response has.
pub fn stored(input: Vec<Value>, mut response: Value, previous_response_id: Option<&str>) -> StoredResponse {
    if let Some(obj) = response.as_object_mut() {
        obj.insert("store".into(), Value::Bool(true));
        obj.insert("previous_response_id".into(), previous_response_id.map_or(Value::Null, |id| json!(id)));
    }
    let mut items = input;
    if let Some(output) = response.get("output").and_then(Value::as_array) {
        items.extend(output.iter().cloned());
    }
    StoredResponse { items, response }
}

/// The `GET /v1/responses/{id}` answer from the store's `/get` reply: the
/// stored response object, or a 404.
pub fn retrieved(id: &str, reply: &GetReply) -> Result<Value, GatewayError> {
    reply
        .found
        .get(&response_name(id))
        .and_then(|text| serde_json::from_str::<StoredResponse>(text).ok())
        .map(|stored| stored.response)
        .ok_or_else(|| GatewayError::ResponseNotFound { id: id.to_string() })
}

/// The `DELETE /v1/responses/{id}` answer from the store's `/delete` reply.
pub fn deleted(id: &str, reply: &DeleteReply) -> Result<Value, GatewayError> {
    if reply.deleted.iter().any(|n| *n == response_name(id)) {
        Ok(json!({"id": id, "object": "response", "deleted": true}))
    } else {
        Err(GatewayError::ResponseNotFound { id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_typed() {
        let f = read_state_fields(br#"{"input":"hi","store":true,"previous_response_id":"resp_ab12"}"#);
        assert_eq!(f.ok(), Some(StateFields { previous_response_id: Some("resp_ab12".into()), store: true }));
        assert_eq!(read_state_fields(br#"{"input":"hi"}"#).ok(), Some(StateFields::default()));
        let bad = read_state_fields(br#"{"store":"yes"}"#).err().map(|e| e.status());
        assert_eq!(bad, Some(400));
        let odd = read_state_fields(br#"{"previous_response_id":"../x"}"#).err();
        assert!(
            matches!(odd, Some(GatewayError::InvalidRequest { message, .. }) if message.contains("not found"))
        );
    }

    #[test]
    fn a_conversation_is_the_stored_items_then_the_new_input() {
        let first = expand(br#"{"model":"m","input":"Hello","store":true}"#, None);
        let (body, items) = first.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(items, vec![json!({"type": "message", "role": "user", "content": "Hello"})]);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(parsed["input"][0]["content"], "Hello");
        let response = json!({"id": "resp_1", "object": "response", "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "sig=="},
            {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]}
        ]});
        let kept = stored(items, response, None);
        assert_eq!(kept.items.len(), 3);
        assert_eq!(kept.response["store"], true);
        assert_eq!(kept.response["previous_response_id"], Value::Null);
        let text = serde_json::to_string(&kept).unwrap_or_default();
        let back: StoredResponse = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let next =
            br#"{"model":"m","previous_response_id":"resp_1","input":[{"role":"user","content":"And?"}]}"#;
        let (body, items) = expand(next, Some(&back)).unwrap_or_else(|e| panic!("{e:?}"));
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert!(parsed.get("previous_response_id").is_none());
        assert_eq!(items.len(), 4);
        assert_eq!(parsed["input"][1]["encrypted_content"], "sig==", "signatures come back as issued");
        assert_eq!(parsed["input"][3]["content"], "And?");
    }

    #[test]
    fn retrieve_and_delete_answer_from_the_store_reply() {
        let kept =
            stored(vec![], json!({"id": "resp_1", "object": "response", "output": []}), Some("resp_0"));
        let mut reply = GetReply::default();
        assert_eq!(retrieved("resp_1", &reply).err().map(|e| e.status()), Some(404));
        reply.found.insert("r:resp_1".into(), serde_json::to_string(&kept).unwrap_or_default());
        let got = retrieved("resp_1", &reply).unwrap_or_default();
        assert_eq!(
            (got["id"].clone(), got["previous_response_id"].clone()),
            (json!("resp_1"), json!("resp_0"))
        );
        let gone = DeleteReply { deleted: vec!["r:resp_1".into()] };
        assert_eq!(deleted("resp_1", &gone).ok().map(|v| v["deleted"].clone()), Some(json!(true)));
        assert_eq!(deleted("resp_1", &DeleteReply::default()).err().map(|e| e.status()), Some(404));
    }
}

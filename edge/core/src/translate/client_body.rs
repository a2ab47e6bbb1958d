//! Typed reading of client request bodies. Each dialect's `request` module
//! declares the body it accepts as private `Deserialize` structs that borrow
//! from the parsed body, and reads them with [`read`], which turns a serde
//! error into a 400 naming the field path as the OpenAI `param`
//! (`messages[2].content[0].image_url`), tracked by `serde_path_to_error`.
//!
//! Key design decisions:
//! * **No serde enums for tagged shapes.** Content parts are flat structs
//!   (`type` plus the optional payload of every part kind) dispatched on
//!   `type` by plain code: serde's tagged and untagged enums buffer the value
//!   first, which loses the path of an error inside it (and costs more wasm).
//!   A value that is a string or something else (`content`, `stop`,
//!   `tool_choice`) is [`TextOrList`] / [`TextOrObject`], visitors that do
//!   not buffer either.
//! * **Unknown fields are ignored** by the structs; which top-level fields a
//!   dialect refuses stays a list checked before the typed read
//!   ([`super::json_fields::check_fields`]), so that a refused field wins.
//! * **Messages keep the gateway's wording**: serde's "invalid type: …,
//!   expected u64" becomes "`max_tokens` must be a non-negative integer.",
//!   and a missing field is "Missing required parameter: `messages[0].role`.".

use super::json_fields::invalid;
use crate::error::GatewayError;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// `value` (the part of the body at `path`; `""` for the whole body) read as
/// `T`, or a 400 naming the offending field.
pub(crate) fn read<'a, T: Deserialize<'a>>(value: &'a Value, path: &str) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut param = path.to_string();
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => param.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => push_key(&mut param, key),
                serde_path_to_error::Segment::Enum { variant } => push_key(&mut param, variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        error_at(param, &error.inner().to_string())
    })
}

/// A required field of a flat part struct, or a 400 naming `path.key`.
pub(crate) fn need<T>(field: Option<T>, path: &str, key: &str) -> Result<T, GatewayError> {
    field.ok_or_else(|| missing(&joined(path, key)))
}

/// "Missing required parameter" for `param`.
pub(crate) fn missing(param: &str) -> GatewayError {
    invalid(format!("Missing required parameter: `{param}`."), param)
}

fn push_key(param: &mut String, key: &str) {
    if !param.is_empty() {
        param.push('.');
    }
    param.push_str(key);
}

fn joined(path: &str, key: &str) -> String {
    let mut param = path.to_string();
    push_key(&mut param, key);
    param
}

/// The 400 for serde's `message` about the value at `param`.
fn error_at(param: String, message: &str) -> GatewayError {
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        return missing(&joined(&param, field));
    }
    if let Some((field, _)) = message.strip_prefix("unknown field `").and_then(|m| m.split_once('`')) {
        // The path already ends at the unknown key.
        let param = if param.ends_with(field) { param } else { joined(&param, field) };
        return invalid(format!("Unrecognized request argument supplied: `{param}`."), &param);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((word, expected)) = rest.split_once("`, expected ") {
            return invalid(format!("`{param}` must be {expected}, not `{word}`."), &param);
        }
    }
    let expected = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .any(|prefix| message.starts_with(prefix))
        .then(|| message.rsplit_once(", expected ").map(|(_, expected)| expected))
        .flatten();
    match expected {
        Some(expected) => invalid(format!("`{param}` must be {}.", expectation(expected)), &param),
        None if param.is_empty() => invalid(format!("Invalid request: {message}."), &param),
        None => invalid(format!("Invalid `{param}`: {message}."), &param),
    }
}

/// serde's name for what it expected, in the words of the API docs.
fn expectation(expected: &str) -> &str {
    match expected {
        "a borrowed string" | "a string" => "a string",
        "u64" | "u32" | "usize" => "a non-negative integer",
        "i64" | "i32" => "an integer",
        "a JSON number" | "f64" => "a number",
        "a boolean" => "a boolean",
        "a sequence" => "an array",
        "a map" => "an object",
        other if other.starts_with("struct ") => "an object",
        other => other,
    }
}

/// A string, or an array of `T` (message `content`, `stop`, `system`).
#[derive(Debug)]
pub(crate) enum TextOrList<'a, T> {
    Text(&'a str),
    List(Vec<T>),
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for TextOrList<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either<'a, T>(PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for Either<'a, T> {
            type Value = TextOrList<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(TextOrList::Text(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(TextOrList::List)
            }
        }
        deserializer.deserialize_any(Either(PhantomData))
    }
}

/// A string, or an object read as `T` (`tool_choice`, `image_url`).
#[derive(Debug)]
pub(crate) enum TextOrObject<'a, T> {
    Text(&'a str),
    Object(T),
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for TextOrObject<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either<'a, T>(PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for Either<'a, T> {
            type Value = TextOrObject<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(TextOrObject::Text(text))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(TextOrObject::Object)
            }
        }
        deserializer.deserialize_any(Either(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body<'a> {
        #[serde(borrow)]
        messages: Vec<Message<'a>>,
        max_tokens: Option<u64>,
        seed: Option<i64>,
        temperature: Option<serde_json::Number>,
        stream: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Role {
        User,
        Assistant,
    }

    #[derive(Debug, Deserialize)]
    struct Message<'a> {
        #[allow(dead_code)]
        role: Role,
        #[serde(borrow)]
        content: Option<TextOrList<'a, Part<'a>>>,
        #[serde(borrow)]
        tool_choice: Option<TextOrObject<'a, ImageUrl<'a>>>,
    }

    #[derive(Debug, Deserialize)]
    struct Part<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        image_url: Option<ImageUrl<'a>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ImageUrl<'a> {
        url: &'a str,
    }

    fn error(body: Value) -> (String, String) {
        match read::<Body>(&body, "").map(|_| ()) {
            Err(error) => (param_of(&error), error.message()),
            Ok(()) => (String::new(), "read".into()),
        }
    }

    fn param_of(error: &GatewayError) -> String {
        match error {
            GatewayError::InvalidRequest { param, .. } => param.clone().unwrap_or_default(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_path_inside_text_or_list_and_object() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]}),
                "messages[0].content[0].image_url.url",
                "`messages[0].content[0].image_url.url` must be a string.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0].image_url.url",
                "Missing required parameter: `messages[0].content[0].image_url.url`.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"image_url": {"url": "x"}}]}]}),
                "messages[0].content[0].type",
                "Missing required parameter: `messages[0].content[0].type`.",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
                "`messages[0].content` must be a string or an array.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]}),
                "messages[0].content[0].image_url",
                "`messages[0].content[0].image_url` must be an object.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "x": 1}}]}]}),
                "messages[0].content[0].image_url.x",
                "Unrecognized request argument supplied: `messages[0].content[0].image_url.x`.",
            ),
            (
                json!({"messages": [{"role": "system"}]}),
                "messages[0].role",
                "`messages[0].role` must be `user` or `assistant`, not `system`.",
            ),
            (json!({"messages": [5]}), "messages[0]", "`messages[0]` must be an object."),
            (
                json!({"messages": [{"role": "user", "tool_choice": [1]}]}),
                "messages[0].tool_choice",
                "`messages[0].tool_choice` must be a string or an object.",
            ),
            (
                json!({"messages": [{"role": "user", "tool_choice": {"url": true}}]}),
                "messages[0].tool_choice.url",
                "`messages[0].tool_choice.url` must be a string.",
            ),
            (json!({"messages": {}}), "messages", "`messages` must be an array."),
            (json!({}), "messages", "Missing required parameter: `messages`."),
            (
                json!({"messages": [], "max_tokens": -1}),
                "max_tokens",
                "`max_tokens` must be a non-negative integer.",
            ),
            (
                json!({"messages": [], "max_tokens": 1.5}),
                "max_tokens",
                "`max_tokens` must be a non-negative integer.",
            ),
            (json!({"messages": [], "seed": "7"}), "seed", "`seed` must be an integer."),
            (json!({"messages": [], "temperature": "hot"}), "temperature", "`temperature` must be a number."),
            (json!({"messages": [], "stream": 1}), "stream", "`stream` must be a boolean."),
        ];
        for (body, param, message) in cases {
            assert_eq!(error(body), (param.to_string(), message.to_string()));
        }
    }

    #[test]
    fn values_read_borrowed_and_null_is_absent() {
        let body = json!({"messages": [{"role": "user", "content": "hi", "tool_choice": "auto"},
                                       {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
                                       {"role": "user", "content": null}],
                          "max_tokens": null});
        let read: Body = read(&body, "").expect("reads");
        assert!(read.max_tokens.is_none());
        assert!(matches!(read.messages[0].content, Some(TextOrList::Text("hi"))));
        assert!(matches!(read.messages[0].tool_choice, Some(TextOrObject::Text("auto"))));
        match &read.messages[1].content {
            Some(TextOrList::List(parts)) => {
                assert_eq!(parts[0].kind, "image_url");
                assert_eq!(parts[0].image_url.as_ref().map(|i| i.url), Some("u"));
            }
            other => panic!("{other:?}"),
        }
        assert!(read.messages[2].content.is_none());
        let nested = json!({"name": 5});
        let error = super::read::<Named>(&nested, "tools[3].function").expect_err("not a string");
        assert_eq!(param_of(&error), "tools[3].function.name");
        assert_eq!(need(Some(1), "p", "k").ok(), Some(1));
        let error = need::<u8>(None, "tools[0]", "name").expect_err("absent");
        assert_eq!(param_of(&error), "tools[0].name");
    }

    #[derive(Debug, Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: String,
    }
}

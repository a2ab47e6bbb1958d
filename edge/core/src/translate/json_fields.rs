//! Small helpers for reading JSON: the body and field checks shared by the
//! client parsers (`parse_object`, `check_fields`, `invalid`), the field
//! readers of the endpoint families (`crate::family`; the chat dialects read
//! typed structs, [`super::client_body`]), and [`Lax`] fields of the
//! dialects' upstream wire structs.

use crate::error::GatewayError;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};
use std::ops::Deref;

/// A field of an untrusted upstream body, read leniently: absent, `null` or
/// a value of another type reads as `T::default()` instead of failing the
/// whole body (providers and OpenAI-compatible servers differ in the
/// details; a stray type must not lose a response or a stream chunk).
///
/// Only for structs read from an already parsed [`Value`] ([`read`]): there a
/// field that fails leaves nothing half-read, which a byte-stream
/// deserializer would not guarantee. Containers using it carry
/// `#[serde(default)]` so that absent fields are defaults too.
/// (Deliberately not `Clone`: `field.clone()` clones the value it holds.)
#[derive(Debug, Default)]
pub(crate) struct Lax<T>(pub T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Lax<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Lax(T::deserialize(deserializer).unwrap_or_default()))
    }
}

impl<T> Deref for Lax<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// An upstream wire struct read from a parsed value (see [`Lax`]); `None`
/// when the value is not an object. (Like any derived `Deserialize`, a
/// struct also reads an array, by position: callers that must see an object
/// check `is_object` themselves, as Gemini's response parser does.)
pub(crate) fn read<T: serde::de::DeserializeOwned>(value: &Value) -> Option<T> {
    T::deserialize(value).ok()
}

/// A 400 naming `param`.
pub(crate) fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::InvalidRequest { message: message.into(), param: Some(param.to_string()) }
}

/// The body as a JSON object, or a 400.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson { detail: e.to_string() })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        }),
    }
}

/// Refuses any key of `obj` that is neither supported nor tolerated.
/// `unsupported` keys get a message saying the gateway cannot translate them.
pub(crate) fn check_fields(
    obj: &Map<String, Value>,
    supported: &[&str],
    unsupported: &[&str],
    path: &str,
) -> Result<(), GatewayError> {
    for key in obj.keys() {
        let param = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        if unsupported.contains(&key.as_str()) {
            if obj.get(key).is_some_and(is_default_value) {
                continue;
            }
            return Err(invalid(
                format!("`{param}` is not supported when edgeway translates this request to another provider's API."),
                &param,
            ));
        }
        if !supported.contains(&key.as_str()) {
            return Err(invalid(format!("Unrecognized request argument supplied: `{param}`."), &param));
        }
    }
    Ok(())
}

/// `null`, `false`, `0`, `""`, `[]` and `{}`: a parameter left at its default.
pub(crate) fn is_default_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Optional string field.
pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("`{}` must be a string.", join(path, key)), &join(path, key))),
    }
}

/// Required string field.
pub(crate) fn req_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, GatewayError> {
    opt_str(obj, key, path)?.ok_or_else(|| {
        invalid(format!("Missing required parameter: `{}`.", join(path, key)), &join(path, key))
    })
}

/// Optional non-negative integer.
pub(crate) fn opt_u64(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            invalid(format!("`{}` must be a non-negative integer.", join(path, key)), &join(path, key))
        }),
    }
}

/// Optional integer.
pub(crate) fn opt_i64(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("`{}` must be an integer.", join(path, key)), &join(path, key))),
    }
}

/// Optional number, kept exactly as written.
pub(crate) fn opt_number(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<Number>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.clone())),
        Some(_) => Err(invalid(format!("`{}` must be a number.", join(path, key)), &join(path, key))),
    }
}

/// Optional boolean.
pub(crate) fn opt_bool(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<bool>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(format!("`{}` must be a boolean.", join(path, key)), &join(path, key))),
    }
}

/// Optional object.
pub(crate) fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, GatewayError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid(format!("`{}` must be an object.", join(path, key)), &join(path, key))),
    }
}

/// `path.key`, or `key` at the top level.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Serializes a body built by the gateway (a `Value` or a wire struct, whose
/// maps all have string keys, so this cannot fail; an empty body would be
/// the unreachable fallback).
pub(crate) fn to_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// [`to_bytes`] as text, for an SSE `data:` line.
pub(crate) fn to_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

//! JSON Schema → the OpenAPI subset Gemini accepts for function parameters
//! and `responseSchema`.
//!
//! * `$ref` to `#/$defs/…` or `#/definitions/…` is inlined (recursion is cut
//!   at [`MAX_REF_DEPTH`] with a plain `{"type": "object"}`);
//! * `type: [x, "null"]` becomes `type: x, nullable: true`; several non-null
//!   types become `anyOf`;
//! * `anyOf`/`oneOf` lose their `{"type": "null"}` branch (→ `nullable`), and
//!   a single remaining branch is merged into its parent; `oneOf` becomes `anyOf`;
//! * `allOf` is merged (properties, required, other keys first-wins);
//! * `const` becomes a one-value `enum`; enums of non-strings are dropped;
//! * only keys Gemini knows are kept (so `$schema`, `additionalProperties`,
//!   `prefixItems`, `exclusiveMinimum`, `patternProperties`, … disappear), and
//!   `format` is kept only where Gemini supports it;
//! * `required` names only properties that exist.

use serde_json::{Map, Value};
use std::cell::Cell;

/// How deep `$ref`s are followed before recursion is cut.
pub const MAX_REF_DEPTH: usize = 8;

/// Most schema nodes produced: inlining `$ref`s can multiply a small schema;
/// past this budget the rest becomes a plain `{"type": "object"}`.
pub const MAX_OUTPUT_NODES: usize = 20_000;

struct Context {
    defs: Map<String, Value>,
    nodes_left: Cell<usize>,
}

/// How deep a schema may nest at all.
const MAX_NESTING: usize = 64;

const KEPT_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "items",
    "minimum",
    "maximum",
];

/// Sanitizes a schema for Gemini.
pub fn sanitize_for_gemini(schema: &Value) -> Value {
    let ctx = Context { defs: collect_defs(schema), nodes_left: Cell::new(MAX_OUTPUT_NODES) };
    sanitize(schema, &ctx, 0, 0)
}

fn collect_defs(schema: &Value) -> Map<String, Value> {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = schema.get(key) {
            for (name, def) in d {
                defs.insert(format!("#/{key}/{name}"), def.clone());
            }
        }
    }
    defs
}

fn sanitize(schema: &Value, ctx: &Context, ref_depth: usize, nesting: usize) -> Value {
    let left = ctx.nodes_left.get();
    if left == 0 {
        return object_type();
    }
    ctx.nodes_left.set(left - 1);
    let Value::Object(obj) = schema else {
        // `true` / `{}`-like schemas: anything goes.
        return Value::Object(Map::new());
    };
    if nesting > MAX_NESTING {
        return object_type();
    }
    if let Some(Value::String(reference)) = obj.get("$ref") {
        if ref_depth >= MAX_REF_DEPTH {
            return object_type();
        }
        return match ctx.defs.get(reference) {
            Some(target) => {
                let mut merged = target.clone();
                // Sibling keywords (e.g. a description) win over the target's.
                if let Value::Object(m) = &mut merged {
                    for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "$ref") {
                        m.insert(k.clone(), v.clone());
                    }
                }
                sanitize(&merged, ctx, ref_depth + 1, nesting + 1)
            }
            None => object_type(),
        };
    }
    let mut obj = obj.clone();
    if let Some(Value::Array(parts)) = obj.remove("allOf") {
        for part in parts {
            let resolved = sanitize(&part, ctx, ref_depth, nesting + 1);
            merge_into(&mut obj, resolved);
        }
    }
    let mut out = Map::new();
    let mut nullable = obj.get("nullable").and_then(Value::as_bool).unwrap_or(false);

    // type
    match obj.get("type") {
        Some(Value::String(t)) if t == "null" => nullable = true,
        Some(Value::String(t)) => {
            out.insert("type".into(), Value::String(t.clone()));
        }
        Some(Value::Array(types)) => {
            let non_null: Vec<&str> =
                types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            if non_null.len() < types.len() {
                nullable = true;
            }
            match non_null.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_string()));
                }
                many => {
                    let branches: Vec<Value> = many
                        .iter()
                        .map(|t| {
                            let mut branch = obj.clone();
                            branch.insert("type".into(), Value::String((*t).to_string()));
                            sanitize(&Value::Object(branch), ctx, ref_depth, nesting + 1)
                        })
                        .collect();
                    let mut any = Map::new();
                    any.insert("anyOf".into(), Value::Array(branches));
                    if nullable {
                        any.insert("nullable".into(), Value::Bool(true));
                    }
                    copy_annotations(&obj, &mut any);
                    return Value::Object(any);
                }
            }
        }
        _ => {}
    }

    // anyOf / oneOf
    let alternatives: Vec<Value> = ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    if !alternatives.is_empty() {
        let mut kept = Vec::new();
        for alt in &alternatives {
            if alt.get("type").and_then(Value::as_str) == Some("null")
                && alt.as_object().is_some_and(|o| o.len() == 1)
            {
                nullable = true;
            } else {
                kept.push(sanitize(alt, ctx, ref_depth, nesting + 1));
            }
        }
        if kept.len() == 1 {
            if let Some(Value::Object(single)) = kept.pop() {
                for (k, v) in single {
                    out.entry(k).or_insert(v);
                }
            }
        } else if !kept.is_empty() {
            out.insert("anyOf".into(), Value::Array(kept));
        }
    }

    for (key, value) in &obj {
        if !KEPT_KEYS.contains(&key.as_str()) || key == "type" || key == "anyOf" || key == "nullable" {
            continue;
        }
        match key.as_str() {
            "properties" => {
                if let Value::Object(props) = value {
                    let cleaned: Map<String, Value> = props
                        .iter()
                        .map(|(name, s)| (name.clone(), sanitize(s, ctx, ref_depth, nesting + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(cleaned));
                }
            }
            "items" => {
                let item = match value {
                    Value::Array(tuple) => tuple.first().cloned().unwrap_or(Value::Object(Map::new())),
                    other => other.clone(),
                };
                out.insert("items".into(), sanitize(&item, ctx, ref_depth, nesting + 1));
            }
            "enum" => {
                if let Value::Array(values) = value {
                    if values.iter().all(Value::is_string) {
                        out.insert("enum".into(), value.clone());
                    }
                }
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(constant) = obj.get("const") {
        if constant.is_string() {
            out.insert("enum".into(), Value::Array(vec![constant.clone()]));
            out.entry("type").or_insert(Value::String("string".into()));
        }
    }
    if out.contains_key("enum") && out.get("type").and_then(Value::as_str) == Some("string") {
        out.insert("format".into(), Value::String("enum".into()));
    }
    keep_supported_format(&mut out);
    if let (Some(Value::Array(required)), props) = (out.get("required").cloned(), out.get("properties")) {
        let names: Vec<Value> = required
            .into_iter()
            .filter(|r| r.as_str().is_some_and(|n| props.and_then(|p| p.get(n)).is_some()))
            .collect();
        if names.is_empty() {
            out.remove("required");
        } else {
            out.insert("required".into(), Value::Array(names));
        }
    }
    if out.get("type").and_then(Value::as_str) == Some("object")
        && out.get("properties").and_then(Value::as_object).is_some_and(Map::is_empty)
    {
        out.remove("properties");
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    Value::Object(out)
}

fn object_type() -> Value {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("object".into()));
    Value::Object(m)
}

fn copy_annotations(from: &Map<String, Value>, to: &mut Map<String, Value>) {
    for key in ["description", "title"] {
        if let Some(v) = from.get(key) {
            to.insert(key.into(), v.clone());
        }
    }
}

fn merge_into(target: &mut Map<String, Value>, part: Value) {
    let Value::Object(part) = part else { return };
    for (key, value) in part {
        match (key.as_str(), target.get_mut(&key), value) {
            ("properties", Some(Value::Object(existing)), Value::Object(more)) => {
                for (k, v) in more {
                    existing.entry(k).or_insert(v);
                }
            }
            ("required", Some(Value::Array(existing)), Value::Array(more)) => {
                for r in more {
                    if !existing.contains(&r) {
                        existing.push(r);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                target.insert(key, value);
            }
        }
    }
}

fn keep_supported_format(out: &mut Map<String, Value>) {
    let Some(format) = out.get("format").and_then(Value::as_str) else { return };
    let ty = out.get("type").and_then(Value::as_str).unwrap_or("");
    let supported = match ty {
        "string" => matches!(format, "enum" | "date-time"),
        "number" => matches!(format, "float" | "double"),
        "integer" => matches!(format, "int32" | "int64"),
        _ => false,
    };
    if !supported {
        out.remove("format");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_nullables_and_unsupported_keys() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}},
            "properties": {
                "unit": {"$ref": "#/$defs/Unit", "description": "temperature unit"},
                "city": {"type": ["string", "null"], "format": "hostname"},
                "days": {"type": "integer", "exclusiveMinimum": 0, "const": 3},
                "tags": {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
                "mode": {"const": "fast"},
                "either": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                                   {"properties": {"b": {"type": "number"}}, "required": ["b"]}]}
            },
            "required": ["unit", "missing"]
        });
        let out = sanitize_for_gemini(&schema);
        assert_eq!(
            out,
            json!({
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "enum": ["c", "f"], "format": "enum", "description": "temperature unit"},
                    "city": {"type": "string", "nullable": true},
                    "days": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "mode": {"type": "string", "enum": ["fast"], "format": "enum"},
                    "either": {"type": "string", "nullable": true},
                    "both": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}, "required": ["a", "b"]}
                },
                "required": ["unit"]
            })
        );
    }

    #[test]
    fn recursive_refs_terminate() {
        let schema = json!({"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
                            "$ref": "#/$defs/Node"});
        let out = sanitize_for_gemini(&schema);
        assert_eq!(out["type"], "object");
        let text = out.to_string();
        assert!(!text.contains("$ref"));
    }

    #[test]
    fn ref_fan_out_is_bounded() {
        let refs: Vec<Value> = (0..10).map(|_| json!({"$ref": "#/$defs/N"})).collect();
        let schema = json!({"$defs": {"N": {"type": "object", "properties": {
            "a": {"anyOf": refs.clone()}, "b": {"anyOf": refs}}}}, "$ref": "#/$defs/N"});
        let out = sanitize_for_gemini(&schema);
        assert!(out.to_string().len() < 4_000_000);
    }

    #[test]
    fn multi_type_becomes_any_of() {
        let out = sanitize_for_gemini(&json!({"type": ["string", "number", "null"], "description": "x"}));
        assert_eq!(
            out,
            json!({"anyOf": [{"type": "string", "description": "x"}, {"type": "number", "description": "x"}], "nullable": true, "description": "x"})
        );
    }
}

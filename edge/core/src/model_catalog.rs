//! Model lists for `GET /v1/models` (OpenAI and Anthropic SDKs) and
//! `GET /v1beta/models` (Gemini SDKs): the routed models a key may use.

use crate::key_record::KeyRecord;
use crate::routing::RoutingTable;
use serde_json::{json, Value};

/// Fixed creation time shown for every model (the gateway does not know when
/// a provider created a model).
pub const MODEL_CREATED: i64 = 1_700_000_000;

/// One list both OpenAI (`object`, `created`, `owned_by`) and Anthropic
/// (`type`, `display_name`, `created_at`, `has_more`) clients accept.
pub fn models_list(table: &RoutingTable, key: &KeyRecord) -> Value {
    let data: Vec<Value> = table
        .models()
        .filter(|m| key.can_see_model(&m.name))
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": m.owned_by.clone().unwrap_or_else(|| "edgeway".into()),
                "type": "model",
                "display_name": m.name,
                "created_at": "2023-11-14T22:13:20Z",
            })
        })
        .collect();
    let first = data.first().and_then(|m| m.get("id").cloned()).unwrap_or(Value::Null);
    let last = data.last().and_then(|m| m.get("id").cloned()).unwrap_or(Value::Null);
    json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})
}

/// Gemini's `models.list` shape.
pub fn gemini_models_list(table: &RoutingTable, key: &KeyRecord) -> Value {
    let models: Vec<Value> = table
        .models()
        .filter(|m| key.can_see_model(&m.name))
        .map(|m| {
            json!({
                "name": format!("models/{}", m.name),
                "displayName": m.name,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            })
        })
        .collect();
    json!({ "models": models })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingConfig;

    fn table() -> RoutingTable {
        let config: RoutingConfig = serde_json::from_str(
            r#"{"channels":[{"id":"m","provider":"mock"}],
                "models":[{"name":"a","targets":[{"channel":"m"}]},{"name":"b","owned_by":"acme","targets":[{"channel":"m"}]}]}"#,
        )
        .unwrap();
        RoutingTable::new(config).unwrap()
    }

    #[test]
    fn lists_respect_the_allowlist() {
        let mut key: KeyRecord = serde_json::from_str(r#"{"digest":"00"}"#).unwrap();
        let all = models_list(&table(), &key);
        assert_eq!(all["data"].as_array().unwrap().len(), 2);
        assert_eq!(all["data"][1]["owned_by"], "acme");
        assert_eq!(all["first_id"], "a");
        key.allowed_models = Some(vec!["b".into()]);
        let some = models_list(&table(), &key);
        assert_eq!(some["data"].as_array().unwrap().len(), 1);
        let gemini = gemini_models_list(&table(), &key);
        assert_eq!(gemini["models"][0]["name"], "models/b");
    }
}

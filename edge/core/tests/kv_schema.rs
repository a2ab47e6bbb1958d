//! Every example in `kv-schema/examples` deserializes into the type the worker
//! reads, and every schema lists exactly the fields of its Rust type.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::key_record::KeyRecord;
use edgeway_core::routing::{RoutingConfig, RoutingTable};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn kv_schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kv-schema")
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn every_example_deserializes() {
    let mut seen = 0;
    for entry in std::fs::read_dir(kv_schema_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let value = read_json(&path);
        if name.starts_with("key_record.") {
            let record: KeyRecord = serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(edgeway_core::api_key::is_valid_digest(&record.digest), "{name}");
        } else if name.starts_with("routing.") {
            let config: RoutingConfig =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
            RoutingTable::new(config).unwrap_or_else(|e| panic!("{name}: {}", e.0));
        } else {
            panic!("example {name} matches no schema");
        }
        seen += 1;
    }
    assert!(seen >= 3);
}

#[test]
fn key_record_schema_matches_the_type() {
    let schema = read_json(&kv_schema_dir().join("key_record.schema.json"));
    let full = read_json(&kv_schema_dir().join("examples/key_record.full.json"));
    let record: KeyRecord = serde_json::from_value(full).unwrap();
    let serialized = serde_json::to_value(&record).unwrap();
    assert_eq!(keys(&schema["properties"]), keys(&serialized));
}

#[test]
fn routing_schema_matches_the_types() {
    let schema = read_json(&kv_schema_dir().join("routing.schema.json"));
    let demo = read_json(&kv_schema_dir().join("examples/routing.demo.json"));
    let config: RoutingConfig = serde_json::from_value(demo).unwrap();
    let v = serde_json::to_value(&config).unwrap();
    assert_eq!(keys(&schema["properties"]), keys(&v));
    assert_eq!(keys(&schema["$defs"]["channel"]["properties"]), keys(&v["channels"][0]));
    assert_eq!(keys(&schema["$defs"]["model"]["properties"]), keys(&v["models"][0]));
    assert_eq!(keys(&schema["$defs"]["group"]["properties"]), keys(&v["groups"][0]));
    assert_eq!(
        keys(&schema["$defs"]["model"]["properties"]["price"]["properties"]),
        keys(&v["models"][0]["price"])
    );
    assert_eq!(
        keys(&schema["$defs"]["model"]["properties"]["targets"]["items"]["properties"]),
        keys(&v["models"][0]["targets"][0])
    );
    // Every option set (an absent `cache` is not serialized).
    let cache = edgeway_core::response_cache::CacheOption {
        ttl_secs: 60,
        billing: edgeway_core::response_cache::CacheBilling::Free,
    };
    let options = edgeway_core::routing::ModelOptions {
        cache: Some(cache),
        fallbacks: vec!["m2".into()],
        ..Default::default()
    };
    let options = serde_json::to_value(options).unwrap();
    let schema_options = &schema["$defs"]["model"]["properties"]["options"]["properties"];
    assert_eq!(keys(schema_options), keys(&options));
    assert_eq!(keys(&schema_options["cache"]["properties"]), keys(&options["cache"]));
}

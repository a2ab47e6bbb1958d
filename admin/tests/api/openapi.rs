use crate::common::TestApp;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// The router is the truth: every path it serves, probed with every method,
/// answers 405 exactly for the methods the OpenAPI document does not list.
#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let app = TestApp::sqlite().await;
    let doc: Value = serde_json::from_str(edgeway_admin::OPENAPI_JSON).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented_paths: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let routed_paths: BTreeSet<String> = edgeway_admin::route_paths().into_iter().map(String::from).collect();
    assert_eq!(routed_paths, documented_paths, "router paths and OpenAPI paths differ");

    for path in &routed_paths {
        let item = &doc["paths"][path];
        let concrete = path.replace("{id}", "probe");
        for method in METHODS {
            let documented = item.get(method.as_str().to_ascii_lowercase()).is_some();
            let (status, _) = app.call(method.clone(), &concrete, Some(json!({}))).await;
            let served = status != StatusCode::METHOD_NOT_ALLOWED;
            assert_eq!(
                served, documented,
                "{method} {path}: served={served} ({status}), documented={documented}"
            );
            if documented {
                let op = &item[method.as_str().to_ascii_lowercase()];
                assert!(op["summary"].is_string(), "{method} {path} needs a summary");
                assert!(op["responses"].is_object(), "{method} {path} needs responses");
            }
        }
    }
}

#[tokio::test]
async fn openapi_references_resolve() {
    let doc: Value = serde_json::from_str(edgeway_admin::OPENAPI_JSON).unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_string());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

//! The per-key conversation store (`ConversationStore`, one Durable Object
//! per key digest): the signature vault's kept reasoning and stored
//! Responses. Its rules are `edgeway_core::conversation_store::StoreIndex`
//! (TTL, size bounds, eviction); this file loads the index, performs the
//! storage reads and writes each call reports, and purges expired entries
//! by alarm.
//!
//! **Key design decision:** the index (name → expiry, size) lives in memory,
//! the data only in storage (`m:<name>` meta, `d:<name>` data, JSON text), so
//! a key with many stored conversations costs memory per entry name, not per
//! byte. Every call decides on the index synchronously and then writes, so
//! concurrent calls cannot interleave inside a decision. Why a Durable Object
//! and not KV: see the core module.

use crate::runtime::now_ms;
use edgeway_core::conversation_store::{
    DeleteRequest, EntryMeta, GetReply, GetRequest, PutRequest, StoreIndex, StoreWrites, MAX_ENTRY_BYTES,
    MAX_NAMES_PER_CALL,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::js_sys::{Array, Object, Reflect};
use worker::wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Method, Request, Response, Result, ScheduledTime, State};

const META_PREFIX: &str = "m:";
const DATA_PREFIX: &str = "d:";
/// Most keys per storage call.
const STORAGE_BATCH: usize = 128;
/// Largest body the object accepts (a put of a few entries).
const MAX_OBJECT_BODY: usize = 4 * MAX_ENTRY_BYTES;

struct Inner {
    state: State,
    index: RefCell<Option<StoreIndex>>,
    alarm_at: Cell<Option<i64>>,
}

#[durable_object]
pub struct ConversationStore {
    inner: Rc<Inner>,
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(status))
}

impl Inner {
    fn with_index<T>(&self, f: impl FnOnce(&mut StoreIndex) -> T) -> Option<T> {
        self.index.borrow_mut().as_mut().map(f)
    }

    async fn persist(&self, writes: StoreWrites) -> Result<()> {
        let storage = self.state.storage();
        let mut values: Vec<(String, String)> = Vec::with_capacity(writes.put.len() * 2);
        for (name, meta, data) in writes.put {
            values.push((format!("{META_PREFIX}{name}"), serde_json::to_string(&meta)?));
            values.push((format!("{DATA_PREFIX}{name}"), data));
        }
        for chunk in values.chunks(STORAGE_BATCH) {
            let object = Object::new();
            for (key, value) in chunk {
                Reflect::set(&object, &JsValue::from_str(key), &JsValue::from_str(value))?;
            }
            storage.put_multiple_raw(object).await?;
        }
        let deletes: Vec<String> = writes
            .delete
            .iter()
            .flat_map(|n| [format!("{META_PREFIX}{n}"), format!("{DATA_PREFIX}{n}")])
            .collect();
        for chunk in deletes.chunks(STORAGE_BATCH) {
            storage.delete_multiple(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// The alarm fires when the next entry expires (never moved later).
    async fn schedule(&self) -> Result<()> {
        let Some(next) = self.with_index(|i| i.next_expiry()).flatten() else { return Ok(()) };
        if self.alarm_at.get().is_some_and(|at| at <= next) {
            return Ok(());
        }
        self.alarm_at.set(Some(next));
        let date = worker::js_sys::Date::new(&JsValue::from_f64(next as f64));
        self.state.storage().set_alarm(ScheduledTime::new(date)).await
    }
}

impl ConversationStore {
    async fn route(&self, mut req: Request) -> Result<Response> {
        let inner = &self.inner;
        if inner.index.borrow().is_none() {
            return json_error(503, "conversation store not loaded");
        }
        if req.method() != Method::Post {
            return json_error(405, "POST only");
        }
        let body = req.bytes().await?;
        if body.len() > MAX_OBJECT_BODY {
            return json_error(413, "body too large");
        }
        match req.path().as_str() {
            "/get" => {
                let Ok(get) = serde_json::from_slice::<GetRequest>(&body) else {
                    return json_error(400, "invalid get");
                };
                let names: Vec<String> = get.names.into_iter().take(MAX_NAMES_PER_CALL).collect();
                let live: Vec<String> = inner
                    .with_index(|i| i.live(&names, get.now_ms).into_iter().map(str::to_string).collect())
                    .unwrap_or_default();
                let mut reply = GetReply::default();
                if !live.is_empty() {
                    let keys: Vec<String> = live.iter().map(|n| format!("{DATA_PREFIX}{n}")).collect();
                    let map = inner.state.storage().get_multiple(keys).await?;
                    for name in live {
                        let value = map.get(&JsValue::from_str(&format!("{DATA_PREFIX}{name}")));
                        if let Some(text) = value.as_string() {
                            reply.found.insert(name, text);
                        }
                    }
                }
                Response::from_json(&reply)
            }
            "/put" => {
                let Ok(put) = serde_json::from_slice::<PutRequest>(&body) else {
                    return json_error(400, "invalid put");
                };
                let Some((reply, writes)) = inner.with_index(|i| i.put(put.entries, put.now_ms)) else {
                    return json_error(503, "conversation store not loaded");
                };
                inner.persist(writes).await?;
                inner.schedule().await?;
                Response::from_json(&reply)
            }
            "/delete" => {
                let Ok(delete) = serde_json::from_slice::<DeleteRequest>(&body) else {
                    return json_error(400, "invalid delete");
                };
                let Some((reply, writes)) = inner.with_index(|i| i.delete(&delete.names, delete.now_ms))
                else {
                    return json_error(503, "conversation store not loaded");
                };
                inner.persist(writes).await?;
                Response::from_json(&reply)
            }
            _ => json_error(404, "not found"),
        }
    }
}

impl DurableObject for ConversationStore {
    fn new(state: State, _env: Env) -> Self {
        let inner = Rc::new(Inner { state, index: RefCell::new(None), alarm_at: Cell::new(None) });
        let loader = inner.clone();
        let storage = inner.state.storage();
        let _loading = inner.state.block_concurrency_while(async move {
            let listed = storage.list_with_options(worker::ListOptions::new().prefix(META_PREFIX)).await?;
            let mut metas = Vec::new();
            for entry in listed.entries() {
                let Ok(pair) = entry else { continue };
                let pair = Array::from(&pair);
                let key = pair.get(0).as_string().unwrap_or_default();
                let Some(name) = key.strip_prefix(META_PREFIX) else { continue };
                let Some(text) = pair.get(1).as_string() else { continue };
                match serde_json::from_str::<EntryMeta>(&text) {
                    Ok(meta) => metas.push((name.to_string(), meta)),
                    Err(e) => worker::console_error!("conversation store: unreadable meta {key}: {e}"),
                }
            }
            *loader.index.borrow_mut() = Some(StoreIndex::from_stored(metas));
            loader.alarm_at.set(storage.get_alarm().await?);
            Ok(())
        });
        Self { inner }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.route(req).await
    }

    async fn alarm(&self) -> Result<Response> {
        let inner = &self.inner;
        inner.alarm_at.set(None);
        let now = now_ms();
        if let Some(writes) = inner.with_index(|i| i.purge(now)) {
            inner.persist(writes).await?;
        }
        inner.schedule().await?;
        Response::ok("purged")
    }
}

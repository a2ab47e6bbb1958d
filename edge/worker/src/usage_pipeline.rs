//! Usage events: published to the Queue by the request, consumed in batches
//! into D1. Every insert is idempotent on `request_id`, so the Queue's
//! at-least-once delivery never bills a request twice.

use crate::bindings;
use edgeway_core::usage::UsageEvent;
use wasm_bindgen::JsValue;
use worker::{D1PreparedStatement, Env, MessageBatch, MessageExt};

/// Sends one event to the usage queue; failure is logged with the request id.
pub async fn publish(env: &Env, event: &UsageEvent) {
    let queue = match env.queue(bindings::USAGE_QUEUE) {
        Ok(queue) => queue,
        Err(e) => {
            worker::console_error!("usage queue binding missing: {e}");
            return;
        }
    };
    if let Err(e) = queue.send(event).await {
        worker::console_error!("usage event {} not queued: {e}", event.request_id);
    }
}

const INSERT_USAGE: &str = "INSERT INTO usage_events (request_id, key_digest, owner, model, upstream_model, channel, provider, \
     input_uncached_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, \
     cost_micros, status, outcome, usage_source, stream, latency_ms, ttft_ms, created_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
     ON CONFLICT(request_id) DO NOTHING";

fn num(n: impl Into<f64>) -> JsValue {
    JsValue::from_f64(n.into())
}

fn enum_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn insert_statement(db: &worker::D1Database, e: &UsageEvent) -> worker::Result<D1PreparedStatement> {
    let u = &e.usage;
    db.prepare(INSERT_USAGE).bind(&[
        e.request_id.as_str().into(),
        e.key_digest.as_str().into(),
        e.owner.as_str().into(),
        e.model.as_str().into(),
        e.upstream_model.as_str().into(),
        e.channel.as_str().into(),
        e.provider.as_str().into(),
        num(u.input_uncached as f64),
        num(u.cache_read as f64),
        num(u.cache_write_5m as f64),
        num(u.cache_write_1h as f64),
        num(u.output as f64),
        num(u.reasoning as f64),
        num(e.cost_micros as f64),
        num(e.status),
        enum_text(&e.outcome).into(),
        enum_text(&e.usage_source).into(),
        num(u8::from(e.stream)),
        num(e.latency_ms as f64),
        e.ttft_ms.map_or(JsValue::NULL, |t| num(t as f64)),
        num(e.created_at_ms as f64),
    ])
}

/// Queue consumer: one D1 transaction per batch. Malformed messages are
/// acknowledged and logged (retrying cannot fix them); a D1 failure retries
/// the whole batch, which the idempotent insert makes safe.
pub async fn consume(batch: MessageBatch<serde_json::Value>, env: &Env) -> worker::Result<()> {
    let db = env.d1(bindings::USAGE_DB)?;
    let mut statements = Vec::new();
    for message in batch.messages()? {
        match serde_json::from_value::<UsageEvent>(message.body().clone()) {
            Ok(event) => statements.push(insert_statement(&db, &event)?),
            Err(e) => worker::console_error!("dropping malformed usage message {}: {e}", message.id()),
        }
    }
    if statements.is_empty() {
        batch.ack_all();
        return Ok(());
    }
    match db.batch(statements).await {
        Ok(_) => batch.ack_all(),
        Err(e) => {
            worker::console_error!("usage batch not written to D1, retrying: {e}");
            batch.retry_all();
        }
    }
    Ok(())
}

//! The usage pipeline after the key's Durable Object: the queue consumer that
//! writes each usage event to D1 and then to the admin's ledger, and the
//! dead-letter consumer that keeps whatever could not be delivered.
//!
//! **Key design decision: commit, then ack.** A batch is acknowledged only
//! after D1 (one transaction, `ON CONFLICT(request_id) DO NOTHING`) and, when
//! `ADMIN_INGEST_URL` is set, the admin (`POST /internal/usage`, HMAC-signed,
//! idempotent on request id) have both taken it. Any failure retries the
//! whole batch after `USAGE_RETRY_DELAY_SECS`; redelivery is harmless because
//! both stores ignore a request id they already hold. After the consumer's
//! `max_retries` the queue moves the messages to `edgeway-usage-dlq`, whose
//! consumer (this same worker) records them in D1 `usage_dead_letters`, so
//! nothing vanishes: `POST /internal/usage/dead-letters/replay` puts them back
//! on the queue once the admin is reachable again.

use crate::bindings;
use crate::runtime::now_ms;
use edgeway_core::internal_auth::{signed_headers, SignedParts};
use edgeway_core::usage::UsageEvent;
use edgeway_core::usage_row::{encode_attempts, insert_sql, usage_row, Placeholder, UsageValue};
use futures_util::future::{select, Either};
use serde::Deserialize;
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{
    AbortController, D1Database, D1PreparedStatement, Delay, Env, Fetch, Headers, MessageBatch, MessageExt,
    Method, QueueRetryOptionsBuilder, Request, RequestInit,
};

/// Path the admin verifies usage ingest signatures against.
pub const ADMIN_INGEST_PATH: &str = "/internal/usage";
/// Default delay before a failed batch is delivered again.
const DEFAULT_RETRY_DELAY_SECS: u64 = 30;
/// Time limit of one admin ingest call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events sent to the queue in one call.
const QUEUE_BATCH: usize = 100;

/// Sends events to the usage queue (JSON content type, so an HTTP pull
/// consumer can read them too).
pub async fn requeue(env: &Env, events: &[UsageEvent]) -> worker::Result<usize> {
    let queue = env.queue(bindings::USAGE_QUEUE)?;
    for chunk in events.chunks(QUEUE_BATCH) {
        queue.send_batch(chunk.to_vec()).await?;
    }
    Ok(events.len())
}

const INSERT_DEAD_LETTER: &str =
    "INSERT INTO usage_dead_letters (message_id, request_id, body, reason, received_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(message_id) DO NOTHING";

fn num(n: impl Into<f64>) -> JsValue {
    JsValue::from_f64(n.into())
}

fn insert_statement(db: &D1Database, e: &UsageEvent) -> worker::Result<D1PreparedStatement> {
    // Columns and values are defined once, in edgeway_core::usage_row.
    let values: Vec<JsValue> = usage_row(e)
        .iter()
        .map(|v| match v {
            UsageValue::Text(t) => JsValue::from(*t),
            UsageValue::Int(n) => num(*n as f64),
            UsageValue::NullText | UsageValue::NullInt => JsValue::NULL,
            UsageValue::Attempts(a) => JsValue::from(encode_attempts(a)),
        })
        .collect();
    db.prepare(insert_sql("usage_events", Placeholder::Question, &[])).bind(&values)
}

fn dead_letter_statement(
    db: &D1Database,
    message_id: &str,
    request_id: Option<&str>,
    body: &str,
    reason: &str,
) -> worker::Result<D1PreparedStatement> {
    db.prepare(INSERT_DEAD_LETTER).bind(&[
        message_id.into(),
        request_id.map_or(JsValue::NULL, JsValue::from),
        body.into(),
        reason.into(),
        num(now_ms() as f64),
    ])
}

fn retry_delay(env: &Env) -> u32 {
    u32::try_from(bindings::number(env, bindings::USAGE_RETRY_DELAY_SECS, DEFAULT_RETRY_DELAY_SECS))
        .unwrap_or(30)
        .min(43_200)
}

fn retry_batch<T>(batch: &MessageBatch<T>, env: &Env) {
    batch.retry_all_with_options(
        &QueueRetryOptionsBuilder::new().with_delay_seconds(retry_delay(env)).build(),
    );
}

/// The queue consumer: the usage queue, or its dead-letter queue.
pub async fn consume(batch: MessageBatch<serde_json::Value>, env: &Env) -> worker::Result<()> {
    if batch.queue().ends_with("-dlq") {
        consume_dead_letters(batch, env).await
    } else {
        consume_usage(batch, env).await
    }
}

/// Why the admin did not take a batch.
enum AdminRefusal {
    /// Down, timed out, 5xx, 408 or 429: retry later.
    Transient(String),
    /// Any other 4xx: retrying cannot help.
    Permanent(u16),
}

async fn consume_usage(batch: MessageBatch<serde_json::Value>, env: &Env) -> worker::Result<()> {
    let db = env.d1(bindings::USAGE_DB)?;
    let mut events = Vec::new();
    let mut statements = Vec::new();
    for message in batch.messages()? {
        match serde_json::from_value::<UsageEvent>(message.body().clone()) {
            Ok(event) => {
                statements.push(insert_statement(&db, &event)?);
                events.push((message.id(), event));
            }
            Err(e) => {
                // Retrying cannot fix it; keep it where an operator can see it.
                worker::console_error!("malformed usage message {}: {e}", message.id());
                let body = message.body().to_string();
                statements.push(dead_letter_statement(&db, &message.id(), None, &body, "malformed")?);
            }
        }
    }
    if !statements.is_empty() {
        if let Err(e) = db.batch(statements).await {
            worker::console_error!("usage batch not written to D1, retrying: {e}");
            retry_batch(&batch, env);
            return Ok(());
        }
    }
    if events.is_empty() {
        batch.ack_all();
        return Ok(());
    }
    let (message_ids, events): (Vec<String>, Vec<UsageEvent>) = events.into_iter().unzip();
    match post_to_admin(env, &events).await {
        Ok(()) => batch.ack_all(),
        Err(AdminRefusal::Transient(reason)) => {
            worker::console_warn!(
                "admin ingest unavailable ({reason}); {} event(s) retried later",
                events.len()
            );
            retry_batch(&batch, env);
        }
        Err(AdminRefusal::Permanent(status)) => {
            worker::console_error!("admin ingest refused a batch with HTTP {status}; kept as dead letters");
            let mut statements = Vec::new();
            let reason = format!("admin answered {status}");
            for (message_id, event) in message_ids.iter().zip(events.iter()) {
                let body = serde_json::to_string(event)?;
                statements.push(dead_letter_statement(
                    &db,
                    message_id,
                    Some(&event.request_id),
                    &body,
                    &reason,
                )?);
            }
            match db.batch(statements).await {
                Ok(_) => batch.ack_all(),
                Err(e) => {
                    worker::console_error!("dead letters not written, retrying: {e}");
                    retry_batch(&batch, env);
                }
            }
        }
    }
    Ok(())
}

/// The admin ingest URL: `ADMIN_INGEST_URL` as given when it ends with the
/// ingest path, else the admin's base URL with the path appended.
fn admin_ingest_url(env: &Env) -> Option<String> {
    let base = bindings::text(env, bindings::ADMIN_INGEST_URL)?;
    let base = base.trim().trim_end_matches('/');
    if base.ends_with(ADMIN_INGEST_PATH) {
        Some(base.to_string())
    } else {
        Some(format!("{base}{ADMIN_INGEST_PATH}"))
    }
}

/// `POST /internal/usage` to the admin, signed like the admin's pushes.
/// Without `ADMIN_INGEST_URL` there is nothing to do.
async fn post_to_admin(env: &Env, events: &[UsageEvent]) -> Result<(), AdminRefusal> {
    let Some(url) = admin_ingest_url(env) else { return Ok(()) };
    let Some(secret) = bindings::text(env, bindings::EDGE_ADMIN_SECRET) else {
        return Err(AdminRefusal::Transient("EDGE_ADMIN_SECRET is not set".into()));
    };
    let body = serde_json::to_vec(&serde_json::json!({ "events": events }))
        .map_err(|e| AdminRefusal::Transient(format!("serialize: {e}")))?;
    let nonce = crate::runtime::random_uuid().replace('-', "");
    let parts = SignedParts {
        method: "POST",
        path: ADMIN_INGEST_PATH,
        query: "",
        timestamp: now_ms() / 1000,
        nonce: &nonce,
        body: &body,
    };
    let signed = signed_headers(&secret, &parts);
    let headers = Headers::new();
    let build = || -> worker::Result<Request> {
        headers.set("content-type", "application/json")?;
        for (name, value) in &signed {
            headers.set(name, value)?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers.clone())
            .with_body(Some(worker::js_sys::Uint8Array::from(body.as_slice()).into()));
        Request::new_with_init(&url, &init)
    };
    let request = build().map_err(|e| AdminRefusal::Transient(format!("request: {e}")))?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let send = Box::pin(fetch.send_with_signal(&signal));
    let timer = Box::pin(Delay::from(ADMIN_TIMEOUT));
    let raced = select(send, timer).await;
    let outcome = match raced {
        Either::Left((Ok(response), _)) => {
            let status = response.status_code();
            match status {
                200..=299 => Ok(()),
                408 | 429 => Err(AdminRefusal::Transient(format!("HTTP {status}"))),
                400..=499 => Err(AdminRefusal::Permanent(status)),
                _ => Err(AdminRefusal::Transient(format!("HTTP {status}"))),
            }
        }
        Either::Left((Err(e), _)) => Err(AdminRefusal::Transient(format!("unreachable: {e}"))),
        Either::Right(((), _)) => {
            controller.abort();
            Err(AdminRefusal::Transient("timed out".into()))
        }
    };
    outcome
}

/// Dead-letter consumer: keeps every message in `usage_dead_letters` (and its
/// event in `usage_events`, idempotently) and acknowledges it.
async fn consume_dead_letters(batch: MessageBatch<serde_json::Value>, env: &Env) -> worker::Result<()> {
    let db = env.d1(bindings::USAGE_DB)?;
    let mut statements = Vec::new();
    for message in batch.messages()? {
        let body = message.body().to_string();
        let event = serde_json::from_value::<UsageEvent>(message.body().clone()).ok();
        if let Some(event) = &event {
            statements.push(insert_statement(&db, event)?);
        }
        let request_id = event.as_ref().map(|e| e.request_id.as_str());
        worker::console_error!(
            "usage message {} reached the dead-letter queue (request {})",
            message.id(),
            request_id.unwrap_or("unreadable")
        );
        statements.push(dead_letter_statement(&db, &message.id(), request_id, &body, "retries exhausted")?);
    }
    if statements.is_empty() {
        batch.ack_all();
        return Ok(());
    }
    match db.batch(statements).await {
        Ok(_) => batch.ack_all(),
        Err(e) => {
            worker::console_error!("dead letters not written to D1, retrying: {e}");
            retry_batch(&batch, env);
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Totals {
    rows: Option<f64>,
    cost_micros: Option<f64>,
}

#[derive(Deserialize)]
struct DeadTotals {
    rows: Option<f64>,
    pending: Option<f64>,
}

#[derive(Deserialize)]
struct DeadLetterRow {
    message_id: String,
    body: String,
}

/// Usage rows in D1, for `GET /internal/usage/stats`: totals of one key (or
/// of all keys when `key_digest` is empty), up to `limit` rows newest first,
/// and the dead-letter counts.
pub async fn stats(env: &Env, key_digest: &str, limit: u32) -> worker::Result<serde_json::Value> {
    let db = env.d1(bindings::USAGE_DB)?;
    let totals: Option<Totals> = db
        .prepare(
            "SELECT COUNT(*) AS rows, COALESCE(SUM(cost_micros), 0) AS cost_micros FROM usage_events \
             WHERE (?1 = '' OR key_digest = ?1)",
        )
        .bind(&[key_digest.into()])?
        .first(None)
        .await?;
    let rows = db
        .prepare(
            "SELECT request_id, cost_micros, input_uncached_tokens, cache_read_tokens, output_tokens, status, \
             outcome, usage_source, channel, model, served_model, attempts FROM usage_events WHERE (?1 = '' OR key_digest = ?1) \
             ORDER BY created_at_ms DESC, request_id LIMIT ?2",
        )
        .bind(&[key_digest.into(), num(limit)])?
        .all()
        .await?
        .results::<serde_json::Value>()?;
    let dead: Option<DeadTotals> = db
        .prepare(
            "SELECT COUNT(*) AS rows, COALESCE(SUM(CASE WHEN replayed_at_ms IS NULL THEN 1 ELSE 0 END), 0) \
             AS pending FROM usage_dead_letters",
        )
        .first(None)
        .await?;
    let totals = totals.unwrap_or(Totals { rows: None, cost_micros: None });
    let dead = dead.unwrap_or(DeadTotals { rows: None, pending: None });
    Ok(serde_json::json!({
        "rows": totals.rows.unwrap_or(0.0) as i64,
        "cost_micros": totals.cost_micros.unwrap_or(0.0) as i64,
        "events": rows,
        "dead_letters": dead.rows.unwrap_or(0.0) as i64,
        "dead_letters_pending": dead.pending.unwrap_or(0.0) as i64,
    }))
}

/// Dead letters not yet replayed, oldest first.
pub async fn dead_letters(env: &Env, limit: u32) -> worker::Result<serde_json::Value> {
    let db = env.d1(bindings::USAGE_DB)?;
    let rows = db
        .prepare(
            "SELECT message_id, request_id, reason, received_at_ms, replayed_at_ms FROM usage_dead_letters \
             ORDER BY received_at_ms, message_id LIMIT ?1",
        )
        .bind(&[num(limit)])?
        .all()
        .await?
        .results::<serde_json::Value>()?;
    Ok(serde_json::json!({ "data": rows }))
}

/// Puts up to `limit` unreplayed dead letters back on the usage queue and
/// marks them replayed. Unreadable ones stay for a person to look at.
pub async fn replay_dead_letters(env: &Env, limit: u32) -> worker::Result<serde_json::Value> {
    let db = env.d1(bindings::USAGE_DB)?;
    let rows = db
        .prepare(
            "SELECT message_id, body FROM usage_dead_letters WHERE replayed_at_ms IS NULL \
             AND request_id IS NOT NULL ORDER BY received_at_ms, message_id LIMIT ?1",
        )
        .bind(&[num(limit)])?
        .all()
        .await?
        .results::<DeadLetterRow>()?;
    let mut events = Vec::new();
    let mut ids = Vec::new();
    for row in rows {
        if let Ok(event) = serde_json::from_str::<UsageEvent>(&row.body) {
            events.push(event);
            ids.push(row.message_id);
        }
    }
    let replayed = requeue(env, &events).await?;
    let now = num(now_ms() as f64);
    let mut statements = Vec::new();
    for id in &ids {
        statements.push(
            db.prepare("UPDATE usage_dead_letters SET replayed_at_ms = ?1 WHERE message_id = ?2")
                .bind(&[now.clone(), id.as_str().into()])?,
        );
    }
    if !statements.is_empty() {
        db.batch(statements).await?;
    }
    Ok(serde_json::json!({ "replayed": replayed }))
}

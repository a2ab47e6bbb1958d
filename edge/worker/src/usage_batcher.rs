//! Per-isolate batching of usage events for requests that skipped admission:
//! events gathered over a few milliseconds go to the usage queue in one
//! `sendBatch` call instead of one call each. The request whose event opens a
//! batch holds the flush in its `waitUntil`, so no event waits on a timer that
//! nothing keeps alive. Delivery stays at-least-once and every store is
//! idempotent on the request id.

use crate::usage_pipeline;
use edgeway_core::usage::UsageEvent;
use std::cell::{Cell, RefCell};
use std::time::Duration;
use worker::{Delay, Env};

/// How long a batch stays open, ms.
const BATCH_WINDOW_MS: u64 = 20;
/// A batch is sent at once when it reaches this size (the queue's batch limit).
const MAX_BATCH: usize = 100;

thread_local! {
    static PENDING: RefCell<Vec<UsageEvent>> = const { RefCell::new(Vec::new()) };
    static FLUSH_OPEN: Cell<bool> = const { Cell::new(false) };
}

/// Adds an event to the open batch, or opens one and flushes it after the window.
pub async fn publish(env: &Env, event: UsageEvent) {
    let full = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.push(event);
        p.len() >= MAX_BATCH
    });
    if full {
        flush(env).await;
        return;
    }
    if FLUSH_OPEN.with(|f| f.replace(true)) {
        return; // another request's waitUntil will send it
    }
    Delay::from(Duration::from_millis(BATCH_WINDOW_MS)).await;
    FLUSH_OPEN.with(|f| f.set(false));
    flush(env).await;
}

async fn flush(env: &Env) {
    let batch = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if batch.is_empty() {
        return;
    }
    if let Err(e) = usage_pipeline::requeue(env, &batch).await {
        worker::console_error!("usage batch of {} not queued, sending one by one: {e}", batch.len());
        for event in &batch {
            usage_pipeline::publish(env, event).await;
        }
    }
}

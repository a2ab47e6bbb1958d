//! The usage outbox: settled events kept until the queue accepts them,
//! published in batches with back-off.

use super::{KeyAccountState, RequestRecord, Writes, OUTBOX_MAX_BACKOFF_MS};
use crate::usage::UsageEvent;

impl KeyAccountState {
    /// Up to `max` outbox events to publish now, or none while backing off.
    pub fn outbox_batch(&self, now_ms: i64, max: usize) -> Vec<UsageEvent> {
        if self.outbox_next_attempt_ms.is_some_and(|at| at > now_ms) {
            return Vec::new();
        }
        self.outbox.values().take(max).cloned().collect()
    }

    /// The queue accepted these events: out of the outbox, remembered as settled.
    pub fn mark_published(&mut self, request_ids: &[String], now_ms: i64) -> Writes {
        let mut writes = Writes::default();
        for id in request_ids {
            if self.outbox.remove(id).is_some() {
                self.remember_settled(id.clone(), now_ms);
                writes.put.push((id.clone(), RequestRecord::Settled { at_ms: now_ms, pending: None }));
                self.core.counters.events_published += 1;
            }
        }
        if !writes.put.is_empty() {
            writes.core = true;
        }
        self.outbox_failures = 0;
        self.outbox_next_attempt_ms = None;
        writes
    }

    /// The queue refused a batch: back off (1 s, 2 s, 4 s, … up to a minute).
    pub fn publish_failed(&mut self, now_ms: i64) -> i64 {
        self.outbox_failures = self.outbox_failures.saturating_add(1);
        self.core.counters.publish_failures += 1;
        let exponent = self.outbox_failures.saturating_sub(1).min(16);
        let backoff = 1000i64.saturating_mul(1 << exponent).min(OUTBOX_MAX_BACKOFF_MS);
        let at = now_ms.saturating_add(backoff);
        self.outbox_next_attempt_ms = Some(at);
        at
    }
}

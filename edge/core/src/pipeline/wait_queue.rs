//! Waiting instead of refusing: requests of a key over its concurrency
//! limit, when the key sets `max_wait_ms`, wait for a slot in arrival order.
//!
//! The queue is per isolate and per key: only its head may take a slot that
//! frees, so a request that came later cannot overtake one that waits.
//! Waiters poll (every [`WAIT_POLL_MS`]); one that has not polled for
//! [`WAITER_TTL_MS`] is gone (its client disconnected and its request was
//! cancelled) and leaves the queue, so it blocks no one. Across isolates the
//! key's account decides as for any request: the first isolate to renew gets
//! the slot.

use std::collections::{HashMap, VecDeque};

/// How often a waiting request asks again for a slot.
pub const WAIT_POLL_MS: u64 = 20;
/// A waiter not seen for this long has left.
pub const WAITER_TTL_MS: i64 = 250;
/// The longest wait a key may set.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Per key digest: (request id, last poll), in arrival order.
    keys: HashMap<String, VecDeque<(String, i64)>>,
}

impl WaitQueue {
    /// Puts `request_id` at the back of `digest`'s queue (once), or notes
    /// that it is still waiting. Returns whether it is at the head now (the
    /// waiters ahead of it that stopped polling are dropped first).
    pub fn poll(&mut self, digest: &str, request_id: &str, now_ms: i64) -> bool {
        let queue = self.keys.entry(digest.to_string()).or_default();
        match queue.iter_mut().find(|(id, _)| id == request_id) {
            Some(entry) => entry.1 = now_ms,
            None => queue.push_back((request_id.to_string(), now_ms)),
        }
        while queue.front().is_some_and(|(id, seen)| id != request_id && now_ms - seen > WAITER_TTL_MS) {
            queue.pop_front();
        }
        queue.front().is_some_and(|(id, _)| id == request_id)
    }

    /// `request_id` stops waiting (admitted, refused or failed).
    pub fn leave(&mut self, digest: &str, request_id: &str) {
        if let Some(queue) = self.keys.get_mut(digest) {
            queue.retain(|(id, _)| id != request_id);
            if queue.is_empty() {
                self.keys.remove(digest);
            }
        }
    }

    /// Requests waiting for `digest`.
    pub fn waiting(&self, digest: &str) -> usize {
        self.keys.get(digest).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_served_in_arrival_order_and_a_vanished_one_blocks_no_one() {
        let mut q = WaitQueue::default();
        assert!(q.poll("k", "a", 0));
        assert!(!q.poll("k", "b", 1));
        assert!(!q.poll("k", "c", 2));
        assert!(q.poll("other", "x", 2), "each key has its own queue");
        assert!(!q.poll("k", "b", 100), "b waits behind a");
        q.leave("k", "a");
        assert!(q.poll("k", "b", 120), "a admitted: b is next");
        // b's client goes away: it stops polling; c is not blocked for long.
        assert!(!q.poll("k", "c", 200));
        assert!(!q.poll("k", "c", 120 + WAITER_TTL_MS));
        assert!(q.poll("k", "c", 121 + WAITER_TTL_MS), "b dropped once it stopped polling");
        assert_eq!(q.waiting("k"), 1);
        q.leave("k", "c");
        assert_eq!(q.waiting("k"), 0);
    }
}

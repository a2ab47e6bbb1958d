//! Sliding-window counters for requests per minute (RPM) and tokens per
//! minute (TPM), kept by a key's Durable Object. Time is an argument.
//!
//! The window is a ring of [`BUCKETS_PER_WINDOW`] buckets, each
//! `window_ms / BUCKETS_PER_WINDOW` long (one second for a minute). A decision
//! at `now` counts the bucket holding `now` and the `BUCKETS_PER_WINDOW`
//! buckets before it, so it sees every amount added in `(now - window, now]`.
//!
//! **Invariant (what the tests check):** for every window of length
//! `window_ms`, wherever it starts, the amounts accepted inside it sum to at
//! most `limit`. Proof: let `t` be the last acceptance inside the window; every
//! earlier acceptance inside it happened after `t - window`, so it lies in a
//! bucket the decision at `t` counted, and that decision only passed because
//! the counted sum plus its own amount was at most `limit`. The price of this
//! exactness is that an amount keeps counting for up to one bucket longer than
//! the window (61 s instead of 60 s): a slightly early refusal, never an
//! overshoot.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Buckets per window: 60 one-second buckets for a minute.
pub const BUCKETS_PER_WINDOW: i64 = 60;

/// The standard window: one minute.
pub const MINUTE_MS: i64 = 60_000;

/// One sliding window. Only non-empty buckets are stored, oldest first, so an
/// idle key costs nothing and a busy one at most `BUCKETS_PER_WINDOW + 1`
/// pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindow {
    window_ms: i64,
    /// `(bucket index, amount)`, bucket index = `time / bucket_ms`, ascending.
    #[serde(default)]
    buckets: VecDeque<(i64, u64)>,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self::new(MINUTE_MS)
    }
}

impl SlidingWindow {
    /// A window of `window_ms` (at least [`BUCKETS_PER_WINDOW`] ms).
    pub fn new(window_ms: i64) -> Self {
        Self { window_ms: window_ms.max(BUCKETS_PER_WINDOW), buckets: VecDeque::new() }
    }

    /// The window length, ms.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn bucket_ms(&self) -> i64 {
        (self.window_ms / BUCKETS_PER_WINDOW).max(1)
    }

    fn bucket_of(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.bucket_ms())
    }

    /// Oldest bucket index still counted at `now_ms`.
    fn oldest_counted(&self, now_ms: i64) -> i64 {
        self.bucket_of(now_ms) - BUCKETS_PER_WINDOW
    }

    /// Changes the window length (a test or configuration change); amounts
    /// already counted are dropped rather than re-bucketed.
    pub fn set_window_ms(&mut self, window_ms: i64) {
        let window_ms = window_ms.max(BUCKETS_PER_WINDOW);
        if window_ms != self.window_ms {
            *self = Self::new(window_ms);
        }
    }

    /// When the bucket holding `now_ms` ends (the start of the next one).
    pub fn bucket_end_ms(&self, now_ms: i64) -> i64 {
        (self.bucket_of(now_ms) + 1).saturating_mul(self.bucket_ms())
    }

    /// Drops buckets that no longer count at `now_ms`.
    pub fn prune(&mut self, now_ms: i64) {
        let oldest = self.oldest_counted(now_ms);
        while self.buckets.front().is_some_and(|&(index, _)| index < oldest) {
            self.buckets.pop_front();
        }
    }

    /// Sum counted at `now_ms`.
    pub fn used(&self, now_ms: i64) -> u64 {
        let oldest = self.oldest_counted(now_ms);
        self.buckets
            .iter()
            .filter(|&&(index, _)| index >= oldest)
            .fold(0u64, |sum, &(_, n)| sum.saturating_add(n))
    }

    /// Whether `amount` fits under `limit` at `now_ms`; when it does not,
    /// `Err(Some(ms))` is how long until it will (old buckets leaving the
    /// window), `Err(None)` when it never can (`amount > limit`).
    pub fn check(&self, now_ms: i64, amount: u64, limit: u64) -> Result<(), Option<i64>> {
        if amount > limit {
            return Err(None);
        }
        let used = self.used(now_ms);
        if used.saturating_add(amount) <= limit {
            return Ok(());
        }
        // Walk the counted buckets oldest first: bucket `i` stops counting at
        // the start of bucket `i + BUCKETS_PER_WINDOW + 1`.
        let oldest = self.oldest_counted(now_ms);
        let mut remaining = used;
        for &(index, n) in self.buckets.iter().filter(|&&(index, _)| index >= oldest) {
            remaining = remaining.saturating_sub(n);
            if remaining.saturating_add(amount) <= limit {
                let frees_at = (index + BUCKETS_PER_WINDOW + 1).saturating_mul(self.bucket_ms());
                return Err(Some((frees_at - now_ms).max(1)));
            }
        }
        Err(None)
    }

    /// Adds `amount` at `now_ms` unconditionally.
    pub fn add(&mut self, now_ms: i64, amount: u64) {
        self.prune(now_ms);
        if amount == 0 {
            return;
        }
        let index = self.bucket_of(now_ms);
        match self.buckets.back_mut() {
            Some((last, n)) if *last == index => *n = n.saturating_add(amount),
            Some((last, _)) if *last > index => {
                // The clock went back (another machine's clock after a
                // restart): count it in the newest bucket, never lose it.
                if let Some((_, n)) = self.buckets.back_mut() {
                    *n = n.saturating_add(amount);
                }
            }
            _ => self.buckets.push_back((index, amount)),
        }
    }

    /// Checks and, when it fits, adds; the `Err` is as in [`Self::check`].
    pub fn try_add(&mut self, now_ms: i64, amount: u64, limit: Option<u64>) -> Result<(), Option<i64>> {
        self.prune(now_ms);
        if let Some(limit) = limit {
            self.check(now_ms, amount, limit)?;
        }
        self.add(now_ms, amount);
        Ok(())
    }

    /// Replaces `estimated` (added at `at_ms`) with `actual`: used when a
    /// request settles with its real token count. Does nothing once that
    /// bucket has left the window. The bucket may go above the limit when the
    /// estimate was low: the window counts what was really used.
    pub fn adjust(&mut self, now_ms: i64, at_ms: i64, estimated: u64, actual: u64) {
        self.prune(now_ms);
        let index = self.bucket_of(at_ms);
        if index < self.oldest_counted(now_ms) {
            return;
        }
        if let Some(slot) = self.buckets.iter_mut().find(|(i, _)| *i == index) {
            slot.1 = slot.1.saturating_sub(estimated).saturating_add(actual);
        } else if actual > 0 {
            let position = self.buckets.iter().position(|&(i, _)| i > index).unwrap_or(self.buckets.len());
            self.buckets.insert(position, (index, actual));
        }
        self.buckets.retain(|&(_, n)| n > 0);
    }
}

/// Milliseconds as whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(ms: i64) -> u64 {
    u64::try_from(ms.max(1)).unwrap_or(1).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_within_the_window_and_forgets_after_it() {
        let mut w = SlidingWindow::new(MINUTE_MS);
        assert_eq!(w.try_add(0, 1, Some(2)), Ok(()));
        assert_eq!(w.try_add(30_000, 1, Some(2)), Ok(()));
        // Full: the first bucket frees at the start of bucket 61 = 61 s.
        assert_eq!(w.try_add(59_000, 1, Some(2)), Err(Some(2_000)));
        assert_eq!(w.try_add(60_999, 1, Some(2)), Err(Some(1)));
        assert_eq!(w.try_add(61_000, 1, Some(2)), Ok(()));
        assert_eq!(w.used(61_000), 2);
    }

    #[test]
    fn amounts_larger_than_the_limit_never_pass() {
        let mut w = SlidingWindow::new(MINUTE_MS);
        assert_eq!(w.try_add(0, 11, Some(10)), Err(None));
        assert_eq!(w.try_add(0, 10, Some(10)), Ok(()));
        assert_eq!(w.try_add(0, 1, None), Ok(()), "no limit: counted, never refused");
        assert_eq!(w.used(0), 11);
    }

    #[test]
    fn adjust_replaces_an_estimate() {
        let mut w = SlidingWindow::new(MINUTE_MS);
        w.add(1_000, 100);
        w.add(5_000, 50);
        w.adjust(6_000, 1_000, 100, 30);
        assert_eq!(w.used(6_000), 80);
        w.adjust(6_000, 5_000, 50, 0);
        assert_eq!(w.used(6_000), 30);
        // A bucket that already left the window is not touched.
        w.adjust(200_000, 1_000, 30, 999);
        assert_eq!(w.used(200_000), 0);
        // An estimate of zero in a bucket that has nothing else is inserted in order.
        let mut w = SlidingWindow::new(MINUTE_MS);
        w.add(3_000, 1);
        w.adjust(3_500, 1_000, 0, 5);
        assert_eq!(w.used(3_500), 6);
    }

    #[test]
    fn clock_going_back_is_still_counted() {
        let mut w = SlidingWindow::new(MINUTE_MS);
        w.add(10_000, 1);
        w.add(9_000, 1);
        assert_eq!(w.used(10_000), 2);
    }

    #[test]
    fn serde_round_trip_is_small() {
        let mut w = SlidingWindow::new(MINUTE_MS);
        for t in 0..200 {
            w.add(t * 1_000, 1);
        }
        let text = serde_json::to_string(&w).unwrap_or_default();
        assert!(text.len() < 1_200, "{} bytes", text.len());
        let back: SlidingWindow = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, w);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_000), 1);
        assert_eq!(retry_after_secs(1_001), 2);
        assert_eq!(retry_after_secs(-5), 1);
    }

    proptest! {
        /// Whatever the arrival times and amounts, the accepted amounts in
        /// every window of `window_ms` (any start, ms resolution) sum to at
        /// most the limit, and every refusal's retry hint is honoured.
        #[test]
        fn accepted_never_exceeds_the_limit_in_any_window(
            window_ms in prop::sample::select(vec![600i64, 6_000, 60_000]),
            limit in 1u64..20,
            steps in prop::collection::vec((0i64..400, 1u64..4), 1..300),
        ) {
            let mut w = SlidingWindow::new(window_ms);
            let mut now = 0i64;
            let mut accepted: Vec<(i64, u64)> = Vec::new();
            for (gap, amount) in steps {
                now += gap * window_ms / 600;
                match w.try_add(now, amount, Some(limit)) {
                    Ok(()) => accepted.push((now, amount)),
                    Err(Some(wait)) => {
                        prop_assert!(wait > 0);
                        prop_assert!(w.check(now + wait, amount, limit).is_ok(), "retry hint too short");
                    }
                    Err(None) => prop_assert!(amount > limit),
                }
            }
            for &(start, _) in &accepted {
                let sum: u64 = accepted.iter().filter(|&&(t, _)| t >= start && t < start + window_ms).map(|&(_, n)| n).sum();
                prop_assert!(sum <= limit, "{sum} > {limit} in the window starting at {start}");
            }
        }
    }
}

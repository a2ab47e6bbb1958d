//! What one isolate remembers between requests: key records and the routing
//! table (short-lived copies of KV), its key accounts' word on keys without
//! limits, channel secrets, the usage events waiting to be sent to the
//! queue in one batch, and the counters of what its requests came to. KV (and the key's account) stay the source; this only
//! spares a read per request. Time is passed in.

use super::account_slice::IsolateSlices;
use super::admission::ACCOUNT_CHECK_TTL_MS;
use crate::api_key::digests_match;
use crate::error::GatewayError;
use crate::key_record::KeyRecord;
use crate::limits::{
    DEFAULT_KEEPALIVE_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_UPSTREAM_TIMEOUT_MS, KEY_CACHE_TTL_MS,
    ROUTING_CACHE_TTL_MS,
};
use crate::routing::{RoutingConfig, RoutingTable};
use crate::usage::UsageEvent;
use std::collections::HashMap;
use std::rc::Rc;

/// Most key records (and account checks) held; the cache is cleared when full.
pub const MAX_CACHED_KEYS: usize = 10_000;
/// How long usage events of requests that skipped admission wait for others
/// to join their batch, ms.
pub const USAGE_BATCH_WINDOW_MS: u64 = 20;
/// A batch is sent at once when it reaches this size (the queue's batch limit).
pub const MAX_USAGE_BATCH: usize = 100;

/// Settings read from the worker's environment once per isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolateConfig {
    pub max_body_bytes: usize,
    pub upstream_timeout_ms: u64,
    /// SSE keepalive interval while a stream waits for content (0: none).
    pub keepalive_ms: u64,
    /// The channels' circuits are shared through their health records
    /// ([`crate::channel_health::shared`]); off: each isolate alone.
    pub shared_health: bool,
}

impl Default for IsolateConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upstream_timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
            shared_health: false,
        }
    }
}

/// What to do with a usage event handed to the isolate's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// The batch is full: send these now.
    SendNow(Vec<UsageEvent>),
    /// This event opened the batch: wait [`USAGE_BATCH_WINDOW_MS`], then
    /// [`IsolateState::take_usage_batch`] and send it.
    WaitThenSend,
    /// Another request holds the open batch and will send it.
    Joined,
}

/// The isolate's memory.
#[derive(Debug, Default)]
pub struct IsolateState {
    pub config: IsolateConfig,
    /// Slices of the accounts of keys with limits ([`super::account_slice`]).
    pub slices: IsolateSlices,
    /// The channels' circuits as this isolate knows them: its copy of the
    /// shared records, and its own outcomes since.
    pub breakers: crate::channel_health::breaker::Breakers,
    /// What this isolate owes the channels' shared records, and how fresh
    /// its copy of each is.
    pub health_sync: crate::channel_health::shared::HealthSync,
    /// Each channel's next credential in round-robin rotation.
    rotation: HashMap<String, usize>,
    /// Requests waiting for a concurrency slot of their key.
    pub waiters: super::wait_queue::WaitQueue,
    /// What this isolate's requests came to ([`super::counters`]).
    pub counters: super::counters::EdgeCounters,
    keys: HashMap<String, (Rc<KeyRecord>, i64)>,
    account_checks: HashMap<String, (bool, i64)>,
    routing: Option<(Rc<RoutingTable>, i64)>,
    secrets: HashMap<String, Option<String>>,
    usage: Vec<UsageEvent>,
    batch_open: bool,
}

impl IsolateState {
    pub fn new(config: IsolateConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// The channel's next credential index in round-robin order (a counter;
    /// the caller takes it modulo the number of credentials).
    pub fn next_rotation(&mut self, channel: &str) -> usize {
        let n = self.rotation.entry(channel.to_string()).or_insert(0);
        let at = *n;
        *n = n.wrapping_add(1);
        at
    }

    /// The cached key record for `digest`, if fresh.
    pub fn key(&self, digest: &str, now_ms: i64) -> Option<Rc<KeyRecord>> {
        self.keys
            .get(digest)
            .filter(|(_, at)| now_ms - at < KEY_CACHE_TTL_MS as i64)
            .map(|(record, _)| record.clone())
    }

    /// Caches the KV value of `digest`'s record (JSON text, read as text so
    /// 64-bit integers stay exact). An absent record is `InvalidApiKey`; the
    /// stored digest is compared in constant time.
    pub fn put_key(
        &mut self,
        digest: &str,
        text: Option<&str>,
        now_ms: i64,
    ) -> Result<Rc<KeyRecord>, KeyReadError> {
        let text = text.ok_or(KeyReadError::Refused(GatewayError::InvalidApiKey))?;
        let record: KeyRecord =
            serde_json::from_str(text).map_err(|e| KeyReadError::Unreadable(e.to_string()))?;
        if !digests_match(&record.digest, digest) {
            return Err(KeyReadError::Refused(GatewayError::InvalidApiKey));
        }
        let record = Rc::new(record);
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(digest.to_string(), (record.clone(), now_ms));
        Ok(record)
    }

    /// Forgets what is cached about a key (after a push or revocation).
    pub fn forget_key(&mut self, digest: &str) {
        self.keys.remove(digest);
        self.account_checks.remove(digest);
        self.slices.forget(digest);
    }

    /// The account's last word on whether an unlimited key may skip
    /// admission, if younger than [`ACCOUNT_CHECK_TTL_MS`].
    pub fn account_check(&self, digest: &str, now_ms: i64) -> Option<bool> {
        self.account_checks
            .get(digest)
            .filter(|(_, at)| now_ms - at < ACCOUNT_CHECK_TTL_MS)
            .map(|(may_skip, _)| *may_skip)
    }

    pub fn put_account_check(&mut self, digest: &str, may_skip: bool, now_ms: i64) {
        if self.account_checks.len() >= MAX_CACHED_KEYS {
            self.account_checks.clear();
        }
        self.account_checks.insert(digest.to_string(), (may_skip, now_ms));
    }

    /// The cached routing table, if fresh.
    pub fn routing(&self, now_ms: i64) -> Option<Rc<RoutingTable>> {
        self.routing
            .as_ref()
            .filter(|(_, at)| now_ms - at < ROUTING_CACHE_TTL_MS as i64)
            .map(|(table, _)| table.clone())
    }

    /// Caches the routing configuration read from KV (absent = empty).
    pub fn put_routing(&mut self, text: Option<&str>, now_ms: i64) -> Result<Rc<RoutingTable>, String> {
        let config: RoutingConfig = match text {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| format!("unreadable routing config: {e}"))?
            }
            None => RoutingConfig::default(),
        };
        let table =
            RoutingTable::new(config).map_err(|e| format!("stored routing config is invalid: {}", e.0))?;
        Ok(self.set_routing(table, now_ms))
    }

    /// Replaces the cached routing table (after a push).
    pub fn set_routing(&mut self, table: RoutingTable, now_ms: i64) -> Rc<RoutingTable> {
        let table = Rc::new(table);
        self.routing = Some((table.clone(), now_ms));
        table
    }

    /// A worker secret's value, if it has been read in this isolate.
    pub fn secret(&self, name: &str) -> Option<Option<&str>> {
        self.secrets.get(name).map(|v| v.as_deref())
    }

    pub fn put_secret(&mut self, name: &str, value: Option<String>) {
        self.secrets.insert(name.to_string(), value.filter(|v| !v.is_empty()));
    }

    /// Adds a usage event to the isolate's batch.
    pub fn push_usage(&mut self, event: UsageEvent) -> BatchStep {
        self.usage.push(event);
        if self.usage.len() >= MAX_USAGE_BATCH {
            return BatchStep::SendNow(std::mem::take(&mut self.usage));
        }
        if std::mem::replace(&mut self.batch_open, true) {
            BatchStep::Joined
        } else {
            BatchStep::WaitThenSend
        }
    }

    /// Closes the open batch and takes its events.
    pub fn take_usage_batch(&mut self) -> Vec<UsageEvent> {
        self.batch_open = false;
        std::mem::take(&mut self.usage)
    }
}

/// Why a key record could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReadError {
    /// The client's fault: unknown key.
    Refused(GatewayError),
    /// KV holds something that is not a key record (logged, 500).
    Unreadable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{RequestOutcome, TokenUsage, UsageSource};

    fn event(id: &str) -> UsageEvent {
        UsageEvent {
            request_id: id.into(),
            key_digest: "d".into(),
            owner: String::new(),
            user_id: None,
            group: "default".into(),
            price_ratio_ppm: 1_000_000,
            model: "m".into(),
            upstream_model: String::new(),
            channel: "c".into(),
            provider: String::new(),
            endpoint: Default::default(),
            unit: None,
            unit_count: 0,
            usage: TokenUsage::default(),
            cost_micros: 0,
            status: 200,
            outcome: RequestOutcome::Completed,
            usage_source: UsageSource::None,
            stream: false,
            latency_ms: 0,
            ttft_ms: None,
            served_model: String::new(),
            attempts: Vec::new(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn key_records_are_read_as_text_and_expire() {
        let mut s = IsolateState::default();
        let d = "ab".repeat(32);
        let text = format!(r#"{{"digest":"{d}","quota_micros":9223372036854775807}}"#);
        let record = s.put_key(&d, Some(&text), 0).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(record.quota_micros, Some(i64::MAX), "64-bit integers stay exact");
        assert!(s.key(&d, KEY_CACHE_TTL_MS as i64 - 1).is_some());
        assert!(s.key(&d, KEY_CACHE_TTL_MS as i64).is_none());
        assert_eq!(s.put_key(&d, None, 0).err(), Some(KeyReadError::Refused(GatewayError::InvalidApiKey)));
        let other = format!(r#"{{"digest":"{}"}}"#, "cd".repeat(32));
        assert_eq!(
            s.put_key(&d, Some(&other), 0).err(),
            Some(KeyReadError::Refused(GatewayError::InvalidApiKey))
        );
        assert!(matches!(s.put_key(&d, Some("[1]"), 0), Err(KeyReadError::Unreadable(_))));
        s.put_account_check(&d, true, 0);
        s.forget_key(&d);
        assert!(s.key(&d, 1).is_none() && s.account_check(&d, 1).is_none());
    }

    #[test]
    fn usage_batches_open_join_and_fill() {
        let mut s = IsolateState::default();
        assert_eq!(s.push_usage(event("a")), BatchStep::WaitThenSend);
        assert_eq!(s.push_usage(event("b")), BatchStep::Joined);
        assert_eq!(s.take_usage_batch().len(), 2);
        assert_eq!(s.push_usage(event("c")), BatchStep::WaitThenSend);
        for i in 1..MAX_USAGE_BATCH - 1 {
            assert_eq!(s.push_usage(event(&format!("x{i}"))), BatchStep::Joined);
        }
        assert!(matches!(s.push_usage(event("full")), BatchStep::SendNow(v) if v.len() == MAX_USAGE_BATCH));
        assert!(s.take_usage_batch().is_empty(), "the opener finds its batch already sent");
    }

    #[test]
    fn routing_reads_and_refusals() {
        let mut s = IsolateState::default();
        assert!(s.put_routing(None, 0).is_ok_and(|t| t.models().count() == 0));
        assert!(s.put_routing(Some("{nope"), 0).is_err());
        assert!(s.routing(0).is_some(), "a bad read keeps the last good table");
        assert!(s.routing(ROUTING_CACHE_TTL_MS as i64).is_none());
    }
}

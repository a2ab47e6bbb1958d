//! The conversation store: what the gateway keeps between turns of one
//! client key, the pure logic of the `ConversationStore` Durable Object (one
//! per key digest; the shell is `edge/worker/src/conversation_object.rs`).
//!
//! It holds opaque entries (JSON text) under namespaced names with a TTL:
//! the signature vault's reasoning (`v:`, [`crate::translate::signature_vault`])
//! and stored Responses (`r:`).
//!
//! **Key design decision:** one Durable Object per client key, not KV. The
//! next turn of a conversation can arrive within milliseconds of the answer
//! that carried the state, at another location; KV is eventually consistent
//! across locations (a read elsewhere can miss a write for up to a minute)
//! and allows one write per second per name, while a Durable Object is one
//! strongly consistent place, so a write acknowledged before the answer is
//! sent is there for the next turn whichever location it arrives at. Scoping
//! the object to the key makes "another key cannot reach it" structural.
//!
//! The object keeps an index (name → expiry, size) in memory and the data in
//! storage. Bounds: [`MAX_ENTRY_BYTES`] per entry (larger is refused),
//! [`MAX_OBJECT_BYTES`] per key (the entries nearest their expiry are
//! evicted first), [`MAX_TTL_MS`]. Time comes in with every call.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Largest entry (bytes of JSON text).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Largest total of one key's entries; older ones are evicted beyond it.
pub const MAX_OBJECT_BYTES: usize = 64 * 1024 * 1024;
/// Longest TTL accepted.
pub const MAX_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most names in one call.
pub const MAX_NAMES_PER_CALL: usize = 256;

/// `POST /get`: the live entries of these names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    pub names: Vec<String>,
    pub now_ms: i64,
}

/// The `/get` answer: the names found, with their data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    pub found: BTreeMap<String, String>,
}

/// One entry to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutEntry {
    pub name: String,
    /// JSON text.
    pub data: String,
    pub ttl_ms: i64,
}

/// `POST /put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub entries: Vec<PutEntry>,
    pub now_ms: i64,
}

/// The `/put` answer: names stored and names refused (too large).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    pub stored: Vec<String>,
    pub refused: Vec<String>,
}

/// `POST /delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub names: Vec<String>,
    pub now_ms: i64,
}

/// The `/delete` answer: the names that were live and are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub deleted: Vec<String>,
}

/// What storage must hold for one entry besides its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub expires_at_ms: i64,
    pub bytes: usize,
}

/// What an operation changed in storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreWrites {
    /// Entries to write (data with its meta).
    pub put: Vec<(String, EntryMeta, String)>,
    /// Names to remove.
    pub delete: Vec<String>,
}

/// The index of one key's entries.
#[derive(Debug, Clone, Default)]
pub struct StoreIndex {
    entries: HashMap<String, EntryMeta>,
    bytes: usize,
}

impl StoreIndex {
    /// The index as loaded from storage.
    pub fn from_stored(entries: impl IntoIterator<Item = (String, EntryMeta)>) -> Self {
        let mut index = Self::default();
        for (name, meta) in entries {
            index.bytes += meta.bytes;
            index.entries.insert(name, meta);
        }
        index
    }

    /// Entries held (live or not yet purged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Which of `names` are live at `now_ms` (to be read from storage).
    pub fn live<'a>(&self, names: &'a [String], now_ms: i64) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| self.entries.get(n.as_str()).is_some_and(|m| m.expires_at_ms > now_ms))
            .map(String::as_str)
            .collect()
    }

    /// Stores `entries`: each replaces any entry of its name; one over
    /// [`MAX_ENTRY_BYTES`] is refused; expired entries go first, then the
    /// ones nearest their expiry, until the key is within [`MAX_OBJECT_BYTES`].
    pub fn put(&mut self, entries: Vec<PutEntry>, now_ms: i64) -> (PutReply, StoreWrites) {
        let mut reply = PutReply::default();
        let mut writes = self.purge(now_ms);
        for entry in entries {
            let bytes = entry.name.len() + entry.data.len();
            if bytes > MAX_ENTRY_BYTES || entry.ttl_ms <= 0 {
                reply.refused.push(entry.name);
                continue;
            }
            let meta =
                EntryMeta { expires_at_ms: now_ms.saturating_add(entry.ttl_ms.min(MAX_TTL_MS)), bytes };
            if let Some(old) = self.entries.insert(entry.name.clone(), meta) {
                self.bytes -= old.bytes;
            }
            self.bytes += bytes;
            writes.delete.retain(|n| n != &entry.name);
            reply.stored.push(entry.name.clone());
            writes.put.push((entry.name, meta, entry.data));
        }
        while self.bytes > MAX_OBJECT_BYTES {
            let Some(name) = self
                .entries
                .iter()
                .filter(|(n, _)| !reply.stored.contains(n))
                .min_by_key(|(n, m)| (m.expires_at_ms, (*n).clone()))
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            if let Some(meta) = self.entries.remove(&name) {
                self.bytes -= meta.bytes;
            }
            writes.delete.push(name);
        }
        (reply, writes)
    }

    /// Removes `names`; the reply lists those that were live.
    pub fn delete(&mut self, names: &[String], now_ms: i64) -> (DeleteReply, StoreWrites) {
        let mut reply = DeleteReply::default();
        let mut writes = StoreWrites::default();
        for name in names {
            if let Some(meta) = self.entries.remove(name) {
                self.bytes -= meta.bytes;
                if meta.expires_at_ms > now_ms {
                    reply.deleted.push(name.clone());
                }
                writes.delete.push(name.clone());
            }
        }
        (reply, writes)
    }

    /// Forgets every entry expired at `now_ms`.
    pub fn purge(&mut self, now_ms: i64) -> StoreWrites {
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, m)| m.expires_at_ms <= now_ms).map(|(n, _)| n.clone()).collect();
        for name in &expired {
            if let Some(meta) = self.entries.remove(name) {
                self.bytes -= meta.bytes;
            }
        }
        StoreWrites { put: Vec::new(), delete: expired }
    }

    /// When the next entry expires (for the object's alarm).
    pub fn next_expiry(&self) -> Option<i64> {
        self.entries.values().map(|m| m.expires_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, data: &str, ttl_ms: i64) -> PutEntry {
        PutEntry { name: name.into(), data: data.into(), ttl_ms }
    }

    #[test]
    fn entries_live_until_their_ttl() {
        let mut index = StoreIndex::default();
        let (reply, writes) = index.put(vec![entry("v:a", "{}", 1_000)], 10_000);
        assert_eq!(reply.stored, ["v:a"]);
        assert_eq!(writes.put[0].1, EntryMeta { expires_at_ms: 11_000, bytes: 5 });
        let names = vec!["v:a".to_string(), "v:b".to_string()];
        assert_eq!(index.live(&names, 10_999), ["v:a"]);
        assert!(index.live(&names, 11_000).is_empty(), "expired at its TTL");
        assert_eq!(index.purge(11_000).delete, ["v:a"]);
        assert!(index.is_empty());
        assert_eq!(index.bytes(), 0);
    }

    #[test]
    fn oversized_entries_are_refused_and_the_key_stays_bounded() {
        let mut index = StoreIndex::default();
        let big = "x".repeat(MAX_ENTRY_BYTES);
        let (reply, _) = index.put(vec![entry("v:big", &big, 1_000)], 0);
        assert_eq!(reply.refused, ["v:big"]);
        let chunk = "x".repeat(MAX_ENTRY_BYTES - 16);
        let n = MAX_OBJECT_BYTES / chunk.len() + 3;
        for i in 0..n {
            // later entries expire later
            let (_, writes) = index.put(vec![entry(&format!("v:{i:04}"), &chunk, 1_000 + i as i64)], 0);
            if index.bytes() + chunk.len() > MAX_OBJECT_BYTES {
                assert!(writes.delete.iter().all(|d| d.as_str() < format!("v:{i:04}").as_str()));
            }
        }
        assert!(index.bytes() <= MAX_OBJECT_BYTES);
        let names: Vec<String> = (0..n).map(|i| format!("v:{i:04}")).collect();
        let live = index.live(&names, 0);
        assert_eq!(live.last().copied(), Some(names[n - 1].as_str()), "the newest survive");
        assert!(!live.contains(&"v:0000"), "the soonest to expire went first");
    }

    #[test]
    fn replacing_and_deleting_keep_the_byte_count() {
        let mut index = StoreIndex::default();
        index.put(vec![entry("r:1", "aaaa", 1_000)], 0);
        index.put(vec![entry("r:1", "aa", 1_000)], 0);
        assert_eq!(index.bytes(), 5);
        let (reply, writes) = index.delete(&["r:1".into(), "r:2".into()], 10);
        assert_eq!((reply.deleted, writes.delete), (vec!["r:1".to_string()], vec!["r:1".to_string()]));
        assert_eq!(index.bytes(), 0);
        assert_eq!(index.next_expiry(), None);
    }
}

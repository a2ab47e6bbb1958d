//! Conversation state around one generation: the signature vault's lookup
//! before a translated attempt, and its write before the answer (or a
//! stream's end) goes out, both with the key's conversation store
//! ([`crate::conversation_store`]). A request that needs no state makes no
//! call: the lookup happens only for an OpenAI chat client whose history has
//! tool-call turns without the signatures an Anthropic (thinking on) or
//! Gemini upstream needs, the write only for an answer that carries them.
//! A store that fails is logged and the documented fallback applies; the
//! request itself never fails for it.

use super::*;
use crate::conversation_store::{GetReply, GetRequest, PutEntry, PutReply, PutRequest};
use crate::translate::signature_vault::{
    client_needs_vault, preserved_reasoning, restore_reasoning, vault_name, wanted_names, Restored,
    VAULT_TTL_MS,
};
use crate::translate::{CanonicalResponse, UpstreamDialect};
use std::collections::BTreeMap;

/// What comes after a store write.
#[derive(Debug)]
enum Then {
    /// This effect, in this phase (a held answer).
    Effect(Box<Effect>, Phase),
    /// The rest of a stream's end.
    StreamEnd,
}

/// The state calls of one request.
#[derive(Debug, Default)]
pub(super) struct StateCalls {
    /// The vault was asked (once per request, whatever the failovers).
    looked_up: bool,
    restored: Restored,
    then: Option<Then>,
}

fn reply_of<T: serde::de::DeserializeOwned>(status: u16, body: &str) -> Result<T, String> {
    if !(200..300).contains(&status) {
        let shown: String = body.chars().take(200).collect();
        return Err(format!("{status} {shown}"));
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

impl Generation {
    /// Before a translated attempt at `upstream`: the vault lookup this
    /// request needs, if any (asked once).
    pub(super) fn state_lookup(&mut self, upstream: UpstreamDialect, now: i64) -> Option<Effect> {
        if self.state.looked_up || !client_needs_vault(self.start.client, upstream) {
            return None;
        }
        let names = wanted_names(self.inbound.as_ref()?.for_translation().ok()?, upstream);
        if names.is_empty() {
            return None;
        }
        self.state.looked_up = true;
        let body = serde_json::to_string(&GetRequest { names, now_ms: now }).ok()?;
        self.phase = Phase::AwaitStateLookup;
        Some(Effect::StoreCall { digest: self.digest.clone(), path: "/get", body })
    }

    /// The vault answered: what it holds is put back, then the attempt goes on.
    pub(super) fn after_state_lookup(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let found = match reply_of::<GetReply>(status, body) {
            Ok(reply) => reply.found,
            Err(why) => {
                self.log(false, format!("conversation store lookup failed (the fallback applies): {why}"));
                BTreeMap::new()
            }
        };
        if let Some(canonical) = self.inbound.as_mut().and_then(Inbound::canonical_mut) {
            self.state.restored = restore_reasoning(canonical, |id| {
                found.get(&vault_name(id)).and_then(|text| serde_json::from_str(text).ok())
            });
        }
        self.attempt(isolate, now)
    }

    /// The value of the reasoning-state header, when the request needed state.
    pub(super) fn reasoning_state(&self) -> Option<&'static str> {
        self.state.restored.header_value()
    }

    /// What of an answer from `upstream` the vault keeps.
    pub(super) fn vault_entries(&self, upstream: UpstreamDialect, resp: &CanonicalResponse) -> Vec<PutEntry> {
        if !client_needs_vault(self.start.client, upstream) {
            return Vec::new();
        }
        preserved_reasoning(resp)
            .and_then(|kept| {
                let data = serde_json::to_string(&kept).ok()?;
                Some(PutEntry { name: vault_name(&kept.tool_call_id), data, ttl_ms: VAULT_TTL_MS })
            })
            .into_iter()
            .collect()
    }

    fn put_call(&mut self, entries: Vec<PutEntry>, then: Then, now: i64) -> Effect {
        let body = serde_json::to_string(&PutRequest { entries, now_ms: now }).unwrap_or_default();
        self.state.then = Some(then);
        self.phase = Phase::AwaitStateWrite;
        Effect::StoreCall { digest: self.digest.clone(), path: "/put", body }
    }

    /// `effect` (an answer), after `entries` are kept: the next turn, which
    /// can only follow the answer, finds them.
    pub(super) fn keep_then(&mut self, entries: Vec<PutEntry>, effect: Effect, now: i64) -> Effect {
        if entries.is_empty() {
            return effect;
        }
        let then = Then::Effect(Box::new(effect), self.phase);
        self.put_call(entries, then, now)
    }

    /// At a stream's end (before the client sees it): the store write of
    /// the state the stream carried, if any.
    pub(super) fn keep_stream_state(&mut self, now: i64) -> Option<Effect> {
        if self.disconnected_at.is_some() {
            return None;
        }
        let upstream = self.current.as_ref().map(|(_, plan, _)| plan.upstream_dialect())?;
        let snapshot = self.shaper.as_ref().filter(|s| s.completed())?.snapshot()?;
        let entries = self.vault_entries(upstream, &snapshot);
        if entries.is_empty() {
            return None;
        }
        Some(self.put_call(entries, Then::StreamEnd, now))
    }

    /// The store took (or failed to take) the state: the held answer goes out.
    pub(super) fn after_state_write(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        match reply_of::<PutReply>(status, body) {
            Ok(reply) if reply.refused.is_empty() => {}
            Ok(reply) => self.log(false, format!("conversation store refused {}", reply.refused.join(", "))),
            Err(why) => self.log(false, format!("conversation store write failed: {why}")),
        }
        match self.state.then.take() {
            Some(Then::Effect(effect, phase)) => {
                self.phase = phase;
                Ok(*effect)
            }
            Some(Then::StreamEnd) => self.stream_end_tail(isolate, now),
            None => Err(self.internal("a store write with nothing after it".into())),
        }
    }
}

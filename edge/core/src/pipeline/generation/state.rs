//! Conversation state around one generation: the signature vault's lookup
//! before a translated attempt, and its write before the answer (or a
//! stream's end) goes out, both with the key's conversation store
//! ([`crate::conversation_store`]). A request that needs no state makes no
//! call: the lookup happens only for an OpenAI chat client whose history has
//! tool-call turns without the signatures an Anthropic (thinking on) or
//! Gemini upstream needs, the write only for an answer that carries them.
//! A store that fails is logged and the documented fallback applies; the
//! request itself never fails for it.
//!
//! Responses state ([`crate::translate::responses_state`]) uses the same
//! store: a request with `previous_response_id` reads its conversation
//! before it is parsed (a store failure is a 500 then: the request cannot be
//! understood without it), and an answer to a request with `store: true` is
//! kept with the vault's write, before it reaches the client.

use super::*;
use crate::conversation_store::{GetReply, GetRequest, PutEntry, PutReply, PutRequest};
use crate::pipeline::metering::client_response_id;
use crate::translate::responses_state::{
    expand, not_found, read_state_fields, response_name, stored, StoredResponse, RESPONSE_TTL_MS,
};
use crate::translate::signature_vault::{
    client_needs_vault, preserved_reasoning, restore_reasoning, vault_name, wanted_names, Restored,
    VAULT_TTL_MS,
};
use crate::translate::{CanonicalResponse, UpstreamDialect};
use serde_json::Value;
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
    /// A Responses request's state fields, and what it keeps.
    responses: Option<ResponsesCall>,
}

/// The Responses state of one request.
#[derive(Debug, Default)]
struct ResponsesCall {
    /// `previous_response_id`.
    previous: Option<String>,
    /// `store: true`.
    store: bool,
    /// The body as sent (held while the previous response is read).
    original: Vec<u8>,
    /// The conversation's input items (kept with the answer when storing).
    items: Vec<Value>,
}

fn reply_of<T: serde::de::DeserializeOwned>(status: u16, body: &str) -> Result<T, String> {
    if !(200..300).contains(&status) {
        let shown: String = body.chars().take(200).collect();
        return Err(format!("{status} {shown}"));
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

impl Generation {
    /// A Responses request's body: read its conversation first when it
    /// continues one, keep its input items when it is to be stored.
    pub(super) fn responses_body(
        &mut self,
        isolate: &mut IsolateState,
        body: Vec<u8>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let mentions = |word: &[u8]| body.windows(word.len()).any(|w| w == word);
        if !mentions(b"\"store\"") && !mentions(b"previous_response_id") {
            // Neither field: no second parse.
            return self.after_body(isolate, &body, &body, now);
        }
        let fields = read_state_fields(&body)?;
        if let Some(id) = &fields.previous_response_id {
            let names = vec![response_name(id)];
            let request = serde_json::to_string(&GetRequest { names, now_ms: now }).unwrap_or_default();
            self.state.responses = Some(ResponsesCall {
                previous: fields.previous_response_id,
                store: fields.store,
                original: body,
                items: Vec::new(),
            });
            self.phase = Phase::AwaitPreviousResponse;
            return Ok(Effect::StoreCall { digest: self.digest.clone(), path: "/get", body: request });
        }
        if fields.store {
            let (_, items) = expand(&body, None)?;
            self.state.responses =
                Some(ResponsesCall { previous: None, store: true, original: Vec::new(), items });
        }
        self.after_body(isolate, &body, &body, now)
    }

    /// The conversation a Responses request continues: the request is
    /// expanded with it, or refused when there is none.
    pub(super) fn after_previous_response(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let Some(call) = self.state.responses.as_mut() else {
            return Err(self.internal("a previous response read without a request".into()));
        };
        let id = call.previous.clone().unwrap_or_default();
        let original = std::mem::take(&mut call.original);
        let found = match reply_of::<GetReply>(status, body) {
            Ok(reply) => reply.found,
            Err(why) => return Err(self.internal(format!("conversation store read failed: {why}"))),
        };
        let Some(text) = found.get(&response_name(&id)) else { return Err(not_found(&id)) };
        let previous: StoredResponse = match serde_json::from_str(text) {
            Ok(previous) => previous,
            Err(e) => return Err(self.internal(format!("stored response {id} unreadable: {e}"))),
        };
        let (expanded, items) = expand(&original, Some(&previous))?;
        if let Some(call) = self.state.responses.as_mut() {
            call.items = items;
        }
        self.after_body(isolate, &expanded, &original, now)
    }

    /// The answer to a Responses client is to be stored (`store: true`).
    pub(super) fn storing_response(&self) -> bool {
        self.state.responses.as_ref().is_some_and(|r| r.store)
    }

    /// The store entry of an answer to a Responses client, when storing:
    /// `rendered` is the response object the client gets.
    pub(super) fn response_entries(&self, rendered: &[u8]) -> Vec<PutEntry> {
        let Some(call) = self.state.responses.as_ref().filter(|r| r.store) else { return Vec::new() };
        let Ok(response) = serde_json::from_slice::<Value>(rendered) else { return Vec::new() };
        let Some(id) = response.get("id").and_then(Value::as_str).map(str::to_string) else {
            return Vec::new();
        };
        let kept = stored(call.items.clone(), response, call.previous.as_deref());
        match serde_json::to_string(&kept) {
            Ok(data) => vec![PutEntry { name: response_name(&id), data, ttl_ms: RESPONSE_TTL_MS }],
            Err(_) => Vec::new(),
        }
    }

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
        let mut snapshot = self.shaper.as_ref().filter(|s| s.completed())?.snapshot()?;
        let mut entries = self.vault_entries(upstream, &snapshot);
        if self.storing_response() {
            snapshot.id = client_response_id(self.start.client, &self.start.request_id);
            if let Some(usage) = self.event.as_ref().map(|e| e.usage) {
                snapshot.usage = usage;
            }
            let rendered = translate::render_client_response(self.start.client, &snapshot);
            entries.extend(self.response_entries(&rendered));
        }
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

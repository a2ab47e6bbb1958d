//! The exact-match response cache around one generation
//! ([`crate::response_cache`]): asked once, after admission and before the
//! first attempt, only when the routed model caches and the request is
//! deterministic (never for a pinned request or a Responses request to be
//! stored). A hit is answered from the cache; a miss's answer is copied as
//! it goes to the client (at most [`MAX_CACHED_BYTES`]) and, when it
//! completed, stored right after a whole answer is handed over, or just
//! before a stream's end is sent (so the client's next request finds it).

use super::*;
use crate::pipeline::counters::CacheVerdict;
use crate::pipeline::metering::Ending;
use crate::response_cache::{cache_url, cacheable, CacheKey, CachedAnswer, MAX_CACHED_BYTES};
use crate::usage::{RequestOutcome, UsageSource};
use sha2::{Digest, Sha256};

/// The cache state of one request.
#[derive(Debug, Default)]
pub(super) struct CacheCalls {
    /// SHA-256 hex of the body the client sent.
    body_sha256: String,
    looked_up: bool,
    /// The answer's cache URL, when the request may be cached.
    url: Option<String>,
    /// The [`crate::response_cache::CACHE_HEADER`] value.
    verdict: Option<&'static str>,
    /// A miss's answer as the client receives it (`None`: not kept).
    capture: Option<Vec<u8>>,
    content_type: String,
    /// The last chunk or body handed in (what `Emitted::Chunk` and
    /// `ResponseBody::UpstreamBody` name), while capturing.
    last_chunk: Vec<u8>,
    last_body: Vec<u8>,
    stored: bool,
    /// The usage event's part of a kept answer, copied when the event is made.
    billed: Option<Billed>,
}

/// What a kept answer records of its usage event.
#[derive(Debug)]
struct Billed {
    completed: bool,
    stream: bool,
    usage: crate::usage::TokenUsage,
    usage_source: UsageSource,
    channel: String,
    provider: String,
    upstream_model: String,
}

impl Generation {
    /// Remembers what identifies the body for the cache.
    pub(super) fn cache_note_body(&mut self, body: &[u8]) {
        self.cache.body_sha256 = hex::encode(Sha256::digest(body));
    }

    /// The cache lookup this request needs, if any (once).
    pub(super) fn cache_lookup(&mut self, isolate: &mut IsolateState) -> Option<Effect> {
        if self.cache.looked_up {
            return None;
        }
        self.cache.looked_up = true;
        let option = self.model_options.cache?;
        let inbound = self.inbound.as_ref()?;
        let deterministic = inbound.family == Family::Chat
            && inbound.canonical().is_some_and(cacheable)
            && self.pinned.is_none()
            && !self.storing_response();
        if !deterministic {
            self.cache.verdict = Some("bypass");
            isolate.counters.cache(CacheVerdict::Bypass);
            return None;
        }
        if option.ttl() == 0 {
            return None;
        }
        let url = cache_url(&CacheKey {
            key_digest: &self.digest,
            client: self.start.client,
            family: inbound.family,
            path_model: self.start.path_model.as_deref(),
            path_stream: self.start.path_stream,
            body_sha256: &self.cache.body_sha256,
        });
        self.cache.url = Some(url.clone());
        self.phase = Phase::AwaitCacheGet;
        Some(Effect::CacheGet { url })
    }

    /// The [`crate::response_cache::CACHE_HEADER`] value of the answer,
    /// when the model caches.
    pub(super) fn cache_verdict(&self) -> Option<&'static str> {
        self.cache.verdict
    }

    /// The cache answered: a hit is served, a miss goes upstream (and is kept).
    pub(super) fn after_cache_get(
        &mut self,
        isolate: &mut IsolateState,
        value: Option<String>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let stream = self.inbound.as_ref().is_some_and(|i| i.stream);
        let hit = value
            .and_then(|text| serde_json::from_str::<CachedAnswer>(&text).ok())
            .filter(|answer| answer.stream == stream);
        match hit {
            Some(answer) => self.serve_hit(isolate, answer, now),
            None => {
                self.cache.verdict = Some("miss");
                isolate.counters.cache(CacheVerdict::Miss);
                self.cache.capture = Some(Vec::new());
                self.attempt(isolate, now)
            }
        }
    }

    fn serve_hit(
        &mut self,
        isolate: &mut IsolateState,
        answer: CachedAnswer,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let (meter, option) = match (&self.meter, self.model_options.cache) {
            (Some(meter), Some(option)) => (meter, option),
            _ => return Err(self.internal("a cache hit without its meter".into())),
        };
        self.served = Served {
            channel: answer.channel.clone(),
            provider: answer.provider.clone(),
            upstream_model: answer.upstream_model.clone(),
        };
        let mut ending = Ending::completed(Some(answer.usage), answer.body.len());
        let latency = u64::try_from(now - self.started_ms).ok();
        if answer.stream {
            ending.ttft_ms = latency;
        }
        let mut event = meter.event(&self.served, ending, now);
        event.usage_source = UsageSource::Cache;
        event.cost_micros = option.hit_cost(&meter.price, &answer.usage, meter.price_ratio_ppm);
        if !self.route_model.is_empty() && self.route_model != event.model {
            event.served_model = self.route_model.clone();
        }
        self.event = Some(event);
        self.cache.verdict = Some("hit");
        isolate.counters.cache(CacheVerdict::Hit);
        self.content_sent = true;
        if answer.stream {
            self.ttft_ms = latency;
            self.count_stream_end(isolate, crate::pipeline::counters::StreamEnding::Completed);
            self.final_bytes = answer.body.into_bytes();
            return self.stream_end_tail(isolate, now);
        }
        let mut headers = self.response_headers();
        headers.push(("content-type", answer.content_type));
        self.phase = Phase::AwaitErrorRespond;
        self.responded = true;
        Ok(Effect::Respond(
            ResponseHead { status: 200, headers },
            ResponseBody::Bytes(answer.body.into_bytes()),
        ))
    }

    /// The usage event of an answer was made: what a kept answer records of
    /// it (the event itself leaves with its settle or batch before the end).
    pub(super) fn cache_note_event(&mut self) {
        if self.cache.capture.is_none() {
            return;
        }
        self.cache.billed = self.event.as_ref().map(|e| Billed {
            completed: e.outcome == RequestOutcome::Completed && e.status == 200,
            stream: e.stream,
            usage: e.usage,
            usage_source: e.usage_source,
            channel: e.channel.clone(),
            provider: e.provider.clone(),
            upstream_model: e.upstream_model.clone(),
        });
    }

    /// Before an input is handed to the machine: the bytes a kept answer
    /// may name later.
    pub(super) fn cache_see_input(&mut self, input: &Input) {
        if self.cache.capture.is_none() {
            return;
        }
        match input {
            Input::Chunk(chunk) => self.cache.last_chunk.clone_from(chunk),
            Input::UpstreamBody(body) => self.cache.last_body.clone_from(body),
            _ => {}
        }
    }

    /// After the machine chose `effect`: a miss's answer is copied as it goes
    /// out, and stored once the request is done.
    pub(super) fn cache_see_effect(&mut self, effect: Effect) -> Effect {
        let Some(capture) = self.cache.capture.as_mut() else { return effect };
        let mut keep = true;
        match &effect {
            Effect::Respond(head, body) => {
                keep = head.status == 200;
                if let Some((_, kind)) = head.headers.iter().find(|(n, _)| *n == "content-type") {
                    self.cache.content_type.clone_from(kind);
                }
                match body {
                    ResponseBody::Bytes(bytes) => capture.extend_from_slice(bytes),
                    ResponseBody::UpstreamBody => capture.extend_from_slice(&self.cache.last_body),
                    ResponseBody::Stream => {}
                }
            }
            // Keepalives come before the first content, and are not kept.
            Effect::Emit(bytes) if self.content_sent => match bytes {
                Emitted::Bytes(bytes) => capture.extend_from_slice(bytes),
                Emitted::Chunk => capture.extend_from_slice(&self.cache.last_chunk),
            },
            _ => {}
        }
        if !keep || capture.len() > MAX_CACHED_BYTES {
            self.cache.capture = None;
        }
        effect
    }

    /// A whole answer was handed over: it is stored now (before its
    /// settle), so the client's next request finds it.
    pub(super) fn cache_put_after_answer(&mut self) -> Option<Effect> {
        let stream = self.inbound.as_ref().is_some_and(|i| i.stream);
        if stream {
            return None;
        }
        self.cache_put(Vec::new(), AfterCachePut::Settle)
    }

    /// A stream's end is due: its answer (what was sent, and the end still
    /// held) is stored first, so the client, once it has the end, finds it.
    pub(super) fn cache_put_at_stream_end(&mut self) -> Option<Effect> {
        if self.disconnected_at.is_some() {
            return None;
        }
        let tail = self.final_bytes.clone();
        self.cache_put(tail, AfterCachePut::StreamEnd)
    }

    fn cache_put(&mut self, tail: Vec<u8>, then: AfterCachePut) -> Option<Effect> {
        if self.cache.stored {
            return None;
        }
        let mut body = self.cache.capture.take()?;
        body.extend(tail);
        let url = self.cache.url.clone()?;
        let billed = self.cache.billed.take()?;
        let option = self.model_options.cache?;
        if !billed.completed || body.is_empty() || body.len() > MAX_CACHED_BYTES {
            return None;
        }
        let answer = CachedAnswer {
            body: String::from_utf8(body).ok()?,
            stream: billed.stream,
            content_type: std::mem::take(&mut self.cache.content_type),
            usage: billed.usage,
            usage_source: billed.usage_source,
            channel: billed.channel,
            provider: billed.provider,
            upstream_model: billed.upstream_model,
        };
        let value = serde_json::to_string(&answer).ok()?;
        self.cache.stored = true;
        self.phase = Phase::AwaitCachePut { then };
        Some(Effect::CachePut { url, value, ttl_secs: option.ttl() })
    }
}

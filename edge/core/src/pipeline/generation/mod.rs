//! One generation request as a synchronous state machine over effects.
//!
//! The worker's shell feeds [`Input`]s and performs the [`Effect`] each one
//! yields: KV reads, calls to the key's account, the upstream fetch and its
//! body, the client response and its stream, the usage queue. Every decision
//! in between (who the caller is, which channel is tried next, what is
//! billed, when the stream ends, what is settled) is made here, so the whole
//! request, failover, disconnects and settlement included, runs in host tests
//! against simulated effects. Time comes in with every input.
//!
//! Order of effects for a request (each may be skipped when the isolate
//! already knows the answer):
//!
//! ```text
//! KvGet(key record) → ReadRequestBody → KvGet(routing) → AccountCall(/state | /admit)
//!   → [ReadSecret] → Fetch → (error: ReadUpstreamBody → next candidate …)
//!   → non-stream: ReadUpstreamBody → Respond(bytes)
//!   → stream:     ReadChunk* (held until the first content) → Respond(stream)
//!                 → (Emit → ReadChunk)* → [settle] → Emit(end) → CloseStream
//!   → AccountCall(/settle) | PublishUsage   (after the response, in the background)
//!   → Finished
//! ```
//!
//! **Waits.** [`Effect::Fetch`] and [`Effect::ReadChunk`] may carry a
//! `wake_ms`: when the operation is still pending after that long, the shell
//! answers [`Input::Idle`] and keeps the operation. The machine then decides,
//! with the time passed in: keep waiting ([`Effect::Wait`]), send an SSE
//! keepalive to a streaming client (answering `200 text/event-stream` first
//! when it has not yet), or give the operation up ([`Effect::CancelUpstream`])
//! because a timeout (headers, first content, idle gap) ran out. Until the
//! first content byte reaches a streaming client, a failing upstream is
//! replaced by the next candidate without the client seeing anything but
//! keepalives; after it, failures are in-stream errors.
//!
//! **Contract with the shell.** Once [`Effect::Respond`] is performed the
//! client has its answer; the shell keeps feeding inputs until
//! [`Effect::Finished`] (on Workers: inside `waitUntil`), because an admitted
//! request is settled after its response. A request admitted by its account
//! is settled exactly once whatever happens; a stream's end reaches the client
//! only after that settle.

use super::account_slice::Ticket;
use super::inbound::Inbound;
use super::isolate::{IsolateState, KeyReadError};
use super::metering::{Meter, Served};
use super::route::Plan;
use crate::channel_health::breaker::{BreakerPolicy, CircuitId};
use crate::channel_health::shared::Outcome;
use crate::channel_health::Failure;
use crate::error::GatewayError;
use crate::family::Family;
use crate::key_record::KeyRecord;
use crate::pricing::ModelPrice;
use crate::provider::Provider;
use crate::routing::KeyRotation;
use crate::routing::{MockOptions, ModelOptions, ROUTING_KV_KEY};
use crate::stream_shaper::StreamShaper;
use crate::translate::{self, ClientDialect};
use crate::usage::UsageEvent;
use std::collections::VecDeque;
use std::rc::Rc;

mod admission;
mod cache;
mod forward;
mod pinning;
mod settle;
mod state;
mod stream;

mod protocol;

pub use protocol::*;
pub use stream::keepalive_bytes;

/// Largest upstream error body read to extract a message.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Settle attempts before the usage event is published to the queue directly.
pub const SETTLE_ATTEMPTS: u32 = 3;
/// Admission attempts on a transport failure (a repeated admission of the
/// same request id only renews its lease).
pub const ADMIT_ATTEMPTS: u32 = 2;

/// A candidate, owned (the routing table may be replaced while the request runs).
#[derive(Debug, Clone)]
struct Target {
    /// The public model this target serves (the asked one, or a fallback).
    model: String,
    price: ModelPrice,
    channel: String,
    provider: &'static Provider,
    upstream_model: String,
    base_url: String,
    /// The channel's API version (Azure), overriding the row's default.
    api_version: Option<String>,
    /// The channel emulates tool calls for models without them.
    emulate_tools: bool,
    /// Inline credentials in rotation order (empty: the secret, or none).
    api_keys: Vec<String>,
    key_rotation: KeyRotation,
    api_key_secret: Option<String>,
    /// Connect and response headers, ms (`None`: the isolate's default).
    timeout_ms: Option<u64>,
    /// Stream: response headers to the first content, ms.
    first_content_timeout_ms: u64,
    /// Stream: longest gap between chunks once content flows, ms.
    idle_timeout_ms: u64,
    mock: MockOptions,
    /// When the channel's circuits open.
    breaker: BreakerPolicy,
    /// This target retries its channel with another credential after one
    /// was refused (not counted against the model's attempts).
    credential_retry: bool,
}

/// An attempt's outcome for the isolate's breakers.
#[derive(Debug, Clone)]
struct HealthReport {
    channel: String,
    model: String,
    credential: Option<usize>,
    policy: BreakerPolicy,
    /// `None`: served.
    failure: Option<Failure>,
}

/// Where the upstream body comes from.
#[derive(Debug)]
enum Upstream {
    /// A real upstream: read through effects.
    Remote,
    /// The built-in mock: frames produced here, `delay_ms` apart.
    Mock { frames: VecDeque<Vec<u8>>, delay_ms: u64, sent_first: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Begin,
    AwaitKey,
    AwaitBody,
    /// The pin signature's secret is being read.
    AwaitPinSecret,
    AwaitRouting,
    AwaitAccountCheck,
    /// This request's own renewal of its key's slice.
    AwaitSliceGrant,
    /// Another request's renewal is in flight.
    AwaitSlicePoll,
    AwaitSecret,
    /// The channel's shared record is asked whether this request may probe
    /// the circuit its candidate's cool-down ended on.
    AwaitProbeClaim,
    /// Mock latency before its "headers".
    AwaitMockHead,
    AwaitUpstream,
    AwaitErrorBody {
        status: u16,
    },
    /// A keepalive's response head was handed over (a stream waiting on its
    /// first content); its bytes follow.
    AwaitKeepaliveHead {
        pending: Pending,
    },
    AwaitKeepaliveEmit {
        pending: Pending,
    },
    /// The pending upstream operation is being given up.
    AwaitCancel {
        then: AfterCancel,
    },
    AwaitWholeBody,
    /// The stream response was handed to the shell.
    AwaitStreamStart,
    AwaitChunk,
    /// Mock delay between frames.
    AwaitMockChunk,
    AwaitEmit,
    AwaitFinalEmit,
    /// An empty stream's head was handed over; its end follows.
    AwaitFinalHead,
    AwaitClose,
    /// Settled requests wait for others to join their report (or a poll).
    AwaitReportWindow,
    AwaitReport,
    /// An idle slice waits to be given back.
    AwaitIdleRelease,
    AwaitBatchWindow,
    AwaitPublish {
        fallback: bool,
    },
    /// An error response was handed over; settle or finish next.
    AwaitErrorRespond,
    /// The conversation store is asked for state this request needs.
    AwaitStateLookup,
    /// The conversation store is asked for the response a Responses
    /// request continues (`previous_response_id`).
    AwaitPreviousResponse,
    /// The conversation store is given state before the answer goes out.
    AwaitStateWrite,
    /// The response cache is asked for this request's answer.
    AwaitCacheGet,
    /// A completed answer is being stored in the response cache.
    AwaitCachePut {
        then: AfterCachePut,
    },
    Finished,
}

/// The upstream operation a wait is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Fetch,
    Chunk,
}

/// What follows a [`Effect::CancelUpstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterCancel {
    /// The attempt failed before any content: the next candidate.
    NextCandidate,
    /// The drain after a disconnect ran out.
    EndOfStream,
    /// Content had started and the upstream went quiet: an in-stream timeout.
    IdleTimeout,
}

/// What follows a response cache write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterCachePut {
    /// A whole answer's settle (or usage batch).
    Settle,
    /// The rest of a stream's end.
    StreamEnd,
}

/// What follows an emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterEmit {
    ReadNext,
    Close,
}

/// What happens after the settle (or the usage batch) of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSettle {
    Finish,
    /// A stream's final bytes are held until the request is settled.
    EmitFinal,
}

/// One generation request.
#[derive(Debug)]
pub struct Generation {
    start: Start,
    phase: Phase,
    started_ms: i64,
    digest: String,
    record: Option<Rc<KeyRecord>>,
    inbound: Option<Inbound>,
    targets: Vec<Target>,
    /// The public model being tried (the routed one, or a fallback).
    route_model: String,
    /// The routed model (before any fallback).
    primary_model: String,
    suffix_stripped: bool,
    /// The channel a checked pin names.
    pinned: Option<String>,
    /// SHA-256 of the body, kept while a pin's signature waits for its secret.
    pin_body_digest: String,
    /// The routed model's operator options.
    model_options: ModelOptions,
    next_target: usize,
    /// Candidates tried so far.
    tried: usize,
    /// Candidates of `route_model` tried so far (at most `MAX_ATTEMPTS`).
    tried_for_model: usize,
    /// Candidates skipped because their circuit is open, in order: tried
    /// only when every candidate's circuit is open.
    deferred: Vec<Target>,
    /// Every candidate's circuit was open: the deferred ones are tried.
    all_open: bool,
    /// Attempt outcomes not yet told to the isolate's breakers.
    health: Vec<HealthReport>,
    /// The credential (index in the channel's rotation) of the current attempt.
    credential: Option<usize>,
    /// The half-open circuit the picked candidate would probe, to be
    /// claimed from the channel's shared record before the attempt.
    claim: Option<CircuitId>,
    /// Credentials refused during this request: not chosen again by it.
    refused_credentials: Vec<(String, usize)>,
    current: Option<(Target, Plan, Vec<String>)>,
    /// Parameters the current attempt's provider refuses, dropped from its
    /// request ([`crate::provider::body_quirks`]).
    dropped_params: Vec<&'static str>,
    /// The tools the current attempt offers by emulation (its channel
    /// emulates tool calls and the request has tools to offer).
    emulated_tools: Option<Vec<String>>,
    served: Served,
    last_error: Option<GatewayError>,
    meter: Option<Meter>,
    /// Admitted against the key's slice: what the request holds there.
    ticket: Option<Ticket>,
    /// A stream waits for this settle to reach the account before its end.
    ack_number: Option<u64>,
    /// When this request sent its renewal (isolate clock).
    renewal_sent_at: i64,
    admit_attempts: u32,
    /// Waiting for a concurrency slot since (the key's `max_wait_ms`).
    waiting_since: Option<i64>,
    upstream: Upstream,
    shaper: Option<StreamShaper>,
    disconnected_at: Option<i64>,
    drain_expired: bool,
    /// Every upstream attempt so far (for the usage event).
    attempts: Vec<crate::channel_health::Attempt>,
    attempt_started: i64,
    /// The upstream's `Retry-After` of the error being read.
    retry_after: Option<String>,
    /// The first content byte has reached the client (no failover after).
    content_sent: bool,
    /// Client bytes of the current attempt, held until its first content.
    held: Vec<u8>,
    /// Bytes to emit once the stream's response head is handed over.
    pending_emit: Option<(Emitted, AfterEmit)>,
    /// When the pending operation times out, and which limit that is.
    deadline: Option<(i64, crate::channel_health::TimeoutPhase)>,
    /// When the next keepalive is due (streams waiting on their first content).
    keepalive_at: Option<i64>,
    ttft_ms: Option<u64>,
    final_bytes: Vec<u8>,
    event: Option<UsageEvent>,
    after_settle: AfterSettle,
    settle_attempts: u32,
    /// Events handed to the queue by the current `PublishUsage`.
    publishing: Vec<UsageEvent>,
    /// Events still to be sent one by one after a batch was refused.
    fallback_events: VecDeque<UsageEvent>,
    /// The client has its response (head sent).
    responded: bool,
    /// The request is in the isolate's counters (once, at its answer).
    counted: bool,
    /// Attempts already counted as failed over from (see `count_failover`).
    failovers_counted: usize,
    /// How the stream ended is in the isolate's counters.
    stream_counted: bool,
    /// Conversation state: the vault's lookups and writes.
    state: state::StateCalls,
    /// The response cache's lookup and store.
    cache: cache::CacheCalls,
    logs: Vec<LogLine>,
}

impl Generation {
    /// A request arriving at `now_ms`.
    pub fn new(start: Start, now_ms: i64) -> Self {
        Self {
            start,
            phase: Phase::Begin,
            started_ms: now_ms,
            digest: String::new(),
            record: None,
            inbound: None,
            targets: Vec::new(),
            route_model: String::new(),
            primary_model: String::new(),
            suffix_stripped: false,
            pinned: None,
            pin_body_digest: String::new(),
            model_options: ModelOptions::default(),
            next_target: 0,
            tried: 0,
            tried_for_model: 0,
            deferred: Vec::new(),
            all_open: false,
            health: Vec::new(),
            credential: None,
            claim: None,
            refused_credentials: Vec::new(),
            current: None,
            dropped_params: Vec::new(),
            emulated_tools: None,
            served: Served::default(),
            last_error: None,
            meter: None,
            ticket: None,
            ack_number: None,
            renewal_sent_at: 0,
            admit_attempts: 0,
            waiting_since: None,
            upstream: Upstream::Remote,
            shaper: None,
            disconnected_at: None,
            drain_expired: false,
            attempts: Vec::new(),
            attempt_started: now_ms,
            retry_after: None,
            content_sent: false,
            held: Vec::new(),
            pending_emit: None,
            deadline: None,
            keepalive_at: None,
            ttft_ms: None,
            final_bytes: Vec::new(),
            event: None,
            after_settle: AfterSettle::Finish,
            settle_attempts: 0,
            publishing: Vec::new(),
            fallback_events: VecDeque::new(),
            responded: false,
            counted: false,
            failovers_counted: 0,
            stream_counted: false,
            state: state::StateCalls::default(),
            cache: cache::CacheCalls::default(),
            logs: Vec::new(),
        }
    }

    /// The error dialect of this request's client.
    pub fn client(&self) -> ClientDialect {
        self.start.client
    }

    /// Log lines written since the last call.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }

    /// The request has been admitted by its account (and will be settled).
    pub fn admitted(&self) -> bool {
        self.ticket.is_some()
    }

    fn log(&mut self, error: bool, message: String) {
        self.logs.push(LogLine { error, message });
    }

    /// Advances the request by one input.
    pub fn next(&mut self, isolate: &mut IsolateState, input: Input, now_ms: i64) -> Effect {
        // The shell may answer a sleep with `ClientGone` (the client
        // disconnected meanwhile); that matters only to a request still
        // waiting for admission. Anywhere else a sleep's end is just done.
        let input = match (self.phase, input) {
            (
                Phase::AwaitKeepaliveEmit { .. }
                | Phase::AwaitEmit
                | Phase::AwaitFinalEmit
                | Phase::AwaitFinalHead
                | Phase::AwaitSlicePoll,
                input,
            ) => input,
            (_, Input::ClientGone) => Input::Done,
            (_, input) => input,
        };
        self.cache_see_input(&input);
        let effect = match self.step(isolate, input, now_ms) {
            Ok(effect) => effect,
            Err(error) => self.fail(isolate, error, now_ms),
        };
        self.count_answer(isolate, &effect);
        for r in self.health.drain(..) {
            isolate.counters.attempt(&r.channel, r.failure.as_ref());
            let shared = isolate.breakers.record_outcome(
                &r.channel,
                &r.model,
                r.credential,
                &r.policy,
                r.failure.as_ref(),
                now_ms,
            );
            if isolate.config.shared_health {
                let outcome = Outcome {
                    model: r.model,
                    credential: r.credential,
                    policy: r.policy,
                    failure: r.failure,
                    at_ms: now_ms,
                };
                isolate.health_sync.note(&r.channel, shared.then_some(outcome), now_ms);
            }
        }
        self.cache_see_effect(effect)
    }

    fn step(&mut self, isolate: &mut IsolateState, input: Input, now: i64) -> Result<Effect, GatewayError> {
        match (self.phase, input) {
            (Phase::Begin, Input::Begin) => self.authenticate(isolate, now),
            (Phase::AwaitKey, Input::KvValue(text)) => {
                match isolate.put_key(&self.digest, text.as_deref(), now) {
                    Ok(record) => self.after_key(isolate, record, now),
                    Err(KeyReadError::Refused(error)) => Err(error),
                    Err(KeyReadError::Unreadable(why)) => {
                        Err(self.internal(format!("key record unreadable: {why}")))
                    }
                }
            }
            (Phase::AwaitKey | Phase::AwaitRouting, Input::KvFailed(why)) => {
                Err(self.internal(format!("kv read failed: {why}")))
            }
            (Phase::AwaitBody, Input::RequestBody(body)) => {
                if self.start.client == ClientDialect::OpenAiResponses {
                    return self.responses_body(isolate, body, now);
                }
                self.after_body(isolate, &body, &body, now)
            }
            (Phase::AwaitPreviousResponse, Input::StoreReply { status, body }) => {
                self.after_previous_response(isolate, status, &body, now)
            }
            (Phase::AwaitPinSecret, Input::Secret(value)) => self.after_pin_secret(isolate, value, now),
            (Phase::AwaitBody, Input::RequestBodyTooLarge) => {
                Err(GatewayError::PayloadTooLarge { limit_bytes: isolate.config.max_body_bytes })
            }
            (Phase::AwaitBody, Input::RequestBodyUnreadable) => Err(GatewayError::InvalidRequest {
                message: "The request body could not be read.".into(),
                param: None,
            }),
            (Phase::AwaitRouting, Input::KvValue(text)) => match isolate.put_routing(text.as_deref(), now) {
                Ok(table) => self.after_routing(isolate, &table, now),
                Err(why) => Err(self.internal(why)),
            },
            (Phase::AwaitAccountCheck, Input::AccountReply { status, body }) => {
                self.after_account_check(isolate, status, &body, now)
            }
            (Phase::AwaitSliceGrant, Input::AccountReply { status, body }) => {
                self.after_slice_grant(isolate, status, &body, now)
            }
            (Phase::AwaitSlicePoll, Input::Done) => self.slice_admission(isolate, now),
            (Phase::AwaitSlicePoll, Input::ClientGone) => Ok(self.client_left_while_waiting(isolate)),
            (Phase::AwaitSecret, Input::Secret(value)) => {
                if let Some((target, _, _)) = &self.current {
                    if let Some(name) = target.api_key_secret.clone() {
                        isolate.put_secret(&name, value);
                    }
                }
                self.attempt(isolate, now)
            }
            (Phase::AwaitProbeClaim, Input::HealthReply { status, body }) => {
                self.after_probe_claim(isolate, status, &body, now)
            }
            (Phase::AwaitMockHead, Input::Done) => self.served_upstream(isolate, now),
            (Phase::AwaitUpstream, Input::UpstreamHead { status, retry_after }) => {
                if (200..300).contains(&status) {
                    return self.served_upstream(isolate, now);
                }
                self.retry_after = retry_after;
                self.phase = Phase::AwaitErrorBody { status };
                Ok(Effect::ReadUpstreamBody { limit: MAX_ERROR_BODY_BYTES })
            }
            (Phase::AwaitUpstream, Input::UpstreamFailed(failure)) => {
                let FetchFailure::Unreachable = failure;
                self.attempt_failed(Failure::Connect, 0, GatewayError::UpstreamUnavailable, now);
                self.next_candidate(isolate, now)
            }
            (Phase::AwaitUpstream, Input::Idle) => self.on_idle(isolate, Pending::Fetch, now),
            (
                Phase::AwaitErrorBody { status },
                input @ (Input::UpstreamBody(_) | Input::UpstreamBodyFailed),
            ) => {
                let body = match input {
                    Input::UpstreamBody(body) => body,
                    _ => Vec::new(),
                };
                let (dialect, secrets) = match &self.current {
                    Some((_, plan, secrets)) => (plan.upstream_dialect(), secrets.clone()),
                    None => (translate::UpstreamDialect::OpenAiChat, Vec::new()),
                };
                let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let error = translate::parse_upstream_error_redacting(dialect, status, &body, &secret_refs);
                let failure = Failure::from_status(status, self.retry_after.take().as_deref(), &body, now);
                self.attempt_failed(failure, status, error.clone(), now);
                if failure.fails_over() {
                    self.next_candidate(isolate, now)
                } else {
                    self.no_more_candidates(isolate, error, now)
                }
            }
            (Phase::AwaitKeepaliveHead { pending }, Input::Done) => {
                self.phase = Phase::AwaitKeepaliveEmit { pending };
                Ok(Effect::Emit(Emitted::Bytes(keepalive_bytes(self.start.client).to_vec())))
            }
            (Phase::AwaitKeepaliveEmit { pending }, input @ (Input::Done | Input::ClientGone)) => {
                if input == Input::ClientGone {
                    self.disconnected_at = Some(now);
                }
                self.phase = match pending {
                    Pending::Fetch => Phase::AwaitUpstream,
                    Pending::Chunk => Phase::AwaitChunk,
                };
                Ok(Effect::Wait { wake_ms: self.wake_ms(now) })
            }
            (Phase::AwaitCancel { then }, Input::Done) => self.after_cancel(isolate, then, now),
            (Phase::AwaitWholeBody, Input::UpstreamBody(body)) => self.whole_body(body, now),
            (Phase::AwaitWholeBody, Input::UpstreamBodyFailed) => Err(GatewayError::UpstreamUnavailable),
            (Phase::AwaitStreamStart, Input::Done) => match self.pending_emit.take() {
                Some((bytes, then)) => Ok(self.emit_now(bytes, then)),
                None => self.read_chunk(isolate, now),
            },
            (Phase::AwaitMockChunk, Input::Done) => self.read_chunk(isolate, now),
            (Phase::AwaitChunk, Input::Chunk(chunk)) => self.on_chunk(isolate, chunk, now),
            (Phase::AwaitChunk, Input::UpstreamEnd) => self.on_upstream_end(isolate, now),
            (Phase::AwaitChunk, Input::UpstreamBroken(why)) => {
                self.log(false, format!("upstream stream broke: {why}"));
                self.on_upstream_end(isolate, now)
            }
            (Phase::AwaitChunk, Input::Idle) => self.on_idle(isolate, Pending::Chunk, now),
            (Phase::AwaitEmit, Input::Done) => self.read_chunk(isolate, now),
            (Phase::AwaitEmit, Input::ClientGone) => {
                self.disconnected_at = Some(now);
                self.read_chunk(isolate, now)
            }
            (Phase::AwaitFinalEmit | Phase::AwaitFinalHead, Input::Done | Input::ClientGone) => {
                self.phase = Phase::AwaitClose;
                Ok(Effect::CloseStream)
            }
            (Phase::AwaitClose, Input::Done) => self.after_close(isolate, now),
            (Phase::AwaitReportWindow | Phase::AwaitIdleRelease, Input::Done) => {
                Ok(self.report_step(isolate, now))
            }
            (Phase::AwaitReport, Input::AccountReply { status, body }) => {
                Ok(self.after_report(isolate, status, &body, now))
            }
            (Phase::AwaitBatchWindow, Input::Done) => {
                let batch = isolate.take_usage_batch();
                if batch.is_empty() {
                    return Ok(self.after_usage_sent(isolate, now));
                }
                Ok(self.publish(batch, false))
            }
            (Phase::AwaitPublish { fallback }, Input::Published(ok)) => {
                let sent = std::mem::take(&mut self.publishing);
                if !ok {
                    if fallback {
                        let ids: Vec<&str> = sent.iter().map(|e| e.request_id.as_str()).collect();
                        self.log(true, format!("usage event {} not queued", ids.join(", ")));
                    } else {
                        self.log(
                            true,
                            format!("usage batch of {} not queued, sending one by one", sent.len()),
                        );
                        self.fallback_events = sent.into();
                    }
                }
                if let Some(event) = self.fallback_events.pop_front() {
                    return Ok(self.publish(vec![event], true));
                }
                Ok(self.after_usage_sent(isolate, now))
            }
            (Phase::AwaitErrorRespond, Input::Done) => {
                if let Some(put) = self.cache_put_after_answer() {
                    return Ok(put);
                }
                Ok(self.settle_or_finish(isolate, AfterSettle::Finish, now))
            }
            (Phase::AwaitStateLookup, Input::StoreReply { status, body }) => {
                self.after_state_lookup(isolate, status, &body, now)
            }
            (Phase::AwaitStateWrite, Input::StoreReply { status, body }) => {
                self.after_state_write(isolate, status, &body, now)
            }
            (Phase::AwaitCacheGet, Input::CacheValue(value)) => self.after_cache_get(isolate, value, now),
            (Phase::AwaitCachePut { then }, Input::Done) => match then {
                AfterCachePut::Settle => Ok(self.settle_or_finish(isolate, AfterSettle::Finish, now)),
                AfterCachePut::StreamEnd => self.stream_end_tail(isolate, now),
            },
            (Phase::Finished, _) => Ok(Effect::Finished),
            (phase, input) => {
                let message = format!("generation: unexpected input {input:?} in phase {phase:?}");
                Err(self.internal(message))
            }
        }
    }

    /// Counts the request once, with the status its client was answered
    /// (or none: it finished unanswered, its client gone while it waited).
    fn count_answer(&mut self, isolate: &mut IsolateState, effect: &Effect) {
        let status = match effect {
            Effect::Respond(head, _) => Some(head.status),
            Effect::Finished => None,
            _ => return,
        };
        if !std::mem::replace(&mut self.counted, true) {
            isolate.counters.request(self.start.family, self.start.client, status);
        }
    }

    /// The request body is read (and, for a Responses client, expanded
    /// with its stored conversation: `original` is the body as sent, which a
    /// pin signs): parse it, then the pin or routing.
    pub(super) fn after_body(
        &mut self,
        isolate: &mut IsolateState,
        body: &[u8],
        original: &[u8],
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let inbound = Inbound::read_family(
            self.start.family,
            self.start.client,
            body,
            self.start.path_model.as_deref(),
            self.start.path_stream,
        )?;
        self.inbound = Some(inbound);
        self.cache_note_body(body);
        if self.start.pin.is_some() {
            return self.check_pin(isolate, original, now);
        }
        self.read_routing(isolate, now)
    }

    /// Routing from the isolate's table, or read from KV first.
    fn read_routing(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        match isolate.routing(now) {
            Some(table) => self.after_routing(isolate, &table, now),
            None => {
                self.phase = Phase::AwaitRouting;
                Ok(Effect::KvGet { key: ROUTING_KV_KEY.to_string() })
            }
        }
    }

    fn internal(&mut self, why: String) -> GatewayError {
        let id = self.start.request_id.clone();
        self.log(true, format!("{id}: {why}"));
        GatewayError::Internal
    }
}

/// Status and headers of an error response: `Retry-After` when the caller
/// should retry later, `WWW-Authenticate` for a missing or bad key.
pub fn error_head(error: &GatewayError) -> ResponseHead {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("access-control-allow-origin", "*".to_string()),
    ];
    if let Some(secs) = error.retry_after_secs() {
        headers.push(("retry-after", secs.to_string()));
    }
    if matches!(error, GatewayError::MissingApiKey | GatewayError::InvalidApiKey) {
        headers.push(("www-authenticate", "Bearer".to_string()));
    }
    ResponseHead { status: error.status(), headers }
}

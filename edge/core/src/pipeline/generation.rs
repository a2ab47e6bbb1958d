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
//!   → stream:     Respond(stream) → (ReadChunk → Emit)* → [settle] → Emit(end) → CloseStream
//!   → AccountCall(/settle) | PublishUsage   (after the response, in the background)
//!   → Finished
//! ```
//!
//! **Contract with the shell.** Once [`Effect::Respond`] is performed the
//! client has its answer; the shell keeps feeding inputs until
//! [`Effect::Finished`] (on Workers: inside `waitUntil`), because an admitted
//! request is settled after its response. A request admitted by its account
//! is settled exactly once whatever happens; a stream's end reaches the client
//! only after that settle.

use super::admission::{admit_request, may_skip_admission};
use super::inbound::Inbound;
use super::isolate::{BatchStep, IsolateState, KeyReadError, USAGE_BATCH_WINDOW_MS};
use super::metering::{client_response_id, response_content_bytes, Ending, Meter, Served};
use super::route::{resolve, AttemptVerdict, Plan, MAX_ATTEMPTS};
use crate::api_key::{key_digest, kv_key_for_digest, presented_key, CredentialHeaders};
use crate::error::GatewayError;
use crate::ip_allow::ip_allowed;
use crate::key_account::{AccountSnapshot, AdmitDecision, KeyLimits, Refusal, SettleRequest};
use crate::key_record::KeyRecord;
use crate::limits::{DEFAULT_RESERVED_OUTPUT_TOKENS, MAX_DRAIN_AFTER_DISCONNECT_MS, MAX_UPSTREAM_BODY_BYTES};
use crate::mock_provider::MockReply;
use crate::openai_relay::{response_content_bytes as relay_content_bytes, response_usage, ChatStreamTap};
use crate::provider::{AuthScheme, Provider, ProviderDialect};
use crate::routing::{MockOptions, RoutingTable, ROUTING_KV_KEY};
use crate::sse::encode_event;
use crate::stream_shaper::StreamShaper;
use crate::translate::{self, ClientDialect, StreamOptions, StreamTranslator};
use crate::usage::{RequestOutcome, TokenUsage, UsageEvent};
use std::collections::VecDeque;
use std::rc::Rc;

/// Largest upstream error body read to extract a message.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Settle attempts before the usage event is published to the queue directly.
pub const SETTLE_ATTEMPTS: u32 = 3;
/// Admission attempts on a transport failure (a repeated admission of the
/// same request id only renews its lease).
pub const ADMIT_ATTEMPTS: u32 = 2;

/// The client's credentials as presented, and what the request came with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub x_goog_api_key: Option<String>,
    /// `?key=` (Gemini SDKs).
    pub query_key: Option<String>,
}

/// A generation request as it arrives.
#[derive(Debug, Clone)]
pub struct Start {
    pub client: ClientDialect,
    /// Gemini puts the model and streaming in the path.
    pub path_model: Option<String>,
    pub path_stream: bool,
    pub credentials: Credentials,
    /// `CF-Connecting-IP`, set by Cloudflare's edge (and by `wrangler dev`).
    pub client_ip: Option<String>,
    /// `Content-Length`, when declared.
    pub declared_body_len: Option<u64>,
    /// Unique id of this request (`req_<hex>`), from the runtime's CSPRNG.
    pub request_id: String,
    /// Any random u64: the weighted order of candidates.
    pub routing_seed: u64,
}

/// What the shell tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The first input.
    Begin,
    /// The last effect is done and reported nothing (`Sleep`, `Respond`,
    /// `Emit`, `CloseStream`).
    Done,
    /// `KvGet` answered (`None`: no such key).
    KvValue(Option<String>),
    /// `KvGet` failed.
    KvFailed(String),
    /// `ReadSecret` answered.
    Secret(Option<String>),
    /// `AccountCall` answered with this status and body; a transport failure
    /// is status 0 with the error text.
    AccountReply { status: u16, body: String },
    /// `ReadRequestBody` read the whole body.
    RequestBody(Vec<u8>),
    /// The body is larger than the limit.
    RequestBodyTooLarge,
    /// The body could not be read.
    RequestBodyUnreadable,
    /// `Fetch` got response headers.
    UpstreamHead { status: u16 },
    /// `Fetch` got no response.
    UpstreamFailed(FetchFailure),
    /// `ReadUpstreamBody` read the whole body (up to its limit).
    UpstreamBody(Vec<u8>),
    /// `ReadUpstreamBody` failed or went past its limit.
    UpstreamBodyFailed,
    /// `ReadChunk` read this chunk.
    Chunk(Vec<u8>),
    /// `ReadChunk`: the upstream body ended.
    UpstreamEnd,
    /// `ReadChunk`: the upstream body broke.
    UpstreamBroken(String),
    /// `ReadChunk` passed its deadline.
    ChunkDeadline,
    /// `Emit` found the client gone.
    ClientGone,
    /// `PublishUsage` finished (false: the queue refused).
    Published(bool),
}

/// Why a fetch got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// Connection refused, reset, DNS, TLS.
    Unreachable,
    /// No response headers within the time limit.
    Timeout,
}

/// An upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Time allowed for the response headers.
    pub timeout_ms: u64,
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
}

/// The body of the client response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The upstream body the shell last handed in ([`Input::UpstreamBody`]),
    /// unchanged: the shell answers with its own copy.
    UpstreamBody,
    /// A stream the machine fills with [`Effect::Emit`] and ends with
    /// [`Effect::CloseStream`].
    Stream,
}

/// Bytes for the client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emitted {
    Bytes(Vec<u8>),
    /// The chunk the shell last handed in ([`Input::Chunk`]), unchanged.
    Chunk,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Read a KV value as text; answer [`Input::KvValue`] or [`Input::KvFailed`].
    KvGet { key: String },
    /// Read a worker secret; answer [`Input::Secret`].
    ReadSecret { name: String },
    /// Call the key's account object (`https://key-account{path}`); answer
    /// [`Input::AccountReply`].
    AccountCall { digest: String, method: &'static str, path: &'static str, body: Option<String> },
    /// Read the request body, at most `limit` bytes.
    ReadRequestBody { limit: usize },
    /// POST upstream; answer [`Input::UpstreamHead`] or [`Input::UpstreamFailed`].
    Fetch(UpstreamRequest),
    /// Read the whole upstream body, at most `limit` bytes.
    ReadUpstreamBody { limit: usize },
    /// Wait, then answer [`Input::Done`].
    Sleep { ms: u64 },
    /// Answer the client.
    Respond(ResponseHead, ResponseBody),
    /// Read the next upstream chunk, giving up at `deadline_ms` (unix ms)
    /// when set; answer [`Input::Chunk`], [`Input::UpstreamEnd`],
    /// [`Input::UpstreamBroken`] or [`Input::ChunkDeadline`].
    ReadChunk { deadline_ms: Option<i64> },
    /// Write to the client stream; answer [`Input::Done`] or [`Input::ClientGone`].
    Emit(Emitted),
    /// End the client stream (and stop reading the upstream).
    CloseStream,
    /// Send these events (JSON text of an array of [`UsageEvent`]) to the
    /// usage queue; answer [`Input::Published`].
    PublishUsage { events_json: String, count: usize },
    /// Nothing more to do.
    Finished,
}

/// A log line for the shell to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub error: bool,
    pub message: String,
}

/// A candidate, owned (the routing table may be replaced while the request runs).
#[derive(Debug, Clone)]
struct Target {
    channel: String,
    provider: &'static Provider,
    upstream_model: String,
    base_url: String,
    api_key: Option<String>,
    api_key_secret: Option<String>,
    timeout_ms: Option<u64>,
    mock: MockOptions,
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
    AwaitRouting,
    AwaitAccountCheck,
    AwaitAdmission,
    AwaitSecret,
    /// Mock latency before its "headers".
    AwaitMockHead,
    AwaitUpstream,
    AwaitErrorBody {
        status: u16,
        fail_over: bool,
    },
    AwaitWholeBody,
    /// The stream response was handed to the shell.
    AwaitStreamStart,
    AwaitChunk,
    /// Mock delay between frames.
    AwaitMockChunk,
    AwaitEmit,
    AwaitFinalEmit,
    AwaitClose,
    AwaitSettle,
    AwaitSettleRetry,
    AwaitBatchWindow,
    AwaitPublish {
        fallback: bool,
    },
    /// An error response was handed over; settle or finish next.
    AwaitErrorRespond,
    Finished,
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
    route_model: String,
    suffix_stripped: bool,
    next_target: usize,
    current: Option<(Target, Plan, Vec<String>)>,
    served: Served,
    last_error: Option<GatewayError>,
    meter: Option<Meter>,
    admitted: bool,
    admit_attempts: u32,
    upstream: Upstream,
    shaper: Option<StreamShaper>,
    disconnected_at: Option<i64>,
    drain_expired: bool,
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
            suffix_stripped: false,
            next_target: 0,
            current: None,
            served: Served::default(),
            last_error: None,
            meter: None,
            admitted: false,
            admit_attempts: 0,
            upstream: Upstream::Remote,
            shaper: None,
            disconnected_at: None,
            drain_expired: false,
            ttft_ms: None,
            final_bytes: Vec::new(),
            event: None,
            after_settle: AfterSettle::Finish,
            settle_attempts: 0,
            publishing: Vec::new(),
            fallback_events: VecDeque::new(),
            responded: false,
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
        self.admitted
    }

    fn log(&mut self, error: bool, message: String) {
        self.logs.push(LogLine { error, message });
    }

    /// Advances the request by one input.
    pub fn next(&mut self, isolate: &mut IsolateState, input: Input, now_ms: i64) -> Effect {
        match self.step(isolate, input, now_ms) {
            Ok(effect) => effect,
            Err(error) => self.fail(error, now_ms),
        }
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
                let inbound = Inbound::read(
                    self.start.client,
                    &body,
                    self.start.path_model.as_deref(),
                    self.start.path_stream,
                )?;
                self.inbound = Some(inbound);
                match isolate.routing(now) {
                    Some(table) => self.after_routing(isolate, &table, now),
                    None => {
                        self.phase = Phase::AwaitRouting;
                        Ok(Effect::KvGet { key: ROUTING_KV_KEY.to_string() })
                    }
                }
            }
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
            (Phase::AwaitAdmission, Input::AccountReply { status, body }) => {
                self.after_admission(isolate, status, &body, now)
            }
            (Phase::AwaitSecret, Input::Secret(value)) => {
                if let Some((target, _, _)) = &self.current {
                    if let Some(name) = target.api_key_secret.clone() {
                        isolate.put_secret(&name, value);
                    }
                }
                self.attempt(isolate, now)
            }
            (Phase::AwaitMockHead, Input::Done) => self.served_upstream(now),
            (Phase::AwaitUpstream, Input::UpstreamHead { status }) => {
                match AttemptVerdict::after_status(status) {
                    AttemptVerdict::Serve => self.served_upstream(now),
                    verdict => {
                        self.phase =
                            Phase::AwaitErrorBody { status, fail_over: verdict == AttemptVerdict::FailOver };
                        Ok(Effect::ReadUpstreamBody { limit: MAX_ERROR_BODY_BYTES })
                    }
                }
            }
            (Phase::AwaitUpstream, Input::UpstreamFailed(failure)) => {
                let error = match failure {
                    FetchFailure::Unreachable => GatewayError::UpstreamUnavailable,
                    FetchFailure::Timeout => GatewayError::UpstreamTimeout,
                };
                let channel = self.served.channel.clone();
                self.log(false, format!("channel {channel} failed: {error}"));
                self.last_error = Some(error);
                self.next_candidate(isolate, now)
            }
            (
                Phase::AwaitErrorBody { status, fail_over },
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
                let channel = self.served.channel.clone();
                self.log(false, format!("channel {channel} answered HTTP {status}"));
                self.last_error = Some(error.clone());
                if fail_over {
                    self.next_candidate(isolate, now)
                } else {
                    Err(error)
                }
            }
            (Phase::AwaitWholeBody, Input::UpstreamBody(body)) => self.whole_body(body, now),
            (Phase::AwaitWholeBody, Input::UpstreamBodyFailed) => Err(GatewayError::UpstreamUnavailable),
            (Phase::AwaitStreamStart | Phase::AwaitMockChunk, Input::Done) => self.read_chunk(now),
            (Phase::AwaitChunk, Input::Chunk(chunk)) => self.on_chunk(chunk, now),
            (Phase::AwaitChunk, Input::UpstreamEnd) => self.end_of_stream(now),
            (Phase::AwaitChunk, Input::UpstreamBroken(why)) => {
                self.log(false, format!("upstream stream broke: {why}"));
                self.end_of_stream(now)
            }
            (Phase::AwaitChunk, Input::ChunkDeadline) => {
                self.drain_expired = true;
                self.end_of_stream(now)
            }
            (Phase::AwaitEmit, Input::Done) => self.read_chunk(now),
            (Phase::AwaitEmit, Input::ClientGone) => {
                self.disconnected_at = Some(now);
                self.read_chunk(now)
            }
            (Phase::AwaitFinalEmit, Input::Done | Input::ClientGone) => {
                self.phase = Phase::AwaitClose;
                Ok(Effect::CloseStream)
            }
            (Phase::AwaitClose, Input::Done) => self.after_close(isolate, now),
            (Phase::AwaitSettle, Input::AccountReply { status, body }) => {
                if (200..300).contains(&status) {
                    return Ok(self.after_settled(isolate, now));
                }
                let id = self.start.request_id.clone();
                let attempt = self.settle_attempts;
                self.log(
                    false,
                    format!("key account settle of {id} failed (attempt {attempt}): {status} {body}"),
                );
                if self.settle_attempts < SETTLE_ATTEMPTS {
                    self.phase = Phase::AwaitSettleRetry;
                    return Ok(Effect::Sleep { ms: 50 * 4u64.pow(self.settle_attempts - 1) });
                }
                self.log(true, format!("key account unreachable: publishing usage of {id} directly"));
                let events: Vec<UsageEvent> = self.event.clone().into_iter().collect();
                Ok(self.publish(events, true))
            }
            (Phase::AwaitSettleRetry, Input::Done) => Ok(self.settle_effect()),
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
                Ok(self.settle_or_finish(isolate, AfterSettle::Finish, now))
            }
            (Phase::Finished, _) => Ok(Effect::Finished),
            (phase, input) => {
                let message = format!("generation: unexpected input {input:?} in phase {phase:?}");
                Err(self.internal(message))
            }
        }
    }

    fn internal(&mut self, why: String) -> GatewayError {
        let id = self.start.request_id.clone();
        self.log(true, format!("{id}: {why}"));
        GatewayError::Internal
    }

    fn authenticate(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        let c = &self.start.credentials;
        let presented = presented_key(&CredentialHeaders {
            authorization: c.authorization.as_deref(),
            x_api_key: c.x_api_key.as_deref(),
            x_goog_api_key: c.x_goog_api_key.as_deref(),
            query_key: c.query_key.as_deref(),
        })
        .ok_or(GatewayError::MissingApiKey)?;
        self.digest = key_digest(presented);
        match isolate.key(&self.digest, now) {
            Some(record) => self.after_key(isolate, record, now),
            None => {
                self.phase = Phase::AwaitKey;
                Ok(Effect::KvGet { key: kv_key_for_digest(&self.digest) })
            }
        }
    }

    fn after_key(
        &mut self,
        isolate: &IsolateState,
        record: Rc<KeyRecord>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        record.check_usable(now / 1000)?;
        if let Some(allowed) = record.allowed_ips.as_deref().filter(|l| !l.is_empty()) {
            // Absent means unknown: refuse.
            if !ip_allowed(allowed, self.start.client_ip.as_deref().unwrap_or_default()) {
                return Err(GatewayError::IpNotAllowed);
            }
        }
        self.record = Some(record);
        let limit = isolate.config.max_body_bytes;
        if self.start.declared_body_len.is_some_and(|len| len > limit as u64) {
            return Err(GatewayError::PayloadTooLarge { limit_bytes: limit });
        }
        self.phase = Phase::AwaitBody;
        Ok(Effect::ReadRequestBody { limit })
    }

    fn after_routing(
        &mut self,
        isolate: &mut IsolateState,
        table: &RoutingTable,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let (record, inbound) = match (&self.record, &mut self.inbound) {
            (Some(record), Some(inbound)) => (record.clone(), inbound),
            _ => return Err(self.internal("routing before the request was read".into())),
        };
        let route = resolve(table, &record, &inbound.model, self.start.routing_seed)?;
        self.route_model = route.model.to_string();
        self.suffix_stripped = route.suffix_stripped;
        self.targets = route
            .candidates
            .iter()
            .take(MAX_ATTEMPTS)
            .map(|c| Target {
                channel: c.channel.id.clone(),
                provider: c.provider,
                upstream_model: c.upstream_model.to_string(),
                base_url: c.base_url.trim_end_matches('/').to_string(),
                api_key: c.channel.api_key.clone().filter(|k| !k.is_empty()),
                api_key_secret: c.channel.api_key_secret.clone(),
                timeout_ms: c.channel.timeout_ms,
                mock: c.channel.mock.unwrap_or_default(),
            })
            .collect();
        if record.quota_micros.is_some() {
            inbound.cap_output(DEFAULT_RESERVED_OUTPUT_TOKENS);
        }
        self.meter = Some(Meter {
            request_id: self.start.request_id.clone(),
            key_digest: record.digest.clone(),
            owner: record.owner.clone(),
            user_id: record.user_id.clone(),
            group: record.group.clone(),
            price_ratio_ppm: route.price_ratio_ppm,
            model: inbound.model.clone(),
            stream: inbound.stream,
            started_ms: self.started_ms,
            prompt_estimate: inbound.prompt.estimate,
            price: route.price,
        });
        // Keys with limits are admitted by their account on every request;
        // keys without skip that round trip, and their account is asked every
        // couple of seconds per isolate for revocations and new limits.
        if KeyLimits::from_record(&record).enforces_anything() {
            return Ok(self.admission());
        }
        match isolate.account_check(&self.digest, now) {
            Some(true) => self.attempt(isolate, now),
            Some(false) => Ok(self.admission()),
            None => {
                self.phase = Phase::AwaitAccountCheck;
                Ok(Effect::AccountCall {
                    digest: self.digest.clone(),
                    method: "GET",
                    path: "/state",
                    body: None,
                })
            }
        }
    }

    fn after_account_check(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if !(200..300).contains(&status) {
            return Err(self.internal(format!("key account snapshot failed: {status} {body}")));
        }
        let snapshot: AccountSnapshot = serde_json::from_str(body)
            .map_err(|e| self.internal(format!("key account snapshot unreadable: {e}")))?;
        let record = self.record.clone().ok_or(GatewayError::Internal)?;
        let may_skip = may_skip_admission(&record, &snapshot, now)?;
        isolate.put_account_check(&self.digest, may_skip, now);
        if may_skip {
            self.attempt(isolate, now)
        } else {
            Ok(self.admission())
        }
    }

    fn admission(&mut self) -> Effect {
        self.admit_attempts += 1;
        self.phase = Phase::AwaitAdmission;
        let body = match (&self.record, &self.inbound, &self.meter) {
            (Some(record), Some(inbound), Some(meter)) => serde_json::to_string(&admit_request(
                &self.start.request_id,
                record,
                &meter.price,
                meter.price_ratio_ppm,
                inbound,
            ))
            .ok(),
            _ => None,
        };
        Effect::AccountCall { digest: self.digest.clone(), method: "POST", path: "/admit", body }
    }

    fn after_admission(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let decision = if (200..300).contains(&status) {
            serde_json::from_str::<AdmitDecision>(body).map_err(|e| e.to_string())
        } else {
            Err(format!("{status} {body}"))
        };
        match decision {
            Ok(AdmitDecision::Admitted { .. }) => {
                self.admitted = true;
                self.attempt(isolate, now)
            }
            Ok(AdmitDecision::Refused { reason, retry_after_secs }) => {
                Err(reason.into_error(retry_after_secs))
            }
            Ok(AdmitDecision::ConcurrencyLimited { retry_after_secs, .. }) => {
                Err(Refusal::Concurrency.into_error(Some(retry_after_secs)))
            }
            Err(why) if self.admit_attempts < ADMIT_ATTEMPTS => {
                let id = self.start.request_id.clone();
                self.log(false, format!("key account admission of {id} failed, retrying: {why}"));
                Ok(self.admission())
            }
            Err(why) => Err(self.internal(format!("key account admission failed: {why}"))),
        }
    }

    /// Tries the next candidate, or ends with the last failure.
    fn next_candidate(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        self.current = None;
        if self.next_target >= self.targets.len() {
            return Err(self.last_error.clone().unwrap_or(GatewayError::UpstreamUnavailable));
        }
        self.attempt(isolate, now)
    }

    /// Starts (or continues, after a secret was read) the attempt at the
    /// next candidate.
    fn attempt(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        let target = match &self.current {
            Some((target, _, _)) => target.clone(),
            None => {
                let Some(target) = self.targets.get(self.next_target).cloned() else {
                    return Err(self.last_error.clone().unwrap_or(GatewayError::UpstreamUnavailable));
                };
                self.next_target += 1;
                self.served = Served {
                    channel: target.channel.clone(),
                    provider: target.provider.id.to_string(),
                    upstream_model: target.upstream_model.clone(),
                };
                let plan =
                    Plan::for_attempt(self.start.client, target.provider.dialect, self.suffix_stripped);
                self.current = Some((target.clone(), plan, Vec::new()));
                target
            }
        };
        let credential = match (&target.api_key, &target.api_key_secret) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(name)) => match isolate.secret(name) {
                Some(value) => value.map(str::to_string),
                None => {
                    self.phase = Phase::AwaitSecret;
                    return Ok(Effect::ReadSecret { name: name.clone() });
                }
            },
            (None, None) => None,
        };
        let plan = match &mut self.current {
            Some((_, plan, secrets)) => {
                *secrets = credential.iter().cloned().collect();
                *plan
            }
            None => return Err(GatewayError::Internal),
        };
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let mock = target.provider.dialect == ProviderDialect::Mock;
        let (path, body) = match plan {
            Plan::Relay => {
                if mock {
                    let body = inbound.passthrough_body().cloned().unwrap_or_default();
                    return Ok(self.start_mock(&body, &target, now));
                }
                let body = inbound
                    .passthrough_upstream_body(&target.upstream_model, target.provider)
                    .unwrap_or_default();
                ("/chat/completions".to_string(), body)
            }
            Plan::Translate(dialect) => {
                let built = inbound.for_translation().and_then(|canonical| {
                    translate::build_upstream_request(dialect, canonical, &target.upstream_model)
                });
                let call = match built {
                    Ok(call) => call,
                    Err(error) => {
                        self.last_error = Some(error.clone());
                        return match AttemptVerdict::after_error(&error) {
                            AttemptVerdict::FailOver => self.next_candidate(isolate, now),
                            _ => Err(error),
                        };
                    }
                };
                if mock {
                    let body = match serde_json::from_slice::<serde_json::Value>(&call.body) {
                        Ok(serde_json::Value::Object(map)) => map,
                        _ => return Err(self.internal("mock request body is not an object".into())),
                    };
                    return Ok(self.start_mock(&body, &target, now));
                }
                (call.path, call.body)
            }
        };
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("accept".to_string(), "application/json, text/event-stream".to_string()),
        ];
        for (name, value) in target.provider.static_headers {
            headers.push((name.to_string(), value.to_string()));
        }
        if let Some(key) = &credential {
            match target.provider.auth {
                AuthScheme::Bearer => headers.push(("authorization".into(), format!("Bearer {key}"))),
                AuthScheme::XApiKey => headers.push(("x-api-key".into(), key.clone())),
                AuthScheme::XGoogApiKey => headers.push(("x-goog-api-key".into(), key.clone())),
                AuthScheme::None => {}
            }
        }
        self.upstream = Upstream::Remote;
        self.phase = Phase::AwaitUpstream;
        Ok(Effect::Fetch(UpstreamRequest {
            url: format!("{}{path}", target.base_url),
            headers,
            body,
            timeout_ms: target.timeout_ms.unwrap_or(isolate.config.upstream_timeout_ms),
        }))
    }

    /// The built-in mock answers like an OpenAI-compatible upstream would.
    fn start_mock(
        &mut self,
        body: &serde_json::Map<String, serde_json::Value>,
        target: &Target,
        now: i64,
    ) -> Effect {
        let stream = body.get("stream").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let prompt_tokens = self.inbound.as_ref().map_or(1, |i| i.prompt.estimate);
        let reply = MockReply::for_request(body, &target.upstream_model, now / 1000, prompt_tokens);
        let frames: VecDeque<Vec<u8>> = if stream {
            let frames: Vec<Vec<u8>> = reply
                .stream_payloads(true)
                .iter()
                .map(|payload| {
                    let mut frame = Vec::with_capacity(payload.len() + 8);
                    encode_event(&mut frame, None, payload);
                    frame
                })
                .collect();
            if target.mock.chunk_delay_ms == 0 {
                VecDeque::from([frames.concat()])
            } else {
                frames.into()
            }
        } else {
            VecDeque::from([reply.completion_json().to_string().into_bytes()])
        };
        self.upstream = Upstream::Mock { frames, delay_ms: target.mock.chunk_delay_ms, sent_first: false };
        if target.mock.latency_ms > 0 {
            self.phase = Phase::AwaitMockHead;
            return Effect::Sleep { ms: target.mock.latency_ms };
        }
        match self.served_upstream(now) {
            Ok(effect) => effect,
            Err(error) => self.fail(error, now),
        }
    }

    fn response_headers(&self) -> Vec<(&'static str, String)> {
        let id = self.start.request_id.clone();
        vec![
            ("x-request-id", id.clone()),
            ("request-id", id),
            ("access-control-allow-origin", "*".into()),
            ("access-control-expose-headers", "x-request-id, request-id".into()),
        ]
    }

    /// An upstream accepted the request: answer from it.
    fn served_upstream(&mut self, now: i64) -> Result<Effect, GatewayError> {
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let (plan, secrets) = match &self.current {
            Some((_, plan, secrets)) => (*plan, secrets.clone()),
            None => return Err(GatewayError::Internal),
        };
        if !inbound.stream {
            return match &mut self.upstream {
                Upstream::Remote => {
                    self.phase = Phase::AwaitWholeBody;
                    Ok(Effect::ReadUpstreamBody { limit: MAX_UPSTREAM_BODY_BYTES })
                }
                // The mock's answer was made here: no read needed.
                Upstream::Mock { frames, .. } => {
                    let body = frames.drain(..).collect::<Vec<_>>().concat();
                    self.whole_body(body, now)
                }
            };
        }
        let client = self.start.client;
        self.shaper = Some(match plan {
            Plan::Relay => {
                StreamShaper::Relay(Box::new(ChatStreamTap::new(inbound.client_wants_usage, secrets)))
            }
            Plan::Translate(upstream) => StreamShaper::Translate(Box::new(StreamTranslator::new(
                upstream,
                client,
                StreamOptions {
                    response_id: client_response_id(client, &self.start.request_id),
                    model: inbound.model.clone(),
                    created: self.started_ms / 1000,
                    include_usage: inbound.client_wants_usage,
                    secrets,
                },
            ))),
        });
        let mut headers = self.response_headers();
        headers.push(("content-type", "text/event-stream; charset=utf-8".into()));
        headers.push(("cache-control", "no-cache".into()));
        headers.push(("x-accel-buffering", "no".into()));
        self.phase = Phase::AwaitStreamStart;
        self.responded = true;
        Ok(Effect::Respond(ResponseHead { status: 200, headers }, ResponseBody::Stream))
    }

    fn whole_body(&mut self, body: Vec<u8>, now: i64) -> Result<Effect, GatewayError> {
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let plan = self.current.as_ref().map(|(_, plan, _)| *plan).ok_or(GatewayError::Internal)?;
        let (out, reported, content_bytes) = match plan {
            Plan::Relay => {
                let usage = response_usage(&body).map(|u| TokenUsage::from_openai(&u));
                (ResponseBody::UpstreamBody, usage, relay_content_bytes(&body))
            }
            Plan::Translate(upstream) => {
                let mut resp = translate::parse_upstream_response(upstream, &body)?;
                if resp.created == 0 {
                    resp.created = self.started_ms / 1000;
                }
                if resp.id.is_empty() {
                    resp.id = client_response_id(self.start.client, &self.start.request_id);
                }
                resp.model = inbound.model.clone();
                let usage = resp.usage_reported.then_some(resp.usage);
                let content = response_content_bytes(&resp);
                (
                    ResponseBody::Bytes(translate::render_client_response(self.start.client, &resp)),
                    usage,
                    content,
                )
            }
        };
        let out = match (out, &self.upstream) {
            // The mock's body was made here: the shell has no copy of it.
            (ResponseBody::UpstreamBody, Upstream::Mock { .. }) => ResponseBody::Bytes(body),
            (out, _) => out,
        };
        self.event = self
            .meter
            .as_ref()
            .map(|m| m.event(&self.served, Ending::completed(reported, content_bytes), now));
        let mut headers = self.response_headers();
        headers.push(("content-type", "application/json".into()));
        self.phase = Phase::AwaitErrorRespond;
        self.responded = true;
        Ok(Effect::Respond(ResponseHead { status: 200, headers }, out))
    }

    fn read_chunk(&mut self, now: i64) -> Result<Effect, GatewayError> {
        if let Upstream::Mock { frames, delay_ms, sent_first } = &mut self.upstream {
            if self.phase != Phase::AwaitMockChunk && *sent_first && *delay_ms > 0 && !frames.is_empty() {
                self.phase = Phase::AwaitMockChunk;
                return Ok(Effect::Sleep { ms: *delay_ms });
            }
            *sent_first = true;
            let next = frames.pop_front();
            self.phase = Phase::AwaitChunk;
            // The mock is read in place: feed the frame (or the end) straight in.
            return match next {
                Some(frame) => self.on_chunk(frame, now),
                None => self.end_of_stream(now),
            };
        }
        self.phase = Phase::AwaitChunk;
        let deadline_ms = self.disconnected_at.map(|at| at + MAX_DRAIN_AFTER_DISCONNECT_MS);
        Ok(Effect::ReadChunk { deadline_ms })
    }

    fn on_chunk(&mut self, chunk: Vec<u8>, now: i64) -> Result<Effect, GatewayError> {
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let out = shaper.feed(&chunk);
        if self.ttft_ms.is_none() && shaper.saw_content() {
            self.ttft_ms = u64::try_from(now - self.started_ms).ok();
        }
        if shaper.is_ended() {
            // Held back until the request is settled.
            self.final_bytes = out;
            return self.end_of_stream(now);
        }
        if out.is_empty() || self.disconnected_at.is_some() {
            return self.read_chunk(now);
        }
        self.phase = Phase::AwaitEmit;
        let unchanged = out == chunk && matches!(self.upstream, Upstream::Remote);
        Ok(Effect::Emit(if unchanged { Emitted::Chunk } else { Emitted::Bytes(out) }))
    }

    /// The upstream ended (or broke, or the drain after a disconnect ran
    /// out): the usage event is made; an admitted request is settled before
    /// the client sees the end.
    fn end_of_stream(&mut self, now: i64) -> Result<Effect, GatewayError> {
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let tail = shaper.finish();
        self.final_bytes.extend(tail);
        let outcome = if self.disconnected_at.is_some() {
            RequestOutcome::ClientAborted
        } else if shaper.completed() {
            RequestOutcome::Completed
        } else {
            RequestOutcome::Failed
        };
        let reported = if self.drain_expired && !shaper.completed() { None } else { shaper.usage() };
        let ending = Ending {
            status: if outcome == RequestOutcome::Failed { 502 } else { 200 },
            outcome,
            reported,
            upstream_succeeded: shaper.saw_content() || shaper.completed(),
            content_bytes: shaper.content_bytes(),
            ttft_ms: self.ttft_ms,
        };
        self.event = self.meter.as_ref().map(|m| m.event(&self.served, ending, now));
        if self.admitted {
            self.after_settle = AfterSettle::EmitFinal;
            return Ok(self.settle_effect());
        }
        Ok(self.emit_final())
    }

    fn emit_final(&mut self) -> Effect {
        let bytes = std::mem::take(&mut self.final_bytes);
        if bytes.is_empty() || self.disconnected_at.is_some() {
            self.phase = Phase::AwaitClose;
            return Effect::CloseStream;
        }
        self.phase = Phase::AwaitFinalEmit;
        Effect::Emit(Emitted::Bytes(bytes))
    }

    fn after_close(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        if self.admitted {
            // Settled before the end was sent.
            self.phase = Phase::Finished;
            return Ok(Effect::Finished);
        }
        Ok(self.settle_or_finish(isolate, AfterSettle::Finish, now))
    }

    /// Settles (admitted requests) or batches the usage event (the rest).
    fn settle_or_finish(&mut self, isolate: &mut IsolateState, after: AfterSettle, now: i64) -> Effect {
        self.after_settle = after;
        if self.admitted {
            return self.settle_effect();
        }
        let Some(event) = self.event.take() else {
            self.phase = Phase::Finished;
            return Effect::Finished;
        };
        match isolate.push_usage(event) {
            BatchStep::SendNow(batch) => self.publish(batch, false),
            BatchStep::WaitThenSend => {
                self.phase = Phase::AwaitBatchWindow;
                Effect::Sleep { ms: USAGE_BATCH_WINDOW_MS }
            }
            BatchStep::Joined => self.after_usage_sent(isolate, now),
        }
    }

    fn settle_effect(&mut self) -> Effect {
        self.settle_attempts += 1;
        self.phase = Phase::AwaitSettle;
        let body = serde_json::to_string(&SettleRequest {
            request_id: self.start.request_id.clone(),
            event: self.event.clone(),
        })
        .ok();
        Effect::AccountCall { digest: self.digest.clone(), method: "POST", path: "/settle", body }
    }

    fn after_settled(&mut self, isolate: &mut IsolateState, now: i64) -> Effect {
        self.after_usage_sent(isolate, now)
    }

    fn after_usage_sent(&mut self, _isolate: &mut IsolateState, _now: i64) -> Effect {
        match self.after_settle {
            AfterSettle::EmitFinal => {
                self.after_settle = AfterSettle::Finish;
                self.emit_final()
            }
            AfterSettle::Finish => {
                self.phase = Phase::Finished;
                Effect::Finished
            }
        }
    }

    fn publish(&mut self, events: Vec<UsageEvent>, fallback: bool) -> Effect {
        self.phase = Phase::AwaitPublish { fallback };
        let count = events.len();
        let events_json = serde_json::to_string(&events).unwrap_or_else(|_| "[]".into());
        self.publishing = events;
        Effect::PublishUsage { events_json, count }
    }

    /// Ends the request with `error`: before the response, the client gets it
    /// in its dialect (and an admitted or metered request is settled as
    /// failed, billed nothing); after it, the stream is closed.
    fn fail(&mut self, error: GatewayError, now: i64) -> Effect {
        // Metered from the first attempt on (or once admitted): a request
        // refused before that (key, body, route, admission) leaves no row.
        if self.event.is_none() && (self.admitted || self.next_target > 0) {
            self.event =
                self.meter.as_ref().map(|m| m.event(&self.served, Ending::failed(error.status()), now));
        }
        if self.responded {
            let id = self.start.request_id.clone();
            self.log(true, format!("{id}: ended after the response began: {error}"));
            if self.shaper.is_some() && self.phase != Phase::AwaitClose && self.phase != Phase::Finished {
                self.after_settle = AfterSettle::Finish;
                self.phase = Phase::AwaitClose;
                return Effect::CloseStream;
            }
            self.phase = Phase::Finished;
            return Effect::Finished;
        }
        self.phase = Phase::AwaitErrorRespond;
        self.responded = true;
        Effect::Respond(
            error_head(&error),
            ResponseBody::Bytes(error.body(self.start.client.error_dialect()).into_bytes()),
        )
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

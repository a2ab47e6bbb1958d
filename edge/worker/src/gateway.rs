//! The generation pipeline, for every client dialect: authenticate, validate,
//! route, admit (per-key Durable Object), forward with failover before the
//! first byte, shape the response (OpenAI passthrough or translation), meter,
//! settle. Each step is a call into `edgeway-core`; this module sequences them
//! over platform I/O.
//!
//! Streams are driven by a pump task registered with `waitUntil`: it reads the
//! upstream, shapes each chunk and hands it to the client through a small
//! bounded channel. When the client disconnects, the pump keeps reading (up
//! to [`MAX_DRAIN_AFTER_DISCONNECT_MS`]) so the provider's own usage is what
//! gets billed; only if that bound passes is usage estimated.

use crate::http_io::{self, read_body_limited};
use crate::isolate_cache;
use crate::key_account_object::KeyAccountClient;
use crate::runtime::{now_ms, random_uuid, routing_seed};
use crate::upstream::{self, BodyStream, UpstreamReply};
use crate::{bindings, mock_upstream, usage_batcher};
use edgeway_core::api_key::{key_digest, presented_key, CredentialHeaders};
use edgeway_core::error::GatewayError;
use edgeway_core::ip_allow::ip_allowed;
use edgeway_core::key_account::{AdmitRequest, KeyLimits, SettleRequest};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::limits::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_RESERVED_OUTPUT_TOKENS, DEFAULT_UPSTREAM_TIMEOUT_MS,
    MAX_DRAIN_AFTER_DISCONNECT_MS, MAX_UPSTREAM_BODY_BYTES,
};
use edgeway_core::model_catalog;
use edgeway_core::openai_relay::{
    parse_chat_request, response_content_bytes, response_usage, ChatStreamTap, PreparedChat,
};
use edgeway_core::pricing::ModelPrice;
use edgeway_core::provider::ProviderDialect;
use edgeway_core::routing::Candidate;
use edgeway_core::stream_shaper::StreamShaper;
use edgeway_core::translate::{
    self, reasoning, CanonicalRequest, ClientDialect, ContentPart, StreamOptions, StreamTranslator,
    UpstreamDialect,
};
use edgeway_core::usage::{settle_usage, RequestOutcome, TokenUsage, UsageEvent};
use futures_channel::mpsc;
use futures_util::future::{select, Either};
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::time::Duration;
use worker::{Context, Delay, Env, Headers, Request, Response};

/// Most channels tried for one request (failover happens only before any
/// byte has reached the client).
const MAX_ATTEMPTS: usize = 3;

/// Largest upstream error body read to extract a message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Client chunks buffered between the pump and the response body.
const STREAM_CHANNEL_CAPACITY: usize = 8;

/// Resolves the caller's key record from the request's credentials.
pub async fn authenticate(req: &Request, env: &Env) -> Result<Rc<KeyRecord>, GatewayError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let authorization = header("authorization");
    let x_api_key = header("x-api-key");
    let x_goog_api_key = header("x-goog-api-key");
    let query_key = req
        .url()
        .ok()
        .and_then(|url| url.query_pairs().find(|(k, _)| k == "key").map(|(_, v)| v.into_owned()));
    let credentials = CredentialHeaders {
        authorization: authorization.as_deref(),
        x_api_key: x_api_key.as_deref(),
        x_goog_api_key: x_goog_api_key.as_deref(),
        query_key: query_key.as_deref(),
    };
    let key = presented_key(&credentials).ok_or(GatewayError::MissingApiKey)?;
    let digest = key_digest(key);
    let record = isolate_cache::key_record(env, &digest).await?;
    record.check_usable(now_ms() / 1000)?;
    if let Some(allowed) = record.allowed_ips.as_deref().filter(|list| !list.is_empty()) {
        // Set by Cloudflare's edge (and by wrangler dev); absent means unknown: refuse.
        let client_ip = header("cf-connecting-ip").unwrap_or_default();
        if !ip_allowed(allowed, &client_ip) {
            return Err(GatewayError::IpNotAllowed);
        }
    }
    Ok(record)
}

/// `GET /v1/models` (OpenAI/Anthropic shape) or `GET /v1beta/models` (Gemini).
pub async fn list_models(req: &Request, env: &Env, gemini: bool) -> Result<Response, GatewayError> {
    let record = authenticate(req, env).await?;
    let table = isolate_cache::routing_table(env).await?;
    let body = if gemini {
        model_catalog::gemini_models_list(&table, &record)
    } else {
        model_catalog::models_list(&table, &record)
    };
    http_io::json_response(200, &body)
}

/// Anthropic `count_tokens` / Gemini `countTokens`, answered by estimate.
pub async fn count_tokens(
    mut req: Request,
    env: &Env,
    client: ClientDialect,
    path_model: Option<String>,
) -> Result<Response, GatewayError> {
    let record = authenticate(&req, env).await?;
    let body = read_body_limited(&mut req, max_body_bytes(env)).await?;
    let parsed = translate::parse_count_tokens_request(client, &body, path_model.as_deref())?;
    record.check_model(parsed.model_without_suffix.as_deref().unwrap_or(&parsed.model))?;
    let tokens = translate::count_tokens_estimate(&parsed);
    http_io::bytes_response(200, translate::render_count_tokens(client, tokens), "application/json")
}

fn max_body_bytes(env: &Env) -> usize {
    usize::try_from(bindings::number(env, bindings::MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES as u64))
        .unwrap_or(DEFAULT_MAX_BODY_BYTES)
}

/// A validated request, in whichever form its dialect allows cheaply.
struct Inbound {
    client: ClientDialect,
    body: Vec<u8>,
    /// OpenAI chat clients: the request for passthrough.
    openai: Option<PreparedChat>,
    /// Other clients, or OpenAI clients routed to another dialect.
    canonical: Option<CanonicalRequest>,
    /// Model name as the client asked.
    model: String,
    stream: bool,
    client_wants_usage: bool,
    max_output_tokens: Option<u64>,
    /// Prompt tokens estimated (bytes / 4): the basis of a usage estimate.
    prompt_estimate: u64,
    /// Prompt tokens no tokenizer can exceed (about one per byte): the basis
    /// of the quota reservation, so that the reservation is a true worst case.
    prompt_upper_bound: u64,
    /// Output limit the gateway imposed (quota-limited keys only).
    output_cap: Option<u64>,
}

impl Inbound {
    fn parse(
        client: ClientDialect,
        body: Vec<u8>,
        path_model: Option<&str>,
        path_stream: bool,
    ) -> Result<Self, GatewayError> {
        if client == ClientDialect::OpenAiChat {
            let prepared = parse_chat_request(&body)?;
            return Ok(Self {
                client,
                model: prepared.model.clone(),
                stream: prepared.stream,
                client_wants_usage: prepared.client_wants_usage,
                max_output_tokens: prepared.max_output_tokens,
                prompt_estimate: prepared.estimated_prompt_tokens(),
                prompt_upper_bound: prompt_upper_bound(prepared.prompt_bytes as u64),
                openai: Some(prepared),
                canonical: None,
                output_cap: None,
                body,
            });
        }
        let canonical = translate::parse_client_request(client, &body, path_model, path_stream)?;
        let prompt_estimate = translate::count_tokens_estimate(&canonical);
        Ok(Self {
            client,
            model: canonical.model.clone(),
            stream: canonical.stream,
            client_wants_usage: canonical.stream_include_usage,
            max_output_tokens: canonical.max_output_tokens,
            prompt_estimate,
            prompt_upper_bound: prompt_upper_bound(prompt_estimate.saturating_mul(4)),
            openai: None,
            canonical: Some(canonical),
            output_cap: None,
            body,
        })
    }

    /// Imposes an output limit when the client set none.
    fn cap_output(&mut self, limit: u64) {
        if self.max_output_tokens.is_some() {
            return;
        }
        self.output_cap = Some(limit);
        self.max_output_tokens = Some(limit);
        if let Some(prepared) = self.openai.as_mut() {
            prepared.cap_output_tokens(limit);
        }
        if let Some(canonical) = self.canonical.as_mut() {
            canonical.max_output_tokens.get_or_insert(limit);
        }
    }

    /// The canonical form, parsed on first need for OpenAI chat clients.
    fn canonical(&mut self) -> Result<&CanonicalRequest, GatewayError> {
        if self.canonical.is_none() {
            let mut parsed = translate::parse_client_request(self.client, &self.body, None, false)?;
            if let Some(cap) = self.output_cap {
                parsed.max_output_tokens.get_or_insert(cap);
            }
            self.canonical = Some(parsed);
        }
        self.canonical.as_ref().ok_or(GatewayError::Internal)
    }
}

/// Reservation basis from a prompt's size in bytes: one token per byte plus
/// a margin for the per-message tokens providers add.
fn prompt_upper_bound(prompt_bytes: u64) -> u64 {
    prompt_bytes.saturating_add(PROMPT_OVERHEAD_TOKENS)
}

/// Tokens a provider adds around messages (roles, separators), reserved on top.
const PROMPT_OVERHEAD_TOKENS: u64 = 64;

/// Lease lifetime of a stream's concurrency slot: longer than any stream runs.
const STREAM_LEASE_MS: i64 = 30 * 60 * 1000;

/// How one attempt reaches its upstream and shapes the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// OpenAI client, OpenAI-format upstream: pass through.
    Relay,
    /// Everything else: through the canonical hub to this upstream dialect.
    Translate(UpstreamDialect),
}

fn plan_for(client: ClientDialect, provider: ProviderDialect, model_suffix_stripped: bool) -> Plan {
    match provider {
        ProviderDialect::OpenAiChat | ProviderDialect::Mock
            if client == ClientDialect::OpenAiChat && !model_suffix_stripped =>
        {
            Plan::Relay
        }
        ProviderDialect::OpenAiChat | ProviderDialect::Mock => Plan::Translate(UpstreamDialect::OpenAiChat),
        ProviderDialect::Anthropic => Plan::Translate(UpstreamDialect::Anthropic),
        ProviderDialect::Gemini => Plan::Translate(UpstreamDialect::Gemini),
    }
}

/// Which channel served (or last failed) the request.
#[derive(Clone, Default)]
struct Served {
    channel: String,
    provider: String,
    upstream_model: String,
}

/// A successful upstream answer and how to shape it.
struct Forwarded {
    reply: UpstreamReply,
    served: Served,
    plan: Plan,
    secrets: Vec<String>,
}

/// Everything about a request that its usage event and settlement need.
#[derive(Clone)]
struct Metering {
    env: Env,
    request_id: String,
    record: Rc<KeyRecord>,
    model: String,
    stream: bool,
    started_ms: i64,
    prompt_estimate: u64,
    price: ModelPrice,
    /// Admitted by the key account (which must then settle it).
    admitted: bool,
}

/// How a request ended, as far as billing is concerned.
struct Ending {
    status: u16,
    outcome: RequestOutcome,
    reported: Option<TokenUsage>,
    upstream_succeeded: bool,
    content_bytes: usize,
    ttft_ms: Option<u64>,
}

impl Ending {
    /// Failed before any upstream produced output: billed nothing.
    fn failed(status: u16) -> Self {
        Self {
            status,
            outcome: RequestOutcome::Failed,
            reported: None,
            upstream_succeeded: false,
            content_bytes: 0,
            ttft_ms: None,
        }
    }
}

impl Metering {
    fn event(&self, served: &Served, ending: Ending) -> UsageEvent {
        let Ending { status, outcome, reported, upstream_succeeded, content_bytes, ttft_ms } = ending;
        let (usage, usage_source) =
            settle_usage(reported, upstream_succeeded, self.prompt_estimate, content_bytes);
        UsageEvent {
            request_id: self.request_id.clone(),
            key_digest: self.record.digest.clone(),
            owner: self.record.owner.clone(),
            user_id: self.record.user_id.clone(),
            group: self.record.group.clone(),
            // Priced at x1 until the edge applies group ratios (CONTRACT-accounts-edge.md).
            price_ratio_ppm: edgeway_core::pricing::RATIO_ONE_PPM,
            model: self.model.clone(),
            upstream_model: served.upstream_model.clone(),
            channel: served.channel.clone(),
            provider: served.provider.clone(),
            cost_micros: self.price.cost_micros(&usage),
            usage,
            status,
            outcome,
            usage_source,
            stream: self.stream,
            latency_ms: u64::try_from(now_ms() - self.started_ms).unwrap_or(0),
            ttft_ms,
            created_at_ms: self.started_ms,
        }
    }

    /// Settles a request that failed before any upstream output: billed nothing.
    fn settle_failure(&self, ctx: &Context, served: &Served, error: &GatewayError) {
        ctx.wait_until(self.clone().settle(self.event(served, Ending::failed(error.status()))));
    }

    /// Settles the request with its key account: lease and reservation
    /// released, actual cost booked, usage event stored and published. A
    /// request that skipped admission publishes its event to the usage queue
    /// directly (every store is idempotent on the request id).
    async fn settle(self, event: UsageEvent) {
        if !self.admitted {
            usage_batcher::publish(&self.env, event).await;
            return;
        }
        match KeyAccountClient::new(&self.env, &self.record.digest) {
            Ok(account) => {
                account
                    .settle(&SettleRequest { request_id: self.request_id.clone(), event: Some(event) })
                    .await
            }
            Err(e) => worker::console_error!("cannot settle {}: {e}", self.request_id),
        }
    }
}

/// Whether a key has anything its account must enforce per request.
fn has_limits(limits: &KeyLimits) -> bool {
    limits.disabled
        || limits.max_concurrency.is_some()
        || limits.rpm.is_some()
        || limits.tpm.is_some()
        || limits.quota_micros.is_some()
}

fn client_response_id(client: ClientDialect, request_id: &str) -> String {
    let bare = request_id.trim_start_matches("req_");
    match client {
        ClientDialect::OpenAiChat => format!("chatcmpl-{bare}"),
        ClientDialect::Anthropic => format!("msg_{bare}"),
        ClientDialect::Gemini => bare.to_string(),
        ClientDialect::OpenAiResponses => format!("resp_{bare}"),
    }
}

/// A generation request in any client dialect.
pub async fn generate(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    client: ClientDialect,
    path_model: Option<String>,
    path_stream: bool,
) -> Result<Response, GatewayError> {
    let started_ms = now_ms();
    let record = authenticate(&req, env).await?;
    let body = read_body_limited(&mut req, max_body_bytes(env)).await?;
    let mut inbound = Inbound::parse(client, body, path_model.as_deref(), path_stream)?;

    let table = isolate_cache::routing_table(env).await?;
    let mut route_model = inbound.model.clone();
    let mut suffix_stripped = false;
    if table.model(&route_model).is_none() {
        if let Some((base, _)) = reasoning::split_model_suffix(&route_model) {
            if table.model(base).is_some() {
                route_model = base.to_string();
                suffix_stripped = true;
            }
        }
    }
    record.check_model(&route_model)?;
    let candidates = table.candidates(&route_model, routing_seed())?;
    let price = table.model(&route_model).map(|m| m.price).unwrap_or_default();

    if record.quota_micros.is_some() {
        inbound.cap_output(DEFAULT_RESERVED_OUTPUT_TOKENS);
    }
    let max_output = inbound.max_output_tokens.unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS);
    let request_id = format!("req_{}", random_uuid().replace('-', ""));
    // Keys with limits are admitted by their account on every request (exact
    // concurrency, windows and quota). Keys without any skip that round trip;
    // their account is still consulted every couple of seconds per isolate
    // for revocations and newly set limits.
    let limits = KeyLimits::from_record(&record);
    let admitted =
        if has_limits(&limits) || !isolate_cache::unlimited_key_may_skip_admission(env, &record).await? {
            let account = KeyAccountClient::new(env, &record.digest)?;
            account
                .admit(&AdmitRequest {
                    request_id: request_id.clone(),
                    limits,
                    reserve_micros: price.worst_case_micros(inbound.prompt_upper_bound, max_output),
                    estimated_tokens: inbound.prompt_estimate.saturating_add(max_output),
                    lease_ms: inbound.stream.then_some(STREAM_LEASE_MS),
                    max_concurrency: record.max_concurrency,
                })
                .await?;
            true
        } else {
            false
        };

    // Admitted: from here every path settles exactly once.
    let metering = Metering {
        env: env.clone(),
        request_id: request_id.clone(),
        record: record.clone(),
        model: inbound.model.clone(),
        stream: inbound.stream,
        started_ms,
        prompt_estimate: inbound.prompt_estimate,
        price,
        admitted,
    };
    let forwarded = match forward(&mut inbound, &candidates, suffix_stripped, env, started_ms).await {
        Ok(forwarded) => forwarded,
        Err((error, served)) => {
            metering.settle_failure(ctx, &served, &error);
            return Err(error);
        }
    };

    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|_| GatewayError::Internal);
    set("x-request-id", &request_id)?;
    set("request-id", &request_id)?;
    set("access-control-allow-origin", "*")?;
    set("access-control-expose-headers", "x-request-id, request-id")?;

    if !inbound.stream {
        return respond_whole(inbound, forwarded, metering, headers, ctx, &request_id).await;
    }

    let Forwarded { reply, served, plan, secrets } = forwarded;
    let shaper = match plan {
        Plan::Relay => StreamShaper::Relay(Box::new(ChatStreamTap::new(inbound.client_wants_usage, secrets))),
        Plan::Translate(upstream) => StreamShaper::Translate(Box::new(StreamTranslator::new(
            upstream,
            client,
            StreamOptions {
                response_id: client_response_id(client, &request_id),
                model: inbound.model.clone(),
                created: started_ms / 1000,
                include_usage: inbound.client_wants_usage,
                secrets,
            },
        ))),
    };
    set("content-type", "text/event-stream; charset=utf-8")?;
    set("cache-control", "no-cache")?;
    set("x-accel-buffering", "no")?;
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(STREAM_CHANNEL_CAPACITY);
    ctx.wait_until(pump(reply.body, shaper, sender, metering, served));
    Response::from_stream(receiver.map(Ok::<Vec<u8>, worker::Error>))
        .map(|r| r.with_headers(headers))
        .map_err(|_| GatewayError::Internal)
}

/// A non-streaming answer: read whole (bounded), shape, settle, respond.
async fn respond_whole(
    inbound: Inbound,
    forwarded: Forwarded,
    metering: Metering,
    headers: Headers,
    ctx: &Context,
    request_id: &str,
) -> Result<Response, GatewayError> {
    let Forwarded { reply, served, plan, .. } = forwarded;
    let body = match upstream::read_all(reply.body, MAX_UPSTREAM_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            metering.settle_failure(ctx, &served, &error);
            return Err(error);
        }
    };
    let (out, reported, content_bytes) = match plan {
        Plan::Relay => {
            let usage = response_usage(&body).map(|u| TokenUsage::from_openai(&u));
            let content = response_content_bytes(&body);
            (body, usage, content)
        }
        Plan::Translate(upstream) => match translate::parse_upstream_response(upstream, &body) {
            Ok(mut resp) => {
                if resp.created == 0 {
                    resp.created = metering.started_ms / 1000;
                }
                if resp.id.is_empty() {
                    resp.id = client_response_id(inbound.client, request_id);
                }
                resp.model = inbound.model.clone();
                let content = resp
                    .content
                    .iter()
                    .map(|p| match p {
                        ContentPart::Text { text, .. } | ContentPart::Thinking { text, .. } => text.len(),
                        ContentPart::ToolCall { name, arguments, .. } => name.len() + arguments.len(),
                        _ => 0,
                    })
                    .sum();
                let usage = resp.usage_reported.then_some(resp.usage);
                (translate::render_client_response(inbound.client, &resp), usage, content)
            }
            Err(error) => {
                metering.settle_failure(ctx, &served, &error);
                return Err(error);
            }
        },
    };
    let event = metering.event(
        &served,
        Ending {
            status: 200,
            outcome: RequestOutcome::Completed,
            reported,
            upstream_succeeded: true,
            content_bytes,
            ttft_ms: None,
        },
    );
    ctx.wait_until(metering.settle(event));
    headers.set("content-type", "application/json").map_err(|_| GatewayError::Internal)?;
    Response::from_bytes(out).map(|r| r.with_headers(headers)).map_err(|_| GatewayError::Internal)
}

/// Drives one stream: upstream → shaper → client channel; then settles.
async fn pump(
    mut body: BodyStream,
    mut shaper: StreamShaper,
    sender: mpsc::Sender<Vec<u8>>,
    metering: Metering,
    served: Served,
) {
    let mut sender = Some(sender);
    let mut disconnected_at: Option<i64> = None;
    let mut ttft_ms: Option<u64> = None;
    let mut drain_expired = false;
    let mut final_bytes: Vec<u8> = Vec::new();
    loop {
        let next = match disconnected_at {
            None => body.next().await,
            Some(at) => {
                let remaining = MAX_DRAIN_AFTER_DISCONNECT_MS - (now_ms() - at);
                if remaining <= 0 {
                    drain_expired = true;
                    break;
                }
                let timer = Delay::from(Duration::from_millis(u64::try_from(remaining).unwrap_or(0)));
                match select(body.next(), timer).await {
                    Either::Left((item, _)) => item,
                    Either::Right(_) => {
                        drain_expired = true;
                        break;
                    }
                }
            }
        };
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                worker::console_warn!("upstream stream broke: {e}");
                break;
            }
            None => break,
        };
        let out = shaper.feed(&chunk);
        if ttft_ms.is_none() && shaper.saw_content() {
            ttft_ms = u64::try_from(now_ms() - metering.started_ms).ok();
        }
        if shaper.is_ended() {
            // Held back until the request is settled (below).
            final_bytes = out;
            break;
        }
        if !out.is_empty() {
            if let Some(tx) = sender.as_mut() {
                if tx.send(out).await.is_err() {
                    // The client went away: keep reading for the provider's usage.
                    sender = None;
                    disconnected_at = Some(now_ms());
                }
            }
        }
    }
    drop(body);
    final_bytes.extend(shaper.finish());
    let outcome = if disconnected_at.is_some() {
        RequestOutcome::ClientAborted
    } else if shaper.completed() {
        RequestOutcome::Completed
    } else {
        RequestOutcome::Failed
    };
    let reported = if drain_expired && !shaper.completed() { None } else { shaper.usage() };
    let status = if outcome == RequestOutcome::Failed { 502 } else { 200 };
    let event = metering.event(
        &served,
        Ending {
            status,
            outcome,
            reported,
            upstream_succeeded: shaper.saw_content() || shaper.completed(),
            content_bytes: shaper.content_bytes(),
            ttft_ms,
        },
    );
    // An admitted request is settled (its usage stored in the account's
    // outbox) before the client sees the end of the stream, so neither a
    // disconnect nor a lost waitUntil after that point can lose it.
    let admitted = metering.admitted;
    let settled_later = if admitted {
        metering.settle(event).await;
        None
    } else {
        Some((metering, event))
    };
    if let Some(tx) = sender.as_mut() {
        if !final_bytes.is_empty() {
            let _ = tx.send(final_bytes).await;
        }
    }
    drop(sender);
    if let Some((metering, event)) = settled_later {
        metering.settle(event).await;
    }
}

/// Tries the candidates in order until one answers with a success status.
/// Retries only on failures before any byte reached the client: connection
/// errors, timeouts, 429, 5xx and the channel's own credentials being refused.
/// Other 4xx are the request's fault and are returned at once.
async fn forward(
    inbound: &mut Inbound,
    candidates: &[Candidate<'_>],
    suffix_stripped: bool,
    env: &Env,
    now: i64,
) -> Result<Forwarded, (GatewayError, Served)> {
    let default_timeout = bindings::number(env, bindings::UPSTREAM_TIMEOUT_MS, DEFAULT_UPSTREAM_TIMEOUT_MS);
    let mut last = (GatewayError::UpstreamUnavailable, Served::default());
    for candidate in candidates.iter().take(MAX_ATTEMPTS) {
        let served = Served {
            channel: candidate.channel.id.clone(),
            provider: candidate.provider.id.to_string(),
            upstream_model: candidate.upstream_model.to_string(),
        };
        let credential = upstream::channel_credential(candidate.channel, env);
        let secrets: Vec<String> = credential.iter().cloned().collect();
        let plan = plan_for(inbound.client, candidate.provider.dialect, suffix_stripped);
        let attempt = attempt(inbound, candidate, plan, credential.as_deref(), default_timeout, now).await;
        match attempt {
            Ok(reply) if (200..300).contains(&reply.status) => {
                return Ok(Forwarded { reply, served, plan, secrets })
            }
            Ok(reply) => {
                let status = reply.status;
                let body = upstream::read_all(reply.body, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
                let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let dialect = match plan {
                    Plan::Relay => UpstreamDialect::OpenAiChat,
                    Plan::Translate(dialect) => dialect,
                };
                let error = translate::parse_upstream_error_redacting(dialect, status, &body, &secret_refs);
                worker::console_warn!("channel {} answered HTTP {status}", served.channel);
                let retryable = matches!(status, 401 | 403 | 408 | 429) || status >= 500;
                last = (error, served);
                if !retryable {
                    break;
                }
            }
            Err(error) => {
                let retryable =
                    matches!(error, GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout);
                if retryable {
                    worker::console_warn!("channel {} failed: {error}", served.channel);
                }
                last = (error, served);
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// One attempt at one candidate.
async fn attempt(
    inbound: &mut Inbound,
    candidate: &Candidate<'_>,
    plan: Plan,
    credential: Option<&str>,
    default_timeout: u64,
    now: i64,
) -> Result<UpstreamReply, GatewayError> {
    let timeout = candidate.channel.timeout_ms.unwrap_or(default_timeout);
    let base = candidate.base_url.trim_end_matches('/');
    let mock = candidate.provider.dialect == ProviderDialect::Mock;
    let mock_options = candidate.channel.mock.unwrap_or_default();
    match plan {
        Plan::Relay => {
            let prepared = inbound.openai.as_ref().ok_or(GatewayError::Internal)?;
            if mock {
                return Ok(mock_upstream::reply(prepared, candidate.upstream_model, mock_options, now).await);
            }
            let body =
                prepared.upstream_body(candidate.upstream_model, candidate.provider.stream_usage_option);
            let url = format!("{base}/chat/completions");
            upstream::post_json(&url, candidate.provider, credential, body, timeout).await
        }
        Plan::Translate(dialect) => {
            let call =
                translate::build_upstream_request(dialect, inbound.canonical()?, candidate.upstream_model)?;
            if mock {
                let prepared = parse_chat_request(&call.body)?;
                return Ok(mock_upstream::reply(&prepared, candidate.upstream_model, mock_options, now).await);
            }
            let url = format!("{base}{}", call.path);
            upstream::post_json(&url, candidate.provider, credential, call.body, timeout).await
        }
    }
}

//! `POST /v1/chat/completions` and `GET /v1/models`: authenticate, validate,
//! admit, route, forward, stream back, meter. Each step is a call into
//! `edgeway-core`; this module only sequences them over platform I/O.

use crate::http_io::{self, read_body_limited};
use crate::isolate_cache;
use crate::key_account_object::KeyAccountClient;
use crate::runtime::{now_ms, random_uuid, routing_seed};
use crate::upstream::{self, BodyStream, UpstreamReply};
use crate::{bindings, mock_upstream, usage_pipeline};
use edgeway_core::api_key::{key_digest, presented_key, CredentialHeaders};
use edgeway_core::error::{upstream_error_message, GatewayError};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::limits::{DEFAULT_MAX_BODY_BYTES, DEFAULT_UPSTREAM_TIMEOUT_MS, MAX_UPSTREAM_BODY_BYTES};
use edgeway_core::openai_relay::{
    models_list, parse_chat_request, response_content_bytes, response_usage, ChatStreamTap, PreparedChat,
    StreamSummary,
};
use edgeway_core::pricing::ModelPrice;
use edgeway_core::provider::ProviderDialect;
use edgeway_core::routing::Candidate;
use edgeway_core::usage::{settle_usage, OpenAiUsage, RequestOutcome, UsageEvent};
use futures_channel::oneshot;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use worker::{Context, Env, Headers, Request, Response};

/// Most channels tried for one request (failover happens only before any
/// byte has reached the client).
const MAX_ATTEMPTS: usize = 3;

/// Largest upstream error body read to extract a message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Resolves the caller's key record from the request headers.
pub async fn authenticate(req: &Request, env: &Env) -> Result<Rc<KeyRecord>, GatewayError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let authorization = header("authorization");
    let x_api_key = header("x-api-key");
    let x_goog_api_key = header("x-goog-api-key");
    let credentials = CredentialHeaders {
        authorization: authorization.as_deref(),
        x_api_key: x_api_key.as_deref(),
        x_goog_api_key: x_goog_api_key.as_deref(),
        query_key: None,
    };
    let key = presented_key(&credentials).ok_or(GatewayError::MissingApiKey)?;
    let digest = key_digest(key);
    let record = isolate_cache::key_record(env, &digest).await?;
    record.check_usable(now_ms() / 1000)?;
    Ok(record)
}

/// `GET /v1/models`: the routed models this key may use.
pub async fn list_models(req: &Request, env: &Env) -> Result<Response, GatewayError> {
    let record = authenticate(req, env).await?;
    let table = isolate_cache::routing_table(env).await?;
    http_io::json_response(200, &models_list(&table, &record, 1_700_000_000))
}

/// Everything about a request that its usage event needs.
#[derive(Clone)]
struct Metering {
    env: Env,
    request_id: String,
    record: Rc<KeyRecord>,
    model: String,
    stream: bool,
    started_ms: i64,
    estimated_prompt_tokens: u64,
    price: ModelPrice,
}

/// Which channel served (or last failed) the request.
#[derive(Clone, Default)]
struct Served {
    channel: String,
    provider: String,
    upstream_model: String,
}

/// How a request ended, as far as billing is concerned.
struct Ending<'a> {
    status: u16,
    outcome: RequestOutcome,
    reported: Option<&'a OpenAiUsage>,
    upstream_succeeded: bool,
    content_bytes: usize,
    ttft_ms: Option<u64>,
}

impl Ending<'_> {
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
    fn event(&self, served: &Served, ending: Ending<'_>) -> UsageEvent {
        let Ending { status, outcome, reported, upstream_succeeded, content_bytes, ttft_ms } = ending;
        let (usage, usage_source) =
            settle_usage(reported, upstream_succeeded, self.estimated_prompt_tokens, content_bytes);
        let ended = now_ms();
        UsageEvent {
            request_id: self.request_id.clone(),
            key_digest: self.record.digest.clone(),
            owner: self.record.owner.clone(),
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
            latency_ms: u64::try_from(ended - self.started_ms).unwrap_or(0),
            ttft_ms,
            created_at_ms: self.started_ms,
        }
    }

    /// Releases the lease and publishes the event.
    async fn settle(self, event: UsageEvent) {
        if let Ok(account) = KeyAccountClient::new(&self.env, &self.record.digest) {
            account.release(&self.request_id).await;
        }
        usage_pipeline::publish(&self.env, &event).await;
    }
}

pub async fn handle(mut req: Request, env: &Env, ctx: &Context) -> Result<Response, GatewayError> {
    let started_ms = now_ms();
    let record = authenticate(&req, env).await?;
    let limit =
        usize::try_from(bindings::number(env, bindings::MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES as u64))
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let body = read_body_limited(&mut req, limit).await?;
    let prepared = parse_chat_request(&body)?;
    drop(body);
    record.check_model(&prepared.model)?;
    let table = isolate_cache::routing_table(env).await?;
    let candidates = table.candidates(&prepared.model, routing_seed())?;
    let price = table.model(&prepared.model).map(|m| m.price).unwrap_or_default();

    let request_id = format!("req_{}", random_uuid().replace('-', ""));
    let account = KeyAccountClient::new(env, &record.digest)?;
    account.admit(&request_id, record.max_concurrency).await?;

    let metering = Metering {
        env: env.clone(),
        request_id: request_id.clone(),
        record: record.clone(),
        model: prepared.model.clone(),
        stream: prepared.stream,
        started_ms,
        estimated_prompt_tokens: prepared.estimated_prompt_tokens(),
        price,
    };

    let (reply, served, secrets) = match forward(&prepared, &candidates, env, started_ms).await {
        Ok(ok) => ok,
        Err((error, served)) => {
            let event = metering.event(&served, Ending::failed(error.status()));
            ctx.wait_until(metering.settle(event));
            return Err(error);
        }
    };

    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|_| GatewayError::Internal);
    set("x-request-id", &request_id)?;
    set("access-control-allow-origin", "*")?;
    set("access-control-expose-headers", "x-request-id")?;

    if !prepared.stream {
        let body = match upstream::read_all(reply.body, MAX_UPSTREAM_BODY_BYTES).await {
            Ok(body) => body,
            Err(error) => {
                let event = metering.event(&served, Ending::failed(error.status()));
                ctx.wait_until(metering.settle(event));
                return Err(error);
            }
        };
        let usage = response_usage(&body);
        let event = metering.event(
            &served,
            Ending {
                status: 200,
                outcome: RequestOutcome::Completed,
                reported: usage.as_ref(),
                upstream_succeeded: true,
                content_bytes: response_content_bytes(&body),
                ttft_ms: None,
            },
        );
        ctx.wait_until(metering.settle(event));
        set("content-type", "application/json")?;
        return Response::from_bytes(body)
            .map(|r| r.with_headers(headers))
            .map_err(|_| GatewayError::Internal);
    }

    set("content-type", "text/event-stream; charset=utf-8")?;
    set("cache-control", "no-cache")?;
    set("x-accel-buffering", "no")?;
    let (sender, receiver) = oneshot::channel::<StreamEnd>();
    let tapped = TappedStream {
        upstream: Some(reply.body),
        tap: ChatStreamTap::new(prepared.client_wants_usage, secrets),
        started_ms,
        ttft_ms: None,
        end: Some(sender),
    };
    ctx.wait_until(async move {
        let end = receiver.await.unwrap_or(StreamEnd {
            summary: StreamSummary::default(),
            outcome: RequestOutcome::ClientAborted,
            ttft_ms: None,
        });
        let status = if end.outcome == RequestOutcome::Failed { 502 } else { 200 };
        let event = metering.event(
            &served,
            Ending {
                status,
                outcome: end.outcome,
                reported: end.summary.usage.as_ref(),
                upstream_succeeded: end.summary.first_content_sent || end.summary.completed(),
                content_bytes: end.summary.content_bytes,
                ttft_ms: end.ttft_ms,
            },
        );
        metering.settle(event).await;
    });
    Response::from_stream(tapped).map(|r| r.with_headers(headers)).map_err(|_| GatewayError::Internal)
}

/// Tries the candidates in order until one answers with a success status.
/// Retries only on failures before any byte reached the client: connection
/// errors, timeouts, 429 and 5xx. Other 4xx are the request's fault and are
/// returned at once.
async fn forward(
    prepared: &PreparedChat,
    candidates: &[Candidate<'_>],
    env: &Env,
    now: i64,
) -> Result<(UpstreamReply, Served, Vec<String>), (GatewayError, Served)> {
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
        let attempt = match candidate.provider.dialect {
            ProviderDialect::Mock => Ok(mock_upstream::reply(
                prepared,
                candidate.upstream_model,
                candidate.channel.mock.unwrap_or_default(),
                now,
            )
            .await),
            ProviderDialect::OpenAiChat => {
                let url = format!("{}/chat/completions", candidate.base_url.trim_end_matches('/'));
                let body =
                    prepared.upstream_body(candidate.upstream_model, candidate.provider.stream_usage_option);
                let timeout = candidate.channel.timeout_ms.unwrap_or(default_timeout);
                upstream::post_json(&url, candidate.provider, credential.as_deref(), body, timeout).await
            }
            ProviderDialect::Anthropic | ProviderDialect::Gemini => Err(GatewayError::InvalidRequest {
                message: format!(
                    "Channel `{}` uses the `{}` dialect, which this endpoint does not translate to yet.",
                    candidate.channel.id, candidate.provider.id
                ),
                param: Some("model".into()),
            }),
        };
        match attempt {
            Ok(reply) if (200..300).contains(&reply.status) => return Ok((reply, served, secrets)),
            Ok(reply) => {
                let status = reply.status;
                let body = upstream::read_all(reply.body, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
                let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let message = upstream_error_message(&body, &secret_refs);
                worker::console_warn!("channel {} answered HTTP {status}", served.channel);
                let error = GatewayError::Upstream { status, message };
                let retryable = status == 429 || status >= 500 || status == 401 || status == 403;
                last = (error, served);
                if !retryable {
                    break;
                }
            }
            Err(error) => {
                worker::console_warn!("channel {} failed: {error}", served.channel);
                let retryable =
                    matches!(error, GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout);
                last = (error, served);
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// How a stream ended, reported to the metering task.
struct StreamEnd {
    summary: StreamSummary,
    outcome: RequestOutcome,
    ttft_ms: Option<u64>,
}

/// The client-facing body: upstream bytes through the [`ChatStreamTap`].
/// Reports its end (or, when dropped early, the client's disconnect) exactly
/// once to the metering task.
struct TappedStream {
    upstream: Option<BodyStream>,
    tap: ChatStreamTap,
    started_ms: i64,
    ttft_ms: Option<u64>,
    end: Option<oneshot::Sender<StreamEnd>>,
}

impl TappedStream {
    fn report(&mut self, outcome: RequestOutcome) {
        if let Some(sender) = self.end.take() {
            let _ = sender.send(StreamEnd {
                summary: self.tap.summary().clone(),
                outcome,
                ttft_ms: self.ttft_ms,
            });
        }
    }

    fn note_first_content(&mut self) {
        if self.ttft_ms.is_none() && self.tap.summary().first_content_sent {
            self.ttft_ms = u64::try_from(now_ms() - self.started_ms).ok();
        }
    }

    fn close(&mut self) -> Vec<u8> {
        let tail = self.tap.finish();
        self.upstream = None;
        let outcome =
            if self.tap.summary().completed() { RequestOutcome::Completed } else { RequestOutcome::Failed };
        self.report(outcome);
        tail
    }
}

impl Stream for TappedStream {
    type Item = worker::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let Some(upstream) = self.upstream.as_mut() else { return Poll::Ready(None) };
            match upstream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = self.tap.feed(&chunk);
                    self.note_first_content();
                    if self.tap.is_ended() {
                        let mut out = out;
                        out.extend(self.close());
                        return Poll::Ready(Some(Ok(out)));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    worker::console_warn!("upstream stream broke: {e}");
                    let out = self.close();
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(None) => {
                    let out = self.close();
                    return Poll::Ready(if out.is_empty() { None } else { Some(Ok(out)) });
                }
            }
        }
    }
}

impl Drop for TappedStream {
    fn drop(&mut self) {
        // Still unreported: the client went away before the stream ended.
        self.report(RequestOutcome::ClientAborted);
    }
}

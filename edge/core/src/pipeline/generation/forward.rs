use super::*;
use crate::channel_health::breaker::{self, Admission, CircuitId};
use crate::channel_health::shared::{ClaimAnswer, HealthSync};
use crate::channel_health::{Attempt, Failure, TimeoutPhase};
use crate::error::GatewayError;
use crate::family::{self, Family, MockAnswer};
use crate::limits::MAX_UPSTREAM_BODY_BYTES;
use crate::limits::{DEFAULT_FIRST_CONTENT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS};
use crate::mock_provider::MockReply;
use crate::openai_relay::{
    replace_model_name, response_content_bytes as relay_content_bytes, response_usage, ChatStreamTap,
};
use crate::pin::{SERVED_CHANNEL_HEADER, SERVED_MODEL_HEADER};
use crate::pipeline::counters::StreamEnding;
use crate::pipeline::isolate::IsolateState;
use crate::pipeline::metering::{
    client_response_id, relay_body_with_usage, response_content_bytes, Ending, Served, USAGE_HEADER,
};
use crate::pipeline::route::{AttemptVerdict, Plan, Route, MAX_ATTEMPTS};
use crate::pricing::ModelPrice;
use crate::provider::body_quirks::{BodyQuirks, DROPPED_PARAMS_HEADER};
use crate::provider::ProviderDialect;
use crate::routing::Candidate;
use crate::sse::encode_event;
use crate::stream_shaper::StreamShaper;
use crate::translate::signature_vault::REASONING_STATE_HEADER;
use crate::translate::{self, tool_emulation, StreamOptions, StreamTranslator, UpstreamDialect};
use crate::usage::{estimated_usage, TokenUsage, UsageEvent};
use std::collections::VecDeque;

/// Most retries of a channel with another credential per request.
const MAX_CREDENTIAL_RETRIES: usize = 3;

impl Target {
    /// The targets a route's candidates are tried at, in order: the
    /// model's, then each fallback's.
    pub(super) fn list(route: &Route<'_>) -> Vec<Self> {
        let primary = route.candidates.iter().map(|c| Self::of(route.model, route.price, c));
        let fallbacks = route
            .fallbacks
            .iter()
            .flat_map(|f| f.candidates.iter().map(move |c| Self::of(f.model, f.price, c)));
        primary.chain(fallbacks).collect()
    }

    fn of(model: &str, price: ModelPrice, c: &Candidate<'_>) -> Self {
        Target {
            model: model.to_string(),
            price,
            channel: c.channel.id.clone(),
            provider: c.provider,
            upstream_model: c.upstream_model.to_string(),
            base_url: c.base_url.trim_end_matches('/').to_string(),
            api_version: c.channel.api_version.clone(),
            emulate_tools: c.channel.emulate_tools,
            api_keys: c.channel.credentials(),
            key_rotation: c.channel.key_rotation,
            api_key_secret: c.channel.api_key_secret.clone(),
            timeout_ms: c.channel.timeout_ms,
            first_content_timeout_ms: c
                .channel
                .first_content_timeout_ms
                .unwrap_or(DEFAULT_FIRST_CONTENT_TIMEOUT_MS),
            idle_timeout_ms: c.channel.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            mock: c.channel.mock.unwrap_or_default(),
            breaker: c.channel.breaker.unwrap_or_default(),
            credential_retry: false,
        }
    }
}

impl Generation {
    /// Tries the next candidate, or ends with the last failure. Only
    /// before any content reached the client; a client that left while
    /// waiting is not served by another candidate.
    pub(super) fn next_candidate(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        self.current = None;
        self.shaper = None;
        self.held.clear();
        self.deadline = None;
        if !self.more_targets() || self.disconnected_at.is_some() {
            let error = self.last_error.clone().unwrap_or(GatewayError::UpstreamUnavailable);
            return self.no_more_candidates(isolate, error, now);
        }
        self.attempt(isolate, now)
    }

    /// Whether another candidate may still be tried.
    pub(super) fn more_targets(&self) -> bool {
        self.targets[self.next_target.min(self.targets.len())..]
            .iter()
            .any(|t| t.model != self.route_model || self.tried_for_model < MAX_ATTEMPTS)
            || (!self.deferred.is_empty() && (self.tried == 0 || self.all_open) && self.tried < MAX_ATTEMPTS)
    }

    /// The next candidate to try: in order, skipping those whose circuit is
    /// open (a pinned request is never skipped); when every candidate's
    /// circuit is open, those, in order.
    fn pick_target(&mut self, isolate: &mut IsolateState, now: i64) -> Option<Target> {
        let target = self.pick_in_order(isolate, now)?;
        self.count_failover(isolate);
        if target.model != self.route_model {
            // The next model of the chain: its own attempts, its own price.
            self.route_model = target.model.clone();
            self.tried_for_model = 0;
            if self.route_model != self.primary_model {
                let from = self.attempts.last().map_or(self.primary_model.as_str(), |a| a.model.as_str());
                self.log(false, format!("falling back from `{from}` to `{}`", self.route_model));
            }
        }
        if !target.credential_retry {
            self.tried_for_model += 1;
        }
        if let Some(meter) = &mut self.meter {
            meter.price = target.price;
        }
        Some(target)
    }

    fn pick_in_order(&mut self, isolate: &mut IsolateState, now: i64) -> Option<Target> {
        while let Some(target) = self.targets.get(self.next_target).cloned() {
            self.next_target += 1;
            if target.model == self.route_model
                && self.tried_for_model >= MAX_ATTEMPTS
                && !target.credential_retry
            {
                continue;
            }
            let admission = if self.pinned.is_some() {
                Admission::Try
            } else {
                isolate.breakers.admit(&target.channel, &target.upstream_model, now)
            };
            let credential = match admission {
                Admission::Skip => None,
                _ => self.choose_credential(isolate, &target, now),
            };
            if let Some(credential) = credential {
                self.credential = credential;
                if admission == Admission::Probe {
                    self.log(false, format!("channel {}: half-open, this request probes it", target.channel));
                    if isolate.config.shared_health {
                        self.claim = Some(CircuitId::Model(target.upstream_model.clone()));
                    }
                }
                self.tried += 1;
                return Some(target);
            }
            if isolate.config.shared_health {
                // Skipped, but still routed to: its copy is kept fresh.
                isolate.health_sync.note(&target.channel, None, now);
            }
            let why =
                if admission == Admission::Skip { "its circuit is open" } else { "no usable credential" };
            self.log(false, format!("channel {} skipped: {why}", target.channel));
            self.deferred.push(target);
        }
        if (self.tried == 0 || self.all_open) && !self.deferred.is_empty() && self.tried < MAX_ATTEMPTS {
            self.all_open = true;
            self.tried += 1;
            let target = self.deferred.remove(0);
            self.credential = (!target.api_keys.is_empty() || target.api_key_secret.is_some()).then_some(0);
            return Some(target);
        }
        None
    }

    /// Another attempt follows a failed one: a failover from the channel
    /// that failed, counted once per failed attempt (a candidate picked and
    /// then skipped for another's probe does not count it again).
    fn count_failover(&mut self, isolate: &mut IsolateState) {
        if self.attempts.len() <= self.failovers_counted {
            return;
        }
        self.failovers_counted = self.attempts.len();
        if let Some(failed) = self.attempts.last().filter(|a| a.failure.is_some()) {
            isolate.counters.failover(&failed.channel);
        }
    }

    /// The credential the attempt at `target` uses: the channel's next one
    /// in rotation whose circuit lets it through and that this request has
    /// not seen refused. `Some(None)`: the channel has no credential;
    /// `None`: none of its credentials may be used now.
    fn choose_credential(
        &mut self,
        isolate: &mut IsolateState,
        target: &Target,
        now: i64,
    ) -> Option<Option<usize>> {
        let n = target.api_keys.len().max(usize::from(target.api_key_secret.is_some()));
        if n == 0 {
            return Some(None);
        }
        let start = match target.key_rotation {
            // One credential: nothing to rotate (and no counter to keep).
            _ if n == 1 => 0,
            KeyRotation::RoundRobin => isolate.next_rotation(&target.channel),
            KeyRotation::Random => {
                usize::try_from(self.start.routing_seed.wrapping_add(self.tried as u64) % n as u64)
                    .unwrap_or(0)
            }
        };
        let checked = self.pinned.is_none() && target.breaker.failures > 0;
        let chosen = (0..n).map(|i| (start + i) % n).find_map(|i| {
            let refused = self.refused_credentials.iter().any(|(c, k)| c == &target.channel && *k == i);
            if refused {
                return None;
            }
            let admission = if checked {
                isolate.breakers.admit_credential(&target.channel, i, now)
            } else {
                Admission::Try
            };
            (admission != Admission::Skip).then_some((i, admission))
        });
        let (i, admission) = chosen?;
        if admission == Admission::Probe && isolate.config.shared_health {
            self.claim = Some(CircuitId::Credential(i));
        }
        Some(Some(i))
    }

    /// The shared record's answer to this request's claim of a half-open
    /// circuit: it probes, tries (closed elsewhere), or skips the candidate
    /// (another request probes it) and picks the next.
    pub(super) fn after_probe_claim(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let Some((target, _, _)) = self.current.clone() else {
            return Err(self.internal("a probe claim was answered with no candidate".into()));
        };
        let answer =
            isolate.health_sync.claim_answered(&mut isolate.breakers, &target.channel, status, body, now);
        if status != 200 {
            self.log(true, format!("channel {}: its shared health record did not answer ({status}); this isolate decides alone", target.channel));
        }
        if answer != ClaimAnswer::Skip {
            return self.attempt(isolate, now);
        }
        // Not this request's probe: as if its circuit had been open.
        self.log(false, format!("channel {} skipped: another request probes it", target.channel));
        isolate.health_sync.note(&target.channel, None, now);
        self.tried = self.tried.saturating_sub(1);
        if !target.credential_retry {
            self.tried_for_model = self.tried_for_model.saturating_sub(1);
        }
        self.deferred.push(target);
        self.next_candidate(isolate, now)
    }

    /// Ends a request no upstream served with `error`: an error response,
    /// or, when a streaming client already has its response head (sent
    /// with a keepalive), an in-stream error in its dialect.
    pub(super) fn no_more_candidates(
        &mut self,
        isolate: &mut IsolateState,
        error: GatewayError,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if !self.responded {
            return Err(error);
        }
        self.count_stream_end(isolate, StreamEnding::Failed);
        self.event = self.usage_event(Ending::failed(error.status()), now);
        self.final_bytes = StreamShaper::error_bytes(self.start.client, &error);
        if self.ticket.is_some() {
            return Ok(self.settle_or_finish(isolate, AfterSettle::EmitFinal, now));
        }
        Ok(self.emit_final())
    }

    /// Records a failed attempt (and logs it); `status` 0 = no answer.
    pub(super) fn attempt_failed(&mut self, failure: Failure, status: u16, error: GatewayError, now: i64) {
        let channel = self.served.channel.clone();
        if let Some((target, _, _)) = &self.current {
            self.health.push(HealthReport {
                channel: channel.clone(),
                model: target.upstream_model.clone(),
                credential: self.credential,
                policy: target.breaker,
                failure: Some(failure),
            });
            if let Some(key) = self.credential.filter(|_| breaker::is_credential_failure(&failure)) {
                // The channel's next credential gets the next attempt.
                self.refused_credentials.push((channel.clone(), key));
                let others = (0..target.api_keys.len())
                    .any(|i| !self.refused_credentials.contains(&(channel.clone(), i)));
                if others
                    && target.api_keys.len() > 1
                    && self.refused_credentials.len() <= MAX_CREDENTIAL_RETRIES
                {
                    let retry = Target { credential_retry: true, ..target.clone() };
                    self.targets.insert(self.next_target.min(self.targets.len()), retry);
                }
            }
        }
        self.log(false, format!("channel {channel} failed ({}): {error}", failure.kind()));
        self.attempts.push(Attempt {
            channel,
            model: self.route_model.clone(),
            status,
            failure: Some(failure.kind().to_string()),
            latency_ms: u64::try_from(now - self.attempt_started).unwrap_or(0),
        });
        self.last_error = Some(error);
    }

    /// Records the attempt that serves the request.
    pub(super) fn attempt_served(&mut self, now: i64) {
        if let Some((target, _, _)) = &self.current {
            self.health.push(HealthReport {
                channel: target.channel.clone(),
                model: target.upstream_model.clone(),
                credential: self.credential,
                policy: target.breaker,
                failure: None,
            });
        }
        self.attempts.push(Attempt {
            channel: self.served.channel.clone(),
            model: self.route_model.clone(),
            status: 200,
            failure: None,
            latency_ms: u64::try_from(now - self.attempt_started).unwrap_or(0),
        });
    }

    /// The request's usage event, with its attempts.
    pub(super) fn usage_event(&self, ending: Ending, now: i64) -> Option<UsageEvent> {
        let mut event = self.meter.as_ref()?.event(&self.served, ending, now);
        event.attempts = self.attempts.clone();
        if !self.route_model.is_empty() && self.route_model != event.model {
            event.served_model = self.route_model.clone();
        }
        Some(event)
    }

    /// Starts (or continues, after a secret was read) the attempt at the
    /// next candidate.
    pub(super) fn attempt(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        if let Some(lookup) = self.cache_lookup(isolate) {
            return Ok(lookup);
        }
        let target = match &self.current {
            Some((target, _, _)) => target.clone(),
            None => {
                let Some(target) = self.pick_target(isolate, now) else {
                    let error = self.last_error.clone().unwrap_or(GatewayError::UpstreamUnavailable);
                    return self.no_more_candidates(isolate, error, now);
                };
                self.served = Served {
                    channel: target.channel.clone(),
                    provider: target.provider.id.to_string(),
                    upstream_model: target.upstream_model.clone(),
                };
                // Folding thinking and emulating tools rebuild the request
                // and the answer, so they are never relayed as is.
                self.emulated_tools = self
                    .inbound
                    .as_ref()
                    .and_then(|i| i.canonical())
                    .filter(|_| target.emulate_tools)
                    .and_then(tool_emulation::offered);
                let rebuild =
                    self.suffix_stripped || self.model_options.fold_thinking || self.emulated_tools.is_some();
                let family = self.inbound.as_ref().map_or(Family::Chat, |i| i.family);
                let plan = Plan::for_attempt(self.start.client, family, target.provider.dialect, rebuild);
                self.current = Some((target.clone(), plan, Vec::new()));
                if let Some(circuit) = self.claim.take() {
                    self.phase = Phase::AwaitProbeClaim;
                    let body = HealthSync::claim_request(&circuit);
                    return Ok(Effect::HealthCall { channel: target.channel.clone(), body });
                }
                target
            }
        };
        let inline = self.credential.and_then(|i| target.api_keys.get(i));
        let credential = match (inline, &target.api_key_secret) {
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
                // Every credential of the channel is redacted from what the
                // upstream says, not only the one sent.
                *secrets = credential.iter().chain(&target.api_keys).cloned().collect();
                *plan
            }
            None => return Err(GatewayError::Internal),
        };
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let mock = target.provider.dialect == ProviderDialect::Mock;
        self.dropped_params.clear();
        let (path, body) = match plan {
            // An embeddings request of another client to an OpenAI-format
            // upstream is sent as the OpenAI-format body it was read into.
            Plan::Relay | Plan::Embed(UpstreamDialect::OpenAiChat) => {
                // What the OpenAI form has no field for reaches neither the mock nor the upstream.
                let unsendable = inbound.embed_options().map(|o| o.dropped_for_openai()).unwrap_or_default();
                if mock {
                    self.dropped_params = unsendable;
                    let body = inbound.passthrough_body().cloned().unwrap_or_default();
                    return Ok(self.start_mock(isolate, &body, &target, now));
                }
                let (body, dropped) = inbound
                    .passthrough_upstream_body(&target.upstream_model, target.provider)
                    .unwrap_or_default();
                self.dropped_params = dropped;
                self.dropped_params.extend(unsendable);
                (target.provider.path(inbound.family).to_string(), body)
            }
            Plan::Embed(dialect) => {
                // Not a candidate otherwise: no Anthropic row serves embeddings.
                let built = match (dialect, inbound.embed_request()) {
                    (UpstreamDialect::Gemini, Some(request)) => request.gemini_call(&target.upstream_model),
                    _ => Err(GatewayError::Internal),
                };
                match built {
                    Ok(call) => call,
                    Err(error) => return self.unbuildable(isolate, error, now),
                }
            }
            Plan::Translate(dialect) => {
                if let Some(lookup) = self.state_lookup(dialect, now) {
                    return Ok(lookup);
                }
                let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
                let emulated = self.emulated_tools.is_some();
                let built = inbound.for_translation().and_then(|canonical| {
                    let rewritten = emulated.then(|| tool_emulation::rewrite_request(canonical));
                    translate::build_provider_request(
                        dialect,
                        target.provider,
                        rewritten.as_ref().unwrap_or(canonical),
                        &target.upstream_model,
                    )
                });
                let call = match built {
                    Ok((call, dropped)) => {
                        self.dropped_params = dropped;
                        call
                    }
                    Err(error) => return self.unbuildable(isolate, error, now),
                };
                if mock {
                    let body = match serde_json::from_slice::<serde_json::Value>(&call.body) {
                        Ok(serde_json::Value::Object(map)) => map,
                        _ => return Err(self.internal("mock request body is not an object".into())),
                    };
                    return Ok(self.start_mock(isolate, &body, &target, now));
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
        headers.extend(credential.as_deref().and_then(|key| target.provider.auth.header(key)));
        self.upstream = Upstream::Remote;
        self.phase = Phase::AwaitUpstream;
        self.attempt_started = now;
        let headers_timeout = target.timeout_ms.unwrap_or(isolate.config.upstream_timeout_ms);
        self.deadline = Some((now + headers_timeout as i64, TimeoutPhase::Headers));
        let stream = self.inbound.as_ref().is_some_and(|i| i.stream);
        if stream && self.keepalive_at.is_none() && isolate.config.keepalive_ms > 0 {
            self.keepalive_at = Some(self.started_ms + isolate.config.keepalive_ms as i64);
        }
        Ok(Effect::Fetch(UpstreamRequest {
            url: target.provider.url(
                &target.base_url,
                &path,
                Some(&target.upstream_model),
                target.api_version.as_deref(),
            ),
            headers,
            body,
            wake_ms: self.wake_ms(now),
        }))
    }

    /// After this attempt's request could not be built for its upstream:
    /// the next candidate, or the error.
    fn unbuildable(
        &mut self,
        isolate: &mut IsolateState,
        error: GatewayError,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        self.last_error = Some(error.clone());
        match AttemptVerdict::after_error(&error) {
            AttemptVerdict::FailOver => self.next_candidate(isolate, now),
            AttemptVerdict::Stop => self.no_more_candidates(isolate, error, now),
        }
    }

    /// The built-in mock answers like an OpenAI-compatible upstream would.
    pub(super) fn start_mock(
        &mut self,
        isolate: &mut IsolateState,
        body: &serde_json::Map<String, serde_json::Value>,
        target: &Target,
        now: i64,
    ) -> Effect {
        self.attempt_started = now;
        let stream = body.get("stream").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let prompt_tokens = self.inbound.as_ref().map_or(1, |i| i.prompt.estimate);
        let model = &target.upstream_model;
        let answer = match self.inbound.as_ref().map_or(Family::Chat, |i| i.family) {
            Family::Chat => {
                let reply = MockReply::for_request(body, model, now / 1000, prompt_tokens);
                if stream {
                    MockAnswer::Stream(reply.stream_payloads(true))
                } else {
                    MockAnswer::Whole(reply.completion_json().to_string().into_bytes())
                }
            }
            other => family::mock_answer(other, body, model, now / 1000, prompt_tokens),
        };
        let frames: VecDeque<Vec<u8>> = match answer {
            MockAnswer::Stream(payloads) => {
                let frames: Vec<Vec<u8>> = payloads
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
            }
            MockAnswer::Whole(body) => VecDeque::from([body]),
        };
        self.upstream = Upstream::Mock { frames, delay_ms: target.mock.chunk_delay_ms, sent_first: false };
        if target.mock.latency_ms > 0 {
            self.phase = Phase::AwaitMockHead;
            return Effect::Sleep { ms: target.mock.latency_ms };
        }
        match self.served_upstream(isolate, now) {
            Ok(effect) => effect,
            Err(error) => self.fail(isolate, error, now),
        }
    }

    /// The model name the client is shown: the one it asked for, or the
    /// fallback that serves it.
    pub(super) fn shown_model(&self) -> String {
        match &self.inbound {
            Some(inbound) if self.route_model == self.primary_model => inbound.model.clone(),
            _ => self.route_model.clone(),
        }
    }

    pub(super) fn response_headers(&self) -> Vec<(&'static str, String)> {
        let id = self.start.request_id.clone();
        let mut headers = vec![
            ("x-request-id", id.clone()),
            ("request-id", id),
            (SERVED_CHANNEL_HEADER, self.served.channel.clone()),
            (SERVED_MODEL_HEADER, self.shown_model()),
            ("access-control-allow-origin", "*".into()),
            (
                "access-control-expose-headers",
                "x-request-id, request-id, x-edgeway-channel, x-edgeway-model, x-edgeway-dropped-params"
                    .into(),
            ),
        ];
        if let Some(state) = self.reasoning_state() {
            headers.push((REASONING_STATE_HEADER, state.into()));
        }
        if let Some(verdict) = self.cache_verdict() {
            headers.push((crate::response_cache::CACHE_HEADER, verdict.into()));
        }
        if let Some(dropped) = BodyQuirks::header_value(&self.dropped_params) {
            headers.push((DROPPED_PARAMS_HEADER, dropped));
        }
        headers
    }

    /// An upstream accepted the request: answer from it.
    pub(super) fn served_upstream(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let shown_model = self.shown_model();
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let (plan, secrets) = match &self.current {
            Some((_, plan, secrets)) => (*plan, secrets.clone()),
            None => return Err(GatewayError::Internal),
        };
        if !inbound.stream {
            self.deadline = None;
            self.attempt_served(now);
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
            Plan::Relay => StreamShaper::Relay(Box::new(
                ChatStreamTap::new(inbound.client_wants_usage, secrets)
                    .with_public_model(&shown_model)
                    .estimating(inbound.prompt.estimate),
            )),
            // Embeddings are answered whole (their requests never stream).
            Plan::Embed(_) => return Err(self.internal("an embeddings request asked for a stream".into())),
            Plan::Translate(upstream) => StreamShaper::Translate(Box::new(StreamTranslator::new(
                upstream,
                client,
                StreamOptions {
                    response_id: client_response_id(client, &self.start.request_id),
                    model: shown_model.clone(),
                    created: self.started_ms / 1000,
                    include_usage: inbound.client_wants_usage,
                    secrets,
                    prompt_estimate: Some(inbound.prompt.estimate),
                    fold_thinking: self.model_options.fold_thinking,
                    emulated_tools: self.emulated_tools.clone(),
                },
            ))),
        });
        // The client's head waits for the first content (or a keepalive):
        // until then the attempt can still be replaced.
        let first_content_timeout = self.current.as_ref().map_or(0, |(t, _, _)| t.first_content_timeout_ms);
        self.deadline = Some((now + first_content_timeout as i64, TimeoutPhase::FirstContent));
        self.read_chunk(isolate, now)
    }

    /// The head of the client's stream response.
    pub(super) fn stream_head(&self, name_channel: bool) -> ResponseHead {
        let mut headers = self.response_headers();
        if !name_channel {
            // Sent with a keepalive, before the serving channel (and model) is known.
            headers.retain(|(name, _)| *name != SERVED_CHANNEL_HEADER && *name != SERVED_MODEL_HEADER);
        }
        headers.push(("content-type", "text/event-stream; charset=utf-8".into()));
        headers.push(("cache-control", "no-cache".into()));
        headers.push(("x-accel-buffering", "no".into()));
        ResponseHead { status: 200, headers }
    }

    pub(super) fn whole_body(&mut self, body: Vec<u8>, now: i64) -> Result<Effect, GatewayError> {
        let shown_model = self.shown_model();
        let inbound = self.inbound.as_ref().ok_or(GatewayError::Internal)?;
        let plan = self.current.as_ref().map(|(_, plan, _)| *plan).ok_or(GatewayError::Internal)?;
        let prompt_estimate = inbound.prompt.estimate;
        let mut kept = Vec::new();
        let (out, reported, content_bytes) = match plan {
            Plan::Relay => {
                let usage = response_usage(&body).map(|u| TokenUsage::from_openai(&u));
                // Embeddings have no output to estimate (and their lists are not built).
                let content = if inbound.family.has_text_output() { relay_content_bytes(&body) } else { 0 };
                // The client sees the public model name, not the upstream's.
                let renamed =
                    std::str::from_utf8(&body).ok().and_then(|text| replace_model_name(text, &shown_model));
                // And the usage it is billed, when the upstream reported none.
                let with_usage = match usage {
                    Some(_) => None,
                    None => relay_body_with_usage(
                        renamed.as_deref().map_or(&body[..], str::as_bytes),
                        &estimated_usage(prompt_estimate, content),
                    ),
                };
                let out = match (with_usage, renamed) {
                    (Some(bytes), _) => ResponseBody::Bytes(bytes),
                    (None, Some(text)) => ResponseBody::Bytes(text.into_bytes()),
                    (None, None) => ResponseBody::UpstreamBody,
                };
                (out, usage, content)
            }
            Plan::Embed(upstream) => {
                let embedded = family::embeddings::parse_upstream(upstream, &body)?;
                let answer = inbound.embed_answer().ok_or(GatewayError::Internal)?;
                let reported = embedded
                    .prompt_tokens
                    .map(|tokens| TokenUsage { input_uncached: tokens, ..Default::default() });
                let billed = embedded.prompt_tokens.unwrap_or(prompt_estimate);
                let rendered = family::embeddings::render_answer(answer, &embedded, &shown_model, billed);
                (ResponseBody::Bytes(rendered), reported, 0)
            }
            Plan::Translate(upstream) => {
                let mut resp =
                    translate::parse_upstream_response_seeded(upstream, &body, &self.start.request_id)?;
                if let Some(offered) = &self.emulated_tools {
                    tool_emulation::read_response(&mut resp, offered);
                }
                kept = self.vault_entries(upstream, &resp);
                if resp.created == 0 {
                    resp.created = self.started_ms / 1000;
                }
                if resp.id.is_empty() || self.storing_response() {
                    // A stored response is named by the gateway: unique per request.
                    resp.id = client_response_id(self.start.client, &self.start.request_id);
                }
                resp.model = shown_model.clone();
                let usage = resp.usage_reported.then_some(resp.usage);
                let content = response_content_bytes(&resp);
                if usage.is_none() {
                    resp.usage = estimated_usage(prompt_estimate, content);
                    resp.usage_estimated = true;
                }
                if self.model_options.fold_thinking && self.start.client == ClientDialect::OpenAiChat {
                    translate::fold_thinking(&mut resp);
                }
                let rendered = translate::render_client_response(self.start.client, &resp);
                kept.extend(self.response_entries(&rendered));
                (ResponseBody::Bytes(rendered), usage, content)
            }
        };
        let out = match (out, &self.upstream) {
            // The mock's body was made here: the shell has no copy of it.
            (ResponseBody::UpstreamBody, Upstream::Mock { .. }) => ResponseBody::Bytes(body),
            (out, _) => out,
        };
        self.event = self.usage_event(Ending::completed(reported, content_bytes), now);
        self.cache_note_event();
        let mut headers = self.response_headers();
        headers.push(("content-type", "application/json".into()));
        if reported.is_none() {
            headers.push((USAGE_HEADER, "estimated".into()));
        }
        self.phase = Phase::AwaitErrorRespond;
        self.responded = true;
        let respond = Effect::Respond(ResponseHead { status: 200, headers }, out);
        Ok(self.keep_then(kept, respond, now))
    }
}

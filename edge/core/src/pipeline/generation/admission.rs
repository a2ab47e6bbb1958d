use super::*;
use crate::api_key::{key_digest, kv_key_for_digest, presented_key, CredentialHeaders};
use crate::error::GatewayError;
use crate::ip_allow::ip_allowed;
use crate::key_account::Refusal;
use crate::key_account::SliceGrant;
use crate::key_account::{AccountSnapshot, KeyLimits};
use crate::key_record::KeyRecord;
use crate::limits::DEFAULT_RESERVED_OUTPUT_TOKENS;
use crate::pipeline::account_slice::{LocalAdmit, Renewed, RENEWAL_POLL_MS};
use crate::pipeline::admission::{may_skip_admission, slice_need};
use crate::pipeline::isolate::IsolateState;
use crate::pipeline::metering::Meter;
use crate::pipeline::route::resolve;
use crate::pipeline::wait_queue::{MAX_WAIT_MS, WAIT_POLL_MS};
use crate::routing::RoutingTable;
use std::rc::Rc;

impl Generation {
    pub(super) fn authenticate(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
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

    pub(super) fn after_key(
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

    pub(super) fn after_routing(
        &mut self,
        isolate: &mut IsolateState,
        table: &RoutingTable,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let (record, inbound) = match (&self.record, &mut self.inbound) {
            (Some(record), Some(inbound)) => (record.clone(), inbound),
            _ => return Err(self.internal("routing before the request was read".into())),
        };
        inbound.apply_policy(table.policy())?;
        let mut route =
            resolve(table, &record, &inbound.model, self.start.routing_seed, self.pinned.as_deref())?;
        self.route_model = route.model.to_string();
        self.primary_model = route.model.to_string();
        self.suffix_stripped = route.suffix_stripped;
        let family = inbound.family;
        route.candidates.retain(|c| c.provider.families.contains(family));
        for fallback in &mut route.fallbacks {
            fallback.candidates.retain(|c| c.provider.families.contains(family));
        }
        if route.candidates.is_empty() {
            return Err(GatewayError::InvalidRequest {
                message: format!(
                    "The model `{}` is not served on `/v1{}`.",
                    route.model,
                    family.openai_path()
                ),
                param: Some("model".into()),
            });
        }
        if let Some(private) = inbound.private_media() {
            // Non-public media hosts go only to channels whose operator
            // listed them (a self-hosted server fetching from its own network).
            route.candidates.retain(|c| private.allowed_by(&c.channel.media_hosts));
            for fallback in &mut route.fallbacks {
                fallback.candidates.retain(|c| private.allowed_by(&c.channel.media_hosts));
            }
            if route.candidates.is_empty() {
                return Err(private.refusal.clone().unwrap_or(GatewayError::Internal));
            }
        }
        self.model_options = table.model(route.model).map(|m| m.options.clone()).unwrap_or_default();
        self.targets = Target::list(&route);
        if record.quota_micros.is_some() || record.user_id.is_some() {
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
            endpoint: family,
            stream: inbound.stream,
            started_ms: self.started_ms,
            prompt_estimate: inbound.prompt.estimate,
            // Reserved at the dearest model of the chain (a true worst case
            // whichever serves); billed at the one that serves.
            price: route.fallbacks.iter().fold(route.price, |p, f| p.dearest_of(&f.price)),
            empty_reply_free: self.model_options.empty_reply_free,
        });
        // Keys with limits are admitted against the isolate's slice of their
        // account; keys without skip admission, and their account is asked
        // every couple of seconds per isolate for revocations and new limits.
        if KeyLimits::from_record(&record).enforces_anything() {
            return self.slice_admission(isolate, now);
        }
        match isolate.account_check(&self.digest, now) {
            Some(true) => self.attempt(isolate, now),
            Some(false) => self.slice_admission(isolate, now),
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

    pub(super) fn after_account_check(
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
            self.slice_admission(isolate, now)
        }
    }

    /// Admits a request of a key with limits against the isolate's slice
    /// of its account, renewing the slice when it cannot hold the request.
    pub(super) fn slice_admission(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let (limits, need) = match (&self.record, &self.inbound, &self.meter) {
            (Some(record), Some(inbound), Some(meter)) => {
                (KeyLimits::from_record(record), slice_need(&meter.price, meter.price_ratio_ppm, inbound))
            }
            _ => return Err(self.internal("admission before routing".into())),
        };
        if self.waiting_since.is_some() && !isolate.waiters.poll(&self.digest, &self.start.request_id, now) {
            // Someone who came first is waiting for the next slot.
            return self.wait_for_slot(isolate, now);
        }
        match isolate.slices.admit(&self.digest, &limits, need, now) {
            LocalAdmit::Admitted(ticket) => {
                self.ticket = Some(ticket);
                self.stop_waiting(isolate);
                self.attempt(isolate, now)
            }
            LocalAdmit::Refused(reason, retry) => self.refused(isolate, reason, retry, now),
            LocalAdmit::Wait => {
                self.phase = Phase::AwaitSlicePoll;
                Ok(Effect::Sleep { ms: RENEWAL_POLL_MS })
            }
            LocalAdmit::Renew(renewal) => {
                self.admit_attempts += 1;
                self.renewal_sent_at = now;
                self.phase = Phase::AwaitSliceGrant;
                Ok(Effect::AccountCall {
                    digest: self.digest.clone(),
                    method: "POST",
                    path: "/slice",
                    body: serde_json::to_string(&renewal).ok(),
                })
            }
        }
    }

    /// The key's slice refused the request: one over the concurrency limit
    /// of a key with `max_wait_ms` waits for a slot, in arrival order, until
    /// that long after it first waited; anything else is refused now.
    fn refused(
        &mut self,
        isolate: &mut IsolateState,
        reason: Refusal,
        retry: Option<u64>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let max_wait = self.record.as_ref().and_then(|r| r.max_wait_ms).map_or(0, |w| w.min(MAX_WAIT_MS));
        let since = *self.waiting_since.get_or_insert(now);
        if reason == Refusal::Concurrency && now - since < i64::try_from(max_wait).unwrap_or(0) {
            isolate.waiters.poll(&self.digest, &self.start.request_id, now);
            return self.wait_for_slot(isolate, now);
        }
        self.stop_waiting(isolate);
        isolate.counters.refusal(reason);
        Err(reason.into_error(retry))
    }

    /// Waits a poll interval, then asks for a slot again (refused once the
    /// key's `max_wait_ms` has passed).
    fn wait_for_slot(&mut self, isolate: &mut IsolateState, now: i64) -> Result<Effect, GatewayError> {
        let max_wait = self.record.as_ref().and_then(|r| r.max_wait_ms).map_or(0, |w| w.min(MAX_WAIT_MS));
        let since = self.waiting_since.unwrap_or(now);
        if now - since >= i64::try_from(max_wait).unwrap_or(0) {
            self.stop_waiting(isolate);
            isolate.counters.refusal(Refusal::Concurrency);
            return Err(Refusal::Concurrency.into_error(None));
        }
        self.phase = Phase::AwaitSlicePoll;
        Ok(Effect::Sleep { ms: WAIT_POLL_MS })
    }

    /// The client disconnected before it was admitted: out of the queue,
    /// nothing forwarded, nothing billed.
    pub(super) fn client_left_while_waiting(&mut self, isolate: &mut IsolateState) -> Effect {
        self.stop_waiting(isolate);
        let id = self.start.request_id.clone();
        self.log(false, format!("{id}: the client left while waiting for a slot"));
        self.phase = Phase::Finished;
        Effect::Finished
    }

    fn stop_waiting(&mut self, isolate: &mut IsolateState) {
        if self.waiting_since.take().is_some() {
            isolate.waiters.leave(&self.digest, &self.start.request_id);
        }
    }

    /// The account answered the renewal this request sent for itself.
    pub(super) fn after_slice_grant(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let grant = if (200..300).contains(&status) {
            serde_json::from_str::<SliceGrant>(body).map_err(|e| e.to_string())
        } else {
            Err(format!("{status} {body}"))
        };
        let need = match (&self.inbound, &self.meter) {
            (Some(inbound), Some(meter)) => slice_need(&meter.price, meter.price_ratio_ppm, inbound),
            _ => return Err(GatewayError::Internal),
        };
        match grant {
            Ok(grant) => {
                match isolate.slices.renewed(&self.digest, grant, self.renewal_sent_at, Some(need)) {
                    Renewed::Admitted(ticket) => {
                        self.ticket = Some(ticket);
                        self.stop_waiting(isolate);
                        self.attempt(isolate, now)
                    }
                    Renewed::Refused(reason, retry) => self.refused(isolate, reason, retry, now),
                    Renewed::Applied => self.slice_admission(isolate, now),
                }
            }
            Err(why) => {
                isolate.slices.renewal_failed(&self.digest);
                if self.admit_attempts < ADMIT_ATTEMPTS {
                    let id = self.start.request_id.clone();
                    self.log(false, format!("key account slice renewal for {id} failed, retrying: {why}"));
                    return self.slice_admission(isolate, now);
                }
                Err(self.internal(format!("key account unreachable: {why}")))
            }
        }
    }
}

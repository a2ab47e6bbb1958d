use super::*;
use crate::api_key::{key_digest, kv_key_for_digest, presented_key, CredentialHeaders};
use crate::error::GatewayError;
use crate::ip_allow::ip_allowed;
use crate::key_account::{AccountSnapshot, AdmitDecision, KeyLimits, Refusal};
use crate::key_record::KeyRecord;
use crate::limits::DEFAULT_RESERVED_OUTPUT_TOKENS;
use crate::pipeline::admission::{admit_request, may_skip_admission};
use crate::pipeline::isolate::IsolateState;
use crate::pipeline::metering::Meter;
use crate::pipeline::route::{resolve, MAX_ATTEMPTS};
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
            Ok(self.admission())
        }
    }

    pub(super) fn admission(&mut self) -> Effect {
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

    pub(super) fn after_admission(
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
}

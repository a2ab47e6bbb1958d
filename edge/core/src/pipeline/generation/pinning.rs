//! A request pinned to one channel: the pin is checked once the body is
//! read (its signature covers the body), before routing.

use super::*;
use crate::error::GatewayError;
use crate::pin::{body_digest, verify_pin, PIN_SECRET_NAME};
use crate::pipeline::isolate::IsolateState;

impl Generation {
    /// Accepts the pin of a `pin_allowed` key, or checks its signature
    /// (reading the signing secret first when the isolate has not yet).
    pub(super) fn check_pin(
        &mut self,
        isolate: &mut IsolateState,
        body: &[u8],
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let allowed = self.record.as_ref().is_some_and(|r| r.pin_allowed);
        let Some(pin) = &self.start.pin else { return self.read_routing(isolate, now) };
        if allowed {
            self.pinned = Some(pin.channel.clone());
            return self.read_routing(isolate, now);
        }
        self.pin_body_digest = body_digest(body);
        match isolate.secret(PIN_SECRET_NAME) {
            Some(secret) => {
                let secret = secret.map(str::to_string);
                self.verify_pin_with(isolate, secret.as_deref(), now)
            }
            None => {
                self.phase = Phase::AwaitPinSecret;
                Ok(Effect::ReadSecret { name: PIN_SECRET_NAME.to_string() })
            }
        }
    }

    pub(super) fn after_pin_secret(
        &mut self,
        isolate: &mut IsolateState,
        value: Option<String>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        isolate.put_secret(PIN_SECRET_NAME, value.clone());
        self.verify_pin_with(isolate, value.as_deref(), now)
    }

    fn verify_pin_with(
        &mut self,
        isolate: &mut IsolateState,
        secret: Option<&str>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let Some(pin) = self.start.pin.clone() else { return self.read_routing(isolate, now) };
        match verify_pin(secret, &pin, &self.pin_body_digest, now / 1000) {
            Ok(()) => {
                self.pinned = Some(pin.channel);
                self.read_routing(isolate, now)
            }
            Err(why) => {
                let id = self.start.request_id.clone();
                self.log(false, format!("{id}: pin to channel refused: {why:?}"));
                Err(GatewayError::PinRefused)
            }
        }
    }
}

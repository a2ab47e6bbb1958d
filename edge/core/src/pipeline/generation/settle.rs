use super::*;
use crate::error::GatewayError;
use crate::key_account::SettleRequest;
use crate::pipeline::isolate::{BatchStep, IsolateState, USAGE_BATCH_WINDOW_MS};
use crate::pipeline::metering::Ending;
use crate::usage::UsageEvent;

impl Generation {
    /// Settles (admitted requests) or batches the usage event (the rest).
    pub(super) fn settle_or_finish(
        &mut self,
        isolate: &mut IsolateState,
        after: AfterSettle,
        now: i64,
    ) -> Effect {
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

    pub(super) fn settle_effect(&mut self) -> Effect {
        self.settle_attempts += 1;
        self.phase = Phase::AwaitSettle;
        let body = serde_json::to_string(&SettleRequest {
            request_id: self.start.request_id.clone(),
            event: self.event.clone(),
        })
        .ok();
        Effect::AccountCall { digest: self.digest.clone(), method: "POST", path: "/settle", body }
    }

    pub(super) fn after_settled(&mut self, isolate: &mut IsolateState, now: i64) -> Effect {
        self.after_usage_sent(isolate, now)
    }

    pub(super) fn after_usage_sent(&mut self, _isolate: &mut IsolateState, _now: i64) -> Effect {
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

    pub(super) fn publish(&mut self, events: Vec<UsageEvent>, fallback: bool) -> Effect {
        self.phase = Phase::AwaitPublish { fallback };
        let count = events.len();
        let events_json = serde_json::to_string(&events).unwrap_or_else(|_| "[]".into());
        self.publishing = events;
        Effect::PublishUsage { events_json, count }
    }

    /// Ends the request with `error`: before the response, the client gets it
    /// in its dialect (and an admitted or metered request is settled as
    /// failed, billed nothing); after it, the stream is closed.
    pub(super) fn fail(&mut self, error: GatewayError, now: i64) -> Effect {
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

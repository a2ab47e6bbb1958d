use super::*;
use crate::error::GatewayError;
use crate::key_account::{KeyLimits, SliceGrant};
use crate::pipeline::account_slice::{
    ReportAction, ReportStep, RENEWAL_POLL_MS, REPORT_WINDOW_MS, SLICE_IDLE_RELEASE_MS,
};
use crate::pipeline::counters::StreamEnding;
use crate::pipeline::isolate::{BatchStep, IsolateState, USAGE_BATCH_WINDOW_MS};
use crate::pipeline::metering::Ending;
use crate::usage::UsageEvent;

impl Generation {
    /// Settles the request: against its key's slice (admitted requests,
    /// reported to the account in a batch, a stream's before its end reaches
    /// the client), or into the isolate's usage batch (the rest).
    pub(super) fn settle_or_finish(
        &mut self,
        isolate: &mut IsolateState,
        after: AfterSettle,
        now: i64,
    ) -> Effect {
        self.after_settle = after;
        if let Some(ticket) = self.ticket.clone() {
            let Some(event) = self.event.take() else {
                isolate.slices.release(&ticket);
                return self.after_usage_sent(isolate, now);
            };
            let (number, step) = isolate.slices.settle(&ticket, event, now);
            if after == AfterSettle::EmitFinal {
                self.ack_number = Some(number);
                return self.report_step(isolate, now);
            }
            return match step {
                ReportStep::WaitThenReport => {
                    self.phase = Phase::AwaitReportWindow;
                    Effect::Sleep { ms: REPORT_WINDOW_MS }
                }
                ReportStep::Joined => self.after_usage_sent(isolate, now),
            };
        }
        let Some(event) = self.event.take() else {
            if isolate.slices.idle(&self.digest) {
                // Refused by the key's slice, which holds nothing in use:
                // give it back if the key stays idle, so what it holds goes
                // back to the key's account (and the user's balance).
                self.phase = Phase::AwaitIdleRelease;
                return Effect::Sleep { ms: SLICE_IDLE_RELEASE_MS };
            }
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

    /// Reports the key's settled requests (or waits for the report in
    /// flight), until this request's own settle, when it waits for one, is
    /// in the account's outbox.
    pub(super) fn report_step(&mut self, isolate: &mut IsolateState, now: i64) -> Effect {
        if let Some(number) = self.ack_number {
            if isolate.slices.acked(&self.digest, number) {
                self.ack_number = None;
                return self.after_usage_sent(isolate, now);
            }
        }
        let limits = self.record.as_deref().map(KeyLimits::from_record).unwrap_or_default();
        match isolate.slices.report(&self.digest, &limits, now) {
            ReportAction::Send(renewal) => {
                self.settle_attempts += 1;
                self.renewal_sent_at = now;
                self.phase = Phase::AwaitReport;
                Effect::AccountCall {
                    digest: self.digest.clone(),
                    method: "POST",
                    path: "/slice",
                    body: serde_json::to_string(&renewal).ok(),
                }
            }
            ReportAction::Wait => {
                self.phase = Phase::AwaitReportWindow;
                Effect::Sleep { ms: RENEWAL_POLL_MS }
            }
            ReportAction::Nothing if self.ack_number.is_some() => {
                // Ours is in the call in flight, or was just acknowledged.
                self.phase = Phase::AwaitReportWindow;
                Effect::Sleep { ms: RENEWAL_POLL_MS }
            }
            ReportAction::Nothing => self.after_usage_sent(isolate, now),
        }
    }

    /// The account answered a report.
    pub(super) fn after_report(
        &mut self,
        isolate: &mut IsolateState,
        status: u16,
        body: &str,
        now: i64,
    ) -> Effect {
        let grant = if (200..300).contains(&status) {
            serde_json::from_str::<SliceGrant>(body).map_err(|e| e.to_string())
        } else {
            Err(format!("{status} {body}"))
        };
        match grant {
            Ok(grant) => {
                let _ = isolate.slices.renewed(&self.digest, grant, self.renewal_sent_at, None);
                self.settle_attempts = 0;
                if isolate.slices.released(&self.digest) {
                    return self.report_step(isolate, now);
                }
                if self.ack_number.is_none() && isolate.slices.idle(&self.digest) {
                    // Give the slice back if the key stays idle.
                    self.phase = Phase::AwaitIdleRelease;
                    return Effect::Sleep { ms: SLICE_IDLE_RELEASE_MS };
                }
                self.report_step(isolate, now)
            }
            Err(why) => {
                isolate.slices.renewal_failed(&self.digest);
                let id = self.start.request_id.clone();
                let attempt = self.settle_attempts;
                self.log(false, format!("key account report for {id} failed (attempt {attempt}): {why}"));
                if self.settle_attempts < SETTLE_ATTEMPTS {
                    self.phase = Phase::AwaitReportWindow;
                    return Effect::Sleep { ms: 50 * 4u64.pow(self.settle_attempts.saturating_sub(1)) };
                }
                // The account stays unreachable: the usage goes to the queue
                // directly, never lost (what the slice held expires there).
                self.settle_attempts = 0;
                self.ack_number = None;
                let events = isolate.slices.take_unreported(&self.digest);
                self.log(
                    true,
                    format!("key account unreachable: publishing {} usage event(s) directly", events.len()),
                );
                if events.is_empty() {
                    return self.after_usage_sent(isolate, now);
                }
                self.publish(events, true)
            }
        }
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
    pub(super) fn fail(&mut self, isolate: &mut IsolateState, error: GatewayError, now: i64) -> Effect {
        // Metered from the first attempt on (or once admitted): a request
        // refused before that (key, body, route, admission) leaves no row.
        if self.event.is_none() && (self.ticket.is_some() || self.tried > 0) {
            self.event = self.usage_event(Ending::failed(error.status()), now);
        }
        if self.responded {
            let id = self.start.request_id.clone();
            self.log(true, format!("{id}: ended after the response began: {error}"));
            if self.shaper.is_some() && self.phase != Phase::AwaitClose && self.phase != Phase::Finished {
                self.count_stream_end(isolate, StreamEnding::Failed);
                self.after_settle = AfterSettle::Finish;
                self.phase = Phase::AwaitClose;
                return Effect::CloseStream;
            }
            self.phase = Phase::Finished;
            return Effect::Finished;
        }
        self.phase = Phase::AwaitErrorRespond;
        self.responded = true;
        let mut head = error_head(&error);
        if !self.served.channel.is_empty() {
            head.headers.push((crate::pin::SERVED_CHANNEL_HEADER, self.served.channel.clone()));
        }
        Effect::Respond(head, ResponseBody::Bytes(error.body(self.start.client.error_dialect()).into_bytes()))
    }
}

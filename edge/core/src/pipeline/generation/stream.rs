use super::*;
use crate::error::GatewayError;
use crate::limits::MAX_DRAIN_AFTER_DISCONNECT_MS;
use crate::pipeline::account_slice::SLICE_IDLE_RELEASE_MS;
use crate::pipeline::isolate::IsolateState;
use crate::pipeline::metering::Ending;
use crate::usage::RequestOutcome;

impl Generation {
    pub(super) fn read_chunk(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
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
                Some(frame) => self.on_chunk(isolate, frame, now),
                None => self.end_of_stream(isolate, now),
            };
        }
        self.phase = Phase::AwaitChunk;
        let deadline_ms = self.disconnected_at.map(|at| at + MAX_DRAIN_AFTER_DISCONNECT_MS);
        Ok(Effect::ReadChunk { deadline_ms })
    }

    pub(super) fn on_chunk(
        &mut self,
        isolate: &mut IsolateState,
        chunk: Vec<u8>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let out = shaper.feed(&chunk);
        if self.ttft_ms.is_none() && shaper.saw_content() {
            self.ttft_ms = u64::try_from(now - self.started_ms).ok();
        }
        if shaper.is_ended() {
            // Held back until the request is settled.
            self.final_bytes = out;
            return self.end_of_stream(isolate, now);
        }
        if out.is_empty() || self.disconnected_at.is_some() {
            return self.read_chunk(isolate, now);
        }
        self.phase = Phase::AwaitEmit;
        let unchanged = out == chunk && matches!(self.upstream, Upstream::Remote);
        Ok(Effect::Emit(if unchanged { Emitted::Chunk } else { Emitted::Bytes(out) }))
    }

    /// The upstream ended (or broke, or the drain after a disconnect ran
    /// out): the usage event is made; an admitted request is settled before
    /// the client sees the end.
    pub(super) fn end_of_stream(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
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
        if let Some(keep) = self.keep_stream_state(now) {
            return Ok(keep);
        }
        self.stream_end_tail(isolate, now)
    }

    /// The rest of a stream's end: an admitted request is settled before
    /// the client sees it.
    pub(super) fn stream_end_tail(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if self.ticket.is_some() {
            return Ok(self.settle_or_finish(isolate, AfterSettle::EmitFinal, now));
        }
        Ok(self.emit_final())
    }

    pub(super) fn emit_final(&mut self) -> Effect {
        let bytes = std::mem::take(&mut self.final_bytes);
        if bytes.is_empty() || self.disconnected_at.is_some() {
            self.phase = Phase::AwaitClose;
            return Effect::CloseStream;
        }
        self.phase = Phase::AwaitFinalEmit;
        Effect::Emit(Emitted::Bytes(bytes))
    }

    pub(super) fn after_close(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if self.ticket.is_some() {
            // Settled before the end was sent; give the slice back if the
            // key stays idle.
            if isolate.slices.idle(&self.digest) {
                self.phase = Phase::AwaitIdleRelease;
                return Ok(Effect::Sleep { ms: SLICE_IDLE_RELEASE_MS });
            }
            self.phase = Phase::Finished;
            return Ok(Effect::Finished);
        }
        Ok(self.settle_or_finish(isolate, AfterSettle::Finish, now))
    }
}

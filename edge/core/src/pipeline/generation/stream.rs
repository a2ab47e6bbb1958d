//! The streamed answer: chunks through the shaper, held back until the
//! attempt's first content (so that an upstream failing before it is
//! replaced invisibly), keepalives while the client waits, the three
//! upstream time limits, and the end.

use super::*;
use crate::channel_health::{Failure, TimeoutPhase};
use crate::error::GatewayError;
use crate::limits::MAX_DRAIN_AFTER_DISCONNECT_MS;
use crate::pipeline::account_slice::SLICE_IDLE_RELEASE_MS;
use crate::pipeline::counters::StreamEnding;
use crate::pipeline::isolate::IsolateState;
use crate::pipeline::metering::Ending;
use crate::usage::RequestOutcome;

/// The SSE keepalive a streaming client of `client`'s dialect reads as
/// nothing: a comment, or Anthropic's own `ping` event.
pub fn keepalive_bytes(client: ClientDialect) -> &'static [u8] {
    match client {
        ClientDialect::Anthropic => b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
        _ => b": keepalive\n\n",
    }
}

impl Generation {
    /// How long the shell may wait on the pending operation before asking
    /// again: until the nearest of its deadline, the drain limit after a
    /// disconnect, and the next keepalive.
    pub(super) fn wake_ms(&self, now: i64) -> Option<u64> {
        let drain = self.disconnected_at.map(|at| at + MAX_DRAIN_AFTER_DISCONNECT_MS);
        let keepalive = self.keepalive_at.filter(|_| !self.content_sent && self.disconnected_at.is_none());
        [self.deadline.map(|(at, _)| at), drain, keepalive]
            .into_iter()
            .flatten()
            .min()
            .map(|at| u64::try_from(at - now).unwrap_or(0))
    }

    /// The wait on `pending` passed its wake time.
    pub(super) fn on_idle(
        &mut self,
        isolate: &mut IsolateState,
        pending: Pending,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if self.disconnected_at.is_some_and(|at| now >= at + MAX_DRAIN_AFTER_DISCONNECT_MS) {
            self.drain_expired = true;
            return Ok(self.cancel(AfterCancel::EndOfStream));
        }
        if let Some((at, phase)) = self.deadline {
            if now >= at {
                self.deadline = None;
                if self.content_sent {
                    return Ok(self.cancel(AfterCancel::IdleTimeout));
                }
                let phase = if pending == Pending::Fetch { TimeoutPhase::Headers } else { phase };
                let status = if pending == Pending::Fetch { 0 } else { 200 };
                self.attempt_failed(Failure::Timeout(phase), status, GatewayError::UpstreamTimeout, now);
                return Ok(self.cancel(AfterCancel::NextCandidate));
            }
        }
        if let Some(at) = self.keepalive_at.filter(|_| !self.content_sent && self.disconnected_at.is_none()) {
            if now >= at {
                let every = isolate.config.keepalive_ms.max(1) as i64;
                self.keepalive_at = Some(now + every);
                if !self.responded {
                    self.responded = true;
                    self.phase = Phase::AwaitKeepaliveHead { pending };
                    return Ok(Effect::Respond(self.stream_head(false), ResponseBody::Stream));
                }
                self.phase = Phase::AwaitKeepaliveEmit { pending };
                return Ok(Effect::Emit(Emitted::Bytes(keepalive_bytes(self.start.client).to_vec())));
            }
        }
        Ok(Effect::Wait { wake_ms: self.wake_ms(now) })
    }

    fn cancel(&mut self, then: AfterCancel) -> Effect {
        self.phase = Phase::AwaitCancel { then };
        Effect::CancelUpstream
    }

    pub(super) fn after_cancel(
        &mut self,
        isolate: &mut IsolateState,
        then: AfterCancel,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        match then {
            AfterCancel::NextCandidate => self.next_candidate(isolate, now),
            AfterCancel::EndOfStream => self.end_of_stream(isolate, now),
            AfterCancel::IdleTimeout => {
                let channel = self.served.channel.clone();
                self.log(false, format!("channel {channel}: stream idle past its limit"));
                let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
                let tail = shaper.abort(&GatewayError::UpstreamTimeout);
                self.final_bytes.extend(tail);
                self.end_of_stream(isolate, now)
            }
        }
    }

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
                None => self.on_upstream_end(isolate, now),
            };
        }
        self.phase = Phase::AwaitChunk;
        Ok(Effect::ReadChunk { wake_ms: self.wake_ms(now) })
    }

    pub(super) fn on_chunk(
        &mut self,
        isolate: &mut IsolateState,
        chunk: Vec<u8>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let out = shaper.feed(&chunk);
        let (saw_content, ended, completed) = (shaper.saw_content(), shaper.is_ended(), shaper.completed());
        if !self.content_sent {
            if !saw_content && ended && !completed {
                // An error event before any content: the attempt failed.
                return self.failed_before_content(isolate, out, now);
            }
            if !saw_content && !ended {
                self.held.extend(out);
                return self.read_chunk(isolate, now);
            }
            // The first content (or a well-formed empty answer): this
            // attempt serves; what was held goes first.
            self.content_sent = true;
            self.ttft_ms = u64::try_from(now - self.started_ms).ok();
            self.attempt_served(now);
            if self.held.is_empty() && out == chunk && !ended && matches!(self.upstream, Upstream::Remote) {
                // Nothing was held: the chunk goes out as it came.
                let idle = self.current.as_ref().map_or(0, |(t, _, _)| t.idle_timeout_ms);
                self.deadline = Some((now + idle as i64, TimeoutPhase::Idle));
                return Ok(self.emit(Emitted::Chunk, AfterEmit::ReadNext));
            }
            let mut bytes = std::mem::take(&mut self.held);
            bytes.extend(out);
            return self.after_content(isolate, bytes, ended, now);
        }
        let idle = self.current.as_ref().map_or(0, |(t, _, _)| t.idle_timeout_ms);
        self.deadline = Some((now + idle as i64, TimeoutPhase::Idle));
        if ended {
            // Held back until the request is settled.
            self.final_bytes = out;
            return self.end_of_stream(isolate, now);
        }
        if out.is_empty() || self.disconnected_at.is_some() {
            return self.read_chunk(isolate, now);
        }
        let unchanged = out == chunk && matches!(self.upstream, Upstream::Remote);
        self.phase = Phase::AwaitEmit;
        Ok(Effect::Emit(if unchanged { Emitted::Chunk } else { Emitted::Bytes(out) }))
    }

    /// The first bytes with content go out (after the response head, when
    /// it is not out yet); a stream that also ended waits for its settle.
    fn after_content(
        &mut self,
        isolate: &mut IsolateState,
        bytes: Vec<u8>,
        ended: bool,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        let idle = self.current.as_ref().map_or(0, |(t, _, _)| t.idle_timeout_ms);
        self.deadline = Some((now + idle as i64, TimeoutPhase::Idle));
        if ended {
            self.final_bytes = bytes;
            return self.end_of_stream(isolate, now);
        }
        if bytes.is_empty() {
            return self.read_chunk(isolate, now);
        }
        Ok(self.emit(Emitted::Bytes(bytes), AfterEmit::ReadNext))
    }

    /// Emits `bytes` to the client, handing over the stream's response head
    /// first if it is not out yet.
    pub(super) fn emit(&mut self, bytes: Emitted, then: AfterEmit) -> Effect {
        if !self.responded {
            self.responded = true;
            self.pending_emit = Some((bytes, then));
            self.phase = Phase::AwaitStreamStart;
            return Effect::Respond(self.stream_head(true), ResponseBody::Stream);
        }
        self.emit_now(bytes, then)
    }

    pub(super) fn emit_now(&mut self, bytes: Emitted, then: AfterEmit) -> Effect {
        self.phase = match then {
            AfterEmit::ReadNext => Phase::AwaitEmit,
            AfterEmit::Close => Phase::AwaitFinalEmit,
        };
        Effect::Emit(bytes)
    }

    /// The upstream body ended or broke.
    pub(super) fn on_upstream_end(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if self.content_sent {
            return self.end_of_stream(isolate, now);
        }
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let tail = shaper.finish();
        if shaper.completed() {
            // A well-formed answer without content.
            self.content_sent = true;
            self.attempt_served(now);
            let mut bytes = std::mem::take(&mut self.held);
            bytes.extend(tail);
            return self.after_content(isolate, bytes, true, now);
        }
        self.failed_before_content(isolate, tail, now)
    }

    /// The attempt's stream failed before any content: the next candidate
    /// serves, invisibly; with none left, the client gets this stream's
    /// error end (`tail`, in its dialect).
    fn failed_before_content(
        &mut self,
        isolate: &mut IsolateState,
        tail: Vec<u8>,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        self.attempt_failed(Failure::StreamBroken, 200, GatewayError::UpstreamUnavailable, now);
        let more = self.more_targets() && self.disconnected_at.is_none();
        if more {
            return Ok(self.cancel(AfterCancel::NextCandidate));
        }
        if !self.responded {
            // Nothing reached the client yet: an error response with a status.
            self.shaper = None;
            self.held.clear();
            return Err(GatewayError::UpstreamUnavailable);
        }
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend(tail);
        self.final_bytes = bytes;
        self.end_of_stream(isolate, now)
    }

    /// The upstream ended (or broke, or the drain after a disconnect ran
    /// out): the usage event is made; an admitted request is settled before
    /// the client sees the end.
    pub(super) fn end_of_stream(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        self.deadline = None;
        let shaper = self.shaper.as_mut().ok_or(GatewayError::Internal)?;
        let tail = shaper.finish();
        self.final_bytes.extend(tail);
        let (outcome, stream_ending) = if self.disconnected_at.is_some() {
            (RequestOutcome::ClientAborted, StreamEnding::ClientAborted)
        } else if shaper.completed() {
            (RequestOutcome::Completed, StreamEnding::Completed)
        } else {
            (RequestOutcome::Failed, StreamEnding::Failed)
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
        self.count_stream_end(isolate, stream_ending);
        self.event = self.usage_event(ending, now);
        self.cache_note_event();
        if let Some(keep) = self.keep_stream_state(now) {
            return Ok(keep);
        }
        self.stream_end_tail(isolate, now)
    }

    /// The rest of a stream's end: a miss to keep is stored in the response
    /// cache, and an admitted request is settled, before the client sees it.
    pub(super) fn stream_end_tail(
        &mut self,
        isolate: &mut IsolateState,
        now: i64,
    ) -> Result<Effect, GatewayError> {
        if let Some(put) = self.cache_put_at_stream_end() {
            return Ok(put);
        }
        if self.ticket.is_some() {
            return Ok(self.settle_or_finish(isolate, AfterSettle::EmitFinal, now));
        }
        Ok(self.emit_final())
    }

    /// Counts how the client's stream ended (once).
    pub(super) fn count_stream_end(&mut self, isolate: &mut IsolateState, ending: StreamEnding) {
        if !std::mem::replace(&mut self.stream_counted, true) {
            isolate.counters.stream_ended(ending);
        }
    }

    pub(super) fn emit_final(&mut self) -> Effect {
        let bytes = std::mem::take(&mut self.final_bytes);
        if bytes.is_empty() || self.disconnected_at.is_some() {
            if !self.responded {
                // An empty stream still gets its head (and then its end).
                self.responded = true;
                self.pending_emit = None;
                self.phase = Phase::AwaitFinalHead;
                return Effect::Respond(self.stream_head(true), ResponseBody::Stream);
            }
            self.phase = Phase::AwaitClose;
            return Effect::CloseStream;
        }
        self.emit(Emitted::Bytes(bytes), AfterEmit::Close)
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

//! Subscriptions: what one consumer (an SSE stream, a unary answer) reads. A replay reads the
//! stored log in pages, then the running turn's live buffer, then live frames; frames are
//! delivered strictly in sequence order and each at most once, whichever source had it.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::broadcast;

use super::events::Frame;
use super::pump::FinalText;
use super::running::Running;
use super::sessions::load;
use super::{Runtime, RuntimeError};
use crate::store::events;

/// Frames for one consumer.
pub struct Subscription {
    session_id: String,
    org_id: String,
    /// Frames to send before reading again.
    backlog: VecDeque<Arc<Frame>>,
    /// The running turn, for catching up from its live buffer.
    running: Option<Arc<Running>>,
    /// Live frames of the running turn, if one runs.
    rx: Option<broadcast::Receiver<Arc<Frame>>>,
    /// Frames up to this sequence number are not sent (the last one delivered).
    after_seq: i64,
    /// A `done` with a sequence number above this ends the stream.
    done_after: i64,
    /// The backlog must be refilled (from the log, then the live buffer) before live frames.
    catch_up: bool,
    /// Events per log query.
    page: i64,
    /// The agent of the turn this subscription follows, when it follows one.
    agent: Option<String>,
    /// Counts this stream against the session's bound while it lives.
    _permit: Option<StreamPermit>,
    /// Counts this stream against its tenant's and project's `concurrent_streams`.
    _counted: Option<super::concurrency::ScopeTicket>,
    /// The request this subscription continues after (its own `input_required` is skipped if
    /// the answer overtook the frame).
    answered: Option<String>,
}

/// A stream's place in the stream bounds, kept while it lives.
pub struct StreamRoom {
    _permit: StreamPermit,
    _counted: super::concurrency::ScopeTicket,
}

/// One attached stream of a session; the count goes down when it is dropped.
pub(crate) struct StreamPermit {
    session_id: String,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.session_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.session_id);
            }
        }
    }
}

/// A turn folded into one result (the unary answer, or an input's continuation).
#[derive(Clone, Debug, Default)]
pub struct TurnOutcome {
    /// Every envelope, in order, as the JSON text subscribers were sent (an answer copies it
    /// instead of parsing and printing it again).
    pub events: Vec<Box<RawValue>>,
    /// The assistant's final message (the last step's text).
    pub text: String,
    /// The `done` payload, when the turn ended.
    pub done: Option<Value>,
    /// The `input_required` payload, when the turn paused.
    pub pending_input: Option<Value>,
    /// The `error` payloads, if any.
    pub errors: Vec<Value>,
    /// The agent the turn ran, when known.
    pub agent: Option<String>,
}

impl Subscription {
    /// Follows `running` from the frame after `after_seq` to its `done`.
    /// Frames up to this sequence number are not sent: for a new turn, the session's last
    /// sequence before it.
    pub fn after_seq(&self) -> i64 {
        self.after_seq
    }

    pub(crate) fn live(
        session_id: String,
        org_id: String,
        running: Arc<Running>,
        after_seq: i64,
        page: i64,
    ) -> Self {
        let rx = running.subscribe();
        Self {
            session_id,
            org_id,
            backlog: VecDeque::new(),
            agent: Some(running.agent.clone()),
            done_after: running.start_seq,
            rx: Some(rx),
            running: Some(running),
            after_seq,
            catch_up: false,
            page,
            _permit: None,
            _counted: None,
            answered: None,
        }
    }

    /// Keeps the stream's place in its tenant's and project's stream limits while it lives.
    pub(crate) fn counted(mut self, ticket: Option<super::concurrency::ScopeTicket>) -> Self {
        self._counted = ticket;
        self
    }

    /// The continuation of an answered request: its `input_required` frame, should it arrive
    /// after the answer (the client read the pending input before the frame was published), is
    /// not the turn pausing again.
    pub(crate) fn after_answer(mut self, request_id: &str) -> Self {
        self.answered = Some(request_id.to_string());
        self
    }

    /// The next frame to deliver, or `None` when the stream is over.
    pub async fn next(&mut self, runtime: &Runtime) -> Option<Arc<Frame>> {
        loop {
            if let Some(f) = self.backlog.pop_front() {
                if f.seq <= self.after_seq {
                    continue;
                }
                return Some(self.deliver(f));
            }
            // `catch_up` stays set while refilling, so a caller that drops this future mid-way (a
            // heartbeat won the select) still catches up on its next call.
            if self.catch_up {
                match self.refill(runtime).await {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::error!(session = %self.session_id, error = %e, "stream catch-up failed");
                        return None;
                    }
                }
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(f) => {
                    if f.seq <= self.after_seq {
                        continue;
                    }
                    return Some(self.deliver(f));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Fills the backlog with what follows `after_seq`: the live buffer when it reaches back that
    /// far, else the next page of the stored log.
    async fn refill(&mut self, runtime: &Runtime) -> Result<(), RuntimeError> {
        if let Some(running) = &self.running {
            let (frames, complete) = running.buffered_after(self.after_seq);
            if complete {
                self.backlog.extend(frames);
                self.catch_up = false;
                return Ok(());
            }
        }
        let page = runtime
            .log_page(&self.org_id, &self.session_id, self.after_seq, self.page)
            .await?;
        let exhausted = (page.len() as i64) < self.page;
        if page.is_empty() {
            if let Some(running) = &self.running {
                // The log does not have it yet and the buffer no longer does: skip to what the
                // buffer holds rather than wait forever.
                let (frames, _) = running.buffered_after(self.after_seq);
                tracing::warn!(session = %self.session_id, after = self.after_seq, "replay gap: events left the live buffer before the log had them");
                self.backlog.extend(frames);
            }
            self.catch_up = false;
            return Ok(());
        }
        self.backlog.extend(page);
        if exhausted && self.running.is_none() {
            self.catch_up = false;
        }
        Ok(())
    }

    fn deliver(&mut self, f: Arc<Frame>) -> Arc<Frame> {
        self.after_seq = f.seq;
        if f.is_done() && f.seq > self.done_after {
            // The turn is over: stop after this frame.
            self.rx = None;
            self.running = None;
            self.backlog.clear();
            self.catch_up = false;
        }
        f
    }

    /// Waits until the turn ends or pauses for input, folding the frames into one outcome.
    pub async fn collect(mut self, runtime: &Runtime) -> TurnOutcome {
        let mut out = TurnOutcome {
            agent: self.agent.clone(),
            ..Default::default()
        };
        let mut text = FinalText::default();
        while let Some(f) = self.next(runtime).await {
            if f.event_type == "input_required"
                && self.answered.is_some()
                && f.data()["request_id"].as_str() == self.answered.as_deref()
            {
                continue;
            }
            // Envelopes are printed by the pump, so this only fails on a bug; the answer stays
            // valid JSON without the frame.
            match RawValue::from_string(f.json.clone()) {
                Ok(raw) => out.events.push(raw),
                Err(e) => tracing::error!(seq = f.seq, error = %e, "a frame is not JSON"),
            }
            match f.event_type.as_str() {
                "step_start" => text.step_start(),
                "text" => text.push(f.data()["part"]["text"].as_str().unwrap_or_default()),
                _ => {}
            }
            match f.event_type.as_str() {
                "error" => out.errors.push(f.data().clone()),
                "input_required" => {
                    out.pending_input = Some(f.data().clone());
                    break;
                }
                "done" => {
                    out.done = Some(f.data().clone());
                    break;
                }
                _ => {}
            }
        }
        out.text = match out
            .done
            .as_ref()
            .and_then(|d| d["message"]["text"].as_str())
        {
            Some(t) => t.to_string(),
            None => text.as_str().to_string(),
        };
        out
    }
}

impl Runtime {
    /// Replays the session's logged frames after `after`, then follows the running turn (if one
    /// runs) to its `done`.
    pub async fn attach(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        after: i64,
    ) -> Result<Subscription, RuntimeError> {
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        let (session, _) = self
            .store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        let counted = self.count_stream(&session.org_id, &session.project_id)?;
        let permit = self.stream_permit(session_id)?;
        let page = self.settings().replay_page_size.max(1);
        let running = self.existing_slot(session_id).and_then(|s| s.running());
        Ok(match running {
            // Subscribed before anything is read, so nothing falls between log and live.
            Some(r) => {
                let mut sub = Subscription::live(session_id.into(), org_id.into(), r, after, page);
                sub.catch_up = true;
                sub._permit = Some(permit);
                sub._counted = Some(counted);
                sub
            }
            None => Subscription {
                session_id: session_id.to_string(),
                org_id: org_id.to_string(),
                backlog: VecDeque::new(),
                running: None,
                rx: None,
                after_seq: after,
                done_after: i64::MAX,
                catch_up: true,
                page,
                agent: None,
                _permit: Some(permit),
                _counted: Some(counted),
                answered: None,
            },
        })
    }

    /// A place for a stream that follows the session by other means than a [`Subscription`]
    /// (an adapter's own log), within the same bounds: per session, per tenant and project.
    pub fn stream_room(
        &self,
        org_id: &str,
        project_id: &str,
        session_id: &str,
    ) -> Result<StreamRoom, RuntimeError> {
        let counted = self.count_stream(org_id, project_id)?;
        let permit = self.stream_permit(session_id)?;
        Ok(StreamRoom {
            _permit: permit,
            _counted: counted,
        })
    }

    /// Counts a stream against its tenant's and project's `concurrent_streams` (429 past one).
    pub(crate) fn count_stream(
        &self,
        org_id: &str,
        project_id: &str,
    ) -> Result<super::concurrency::ScopeTicket, RuntimeError> {
        let limits = &self.settings().concurrent_streams;
        self.stream_counts
            .try_start_in(limits, org_id, project_id)
            .map_err(|max| {
                RuntimeError::TooMany(format!(
                    "at most {max} event streams may be open at once here; close one and retry"
                ))
            })
    }

    /// Counts one more stream attached to the session, or refuses it past the bound.
    fn stream_permit(&self, session_id: &str) -> Result<StreamPermit, RuntimeError> {
        let max = self.settings().max_streams_per_session;
        let mut counts = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(session_id.to_string()).or_insert(0);
        if *n >= max {
            return Err(RuntimeError::TooMany(format!(
                "at most {max} streams may follow one session at once"
            )));
        }
        *n += 1;
        Ok(StreamPermit {
            session_id: session_id.to_string(),
            counts: self.streams.clone(),
        })
    }

    /// One page of the org's session's logged frames after `after`.
    async fn log_page(
        &self,
        org_id: &str,
        session_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Arc<Frame>>, RuntimeError> {
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let rows = self
            .store
            .read_async(move |c| events::list_after(c, &org, &id, after, limit))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Arc::new(Frame::new(r.seq, r.event_type, r.payload)))
            .collect())
    }
}

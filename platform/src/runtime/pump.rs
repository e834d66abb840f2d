//! The event pump: one task per turn that reads the driver's events, numbers them, broadcasts
//! them, and queues them for the journal. It runs to `done` whether or not anyone listens.

use std::sync::Arc;

use karta_driver_api::{
    AssistantMessage, Done, ErrorInfo, Event, EventKind, Part, TurnStatus, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::events::{frame, Frame};
use super::journal::SessionOp;
use super::running::Control;
use super::turns::TurnCtx;
use super::Runtime;
use crate::store::sessions::SessionPatch;
use crate::store::{self, models, sessions};

/// An `error` event.
pub(crate) fn error_event(code: &str, message: impl Into<String>) -> Event {
    Event::new(EventKind::Error(ErrorInfo {
        code: code.into(),
        message: message.into(),
        provider: None,
    }))
}

fn assistant(text: &str, agent: &str) -> AssistantMessage {
    AssistantMessage {
        role: "assistant".into(),
        text: text.to_string(),
        agent: agent.to_string(),
    }
}

/// The final assistant message: the text of the turn's last step that said something. Each
/// step's own text stays in its `text` events; `done` carries what the assistant said last.
#[derive(Default)]
pub(crate) struct FinalText {
    current: String,
    previous: String,
}

impl FinalText {
    /// Follows one event.
    pub(crate) fn observe(&mut self, kind: &EventKind) {
        match kind {
            EventKind::StepStart { .. } => self.step_start(),
            EventKind::Text {
                part: Part::Text { text },
            } => self.push(text),
            _ => {}
        }
    }

    /// A new step begins.
    pub(crate) fn step_start(&mut self) {
        if !self.current.is_empty() {
            self.previous = std::mem::take(&mut self.current);
        }
    }

    /// Text of the current step.
    pub(crate) fn push(&mut self, text: &str) {
        self.current.push_str(text);
    }

    /// The text so far.
    pub(crate) fn as_str(&self) -> &str {
        if self.current.is_empty() {
            &self.previous
        } else {
            &self.current
        }
    }
}

fn failed_done(text: &str, agent: &str) -> Event {
    Event::new(EventKind::Done(Done {
        usage: Usage::default(),
        status: TurnStatus::Failed,
        stop_reason: None,
        message: Some(assistant(text, agent)),
    }))
}

fn timeout_error(ctx: &TurnCtx) -> Event {
    error_event(
        "turn_timeout",
        format!(
            "the turn ran longer than its limit of {} s and was stopped",
            ctx.limits.timeout.as_secs()
        ),
    )
}

fn log_row(session: &models::Session, f: &Frame) -> models::SessionEvent {
    models::SessionEvent {
        session_id: session.id.clone(),
        org_id: session.org_id.clone(),
        seq: f.seq,
        event_type: f.event_type.clone(),
        payload: f.json.clone(),
        created_at: store::now(),
    }
}

/// How often a running turn renews its lease (it lasts [`super::turns::LEASE`]).
const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(30);

/// Events published but not yet queued for the log: the pump hands the journal a run at a time
/// (at most this many, or what gathered within [`RUN_LINGER`]), so a fast driver costs one queue
/// slot and one writer wake-up per run rather than per event. The turn's live buffer covers
/// them meanwhile.
const MAX_RUN: usize = 64;

/// How long published events may wait for more before they are queued for the log. A quick
/// turn's events then reach the log in the commit that stores its `done` (one commit, and on
/// PostgreSQL one WAL flush, per turn instead of one per run); a slow harness's events are
/// still logged within this of being sent. Subscribers are not delayed: they get every frame
/// when it is published, and replay reads the turn's live buffer meanwhile.
const RUN_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// `done` with the gateway's count as its usage, when the harness reported no tokens at all but
/// the gateway saw the turn's model calls (an ACP agent that does not report usage, say).
fn with_gateway_usage(done: &Event, calls: &[crate::gateway::tally::CountedCall]) -> Option<Event> {
    let EventKind::Done(d) = &done.kind else {
        return None;
    };
    if calls.is_empty() || d.usage.total_tokens > 0 || d.usage.input_tokens > 0 {
        return None;
    }
    let mut usage = karta_driver_api::Usage::default();
    for c in calls {
        let t = &c.tokens;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut u = karta_driver_api::Usage::new(
            n(t.input),
            n(t.output),
            n(t.cache_read),
            n(t.cache_creation),
        );
        u.reasoning_tokens = n(t.reasoning);
        usage.add(&u);
    }
    usage.cost_micro_cents = d.usage.cost_micro_cents;
    let mut out = done.clone();
    if let EventKind::Done(d) = &mut out.kind {
        d.usage = usage;
    }
    Some(out)
}

impl Runtime {
    /// Broadcasts an event and keeps it for the next run to the log.
    fn publish(&self, ctx: &TurnCtx, run: &mut Vec<models::SessionEvent>, seq: i64, ev: &Event) {
        let f = Arc::new(frame(&ctx.session.id, seq, ev));
        ctx.running.publish(f.clone());
        run.push(log_row(&ctx.session, &f));
    }

    /// Extends the turn's lease on the session (queued with the log's writes).
    async fn renew_lease(&self, ctx: &TurnCtx) {
        let Some(owner) = ctx.lease.clone() else {
            return;
        };
        let (org, id) = (ctx.session.org_id.clone(), ctx.session.id.clone());
        self.journal
            .update(SessionOp::Other(Box::new(move |c| {
                let until = store::now() + super::turns::LEASE;
                if !sessions::renew_turn(c, &org, &id, &owner, until)? {
                    tracing::error!(session = %id, "the turn's lease on the session was lost");
                }
                Ok(())
            })))
            .await;
    }

    /// Queues the run for the log (with the turn's opening update, if not written yet).
    async fn flush(&self, run: &mut Vec<models::SessionEvent>, opening: &mut Option<SessionOp>) {
        let rows = std::mem::take(run);
        self.journal
            .append_then(rows, opening.take().into_iter().collect())
            .await;
    }

    /// Writes `done` (and everything before it) to the log and waits until it is committed, so
    /// the next turn starts from a stored sequence and replay of this turn is complete.
    async fn finish(
        &self,
        ctx: &TurnCtx,
        mut run: Vec<models::SessionEvent>,
        opening: Option<SessionOp>,
        seq: i64,
        done: &Event,
    ) -> Arc<Frame> {
        let (calls, calls_pending) = self.confinement.gateway.settle(&ctx.session.id).await;
        let gateway_usage;
        let done = match with_gateway_usage(done, &calls) {
            Some(d) => {
                gateway_usage = d;
                &gateway_usage
            }
            None => done,
        };
        let f = Arc::new(frame(&ctx.session.id, seq, done));
        run.push(log_row(&ctx.session, &f));
        // The lease goes in the commit that stores `done`: another instance that takes the
        // session next reads this turn's last sequence number.
        let release = ctx.lease.as_ref().map(|owner| SessionOp::Release {
            org_id: ctx.session.org_id.clone(),
            session_id: ctx.session.id.clone(),
            owner: owner.clone(),
        });
        let usage = self.meter(ctx, seq, done, calls, calls_pending);
        let ops = opening.into_iter().chain(release).chain([usage]).collect();
        self.journal.append_durable(run, ops).await;
        f
    }

    /// The turn's usage records (after the gateway's calls in flight have ended) and the
    /// budgeted scopes they count against, as the op that stores them.
    fn meter(
        &self,
        ctx: &TurnCtx,
        seq: i64,
        done: &Event,
        calls: Vec<crate::gateway::tally::CountedCall>,
        calls_pending: bool,
    ) -> SessionOp {
        let (usage, status) = match &done.kind {
            EventKind::Done(d) => (d.usage, d.status.clone()),
            _ => (Default::default(), karta_driver_api::TurnStatus::Failed),
        };
        let settings = self.settings();
        // A status this host does not know is recorded as `completed` (an error would have
        // made the turn `failed` already); clients got it as the driver sent it.
        let status = match status {
            karta_driver_api::TurnStatus::Other(_) => "completed".to_string(),
            known => known.as_str().to_string(),
        };
        let turn = super::meter::Turn {
            org_id: &ctx.session.org_id,
            project_id: &ctx.session.project_id,
            session_id: &ctx.session.id,
            seq,
            api_key_id: ctx.api_key_id.as_deref(),
            driver: &ctx.session.driver,
            byok: ctx.byok,
            status: &status,
            harness: usage,
            harness_model: ctx.running.step_model(),
            calls: &calls,
            calls_pending,
        };
        let records = super::meter::records(&turn, &settings.prices, store::now());
        let scopes = [
            (ctx.session.org_id.as_str(), "org"),
            (ctx.session.project_id.as_str(), "project"),
        ]
        .into_iter()
        .chain(ctx.api_key_id.as_deref().map(|k| (k, "api_key")))
        .filter_map(|(id, kind)| {
            settings.budgets.get(id).map(|caps| super::meter::Scope {
                id: id.to_string(),
                kind,
                caps: *caps,
            })
        })
        .collect();
        // For orgs with webhooks, the turn's event goes in the transaction that stores `done`.
        let event = self.webhook_org(&ctx.session.org_id).then(|| {
            let failed = status != "completed";
            crate::store::org_events::new_event(
                &ctx.session.org_id,
                if failed {
                    "turn.failed"
                } else {
                    "turn.completed"
                },
                &serde_json::json!({"session_id": ctx.session.id,
                    "project_id": ctx.session.project_id, "seq": seq, "status": status,
                    "usage": usage}),
            )
        });
        SessionOp::Usage(Box::new(super::meter::turn_usage(records, scopes, event)))
    }

    /// Consumes the driver's events until `done`; returns the logged (not yet broadcast) `done`.
    pub(crate) async fn pump(
        self: &Arc<Self>,
        ctx: &TurnCtx,
        mut rx: mpsc::Receiver<Result<Event, String>>,
        mut control: mpsc::Receiver<Control>,
        // The turn's opening update, written with its first journal write (see `begin_turn`).
        mut opening: Option<SessionOp>,
    ) -> Arc<Frame> {
        let mut seq = ctx.running.start_seq;
        let mut text = FinalText::default();
        let mut failed = false;
        let mut run: Vec<models::SessionEvent> = Vec::new();
        // The turn's deadline stops while it waits for an approval (that has its own timeout);
        // past it the driver is asked to cancel, and after the grace period the host ends the
        // turn itself and stops the harness.
        let mut deadline = Instant::now() + ctx.limits.timeout;
        let mut paused_at: Option<Instant> = None;
        let mut expired = false;
        let mut renew = tokio::time::interval_at(Instant::now() + LEASE_RENEW, LEASE_RENEW);
        // When the oldest unqueued event must go to the log (see [`RUN_LINGER`]).
        let mut flush_at: Option<Instant> = None;
        // The two timers live across events and are reset only when their instant changes: a
        // timer made afresh for every event registers with the runtime's clock (and wakes its
        // driver) every time.
        let flush_timer = tokio::time::sleep_until(deadline);
        let deadline_timer = tokio::time::sleep_until(deadline);
        tokio::pin!(flush_timer, deadline_timer);
        loop {
            if run.len() >= MAX_RUN {
                self.flush(&mut run, &mut opening).await;
            }
            // The opening update (who sent the turn) waits no longer than events do, even for a
            // harness that is slow to say anything.
            if run.is_empty() && opening.is_none() {
                flush_at = None;
            } else if flush_at.is_none() {
                flush_at = Some(Instant::now() + RUN_LINGER);
            }
            if let Some(at) = flush_at.filter(|at| *at != flush_timer.deadline()) {
                flush_timer.as_mut().reset(at);
            }
            if deadline_timer.deadline() != deadline {
                deadline_timer.as_mut().reset(deadline);
            }
            // Biased: what the host queued (an expired prompt's notice) goes out before the
            // driver's reaction to it, and the timers fire however fast the driver floods.
            let event = tokio::select! {
                biased;
                Some(Control::Publish(ev)) = control.recv() => ev,
                _ = &mut flush_timer, if flush_at.is_some() => {
                    self.flush(&mut run, &mut opening).await;
                    continue;
                }
                _ = renew.tick(), if ctx.lease.is_some() => {
                    self.renew_lease(ctx).await;
                    continue;
                }
                _ = &mut deadline_timer, if paused_at.is_none() => {
                    if !expired {
                        expired = true;
                        tracing::warn!(project = %ctx.session.project_id, session = %ctx.session.id, timeout_s = ctx.limits.timeout.as_secs(), "turn deadline passed; cancelling the turn");
                        ctx.running.cancel_soon();
                        deadline = Instant::now() + ctx.limits.grace;
                        continue;
                    }
                    tracing::error!(project = %ctx.session.project_id, session = %ctx.session.id, "the harness did not end the cancelled turn; stopping it");
                    // Awaited: the next turn must not start before the harness is stopped.
                    self.end_harness(&ctx.driver, &ctx.session.id).await;
                    seq += 1;
                    self.publish(ctx, &mut run, seq, &timeout_error(ctx));
                    return self.finish(ctx, run, opening.take(), seq + 1, &failed_done(text.as_str(), &ctx.agent)).await;
                }
                ev = rx.recv() => match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(message)) => error_event("driver_protocol_error", message),
                    None => {
                        // The driver let go of the sink without `done` (it ended or crashed).
                        seq += 1;
                        let err = error_event("harness_ended", "the harness ended the turn without finishing it");
                        tracing::warn!(project = %ctx.session.project_id, session = %ctx.session.id, "harness ended the turn without `done`");
                        self.publish(ctx, &mut run, seq, &err);
                        return self.finish(ctx, run, opening.take(), seq + 1, &failed_done(text.as_str(), &ctx.agent)).await;
                    }
                },
            };
            if let Some(at) = paused_at.take() {
                deadline += at.elapsed();
            }
            let event = match event.kind {
                EventKind::HarnessSession { harness_session_id } => {
                    let (org, id) = (ctx.session.org_id.clone(), ctx.session.id.clone());
                    self.journal
                        .update(SessionOp::Other(Box::new(move |c| {
                            let patch = SessionPatch {
                                harness_session_id: Some(Some(harness_session_id.clone())),
                                ..Default::default()
                            };
                            sessions::update(c, &org, &id, patch)
                        })))
                        .await;
                    continue;
                }
                EventKind::InputRequired(req) => {
                    // The log has everything before a pause.
                    self.flush(&mut run, &mut opening).await;
                    match self.on_input_required(ctx, req, event.raw).await {
                        Some(ev) => {
                            if matches!(ev.kind, EventKind::InputRequired(_)) {
                                paused_at = Some(Instant::now());
                            }
                            ev
                        }
                        None => continue,
                    }
                }
                EventKind::Done(mut d) => {
                    // A model call was refused (the org's own key, a budget) and the harness
                    // said nothing of it: the client still learns why.
                    if let Some(e) = self.refusal(ctx) {
                        seq += 1;
                        self.publish(ctx, &mut run, seq, &e);
                        failed = true;
                    }
                    if expired {
                        // The driver honoured the cancel: still a timeout for the client.
                        seq += 1;
                        self.publish(ctx, &mut run, seq, &timeout_error(ctx));
                        failed = true;
                    }
                    d.message = Some(assistant(text.as_str(), &ctx.agent));
                    if failed {
                        d.status = TurnStatus::Failed;
                    } else if d.status == TurnStatus::Completed && ctx.running.is_cancelled() {
                        d.status = TurnStatus::Cancelled;
                    }
                    let done = Event {
                        kind: EventKind::Done(d),
                        ..event
                    };
                    return self.finish(ctx, run, opening.take(), seq + 1, &done).await;
                }
                // A model error because a call was refused says why (the org's own key was
                // rejected, a budget ran out).
                EventKind::Error(e) => match self.refusal(ctx) {
                    Some(mut rewritten) => {
                        rewritten.raw = event.raw;
                        rewritten
                    }
                    None => Event {
                        kind: EventKind::Error(e),
                        ..event
                    },
                },
                _ => event,
            };
            text.observe(&event.kind);
            let mut event = event;
            if let EventKind::StepFinish {
                model: Some(model),
                provider,
                usage,
                ..
            } = &mut event.kind
            {
                ctx.running.note_step_model(provider.as_deref(), model);
                if let Some(u) = usage.as_mut().filter(|_| !ctx.byok) {
                    let prices = &self.settings().prices;
                    let day = chrono::Utc::now().date_naive();
                    if let Some(c) =
                        super::meter::step_cost(prices, provider.as_deref(), model, u, day)
                    {
                        u.cost_micro_cents = c.0;
                    }
                }
            }
            if let EventKind::Error(e) = &event.kind {
                failed = true;
                tracing::warn!(project = %ctx.session.project_id, session = %ctx.session.id, code = %e.code, message = %e.message, "turn error");
            }
            seq += 1;
            self.publish(ctx, &mut run, seq, &event);
            if let EventKind::InputRequired(req) = &event.kind {
                if self.webhook_org(&ctx.session.org_id) {
                    // `input.required` is committed with the event row that asks.
                    let e = crate::store::org_events::new_event(
                        &ctx.session.org_id,
                        "input.required",
                        &serde_json::json!({"session_id": ctx.session.id,
                            "project_id": ctx.session.project_id, "seq": seq,
                            "request_id": req.request_id, "kind": req.kind,
                            "tool": req.tool, "message": req.message}),
                    );
                    // (The pause's flush above already took the opening update.)
                    let op = SessionOp::Other(Box::new(move |c| {
                        crate::store::org_events::insert(c, &e).map(|_| ())
                    }));
                    self.journal
                        .append_then(std::mem::take(&mut run), vec![op])
                        .await;
                }
            }
        }
    }
}

impl Runtime {
    /// The error naming why a model call of this turn was refused, if one was
    /// (`byok_key_rejected`, `budget_exhausted`).
    fn refusal(&self, ctx: &TurnCtx) -> Option<Event> {
        let r = self
            .confinement
            .gateway
            .grants
            .take_refusal(&ctx.session.id)?;
        Some(Event::new(EventKind::Error(ErrorInfo {
            code: r.code.into(),
            message: r.message,
            provider: r.provider,
        })))
    }
}

/// The turn's usage record (the harness's own report), stored in the transaction that stores
/// its `done`: a turn is metered exactly when it is logged, and a crash loses or doubles neither.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_without_usage_takes_the_gateway_s_count_and_a_reported_one_is_kept() {
        use crate::gateway::tally::CountedCall;
        use crate::gateway::usage::Tokens;
        let call = |input, output| CountedCall {
            provider: "openai".into(),
            model: "m".into(),
            tokens: Tokens {
                input,
                output,
                cache_read: 2,
                cache_creation: 0,
                reasoning: 1,
            },
            byok: false,
        };
        let calls = [call(10, 4), call(20, 6)];
        let bare = Event::new(EventKind::Done(karta_driver_api::Done::default()));
        let filled = with_gateway_usage(&bare, &calls).expect("filled from the gateway");
        let EventKind::Done(d) = filled.kind else {
            panic!("not done")
        };
        assert_eq!(
            (
                d.usage.input_tokens,
                d.usage.output_tokens,
                d.usage.cache_read_tokens
            ),
            (30, 10, 4)
        );
        assert_eq!((d.usage.reasoning_tokens, d.usage.total_tokens), (2, 44));
        assert!(with_gateway_usage(&bare, &[]).is_none());
        let reported = Event::new(EventKind::Done(karta_driver_api::Done {
            usage: karta_driver_api::Usage::new(1, 1, 0, 0),
            ..Default::default()
        }));
        assert!(with_gateway_usage(&reported, &calls).is_none());
    }

    fn text(t: &str) -> EventKind {
        EventKind::Text {
            part: Part::Text { text: t.into() },
        }
    }

    #[test]
    fn the_final_text_is_the_last_steps() {
        let mut f = FinalText::default();
        for k in [
            EventKind::StepStart {
                step_index: 0,
                description: None,
            },
            text("Let me "),
            text("look."),
            EventKind::StepStart {
                step_index: 1,
                description: None,
            },
            text("It is "),
            text("42."),
        ] {
            f.observe(&k);
        }
        assert_eq!(f.as_str(), "It is 42.");
        // A last step that only ran a tool keeps the text before it.
        f.observe(&EventKind::StepStart {
            step_index: 2,
            description: None,
        });
        assert_eq!(f.as_str(), "It is 42.");
    }

    #[test]
    fn without_steps_all_text_counts() {
        let mut f = FinalText::default();
        f.observe(&text("a"));
        f.observe(&text("b"));
        assert_eq!(f.as_str(), "ab");
    }
}

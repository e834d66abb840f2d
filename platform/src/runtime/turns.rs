//! Running turns: serialize them per session, start the driver, pump its events to the log and
//! subscribers, and pause for approvals.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use karta_plugin_api::{
    AssistantMessage, Decision, DecisionKind, Done, ErrorInfo, Event, EventKind, HostTurn,
    InputRequest, Part, Participant, TurnRequest, TurnStatus, Usage, PAYLOAD_VERSION,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, OwnedMutexGuard};

use super::app_settings::{AppSettings, PermissionMode, Policy};
use super::events::{frame, Frame};
use super::sessions::{invalid, iso, load, participant};
use super::{Runtime, RuntimeError};
use crate::config::Multitask;
use crate::drivers::LoadedDriver;
use crate::store::sessions::SessionPatch;
use crate::store::{self, events, models, sessions};

/// Frames a slow subscriber may fall behind before it re-reads the log.
const BROADCAST_CAPACITY: usize = 256;

/// `POST /v1/sessions/{id}/messages` input.
#[derive(Clone, Debug, Default)]
pub struct SendMessage {
    /// The message.
    pub text: String,
    /// Route to this agent (and hand the session off to it).
    pub agent: Option<String>,
    /// Who sends it (default `user`).
    pub participant_name: Option<String>,
    /// `human` (default) or `ai`.
    pub participant_type: Option<String>,
    /// Whether to surface reasoning.
    pub thinking: bool,
}

/// Per-session state: the lock that serializes turns, and the running turn if any.
#[derive(Default)]
pub(crate) struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    running: Mutex<Option<Arc<Running>>>,
}

impl Slot {
    fn running(&self) -> Option<Arc<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.running().is_none() && self.lock.try_lock().is_ok()
    }

    fn set_running(&self, r: Option<Arc<Running>>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
}

/// An approval the turn waits for.
#[derive(Clone, Debug)]
struct Pending {
    /// The id clients see (`req_...`).
    public_id: String,
    /// The driver's own id for it.
    driver_id: String,
    options: Vec<DecisionKind>,
    tool: Option<String>,
}

/// Messages to the pump from outside the driver (timeouts).
enum Control {
    Publish(Event),
}

/// A running turn.
pub(crate) struct Running {
    tx: broadcast::Sender<Arc<Frame>>,
    control: mpsc::UnboundedSender<Control>,
    handle: Mutex<Option<HostTurn>>,
    pending: Mutex<Option<Pending>>,
    approved_tools: Mutex<BTreeSet<String>>,
    cancelled: AtomicBool,
    /// The session's sequence before this turn.
    start_seq: i64,
}

impl Running {
    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a decision to the driver, off the async workers (a driver may answer over HTTP).
    async fn decide(
        self: &Arc<Self>,
        driver_id: &str,
        decision: DecisionKind,
        message: Option<String>,
    ) -> Result<(), String> {
        let me = self.clone();
        let driver_id = driver_id.to_string();
        tokio::task::spawn_blocking(move || {
            let handle = me.handle.lock().unwrap_or_else(|p| p.into_inner());
            match handle.as_ref() {
                Some(h) => h.resolve_input(
                    &driver_id,
                    &Decision {
                        v: PAYLOAD_VERSION,
                        decision,
                        message,
                    },
                ),
                None => Err("the turn has no harness handle".into()),
            }
        })
        .await
        .map_err(|e| format!("the driver panicked: {e}"))?
    }

    /// Marks the turn cancelled at once and asks the driver to stop it, off the async workers.
    fn cancel_soon(self: &Arc<Self>) {
        self.cancelled.store(true, Ordering::SeqCst);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.cancel());
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.cancel();
        }
    }
}

/// Frames for one consumer: a backlog from the log, then live frames.
pub struct Subscription {
    /// The session.
    pub session_id: String,
    /// The org (for re-reading the log after a lag).
    pub org_id: String,
    /// Logged frames to send first.
    pub backlog: Vec<Arc<Frame>>,
    /// Live frames of the running turn, if one runs.
    pub rx: Option<broadcast::Receiver<Arc<Frame>>>,
    /// Frames up to this sequence number are not sent.
    pub after_seq: i64,
    /// A `done` with a sequence number above this ends the stream.
    pub done_after: i64,
    /// The live receiver fell behind: re-read the log before reading it again.
    pub catch_up: bool,
}

/// A turn folded into one result (the unary answer, or an input's continuation).
#[derive(Clone, Debug, Default)]
pub struct TurnOutcome {
    /// Every envelope, in order.
    pub events: Vec<Value>,
    /// The assistant's text.
    pub text: String,
    /// The `done` payload, when the turn ended.
    pub done: Option<Value>,
    /// The `input_required` payload, when the turn paused.
    pub pending_input: Option<Value>,
    /// The `error` payloads, if any.
    pub errors: Vec<Value>,
}

struct TurnCtx {
    session: models::Session,
    agent: String,
    settings: AppSettings,
    running: Arc<Running>,
}

fn error_event(code: &str, message: impl Into<String>) -> Event {
    Event::new(EventKind::Error(ErrorInfo {
        code: code.into(),
        message: message.into(),
        provider: None,
    }))
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Runtime {
    /// Starts a turn (after the running one, for an `enqueue` project) and returns a
    /// subscription to its frames. The turn runs to its end whether or not anyone listens.
    pub async fn send_message(
        self: &Arc<Self>,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        msg: SendMessage,
    ) -> Result<Subscription, RuntimeError> {
        let who = Participant {
            name: msg
                .participant_name
                .clone()
                .unwrap_or_else(|| "user".into()),
            kind: msg
                .participant_type
                .clone()
                .unwrap_or_else(|| "human".into()),
        };
        if who.kind != "human" && who.kind != "ai" {
            return Err(invalid(
                "participant_type",
                format!("must be `human` or `ai`, got `{}`", who.kind),
            ));
        }
        if who.name.trim().is_empty() {
            return Err(invalid("participant_name", "must not be empty"));
        }
        if msg.text.is_empty() {
            return Err(invalid("text", "must not be empty"));
        }
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        let (session, project) = self
            .store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        if session.status == "closed" {
            return Err(RuntimeError::Conflict("session is closed".into()));
        }
        if project.disabled_at.is_some() {
            return Err(RuntimeError::Unavailable(format!(
                "project `{}` is disabled",
                project.slug
            )));
        }
        let driver = self.drivers.get(&session.driver).ok_or_else(|| {
            RuntimeError::Unavailable(format!("driver `{}` is not loaded", session.driver))
        })?;
        if let Some(agent) = &msg.agent {
            check_agent(&driver, &session.app_path, agent).await?;
        }

        let slot = self.slot(session_id);
        let guard = match Multitask::parse(&project.multitask) {
            Multitask::Reject => slot
                .lock
                .clone()
                .try_lock_owned()
                .map_err(|_| RuntimeError::Busy)?,
            Multitask::Enqueue => slot.lock.clone().lock_owned().await,
            Multitask::Interrupt => {
                self.cancel_running(session_id);
                slot.lock.clone().lock_owned().await
            }
        };
        let (session, settings) = match self.prepare_turn(org_id, session_id).await {
            Ok(v) => v,
            Err(e) => {
                drop(guard);
                self.forget_slot(session_id, slot);
                return Err(e);
            }
        };

        let agent = msg
            .agent
            .clone()
            .unwrap_or_else(|| session.current_agent.clone());
        let (control, control_rx) = mpsc::unbounded_channel();
        let running = Arc::new(Running {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            control,
            handle: Mutex::new(None),
            pending: Mutex::new(None),
            approved_tools: Mutex::new(
                serde_json::from_str(&session.approved_tools).unwrap_or_default(),
            ),
            cancelled: AtomicBool::new(false),
            start_seq: session.last_seq,
        });
        let sub = Subscription {
            session_id: session.id.clone(),
            org_id: session.org_id.clone(),
            backlog: Vec::new(),
            rx: Some(running.tx.subscribe()),
            after_seq: session.last_seq,
            done_after: session.last_seq,
            catch_up: false,
        };
        slot.set_running(Some(running.clone()));

        let request = TurnRequest {
            v: PAYLOAD_VERSION,
            session_id: session.id.clone(),
            harness_session_id: session.harness_session_id.clone(),
            app_dir: session.app_path.clone(),
            workspace_dir: self
                .workspace_dir(&session.org_id, &session.id)
                .display()
                .to_string(),
            text: msg.text,
            agent: agent.clone(),
            participant: who.clone(),
            thinking: msg.thinking,
            permission_mode: session.permission_mode.clone(),
            env: self.settings().provider_env,
            app_config: settings.raw.clone(),
        };
        let rt = self.clone();
        let ctx = TurnCtx {
            session,
            agent,
            settings,
            running,
        };
        tokio::spawn(async move {
            rt.run_turn(ctx, driver, request, who, control_rx, slot, guard)
                .await;
        });
        Ok(sub)
    }

    /// The session as it is now that the turn lock is ours (the previous turn advanced its
    /// sequence) and the app's settings.
    async fn prepare_turn(
        &self,
        org_id: &str,
        session_id: &str,
    ) -> Result<(models::Session, AppSettings), RuntimeError> {
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let session = self
            .store
            .read_async(move |c| sessions::get(c, &org, &id))
            .await?;
        if session.status == "closed" {
            return Err(RuntimeError::Conflict("session is closed".into()));
        }
        let app_dir = session.app_path.clone();
        let settings = tokio::task::spawn_blocking(move || AppSettings::load(Path::new(&app_dir)))
            .await
            .map_err(|e| RuntimeError::Store(store::StoreError::Task(e.to_string())))?
            .map_err(|e| {
                RuntimeError::Conflict(format!("the harness app is misconfigured: {e}"))
            })?;
        Ok((session, settings))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_turn(
        self: Arc<Self>,
        ctx: TurnCtx,
        driver: Arc<LoadedDriver>,
        request: TurnRequest,
        who: Participant,
        control_rx: mpsc::UnboundedReceiver<Control>,
        slot: Arc<super::turns::Slot>,
        guard: OwnedMutexGuard<()>,
    ) {
        if let Err(e) = self.begin_turn(&ctx, &who).await {
            tracing::warn!(session = %ctx.session.id, error = %e, "turn attribution not recorded");
        }
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Result<Event, String>>();
        let starter = ev_tx.clone();
        let started = tokio::task::spawn_blocking(move || {
            driver.driver.start_turn(&request, move |ev| {
                // The receiver is gone only when the pump has finished; nothing to do then.
                let _ = ev_tx.send(ev);
            })
        })
        .await;
        match started {
            Ok(Ok(handle)) => {
                *ctx.running.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                if ctx.running.cancelled.load(Ordering::SeqCst) {
                    ctx.running.cancel_soon();
                }
            }
            Ok(Err(message)) => {
                let _ = starter.send(Ok(error_event("harness_start_failed", message)));
            }
            Err(join) => {
                let _ = starter.send(Ok(error_event(
                    "harness_start_failed",
                    format!("the driver panicked while starting the turn: {join}"),
                )));
            }
        }
        drop(starter);
        let done = self.pump(&ctx, ev_rx, control_rx).await;
        // Free the session before anyone sees `done`, so a client that sends again at once is
        // not refused as busy.
        let had_pending = ctx.running.pending().take().is_some();
        if had_pending {
            self.clear_pending(&ctx.session.org_id, &ctx.session.id)
                .await;
        }
        slot.set_running(None);
        drop(guard);
        let _ = ctx.running.tx.send(done);
        self.forget_slot(&ctx.session.id, slot);
    }

    /// Records who sent the turn (participants join on their first message) and a handoff.
    async fn begin_turn(&self, ctx: &TurnCtx, who: &Participant) -> Result<(), store::StoreError> {
        let (org, id) = (ctx.session.org_id.clone(), ctx.session.id.clone());
        let (who, agent) = (who.clone(), ctx.agent.clone());
        let handoff = agent != ctx.session.current_agent;
        if handoff {
            tracing::info!(session = %id, from = %ctx.session.current_agent, to = %agent, "agent handoff");
        }
        self.store
            .write_async(move |c| {
                let s = sessions::get(c, &org, &id)?;
                let mut list: Vec<Value> =
                    serde_json::from_str(&s.participants).unwrap_or_default();
                let idx = match list.iter().position(|p| p["name"] == who.name.as_str()) {
                    Some(i) => i,
                    None => {
                        list.push(participant(&who.name, &who.kind, None));
                        list.len() - 1
                    }
                };
                let turns = list[idx]["turns"].as_u64().unwrap_or(0) + 1;
                list[idx]["turns"] = json!(turns);
                list[idx]["last_turn_at"] = json!(iso(store::now()));
                let patch = SessionPatch {
                    participants: Some(Value::Array(list).to_string()),
                    current_agent: handoff.then_some(agent),
                    ..Default::default()
                };
                sessions::update(c, &org, &id, patch)
            })
            .await
    }

    /// Consumes the driver's events until `done`; returns the logged `done` frame.
    async fn pump(
        self: &Arc<Self>,
        ctx: &TurnCtx,
        mut rx: mpsc::UnboundedReceiver<Result<Event, String>>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> Arc<Frame> {
        let mut seq = ctx.running.start_seq;
        let mut text = String::new();
        let mut failed = false;
        loop {
            let event = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(message)) => error_event("driver_protocol_error", message),
                    None => {
                        // The driver let go of the sink without `done`.
                        seq += 1;
                        let err = error_event("harness_ended", "the harness ended the turn without finishing it");
                        self.publish(ctx, seq, &err).await;
                        let done = Event::new(EventKind::Done(Done {
                            usage: Usage::default(),
                            status: TurnStatus::Failed,
                            stop_reason: None,
                            message: Some(assistant(&text, &ctx.agent)),
                        }));
                        return self.log(&ctx.session, seq + 1, &done).await;
                    }
                },
                Some(Control::Publish(ev)) = control.recv() => ev,
            };
            let event = match event.kind {
                EventKind::HarnessSession { harness_session_id } => {
                    let patch = SessionPatch {
                        harness_session_id: Some(Some(harness_session_id)),
                        ..Default::default()
                    };
                    if let Err(e) = self
                        .patch_session(&ctx.session.org_id, &ctx.session.id, patch)
                        .await
                    {
                        tracing::error!(session = %ctx.session.id, error = %e, "harness session id not saved");
                    }
                    continue;
                }
                EventKind::InputRequired(req) => {
                    match self.on_input_required(ctx, req, event.raw).await {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                EventKind::Done(mut d) => {
                    d.message = Some(assistant(&text, &ctx.agent));
                    if failed {
                        d.status = TurnStatus::Failed;
                    } else if d.status == TurnStatus::Completed
                        && ctx.running.cancelled.load(Ordering::SeqCst)
                    {
                        d.status = TurnStatus::Cancelled;
                    }
                    let done = Event {
                        kind: EventKind::Done(d),
                        ..event
                    };
                    return self.log(&ctx.session, seq + 1, &done).await;
                }
                _ => event,
            };
            match &event.kind {
                EventKind::Text {
                    part: Part::Text { text: t },
                } => text.push_str(t),
                EventKind::Error(_) => failed = true,
                _ => {}
            }
            seq += 1;
            self.publish(ctx, seq, &event).await;
        }
    }

    /// Decides an approval by policy, or turns it into a prompt. Returns the event to publish.
    async fn on_input_required(
        self: &Arc<Self>,
        ctx: &TurnCtx,
        req: InputRequest,
        raw: Option<Value>,
    ) -> Option<Event> {
        let running = &ctx.running;
        let already = req.tool.as_ref().is_some_and(|t| {
            running
                .approved_tools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(t)
        });
        let mode = ctx
            .session
            .permission_mode
            .as_deref()
            .and_then(PermissionMode::parse);
        let policy = if already {
            Policy::ApproveOnce
        } else {
            ctx.settings.policy_for(mode)
        };
        let decide = |d: DecisionKind, why: &'static str| {
            let running = running.clone();
            let (rid, sid) = (req.request_id.clone(), ctx.session.id.clone());
            async move {
                if let Err(e) = running.decide(&rid, d, Some(why.to_string())).await {
                    tracing::error!(session = %sid, error = %e, "automatic decision not delivered; cancelling the turn");
                    running.cancel_soon();
                }
            }
        };
        match policy {
            Policy::Prompt => {
                let public = InputRequest {
                    request_id: store::new_id("req"),
                    ..req.clone()
                };
                *running.pending() = Some(Pending {
                    public_id: public.request_id.clone(),
                    driver_id: req.request_id.clone(),
                    options: req.options.clone(),
                    tool: req.tool.clone(),
                });
                let patch = SessionPatch {
                    pending_input: Some(Some(serde_json::to_string(&public).unwrap_or_default())),
                    ..Default::default()
                };
                if let Err(e) = self
                    .patch_session(&ctx.session.org_id, &ctx.session.id, patch)
                    .await
                {
                    tracing::error!(session = %ctx.session.id, error = %e, "pending input not saved");
                }
                self.expire_later(ctx, public.request_id.clone());
                let ev = Event::new(EventKind::InputRequired(public));
                Some(match raw {
                    Some(r) => ev.with_raw(r),
                    None => ev,
                })
            }
            Policy::ApproveOnce => {
                decide(DecisionKind::ApproveOnce, "approved by policy").await;
                None
            }
            Policy::ApproveSession => {
                if let Some(tool) = &req.tool {
                    self.approve_for_session(running, &ctx.session.org_id, &ctx.session.id, tool)
                        .await;
                }
                decide(
                    DecisionKind::ApproveSession,
                    "approved for the session by policy",
                )
                .await;
                None
            }
            Policy::Deny => {
                decide(DecisionKind::Deny, "denied by policy").await;
                None
            }
            Policy::Error => {
                decide(DecisionKind::Deny, "refused by policy").await;
                running.cancel_soon();
                Some(error_event(
                    "input_required_refused",
                    format!(
                        "the turn asked for approval ({}) and this app's policy is `error`",
                        req.tool.as_deref().unwrap_or(&req.kind)
                    ),
                ))
            }
        }
    }

    /// After the input timeout, an unanswered prompt gets the hidden-prompt policy.
    fn expire_later(self: &Arc<Self>, ctx: &TurnCtx, public_id: String) {
        let timeout = self.settings().input_timeout;
        let hidden = match ctx.settings.cli.input_required_hidden_policy {
            Policy::ApproveOnce => DecisionKind::ApproveOnce,
            Policy::ApproveSession => DecisionKind::ApproveSession,
            _ => DecisionKind::Deny,
        };
        let running = Arc::downgrade(&ctx.running);
        let rt = self.clone();
        let (org, id) = (ctx.session.org_id.clone(), ctx.session.id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(running) = running.upgrade() else {
                return;
            };
            let pending = {
                let mut p = running.pending();
                match p.as_ref() {
                    Some(x) if x.public_id == public_id => p.take(),
                    _ => None,
                }
            };
            let Some(pending) = pending else { return };
            tracing::info!(session = %id, request = %public_id, decision = ?hidden, "input timed out");
            rt.clear_pending(&org, &id).await;
            let _ = running
                .control
                .send(Control::Publish(Event::new(EventKind::System(json!({
                    "subtype": "input_expired",
                    "request_id": public_id,
                    "decision": hidden,
                })))));
            if let Err(e) = running
                .decide(&pending.driver_id, hidden, Some("no answer in time".into()))
                .await
            {
                tracing::error!(session = %id, error = %e, "expired input not delivered; cancelling the turn");
                running.cancel_soon();
            }
        });
    }

    /// Answers a pending approval; the subscription carries the turn's continuation.
    pub async fn resolve_input(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        request_id: &str,
        decision: DecisionKind,
        message: Option<String>,
    ) -> Result<Subscription, RuntimeError> {
        if !valid_request_id(request_id) {
            return Err(RuntimeError::NotFound("input request"));
        }
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        let (session, _) = self
            .store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        let running = self.existing_slot(session_id).and_then(|s| s.running());
        let pending = running.as_ref().and_then(|r| {
            r.pending()
                .as_ref()
                .filter(|p| p.public_id == request_id)
                .cloned()
        });
        let (Some(running), Some(pending)) = (running, pending) else {
            return Err(self.input_not_pending(&session, request_id).await);
        };
        if !pending.options.contains(&decision) {
            let offered: Vec<String> = pending
                .options
                .iter()
                .map(|o| {
                    serde_json::to_value(o)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect();
            return Err(invalid(
                "decision",
                format!("this request offers only: {}", offered.join(", ")),
            ));
        }
        // Take it, unless another answer got there first.
        {
            let mut p = running.pending();
            if p.as_ref().map(|x| x.public_id.as_str()) != Some(request_id) {
                return Err(RuntimeError::Conflict(
                    "input request already resolved".into(),
                ));
            }
            *p = None;
        }
        let rx = running.tx.subscribe();
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let last_seq = self
            .store
            .write_async(move |c| {
                sessions::update(
                    c,
                    &org,
                    &id,
                    SessionPatch {
                        pending_input: Some(None),
                        ..Default::default()
                    },
                )?;
                Ok(sessions::get(c, &org, &id)?.last_seq)
            })
            .await?;
        if decision == DecisionKind::ApproveSession {
            if let Some(tool) = &pending.tool {
                self.approve_for_session(&running, org_id, session_id, tool)
                    .await;
            }
        }
        if let Err(e) = running.decide(&pending.driver_id, decision, message).await {
            // The harness would wait forever for an answer nobody can give again: end the turn.
            running.cancel_soon();
            return Err(RuntimeError::Conflict(format!(
                "the harness did not take the decision, so the turn was cancelled: {e}"
            )));
        }
        Ok(Subscription {
            session_id: session.id,
            org_id: session.org_id,
            backlog: Vec::new(),
            rx: Some(rx),
            after_seq: last_seq,
            done_after: last_seq,
            catch_up: false,
        })
    }

    async fn input_not_pending(&self, session: &models::Session, request_id: &str) -> RuntimeError {
        let stale = session
            .pending_input
            .as_deref()
            .map(super::sessions::parse_json)
            .is_some_and(|p| p["request_id"] == request_id);
        let (org, id, rid) = (
            session.org_id.clone(),
            session.id.clone(),
            request_id.to_string(),
        );
        if stale {
            // The turn that asked is gone (a restart): the prompt can never be answered.
            self.clear_pending(&org, &id).await;
            return RuntimeError::Conflict(
                "the turn that asked for this input is no longer running".into(),
            );
        }
        match self
            .store
            .read_async(move |c| sessions::input_was_requested(c, &org, &id, &rid))
            .await
        {
            Ok(true) => RuntimeError::Conflict("input request already resolved".into()),
            Ok(false) => RuntimeError::NotFound("input request"),
            Err(e) => RuntimeError::Store(e),
        }
    }

    /// Cancels the session's running turn, if any (its driver still ends it with `done`).
    pub(crate) fn cancel_running(&self, session_id: &str) {
        if let Some(r) = self.existing_slot(session_id).and_then(|s| s.running()) {
            r.cancel_soon();
        }
    }

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
        self.store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        let running = self.existing_slot(session_id).and_then(|s| s.running());
        // Subscribe before reading the log so nothing falls between the two.
        let rx = running.as_ref().map(|r| r.tx.subscribe());
        let backlog = self.frames_after(org_id, session_id, after).await?;
        Ok(Subscription {
            session_id: session_id.to_string(),
            org_id: org_id.to_string(),
            backlog,
            done_after: running.as_ref().map(|r| r.start_seq).unwrap_or(i64::MAX),
            rx,
            after_seq: after,
            catch_up: false,
        })
    }

    /// Applies a patch to one of the org's sessions.
    async fn patch_session(
        &self,
        org_id: &str,
        session_id: &str,
        patch: SessionPatch,
    ) -> Result<(), store::StoreError> {
        let (org, id) = (org_id.to_string(), session_id.to_string());
        self.store
            .write_async(move |c| sessions::update(c, &org, &id, patch))
            .await
    }

    /// Clears the session's pending input; a failure is logged (the turn goes on).
    async fn clear_pending(&self, org_id: &str, session_id: &str) {
        let patch = SessionPatch {
            pending_input: Some(None),
            ..Default::default()
        };
        if let Err(e) = self.patch_session(org_id, session_id, patch).await {
            tracing::error!(session = %session_id, error = %e, "pending input not cleared");
        }
    }

    /// Remembers a tool approved for the rest of the session (in the turn and in the store).
    async fn approve_for_session(
        &self,
        running: &Running,
        org_id: &str,
        session_id: &str,
        tool: &str,
    ) {
        let json = {
            let mut set = running
                .approved_tools
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            set.insert(tool.to_string());
            serde_json::to_string(&*set).unwrap_or_else(|_| "[]".into())
        };
        let patch = SessionPatch {
            approved_tools: Some(json),
            ..Default::default()
        };
        if let Err(e) = self.patch_session(org_id, session_id, patch).await {
            tracing::error!(session = %session_id, error = %e, "session approval not saved");
        }
    }

    /// Numbers an event and writes it to the replay log.
    async fn log(&self, session: &models::Session, seq: i64, ev: &Event) -> Arc<Frame> {
        let f = Arc::new(frame(&session.id, seq, ev));
        let row = models::SessionEvent {
            session_id: session.id.clone(),
            org_id: session.org_id.clone(),
            seq,
            event_type: f.event_type.clone(),
            payload: f.json.clone(),
            created_at: store::now(),
        };
        let retention = self.settings().event_log_retention;
        if let Err(e) = self
            .store
            .write_async(move |c| events::append(c, &row, retention))
            .await
        {
            // The live stream still gets the event; only replay loses it.
            tracing::error!(session = %session.id, seq, error = %e, "event not logged");
        }
        f
    }

    /// Logs and broadcasts one event.
    async fn publish(&self, ctx: &TurnCtx, seq: i64, ev: &Event) {
        let f = self.log(&ctx.session, seq, ev).await;
        let _ = ctx.running.tx.send(f);
    }

    /// Logged frames of the org's session after `after` (for lagging or resuming subscribers).
    pub async fn frames_after(
        &self,
        org_id: &str,
        session_id: &str,
        after: i64,
    ) -> Result<Vec<Arc<Frame>>, RuntimeError> {
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let rows = self
            .store
            .read_async(move |c| events::list_after(c, &org, &id, after))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let data = serde_json::from_str::<Value>(&r.payload)
                    .ok()
                    .and_then(|mut v| v.get_mut("data").map(Value::take))
                    .unwrap_or(Value::Null);
                Arc::new(Frame {
                    seq: r.seq,
                    event_type: r.event_type,
                    json: r.payload,
                    data,
                })
            })
            .collect())
    }
}

/// 422 unless the app defines `agent`.
async fn check_agent(
    driver: &Arc<LoadedDriver>,
    app_path: &str,
    agent: &str,
) -> Result<(), RuntimeError> {
    let d = driver.clone();
    let dir = app_path.to_string();
    let discovery = tokio::task::spawn_blocking(move || d.driver.discover(Path::new(&dir)))
        .await
        .map_err(|e| RuntimeError::Store(store::StoreError::Task(e.to_string())))?
        .map_err(|e| RuntimeError::Conflict(format!("the harness app is misconfigured: {e}")))?;
    if discovery.agents.iter().any(|a| a.name == agent) {
        return Ok(());
    }
    let names: Vec<&str> = discovery.agents.iter().map(|a| a.name.as_str()).collect();
    Err(invalid(
        "agent",
        format!(
            "unknown agent `{agent}`; this app's agents are: {}",
            names.join(", ")
        ),
    ))
}

fn assistant(text: &str, agent: &str) -> AssistantMessage {
    AssistantMessage {
        role: "assistant".into(),
        text: text.to_string(),
        agent: agent.to_string(),
    }
}

impl Subscription {
    /// The next frame to deliver, or `None` when the stream is over. Lagging live receivers
    /// catch up from the log.
    pub async fn next(&mut self, runtime: &Runtime) -> Option<Arc<Frame>> {
        loop {
            if !self.backlog.is_empty() {
                let f = self.backlog.remove(0);
                if f.seq <= self.after_seq {
                    continue;
                }
                return Some(self.deliver(f));
            }
            // Set before awaiting, so a caller that drops this future mid-way (a heartbeat won
            // the select) still catches up on its next call.
            if self.catch_up {
                match runtime
                    .frames_after(&self.org_id, &self.session_id, self.after_seq)
                    .await
                {
                    Ok(frames) => {
                        self.backlog = frames;
                        self.catch_up = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "stream catch-up failed");
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

    fn deliver(&mut self, f: Arc<Frame>) -> Arc<Frame> {
        self.after_seq = f.seq;
        if f.is_done() && f.seq > self.done_after {
            // The turn is over: stop after this frame.
            self.rx = None;
            self.backlog.clear();
        }
        f
    }

    /// Waits until the turn ends or pauses for input, folding the frames into one outcome.
    pub async fn collect(mut self, runtime: &Runtime) -> TurnOutcome {
        let mut out = TurnOutcome::default();
        while let Some(f) = self.next(runtime).await {
            out.events
                .push(serde_json::from_str(&f.json).unwrap_or(Value::Null));
            match f.event_type.as_str() {
                "text" => {
                    if let Some(t) = f.data["part"]["text"].as_str() {
                        out.text.push_str(t);
                    }
                }
                "error" => out.errors.push(f.data.clone()),
                "input_required" => {
                    out.pending_input = Some(f.data.clone());
                    return out;
                }
                "done" => {
                    out.done = Some(f.data.clone());
                    return out;
                }
                _ => {}
            }
        }
        out
    }
}

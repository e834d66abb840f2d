//! Running turns: claim the session, start the driver, pump its events to the log and subscribers.

use std::sync::{Arc, Mutex};

use karta_plugin_api::{
    AssistantMessage, Done, ErrorInfo, Event, EventKind, HostTurn, Part, Participant, TurnRequest,
    TurnStatus, Usage, PAYLOAD_VERSION,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::events::{frame, Frame};
use super::sessions::iso;
use super::{Runtime, RuntimeError};
use crate::store::{self, events, models, projects, sessions};

/// Frames a slow subscriber may fall behind before it re-reads the log.
const BROADCAST_CAPACITY: usize = 256;

/// `POST /v1/sessions/{id}/messages` input.
#[derive(Clone, Debug, Default)]
pub struct SendMessage {
    /// The message.
    pub text: String,
    /// Route to this agent instead of the session's current one.
    pub agent: Option<String>,
    /// Who sends it (default `user`).
    pub participant_name: Option<String>,
    /// `human` (default) or `ai`.
    pub participant_type: Option<String>,
    /// Whether to surface reasoning.
    pub thinking: bool,
}

/// In-memory state of a session whose turn is running. It exists exactly while the turn runs:
/// being in the runtime's map is what makes the session busy.
pub(crate) struct LiveSession {
    tx: broadcast::Sender<Arc<Frame>>,
    turn: Mutex<Option<HostTurn>>,
}

impl LiveSession {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            turn: Mutex::new(None),
        }
    }
}

/// A subscription to one turn's frames.
pub struct TurnSubscription {
    /// The session.
    pub session_id: String,
    /// The org (for re-reading the log after a lag).
    pub org_id: String,
    /// Live frames.
    pub rx: broadcast::Receiver<Arc<Frame>>,
    /// The session's last sequence number before this turn.
    pub after_seq: i64,
}

/// A turn folded into one result (the unary answer).
#[derive(Clone, Debug, Default)]
pub struct TurnOutcome {
    /// The assistant's text.
    pub text: String,
    /// The agent that answered.
    pub agent: String,
    /// The `done` payload.
    pub done: Value,
    /// The `error` payloads, if any.
    pub errors: Vec<Value>,
}

impl Runtime {
    /// Starts a turn and returns a subscription to its frames. The turn runs to its end whether or
    /// not anyone keeps listening.
    pub async fn send_message(
        self: &Arc<Self>,
        org_id: &str,
        session_id: &str,
        msg: SendMessage,
    ) -> Result<TurnSubscription, RuntimeError> {
        let participant = Participant {
            name: msg
                .participant_name
                .clone()
                .unwrap_or_else(|| "user".into()),
            kind: msg
                .participant_type
                .clone()
                .unwrap_or_else(|| "human".into()),
        };
        if participant.kind != "human" && participant.kind != "ai" {
            return Err(RuntimeError::Invalid(
                vec!["body".into(), "participant_type".into()],
                format!("must be `human` or `ai`, got `{}`", participant.kind),
            ));
        }
        if participant.name.trim().is_empty() {
            return Err(RuntimeError::Invalid(
                vec!["body".into(), "participant_name".into()],
                "must not be empty".into(),
            ));
        }
        if msg.text.is_empty() {
            return Err(RuntimeError::Invalid(
                vec!["body".into(), "text".into()],
                "must not be empty".into(),
            ));
        }
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let (session, project) = self
            .store
            .read_async(move |c| {
                let s = sessions::get(c, &org, &id)?;
                let p = projects::get(c, &org, &s.project_id)?;
                Ok((s, p))
            })
            .await?;
        if project.disabled_at.is_some() {
            return Err(RuntimeError::Unavailable(format!(
                "project `{}` is disabled",
                project.slug
            )));
        }
        let driver = self.drivers.get(&session.driver).ok_or_else(|| {
            RuntimeError::Unavailable(format!("driver `{}` is not loaded", session.driver))
        })?;

        let live = self.claim(session_id).ok_or(RuntimeError::Busy)?;
        // Re-read now that the session is ours: a turn that just ended advanced its sequence.
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let session = match self
            .store
            .read_async(move |c| sessions::get(c, &org, &id))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.release(session_id);
                return Err(e.into());
            }
        };
        let rx = live.tx.subscribe();
        let sub = TurnSubscription {
            session_id: session.id.clone(),
            org_id: session.org_id.clone(),
            rx,
            after_seq: session.last_seq,
        };

        let agent = msg
            .agent
            .clone()
            .unwrap_or_else(|| session.current_agent.clone());
        let request = TurnRequest {
            v: PAYLOAD_VERSION,
            session_id: session.id.clone(),
            harness_session_id: session.harness_session_id.clone(),
            app_dir: project.source_path.clone(),
            workspace_dir: self
                .workspace_dir(&session.org_id, &session.id)
                .display()
                .to_string(),
            text: msg.text,
            agent: agent.clone(),
            participant: participant.clone(),
            thinking: msg.thinking,
            permission_mode: session.permission_mode.clone(),
            env: Default::default(),
        };

        let rt = self.clone();
        tokio::spawn(async move {
            if let Err(e) = rt.record_participant(&session, &participant).await {
                tracing::warn!(session = %session.id, error = %e, "participant not recorded");
            }
            let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Result<Event, String>>();
            let starter_tx = ev_tx.clone();
            let started = tokio::task::spawn_blocking(move || {
                driver.driver.start_turn(&request, move |ev| {
                    // The receiver is gone only when the pump has finished; nothing to do then.
                    let _ = ev_tx.send(ev);
                })
            })
            .await;
            match started {
                Ok(Ok(handle)) => {
                    *live.turn.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                }
                Ok(Err(message)) => {
                    let _ = starter_tx.send(Ok(Event::new(EventKind::Error(ErrorInfo {
                        code: "harness_start_failed".into(),
                        message,
                        provider: None,
                    }))));
                }
                Err(join) => {
                    let _ = starter_tx.send(Ok(Event::new(EventKind::Error(ErrorInfo {
                        code: "harness_start_failed".into(),
                        message: format!("driver panicked while starting the turn: {join}"),
                        provider: None,
                    }))));
                }
            }
            drop(starter_tx);
            rt.pump(session, agent, live, ev_rx).await;
        });
        Ok(sub)
    }

    async fn record_participant(
        &self,
        session: &models::Session,
        who: &Participant,
    ) -> Result<(), store::StoreError> {
        let (org, id) = (session.org_id.clone(), session.id.clone());
        let who = who.clone();
        self.store
            .write_async(move |c| {
                let s = sessions::get(c, &org, &id)?;
                let mut list: Vec<Value> =
                    serde_json::from_str(&s.participants).unwrap_or_default();
                if list.iter().any(|p| p["name"] == who.name.as_str()) {
                    return Ok(());
                }
                list.push(json!({
                    "name": who.name,
                    "type": who.kind,
                    "display_name": null,
                    "joined_at": iso(store::now()),
                }));
                sessions::set_participants(c, &org, &id, &Value::Array(list).to_string())
            })
            .await
    }

    async fn pump(
        &self,
        session: models::Session,
        agent: String,
        live: Arc<LiveSession>,
        mut rx: mpsc::UnboundedReceiver<Result<Event, String>>,
    ) {
        let mut seq = session.last_seq;
        let mut text = String::new();
        let mut failed = false;
        loop {
            let event = match rx.recv().await {
                Some(Ok(ev)) => ev,
                Some(Err(message)) => Event::new(EventKind::Error(ErrorInfo {
                    code: "driver_protocol_error".into(),
                    message,
                    provider: None,
                })),
                None => {
                    // The driver let go of the sink without `done`.
                    let ev = Event::new(EventKind::Error(ErrorInfo {
                        code: "harness_ended".into(),
                        message: "the harness ended the turn without finishing it".into(),
                        provider: None,
                    }));
                    seq += 1;
                    self.publish(&session, &live, seq, &ev).await;
                    let done = Event::new(EventKind::Done(Done {
                        usage: Usage::default(),
                        status: TurnStatus::Failed,
                        stop_reason: None,
                        message: Some(assistant(&text, &agent)),
                    }));
                    self.finish(&session, &live, seq + 1, &done).await;
                    return;
                }
            };
            match event.kind {
                EventKind::HarnessSession {
                    ref harness_session_id,
                } => {
                    let (org, id, hs) = (
                        session.org_id.clone(),
                        session.id.clone(),
                        harness_session_id.clone(),
                    );
                    if let Err(e) = self
                        .store
                        .write_async(move |c| sessions::set_harness_session(c, &org, &id, &hs))
                        .await
                    {
                        tracing::error!(session = %session.id, error = %e, "harness session id not saved");
                    }
                    continue;
                }
                EventKind::Text {
                    part: Part::Text { text: ref t },
                } => text.push_str(t),
                EventKind::Error(_) => failed = true,
                EventKind::Done(ref d) => {
                    let mut d = d.clone();
                    d.message = Some(assistant(&text, &agent));
                    if failed && d.status == TurnStatus::Completed {
                        d.status = TurnStatus::Failed;
                    }
                    let done = Event {
                        kind: EventKind::Done(d),
                        ..event
                    };
                    self.finish(&session, &live, seq + 1, &done).await;
                    return;
                }
                _ => {}
            }
            seq += 1;
            self.publish(&session, &live, seq, &event).await;
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
    async fn publish(&self, session: &models::Session, live: &LiveSession, seq: i64, ev: &Event) {
        let f = self.log(session, seq, ev).await;
        let _ = live.tx.send(f);
    }

    /// Logs `done`, frees the session, then broadcasts `done` (so a client that sends again as
    /// soon as it sees `done` does not find the session busy).
    async fn finish(&self, session: &models::Session, live: &LiveSession, seq: i64, done: &Event) {
        let f = self.log(session, seq, done).await;
        live.turn.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.release(&session.id);
        let _ = live.tx.send(f);
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

fn assistant(text: &str, agent: &str) -> AssistantMessage {
    AssistantMessage {
        role: "assistant".into(),
        text: text.to_string(),
        agent: agent.to_string(),
    }
}

impl TurnSubscription {
    /// Waits for the turn to end and folds its frames into one outcome.
    pub async fn collect(mut self, runtime: &Runtime) -> Result<TurnOutcome, RuntimeError> {
        let mut out = TurnOutcome::default();
        let mut last_seq = self.after_seq;
        loop {
            let frames = match self.rx.recv().await {
                Ok(f) => vec![f],
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    runtime
                        .frames_after(&self.org_id, &self.session_id, last_seq)
                        .await?
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(RuntimeError::Unavailable(
                        "the turn ended unexpectedly".into(),
                    ))
                }
            };
            for f in frames {
                if f.seq <= last_seq {
                    continue;
                }
                last_seq = f.seq;
                match f.event_type.as_str() {
                    "text" => {
                        if let Some(t) = f.data["part"]["text"].as_str() {
                            out.text.push_str(t);
                        }
                    }
                    "error" => out.errors.push(f.data.clone()),
                    "done" => {
                        out.agent = f.data["message"]["agent"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        out.done = f.data.clone();
                        return Ok(out);
                    }
                    _ => {}
                }
            }
        }
    }
}

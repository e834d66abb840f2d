//! The one thread that plays every echo turn. A turn is a list of [`Step`]s; the worker emits
//! them in order, sleeps for pauses (the nearest due turn first), and parks a turn that waits
//! for an approval until its decision arrives, so a paused turn costs no thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use karta_driver_api::{
    Decision, DecisionKind, Done, EventKind, Sink, ToolUse, Turn, TurnStatus, Usage,
};
use serde_json::json;

use crate::script::{Step, SKIPPED_ON_DENY};

/// Messages to the worker.
enum Msg {
    Start(u64, Box<Job>),
    Decide(u64, Decision),
    Cancel(u64),
    EndSession(String),
}

/// Starts turns on the worker thread (started on first use, restarted if it died).
pub struct Worker {
    delay: Duration,
    tx: Mutex<Option<Sender<Msg>>>,
    next_id: AtomicU64,
}

impl Worker {
    /// A worker that pauses `delay` at each pause step.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            tx: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Steps a turn may have to be played inside `start_turn` (see [`Worker::start`]).
    const INLINE_STEPS: usize = 64;

    /// Plays `steps` to `sink`; the handle answers approvals and cancels. Without a delay, a
    /// short turn that cannot wait (no approval, no hang, no crash) is played at once, inside
    /// the call: the host holds what it emits until `start_turn` returns (the driver claims
    /// `quick_start`), and no thread has to be woken for it.
    pub fn start(
        &self,
        session_id: &str,
        steps: Vec<Step>,
        sink: Sink,
        input_tokens: u64,
    ) -> Result<Box<dyn Turn>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(Mutex::new(None));
        let inline = self.delay.is_zero()
            && steps.len() <= Self::INLINE_STEPS
            && steps.iter().all(|s| {
                matches!(
                    s,
                    Step::Emit(_) | Step::Raw(_) | Step::Text(_) | Step::Pause | Step::Fail(_)
                )
            });
        let mut job = Box::new(Job {
            session_id: session_id.to_string(),
            hung: false,
            sink,
            steps: steps.into(),
            due: Instant::now(),
            waiting: None,
            cancelled: false,
            failed: false,
            input_tokens,
            output_tokens: 0,
            pending: pending.clone(),
        });
        if inline {
            job.play(Duration::ZERO, &HashSet::new());
            return Ok(Box::new(Played));
        }
        let mut tx = self.tx.lock().map_err(|_| "echo worker poisoned")?;
        let mut msg = Msg::Start(id, job);
        if let Some(t) = tx.as_ref() {
            match t.send(msg) {
                Ok(()) => return Ok(handle(id, pending, t.clone())),
                // The worker died (a panic): start another below.
                Err(e) => msg = e.0,
            }
        }
        let (t, rx) = channel();
        let delay = self.delay;
        thread::Builder::new()
            .name("echo-worker".into())
            .spawn(move || run(rx, delay))
            .map_err(|e| format!("cannot start the echo worker: {e}"))?;
        t.send(msg).map_err(|_| "the echo worker stopped")?;
        *tx = Some(t.clone());
        Ok(handle(id, pending, t))
    }
}

impl Worker {
    /// Drops every turn of the session.
    pub fn end_session(&self, session_id: &str) {
        if let Ok(tx) = self.tx.lock() {
            if let Some(t) = tx.as_ref() {
                let _ = t.send(Msg::EndSession(session_id.to_string()));
            }
        }
    }
}

fn handle(id: u64, pending: Arc<Mutex<Option<String>>>, tx: Sender<Msg>) -> Box<dyn Turn> {
    Box::new(EchoTurn {
        id,
        pending,
        tx: Mutex::new(tx),
    })
}
/// The handle of a turn played inside `start_turn`: over before the host has it.
struct Played;

impl Turn for Played {
    fn resolve_input(&self, request_id: &str, _decision: Decision) -> Result<(), String> {
        Err(format!("no pending request {request_id}"))
    }

    fn cancel(&self) {}
}

/// One turn being played.
struct Job {
    session_id: String,
    /// Ignores everything (a `[hang]` turn).
    hung: bool,
    sink: Sink,
    steps: VecDeque<Step>,
    due: Instant,
    /// The tool event a denial emits, while the turn waits for a decision.
    waiting: Option<ToolUse>,
    cancelled: bool,
    failed: bool,
    input_tokens: u64,
    output_tokens: u64,
    pending: Arc<Mutex<Option<String>>>,
}

/// The host's handle on one echo turn.
struct EchoTurn {
    id: u64,
    pending: Arc<Mutex<Option<String>>>,
    tx: Mutex<Sender<Msg>>,
}

impl EchoTurn {
    fn send(&self, msg: Msg) -> Result<(), String> {
        self.tx
            .lock()
            .map_err(|_| "echo turn poisoned")?
            .send(msg)
            .map_err(|_| "the turn has ended".to_string())
    }
}

impl Turn for EchoTurn {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let mut pending = self.pending.lock().map_err(|_| "echo turn poisoned")?;
        if pending.as_deref() != Some(request_id) {
            return Err(format!("no pending request {request_id}"));
        }
        *pending = None;
        self.send(Msg::Decide(self.id, decision))
    }

    fn cancel(&self) {
        let _ = self.send(Msg::Cancel(self.id));
    }
}

/// The worker's loop: take messages, play every due turn, sleep until the next is due.
fn run(rx: Receiver<Msg>, delay: Duration) {
    let mut jobs: HashMap<u64, Box<Job>> = HashMap::new();
    // Sessions whose echo calls were approved for the session: not asked again.
    let mut approved: HashSet<String> = HashSet::new();
    let mut open = true;
    loop {
        let next = jobs
            .values()
            .filter(|j| j.waiting.is_none())
            .map(|j| j.due)
            .min();
        let msg = match (next, open) {
            (None, false) if jobs.is_empty() => return,
            (None, true) => rx.recv().ok(),
            (None, false) => {
                // Only parked turns and nobody left to answer them.
                return;
            }
            (Some(due), _) => {
                let now = Instant::now();
                if due <= now {
                    rx.try_recv().ok()
                } else if open {
                    match rx.recv_timeout(due - now) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                } else {
                    thread::sleep(due - now);
                    None
                }
            }
        };
        if msg.is_none() && next.is_none() && open {
            // recv() failed: every sender is gone.
            open = false;
        }
        let mut inbox: Vec<Msg> = msg.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            inbox.push(m);
        }
        for m in inbox {
            match m {
                Msg::Start(id, job) => {
                    jobs.insert(id, job);
                }
                Msg::Decide(id, decision) => {
                    if let Some(job) = jobs.get_mut(&id) {
                        if decision.decision == DecisionKind::ApproveSession && !job.hung {
                            approved.insert(job.session_id.clone());
                        }
                        job.decide(decision);
                    }
                }
                Msg::EndSession(sid) => {
                    jobs.retain(|_, j| j.session_id != sid);
                    approved.remove(&sid);
                }
                Msg::Cancel(id) => {
                    if let Some(job) = jobs.get_mut(&id).filter(|j| !j.hung) {
                        job.cancelled = true;
                        job.waiting = None;
                        job.due = Instant::now();
                    }
                }
            }
        }
        let now = Instant::now();
        jobs.retain(|_, job| job.waiting.is_some() || job.due > now || !job.play(delay, &approved));
    }
}

impl Job {
    /// Plays steps until a pause, an approval or the end; true when the turn is over.
    fn play(&mut self, delay: Duration, approved: &HashSet<String>) -> bool {
        loop {
            if self.cancelled {
                self.finish(TurnStatus::Cancelled);
                return true;
            }
            let Some(step) = self.steps.pop_front() else {
                let status = if self.failed {
                    TurnStatus::Failed
                } else {
                    TurnStatus::Completed
                };
                self.finish(status);
                return true;
            };
            match step {
                Step::Emit(kind) => self.sink.emit_kind(kind),
                Step::Raw(json) => self.sink.emit_json(&json),
                Step::Text(text) => {
                    self.output_tokens += 1;
                    self.sink.emit_kind(EventKind::Text {
                        part: karta_driver_api::Part::Text { text },
                    });
                }
                Step::Pause if delay.is_zero() => {}
                Step::Pause => {
                    self.due = Instant::now() + delay;
                    return false;
                }
                Step::Ask { .. } if approved.contains(&self.session_id) => {}
                Step::Ask { request, denied } => {
                    if let Ok(mut p) = self.pending.lock() {
                        *p = Some(request.request_id.clone());
                    }
                    self.waiting = Some(denied);
                    self.sink.emit_kind(EventKind::InputRequired(request));
                    return false;
                }
                Step::Hang => {
                    self.hung = true;
                    self.waiting = Some(ToolUse {
                        tool_use_id: String::new(),
                        tool_name: String::new(),
                        tool_input: json!(null),
                        status: karta_driver_api::ToolStatus::Error,
                        result: None,
                    });
                    return false;
                }
                Step::Panic => panic!("the echo harness panicked on purpose ([panic])"),
                Step::Fail(error) => {
                    self.sink.emit_kind(EventKind::Error(error));
                    self.failed = true;
                    self.steps.clear();
                }
            }
        }
    }

    /// Resumes a parked turn with its decision.
    fn decide(&mut self, decision: Decision) {
        if self.hung {
            return;
        }
        let Some(mut denied) = self.waiting.take() else {
            return;
        };
        if decision.decision == DecisionKind::Deny {
            let why = decision.message.unwrap_or_else(|| "denied".into());
            denied.result = Some(json!(format!("denied: {why}")));
            self.sink.emit_kind(EventKind::ToolUse(denied));
            for _ in 0..SKIPPED_ON_DENY {
                self.steps.pop_front();
            }
        }
        self.due = Instant::now();
    }

    fn finish(&mut self, status: TurnStatus) {
        self.sink.emit_kind(EventKind::Done(Done {
            usage: Usage::new(self.input_tokens, self.output_tokens, 0, 0),
            stop_reason: Some(
                match &status {
                    TurnStatus::Completed => "end_turn",
                    TurnStatus::Cancelled => "cancelled",
                    _ => "error",
                }
                .into(),
            ),
            status,
            message: None,
        }));
    }
}

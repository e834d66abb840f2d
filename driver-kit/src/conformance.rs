//! The conformance suite: scenarios every driver must pass, driven through the ABI exactly as
//! the host drives a driver (a [`HostDriver`], whether it was linked in or loaded from a
//! library).
//!
//! A driver's tests implement [`Rig`] (how to build a turn request, and which messages make the
//! harness play each [`Scenario`]), then call [`check`] once per scenario:
//!
//! ```ignore
//! for s in conformance::scenarios(&driver_info.capabilities) {
//!     if let Err(e) = conformance::check(&my_rig, s) { panic!("{s:?}: {e}") }
//! }
//! ```
//!
//! What is checked, beyond each scenario's own rule: every turn ends with exactly one `done`,
//! nothing comes after it, every tool call that started also ends, and every event parses.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use karta_driver_api::{
    Decision, DecisionKind, Done, Event, EventKind, HostDriver, HostTurn, Part, ToolStatus,
    TurnRequest, TurnStatus,
};

/// One behaviour every driver must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A plain answer streams as `text` and the turn completes.
    Text,
    /// A tool call is reported running and then completed, under one `tool_use_id`.
    Tool,
    /// An approval answered `approve_once` lets the tool run; the next call asks again.
    ApproveOnce,
    /// An approval answered `approve_session` lets later calls of the tool run unasked.
    ApproveSession,
    /// An approval answered `deny` keeps the tool from running; the turn still ends.
    Deny,
    /// A cancel ends a running turn with `done` (status `cancelled`).
    Cancel,
    /// A harness that dies mid-turn ends the turn with `error` and `done` (status `failed`);
    /// the session's next turn works.
    Crash,
    /// A session continues its conversation after its harness process is gone (as after a
    /// host restart), from the harness session id of the turn before.
    Resume,
    /// `done` reports token usage that adds up, and equals the sum of the steps' usage when
    /// the steps report any.
    Usage,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 9] = [
        Scenario::Text,
        Scenario::Tool,
        Scenario::ApproveOnce,
        Scenario::ApproveSession,
        Scenario::Deny,
        Scenario::Cancel,
        Scenario::Crash,
        Scenario::Resume,
        Scenario::Usage,
    ];
}

/// The scenarios a driver that claims `caps` is held to (approvals, cancel and resume only
/// when claimed).
pub fn scenarios(caps: &karta_driver_api::Capabilities) -> Vec<Scenario> {
    Scenario::ALL
        .into_iter()
        .filter(|s| match s {
            Scenario::ApproveOnce | Scenario::ApproveSession | Scenario::Deny => caps.approvals,
            Scenario::Cancel => caps.cancel,
            Scenario::Resume => caps.resume,
            _ => true,
        })
        .collect()
}

/// What makes the harness play a scenario.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The messages, one per turn. Approvals and `Crash` use two turns (the second asks again,
    /// runs unasked, or works after the crash); `Resume` uses two.
    pub messages: Vec<String>,
    /// Text the last turn's answer must contain.
    pub expect_text: Option<String>,
    /// The tool the scenario calls (approvals and `Tool`), when the rig knows its name.
    pub tool: Option<String>,
}

impl Script {
    /// A script of these messages.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(messages: I) -> Self {
        Self {
            messages: messages.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The last turn's answer must contain `text`.
    pub fn expect(mut self, text: impl Into<String>) -> Self {
        self.expect_text = Some(text.into());
        self
    }

    /// The tool the scenario calls.
    pub fn tool(mut self, name: impl Into<String>) -> Self {
        self.tool = Some(name.into());
        self
    }

    fn message(&self, i: usize) -> Result<&str, String> {
        self.messages
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("the rig's script has no message {}", i + 1))
    }
}

/// A driver under test, and how to make its harness play each scenario.
pub trait Rig {
    /// The driver, as the host holds it.
    fn driver(&self) -> &HostDriver;
    /// A turn request carrying `text` for session `session_id` (app folder, workspace,
    /// environment for the harness); the suite sets `harness_session_id`.
    fn request(&self, session_id: &str, text: &str) -> TurnRequest;
    /// Prepares the harness for `scenario` (a fake model's script, say) and returns the
    /// messages that play it.
    fn script(&self, scenario: Scenario) -> Script;
    /// Waits until the turn of `session_id` is busy (its harness waits on the model, say), for
    /// `Cancel` and `Crash`. Returns false to let the suite wait for the turn's first event
    /// instead (the default).
    fn wait_busy(&self, _session_id: &str) -> bool {
        false
    }
    /// Kills the harness serving `session_id` while its turn runs (`Crash`). The default does
    /// nothing: the script itself makes the harness die.
    fn crash(&self, _session_id: &str) {}
    /// Extra checks of the last turn of a scenario (what the fake model was sent, say).
    fn verify(&self, _scenario: Scenario, _events: &[Event]) -> Result<(), String> {
        Ok(())
    }
    /// The longest a turn may take.
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// A running turn, seen the way the host sees it.
pub struct Running {
    turn: HostTurn,
    rx: Receiver<Result<Event, String>>,
    /// Every event so far.
    pub events: Vec<Event>,
    deadline: Instant,
}

impl Running {
    /// Starts a turn.
    pub fn start(rig: &dyn Rig, request: &TurnRequest) -> Result<Running, String> {
        let (tx, rx) = channel();
        let turn = rig.driver().start_turn(request, move |ev| {
            let _ = tx.send(ev);
        })?;
        Ok(Running {
            turn,
            rx,
            events: Vec::new(),
            deadline: Instant::now() + rig.timeout(),
        })
    }

    fn next(&mut self) -> Result<Event, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Ok(ev)) => {
                self.events.push(ev.clone());
                Ok(ev)
            }
            Ok(Err(e)) => Err(format!(
                "the driver sent an event the host cannot read: {e}"
            )),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "no `done` in time; events so far: {:?}",
                types(&self.events)
            )),
            Err(RecvTimeoutError::Disconnected) => Err(format!(
                "the driver let go of the turn without `done`; events: {:?}",
                types(&self.events)
            )),
        }
    }

    /// Waits for the first event that `pred` accepts (failing on `done` first).
    pub fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Event, String> {
        loop {
            let ev = self.next()?;
            if pred(&ev) {
                return Ok(ev);
            }
            if matches!(ev.kind, EventKind::Done(_)) {
                return Err(format!(
                    "the turn ended before {what}; events: {:?}",
                    types(&self.events)
                ));
            }
        }
    }

    /// Answers an approval.
    pub fn decide(&self, request_id: &str, kind: DecisionKind) -> Result<(), String> {
        let message = (kind == DecisionKind::Deny).then(|| "not now (conformance)".to_string());
        self.turn
            .resolve_input(request_id, &Decision::new(kind, message))
    }

    /// Asks the turn to stop.
    pub fn cancel(&self) {
        self.turn.cancel();
    }

    /// Runs the turn to its `done`, then checks the rules every turn keeps.
    pub fn finish(mut self) -> Result<Vec<Event>, String> {
        if !self
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Done(_)))
        {
            self.until("done", |e| matches!(e.kind, EventKind::Done(_)))?;
        }
        // Nothing may follow `done`.
        match self.rx.recv_timeout(Duration::from_millis(150)) {
            Ok(Ok(ev)) => return Err(format!("`{}` came after `done`", ev.type_name())),
            Ok(Err(e)) => return Err(format!("an unreadable event came after `done`: {e}")),
            Err(_) => {}
        }
        let dones = self
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Done(_)))
            .count();
        if dones != 1 {
            return Err(format!("{dones} `done` events"));
        }
        for call in tool_calls(&self.events) {
            let last = self
                .events
                .iter()
                .rev()
                .filter_map(tool_use)
                .find(|t| t.0 == call)
                .map(|t| t.2.clone());
            if matches!(last, Some(ToolStatus::Pending | ToolStatus::Running)) {
                let status = &done_of(&self.events)?.status;
                // A cancelled or failed turn may leave a call unfinished.
                if *status == TurnStatus::Completed {
                    return Err(format!("tool call {call} never ended"));
                }
            }
        }
        Ok(self.events)
    }
}

fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::type_name).collect()
}

/// `(tool_use_id, tool_name, status)` of a `tool_use` event.
fn tool_use(e: &Event) -> Option<(&str, &str, &ToolStatus)> {
    match &e.kind {
        EventKind::ToolUse(t) => Some((&t.tool_use_id, &t.tool_name, &t.status)),
        _ => None,
    }
}

fn tool_calls(events: &[Event]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for (id, _, _) in events.iter().filter_map(tool_use) {
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    ids
}

/// The `done` of a finished turn.
pub fn done_of(events: &[Event]) -> Result<&Done, String> {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Done(d) => Some(d),
            _ => None,
        })
        .ok_or_else(|| "no `done`".to_string())
}

/// The answer's text (every `text` chunk, in order).
pub fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Text {
                part: Part::Text { text },
            } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The harness session id a turn reported, for the next turn.
pub fn harness_session_of(events: &[Event]) -> Option<String> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::HarnessSession { harness_session_id } => Some(harness_session_id.clone()),
        _ => None,
    })
}

fn expect_status(events: &[Event], want: TurnStatus) -> Result<(), String> {
    let d = done_of(events)?;
    if d.status == want {
        Ok(())
    } else {
        Err(format!(
            "`done` has status `{}`, expected `{want}`; events: {:?}",
            d.status,
            types(events)
        ))
    }
}

fn expect_text(script: &Script, events: &[Event]) -> Result<(), String> {
    let text = text_of(events);
    match &script.expect_text {
        Some(want) if !text.contains(want.as_str()) => {
            Err(format!("the answer {text:?} does not contain {want:?}"))
        }
        None if text.is_empty() => Err("no text in the answer".into()),
        _ => Ok(()),
    }
}

fn completed_tool<'a>(events: &'a [Event], tool: Option<&str>) -> Option<&'a str> {
    events
        .iter()
        .filter_map(tool_use)
        .find(|(_, name, status)| {
            **status == ToolStatus::Completed && tool.is_none_or(|t| t == *name)
        })
        .map(|(id, _, _)| id)
}

/// Turn by turn within one session, carrying the harness session id forward.
struct Session<'a> {
    rig: &'a dyn Rig,
    id: String,
    harness: Option<String>,
}

impl<'a> Session<'a> {
    fn new(rig: &'a dyn Rig, scenario: Scenario) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            rig,
            id: format!(
                "sess_conf{}{n}{}",
                std::process::id(),
                format!("{scenario:?}").to_lowercase()
            ),
            harness: None,
        }
    }

    fn start(&self, text: &str) -> Result<Running, String> {
        let mut req = self.rig.request(&self.id, text);
        req.session_id = self.id.clone();
        req.harness_session_id = self.harness.clone();
        Running::start(self.rig, &req)
    }

    fn finish(&mut self, r: Running) -> Result<Vec<Event>, String> {
        let events = r.finish()?;
        if let Some(h) = harness_session_of(&events) {
            self.harness = Some(h);
        }
        Ok(events)
    }

    fn run(&mut self, text: &str) -> Result<Vec<Event>, String> {
        let r = self.start(text)?;
        self.finish(r)
    }

    /// Runs a turn up to its approval, answers it, and finishes it.
    fn approve(&mut self, text: &str, kind: DecisionKind) -> Result<Vec<Event>, String> {
        let mut r = self.start(text)?;
        let ask = r.until("input_required", |e| {
            matches!(e.kind, EventKind::InputRequired(_))
        })?;
        let EventKind::InputRequired(req) = &ask.kind else {
            return Err("unreachable: not an input_required".into());
        };
        if !req.options.contains(&kind) {
            return Err(format!(
                "`{kind}` is not among the options {:?}",
                req.options
            ));
        }
        r.decide(&req.request_id, kind)?;
        self.finish(r)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.rig.driver().end_session(&self.id);
    }
}

fn asked(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.kind, EventKind::InputRequired(_)))
}

/// Runs one scenario against the rig's driver.
pub fn check(rig: &dyn Rig, scenario: Scenario) -> Result<(), String> {
    let script = rig.script(scenario);
    let mut s = Session::new(rig, scenario);
    let last = match scenario {
        Scenario::Text => {
            let events = s.run(script.message(0)?)?;
            expect_status(&events, TurnStatus::Completed)?;
            expect_text(&script, &events)?;
            events
        }
        Scenario::Tool => {
            let events = s.run(script.message(0)?)?;
            expect_status(&events, TurnStatus::Completed)?;
            let id = completed_tool(&events, script.tool.as_deref())
                .ok_or_else(|| format!("no tool call completed: {:?}", types(&events)))?;
            let first = events
                .iter()
                .filter_map(tool_use)
                .find(|t| t.0 == id)
                .map(|t| t.2.clone());
            if first == Some(ToolStatus::Completed) {
                // Announced only once it had finished: clients never saw it run.
                let n = events
                    .iter()
                    .filter_map(tool_use)
                    .filter(|t| t.0 == id)
                    .count();
                if n < 2 {
                    return Err("the tool call was reported only when it had finished".into());
                }
            }
            events
        }
        Scenario::ApproveOnce => {
            let events = s.approve(script.message(0)?, DecisionKind::ApproveOnce)?;
            expect_status(&events, TurnStatus::Completed)?;
            completed_tool(&events, script.tool.as_deref())
                .ok_or("the approved tool call did not complete")?;
            let again = s.approve(script.message(1)?, DecisionKind::ApproveOnce)?;
            if !asked(&again) {
                return Err("approve_once also approved the next call".into());
            }
            expect_status(&again, TurnStatus::Completed)?;
            again
        }
        Scenario::ApproveSession => {
            let events = s.approve(script.message(0)?, DecisionKind::ApproveSession)?;
            completed_tool(&events, script.tool.as_deref())
                .ok_or("the approved tool call did not complete")?;
            let again = s.run(script.message(1)?)?;
            if asked(&again) {
                return Err("asked again after approve_session".into());
            }
            completed_tool(&again, script.tool.as_deref())
                .ok_or("the second call of the tool did not complete")?;
            expect_status(&again, TurnStatus::Completed)?;
            again
        }
        Scenario::Deny => {
            let events = s.approve(script.message(0)?, DecisionKind::Deny)?;
            if let Some(id) = completed_tool(&events, script.tool.as_deref()) {
                return Err(format!("the denied tool call {id} completed"));
            }
            // The call ends as an error (or is never reported), and the turn still ends: a
            // denial is an answer, not a failure.
            let ended_in_error = events.iter().filter_map(tool_use).any(|(_, name, status)| {
                *status == ToolStatus::Error && script.tool.as_deref().is_none_or(|t| t == name)
            });
            let started = events
                .iter()
                .filter_map(tool_use)
                .any(|(_, name, _)| script.tool.as_deref().is_none_or(|t| t == name));
            if started && !ended_in_error {
                return Err("the denied tool call did not end as an error".into());
            }
            if done_of(&events)?.status == TurnStatus::Cancelled {
                return Err("a denial cancelled the turn".into());
            }
            events
        }
        Scenario::Cancel => {
            let mut r = s.start(script.message(0)?)?;
            if !rig.wait_busy(&s.id) {
                r.until("the turn started", |e| {
                    !matches!(e.kind, EventKind::HarnessSession { .. })
                })?;
            }
            r.cancel();
            let events = s.finish(r)?;
            expect_status(&events, TurnStatus::Cancelled)?;
            events
        }
        Scenario::Crash => {
            let mut r = s.start(script.message(0)?)?;
            if !rig.wait_busy(&s.id) {
                r.until("the turn started", |e| {
                    !matches!(e.kind, EventKind::HarnessSession { .. })
                })?;
            }
            rig.crash(&s.id);
            let events = s.finish(r)?;
            expect_status(&events, TurnStatus::Failed)?;
            if !events.iter().any(|e| matches!(e.kind, EventKind::Error(_))) {
                return Err("a crash without an `error` event".into());
            }
            let after = s.run(script.message(1)?)?;
            expect_status(&after, TurnStatus::Completed)?;
            after
        }
        Scenario::Resume => {
            let first = s.run(script.message(0)?)?;
            expect_status(&first, TurnStatus::Completed)?;
            if s.harness.is_none() {
                return Err("the first turn reported no harness session id".into());
            }
            // The warm process goes away, as when the host restarts.
            rig.driver().end_session(&s.id);
            let second = s.run(script.message(1)?)?;
            expect_status(&second, TurnStatus::Completed)?;
            expect_text(&script, &second)?;
            second
        }
        Scenario::Usage => {
            let events = s.run(script.message(0)?)?;
            let u = done_of(&events)?.usage;
            if u.input_tokens + u.cache_read_tokens == 0 || u.output_tokens == 0 {
                return Err(format!("`done` reports no tokens: {u:?}"));
            }
            let parts =
                u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens;
            if u.total_tokens != parts {
                return Err(format!(
                    "total_tokens {} is not the sum of the parts {parts}",
                    u.total_tokens
                ));
            }
            if u.reasoning_tokens > u.output_tokens {
                return Err("reasoning_tokens exceed output_tokens".into());
            }
            let mut steps = karta_driver_api::Usage::default();
            let mut any = false;
            for e in &events {
                if let EventKind::StepFinish {
                    usage: Some(su), ..
                } = &e.kind
                {
                    steps.add(su);
                    any = true;
                }
            }
            if any
                && (
                    steps.input_tokens,
                    steps.output_tokens,
                    steps.cache_read_tokens,
                ) != (u.input_tokens, u.output_tokens, u.cache_read_tokens)
            {
                return Err(format!(
                    "the steps' usage {steps:?} does not add up to `done`'s {u:?}"
                ));
            }
            events
        }
    };
    rig.verify(scenario, &last)
}

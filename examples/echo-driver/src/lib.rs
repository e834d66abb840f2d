//! `echo`: a third-party Karta driver plugin, built against `karta-plugin-api` alone.
//!
//! It answers any message by streaming it back: a step, several text deltas, an `echo` tool call
//! with its result, and `done` with token usage. It is the drop-in example for driver authors and
//! the platform's test driver, so a few markers in the message exercise the rest of the protocol:
//!
//! - `[approve]`: one `echo` tool call that asks for approval (`input_required`) per marker;
//! - `[fail]`: an `error` event after the first chunk, then `done` with status `failed`;
//! - `[flood:N]`: N more text events (at most 100,000), for long turns and back-pressure.
//!
//! Agents are discovered from `.echo/agents/*.md` (frontmatter `name:` and `description:`); the
//! default agent is named by a `default_agent: <name>` line in `ECHO.md`, or is the only agent.
//!
//! Settings (the `settings` table of its `[[drivers]]` entry):
//! - `delay_ms` (default 5): pause between events, to make streaming observable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use karta_plugin_api::{
    export_driver, AgentInfo, Decision, DecisionKind, Discovery, Done, Driver, ErrorInfo,
    EventKind, InputRequest, Part, Sink, ToolStatus, ToolUse, Turn, TurnRequest, TurnStatus, Usage,
};
use serde_json::{json, Value};

/// The echo driver.
pub struct EchoDriver {
    delay: Duration,
}

impl EchoDriver {
    /// Builds the driver from its settings.
    pub fn from_settings(settings: &Value) -> Result<Self, String> {
        let delay_ms = match settings.get("delay_ms") {
            None => 5,
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("settings.delay_ms must be a non-negative integer, got {v}")
            })?,
        };
        Ok(Self {
            delay: Duration::from_millis(delay_ms),
        })
    }
}

export_driver!(EchoDriver::from_settings);

struct EchoTurn {
    cancelled: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<String>>>,
    decisions: Mutex<Sender<Decision>>,
}

impl Turn for EchoTurn {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let mut pending = self.pending.lock().map_err(|_| "echo turn poisoned")?;
        if pending.as_deref() != Some(request_id) {
            return Err(format!("no pending request {request_id}"));
        }
        *pending = None;
        self.decisions
            .lock()
            .map_err(|_| "echo turn poisoned")?
            .send(decision)
            .map_err(|_| "the turn has ended".to_string())
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

/// Reads `key: value` lines of a leading `---` frontmatter block.
fn frontmatter(text: &str) -> Option<Vec<(String, String)>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "---" {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        if line.trim() == "---" {
            return Some(out);
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    None
}

impl Driver for EchoDriver {
    fn name(&self) -> String {
        "echo".into()
    }

    fn detect(&self, app_dir: &Path) -> u32 {
        // Claims only apps that ask for it explicitly with an `ECHO.md` marker.
        if app_dir.join("ECHO.md").is_file() {
            50
        } else {
            0
        }
    }

    fn discover(&self, app_dir: &Path) -> Result<Discovery, String> {
        let mut agents = Vec::new();
        let dir = app_dir.join(".echo/agents");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut files: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("md"))
                .collect();
            files.sort();
            for f in files {
                let text =
                    std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                let fm = frontmatter(&text).ok_or_else(|| {
                    format!("{}:1: expected a `---` frontmatter block", f.display())
                })?;
                let get = |k: &str| fm.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                let name = get("name")
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| format!("{}: frontmatter has no `name`", f.display()))?;
                if agents.iter().any(|a: &AgentInfo| a.name == name) {
                    return Err(format!("{}: agent `{name}` is defined twice", f.display()));
                }
                agents.push(AgentInfo {
                    name,
                    description: get("description").unwrap_or_default(),
                });
            }
        }
        let marker = std::fs::read_to_string(app_dir.join("ECHO.md")).unwrap_or_default();
        let declared = marker
            .lines()
            .find_map(|l| l.trim().strip_prefix("default_agent:"))
            .map(|s| s.trim().to_string());
        let default_agent = match (declared, agents.len()) {
            (Some(d), _) if agents.iter().any(|a| a.name == d) => Some(d),
            (Some(d), _) => {
                return Err(format!(
                    "ECHO.md names default agent `{d}`, which is not defined"
                ))
            }
            (None, 0) => Some("default".into()),
            (None, 1) => Some(agents[0].name.clone()),
            (None, _) => {
                return Err("several agents and no `default_agent:` line in ECHO.md".into())
            }
        };
        if agents.is_empty() {
            agents.push(AgentInfo {
                name: "default".into(),
                description: "Echoes every message back".into(),
            });
        }
        Ok(Discovery {
            agents,
            skills: vec![],
            default_agent,
        })
    }

    fn start_turn(&self, req: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(Mutex::new(None));
        let (tx, rx) = channel();
        let run = Run {
            req,
            sink,
            cancelled: cancelled.clone(),
            pending: pending.clone(),
            decisions: rx,
            delay: self.delay,
        };
        thread::Builder::new()
            .name("echo-turn".into())
            .spawn(move || run.turn())
            .map_err(|e| format!("cannot start echo thread: {e}"))?;
        Ok(Box::new(EchoTurn {
            cancelled,
            pending,
            decisions: Mutex::new(tx),
        }))
    }
}

/// N of a `[flood:N]` marker, capped.
fn flood_count(text: &str) -> u64 {
    let Some(rest) = text.split("[flood:").nth(1) else {
        return 0;
    };
    rest.split(']')
        .next()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(100_000)
}

struct Run {
    req: TurnRequest,
    sink: Sink,
    cancelled: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<String>>>,
    decisions: Receiver<Decision>,
    delay: Duration,
}

/// Why a turn stopped early.
enum Stop {
    Cancelled,
}

impl Run {
    fn pause(&self) -> Result<(), Stop> {
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        if self.cancelled.load(Ordering::SeqCst) {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    fn usage(&self, output_tokens: u64) -> Usage {
        Usage::new(
            self.req.text.split_whitespace().count() as u64,
            output_tokens,
            0,
            0,
        )
    }

    fn turn(self) {
        let mut output_tokens = 0;
        let status = match self.body(&mut output_tokens) {
            Ok(status) => status,
            Err(Stop::Cancelled) => TurnStatus::Cancelled,
        };
        self.sink.emit_kind(EventKind::Done(Done {
            usage: self.usage(output_tokens),
            status,
            stop_reason: Some(
                match status {
                    TurnStatus::Completed => "end_turn",
                    TurnStatus::Failed => "error",
                    TurnStatus::Cancelled => "cancelled",
                }
                .into(),
            ),
            message: None,
        }));
    }

    fn body(&self, output_tokens: &mut u64) -> Result<TurnStatus, Stop> {
        let req = &self.req;
        if req.harness_session_id.is_none() {
            self.sink.emit_kind(EventKind::HarnessSession {
                harness_session_id: format!("echo-{}", req.session_id),
            });
        }
        self.sink.emit_kind(EventKind::StepStart {
            step_index: 0,
            description: Some("echo the message".into()),
        });
        let reply = format!("echo: {}", req.text);
        for (i, w) in reply.split_inclusive(' ').enumerate() {
            self.pause()?;
            *output_tokens += 1;
            self.sink.emit_kind(EventKind::Text {
                part: Part::Text {
                    text: w.to_string(),
                },
            });
            if i == 0 && req.text.contains("[fail]") {
                self.sink.emit_kind(EventKind::Error(ErrorInfo {
                    code: "echo_failure".into(),
                    message: "the echo harness failed on purpose ([fail])".into(),
                    provider: None,
                }));
                return Ok(TurnStatus::Failed);
            }
        }
        for n in 0..flood_count(&req.text) {
            self.pause()?;
            *output_tokens += 1;
            self.sink.emit_kind(EventKind::Text {
                part: Part::Text {
                    text: format!(" {n}"),
                },
            });
        }
        let approvals = req.text.matches("[approve]").count();
        let calls = approvals.max(1);
        for n in 0..calls {
            self.tool_call(n, approvals > 0)?;
        }
        self.sink.emit_kind(EventKind::StepFinish {
            step_index: 0,
            result: Some("echoed".into()),
        });
        Ok(TurnStatus::Completed)
    }

    fn tool_call(&self, n: usize, ask: bool) -> Result<(), Stop> {
        let tool_use_id = format!("toolu_echo_{}_{n}", self.req.session_id);
        let input = json!({ "text": self.req.text });
        let tool = |status, result| {
            EventKind::ToolUse(ToolUse {
                tool_use_id: tool_use_id.clone(),
                tool_name: "echo".into(),
                tool_input: input.clone(),
                status,
                result,
            })
        };
        if ask {
            self.sink.emit_kind(tool(ToolStatus::Pending, None));
            let request_id = format!("req_echo_{}_{n}", self.req.session_id);
            if let Ok(mut p) = self.pending.lock() {
                *p = Some(request_id.clone());
            }
            self.sink.emit_kind(EventKind::InputRequired(InputRequest {
                request_id,
                kind: "tool_use".into(),
                tool: Some("echo".into()),
                message: "Allow the echo tool to run?".into(),
                options: vec![
                    DecisionKind::ApproveOnce,
                    DecisionKind::ApproveSession,
                    DecisionKind::Deny,
                ],
                tool_input: Some(input.clone()),
            }));
            let decision = loop {
                match self.decisions.recv_timeout(Duration::from_millis(20)) {
                    Ok(d) => break d,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.cancelled.load(Ordering::SeqCst) {
                            return Err(Stop::Cancelled);
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return Err(Stop::Cancelled),
                }
            };
            if decision.decision == DecisionKind::Deny {
                let why = decision.message.unwrap_or_else(|| "denied".into());
                self.sink.emit_kind(tool(
                    ToolStatus::Error,
                    Some(json!(format!("denied: {why}"))),
                ));
                return Ok(());
            }
        }
        self.sink.emit_kind(tool(ToolStatus::Running, None));
        self.pause()?;
        self.sink.emit_kind(tool(
            ToolStatus::Completed,
            Some(json!(self.req.text.chars().count())),
        ));
        Ok(())
    }
}

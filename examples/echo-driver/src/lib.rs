//! `echo`: a third-party Karta driver plugin, built against `karta-plugin-api` alone.
//!
//! It answers any message by streaming it back: a step, several text deltas, one `echo` tool
//! call with its result, and `done` with token usage. It is the drop-in example for driver authors
//! and the platform's test driver.
//!
//! Settings (the `settings` table of its `[[drivers]]` entry):
//! - `delay_ms` (default 5): pause between events, to make streaming observable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use karta_plugin_api::{
    export_driver, Decision, Discovery, Done, Driver, EventKind, Part, Sink, ToolStatus, ToolUse,
    Turn, TurnRequest, TurnStatus, Usage,
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
}

impl Turn for EchoTurn {
    fn resolve_input(&self, request_id: &str, _decision: Decision) -> Result<(), String> {
        Err(format!("echo never asks for input (request {request_id})"))
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
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

    fn discover(&self, _app_dir: &Path) -> Result<Discovery, String> {
        Ok(Discovery {
            agents: vec![karta_plugin_api::AgentInfo {
                name: "default".into(),
                description: "Echoes every message back".into(),
            }],
            skills: vec![],
            default_agent: Some("default".into()),
        })
    }

    fn start_turn(&self, req: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let delay = self.delay;
        thread::Builder::new()
            .name("echo-turn".into())
            .spawn(move || run_turn(req, sink, flag, delay))
            .map_err(|e| format!("cannot start echo thread: {e}"))?;
        Ok(Box::new(EchoTurn { cancelled }))
    }
}

fn run_turn(req: TurnRequest, sink: Sink, cancelled: Arc<AtomicBool>, delay: Duration) {
    let pause = || thread::sleep(delay);
    if req.harness_session_id.is_none() {
        sink.emit_kind(EventKind::HarnessSession {
            harness_session_id: format!("echo-{}", req.session_id),
        });
    }
    sink.emit_kind(EventKind::StepStart {
        step_index: 0,
        description: Some("echo the message".into()),
    });
    let reply = format!("echo: {}", req.text);
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    let mut output_tokens = 0;
    for w in &words {
        if cancelled.load(Ordering::SeqCst) {
            sink.emit_kind(EventKind::Done(Done {
                usage: Usage::new(
                    req.text.split_whitespace().count() as u64,
                    output_tokens,
                    0,
                    0,
                ),
                status: TurnStatus::Cancelled,
                stop_reason: Some("cancelled".into()),
                message: None,
            }));
            return;
        }
        pause();
        output_tokens += 1;
        sink.emit_kind(EventKind::Text {
            part: Part::Text {
                text: (*w).to_string(),
            },
        });
    }
    let tool_use_id = format!("toolu_echo_{}", req.session_id);
    let input = json!({ "text": req.text });
    sink.emit_kind(EventKind::ToolUse(ToolUse {
        tool_use_id: tool_use_id.clone(),
        tool_name: "echo".into(),
        tool_input: input.clone(),
        status: ToolStatus::Running,
        result: None,
    }));
    pause();
    sink.emit_kind(EventKind::ToolUse(ToolUse {
        tool_use_id,
        tool_name: "echo".into(),
        tool_input: input,
        status: ToolStatus::Completed,
        result: Some(json!(req.text.chars().count())),
    }));
    sink.emit_kind(EventKind::StepFinish {
        step_index: 0,
        result: Some("echoed".into()),
    });
    sink.emit_kind(EventKind::Done(Done {
        usage: Usage::new(
            req.text.split_whitespace().count() as u64,
            output_tokens,
            0,
            0,
        ),
        status: TurnStatus::Completed,
        stop_reason: Some("end_turn".into()),
        message: None,
    }));
}

//! One long-lived `claude` process per active session, and the mapping from its stream-json
//! output to Karta events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use karta_plugin_api::process::{spawn_idle_reaper, string_setting, Warm, WarmMap};
use karta_plugin_api::{
    Decision, DecisionKind, Discovery, Done, Driver, ErrorInfo, Event, EventKind, InputRequest,
    Part, Sink, ToolStatus, ToolUse, Turn, TurnRequest, TurnStatus, Usage,
};
use serde_json::{json, Value};

use crate::discover;

/// Seconds a warm process may sit idle before it is stopped (`harness.claude.idle_timeout_seconds`).
const DEFAULT_IDLE_SECONDS: u64 = 600;
/// Model-call retries the CLI may make (its own default waits minutes).
const DEFAULT_MAX_RETRIES: u64 = 2;
/// Lines of stderr kept to explain a crash.
const STDERR_TAIL: usize = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Claude Code driver.
pub struct ClaudeDriver {
    inner: Arc<Inner>,
}

struct Inner {
    command: Option<String>,
    data_dir: Option<PathBuf>,
    max_retries: u64,
    procs: WarmMap<Proc>,
}

impl ClaudeDriver {
    /// Settings: `command` (path or name of the CLI), `max_retries` (default 2); the host adds
    /// `data_dir`, where `karta harness install claude-code` puts the CLI.
    pub fn from_settings(settings: &Value) -> Result<Self, String> {
        let command = string_setting(settings, "command")?;
        let max_retries = match settings.get("max_retries") {
            None => DEFAULT_MAX_RETRIES,
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("settings.max_retries must be a non-negative integer, got {v}")
            })?,
        };
        let data_dir = string_setting(settings, "data_dir")?.map(PathBuf::from);
        let inner = Arc::new(Inner {
            command,
            data_dir,
            max_retries,
            procs: Arc::new(Mutex::new(HashMap::new())),
        });
        spawn_idle_reaper("claude-reaper", &inner.procs)
            .map_err(|e| format!("cannot start the idle reaper: {e}"))?;
        Ok(Self { inner })
    }
}

impl Inner {
    fn find_command(&self) -> Result<PathBuf, String> {
        karta_plugin_api::cli::locate(
            self.command.as_deref(),
            self.data_dir.as_deref(),
            "claude-code",
            "claude",
            "Claude Code",
        )
    }

    fn remove_if(&self, session_id: &str, proc: &Arc<Proc>) {
        let mut procs = lock(&self.procs);
        if procs.get(session_id).is_some_and(|p| Arc::ptr_eq(p, proc)) {
            procs.remove(session_id);
        }
    }
}

impl Warm for Proc {
    /// Retires the process if it is idle past its timeout; a retired process takes no turn
    /// (checked under the same lock `start_turn` claims it with).
    fn retire_if_idle(&self) -> bool {
        let mut s = lock(&self.state);
        let idle = s.alive && s.turn.is_none() && s.last_used.elapsed() > self.idle_timeout;
        if idle {
            s.alive = false;
        }
        idle
    }

    fn stop(&self) {
        Proc::stop(self);
    }
}

/// A running turn inside a process.
struct ActiveTurn {
    /// What started it (to start it again in a fresh conversation if the old one is gone).
    request: TurnRequest,
    sink: Sink,
    thinking: bool,
    step: u32,
    step_open: bool,
    announced: bool,
    /// tool_use id -> (name, input)
    tools: HashMap<String, (String, Value)>,
    /// control request id -> (tool, input)
    pending: HashMap<String, (String, Value)>,
    /// Assistant messages whose text arrived as deltas.
    streamed: HashSet<String>,
    current_message: Option<String>,
    cancelled: Arc<AtomicBool>,
}

struct State {
    turn: Option<ActiveTurn>,
    last_used: Instant,
    /// The CLI reports cost cumulatively per process, in micro-cents.
    cost_total: u64,
    approved: HashSet<String>,
    alive: bool,
}

/// One `claude` process serving one session.
struct Proc {
    session_id: String,
    agent: String,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    state: Mutex<State>,
    idle_timeout: Duration,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    driver: Weak<Inner>,
}

fn idle_timeout(req: &TurnRequest) -> Duration {
    let secs = req.app_config["harness"]["claude"]["idle_timeout_seconds"]
        .as_u64()
        .unwrap_or(DEFAULT_IDLE_SECONDS);
    Duration::from_secs(secs)
}

/// The harness's own HOME, beside (not inside) the workspace so its files stay out of reach of
/// the agent's file tools; the same path on every start, so `--resume` finds the transcript.
fn harness_home(workspace: &str) -> PathBuf {
    PathBuf::from(format!("{}.home", workspace.trim_end_matches('/')))
}

impl Proc {
    fn spawn(inner: &Arc<Inner>, req: &TurnRequest) -> Result<Arc<Proc>, String> {
        let cmd = inner.find_command()?;
        let home = harness_home(&req.workspace_dir);
        std::fs::create_dir_all(home.join(".claude"))
            .map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let mut c = Command::new(&cmd);
        c.args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-mode",
            "default",
            "--permission-prompt-tool",
            "stdio",
        ]);
        if let Some(id) = &req.harness_session_id {
            c.args(["--resume", id]);
        }
        if req.agent != "default" {
            c.args(["--agent", &req.agent]);
        }
        // A scrubbed environment: only what the harness needs and what the platform injects.
        c.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", inner.max_retries.to_string())
            .envs(&req.env)
            .current_dir(&req.workspace_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = karta_plugin_api::process::spawn_tied(c)
            .map_err(|e| format!("cannot start Claude Code ({}): {e}", cmd.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let proc = Arc::new(Proc {
            session_id: req.session_id.clone(),
            agent: req.agent.clone(),
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            state: Mutex::new(State {
                turn: None,
                last_used: Instant::now(),
                cost_total: 0,
                approved: HashSet::new(),
                alive: true,
            }),
            idle_timeout: idle_timeout(req),
            stderr_tail: tail.clone(),
            driver: Arc::downgrade(inner),
        });
        thread::Builder::new()
            .name("claude-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut t = lock(&tail);
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
            .map_err(|e| e.to_string())?;
        let reader = proc.clone();
        thread::Builder::new()
            .name("claude-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        reader.handle(v);
                    }
                }
                reader.exited();
            })
            .map_err(|e| e.to_string())?;
        Ok(proc)
    }

    fn write(&self, v: &Value) -> Result<(), String> {
        let mut stdin = lock(&self.stdin);
        let w = stdin.as_mut().ok_or("the harness input is closed")?;
        writeln!(w, "{v}")
            .and_then(|_| w.flush())
            .map_err(|e| format!("cannot write to Claude Code: {e}"))
    }

    /// Ends the process: close its input, then kill it if it lingers.
    fn stop(&self) {
        lock(&self.stdin).take();
        let mut child = lock(&self.child);
        for _ in 0..20 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn kill(&self) {
        let _ = lock(&self.child).kill();
    }

    /// The process's output ended: finish the turn it was running, if any.
    fn exited(self: &Arc<Self>) {
        let status = lock(&self.child).wait().ok();
        let turn = {
            let mut s = lock(&self.state);
            s.alive = false;
            s.turn.take()
        };
        if let Some(t) = turn {
            if t.cancelled.load(Ordering::SeqCst) {
                t.sink.emit_kind(EventKind::Done(Done {
                    status: TurnStatus::Cancelled,
                    stop_reason: Some("cancelled".into()),
                    ..Done::default()
                }));
            } else {
                let tail: Vec<String> = lock(&self.stderr_tail).iter().cloned().collect();
                let why = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".into());
                t.sink.emit_kind(EventKind::Error(ErrorInfo {
                    code: "harness_crashed".into(),
                    message: format!(
                        "Claude Code exited in the middle of the turn ({why}){}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", tail.join(" | "))
                        }
                    ),
                    provider: None,
                }));
                t.sink.emit_kind(EventKind::Done(Done {
                    status: TurnStatus::Failed,
                    ..Done::default()
                }));
            }
        }
        if let Some(d) = self.driver.upgrade() {
            d.remove_if(&self.session_id, self);
        }
    }

    fn handle(self: &Arc<Self>, v: Value) {
        let mut s = lock(&self.state);
        let st = &mut *s;
        let Some(turn) = st.turn.as_mut() else {
            return;
        };
        if lost_conversation(&v) && turn.request.harness_session_id.is_some() {
            // The harness died before it saved the conversation it was asked to resume (e.g.
            // killed during its first turn): start a fresh one and run the turn there.
            if let Some(turn) = st.turn.take() {
                drop(s);
                self.restart_fresh(turn);
            }
            return;
        }
        match v["type"].as_str() {
            Some("system") => match v["subtype"].as_str() {
                Some("init") if !turn.announced => {
                    if let Some(id) = v["session_id"].as_str() {
                        turn.sink.emit_kind(EventKind::HarnessSession {
                            harness_session_id: id.to_string(),
                        });
                    }
                    turn.announced = true;
                }
                Some("api_retry") | Some("permission_denied") => {
                    turn.sink.emit(&Event::new(EventKind::System(v.clone())));
                }
                _ => {}
            },
            Some("stream_event") => stream_event(turn, &v["event"]),
            Some("assistant") => {
                let id = v["message"]["id"].as_str().unwrap_or_default().to_string();
                let synthetic = v["message"]["model"] == "<synthetic>";
                for b in v["message"]["content"].as_array().into_iter().flatten() {
                    match b["type"].as_str() {
                        Some("tool_use") => {
                            let tid = b["id"].as_str().unwrap_or_default().to_string();
                            let name = b["name"].as_str().unwrap_or_default().to_string();
                            turn.tools
                                .insert(tid.clone(), (name.clone(), b["input"].clone()));
                            turn.sink.emit(&Event::new(EventKind::ToolUse(ToolUse {
                                tool_use_id: tid,
                                tool_name: name,
                                tool_input: b["input"].clone(),
                                status: ToolStatus::Running,
                                result: None,
                            })));
                        }
                        Some("text") if !synthetic && !turn.streamed.contains(&id) => {
                            turn.sink.emit_kind(EventKind::Text {
                                part: Part::Text {
                                    text: b["text"].as_str().unwrap_or_default().to_string(),
                                },
                            });
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for b in v["message"]["content"].as_array().into_iter().flatten() {
                    if b["type"] != "tool_result" {
                        continue;
                    }
                    let tid = b["tool_use_id"].as_str().unwrap_or_default().to_string();
                    let (name, input) = turn.tools.get(&tid).cloned().unwrap_or_default();
                    let result = match &b["content"] {
                        Value::Array(parts) => Value::String(
                            parts
                                .iter()
                                .filter_map(|p| p["text"].as_str())
                                .collect::<Vec<_>>()
                                .join("\n"),
                        ),
                        other => other.clone(),
                    };
                    turn.sink.emit(&Event::new(EventKind::ToolUse(ToolUse {
                        tool_use_id: tid,
                        tool_name: name,
                        tool_input: input,
                        status: if b["is_error"] == true {
                            ToolStatus::Error
                        } else {
                            ToolStatus::Completed
                        },
                        result: Some(result),
                    })));
                }
            }
            Some("control_request") => {
                let rid = v["request_id"].as_str().unwrap_or_default().to_string();
                let r = &v["request"];
                if r["subtype"] != "can_use_tool" {
                    // Nothing else is asked of us with this configuration; answer so it never waits.
                    let _ = self.write(&json!({"type": "control_response", "response": {
                        "subtype": "error", "request_id": rid, "error": "not supported by Karta"}}));
                    return;
                }
                let tool = r["tool_name"].as_str().unwrap_or_default().to_string();
                let input = r["input"].clone();
                if st.approved.contains(&tool) {
                    let _ = self.write(&allow(&rid, &input));
                    return;
                }
                let message = r["description"]
                    .as_str()
                    .map(|d| format!("Allow {tool}: {d}?"))
                    .unwrap_or_else(|| format!("Allow {tool}?"));
                turn.pending
                    .insert(rid.clone(), (tool.clone(), input.clone()));
                turn.sink.emit_kind(EventKind::InputRequired(InputRequest {
                    request_id: rid,
                    kind: "tool_use".into(),
                    tool: Some(tool),
                    message,
                    options: vec![
                        DecisionKind::ApproveOnce,
                        DecisionKind::ApproveSession,
                        DecisionKind::Deny,
                    ],
                    tool_input: Some(input),
                }));
            }
            Some("result") => {
                let u = &v["usage"];
                let n = |k: &str| u[k].as_u64().unwrap_or(0);
                let mut usage = Usage::new(
                    n("input_tokens"),
                    n("output_tokens"),
                    n("cache_read_input_tokens"),
                    n("cache_creation_input_tokens"),
                );
                // USD -> micro-cents (1 USD = 1e8), cumulative per process: report this turn's share.
                let total = (v["total_cost_usd"].as_f64().unwrap_or(0.0) * 1e8)
                    .round()
                    .max(0.0) as u64;
                usage.cost_micro_cents = total.saturating_sub(st.cost_total);
                st.cost_total = total;
                if turn.step_open {
                    turn.sink.emit_kind(EventKind::StepFinish {
                        step_index: turn.step,
                        result: None,
                    });
                }
                let failed = v["is_error"] == true;
                if failed {
                    turn.sink.emit_kind(EventKind::Error(ErrorInfo {
                        code: "model_error".into(),
                        message: v["result"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("the model call failed ({})", v["subtype"])),
                        provider: Some("anthropic".into()),
                    }));
                }
                turn.sink.emit(
                    &Event::new(EventKind::Done(Done {
                        usage,
                        status: if failed {
                            TurnStatus::Failed
                        } else {
                            TurnStatus::Completed
                        },
                        stop_reason: v["stop_reason"].as_str().map(str::to_string),
                        message: None,
                    }))
                    .with_raw(v.clone()),
                );
                st.turn = None;
                st.last_used = Instant::now();
            }
            _ => {}
        }
    }
}

/// `--resume` named a conversation the harness does not have.
fn lost_conversation(v: &Value) -> bool {
    v["type"] == "result"
        && v["is_error"] == true
        && v["errors"].as_array().is_some_and(|e| {
            e.iter().any(|m| {
                m.as_str()
                    .is_some_and(|m| m.contains("No conversation found"))
            })
        })
}

impl Proc {
    fn restart_fresh(self: &Arc<Self>, mut turn: ActiveTurn) {
        let Some(inner) = self.driver.upgrade() else {
            return;
        };
        inner.remove_if(&self.session_id, self);
        let old = self.clone();
        thread::spawn(move || {
            old.stop();
            turn.request.harness_session_id = None;
            turn.announced = false;
            turn.sink.emit(&Event::new(EventKind::System(json!({
                "subtype": "harness_session_lost",
                "message": "the harness had not saved this conversation; a new one was started",
            }))));
            let sink = turn.sink.clone();
            let req = turn.request.clone();
            match Proc::spawn(&inner, &req) {
                Ok(p) => {
                    lock(&inner.procs).insert(p.session_id.clone(), p.clone());
                    lock(&p.state).turn = Some(turn);
                    if let Err(e) = p.write(&user_line(&req.text)) {
                        lock(&p.state).turn.take();
                        p.kill();
                        fail(&sink, e);
                    }
                }
                Err(e) => fail(&sink, e),
            }
        });
    }
}

fn fail(sink: &Sink, message: String) {
    sink.emit_kind(EventKind::Error(ErrorInfo {
        code: "harness_start_failed".into(),
        message,
        provider: None,
    }));
    sink.emit_kind(EventKind::Done(Done {
        status: TurnStatus::Failed,
        ..Done::default()
    }));
}

fn user_line(text: &str) -> Value {
    json!({"type": "user", "session_id": "", "parent_tool_use_id": null,
        "message": {"role": "user", "content": [{"type": "text", "text": text}]}})
}

fn allow(request_id: &str, input: &Value) -> Value {
    json!({"type": "control_response", "response": {"subtype": "success", "request_id": request_id,
        "response": {"behavior": "allow", "updatedInput": input}}})
}

fn stream_event(turn: &mut ActiveTurn, e: &Value) {
    match e["type"].as_str() {
        Some("message_start") => {
            turn.current_message = e["message"]["id"].as_str().map(str::to_string);
            if !turn.step_open {
                turn.sink.emit_kind(EventKind::StepStart {
                    step_index: turn.step,
                    description: None,
                });
                turn.step_open = true;
            }
        }
        Some("content_block_delta") => match e["delta"]["type"].as_str() {
            Some("text_delta") => {
                if let Some(id) = &turn.current_message {
                    turn.streamed.insert(id.clone());
                }
                turn.sink.emit_kind(EventKind::Text {
                    part: Part::Text {
                        text: e["delta"]["text"].as_str().unwrap_or_default().to_string(),
                    },
                });
            }
            Some("thinking_delta") if turn.thinking => {
                turn.sink.emit_kind(EventKind::Reasoning {
                    part: Part::Reasoning {
                        text: e["delta"]["thinking"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    },
                });
            }
            _ => {}
        },
        Some("message_stop") if turn.step_open => {
            turn.sink.emit_kind(EventKind::StepFinish {
                step_index: turn.step,
                result: None,
            });
            turn.step += 1;
            turn.step_open = false;
        }
        _ => {}
    }
}

/// The handle the host holds on a turn. It finds the session's current process each time: the
/// turn may have moved to a new one (see `restart_fresh`).
struct ClaudeTurn {
    inner: Arc<Inner>,
    session_id: String,
    cancelled: Arc<AtomicBool>,
}

impl ClaudeTurn {
    fn proc(&self) -> Option<Arc<Proc>> {
        lock(&self.inner.procs).get(&self.session_id).cloned()
    }
}

impl Turn for ClaudeTurn {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let proc = self.proc().ok_or("the turn has ended")?;
        let mut s = lock(&proc.state);
        let st = &mut *s;
        let turn = st.turn.as_mut().ok_or("the turn has ended")?;
        let (tool, input) = turn
            .pending
            .remove(request_id)
            .ok_or_else(|| format!("no pending request {request_id}"))?;
        let answer = match decision.decision {
            DecisionKind::ApproveOnce => allow(request_id, &input),
            DecisionKind::ApproveSession => {
                st.approved.insert(tool);
                allow(request_id, &input)
            }
            DecisionKind::Deny => {
                json!({"type": "control_response", "response": {"subtype": "success",
                "request_id": request_id, "response": {"behavior": "deny",
                "message": decision.message.unwrap_or_else(|| "The user denied this action.".into())}}})
            }
        };
        drop(s);
        proc.write(&answer)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        // The transcript is saved as it goes; the next turn resumes it in a new process.
        if let Some(p) = self.proc() {
            p.kill();
        }
    }
}

impl Driver for ClaudeDriver {
    fn name(&self) -> String {
        "claude-code".into()
    }

    fn detect(&self, app_dir: &Path) -> u32 {
        discover::detect(app_dir)
    }

    fn discover(&self, app_dir: &Path) -> Result<Discovery, String> {
        discover::discover(app_dir)
    }

    fn start_turn(&self, req: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
        let inner = &self.inner;
        let cancelled = Arc::new(AtomicBool::new(false));
        let active = |sink: Sink| ActiveTurn {
            request: req.clone(),
            sink,
            thinking: req.thinking,
            step: 0,
            step_open: false,
            announced: false,
            tools: HashMap::new(),
            pending: HashMap::new(),
            streamed: HashSet::new(),
            current_message: None,
            cancelled: cancelled.clone(),
        };
        // Claim a live process for the turn under its state lock (the idle reaper retires
        // processes under the same lock), or start one.
        let existing = lock(&inner.procs).get(&req.session_id).cloned();
        let mut sink = Some(sink);
        let mut proc = None;
        if let Some(p) = existing {
            let mut s = lock(&p.state);
            if s.alive && p.agent == req.agent {
                if s.turn.is_some() {
                    return Err("a turn is already running in this session".into());
                }
                s.turn = sink.take().map(active);
                s.last_used = Instant::now();
                drop(s);
                proc = Some(p);
            } else {
                drop(s);
                // Retired, dead, or for another agent: the session resumes in a new process.
                lock(&inner.procs).remove(&req.session_id);
                p.stop();
            }
        }
        let proc = match proc {
            Some(p) => p,
            None => {
                let p = Proc::spawn(inner, &req)?;
                lock(&inner.procs).insert(req.session_id.clone(), p.clone());
                let mut s = lock(&p.state);
                s.turn = sink.take().map(active);
                s.last_used = Instant::now();
                drop(s);
                p
            }
        };
        if let Err(e) = proc.write(&user_line(&req.text)) {
            lock(&proc.state).turn = None;
            lock(&inner.procs).remove(&req.session_id);
            proc.kill();
            return Err(e);
        }
        Ok(Box::new(ClaudeTurn {
            inner: inner.clone(),
            session_id: req.session_id.clone(),
            cancelled,
        }))
    }

    fn end_session(&self, session_id: &str) {
        let p = lock(&self.inner.procs).remove(session_id);
        if let Some(p) = p {
            p.stop();
        }
    }
}

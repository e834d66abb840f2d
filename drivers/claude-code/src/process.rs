//! One long-lived `claude` process per active session: starting it, feeding it, reading it,
//! stopping it. What its lines mean is `protocol`'s business; this file only moves them.
//!
//! Threads per process: a reader (stdout: translates under the state lock, then emits and
//! queues answers with no lock held), a writer (the only one that writes stdin, so a large
//! answer can never block the reader and deadlock both pipes), and a stderr tail.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use karta_driver_api::{
    Capabilities, Decision, Discovery, Done, Driver, DriverInfo, ErrorInfo, Event, EventKind,
    HostContext, HostInfo, Sink, Turn, TurnRequest, TurnStatus,
};
use karta_driver_kit::process::{
    bounded_lines, spawn_idle_reaper, string_setting, Warm, WarmMap, MAX_LINE,
};
use karta_driver_kit::sandbox::{self, Harness, LaunchOptions};
use serde_json::{json, Value};

use crate::discover;
use crate::protocol::{self, Action, SessionState, TurnState};

/// Seconds a warm process may sit idle before it is stopped (`harness.claude.idle_timeout_seconds`).
const DEFAULT_IDLE_SECONDS: u64 = 600;
/// Model-call retries the CLI may make (its own default waits minutes).
const DEFAULT_MAX_RETRIES: u64 = 2;
/// Lines of stderr kept to explain a crash.
const STDERR_TAIL: usize = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The name projects select the driver by.
pub const DRIVER_NAME: &str = "claude-code";

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
    /// Settings: `command` (path or name of the CLI), `max_retries` (default 2). The host's
    /// `data_dir` is where `karta harness install claude-code` puts the CLI.
    pub fn from_settings(ctx: &HostContext, settings: &Value) -> Result<Self, String> {
        let command = string_setting(settings, "command")?;
        let max_retries = match settings.get("max_retries") {
            None => DEFAULT_MAX_RETRIES,
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("settings.max_retries must be a non-negative integer, got {v}")
            })?,
        };
        let data_dir = (!ctx.data_dir.is_empty()).then(|| PathBuf::from(&ctx.data_dir));
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
        karta_driver_kit::cli::locate(
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
    proto: TurnState,
    cancelled: Arc<AtomicBool>,
}

struct State {
    turn: Option<ActiveTurn>,
    last_used: Instant,
    session: SessionState,
    alive: bool,
}

/// One `claude` process serving one session.
struct Proc {
    session_id: String,
    agent: String,
    child: Mutex<Harness>,
    /// Lines for the writer thread; `None` once the input is closed.
    input: Mutex<Option<Sender<Value>>>,
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
        // The home sits beside the workspace, in the tenant's folder; the harness may have left
        // links in it, which the host (root) must not follow.
        let (base, name) = match (home.parent(), home.file_name()) {
            (Some(b), Some(n)) => (b, Path::new(n)),
            _ => return Err(format!("{} has no parent folder", home.display())),
        };
        sandbox::tenant_fs::ensure_dir(base, &name.join(".claude"), req.sandbox.owner())
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
        // The whole environment: only what the harness needs and what the platform injects.
        c.env(
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
        .current_dir(&req.workspace_dir);
        let opts = LaunchOptions {
            workspace: PathBuf::from(&req.workspace_dir),
            home: home.clone(),
            expose_port: None,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        let mut harness = sandbox::launch(&req.sandbox, c, &opts)
            .map_err(|e| format!("cannot start Claude Code ({}): {e}", cmd.display()))?;
        let child = harness.child();
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let proc = Arc::new(Proc {
            session_id: req.session_id.clone(),
            agent: req.agent.clone(),
            child: Mutex::new(harness),
            input: Mutex::new(Some(spawn_writer(stdin)?)),
            state: Mutex::new(State {
                turn: None,
                last_used: Instant::now(),
                session: SessionState::default(),
                alive: true,
            }),
            idle_timeout: idle_timeout(req),
            stderr_tail: tail.clone(),
            driver: Arc::downgrade(inner),
        });
        thread::Builder::new()
            .name("claude-stderr".into())
            .spawn(move || {
                for line in bounded_lines(stderr, MAX_LINE) {
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
                for line in bounded_lines(stdout, MAX_LINE) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        reader.handle(v);
                    }
                }
                reader.exited();
            })
            .map_err(|e| e.to_string())?;
        Ok(proc)
    }

    /// Queues a line for the CLI's input (never blocks on the pipe).
    fn write(&self, v: Value) -> Result<(), String> {
        lock(&self.input)
            .as_ref()
            .ok_or("the harness input is closed")?
            .send(v)
            .map_err(|_| "the harness input is closed".to_string())
    }

    /// Ends the process: close its input, give it two seconds to save and exit, then kill
    /// what is left of its process group (it, or tool processes it left behind).
    fn stop(&self) {
        lock(&self.input).take();
        let mut child = lock(&self.child);
        for _ in 0..20 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        child.kill();
        let _ = child.wait();
    }

    fn kill(&self) {
        lock(&self.child).kill();
    }

    /// The process's output ended: finish the turn it was running, if any.
    fn exited(self: &Arc<Self>) {
        let status = {
            let mut child = lock(&self.child);
            let status = child.wait().ok();
            // Tool processes it started do not outlive it.
            child.kill();
            (status, child.limit_message())
        };
        let (status, limit) = status;
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
                let why = limit.unwrap_or_else(|| {
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into())
                });
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

    /// One output line: translated under the state lock; events emitted and answers queued
    /// after it is released, so a host that is slow to take events never blocks a decision.
    fn handle(self: &Arc<Self>, v: Value) {
        let mut s = lock(&self.state);
        let st = &mut *s;
        let Some(turn) = st.turn.as_mut() else {
            return;
        };
        if protocol::lost_conversation(&v) && turn.request.harness_session_id.is_some() {
            // The harness died before it saved the conversation it was asked to resume (e.g.
            // killed during its first turn): start a fresh one and run the turn there.
            if let Some(turn) = st.turn.take() {
                drop(s);
                self.restart_fresh(turn);
            }
            return;
        }
        let actions = protocol::on_line(&mut turn.proto, &mut st.session, &v);
        let sink = turn.sink.clone();
        let ended = actions.contains(&Action::Ended);
        if ended {
            st.turn = None;
            st.last_used = Instant::now();
        }
        drop(s);
        // A turn in which the sandbox refused memory or processes says so, and the harness is
        // replaced before the next turn (whatever is left of the runaway goes with it).
        let limit = if ended {
            lock(&self.child).limit_message()
        } else {
            None
        };
        if limit.is_some() {
            lock(&self.state).alive = false;
        }
        for a in actions {
            match a {
                Action::Emit(e) => {
                    if let (Some(msg), EventKind::Done(_)) = (&limit, &e.kind) {
                        sink.emit_kind(EventKind::Error(ErrorInfo {
                            code: "sandbox_limit".into(),
                            message: format!("{msg}; the harness is restarted for the next turn"),
                            provider: None,
                        }));
                    }
                    sink.emit(&e)
                }
                Action::Reply(line) => {
                    if let Err(e) = self.write(line) {
                        sink.emit_kind(EventKind::Error(ErrorInfo {
                            code: "harness_io".into(),
                            message: e,
                            provider: None,
                        }));
                    }
                }
                Action::Ended => {}
            }
        }
        if limit.is_some() {
            if let Some(d) = self.driver.upgrade() {
                d.remove_if(&self.session_id, self);
            }
            let me = self.clone();
            thread::spawn(move || me.stop());
        }
    }
}

/// The only writer of the CLI's input: lines go out in order, and a slow reader on the other
/// side blocks nobody but this thread. It ends (closing the input) when its sender is dropped.
fn spawn_writer(mut stdin: ChildStdin) -> Result<Sender<Value>, String> {
    let (tx, rx) = channel::<Value>();
    thread::Builder::new()
        .name("claude-stdin".into())
        .spawn(move || {
            for line in rx {
                if writeln!(stdin, "{line}")
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    // The process is gone; its reader reports that.
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the input writer: {e}"))?;
    Ok(tx)
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
            turn.proto.restarted();
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
                    if let Err(e) = p.write(protocol::user_line(&req.text)) {
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
        let answer = {
            let mut s = lock(&proc.state);
            let st = &mut *s;
            let turn = st.turn.as_mut().ok_or("the turn has ended")?;
            turn.proto.decide(&mut st.session, request_id, decision)?
        };
        proc.write(answer)
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
    fn describe(_host: &HostInfo) -> DriverInfo {
        DriverInfo::new(DRIVER_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_capabilities(Capabilities::all())
            .with_settings_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "command": {"type": "string", "minLength": 1,
                        "description": "Path or name of the `claude` CLI"},
                    "max_retries": {"type": "integer", "minimum": 0,
                        "description": "Retries of a model call that failed to connect"}
                }
            }))
    }

    fn new(ctx: &HostContext, settings: &Value) -> Result<Self, String> {
        Self::from_settings(ctx, settings)
    }

    fn name(&self) -> String {
        DRIVER_NAME.into()
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
            proto: TurnState::new(req.thinking),
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
        if let Err(e) = proc.write(protocol::user_line(&req.text)) {
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

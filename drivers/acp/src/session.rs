//! Process I/O: one ACP agent process per Karta session, kept warm between turns. A reader thread
//! routes each line the agent writes (answers to waiting calls, updates and requests to the
//! turn); a writer thread owns its stdin, so no lock is ever held across a write to the agent
//! and a stalled agent can always be killed. Translation is in `protocol.rs`.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use karta_driver_api::{
    Decision, Done, ErrorInfo, Event, EventKind, Sink, Turn, TurnRequest, TurnStatus,
};
use karta_driver_kit::process::{bounded_lines, Warm, MAX_LINE};
use karta_driver_kit::sandbox::{self, Harness, LaunchOptions};
use serde_json::{json, Value};

use crate::fs;
use crate::protocol::{self, Incoming, Permission, RpcError, TurnState};

/// How long `initialize` and `session/new|load` may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cancelled turn may take to end before its agent is stopped.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Lines of the agent's stderr kept for error messages.
const STDERR_LINES: usize = 20;
/// Bytes queued for an agent that does not read its input; past it the agent is stopped.
const MAX_QUEUED: usize = 64 << 20;
/// Approvals a turn may have open at once; more are answered `cancelled`.
const MAX_APPROVALS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (besides what the platform injects).
    pub env: Vec<(String, String)>,
    /// Stopped after this long without a turn.
    pub idle_timeout: Duration,
}

/// One running agent process.
pub struct Agent {
    child: Mutex<Harness>,
    /// Lines for the writer thread (dropped to close the agent's input).
    input: Mutex<Option<Sender<String>>>,
    queued: Arc<AtomicUsize>,
    alive: AtomicBool,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// The agent's session id (ACP's), reported to the host as the harness session.
    acp_session: Mutex<String>,
    /// Whether the agent offers `session/load`.
    offers_load: AtomicBool,
    workspace: PathBuf,
    owner: Option<(u32, u32)>,
    idle_timeout: Duration,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

struct State {
    last_used: Instant,
    /// Claimed by a turn that has not sent its prompt yet (the reaper leaves it alone).
    reserved: bool,
    /// Our calls waiting for their answer.
    calls: HashMap<u64, Sender<Result<Value, RpcError>>>,
    turn: Option<ActiveTurn>,
}

struct ActiveTurn {
    sink: Sink,
    proto: TurnState,
    prompt_id: u64,
    cancelled: Arc<AtomicBool>,
    /// Approvals waiting for a decision: our request id -> (the agent's id, the request).
    approvals: HashMap<String, (Value, Permission)>,
    next_approval: u64,
}

impl Warm for Agent {
    fn retire_if_idle(&self) -> bool {
        let s = lock(&self.state);
        let idle = self.alive.load(Ordering::SeqCst)
            && s.turn.is_none()
            && !s.reserved
            && s.last_used.elapsed() > self.idle_timeout;
        if idle {
            self.alive.store(false, Ordering::SeqCst);
        }
        idle
    }

    fn stop(&self) {
        Agent::stop(self);
    }
}

/// Why a turn could not use an agent.
enum PromptError {
    /// The agent is gone (a new one may be started).
    Dead,
}

fn spawn_writer(
    mut stdin: ChildStdin,
    queued: Arc<AtomicUsize>,
) -> std::io::Result<Sender<String>> {
    let (tx, rx) = channel::<String>();
    std::thread::Builder::new()
        .name("acp-writer".into())
        .spawn(move || {
            for line in rx {
                let n = line.len() + 1;
                let ok = stdin
                    .write_all(line.as_bytes())
                    .and_then(|_| stdin.write_all(b"\n"))
                    .and_then(|_| stdin.flush());
                queued.fetch_sub(n, Ordering::SeqCst);
                if ok.is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

impl Agent {
    /// Starts the agent for a turn's session and runs `initialize`.
    fn spawn(
        launch: &Launch,
        req: &TurnRequest,
        cancelled: &AtomicBool,
    ) -> Result<Arc<Agent>, String> {
        let workspace = PathBuf::from(&req.workspace_dir);
        let home = PathBuf::from(format!("{}.home", req.workspace_dir.trim_end_matches('/')));
        let (base, name) = match (home.parent(), home.file_name()) {
            (Some(b), Some(n)) => (b, Path::new(n)),
            _ => return Err(format!("{} has no parent folder", home.display())),
        };
        sandbox::tenant_fs::ensure_dir(base, name, req.sandbox.owner())
            .map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let mut c = Command::new(&launch.program);
        c.args(&launch.args)
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .envs(
                launch
                    .env
                    .iter()
                    .map(|(k, v)| (k, protocol::expand(v, &req.env))),
            )
            .envs(&req.env)
            .current_dir(&workspace);
        let opts = LaunchOptions {
            workspace: workspace.clone(),
            home,
            expose_port: None,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        let mut harness = sandbox::launch(&req.sandbox, c, &opts).map_err(|e| {
            format!(
                "cannot start the ACP agent ({}): {e}",
                launch.program.display()
            )
        })?;
        let child = harness.child();
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = spawn_writer(stdin, queued.clone()).map_err(|e| e.to_string())?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let agent = Arc::new(Agent {
            child: Mutex::new(harness),
            input: Mutex::new(Some(writer)),
            queued,
            alive: AtomicBool::new(true),
            state: Mutex::new(State {
                last_used: Instant::now(),
                reserved: true,
                calls: HashMap::new(),
                turn: None,
            }),
            next_id: AtomicU64::new(0),
            acp_session: Mutex::new(String::new()),
            offers_load: AtomicBool::new(false),
            workspace,
            owner: req.sandbox.owner(),
            idle_timeout: launch.idle_timeout,
            stderr_tail: tail.clone(),
        });
        std::thread::Builder::new()
            .name("acp-stderr".into())
            .spawn(move || {
                for line in bounded_lines(stderr, 64 << 10) {
                    let mut t = lock(&tail);
                    if t.len() == STDERR_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
            .map_err(|e| e.to_string())?;
        let reader = Arc::downgrade(&agent);
        std::thread::Builder::new()
            .name("acp-reader".into())
            .spawn(move || {
                for line in bounded_lines(stdout, MAX_LINE) {
                    let Some(agent) = reader.upgrade() else {
                        return;
                    };
                    agent.on_line(&line);
                }
                if let Some(agent) = reader.upgrade() {
                    agent.on_exit();
                }
            })
            .map_err(|e| e.to_string())?;
        match agent.call(
            "initialize",
            protocol::initialize_params(env!("CARGO_PKG_VERSION")),
            cancelled,
        ) {
            Ok(r) => {
                agent
                    .offers_load
                    .store(protocol::offers_load(&r), Ordering::SeqCst);
                Ok(agent)
            }
            Err(e) => {
                agent.stop();
                Err(format!("the ACP agent did not initialize: {e}"))
            }
        }
    }

    /// Claims a warm agent for a turn (false when it is retired, busy or claimed).
    fn claim(&self) -> bool {
        let mut s = lock(&self.state);
        let free = self.alive.load(Ordering::SeqCst) && s.turn.is_none() && !s.reserved;
        if free {
            s.reserved = true;
            s.last_used = Instant::now();
        }
        free
    }

    /// Queues a line for the agent; never blocks. An agent that stops reading its input while
    /// more than [`MAX_QUEUED`] bytes wait is stopped.
    fn send(&self, line: String) -> Result<(), String> {
        let n = line.len() + 1;
        if self.queued.fetch_add(n, Ordering::SeqCst) + n > MAX_QUEUED {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            self.stop();
            return Err("the ACP agent stopped reading its input".into());
        }
        let sent = lock(&self.input)
            .as_ref()
            .map(|tx| tx.send(line).is_ok())
            .unwrap_or(false);
        if sent {
            Ok(())
        } else {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            Err("the agent's input is closed".into())
        }
    }

    /// Sends a request and waits for its answer (giving up on a cancel).
    fn call(&self, method: &str, params: Value, cancelled: &AtomicBool) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        lock(&self.state).calls.insert(id, tx);
        if let Err(e) = self.send(protocol::request(id, method, params)) {
            lock(&self.state).calls.remove(&id);
            return Err(e);
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let slice =
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(slice) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => return Err(format!("{method}: {} (code {})", e.message, e.code)),
                Err(RecvTimeoutError::Timeout)
                    if Instant::now() < deadline && !cancelled.load(Ordering::SeqCst) => {}
                Err(_) => {
                    lock(&self.state).calls.remove(&id);
                    if cancelled.load(Ordering::SeqCst) {
                        return Err(format!("{method}: cancelled"));
                    }
                    return Err(format!(
                        "{method}: no answer from the agent{}",
                        self.stderr()
                    ));
                }
            }
        }
    }

    fn stderr(&self) -> String {
        let t = lock(&self.stderr_tail);
        if t.is_empty() {
            String::new()
        } else {
            format!(
                "; its last output: {}",
                t.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }

    fn on_line(self: &Arc<Self>, line: &str) {
        let msg = match protocol::parse_line(line) {
            Ok(m) => m,
            // Not protocol (a stray print): kept with stderr for error messages.
            Err(_) => {
                let mut t = lock(&self.stderr_tail);
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line.chars().take(500).collect());
                return;
            }
        };
        match msg {
            Incoming::Response { id, result } => {
                let Some(id) = id.as_u64() else { return };
                let turn = {
                    let mut s = lock(&self.state);
                    if let Some(tx) = s.calls.remove(&id) {
                        let _ = tx.send(result);
                        return;
                    }
                    if s.turn.as_ref().is_none_or(|t| t.prompt_id != id) {
                        return;
                    }
                    s.last_used = Instant::now();
                    s.turn.take()
                };
                // Events go out with no lock held: a full host queue only slows this thread.
                if let Some(t) = turn {
                    let cancelled = t.cancelled.load(Ordering::SeqCst);
                    let done = match result {
                        Ok(r) => protocol::done(&r, cancelled),
                        Err(e) => {
                            t.sink.emit_kind(EventKind::Error(protocol::rpc_error(
                                "session/prompt",
                                &e,
                            )));
                            Done {
                                status: if cancelled {
                                    TurnStatus::Cancelled
                                } else {
                                    TurnStatus::Failed
                                },
                                ..Done::default()
                            }
                        }
                    };
                    finish(&t.sink, done);
                }
            }
            Incoming::Notification { method, params } => {
                if method != "session/update" {
                    return;
                }
                let out = {
                    let mut s = lock(&self.state);
                    s.turn.as_mut().map(|t| {
                        (
                            t.sink.clone(),
                            protocol::update_events(&params, &mut t.proto),
                        )
                    })
                };
                if let Some((sink, events)) = out {
                    for ev in events {
                        sink.emit(&ev);
                    }
                }
            }
            Incoming::Request { id, method, params } => {
                let reply = match method.as_str() {
                    "session/request_permission" => match self.ask(&id, &params) {
                        Ok(Some((sink, request))) => {
                            sink.emit(&Event::new(EventKind::InputRequired(request)));
                            return;
                        }
                        Ok(None) => protocol::response(&id, protocol::cancelled_outcome()),
                        Err(e) => protocol::error_response(&id, -32602, &e),
                    },
                    "fs/read_text_file" | "fs/write_text_file" => {
                        match fs::serve(&method, &params, &self.workspace, self.owner) {
                            Ok(v) => protocol::response(&id, v),
                            Err((code, m)) => protocol::error_response(&id, code, &m),
                        }
                    }
                    other => protocol::error_response(
                        &id,
                        -32601,
                        &format!("{other} is not offered by this client"),
                    ),
                };
                let _ = self.send(reply);
            }
        }
    }

    /// Records a permission request for the running turn; `None` when there is no turn to ask
    /// (or it is cancelled, or has too many open), and the request is answered `cancelled`.
    fn ask(
        &self,
        id: &Value,
        params: &Value,
    ) -> Result<Option<(Sink, karta_driver_api::InputRequest)>, String> {
        let mut s = lock(&self.state);
        let Some(t) = s.turn.as_mut() else {
            return Ok(None);
        };
        if t.cancelled.load(Ordering::SeqCst) || t.approvals.len() >= MAX_APPROVALS {
            return Ok(None);
        }
        t.next_approval += 1;
        let rid = format!("req_acp_{}_{}", t.prompt_id, t.next_approval);
        let p = protocol::permission(params, &rid)?;
        let request = p.request.clone();
        t.approvals.insert(rid, (id.clone(), p));
        Ok(Some((t.sink.clone(), request)))
    }

    fn on_exit(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let turn = {
            let mut s = lock(&self.state);
            s.calls.clear();
            s.turn.take()
        };
        *lock(&self.input) = None;
        if let Some(t) = turn {
            if t.cancelled.load(Ordering::SeqCst) {
                finish(
                    &t.sink,
                    Done {
                        status: TurnStatus::Cancelled,
                        ..Done::default()
                    },
                );
            } else {
                t.sink.emit_kind(EventKind::Error(ErrorInfo {
                    code: "harness_crashed".into(),
                    message: format!("the ACP agent exited mid-turn{}", self.stderr()),
                    provider: None,
                }));
                finish(
                    &t.sink,
                    Done {
                        status: TurnStatus::Failed,
                        ..Done::default()
                    },
                );
            }
        }
        let _ = lock(&self.child).try_wait();
    }

    /// Sends the prompt of a turn that claimed this agent; its events and `done` go to `sink`.
    /// Returns the prompt's id.
    fn prompt(
        &self,
        text: &str,
        thinking: bool,
        sink: &Sink,
        cancelled: &Arc<AtomicBool>,
    ) -> Result<u64, PromptError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let session = lock(&self.acp_session).clone();
        let mut s = lock(&self.state);
        s.reserved = false;
        if !self.alive.load(Ordering::SeqCst) {
            return Err(PromptError::Dead);
        }
        // Queued under the state lock, as a cancel's lines are: a cancel that can see this
        // turn is queued after its prompt.
        self.send(protocol::request(
            id,
            "session/prompt",
            protocol::prompt_params(&session, text),
        ))
        .map_err(|_| PromptError::Dead)?;
        s.turn = Some(ActiveTurn {
            sink: sink.clone(),
            proto: TurnState::new(thinking),
            prompt_id: id,
            cancelled: cancelled.clone(),
            approvals: HashMap::new(),
            next_approval: 0,
        });
        Ok(id)
    }

    fn resolve(&self, prompt_id: u64, request_id: &str, decision: &Decision) -> Result<(), String> {
        let (agent_id, outcome) = {
            let mut s = lock(&self.state);
            let t = s
                .turn
                .as_mut()
                .filter(|t| t.prompt_id == prompt_id)
                .ok_or("the turn has ended")?;
            let (_, p) = t
                .approvals
                .get(request_id)
                .ok_or_else(|| format!("no pending request {request_id}"))?;
            // Checked before the request is taken, so a refused decision can be retried.
            let outcome = protocol::permission_outcome(p, &decision.decision)?;
            let (agent_id, _) = t
                .approvals
                .remove(request_id)
                .ok_or_else(|| format!("no pending request {request_id}"))?;
            (agent_id, outcome)
        };
        self.send(protocol::response(&agent_id, outcome))
    }

    /// Cancels the turn with `prompt_id`, if it is still the one running.
    fn cancel(self: &Arc<Self>, prompt_id: u64) {
        {
            let mut s = lock(&self.state);
            let Some(t) = s.turn.as_mut().filter(|t| t.prompt_id == prompt_id) else {
                return;
            };
            t.cancelled.store(true, Ordering::SeqCst);
            // ACP: the client answers open permission requests of a cancelled turn
            // `cancelled`.
            for (_, (id, _)) in t.approvals.drain() {
                let _ = self.send(protocol::response(&id, protocol::cancelled_outcome()));
            }
            let session = lock(&self.acp_session).clone();
            let _ = self.send(protocol::notification(
                "session/cancel",
                json!({ "sessionId": session }),
            ));
        }
        // An agent that ignores the cancel is stopped; the turn then ends `cancelled`.
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("acp-cancel".into())
            .spawn(move || {
                std::thread::sleep(CANCEL_GRACE);
                if let Some(a) = me.upgrade() {
                    let still = lock(&a.state)
                        .turn
                        .as_ref()
                        .is_some_and(|t| t.prompt_id == prompt_id);
                    if still {
                        a.stop();
                    }
                }
            });
    }

    /// Stops the process (the reader then ends any turn). Takes no lock a writer or the reader
    /// could hold for long.
    pub fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        lock(&self.child).kill();
        *lock(&self.input) = None;
    }
}

fn finish(sink: &Sink, done: Done) {
    sink.emit_kind(EventKind::StepFinish {
        step_index: 0,
        result: done.stop_reason.clone(),
        model: None,
        provider: None,
        usage: None,
    });
    sink.emit_kind(EventKind::Done(done));
}

fn failed(sink: &Sink, message: String, cancelled: bool) {
    if cancelled {
        finish(
            sink,
            Done {
                status: TurnStatus::Cancelled,
                ..Done::default()
            },
        );
        return;
    }
    sink.emit_kind(EventKind::Error(ErrorInfo {
        code: "harness_unavailable".into(),
        message,
        provider: None,
    }));
    finish(
        sink,
        Done {
            status: TurnStatus::Failed,
            ..Done::default()
        },
    );
}

/// The handle the host holds on a turn.
struct AcpTurn {
    /// The agent and the prompt's id, once the prompt is out.
    running: Mutex<Option<(Arc<Agent>, u64)>>,
    cancelled: Arc<AtomicBool>,
}

struct TurnRef(Arc<AcpTurn>);

impl Turn for TurnRef {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let (agent, id) = lock(&self.0.running)
            .clone()
            .ok_or("the turn has not started")?;
        agent.resolve(id, request_id, &decision)
    }

    fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        if let Some((agent, id)) = lock(&self.0.running).clone() {
            agent.cancel(id);
        }
    }
}

/// Runs one turn: finds or starts the session's agent, opens or loads its ACP session, and
/// sends the prompt. Returns at once; the work happens on a thread of its own.
pub fn start(
    agents: crate::Agents,
    launch: Result<Launch, String>,
    req: TurnRequest,
    sink: Sink,
) -> Box<dyn Turn> {
    let turn = Arc::new(AcpTurn {
        running: Mutex::new(None),
        cancelled: Arc::new(AtomicBool::new(false)),
    });
    let handle = turn.clone();
    let thread_sink = sink.clone();
    let spawned = std::thread::Builder::new()
        .name("acp-turn".into())
        .spawn(move || {
            if let Err(message) = run(&agents, launch, &req, &thread_sink, &turn) {
                failed(&thread_sink, message, turn.cancelled.load(Ordering::SeqCst));
            }
        });
    if let Err(e) = spawned {
        failed(
            &sink,
            format!("cannot start a thread for the turn: {e}"),
            false,
        );
    }
    Box::new(TurnRef(handle))
}

/// A new agent for the session, with its ACP session opened (or loaded, to continue the
/// conversation, when the agent offers it and the session had one).
fn fresh_agent(
    agents: &crate::Agents,
    launch: &Result<Launch, String>,
    req: &TurnRequest,
    cancelled: &AtomicBool,
) -> Result<Arc<Agent>, String> {
    let launch = launch.as_ref().map_err(Clone::clone)?;
    let agent = Agent::spawn(launch, req, cancelled)?;
    let resumed = match (
        &req.harness_session_id,
        agent.offers_load.load(Ordering::SeqCst),
    ) {
        (Some(id), true) => agent
            .call(
                "session/load",
                protocol::session_params(&req.workspace_dir, Some(id)),
                cancelled,
            )
            .map(|_| id.clone())
            .ok(),
        _ => None,
    };
    let session = match resumed {
        Some(id) => id,
        None => {
            let r = agent
                .call(
                    "session/new",
                    protocol::session_params(&req.workspace_dir, None),
                    cancelled,
                )
                .inspect_err(|_| agent.stop())?;
            match r["sessionId"].as_str() {
                Some(s) => s.to_string(),
                None => {
                    agent.stop();
                    return Err("session/new returned no sessionId".into());
                }
            }
        }
    };
    *lock(&agent.acp_session) = session;
    if let Some(old) = lock(agents).insert(req.session_id.clone(), agent.clone()) {
        if !Arc::ptr_eq(&old, &agent) {
            old.stop();
        }
    }
    Ok(agent)
}

fn run(
    agents: &crate::Agents,
    launch: Result<Launch, String>,
    req: &TurnRequest,
    sink: &Sink,
    turn: &Arc<AcpTurn>,
) -> Result<(), String> {
    let cancelled = &turn.cancelled;
    let warm = lock(agents).get(&req.session_id).cloned();
    let mut agent = match warm.filter(|a| a.claim()) {
        Some(a) => a,
        None => fresh_agent(agents, &launch, req, cancelled)?,
    };
    sink.emit_kind(EventKind::HarnessSession {
        harness_session_id: lock(&agent.acp_session).clone(),
    });
    if cancelled.load(Ordering::SeqCst) {
        lock(&agent.state).reserved = false;
        failed(sink, String::new(), true);
        return Ok(());
    }
    sink.emit_kind(EventKind::StepStart {
        step_index: 0,
        description: None,
    });
    let id = match agent.prompt(&req.text, req.thinking, sink, cancelled) {
        Ok(id) => id,
        // The warm agent died since it was claimed: once more on a new one.
        Err(PromptError::Dead) => {
            agent = fresh_agent(agents, &launch, req, cancelled)?;
            agent
                .prompt(&req.text, req.thinking, sink, cancelled)
                .map_err(|_| format!("the ACP agent stopped before the prompt{}", agent.stderr()))?
        }
    };
    *lock(&turn.running) = Some((agent.clone(), id));
    // A cancel that came while the prompt was being sent.
    if cancelled.load(Ordering::SeqCst) {
        agent.cancel(id);
    }
    Ok(())
}

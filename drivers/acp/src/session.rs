//! Process I/O: one ACP agent process per Karta session, kept warm between turns, with a reader
//! thread that routes each line (responses to waiting calls, updates and requests to the turn).
//! Translation is in `protocol.rs`.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
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
    input: Mutex<Option<ChildStdin>>,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// The agent's session id (ACP's), reported to the host as the harness session.
    pub acp_session: Mutex<String>,
    /// Whether the agent offers `session/load`.
    pub offers_load: AtomicBool,
    workspace: PathBuf,
    owner: Option<(u32, u32)>,
    idle_timeout: Duration,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

struct State {
    alive: bool,
    last_used: Instant,
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
        let mut s = lock(&self.state);
        let idle = s.alive && s.turn.is_none() && s.last_used.elapsed() > self.idle_timeout;
        if idle {
            s.alive = false;
        }
        idle
    }

    fn stop(&self) {
        Agent::stop(self);
    }
}

impl Agent {
    /// Starts the agent for a turn's session and runs `initialize`.
    pub fn spawn(launch: &Launch, req: &TurnRequest) -> Result<Arc<Agent>, String> {
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
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let agent = Arc::new(Agent {
            child: Mutex::new(harness),
            input: Mutex::new(Some(stdin)),
            state: Mutex::new(State {
                alive: true,
                last_used: Instant::now(),
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
        let init = agent.call(
            "initialize",
            protocol::initialize_params(env!("CARGO_PKG_VERSION")),
        );
        match init {
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

    /// Claims the agent for a turn (false when it is retired or busy).
    fn claim(&self) -> bool {
        let s = lock(&self.state);
        s.alive && s.turn.is_none()
    }

    fn write(&self, line: &str) -> Result<(), String> {
        let mut input = lock(&self.input);
        let w = input.as_mut().ok_or("the agent's input is closed")?;
        w.write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .and_then(|_| w.flush())
            .map_err(|e| format!("cannot write to the agent: {e}"))
    }

    /// Sends a request and waits for its answer.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        lock(&self.state).calls.insert(id, tx);
        self.write(&protocol::request(id, method, params))?;
        match rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{method}: {} (code {})", e.message, e.code)),
            Err(_) => {
                lock(&self.state).calls.remove(&id);
                Err(format!(
                    "{method}: no answer from the agent{}",
                    self.stderr()
                ))
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
                let mut s = lock(&self.state);
                if let Some(tx) = s.calls.remove(&id) {
                    let _ = tx.send(result);
                    return;
                }
                let is_prompt = s.turn.as_ref().is_some_and(|t| t.prompt_id == id);
                if is_prompt {
                    let turn = s.turn.take();
                    s.last_used = Instant::now();
                    drop(s);
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
            }
            Incoming::Notification { method, params } => {
                if method != "session/update" {
                    return;
                }
                let mut s = lock(&self.state);
                if let Some(t) = s.turn.as_mut() {
                    for ev in protocol::update_events(&params, &mut t.proto) {
                        t.sink.emit(&ev);
                    }
                }
            }
            Incoming::Request { id, method, params } => {
                let reply = match method.as_str() {
                    "session/request_permission" => {
                        let mut s = lock(&self.state);
                        match s.turn.as_mut() {
                            Some(t) if !t.cancelled.load(Ordering::SeqCst) => {
                                t.next_approval += 1;
                                let rid = format!("req_acp_{}_{}", t.prompt_id, t.next_approval);
                                match protocol::permission(&params, &rid) {
                                    Ok(p) => {
                                        t.sink.emit(&Event::new(EventKind::InputRequired(
                                            p.request.clone(),
                                        )));
                                        t.approvals.insert(rid, (id, p));
                                        return;
                                    }
                                    Err(e) => protocol::error_response(&id, -32602, &e),
                                }
                            }
                            _ => protocol::response(&id, protocol::cancelled_outcome()),
                        }
                    }
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
                let _ = self.write(&reply);
            }
        }
    }

    fn on_exit(&self) {
        let turn = {
            let mut s = lock(&self.state);
            s.alive = false;
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
        let mut child = lock(&self.child);
        let _ = child.try_wait();
    }

    /// Starts a prompt; its events and `done` go to `sink`.
    fn prompt(
        self: &Arc<Self>,
        text: &str,
        thinking: bool,
        sink: Sink,
        cancelled: Arc<AtomicBool>,
    ) -> Result<(), String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let session = lock(&self.acp_session).clone();
        {
            let mut s = lock(&self.state);
            if !s.alive {
                return Err("the ACP agent has stopped".into());
            }
            s.turn = Some(ActiveTurn {
                sink: sink.clone(),
                proto: TurnState::new(thinking),
                prompt_id: id,
                cancelled,
                approvals: HashMap::new(),
                next_approval: 0,
            });
        }
        if let Err(e) = self.write(&protocol::request(
            id,
            "session/prompt",
            protocol::prompt_params(&session, text),
        )) {
            lock(&self.state).turn = None;
            return Err(e);
        }
        // After the prompt is out, so a cancel that follows this event reaches the agent after
        // the prompt it cancels.
        sink.emit_kind(EventKind::StepStart {
            step_index: 0,
            description: None,
        });
        Ok(())
    }

    fn resolve(&self, request_id: &str, decision: &Decision) -> Result<(), String> {
        let (agent_id, p) = {
            let mut s = lock(&self.state);
            let t = s.turn.as_mut().ok_or("the turn has ended")?;
            let (_, p) = t
                .approvals
                .get(request_id)
                .ok_or_else(|| format!("no pending request {request_id}"))?;
            // Checked before the request is taken, so a refused decision can be retried.
            protocol::permission_outcome(p, &decision.decision)?;
            t.approvals
                .remove(request_id)
                .ok_or_else(|| format!("no pending request {request_id}"))?
        };
        let outcome = protocol::permission_outcome(&p, &decision.decision)?;
        self.write(&protocol::response(&agent_id, outcome))
    }

    fn cancel(self: &Arc<Self>) {
        let pending: Vec<Value> = {
            let mut s = lock(&self.state);
            let Some(t) = s.turn.as_mut() else { return };
            t.cancelled.store(true, Ordering::SeqCst);
            t.approvals.drain().map(|(_, (id, _))| id).collect()
        };
        // ACP: the client answers open permission requests of a cancelled turn `cancelled`.
        for id in pending {
            let _ = self.write(&protocol::response(&id, protocol::cancelled_outcome()));
        }
        let session = lock(&self.acp_session).clone();
        let _ = self.write(&protocol::notification(
            "session/cancel",
            json!({ "sessionId": session }),
        ));
        // An agent that ignores the cancel is stopped; the turn then ends `cancelled`.
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("acp-cancel".into())
            .spawn(move || {
                std::thread::sleep(CANCEL_GRACE);
                if let Some(a) = me.upgrade() {
                    if lock(&a.state).turn.is_some() {
                        a.stop();
                    }
                }
            });
    }

    /// Stops the process (the reader then ends any turn).
    pub fn stop(&self) {
        lock(&self.state).alive = false;
        *lock(&self.input) = None;
        lock(&self.child).kill();
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

/// The handle the host holds on a turn.
pub struct AcpTurn {
    agent: Mutex<Option<Arc<Agent>>>,
    cancelled: Arc<AtomicBool>,
}

impl Turn for AcpTurn {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let agent = lock(&self.agent)
            .clone()
            .ok_or("the turn has not started")?;
        agent.resolve(request_id, &decision)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(agent) = lock(&self.agent).clone() {
            agent.cancel();
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
    let cancelled = Arc::new(AtomicBool::new(false));
    let turn = Arc::new(AcpTurn {
        agent: Mutex::new(None),
        cancelled: cancelled.clone(),
    });
    let handle = turn.clone();
    let fail = |sink: &Sink, message: String| {
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
    };
    let thread_sink = sink.clone();
    let spawned = std::thread::Builder::new()
        .name("acp-turn".into())
        .spawn(move || {
            if let Err(message) = run(&agents, launch, &req, &thread_sink, &turn, cancelled) {
                fail(&thread_sink, message);
            }
        });
    if let Err(e) = spawned {
        fail(&sink, format!("cannot start a thread for the turn: {e}"));
    }
    Box::new(TurnRef(handle))
}

struct TurnRef(Arc<AcpTurn>);

impl Turn for TurnRef {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        self.0.resolve_input(request_id, decision)
    }

    fn cancel(&self) {
        self.0.cancel();
    }
}

fn run(
    agents: &crate::Agents,
    launch: Result<Launch, String>,
    req: &TurnRequest,
    sink: &Sink,
    turn: &Arc<AcpTurn>,
    cancelled: Arc<AtomicBool>,
) -> Result<(), String> {
    let warm = lock(agents).get(&req.session_id).cloned();
    let agent = match warm.filter(|a| a.claim()) {
        Some(a) => a,
        None => {
            let launch = launch?;
            let agent = Agent::spawn(&launch, req)?;
            // A new process: continue the conversation when the agent can, else start one.
            let resumed = match (
                &req.harness_session_id,
                agent.offers_load.load(Ordering::SeqCst),
            ) {
                (Some(id), true) => agent
                    .call(
                        "session/load",
                        protocol::session_params(&req.workspace_dir, Some(id)),
                    )
                    .map(|_| id.clone())
                    .ok(),
                _ => None,
            };
            let session = match resumed {
                Some(id) => id,
                None => {
                    let r = agent.call(
                        "session/new",
                        protocol::session_params(&req.workspace_dir, None),
                    )?;
                    r["sessionId"]
                        .as_str()
                        .ok_or("session/new returned no sessionId")?
                        .to_string()
                }
            };
            *lock(&agent.acp_session) = session;
            if let Some(old) = lock(agents).insert(req.session_id.clone(), agent.clone()) {
                if !Arc::ptr_eq(&old, &agent) {
                    old.stop();
                }
            }
            agent
        }
    };
    *lock(&turn.agent) = Some(agent.clone());
    let session = lock(&agent.acp_session).clone();
    sink.emit_kind(EventKind::HarnessSession {
        harness_session_id: session,
    });
    if cancelled.load(Ordering::SeqCst) {
        finish(
            sink,
            Done {
                status: TurnStatus::Cancelled,
                ..Done::default()
            },
        );
        return Ok(());
    }
    agent.prompt(&req.text, req.thinking, sink.clone(), cancelled.clone())?;
    // A cancel that came while the prompt was being sent.
    if cancelled.load(Ordering::SeqCst) {
        agent.cancel();
    }
    Ok(())
}

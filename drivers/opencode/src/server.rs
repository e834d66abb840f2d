//! One `opencode serve` per session workspace, its `/event` stream, and the mapping from
//! OpenCode's message/part events to Karta events.

use std::collections::{HashMap, VecDeque};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use karta_driver_api::{
    Capabilities, Decision, DecisionKind, Discovery, Done, Driver, DriverInfo, ErrorInfo,
    EventKind, HostContext, HostInfo, Sink, Turn, TurnRequest, TurnStatus,
};
use karta_driver_kit::process::{
    bounded_lines, spawn_idle_reaper, string_setting, Warm, WarmMap, MAX_LINE,
};
use karta_driver_kit::sandbox::{self, Endpoint, Harness, LaunchOptions};
use serde_json::{json, Value};

use crate::discover;
use crate::protocol::{self, TurnState};

const DEFAULT_IDLE_SECONDS: u64 = 600;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const OUTPUT_TAIL: usize = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The name projects select the driver by.
pub const DRIVER_NAME: &str = "opencode";

/// The OpenCode driver.
pub struct OpenCodeDriver {
    inner: Arc<Inner>,
}

struct Inner {
    command: Option<String>,
    data_dir: Option<PathBuf>,
    model: Option<String>,
    servers: WarmMap<Server>,
}

impl OpenCodeDriver {
    /// Settings: `command` (path or name of the CLI), `model` (the model id Karta's provider
    /// offers, e.g. `gpt-4.1`; when set it is the default model). The host's `data_dir` is where
    /// `karta harness install opencode` puts the CLI.
    pub fn from_settings(ctx: &HostContext, settings: &Value) -> Result<Self, String> {
        let inner = Arc::new(Inner {
            command: string_setting(settings, "command")?,
            data_dir: (!ctx.data_dir.is_empty()).then(|| PathBuf::from(&ctx.data_dir)),
            model: string_setting(settings, "model")?,
            servers: Arc::new(Mutex::new(HashMap::new())),
        });
        spawn_idle_reaper("opencode-reaper", &inner.servers)
            .map_err(|e| format!("cannot start the idle reaper: {e}"))?;
        Ok(Self { inner })
    }
}

impl Inner {
    fn find_command(&self) -> Result<PathBuf, String> {
        karta_driver_kit::cli::locate(
            self.command.as_deref(),
            self.data_dir.as_deref(),
            "opencode",
            "opencode",
            "OpenCode",
        )
    }

    fn remove_if(&self, session_id: &str, server: &Arc<Server>) {
        let mut servers = lock(&self.servers);
        if servers
            .get(session_id)
            .is_some_and(|s| Arc::ptr_eq(s, server))
        {
            servers.remove(session_id);
        }
    }

    /// The provider block Karta injects: an OpenAI-compatible provider `karta` pointing at the
    /// platform's endpoint and key, so OpenCode needs no catalogue and reaches nothing else.
    fn config_content(&self, req: &TurnRequest) -> Option<String> {
        let base = req.env.get("OPENAI_BASE_URL");
        let key = req.env.get("OPENAI_API_KEY");
        if base.is_none() && key.is_none() {
            return None;
        }
        let base = base
            .cloned()
            .unwrap_or_else(|| "https://api.openai.com/v1".into());
        let base = if base.trim_end_matches('/').ends_with("/v1") {
            base
        } else {
            format!("{}/v1", base.trim_end_matches('/'))
        };
        let model = self.model.clone().unwrap_or_else(|| "gpt-4.1".into());
        let mut cfg = json!({
            "provider": {"karta": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Karta",
                "options": {"baseURL": base, "apiKey": key.cloned().unwrap_or_default()},
                "models": {model.clone(): {"name": model, "tool_call": true,
                    "limit": {"context": 128000, "output": 8192}}},
            }},
            "autoupdate": false,
            "share": "disabled",
        });
        if self.model.is_some() {
            cfg["model"] = json!(format!("karta/{model}"));
            cfg["small_model"] = json!(format!("karta/{model}"));
        }
        Some(cfg.to_string())
    }
}

/// Seeds the config folder `base/rel` so OpenCode's background plugin install finds nothing to
/// do (it would otherwise reach the npm registry on every start). `base` is the tenant's folder
/// (holding the workspace and home): nothing under it is followed through a link, and what is
/// made is given to `owner`.
fn seed_config_dir(base: &Path, rel: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use karta_driver_kit::sandbox::tenant_fs::{ensure_dir, write_new};
    ensure_dir(base, &rel.join("node_modules"), owner)?;
    write_new(
        base,
        &rel.join("package.json"),
        br#"{"dependencies":{"@opencode-ai/plugin":"*"}}"#,
        owner,
    )?;
    write_new(
        base,
        &rel.join("package-lock.json"),
        br#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"*"}}}}"#,
        owner,
    )?;
    Ok(())
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("no random source for the server password: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn base_url(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp(port) => format!("http://127.0.0.1:{port}"),
        // Any host: every request goes through the socket.
        Endpoint::Unix(_) => "http://opencode".into(),
    }
}

/// A client for one server: its endpoint, and its password on every request.
fn client(
    endpoint: &Endpoint,
    password: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::blocking::Client, String> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("opencode:{password}"));
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {auth}"))
        .map_err(|e| e.to_string())?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let mut b = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .default_headers(headers);
    if let Endpoint::Unix(path) = endpoint {
        b = b.unix_socket(path.clone());
    }
    b.build().map_err(|e| e.to_string())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Warm for Server {
    /// Retires the server if it is idle past its timeout (under the lock turns claim it with).
    fn retire_if_idle(&self) -> bool {
        let mut s = lock(&self.state);
        let idle = s.alive && s.turn.is_none() && s.last_used.elapsed() > self.idle_timeout;
        if idle {
            s.alive = false;
        }
        idle
    }

    fn stop(&self) {
        self.kill();
    }
}

/// A running turn.
struct ActiveTurn {
    sink: Sink,
    proto: TurnState,
    cancelled: Arc<AtomicBool>,
}

struct State {
    turn: Option<ActiveTurn>,
    last_used: Instant,
    /// False once the reaper retired the server (or it died): it takes no more turns.
    alive: bool,
}

/// One `opencode serve` for one session's workspace.
struct Server {
    session_id: String,
    base: String,
    http: reqwest::blocking::Client,
    /// Without a timeout, for the event stream.
    events_http: reqwest::blocking::Client,
    child: Mutex<Harness>,
    state: Mutex<State>,
    idle_timeout: Duration,
    output: Arc<Mutex<VecDeque<String>>>,
    driver: Weak<Inner>,
}

fn harness_home(workspace: &str) -> PathBuf {
    PathBuf::from(format!("{}.home", workspace.trim_end_matches('/')))
}

impl Server {
    fn spawn(inner: &Arc<Inner>, req: &TurnRequest) -> Result<Arc<Server>, String> {
        let cmd = inner.find_command()?;
        let home = harness_home(&req.workspace_dir);
        let config = home.join(".config");
        let workspace = Path::new(&req.workspace_dir);
        let (base, ws_name, home_name) =
            match (workspace.parent(), workspace.file_name(), home.file_name()) {
                (Some(b), Some(w), Some(h)) => (b, Path::new(w), Path::new(h)),
                _ => return Err(format!("{} has no parent folder", workspace.display())),
            };
        let owner = req.sandbox.owner();
        seed_config_dir(base, &home_name.join(".config/opencode"), owner)
            .map_err(|e| format!("cannot prepare {}: {e}", home.display()))?;
        let project_config = workspace.join(".opencode");
        // Only a real folder of the app (never a link the agent left).
        if std::fs::symlink_metadata(&project_config).is_ok_and(|m| m.is_dir()) {
            seed_config_dir(base, &ws_name.join(".opencode"), owner)
                .map_err(|e| format!("cannot prepare {}: {e}", project_config.display()))?;
        }
        let port = free_port()?;
        // Only Karta can drive this server: a random password, sent with every request.
        let password = random_password()?;
        let mut c = Command::new(&cmd);
        c.args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &config)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
        .env("OPENCODE_DISABLE_SHARE", "1")
        .env("OPENCODE_SERVER_PASSWORD", &password)
        .envs(&req.env)
        .current_dir(&req.workspace_dir);
        if let Some(content) = inner.config_content(req) {
            c.env("OPENCODE_CONFIG_CONTENT", content);
        }
        let opts = LaunchOptions {
            workspace: PathBuf::from(&req.workspace_dir),
            home: home.clone(),
            expose_port: Some(port),
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let mut harness = sandbox::launch(&req.sandbox, c, &opts)
            .map_err(|e| format!("cannot start OpenCode ({}): {e}", cmd.display()))?;
        let endpoint = harness
            .endpoint()
            .cloned()
            .ok_or("the launcher gave OpenCode no endpoint")?;
        let child = harness.child();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        // Requests sent before the "listening" line can hang forever: wait for it.
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        for (name, stream) in [
            (
                "opencode-out",
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
            ),
            ("opencode-err", Box::new(stderr)),
        ] {
            let out = output.clone();
            let ready = ready_tx.clone();
            thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    for line in bounded_lines(stream, MAX_LINE) {
                        if line.contains("listening on") {
                            let _ = ready.send(());
                        }
                        let mut o = lock(&out);
                        if o.len() == OUTPUT_TAIL {
                            o.pop_front();
                        }
                        o.push_back(line);
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        drop(ready_tx);
        if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
            harness.kill();
            let _ = harness.wait();
            let tail: Vec<String> = lock(&output).iter().cloned().collect();
            return Err(format!("OpenCode did not start: {}", tail.join(" | ")));
        }
        let idle_secs = req.app_config["harness"]["opencode"]["idle_timeout_seconds"]
            .as_u64()
            .unwrap_or(DEFAULT_IDLE_SECONDS);
        let server = Arc::new(Server {
            session_id: req.session_id.clone(),
            base: base_url(&endpoint),
            http: client(&endpoint, &password, Some(Duration::from_secs(30)))?,
            events_http: client(&endpoint, &password, None)?,
            child: Mutex::new(harness),
            state: Mutex::new(State {
                turn: None,
                last_used: Instant::now(),
                alive: true,
            }),
            idle_timeout: Duration::from_secs(idle_secs),
            output,
            driver: Arc::downgrade(inner),
        });
        if let Err(e) = server.follow_events() {
            server.kill();
            return Err(e);
        }
        Ok(server)
    }

    /// Opens `/event` and follows it on a thread of its own; returns once the server confirmed
    /// the subscription, so no event of the coming turn is missed.
    fn follow_events(self: &Arc<Self>) -> Result<(), String> {
        let stream = self
            .events_http
            .get(format!("{}/event", self.base))
            .send()
            .map_err(|e| format!("cannot follow OpenCode's events: {e}"))?;
        let (tx, rx) = mpsc::channel::<()>();
        let me = self.clone();
        thread::Builder::new()
            .name("opencode-events".into())
            .spawn(move || {
                let mut connected = Some(tx);
                for line in bounded_lines(stream, MAX_LINE) {
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let Ok(ev) = serde_json::from_str::<Value>(data.trim()) else {
                        continue;
                    };
                    if ev["type"] == "server.connected" {
                        if let Some(t) = connected.take() {
                            let _ = t.send(());
                        }
                        continue;
                    }
                    me.handle(&ev);
                }
                me.exited();
            })
            .map_err(|e| e.to_string())?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "OpenCode's event stream did not open".to_string())
    }

    fn kill(&self) {
        let mut c = lock(&self.child);
        c.kill();
        let _ = c.wait();
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .map_err(|e| format!("OpenCode did not answer {path}: {e}"))?;
        let status = r.status();
        // At most 4 MiB of an answer is read (the server is the tenant's code).
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(r, 4 << 20), &mut body);
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(format!("OpenCode answered {status} to {path}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The event stream ended: the server is gone. Finish the turn it was running.
    fn exited(self: &Arc<Self>) {
        let status = {
            let mut c = lock(&self.child);
            c.kill();
            (c.wait().ok(), c.limit_message())
        };
        let (status, limit) = status;
        let turn = {
            let mut st = lock(&self.state);
            st.alive = false;
            st.turn.take()
        };
        if let Some(t) = turn {
            if t.cancelled.load(Ordering::SeqCst) {
                t.sink.emit_kind(EventKind::Done(Done {
                    usage: t.proto.usage,
                    status: TurnStatus::Cancelled,
                    stop_reason: Some("cancelled".into()),
                    message: None,
                }));
            } else {
                let tail: Vec<String> = lock(&self.output).iter().cloned().collect();
                let why = limit.unwrap_or_else(|| {
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into())
                });
                t.sink.emit_kind(EventKind::Error(ErrorInfo {
                    code: "harness_crashed".into(),
                    message: format!(
                        "OpenCode exited in the middle of the turn ({why}){}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", tail.join(" | "))
                        }
                    ),
                    provider: None,
                }));
                t.sink.emit_kind(EventKind::Done(Done {
                    usage: t.proto.usage,
                    status: TurnStatus::Failed,
                    ..Done::default()
                }));
            }
        }
        if let Some(d) = self.driver.upgrade() {
            d.remove_if(&self.session_id, self);
        }
    }

    /// One `/event` message: translated under the state lock, emitted after it is released.
    fn handle(self: &Arc<Self>, ev: &Value) {
        let (out, sink) = {
            let mut s = lock(&self.state);
            let st = &mut *s;
            let Some(turn) = st.turn.as_mut() else { return };
            let cancelled = turn.cancelled.load(Ordering::SeqCst);
            let out = protocol::on_event(&mut turn.proto, ev, cancelled);
            let sink = turn.sink.clone();
            if out.ended {
                st.turn = None;
                st.last_used = Instant::now();
            }
            (out, sink)
        };
        // A turn in which the sandbox refused memory or processes says so, and the server is
        // replaced before the next turn (whatever is left of the runaway goes with it).
        let limit = if out.ended {
            lock(&self.child).limit_message()
        } else {
            None
        };
        if limit.is_some() {
            lock(&self.state).alive = false;
        }
        for e in &out.events {
            if let (Some(msg), EventKind::Done(_)) = (&limit, &e.kind) {
                sink.emit_kind(EventKind::Error(ErrorInfo {
                    code: "sandbox_limit".into(),
                    message: format!("{msg}; the harness is restarted for the next turn"),
                    provider: None,
                }));
            }
            sink.emit(e);
        }
        if limit.is_some() {
            if let Some(d) = self.driver.upgrade() {
                d.remove_if(&self.session_id, self);
            }
            self.kill();
        }
    }
}

/// The handle the host holds on a turn.
struct OpenCodeTurn {
    server: Arc<Server>,
    oc_session: String,
    cancelled: Arc<AtomicBool>,
}

impl Turn for OpenCodeTurn {
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String> {
        let reply = match &decision.decision {
            DecisionKind::ApproveOnce => "once",
            DecisionKind::ApproveSession => "always",
            DecisionKind::Deny => "reject",
            other => return Err(format!("this driver does not offer `{other}`")),
        };
        {
            let mut s = lock(&self.server.state);
            let turn = s.turn.as_mut().ok_or("the turn has ended")?;
            if !turn.proto.pending.remove(request_id) {
                return Err(format!("no pending request {request_id}"));
            }
        }
        let mut body = json!({"reply": reply});
        if let Some(m) = decision.message {
            body["message"] = json!(m);
        }
        self.server
            .post(&format!("/permission/{request_id}/reply"), &body)
            .map(|_| ())
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if self
            .server
            .post(&format!("/session/{}/abort", self.oc_session), &json!({}))
            .is_err()
        {
            self.server.kill();
        }
    }
}

impl Driver for OpenCodeDriver {
    fn describe(_host: &HostInfo) -> DriverInfo {
        DriverInfo::new(DRIVER_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_capabilities(Capabilities::all())
            .with_settings_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "command": {"type": "string", "minLength": 1,
                        "description": "Path or name of the `opencode` CLI"},
                    "model": {"type": "string", "minLength": 1,
                        "description": "The default model id, e.g. gpt-4.1"}
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
        let existing = lock(&inner.servers).get(&req.session_id).cloned();
        // Touch a live server under its state lock so the idle reaper (which retires under the
        // same lock) leaves it alone; a retired or dead one is replaced.
        let existing = existing.filter(|srv| {
            let mut st = lock(&srv.state);
            if st.alive {
                st.last_used = Instant::now();
            }
            st.alive
        });
        let server = match existing {
            Some(s) => s,
            None => {
                let s = Server::spawn(inner, &req)?;
                lock(&inner.servers).insert(req.session_id.clone(), s.clone());
                s
            }
        };
        let oc_session = match &req.harness_session_id {
            Some(id) => id.clone(),
            None => {
                // A title up front spares the title-generation model call.
                let created = server.post(
                    "/session",
                    &json!({"title": format!("karta {}", req.session_id)}),
                )?;
                let id = created["id"]
                    .as_str()
                    .ok_or("OpenCode created a session without an id")?
                    .to_string();
                sink.emit_kind(EventKind::HarnessSession {
                    harness_session_id: id.clone(),
                });
                id
            }
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        {
            let mut s = lock(&server.state);
            if s.turn.is_some() {
                return Err("a turn is already running in this session".into());
            }
            s.turn = Some(ActiveTurn {
                sink,
                proto: TurnState::new(oc_session.clone(), req.thinking),
                cancelled: cancelled.clone(),
            });
            s.last_used = Instant::now();
        }
        let mut body = json!({"parts": [{"type": "text", "text": req.text}]});
        if req.agent != "default" {
            body["agent"] = json!(req.agent);
        }
        if let Err(e) = server.post(&format!("/session/{oc_session}/prompt_async"), &body) {
            lock(&server.state).turn = None;
            return Err(e);
        }
        Ok(Box::new(OpenCodeTurn {
            server,
            oc_session,
            cancelled,
        }))
    }

    fn end_session(&self, session_id: &str) {
        if let Some(s) = lock(&self.inner.servers).remove(session_id) {
            s.kill();
        }
    }
}

//! Helpers for end-to-end tests: start the real `karta` binary on free ports, run its CLI, read
//! SSE streams.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use karta::store::testkit::temp_pg_database;

/// The workspace's `target/debug`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The `karta` binary.
pub fn karta_bin() -> PathBuf {
    built("karta")
}

/// The example echo driver plugin.
pub fn echo_plugin() -> PathBuf {
    built("libkarta_driver_echo.so")
}

/// The example harness app the echo driver serves.
pub fn hello_app() -> PathBuf {
    workspace_root().join("examples/hello-echo")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `karta serve`; killed on drop.
pub struct Karta {
    child: Child,
    /// The folder holding `karta.platform.toml`.
    pub dir: PathBuf,
    /// `http://127.0.0.1:<public port>`
    pub public: String,
    /// `http://127.0.0.1:<admin port>`
    pub admin: String,
    /// The operator token.
    pub admin_token: String,
    log: PathBuf,
}

impl Karta {
    /// Starts `karta serve --config <dir>/karta.platform.toml` and waits until both listeners answer.
    pub fn start(dir: &Path) -> Karta {
        Self::start_with_env(dir, &[])
    }

    /// Like [`Karta::start`], with extra environment variables for the server.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Karta {
        // Harnesses run as their tenant's uid and must be able to enter the data folder's
        // parents (a temporary folder is closed to others).
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711));
        // A port picked free can be taken by another process before Karta binds it: then Karta
        // exits, and the start is tried again on other ports.
        for _ in 0..5 {
            let mut k = Self::spawn(dir, env);
            match k.wait_ready() {
                Ok(()) => return k,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("karta did not start; log:\n{log}"),
            }
        }
        panic!("karta found no free ports in five tries");
    }

    fn spawn(dir: &Path, env: &[(&str, &str)]) -> Karta {
        let (pp, ap) = (free_port(), free_port());
        let log = dir.join("karta.log");
        let admin_token = "test-operator-token".to_string();
        let child = Command::new(karta_bin())
            .arg("--config")
            .arg(dir.join("karta.platform.toml"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{pp}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{ap}"))
            .env("KARTA_ADMIN_TOKEN", &admin_token)
            .env("KARTA_LOG", "info")
            .env_remove("KARTA_ENV")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn karta");
        Karta {
            child,
            dir: dir.to_path_buf(),
            public: format!("http://127.0.0.1:{pp}"),
            admin: format!("http://127.0.0.1:{ap}"),
            admin_token,
            log,
        }
    }

    /// Waits until both listeners answer and this very process still runs (another one could
    /// hold a port it failed to bind); `Err(log)` when it cannot start.
    fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(self.log_text());
            }
            let up = |base: &str| {
                client
                    .get(format!("{base}/healthz"))
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            };
            if up(&self.public) && up(&self.admin) {
                std::thread::sleep(Duration::from_millis(20));
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return Err(self.log_text());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `karta --config <dir>/karta.platform.toml <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.dir, args)
    }

    /// Creates a key of `acme` with every scope (read, write, admin).
    pub fn admin_key(&self) -> String {
        self.create_key_with(&["--tenant", "acme", "--scopes", "read,write,admin"])
    }

    /// Creates a key for `tenant` with the CLI; returns the key (the last line of stdout).
    pub fn create_key(&self, tenant: &str) -> String {
        self.create_key_with(&["--tenant", tenant])
    }

    /// Creates a key with `karta keys create <args>`; returns the key.
    pub fn create_key_with(&self, args: &[&str]) -> String {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        stdout.lines().last().expect("a line").trim().to_string()
    }
}

impl Drop for Karta {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new session on `project`'s routes (`POST /v1/projects/{project}/sessions`); its id.
pub fn new_session(c: &reqwest::blocking::Client, k: &Karta, key: &str, project: &str) -> String {
    let r = c
        .post(format!("{}/v1/projects/{project}/sessions", k.public))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .send()
        .expect("create a session");
    assert_eq!(r.status(), 201);
    r.json::<serde_json::Value>().expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_string()
}

/// The Python the tests use for reference checks (standard library only): the SDK venv's when
/// `scripts/test.sh` set it, else `python3`.
pub fn python() -> String {
    std::env::var("KARTA_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the CLI against the config in `dir`.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(karta_bin())
        .arg("--config")
        .arg(dir.join("karta.platform.toml"))
        .args(args)
        .env("KARTA_LOG", "warn")
        .env_remove("KARTA_ENV")
        .output()
        .expect("run karta")
}

/// One SSE frame.
#[derive(Debug, Clone)]
pub struct SseFrame {
    /// `id:`
    pub id: Option<i64>,
    /// `event:`
    pub event: String,
    /// `data:` parsed as JSON.
    pub data: Value,
}

/// Parses a whole SSE body; comment lines are counted separately.
pub fn parse_sse(body: &str) -> (Vec<SseFrame>, usize) {
    let mut frames = Vec::new();
    let mut comments = 0;
    for block in body.split("\n\n") {
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if line.starts_with(':') {
                comments += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !event.is_empty() {
            frames.push(SseFrame {
                id,
                event,
                data: serde_json::from_str(&data).expect("data is one line of JSON"),
            });
        }
    }
    (frames, comments)
}

/// Reads a response body to the end as text.
pub fn read_body(mut r: reqwest::blocking::Response) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).expect("body");
    s
}

/// Writes the platform config for tests: the echo plugin, tenants, and projects on the example app.
pub fn write_config(
    dir: &Path,
    database_url: Option<&str>,
    tenants: &[&str],
    projects: &[(&str, &str)],
    delay_ms: u64,
) {
    let mut t = String::new();
    if let Some(url) = database_url {
        t.push_str(&format!("[database]\nurl = \"{url}\"\n\n"));
    }
    t.push_str(&format!(
        "[[drivers]]\npath = \"{}\"\nsettings = {{ delay_ms = {delay_ms} }}\n\n",
        echo_plugin().display()
    ));
    for slug in tenants {
        t.push_str(&format!(
            "[[tenants]]\nslug = \"{slug}\"\nname = \"Tenant {slug}\"\n\n"
        ));
    }
    for (tenant, slug) in projects {
        t.push_str(&format!(
            "[[projects]]\ntenant = \"{tenant}\"\nslug = \"{slug}\"\npath = \"{}\"\n\n",
            hello_app().display()
        ));
    }
    std::fs::write(dir.join("karta.platform.toml"), t).expect("write config");
}

/// Reads an SSE response frame by frame, as it arrives.
pub struct SseReader {
    lines: std::io::Lines<std::io::BufReader<reqwest::blocking::Response>>,
    /// Keep-alive comments seen so far.
    pub comments: usize,
}

impl SseReader {
    /// Wraps a streaming response.
    pub fn new(r: reqwest::blocking::Response) -> Self {
        use std::io::BufRead;
        Self {
            lines: std::io::BufReader::new(r).lines(),
            comments: 0,
        }
    }

    /// The next frame, or `None` when the server ended the stream.
    pub fn next_frame(&mut self) -> Option<SseFrame> {
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        loop {
            let line = self.lines.next()?.ok()?;
            if line.is_empty() {
                if !event.is_empty() {
                    return Some(SseFrame {
                        id,
                        event,
                        data: serde_json::from_str(&data).expect("data is one line of JSON"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// Frames until (and including) the first of type `event`.
    pub fn until(&mut self, event: &str) -> Vec<SseFrame> {
        let mut out = Vec::new();
        while let Some(f) = self.next_frame() {
            let stop = f.event == event;
            out.push(f);
            if stop {
                return out;
            }
        }
        panic!("stream ended before `{event}`: {out:?}");
    }

    /// Every remaining frame.
    pub fn rest(&mut self) -> Vec<SseFrame> {
        std::iter::from_fn(|| self.next_frame()).collect()
    }
}

/// One `[[projects]]` entry for [`PlatformFile`].
pub struct ProjectSpec {
    /// Tenant slug.
    pub tenant: String,
    /// Project slug.
    pub slug: String,
    /// The harness-app folder.
    pub path: PathBuf,
    /// `reject`, `enqueue` or `interrupt`.
    pub multitask: Option<String>,
}

/// A platform configuration for a test, written as TOML.
pub struct PlatformFile {
    /// Tenant slugs.
    pub tenants: Vec<String>,
    /// Projects.
    pub projects: Vec<ProjectSpec>,
    /// The echo driver's delay between events.
    pub delay_ms: u64,
    /// Extra TOML appended verbatim (e.g. `[runtime]` settings).
    pub extra: String,
    /// Extra lines inside a tenant's or project's table, by its slug.
    pub lines: Vec<(String, String)>,
}

impl PlatformFile {
    /// Tenant `acme` with one project `hello` on the example app.
    pub fn new() -> Self {
        PlatformFile {
            tenants: vec!["acme".into()],
            projects: vec![],
            delay_ms: 2,
            extra: String::new(),
            lines: Vec::new(),
        }
    }

    /// Adds a project of `acme`.
    pub fn project(mut self, slug: &str, path: &Path, multitask: Option<&str>) -> Self {
        self.projects.push(ProjectSpec {
            tenant: "acme".into(),
            slug: slug.into(),
            path: path.to_path_buf(),
            multitask: multitask.map(str::to_string),
        });
        self
    }

    /// Writes `karta.platform.toml` into `dir`.
    pub fn write(&self, dir: &Path) {
        let mut t = format!(
            "[[drivers]]\npath = \"{}\"\nsettings = {{ delay_ms = {} }}\n\n",
            echo_plugin().display(),
            self.delay_ms
        );
        let lines_of = |slug: &str| {
            self.lines
                .iter()
                .filter(|(s, _)| s == slug)
                .map(|(_, l)| format!("{l}\n"))
                .collect::<String>()
        };
        for slug in &self.tenants {
            t.push_str(&format!(
                "[[tenants]]\nslug = \"{slug}\"\nname = \"Tenant {slug}\"\n{}\n",
                lines_of(slug)
            ));
        }
        for p in &self.projects {
            t.push_str(&format!(
                "[[projects]]\ntenant = \"{}\"\nslug = \"{}\"\npath = \"{}\"\n",
                p.tenant,
                p.slug,
                p.path.display()
            ));
            if let Some(m) = &p.multitask {
                t.push_str(&format!("multitask = \"{m}\"\n"));
            }
            t.push_str(&lines_of(&p.slug));
            t.push('\n');
        }
        t.push_str(&self.extra);
        std::fs::write(dir.join("karta.platform.toml"), t).expect("write config");
    }
}

impl Default for PlatformFile {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of an example app in `dir/<name>`, with `karta.jsonc` replaced when given.
pub fn app_copy(dir: &Path, name: &str, example: &str, karta_jsonc: Option<&str>) -> PathBuf {
    let src = workspace_root().join("examples").join(example);
    let dst = dir.join(name);
    copy_dir(&src, &dst);
    if let Some(text) = karta_jsonc {
        std::fs::write(dst.join("karta.jsonc"), text).expect("write karta.jsonc");
    }
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read example") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).expect("copy");
        }
    }
}

/// A running `karta mock-model`; killed on drop.
pub struct MockModel {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub url: String,
}

impl MockModel {
    /// Starts the fake model with a script (JSON text).
    pub fn start(dir: &Path, script: &str) -> MockModel {
        let script_path = dir.join(format!("script-{}.json", free_port()));
        std::fs::write(&script_path, script).expect("write script");
        let port_file = dir.join(format!("mock-port-{}", free_port()));
        let child = Command::new(karta_bin())
            .arg("mock-model")
            .arg("--port-file")
            .arg(&port_file)
            .arg("--script")
            .arg(&script_path)
            .env("KARTA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-model");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "mock-model did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        MockModel {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Replaces the fake's script (JSON text) and rewinds it.
    pub fn set_script(&self, script: &str) {
        let c = reqwest::blocking::Client::new();
        let r = c
            .post(format!("{}/__script", self.url))
            .body(script.to_string())
            .send()
            .expect("set script");
        assert!(r.status().is_success(), "script refused");
    }

    /// Every request the fake model received.
    pub fn requests(&self) -> Vec<Value> {
        reqwest::blocking::get(format!("{}/__requests", self.url))
            .and_then(|r| r.json())
            .expect("requests log")
    }

    /// The requests to `POST /v1/messages`.
    pub fn message_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v1/messages"))
            })
            .collect()
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A harness CLI the tests drive: `$var`, else the test script's cache. `None` (skip) when it
/// is missing outside CI; in CI a missing CLI fails the test.
fn harness_bin(var: &str, harness: &str, bin: &str, product: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| {
            PathBuf::from(h)
                .join(".cache/karta-harnesses")
                .join(harness)
                .join("node_modules/.bin")
                .join(bin)
        })
    })?;
    if p.is_file() {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "the {product} CLI is required in CI but missing at {}",
        p.display()
    );
    eprintln!(
        "note: {} missing; skipping (scripts/test.sh installs it)",
        p.display()
    );
    None
}

/// The `claude` CLI the tests drive (`KARTA_TEST_CLAUDE_BIN`, else the test script's cache).
pub fn claude_bin() -> Option<PathBuf> {
    harness_bin(
        "KARTA_TEST_CLAUDE_BIN",
        "claude-code",
        "claude",
        "Claude Code",
    )
}

/// The Claude Code driver's plugin library.
pub fn claude_plugin() -> PathBuf {
    built("libkarta_plugin_claude_code.so")
}

/// The `opencode` CLI the tests drive (`KARTA_TEST_OPENCODE_BIN`, else the test script's cache).
pub fn opencode_bin() -> Option<PathBuf> {
    harness_bin(
        "KARTA_TEST_OPENCODE_BIN",
        "opencode",
        "opencode",
        "OpenCode",
    )
}

/// The OpenCode driver's plugin library.
pub fn opencode_plugin() -> PathBuf {
    built("libkarta_plugin_opencode.so")
}

/// The ACP driver's plugin library.
pub fn acp_plugin() -> PathBuf {
    built("libkarta_plugin_acp.so")
}

/// The example ACP agent (`examples/acp-agent`).
pub fn acp_agent() -> PathBuf {
    built("karta-acp-agent")
}

/// The pid of the harness process whose working folder is the session's workspace.
pub fn harness_pid(sid: &str, marker: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd")).ok();
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cwd.is_some_and(|c| c.ends_with(sid)) && String::from_utf8_lossy(&cmd).contains(marker) {
            return Some(pid);
        }
    }
    None
}

/// A Karta server with one project on a harness driver, talking to a fake model.
pub struct HarnessEnv {
    /// Holds the config, the app copy and Karta's data.
    pub dir: tempfile::TempDir,
    /// The fake model.
    pub mock: MockModel,
    k: Option<Karta>,
    env: Vec<(String, String)>,
    /// An API key of tenant `acme`.
    pub key: String,
    /// A client with a generous timeout (harness turns spawn processes).
    pub c: reqwest::blocking::Client,
}

impl HarnessEnv {
    /// Writes `toml` as the platform config in `dir` and starts Karta with `env`.
    pub fn start(
        dir: tempfile::TempDir,
        mock: MockModel,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        std::fs::write(dir.path().join("karta.platform.toml"), toml).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let k = Self::boot(dir.path(), &env);
        let key = k.create_key("acme");
        HarnessEnv {
            dir,
            mock,
            k: Some(k),
            env,
            key,
            c: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        }
    }

    fn boot(dir: &Path, env: &[(String, String)]) -> Karta {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        Karta::start_with_env(dir, &pairs)
    }

    /// The running server.
    pub fn k(&self) -> &Karta {
        self.k.as_ref().expect("karta is running")
    }

    /// Stops Karta and starts it again on the same folder.
    pub fn restart(&mut self) {
        drop(self.k.take());
        self.k = Some(Self::boot(self.dir.path(), &self.env));
    }

    /// The tenant's metered usage this month, one row (`GET /v1/usage?group_by=key`).
    pub fn metered(&self) -> Value {
        let r = self
            .c
            .get(format!("{}/v1/usage?group_by=key", self.k().public))
            .bearer_auth(&self.key)
            .send()
            .expect("usage");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().expect("json");
        v["data"][0].clone()
    }

    /// A new session on the org's only project.
    pub fn session(&self) -> String {
        let r = self
            .c
            .post(format!("{}/v1/sessions", self.k().public))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({}))
            .send()
            .expect("create session");
        assert_eq!(r.status(), 201);
        r.json::<Value>().expect("json")["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// Sends `body` with `"stream": true` and returns the stream.
    pub fn send_stream(&self, sid: &str, mut body: Value) -> SseReader {
        body["stream"] = Value::Bool(true);
        let r = self
            .c
            .post(format!("{}/v1/sessions/{sid}/messages", self.k().public))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .expect("send");
        assert_eq!(r.status(), 200);
        SseReader::new(r)
    }

    /// Streams a turn with `text`.
    pub fn stream(&self, sid: &str, text: &str) -> SseReader {
        self.send_stream(sid, serde_json::json!({ "text": text }))
    }

    /// Answers an approval; returns the continuation.
    pub fn decide(&self, sid: &str, rid: &str, decision: &str) -> Value {
        let r = self
            .c
            .put(format!(
                "{}/v1/sessions/{sid}/inputs/{rid}",
                self.k().public
            ))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({ "decision": decision }))
            .send()
            .expect("decide");
        assert_eq!(r.status(), 200);
        r.json().expect("json")
    }
}

/// The assistant text of a turn's frames.
pub fn text_of(frames: &[SseFrame]) -> String {
    frames
        .iter()
        .filter(|f| f.event == "text")
        .filter_map(|f| f.data["data"]["part"]["text"].as_str())
        .collect()
}

/// The `done` payload, which must be the last frame.
pub fn done(frames: &[SseFrame]) -> Value {
    let last = frames.last().expect("frames");
    assert_eq!(last.event, "done", "{frames:?}");
    last.data["data"].clone()
}

/// Runs one turn of an app served by `plugin` on a machine where the harness CLI is nowhere to
/// be found; returns its frames.
pub fn turn_without_cli(plugin: &Path, example: &str) -> Vec<SseFrame> {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app_copy(dir.path(), "app", example, None);
    std::fs::write(
        dir.path().join("karta.platform.toml"),
        format!(
            "[[drivers]]\npath = \"{}\"\n\n[[tenants]]\nslug = \"acme\"\nname = \"Acme\"\n\n[[projects]]\ntenant = \"acme\"\nslug = \"app\"\npath = \"{}\"\n",
            plugin.display(),
            app.display()
        ),
    )
    .expect("write config");
    let k = Karta::start_with_env(dir.path(), &[("PATH", "/usr/bin:/bin")]);
    let key = k.create_key("acme");
    let c = reqwest::blocking::Client::new();
    let sid = c
        .post(format!("{}/v1/sessions", k.public))
        .bearer_auth(&key)
        .json(&serde_json::json!({}))
        .send()
        .and_then(|r| r.json::<Value>())
        .expect("session")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = c
        .post(format!("{}/v1/sessions/{sid}/messages", k.public))
        .bearer_auth(&key)
        .json(&serde_json::json!({"text": "hi", "stream": true}))
        .send()
        .expect("send");
    SseReader::new(r).rest()
}

/// Runs an official-SDK script of `tests/sdk/` against Karta at `url` with API key `key`;
/// panics with its output unless it succeeds. Returns what it printed.
pub fn run_sdk(program: &str, script: &str, url: &str, key: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sdk")
                .join(script),
        )
        .env("KARTA_URL", url)
        .env("KARTA_KEY", key)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// An SDK client path from the test script's environment (`KARTA_TEST_PYTHON`,
/// `KARTA_TEST_NODE_PATH`); `None` is a skip, which CI refuses.
pub fn sdk_client(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "{var} is required in CI (scripts/test.sh sets it)"
            );
            eprintln!("note: {var} unset; skipping (run scripts/test.sh)");
            None
        }
    }
}

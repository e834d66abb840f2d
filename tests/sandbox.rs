//! A hostile agent in each real harness: the fake model asks for shell commands that try every
//! escape we know of. Each attempt must fail while the same tool keeps working inside its own
//! workspace, and model calls must still stream through the gateway with their usage counted.
//! One suite, run against both drivers. `scripts/test.sh` runs it inside a loopback-only
//! network namespace, with bubblewrap installed.

use std::path::PathBuf;

use karta_e2e::*;
use serde_json::{json, Value};

const PROVIDER_KEY: &str = "sk-platform-secret-4242";
const KEY_ENV: &str = "KARTA_TEST_PROVIDER_KEY";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Claude,
    OpenCode,
}

impl Kind {
    /// One scripted shell call when a message says `trigger`, then a closing text.
    fn script(self, trigger: &str, command: &str) -> String {
        let call = match self {
            Kind::Claude => json!({"tool_use": {"name": "Bash",
                "input": {"command": command, "description": "probe"}}}),
            Kind::OpenCode => json!({"tool_call": {"name": "bash",
                "arguments": {"command": command, "description": "probe"}}}),
        };
        let mut call = call;
        call["match"] = json!(trigger);
        json!([call, {"match": "", "text": "probed"}]).to_string()
    }
}

/// Two tenants on one Karta, each with a project of the same app.
struct Lab {
    e: HarnessEnv,
    rival_key: String,
    data: PathBuf,
}

fn lab(kind: Kind, script: &str, extra: &str) -> Option<Lab> {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), script);
    let (provider, base, plugin, bin, example) = match kind {
        Kind::Claude => (
            "anthropic",
            mock.url.clone(),
            claude_plugin(),
            claude_bin()?,
            "support-bot",
        ),
        Kind::OpenCode => (
            "openai",
            format!("{}/v1", mock.url),
            opencode_plugin(),
            opencode_bin()?,
            "opencode-app",
        ),
    };
    let app = app_copy(dir.path(), "app", example, None);
    if let Kind::OpenCode = kind {
        std::fs::write(
            app.join(".opencode/opencode.jsonc"),
            r#"{ "permission": { "bash": "allow" } }"#,
        )
        .unwrap();
    }
    let settings = match kind {
        Kind::Claude => format!(r#"{{ command = "{}", max_retries = 0 }}"#, bin.display()),
        Kind::OpenCode => format!(
            r#"{{ command = "{}", model = "fake-model" }}"#,
            bin.display()
        ),
    };
    let toml = format!(
        r#"
[providers.{provider}]
api_key = {{ env = "{KEY_ENV}" }}
base_url = "{base}"

[[drivers]]
path = "{plugin}"
settings = {settings}

[[tenants]]
slug = "acme"
name = "Acme"

[[tenants]]
slug = "rival"
name = "Rival"

[[projects]]
tenant = "acme"
slug = "app"
path = "{app}"
{extra}

[[projects]]
tenant = "rival"
slug = "app"
path = "{app}"
"#,
        plugin = plugin.display(),
        app = app.display(),
    );
    let data = dir.path().join(".karta");
    let e = HarnessEnv::start(dir, mock, &toml, &[(KEY_ENV, PROVIDER_KEY)]);
    let rival_key = e.k().create_key("rival");
    Some(Lab { e, rival_key, data })
}

impl Lab {
    fn session(&self, key: &str) -> String {
        let r = self
            .e
            .c
            .post(format!("{}/v1/sessions", self.e.k().public))
            .bearer_auth(key)
            .json(&json!({"permission_mode": "autonomous"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn turn(&self, key: &str, sid: &str, text: &str) -> Vec<SseFrame> {
        let r = self
            .e
            .c
            .post(format!("{}/v1/sessions/{sid}/messages", self.e.k().public))
            .bearer_auth(key)
            .json(&json!({"text": text, "stream": true}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        SseReader::new(r).rest()
    }

    fn workspace(&self, sid: &str) -> PathBuf {
        let root = self.data.join("workspaces");
        for org in std::fs::read_dir(&root).unwrap().flatten() {
            let ws = org.path().join(sid);
            if ws.is_dir() {
                return ws;
            }
        }
        panic!("no workspace for session {sid} under {}", root.display());
    }
}

/// What the shell tool printed in the turn (the last tool result).
fn tool_output(frames: &[SseFrame]) -> String {
    frames
        .iter()
        .rev()
        .filter(|f| f.event == "tool_use" && f.data["data"]["status"] == "completed")
        .find_map(|f| f.data["data"]["result"].as_str())
        .unwrap_or_else(|| panic!("no completed tool call: {frames:?}"))
        .to_string()
}

/// `cmd` must fail: prints `BLOCKED-name` when it does, `ESCAPED-name` when it does not.
fn attempt(name: &str, cmd: &str) -> String {
    format!("if ( {cmd} ) >/dev/null 2>&1; then echo ESCAPED-{name}; else echo BLOCKED-{name}; fi")
}

fn escape_suite(kind: Kind) {
    let Some(l) = lab(kind, "[]", "") else { return };
    // The rival works first, so its workspace and harness exist while the agent probes.
    let rival_sid = l.session(&l.rival_key);
    let frames = l.turn(&l.rival_key, &rival_sid, "hello");
    assert_eq!(done(&frames)["status"], "completed", "{frames:?}");
    let rival_ws = l.workspace(&rival_sid);
    let sid = l.session(&l.e.key);
    let own_ws = l.workspace(&sid);
    let own_org = own_ws
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let data = l.data.display().to_string();
    let karta_pid = l.e.k().pid();
    let public_port = l.e.k().public.rsplit(':').next().unwrap().to_string();
    let mock_port = l.e.mock.url.rsplit(':').next().unwrap().to_string();
    // The agent is told the exact host paths and ports, as an attacker who read the docs would
    // guess them.
    let probe = [
        attempt(
            "environ",
            &format!("grep -a KARTA_ADMIN_TOKEN /proc/{karta_pid}/environ"),
        ),
        attempt("database", &format!("head -c 16 {data}/karta.db")),
        // Only the folders leading to its own workspace exist in the sandbox.
        attempt(
            "list-data",
            &format!("ls -A {data} {data}/workspaces | grep -Ev '^(workspaces|{own_org}|)$|:$'"),
        ),
        attempt(
            "rival-server",
            &format!("ls {data}/sandbox/run/*/control.sock"),
        ),
        attempt("list-rival", &format!("ls {}", rival_ws.display())),
        attempt(
            "write-rival",
            &format!("touch {}/pwned", rival_ws.display()),
        ),
        attempt("plugin-drop", &format!("touch {data}/plugins/evil.so")),
        attempt(
            "karta-api",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{public_port}"),
        ),
        attempt(
            "provider-direct",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{mock_port}"),
        ),
        attempt("outside", "exec 3<>/dev/tcp/1.1.1.1/80"),
        attempt("sysctl", "echo 60 > /proc/sys/vm/swappiness"),
        attempt("root", "test \"$(id -u)\" = 0"),
        attempt("provider-key", &format!("env | grep -q {PROVIDER_KEY}")),
        "echo inside > own.txt && echo OWN-$(cat own.txt)".to_string(),
        "env | grep -Eq '^(ANTHROPIC|OPENAI)_API_KEY=kgw_' && echo TOKEN-OK".to_string(),
    ]
    .join("; ");
    l.e.mock.set_script(&kind.script("probe", &probe));

    let frames = l.turn(&l.e.key, &sid, "probe");
    let out = tool_output(&frames);
    assert!(
        !out.contains("ESCAPED-"),
        "{kind:?}: an escape worked:\n{out}"
    );
    for name in [
        "environ",
        "database",
        "list-data",
        "rival-server",
        "list-rival",
        "write-rival",
        "plugin-drop",
        "karta-api",
        "provider-direct",
        "outside",
        "sysctl",
        "root",
        "provider-key",
    ] {
        assert!(
            out.contains(&format!("BLOCKED-{name}")),
            "{kind:?}: {name} not tried:\n{out}"
        );
    }
    assert!(
        out.contains("OWN-inside"),
        "{kind:?}: the tool failed inside:\n{out}"
    );
    assert!(
        out.contains("TOKEN-OK"),
        "{kind:?}: no gateway token:\n{out}"
    );
    assert!(!rival_ws.join("pwned").exists());
    assert!(!l.data.join("plugins/evil.so").exists());
    assert_eq!(
        std::fs::read_to_string(own_ws.join("own.txt")).unwrap(),
        "inside\n"
    );
    assert_eq!(done(&frames)["status"], "completed");

    // The gateway recorded each call with the counts the fake reported, and they add up to the
    // turn's usage.
    // A call is recorded once the gateway has seen its body end, which can come just after the
    // harness has already finished its turn: wait a bounded time for both.
    let k = l.e.k();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let calls = loop {
        let calls: Value =
            l.e.c
                .get(format!("{}/admin/v1/sessions/{sid}/model_calls", k.admin))
                .bearer_auth(&k.admin_token)
                .send()
                .unwrap()
                .json()
                .unwrap();
        let calls = calls["model_calls"].as_array().unwrap().clone();
        if calls.len() >= 2 || std::time::Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(calls.len(), 2, "{kind:?}: {calls:?}");
    let usage = &done(&frames)["usage"];
    let sum = |field: &str| {
        calls
            .iter()
            .map(|c| c[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(sum("input_tokens"), usage["input_tokens"].as_i64().unwrap());
    assert_eq!(
        sum("output_tokens"),
        usage["output_tokens"].as_i64().unwrap()
    );
    for c in &calls {
        assert_eq!(c["status"], 200);
        assert_eq!(
            (c["input_tokens"].as_i64(), c["output_tokens"].as_i64()),
            (Some(100), Some(20))
        );
        assert_eq!(c["streamed"], true);
    }

    // Every model call went through the gateway, which swapped in the platform's key; the
    // harness only ever held its session token.
    let calls = l.e.mock.requests();
    assert!(!calls.is_empty());
    for c in &calls {
        let h = &c["headers"];
        let sent = h["x-api-key"]
            .as_str()
            .or_else(|| h["authorization"].as_str())
            .unwrap_or_default();
        assert!(sent.contains(PROVIDER_KEY), "{c}");
    }
}

#[test]
fn claude_code_cannot_escape_its_sandbox() {
    escape_suite(Kind::Claude);
}

#[test]
fn opencode_cannot_escape_its_sandbox() {
    escape_suite(Kind::OpenCode);
}

/// Runs one scripted shell command in a new turn; returns the turn's frames.
fn run_command(l: &Lab, sid: &str, kind: Kind, command: &str) -> Vec<SseFrame> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let trigger = format!("go-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    l.e.mock.set_script(&kind.script(&trigger, command));
    l.turn(&l.e.key, sid, &trigger)
}

fn limit_error(frames: &[SseFrame]) -> Option<String> {
    frames
        .iter()
        .filter(|f| f.event == "error")
        .filter_map(|f| f.data["data"]["message"].as_str())
        .find(|m| m.contains("limit"))
        .map(str::to_string)
}

fn limits_suite(kind: Kind) {
    let Some(l) = lab(kind, "[]", "sandbox = { memory_mb = 768, processes = 256 }") else {
        return;
    };
    let sid = l.session(&l.e.key);

    // A memory hog: `tail` keeps a line with no end in memory.
    let frames = run_command(
        &l,
        &sid,
        kind,
        "head -c 4000M /dev/zero | tail > /dev/null; echo after-hog",
    );
    let msg =
        limit_error(&frames).unwrap_or_else(|| panic!("{kind:?}: no limit error: {frames:?}"));
    assert!(msg.contains("memory limit (768 MiB)"), "{msg}");
    let frames = run_command(&l, &sid, kind, "echo recovered-1");
    assert!(tool_output(&frames).contains("recovered-1"), "{frames:?}");
    assert_eq!(done(&frames)["status"], "completed");

    // A fork bomb (dash gives up at the first refused fork instead of retrying).
    let frames = run_command(
        &l,
        &sid,
        kind,
        "sh -c 'i=0; while [ $i -lt 1000 ]; do setsid -f sleep 60 </dev/null >/dev/null 2>&1 || exit 0; i=$((i+1)); done' 2>&1 | tail -1; echo after-bomb",
    );
    let msg =
        limit_error(&frames).unwrap_or_else(|| panic!("{kind:?}: no limit error: {frames:?}"));
    assert!(msg.contains("process limit (256)"), "{msg}");
    let frames = run_command(&l, &sid, kind, "echo recovered-2");
    assert!(tool_output(&frames).contains("recovered-2"), "{frames:?}");
    assert_eq!(done(&frames)["status"], "completed");
}

#[test]
fn claude_code_hits_its_limits_and_the_session_recovers() {
    limits_suite(Kind::Claude);
}

#[test]
fn opencode_hits_its_limits_and_the_session_recovers() {
    limits_suite(Kind::OpenCode);
}

fn full_network_suite(kind: Kind) {
    let Some(l) = lab(kind, "[]", "sandbox = { network = \"full\" }") else {
        return;
    };
    let sid = l.session(&l.e.key);
    let public_port = l.e.k().public.rsplit(':').next().unwrap().to_string();
    // Through the proxy, the host's own services are refused (403) and names are resolved by
    // the proxy (this test's network has no DNS: 502); without it there is no route at all.
    let frames = run_command(
        &l,
        &sid,
        kind,
        &format!(
            "echo \"A:$(curl -sS -o /dev/null -w '%{{http_code}}' --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{public_port}/healthz 2>&1)\"; \
             echo \"B:$(curl -sS -o /dev/null https://127.0.0.1:{public_port}/healthz 2>&1 | head -c 120)\"; \
             echo \"C:$(curl -sS -o /dev/null -w '%{{http_code}}' -x \"$HTTP_PROXY\" http://example.invalid/ 2>&1)\"; \
             echo \"D:$(curl -sS -o /dev/null -w '%{{http_code}}' -x http://127.0.0.1:3128 http://example.invalid/ 2>&1)\""
        ),
    );
    let out = tool_output(&frames);
    assert!(
        out.contains("A:403"),
        "{kind:?}: host loopback through the proxy:\n{out}"
    );
    assert!(
        out.contains("B:curl"),
        "{kind:?}: direct connection to the host:\n{out}"
    );
    assert!(
        out.contains("C:502"),
        "{kind:?}: a name through the proxy:\n{out}"
    );
    assert!(
        out.contains("D:407"),
        "{kind:?}: the proxy without the session token:\n{out}"
    );
    assert_eq!(done(&frames)["status"], "completed");
}

#[test]
fn claude_code_reaches_out_only_through_the_egress_proxy() {
    full_network_suite(Kind::Claude);
}

#[test]
fn opencode_reaches_out_only_through_the_egress_proxy() {
    full_network_suite(Kind::OpenCode);
}

fn planted_links_suite(kind: Kind) {
    let Some(mut l) = lab(kind, "[]", "") else {
        return;
    };
    let sid = l.session(&l.e.key);
    let data = l.data.display().to_string();
    // The agent swaps the folders Karta seeds at the next harness start for links to Karta's
    // data folder (the paths as the host sees them).
    let frames = run_command(
        &l,
        &sid,
        kind,
        &format!(
            "rm -rf \"$HOME/.claude\" \"$HOME/.config/opencode\" .opencode; \
             ln -s {data} \"$HOME/.claude\"; mkdir -p \"$HOME/.config\"; \
             ln -s {data} \"$HOME/.config/opencode\"; ln -s {data} .opencode; echo planted"
        ),
    );
    assert!(tool_output(&frames).contains("planted"), "{frames:?}");
    // A restart makes the next turn start a new harness, seeding its folders again.
    l.e.restart();
    let frames = run_command(&l, &sid, kind, "echo after");
    let _ = frames;
    for name in [
        "package.json",
        "package-lock.json",
        "node_modules",
        ".claude",
    ] {
        assert!(
            !l.data.join(name).exists(),
            "{kind:?}: Karta wrote {name} through a link into its data folder"
        );
    }
}

#[test]
fn claude_code_links_planted_in_the_home_are_not_followed() {
    planted_links_suite(Kind::Claude);
}

#[test]
fn opencode_links_planted_in_the_workspace_are_not_followed() {
    planted_links_suite(Kind::OpenCode);
}

/// The `--port` of the `opencode serve` working in `workspace` (host network: `backend =
/// "none"`).
fn opencode_port(workspace: &std::path::Path) -> Option<u16> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        if std::fs::read_link(e.path().join("cwd")).ok()? != workspace {
            return None;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a == "serve") {
            return None;
        }
        let i = args.iter().position(|a| a == "--port")?;
        args.get(i + 1)?.parse().ok()
    })
}

#[test]
fn opencode_serve_answers_only_karta() {
    // Unsandboxed (the one mode where another process could reach its port at all), the server
    // still refuses anyone without its per-server password.
    if opencode_bin().is_none() {
        return;
    }
    std::env::set_var("KARTA_SANDBOX__BACKEND", "none");
    let l = lab(Kind::OpenCode, "[]", "");
    std::env::remove_var("KARTA_SANDBOX__BACKEND");
    let Some(l) = l else { return };
    let sid = l.session(&l.e.key);
    let frames = l.turn(&l.e.key, &sid, "hello");
    assert_eq!(done(&frames)["status"], "completed");
    let port = opencode_port(&l.workspace(&sid)).expect("opencode serve is running");
    let c = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/session");
    assert_eq!(c.get(&url).send().unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .basic_auth("opencode", Some("guess"))
            .send()
            .unwrap()
            .status(),
        401
    );
}

//! The driver conformance suite (`karta_driver_kit::conformance`) run against every driver, in
//! both ways the host gets one: linked in (how production runs the first-party drivers) and
//! loaded from its plugin library. The scenarios a driver is held to follow the capabilities it
//! claims in its handshake. The real CLIs talk to `karta mock-model`; `scripts/test.sh` runs this
//! binary inside a loopback-only network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use karta_driver_api::abi_stable::library::lib_header_from_path;
use karta_driver_api::ffi::DriverModuleRef;
use karta_driver_api::{
    DriverFactory, DriverInfo, Event, HostContext, HostDriver, HostInfo, Participant, TurnRequest,
    PAYLOAD_VERSION,
};
use karta_driver_kit::conformance::{self, done_of, Rig, Scenario, Script};
use karta_e2e::*;
use serde_json::{json, Value};

/// How the driver reaches the host.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Linked,
    Plugin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Echo,
    Claude,
    OpenCode,
    Acp,
}

struct DriverRig {
    kind: Kind,
    driver: HostDriver,
    info: DriverInfo,
    dir: tempfile::TempDir,
    app: PathBuf,
    mock: Option<MockModel>,
    env: BTreeMap<String, String>,
    /// Model calls the fake had seen when the scenario began.
    calls_before: Mutex<usize>,
}

fn factory(kind: Kind, mode: Mode) -> DriverFactory {
    match mode {
        Mode::Linked => match kind {
            Kind::Echo => DriverFactory::linked::<karta_driver_echo::EchoDriver>(),
            Kind::Claude => DriverFactory::linked::<karta_driver_claude_code::ClaudeDriver>(),
            Kind::OpenCode => DriverFactory::linked::<karta_driver_opencode::OpenCodeDriver>(),
            Kind::Acp => DriverFactory::linked::<karta_driver_acp::AcpDriver>(),
        },
        Mode::Plugin => {
            let lib = match kind {
                Kind::Echo => echo_plugin(),
                Kind::Claude => claude_plugin(),
                Kind::OpenCode => opencode_plugin(),
                Kind::Acp => acp_plugin(),
            };
            let module = lib_header_from_path(&lib)
                .and_then(|h| h.init_root_module::<DriverModuleRef>())
                .unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
            DriverFactory::module(module).unwrap()
        }
    }
}

impl DriverRig {
    fn new(kind: Kind, mode: Mode) -> Option<DriverRig> {
        let dir = tempfile::tempdir().unwrap();
        let (settings, app, mock, env) = match kind {
            Kind::Echo => (
                json!({"delay_ms": 5}),
                app_copy(dir.path(), "app", "hello-echo", None),
                None,
                BTreeMap::new(),
            ),
            Kind::Acp => (
                json!({"command": acp_agent()}),
                app_copy(dir.path(), "app", "hello-echo", None),
                None,
                BTreeMap::new(),
            ),
            Kind::Claude => {
                let bin = claude_bin()?;
                let mock = MockModel::start(dir.path(), "[]");
                let env = BTreeMap::from([
                    ("ANTHROPIC_BASE_URL".to_string(), mock.url.clone()),
                    ("ANTHROPIC_API_KEY".to_string(), "sk-test-fake".to_string()),
                ]);
                (
                    json!({"command": bin, "max_retries": 0}),
                    app_copy(dir.path(), "app", "support-bot", None),
                    Some(mock),
                    env,
                )
            }
            Kind::OpenCode => {
                let bin = opencode_bin()?;
                let mock = MockModel::start(dir.path(), "[]");
                let env = BTreeMap::from([
                    ("OPENAI_BASE_URL".to_string(), format!("{}/v1", mock.url)),
                    ("OPENAI_API_KEY".to_string(), "sk-openai-fake".to_string()),
                ]);
                (
                    json!({"command": bin, "model": "fake-model"}),
                    app_copy(dir.path(), "app", "opencode-app", None),
                    Some(mock),
                    env,
                )
            }
        };
        let f = factory(kind, mode);
        let host = HostInfo::current("conformance");
        let info = f.describe(&host).unwrap();
        let ctx = HostContext::new(host, dir.path().join("data").display().to_string());
        let driver = f.build(&ctx, &settings).unwrap();
        Some(DriverRig {
            kind,
            driver,
            info,
            dir,
            app,
            mock,
            env,
            calls_before: Mutex::new(0),
        })
    }

    fn mock(&self) -> &MockModel {
        self.mock.as_ref().expect("a harness rig has a fake model")
    }

    /// The model calls the fake received (Messages or Chat Completions).
    fn model_calls(&self) -> Vec<Value> {
        self.mock()
            .requests()
            .into_iter()
            .filter(|r| {
                let p = r["path"].as_str().unwrap_or("");
                p.starts_with("/v1/messages") || p.starts_with("/v1/chat")
            })
            .collect()
    }

    /// OpenCode's `bash` tool: allowed outright, or as the example app has it (asked about).
    fn opencode_bash(&self, allowed: bool) {
        let f = self.app.join(".opencode/opencode.jsonc");
        let original = workspace_root().join("examples/opencode-app/.opencode/opencode.jsonc");
        if allowed {
            std::fs::write(f, r#"{ "permission": { "bash": "allow" } }"#).unwrap();
        } else {
            std::fs::copy(original, f).unwrap();
        }
    }
}

const CLAUDE_TOUCH: &str = r#"{"tool_use": {"name": "Bash", "input": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;
const OPENCODE_TOUCH: &str = r#"{"tool_call": {"name": "bash", "arguments": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;

impl Rig for DriverRig {
    fn driver(&self) -> &HostDriver {
        &self.driver
    }

    fn request(&self, session_id: &str, text: &str) -> TurnRequest {
        let workspace = self.dir.path().join("work").join(session_id);
        if !workspace.exists() {
            // As the host does: a session's workspace starts as a copy of the app.
            copy_tree(&self.app, &workspace);
        }
        let mut r = TurnRequest::default();
        r.v = PAYLOAD_VERSION;
        r.app_dir = self.app.display().to_string();
        r.workspace_dir = workspace.display().to_string();
        r.text = text.to_string();
        r.agent = match self.kind {
            Kind::Echo | Kind::Acp => "default",
            Kind::Claude => "support",
            Kind::OpenCode => "build",
        }
        .to_string();
        r.participant = Participant::new("conformance", "human");
        r.env = self.env.clone();
        r.app_config = Value::Null;
        r
    }

    fn script(&self, scenario: Scenario) -> Script {
        if self.mock.is_some() {
            *self.calls_before.lock().unwrap() = self.model_calls().len();
        }
        match self.kind {
            Kind::Echo => match scenario {
                Scenario::Text => Script::new(["hello there"]).expect("echo: hello there"),
                Scenario::Tool => Script::new(["use a tool"]).tool("echo"),
                Scenario::ApproveOnce | Scenario::ApproveSession | Scenario::Deny => {
                    Script::new(["[approve] first", "[approve] second"]).tool("echo")
                }
                Scenario::Cancel => Script::new(["[flood:100000] long"]),
                // Echo has no process to kill: its harness reports a failure instead.
                Scenario::Crash => Script::new(["[fail] now", "after the failure"]),
                Scenario::Resume => Script::new(["first", "second"]),
                Scenario::Usage => Script::new(["count these four words"]),
            },
            Kind::Acp => match scenario {
                Scenario::Text => Script::new(["hello there"]).expect("acp: hello there"),
                Scenario::Tool => Script::new(["[tool] look around"]).tool("list files"),
                Scenario::ApproveOnce | Scenario::ApproveSession | Scenario::Deny => {
                    Script::new(["[ask] write a note", "[ask] and another"]).tool("write notes.txt")
                }
                Scenario::Cancel => Script::new(["[slow] take your time"]),
                Scenario::Crash => {
                    Script::new(["[crash] now", "after the crash"]).expect("acp: after the crash")
                }
                Scenario::Resume => {
                    Script::new(["remember the word apple", "[recall] it"]).expect("apple")
                }
                Scenario::Usage => Script::new(["count these words"]),
            },
            Kind::Claude | Kind::OpenCode => {
                let claude = self.kind == Kind::Claude;
                let touch = if claude { CLAUDE_TOUCH } else { OPENCODE_TOUCH };
                let bash = if claude { "Bash" } else { "bash" };
                if !claude {
                    self.opencode_bash(scenario == Scenario::Tool);
                }
                let (model, script) = match scenario {
                    Scenario::Text => (
                        r#"[{"text": "Hello from the fake model."}]"#.to_string(),
                        Script::new(["hi there"]).expect("Hello from the fake model."),
                    ),
                    Scenario::Tool => (
                        format!(
                            r#"[{{"{}": {{"name": "{bash}", "{}": {{"command": "echo hello-from-bash", "description": "Say hello"}}}}}}, {{"text": "It printed hello."}}]"#,
                            if claude { "tool_use" } else { "tool_call" },
                            if claude { "input" } else { "arguments" },
                        ),
                        Script::new(["run it"]).tool(bash).expect("It printed hello."),
                    ),
                    Scenario::ApproveOnce | Scenario::ApproveSession | Scenario::Deny => (
                        format!(r#"[{touch}, {{"text": "Finished."}}, {touch}, {{"text": "Again."}}]"#),
                        Script::new(["create a file", "and once more"]).tool(bash),
                    ),
                    Scenario::Cancel => (
                        r#"[{"match": "slow", "text": "too late", "delay": 30000}]"#.to_string(),
                        Script::new(["slow please"]),
                    ),
                    Scenario::Crash => (
                        r#"[{"match": "slow", "text": "too late", "delay": 30000}, {"match": "after", "text": "Back again."}]"#.to_string(),
                        Script::new(["slow please", "after the crash"]).expect("Back again."),
                    ),
                    Scenario::Resume => (
                        r#"[{"match": "first question", "text": "Answer one."}, {"match": "second question", "text": "Answer two."}]"#.to_string(),
                        Script::new(["first question", "second question"]).expect("Answer two."),
                    ),
                    Scenario::Usage => (
                        r#"[{"text": "Counted.", "usage": {"input_tokens": 31, "output_tokens": 7}}]"#.to_string(),
                        Script::new(["count"]),
                    ),
                };
                self.mock().set_script(&model);
                script
            }
        }
    }

    fn wait_busy(&self, _session_id: &str) -> bool {
        if self.mock.is_none() {
            return false;
        }
        // Busy once the harness waits on the (slow) model.
        let before = *self.calls_before.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.model_calls().len() <= before {
            assert!(
                Instant::now() < deadline,
                "the harness never called the model"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn crash(&self, session_id: &str) {
        if matches!(self.kind, Kind::Echo | Kind::Acp) {
            // Their scripts make the harness fail on its own.
            return;
        }
        let marker = if self.kind == Kind::Claude {
            "--permission-prompt-tool"
        } else {
            "serve"
        };
        let pid = harness_pid(session_id, marker).expect("the harness process");
        assert!(std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn verify(&self, scenario: Scenario, events: &[Event]) -> Result<(), String> {
        if self.mock.is_none() {
            return Ok(());
        }
        let model_calls = || self.model_calls();
        match scenario {
            // The history reached the model after the harness process was gone.
            Scenario::Resume => {
                let last = model_calls().pop().ok_or("no model call")?;
                let sent = last["body"]["messages"].to_string();
                if !sent.contains("Answer one.") {
                    return Err(format!("the resumed turn lost the history: {sent}"));
                }
            }
            // The fake's counts, as it reported them.
            Scenario::Usage => {
                let u = done_of(events)?.usage;
                if (u.input_tokens + u.cache_read_tokens, u.output_tokens) != (31, 7) {
                    return Err(format!("usage {u:?} is not the fake's 31 in / 7 out"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(if matches!(self.kind, Kind::Echo | Kind::Acp) {
            20
        } else {
            90
        })
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn run(kind: Kind, mode: Mode) {
    let Some(rig) = DriverRig::new(kind, mode) else {
        return;
    };
    let mut failures = Vec::new();
    for s in conformance::scenarios(&rig.info.capabilities) {
        let started = Instant::now();
        let r = conformance::check(&rig, s);
        eprintln!(
            "{kind:?}/{mode:?} {s:?}: {:?} in {:?}",
            r,
            started.elapsed()
        );
        if let Err(e) = r {
            failures.push(format!("{s:?}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{kind:?} ({mode:?}):\n{}",
        failures.join("\n")
    );
}

#[test]
fn echo_linked_in() {
    run(Kind::Echo, Mode::Linked);
}

#[test]
fn echo_as_a_plugin() {
    run(Kind::Echo, Mode::Plugin);
}

#[test]
fn claude_code_linked_in() {
    run(Kind::Claude, Mode::Linked);
}

#[test]
fn claude_code_as_a_plugin() {
    run(Kind::Claude, Mode::Plugin);
}

#[test]
fn acp_example_agent_linked_in() {
    run(Kind::Acp, Mode::Linked);
}

#[test]
fn acp_example_agent_as_a_plugin() {
    run(Kind::Acp, Mode::Plugin);
}

#[test]
fn opencode_linked_in() {
    run(Kind::OpenCode, Mode::Linked);
}

#[test]
fn opencode_as_a_plugin() {
    run(Kind::OpenCode, Mode::Plugin);
}

/// Drivers say what they can do; the suite above holds them to it.
#[test]
fn every_driver_describes_itself() {
    for kind in [Kind::Echo, Kind::Claude, Kind::OpenCode, Kind::Acp] {
        let info = factory(kind, Mode::Plugin)
            .describe(&HostInfo::current("conformance"))
            .unwrap();
        assert!(
            !info.name.is_empty() && !info.version.is_empty(),
            "{info:?}"
        );
        assert_eq!(info.settings_schema["type"], "object", "{info:?}");
    }
}

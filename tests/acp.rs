//! End-to-end: ACP agents as harnesses, through Karta's HTTP API. The scripted example agent
//! (`examples/acp-agent`) and the real `opencode acp` against `karta mock-model`; nothing leaves
//! loopback (`scripts/test.sh` runs this binary inside `unshare -n` where it can).

use karta_e2e::*;
use serde_json::json;

const KEY_ENV: &str = "KARTA_TEST_OPENAI_KEY";

/// The OpenAI provider pointing at the fake model, with its key from [`KEY_ENV`].
fn openai_head(mock: &MockModel) -> String {
    format!(
        "[providers.openai]\napi_key = {{ env = \"{KEY_ENV}\" }}\nbase_url = \"{}/v1\"\n",
        mock.url
    )
}

/// A project served by the `acp` driver with `settings` (TOML inline table), on `app`, after
/// `head` (providers, sandbox), with `vars` in the server's environment.
fn env_for(
    dir: tempfile::TempDir,
    mock: MockModel,
    app: &std::path::Path,
    settings: &str,
    head: &str,
    vars: &[(&str, &str)],
) -> HarnessEnv {
    let toml = format!(
        r#"{head}
[[drivers]]
name = "acp"
settings = {settings}

[[tenants]]
slug = "acme"
name = "Acme"

[[projects]]
tenant = "acme"
slug = "agent"
path = "{app}"
harness = "acp"
"#,
        app = app.display(),
    );
    HarnessEnv::start(dir, mock, &toml, vars)
}

/// Asks for a file, approves the tool once, and checks the turn: the tool ran, the answer came.
fn approve_a_tool_call(e: &HarnessEnv) {
    let sid = e.session();
    let mut s = e.stream(&sid, "create a file");
    let ask = s.until("input_required").pop().expect("an approval");
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    let cont = e.decide(&sid, &rid, "approve_once");
    let frames = s.rest();
    let tool_done = cont["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(frames.iter().map(|f| &f.data))
        .any(|ev| ev["type"] == "tool_use" && ev["data"]["status"] == "completed");
    assert!(tool_done, "{cont}\n{frames:?}");
    assert_eq!(done(&frames)["status"], "completed", "{frames:?}");
    assert!(text_of(&frames).contains("Finished."), "{frames:?}");
}

#[test]
fn the_example_acp_agent_serves_turns_approvals_files_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), "[]");
    let app = app_copy(dir.path(), "agent-app", "hello-echo", None);
    let settings = format!(r#"{{ command = "{}" }}"#, acp_agent().display());
    let head = openai_head(&mock);
    let mut e = env_for(
        dir,
        mock,
        &app,
        &settings,
        &head,
        &[(KEY_ENV, "sk-openai-fake")],
    );
    let sid = e.session();

    // Text, a plan (a kind Karta does not define: a `custom` event), usage from the agent.
    let frames = e.stream(&sid, "[plan] hello").rest();
    assert_eq!(text_of(&frames), "acp: [plan] hello");
    let plan = frames
        .iter()
        .find(|f| f.event == "custom")
        .expect("the plan as a custom event");
    assert_eq!(plan.data["data"]["type"], "plan", "{plan:?}");
    assert_eq!(
        plan.data["data"]["data"]["entries"][0]["content"],
        "read the request"
    );
    let d = done(&frames);
    assert_eq!(d["status"], "completed");
    assert!(d["usage"]["input_tokens"].as_u64().unwrap() > 0, "{d}");

    // A permission request is an approval; allowed, the agent writes through the client's file
    // system, inside the workspace.
    let mut s = e.stream(&sid, "[ask] write the note");
    let ask = s.until("input_required").pop().unwrap();
    assert_eq!(ask.data["data"]["tool"], "write notes.txt");
    assert_eq!(
        ask.data["data"]["options"],
        json!(["approve_once", "approve_session", "deny"])
    );
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    let cont = e.decide(&sid, &rid, "approve_once");
    assert!(
        cont["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ev| ev["type"] == "tool_use"
                && ev["data"]["status"] == "completed"
                && ev["data"]["result"] == "wrote 5 bytes"),
        "{cont}"
    );
    assert_eq!(done(&s.rest())["status"], "completed");
    assert_eq!(
        text_of(&e.stream(&sid, "[read notes.txt]").rest()),
        "read: hello"
    );

    // Nothing outside the workspace can be read through the client.
    for path in ["../../../../../../etc/hostname", "/etc/hostname"] {
        let text = text_of(&e.stream(&sid, &format!("[read {path}]")).rest());
        assert!(text.starts_with("read failed:"), "{path}: {text}");
    }

    // After a restart the agent is a new process: the session continues through session/load.
    e.restart();
    let text = text_of(&e.stream(&sid, "[recall]").rest());
    assert!(
        text.contains("[plan] hello") && text.contains("[ask] write the note"),
        "{text}"
    );
}

#[test]
fn a_project_without_an_agent_command_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), "[]");
    let app = app_copy(dir.path(), "agent-app", "hello-echo", None);
    let head = openai_head(&mock);
    let e = env_for(dir, mock, &app, "{}", &head, &[(KEY_ENV, "sk-openai-fake")]);
    let sid = e.session();
    let frames = e.stream(&sid, "hi").rest();
    let err = frames
        .iter()
        .find(|f| f.event == "error")
        .expect("an error");
    assert!(
        err.data["data"]["message"]
            .as_str()
            .unwrap()
            .contains("no ACP agent is configured"),
        "{err:?}"
    );
    assert_eq!(done(&frames)["status"], "failed");
}

const TOUCH: &str = r#"{"tool_call": {"name": "bash", "arguments": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;

#[test]
fn opencode_acp_runs_a_turn_with_a_tool_approval() {
    let Some(opencode) = opencode_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(
        dir.path(),
        &format!(r#"[{TOUCH}, {{"text": "Finished."}}]"#),
    );
    // The app names its ACP agent; OpenCode's provider points at the platform's gateway.
    let provider = json!({
        "provider": {"karta": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Karta",
            "options": {"baseURL": "${OPENAI_BASE_URL}", "apiKey": "${OPENAI_API_KEY}"},
            "models": {"fake-model": {"name": "fake-model", "tool_call": true,
                "limit": {"context": 128000, "output": 8192}}}
        }},
        "model": "karta/fake-model",
        "small_model": "karta/fake-model",
        "autoupdate": false,
        "share": "disabled"
    });
    let karta_jsonc = json!({"harness": {"acp": {
        "command": opencode,
        "args": ["acp"],
        "env": {
            "OPENCODE_CONFIG_CONTENT": provider.to_string(),
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_SHARE": "1"
        }
    }}});
    let app = app_copy(
        dir.path(),
        "ops",
        "opencode-app",
        Some(&karta_jsonc.to_string()),
    );
    let head = openai_head(&mock);
    let e = env_for(dir, mock, &app, "{}", &head, &[(KEY_ENV, "sk-openai-fake")]);
    approve_a_tool_call(&e);
    // The model was reached through the gateway, with the platform's key.
    let calls: Vec<_> = e
        .mock
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/v1/chat"))
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
}

/// The Claude Code ACP adapter from npm (`scripts/test.sh` installs it, pinned), or `None` (a
/// skip) outside CI.
fn claude_code_acp() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("KARTA_TEST_CLAUDE_CODE_ACP_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                std::path::PathBuf::from(h).join(
                    ".cache/karta-harnesses/claude-code-acp/node_modules/.bin/claude-code-acp",
                )
            })
        })?;
    if p.exists() {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "the Claude Code ACP adapter is required in CI but missing at {}",
        p.display()
    );
    None
}

const CLAUDE_TOUCH: &str = r#"{"tool_use": {"name": "Bash", "input": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;

/// The adapter is a Node.js program whose modules live outside any app folder, where a
/// bubblewrap sandbox cannot see them; this test runs it unconfined (`backend = "none"`) to
/// check the protocol, offline against the fake Anthropic model.
#[test]
fn the_claude_code_acp_adapter_runs_a_turn_with_a_tool_approval() {
    let Some(adapter) = claude_code_acp() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(
        dir.path(),
        &format!(r#"[{CLAUDE_TOUCH}, {{"text": "Finished."}}]"#),
    );
    let app = app_copy(dir.path(), "bot", "support-bot", None);
    let head = format!(
        "[sandbox]\nbackend = \"none\"\n\n[providers.anthropic]\n\
         api_key = {{ env = \"KARTA_TEST_ANTHROPIC_KEY\" }}\nbase_url = \"{}\"\n",
        mock.url
    );
    let settings = format!(
        r#"{{ command = "{}", env = {{ CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", DISABLE_AUTOUPDATER = "1", DISABLE_TELEMETRY = "1" }} }}"#,
        adapter.display()
    );
    let e = env_for(
        dir,
        mock,
        &app,
        &settings,
        &head,
        &[("KARTA_TEST_ANTHROPIC_KEY", "sk-test-fake")],
    );
    approve_a_tool_call(&e);
}

//! End-to-end: the real Claude Code CLI behind the Karta HTTP API, against `karta mock-model`.
//! Nothing leaves loopback; `scripts/test.sh` runs this binary inside `unshare -n` where it can.

use std::time::{Duration, Instant};

use karta_e2e::*;
use serde_json::json;

const KEY_ENV: &str = "KARTA_TEST_ANTHROPIC_KEY";

/// A support-bot project served by the Claude Code plugin, talking to a fake model with `script`.
fn env(script: &str) -> Option<HarnessEnv> {
    env_with(script, &[])
}

/// Appends `extra` to the running server's configuration and reloads it.
fn add_config(e: &HarnessEnv, extra: &str) {
    let path = e.dir.path().join("karta.platform.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(extra);
    std::fs::write(&path, toml).unwrap();
    let r =
        e.c.post(format!("{}/admin/v1/config/reload", e.k().admin))
            .bearer_auth(&e.k().admin_token)
            .send()
            .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
}

/// [`env`] with more environment for the server.
fn env_with(script: &str, extra: &[(&str, &str)]) -> Option<HarnessEnv> {
    let claude = claude_bin()?;
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), script);
    let app = app_copy(dir.path(), "support-bot", "support-bot", None);
    let toml = format!(
        r#"
[providers.anthropic]
api_key = {{ env = "{KEY_ENV}" }}
base_url = "{url}"

[[drivers]]
path = "{plugin}"
settings = {{ command = "{claude}", max_retries = 0 }}

[[tenants]]
slug = "acme"
name = "Acme"

[[projects]]
tenant = "acme"
slug = "bot"
path = "{app}"
"#,
        url = mock.url,
        plugin = claude_plugin().display(),
        claude = claude.display(),
        app = app.display(),
    );
    let mut vars = vec![(KEY_ENV, "sk-test-fake")];
    vars.extend_from_slice(extra);
    Some(HarnessEnv::start(dir, mock, &toml, &vars))
}

/// The text of every message the model was sent in its last request.
fn last_request_text(mock: &MockModel) -> String {
    let reqs = mock.message_requests();
    reqs.last().unwrap()["body"]["messages"].to_string()
}

#[test]
fn a_text_turn_streams_and_reports_the_fakes_usage() {
    let Some(e) = env(
        r#"[{"text": "Hello from the fake model.", "usage": {"input_tokens": 31, "output_tokens": 7}}]"#,
    ) else {
        return;
    };
    let sid = e.session();
    let frames = e.stream(&sid, "hi there").rest();
    let kinds: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert!(
        kinds.contains(&"step_start") && kinds.contains(&"step_finish"),
        "{kinds:?}"
    );
    assert!(
        frames.iter().filter(|f| f.event == "text").count() >= 2,
        "text arrives in deltas: {kinds:?}"
    );
    assert_eq!(text_of(&frames), "Hello from the fake model.");
    let d = done(&frames);
    assert_eq!(d["status"], "completed");
    assert_eq!(d["usage"]["input_tokens"], 31);
    assert_eq!(d["usage"]["output_tokens"], 7);
    assert!(d["usage"]["cost_micro_cents"].as_u64().unwrap() > 0);
    assert_eq!(d["message"]["text"], "Hello from the fake model.");
    // The platform's key and endpoint reached the harness; CLAUDE.md went with the prompt.
    let req = e.mock.message_requests().pop().unwrap();
    assert_eq!(req["headers"]["x-api-key"], "sk-test-fake");
    assert!(req["body"].to_string().contains("Lumen Books"));
    // Metered as the fake reported it.
    let m = e.metered();
    assert_eq!(m["turns"], 1, "{m}");
    assert_eq!(m["input_tokens"], 31);
    assert_eq!(m["output_tokens"], 7);
}

#[test]
fn the_second_turn_remembers_the_first_and_survives_a_karta_restart() {
    let Some(mut e) = env(
        r#"[{"match": "first question", "text": "Answer one."}, {"match": "second question", "text": "Answer two."}, {"match": "third question", "text": "Answer three."}]"#,
    ) else {
        return;
    };
    let sid = e.session();
    assert_eq!(
        text_of(&e.stream(&sid, "first question").rest()),
        "Answer one."
    );
    assert_eq!(
        text_of(&e.stream(&sid, "second question").rest()),
        "Answer two."
    );
    assert!(
        last_request_text(&e.mock).contains("Answer one."),
        "history not replayed"
    );

    e.restart();
    assert_eq!(
        text_of(&e.stream(&sid, "third question").rest()),
        "Answer three."
    );
    let history = last_request_text(&e.mock);
    assert!(
        history.contains("Answer one.") && history.contains("Answer two."),
        "resume lost the history: {history}"
    );
}

#[test]
fn a_model_error_becomes_an_error_event() {
    let Some(e) = env(
        r#"[{"match": "", "once": false, "error": {"status": 400, "message": "scripted failure"}}]"#,
    ) else {
        return;
    };
    let sid = e.session();
    let frames = e.stream(&sid, "hi").rest();
    let err = frames
        .iter()
        .find(|f| f.event == "error")
        .expect("an error event");
    assert_eq!(err.data["data"]["code"], "model_error");
    assert!(
        err.data["data"]["message"]
            .as_str()
            .unwrap()
            .contains("scripted failure"),
        "{err:?}"
    );
    assert_eq!(done(&frames)["status"], "failed");
}

/// The pid of the `claude` process serving a session (its working folder is the workspace).
fn claude_pid(sid: &str) -> Option<u32> {
    harness_pid(sid, "--permission-prompt-tool")
}

#[test]
fn without_the_cli_a_turn_fails_with_an_error_that_names_the_install_command() {
    let Some(_) = claude_bin() else { return };
    let frames = turn_without_cli(&claude_plugin(), "support-bot");
    let err = frames
        .iter()
        .find(|f| f.event == "error")
        .expect("an error event");
    assert!(
        err.data["data"]["message"]
            .as_str()
            .unwrap()
            .contains("karta harness install claude-code"),
        "{err:?}"
    );
    assert_eq!(done(&frames)["status"], "failed");
}

#[test]
fn an_idle_harness_is_stopped_and_the_next_turn_resumes_it() {
    let Some(e) =
        env(r#"[{"match": "one", "text": "First."}, {"match": "two", "text": "Second."}]"#)
    else {
        return;
    };
    // This copy of the app stops its harness after one idle second.
    let app = e.dir.path().join("support-bot");
    std::fs::write(
        app.join("karta.jsonc"),
        r#"{ "harness": { "claude": { "idle_timeout_seconds": 1 } } }"#,
    )
    .unwrap();
    let sid = e.session();
    assert_eq!(text_of(&e.stream(&sid, "one").rest()), "First.");
    assert!(
        claude_pid(&sid).is_some(),
        "the process stays warm after a turn"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while claude_pid(&sid).is_some() {
        assert!(
            Instant::now() < deadline,
            "the idle harness was not stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(text_of(&e.stream(&sid, "two").rest()), "Second.");
    assert!(
        last_request_text(&e.mock).contains("First."),
        "the new process did not resume"
    );
}

#[test]
fn reasoning_streams_when_the_caller_asks_for_thinking() {
    let Some(e) = env(r#"[{"thinking": "Let me think about books.", "text": "Here you go."}]"#)
    else {
        return;
    };
    let sid = e.session();
    let r =
        e.c.post(format!("{}/v1/sessions/{sid}/messages", e.k().public))
            .bearer_auth(&e.key)
            .json(&json!({"text": "think first", "stream": true, "thinking": true}))
            .send()
            .unwrap();
    let frames = SseReader::new(r).rest();
    let reasoning: String = frames
        .iter()
        .filter(|f| f.event == "reasoning")
        .map(|f| f.data["data"]["part"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasoning, "Let me think about books.", "{frames:?}");
    assert_eq!(text_of(&frames), "Here you go.");
}

#[test]
fn the_driver_finds_the_cli_installed_in_the_data_folder() {
    let Some(claude) = claude_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), r#"[{"text": "Found it."}]"#);
    let app = app_copy(dir.path(), "support-bot", "support-bot", None);
    // Where `karta harness install claude-code` puts it.
    let bin = dir
        .path()
        .join(".karta/harnesses/claude-code/node_modules/.bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&claude, bin.join("claude")).unwrap();
    let toml = format!(
            "[providers.anthropic]\nbase_url = \"{}\"\napi_key = {{ env = \"{KEY_ENV}\" }}\n\n[[drivers]]\npath = \"{}\"\n\n[[tenants]]\nslug = \"acme\"\nname = \"Acme\"\n\n[[projects]]\ntenant = \"acme\"\nslug = \"bot\"\npath = \"{}\"\n",
            mock.url,
            claude_plugin().display(),
            app.display()
        );
    let e = HarnessEnv::start(
        dir,
        mock,
        &toml,
        &[("PATH", "/usr/bin:/bin"), (KEY_ENV, "sk-x")],
    );
    let sid = e.session();
    assert_eq!(text_of(&e.stream(&sid, "hi").rest()), "Found it.");
}

#[test]
fn harness_processes_die_with_karta() {
    let Some(mut e) = env(r#"[{"text": "Still here."}]"#) else {
        return;
    };
    let sid = e.session();
    e.stream(&sid, "hi").rest();
    assert!(
        claude_pid(&sid).is_some(),
        "the process stays warm after a turn"
    );
    // A hard kill: Karta gets no chance to clean up.
    e.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while claude_pid(&sid).is_some() {
        assert!(Instant::now() < deadline, "the harness outlived Karta");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_approval_whose_answer_is_larger_than_a_mebibyte_completes() {
    // Both answers carry the tool's input back (`updatedInput`), 1.3 MB each: the first is the
    // host's decision, the second is allowed by the driver for the session while the CLI keeps
    // writing. Neither may wedge the pipes.
    let big = "x".repeat(1_300_000);
    let call = |n: &str| {
        format!(
            r#"{{"tool_use": {{"name": "Bash", "input": {{"command": "touch big_{n}.txt && echo {n}", "description": "{big}"}}}}}}"#
        )
    };
    let script = format!(r#"[{}, {}, {{"text": "Done."}}]"#, call("one"), call("two"));
    let Some(e) = env(&script) else { return };
    let sid = e.session();
    let mut s = e.stream(&sid, "run both");
    let ask = s.until("input_required").pop().unwrap();
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    let cont = e.decide(&sid, &rid, "approve_session");
    let mut frames: Vec<SseFrame> = s.rest();
    frames.retain(|f| f.event == "tool_use" && f.data["data"]["status"] == "completed");
    let results: Vec<String> = cont["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "tool_use" && e["data"]["status"] == "completed")
        .map(|e| e["data"]["result"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(results, ["one", "two"], "{frames:?}");
    let last = cont["events"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["data"]["status"], "completed", "{last}");
}

/// Pids of processes whose command line contains `needle`.
fn pids_running(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn closing_a_session_stops_the_harness_with_the_processes_its_tools_started() {
    // The Bash tool runs its shell in a session of its own (setsid) and the job is detached
    // from it: only the harness's PID namespace still holds it.
    let Some(e) = env(
        r#"[{"tool_use": {"name": "Bash", "input": {"command": "touch marker_313.log && (tail -f marker_313.log > /dev/null 2>&1 &) && echo started", "description": "Start a background job"}}}, {"text": "Started."}]"#,
    ) else {
        return;
    };
    let sid = e.session();
    let mut s = e.stream(&sid, "start a background job");
    let ask = s.until("input_required").pop().unwrap();
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    e.decide(&sid, &rid, "approve_once");
    s.rest();
    assert!(
        !pids_running("tail -f marker_313.log").is_empty(),
        "the tool's background process should be running"
    );
    let r =
        e.c.delete(format!("{}/v1/sessions/{sid}", e.k().public))
            .bearer_auth(&e.key)
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_running("tail -f marker_313.log").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the tool's process outlived its closed session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_official_openai_python_client_talks_to_claude_code_through_the_adapters() {
    let Some(python) = sdk_client("KARTA_TEST_PYTHON") else {
        return;
    };
    let Some(e) = env(
        r#"[{"match": "", "once": false, "text": "Hello from the fake model.", "usage": {"input_tokens": 31, "output_tokens": 7}}]"#,
    ) else {
        return;
    };
    let out = run_sdk(
        &python,
        "openai_python.py",
        &e.k().public,
        &e.key,
        &[
            ("KARTA_PROJECT", "bot"),
            ("KARTA_EXPECT", "Hello from the fake model."),
            ("KARTA_EXPECT_USAGE", "31,7"),
        ],
    );
    assert!(out.contains("ok"), "{out}");
    // The continued response ran on the same Claude Code session: the model saw the first
    // message again in its history.
    let reqs = e.mock.message_requests();
    assert!(
        reqs.iter().any(|r| {
            let m = r["body"]["messages"].to_string();
            m.contains("remember maple") && m.contains("which tree")
        }),
        "no request carried the earlier turn"
    );
}

#[test]
fn the_official_openai_python_client_reads_claude_codes_reasoning_as_a_responses_item() {
    let Some(python) = sdk_client("KARTA_TEST_PYTHON") else {
        return;
    };
    let Some(e) = env(
        r#"[{"match": "", "once": false, "thinking": "Let me think about books.", "text": "Here you go."}]"#,
    ) else {
        return;
    };
    let out = run_sdk(
        &python,
        "openai_python_reasoning.py",
        &e.k().public,
        &e.key,
        &[
            ("KARTA_PROJECT", "bot"),
            ("KARTA_EXPECT", "Here you go."),
            ("KARTA_EXPECT_REASONING", "Let me think about books."),
        ],
    );
    assert!(out.contains("ok"), "{out}");
}

const TOUCH: &str = r#"{"tool_use": {"name": "Bash", "input": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;

#[test]
fn a_managed_agents_tool_confirmation_answers_a_real_claude_code_approval() {
    let script = format!(r#"[{TOUCH}, {{"text": "Finished."}}]"#);
    let Some(e) = env(&script) else { return };
    let base = format!("{}/v1/projects/bot/managed-agents/sessions", e.k().public);
    let r = e.c.post(&base).bearer_auth(&e.key).send().unwrap();
    assert_eq!(r.status(), 201);
    let sid = r.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let live =
        e.c.get(format!("{base}/{sid}/events/stream"))
            .bearer_auth(&e.key)
            .send()
            .unwrap();
    let mut live = SseReader::new(live);
    let post = |body: serde_json::Value| {
        e.c.post(format!("{base}/{sid}/events"))
            .bearer_auth(&e.key)
            .json(&body)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(
        post(json!({"type": "user.message", "text": "create a file"})),
        202
    );
    let asked = live.until("session.status_idle");
    let ask = asked
        .iter()
        .find(|f| f.event == "agent.tool_use" && f.data["evaluated_permission"] == "ask")
        .expect("Claude Code asked");
    assert_eq!(ask.data["name"], "Bash");
    assert_eq!(
        ask.data["input"]["command"],
        "touch made_by_agent.txt && echo created"
    );
    let rid = ask.data["request_id"].as_str().unwrap();
    assert_eq!(
        post(json!({"type": "user.tool_confirmation", "request_id": rid, "result": "allow"})),
        202
    );
    let rest = live.until("session.status_idle");
    let result = rest
        .iter()
        .find(|f| f.event == "agent.tool_result")
        .expect("the tool ran");
    assert_eq!(result.data["content"][0]["text"], "created");
    assert_eq!(result.data["is_error"], false);
    let text: String = rest
        .iter()
        .filter(|f| f.event == "agent.message")
        .map(|f| f.data["content"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, "Finished.");
    let idle = rest.last().unwrap();
    assert_eq!(idle.data["stop_reason"]["type"], "end_turn");
    assert!(idle.data["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

/// Every file under `dir` (the config folder: database, logs, workspaces) that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&p) {
                        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                            out.push(p);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn an_orgs_own_key_reaches_the_model_and_nothing_else_and_a_refused_one_is_byok_key_rejected() {
    const OWN: &str = "sk-ant-own-key-7f3a9c";
    let script = r#"[{"text": "Paid by the org."},
        {"match": "second", "error": {"status": 401, "message": "invalid x-api-key"}}]"#;
    let Some(e) = env_with(
        script,
        &[(
            "KARTA_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )],
    ) else {
        return;
    };
    let admin = {
        let out = e
            .k()
            .cli(&["keys", "create", "--tenant", "acme", "--scopes", "admin"]);
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    };
    let url = format!("{}/v1/model_keys/anthropic", e.k().public);
    let r =
        e.c.put(&url)
            .bearer_auth(&e.key)
            .json(&json!({"api_key": OWN}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 403, "a write key may not set model keys");
    let r =
        e.c.put(&url)
            .bearer_auth(&admin)
            .json(&json!({"api_key": OWN}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    let shown: serde_json::Value = r.json().unwrap();
    assert_eq!(shown["last4"], "3a9c");
    assert!(!shown.to_string().contains(OWN));

    let sid = e.session();
    let frames = e.stream(&sid, "first question").rest();
    assert_eq!(text_of(&frames), "Paid by the org.");
    let req = e.mock.message_requests().pop().unwrap();
    assert_eq!(
        req["headers"]["x-api-key"], OWN,
        "the org's key reached the model"
    );
    // Not in the database in clear, not in a log line, not in the harness's files or env.
    assert_eq!(
        files_holding(e.dir.path(), OWN),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!e.k().log_text().contains(OWN));
    let m = e.metered();
    assert_eq!(m["cost_micro_cents"], 0, "the org's provider bills it: {m}");
    assert!(m["input_tokens"].as_i64().unwrap() > 0);

    // The provider refuses the key: the unary adapter answer is a 422 naming it.
    let r =
        e.c.post(format!("{}/v1/projects/bot/chat/completions", e.k().public))
            .bearer_auth(&e.key)
            .json(&json!({"messages": [{"role": "user", "content": "second question"}]}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"], "byok_key_rejected", "{body}");
    assert_eq!(body["provider"], "anthropic");

    // Removed: calls go back to the platform's key.
    let r = e.c.delete(&url).bearer_auth(&admin).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        e.c.get(&url).bearer_auth(&admin).send().unwrap().status(),
        404
    );
}

#[test]
fn a_budget_used_up_by_another_turn_stops_a_running_turn_at_its_next_model_call() {
    let script = r#"[{"match": "alpha", "text": "A done.", "usage": {"input_tokens": 100, "output_tokens": 20}},
            {"match": "bravo", "tool_use": {"name": "Bash", "input": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}, "usage": {"input_tokens": 10, "output_tokens": 2}},
            {"match": "charlie", "text": "C done.", "usage": {"input_tokens": 100, "output_tokens": 20}},
            {"match": "created", "text": "never reached"}]"#;
    let toml_extra = "[[budgets]]\ntenant = \"acme\"\ntotal_tokens = 150\nreserve_tokens = 1\n";
    let Some(e) = env_with(script, &[]) else {
        return;
    };
    // The budget goes into the running server's configuration.
    add_config(&e, toml_extra);

    let a = e.session();
    assert_eq!(text_of(&e.stream(&a, "alpha").rest()), "A done.");
    // B asks for an approval after its first model call, and waits.
    let b = e.session();
    let mut sb = e.stream(&b, "bravo");
    let ask = sb.until("input_required").pop().unwrap();
    // C runs to its end meanwhile and uses the budget up (120 + 120 > 150).
    let c = e.session();
    assert_eq!(text_of(&e.stream(&c, "charlie").rest()), "C done.");
    // B goes on: its next model call is refused, and the turn says why.
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    e.decide(&b, &rid, "approve_once");
    let rest = sb.rest();
    let err = rest
        .iter()
        .find(|f| f.event == "error")
        .expect("the turn reports an error");
    assert_eq!(
        err.data["data"]["code"], "budget_exhausted",
        "{:?}",
        err.data
    );
    assert_eq!(done(&rest)["status"], "failed");
    assert!(
        !e.mock
            .message_requests()
            .iter()
            .any(|r| r["body"]["messages"].to_string().contains("created")),
        "the refused call never reached the model"
    );
    // Its usage so far is metered; and new turns are a 402 before anything runs.
    let m = e.metered();
    assert_eq!(m["turns"], 3, "{m}");
    let r =
        e.c.post(format!("{}/v1/sessions/{a}/messages", e.k().public))
            .bearer_auth(&e.key)
            .json(&json!({"text": "again"}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 402);
}

#[test]
fn a_turn_is_billed_from_the_gateways_count_at_the_configured_price_and_crosses_thresholds() {
    let script = r#"[{"text": "Priced.", "usage": {"input_tokens": 100, "output_tokens": 20}}]"#;
    let Some(e) = env(script) else {
        return;
    };
    // A price for every Anthropic model, and a cap one turn takes past 80% and two past 100%.
    add_config(
        &e,
        "[[prices]]\nprovider = \"anthropic\"\nmodel = \"*\"\ninput = 300\noutput = 1500\n\
         [[budgets]]\ntenant = \"acme\"\ntotal_tokens = 140\nreserve_tokens = 1\n",
    );

    let sid = e.session();
    let frames = e.stream(&sid, "hello").rest();
    assert_eq!(text_of(&frames), "Priced.");
    // The step says which model ran it and what it used.
    let step = frames
        .iter()
        .find(|f| f.event == "step_finish")
        .expect("a step_finish")
        .data["data"]
        .clone();
    assert_eq!(step["provider"], "anthropic", "{step}");
    assert!(
        step["model"].as_str().is_some_and(|m| !m.is_empty()),
        "{step}"
    );
    assert_eq!(step["usage"]["input_tokens"], 100, "{step}");
    assert_eq!(step["usage"]["output_tokens"], 20, "{step}");
    // Claude Code costs only whole turns: the step is priced at `[[prices]]`.
    assert_eq!(step["usage"]["cost_micro_cents"], 60_000, "{step}");

    let get = |path: &str| -> serde_json::Value {
        let r =
            e.c.get(format!("{}{path}", e.k().public))
                .bearer_auth(&e.key)
                .send()
                .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().unwrap()
    };
    // Two records: the harness's report (kept, not billed) and the gateway's count (billed,
    // priced: 100 x 300 + 20 x 1500 micro-cents).
    let recs = get(&format!("/v1/usage/records?session_id={sid}"));
    let recs = recs["data"].as_array().unwrap();
    let by = |source: &str| {
        recs.iter()
            .find(|r| r["source"] == source)
            .unwrap_or_else(|| panic!("no {source} record: {recs:?}"))
            .clone()
    };
    let (h, g) = (by("harness"), by("gateway"));
    assert_eq!(
        (h["billed"].as_bool(), g["billed"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(
        (&g["input_tokens"], &g["output_tokens"]),
        (&json!(100), &json!(20))
    );
    assert_eq!(
        (&h["input_tokens"], &h["output_tokens"]),
        (&json!(100), &json!(20))
    );
    assert_eq!(g["cost_micro_cents"], 60_000, "{g}");
    assert_eq!(g["unit_prices"]["input"], 300, "{g}");
    assert_eq!(g["provider"], "anthropic");
    // The totals count the turn once, at the configured price.
    let m = e.metered();
    assert_eq!(
        (&m["turns"], &m["total_tokens"]),
        (&json!(1), &json!(120)),
        "{m}"
    );
    assert_eq!(m["cost_micro_cents"], 60_000, "{m}");

    // 120 of 140 is past 80%: one event; the next turn passes 100%: two more, once each.
    // (Budget events only: creating the key was an event too.)
    let budget_events = || -> Vec<serde_json::Value> {
        let all = get("/v1/events");
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("budget."))
            .cloned()
            .collect()
    };
    let events = budget_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let obj = &events[0]["data"]["object"];
    assert_eq!(events[0]["type"], "budget.threshold_reached");
    assert_eq!(
        (
            &obj["dimension"],
            &obj["threshold_pct"],
            &obj["used"],
            &obj["cap"]
        ),
        (&json!("total_tokens"), &json!(80), &json!(120), &json!(140))
    );
    assert!(events[0]["id"].as_str().unwrap().starts_with("evt_"));
    // (The fake's default reply reports the same 100 in / 20 out.)
    assert_eq!(done(&e.stream(&sid, "again").rest())["status"], "completed");
    let events = budget_events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.len(), 3, "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "budget.exhausted").count(),
        1,
        "{types:?}"
    );
    let exhausted = get("/v1/events?type=budget.exhausted");
    assert_eq!(exhausted["data"][0]["data"]["object"]["threshold_pct"], 100);
    // And the cap now stops the next turn before it runs.
    let r =
        e.c.post(format!("{}/v1/sessions/{sid}/messages", e.k().public))
            .bearer_auth(&e.key)
            .json(&json!({"text": "more"}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 402);
}

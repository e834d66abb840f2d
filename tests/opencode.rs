//! End-to-end: the real OpenCode (`opencode serve`) behind the Karta HTTP API, against
//! `karta mock-model`'s Chat Completions. `scripts/test.sh` runs this binary inside `unshare -n`.

use std::time::{Duration, Instant};

use karta_e2e::*;
use serde_json::{json, Value};

const KEY_ENV: &str = "KARTA_TEST_OPENAI_KEY";

/// An OpenCode project (`bash` asks for approval unless `bash_allowed`) talking to the fake.
fn env(script: &str, bash_allowed: bool) -> Option<HarnessEnv> {
    let opencode = opencode_bin()?;
    let dir = tempfile::tempdir().unwrap();
    let mock = MockModel::start(dir.path(), script);
    let app = app_copy(dir.path(), "ops", "opencode-app", None);
    if bash_allowed {
        std::fs::write(
            app.join(".opencode/opencode.jsonc"),
            r#"{ "permission": { "bash": "allow" } }"#,
        )
        .unwrap();
    }
    let toml = format!(
        r#"
[providers.openai]
api_key = {{ env = "{KEY_ENV}" }}
base_url = "{url}/v1"

[[drivers]]
path = "{plugin}"
settings = {{ command = "{bin}", model = "fake-model" }}

[[tenants]]
slug = "acme"
name = "Acme"

[[projects]]
tenant = "acme"
slug = "ops"
path = "{app}"
"#,
        url = mock.url,
        plugin = opencode_plugin().display(),
        bin = opencode.display(),
        app = app.display(),
    );
    Some(HarnessEnv::start(
        dir,
        mock,
        &toml,
        &[(KEY_ENV, "sk-openai-fake")],
    ))
}

/// The fake's Chat Completions requests.
fn chat_requests(e: &HarnessEnv) -> Vec<Value> {
    e.mock
        .requests()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/chat/completions"))
        })
        .collect()
}

#[test]
fn a_text_turn_streams_with_the_fakes_usage() {
    let Some(e) = env(
        r#"[{"text": "Hello from the fake model.", "usage": {"input_tokens": 31, "output_tokens": 7, "reasoning_tokens": 3, "cache_read_input_tokens": 5}}]"#,
        false,
    ) else {
        return;
    };
    let sid = e.session();
    let frames = e.stream(&sid, "hi there").rest();
    assert_eq!(text_of(&frames), "Hello from the fake model.");
    assert!(
        frames.iter().filter(|f| f.event == "text").count() >= 2,
        "deltas: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.event == "step_start")
            && frames.iter().any(|f| f.event == "step_finish")
    );
    let d = done(&frames);
    assert_eq!(d["status"], "completed");
    // One convention: OpenAI's 31 prompt tokens are 26 uncached and 5 read from the cache;
    // the 7 output tokens include 3 of reasoning.
    let step = frames
        .iter()
        .find(|f| f.event == "step_finish")
        .map(|f| f.data["data"].clone())
        .unwrap();
    eprintln!("step_finish: {step}");
    assert_eq!(
        (
            &d["usage"]["input_tokens"],
            &d["usage"]["cache_read_tokens"],
            &d["usage"]["output_tokens"],
            &d["usage"]["reasoning_tokens"]
        ),
        (&json!(26), &json!(5), &json!(7), &json!(3)),
        "{d}"
    );
    assert_eq!(step["usage"]["output_tokens"], 7, "{step}");
    assert_eq!(step["model"], "fake-model", "{step}");
    // Karta's provider and key reached OpenCode; the session's title spared a title request.
    let reqs = chat_requests(&e);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["headers"]["authorization"], "Bearer sk-openai-fake");
    assert!(
        reqs[0]["body"].to_string().contains("Lumen Books"),
        "AGENTS.md reached the model"
    );
    // The gateway counted the same as OpenCode reported: its record is the billed one.
    let recs: Value =
        e.c.get(format!(
            "{}/v1/usage/records?session_id={sid}",
            e.k().public
        ))
        .bearer_auth(&e.key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let recs = recs["data"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in recs {
        assert_eq!(
            (
                &r["input_tokens"],
                &r["cache_read_tokens"],
                &r["output_tokens"],
                &r["reasoning_tokens"]
            ),
            (&json!(26), &json!(5), &json!(7), &json!(3)),
            "{r}"
        );
        assert_eq!(r["billed"], r["source"] == "gateway", "{r}");
    }
    // Metered as the fake reported it.
    let m = e.metered();
    assert_eq!(m["turns"], 1, "{m}");
    assert_eq!(
        (
            &m["input_tokens"],
            &m["cache_read_tokens"],
            &m["output_tokens"],
            &m["reasoning_tokens"]
        ),
        (&json!(26), &json!(5), &json!(7), &json!(3)),
        "{m}"
    );
}

#[test]
fn a_tool_runs_and_its_result_comes_back() {
    let Some(e) = env(
        r#"[{"tool_call": {"name": "bash", "arguments": {"command": "echo hello-from-bash", "description": "Say hello"}}},
            {"text": "It printed hello."}]"#,
        true,
    ) else {
        return;
    };
    let sid = e.session();
    let frames = e.stream(&sid, "run it").rest();
    let tools: Vec<&SseFrame> = frames.iter().filter(|f| f.event == "tool_use").collect();
    let statuses: Vec<&str> = tools
        .iter()
        .map(|f| f.data["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"completed"), "{statuses:?}");
    assert!(tools.last().unwrap().data["data"]["result"]
        .as_str()
        .unwrap()
        .contains("hello-from-bash"));
    assert_eq!(tools.last().unwrap().data["data"]["tool_name"], "bash");
    assert_eq!(text_of(&frames), "It printed hello.");
    let d = done(&frames);
    assert_eq!(
        (
            d["usage"]["input_tokens"].as_u64(),
            d["usage"]["output_tokens"].as_u64()
        ),
        (Some(200), Some(40))
    );
}

const TOUCH: &str = r#"{"tool_call": {"name": "bash", "arguments": {"command": "touch made_by_agent.txt && echo created", "description": "Create a file"}}}"#;

#[test]
fn approvals_once_always_and_reject() {
    let script = format!(r#"[{TOUCH}, {{"text": "Finished."}}, {TOUCH}, {{"text": "Again."}}]"#);
    let Some(e) = env(&script, false) else { return };

    let sid = e.session();
    let mut s = e.stream(&sid, "create a file");
    let ask = s.until("input_required").pop().unwrap();
    assert_eq!(ask.data["data"]["tool"], "bash");
    let rid = ask.data["data"]["request_id"].as_str().unwrap().to_string();
    let cont = e.decide(&sid, &rid, "approve_once");
    let events = cont["events"].as_array().unwrap();
    let completed = events
        .iter()
        .find(|e| e["type"] == "tool_use" && e["data"]["status"] == "completed")
        .expect("tool completed");
    assert!(completed["data"]["result"]
        .as_str()
        .unwrap()
        .contains("created"));
    assert_eq!(done(&s.rest())["status"], "completed");

    // Rejected: the tool does not run.
    let sid2 = e.session();
    let mut s = e.stream(&sid2, "create a file");
    let rid = s.until("input_required").pop().unwrap().data["data"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cont = e.decide(&sid2, &rid, "deny");
    assert!(
        cont["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "tool_use" && e["data"]["status"] == "error"),
        "{cont}"
    );
    s.rest();

    // Always: the session's next call of the same command is not asked.
    let sid3 = e.session();
    let mut s = e.stream(&sid3, "create a file");
    let rid = s.until("input_required").pop().unwrap().data["data"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    e.decide(&sid3, &rid, "approve_session");
    s.rest();
    let frames = e.stream(&sid3, "and once more").rest();
    assert!(
        !frames.iter().any(|f| f.event == "input_required"),
        "asked again: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.event == "tool_use" && f.data["data"]["status"] == "completed"),
        "{frames:?}"
    );
}

#[test]
fn the_second_turn_continues_the_session() {
    let Some(e) = env(
        r#"[{"match": "first question", "text": "Answer one."}, {"match": "second question", "text": "Answer two."}]"#,
        false,
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
    let last = chat_requests(&e).pop().unwrap();
    assert!(
        last["body"]["messages"].to_string().contains("Answer one."),
        "history not sent"
    );
}

#[test]
fn a_model_4xx_becomes_an_error_event() {
    let Some(e) = env(
        r#"[{"match": "", "once": false, "error": {"status": 400, "message": "scripted failure"}}]"#,
        false,
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

#[test]
fn killing_opencode_mid_turn_gives_an_error_and_the_next_turn_works() {
    let Some(e) = env(
        r#"[{"match": "slow", "text": "too late", "delay": 20000}, {"match": "after", "text": "Back again."}]"#,
        false,
    ) else {
        return;
    };
    let sid = e.session();
    let mut s = e.stream(&sid, "slow please");
    let deadline = Instant::now() + Duration::from_secs(30);
    while chat_requests(&e).is_empty() {
        assert!(Instant::now() < deadline, "OpenCode never called the model");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = harness_pid(&sid, "serve").expect("the opencode process");
    assert!(std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    let frames = s.rest();
    let err = frames
        .iter()
        .find(|f| f.event == "error")
        .expect("an error event");
    assert_eq!(err.data["data"]["code"], "harness_crashed");
    assert_eq!(done(&frames)["status"], "failed");
    assert_eq!(
        text_of(&e.stream(&sid, "after the crash").rest()),
        "Back again."
    );
}

#[test]
fn without_the_cli_a_turn_fails_with_an_error_that_names_the_install_command() {
    let Some(_) = opencode_bin() else { return };
    let frames = turn_without_cli(&opencode_plugin(), "opencode-app");
    let err = frames
        .iter()
        .find(|f| f.event == "error")
        .expect("an error event");
    assert!(
        err.data["data"]["message"]
            .as_str()
            .unwrap()
            .contains("karta harness install opencode"),
        "{err:?}"
    );
    assert_eq!(done(&frames)["status"], "failed");
}

#[test]
fn an_idle_server_is_stopped_and_the_next_turn_continues_on_a_new_one() {
    let Some(e) = env(
        r#"[{"match": "one", "text": "First."}, {"match": "two", "text": "Second."}]"#,
        false,
    ) else {
        return;
    };
    std::fs::write(
        e.dir.path().join("ops/karta.jsonc"),
        r#"{ "harness": { "opencode": { "idle_timeout_seconds": 1 } } }"#,
    )
    .unwrap();
    let sid = e.session();
    assert_eq!(text_of(&e.stream(&sid, "one").rest()), "First.");
    let first = harness_pid(&sid, "serve").expect("the server stays warm after a turn");
    let deadline = Instant::now() + Duration::from_secs(15);
    while harness_pid(&sid, "serve").is_some() {
        assert!(Instant::now() < deadline, "the idle server was not stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(text_of(&e.stream(&sid, "two").rest()), "Second.");
    assert_ne!(harness_pid(&sid, "serve"), Some(first));
    let last = chat_requests(&e).pop().unwrap();
    assert!(
        last["body"]["messages"].to_string().contains("First."),
        "the session was not continued"
    );
}

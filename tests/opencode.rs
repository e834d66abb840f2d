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

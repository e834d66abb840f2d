//! End-to-end: the OpenAI-shaped adapters over HTTP with the echo plugin — wire shapes checked
//! frame by frame here, and the official `openai` SDKs (Python and Node) driving them in
//! `sdk_*` tests.

use std::path::Path;
use std::time::Duration;

use karta_e2e::*;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

struct Env {
    _dir: tempfile::TempDir,
    k: Karta,
    key: String,
    c: Client,
}

impl Env {
    fn start(build: impl FnOnce(&Path, PlatformFile) -> PlatformFile) -> Env {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), PlatformFile::new()).write(dir.path());
        let k = Karta::start(dir.path());
        let key = k.create_key("acme");
        let c = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Env {
            _dir: dir,
            k,
            key,
            c,
        }
    }

    fn simple() -> Env {
        Env::start(|_, pf| pf.project("hello", &hello_app(), None))
    }

    fn post(&self, path: &str, body: Value) -> Response {
        self.c
            .post(format!("{}/v1/projects/hello{path}", self.k.public))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .unwrap()
    }

    fn sessions(&self) -> Vec<Value> {
        let r: Value = self
            .c
            .get(format!("{}/v1/sessions?limit=100", self.k.public))
            .bearer_auth(&self.key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["data"].as_array().cloned().unwrap_or_default()
    }
}

/// The raw SSE frames of a response: (`event:` if any, `data:`).
fn frames(r: Response) -> Vec<(Option<String>, String)> {
    let text = r.text().unwrap();
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty() && !f.starts_with(':'))
        .map(|f| {
            let mut event = None;
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                }
            }
            (event, data)
        })
        .collect()
}

#[test]
fn chat_completions_answer_unary_and_as_bare_chunks_ending_in_done() {
    let e = Env::simple();
    let r = e.post(
        "/chat/completions",
        json!({"model": "default", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"}
        ]}),
    );
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let c: Value = r.json().unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "default");
    let content = c["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("echo: "), "{c}");
    assert!(
        content.contains("hello there") && content.contains("Be brief."),
        "{c}"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    let u = &c["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let r = e.post(
        "/chat/completions",
        json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "stream me"}]}),
    );
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let fs = frames(r);
    assert!(fs.iter().all(|(ev, _)| ev.is_none()), "no event: lines");
    assert_eq!(fs.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = fs[..fs.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk" && c["model"] == "m1"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: stream me");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 2);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // Each call ran on a session of its own, tagged and closed after its turn.
    std::thread::sleep(Duration::from_millis(300));
    let sessions = e.sessions();
    assert_eq!(sessions.len(), 2);
    assert!(sessions
        .iter()
        .all(|s| s["metadata"]["adapter"] == "openai.chat_completions" && s["status"] == "closed"));
}

#[test]
fn chat_requests_that_cannot_be_mapped_are_422s_naming_the_field() {
    let e = Env::simple();
    for (body, loc) in [
        (json!({"messages": []}), json!(["body", "messages"])),
        (
            json!({"messages": [{"role": "tool", "content": "1", "tool_call_id": "x"}]}),
            json!(["body", "messages", "0", "role"]),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            json!(["body", "messages", "0", "content", "0", "type"]),
        ),
        (
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
            json!(["body", "messages", "1", "role"]),
        ),
        (
            json!({"n": 2, "messages": [{"role": "user", "content": "a"}]}),
            json!(["body", "n"]),
        ),
    ] {
        let r = e.post("/chat/completions", body.clone());
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(r.headers()["x-should-retry"], "false");
        let v: Value = r.json().unwrap();
        assert_eq!(v["detail"][0]["loc"], loc, "{v}");
    }
    // Nothing reached the harness.
    assert!(e.sessions().is_empty());
}

#[test]
fn a_failed_turn_is_a_status_when_unary_and_an_error_frame_when_streamed() {
    let e = Env::simple();
    let r = e.post(
        "/chat/completions",
        json!({"messages": [{"role": "user", "content": "boom [fail]"}]}),
    );
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let r = e.post(
        "/chat/completions",
        json!({"stream": true, "messages": [{"role": "user", "content": "boom [fail]"}]}),
    );
    assert_eq!(r.status(), 200);
    let fs = frames(r);
    let err: Value = serde_json::from_str(&fs[fs.len() - 2].1).unwrap();
    assert!(err["error"]["message"].as_str().is_some(), "{err}");
    assert_eq!(fs.last().unwrap().1, "[DONE]");

    let r = e.post(
        "/responses",
        json!({"input": "boom [fail]", "stream": true}),
    );
    let fs = frames(r);
    let (ev, data) = fs.last().unwrap();
    assert_eq!(ev.as_deref(), Some("response.failed"));
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["response"]["status"], "failed");
}

#[test]
fn responses_stream_in_order_continue_by_id_and_are_stored() {
    let e = Env::simple();
    let r = e.post(
        "/responses",
        json!({"input": "remember maple", "instructions": "Be brief.", "metadata": {"team": "x"}}),
    );
    assert_eq!(r.status(), 200);
    let first: Value = r.json().unwrap();
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["metadata"]["team"], "x");
    let text = first["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("remember maple"), "{first}");
    // The echo harness counts the words of the turn's text: the instructions block and the
    // message ("Instructions from the client: Be brief. Message: remember maple").
    assert_eq!(first["usage"]["input_tokens"].as_u64(), Some(9));

    // Continue it, streamed: the same Karta session, and no transcript (the harness has it).
    let r = e.post(
        "/responses",
        json!({"input": "which tree?", "previous_response_id": first["id"], "stream": true}),
    );
    assert_eq!(r.status(), 200);
    let fs = frames(r);
    let kinds: Vec<&str> = fs.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(kinds[0], "response.created");
    assert_eq!(*kinds.last().unwrap(), "response.completed");
    let datas: Vec<Value> = fs
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for (i, (d, k)) in datas.iter().zip(&kinds).enumerate() {
        assert_eq!(d["sequence_number"], i as u64);
        assert_eq!(d["type"], *k);
    }
    let second = &datas.last().unwrap()["response"];
    assert_eq!(second["previous_response_id"], first["id"]);
    assert_eq!(
        second["output"][0]["content"][0]["text"],
        "echo: which tree?"
    );
    let sessions = e.sessions();
    assert_eq!(sessions.len(), 1, "one session for both turns");
    assert_eq!(sessions[0]["metadata"]["adapter"], "openai.responses");

    // Stored: fetched as it ended, then deleted, then gone for good.
    let url = format!(
        "{}/v1/projects/hello/responses/{}",
        e.k.public,
        second["id"].as_str().unwrap()
    );
    let got: Value =
        e.c.get(&url)
            .bearer_auth(&e.key)
            .send()
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(&got, second);
    let del = e.c.delete(&url).bearer_auth(&e.key).send().unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(del.json::<Value>().unwrap()["deleted"], true);
    assert_eq!(
        e.c.get(&url).bearer_auth(&e.key).send().unwrap().status(),
        404
    );
    let r = e.post(
        "/responses",
        json!({"input": "again", "previous_response_id": second["id"]}),
    );
    assert_eq!(r.status(), 404);

    // `store: false` keeps nothing to continue from.
    let r: Value = e
        .post("/responses", json!({"input": "x", "store": false}))
        .json()
        .unwrap();
    assert_eq!(r["store"], false);
    let r = e.post(
        "/responses",
        json!({"input": "y", "previous_response_id": r["id"]}),
    );
    assert_eq!(r.status(), 404);
    for (body, field) in [
        (json!({"input": "x", "background": true}), "background"),
        (
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}),
            "input",
        ),
        (json!({}), "input"),
    ] {
        let r = e.post("/responses", body);
        assert_eq!(r.status(), 422);
        let v: Value = r.json().unwrap();
        assert_eq!(v["detail"][0]["loc"][1], field, "{v}");
    }
}

#[test]
fn adapters_keep_to_their_tenant_their_project_list_and_hidden_prompts() {
    let e = Env::start(|_, mut pf| {
        pf.tenants.push("beta".into());
        pf.projects.push(ProjectSpec {
            tenant: "beta".into(),
            slug: "theirs".into(),
            path: hello_app(),
            multitask: None,
        });
        pf.lines
            .push(("quiet".into(), "adapters = [\"responses\"]".into()));
        pf.project("hello", &hello_app(), None)
            .project("quiet", &hello_app(), None)
    });
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    // Another tenant's project is not found; so is an adapter the project does not serve.
    let r =
        e.c.post(format!(
            "{}/v1/projects/theirs/chat/completions",
            e.k.public
        ))
        .bearer_auth(&e.key)
        .json(&chat)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r =
        e.c.post(format!("{}/v1/projects/quiet/chat/completions", e.k.public))
            .bearer_auth(&e.key)
            .json(&chat)
            .send()
            .unwrap();
    assert_eq!(r.status(), 404);
    let r =
        e.c.post(format!("{}/v1/projects/quiet/responses", e.k.public))
            .bearer_auth(&e.key)
            .json(&json!({"input": "hi"}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    // No flat adapter routes.
    let r =
        e.c.post(format!("{}/v1/chat/completions", e.k.public))
            .bearer_auth(&e.key)
            .json(&chat)
            .send()
            .unwrap();
    assert_eq!(r.status(), 404);
    // A bad key is a 401.
    let r =
        e.c.post(format!("{}/v1/projects/hello/chat/completions", e.k.public))
            .bearer_auth("kt_live_wrong")
            .json(&chat)
            .send()
            .unwrap();
    assert_eq!(r.status(), 401);
    // A prompt nobody can answer gets the app's hidden-prompt policy (deny): the turn ends.
    let r = e.post(
        "/chat/completions",
        json!({"messages": [{"role": "user", "content": "use a tool [approve]"}]}),
    );
    assert_eq!(r.status(), 200);
    let c: Value = r.json().unwrap();
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
}

#[test]
fn sdk_the_official_python_client_drives_both_adapters() {
    let Some(python) = sdk_client("KARTA_TEST_PYTHON") else {
        return;
    };
    let e = Env::start(|_, mut pf| {
        pf.tenants.push("beta".into());
        pf.projects.push(ProjectSpec {
            tenant: "beta".into(),
            slug: "theirs".into(),
            path: hello_app(),
            multitask: None,
        });
        pf.project("hello", &hello_app(), None)
    });
    let out = run_sdk(
        &python,
        "openai_python.py",
        &e.k.public,
        &e.key,
        &[("KARTA_PROJECT", "hello")],
    );
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn sdk_the_official_node_client_streams_chat_and_calls_responses() {
    let Some(node_path) = sdk_client("KARTA_TEST_NODE_PATH") else {
        return;
    };
    let e = Env::simple();
    let out = run_sdk(
        "node",
        "openai_node.cjs",
        &e.k.public,
        &e.key,
        &[("KARTA_PROJECT", "hello"), ("NODE_PATH", &node_path)],
    );
    assert!(out.contains("ok"), "{out}");
}

fn managed_post(e: &Env, sid: &str, body: Value) -> Response {
    e.post(&format!("/managed-agents/sessions/{sid}/events"), body)
}

fn managed_stream(e: &Env, sid: &str, after: Option<i64>) -> SseReader {
    let q = after.map(|a| format!("?after={a}")).unwrap_or_default();
    let r =
        e.c.get(format!(
            "{}/v1/projects/hello/managed-agents/sessions/{sid}/events/stream{q}",
            e.k.public
        ))
        .bearer_auth(&e.key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    SseReader::new(r)
}

#[test]
fn managed_agents_sessions_log_turns_approvals_and_replay_exactly_after_a_seq() {
    let e = Env::simple();
    let r = e.post(
        "/managed-agents/sessions",
        json!({"metadata": {"team": "a"}}),
    );
    assert_eq!(r.status(), 201);
    let s: Value = r.json().unwrap();
    assert_eq!(s["status"], "idle");
    let sid = s["id"].as_str().unwrap().to_string();

    let mut live = managed_stream(&e, &sid, None);
    let r = managed_post(
        &e,
        &sid,
        json!({"type": "user.message", "text": "please [approve]"}),
    );
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().unwrap(), json!({"accepted": true}));
    // A second message while the turn waits is refused.
    let r = managed_post(&e, &sid, json!({"type": "user.message", "text": "me too"}));
    assert_eq!(r.status(), 409);

    let first = live.until("session.status_idle");
    let kinds: Vec<&str> = first.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds[..2], ["user.message", "session.status_running"]);
    let idle = first.last().unwrap();
    assert_eq!(idle.data["stop_reason"]["type"], "requires_action");
    let ask = first
        .iter()
        .find(|f| f.event == "agent.tool_use" && f.data["evaluated_permission"] == "ask")
        .expect("the approval is in the log");
    assert_eq!(idle.data["stop_reason"]["event_ids"][0], ask.data["id"]);
    let request_id = ask.data["request_id"].as_str().unwrap().to_string();
    let state: Value =
        e.c.get(format!(
            "{}/v1/projects/hello/managed-agents/sessions/{sid}",
            e.k.public
        ))
        .bearer_auth(&e.key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(state["status"], "idle");
    assert_eq!(state["pending_input"]["request_id"], request_id.as_str());

    // Bad answers are 400 or 409; the right one is accepted and the turn goes on.
    assert_eq!(
        managed_post(
            &e,
            &sid,
            json!({"type": "user.tool_confirmation", "request_id": request_id, "result": "maybe"})
        )
        .status(),
        400
    );
    assert_eq!(
        managed_post(
            &e,
            &sid,
            json!({"type": "user.tool_confirmation", "request_id": "req_nope", "result": "allow"})
        )
        .status(),
        409
    );
    assert_eq!(
        managed_post(&e, &sid, json!({"type": "user.dance"})).status(),
        400
    );
    assert_eq!(
        managed_post(&e, &sid, json!({"text": "no type"})).status(),
        400
    );
    let r = managed_post(
        &e,
        &sid,
        json!({"type": "user.tool_confirmation", "request_id": request_id, "result": "allow"}),
    );
    assert_eq!(r.status(), 202);
    let rest = live.until("session.status_idle");
    let kinds: Vec<&str> = rest.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        kinds[..2],
        ["user.tool_confirmation", "session.status_running"],
        "{kinds:?}"
    );
    assert!(kinds.contains(&"agent.tool_result"), "{kinds:?}");
    assert_eq!(rest.last().unwrap().data["stop_reason"]["type"], "end_turn");
    let text: String = first
        .iter()
        .chain(&rest)
        .filter(|f| f.event == "agent.message")
        .map(|f| f.data["content"][0]["text"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("echo: please"), "{text}");

    // Every entry so far, numbered 1.. without gaps; a reconnect after N gets exactly the rest.
    let all: Vec<_> = first.iter().chain(&rest).collect();
    let seqs: Vec<i64> = all.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as i64).collect::<Vec<_>>());
    assert!(all.iter().all(|f| f.data["seq"].as_i64() == f.id));
    let cut = 4;
    let mut again = managed_stream(&e, &sid, Some(cut));
    let replayed: Vec<i64> = (0..all.len() as i64 - cut)
        .map(|_| again.next_frame().unwrap().id.unwrap())
        .collect();
    assert_eq!(replayed, ((cut + 1)..=all.len() as i64).collect::<Vec<_>>());
    // The stream stays open for the next turn.
    assert_eq!(
        managed_post(&e, &sid, json!({"type": "user.message", "text": "next"})).status(),
        202
    );
    let next = again.until("session.status_idle");
    assert_eq!(next[0].id, Some(all.len() as i64 + 1));
    assert_eq!(next[0].event, "user.message");
}

#[test]
fn managed_agents_interrupt_ends_the_turn_and_other_tenants_sessions_are_not_found() {
    let e = Env::simple();
    let sid = e
        .post("/managed-agents/sessions", json!({}))
        .json::<Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut live = managed_stream(&e, &sid, None);
    assert_eq!(
        managed_post(
            &e,
            &sid,
            json!({"type": "user.message", "text": "long [flood:5000]"})
        )
        .status(),
        202
    );
    live.until("agent.message");
    assert_eq!(
        managed_post(&e, &sid, json!({"type": "user.interrupt"})).status(),
        202
    );
    let end = live.until("session.status_idle");
    assert_eq!(end.last().unwrap().data["interrupted"], true);
    // Interrupting an idle session does nothing, and is still accepted.
    assert_eq!(
        managed_post(&e, &sid, json!({"type": "user.interrupt"})).status(),
        202
    );

    let other = Env::start(|_, pf| pf.project("hello", &hello_app(), None));
    let r = other
        .c
        .get(format!(
            "{}/v1/projects/hello/managed-agents/sessions/{sid}",
            other.k.public
        ))
        .bearer_auth(&other.key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r =
        e.c.post(format!(
            "{}/v1/projects/hello/managed-agents/sessions/{sid}/events",
            e.k.public
        ))
        .bearer_auth(&e.key)
        .body("not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn sdk_the_official_anthropic_client_drives_managed_agents_sessions() {
    let Some(python) = sdk_client("KARTA_TEST_PYTHON") else {
        return;
    };
    let e = Env::simple();
    let out = run_sdk(
        &python,
        "anthropic_managed.py",
        &e.k.public,
        &e.key,
        &[("KARTA_PROJECT", "hello")],
    );
    assert!(out.contains("ok"), "{out}");
}

//! End-to-end: the real `karta` binary, the echo plugin loaded from disk, keys from the CLI,
//! sessions and streamed turns over HTTP, and live reloads.

use std::time::{Duration, Instant};

use karta_e2e::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn create_session(c: &Client, k: &Karta, key: &str, body: Value) -> reqwest::blocking::Response {
    c.post(format!("{}/v1/sessions", k.public))
        .bearer_auth(key)
        .json(&body)
        .send()
        .unwrap()
}

fn post_message(
    c: &Client,
    k: &Karta,
    key: &str,
    session: &str,
) -> reqwest::blocking::RequestBuilder {
    c.post(format!("{}/v1/sessions/{session}/messages", k.public))
        .bearer_auth(key)
}

fn new_session_id(c: &Client, k: &Karta, key: &str) -> String {
    let r = create_session(c, k, key, json!({}));
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stream_turn(c: &Client, k: &Karta, key: &str, session: &str, text: &str) -> Vec<SseFrame> {
    let r = c
        .post(format!("{}/v1/sessions/{session}/messages", k.public))
        .bearer_auth(key)
        .json(&json!({"text": text, "stream": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    parse_sse(&read_body(r)).0
}

/// The full walk: keys, sessions, a streamed turn, unary and Accept-negotiated turns, refusals.
fn session_scenario(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        database_url,
        &["acme", "other"],
        &[("acme", "hello"), ("other", "hello")],
        5,
    );
    let k = Karta::start(dir.path());
    if database_url.is_none() {
        assert!(
            dir.path().join(".karta/karta.db").is_file(),
            "embedded SQLite is the default"
        );
    }
    let key = k.create_key("acme");
    assert!(key.starts_with("kt_live_") && key.len() == 40, "{key}");
    let other_key = k.create_key("other");
    let c = client();

    let r = create_session(&c, &k, &key, json!({"metadata": {"customer": "c-1"}}));
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let s: Value = r.json().unwrap();
    let sid = s["id"].as_str().unwrap().to_string();
    assert!(sid.starts_with("sess_"));
    assert_eq!(s["status"], "active");
    assert_eq!(s["current_agent"], "default");
    assert_eq!(s["metadata"], json!({"customer": "c-1"}));
    assert_eq!(s["pending_input"], Value::Null);
    assert_eq!(s["participants"], json!([]));
    assert_eq!(s["project"]["ref"], "hello");

    // A streamed turn: frames in order, numbered by the session's sequence.
    let frames = stream_turn(&c, &k, &key, &sid, "hi there");
    let events: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "step_start",
            "text",
            "text",
            "text",
            "tool_use",
            "tool_use",
            "step_finish",
            "done"
        ]
    );
    let ids: Vec<i64> = frames.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    for f in &frames {
        assert_eq!(f.data["type"], f.event.as_str());
        assert_eq!(f.data["session_id"], sid.as_str());
        assert_eq!(f.data["seq"], f.id.unwrap());
        assert_eq!(f.data["source"], "karta");
    }
    let text: String = frames
        .iter()
        .filter(|f| f.event == "text")
        .map(|f| f.data["data"]["part"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: hi there");
    assert_eq!(frames[4].data["data"]["status"], "running");
    assert_eq!(frames[5].data["data"]["status"], "completed");
    assert_eq!(
        frames[4].data["data"]["tool_use_id"],
        frames[5].data["data"]["tool_use_id"]
    );
    let done = &frames[7].data["data"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["message"]["text"], "echo: hi there");
    assert_eq!(done["message"]["role"], "assistant");
    assert_eq!(done["usage"]["input_tokens"], 2);
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert_eq!(done["usage"]["total_tokens"], 5);

    // `Accept: text/event-stream` also selects SSE; the sequence continues.
    let r = post_message(&c, &k, &key, &sid)
        .header("accept", "text/event-stream")
        .json(&json!({"text": "again", "participant_name": "ana"}))
        .send()
        .unwrap();
    let (frames, _) = parse_sse(&read_body(r));
    assert_eq!(frames.first().unwrap().id, Some(9));
    assert_eq!(frames.last().unwrap().event, "done");

    // Unary: the accumulated turn.
    let r = post_message(&c, &k, &key, &sid)
        .json(&json!({"text": "plain"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["text"], "echo: plain");
    assert_eq!(body["session_id"], sid.as_str());
    assert_eq!(body["agent"], "default");
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(body["messages"][1]["text"], "echo: plain");
    assert_eq!(body["usage"]["total_tokens"], 3);

    // The session remembers who spoke.
    let s: Value = c
        .get(format!("{}/v1/sessions/{sid}", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = s["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user", "ana"]);

    // Resume by id answers 200 and merges metadata.
    let r = create_session(
        &c,
        &k,
        &key,
        json!({"session_id": sid, "metadata": {"tier": "gold"}}),
    );
    assert_eq!(r.status(), 200);
    let s: Value = r.json().unwrap();
    assert_eq!(s["metadata"], json!({"customer": "c-1", "tier": "gold"}));

    // Refusals.
    for auth in [
        Some("kt_live_wrongwrongwrongwrongwrongwrongwr"),
        Some("garbage"),
        None,
    ] {
        let mut req = c.get(format!("{}/v1/sessions/{sid}", k.public));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().unwrap(),
            json!({"detail": "Unauthorized"})
        );
    }
    let r = c
        .get(format!("{}/v1/sessions/{sid}", k.public))
        .bearer_auth(&other_key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "another org's session is not found");
    let r = post_message(&c, &k, &other_key, &sid)
        .json(&json!({"text": "hijack"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = create_session(&c, &k, &other_key, json!({"session_id": sid}));
    assert_eq!(r.status(), 404);
    let r = post_message(&c, &k, &key, &sid)
        .json(&json!({"stream": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().unwrap()["detail"][0]["loc"],
        json!(["body", "text"])
    );
    let r = post_message(&c, &k, &key, &sid)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().unwrap()["detail"]
        .as_str()
        .unwrap()
        .starts_with("malformed JSON"));
    let r = create_session(&c, &k, &key, json!({"project": "nope"}));
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().unwrap()["detail"][0]["loc"],
        json!(["body", "project"])
    );
    let huge = json!({"text": "x".repeat(2 << 20)});
    let r = post_message(&c, &k, &key, &sid).json(&huge).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().unwrap()["detail"]
        .as_str()
        .unwrap()
        .contains("too large"));
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
    let r = create_session(&c, &k, &key, json!({"metadata": many}));
    assert_eq!(r.status(), 422);
}

#[test]
fn sessions_and_streamed_turns_on_embedded_sqlite() {
    session_scenario(None);
}

#[test]
fn sessions_and_streamed_turns_on_postgres() {
    let Some(db) = temp_pg_database() else { return };
    session_scenario(Some(&db.url));
}

#[test]
fn a_second_send_while_a_turn_runs_is_refused_and_the_turn_survives_a_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), None, &["acme"], &[("acme", "hello")], 100);
    let k = Karta::start(dir.path());
    let key = k.create_key("acme");
    let c = client();
    let sid = new_session_id(&c, &k, &key);

    // Start a slow streamed turn (about 1 s) and drop the connection after the first bytes.
    let mut r = post_message(&c, &k, &key, &sid)
        .json(&json!({"text": "a b c d e f g h", "stream": true}))
        .send()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read(&mut r, &mut first).unwrap();
    let busy = post_message(&c, &k, &key, &sid)
        .json(&json!({"text": "second"}))
        .send()
        .unwrap();
    assert_eq!(busy.status(), 409);
    assert_eq!(
        busy.json::<Value>().unwrap(),
        json!({"detail": "session busy"})
    );
    drop(r);

    // The turn ran to its end without a listener: the next turn is accepted once it is done.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let r = post_message(&c, &k, &key, &sid)
            .json(&json!({"text": "after"}))
            .send()
            .unwrap();
        if r.status() == 200 {
            break r.json::<Value>().unwrap();
        }
        assert_eq!(r.status(), 409);
        assert!(Instant::now() < deadline, "the first turn never finished");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body["text"], "echo: after");
    // Every event of the abandoned turn was still logged: 8 words gave step_start, 9 text
    // chunks, 2 tool_use, step_finish and done (seq 1..=14); "after" took 15..=21.
    let frames = stream_turn(&c, &k, &key, &sid, "x");
    assert_eq!(frames[0].id, Some(22), "{frames:?}");
}

#[test]
fn reload_adds_a_project_without_restart_and_refuses_an_invalid_change() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), None, &["acme"], &[("acme", "hello")], 1);
    let k = Karta::start(dir.path());
    let key = k.create_key("acme");
    let c = client();
    let reload = |token: Option<&str>| {
        let mut r = c.post(format!("{}/admin/v1/config/reload", k.admin));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };

    assert_eq!(reload(None).status(), 401);
    assert_eq!(reload(Some("wrong")).status(), 401);
    let r = reload(Some(&k.admin_token));
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["changes"],
        json!([]),
        "nothing changed yet"
    );

    let dropins = dir.path().join("karta.platform.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("20-second.toml"),
        format!(
            "[[projects]]\ntenant = \"acme\"\nslug = \"second\"\npath = \"{}\"\n",
            hello_app().display()
        ),
    )
    .unwrap();
    let r = reload(Some(&k.admin_token));
    assert_eq!(r.status(), 200);
    let changes = r.json::<Value>().unwrap()["changes"].clone();
    assert_eq!(changes[0]["action"], "create");
    assert_eq!(changes[0]["name"], "acme/second");
    let r = create_session(&c, &k, &key, json!({"project": "second"}));
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["project"]["ref"], "second");
    // With two projects the field is required, and the error says so.
    let r = create_session(&c, &k, &key, json!({}));
    assert_eq!(r.status(), 422);
    let detail = r.json::<Value>().unwrap()["detail"][0].clone();
    assert_eq!(detail["loc"], json!(["body", "project"]));
    assert!(
        detail["msg"].as_str().unwrap().contains("hello, second"),
        "{detail}"
    );

    // An invalid layer is refused with its file and line; the running config stays.
    std::fs::write(
        dropins.join("30-bad.toml"),
        "[[projects]]\ntenant = \"acme\"\nslug = \"BAD\"\npath = \"/nonexistent\"\n",
    )
    .unwrap();
    let r = reload(Some(&k.admin_token));
    assert_eq!(r.status(), 422);
    let detail = r.json::<Value>().unwrap()["detail"].clone();
    let msg = detail[0]["msg"].as_str().unwrap();
    assert!(msg.contains("30-bad.toml:3: projects[2].slug"), "{detail}");
    let r = create_session(&c, &k, &key, json!({"project": "hello"}));
    assert_eq!(r.status(), 201, "the first project still works");
    let sid = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let frames = stream_turn(&c, &k, &key, &sid, "still here");
    assert_eq!(frames.last().unwrap().event, "done");

    // SIGHUP reloads too.
    std::fs::remove_file(dropins.join("30-bad.toml")).unwrap();
    std::fs::write(
        dropins.join("40-third.toml"),
        format!(
            "[[projects]]\ntenant = \"acme\"\nslug = \"third\"\npath = \"{}\"\n",
            hello_app().display()
        ),
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(k.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = create_session(&c, &k, &key, json!({"project": "third"}));
        if r.status() == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload; log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cli_config_check_plan_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), None, &["acme"], &[("acme", "hello")], 1);
    let out = cli(dir.path(), &["config", "check"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 tenant(s), 1 project(s)"));

    let out = cli(dir.path(), &["config", "plan"]);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains("+ tenant acme") && plan.contains("+ project acme/hello"),
        "{plan}"
    );
    assert!(
        !dir.path().join(".karta/karta.db").exists(),
        "plan writes nothing"
    );

    let out = cli(dir.path(), &["config", "apply"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Plan: 2 to create"));
    let out = cli(dir.path(), &["config", "plan"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));
    let out = cli(dir.path(), &["config", "apply"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "apply is idempotent"
    );

    // An invalid file: non-zero exit, file and line on stderr.
    std::fs::write(
        dir.path().join("karta.platform.toml"),
        "[[tenants]]\nslug = \"x\"\nname = 3\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("karta.platform.toml:3: tenants[0].name"),
        "{err}"
    );
    // Driver settings that miss the driver's own schema: file, line and key of each.
    std::fs::write(
        dir.path().join("karta.platform.toml"),
        "[[drivers]]\nname = \"claude-code\"\nsettings = { max_retries = -1 }\n\n\
         [[drivers]]\nname = \"acp\"\n[drivers.settings]\ncommand = \"agent\"\nagrs = [\"x\"]\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "karta.platform.toml:3: drivers[0].settings.max_retries: driver `claude-code`:"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "karta.platform.toml:9: drivers[1].settings.agrs: driver `acp`: unknown setting"
        ),
        "{err}"
    );
    // `karta drivers` shows what each driver says about itself.
    let out = cli(dir.path(), &["drivers"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acp = listed["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "acp")
        .expect("the acp driver")
        .clone();
    assert_eq!(acp["origin"], "builtin");
    assert_eq!(
        acp["settings_schema"]["properties"]["args"]["type"],
        "array"
    );
    assert!(acp["capabilities"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("approvals")));

    // A price for a provider the gateway does not speak, and a second price from the same day.
    std::fs::write(
        dir.path().join("karta.platform.toml"),
        "[[prices]]\nprovider = \"mistral\"\nmodel = \"m\"\ninput = 1\noutput = 2\n\
         [[prices]]\nprovider = \"openai\"\nmodel = \"g\"\ninput = 1\noutput = 2\n\
         [[prices]]\nprovider = \"openai\"\nmodel = \"g\"\ninput = 3\noutput = 4\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prices[0].provider"), "{err}");
    assert!(err.contains("prices[2].model"), "{err}");

    let out = cli(
        dir.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "read,root",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope `root`"));
}

#[test]
fn idle_streams_get_keepalive_comments() {
    let dir = tempfile::tempdir().unwrap();
    // Events 1.2 s apart, keep-alives every second.
    write_config(dir.path(), None, &["acme"], &[("acme", "hello")], 1200);
    let path = dir.path().join("karta.platform.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("[server]\nheartbeat_seconds = 1\n");
    std::fs::write(&path, text).unwrap();
    let k = Karta::start(dir.path());
    let key = k.create_key("acme");
    let c = client();
    let sid = new_session_id(&c, &k, &key);
    let r = post_message(&c, &k, &key, &sid)
        .json(&json!({"text": "slow", "stream": true}))
        .send()
        .unwrap();
    let body = read_body(r);
    let (frames, comments) = parse_sse(&body);
    assert!(comments >= 1, "no keep-alive in:\n{body}");
    assert!(body.contains(": keepalive\n\n"));
    assert_eq!(frames.last().unwrap().event, "done");
}

//! End-to-end: metering and budgets over HTTP with the echo plugin — every turn (native,
//! adapter, failed) is recorded with its `done`, the roll-up answers `GET /v1/usage`, and a used-up
//! budget is a 402 before anything runs, on SQLite and PostgreSQL.

use std::time::Duration;

use karta_e2e::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn start(dir: &std::path::Path, db: Option<&str>, extra: &str) -> Karta {
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.extra = format!(
        "{extra}\n{}",
        db.map(|u| format!("[database]\nurl = \"{u}\"\n"))
            .unwrap_or_default()
    );
    pf.write(dir);
    Karta::start(dir)
}

fn session(c: &Client, k: &Karta, key: &str) -> String {
    let r = c
        .post(format!("{}/v1/sessions", k.public))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn send(c: &Client, k: &Karta, key: &str, sid: &str, text: &str) -> reqwest::blocking::Response {
    c.post(format!("{}/v1/sessions/{sid}/messages", k.public))
        .bearer_auth(key)
        .json(&json!({ "text": text }))
        .send()
        .unwrap()
}

fn usage(c: &Client, k: &Karta, key: &str, query: &str) -> Value {
    let r = c
        .get(format!("{}/v1/usage{query}", k.public))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn metered(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path(), db, "");
    let key = k.create_key("acme");
    let c = client();
    let sid = session(&c, &k, &key);
    // What each turn's `done` reported, to compare with what was metered.
    let mut input = 0;
    let mut output = 0;
    for text in ["one two three", "four five", "boom [fail]"] {
        let r: Value = send(&c, &k, &key, &sid, text).json().unwrap();
        input += r["usage"]["input_tokens"].as_i64().unwrap();
        output += r["usage"]["output_tokens"].as_i64().unwrap();
    }
    let chat: Value = c
        .post(format!("{}/v1/projects/hello/chat/completions", k.public))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "six seven"}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    input += chat["usage"]["prompt_tokens"].as_i64().unwrap();
    output += chat["usage"]["completion_tokens"].as_i64().unwrap();

    let by_key = usage(&c, &k, &key, "?group_by=key");
    let rows = by_key["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_key}");
    assert_eq!(
        rows[0]["turns"], 4,
        "failed turns are metered too: {by_key}"
    );
    assert_eq!(rows[0]["input_tokens"], input);
    assert_eq!(rows[0]["output_tokens"], output);
    assert_eq!(rows[0]["total_tokens"], input + output);
    let by_day = usage(&c, &k, &key, "?group_by=day");
    assert_eq!(by_day["data"][0]["turns"], 4);
    let csv = c
        .get(format!("{}/v1/usage?group_by=project", k.public))
        .bearer_auth(&key)
        .header("Accept", "text/csv")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(csv.starts_with("project,turns,input_tokens"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",4,"), "{csv}");
    let bad = c
        .get(format!("{}/v1/usage?group_by=planet", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(bad.status(), 422);

    // The CLI prints the same per day, with a bar.
    let out = k.cli(&["usage", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let today = text.lines().nth(1).unwrap_or_default();
    assert!(today.contains(" 4 ") && today.ends_with('#'), "{text}");
    assert!(text.lines().last().unwrap().starts_with("total"), "{text}");
    let bad = k.cli(&["usage", "--tenant", "acme", "--from", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"));

    // kill -9 and start again: every turn is still metered once, not lost, not doubled.
    drop(k);
    let k = Karta::start(dir.path());
    let after = usage(&c, &k, &key, "?group_by=key");
    assert_eq!(after["data"][0]["turns"], 4, "{after}");
    assert_eq!(after["data"][0]["input_tokens"], input);
}

#[test]
fn every_turn_is_metered_once_with_what_its_done_reported_on_sqlite() {
    metered(None);
}

#[test]
fn every_turn_is_metered_once_with_what_its_done_reported_on_postgres() {
    let Some(db) = karta::store::testkit::temp_pg_database() else {
        return;
    };
    metered(Some(&db.url));
}

fn budgets(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let k = start(
        dir.path(),
        db,
        "[[budgets]]\ntenant = \"acme\"\ntotal_tokens = 60\nreserve_tokens = 10\n",
    );
    let key = k.create_key("acme");
    let c = client();
    // A hundred turns at once against 60 tokens, each reserving 10: at most six start.
    let sessions: Vec<String> = (0..100).map(|_| session(&c, &k, &key)).collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|sid| {
                let (c, k, key) = (&c, &k, &key);
                s.spawn(move || send(c, k, key, sid, "hi [approve]").status().as_u16())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (1..=6).contains(&admitted),
        "{admitted} admitted: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 402),
        "{statuses:?}"
    );
    // Their turns wait for approvals, holding their reservations; closing the sessions ends
    // them (cancelled, and metered).
    for sid in &sessions {
        let r = c
            .delete(format!("{}/v1/sessions/{sid}", k.public))
            .bearer_auth(&key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Use the budget up for real, then everything that runs a turn is a 402 first.
    let sid = session(&c, &k, &key);
    let long = "w ".repeat(80);
    loop {
        let r = send(&c, &k, &key, &sid, &long);
        if r.status() == 402 {
            assert_eq!(r.headers()["x-should-retry"], "false");
            assert_eq!(
                r.json::<Value>().unwrap(),
                json!({"error": "budget_exhausted", "reason": "monthly token cap reached"})
            );
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let before = usage(&c, &k, &key, "?group_by=key")["data"][0]["turns"].clone();
    let r = c
        .post(format!("{}/v1/projects/hello/chat/completions", k.public))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 402);
    let r = c
        .post(format!("{}/v1/projects/hello/responses", k.public))
        .bearer_auth(&key)
        .json(&json!({"input": "x", "stream": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 402, "a 402 comes before any stream starts");
    // Nothing ran: no turn was metered.
    assert_eq!(
        usage(&c, &k, &key, "?group_by=key")["data"][0]["turns"],
        before
    );
    let s: Value = c
        .get(format!("{}/v1/usage/summary", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(s["budget_ok"], false, "{s}");
    assert_eq!(s["budget"]["total_tokens"], 60);
    assert!(s["totals"]["total_tokens"].as_u64().unwrap() >= 60);
}

#[test]
fn a_used_up_budget_is_a_402_before_anything_runs_on_sqlite() {
    budgets(None);
}

#[test]
fn a_used_up_budget_is_a_402_before_anything_runs_on_postgres() {
    let Some(db) = karta::store::testkit::temp_pg_database() else {
        return;
    };
    budgets(Some(&db.url));
}

#[test]
fn an_api_keys_sub_limit_stops_that_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path(), None, "");
    let (a, b) = (k.create_key("acme"), k.create_key("acme"));
    let c = client();
    // Key A's id, from the CLI's list.
    let out = String::from_utf8(k.cli(&["keys", "list", "--tenant", "acme"]).stdout).unwrap();
    let a_id = out
        .lines()
        .skip(1)
        .find(|l| {
            // The KEY column shows `<lookup prefix>...<last four>`.
            let shown = l.split('\t').nth(3).unwrap_or("");
            let prefix = shown.split("...").next().unwrap_or("");
            !prefix.is_empty() && a.starts_with(prefix)
        })
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_string();
    let path = dir.path().join("karta.platform.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(&format!(
        "\n[[budgets]]\ntenant = \"acme\"\napi_key = \"{a_id}\"\ntotal_tokens = 5\nreserve_tokens = 1\n"
    ));
    std::fs::write(&path, toml).unwrap();
    let r = c
        .post(format!("{}/admin/v1/config/reload", k.admin))
        .bearer_auth(&k.admin_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let sa = session(&c, &k, &a);
    assert_eq!(
        send(&c, &k, &a, &sa, "one two three four five six").status(),
        200
    );
    let r = send(&c, &k, &a, &sa, "again");
    assert_eq!(r.status(), 402);
    assert_eq!(
        r.json::<Value>().unwrap()["reason"],
        "api key token cap reached"
    );
    // The other key of the tenant goes on.
    let sb = session(&c, &k, &b);
    assert_eq!(send(&c, &k, &b, &sb, "hello").status(), 200);
}

#[test]
fn budgets_set_through_the_api_apply_at_once_and_config_ones_stay_with_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(
        dir.path(),
        None,
        "[[budgets]]\ntenant = \"acme\"\nproject = \"hello\"\ncost_cents = 100000\n",
    );
    let key = k.create_key("acme");
    let admin = {
        let out = k.cli(&["keys", "create", "--tenant", "acme", "--scopes", "admin"]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    };
    let c = client();
    let url = format!("{}/v1/budgets", k.public);
    let cap = json!({"total_tokens": 5, "reserve_tokens": 1});
    assert_eq!(
        c.put(&url)
            .bearer_auth(&key)
            .json(&cap)
            .send()
            .unwrap()
            .status(),
        403
    );
    let r = c.put(&url).bearer_auth(&admin).json(&cap).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["scope"], "org");
    // The project's budget is the configuration's: the API may not change it.
    let r = c
        .put(&url)
        .bearer_auth(&admin)
        .json(&json!({"project": "hello", "total_tokens": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let listed: Value = c
        .get(&url)
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let by: Vec<(String, String)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["scope"].as_str().unwrap().into(),
                b["managed_by"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(by.contains(&("org".into(), "api".into())), "{listed}");
    assert!(
        by.contains(&("project".into(), "config".into())),
        "{listed}"
    );

    // Applies to the next turn: one turn spends it, the next is a 402.
    let sid = session(&c, &k, &key);
    assert_eq!(
        send(&c, &k, &key, &sid, "one two three four five six").status(),
        200
    );
    assert_eq!(send(&c, &k, &key, &sid, "more").status(), 402);
    // Removed: turns run again.
    let r = c.delete(&url).bearer_auth(&admin).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(send(&c, &k, &key, &sid, "more").status(), 200);
    assert_eq!(
        c.delete(&url).bearer_auth(&admin).send().unwrap().status(),
        404
    );
    // Both changes are in the audit log.
    let audit: Value = c
        .get(format!("{}/v1/audit_events", k.public))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let actions = audit.to_string();
    assert!(
        actions.contains("budget.set") && actions.contains("budget.deleted"),
        "{audit}"
    );
}

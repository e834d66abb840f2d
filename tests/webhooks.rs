//! End-to-end: webhooks over HTTP with the echo plugin — endpoints from the API (secret shown
//! once) and from the platform file, events written with their change, signed deliveries that a
//! reference verifier (Python's `hmac`, as a receiver would write it) accepts, retries until a
//! receiver comes back (across a kill -9 of Karta), once per event and endpoint with two
//! instances on one PostgreSQL, redelivery, secret rotation, and request forgery refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karta_e2e::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const CONFIG_SECRET: &str = "whsec_declared_in_the_platform_file";

/// Answers: 503 (down), 200 (up), 302 to loopback.
const DOWN: u8 = 0;
const UP: u8 = 1;
const REDIRECT: u8 = 2;
/// Takes the request and answers nothing for a while (Karta is killed meanwhile).
const HANG: u8 = 3;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    answered: u16,
}

/// A tiny HTTP receiver on loopback.
struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(DOWN));
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (m, g) = (mode.clone(), got.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (m, g) = (m.clone(), g.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let n: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; n];
                    let _ = r.read_exact(&mut body);
                    let mode = m.load(Ordering::SeqCst);
                    if mode == HANG {
                        g.lock().unwrap().push(Received {
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            answered: 0,
                        });
                        std::thread::sleep(Duration::from_secs(5));
                        return;
                    }
                    let (answered, reply) = match mode {
                        UP => (200, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()),
                        REDIRECT => (
                            302,
                            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/x\r\ncontent-length: 0\r\n\r\n"
                                .to_string(),
                        ),
                        _ => (503, "HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n".to_string()),
                    };
                    g.lock().unwrap().push(Received {
                        path,
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        answered,
                    });
                    let mut s = s;
                    let _ = s.write_all(reply.as_bytes());
                });
            }
        });
        Receiver { port, mode, got }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `f` holds of what was received.
    fn wait(&self, what: &str, f: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.got();
            if f(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: {got:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Event ids answered 200, with how often.
fn delivered(got: &[Received], path: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in got.iter().filter(|r| r.answered == 200 && r.path == path) {
        let id = serde_json::from_str::<Value>(&r.body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        *out.entry(id).or_default() += 1;
    }
    out
}

/// Python's reference check of a `Karta-Signature` header (as a receiver writes it).
fn python_verifies(header: &str, body: &str, secret: &str) -> bool {
    let script = r#"
import hmac, hashlib, sys, time
header, body, secret = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
parts = dict()
sigs = []
for p in header.split(","):
    k, v = p.split("=", 1)
    if k == "v1":
        sigs.append(v)
    else:
        parts[k] = v
t = parts["t"]
assert abs(time.time() - int(t)) < 300
expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
sys.exit(0 if any(hmac.compare_digest(expected, s) for s in sigs) else 1)
"#;
    std::process::Command::new(python())
        .args(["-c", script, header, body, secret])
        .status()
        .unwrap()
        .success()
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn write_config(dir: &Path, db: Option<&str>, receiver_port: u16) {
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.extra = format!(
        "[webhook_delivery]\ndevelopment = true\npoll_ms = 100\nretry_base_ms = 200\nretry_max_seconds = 1\n\
         timeout_seconds = 1\nlease_seconds = 3\n\
         [[webhooks]]\ntenant = \"acme\"\nname = \"ops\"\nurl = \"http://127.0.0.1:{receiver_port}/declared\"\n\
         events = [\"turn.completed\"]\nsecret = {{ env = \"KARTA_TEST_HOOK_SECRET\" }}\n{}",
        db.map(|u| format!("[database]\nurl = \"{u}\"\n"))
            .unwrap_or_default()
    );
    pf.write(dir);
}

fn start(dir: &Path) -> Karta {
    Karta::start_with_env(
        dir,
        &[
            ("KARTA_MASTER_KEY", MASTER_KEY),
            ("KARTA_TEST_HOOK_SECRET", CONFIG_SECRET),
        ],
    )
}

/// `POST /v1/webhook_endpoints`.
fn create_endpoint(
    c: &Client,
    k: &Karta,
    key: &str,
    url: &str,
    types: &[&str],
) -> reqwest::blocking::Response {
    c.post(format!("{}/v1/webhook_endpoints", k.public))
        .bearer_auth(key)
        .json(&json!({"url": url, "event_types": types}))
        .send()
        .unwrap()
}

fn turn(c: &Client, k: &Karta, key: &str) -> String {
    let sid = c
        .post(format!("{}/v1/sessions", k.public))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{}/v1/sessions/{sid}/messages", k.public))
        .bearer_auth(key)
        .json(&json!({"text": "hello"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    sid
}

#[test]
fn webhooks_are_signed_retried_until_delivered_once_and_survive_a_kill() {
    let rx = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), None, rx.port);
    let k = start(dir.path());
    let key = k.admin_key();
    let c = client();
    let url = format!("http://127.0.0.1:{}/api", rx.port);
    let r = create_endpoint(&c, &k, &key, &url, &["*"]);
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let made: Value = r.json().unwrap();
    let secret = made["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let endpoint = made["webhook_endpoint"]["id"].as_str().unwrap().to_string();
    let list: Value = c
        .get(format!("{}/v1/webhook_endpoints", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        !list.to_string().contains(&secret),
        "the secret is shown once"
    );
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    // The declared endpoint belongs to the platform file.
    let declared = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["managed_by"] == "config")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .patch(format!("{}/v1/webhook_endpoints/{declared}", k.public))
        .bearer_auth(&key)
        .json(&json!({"enabled": false}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);

    // The receiver is down: events are tried, then retried.
    k.admin_key();
    let sid = turn(&c, &k, &key);
    rx.wait("a first attempt", |g| g.iter().any(|r| r.answered == 503));
    let events: Value = c
        .get(format!("{}/v1/events?type=turn.completed", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let turn_event = events["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(events["data"][0]["data"]["object"]["session_id"], sid);
    // The turn's own delivery is tried too (its first attempt may come a round later).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d: Value = c
            .get(format!("{}/v1/events/{turn_event}/deliveries", k.public))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let tried = d["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["attempts"][0]["status_code"] == 503);
        if tried {
            break;
        }
        assert!(Instant::now() < deadline, "never tried: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 in the middle of an attempt (the receiver holds the request), start again, the
    // receiver comes back: the dead instance's claim expires and everything arrives once.
    rx.set(HANG);
    rx.wait("an attempt in flight", |g| {
        g.iter().any(|r| r.answered == 0)
    });
    drop(k);
    let k = start(dir.path());
    let sid2 = turn(&c, &k, &key);
    rx.set(UP);
    let got = rx.wait("the session, both turns and the key on /api", |g| {
        let d = delivered(g, "/api");
        d.len() >= 5
    });
    let api = delivered(&got, "/api");
    assert!(api.values().all(|n| *n == 1), "once per event: {api:?}");
    let types: Vec<String> = got
        .iter()
        .filter(|r| r.answered == 200 && r.path == "/api")
        .map(|r| r.headers["karta-event-type"].clone())
        .collect();
    for t in ["session.created", "turn.completed", "api_key.created"] {
        assert!(types.iter().any(|x| x == t), "{t}: {types:?}");
    }
    // Every delivery verifies with the reference algorithm; the envelope is as documented.
    for r in got.iter().filter(|r| r.answered == 200) {
        let s = if r.path == "/api" {
            &secret
        } else {
            CONFIG_SECRET
        };
        assert!(
            python_verifies(&r.headers["karta-signature"], &r.body, s),
            "{r:?}"
        );
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("evt_"));
        assert!(v["created"].is_i64() && v["org"].is_string() && v["data"]["object"].is_object());
        assert!(!python_verifies(
            &r.headers["karta-signature"],
            &r.body,
            "whsec_wrong"
        ));
    }
    // The declared endpoint got the two turns (its only subscription), signed with its secret.
    let declared_got = rx.wait("both turns on /declared", |g| {
        delivered(g, "/declared").len() >= 2
    });
    assert!(declared_got
        .iter()
        .filter(|r| r.path == "/declared" && r.answered == 200)
        .all(|r| r.headers["karta-event-type"] == "turn.completed"));
    let d: Value = c
        .get(format!("{}/v1/events/{turn_event}/deliveries", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ours = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["endpoint_id"] == endpoint)
        .unwrap()
        .clone();
    assert_eq!(ours["status"], "delivered", "{ours}");
    let attempts = ours["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{ours}");
    assert_eq!(attempts.last().unwrap()["status_code"], 200);

    // Redeliver sends it once more.
    let r = c
        .post(format!("{}/v1/events/{turn_event}/redeliver", k.public))
        .bearer_auth(&key)
        .json(&json!({"endpoint_id": endpoint}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    rx.wait("the redelivery", |g| {
        delivered(g, "/api").get(&turn_event) == Some(&2)
    });

    // A rotated secret: both sign during the overlap.
    let r: Value = c
        .post(format!(
            "{}/v1/webhook_endpoints/{endpoint}/rotate_secret",
            k.public
        ))
        .bearer_auth(&key)
        .json(&json!({"overlap_seconds": 3600}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let new_secret = r["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let before = rx.got().len();
    turn(&c, &k, &key);
    let got = rx.wait("an event after the rotation", |g| {
        g[before..]
            .iter()
            .any(|r| r.path == "/api" && r.headers["karta-event-type"] == "turn.completed")
    });
    let after = got[before..]
        .iter()
        .find(|r| r.path == "/api" && r.headers["karta-event-type"] == "turn.completed")
        .unwrap();
    let sig = &after.headers["karta-signature"];
    assert_eq!(sig.matches("v1=").count(), 2, "{sig}");
    assert!(python_verifies(sig, &after.body, &new_secret));
    assert!(python_verifies(sig, &after.body, &secret));

    // A turn waiting for an approval is `input.required`; the event carries what answers it.
    let sid4 = c
        .post(format!("{}/v1/sessions", k.public))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = rx.got().len();
    let (c2, url, key2, s2) = (
        c.clone(),
        format!("{}/v1/sessions/{sid4}/messages", k.public),
        key.clone(),
        sid4.clone(),
    );
    let waiting = std::thread::spawn(move || {
        c2.post(url)
            .bearer_auth(&key2)
            .json(&json!({"text": "delete it [approve]"}))
            .send()
            .unwrap()
            .status()
    });
    let got = rx.wait("input.required", |g| {
        g[before..]
            .iter()
            .any(|r| r.headers["karta-event-type"] == "input.required")
    });
    let asked: Value = serde_json::from_str(
        &got[before..]
            .iter()
            .find(|r| r.headers["karta-event-type"] == "input.required")
            .unwrap()
            .body,
    )
    .unwrap();
    let obj = &asked["data"]["object"];
    assert_eq!(obj["session_id"], s2);
    let rid = obj["request_id"].as_str().unwrap();
    let r = c
        .put(format!("{}/v1/sessions/{sid4}/inputs/{rid}", k.public))
        .bearer_auth(&key)
        .json(&json!({"decision": "approve_once"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(waiting.join().unwrap(), 200);

    // A redirect (to loopback) is not followed: the attempt is a failure, retried later.
    rx.set(REDIRECT);
    let before = rx.got().len();
    let sid3 = turn(&c, &k, &key);
    let got = rx.wait("a redirected attempt", |g| {
        g[before..].iter().any(|r| r.answered == 302)
    });
    assert!(
        got.iter().all(|r| r.path != "/x"),
        "the redirect was not followed"
    );
    let _ = (sid2, sid3);
}

#[test]
fn webhook_targets_that_would_forge_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.extra = "[webhook_delivery]\npoll_ms = 100\nretry_base_ms = 100000\n".into();
    pf.write(dir.path());
    let k = start(dir.path());
    let key = k.admin_key();
    let c = client();
    let create = |url: &str| create_endpoint(&c, &k, &key, url, &["*"]);
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://10.0.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:a9fe:a9fe]/hook",
    ] {
        let r = create(url);
        assert_eq!(r.status(), 422, "{url}");
        assert_eq!(r.json::<Value>().unwrap()["detail"][0]["loc"][1], "url");
    }
    let r = create("https://example.com/hook");
    assert_eq!(r.status(), 201);
    let bad_type = create_endpoint(&c, &k, &key, "https://example.com/", &["turn.exploded"]);
    assert_eq!(bad_type.status(), 422);
    // A name that resolves to loopback passes the form check and is refused when resolved.
    let r = create("https://localhost:9/hook");
    assert_eq!(r.status(), 201);
    let sid = turn(&c, &k, &key);
    let events: Value = c
        .get(format!("{}/v1/events?type=session.created", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ev = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["object"]["id"] == sid)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d: Value = c
            .get(format!("{}/v1/events/{ev}/deliveries", k.public))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let refused = d["data"].as_array().unwrap().iter().any(|x| {
            x["attempts"].as_array().unwrap().iter().any(|a| {
                a["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("localhost resolves to 127.0.0.1"))
            })
        });
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "no refused attempt: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_instances_on_one_postgres_deliver_each_event_once() {
    let Some(db) = karta::store::testkit::temp_pg_database() else {
        return;
    };
    let rx = Receiver::start();
    rx.set(UP);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_config(d1.path(), Some(&db.url), rx.port);
    write_config(d2.path(), Some(&db.url), rx.port);
    let k1 = start(d1.path());
    let k2 = start(d2.path());
    let key = k1.admin_key();
    let c = client();
    let url = format!("http://127.0.0.1:{}/api", rx.port);
    let r = create_endpoint(&c, &k1, &key, &url, &["session.created"]);
    assert_eq!(r.status(), 201);
    // Twenty sessions through both instances.
    for i in 0..20 {
        let k = if i % 2 == 0 { &k1 } else { &k2 };
        let r = c
            .post(format!("{}/v1/sessions", k.public))
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let got = rx.wait("twenty sessions", |g| delivered(g, "/api").len() >= 20);
    // Let both workers run a few more rounds: nothing comes twice.
    std::thread::sleep(Duration::from_secs(2));
    let got = if rx.got().len() > got.len() {
        rx.got()
    } else {
        got
    };
    let counts = delivered(&got, "/api");
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[test]
fn hooks_fire_in_order_with_their_payloads_and_a_hanging_one_delays_nothing() {
    let rx = Receiver::start();
    rx.set(UP);
    let dir = tempfile::tempdir().unwrap();
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.lines.push((
        "hello".into(),
        r#"hooks = [
  { event = "session.created", command = ["/bin/sh", "-c", "cat > hook-created.json"] },
  { event = "session.created", command = ["/bin/sh", "-c", "sleep 60"], timeout_seconds = 20 },
  { event = "message.received", command = ["/bin/sh", "-c", "cat >> hooks.jsonl; echo >> hooks.jsonl"] },
  { event = "message.completed", command = ["/bin/sh", "-c", "cat >> hooks.jsonl; echo >> hooks.jsonl"] },
  { event = "message.completed", webhook = "ops" },
]"#
        .into(),
    ));
    pf.extra = format!(
        "[webhook_delivery]\ndevelopment = true\npoll_ms = 100\n\
         [[webhooks]]\ntenant = \"acme\"\nname = \"ops\"\nurl = \"http://127.0.0.1:{}/hooks\"\n\
         events = [\"turn.completed\"]\nsecret = {{ env = \"KARTA_TEST_HOOK_SECRET\" }}\n",
        rx.port
    );
    pf.write(dir.path());
    let k = start(dir.path());
    let key = k.admin_key();
    let c = client();
    let t0 = Instant::now();
    let sid = turn(&c, &k, &key);
    let r = c
        .post(format!("{}/v1/sessions/{sid}/messages", k.public))
        .bearer_auth(&key)
        .json(&json!({"text": "second"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The hook hanging since the session was made (killed at 20 s) held back neither turn.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());

    // The webhook hook: one `hook.message.completed` per turn, to the named endpoint only.
    let got = rx.wait("two hook deliveries", |g| {
        g.iter()
            .filter(|r| {
                r.headers.get("karta-event-type").map(String::as_str)
                    == Some("hook.message.completed")
            })
            .count()
            >= 2
    });
    let hook = got
        .iter()
        .find(|r| r.headers["karta-event-type"] == "hook.message.completed")
        .unwrap();
    assert!(python_verifies(
        &hook.headers["karta-signature"],
        &hook.body,
        CONFIG_SECRET
    ));
    let v: Value = serde_json::from_str(&hook.body).unwrap();
    let obj = &v["data"]["object"];
    assert_eq!(
        (&obj["event"], &obj["session_id"]),
        (&json!("message.completed"), &json!(sid))
    );
    assert_eq!(obj["data"]["status"], "completed");

    // The command hooks ran in the session's workspace, in order, with the payload on stdin.
    let ws = std::fs::read_dir(dir.path().join(".karta/workspaces"))
        .unwrap()
        .flatten()
        .flat_map(|org| std::fs::read_dir(org.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.ends_with(&sid))
        .expect("the session's workspace");
    // Hooks run in order: the rest waits for the hanging one's 20 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let text = std::fs::read_to_string(ws.join("hooks.jsonl")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 4 {
            break lines;
        }
        assert!(Instant::now() < deadline, "hooks.jsonl: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "message.received",
            "message.completed",
            "message.received",
            "message.completed"
        ]
    );
    assert_eq!(lines[0]["data"]["text"], "hello");
    assert_eq!(lines[2]["data"]["text"], "second");
    assert_eq!(lines[1]["data"]["message"]["text"], "echo: hello");
    let created: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("hook-created.json")).unwrap())
            .unwrap();
    assert_eq!(created["event"], "session.created");
    assert_eq!(created["session_id"], sid);
    // The timed-out hook is in the project's log.
    let logs = c
        .get(format!("{}/v1/projects/hello/logs", k.public))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        logs.contains("hook failed") && logs.contains("timeout"),
        "{logs}"
    );
}

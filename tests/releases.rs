//! End-to-end: releases over HTTP with the echo plugin — publish an archive, new sessions run the
//! new release while running ones keep theirs (agents and `karta.jsonc` included), roll back,
//! concurrent activations settle on one, previews serve under their own prefix until they
//! expire, and hostile archives are refused with the member and the rule, leaving nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
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

fn start(dir: &Path, db: Option<&str>) -> Karta {
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.extra = format!(
        "[releases]\npreview_ttl_seconds = 2\nsweep_seconds = 1\nmax_upload_mb = 1\n{}",
        db.map(|u| format!("[database]\nurl = \"{u}\"\n"))
            .unwrap_or_default()
    );
    pf.write(dir);
    Karta::start(dir)
}

/// An echo app with the given agents, packed with the system `tar`.
fn app_archive(dir: &Path, name: &str, agents: &[&str], jsonc: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(app.join(".echo/agents")).unwrap();
    std::fs::write(app.join("ECHO.md"), "# echo\ndefault_agent: triage\n").unwrap();
    std::fs::write(app.join("karta.jsonc"), jsonc).unwrap();
    for a in agents {
        std::fs::write(
            app.join(format!(".echo/agents/{a}.md")),
            format!("---\nname: {a}\ndescription: the {a} agent\n---\n\nYou are {a}.\n"),
        )
        .unwrap();
    }
    let out = dir.join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&app)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// An archive with one hostile member, written by Python's `tarfile` (which writes what it is
/// told to).
fn hostile(dir: &Path, name: &str, member: &str) -> PathBuf {
    let out = dir.join(format!("{name}.tar.gz"));
    let script = format!(
        r##"
import io, tarfile
t = tarfile.open({out:?}, "w:gz")
def add(info, data=b""):
    info.size = len(data)
    t.addfile(info, io.BytesIO(data) if data else None)
ok = tarfile.TarInfo("ECHO.md"); add(ok, b"# echo\n")
kind = {kind:?}
bad = tarfile.TarInfo({member:?})
if kind == "symlink":
    bad.type = tarfile.SYMTYPE; bad.linkname = "/etc/passwd"; add(bad)
elif kind == "hardlink":
    bad.type = tarfile.LNKTYPE; bad.linkname = "/etc/passwd"; add(bad)
elif kind == "device":
    bad.type = tarfile.CHRTYPE; bad.devmajor = 1; bad.devminor = 3; add(bad)
elif kind == "bomb":
    add(bad, b"\0" * (8 * 1024 * 1024))
elif kind == "many":
    for i in range(100001):
        add(tarfile.TarInfo(f"f/{{i}}"))
else:
    add(bad, b"pwned\n")
t.close()
"##,
        out = out.display().to_string(),
        kind = name,
    );
    let st = Command::new(python())
        .arg("-c")
        .arg(script)
        .status()
        .unwrap();
    assert!(st.success(), "python3 wrote {name}");
    out
}

struct Api<'a> {
    c: Client,
    k: &'a Karta,
    key: String,
}

impl Api<'_> {
    fn publish(&self, archive: &Path, query: &str) -> reqwest::blocking::Response {
        self.c
            .post(format!(
                "{}/v1/projects/hello/releases?{query}",
                self.k.public
            ))
            .bearer_auth(&self.key)
            .header("content-type", "application/gzip")
            .body(std::fs::read(archive).unwrap())
            .send()
            .unwrap()
    }

    fn session(&self, project: &str) -> reqwest::blocking::Response {
        self.c
            .post(format!("{}/v1/projects/{project}/sessions", self.k.public))
            .bearer_auth(&self.key)
            .json(&json!({}))
            .send()
            .unwrap()
    }

    fn new_session(&self, project: &str) -> String {
        let r = self.session(project);
        assert_eq!(r.status(), 201, "{:?}", r.text());
        r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sends to `agent`; the status.
    fn send_to(&self, sid: &str, agent: &str) -> u16 {
        self.c
            .post(format!("{}/v1/sessions/{sid}/messages", self.k.public))
            .bearer_auth(&self.key)
            .json(&json!({"text": "hi", "agent": agent}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .c
            .get(format!("{}{path}", self.k.public))
            .bearer_auth(&self.key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().unwrap()
    }

    fn rollback(&self, to: Value) -> reqwest::blocking::Response {
        self.c
            .post(format!("{}/v1/projects/hello/rollback", self.k.public))
            .bearer_auth(&self.key)
            .json(&json!({ "to": to }))
            .send()
            .unwrap()
    }
}

/// Every entry under the release store, but the (empty) upload folder.
fn release_trees(dir: &Path) -> Vec<PathBuf> {
    let root = dir.join(".karta/releases");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && p.parent().is_some_and(|x| x.ends_with(".incoming")) {
                out.push(p);
            } else if p.is_dir() && !p.ends_with(".incoming") {
                // org / project / release
                if p.parent().and_then(Path::parent).and_then(Path::parent)
                    == Some(dir.join(".karta/releases").as_path())
                {
                    out.push(p);
                } else {
                    stack.push(p);
                }
            } else if p.is_file() {
                out.push(p);
            } else if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn releases_flow(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path(), db);
    let key = k.admin_key();
    let api = Api {
        c: client(),
        k: &k,
        key,
    };
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // Before any release, sessions run the project's folder.
    let s0 = api.new_session("hello");
    let v1 = app_archive(&work, "v1", &["triage"], "{}");
    let v2 = app_archive(
        &work,
        "v2",
        &["triage", "billing"],
        r#"{ "runtime": { "permission_mode": "interactive" } }"#,
    );

    let r = api.publish(&v1, "commit_sha=aaa111&message=first");
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let r1: Value = r.json().unwrap();
    assert_eq!(
        (
            &r1["version"],
            &r1["name"],
            &r1["status"],
            &r1["kind"],
            &r1["build_kind"]
        ),
        (
            &json!(1),
            &json!("v1"),
            &json!("active"),
            &json!("production"),
            &json!("file_copy")
        )
    );
    assert_eq!(r1["commit_sha"], "aaa111");
    let s1 = api.new_session("hello");
    // The same commit again is the same release.
    let again = api.publish(&v1, "commit_sha=aaa111");
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().unwrap()["id"], r1["id"]);

    let r = api.publish(&v2, "commit_sha=bbb222&message=billing");
    assert_eq!(r.status(), 201, "{:?}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["version"], 2);
    let s2 = api.new_session("hello");
    // v2's new agent serves sessions created on v2; the session made on v1 keeps v1's agents,
    // and the one made on the folder keeps the folder.
    assert_eq!(api.send_to(&s2, "billing"), 200);
    assert_eq!(api.send_to(&s1, "billing"), 422);
    assert_eq!(api.send_to(&s1, "triage"), 200);
    assert_eq!(api.send_to(&s0, "triage"), 422);
    let list = api.get("/v1/projects/hello/releases");
    let statuses: Vec<(i64, String)> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_i64().unwrap(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [(2, "active".to_string()), (1, "superseded".to_string())]
    );

    // Roll back: new sessions get v1 again; the v2 session keeps v2.
    let r = api.rollback(json!("v1"));
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let body: Value = r.json().unwrap();
    assert_eq!(body["current_release"]["version"], 1);
    assert_eq!(body["previous_release"]["version"], 2);
    let s3 = api.new_session("hello");
    assert_eq!(api.send_to(&s3, "billing"), 422);
    assert_eq!(api.send_to(&s2, "billing"), 200);
    assert_eq!(api.rollback(json!(9)).status(), 404);
    assert_eq!(api.rollback(json!("latest")).status(), 422);
    let audit: Value = api.get("/v1/audit_events?limit=100");
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"release.activated"), "{actions:?}");
    assert!(actions.contains(&"release.published"), "{actions:?}");

    // Concurrent activations settle on exactly one live release.
    std::thread::scope(|s| {
        for i in 0..8 {
            let api = &api;
            s.spawn(move || {
                let r = api.rollback(json!(1 + i % 2));
                assert_eq!(r.status(), 200);
            });
        }
    });
    let list = api.get("/v1/projects/hello/releases");
    let active = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "active")
        .count();
    assert_eq!(active, 1, "{list}");

    // A release published without activating leaves the project without a live one only if
    // it is the first; here v1 or v2 stays live.
    let v3 = app_archive(&work, "v3", &["triage", "billing", "refunds"], "{}");
    let r = api.publish(&v3, "commit_sha=ccc333&activate=false");
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["status"], "ready");
    let s4 = api.new_session("hello");
    assert_eq!(api.send_to(&s4, "refunds"), 422);

    // A preview serves under its own prefix and never moves the live release.
    let r = api.publish(&v3, "commit_sha=ccc333&preview=true");
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let p: Value = r.json().unwrap();
    assert_eq!(
        (&p["kind"], &p["status"]),
        (&json!("preview"), &json!("ready"))
    );
    let prefix = format!("hello@v{}", p["version"]);
    assert_eq!(p["url"], format!("/v1/projects/{prefix}"));
    let sp = api.new_session(&prefix);
    assert_eq!(api.send_to(&sp, "refunds"), 200);
    let s5 = api.new_session("hello");
    assert_eq!(api.send_to(&s5, "refunds"), 422);
    assert_eq!(api.rollback(p["version"].clone()).status(), 409);
    // It expires (2 s here), its files are swept, and new sessions on it are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = api.get(&format!("/v1/projects/hello/releases/v{}", p["version"]));
        if r["status"] == "expired" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never expired: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = api.session(&prefix);
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-should-retry"], "false");

    // Hostile archives: each is a 422 naming the member and the rule, and leaves nothing.
    let before = release_trees(dir.path());
    for (name, member, rule) in [
        ("slip", "../../evil.txt", "go up"),
        ("absolute", "/tmp/evil.txt", "absolute"),
        ("symlink", "link", "symbolic link"),
        ("hardlink", "hard", "hard link"),
        ("device", "null", "device"),
        ("bomb", "zeros", "fold"),
        ("many", "f/0", "members"),
    ] {
        let a = hostile(&work, name, member);
        let r = api.publish(&a, "");
        assert_eq!(r.status(), 422, "{name}: {:?}", r.text());
        let msg = r.json::<Value>().unwrap()["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains(rule), "{name}: {msg}");
        if name != "many" {
            assert!(msg.contains(member), "{name}: {msg}");
        }
    }
    // Larger than max_upload_mb: 413.
    let big = work.join("big.tar.gz");
    std::fs::write(&big, vec![7u8; 1024 * 1024 + 1]).unwrap();
    assert_eq!(api.publish(&big, "").status(), 413);
    // An app that does not validate: the file and line.
    let bad = app_archive(&work, "badjsonc", &["triage"], "{ \"runtime\": ");
    let r = api.publish(&bad, "");
    assert_eq!(r.status(), 422);
    let msg = r.json::<Value>().unwrap().to_string();
    assert!(msg.contains("karta.jsonc"), "{msg}");
    assert!(!msg.contains(".incoming"), "no staging paths: {msg}");
    assert_eq!(release_trees(dir.path()), before, "nothing left behind");
    assert!(!Path::new("/tmp/evil.txt").exists());
}

#[test]
fn releases_pin_sessions_roll_back_and_refuse_hostile_archives_on_sqlite() {
    releases_flow(None);
}

#[test]
fn releases_pin_sessions_roll_back_and_refuse_hostile_archives_on_postgres() {
    let Some(db) = karta::store::testkit::temp_pg_database() else {
        return;
    };
    releases_flow(Some(&db.url));
}

#[test]
fn a_project_whose_releases_are_none_live_refuses_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path(), None);
    let key = k.create_key("acme");
    let api = Api {
        c: client(),
        k: &k,
        key,
    };
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let v1 = app_archive(&work, "v1", &["triage"], "{}");
    let r = api.publish(&v1, "activate=false");
    assert_eq!(r.status(), 201);
    let r = api.session("hello");
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert!(r.text().unwrap().contains("none is active"));
}

/// The `karta` binary with the CLI's environment: the server's key and a private credentials
/// file.
fn karta_cli(dir: &Path, key: Option<&str>) -> Command {
    let mut c = Command::new(karta_bin());
    c.env("KARTA_CREDENTIALS", dir.join("credentials.json"))
        .env("KARTA_LOG", "warn")
        .env_remove("KARTA_SERVER");
    match key {
        Some(k) => c.env("KARTA_API_KEY", k),
        None => c.env_remove("KARTA_API_KEY"),
    };
    c
}

fn ok(out: std::process::Output) -> (String, String) {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    (so, se)
}

#[test]
fn the_cli_logs_in_deploys_lists_rolls_back_and_follows_the_projects_log() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path(), None);
    let key = k.admin_key();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    app_archive(&work, "app", &["triage"], "{}");
    let app = work.join("app");
    std::fs::write(app.join(".gitignore"), "secrets.txt\n").unwrap();
    std::fs::write(app.join("secrets.txt"), "do not ship").unwrap();

    // login keeps the key, readable by its owner only; later commands need no KARTA_API_KEY.
    let (so, _) = ok(karta_cli(dir.path(), Some(&key))
        .args(["login", "--server", &k.public])
        .output()
        .unwrap());
    assert!(so.contains("Logged in"), "{so}");
    let creds = dir.path().join("credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bad = karta_cli(dir.path(), Some("kt_live_wrong"))
        .args(["login", "--server", &k.public])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("401"));

    // Through a pipe: plain lines, no progress bar.
    let (so, se) = ok(karta_cli(dir.path(), None)
        .args(["deploy"])
        .arg(&app)
        .args(["--project", "hello", "-m", "first"])
        .output()
        .unwrap());
    assert!(so.contains("Deployed hello v1, live:"), "{so}");
    assert!(
        so.contains(&format!("{}/v1/projects/hello", k.public)),
        "{so}"
    );
    assert!(se.contains("Uploading") && se.contains("Uploaded."), "{se}");
    assert!(
        !se.contains('\u{1b}'),
        "no terminal codes in a pipe: {se:?}"
    );
    // .gitignore was honoured: the shipped release has no secrets.txt.
    let rel = k_get(&k, &key, "/v1/projects/hello/releases/v1");
    assert_eq!(rel["files"], 4, "{rel}");

    // Through a pseudo-terminal: a progress bar.
    std::fs::write(app.join("NOTES.md"), "v2").unwrap();
    let cmd = format!(
        "{} deploy {} --project hello",
        karta_bin().display(),
        app.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KARTA_CREDENTIALS", &creds)
        .env("KARTA_LOG", "warn")
        .env_remove("KARTA_API_KEY")
        .env_remove("KARTA_SERVER")
        .env("TERM", "xterm")
        .output()
        .expect("script(1) runs the CLI in a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Uploading ["), "a progress bar: {text:?}");
    assert!(text.contains("Deployed hello v2, live"), "{text}");

    let (so, _) = ok(karta_cli(dir.path(), None)
        .args(["releases", "hello"])
        .output()
        .unwrap());
    let lines: Vec<&str> = so.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{so}");
    assert!(
        lines[1].starts_with("v2") && lines[1].contains("active"),
        "{so}"
    );
    assert!(
        lines[2].starts_with("v1") && lines[2].contains("superseded"),
        "{so}"
    );
    let (so, _) = ok(karta_cli(dir.path(), None)
        .args(["rollback", "hello", "--to", "v1"])
        .output()
        .unwrap());
    assert_eq!(so.trim(), "hello: v1 is live (was v2)");
    let bad = karta_cli(dir.path(), None)
        .args(["rollback", "hello", "--to", "v9"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no release v9"));

    // The project's log: a turn shows up, and --follow prints new ones as they happen.
    let mut follow = karta_cli(dir.path(), None)
        .args(["logs", "hello", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let c = client();
    let sid = new_session(&c, &k, &key, "hello");
    let r = c
        .post(format!("{}/v1/sessions/{sid}/messages", k.public))
        .bearer_auth(&key)
        .json(&json!({"text": "hello"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("turn ended")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no `turn ended` line followed: {seen:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("turn started") && l.contains(&sid)),
        "{seen:?}"
    );
    let (so, _) = ok(karta_cli(dir.path(), None)
        .args(["logs", "hello"])
        .output()
        .unwrap());
    assert!(
        so.contains("turn ended") && so.contains("status=completed"),
        "{so}"
    );
}

fn k_get(k: &Karta, key: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{}{path}", k.public))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().unwrap()
}

#[test]
fn a_releases_only_project_serves_nothing_until_its_first_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let mut pf = PlatformFile::new();
    pf.extra = "[[projects]]\ntenant = \"acme\"\nslug = \"shipped\"\nreleases_only = true\n".into();
    pf.write(dir.path());
    let k = Karta::start(dir.path());
    let key = k.create_key("acme");
    let api = Api {
        c: client(),
        k: &k,
        key,
    };
    let r = api.session("shipped");
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("deploy one first"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let v1 = app_archive(&work, "v1", &["triage"], "{}");
    let r = api
        .c
        .post(format!("{}/v1/projects/shipped/releases", k.public))
        .bearer_auth(&api.key)
        .body(std::fs::read(&v1).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let sid = api.new_session("shipped");
    assert_eq!(api.send_to(&sid, "triage"), 200);
    // The project describes what new sessions get: the release's agents.
    let p = k_get(&k, &api.key, "/v1/projects/shipped");
    assert!(p.to_string().contains("triage"), "{p}");
    // A folder and releases_only together is a configuration error naming the field.
    std::fs::write(
        dir.path().join("karta.platform.toml"),
        format!(
            "[[tenants]]\nslug = \"acme\"\nname = \"A\"\n[[projects]]\ntenant = \"acme\"\nslug = \"x\"\npath = \"{}\"\nreleases_only = true\n",
            hello_app().display()
        ),
    )
    .unwrap();
    let out = k.cli(&["config", "check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("projects[0].path"));
}

#[test]
fn old_releases_beyond_the_kept_number_are_removed_and_cannot_be_rolled_back_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut pf = PlatformFile::new().project("hello", &hello_app(), None);
    pf.extra = "[releases]\nkeep_releases = 2\n".into();
    pf.write(dir.path());
    let k = Karta::start(dir.path());
    let key = k.admin_key();
    let api = Api {
        c: client(),
        k: &k,
        key,
    };
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut paths = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let a = app_archive(&work, v, &["triage", v], "{}");
        let r = api.publish(&a, &format!("commit_sha=c{v}"));
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        paths.push(id);
    }
    let list = api.get("/v1/projects/hello/releases");
    let statuses: Vec<&str> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "superseded", "expired"], "{list}");
    // v1's files are gone from the release store.
    let trees = release_trees(dir.path());
    assert!(trees.iter().all(|t| !t.ends_with(&paths[0])), "{trees:?}");
    assert!(trees.iter().any(|t| t.ends_with(&paths[2])), "{trees:?}");
    let r = api.rollback(json!("v1"));
    assert_eq!(r.status(), 409, "{:?}", r.text());
    assert_eq!(api.rollback(json!("v2")).status(), 200);
}

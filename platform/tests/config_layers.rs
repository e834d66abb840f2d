//! Layered configuration: order of layers, secrets, and errors that name file, line and key.

use std::fs;
use std::path::Path;

use karta::config::{load, LoadOptions, Overrides, Secret};

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn opts(dir: &Path) -> LoadOptions {
    LoadOptions {
        config_path: dir.join("karta.platform.toml"),
        explicit: true,
        overrides: Overrides::default(),
    }
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:9000"

[[tenants]]
slug = "acme"
name = "Acme"

[[projects]]
tenant = "acme"
slug = "bot"
path = "app"
"#;

#[test]
fn layers_apply_in_order_and_dropins_add_resources() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("app")).unwrap();
    write(d.path(), "karta.platform.toml", BASE);
    write(
        d.path(),
        "karta.platform.d/10-more.toml",
        "[server]\nadmin_listen = \"127.0.0.1:9001\"\n[[tenants]]\nslug = \"beta\"\nname = \"Beta\"\n",
    );
    write(
        d.path(),
        "karta.platform.d/20-more.jsonc",
        "// comments are fine\n{ server: { heartbeat_seconds: 3 }, projects: [ { tenant: 'beta', slug: 'b1', path: 'app' }, ], }\n",
    );
    let mut o = opts(d.path());
    o.overrides.listen = Some("127.0.0.1:9100".into());
    let c = load(&o).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9100", "flags win");
    assert_eq!(c.server.admin_listen, "127.0.0.1:9001");
    assert_eq!(c.server.heartbeat_seconds, 3);
    let tenants: Vec<_> = c.tenants.iter().map(|t| t.slug.as_str()).collect();
    assert_eq!(tenants, ["acme", "beta"]);
    let projects: Vec<_> = c.projects.iter().map(|p| p.slug.as_str()).collect();
    assert_eq!(projects, ["bot", "b1"]);
    // Relative paths are resolved against the main file's folder.
    assert_eq!(c.projects[0].path, d.path().join("app"));
    assert_eq!(
        c.database_url(),
        format!("sqlite://{}", d.path().join(".karta/karta.db").display())
    );
}

#[test]
fn secrets_must_be_references_and_are_never_echoed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "karta.platform.toml",
        "[providers.anthropic]\napi_key = \"sk-ant-supersecret\"\n",
    );
    let err = load(&opts(d.path())).unwrap_err().to_string();
    assert!(err.contains("providers.anthropic.api_key"), "{err}");
    assert!(err.contains("{ env = \"NAME\" }"), "{err}");
    assert!(err.contains("karta.platform.toml:2"), "{err}");
    assert!(!err.contains("supersecret"), "secret echoed: {err}");

    write(
        d.path(),
        "karta.platform.toml",
        "[providers.anthropic]\napi_key = { file = \"key.txt\" }\n",
    );
    write(d.path(), "key.txt", "sk-from-file\n");
    let c = load(&opts(d.path())).unwrap();
    let secret = c.providers["anthropic"].api_key.clone().unwrap();
    assert_eq!(secret, Secret::File(d.path().join("key.txt")));
    assert_eq!(secret.resolve().unwrap(), "sk-from-file");
    assert!(!format!("{secret:?}").contains("sk-from-file"));
}

#[test]
fn a_type_error_names_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("app")).unwrap();
    write(d.path(), "karta.platform.toml", BASE);
    write(
        d.path(),
        "karta.platform.d/50-bad.toml",
        "# a comment\n\n[[projects]]\ntenant = \"acme\"\nslug = 7\npath = \"app\"\n",
    );
    let err = load(&opts(d.path())).unwrap_err();
    let issue = &err.issues[0];
    assert_eq!(
        issue.file.as_deref(),
        Some(d.path().join("karta.platform.d/50-bad.toml").as_path())
    );
    assert_eq!(issue.line, Some(5), "{err}");
    assert_eq!(issue.key.as_deref(), Some("projects[1].slug"));
}

#[test]
fn unknown_keys_and_bad_references_are_refused_with_their_lines() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("app")).unwrap();
    write(
        d.path(),
        "karta.platform.toml",
        "[server]\nlisten = \"127.0.0.1:9000\"\nlistne = \"oops\"\n\n[[projects]]\ntenant = \"ghost\"\nslug = \"Bad Slug\"\npath = \"missing\"\n",
    );
    let err = load(&opts(d.path())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("karta.platform.toml:3: server.listne"),
        "{text}"
    );

    write(
        d.path(),
        "karta.platform.toml",
        "[[projects]]\ntenant = \"ghost\"\nslug = \"Bad Slug\"\npath = \"missing\"\n",
    );
    let err = load(&opts(d.path())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(":2: projects[0].tenant: names tenant `ghost`"),
        "{text}"
    );
    assert!(
        text.contains(":3: projects[0].slug: `Bad Slug` is not a valid slug"),
        "{text}"
    );
    assert!(text.contains(":4: projects[0].path:"), "{text}");
    assert_eq!(err.issues.len(), 3);
}

#[test]
fn syntax_errors_give_the_line() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "karta.platform.toml",
        "[server]\nlisten = \"127.0.0.1:9000\n",
    );
    let err = load(&opts(d.path())).unwrap_err();
    assert_eq!(err.issues[0].line, Some(2), "{err}");

    write(d.path(), "karta.platform.toml", "");
    write(
        d.path(),
        "karta.platform.d/a.jsonc",
        "{\n  tenants: [\n    { slug: 'x', name: },\n  ]\n}\n",
    );
    let err = load(&opts(d.path())).unwrap_err();
    assert_eq!(err.issues[0].line, Some(3), "{err}");
    assert!(err.issues[0].file.as_ref().unwrap().ends_with("a.jsonc"));
}

#[test]
fn a_missing_named_file_is_an_error_but_the_default_may_be_absent() {
    let d = tempfile::tempdir().unwrap();
    let err = load(&opts(d.path())).unwrap_err();
    assert!(
        err.to_string().contains("configuration file not found"),
        "{err}"
    );
    let mut o = opts(d.path());
    o.explicit = false;
    let c = load(&o).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8000");
}

#[test]
fn environment_variables_nest_with_double_underscores_and_beat_files() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "karta.platform.toml",
        "[runtime]\nevent_log_retention = 5\n",
    );
    // Only this test touches this variable; other KARTA_ variables are not configuration.
    std::env::set_var("KARTA_RUNTIME__EVENT_LOG_RETENTION", "77");
    std::env::set_var("KARTA_ADMIN_TOKEN_UNRELATED", "x");
    let c = load(&opts(d.path()));
    std::env::remove_var("KARTA_RUNTIME__EVENT_LOG_RETENTION");
    std::env::remove_var("KARTA_ADMIN_TOKEN_UNRELATED");
    assert_eq!(c.unwrap().runtime.event_log_retention, 77);
}

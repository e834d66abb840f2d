//! The plugin host: the example plugin loads dynamically; broken libraries are refused cleanly.

use std::path::PathBuf;

use karta::config::{DriverConfig, PlatformConfig};
use karta::drivers::{DriverLoadError, DriverOrigin, DriverRegistry};
use karta_plugin_api::{EventKind, Participant, TurnRequest, PAYLOAD_VERSION};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug")
}

fn echo_plugin() -> PathBuf {
    let p = target_dir().join("libkarta_driver_echo.so");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --workspace` (scripts/test.sh does)",
        p.display()
    );
    p
}

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-echo")
}

#[test]
fn echo_plugin_loads_detects_and_streams_a_turn() {
    let reg = DriverRegistry::new();
    let mut settings = serde_json::Map::new();
    settings.insert("delay_ms".into(), 0.into());
    let name = reg
        .load_plugin(&echo_plugin(), &settings, Some("echo"))
        .unwrap();
    assert_eq!(name, "echo");
    let d = reg
        .detect(&app_dir())
        .expect("echo claims an app with ECHO.md");
    assert_eq!(d.name, "echo");
    assert!(matches!(d.origin, DriverOrigin::Plugin(_)));
    assert!(reg.detect(&std::env::temp_dir()).is_none());
    let disc = d.driver.discover(&app_dir()).unwrap();
    assert_eq!(disc.default_agent.as_deref(), Some("default"));

    let (tx, rx) = std::sync::mpsc::channel();
    let req = TurnRequest {
        v: PAYLOAD_VERSION,
        session_id: "sess_x".into(),
        harness_session_id: None,
        app_dir: app_dir().display().to_string(),
        workspace_dir: std::env::temp_dir().display().to_string(),
        text: "one two".into(),
        agent: "default".into(),
        participant: Participant {
            name: "u".into(),
            kind: "human".into(),
        },
        thinking: false,
        permission_mode: None,
        env: Default::default(),
        app_config: serde_json::Value::Null,
        sandbox: Default::default(),
    };
    let _turn = d
        .driver
        .start_turn(&req, move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
    let events: Vec<_> = rx.iter().map(|e| e.unwrap()).collect();
    let types: Vec<_> = events.iter().map(|e| e.type_name()).collect();
    assert_eq!(
        types,
        [
            "harness_session",
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
    let text: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Text {
                part: karta_plugin_api::Part::Text { text },
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "echo: one two");
    // The sink was dropped after `done` (the channel closed, so rx.iter() ended).
}

#[test]
fn bad_settings_duplicates_and_wrong_names_are_refused() {
    let reg = DriverRegistry::new();
    let mut bad = serde_json::Map::new();
    bad.insert("delay_ms".into(), "soon".into());
    let err = reg
        .load_plugin(&echo_plugin(), &bad, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("settings.delay_ms must be a non-negative integer"),
        "{err}"
    );

    let err = reg
        .load_plugin(&echo_plugin(), &serde_json::Map::new(), Some("claude-code"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("named `echo`, the configuration expects `claude-code`"),
        "{err}"
    );

    reg.load_plugin(&echo_plugin(), &serde_json::Map::new(), None)
        .unwrap();
    assert!(matches!(
        reg.load_plugin(&echo_plugin(), &serde_json::Map::new(), None),
        Err(DriverLoadError::Duplicate(_))
    ));
}

#[test]
fn broken_libraries_are_refused_and_the_host_keeps_going() {
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("libjunk.so");
    std::fs::write(&junk, b"this is not an ELF file").unwrap();
    let cfg = PlatformConfig {
        data_dir: d.path().to_path_buf(),
        drivers: vec![
            DriverConfig {
                path: Some(junk.clone()),
                ..Default::default()
            },
            DriverConfig {
                path: Some(d.path().join("absent.so")),
                ..Default::default()
            },
            // A real shared library that is not a Karta plugin.
            DriverConfig {
                path: Some(karta_less_library()),
                ..Default::default()
            },
            DriverConfig {
                path: Some(echo_plugin()),
                ..Default::default()
            },
            DriverConfig {
                name: Some("no-such-builtin".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let reg = DriverRegistry::new();
    let errors = reg.load_from_config(&cfg);
    assert_eq!(errors.len(), 4, "{errors:?}");
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(text[0].contains("libjunk.so"), "{text:?}");
    assert!(text[2].contains("plugin"), "{text:?}");
    assert!(
        text[3].contains("no first-party driver is named `no-such-builtin`"),
        "{text:?}"
    );
    // The good plugin still loaded.
    assert!(reg.get("echo").is_some());
}

/// Some shared library on this machine that exports no Karta root module.
fn karta_less_library() -> PathBuf {
    // The C runtime is on every Linux machine that can run the tests.
    for p in [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
    ] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no libm found to test a non-plugin library");
}

#[test]
fn a_plugin_reporting_another_abi_version_is_refused_before_construction() {
    let lib = target_dir().join("libkarta_test_abi_mismatch.so");
    assert!(
        lib.is_file(),
        "{} is missing: run `cargo build --workspace`",
        lib.display()
    );
    let reg = DriverRegistry::new();
    let err = reg
        .load_plugin(&lib, &serde_json::Map::new(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("built for plugin ABI 42, this host speaks ABI 1"),
        "{err}"
    );
    assert!(reg.list().is_empty());
}

#[test]
fn plugins_dropped_into_the_plugin_folder_are_loaded() {
    let d = tempfile::tempdir().unwrap();
    let plugins = d.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(echo_plugin(), plugins.join("libkarta_driver_echo.so")).unwrap();
    std::fs::write(plugins.join("README.txt"), "not a library, ignored").unwrap();
    let cfg = PlatformConfig {
        data_dir: d.path().to_path_buf(),
        ..Default::default()
    };
    let reg = DriverRegistry::new();
    assert!(reg.load_from_config(&cfg).is_empty());
    let plugins: Vec<String> = reg
        .list()
        .into_iter()
        .filter(|(_, o)| matches!(o, DriverOrigin::Plugin(_)))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(plugins, ["echo"]);
    // A reload does not load it twice.
    assert!(reg.load_from_config(&cfg).is_empty());
    assert_eq!(
        reg.list().len(),
        3,
        "echo and the linked-in claude-code and opencode"
    );
}

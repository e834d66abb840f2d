//! The plugin host: the example plugin loads dynamically; broken libraries are refused cleanly.

use std::path::PathBuf;

use karta::config::{DriverConfig, PlatformConfig};
use karta::drivers::{DriverLoadError, DriverOrigin, DriverRegistry};
use karta_driver_api::{EventKind, Participant, TurnRequest, PAYLOAD_VERSION};

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

fn request(text: &str) -> TurnRequest {
    let mut req = TurnRequest::default();
    req.v = PAYLOAD_VERSION;
    req.session_id = "sess_x".into();
    req.app_dir = app_dir().display().to_string();
    req.workspace_dir = std::env::temp_dir().display().to_string();
    req.text = text.into();
    req.agent = "default".into();
    req.participant = Participant::new("u", "human");
    req
}

/// Runs a turn to its end and returns its text.
fn turn_text(d: &karta::drivers::LoadedDriver, text: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let _turn = d
        .driver
        .start_turn(&request(text), move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
    rx.iter()
        .map(|e| e.unwrap())
        .filter_map(|e| match e.kind {
            EventKind::Text {
                part: karta_driver_api::Part::Text { text },
            } => Some(text),
            _ => None,
        })
        .collect()
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
    let req = request("one two");
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
                part: karta_driver_api::Part::Text { text },
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
    // Checked against the schema the driver gave, before the driver is built.
    assert!(
        err.contains("driver `echo`: settings.delay_ms:") && err.contains("integer"),
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
        text[3].contains("no driver is named `no-such-builtin`"),
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
        err.contains("built for plugin ABI 42.x, this host speaks ABI 1."),
        "{err}"
    );
    assert!(reg.list().is_empty());
}

#[test]
fn a_library_in_the_plugin_folder_loads_only_when_configuration_allows_it() {
    let d = tempfile::tempdir().unwrap();
    let plugins = d.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(echo_plugin(), plugins.join("libkarta_driver_echo.so")).unwrap();
    std::fs::write(plugins.join("README.txt"), "not a library, ignored").unwrap();
    let mut cfg = PlatformConfig {
        data_dir: d.path().to_path_buf(),
        ..Default::default()
    };
    let plugin_names = |reg: &DriverRegistry| -> Vec<String> {
        reg.list()
            .into_iter()
            .filter(|(_, o)| matches!(o, DriverOrigin::Plugin(_)))
            .map(|(n, _)| n)
            .collect()
    };

    // Not named and the folder not trusted: refused without being opened, and said so.
    let reg = DriverRegistry::new();
    let errors = reg.load_from_config(&cfg);
    assert!(
        matches!(errors.as_slice(), [DriverLoadError::NotAllowed(p)] if p.ends_with("libkarta_driver_echo.so")),
        "{errors:?}"
    );
    assert!(plugin_names(&reg).is_empty());
    assert!(
        reg.load_errors()[0].contains("trust_dirs"),
        "{:?}",
        reg.load_errors()
    );

    // Named by `[[drivers]] name`, with settings.
    let mut settings = serde_json::Map::new();
    settings.insert("delay_ms".into(), 0.into());
    settings.insert("prefix".into(), "drop-in: ".into());
    cfg.drivers = vec![DriverConfig {
        name: Some("echo".into()),
        settings,
        ..Default::default()
    }];
    assert!(reg.check_settings(&cfg).is_empty());
    assert!(reg.load_from_config(&cfg).is_empty());
    assert_eq!(plugin_names(&reg), ["echo"]);
    let echo = reg.get("echo").unwrap();
    assert_eq!(turn_text(&echo, "hi"), "drop-in: hi");
    assert!(echo.info.capabilities.approvals && !echo.info.capabilities.reasoning);
    // A reload does not load it twice.
    assert!(reg.load_from_config(&cfg).is_empty());
    assert_eq!(
        reg.list().len(),
        4,
        "echo and the linked-in claude-code, opencode and acp"
    );

    // A trusted folder loads whatever it holds.
    let trusted = PlatformConfig {
        data_dir: d.path().to_path_buf(),
        plugins: karta::config::PluginsConfig {
            trust_dirs: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let reg = DriverRegistry::new();
    assert!(reg.load_from_config(&trusted).is_empty());
    assert_eq!(plugin_names(&reg), ["echo"]);
}

#[test]
fn settings_that_miss_the_driver_s_schema_name_the_key() {
    let mut settings = serde_json::Map::new();
    settings.insert("delay_ms".into(), (-3).into());
    settings.insert("prefx".into(), "typo".into());
    let cfg = PlatformConfig {
        drivers: vec![
            DriverConfig {
                path: Some(echo_plugin()),
                settings,
                ..Default::default()
            },
            DriverConfig {
                name: Some("claude-code".into()),
                settings: serde_json::from_value(serde_json::json!({"max_retries": "lots"}))
                    .unwrap(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let reg = DriverRegistry::new();
    let problems = reg.check_settings(&cfg);
    let keys: Vec<String> = problems.iter().map(|(k, _)| k.join(".")).collect();
    assert_eq!(
        keys,
        [
            "drivers.0.settings.delay_ms",
            "drivers.0.settings.prefx",
            "drivers.1.settings.max_retries"
        ],
        "{problems:?}"
    );
    assert!(problems[1].1.contains("unknown setting"), "{problems:?}");
    assert!(
        problems[2].1.starts_with("driver `claude-code`:"),
        "{problems:?}"
    );
    // Nothing is built from settings that miss the schema.
    let errors = reg.load_from_config(&cfg);
    assert!(reg.get("echo").is_none(), "{errors:?}");
}

#[test]
fn a_driver_whose_settings_change_is_rebuilt_and_running_turns_finish_on_the_old_one() {
    let settings = |prefix: &str, delay: u64| {
        let mut s = serde_json::Map::new();
        s.insert("delay_ms".into(), delay.into());
        s.insert("prefix".into(), prefix.into());
        s
    };
    let mut cfg = PlatformConfig {
        drivers: vec![DriverConfig {
            path: Some(echo_plugin()),
            settings: settings("old: ", 40),
            ..Default::default()
        }],
        ..Default::default()
    };
    let reg = DriverRegistry::new();
    assert!(reg.load_from_config(&cfg).is_empty());
    // A slow turn (7 events, 40 ms apart) on the old driver object, still running when the
    // settings change; only the turn's handle is kept, not the driver.
    let (tx, rx) = std::sync::mpsc::channel();
    let _turn = reg
        .get("echo")
        .unwrap()
        .driver
        .start_turn(&request("slow turn"), move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
    cfg.drivers[0].settings = settings("new: ", 0);
    assert!(reg.load_from_config(&cfg).is_empty());
    let new = reg.get("echo").unwrap();
    assert_eq!(turn_text(&new, "fresh"), "new: fresh");
    // The old turn was still running when the new driver had answered, and then finished.
    let mut old_events: Vec<karta_driver_api::Event> = rx.try_iter().map(|e| e.unwrap()).collect();
    assert!(
        !old_events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Done(_))),
        "the old turn ended before the reload: {old_events:?}"
    );
    old_events.extend(rx.iter().map(|e| e.unwrap()));
    assert!(matches!(
        old_events.last().map(|e| &e.kind),
        Some(EventKind::Done(d)) if d.status == karta_driver_api::TurnStatus::Completed
    ));
    let old_text: String = old_events
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Text {
                part: karta_driver_api::Part::Text { text },
            } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(old_text, "old: slow turn");
    // Unchanged settings keep the same object.
    assert!(reg.load_from_config(&cfg).is_empty());
    assert!(std::sync::Arc::ptr_eq(&new, &reg.get("echo").unwrap()));
}

#[test]
fn a_plugin_built_against_the_frozen_abi_1_0_loads_and_runs_a_turn() {
    // Built by scripts/test.sh from tests/fixtures/abi-1.0-plugin, against the frozen 1.0.0 API.
    let lib = target_dir().join("libkarta_test_abi_1_0_plugin.so");
    assert!(
        lib.is_file(),
        "{} is missing: scripts/test.sh builds it (cargo build --manifest-path \
         tests/fixtures/abi-1.0-plugin/Cargo.toml --target-dir target)",
        lib.display()
    );
    let reg = DriverRegistry::new();
    let mut settings = serde_json::Map::new();
    settings.insert("greeting".into(), "old plugin: ".into());
    assert_eq!(
        reg.load_plugin(&lib, &settings, Some("abi-1-0-fixture"))
            .unwrap(),
        "abi-1-0-fixture"
    );
    let d = reg.get("abi-1-0-fixture").unwrap();
    assert_eq!(d.version.as_deref(), Some("1.0.0"));
    let (tx, rx) = std::sync::mpsc::channel();
    let _turn = d
        .driver
        .start_turn(&request("hello"), move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
    let events: Vec<karta_driver_api::Event> = rx.iter().map(|e| e.unwrap()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.type_name()).collect();
    assert_eq!(types, ["step_start", "text", "custom", "tool_use", "done"]);
    // A kind 1.0 never defined arrives as `custom`, an unknown tool status as sent.
    assert!(matches!(&events[2].kind, EventKind::Custom(c) if c.event_type == "plan"));
    assert!(matches!(
        &events[3].kind,
        EventKind::ToolUse(t) if t.status == karta_driver_api::ToolStatus::Other("skipped".into())
    ));
    assert!(
        matches!(&events[1].kind, EventKind::Text { part: karta_driver_api::Part::Text { text } } if text == "old plugin: hello")
    );
    // Its settings schema holds too.
    let mut bad = serde_json::Map::new();
    bad.insert("greting".into(), "typo".into());
    let reg = DriverRegistry::new();
    let err = reg.load_plugin(&lib, &bad, None).unwrap_err().to_string();
    assert!(err.contains("settings.greting: unknown setting"), "{err}");
}

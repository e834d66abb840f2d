//! `echo`: a third-party Karta driver plugin, built against `karta-driver-api` and
//! the helpers of `karta-driver-kit`.
//!
//! It answers any message by streaming it back: a step, several text deltas, an `echo` tool call
//! with its result, and `done` with token usage. It is the drop-in example for driver authors and
//! the platform's test driver, so a few markers in the message exercise the rest of the protocol:
//!
//! - `[approve]`: one `echo` tool call that asks for approval (`input_required`) per marker;
//! - `[fail]`: an `error` event after the first chunk, then `done` with status `failed`;
//! - `[flood:N]`: N more text events (at most 100,000), for long turns and back-pressure;
//! - `[hang]`: after its text the turn stops answering, cancel included (a hung harness);
//! - `[panic]`: after its text the driver's thread panics (a crashing harness; every echo
//!   turn in flight ends with it, and the next turn starts a new thread).
//!
//! Agents are discovered from `.echo/agents/*.md` (frontmatter `name:` and `description:`); the
//! default agent is named by a `default_agent: <name>` line in `ECHO.md`, or is the only agent.
//!
//! Settings (the `settings` table of its `[[drivers]]` entry):
//! - `delay_ms` (default 5): pause between events, to make streaming observable;
//! - `prefix` (default `"echo: "`): what the reply starts with.

mod script;
mod worker;

use std::path::Path;
use std::time::Duration;

use karta_driver_api::{
    export_driver, AgentInfo, Capabilities, Discovery, Driver, DriverInfo, HostContext, HostInfo,
    Sink, Turn, TurnRequest,
};
use karta_driver_kit::markdown;
use serde_json::{json, Value};

/// The echo driver. Every turn of it runs on one worker thread (a turn is a script of steps,
/// so a turn waiting for an approval holds no thread).
pub struct EchoDriver {
    worker: worker::Worker,
    prefix: String,
}

impl EchoDriver {
    /// Builds the driver from its settings.
    pub fn from_settings(settings: &Value) -> Result<Self, String> {
        let delay_ms = match settings.get("delay_ms") {
            None => 5,
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("settings.delay_ms must be a non-negative integer, got {v}")
            })?,
        };
        let prefix = match settings.get("prefix") {
            None => "echo: ".to_string(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| format!("settings.prefix must be a string, got {v}"))?
                .to_string(),
        };
        Ok(Self {
            worker: worker::Worker::new(Duration::from_millis(delay_ms)),
            prefix,
        })
    }
}

export_driver!(EchoDriver);

/// Reads the `key: value` lines of a file's leading `---` frontmatter block.
fn frontmatter(text: &str) -> Option<Vec<(String, String)>> {
    markdown::frontmatter(text).map(|(fm, _line)| markdown::flat_fields(fm))
}

impl Driver for EchoDriver {
    fn describe(_host: &HostInfo) -> DriverInfo {
        let mut caps = Capabilities::none();
        caps.approvals = true;
        caps.cancel = true;
        caps.agents = true;
        // `start_turn` only builds the script and hands it over (or plays a short one at once).
        caps.quick_start = true;
        DriverInfo::new("echo")
            .with_capabilities(caps)
            .with_settings_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": 60000,
                        "description": "Pause between events, in milliseconds (default 5)"},
                    "prefix": {"type": "string",
                        "description": "What every reply starts with (default `echo: `)"}
                }
            }))
    }

    fn new(_ctx: &HostContext, settings: &Value) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn name(&self) -> String {
        "echo".into()
    }

    fn detect(&self, app_dir: &Path) -> u32 {
        // Claims only apps that ask for it explicitly with an `ECHO.md` marker.
        if app_dir.join("ECHO.md").is_file() {
            50
        } else {
            0
        }
    }

    fn discover(&self, app_dir: &Path) -> Result<Discovery, String> {
        let mut agents = Vec::new();
        let dir = app_dir.join(".echo/agents");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut files: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("md"))
                .collect();
            files.sort();
            for f in files {
                let text =
                    std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                let fm = frontmatter(&text).ok_or_else(|| {
                    format!("{}:1: expected a `---` frontmatter block", f.display())
                })?;
                let get = |k: &str| fm.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                let name = get("name")
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| format!("{}: frontmatter has no `name`", f.display()))?;
                if agents.iter().any(|a: &AgentInfo| a.name == name) {
                    return Err(format!("{}: agent `{name}` is defined twice", f.display()));
                }
                agents.push(AgentInfo {
                    name,
                    description: get("description").unwrap_or_default(),
                });
            }
        }
        let marker = std::fs::read_to_string(app_dir.join("ECHO.md")).unwrap_or_default();
        let declared = marker
            .lines()
            .find_map(|l| l.trim().strip_prefix("default_agent:"))
            .map(|s| s.trim().to_string());
        let default_agent = match (declared, agents.len()) {
            (Some(d), _) if agents.iter().any(|a| a.name == d) => Some(d),
            (Some(d), _) => {
                return Err(format!(
                    "ECHO.md names default agent `{d}`, which is not defined"
                ))
            }
            (None, 0) => Some("default".into()),
            (None, 1) => Some(agents[0].name.clone()),
            (None, _) => {
                return Err("several agents and no `default_agent:` line in ECHO.md".into())
            }
        };
        if agents.is_empty() {
            agents.push(AgentInfo {
                name: "default".into(),
                description: "Echoes every message back".into(),
            });
        }
        Ok(Discovery {
            agents,
            skills: vec![],
            default_agent,
        })
    }

    fn start_turn(&self, req: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
        let steps = script::steps(&req, &self.prefix);
        let input_tokens = req.text.split_whitespace().count() as u64;
        self.worker
            .start(&req.session_id, steps, sink, input_tokens)
    }

    fn end_session(&self, session_id: &str) {
        // Whatever the session still runs (a hung turn) is dropped.
        self.worker.end_session(session_id);
    }
}

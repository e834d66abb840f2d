//! The ACP driver: any agent that speaks the Agent Client Protocol over stdio becomes a Karta
//! harness. Built only against the public driver API (`karta-driver-api`) and its kit.
//!
//! A project selects it with `harness = "acp"` and names the agent's command in the driver's
//! settings (`[[drivers]] name = "acp"`, `settings = { command = "opencode", args = ["acp"] }`)
//! or in the app's `karta.jsonc` (`"harness": {"acp": {"command": "...", "args": [...]}}`,
//! which wins). One agent process runs per session, kept warm between turns:
//!
//! * `initialize` (we offer file reads and writes inside the session workspace, no terminal),
//!   then `session/new`, or `session/load` when the session had an ACP session before and the
//!   agent offers it (so a conversation survives a Karta restart);
//! * `session/prompt` per turn; `session/update` notifications become `text`, `reasoning`,
//!   `tool_use` and `custom` (`plan`) events;
//! * `session/request_permission` becomes `input_required` (allow once, allow always, reject);
//! * a cancel is `session/cancel` (the agent is stopped if it does not end the turn in 10 s);
//! * token usage comes from the prompt result when the agent reports it; the platform's model
//!   gateway counts every call either way, and that count is what is billed.

mod fs;
pub mod protocol;
mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karta_driver_api::{
    AgentInfo, Capabilities, Discovery, Driver, DriverInfo, HostContext, HostInfo, Sink, Turn,
    TurnRequest,
};
use karta_driver_kit::process::{spawn_idle_reaper, WarmMap};
use serde_json::{json, Value};

/// The name projects select the driver by.
pub const DRIVER_NAME: &str = "acp";

const DEFAULT_IDLE_SECONDS: u64 = 600;

type Agents = WarmMap<session::Agent>;

/// The ACP driver.
pub struct AcpDriver {
    settings: Settings,
    agents: Agents,
}

#[derive(Clone, Debug, Default)]
struct Settings {
    command: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    idle_timeout: Option<u64>,
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what} must be a list of strings"))
            })
            .collect(),
        _ => Err(format!("{what} must be a list of strings")),
    }
}

impl Settings {
    fn parse(v: &Value, what: &str) -> Result<Self, String> {
        let command = match &v["command"] {
            Value::Null => None,
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => return Err(format!("{what}.command must be a non-empty string")),
        };
        let env = match &v["env"] {
            Value::Null => Vec::new(),
            Value::Object(m) => m
                .iter()
                .map(|(k, x)| {
                    x.as_str()
                        .map(|s| (k.clone(), s.to_string()))
                        .ok_or_else(|| format!("{what}.env.{k} must be a string"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(format!("{what}.env must be a table of strings")),
        };
        Ok(Self {
            command,
            args: strings(&v["args"], &format!("{what}.args"))?,
            env,
            idle_timeout: v["idle_timeout_seconds"].as_u64(),
        })
    }
}

impl AcpDriver {
    /// How to start the agent for a turn: the app's `harness.acp` over the driver's settings.
    fn launch(&self, req: &TurnRequest) -> Result<session::Launch, String> {
        let app = Settings::parse(&req.app_config["harness"]["acp"], "karta.jsonc harness.acp")?;
        let (command, args) = match app.command {
            Some(c) => (c, app.args),
            None => (
                self.settings.command.clone().ok_or(
                    "no ACP agent is configured: set `command` in the acp driver's settings or \
                     `harness.acp.command` in the app's karta.jsonc",
                )?,
                self.settings.args.clone(),
            ),
        };
        let program = resolve(&command, Path::new(&req.app_dir))?;
        let mut env = self.settings.env.clone();
        env.extend(app.env);
        // The app may shorten the operator's idle timeout, never lengthen it.
        let operator = self.settings.idle_timeout.unwrap_or(DEFAULT_IDLE_SECONDS);
        let idle = app.idle_timeout.map_or(operator, |a| a.clamp(1, operator));
        Ok(session::Launch {
            program,
            args,
            env,
            idle_timeout: Duration::from_secs(idle),
        })
    }
}

/// A command path: absolute; relative to the app folder (`./agent`); or a name on `PATH`.
fn resolve(command: &str, app_dir: &Path) -> Result<PathBuf, String> {
    let p = Path::new(command);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if command.contains('/') {
        return Ok(app_dir.join(p));
    }
    karta_driver_kit::cli::on_path(command)
        .ok_or_else(|| format!("the ACP agent `{command}` is not on PATH"))
}

impl Driver for AcpDriver {
    fn describe(_host: &HostInfo) -> DriverInfo {
        let mut caps = Capabilities::all();
        caps.agents = false;
        caps.skills = false;
        DriverInfo::new(DRIVER_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_capabilities(caps)
            .with_settings_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "command": {"type": "string", "minLength": 1,
                        "description": "The agent's program: a path, or a name on PATH"},
                    "args": {"type": "array", "items": {"type": "string"},
                        "description": "Its arguments, e.g. [\"acp\"]"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra environment for the agent; ${OPENAI_BASE_URL}, \
                            ${OPENAI_API_KEY}, ${ANTHROPIC_BASE_URL} and ${ANTHROPIC_API_KEY} \
                            expand to the platform's model gateway"},
                    "idle_timeout_seconds": {"type": "integer", "minimum": 1,
                        "description": "A session's idle agent is stopped after this long"}
                }
            }))
    }

    fn new(_ctx: &HostContext, settings: &Value) -> Result<Self, String> {
        let settings = Settings::parse(settings, "settings")?;
        let agents: Agents = Arc::new(Mutex::new(HashMap::new()));
        spawn_idle_reaper("acp-reaper", &agents)
            .map_err(|e| format!("cannot start the idle reaper: {e}"))?;
        Ok(Self { settings, agents })
    }

    fn name(&self) -> String {
        DRIVER_NAME.into()
    }

    fn detect(&self, _app_dir: &Path) -> u32 {
        // Nothing in a folder says "ACP": projects choose it with `harness = "acp"`.
        0
    }

    fn discover(&self, _app_dir: &Path) -> Result<Discovery, String> {
        Ok(Discovery {
            agents: vec![AgentInfo {
                name: "default".into(),
                description: "The ACP agent".into(),
            }],
            skills: vec![],
            default_agent: Some("default".into()),
        })
    }

    fn start_turn(&self, req: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
        let launch = self.launch(&req);
        Ok(session::start(self.agents.clone(), launch, req, sink))
    }

    fn end_session(&self, session_id: &str) {
        let agent = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session_id);
        if let Some(a) = agent {
            a.stop();
        }
    }
}

//! `karta.jsonc`: a harness app's own run-time settings (approval policy, hidden event types).
//!
//! Every key is optional and a missing file means all defaults. Unknown keys are ignored for
//! forward compatibility; a syntax error or a wrong value names the file, line and key.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How an approval prompt is answered.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Ask: surface `input_required` and wait for a decision.
    Prompt,
    /// Refuse; the agent continues without the action.
    Deny,
    /// Allow this one action.
    ApproveOnce,
    /// Allow this and later uses of the same tool for the rest of the session.
    ApproveSession,
    /// End the turn with an `error` event instead of pausing.
    Error,
}

/// A deployed app's approval behaviour.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PermissionMode {
    /// Ask (policy `prompt`).
    Interactive,
    /// Approve for the session (policy `approve_session`).
    Autonomous,
}

impl PermissionMode {
    /// The equivalent policy.
    pub fn policy(self) -> Policy {
        match self {
            PermissionMode::Interactive => Policy::Prompt,
            PermissionMode::Autonomous => Policy::ApproveSession,
        }
    }

    /// Parses `interactive` / `autonomous`.
    pub fn parse(s: &str) -> Option<PermissionMode> {
        match s {
            "interactive" => Some(PermissionMode::Interactive),
            "autonomous" => Some(PermissionMode::Autonomous),
            _ => None,
        }
    }
}

/// `cli.*`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CliSettings {
    /// Event types nobody is shown; an `input_required` listed here is decided by
    /// `input_required_hidden_policy`.
    pub hidden_event_types: Vec<String>,
    /// The interactive CLI's policy (not used for served traffic).
    pub input_required_policy: Policy,
    /// The decision for prompts nobody can see (hidden, or unanswered past the timeout).
    pub input_required_hidden_policy: Policy,
}

impl Default for CliSettings {
    fn default() -> Self {
        Self {
            hidden_event_types: Vec::new(),
            input_required_policy: Policy::Prompt,
            input_required_hidden_policy: Policy::Deny,
        }
    }
}

/// `runtime.*`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AppRuntime {
    /// `interactive` (default) or `autonomous`.
    pub permission_mode: Option<PermissionMode>,
}

/// The settings of one harness app.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AppSettings {
    /// `cli.*`
    pub cli: CliSettings,
    /// `runtime.*`
    pub runtime: AppRuntime,
    /// The whole file as JSON, for the harness's own settings (`harness.*`).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

impl AppSettings {
    /// Reads `<app_dir>/karta.jsonc`; absent means defaults.
    pub fn load(app_dir: &Path) -> Result<AppSettings, String> {
        let path = app_dir.join("karta.jsonc");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let value: serde_json::Value = json5::from_str(&text).map_err(|e| match e {
            json5::Error::Message { msg, location } => match location {
                Some(l) => format!("{}:{}: syntax error: {msg}", path.display(), l.line),
                None => format!("{}: syntax error: {msg}", path.display()),
            },
        })?;
        let mut settings: AppSettings = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
        settings.raw = value;
        Ok(settings)
    }

    /// The policy for an approval prompt in served traffic. Precedence, first match wins:
    /// 1. `input_required` listed in `cli.hidden_event_types` -> `cli.input_required_hidden_policy`
    ///    (nobody would see the prompt);
    /// 2. the session's own `permission_mode`;
    /// 3. `runtime.permission_mode` of `karta.jsonc`;
    /// 4. `prompt`.
    ///
    /// A tool approved earlier with `approve_session` is allowed before any of these apply.
    pub fn policy_for(&self, session_mode: Option<PermissionMode>) -> Policy {
        if self
            .cli
            .hidden_event_types
            .iter()
            .any(|t| t == "input_required")
        {
            return self.cli.input_required_hidden_policy;
        }
        session_mode
            .or(self.runtime.permission_mode)
            .map(PermissionMode::policy)
            .unwrap_or(Policy::Prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<AppSettings, String> {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("karta.jsonc"), text).unwrap();
        AppSettings::load(d.path())
    }

    #[test]
    fn defaults_and_precedence() {
        let none = AppSettings::load(Path::new("/nonexistent-app")).unwrap();
        assert_eq!(none.policy_for(None), Policy::Prompt);
        let auto = settings("{ runtime: { permission_mode: 'autonomous' }, }").unwrap();
        assert_eq!(auto.policy_for(None), Policy::ApproveSession);
        assert_eq!(
            auto.policy_for(Some(PermissionMode::Interactive)),
            Policy::Prompt
        );
        let hidden = settings(
            r#"// hide prompts
            { "cli": { "hidden_event_types": ["input_required"] }, "runtime": { "permission_mode": "autonomous" } }"#,
        )
        .unwrap();
        assert_eq!(
            hidden.policy_for(Some(PermissionMode::Autonomous)),
            Policy::Deny
        );
        let unknown_keys = settings(r#"{ "profile": { "name": "dana" }, "harness": {} }"#);
        assert!(unknown_keys.is_ok());
    }

    #[test]
    fn errors_name_the_key_or_line() {
        let e = settings(r#"{ "runtime": { "permission_mode": "yolo" } }"#).unwrap_err();
        assert!(e.contains("runtime.permission_mode"), "{e}");
        let e = settings("{\n  cli: {\n    hidden_event_types: [,]\n  }\n}").unwrap_err();
        assert!(e.contains("karta.jsonc:3: syntax error"), "{e}");
    }
}

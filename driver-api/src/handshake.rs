//! The handshake: what the host tells a driver about itself, and what a driver says about itself.
//!
//! The host calls `describe` with a [`HostInfo`] before the driver exists and reads back a
//! [`DriverInfo`]; it checks the user's settings against [`DriverInfo::settings_schema`], then
//! builds the driver with a [`HostContext`] and those settings. Host context never travels inside
//! the user's settings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the host is. Sent to `describe`, and inside [`HostContext`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
#[non_exhaustive]
pub struct HostInfo {
    /// The ABI version the host was built against (`1.1.0`).
    pub abi_version: String,
    /// The Karta version.
    pub host_version: String,
    /// The event types the host understands; anything else it forwards as a `custom` event.
    pub event_types: Vec<String>,
}

impl HostInfo {
    /// The info of a host built against this crate, for a host of version `host_version`.
    pub fn current(host_version: &str) -> Self {
        Self {
            abi_version: crate::ABI_VERSION.to_string(),
            host_version: host_version.to_string(),
            event_types: crate::types::KNOWN_EVENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Whether the host knows the event type `t` (a host that sent no list knows the 1.0 set).
    pub fn understands(&self, t: &str) -> bool {
        if self.event_types.is_empty() {
            crate::types::KNOWN_EVENT_TYPES.contains(&t)
        } else {
            self.event_types.iter().any(|e| e == t)
        }
    }
}

/// What the host gives a driver when it builds it, apart from the user's settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
#[non_exhaustive]
pub struct HostContext {
    /// The host.
    pub host: HostInfo,
    /// The platform's data folder; a driver may keep state under `<data_dir>/drivers/<name>`.
    pub data_dir: String,
}

impl HostContext {
    /// A context for `host` with the data folder `data_dir`.
    pub fn new(host: HostInfo, data_dir: impl Into<String>) -> Self {
        Self {
            host,
            data_dir: data_dir.into(),
        }
    }
}

/// What a driver says about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct DriverInfo {
    /// The name projects select it by (`harness = "..."`).
    pub name: String,
    /// The driver's version (filled from the plugin crate's version when left empty).
    pub version: String,
    /// What it can do.
    pub capabilities: Capabilities,
    /// A JSON Schema (draft 2020-12) of its `[[drivers]] settings`; `null` accepts any object.
    pub settings_schema: Value,
}

impl DriverInfo {
    /// Info for a driver named `name` that accepts no settings and claims no capability.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: String::new(),
            capabilities: Capabilities::default(),
            settings_schema: serde_json::json!({
                "type": "object",
                "additionalProperties": false
            }),
        }
    }

    /// Sets the capabilities.
    pub fn with_capabilities(mut self, c: Capabilities) -> Self {
        self.capabilities = c;
        self
    }

    /// Sets the settings schema.
    pub fn with_settings_schema(mut self, schema: Value) -> Self {
        self.settings_schema = schema;
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }
}

/// What a driver can do. Unknown capabilities a newer driver reports are ignored.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
#[non_exhaustive]
pub struct Capabilities {
    /// It pauses turns on `input_required` and honours decisions.
    pub approvals: bool,
    /// It emits `reasoning` events when asked for thinking.
    pub reasoning: bool,
    /// A cancel stops a running turn.
    pub cancel: bool,
    /// A session continues its conversation across turns and host restarts.
    pub resume: bool,
    /// It discovers the app's agents.
    pub agents: bool,
    /// It discovers the app's skills.
    pub skills: bool,
    /// Its `start_turn` never waits (no process to start, no file or network I/O): the host
    /// calls it on the request's own thread instead of handing it to a blocking-pool thread.
    /// Events it emits on the calling thread before `start_turn` returns are held and delivered
    /// in order, up to a bound (256, or the host's turn event queue if larger); beyond it the
    /// host ends the turn as failed. Its own threads may emit meanwhile (they wait for room, in
    /// order). Not part of [`Capabilities::all`].
    pub quick_start: bool,
}

impl Capabilities {
    /// Every capability a turn can offer (not `quick_start`, a promise about threading that a
    /// driver must make on purpose).
    pub fn all() -> Self {
        Self {
            approvals: true,
            reasoning: true,
            cancel: true,
            resume: true,
            agents: true,
            skills: true,
            // A promise about threading, not a feature: a driver makes it on purpose.
            quick_start: false,
        }
    }

    /// No capability.
    pub fn none() -> Self {
        Self::default()
    }

    /// The names of the capabilities claimed.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("approvals", self.approvals),
            ("reasoning", self.reasoning),
            ("cancel", self.cancel),
            ("resume", self.resume),
            ("agents", self.agents),
            ("skills", self.skills),
            ("quick_start", self.quick_start),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_peer_s_fields_are_ignored_and_missing_ones_default() {
        let info: DriverInfo = serde_json::from_str(
            r#"{"name":"x","capabilities":{"approvals":true,"teleport":true},"future":1}"#,
        )
        .unwrap();
        assert_eq!(info.name, "x");
        assert!(info.capabilities.approvals && !info.capabilities.cancel);
        assert_eq!(info.settings_schema, Value::Null);
        let host: HostInfo = serde_json::from_str(r#"{"abi_version":"1.3.0"}"#).unwrap();
        assert!(host.understands("text") && !host.understands("plan"));
        assert!(HostInfo::current("0.1.0").understands("custom"));
    }

    #[test]
    fn every_capability_leaves_the_threading_promise_off() {
        // Drivers built with `all()` start processes in `start_turn`: a rebuild on 1.1 must not
        // move them onto the host's request thread.
        let all = Capabilities::all();
        assert!(all.approvals && all.skills && !all.quick_start);
        let old: Capabilities = serde_json::from_str(r#"{"approvals":true}"#).unwrap();
        assert!(!old.quick_start);
    }
}

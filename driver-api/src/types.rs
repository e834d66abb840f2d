//! Typed payloads exchanged with drivers, serialized as versioned JSON across the ABI.
//!
//! Forward compatibility both ways: a reader ignores fields it does not know, every field added
//! after 1.0 is optional, an event of a type the host does not know arrives as
//! [`EventKind::Custom`], and an enum value either side does not know is carried as `Other`.

/// An enum whose unknown values are carried as `Other(String)` instead of failing the parse.
macro_rules! open_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        // Known values may be added within 1.x: match with a wildcard arm.
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $variant,)+
            /// A value this version of the API does not know, as sent.
            Other(String),
        }

        impl $name {
            /// The wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($wire => Self::$variant,)+
                    _ => Self::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_string(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the host asks a driver to run. Built by the host as `TurnRequest::default()` (of the
/// current payload version) and then field by field, so that fields can be added within 1.x.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct TurnRequest {
    /// Payload version ([`crate::PAYLOAD_VERSION`]).
    pub v: u32,
    /// The Karta session id (`sess_...`).
    pub session_id: String,
    /// The harness's own session/thread id from an earlier turn, when there was one.
    #[serde(default)]
    pub harness_session_id: Option<String>,
    /// The harness-app folder the session is pinned to (read-only for the driver).
    pub app_dir: String,
    /// The session's private working directory (the harness's cwd and state).
    pub workspace_dir: String,
    /// The user's message.
    pub text: String,
    /// The agent that handles this turn.
    pub agent: String,
    /// Who sent the message.
    pub participant: Participant,
    /// Whether the caller asked for reasoning events.
    #[serde(default)]
    pub thinking: bool,
    /// `interactive` or `autonomous`, when set for the session.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// Environment the platform injects into the harness process (model keys, base URLs).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The app's `karta.jsonc` as JSON (`null` when it has none), for harness settings such as
    /// `harness.claude.idle_timeout_seconds`.
    #[serde(default)]
    pub app_config: Value,
    /// How the harness must be confined: pass it to the kit's sandbox launcher unchanged.
    #[serde(default)]
    pub sandbox: crate::sandbox::SandboxSpec,
}

impl Default for TurnRequest {
    fn default() -> Self {
        Self {
            v: crate::PAYLOAD_VERSION,
            session_id: String::new(),
            harness_session_id: None,
            app_dir: String::new(),
            workspace_dir: String::new(),
            text: String::new(),
            agent: String::new(),
            participant: Participant::default(),
            thinking: false,
            permission_mode: None,
            env: BTreeMap::new(),
            app_config: Value::Null,
            sandbox: crate::sandbox::SandboxSpec::default(),
        }
    }
}

/// Refuses a payload of another version (it comes from a peer of another ABI major).
pub fn check_payload_version(v: u32) -> Result<(), String> {
    if v == crate::PAYLOAD_VERSION {
        Ok(())
    } else {
        Err(format!(
            "payload version {v}; this side reads version {}",
            crate::PAYLOAD_VERSION
        ))
    }
}

/// The sender of a message.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Participant {
    /// Stable name of the participant.
    pub name: String,
    /// `human` or `ai`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Participant {
    /// A participant named `name` of type `kind` (`human` or `ai`).
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
        }
    }
}

/// One event from a driver: the public envelope's `type` and `data`, plus the harness's raw event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Payload version ([`crate::PAYLOAD_VERSION`]).
    pub v: u32,
    /// The typed payload.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The harness's original event, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

impl Event {
    /// Wraps a payload in an envelope of the current version.
    pub fn new(kind: EventKind) -> Self {
        Self {
            v: crate::PAYLOAD_VERSION,
            kind,
            raw: None,
        }
    }

    /// Attaches the harness's original event.
    pub fn with_raw(mut self, raw: Value) -> Self {
        self.raw = Some(raw);
        self
    }

    /// The public event type name (`text`, `tool_use`, ...).
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

/// Event payloads; `type` and `data` on the wire. Kinds may be added within 1.x (match with a
/// wildcard arm); a host that does not know one receives it as [`EventKind::Custom`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// An assistant text chunk.
    Text {
        /// Always a `text` part.
        part: Part,
    },
    /// A reasoning chunk (only when the caller asked for thinking).
    Reasoning {
        /// Always a `reasoning` part.
        part: Part,
    },
    /// A tool call, and later its result under the same `tool_use_id`.
    ToolUse(ToolUse),
    /// An agentic step began.
    StepStart {
        /// Zero-based step number within the turn.
        step_index: u32,
        /// What the step is about, when the harness says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// An agentic step finished.
    StepFinish {
        /// Zero-based step number within the turn.
        step_index: u32,
        /// The step's outcome, when the harness says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// The model that ran the step, when the harness says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The model's provider (`anthropic`, `openai`), when the harness says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
        /// The step's tokens and cost; a turn's `done` usage is the sum of its steps'.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// The turn is paused until the request is answered.
    InputRequired(InputRequest),
    /// An agent or harness error; the turn then ends with `done` (status `failed`).
    Error(ErrorInfo),
    /// The turn is over. Always the last event of a turn.
    Done(Done),
    /// Harness-internal message.
    System(Value),
    /// Host-internal: the harness's own session id, to continue the conversation next turn.
    /// The host records it and never forwards it to clients.
    HarnessSession {
        /// The id to pass back as [`TurnRequest::harness_session_id`].
        harness_session_id: String,
    },
    /// An event kind this host does not know (a driver built against a newer API): carried as
    /// it came and forwarded to clients as a `custom` event, never a turn failure.
    Custom(CustomEvent),
}

/// An event of a kind the host does not know.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CustomEvent {
    /// The driver's event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its data, as sent.
    #[serde(default)]
    pub data: Value,
}

/// The event types this version of the API defines (a host sends its own list in
/// [`crate::HostInfo::event_types`]).
pub const KNOWN_EVENT_TYPES: [&str; 11] = [
    "text",
    "reasoning",
    "tool_use",
    "step_start",
    "step_finish",
    "input_required",
    "error",
    "done",
    "system",
    "harness_session",
    "custom",
];

/// Reads an event a driver sent. An event of a type this API does not define becomes
/// [`EventKind::Custom`]; a known type with data of the wrong shape is an error.
pub fn parse_event(json: &str) -> Result<Event, String> {
    let strict_err = match serde_json::from_str::<Event>(json) {
        Ok(e) => return check_payload_version(e.v).map(|()| e),
        Err(e) => e,
    };
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("type").and_then(Value::as_str) {
        Some(t) if !KNOWN_EVENT_TYPES.contains(&t) => Ok(Event {
            v: {
                let n = v
                    .get("v")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(crate::PAYLOAD_VERSION);
                check_payload_version(n)?;
                n
            },
            kind: EventKind::Custom(CustomEvent {
                event_type: t.to_string(),
                data: v.get("data").cloned().unwrap_or(Value::Null),
            }),
            raw: v.get("raw").cloned(),
        }),
        _ => Err(strict_err.to_string()),
    }
}

impl EventKind {
    /// The public event type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Text { .. } => "text",
            EventKind::Reasoning { .. } => "reasoning",
            EventKind::ToolUse(_) => "tool_use",
            EventKind::StepStart { .. } => "step_start",
            EventKind::StepFinish { .. } => "step_finish",
            EventKind::InputRequired(_) => "input_required",
            EventKind::Error(_) => "error",
            EventKind::Done(_) => "done",
            EventKind::System(_) => "system",
            EventKind::HarnessSession { .. } => "harness_session",
            EventKind::Custom(_) => "custom",
        }
    }
}

/// A content part (the Claude-SDK shape `{"type": "text", "text": ...}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Assistant text.
    Text {
        /// The chunk.
        text: String,
    },
    /// Reasoning text.
    Reasoning {
        /// The chunk.
        text: String,
    },
}

/// A tool call or its outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ToolUse {
    /// Pairs the call with its result.
    pub tool_use_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The tool's input.
    #[serde(default)]
    pub tool_input: Value,
    /// `pending`, `running`, `completed` or `error`.
    pub status: ToolStatus,
    /// The tool's output once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

open_enum! {
    /// Where a tool call stands.
    pub enum ToolStatus {
        /// Announced, not started.
        Pending = "pending",
        /// Running.
        Running = "running",
        /// Finished; `result` holds the output.
        Completed = "completed",
        /// Failed; `result` holds the error.
        Error = "error",
    }
}

/// An approval the turn waits for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputRequest {
    /// `req_...`, unique within the session.
    pub request_id: String,
    /// What is asked, e.g. `tool_use`.
    pub kind: String,
    /// The tool that wants to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// A human-readable prompt.
    pub message: String,
    /// The decisions on offer.
    pub options: Vec<DecisionKind>,
    /// The tool's input, when the request is about a tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_input: Option<Value>,
}

/// An error inside a turn.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Machine-readable code, e.g. `harness_crashed`, `model_error`, `byok_key_rejected`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The model provider involved, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// The end of a turn.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Done {
    /// Tokens and cost of this turn.
    pub usage: Usage,
    /// How the turn ended.
    pub status: TurnStatus,
    /// Why the model stopped, when known (`end_turn`, `max_tokens`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The assembled assistant message. Drivers leave it out; the host fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
}

open_enum! {
    /// How a turn ended. The host records an `Other` status as `completed` unless the turn
    /// reported an error, and forwards the value as sent.
    pub enum TurnStatus {
        /// Ran to the end.
        Completed = "completed",
        /// Ended by an error.
        Failed = "failed",
        /// Stopped by a cancel.
        Cancelled = "cancelled",
    }
}

// The macro derives no `Default` (most open enums have none).
#[allow(clippy::derivable_impls)]
impl Default for TurnStatus {
    fn default() -> Self {
        Self::Completed
    }
}

/// Token and cost accounting of a turn or of one step of it.
///
/// One convention for every harness: `input_tokens` excludes cached input (cache reads and
/// writes are counted apart), `output_tokens` includes reasoning (as providers bill it), and
/// `reasoning_tokens` says how much of the output was reasoning.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    #[serde(default)]
    pub output_tokens: u64,
    /// The part of `output_tokens` that was reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Input, output, cache reads and cache writes (reasoning is inside output).
    #[serde(default)]
    pub total_tokens: u64,
    /// Cost in micro-cents (1e-6 cent), when the harness reports one.
    #[serde(default)]
    pub cost_micro_cents: u64,
}

impl Usage {
    /// Builds a usage record whose total is the sum of its parts.
    pub fn new(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Self {
        Self {
            input_tokens: input,
            output_tokens: output,
            reasoning_tokens: 0,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            total_tokens: input + output + cache_read + cache_write,
            cost_micro_cents: 0,
        }
    }

    /// Adds another's counts and cost (saturating).
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(o.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.total_tokens = self.total_tokens.saturating_add(o.total_tokens);
        self.cost_micro_cents = self.cost_micro_cents.saturating_add(o.cost_micro_cents);
    }
}

/// The assistant's message of a turn, as assembled by the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The concatenated text chunks.
    pub text: String,
    /// The agent that produced it.
    pub agent: String,
}

open_enum! {
    /// The decisions an approval can get. A driver may offer a value the host does not know;
    /// the host offers it to clients as sent and passes it back when chosen.
    pub enum DecisionKind {
        /// Allow this one call.
        ApproveOnce = "approve_once",
        /// Allow this and later calls of the same tool in this session.
        ApproveSession = "approve_session",
        /// Refuse the call.
        Deny = "deny",
    }
}

/// An answer to an [`InputRequest`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Payload version ([`crate::PAYLOAD_VERSION`]).
    pub v: u32,
    /// The decision.
    pub decision: DecisionKind,
    /// An optional message for the model (e.g. why it was denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Decision {
    /// A decision of the current payload version.
    pub fn new(decision: DecisionKind, message: Option<String>) -> Self {
        Self {
            v: crate::PAYLOAD_VERSION,
            decision,
            message,
        }
    }
}

/// What a driver found in a harness-app folder.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// The agents the app defines.
    #[serde(default)]
    pub agents: Vec<AgentInfo>,
    /// The skills the app ships.
    #[serde(default)]
    pub skills: Vec<SkillInfo>,
    /// The agent a session starts with, when the app names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_agent: Option<String>,
}

/// One agent of a harness app.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    /// The name messages route by.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// One skill of a harness app.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkillInfo {
    /// The skill's name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_event_has_the_public_wire_shape() {
        let ev = Event::new(EventKind::Text {
            part: Part::Text { text: "Hel".into() },
        });
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            json!({"v": 1, "type": "text", "data": {"part": {"type": "text", "text": "Hel"}}})
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn done_round_trips_and_defaults_missing_usage_fields() {
        let v = json!({"v": 1, "type": "done", "data": {"usage": {"input_tokens": 3}, "status": "failed"}, "raw": {"x": 1}});
        let ev: Event = serde_json::from_value(v).unwrap();
        match ev.kind {
            EventKind::Done(d) => {
                assert_eq!(d.usage.input_tokens, 3);
                assert_eq!(d.usage.output_tokens, 0);
                assert_eq!(d.status, TurnStatus::Failed);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ev.raw, Some(json!({"x": 1})));
    }

    #[test]
    fn unknown_enum_values_are_carried_and_known_ones_keep_their_wire_names() {
        let d: Done =
            serde_json::from_value(json!({"usage": {}, "status": "paused_forever"})).unwrap();
        assert_eq!(d.status, TurnStatus::Other("paused_forever".into()));
        assert_eq!(
            serde_json::to_value(&d).unwrap()["status"],
            "paused_forever"
        );
        let t: ToolUse = serde_json::from_value(
            json!({"tool_use_id": "t", "tool_name": "x", "status": "queued"}),
        )
        .unwrap();
        assert_eq!(t.status.as_str(), "queued");
        let r: InputRequest = serde_json::from_value(json!({
            "request_id": "r", "kind": "tool_use", "message": "m",
            "options": ["approve_once", "approve_project", "deny"]
        }))
        .unwrap();
        assert_eq!(
            r.options,
            [
                DecisionKind::ApproveOnce,
                DecisionKind::Other("approve_project".into()),
                DecisionKind::Deny
            ]
        );
        assert_eq!(
            serde_json::to_value(DecisionKind::ApproveSession).unwrap(),
            "approve_session"
        );
        assert_eq!(
            serde_json::to_value(TurnStatus::Cancelled).unwrap(),
            "cancelled"
        );
    }

    #[test]
    fn unknown_event_type_is_an_error_not_a_panic() {
        let r: Result<Event, _> =
            serde_json::from_value(json!({"v": 1, "type": "bogus", "data": {}}));
        assert!(r.is_err());
    }

    #[test]
    fn an_unknown_event_kind_is_carried_as_custom_and_a_malformed_known_one_is_an_error() {
        let e = parse_event(r#"{"v":1,"type":"plan","data":{"steps":["a"]}}"#).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Custom(CustomEvent {
                event_type: "plan".into(),
                data: json!({"steps": ["a"]}),
            })
        );
        assert_eq!(e.type_name(), "custom");
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["type"], "custom");
        assert_eq!(wire["data"]["type"], "plan");
        assert!(parse_event(r#"{"v":1,"type":"text","data":{"nope":1}}"#).is_err());
        // Another payload version is refused, known kind or not.
        let err = parse_event(r#"{"v":2,"type":"step_start","data":{"step_index":0}}"#);
        assert!(err.unwrap_err().contains("payload version 2"));
        assert!(parse_event(r#"{"v":7,"type":"plan","data":{}}"#).is_err());
        assert_eq!(TurnRequest::default().v, crate::PAYLOAD_VERSION);
        assert!(parse_event("not json").is_err());
        let known = parse_event(r#"{"v":1,"type":"step_start","data":{"step_index":0}}"#).unwrap();
        assert_eq!(known.type_name(), "step_start");
    }
}

//! ACP (Agent Client Protocol) messages translated to and from Karta's, as pure functions: no
//! process, no threads. `session.rs` does the I/O.
//!
//! The wire is newline-delimited JSON-RPC 2.0. The agent's messages are read into the typed
//! schema of `agent-client-protocol-schema`; an update this version does not know is kept as a
//! `custom` event (`acp_update`) rather than dropped.

use std::collections::HashMap;

use agent_client_protocol_schema::v1::{
    ContentBlock, PermissionOptionKind, PromptResponse, RequestPermissionRequest,
    SessionNotification, SessionUpdate, ToolCallStatus,
};
use karta_driver_api::{
    DecisionKind, Done, ErrorInfo, Event, EventKind, InputRequest, Part, ToolStatus, ToolUse,
    TurnStatus, Usage,
};
use serde_json::{json, Value};

/// `value` with each `${NAME}` replaced by the platform-injected variable `NAME` (the model
/// gateway's URL and token, known only per turn), so an agent's own configuration can point at
/// the gateway. Any other `${...}` is left as written.
pub fn expand(value: &str, vars: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) if vars.contains_key(&after[..j]) => {
                out.push_str(&vars[&after[..j]]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The ACP protocol version this client speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// A JSON-RPC error from the agent.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
}

/// One line from the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// The answer to one of our requests.
    Response {
        /// Our request's id.
        id: Value,
        /// Its result or error.
        result: Result<Value, RpcError>,
    },
    /// A request the agent makes of us (permission, file system).
    Request {
        /// Its id, to answer with.
        id: Value,
        /// The method.
        method: String,
        /// Its parameters.
        params: Value,
    },
    /// A notification (`session/update`).
    Notification {
        /// The method.
        method: String,
        /// Its parameters.
        params: Value,
    },
}

/// Reads one line the agent wrote.
pub fn parse_line(line: &str) -> Result<Incoming, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON-RPC: {e}"))?;
    let params = v.get("params").cloned().unwrap_or(Value::Null);
    match (v.get("id"), v.get("method").and_then(Value::as_str)) {
        (Some(id), Some(method)) if !id.is_null() => Ok(Incoming::Request {
            id: id.clone(),
            method: method.to_string(),
            params,
        }),
        (None, Some(method)) => Ok(Incoming::Notification {
            method: method.to_string(),
            params,
        }),
        (Some(id), None) => {
            let result = match v.get("error").filter(|e| !e.is_null()) {
                Some(e) => Err(RpcError {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_string(),
                }),
                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            };
            Ok(Incoming::Response {
                id: id.clone(),
                result,
            })
        }
        _ => Err("a JSON-RPC message needs an id or a method".into()),
    }
}

/// A request line.
pub fn request(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// A notification line.
pub fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

/// A result line answering the agent's request `id`.
pub fn response(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// An error line answering the agent's request `id`.
pub fn error_response(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// `initialize`: we serve file reads and writes inside the session workspace, no terminals.
pub fn initialize_params(client_version: &str) -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "clientCapabilities": {
            "fs": {"readTextFile": true, "writeTextFile": true},
            "terminal": false
        },
        "clientInfo": {"name": "karta", "version": client_version}
    })
}

/// Whether the agent's `initialize` result offers `session/load`.
pub fn offers_load(init_result: &Value) -> bool {
    init_result["agentCapabilities"]["loadSession"].as_bool() == Some(true)
}

/// `session/new` or `session/load` parameters.
pub fn session_params(cwd: &str, session_id: Option<&str>) -> Value {
    let mut p = json!({"cwd": cwd, "mcpServers": []});
    if let Some(id) = session_id {
        p["sessionId"] = json!(id);
    }
    p
}

/// `session/prompt` parameters for a user message.
pub fn prompt_params(session_id: &str, text: &str) -> Value {
    json!({"sessionId": session_id, "prompt": [{"type": "text", "text": text}]})
}

/// Tool calls a turn remembers (name and input, for updates that carry only what changed);
/// past it, updates of new calls show what they carry.
pub const MAX_TOOL_CALLS: usize = 4096;

/// What a turn's translation remembers between updates.
#[derive(Debug, Default)]
pub struct TurnState {
    /// Whether the caller asked for reasoning events.
    pub thinking: bool,
    /// Each tool call's name and input, for updates that carry only what changed.
    tools: HashMap<String, (String, Value)>,
}

impl TurnState {
    /// A fresh state for a turn.
    pub fn new(thinking: bool) -> Self {
        Self {
            thinking,
            tools: HashMap::new(),
        }
    }
}

fn tool_status(s: ToolCallStatus) -> ToolStatus {
    match s {
        ToolCallStatus::Pending => ToolStatus::Pending,
        ToolCallStatus::InProgress => ToolStatus::Running,
        ToolCallStatus::Completed => ToolStatus::Completed,
        ToolCallStatus::Failed => ToolStatus::Error,
        // A status newer than this schema: carried as the agent sent it.
        #[allow(unreachable_patterns)]
        other => ToolStatus::Other(
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
        ),
    }
}

fn block_text(b: &ContentBlock) -> Option<&str> {
    match b {
        ContentBlock::Text(t) => Some(&t.text),
        _ => None,
    }
}

/// The text of a tool call's `content` (what it printed), for the result.
fn content_text(content: &Value) -> Option<String> {
    let parts: Vec<&str> = content
        .as_array()?
        .iter()
        .filter_map(|c| c["content"]["text"].as_str())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// Events for one `session/update` notification. An update this schema cannot read becomes a
/// `custom` event of type `acp_update` carrying it as sent.
pub fn update_events(params: &Value, st: &mut TurnState) -> Vec<Event> {
    let n: SessionNotification = match serde_json::from_value(params.clone()) {
        Ok(n) => n,
        Err(_) => return vec![custom("acp_update", params["update"].clone(), params)],
    };
    let raw = || params["update"].clone();
    match &n.update {
        SessionUpdate::AgentMessageChunk(c) => block_text(&c.content)
            .map(|t| {
                vec![Event::new(EventKind::Text {
                    part: Part::Text {
                        text: t.to_string(),
                    },
                })
                .with_raw(raw())]
            })
            .unwrap_or_default(),
        SessionUpdate::AgentThoughtChunk(c) if st.thinking => block_text(&c.content)
            .map(|t| {
                vec![Event::new(EventKind::Reasoning {
                    part: Part::Reasoning {
                        text: t.to_string(),
                    },
                })
                .with_raw(raw())]
            })
            .unwrap_or_default(),
        SessionUpdate::AgentThoughtChunk(_) | SessionUpdate::UserMessageChunk(_) => vec![],
        SessionUpdate::ToolCall(t) => {
            let id = t.tool_call_id.0.to_string();
            let name = t.name.clone().unwrap_or_else(|| t.title.clone());
            let input = t.raw_input.clone().unwrap_or(Value::Null);
            if st.tools.len() < MAX_TOOL_CALLS {
                st.tools.insert(id.clone(), (name.clone(), input.clone()));
            }
            let result = t
                .raw_output
                .clone()
                .or_else(|| content_text(&raw()["content"]).map(Value::String));
            vec![Event::new(EventKind::ToolUse(ToolUse {
                tool_use_id: id,
                tool_name: name,
                tool_input: input,
                status: tool_status(t.status),
                result,
            }))
            .with_raw(raw())]
        }
        SessionUpdate::ToolCallUpdate(u) => {
            let id = u.tool_call_id.0.to_string();
            let f = &u.fields;
            let entry = st.tools.entry(id.clone()).or_insert_with(|| {
                (
                    f.title.clone().unwrap_or_else(|| "tool".into()),
                    Value::Null,
                )
            });
            if let Some(title) = &f.title {
                if entry.0 == "tool" {
                    entry.0 = title.clone();
                }
            }
            if let Some(input) = &f.raw_input {
                entry.1 = input.clone();
            }
            let Some(status) = f.status else {
                // Progress without a status change (new content, a title): nothing to show.
                return vec![];
            };
            let result = f
                .raw_output
                .clone()
                .or_else(|| content_text(&raw()["content"]).map(Value::String));
            vec![Event::new(EventKind::ToolUse(ToolUse {
                tool_use_id: id,
                tool_name: entry.0.clone(),
                tool_input: entry.1.clone(),
                status: tool_status(status),
                result,
            }))
            .with_raw(raw())]
        }
        SessionUpdate::Plan(p) => {
            let entries = serde_json::to_value(&p.entries).unwrap_or(Value::Null);
            vec![custom("plan", json!({ "entries": entries }), params)]
        }
        // Commands, modes, session info and context usage: nothing a client of a turn needs.
        _ => vec![],
    }
}

/// An event of a kind Karta does not define, forwarded to clients as `custom`.
fn custom(kind: &str, data: Value, raw: &Value) -> Event {
    Event::new(EventKind::Custom(karta_driver_api::CustomEvent {
        event_type: kind.to_string(),
        data,
    }))
    .with_raw(raw.clone())
}

/// An approval the agent asked for, and how each of Karta's decisions answers it.
#[derive(Clone, Debug)]
pub struct Permission {
    /// What the client sees.
    pub request: InputRequest,
    /// The agent's option for each decision on offer.
    pub options: Vec<(DecisionKind, String)>,
}

/// Translates `session/request_permission`: allow once -> `approve_once`, allow always ->
/// `approve_session`, reject (once preferred over always) -> `deny`.
pub fn permission(params: &Value, request_id: &str) -> Result<Permission, String> {
    let r: RequestPermissionRequest = serde_json::from_value(params.clone())
        .map_err(|e| format!("unreadable session/request_permission: {e}"))?;
    let mut options: Vec<(DecisionKind, String)> = Vec::new();
    let mut put = |kind: DecisionKind, want: &[PermissionOptionKind]| {
        for w in want {
            if let Some(o) = r.options.iter().find(|o| o.kind == *w) {
                options.push((kind, o.option_id.0.to_string()));
                return;
            }
        }
    };
    put(
        DecisionKind::ApproveOnce,
        &[PermissionOptionKind::AllowOnce],
    );
    put(
        DecisionKind::ApproveSession,
        &[PermissionOptionKind::AllowAlways],
    );
    put(
        DecisionKind::Deny,
        &[
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ],
    );
    if options.is_empty() {
        return Err("the agent asked for permission but offered no option Karta knows".into());
    }
    let f = &r.tool_call.fields;
    let tool = f.title.clone();
    Ok(Permission {
        request: InputRequest {
            request_id: request_id.to_string(),
            kind: "tool_use".into(),
            message: format!("Allow {}?", tool.as_deref().unwrap_or("this tool call")),
            tool,
            options: options.iter().map(|(k, _)| k.clone()).collect(),
            tool_input: f.raw_input.clone(),
        },
        options,
    })
}

/// The result answering a permission request with `decision`.
pub fn permission_outcome(p: &Permission, decision: &DecisionKind) -> Result<Value, String> {
    let (_, option) = p
        .options
        .iter()
        .find(|(k, _)| k == decision)
        .ok_or_else(|| format!("`{decision}` is not among the options of this request"))?;
    Ok(json!({"outcome": {"outcome": "selected", "optionId": option}}))
}

/// The result answering a permission request of a cancelled turn.
pub fn cancelled_outcome() -> Value {
    json!({"outcome": {"outcome": "cancelled"}})
}

/// The turn's `done`, from the `session/prompt` result.
///
/// Token convention (Karta's): `input_tokens` without cached input, `output_tokens` with
/// reasoning. ACP's `inputTokens` already excludes the cached reads and writes it lists apart.
pub fn done(result: &Value, cancelled: bool) -> Done {
    // Read apart, so a stop reason newer than this schema keeps the turn and its usage.
    let stop_reason = result["stopReason"].as_str().map(str::to_string);
    let status = match stop_reason.as_deref() {
        _ if cancelled => TurnStatus::Cancelled,
        Some("cancelled") => TurnStatus::Cancelled,
        Some(_) => TurnStatus::Completed,
        None => TurnStatus::Failed,
    };
    let usage = serde_json::from_value::<PromptResponse>(json!({
        "stopReason": "end_turn",
        "usage": result.get("usage").cloned().unwrap_or(Value::Null),
    }))
    .ok()
    .and_then(|p| p.usage)
    .map(|u| {
        let cache_read = u.cached_read_tokens.unwrap_or(0);
        let cache_write = u.cached_write_tokens.unwrap_or(0);
        let mut usage = Usage::new(u.input_tokens, u.output_tokens, cache_read, cache_write);
        usage.reasoning_tokens = u.thought_tokens.unwrap_or(0).min(u.output_tokens);
        usage
    })
    .unwrap_or_default();
    Done {
        usage,
        status,
        stop_reason,
        message: None,
    }
}

/// The error event of a failed ACP call.
pub fn rpc_error(what: &str, e: &RpcError) -> ErrorInfo {
    ErrorInfo {
        code: "model_error".into(),
        message: format!("{what} failed: {} (code {})", e.message, e.code),
        provider: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn as the example agent (`examples/acp-agent`) writes it, line by line.
    const TRANSCRIPT: &str = include_str!("../tests/transcript.jsonl");

    fn lines() -> Vec<Incoming> {
        TRANSCRIPT
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_line(l).unwrap())
            .collect()
    }

    #[test]
    fn a_recorded_turn_becomes_karta_events() {
        let mut st = TurnState::new(true);
        let mut events = Vec::new();
        let mut asked = None;
        let mut result = None;
        for m in lines() {
            match m {
                Incoming::Notification { method, params } if method == "session/update" => {
                    events.extend(update_events(&params, &mut st))
                }
                Incoming::Request { method, params, .. }
                    if method == "session/request_permission" =>
                {
                    asked = Some(permission(&params, "req_1").unwrap());
                }
                Incoming::Response { result: r, .. } => result = Some(r.unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        let kinds: Vec<&str> = events.iter().map(|e| e.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "reasoning",
                "custom",
                "tool_use",
                "tool_use",
                "text",
                "text"
            ],
            "{events:?}"
        );
        let tools: Vec<&ToolUse> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ToolUse(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(tools[0].status, ToolStatus::Pending);
        assert_eq!(tools[1].status, ToolStatus::Completed);
        assert_eq!(tools[1].tool_name, "write notes.txt");
        assert_eq!(tools[1].tool_input, json!({"path": "notes.txt"}));
        assert_eq!(tools[1].result, Some(json!("wrote 5 bytes")));
        let p = asked.unwrap();
        assert_eq!(
            p.request.options,
            [
                DecisionKind::ApproveOnce,
                DecisionKind::ApproveSession,
                DecisionKind::Deny
            ]
        );
        assert_eq!(
            permission_outcome(&p, &DecisionKind::ApproveSession).unwrap(),
            json!({"outcome": {"outcome": "selected", "optionId": "always"}})
        );
        assert!(permission_outcome(&p, &DecisionKind::Other("x".into())).is_err());
        let d = done(&result.unwrap(), false);
        assert_eq!(d.status, TurnStatus::Completed);
        assert_eq!(d.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            (
                d.usage.input_tokens,
                d.usage.output_tokens,
                d.usage.total_tokens
            ),
            (12, 9, 21)
        );
    }

    #[test]
    fn thoughts_are_dropped_unless_asked_for_and_unknown_updates_are_kept() {
        let mut st = TurnState::new(false);
        let thought = json!({"sessionId": "s", "update": {"sessionUpdate": "agent_thought_chunk",
            "content": {"type": "text", "text": "hmm"}}});
        assert!(update_events(&thought, &mut st).is_empty());
        let future = json!({"sessionId": "s", "update": {"sessionUpdate": "hologram", "x": 1}});
        let ev = update_events(&future, &mut st);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].type_name(), "custom");
        assert!(matches!(&ev[0].kind, EventKind::Custom(c) if c.event_type == "acp_update"));
    }

    #[test]
    fn platform_variables_expand_in_agent_settings_and_nothing_else_does() {
        let vars = std::collections::BTreeMap::from([
            ("OPENAI_BASE_URL".to_string(), "http://gw/v1".to_string()),
            ("OPENAI_API_KEY".to_string(), "tok".to_string()),
        ]);
        assert_eq!(
            expand(
                r#"{"baseURL":"${OPENAI_BASE_URL}","key":"${OPENAI_API_KEY}"}"#,
                &vars
            ),
            r#"{"baseURL":"http://gw/v1","key":"tok"}"#
        );
        assert_eq!(expand("${HOME} ${unclosed", &vars), "${HOME} ${unclosed");
    }

    #[test]
    fn json_rpc_lines_parse_and_bad_ones_are_errors() {
        assert!(matches!(
            parse_line(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"nope"}}"#),
            Ok(Incoming::Response {
                result: Err(RpcError { code: -32601, .. }),
                ..
            })
        ));
        assert!(parse_line("{}").is_err());
        assert!(parse_line("not json").is_err());
        assert_eq!(
            done(&json!({"stopReason": "cancelled"}), false).status,
            TurnStatus::Cancelled
        );
        assert_eq!(
            done(&json!({"stopReason": "end_turn"}), true).status,
            TurnStatus::Cancelled
        );
        assert_eq!(done(&json!("garbage"), false).status, TurnStatus::Failed);
        // A stop reason newer than the schema keeps the turn and its usage.
        let d = done(
            &json!({"stopReason": "paused_for_lunch", "usage": {"totalTokens": 3, "inputTokens": 2, "outputTokens": 1}}),
            false,
        );
        assert_eq!((d.status, d.usage.total_tokens), (TurnStatus::Completed, 3));
        assert!(matches!(
            parse_line(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":null}"#),
            Ok(Incoming::Response { result: Ok(_), .. })
        ));
    }
}

//! Anthropic Managed Agents vocabulary (spec 03 §5): a session's turns as an ordered,
//! replayable log of entries (`user.*`, `agent.*`, `session.*`), each with `seq` (from 1, +1 per
//! entry), `id`, `type`, `session_id` and `processed_at`.
//!
//! [`Mapper`] turns a Karta turn's events into entries; the log itself (storage, sequence
//! numbers, live followers) lives in `http::adapters::managed`.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::{prompt_tokens, TurnEvent};

/// The id of a session's entry `seq` (`evt_...`, unique across sessions).
pub fn entry_id(session_id: &str, seq: i64) -> String {
    format!(
        "evt_{}_{seq}",
        session_id.strip_prefix("sess_").unwrap_or(session_id)
    )
}

/// A log entry: the envelope plus the type's own fields.
pub fn entry(session_id: &str, seq: i64, kind: &str, at: &str, fields: Value) -> Value {
    let mut e = Map::new();
    e.insert("seq".into(), json!(seq));
    e.insert("id".into(), json!(entry_id(session_id, seq)));
    e.insert("type".into(), json!(kind));
    e.insert("session_id".into(), json!(session_id));
    e.insert("processed_at".into(), json!(at));
    if let Value::Object(f) = fields {
        e.extend(f);
    }
    Value::Object(e)
}

/// Text as a content list.
fn content(text: &str) -> Value {
    json!([{"type": "text", "text": text}])
}

/// The echo of an accepted `user.message`.
pub fn user_message(text: &str) -> (&'static str, Value) {
    ("user.message", json!({ "content": content(text) }))
}

/// The echo of an accepted `user.tool_confirmation`.
pub fn tool_confirmation(
    request_id: &str,
    result: &str,
    tool_use_id: Option<&str>,
) -> (&'static str, Value) {
    (
        "user.tool_confirmation",
        json!({"request_id": request_id, "result": result, "tool_use_id": tool_use_id}),
    )
}

/// A turn starts (or goes on after an answer).
pub fn running() -> (&'static str, Value) {
    ("session.status_running", json!({}))
}

/// Maps one turn's events onto entries. Tool calls are announced once (`agent.tool_use`) and
/// resolved once (`agent.tool_result`), however often the harness reports their progress.
#[derive(Debug, Default)]
pub struct Mapper {
    announced: HashSet<String>,
    resolved: HashSet<String>,
}

impl Mapper {
    /// The entries `ev` makes: (type, fields). `next_seq` is the sequence number the first of
    /// them will get (an approval's idle entry names the entry that asks).
    pub fn on(
        &mut self,
        session_id: &str,
        ev: &TurnEvent<'_>,
        next_seq: i64,
    ) -> Vec<(&'static str, Value)> {
        match ev {
            TurnEvent::Text(t) => vec![("agent.message", json!({ "content": content(t) }))],
            TurnEvent::Reasoning(t) => vec![("agent.thinking", json!({ "text": t }))],
            TurnEvent::ToolUse {
                id,
                name,
                input,
                status,
                result,
            } => {
                let mut out = Vec::new();
                if self.announced.insert(id.to_string()) {
                    out.push((
                        "agent.tool_use",
                        json!({"tool_use_id": id, "name": name, "input": input,
                               "evaluated_permission": "allow"}),
                    ));
                }
                let ended = matches!(*status, "completed" | "error");
                if ended && self.resolved.insert(id.to_string()) {
                    let text = match result {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => String::new(),
                    };
                    out.push((
                        "agent.tool_result",
                        json!({"tool_use_id": id, "content": content(&text),
                               "is_error": *status == "error"}),
                    ));
                }
                out
            }
            TurnEvent::InputRequired {
                request_id,
                tool,
                tool_input,
                message,
                options,
            } => vec![
                (
                    "agent.tool_use",
                    json!({"name": tool, "input": tool_input, "evaluated_permission": "ask",
                           "request_id": request_id, "message": message, "options": options}),
                ),
                (
                    "session.status_idle",
                    json!({"stop_reason": {"type": "requires_action",
                           "event_ids": [entry_id(session_id, next_seq)],
                           "request_ids": [request_id]}}),
                ),
            ],
            TurnEvent::Error { code, message, .. } => vec![(
                "session.error",
                json!({"error": {"type": code, "message": message,
                                 "retry_status": {"type": "exhausted"}}}),
            )],
            TurnEvent::Done {
                usage, cancelled, ..
            } => {
                let input = prompt_tokens(usage);
                let mut idle = json!({
                    "stop_reason": {"type": "end_turn"},
                    "usage": {"input_tokens": input, "output_tokens": usage.output_tokens,
                              "total_tokens": input + usage.output_tokens},
                });
                if *cancelled {
                    idle["interrupted"] = json!(true);
                }
                vec![("session.status_idle", idle)]
            }
            TurnEvent::Other => Vec::new(),
        }
    }
}

/// Whether a session whose last status entry is `kind` is running.
pub fn is_running(last_status: Option<&str>) -> bool {
    last_status == Some("session.status_running")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[(&str, Value)]) -> Vec<Value> {
        let mut m = Mapper::default();
        let mut out = Vec::new();
        let mut seq = 3;
        for (k, d) in events {
            for (kind, fields) in m.on("sess_a", &TurnEvent::from_parts(k, d), seq) {
                out.push(entry("sess_a", seq, kind, "2026-12-05T00:00:00Z", fields));
                seq += 1;
            }
        }
        out
    }

    #[test]
    fn a_turn_with_a_tool_and_an_approval_maps_onto_agent_and_session_entries() {
        let log = run(&[
            ("step_start", json!({"step_index": 0})),
            (
                "tool_use",
                json!({"tool_use_id": "t1", "tool_name": "Read", "tool_input": {"p": 1}, "status": "running"}),
            ),
            (
                "tool_use",
                json!({"tool_use_id": "t1", "tool_name": "Read", "tool_input": {"p": 1}, "status": "completed", "result": "file text"}),
            ),
            (
                "input_required",
                json!({"request_id": "req_9", "kind": "tool_use", "tool": "Bash",
                "message": "Allow Bash?", "options": ["approve_once", "approve_session", "deny"]}),
            ),
            ("text", json!({"part": {"type": "text", "text": "Done."}})),
            (
                "done",
                json!({"status": "completed", "usage": {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}}),
            ),
        ]);
        let kinds: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "agent.tool_use",
                "agent.tool_result",
                "agent.tool_use",
                "session.status_idle",
                "agent.message",
                "session.status_idle"
            ]
        );
        let seqs: Vec<i64> = log.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [3, 4, 5, 6, 7, 8]);
        assert_eq!(log[1]["content"][0]["text"], "file text");
        assert_eq!(log[2]["evaluated_permission"], "ask");
        assert_eq!(log[2]["request_id"], "req_9");
        assert_eq!(log[3]["stop_reason"]["type"], "requires_action");
        assert_eq!(log[3]["stop_reason"]["event_ids"][0], log[2]["id"]);
        assert_eq!(log[3]["stop_reason"]["request_ids"][0], "req_9");
        assert_eq!(log[4]["content"][0]["text"], "Done.");
        assert_eq!(log[5]["stop_reason"]["type"], "end_turn");
        assert_eq!(log[5]["usage"]["total_tokens"], 14);
        assert!(log.iter().all(
            |e| e["session_id"] == "sess_a" && e["id"].as_str().unwrap().starts_with("evt_a_")
        ));
    }

    #[test]
    fn errors_and_interrupts_end_the_turn_visibly() {
        let log = run(&[
            (
                "error",
                json!({"code": "harness_crashed", "message": "gone"}),
            ),
            ("done", json!({"status": "cancelled", "usage": {}})),
        ]);
        assert_eq!(log[0]["type"], "session.error");
        assert_eq!(log[0]["error"]["type"], "harness_crashed");
        assert_eq!(log[0]["error"]["retry_status"]["type"], "exhausted");
        assert_eq!(log[1]["interrupted"], true);
        assert!(is_running(Some("session.status_running")));
        assert!(!is_running(Some("session.status_idle")) && !is_running(None));
    }
}

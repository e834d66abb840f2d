//! Claude Code's stream-json protocol, translated. Every function here is pure: an output line
//! of the CLI and the turn's state in, the events to emit and the lines to answer out. The
//! process file does the I/O.

use std::collections::{HashMap, HashSet};

use karta_driver_api::{
    Decision, DecisionKind, Done, ErrorInfo, Event, EventKind, InputRequest, Part, ToolStatus,
    ToolUse, TurnStatus, Usage,
};
use serde_json::{json, Value};

/// What a line asks of the process side.
#[derive(Debug, PartialEq)]
// `Emit` is by far the most common and short-lived; boxing it would cost an allocation per
// event for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Send this event to the host.
    Emit(Event),
    /// Write this line to the CLI's input.
    Reply(Value),
    /// The turn is over (its `done` was emitted just before).
    Ended,
}

/// What the protocol remembers across the turns of one process.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Tools approved for the rest of the session.
    pub approved: HashSet<String>,
    /// The CLI reports cost cumulatively per process, in micro-cents.
    pub cost_total: u64,
}

/// What the protocol remembers within one turn.
#[derive(Debug, Default)]
pub struct TurnState {
    /// Whether reasoning is surfaced.
    pub thinking: bool,
    step: u32,
    step_open: bool,
    announced: bool,
    /// tool_use id -> (name, input)
    tools: HashMap<String, (String, Value)>,
    /// control request id -> (tool, input)
    pending: HashMap<String, (String, Value)>,
    /// Assistant messages whose text arrived as deltas.
    streamed: HashSet<String>,
    current_message: Option<String>,
    /// The current message's usage and model (a step is one model call).
    message_usage: Usage,
    message_model: Option<String>,
    message_counted: bool,
    /// The finished steps' usage, and whether any step reported one.
    steps_usage: Usage,
    steps_counted: bool,
}

impl TurnState {
    /// A new turn's state.
    pub fn new(thinking: bool) -> Self {
        Self {
            thinking,
            ..Self::default()
        }
    }

    /// The same turn again in a fresh conversation (it will announce the new session id).
    pub fn restarted(&mut self) {
        self.announced = false;
    }

    /// The answer to a pending approval, or why there is none.
    pub fn decide(
        &mut self,
        session: &mut SessionState,
        request_id: &str,
        decision: Decision,
    ) -> Result<Value, String> {
        let for_session = match &decision.decision {
            DecisionKind::ApproveOnce | DecisionKind::Deny => false,
            DecisionKind::ApproveSession => true,
            other => return Err(format!("this driver does not offer `{other}`")),
        };
        let (tool, input) = self
            .pending
            .remove(request_id)
            .ok_or_else(|| format!("no pending request {request_id}"))?;
        if decision.decision == DecisionKind::Deny {
            let message = decision
                .message
                .unwrap_or_else(|| "The user denied this action.".into());
            return Ok(deny(request_id, &message));
        }
        if for_session {
            session.approved.insert(tool);
        }
        Ok(allow(request_id, &input))
    }
}

/// The line that sends a user message.
pub fn user_line(text: &str) -> Value {
    json!({"type": "user", "session_id": "", "parent_tool_use_id": null,
        "message": {"role": "user", "content": [{"type": "text", "text": text}]}})
}

/// Allows a tool call as asked.
pub fn allow(request_id: &str, input: &Value) -> Value {
    json!({"type": "control_response", "response": {"subtype": "success", "request_id": request_id,
        "response": {"behavior": "allow", "updatedInput": input}}})
}

/// Refuses a tool call, telling the agent why.
pub fn deny(request_id: &str, message: &str) -> Value {
    json!({"type": "control_response", "response": {"subtype": "success",
        "request_id": request_id, "response": {"behavior": "deny", "message": message}}})
}

/// `--resume` named a conversation the harness does not have.
pub fn lost_conversation(v: &Value) -> bool {
    v["type"] == "result"
        && v["is_error"] == true
        && v["errors"].as_array().is_some_and(|e| {
            e.iter().any(|m| {
                m.as_str()
                    .is_some_and(|m| m.contains("No conversation found"))
            })
        })
}

fn emit(out: &mut Vec<Action>, kind: EventKind) {
    out.push(Action::Emit(Event::new(kind)));
}

/// Translates one output line of the CLI during a turn.
pub fn on_line(turn: &mut TurnState, session: &mut SessionState, v: &Value) -> Vec<Action> {
    let mut out = Vec::new();
    match v["type"].as_str() {
        Some("system") => match v["subtype"].as_str() {
            Some("init") if !turn.announced => {
                if let Some(id) = v["session_id"].as_str() {
                    emit(
                        &mut out,
                        EventKind::HarnessSession {
                            harness_session_id: id.to_string(),
                        },
                    );
                }
                turn.announced = true;
            }
            Some("api_retry") | Some("permission_denied") => {
                emit(&mut out, EventKind::System(v.clone()));
            }
            _ => {}
        },
        Some("stream_event") => stream_event(turn, &v["event"], &mut out),
        Some("assistant") => assistant(turn, v, &mut out),
        Some("user") => tool_results(turn, v, &mut out),
        Some("control_request") => control_request(turn, session, v, &mut out),
        Some("result") => result(turn, session, v, &mut out),
        _ => {}
    }
    out
}

fn assistant(turn: &mut TurnState, v: &Value, out: &mut Vec<Action>) {
    let id = v["message"]["id"].as_str().unwrap_or_default().to_string();
    let synthetic = v["message"]["model"] == "<synthetic>";
    for b in v["message"]["content"].as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("tool_use") => {
                let tid = b["id"].as_str().unwrap_or_default().to_string();
                let name = b["name"].as_str().unwrap_or_default().to_string();
                turn.tools
                    .insert(tid.clone(), (name.clone(), b["input"].clone()));
                emit(
                    out,
                    EventKind::ToolUse(ToolUse {
                        tool_use_id: tid,
                        tool_name: name,
                        tool_input: b["input"].clone(),
                        status: ToolStatus::Running,
                        result: None,
                    }),
                );
            }
            // Text that was not streamed as deltas (or a synthetic message) arrives whole.
            Some("text") if !synthetic && !turn.streamed.contains(&id) => emit(
                out,
                EventKind::Text {
                    part: Part::Text {
                        text: b["text"].as_str().unwrap_or_default().to_string(),
                    },
                },
            ),
            _ => {}
        }
    }
}

fn tool_results(turn: &mut TurnState, v: &Value, out: &mut Vec<Action>) {
    for b in v["message"]["content"].as_array().into_iter().flatten() {
        if b["type"] != "tool_result" {
            continue;
        }
        let tid = b["tool_use_id"].as_str().unwrap_or_default().to_string();
        let (name, input) = turn.tools.get(&tid).cloned().unwrap_or_default();
        let result = match &b["content"] {
            Value::Array(parts) => Value::String(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            other => other.clone(),
        };
        emit(
            out,
            EventKind::ToolUse(ToolUse {
                tool_use_id: tid,
                tool_name: name,
                tool_input: input,
                status: if b["is_error"] == true {
                    ToolStatus::Error
                } else {
                    ToolStatus::Completed
                },
                result: Some(result),
            }),
        );
    }
}

fn control_request(turn: &mut TurnState, session: &SessionState, v: &Value, out: &mut Vec<Action>) {
    let rid = v["request_id"].as_str().unwrap_or_default().to_string();
    let r = &v["request"];
    if r["subtype"] != "can_use_tool" {
        // Nothing else is asked of us with this configuration; answer so it never waits.
        out.push(Action::Reply(
            json!({"type": "control_response", "response": {
            "subtype": "error", "request_id": rid, "error": "not supported by Karta"}}),
        ));
        return;
    }
    let tool = r["tool_name"].as_str().unwrap_or_default().to_string();
    let input = r["input"].clone();
    if session.approved.contains(&tool) {
        out.push(Action::Reply(allow(&rid, &input)));
        return;
    }
    let message = r["description"]
        .as_str()
        .map(|d| format!("Allow {tool}: {d}?"))
        .unwrap_or_else(|| format!("Allow {tool}?"));
    turn.pending
        .insert(rid.clone(), (tool.clone(), input.clone()));
    emit(
        out,
        EventKind::InputRequired(InputRequest {
            request_id: rid,
            kind: "tool_use".into(),
            tool: Some(tool),
            message,
            options: vec![
                DecisionKind::ApproveOnce,
                DecisionKind::ApproveSession,
                DecisionKind::Deny,
            ],
            tool_input: Some(input),
        }),
    );
}

fn result(turn: &mut TurnState, session: &mut SessionState, v: &Value, out: &mut Vec<Action>) {
    let u = &v["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let mut usage = Usage::new(
        n("input_tokens"),
        n("output_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    );
    // USD -> micro-cents (1 USD = 1e8), cumulative per process: report this turn's share.
    let total = (v["total_cost_usd"].as_f64().unwrap_or(0.0) * 1e8)
        .round()
        .max(0.0) as u64;
    let cost = total.saturating_sub(session.cost_total);
    session.cost_total = total;
    if turn.step_open {
        let step = finish_step(turn);
        emit(out, step);
        turn.step_open = false;
    }
    // The turn's totals are the sum of its steps (one model call each) when the CLI streamed
    // them; its own summary otherwise.
    if turn.steps_counted {
        usage = turn.steps_usage;
    }
    usage.cost_micro_cents = cost;
    let failed = v["is_error"] == true;
    if failed {
        emit(
            out,
            EventKind::Error(ErrorInfo {
                code: "model_error".into(),
                message: v["result"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the model call failed ({})", v["subtype"])),
                provider: Some("anthropic".into()),
            }),
        );
    }
    out.push(Action::Emit(
        Event::new(EventKind::Done(Done {
            usage,
            status: if failed {
                TurnStatus::Failed
            } else {
                TurnStatus::Completed
            },
            stop_reason: v["stop_reason"].as_str().map(str::to_string),
            message: None,
        }))
        .with_raw(v.clone()),
    ));
    out.push(Action::Ended);
}

fn stream_event(turn: &mut TurnState, e: &Value, out: &mut Vec<Action>) {
    match e["type"].as_str() {
        Some("message_start") => {
            turn.current_message = e["message"]["id"].as_str().map(str::to_string);
            turn.message_usage = Usage::default();
            turn.message_counted = false;
            update_usage(turn, &e["message"]["usage"]);
            turn.message_model = e["message"]["model"].as_str().map(str::to_string);
            if !turn.step_open {
                emit(
                    out,
                    EventKind::StepStart {
                        step_index: turn.step,
                        description: None,
                    },
                );
                turn.step_open = true;
            }
        }
        Some("content_block_delta") => match e["delta"]["type"].as_str() {
            Some("text_delta") => {
                if let Some(id) = &turn.current_message {
                    turn.streamed.insert(id.clone());
                }
                emit(
                    out,
                    EventKind::Text {
                        part: Part::Text {
                            text: e["delta"]["text"].as_str().unwrap_or_default().to_string(),
                        },
                    },
                );
            }
            Some("thinking_delta") if turn.thinking => emit(
                out,
                EventKind::Reasoning {
                    part: Part::Reasoning {
                        text: e["delta"]["thinking"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    },
                },
            ),
            _ => {}
        },
        Some("message_delta") => update_usage(turn, &e["usage"]),
        Some("message_stop") if turn.step_open => {
            let step = finish_step(turn);
            emit(out, step);
            turn.step += 1;
            turn.step_open = false;
        }
        _ => {}
    }
}

/// Takes the counts a message's `usage` carries (`message_start` has them all, `message_delta`
/// the output so far, cumulative).
fn update_usage(turn: &mut TurnState, v: &Value) {
    let u = &mut turn.message_usage;
    let mut seen = false;
    let mut set = |field: &mut u64, key: &str| {
        if let Some(n) = v[key].as_u64() {
            *field = n;
            seen = true;
        }
    };
    set(&mut u.input_tokens, "input_tokens");
    set(&mut u.output_tokens, "output_tokens");
    set(&mut u.cache_read_tokens, "cache_read_input_tokens");
    set(&mut u.cache_write_tokens, "cache_creation_input_tokens");
    u.total_tokens = u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens;
    turn.message_counted |= seen;
}

/// The open step's `step_finish`, with its model call's usage (the CLI reports cost only per
/// turn), counted into the turn's totals.
fn finish_step(turn: &mut TurnState) -> EventKind {
    let usage = std::mem::take(&mut turn.message_usage);
    let counted = std::mem::take(&mut turn.message_counted);
    turn.steps_usage.add(&usage);
    turn.steps_counted |= counted;
    EventKind::StepFinish {
        step_index: turn.step,
        result: None,
        model: turn.message_model.take(),
        provider: Some("anthropic".into()),
        usage: counted.then_some(usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn as the CLI writes it (stream-json with partial messages): one tool call that
    /// asks for approval, its result, then the answer; modelled line by line on the CLI's
    /// output in the harness tests.
    const TOOL_TURN: &str = include_str!("../testdata/tool-turn.jsonl");

    fn play(lines: &str, turn: &mut TurnState, session: &mut SessionState) -> Vec<Action> {
        lines
            .lines()
            .filter(|l| !l.trim().is_empty())
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).expect("a JSON line");
                on_line(turn, session, &v)
            })
            .collect()
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Emit(e) => e.type_name().to_string(),
                Action::Reply(_) => "reply".into(),
                Action::Ended => "ended".into(),
            })
            .collect()
    }

    #[test]
    fn a_tool_turn_translates_to_karta_events() {
        let (mut turn, mut session) = (TurnState::new(false), SessionState::default());
        let actions = play(TOOL_TURN, &mut turn, &mut session);
        assert_eq!(
            names(&actions),
            [
                "harness_session",
                "step_start",
                "text",
                "tool_use",
                "step_finish",
                "input_required",
                "tool_use",
                "step_start",
                "text",
                "text",
                "step_finish",
                "done",
                "ended"
            ]
        );
        let Action::Emit(done) = &actions[actions.len() - 2] else {
            panic!("done expected")
        };
        let EventKind::Done(d) = &done.kind else {
            panic!("done expected")
        };
        // The turn's totals are the sum of its steps, each with its model call's usage.
        assert_eq!(
            (
                d.usage.input_tokens,
                d.usage.output_tokens,
                d.usage.cache_read_tokens,
                d.usage.total_tokens
            ),
            (12, 7, 2, 21)
        );
        assert_eq!(d.usage.cost_micro_cents, 150_000);
        let steps: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(e) => match &e.kind {
                    EventKind::StepFinish {
                        model,
                        provider,
                        usage,
                        ..
                    } => Some((model.clone(), provider.clone(), *usage)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(steps.len(), 2);
        let first = steps[0].2.unwrap();
        assert_eq!(
            (
                first.input_tokens,
                first.output_tokens,
                first.cache_read_tokens
            ),
            (5, 3, 2)
        );
        assert_eq!(steps[1].2.unwrap().output_tokens, 4);
        assert_eq!(steps[0].0.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(steps[0].1.as_deref(), Some("anthropic"));
        assert_eq!(session.cost_total, 150_000);
    }

    #[test]
    fn approvals_answer_once_for_the_session_or_deny() {
        let (mut turn, mut session) = (TurnState::new(false), SessionState::default());
        let ask: Value = serde_json::from_str(
            r#"{"type":"control_request","request_id":"r1","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"ls"}}}"#,
        )
        .unwrap();
        assert_eq!(
            names(&on_line(&mut turn, &mut session, &ask)),
            ["input_required"]
        );
        let decision = |d| Decision::new(d, None);
        let answer = turn
            .decide(&mut session, "r1", decision(DecisionKind::ApproveSession))
            .unwrap();
        assert_eq!(answer["response"]["response"]["behavior"], "allow");
        assert!(turn
            .decide(&mut session, "r1", decision(DecisionKind::Deny))
            .is_err());
        // The same tool again is allowed without asking.
        let again = on_line(&mut turn, &mut session, &ask);
        assert!(
            matches!(&again[..], [Action::Reply(v)] if v["response"]["response"]["behavior"] == "allow")
        );
        // Another tool asks, and a denial carries the reason.
        let other: Value = serde_json::from_str(
            r#"{"type":"control_request","request_id":"r2","request":{"subtype":"can_use_tool","tool_name":"Write","input":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            names(&on_line(&mut turn, &mut session, &other)),
            ["input_required"]
        );
        let no = turn
            .decide(&mut session, "r2", decision(DecisionKind::Deny))
            .unwrap();
        assert_eq!(no["response"]["response"]["behavior"], "deny");
    }

    #[test]
    fn unknown_requests_are_answered_and_unknown_lines_ignored() {
        let (mut turn, mut session) = (TurnState::new(false), SessionState::default());
        let hook: Value = serde_json::from_str(
            r#"{"type":"control_request","request_id":"h","request":{"subtype":"hook_callback"}}"#,
        )
        .unwrap();
        assert!(
            matches!(&on_line(&mut turn, &mut session, &hook)[..], [Action::Reply(v)] if v["response"]["subtype"] == "error")
        );
        let novel: Value = serde_json::from_str(r#"{"type":"something_new","x":1}"#).unwrap();
        assert!(on_line(&mut turn, &mut session, &novel).is_empty());
        let lost: Value = serde_json::from_str(
            r#"{"type":"result","is_error":true,"errors":["No conversation found with session ID: x"]}"#,
        )
        .unwrap();
        assert!(lost_conversation(&lost));
    }
}

//! OpenCode's `/event` stream, translated. Pure functions: an event and the turn's state in,
//! the Karta events to emit out (and whether the turn ended). The server file does the I/O.

use std::collections::{HashMap, HashSet};

use karta_driver_api::{
    DecisionKind, Done, ErrorInfo, Event, EventKind, InputRequest, Part, ToolStatus, ToolUse,
    TurnStatus, Usage,
};
use serde_json::Value;

/// What the translation remembers within one turn.
#[derive(Debug, Default)]
pub struct TurnState {
    /// Whether reasoning is surfaced.
    pub thinking: bool,
    /// OpenCode's session the turn runs in (events of other sessions are ignored).
    pub oc_session: String,
    /// part id -> (type, text already emitted)
    parts: HashMap<String, (String, usize)>,
    /// message id -> role
    roles: HashMap<String, String>,
    /// assistant message id -> (model, provider)
    models: HashMap<String, (Option<String>, Option<String>)>,
    /// call id -> last status emitted
    tools: HashMap<String, String>,
    /// Permission requests waiting for a decision.
    pub pending: HashSet<String>,
    step: u32,
    /// Tokens and cost of the steps so far.
    pub usage: Usage,
    failed: bool,
    finish: Option<String>,
}

/// What one event produced.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// Events for the host, in order.
    pub events: Vec<Event>,
    /// The turn is over (its `done` is the last event).
    pub ended: bool,
}

impl TurnState {
    /// A new turn in OpenCode session `oc_session`.
    pub fn new(oc_session: String, thinking: bool) -> Self {
        Self {
            oc_session,
            thinking,
            ..Self::default()
        }
    }
}

/// A `step-finish` part's tokens and cost in Karta's convention. OpenCode already counts
/// `input` without cached tokens; its `output` leaves out `reasoning`, which Karta counts inside
/// the output (as providers bill it) and also apart.
pub fn step_usage(part: &Value) -> Usage {
    let t = &part["tokens"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let reasoning = n(&t["reasoning"]);
    let mut u = Usage::new(
        n(&t["input"]),
        n(&t["output"]) + reasoning,
        n(&t["cache"]["read"]),
        n(&t["cache"]["write"]),
    );
    u.reasoning_tokens = reasoning;
    // USD -> micro-cents (1 USD = 1e8).
    u.cost_micro_cents = (part["cost"].as_f64().unwrap_or(0.0) * 1e8)
        .round()
        .max(0.0) as u64;
    u
}

/// Translates one `/event` message; `cancelled` says whether the host cancelled the turn.
pub fn on_event(turn: &mut TurnState, ev: &Value, cancelled: bool) -> Output {
    let mut out = Output::default();
    let p = &ev["properties"];
    let session = p["sessionID"]
        .as_str()
        .or_else(|| p["part"]["sessionID"].as_str())
        .or_else(|| p["info"]["sessionID"].as_str());
    if session != Some(turn.oc_session.as_str()) {
        return out;
    }
    let events = &mut out.events;
    match ev["type"].as_str().unwrap_or_default() {
        "message.updated" => {
            if let (Some(id), Some(role)) = (p["info"]["id"].as_str(), p["info"]["role"].as_str()) {
                turn.roles.insert(id.to_string(), role.to_string());
                if let Some(model) = p["info"]["modelID"].as_str() {
                    // OpenCode's provider id is the name in its config; only the two Karta's
                    // gateway speaks are meaningful to the host.
                    let provider = p["info"]["providerID"]
                        .as_str()
                        .filter(|p| matches!(*p, "anthropic" | "openai"))
                        .map(str::to_string);
                    turn.models
                        .insert(id.to_string(), (Some(model.to_string()), provider));
                }
            }
        }
        "message.part.updated" => part_updated(turn, &p["part"], events),
        "message.part.delta" => {
            let Some(pid) = p["partID"].as_str() else {
                return out;
            };
            let delta = p["delta"].as_str().unwrap_or_default();
            if p["field"] != "text" || delta.is_empty() {
                return out;
            }
            let assistant = p["messageID"]
                .as_str()
                .and_then(|m| turn.roles.get(m))
                .is_some_and(|r| r == "assistant");
            let thinking = turn.thinking;
            let Some((kind, emitted)) = turn.parts.get_mut(pid) else {
                return out;
            };
            if !assistant {
                return out;
            }
            *emitted += delta.len();
            text_event(kind, delta, thinking, events);
        }
        "permission.asked" | "permission.updated" => {
            let Some(id) = p["id"].as_str() else {
                return out;
            };
            let tool = p["permission"]
                .as_str()
                .or_else(|| p["type"].as_str())
                .unwrap_or("tool")
                .to_string();
            let patterns: Vec<&str> = p["patterns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            turn.pending.insert(id.to_string());
            events.push(
                Event::new(EventKind::InputRequired(InputRequest {
                    request_id: id.to_string(),
                    kind: "tool_use".into(),
                    message: if patterns.is_empty() {
                        format!("Allow {tool}?")
                    } else {
                        format!("Allow {tool}: {}?", patterns.join(", "))
                    },
                    tool: Some(tool),
                    options: vec![
                        DecisionKind::ApproveOnce,
                        DecisionKind::ApproveSession,
                        DecisionKind::Deny,
                    ],
                    tool_input: Some(p["metadata"].clone()),
                }))
                .with_raw(ev.clone()),
            );
        }
        "session.error" => {
            let e = &p["error"];
            let name = e["name"].as_str().unwrap_or("UnknownError");
            if name == "MessageAbortedError" && cancelled {
                return out;
            }
            turn.failed = true;
            // No raw event here: OpenCode's error carries the provider's response headers and
            // the model endpoint, which are not the client's business.
            events.push(Event::new(EventKind::Error(ErrorInfo {
                code: if name == "APIError" {
                    "model_error".into()
                } else {
                    name.to_string()
                },
                message: e["data"]["message"].as_str().unwrap_or(name).to_string(),
                provider: (name == "APIError").then(|| "openai".to_string()),
            })));
        }
        "session.idle" => {
            let usage = turn.usage;
            let status = if cancelled {
                TurnStatus::Cancelled
            } else if turn.failed {
                TurnStatus::Failed
            } else {
                TurnStatus::Completed
            };
            events.push(Event::new(EventKind::Done(Done {
                usage,
                status,
                stop_reason: turn.finish.clone(),
                message: None,
            })));
            out.ended = true;
        }
        _ => {}
    }
    out
}

fn text_event(kind: &str, text: &str, thinking: bool, events: &mut Vec<Event>) {
    match kind {
        "text" => events.push(Event::new(EventKind::Text {
            part: Part::Text {
                text: text.to_string(),
            },
        })),
        "reasoning" if thinking => events.push(Event::new(EventKind::Reasoning {
            part: Part::Reasoning {
                text: text.to_string(),
            },
        })),
        _ => {}
    }
}

fn part_updated(turn: &mut TurnState, part: &Value, events: &mut Vec<Event>) {
    let Some(id) = part["id"].as_str() else {
        return;
    };
    let kind = part["type"].as_str().unwrap_or_default();
    let assistant = part["messageID"]
        .as_str()
        .and_then(|m| turn.roles.get(m))
        .is_some_and(|r| r == "assistant");
    match kind {
        "text" | "reasoning" => {
            let text = part["text"].as_str().unwrap_or_default();
            let entry = turn
                .parts
                .entry(id.to_string())
                .or_insert((kind.to_string(), 0));
            // Text that did not come as deltas (or came only in part) is sent from the update.
            if assistant && text.len() > entry.1 && text.is_char_boundary(entry.1) {
                let rest = text[entry.1..].to_string();
                entry.1 = text.len();
                text_event(kind, &rest, turn.thinking, events);
            }
        }
        "tool" => {
            let call = part["callID"].as_str().unwrap_or(id).to_string();
            let state = &part["state"];
            let status = state["status"].as_str().unwrap_or_default();
            if turn.tools.get(&call).is_some_and(|s| s == status) {
                return;
            }
            turn.tools.insert(call.clone(), status.to_string());
            let (st, result) = match status {
                "pending" => (ToolStatus::Pending, None),
                "running" => (ToolStatus::Running, None),
                "completed" => (ToolStatus::Completed, Some(state["output"].clone())),
                "error" => (ToolStatus::Error, Some(state["error"].clone())),
                _ => return,
            };
            events.push(Event::new(EventKind::ToolUse(ToolUse {
                tool_use_id: call,
                tool_name: part["tool"].as_str().unwrap_or_default().to_string(),
                tool_input: state["input"].clone(),
                status: st,
                result,
            })));
        }
        "step-start" => events.push(Event::new(EventKind::StepStart {
            step_index: turn.step,
            description: None,
        })),
        "step-finish" => {
            let usage = step_usage(part);
            turn.usage.add(&usage);
            turn.finish = part["reason"].as_str().map(str::to_string);
            let (model, provider) = part["messageID"]
                .as_str()
                .and_then(|m| turn.models.get(m))
                .cloned()
                .unwrap_or_default();
            events.push(Event::new(EventKind::StepFinish {
                step_index: turn.step,
                result: turn.finish.clone(),
                model,
                provider,
                usage: Some(usage),
            }));
            turn.step += 1;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn as `opencode serve` streams it on `/event`: the user message, a step with a tool
    /// call that asks for permission, the tool's progress, the answer as deltas, idle; plus an
    /// event of another session that must be ignored.
    const TOOL_TURN: &str = include_str!("../testdata/tool-turn.jsonl");

    fn play(turn: &mut TurnState, lines: &str) -> (Vec<String>, bool) {
        let mut names = Vec::new();
        let mut ended = false;
        for l in lines.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            let out = on_event(turn, &v, false);
            names.extend(out.events.iter().map(|e| e.type_name().to_string()));
            ended |= out.ended;
        }
        (names, ended)
    }

    #[test]
    fn a_tool_turn_translates_to_karta_events() {
        let mut turn = TurnState::new("ses_1".into(), false);
        let (names, ended) = play(&mut turn, TOOL_TURN);
        assert_eq!(
            names,
            [
                "step_start",
                "tool_use",
                "input_required",
                "tool_use",
                "tool_use",
                "step_finish",
                "step_start",
                "text",
                "text",
                "step_finish",
                "done"
            ]
        );
        assert!(ended);
        assert!(turn.pending.contains("per_1"));
        assert_eq!((turn.usage.input_tokens, turn.usage.output_tokens), (30, 9));
    }

    #[test]
    fn errors_carry_no_provider_details_and_an_abort_after_cancel_is_quiet() {
        let mut turn = TurnState::new("ses_1".into(), false);
        let err: Value = serde_json::from_str(
            r#"{"type":"session.error","properties":{"sessionID":"ses_1","error":{"name":"APIError","data":{"message":"Bad request","responseHeaders":{"x-secret":"1"},"url":"http://127.0.0.1:9/v1"}}}}"#,
        )
        .unwrap();
        let out = on_event(&mut turn, &err, false);
        assert_eq!(out.events.len(), 1);
        assert!(out.events[0].raw.is_none());
        let json = serde_json::to_string(&out.events[0]).unwrap();
        assert!(
            !json.contains("x-secret") && !json.contains("127.0.0.1"),
            "{json}"
        );
        let aborted: Value = serde_json::from_str(
            r#"{"type":"session.error","properties":{"sessionID":"ses_1","error":{"name":"MessageAbortedError"}}}"#,
        )
        .unwrap();
        assert!(on_event(&mut turn, &aborted, true).events.is_empty());
        let idle: Value =
            serde_json::from_str(r#"{"type":"session.idle","properties":{"sessionID":"ses_1"}}"#)
                .unwrap();
        let done = on_event(&mut turn, &idle, true);
        assert!(done.ended);
        assert!(
            matches!(&done.events[0].kind, EventKind::Done(d) if d.status == TurnStatus::Cancelled)
        );
    }

    #[test]
    fn a_steps_reasoning_is_inside_its_output_and_counted_apart() {
        let part: Value = serde_json::from_str(
            r#"{"type":"step-finish","cost":0.0001,"tokens":{"input":10,"output":4,"reasoning":3,"cache":{"read":2,"write":1}}}"#,
        )
        .unwrap();
        let u = step_usage(&part);
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.total_tokens
            ),
            (10, 7, 3, 2, 1, 20)
        );
        assert_eq!(u.cost_micro_cents, 10_000);
    }
}

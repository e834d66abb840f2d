//! What an echo turn does, as a list of steps: a pure function of the request, so it is tested
//! without threads, and the worker only plays it.

use karta_driver_api::{
    DecisionKind, ErrorInfo, EventKind, InputRequest, ToolStatus, ToolUse, TurnRequest,
};
use serde_json::json;

/// Events after an approval that a denial skips (`running`, its pause, `completed`).
pub const SKIPPED_ON_DENY: usize = 3;

/// One step of a turn.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Emit an event.
    Emit(EventKind),
    /// Emit an event as raw JSON (a kind newer than the host's API: `[future]`).
    Raw(String),
    /// Emit a text chunk (one output token).
    Text(String),
    /// Wait the driver's delay.
    Pause,
    /// Emit `input_required` and wait for the decision; a denial emits `denied` instead of the
    /// next [`SKIPPED_ON_DENY`] steps.
    Ask {
        /// The request.
        request: InputRequest,
        /// The tool's event for a denial, without its result.
        denied: ToolUse,
    },
    /// Emit an error and end the turn as failed.
    Fail(ErrorInfo),
    /// Stop answering: ignore everything, cancel included (a hung harness).
    Hang,
    /// Panic on the driver's thread (a crashing harness).
    Panic,
}

/// N of a `[flood:N]` marker, capped at 100,000.
fn flood_count(text: &str) -> u64 {
    let Some(rest) = text.split("[flood:").nth(1) else {
        return 0;
    };
    rest.split(']')
        .next()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(100_000)
}

/// The steps of a turn answering `req` with a reply that starts with `prefix`.
pub fn steps(req: &TurnRequest, prefix: &str) -> Vec<Step> {
    let mut out = Vec::new();
    if req.harness_session_id.is_none() {
        out.push(Step::Emit(EventKind::HarnessSession {
            harness_session_id: format!("echo-{}", req.session_id),
        }));
    }
    out.push(Step::Emit(EventKind::StepStart {
        step_index: 0,
        description: Some("echo the message".into()),
    }));
    let reply = format!("{prefix}{}", req.text);
    for (i, w) in reply.split_inclusive(' ').enumerate() {
        out.push(Step::Pause);
        out.push(Step::Text(w.to_string()));
        if i == 0 && req.text.contains("[fail]") {
            out.push(Step::Fail(ErrorInfo {
                code: "echo_failure".into(),
                message: "the echo harness failed on purpose ([fail])".into(),
                provider: None,
            }));
            return out;
        }
    }
    if req.text.contains("[future]") {
        out.push(Step::Raw(
            r#"{"v":1,"type":"plan","data":{"steps":["look","answer"]}}"#.into(),
        ));
    }
    if req.text.contains("[hang]") {
        out.push(Step::Hang);
    }
    if req.text.contains("[panic]") {
        out.push(Step::Panic);
    }
    for n in 0..flood_count(&req.text) {
        out.push(Step::Pause);
        out.push(Step::Text(format!(" {n}")));
    }
    let approvals = req.text.matches("[approve]").count();
    for n in 0..approvals.max(1) {
        let tool = ToolUse {
            tool_use_id: format!("toolu_echo_{}_{n}", req.session_id),
            tool_name: "echo".into(),
            tool_input: json!({ "text": req.text }),
            status: ToolStatus::Pending,
            result: None,
        };
        let with = |status| {
            let mut t = tool.clone();
            t.status = status;
            t
        };
        if approvals > 0 {
            out.push(Step::Emit(EventKind::ToolUse(with(ToolStatus::Pending))));
            out.push(Step::Ask {
                request: InputRequest {
                    request_id: format!("req_echo_{}_{n}", req.session_id),
                    kind: "tool_use".into(),
                    tool: Some("echo".into()),
                    message: "Allow the echo tool to run?".into(),
                    options: vec![
                        DecisionKind::ApproveOnce,
                        DecisionKind::ApproveSession,
                        DecisionKind::Deny,
                    ],
                    tool_input: Some(tool.tool_input.clone()),
                },
                denied: with(ToolStatus::Error),
            });
        }
        out.push(Step::Emit(EventKind::ToolUse(with(ToolStatus::Running))));
        out.push(Step::Pause);
        let mut done = with(ToolStatus::Completed);
        done.result = Some(json!(req.text.chars().count()));
        out.push(Step::Emit(EventKind::ToolUse(done)));
    }
    out.push(Step::Emit(EventKind::StepFinish {
        step_index: 0,
        result: Some("echoed".into()),
        model: None,
        provider: None,
        usage: None,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> TurnRequest {
        serde_json::from_value(json!({
            "v": 1, "session_id": "sess_1", "app_dir": "/app", "workspace_dir": "/ws",
            "text": text, "agent": "default",
            "participant": {"name": "user", "type": "human"},
        }))
        .unwrap()
    }

    fn steps_of(req: &TurnRequest) -> Vec<Step> {
        steps(req, "echo: ")
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::Emit(EventKind::ToolUse(t)) => match t.status {
                    ToolStatus::Pending => "tool:pending",
                    ToolStatus::Running => "tool:running",
                    ToolStatus::Completed => "tool:completed",
                    ToolStatus::Error => "tool:error",
                    _ => "tool:other",
                },
                Step::Emit(EventKind::HarnessSession { .. }) => "session",
                Step::Emit(EventKind::StepStart { .. }) => "step_start",
                Step::Emit(EventKind::StepFinish { .. }) => "step_finish",
                Step::Emit(_) => "other",
                Step::Raw(_) => "raw",
                Step::Text(_) => "text",
                Step::Pause => "pause",
                Step::Ask { .. } => "ask",
                Step::Fail(_) => "fail",
                Step::Hang => "hang",
                Step::Panic => "panic",
            })
            .filter(|k| *k != "pause")
            .collect()
    }

    #[test]
    fn a_plain_turn_echoes_then_runs_the_tool() {
        assert_eq!(
            kinds(&steps_of(&request("hi there"))),
            [
                "session",
                "step_start",
                "text",
                "text",
                "text",
                "tool:running",
                "tool:completed",
                "step_finish"
            ]
        );
    }

    #[test]
    fn markers_ask_fail_and_flood() {
        let ask = steps_of(&request("a [approve]"));
        let at = ask
            .iter()
            .position(|s| matches!(s, Step::Ask { .. }))
            .unwrap();
        // A denial skips exactly running, its pause and completed.
        assert!(
            matches!(&ask[at + 1], Step::Emit(EventKind::ToolUse(t)) if t.status == ToolStatus::Running)
        );
        assert!(
            matches!(&ask[at + SKIPPED_ON_DENY], Step::Emit(EventKind::ToolUse(t)) if t.status == ToolStatus::Completed)
        );
        assert_eq!(
            kinds(&steps_of(&request("x [fail]"))),
            ["session", "step_start", "text", "fail"]
        );
        let flood = steps_of(&request("go [flood:5]"));
        assert_eq!(
            kinds(&flood).iter().filter(|k| **k == "text").count(),
            3 + 5
        );
        assert_eq!(flood_count("[flood:999999]"), 100_000);
        assert_eq!(flood_count("no marker"), 0);
    }
}

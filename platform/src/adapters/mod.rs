//! SDK-compatible adapters: one Karta turn re-framed as OpenAI Chat Completions and OpenAI
//! Responses (spec 03). Everything here is pure translation over typed values: the request's
//! messages become the turn's text ([`input`]), and the turn's events become the adapter's
//! frames ([`chat`], [`responses`]). HTTP, sessions and turns are the caller's business
//! (`http::adapters`), so these are tested against recorded event sequences alone.

pub mod chat;
pub mod input;
pub mod managed;
pub mod responses;

use karta_driver_api::Usage;
use serde_json::Value;

/// What an adapter needs of one event of a turn.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnEvent<'a> {
    /// An assistant text chunk.
    Text(&'a str),
    /// An agent or harness error (the turn then ends with a failed `done`).
    Error {
        /// Karta's code (`byok_key_rejected`, `harness_crashed`, ...).
        code: &'a str,
        /// What went wrong.
        message: &'a str,
        /// The model provider involved, if any.
        provider: Option<&'a str>,
    },
    /// A reasoning chunk.
    Reasoning(&'a str),
    /// A tool call the harness makes (server-side), or its result (same id).
    ToolUse {
        /// Pairs the call with its result.
        id: &'a str,
        /// The tool.
        name: &'a str,
        /// Its input.
        input: &'a Value,
        /// `pending`, `running`, `completed` or `error`.
        status: &'a str,
        /// Its output, once it has one.
        result: Option<&'a Value>,
    },
    /// The turn waits for an approval.
    InputRequired {
        /// The request to answer.
        request_id: &'a str,
        /// The tool that wants to run.
        tool: Option<&'a str>,
        /// Its input.
        tool_input: Option<&'a Value>,
        /// The prompt.
        message: &'a str,
        /// The decisions on offer.
        options: &'a Value,
    },
    /// The turn is over.
    Done {
        /// Its tokens.
        usage: Usage,
        /// Whether it ended otherwise than completed (failed or cancelled).
        failed: bool,
        /// Whether it was cancelled (an interrupt).
        cancelled: bool,
    },
    /// Anything no adapter shows (tools run server-side, steps, reasoning, system).
    Other,
}

impl<'a> TurnEvent<'a> {
    /// Reads an event from its public type and `data` (the envelope's fields).
    pub fn from_parts(event_type: &str, data: &'a Value) -> Self {
        match event_type {
            "text" => match data["part"]["text"].as_str() {
                Some(t) => TurnEvent::Text(t),
                None => TurnEvent::Other,
            },
            "error" => TurnEvent::Error {
                code: data["code"].as_str().unwrap_or("unknown_error"),
                message: data["message"].as_str().unwrap_or("the turn failed"),
                provider: data["provider"].as_str(),
            },
            "done" => TurnEvent::Done {
                usage: serde_json::from_value(data["usage"].clone()).unwrap_or_default(),
                failed: data["status"].as_str().is_some_and(|s| s != "completed"),
                cancelled: data["status"] == "cancelled",
            },
            "reasoning" => match data["part"]["text"].as_str() {
                Some(t) => TurnEvent::Reasoning(t),
                None => TurnEvent::Other,
            },
            "tool_use" => TurnEvent::ToolUse {
                id: data["tool_use_id"].as_str().unwrap_or(""),
                name: data["tool_name"].as_str().unwrap_or(""),
                input: &data["tool_input"],
                status: data["status"].as_str().unwrap_or("running"),
                result: data.get("result").filter(|r| !r.is_null()),
            },
            "input_required" => match data["request_id"].as_str() {
                Some(request_id) => TurnEvent::InputRequired {
                    request_id,
                    tool: data["tool"].as_str(),
                    tool_input: data.get("tool_input").filter(|v| !v.is_null()),
                    message: data["message"].as_str().unwrap_or(""),
                    options: &data["options"],
                },
                None => TurnEvent::Other,
            },
            _ => TurnEvent::Other,
        }
    }
}

/// Prompt-side tokens as the OpenAI formats count them: every input token, cached or not.
pub fn prompt_tokens(u: &Usage) -> u64 {
    u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
}

/// The model name a reply echoes: the requested one, or `default`.
pub fn echoed_model(requested: Option<&str>) -> String {
    match requested {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => "default".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_read_from_their_public_shape() {
        let text = json!({"part": {"type": "text", "text": "hi"}});
        assert_eq!(TurnEvent::from_parts("text", &text), TurnEvent::Text("hi"));
        let done = json!({"status": "failed", "usage": {"input_tokens": 3, "output_tokens": 2,
            "cache_read_tokens": 1, "total_tokens": 6}});
        let TurnEvent::Done { usage, failed, .. } = TurnEvent::from_parts("done", &done) else {
            panic!("not done");
        };
        assert!(failed);
        assert_eq!((prompt_tokens(&usage), usage.output_tokens), (4, 2));
        let err =
            json!({"code": "byok_key_rejected", "message": "bad key", "provider": "anthropic"});
        assert_eq!(
            TurnEvent::from_parts("error", &err),
            TurnEvent::Error {
                code: "byok_key_rejected",
                message: "bad key",
                provider: Some("anthropic")
            }
        );
        assert_eq!(
            TurnEvent::from_parts("step_start", &json!({})),
            TurnEvent::Other
        );
        assert_eq!(echoed_model(Some("")), "default");
        assert_eq!(echoed_model(Some("opus")), "opus");
    }
}

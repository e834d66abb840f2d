//! SDK-compatible adapters: one Karta turn re-framed as OpenAI Chat Completions and OpenAI
//! Responses (spec 03). Everything here is pure translation over typed values: the request's
//! messages become the turn's text ([`input`]), and the turn's events become the adapter's
//! frames ([`chat`], [`responses`]). HTTP, sessions and turns are the caller's business
//! (`http::adapters`), so these are tested against recorded event sequences alone.

pub mod chat;
pub mod input;
pub mod responses;

use karta_plugin_api::Usage;
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
    /// The turn is over.
    Done {
        /// Its tokens.
        usage: Usage,
        /// Whether it ended otherwise than completed (failed or cancelled).
        failed: bool,
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
        let TurnEvent::Done { usage, failed } = TurnEvent::from_parts("done", &done) else {
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
            TurnEvent::from_parts("tool_use", &json!({})),
            TurnEvent::Other
        );
        assert_eq!(echoed_model(Some("")), "default");
        assert_eq!(echoed_model(Some("opus")), "opus");
    }
}

//! A Karta turn as an OpenAI Chat Completions answer (spec 03 §3.4–3.7): one
//! `chat.completion`, or `chat.completion.chunk` frames with no `event:` line ending in
//! `[DONE]`. Text is the only content; tools, steps and reasoning stay server-side.

use karta_driver_api::Usage;
use serde_json::{json, Value};

use super::{prompt_tokens, TurnEvent};

/// The `data:` that ends a stream.
pub const DONE: &str = "[DONE]";

/// How the turn failed, for the HTTP status of a unary answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Karta's code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The model provider, when one was involved.
    pub provider: Option<String>,
}

/// The translation of one turn: feed it the turn's events; it yields the stream's frames and,
/// at the end, the unary completion.
#[derive(Debug)]
pub struct ChatTurn {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    text: String,
    usage: Option<Usage>,
    failure: Option<Failure>,
}

/// Usage in the upstream names, plus Karta's as extra keys.
fn usage_json(u: &Usage) -> Value {
    let prompt = prompt_tokens(u);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "input_tokens": prompt,
        "output_tokens": u.output_tokens,
    })
}

impl ChatTurn {
    /// A turn answered as completion `id` (`chatcmpl_...`) at `created` (unix seconds).
    pub fn new(id: String, created: i64, model: String, include_usage: bool) -> Self {
        ChatTurn {
            id,
            created,
            model,
            include_usage,
            text: String::new(),
            usage: None,
            failure: None,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    }

    /// The first frame: the assistant's role.
    pub fn start(&self) -> String {
        self.chunk(json!({"role": "assistant", "content": ""}), None)
    }

    /// The frames (`data:` values) an event makes.
    pub fn on(&mut self, ev: &TurnEvent<'_>) -> Vec<String> {
        match ev {
            TurnEvent::Text(t) => {
                self.text.push_str(t);
                vec![self.chunk(json!({ "content": t }), None)]
            }
            TurnEvent::Error {
                code,
                message,
                provider,
            } => {
                if self.failure.is_some() {
                    return Vec::new();
                }
                self.failure = Some(Failure {
                    code: code.to_string(),
                    message: message.to_string(),
                    provider: provider.map(str::to_string),
                });
                // Every official SDK raises on a frame with a top-level `error`.
                vec![json!({"error": {
                    "message": message, "type": code, "code": code, "param": null,
                    "provider": provider,
                }})
                .to_string()]
            }
            TurnEvent::Done { usage, failed, .. } => {
                self.usage = Some(*usage);
                let mut out = Vec::new();
                if self.failure.is_none() && *failed {
                    out.extend(self.on(&TurnEvent::Error {
                        code: "turn_failed",
                        message: "the turn ended without an answer",
                        provider: None,
                    }));
                }
                if self.failure.is_none() {
                    out.push(self.chunk(json!({}), Some("stop")));
                    if self.include_usage {
                        out.push(
                            json!({
                                "id": self.id,
                                "object": "chat.completion.chunk",
                                "created": self.created,
                                "model": self.model,
                                "choices": [],
                                "usage": usage_json(usage),
                            })
                            .to_string(),
                        );
                    }
                }
                out.push(DONE.to_string());
                out
            }
            _ => Vec::new(),
        }
    }

    /// How the turn failed, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The unary `chat.completion` (after `done`).
    pub fn completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage_json(&self.usage.unwrap_or_default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded echo turn: steps, a tool call, two text chunks, then `done`.
    fn turn() -> Vec<(&'static str, Value)> {
        vec![
            ("step_start", json!({"step_index": 0})),
            (
                "tool_use",
                json!({"tool_name": "Read", "tool_use_id": "t1", "tool_input": {}}),
            ),
            ("text", json!({"part": {"type": "text", "text": "Hello "}})),
            ("text", json!({"part": {"type": "text", "text": "there."}})),
            ("step_finish", json!({"step_index": 0})),
            (
                "done",
                json!({"status": "completed", "usage": {"input_tokens": 30, "cache_read_tokens": 7,
                "output_tokens": 11, "total_tokens": 48}}),
            ),
        ]
    }

    fn run(t: &mut ChatTurn, events: &[(&str, Value)]) -> Vec<String> {
        let mut out = vec![t.start()];
        for (k, d) in events {
            out.extend(t.on(&TurnEvent::from_parts(k, d)));
        }
        out
    }

    #[test]
    fn a_streamed_turn_is_role_text_finish_usage_then_done() {
        let mut t = ChatTurn::new("chatcmpl_1".into(), 1_700_000_000, "default".into(), true);
        let frames = run(&mut t, &turn());
        assert_eq!(frames.len(), 6, "{frames:#?}");
        assert_eq!(frames.last().unwrap(), DONE);
        let chunks: Vec<Value> = frames[..5]
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["id"] == "chatcmpl_1"
            && c["object"] == "chat.completion.chunk"
            && c["created"] == 1_700_000_000));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello ");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert!(chunks[..4].iter().all(|c| c["usage"].is_null()));
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(chunks[4]["usage"]["prompt_tokens"], 37);
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 11);
        assert_eq!(chunks[4]["usage"]["total_tokens"], 48);
        let c = t.completion();
        assert_eq!(c["choices"][0]["message"]["content"], "Hello there.");
        assert_eq!(c["object"], "chat.completion");
        assert!(t.failure().is_none());
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk_or_key() {
        let mut t = ChatTurn::new("c".into(), 1, "m".into(), false);
        let frames = run(&mut t, &turn());
        assert_eq!(frames.len(), 5);
        assert!(frames[..4].iter().all(|f| !f.contains("usage")));
    }

    #[test]
    fn an_error_mid_turn_is_one_error_frame_then_done() {
        let mut t = ChatTurn::new("c".into(), 1, "m".into(), false);
        let frames = run(
            &mut t,
            &[
                ("text", json!({"part": {"type": "text", "text": "partial"}})),
                (
                    "error",
                    json!({"code": "byok_key_rejected", "message": "invalid api key", "provider": "anthropic"}),
                ),
                ("done", json!({"status": "failed", "usage": {}})),
            ],
        );
        assert_eq!(frames.len(), 4);
        let e: Value = serde_json::from_str(&frames[2]).unwrap();
        assert_eq!(e["error"]["message"], "invalid api key");
        assert_eq!(e["error"]["code"], "byok_key_rejected");
        assert_eq!(frames[3], DONE);
        assert_eq!(t.failure().unwrap().code, "byok_key_rejected");
        // A turn that fails with no error event still says so.
        let mut t = ChatTurn::new("c".into(), 1, "m".into(), false);
        let frames = run(&mut t, &[("done", json!({"status": "cancelled"}))]);
        assert!(frames[1].contains("\"error\""));
        assert!(t.failure().is_some());
    }
}

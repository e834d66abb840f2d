//! A Karta turn as an OpenAI Responses answer (spec 03 §4.4–4.7): the response object, or the
//! `response.*` event sequence from `response.created` to `response.completed` (or
//! `response.failed`) with contiguous `sequence_number`s from 0. The unary answer is the
//! streamed one's final `response`, so the two can never differ.

use karta_driver_api::Usage;
use serde_json::{json, Value};

use super::{prompt_tokens, TurnEvent};

/// What the response echoes of its request.
#[derive(Clone, Debug, Default)]
pub struct ResponseMeta {
    /// `resp_...`
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The echoed model name.
    pub model: String,
    /// The request's `instructions`.
    pub instructions: Option<String>,
    /// The response this one continues.
    pub previous_response_id: Option<String>,
    /// Whether it may be continued and fetched later.
    pub store: bool,
    /// The request's `metadata`.
    pub metadata: Value,
}

/// The translation of one turn. Output items open when their first content arrives: a
/// `reasoning` item (only when the caller asked for reasoning, and only before the answer's
/// text starts), then the `message` item with one `output_text` part.
#[derive(Debug)]
pub struct ResponseTurn {
    meta: ResponseMeta,
    seq: u64,
    text: String,
    /// The reasoning item's text and whether it is closed, once it opened.
    reasoning: Option<(String, bool)>,
    /// Whether the message item has opened.
    message_open: bool,
    usage: Option<Usage>,
    error: Option<(String, String)>,
    status: &'static str,
}

/// One SSE frame: its `event:` name and its `data`.
pub type Frame = (&'static str, Value);

impl ResponseTurn {
    /// A turn answered as response `meta.id`.
    pub fn new(meta: ResponseMeta) -> Self {
        ResponseTurn {
            meta,
            seq: 0,
            text: String::new(),
            reasoning: None,
            message_open: false,
            usage: None,
            error: None,
            status: "in_progress",
        }
    }

    fn item_id(&self) -> String {
        format!("msg_{}_0", self.meta.id.trim_start_matches("resp_"))
    }

    fn reasoning_id(&self) -> String {
        format!("rs_{}_0", self.meta.id.trim_start_matches("resp_"))
    }

    /// The message item's place in `output`.
    fn message_index(&self) -> usize {
        usize::from(self.reasoning.is_some())
    }

    fn part(&self) -> Value {
        json!({"type": "output_text", "text": self.text, "annotations": []})
    }

    fn item(&self, status: &str, content: Vec<Value>) -> Value {
        json!({
            "id": self.item_id(),
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        })
    }

    fn reasoning_item(&self, text: &str) -> Value {
        let summary = if text.is_empty() {
            json!([])
        } else {
            json!([{"type": "summary_text", "text": text}])
        };
        json!({"id": self.reasoning_id(), "type": "reasoning", "summary": summary})
    }

    fn usage_json(&self) -> Value {
        match &self.usage {
            None => Value::Null,
            Some(u) => {
                let input = prompt_tokens(u);
                json!({
                    "input_tokens": input,
                    "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
                    "output_tokens": u.output_tokens,
                    "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                    "total_tokens": input + u.output_tokens,
                })
            }
        }
    }

    /// The response object as it stands.
    pub fn response(&self) -> Value {
        let mut output: Vec<Value> = Vec::new();
        if self.status != "in_progress" {
            if let Some((text, _)) = &self.reasoning {
                output.push(self.reasoning_item(text));
            }
            match self.status {
                "completed" => output.push(self.item("completed", vec![self.part()])),
                _ if self.text.is_empty() => {}
                _ => output.push(self.item("incomplete", vec![self.part()])),
            }
        }
        let error = match &self.error {
            Some((code, message)) => {
                json!({"code": "server_error", "message": message, "karta_code": code})
            }
            None => Value::Null,
        };
        json!({
            "id": self.meta.id,
            "object": "response",
            "type": "response",
            "created_at": self.meta.created_at,
            "status": self.status,
            "error": error,
            "incomplete_details": null,
            "instructions": self.meta.instructions,
            "model": self.meta.model,
            "output": output,
            "parallel_tool_calls": false,
            "tool_choice": "auto",
            "tools": [],
            "temperature": null,
            "top_p": null,
            "store": self.meta.store,
            "metadata": self.meta.metadata,
            "previous_response_id": self.meta.previous_response_id,
            "usage": self.usage_json(),
        })
    }

    fn frame(&mut self, kind: &'static str, mut data: Value) -> Frame {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        (kind, data)
    }

    /// The opening frames: the response, created and in progress.
    pub fn start(&mut self) -> Vec<Frame> {
        let r = self.response();
        vec![
            self.frame("response.created", json!({"response": r})),
            self.frame("response.in_progress", json!({"response": r})),
        ]
    }

    /// Opens the message item and its text part (once).
    fn open_message(&mut self, out: &mut Vec<Frame>) {
        if self.message_open {
            return;
        }
        self.close_reasoning(out);
        self.message_open = true;
        let (index, id, item) = (
            self.message_index(),
            self.item_id(),
            self.item("in_progress", vec![]),
        );
        out.push(self.frame(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        out.push(self.frame(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ));
    }

    /// Closes the reasoning item, if one is open.
    fn close_reasoning(&mut self, out: &mut Vec<Frame>) {
        let Some((text, false)) = self.reasoning.clone() else {
            return;
        };
        self.reasoning = Some((text.clone(), true));
        let id = self.reasoning_id();
        let part = json!({"type": "summary_text", "text": text});
        let item = self.reasoning_item(&text);
        out.push(self.frame(
            "response.reasoning_summary_text.done",
            json!({"item_id": id, "output_index": 0, "summary_index": 0, "text": text}),
        ));
        out.push(self.frame(
            "response.reasoning_summary_part.done",
            json!({"item_id": id, "output_index": 0, "summary_index": 0, "part": part}),
        ));
        out.push(self.frame(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ));
    }

    /// The frames an event makes.
    pub fn on(&mut self, ev: &TurnEvent<'_>) -> Vec<Frame> {
        let mut out = Vec::new();
        match ev {
            TurnEvent::Reasoning(t) if !self.message_open => {
                let id = self.reasoning_id();
                if self.reasoning.is_none() {
                    self.reasoning = Some((String::new(), false));
                    let item = self.reasoning_item("");
                    out.push(self.frame(
                        "response.output_item.added",
                        json!({"output_index": 0, "item": item}),
                    ));
                    out.push(self.frame(
                        "response.reasoning_summary_part.added",
                        json!({"item_id": id, "output_index": 0, "summary_index": 0,
                               "part": {"type": "summary_text", "text": ""}}),
                    ));
                }
                if let Some((text, _)) = &mut self.reasoning {
                    text.push_str(t);
                }
                out.push(self.frame(
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": 0, "summary_index": 0, "delta": t}),
                ));
            }
            TurnEvent::Text(t) => {
                self.open_message(&mut out);
                self.text.push_str(t);
                let (id, index) = (self.item_id(), self.message_index());
                out.push(self.frame(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "delta": t, "logprobs": []}),
                ));
            }
            TurnEvent::Error { code, message, .. } if self.error.is_none() => {
                self.error = Some((code.to_string(), message.to_string()));
            }
            TurnEvent::Done { usage, failed, .. } => {
                self.usage = Some(*usage);
                if *failed && self.error.is_none() {
                    self.error = Some((
                        "turn_failed".into(),
                        "the turn ended without an answer".into(),
                    ));
                }
                if self.error.is_some() {
                    self.status = "failed";
                    let r = self.response();
                    out.push(self.frame("response.failed", json!({"response": r})));
                    return out;
                }
                self.open_message(&mut out);
                self.status = "completed";
                let (id, index) = (self.item_id(), self.message_index());
                let (text, part) = (self.text.clone(), self.part());
                let item = self.item("completed", vec![part.clone()]);
                let r = self.response();
                out.push(self.frame(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": []}),
                ));
                out.push(self.frame(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                out.push(self.frame(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                out.push(self.frame("response.completed", json!({"response": r})));
            }
            // Reasoning after the answer began has no item to go in; tools, steps and the
            // rest are not shown (spec 03 §4.6).
            _ => {}
        }
        out
    }

    /// Karta's code and message, if the turn failed.
    pub fn failure(&self) -> Option<&(String, String)> {
        self.error.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "resp_9d41".into(),
            created_at: 1_735_732_800,
            model: "default".into(),
            store: true,
            metadata: json!({}),
            ..Default::default()
        }
    }

    fn run(t: &mut ResponseTurn, events: &[(&str, Value)]) -> Vec<Frame> {
        let mut out = t.start();
        for (k, d) in events {
            out.extend(t.on(&TurnEvent::from_parts(k, d)));
        }
        out
    }

    #[test]
    fn a_streamed_turn_follows_the_upstream_order_with_contiguous_numbers() {
        let mut t = ResponseTurn::new(meta());
        let frames = run(
            &mut t,
            &[
                ("step_start", json!({"step_index": 0})),
                (
                    "text",
                    json!({"part": {"type": "text", "text": "Your order "}}),
                ),
                (
                    "reasoning",
                    json!({"part": {"type": "reasoning", "text": "hm"}}),
                ),
                (
                    "text",
                    json!({"part": {"type": "text", "text": "ships Monday."}}),
                ),
                (
                    "done",
                    json!({"status": "completed", "usage": {"input_tokens": 52, "output_tokens": 8, "total_tokens": 60}}),
                ),
            ],
        );
        let kinds: Vec<&str> = frames.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (k, d)) in frames.iter().enumerate() {
            assert_eq!(d["sequence_number"], i as u64);
            assert_eq!(d["type"], *k);
        }
        assert_eq!(frames[0].1["response"]["status"], "in_progress");
        assert_eq!(frames[0].1["response"]["output"], json!([]));
        let done = &frames[9].1["response"];
        assert_eq!(done, &t.response());
        assert_eq!(done["status"], "completed");
        assert_eq!(
            done["output"][0]["content"][0]["text"],
            "Your order ships Monday."
        );
        assert_eq!(done["usage"]["input_tokens"], 52);
        assert_eq!(done["usage"]["total_tokens"], 60);
        assert_eq!(frames[6].1["text"], "Your order ships Monday.");
        assert_eq!(frames[4].1["item_id"], frames[2].1["item"]["id"]);
    }

    #[test]
    fn a_failed_turn_ends_with_response_failed_carrying_the_partial_output() {
        let mut t = ResponseTurn::new(meta());
        let frames = run(
            &mut t,
            &[
                ("text", json!({"part": {"type": "text", "text": "par"}})),
                (
                    "error",
                    json!({"code": "byok_key_rejected", "message": "invalid api key"}),
                ),
                ("done", json!({"status": "failed", "usage": {}})),
            ],
        );
        let (kind, data) = frames.last().unwrap();
        assert_eq!(*kind, "response.failed");
        assert_eq!(data["sequence_number"], 5);
        assert_eq!(data["response"]["status"], "failed");
        assert_eq!(data["response"]["error"]["message"], "invalid api key");
        assert_eq!(data["response"]["error"]["karta_code"], "byok_key_rejected");
        assert_eq!(data["response"]["output"][0]["content"][0]["text"], "par");
        assert_eq!(t.failure().unwrap().0, "byok_key_rejected");
    }

    #[test]
    fn reasoning_before_the_answer_is_a_reasoning_item_ahead_of_the_message() {
        let mut t = ResponseTurn::new(meta());
        let frames = run(
            &mut t,
            &[
                (
                    "reasoning",
                    json!({"part": {"type": "reasoning", "text": "Check "}}),
                ),
                (
                    "reasoning",
                    json!({"part": {"type": "reasoning", "text": "the order."}}),
                ),
                ("text", json!({"part": {"type": "text", "text": "Monday."}})),
                (
                    "done",
                    json!({"status": "completed", "usage": {"output_tokens": 5, "reasoning_tokens": 3}}),
                ),
            ],
        );
        let kinds: Vec<&str> = frames.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(frames[2].1["item"]["type"], "reasoning");
        assert_eq!(frames[6].1["text"], "Check the order.");
        assert_eq!(frames[9].1["output_index"], 1);
        assert_eq!(frames[11].1["output_index"], 1);
        let done = &frames[15].1["response"];
        assert_eq!(done["output"][0]["type"], "reasoning");
        assert_eq!(done["output"][0]["summary"][0]["text"], "Check the order.");
        assert_eq!(done["output"][1]["content"][0]["text"], "Monday.");
        assert_eq!(done, &t.response());
    }

    #[test]
    fn a_turn_without_text_still_closes_its_item() {
        let mut t = ResponseTurn::new(meta());
        let frames = run(&mut t, &[("done", json!({"status": "completed"}))]);
        assert_eq!(frames.len(), 8);
        assert_eq!(
            frames[7].1["response"]["output"][0]["content"][0]["text"],
            ""
        );
    }
}

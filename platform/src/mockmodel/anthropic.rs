//! The Anthropic Messages API side of the fake model: `POST /v1/messages`, streamed or not.

use serde_json::{json, Value};

use super::script::{ScriptedUsage, Step, DEFAULT_TEXT};

/// Text of the last user message (text blocks and tool results), for script matching.
pub fn last_user_text(body: &Value) -> String {
    let Some(messages) = body["messages"].as_array() else {
        return String::new();
    };
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().unwrap_or_default().to_string(),
                Some("tool_result") => match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// How many assistant messages the request holds.
pub fn assistant_messages(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|x| x["role"] == "assistant").count())
        .unwrap_or(0)
}

/// The content blocks a step answers with.
pub fn blocks(step: &Step, n: u64) -> Vec<Value> {
    if let Some(raw) = &step.content {
        return raw.clone();
    }
    let mut out = Vec::new();
    if let Some(t) = &step.thinking {
        out.push(json!({"type": "thinking", "thinking": t, "signature": "fake-signature"}));
    }
    if let Some(t) = &step.text {
        out.push(json!({"type": "text", "text": t}));
    }
    if let Some(tu) = &step.tool_use {
        out.push(json!({"type": "tool_use", "id": format!("toolu_fake_{n}"), "name": tu.name, "input": tu.input}));
    }
    if out.is_empty() {
        out.push(json!({"type": "text", "text": DEFAULT_TEXT}));
    }
    out
}

fn stop_reason(blocks: &[Value]) -> &'static str {
    if blocks.iter().any(|b| b["type"] == "tool_use") {
        "tool_use"
    } else {
        "end_turn"
    }
}

fn usage_json(u: &ScriptedUsage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
    })
}

/// The non-streaming answer.
pub fn message(model: &str, n: u64, blocks: Vec<Value>, usage: &ScriptedUsage) -> Value {
    json!({
        "id": format!("msg_fake_{n}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason(&blocks),
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

/// Splits text into word-sized chunks (keeping the spaces).
fn chunks(text: &str) -> Vec<String> {
    let v: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if v.is_empty() {
        vec![String::new()]
    } else {
        v
    }
}

/// The SSE events of a streamed answer, as (event name, data).
pub fn stream_events(
    model: &str,
    n: u64,
    blocks: Vec<Value>,
    usage: &ScriptedUsage,
) -> Vec<(String, Value)> {
    let mut ev = vec![(
        "message_start".to_string(),
        json!({"type": "message_start", "message": {
            "id": format!("msg_fake_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1,
                      "cache_read_input_tokens": usage.cache_read_input_tokens,
                      "cache_creation_input_tokens": usage.cache_creation_input_tokens},
        }}),
    )];
    ev.push(("ping".into(), json!({"type": "ping"})));
    for (i, b) in blocks.iter().enumerate() {
        let start = match b["type"].as_str() {
            Some("text") => json!({"type": "text", "text": ""}),
            Some("thinking") => json!({"type": "thinking", "thinking": ""}),
            Some("tool_use") => {
                json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}})
            }
            _ => b.clone(),
        };
        ev.push((
            "content_block_start".into(),
            json!({"type": "content_block_start", "index": i, "content_block": start}),
        ));
        let deltas: Vec<Value> = match b["type"].as_str() {
            Some("text") => chunks(b["text"].as_str().unwrap_or_default())
                .into_iter()
                .map(|c| json!({"type": "text_delta", "text": c}))
                .collect(),
            Some("thinking") => vec![
                json!({"type": "thinking_delta", "thinking": b["thinking"]}),
                json!({"type": "signature_delta", "signature": b["signature"]}),
            ],
            Some("tool_use") => {
                // Split the input JSON in two, as real streams do.
                let s = b["input"].to_string();
                let mid = s
                    .char_indices()
                    .nth(s.chars().count() / 2)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                vec![
                    json!({"type": "input_json_delta", "partial_json": &s[..mid]}),
                    json!({"type": "input_json_delta", "partial_json": &s[mid..]}),
                ]
            }
            _ => vec![],
        };
        for d in deltas {
            ev.push((
                "content_block_delta".into(),
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            ));
        }
        ev.push((
            "content_block_stop".into(),
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    ev.push((
        "message_delta".into(),
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason(&blocks), "stop_sequence": null},
               "usage": usage_json(usage)}),
    ));
    ev.push(("message_stop".into(), json!({"type": "message_stop"})));
    ev
}

/// The error body Anthropic sends for a status.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

//! The OpenAI Chat Completions side of the fake model: `POST /v1/chat/completions`, streamed
//! (`chat.completion.chunk`s, tool calls split in pieces, a usage chunk, `[DONE]`) or not.

use serde_json::{json, Value};

use super::script::{ScriptedUsage, Step, DEFAULT_TEXT};

/// Text of the last user or tool message, for script matching.
pub fn last_user_text(body: &Value) -> String {
    let Some(messages) = body["messages"].as_array() else {
        return String::new();
    };
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user" || m["role"] == "tool")
    else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
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

fn reply_text(step: &Step) -> Option<String> {
    match (&step.text, &step.tool_call) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TEXT.into()),
    }
}

fn tool_call_json(step: &Step, n: u64) -> Option<Value> {
    step.tool_call.as_ref().map(|tc| {
        json!({"id": format!("call_fake_{n}"), "type": "function",
               "function": {"name": tc.name, "arguments": tc.arguments.to_string()}})
    })
}

fn usage_json(u: &ScriptedUsage) -> Value {
    json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
           "total_tokens": u.input_tokens + u.output_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
           "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}})
}

fn finish_reason(step: &Step) -> &'static str {
    if step.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    }
}

/// The non-streaming answer.
pub fn completion(model: &str, n: u64, step: &Step, usage: &ScriptedUsage) -> Value {
    let mut message = json!({"role": "assistant", "content": reply_text(step)});
    if let Some(tc) = tool_call_json(step, n) {
        message["tool_calls"] = json!([tc]);
    }
    if let Some(t) = &step.thinking {
        message["reasoning_content"] = json!(t);
    }
    json!({
        "id": format!("chatcmpl-fake-{n}"), "object": "chat.completion", "created": 1_767_225_600,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(step)}],
        "usage": usage_json(usage),
    })
}

/// The `data:` payloads of a streamed answer, ending with `[DONE]`.
pub fn stream_chunks(model: &str, n: u64, step: &Step, usage: &ScriptedUsage) -> Vec<String> {
    let id = format!("chatcmpl-fake-{n}");
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_767_225_600, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(t) = &step.thinking {
        out.push(chunk(json!({"reasoning_content": t}), Value::Null));
    }
    if let Some(text) = reply_text(step) {
        for piece in text.split_inclusive(' ') {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
    }
    if let Some(tc) = &step.tool_call {
        let args = tc.arguments.to_string();
        let mid = args
            .char_indices()
            .nth(args.chars().count() / 2)
            .map(|(i, _)| i)
            .unwrap_or(0);
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": format!("call_fake_{n}"), "type": "function",
                                   "function": {"name": tc.name, "arguments": &args[..mid]}}]}),
            Value::Null,
        ));
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": &args[mid..]}}]}),
            Value::Null,
        ));
    }
    out.push(chunk(json!({}), json!(finish_reason(step))));
    out.push(
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_767_225_600, "model": model,
               "choices": [], "usage": usage_json(usage)})
        .to_string(),
    );
    out.push("[DONE]".into());
    out
}

/// The error body OpenAI sends.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "code": null}})
}

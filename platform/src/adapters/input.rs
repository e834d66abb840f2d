//! From an OpenAI-shaped conversation to the text of one Karta turn (spec 03 §3.3, §4.3).
//!
//! The turn's input is the text of the user messages after the last assistant message, joined
//! by blank lines. `system`/`developer` text and `instructions` become an "instructions from
//! the client" block on top; earlier user/assistant messages a transcript, so that a fresh
//! harness session has the context (Responses continuations skip it: the harness holds the
//! history). The app's own agent definition stays authoritative.

use serde::Deserialize;
use serde_json::Value;

/// Who said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `system` or `developer`.
    Instructions,
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
}

/// One message of the conversation, reduced to its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
}

/// A request the adapter cannot map: where (JSON path under the body) and why (a 422).
#[derive(Clone, Debug, PartialEq)]
pub struct InputError {
    /// Path of the offending value, e.g. `["messages", "2", "content", "0", "type"]`.
    pub loc: Vec<String>,
    /// What is wrong with it.
    pub message: String,
}

fn err(loc: &[&str], message: impl Into<String>) -> InputError {
    InputError {
        loc: loc.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// A Chat Completions message as clients send it (unknown keys ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` (`tool` and `function` are refused).
    pub role: String,
    /// A string, a list of content parts, or null (an assistant message with tool calls).
    #[serde(default)]
    pub content: Value,
}

/// The text of a `content` value: a string, or the text parts of a list. `text_types` are the
/// part types that carry text (others are refused: images, audio, files).
fn content_text(content: &Value, loc: &[&str], text_types: &[&str]) -> Result<String, InputError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let i = i.to_string();
                let kind = part["type"].as_str().unwrap_or("");
                if !text_types.contains(&kind) {
                    let mut at = loc.to_vec();
                    at.extend([i.as_str(), "type"]);
                    return Err(err(
                        &at,
                        format!(
                            "unsupported content part `{kind}`: only {} parts are accepted",
                            text_types.join(", ")
                        ),
                    ));
                }
                match part["text"].as_str() {
                    Some(t) => out.push(t),
                    None => {
                        let mut at = loc.to_vec();
                        at.extend([i.as_str(), "text"]);
                        return Err(err(&at, "a text part needs its `text`"));
                    }
                }
            }
            Ok(out.concat())
        }
        _ => Err(err(loc, "must be a string or a list of content parts")),
    }
}

fn role(r: &str, loc: &[&str]) -> Result<Role, InputError> {
    match r {
        "system" | "developer" => Ok(Role::Instructions),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Err(err(
            loc,
            format!("`{r}` messages are not supported: the harness runs its own tools"),
        )),
        other => Err(err(loc, format!("unknown role `{other}`"))),
    }
}

/// The messages of a Chat Completions request.
pub fn chat_messages(messages: &[ChatMessage]) -> Result<Vec<Message>, InputError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let i = i.to_string();
            let role = role(&m.role, &["messages", &i, "role"])?;
            let text = content_text(&m.content, &["messages", &i, "content"], &["text"])?;
            Ok(Message { role, text })
        })
        .collect()
}

/// The `input` of a Responses request: a string (one user message) or a list of items.
pub fn response_input(input: &Value) -> Result<Vec<Message>, InputError> {
    match input {
        Value::String(s) => Ok(vec![Message {
            role: Role::User,
            text: s.clone(),
        }]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let i = i.to_string();
                let kind = item["type"].as_str().unwrap_or("message");
                if kind != "message" {
                    return Err(err(
                        &["input", &i, "type"],
                        format!("unsupported input item `{kind}`: only messages are accepted"),
                    ));
                }
                let Some(r) = item["role"].as_str() else {
                    return Err(err(&["input", &i, "role"], "field required"));
                };
                let role = role(r, &["input", &i, "role"])?;
                let text = content_text(
                    &item["content"],
                    &["input", &i, "content"],
                    &["input_text", "output_text", "text"],
                )?;
                Ok(Message { role, text })
            })
            .collect(),
        Value::Null => Err(err(&["input"], "field required")),
        _ => Err(err(&["input"], "must be a string or a list of input items")),
    }
}

/// The turn's text. `instructions` come first (Responses `instructions`); `with_history`
/// renders earlier user/assistant messages as a transcript. `at` names the list in errors.
pub fn turn_text(
    messages: &[Message],
    instructions: Option<&str>,
    with_history: bool,
    at: &str,
) -> Result<String, InputError> {
    let Some(last) = messages.last() else {
        return Err(err(&[at], "must hold at least one message"));
    };
    if last.role != Role::User {
        let i = (messages.len() - 1).to_string();
        return Err(err(
            &[at, &i, "role"],
            "the last message must be the user's",
        ));
    }
    let split = messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .map_or(0, |i| i + 1);
    let (earlier, current) = messages.split_at(split);
    let asked: Vec<&str> = current
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.text.as_str())
        .collect();
    let told: Vec<&str> = instructions
        .into_iter()
        .chain(
            messages
                .iter()
                .filter(|m| m.role == Role::Instructions)
                .map(|m| m.text.as_str()),
        )
        .filter(|t| !t.trim().is_empty())
        .collect();
    let transcript: Vec<String> = earlier
        .iter()
        .filter(|_| with_history)
        .filter_map(|m| match m.role {
            Role::User => Some(format!("User: {}", m.text)),
            Role::Assistant => Some(format!("Assistant: {}", m.text)),
            Role::Instructions => None,
        })
        .collect();
    let mut out = String::new();
    if !told.is_empty() {
        out.push_str("Instructions from the client:\n");
        out.push_str(&told.join("\n\n"));
        out.push_str("\n\n");
    }
    if !transcript.is_empty() {
        out.push_str("Conversation so far:\n");
        out.push_str(&transcript.join("\n"));
        out.push_str("\n\n");
    }
    if !out.is_empty() {
        out.push_str("Message:\n");
    }
    out.push_str(&asked.join("\n\n"));
    if asked.iter().all(|t| t.trim().is_empty()) {
        let i = (messages.len() - 1).to_string();
        return Err(err(&[at, &i, "content"], "the user message has no text"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> Result<Vec<Message>, InputError> {
        let m: Vec<ChatMessage> = serde_json::from_value(v).unwrap();
        chat_messages(&m)
    }

    #[test]
    fn a_lone_user_message_is_the_turn_text_as_is() {
        let m = chat(json!([{"role": "user", "content": "ping"}])).unwrap();
        assert_eq!(turn_text(&m, None, true, "messages").unwrap(), "ping");
    }

    #[test]
    fn history_and_system_messages_come_before_the_new_user_messages() {
        let m = chat(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Remember maple."},
            {"role": "assistant", "content": [{"type": "text", "text": "OK."}]},
            {"role": "user", "content": [{"type": "text", "text": "What "}, {"type": "text", "text": "word?"}]},
            {"role": "user", "content": "Quick."}
        ]))
        .unwrap();
        let t = turn_text(&m, None, true, "messages").unwrap();
        assert_eq!(
            t,
            "Instructions from the client:\nBe brief.\n\nConversation so far:\nUser: Remember maple.\nAssistant: OK.\n\nMessage:\nWhat word?\n\nQuick."
        );
        // A continuation skips the transcript (the harness has it), instructions stay.
        let t = turn_text(&m, Some("Use French."), false, "input").unwrap();
        assert!(t.starts_with("Instructions from the client:\nUse French.\n\nBe brief."));
        assert!(!t.contains("maple"));
    }

    #[test]
    fn what_cannot_be_mapped_names_its_place() {
        let e = chat(json!([{"role": "tool", "content": "42", "tool_call_id": "c1"}])).unwrap_err();
        assert_eq!(e.loc, ["messages", "0", "role"]);
        let e = chat(json!([{"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": "http://x"}}
        ]}]))
        .unwrap_err();
        assert_eq!(e.loc, ["messages", "0", "content", "1", "type"]);
        assert!(e.message.contains("image_url"));
        let m =
            chat(json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))
                .unwrap();
        assert_eq!(
            turn_text(&m, None, true, "messages").unwrap_err().loc,
            ["messages", "1", "role"]
        );
        assert_eq!(
            turn_text(&[], None, true, "messages").unwrap_err().loc,
            ["messages"]
        );
        let e = response_input(
            &json!([{"type": "function_call_output", "call_id": "c", "output": "x"}]),
        )
        .unwrap_err();
        assert_eq!(e.loc, ["input", "0", "type"]);
        assert!(response_input(&json!(7)).is_err());
    }

    #[test]
    fn responses_input_takes_strings_and_message_items() {
        let m = response_input(&json!([
            {"role": "developer", "content": "Be kind."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        ]))
        .unwrap();
        assert_eq!(
            turn_text(&m, None, true, "input").unwrap(),
            "Instructions from the client:\nBe kind.\n\nMessage:\nhi"
        );
        assert_eq!(response_input(&json!("yo")).unwrap()[0].text, "yo");
    }
}

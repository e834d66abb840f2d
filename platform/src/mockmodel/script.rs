//! Scripts for the fake model: which reply a request gets.
//!
//! A script is a JSON list of steps. A request gets, in this order:
//! 1. the first unused step whose `match` text occurs in the last user (or tool-result) message
//!    (`"once": false` lets a step be used again; `"match": ""` matches everything);
//! 2. otherwise, when the request offers tools (a harness's main loop), the step at the index
//!    given by the number of assistant messages in the request, among the steps without `match`
//!    (so side calls such as title generation, which offer no tools, do not use the script up);
//! 3. otherwise the default text reply.

use serde::Deserialize;
use serde_json::Value;

/// One scripted reply.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Use this step when the last user message contains this text.
    #[serde(rename = "match")]
    pub matches: Option<String>,
    /// Whether a matched step is used up (default true).
    #[serde(default = "yes")]
    pub once: bool,
    /// Reply text.
    pub text: Option<String>,
    /// Reasoning text streamed before the reply.
    pub thinking: Option<String>,
    /// An Anthropic tool call `{name, input}`.
    pub tool_use: Option<ToolUse>,
    /// An OpenAI tool call `{name, arguments}`.
    pub tool_call: Option<ToolCall>,
    /// Raw Anthropic content blocks, sent as they are.
    pub content: Option<Vec<Value>>,
    /// Answer with an HTTP error instead.
    pub error: Option<ScriptedError>,
    /// Milliseconds to wait before answering.
    pub delay: Option<u64>,
    /// Milliseconds between streamed chunks.
    pub chunk_delay: Option<u64>,
    /// Token counts to report (defaults: 100 in, 20 out).
    pub usage: Option<ScriptedUsage>,
}

fn yes() -> bool {
    true
}

/// An Anthropic tool call.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ToolUse {
    /// Tool name, e.g. `Bash`.
    pub name: String,
    /// Tool input.
    #[serde(default)]
    pub input: Value,
}

/// An OpenAI tool call.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// Arguments (an object; sent as a JSON string).
    #[serde(default)]
    pub arguments: Value,
}

/// A scripted HTTP error.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ScriptedError {
    /// HTTP status.
    pub status: u16,
    /// Error message.
    pub message: String,
}

/// Scripted token counts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct ScriptedUsage {
    /// Input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Cache-read input tokens.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Cache-creation input tokens.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// The part of the output that was reasoning (reported apart in the OpenAI shape only).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Default for ScriptedUsage {
    fn default() -> Self {
        Self {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            reasoning_tokens: 0,
        }
    }
}

/// The default reply when nothing in the script applies.
pub const DEFAULT_TEXT: &str = "Hi from the fake model.";

/// A script and which of its steps are used up.
#[derive(Debug, Default)]
pub struct Script {
    steps: Vec<Step>,
    used: Vec<bool>,
}

/// What selection needs to know about a request.
pub struct RequestShape<'a> {
    /// Text of the last user or tool message.
    pub last_user_text: &'a str,
    /// Whether the request offers tools.
    pub has_tools: bool,
    /// How many assistant messages the request holds.
    pub assistant_messages: usize,
}

impl Script {
    /// A script from its steps.
    pub fn new(steps: Vec<Step>) -> Self {
        let used = vec![false; steps.len()];
        Self { steps, used }
    }

    /// Parses a script file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let steps: Vec<Step> =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| format!("script: {}: {}", e.path(), e.inner()))?;
        Ok(Self::new(steps))
    }

    /// Marks every step unused again.
    pub fn rewind(&mut self) {
        self.used.iter_mut().for_each(|u| *u = false);
    }

    /// The step for a request (see the module docs), or the default reply.
    pub fn select(&mut self, req: &RequestShape<'_>) -> Step {
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(m) = &s.matches {
                if !self.used[i] && req.last_user_text.contains(m.as_str()) {
                    if s.once {
                        self.used[i] = true;
                    }
                    return s.clone();
                }
            }
        }
        if req.has_tools {
            let unmatched: Vec<&Step> = self.steps.iter().filter(|s| s.matches.is_none()).collect();
            if let Some(s) = unmatched.get(req.assistant_messages) {
                return (*s).clone();
            }
        }
        Step {
            text: Some(DEFAULT_TEXT.into()),
            ..Step::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(text: &str, tools: bool, assistants: usize) -> RequestShape<'_> {
        RequestShape {
            last_user_text: text,
            has_tools: tools,
            assistant_messages: assistants,
        }
    }

    #[test]
    fn match_then_position_then_default() {
        let mut s = Script::parse(
            r#"[{"match":"second","text":"Answer two."},{"tool_use":{"name":"Bash","input":{"command":"ls"}}},{"text":"Finished."}]"#,
        )
        .unwrap();
        assert_eq!(
            s.select(&shape("first", true, 0)).tool_use.unwrap().name,
            "Bash"
        );
        assert_eq!(
            s.select(&shape("tool output", true, 1)).text.unwrap(),
            "Finished."
        );
        // A side call without tools does not consume the script.
        assert_eq!(
            s.select(&shape("title please", false, 0)).text.unwrap(),
            DEFAULT_TEXT
        );
        assert_eq!(
            s.select(&shape("the second question", true, 2))
                .text
                .unwrap(),
            "Answer two."
        );
        // Used up: the next matching request falls through.
        assert_eq!(
            s.select(&shape("the second question", true, 5))
                .text
                .unwrap(),
            DEFAULT_TEXT
        );
        s.rewind();
        assert_eq!(
            s.select(&shape("second", true, 9)).text.unwrap(),
            "Answer two."
        );
    }

    #[test]
    fn reusable_steps_and_bad_scripts() {
        let mut s =
            Script::parse(r#"[{"match":"","once":false,"error":{"status":400,"message":"no"}}]"#)
                .unwrap();
        assert_eq!(s.select(&shape("a", true, 0)).error.unwrap().status, 400);
        assert_eq!(s.select(&shape("b", true, 0)).error.unwrap().status, 400);
        let err = Script::parse(r#"[{"txt":"typo"}]"#).unwrap_err();
        assert!(err.contains("txt"), "{err}");
    }
}

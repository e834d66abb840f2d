//! Token counts read off a provider's answer as it passes through: pure, incremental, bounded.

use serde_json::Value;

/// The two wire formats the gateway speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Chat Completions.
    OpenAi,
}

impl Provider {
    /// The provider's name in config and records.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
        }
    }
}

/// Tokens of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens (not counting cache reads).
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Input tokens read from the provider's cache.
    pub cache_read: i64,
    /// Input tokens written to the provider's cache.
    pub cache_creation: i64,
    /// The part of the output that was reasoning, when the provider says (OpenAI).
    pub reasoning: i64,
}

/// Longest SSE line kept while looking for usage; longer lines are skipped (usage lines are
/// small).
const MAX_LINE: usize = 64 * 1024;
/// Largest non-streamed body read for usage.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Reads usage from an answer fed chunk by chunk.
#[derive(Debug)]
pub struct UsageTap {
    provider: Provider,
    streamed: bool,
    buf: Vec<u8>,
    skipping: bool,
    tokens: Tokens,
    model: Option<String>,
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

impl UsageTap {
    /// A tap for one answer; `streamed` when it is an event stream.
    pub fn new(provider: Provider, streamed: bool) -> Self {
        Self {
            provider,
            streamed,
            buf: Vec::new(),
            skipping: false,
            tokens: Tokens::default(),
            model: None,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.streamed {
            if self.buf.len() + chunk.len() <= MAX_BODY {
                self.buf.extend_from_slice(chunk);
            } else {
                self.skipping = true;
            }
            return;
        }
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let complete = part.ends_with(b"\n");
            if !self.skipping {
                if self.buf.len() + part.len() > MAX_LINE {
                    self.skipping = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            if complete {
                if !self.skipping {
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line);
                }
                self.skipping = false;
                self.buf.clear();
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        let Some(data) = text.trim_end().strip_prefix("data:") else {
            return;
        };
        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match self.provider {
            Provider::Anthropic => match v["type"].as_str() {
                Some("message_start") => {
                    self.model_from(&v["message"]);
                    self.anthropic(&v["message"]["usage"]);
                }
                // Counts in message_delta are cumulative.
                Some("message_delta") => self.anthropic(&v["usage"]),
                _ => {}
            },
            Provider::OpenAi => {
                self.model_from(v);
                if v["usage"].is_object() {
                    self.openai(&v["usage"]);
                }
            }
        }
    }

    fn model_from(&mut self, v: &Value) {
        if let Some(m) = v["model"].as_str() {
            self.model = Some(m.to_string());
        }
    }

    fn anthropic(&mut self, u: &Value) {
        if let Some(n) = int(&u["input_tokens"]) {
            self.tokens.input = n;
        }
        if let Some(n) = int(&u["output_tokens"]) {
            self.tokens.output = n;
        }
        if let Some(n) = int(&u["cache_read_input_tokens"]) {
            self.tokens.cache_read = n;
        }
        if let Some(n) = int(&u["cache_creation_input_tokens"]) {
            self.tokens.cache_creation = n;
        }
    }

    fn openai(&mut self, u: &Value) {
        let cached = int(&u["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0);
        if let Some(n) = int(&u["prompt_tokens"]) {
            // OpenAI counts cached tokens inside prompt_tokens; Karta counts them apart.
            self.tokens.input = n - cached;
            self.tokens.cache_read = cached;
        }
        if let Some(n) = int(&u["completion_tokens"]) {
            self.tokens.output = n;
        }
        if let Some(n) = int(&u["completion_tokens_details"]["reasoning_tokens"]) {
            self.tokens.reasoning = n;
        }
    }

    /// The counts and the model the provider named, once the body has ended.
    pub fn finish(mut self) -> (Tokens, Option<String>) {
        if self.streamed {
            if !self.buf.is_empty() && !self.skipping {
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
        } else if !self.skipping {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.buf) {
                self.model_from(&v);
                match self.provider {
                    Provider::Anthropic => self.anthropic(&v["usage"]),
                    Provider::OpenAi => {
                        if v["usage"].is_object() {
                            self.openai(&v["usage"]);
                        }
                    }
                }
            }
        }
        (self.tokens, self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        provider: Provider,
        streamed: bool,
        body: &str,
        chunk: usize,
    ) -> (Tokens, Option<String>) {
        let mut tap = UsageTap::new(provider, streamed);
        for c in body.as_bytes().chunks(chunk) {
            tap.feed(c);
        }
        tap.finish()
    }

    const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":120,\"output_tokens\":1,\"cache_read_input_tokens\":30,\"cache_creation_input_tokens\":7}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn an_anthropic_stream_split_anywhere_gives_the_same_counts() {
        for chunk in [1, 3, 17, 4096] {
            let (t, model) = run(Provider::Anthropic, true, ANTHROPIC_STREAM, chunk);
            assert_eq!(
                t,
                Tokens {
                    input: 120,
                    output: 42,
                    cache_read: 30,
                    cache_creation: 7,
                    reasoning: 0
                },
                "chunk {chunk}"
            );
            assert_eq!(model.as_deref(), Some("claude-x"));
        }
    }

    #[test]
    fn an_openai_stream_counts_cached_tokens_apart() {
        let body = "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":40},\"completion_tokens_details\":{\"reasoning_tokens\":4}}}\n\n\
data: [DONE]\n\n";
        let (t, model) = run(Provider::OpenAi, true, body, 5);
        assert_eq!(
            t,
            Tokens {
                input: 60,
                output: 9,
                cache_read: 40,
                cache_creation: 0,
                reasoning: 4
            }
        );
        assert_eq!(model.as_deref(), Some("gpt-x"));
    }

    #[test]
    fn whole_bodies_of_both_providers() {
        let (t, _) = run(
            Provider::Anthropic,
            false,
            r#"{"model":"m","usage":{"input_tokens":5,"output_tokens":6}}"#,
            2,
        );
        assert_eq!((t.input, t.output), (5, 6));
        let (t, _) = run(
            Provider::OpenAi,
            false,
            r#"{"model":"m","usage":{"prompt_tokens":8,"completion_tokens":3}}"#,
            100,
        );
        assert_eq!((t.input, t.output), (8, 3));
    }

    #[test]
    fn garbage_and_huge_lines_count_nothing_and_do_not_grow_memory() {
        let mut tap = UsageTap::new(Provider::Anthropic, true);
        let junk = vec![b'x'; 1024 * 1024];
        for _ in 0..8 {
            tap.feed(&junk);
            assert!(tap.buf.len() <= MAX_LINE);
        }
        tap.feed(b"\ndata: {not json}\n");
        let (t, model) = tap.finish();
        assert_eq!(t, Tokens::default());
        assert_eq!(model, None);
    }
}

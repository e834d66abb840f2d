//! A scripted ACP agent: newline-delimited JSON-RPC on stdin and stdout, no model. What it does
//! in a turn follows markers in the prompt:
//!
//! - (always) a thought, then the answer `acp: <prompt>` in two chunks, with token usage;
//! - `[tool]`: a read-only tool call (`list files`) that runs without asking;
//! - `[ask]`: a tool call that asks permission (allow once, allow always, reject) and, when
//!   allowed, writes `notes.txt` through the client's `fs/write_text_file`; after "allow always"
//!   the session's later calls are not asked;
//! - `[read <path>]`: reads `<path>` (relative to its cwd) through `fs/read_text_file` and
//!   answers with its text, or with the error;
//! - `[plan]`: a plan update;
//! - `[slow]`: works until cancelled (`session/cancel`), then ends the turn `cancelled`;
//! - `[crash]`: exits mid-turn;
//! - `[recall]`: answers with what the session was told before, also after a restart
//!   (`session/load` reads the history it keeps in `.acp-agent-history` in its cwd).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Session {
    cwd: PathBuf,
    history: Vec<String>,
    always: bool,
}

struct Agent {
    rx: Receiver<Value>,
    /// Messages read while waiting for an answer, handled next.
    queue: VecDeque<Value>,
    sessions: HashMap<String, Session>,
    cancelled: bool,
    next_id: u64,
}

fn send(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn update(sid: &str, update: Value) {
    send(json!({"jsonrpc": "2.0", "method": "session/update",
        "params": {"sessionId": sid, "update": update}}));
}

fn chunk(sid: &str, kind: &str, text: &str) {
    update(
        sid,
        json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}}),
    );
}

impl Agent {
    /// Sends a request to the client and waits for its answer; a cancel meanwhile is noted.
    fn ask(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = format!("agent-{}", self.next_id);
        send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let m = self
                .rx
                .recv()
                .map_err(|_| "the client went away".to_string())?;
            if m["id"] == json!(id) && m.get("method").is_none() {
                return match m.get("error") {
                    Some(e) => Err(e["message"].as_str().unwrap_or("error").to_string()),
                    None => Ok(m["result"].clone()),
                };
            }
            self.note(m);
        }
    }

    fn note(&mut self, m: Value) {
        if m["method"] == "session/cancel" {
            self.cancelled = true;
        } else {
            self.queue.push_back(m);
        }
    }

    fn history_file(cwd: &std::path::Path) -> PathBuf {
        cwd.join(".acp-agent-history")
    }

    fn prompt(&mut self, sid: &str, text: &str) -> Value {
        self.cancelled = false;
        let Some(s) = self.sessions.get_mut(sid) else {
            return json!({"error": "unknown session"});
        };
        let told_before = s.history.join(" / ");
        s.history.push(text.to_string());
        let _ = std::fs::write(Self::history_file(&s.cwd), s.history.join("\n"));
        let cwd = s.cwd.clone();
        chunk(
            sid,
            "agent_thought_chunk",
            &format!("thinking about: {text}"),
        );
        let mut answer = format!("acp: {text}");
        if text.contains("[plan]") {
            update(
                sid,
                json!({"sessionUpdate": "plan", "entries": [
                {"content": "read the request", "priority": "high", "status": "completed"},
                {"content": "answer", "priority": "medium", "status": "in_progress"}]}),
            );
        }
        if text.contains("[tool]") {
            update(
                sid,
                json!({"sessionUpdate": "tool_call", "toolCallId": "call_ls",
                "title": "list files", "kind": "read", "status": "pending", "rawInput": {"path": "."}}),
            );
            update(
                sid,
                json!({"sessionUpdate": "tool_call_update", "toolCallId": "call_ls",
                "status": "in_progress"}),
            );
            update(
                sid,
                json!({"sessionUpdate": "tool_call_update", "toolCallId": "call_ls",
                "status": "completed", "content": [{"type": "content",
                "content": {"type": "text", "text": "notes.txt"}}]}),
            );
        }
        if text.contains("[ask]") {
            update(
                sid,
                json!({"sessionUpdate": "tool_call", "toolCallId": "call_write",
                "title": "write notes.txt", "kind": "edit", "status": "pending",
                "rawInput": {"path": "notes.txt"}}),
            );
            let always = self.sessions.get(sid).is_some_and(|s| s.always);
            let choice = if always {
                Ok("always".to_string())
            } else {
                self.ask(
                    "session/request_permission",
                    json!({"sessionId": sid,
                    "toolCall": {"toolCallId": "call_write", "title": "write notes.txt",
                        "rawInput": {"path": "notes.txt"}},
                    "options": [
                        {"optionId": "once", "name": "Allow once", "kind": "allow_once"},
                        {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
                        {"optionId": "no", "name": "Reject", "kind": "reject_once"}]}),
                )
                .map(|r| {
                    if r["outcome"]["outcome"] == "selected" {
                        r["outcome"]["optionId"].as_str().unwrap_or("").to_string()
                    } else {
                        "cancelled".to_string()
                    }
                })
            };
            match choice.as_deref() {
                Ok("once") | Ok("always") => {
                    if choice.as_deref() == Ok("always") {
                        if let Some(s) = self.sessions.get_mut(sid) {
                            s.always = true;
                        }
                    }
                    let path = cwd.join("notes.txt").display().to_string();
                    let r = self.ask(
                        "fs/write_text_file",
                        json!({"sessionId": sid, "path": path, "content": "hello"}),
                    );
                    let (status, out) = match r {
                        Ok(_) => ("completed", "wrote 5 bytes".to_string()),
                        Err(e) => ("failed", e),
                    };
                    update(
                        sid,
                        json!({"sessionUpdate": "tool_call_update", "toolCallId": "call_write",
                        "status": status, "content": [{"type": "content",
                        "content": {"type": "text", "text": out}}]}),
                    );
                }
                Ok("cancelled") => return json!({"stopReason": "cancelled"}),
                _ => {
                    update(
                        sid,
                        json!({"sessionUpdate": "tool_call_update", "toolCallId": "call_write",
                        "status": "failed", "content": [{"type": "content",
                        "content": {"type": "text", "text": "the user refused"}}]}),
                    );
                    answer = "acp: not writing it".to_string();
                }
            }
        }
        if let Some(i) = text.find("[read ") {
            let rel = text[i + 6..]
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let path = cwd.join(&rel).display().to_string();
            answer = match self.ask("fs/read_text_file", json!({"sessionId": sid, "path": path})) {
                Ok(r) => format!("read: {}", r["content"].as_str().unwrap_or("")),
                Err(e) => format!("read failed: {e}"),
            };
        }
        if text.contains("[recall]") {
            answer = format!("you said: {told_before}");
        }
        if text.contains("[crash]") {
            chunk(sid, "agent_message_chunk", "about to crash");
            std::process::exit(3);
        }
        if text.contains("[slow]") {
            chunk(sid, "agent_message_chunk", "working...");
            let deadline = Instant::now() + Duration::from_secs(120);
            while !self.cancelled && Instant::now() < deadline {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => self.note(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::process::exit(0),
                }
            }
        }
        if self.cancelled {
            return json!({"stopReason": "cancelled"});
        }
        let (a, b) = answer.split_at(answer.len() / 2);
        chunk(sid, "agent_message_chunk", a);
        chunk(sid, "agent_message_chunk", b);
        let input = text.split_whitespace().count() as u64 + 10;
        let output = answer.split_whitespace().count() as u64 + 1;
        json!({"stopReason": "end_turn", "usage": {"inputTokens": input, "outputTokens": output,
            "thoughtTokens": 1, "totalTokens": input + output}})
    }

    fn handle(&mut self, m: Value) {
        let method = m["method"].as_str().unwrap_or("").to_string();
        let id = m.get("id").cloned();
        let p = &m["params"];
        let result = match method.as_str() {
            "initialize" => json!({"protocolVersion": 1,
                "agentCapabilities": {"loadSession": true}, "authMethods": [],
                "agentInfo": {"name": "karta-acp-agent", "version": env!("CARGO_PKG_VERSION")}}),
            "session/new" | "session/load" => {
                let cwd = PathBuf::from(p["cwd"].as_str().unwrap_or("."));
                let sid = match p["sessionId"].as_str() {
                    Some(s) => s.to_string(),
                    None => format!("acp_{}_{}", std::process::id(), self.sessions.len()),
                };
                let history = std::fs::read_to_string(Self::history_file(&cwd))
                    .map(|h| h.lines().map(str::to_string).collect())
                    .unwrap_or_default();
                self.sessions.insert(
                    sid.clone(),
                    Session {
                        cwd,
                        history,
                        always: false,
                    },
                );
                if method == "session/new" {
                    json!({"sessionId": sid})
                } else {
                    json!({})
                }
            }
            "session/prompt" => {
                let sid = p["sessionId"].as_str().unwrap_or("").to_string();
                let text: String = p["prompt"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|b| b["text"].as_str()).collect())
                    .unwrap_or_default();
                self.prompt(&sid, &text)
            }
            "session/cancel" => {
                self.cancelled = true;
                return;
            }
            _ => {
                if let Some(id) = id {
                    send(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": format!("{method} not found")}}));
                }
                return;
            }
        };
        if let Some(id) = id {
            send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
    }
}

fn main() {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let mut agent = Agent {
        rx,
        queue: VecDeque::new(),
        sessions: HashMap::new(),
        cancelled: false,
        next_id: 0,
    };
    loop {
        let m = match agent.queue.pop_front() {
            Some(m) => m,
            None => match agent.rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        agent.handle(m);
    }
}

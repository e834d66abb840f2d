//! The bits of Karta's session API the bench uses.

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::client::Conn;

/// The non-streaming turn body.
pub const TURN: &[u8] = br#"{"text":"hello"}"#;
/// The streaming turn body.
pub const STREAM_TURN: &[u8] = br#"{"text":"hello","stream":true}"#;
/// A streaming turn that pauses on an approval (the echo driver's `[approve]` marker).
pub const APPROVAL_TURN: &[u8] = br#"{"text":"[approve] hi","stream":true}"#;

/// A non-streaming OpenAI Chat Completions request.
pub const CHAT: &[u8] = br#"{"model":"default","messages":[{"role":"user","content":"hello"}]}"#;
/// The Chat Completions route of the bench project.
pub const CHAT_PATH: &str = "/v1/projects/hello/chat/completions";

/// Creates a session on the org's only project; returns its id.
pub async fn create_session(conn: &mut Conn, key: &str) -> anyhow::Result<String> {
    let body = conn
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/sessions",
            Some(key),
            Some(Bytes::from_static(b"{}")),
        )
        .await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("the new session is not JSON")?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("the new session has no id")
}

/// The path that runs a turn on a session.
pub fn messages_path(session_id: &str) -> String {
    format!("/v1/sessions/{session_id}/messages")
}

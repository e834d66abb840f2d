//! The public event envelope and its framing for subscribers.

use chrono::{SecondsFormat, Utc};
use karta_driver_api::Event;
use serde::Serialize;
use serde_json::Value;

/// One numbered event of a session, ready to send.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The per-session sequence number (SSE `id:`).
    pub seq: i64,
    /// The event type (SSE `event:`).
    pub event_type: String,
    /// The whole envelope as one line of JSON (SSE `data:`).
    pub json: String,
    /// The envelope's `data`, for accumulating unary answers.
    pub data: Value,
}

impl Frame {
    /// Whether this frame ends the turn.
    pub fn is_done(&self) -> bool {
        self.event_type == "done"
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'a str,
    session_id: &'a str,
    seq: i64,
    timestamp: String,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a Value>,
}

/// Builds the public envelope for a driver event.
pub(crate) fn frame(session_id: &str, seq: i64, event: &Event) -> Frame {
    // Event serializes as {"v", "type", "data", "raw"}; take its data.
    let data = serde_json::to_value(&event.kind)
        .ok()
        .and_then(|mut v| v.get_mut("data").map(Value::take))
        .unwrap_or(Value::Null);
    let env = Envelope {
        kind: event.type_name(),
        source: "karta",
        session_id,
        seq,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, false),
        data: &data,
        raw: event.raw.as_ref(),
    };
    let json = serde_json::to_string(&env).unwrap_or_else(|_| "{}".into());
    Frame {
        seq,
        event_type: event.type_name().to_string(),
        json,
        data,
    }
}

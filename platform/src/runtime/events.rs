//! The public event envelope and its framing for subscribers.

use std::sync::OnceLock;

use chrono::{SecondsFormat, Utc};
use karta_driver_api::Event;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    /// The envelope's `data`, parsed the first time it is asked for.
    data: OnceLock<Value>,
}

impl Frame {
    /// A frame of an envelope printed before (the log, a test); its `data` is parsed when needed.
    pub fn new(seq: i64, event_type: String, json: String) -> Self {
        Self {
            seq,
            event_type,
            json,
            data: OnceLock::new(),
        }
    }

    /// Whether this frame ends the turn.
    pub fn is_done(&self) -> bool {
        self.event_type == "done"
    }

    /// The envelope's `data` (`null` if it has none). Parsed from the envelope on first use:
    /// most frames go to their subscribers as text and are never looked into.
    pub fn data(&self) -> &Value {
        self.data.get_or_init(|| {
            #[derive(Deserialize)]
            struct Data {
                #[serde(default)]
                data: Value,
            }
            serde_json::from_str::<Data>(&self.json)
                .map(|d| d.data)
                .unwrap_or(Value::Null)
        })
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
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a Value>,
}

/// Builds the public envelope for a driver event.
pub(crate) fn frame(session_id: &str, seq: i64, event: &Event) -> Frame {
    // The kind serializes as {"type", "data"}; its data goes into the envelope as printed, with
    // no value tree built in between (that was most of this function's time).
    #[derive(Deserialize)]
    struct Tagged<'a> {
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let kind = serde_json::to_string(&event.kind).unwrap_or_default();
    let data = serde_json::from_str::<Tagged<'_>>(&kind)
        .ok()
        .and_then(|t| t.data);
    let env = Envelope {
        kind: event.type_name(),
        source: "karta",
        session_id,
        seq,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, false),
        data,
        raw: event.raw.as_ref(),
    };
    let json = serde_json::to_string(&env).unwrap_or_else(|_| "{}".into());
    Frame::new(seq, event.type_name().to_string(), json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use karta_driver_api::EventKind;
    use serde_json::json;

    /// The envelope as it was built before frames skipped the value tree.
    fn through_a_value(session_id: &str, seq: i64, event: &Event, timestamp: &str) -> Value {
        let data = serde_json::to_value(&event.kind)
            .ok()
            .and_then(|mut v| v.get_mut("data").map(Value::take))
            .unwrap_or(Value::Null);
        let mut env = json!({"type": event.type_name(), "source": "karta",
            "session_id": session_id, "seq": seq, "timestamp": timestamp, "data": data});
        if let Some(raw) = &event.raw {
            env["raw"] = raw.clone();
        }
        env
    }

    #[test]
    fn a_frame_prints_the_same_envelope_as_a_value_tree_would_and_parses_data_on_demand() {
        let kinds = [
            json!({"type": "text", "data": {"part": {"type": "text", "text": "héllo \"you\"\n"}}}),
            json!({"type": "step_start", "data": {"step_index": 2}}),
            json!({"type": "custom", "data": {"type": "x-thing", "data": {"b": [1, 2.5, null], "a": {}}}}),
            json!({"type": "done", "data": {"status": "completed", "usage": {"input_tokens": 3, "output_tokens": 4}}}),
        ];
        for (i, k) in kinds.into_iter().enumerate() {
            let kind: EventKind = serde_json::from_value(k).unwrap();
            let mut event = Event::new(kind);
            if i == 1 {
                event = event.with_raw(json!({"harness": "said", "n": 1}));
            }
            let f = frame("sess_1", 40 + i as i64, &event);
            let printed: Value = serde_json::from_str(&f.json).unwrap();
            let ts = printed["timestamp"].as_str().unwrap().to_string();
            assert_eq!(
                printed,
                through_a_value("sess_1", 40 + i as i64, &event, &ts)
            );
            // Field order is the envelope's: type first (the log's readers rely on it).
            assert!(f
                .json
                .starts_with(&format!("{{\"type\":\"{}\"", event.type_name())));
            assert!(!f.json.contains('\n'), "one line: {}", f.json);
            assert_eq!(f.data(), &printed["data"]);
            assert_eq!(f.event_type, event.type_name());
        }
        // A frame read back from the log parses its data the same way.
        let f = Frame::new(
            7,
            "text".into(),
            r#"{"type":"text","data":{"part":{"text":"hi"}}}"#.into(),
        );
        assert_eq!(f.data()["part"]["text"], "hi");
        assert_eq!(
            Frame::new(8, "x".into(), "not json".into()).data(),
            &Value::Null
        );
    }
}

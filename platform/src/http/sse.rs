//! Server-sent events: `id:` (session sequence), `event:` (type), one `data:` line, and comment
//! keep-alives while the stream is idle.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::HttpResponse;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval_at, Instant, Interval};

use crate::runtime::{Frame, Runtime, TurnSubscription};

/// One SSE frame.
pub fn encode(f: &Frame) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        f.seq, f.event_type, f.json
    ))
}

/// The keep-alive comment.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

struct State {
    sub: TurnSubscription,
    runtime: Arc<Runtime>,
    heartbeat: Interval,
    period: Duration,
    last_seq: i64,
    pending: VecDeque<Arc<Frame>>,
    finished: bool,
}

impl State {
    fn emit(&mut self, f: &Frame) -> Bytes {
        self.last_seq = f.seq;
        if f.is_done() {
            self.finished = true;
        }
        self.heartbeat.reset_after(self.period);
        encode(f)
    }
}

/// Streams a turn's frames until `done`.
pub fn response(sub: TurnSubscription, runtime: Arc<Runtime>, period: Duration) -> HttpResponse {
    let state = State {
        last_seq: sub.after_seq,
        sub,
        runtime,
        heartbeat: interval_at(Instant::now() + period, period),
        period,
        pending: VecDeque::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.finished {
                return None;
            }
            if let Some(f) = st.pending.pop_front() {
                if f.seq <= st.last_seq {
                    continue;
                }
                let bytes = st.emit(&f);
                return Some((Ok::<_, actix_web::Error>(bytes), st));
            }
            tokio::select! {
                r = st.sub.rx.recv() => match r {
                    Ok(f) => {
                        if f.seq <= st.last_seq {
                            continue;
                        }
                        let bytes = st.emit(&f);
                        return Some((Ok(bytes), st));
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live channel: catch up from the event log.
                        match st.runtime.frames_after(&st.sub.org_id, &st.sub.session_id, st.last_seq).await {
                            Ok(frames) => st.pending.extend(frames),
                            Err(e) => {
                                tracing::error!(error = %e, "stream catch-up failed");
                                return None;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = st.heartbeat.tick() => {
                    return Some((Ok(Bytes::from_static(KEEPALIVE)), st));
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

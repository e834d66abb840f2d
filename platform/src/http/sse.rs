//! Server-sent events: `id:` (session sequence), `event:` (type), one `data:` line, and comment
//! keep-alives while the stream is idle (including while a turn waits for an approval).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::HttpResponse;
use tokio::time::{interval_at, Instant, Interval};

use crate::runtime::{Frame, Runtime, Subscription};

/// One SSE frame.
pub fn encode(f: &Frame) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        f.seq, f.event_type, f.json
    ))
}

/// The keep-alive comment.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// SSE responses being streamed now, by this process (the `sse_subscribers` gauge).
static OPEN: AtomicI64 = AtomicI64::new(0);

/// SSE responses being streamed now.
pub fn open_streams() -> i64 {
    OPEN.load(Ordering::Relaxed)
}

/// Counts one open SSE response until the body is dropped (ended or the client went away).
struct Open;

impl Open {
    fn new() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

struct State {
    _open: Open,
    sub: Subscription,
    runtime: Arc<Runtime>,
    heartbeat: Interval,
    period: Duration,
}

/// Streams a subscription until its turn is over.
pub fn response(sub: Subscription, runtime: Arc<Runtime>, period: Duration) -> HttpResponse {
    let state = State {
        _open: Open::new(),
        sub,
        runtime,
        heartbeat: interval_at(Instant::now() + period, period),
        period,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        tokio::select! {
            f = st.sub.next(&st.runtime) => {
                let f = f?;
                st.heartbeat.reset_after(st.period);
                Some((Ok::<_, actix_web::Error>(encode(&f)), st))
            }
            _ = st.heartbeat.tick() => Some((Ok(Bytes::from_static(KEEPALIVE)), st)),
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

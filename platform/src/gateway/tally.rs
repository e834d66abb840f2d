//! What the gateway counted for each session since its last turn ended: the source of truth for
//! metering where calls went through it. A call is counted when its answer ends, which can be
//! just after the harness has reported the turn done, so [`Tally::settle`] waits (bounded) for
//! the session's calls in flight before handing the counts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::usage::Tokens;

/// One counted call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedCall {
    /// `anthropic` or `openai`.
    pub provider: String,
    /// The model asked for (or answered, when the request named none).
    pub model: String,
    /// Its tokens.
    pub tokens: Tokens,
    /// Paid with the org's own key.
    pub byok: bool,
}

#[derive(Default)]
struct SessionCalls {
    in_flight: usize,
    done: Vec<CountedCall>,
}

/// Counted calls by session.
#[derive(Default)]
pub struct Tally {
    sessions: Mutex<HashMap<String, SessionCalls>>,
    ended: Notify,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionCalls>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call of the session is on its way.
    pub fn begin(&self, session_id: &str) {
        self.lock()
            .entry(session_id.to_string())
            .or_default()
            .in_flight += 1;
    }

    /// A call of the session ended; its count when it was metered.
    pub fn end(&self, session_id: &str, call: Option<CountedCall>) {
        {
            let mut m = self.lock();
            let s = m.entry(session_id.to_string()).or_default();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.done.extend(call);
        }
        self.ended.notify_waiters();
    }

    /// Takes the session's counted calls once none is in flight, or after `wait` with what has
    /// ended by then; and whether calls were still in flight (they are counted with the next
    /// turn).
    pub async fn settle(&self, session_id: &str, wait: Duration) -> (Vec<CountedCall>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ended = self.ended.notified();
            {
                let mut m = self.lock();
                let Some(s) = m.get_mut(session_id) else {
                    return (Vec::new(), false);
                };
                if s.in_flight == 0 || tokio::time::Instant::now() >= deadline {
                    let calls = std::mem::take(&mut s.done);
                    let pending = s.in_flight > 0;
                    if !pending {
                        m.remove(session_id);
                    }
                    return (calls, pending);
                }
            }
            let _ = tokio::time::timeout_at(deadline, ended).await;
        }
    }

    /// Forgets a closed session's counts.
    pub fn forget(&self, session_id: &str) {
        self.lock().remove(session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: i64) -> CountedCall {
        CountedCall {
            provider: "anthropic".into(),
            model: "m".into(),
            tokens: Tokens {
                input: n,
                ..Default::default()
            },
            byok: false,
        }
    }

    #[tokio::test]
    async fn settle_waits_for_calls_in_flight_but_not_forever() {
        let t = std::sync::Arc::new(Tally::default());
        assert_eq!(t.settle("s", Duration::from_secs(5)).await, (vec![], false));
        t.begin("s");
        t.begin("s");
        t.end("s", Some(call(1)));
        let t2 = t.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            t2.end("s", Some(call(2)));
        });
        let calls = t.settle("s", Duration::from_secs(5)).await;
        assert_eq!(calls, (vec![call(1), call(2)], false));
        late.await.unwrap();
        // A call that never ends is left for the next turn after the wait.
        t.begin("s");
        let started = std::time::Instant::now();
        assert_eq!(
            t.settle("s", Duration::from_millis(50)).await,
            (vec![], true)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        t.end("s", Some(call(3)));
        assert_eq!(
            t.settle("s", Duration::from_secs(5)).await,
            (vec![call(3)], false)
        );
        t.forget("s");
        assert!(t.lock().is_empty());
    }
}

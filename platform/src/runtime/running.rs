//! A running turn's state: the driver's handle, the approval it waits for, tools approved for the
//! session, cancellation, and the frames published so far (the live buffer that replay merges
//! with the stored log while the journal catches up).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use karta_driver_api::{Decision, DecisionKind, Event, HostTurn};
use tokio::sync::{broadcast, mpsc};

use super::events::Frame;

/// Frames a slow subscriber may fall behind before it re-reads the live buffer (allocated up
/// front for every running turn, so kept small: catching up from the buffer is cheap).
pub(crate) const BROADCAST_CAPACITY: usize = 64;

/// An approval the turn waits for.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    /// The id clients see (`req_...`).
    pub(crate) public_id: String,
    /// The driver's own id for it.
    pub(crate) driver_id: String,
    pub(crate) options: Vec<DecisionKind>,
    pub(crate) tool: Option<String>,
}

/// Messages to the pump from outside the driver (timeouts).
pub(crate) enum Control {
    Publish(Event),
}

/// A running turn.
pub(crate) struct Running {
    pub(crate) tx: broadcast::Sender<Arc<Frame>>,
    pub(crate) control: mpsc::Sender<Control>,
    pub(crate) handle: Mutex<Option<HostTurn>>,
    pending: Mutex<Option<Pending>>,
    pub(crate) approved_tools: Mutex<BTreeSet<String>>,
    pub(crate) cancelled: AtomicBool,
    /// The session's sequence before this turn.
    pub(crate) start_seq: i64,
    /// The agent the turn runs.
    pub(crate) agent: String,
    /// Frames published by this turn, oldest first, at most `buffer_cap`.
    buffer: Mutex<VecDeque<Arc<Frame>>>,
    buffer_cap: usize,
    /// The provider and model the turn's last step named, for its usage record.
    step_model: Mutex<Option<(Option<String>, String)>>,
}

impl Running {
    pub(crate) fn new(
        start_seq: i64,
        agent: String,
        approved_tools: BTreeSet<String>,
        buffer_cap: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Control>) {
        // Controls are rare (one per expired prompt); a handful of slots is plenty.
        let (control, control_rx) = mpsc::channel(8);
        let running = Arc::new(Running {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            control,
            handle: Mutex::new(None),
            pending: Mutex::new(None),
            approved_tools: Mutex::new(approved_tools),
            cancelled: AtomicBool::new(false),
            start_seq,
            agent,
            buffer: Mutex::new(VecDeque::new()),
            buffer_cap: buffer_cap.max(1),
            step_model: Mutex::new(None),
        });
        (running, control_rx)
    }

    /// Remembers the model a step ran on.
    pub(crate) fn note_step_model(&self, provider: Option<&str>, model: &str) {
        *self.step_model.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((provider.map(str::to_string), model.to_string()));
    }

    /// The provider (when named) and model the turn's last step named.
    pub(crate) fn step_model(&self) -> Option<(Option<String>, String)> {
        self.step_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn pending(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a frame to every subscriber and keeps it for late and lagging ones. The buffer is
    /// written under its lock before the broadcast, so a subscriber that subscribes and then reads
    /// the buffer misses nothing.
    pub(crate) fn publish(&self, f: Arc<Frame>) {
        {
            let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            if b.len() == self.buffer_cap {
                b.pop_front();
            }
            b.push_back(f.clone());
        }
        let _ = self.tx.send(f);
    }

    /// Buffered frames with `seq > after`, and whether the buffer reaches back to `after + 1`
    /// (otherwise the stored log holds what came before the first one returned).
    pub(crate) fn buffered_after(&self, after: i64) -> (Vec<Arc<Frame>>, bool) {
        let b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let complete = match b.front() {
            Some(first) => first.seq <= after + 1,
            // Nothing published yet: complete once the stored log has been read to the start.
            None => after >= self.start_seq,
        };
        let start = b.partition_point(|f| f.seq <= after);
        (b.range(start..).cloned().collect(), complete)
    }

    /// The sequence number of the last frame published (the turn's start before any).
    pub(crate) fn last_seq(&self) -> i64 {
        let b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        b.back().map(|f| f.seq).unwrap_or(self.start_seq)
    }

    /// Subscribes to live frames.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }

    /// Hands a decision to the driver, off the async workers (a driver may answer over HTTP).
    pub(crate) async fn decide(
        self: &Arc<Self>,
        driver_id: &str,
        decision: DecisionKind,
        message: Option<String>,
    ) -> Result<(), String> {
        let me = self.clone();
        let driver_id = driver_id.to_string();
        tokio::task::spawn_blocking(move || {
            let handle = me.handle.lock().unwrap_or_else(|p| p.into_inner());
            match handle.as_ref() {
                Some(h) => h.resolve_input(&driver_id, &Decision::new(decision, message)),
                None => Err("the turn has no harness handle".into()),
            }
        })
        .await
        .map_err(|e| format!("the driver panicked: {e}"))?
    }

    /// Marks the turn cancelled at once and asks the driver to stop it, off the async workers.
    pub(crate) fn cancel_soon(self: &Arc<Self>) {
        self.cancelled.store(true, Ordering::SeqCst);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.cancel());
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.cancel();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: i64) -> Arc<Frame> {
        Arc::new(Frame::new(seq, "text".into(), "{}".into()))
    }

    #[test]
    fn the_live_buffer_is_bounded_and_says_when_it_is_incomplete() {
        let (r, _) = Running::new(10, "default".into(), BTreeSet::new(), 3);
        for seq in 11..=15 {
            r.publish(frame(seq));
        }
        let (frames, complete) = r.buffered_after(10);
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [13, 14, 15]
        );
        assert!(!complete, "11 and 12 fell out of the buffer");
        let (frames, complete) = r.buffered_after(13);
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [14, 15]);
        assert!(complete);
    }
}

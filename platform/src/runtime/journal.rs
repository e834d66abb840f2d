//! The replay log's writer: one thread per instance that group-commits events.
//!
//! The live path never waits for the database: the pump broadcasts frames to subscribers first
//! and then queues them here, a run at a time (what the driver sent within a few
//! milliseconds; a quick turn's whole run goes with its `done`). The writer
//! takes everything queued (up to a batch of events) and writes it in one transaction: the
//! events, each session's new `last_seq`, pruning past the retention, and the small session
//! updates a turn queues beside its events (who sent it, a handoff). The queue is bounded, so a
//! database slower than the drivers pushes back on the pumps (and the pumps on the drivers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::models::SessionEvent;
use crate::store::{events, Conn, Store, StoreError};

/// A session update run inside the writer's transaction, after the events of its batch (so it
/// may not read the event log or `last_seq`), in queue order with the other updates.
/// `Fn`, not `FnOnce`: a batch whose transaction failed is run again with each update isolated.
pub type SessionOp = Box<dyn Fn(&mut Conn) -> Result<(), StoreError> + Send>;

/// What one queue slot carries.
enum Entry {
    /// Events of one turn, in sequence order, and who wants to know when they are committed.
    Events {
        rows: Vec<SessionEvent>,
        /// Run in the same transaction after the batch's rows, in queue order with the other
        /// updates (a turn's lease release with its `done`).
        then: Option<SessionOp>,
        ack: Option<oneshot::Sender<()>>,
    },
    /// A session update.
    Op(SessionOp),
}

/// Queue sizes and retention of the writer.
#[derive(Clone, Copy, Debug)]
pub struct JournalLimits {
    /// Queue slots (a run of events or an update each) before pumps wait
    /// (`runtime.journal_queue`).
    pub queue: usize,
    /// Events written per transaction at most (`runtime.journal_batch`).
    pub batch: usize,
}

/// Handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Entry>,
    retention: Arc<AtomicU64>,
}

impl Journal {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store, limits: JournalLimits, retention: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let retention = Arc::new(AtomicU64::new(retention.max(1)));
        let r = retention.clone();
        let batch = limits.batch.max(1);
        std::thread::Builder::new()
            .name("karta-journal".into())
            .spawn(move || writer(store, rx, batch, r))?;
        Ok(Self { tx, retention })
    }

    /// Changes the number of events kept per session (a reload).
    pub fn set_retention(&self, events: u64) {
        self.retention.store(events.max(1), Ordering::Relaxed);
    }

    async fn send(&self, entry: Entry) -> bool {
        if self.tx.send(entry).await.is_err() {
            tracing::error!("the event writer is gone; events are not logged for replay");
            return false;
        }
        true
    }

    /// Queues a run of events; waits only while the queue is full.
    pub async fn append(&self, rows: Vec<SessionEvent>) {
        if !rows.is_empty() {
            self.send(Entry::Events {
                rows,
                then: None,
                ack: None,
            })
            .await;
        }
    }

    /// Queues a run of events and `then`, run in the same transaction after them; waits only
    /// while the queue is full.
    pub async fn append_then(&self, rows: Vec<SessionEvent>, then: SessionOp) {
        self.send(Entry::Events {
            rows,
            then: Some(then),
            ack: None,
        })
        .await;
    }

    /// Queues a run of events (and `then`, run in the same transaction after them) and waits
    /// until it and everything queued before it is committed.
    pub async fn append_durable(&self, rows: Vec<SessionEvent>, then: Option<SessionOp>) {
        let (ack, done) = oneshot::channel();
        let entry = Entry::Events {
            rows,
            then,
            ack: Some(ack),
        };
        if self.send(entry).await {
            // An error means the writer dropped the ack without committing (logged there).
            let _ = done.await;
        }
    }

    /// Queues a session update; it is committed with the next batch, in queue order.
    pub async fn update(&self, op: SessionOp) {
        self.send(Entry::Op(op)).await;
    }
}

fn writer(store: Store, mut rx: mpsc::Receiver<Entry>, batch: usize, retention: Arc<AtomicU64>) {
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut events = count(&first);
        entries.push(first);
        while events < batch {
            match rx.try_recv() {
                Ok(e) => {
                    events += count(&e);
                    entries.push(e);
                }
                Err(_) => break,
            }
        }
        let keep = retention.load(Ordering::Relaxed);
        // Entries run plainly (a savepoint each costs PostgreSQL two round trips); if the batch
        // fails, it runs again with each entry in a savepoint, so one bad entry cannot cost the
        // others.
        let result = store
            .write(|c| write_batch(c, &entries, keep, false))
            .or_else(|e| {
                tracing::warn!(error = %e, "event batch failed; retrying with each update isolated");
                store.write(|c| write_batch(c, &entries, keep, true))
            });
        match result {
            Ok(()) => {
                crate::metrics::get().event_log_writes.inc_by(events as u64);
            }
            Err(e) => {
                crate::metrics::get().event_log_failures.inc();
                // Subscribers already have these events; only replay loses them.
                tracing::error!(events, error = %e, "events not logged for replay");
            }
        }
        for e in entries.drain(..) {
            if let Entry::Events { ack: Some(ack), .. } = e {
                let _ = ack.send(());
            }
        }
    }
}

/// Writes a batch: all its events, then its updates in queue order. With
/// `isolate`, every entry (a run of events with its update, or an update) goes in a savepoint
/// of its own, so one that fails costs only itself.
fn write_batch(
    c: &mut Conn,
    entries: &[Entry],
    keep: u64,
    isolate: bool,
) -> Result<(), StoreError> {
    if isolate {
        for e in entries {
            let r = c.transaction(|c| match e {
                Entry::Events { rows, then, .. } => {
                    let rows: Vec<&SessionEvent> = rows.iter().collect();
                    events::append_batch(c, &rows, keep)?;
                    then.as_ref().map_or(Ok(()), |op| op(c))
                }
                Entry::Op(op) => op(c),
            });
            if let Err(e) = r {
                tracing::error!(error = %e, "an event run or session update was not saved");
            }
        }
        return Ok(());
    }
    // No update reads the log or `last_seq`, so the batch's events go first, all together (one
    // `last_seq` update per session per batch, not per run), then the updates in queue order;
    // everything commits at once.
    let rows: Vec<&SessionEvent> = entries
        .iter()
        .flat_map(|e| match e {
            Entry::Events { rows, .. } => rows.as_slice(),
            Entry::Op(_) => &[],
        })
        .collect();
    events::append_batch(c, &rows, keep)?;
    for e in entries {
        match e {
            Entry::Events { then: Some(op), .. } | Entry::Op(op) => op(c)?,
            Entry::Events { then: None, .. } => {}
        }
    }
    Ok(())
}

fn count(e: &Entry) -> usize {
    match e {
        Entry::Events { rows, .. } => rows.len(),
        Entry::Op(_) => 0,
    }
}

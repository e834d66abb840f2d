//! The replay log's writer: one thread per instance that group-commits events.
//!
//! The live path never waits for the database: the pump broadcasts a frame to subscribers first
//! and then queues it here. The writer takes everything queued (up to a batch) and writes it in
//! one transaction: the events, each session's new `last_seq`, and pruning past the retention.
//! The queue is bounded, so a database slower than the drivers pushes back on the pump (and the
//! pump on the driver threads) instead of growing memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::models::SessionEvent;
use crate::store::{events, Store};

/// One event to persist, and who wants to know when it is durable.
struct Entry {
    row: SessionEvent,
    ack: Option<oneshot::Sender<()>>,
}

/// Queue sizes and retention of the writer.
#[derive(Clone, Copy, Debug)]
pub struct JournalLimits {
    /// Events queued before the pump waits (`runtime.journal_queue`).
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
        let retention = Arc::new(AtomicU64::new(retention));
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

    /// Queues an event; waits only while the queue is full.
    pub async fn append(&self, row: SessionEvent) {
        if self.tx.send(Entry { row, ack: None }).await.is_err() {
            tracing::error!("event writer is gone; the event is not logged for replay");
        }
    }

    /// Queues an event and waits until it (and everything queued before it) is committed.
    pub async fn append_durable(&self, row: SessionEvent) {
        let (ack, done) = oneshot::channel();
        let entry = Entry {
            row,
            ack: Some(ack),
        };
        if self.tx.send(entry).await.is_err() {
            tracing::error!("event writer is gone; the event is not logged for replay");
            return;
        }
        // An error means the writer dropped the ack without committing (logged there).
        let _ = done.await;
    }
}

fn writer(store: Store, mut rx: mpsc::Receiver<Entry>, batch: usize, retention: Arc<AtomicU64>) {
    let mut entries: Vec<Entry> = Vec::with_capacity(batch);
    while let Some(first) = rx.blocking_recv() {
        entries.push(first);
        while entries.len() < batch {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let keep = retention.load(Ordering::Relaxed);
        let rows: Vec<&SessionEvent> = entries.iter().map(|e| &e.row).collect();
        if let Err(e) = store.write(|c| events::append_batch(c, &rows, keep)) {
            // Subscribers already have these events; only replay loses them.
            tracing::error!(events = rows.len(), error = %e, "events not logged for replay");
        }
        for e in entries.drain(..) {
            if let Some(ack) = e.ack {
                let _ = ack.send(());
            }
        }
    }
}

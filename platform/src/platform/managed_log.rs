//! The Managed Agents adapter's log service: numbers and stores each session's entries, and
//! wakes the streams that follow the session when entries arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::adapters::managed::entry;
use crate::store::managed_events::{self, Entry};
use crate::store::{Store, StoreError};

/// Sessions whose channels are kept before idle ones are dropped.
const CHANNELS_KEPT: usize = 1024;

/// A session's writer lock (numbering is per session) and its followers' wake-up.
#[derive(Default)]
pub struct Channel {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Woken after every append.
    pub notify: tokio::sync::Notify,
}

/// Exclusive use of one session's log.
pub struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    chan: Arc<Channel>,
    session_id: String,
}

/// Every session's log.
pub struct ManagedLog {
    store: Store,
    /// Entries kept per session (the oldest go).
    keep: i64,
    channels: Mutex<HashMap<String, Arc<Channel>>>,
}

impl ManagedLog {
    /// A log over `store`, keeping the last `keep` entries of each session.
    pub fn new(store: Store, keep: u64) -> Self {
        ManagedLog {
            store,
            keep: i64::try_from(keep.max(1)).unwrap_or(i64::MAX),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The session's channel (made on first use; idle ones are dropped past a bound).
    pub fn channel(&self, session_id: &str) -> Arc<Channel> {
        let mut chans = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if chans.len() >= CHANNELS_KEPT && !chans.contains_key(session_id) {
            chans.retain(|_, c| Arc::strong_count(c) > 1);
        }
        chans.entry(session_id.to_string()).or_default().clone()
    }

    /// Holds the session's log: nothing else is appended until the hold is dropped (so an
    /// answer and its entries cannot be overtaken by the turn's next entries).
    pub async fn hold(&self, session_id: &str) -> Held {
        let chan = self.channel(session_id);
        let guard = chan.lock.clone().lock_owned().await;
        Held {
            _guard: guard,
            chan,
            session_id: session_id.to_string(),
        }
    }

    /// Appends the entries `make` returns, numbered from the session's next sequence number
    /// (which `make` is given), and wakes the session's followers. Returns the last number.
    pub async fn append(
        &self,
        org_id: &str,
        session_id: &str,
        make: impl FnOnce(i64) -> Vec<(&'static str, Value)>,
    ) -> Result<i64, StoreError> {
        let held = self.hold(session_id).await;
        self.append_held(org_id, &held, make).await
    }

    /// [`ManagedLog::append`] under a hold already taken.
    pub async fn append_held(
        &self,
        org_id: &str,
        held: &Held,
        make: impl FnOnce(i64) -> Vec<(&'static str, Value)>,
    ) -> Result<i64, StoreError> {
        let (chan, session_id) = (&held.chan, held.session_id.as_str());
        let sid = session_id.to_string();
        let last = self
            .store
            .read_async(move |c| managed_events::last_seq(c, &sid))
            .await?;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let entries: Vec<Entry> = make(last + 1)
            .into_iter()
            .zip(last + 1..)
            .map(|((kind, fields), seq)| {
                let e = entry(session_id, seq, kind, &at, fields);
                (seq, kind.to_string(), e.to_string())
            })
            .collect();
        let Some((end, _, _)) = entries.last() else {
            return Ok(last);
        };
        let end = *end;
        let (org, sid, keep) = (org_id.to_string(), session_id.to_string(), self.keep);
        self.store
            .write_async(move |c| managed_events::append(c, &org, &sid, &entries, keep))
            .await?;
        chan.notify.notify_waiters();
        Ok(end)
    }

    /// The session's entries after `after`, oldest first, at most `limit`.
    pub async fn after(
        &self,
        org_id: &str,
        session_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let (org, sid) = (org_id.to_string(), session_id.to_string());
        self.store
            .read_async(move |c| managed_events::after(c, &org, &sid, after, limit))
            .await
    }

    /// The type of the session's last `session.status_*` entry.
    pub async fn last_status(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        let sid = session_id.to_string();
        self.store
            .read_async(move |c| managed_events::last_status(c, &sid))
            .await
    }
}

//! Sessions and turns: the service layer between the HTTP handlers and the drivers.
//!
//! A turn's events flow driver -> channel -> one pump task per turn, which numbers them with the
//! session's sequence, writes them to the replay log, and broadcasts them to every subscriber. The
//! pump owns the turn: a client that disconnects does not stop it. Turns on one session are
//! serialized by the session's slot lock; approvals pause a turn until a decision arrives.

pub mod app_settings;
mod events;
mod sessions;
mod turns;
mod workspace;

pub use app_settings::{AppSettings, PermissionMode, Policy};
pub use events::Frame;
pub use sessions::{CreateSession, ListSessions, ProjectRef, SessionPage, SessionView};
pub use turns::{SendMessage, Subscription, TurnOutcome};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::drivers::DriverRegistry;
use crate::store::{Store, StoreError};

/// Service errors, mapped to HTTP statuses by the handlers.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such session/project/request in the caller's scope.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A turn is already running on the session.
    #[error("session busy")]
    Busy,
    /// The request conflicts with the resource's state (closed session, resolved input, ...).
    #[error("{0}")]
    Conflict(String),
    /// A request field is invalid: (location, message).
    #[error("{1}")]
    Invalid(Vec<String>, String),
    /// The harness cannot run now.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RuntimeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => RuntimeError::NotFound("session"),
            other => RuntimeError::Store(other),
        }
    }
}

/// Runtime settings that a reload may change.
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Where session workspaces are created.
    pub data_dir: PathBuf,
    /// Events kept per session.
    pub event_log_retention: u64,
    /// How long a turn waits for an approval.
    pub input_timeout: Duration,
    /// Provider credentials and endpoints for harness processes (`ANTHROPIC_API_KEY`, ...).
    pub provider_env: std::collections::BTreeMap<String, String>,
}

/// The session runtime.
pub struct Runtime {
    store: Store,
    drivers: Arc<DriverRegistry>,
    settings: Mutex<RuntimeSettings>,
    slots: Mutex<HashMap<String, Arc<turns::Slot>>>,
}

impl Runtime {
    /// A runtime over the store and drivers.
    pub fn new(store: Store, drivers: Arc<DriverRegistry>, settings: RuntimeSettings) -> Self {
        Self {
            store,
            drivers,
            settings: Mutex::new(settings),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the reloadable settings.
    pub fn update_settings(&self, settings: RuntimeSettings) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    fn settings(&self) -> RuntimeSettings {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session's slot (its turn lock and running turn), created on first use.
    fn slot(&self, session_id: &str) -> Arc<turns::Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(session_id.to_string())
            .or_insert_with(|| Arc::new(turns::Slot::default()))
            .clone()
    }

    /// Forgets an idle slot nobody else holds, so the map does not grow with every session ever
    /// used. Clones are only made under the map lock, so the count is exact here.
    fn forget_slot(&self, session_id: &str, slot: Arc<turns::Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's.
        if Arc::strong_count(&slot) == 2 && slot.is_idle() {
            slots.remove(session_id);
        }
    }

    /// The slot, only if it exists (no turn has run here since start otherwise).
    fn existing_slot(&self, session_id: &str) -> Option<Arc<turns::Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(session_id).cloned()
    }
}

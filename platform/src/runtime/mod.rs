//! Sessions and turns: the service layer between the HTTP handlers and the drivers.
//!
//! A turn's events flow driver -> channel -> one pump task per turn, which numbers them with the
//! session's sequence, writes them to the replay log, and broadcasts them to every subscriber. The
//! pump owns the turn: a client that disconnects does not stop it.

mod events;
mod sessions;
mod turns;

pub use events::Frame;
pub use sessions::{CreateSession, SessionView};
pub use turns::{SendMessage, TurnSubscription};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::drivers::DriverRegistry;
use crate::store::{Store, StoreError};

/// Service errors, mapped to HTTP statuses by the handlers.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such session/project in the caller's org.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A turn is already running on the session.
    #[error("session busy")]
    Busy,
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
}

/// The session runtime.
pub struct Runtime {
    store: Store,
    drivers: Arc<DriverRegistry>,
    settings: Mutex<RuntimeSettings>,
    live: Mutex<HashMap<String, Arc<turns::LiveSession>>>,
}

impl Runtime {
    /// A runtime over the store and drivers.
    pub fn new(store: Store, drivers: Arc<DriverRegistry>, settings: RuntimeSettings) -> Self {
        Self {
            store,
            drivers,
            settings: Mutex::new(settings),
            live: Mutex::new(HashMap::new()),
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

    /// Marks the session busy; `None` when a turn already runs on it.
    fn claim(&self, session_id: &str) -> Option<Arc<turns::LiveSession>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.contains_key(session_id) {
            return None;
        }
        let state = Arc::new(turns::LiveSession::new());
        live.insert(session_id.to_string(), state.clone());
        Some(state)
    }

    /// Marks the session idle again.
    fn release(&self, session_id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(session_id);
    }
}

//! Per-session serialization: the lock a turn holds from start to `done`, and the running turn.

use std::sync::{Arc, Mutex};

use super::running::Running;

/// Per-session state: the lock that serializes turns, and the running turn if any.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
    running: Mutex<Option<Arc<Running>>>,
}

impl Slot {
    /// The running turn, if one runs.
    pub(crate) fn running(&self) -> Option<Arc<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// No turn runs and nobody waits for the lock.
    pub(crate) fn is_idle(&self) -> bool {
        self.running().is_none() && self.lock.try_lock().is_ok()
    }

    pub(crate) fn set_running(&self, r: Option<Arc<Running>>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
}

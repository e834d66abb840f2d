//! Sessions and turns: the service layer between the HTTP handlers and the drivers.
//!
//! A turn's events flow driver -> bounded channel -> one pump task per turn, which numbers them
//! with the session's sequence, broadcasts them to every subscriber and keeps them in the turn's
//! live buffer, then queues them for the journal, which group-commits the replay log. The pump
//! owns the turn: a client that disconnects does not stop it. Turns on one session are
//! serialized by the session's slot lock; approvals pause a turn until a decision arrives.
//!
//! Files: `turns` (starting a turn), `pump` (the event pump), `running` (a running turn's
//! state), `slot` (per-session serialization), `approvals`, `subscription` (replay + live tail),
//! `journal` (the log writer), `events` (the public envelope), `sessions`, `workspace`.

pub mod app_settings;
mod approvals;
pub mod budget;
mod concurrency;
mod events;
pub mod hooks;
pub mod journal;
pub(crate) mod meter;
pub mod policy;
mod pump;
mod running;
mod sessions;
mod settings_cache;
mod slot;
mod start;
mod subscription;
mod turns;
pub mod warm;
mod workspace;

pub use app_settings::{AppSettings, PermissionMode, Policy};
pub use events::Frame;
pub use sessions::{CreateSession, ListSessions, ProjectRef, SessionPage, SessionView};
pub use subscription::{StreamRoom, Subscription, TurnOutcome};
pub use turns::SendMessage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::drivers::DriverRegistry;
use crate::store::{Store, StoreError};
use journal::Journal;

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
    /// A bound on the caller was reached (retry later).
    #[error("{0}")]
    TooMany(String),
    /// The caller's credential may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A message policy refused the message.
    #[error("{}", .0.detail)]
    Policy(policy::Violation),
    /// A monthly budget is used up (the reason names the cap).
    #[error("{0}")]
    Budget(String),
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
    /// Network and limits of a harness unless its project sets its own.
    pub sandbox: ProjectSandbox,
    /// Projects (by id) with a sandbox network or limits of their own.
    pub project_sandbox: HashMap<String, ProjectSandbox>,
    /// Message policies by project id.
    pub message_policies: HashMap<String, Vec<Arc<policy::MessagePolicy>>>,
    /// Turns that may run at once, by org id and by project id.
    pub concurrent_turns: HashMap<String, usize>,
    /// Streams (`GET .../events`, resumes, streamed sends) that may be attached at once, by org
    /// id and by project id.
    pub concurrent_streams: HashMap<String, usize>,
    /// Monthly caps (`[[budgets]]`), by org id and by project id.
    pub budgets: HashMap<String, budget::Caps>,
    /// `[[prices]]`.
    pub prices: Arc<crate::platform::pricing::PriceTable>,
    /// Lifecycle hooks by project id.
    pub hooks: HashMap<String, Vec<hooks::Hook>>,
    /// Warm harnesses at most, by org id (instead of `warm.per_tenant`) and by project id.
    pub warm_harnesses: HashMap<String, usize>,
    /// Events a driver may queue ahead of the pump before its thread waits.
    pub turn_event_queue: usize,
    /// Events read from the replay log per query.
    pub replay_page_size: i64,
    /// Turn deadline and cancel grace unless a project sets its own.
    pub turn_limits: TurnLimits,
    /// Projects (by id) with limits of their own.
    pub project_turn_limits: HashMap<String, TurnLimits>,
    /// Largest metadata value, as JSON.
    pub metadata_max_value_bytes: usize,
    /// Largest metadata of a session, as JSON.
    pub metadata_max_bytes: usize,
    /// Caps on warm harnesses.
    pub warm: warm::WarmLimits,
    /// Streams attached to one session at once (`GET .../events`, `Last-Event-ID`).
    pub max_streams_per_session: usize,
}

/// How long a turn may run (time paused for an approval not counted), and how long a cancelled
/// one gets to end itself before the host ends it and stops the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnLimits {
    /// The deadline.
    pub timeout: Duration,
    /// The grace after a cancel.
    pub grace: Duration,
}

/// A harness's network and limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProjectSandbox {
    /// What it can reach.
    pub network: crate::sandbox::NetworkMode,
    /// Its limits.
    pub limits: crate::sandbox::SandboxLimits,
}

/// What confines harnesses and feeds them models: the sandbox host and the model gateway.
#[derive(Clone)]
pub struct Confinement {
    /// The sandbox host.
    pub sandbox: Arc<crate::sandbox::SandboxHost>,
    /// The model gateway.
    pub gateway: Arc<crate::gateway::Gateway>,
}

/// The session runtime.
pub struct Runtime {
    store: Store,
    drivers: Arc<DriverRegistry>,
    settings: RwLock<Arc<RuntimeSettings>>,
    slots: Mutex<HashMap<String, Arc<slot::Slot>>>,
    journal: Journal,
    app_settings: settings_cache::SettingsCache,
    /// This process's name in turn leases.
    instance_id: String,
    /// Sessions whose harness may be warm.
    warm: warm::WarmSet,
    /// Attached streams per session.
    streams: Arc<Mutex<HashMap<String, usize>>>,
    /// Sandboxes and the model gateway.
    confinement: Confinement,
    /// Running turns per tenant and project.
    turn_counts: Arc<concurrency::ScopeCounts>,
    /// Attached streams per tenant and project.
    stream_counts: Arc<concurrency::ScopeCounts>,
    /// What running turns have reserved of their budgets.
    reservations: Arc<budget::Reservations>,
    /// The budgets used up, for the model gateway.
    budget_gate: budget::BudgetGate,
    /// Orgs with an enabled webhook endpoint: their sessions and turns are written to the event
    /// outbox (nobody else's are, so orgs without webhooks pay nothing for them).
    webhook_orgs: std::sync::OnceLock<Arc<crate::platform::webhooks::Subscribed>>,
    /// The hook queue (started with the first hook).
    hook_runner: std::sync::OnceLock<hooks::Runner>,
}

impl Runtime {
    /// A runtime over the store and drivers; starts the journal's writer thread.
    pub fn new(
        store: Store,
        drivers: Arc<DriverRegistry>,
        settings: RuntimeSettings,
        journal: journal::JournalLimits,
        confinement: Confinement,
    ) -> std::io::Result<Self> {
        let journal = Journal::start(store.clone(), journal, settings.event_log_retention)?;
        Ok(Self {
            store,
            drivers,
            settings: RwLock::new(Arc::new(settings)),
            slots: Mutex::new(HashMap::new()),
            journal,
            app_settings: settings_cache::SettingsCache::default(),
            instance_id: crate::store::new_id("inst"),
            warm: warm::WarmSet::default(),
            streams: Arc::new(Mutex::new(HashMap::new())),
            confinement,
            turn_counts: Arc::default(),
            stream_counts: Arc::default(),
            reservations: Arc::default(),
            budget_gate: budget::BudgetGate::default(),
            webhook_orgs: std::sync::OnceLock::new(),
            hook_runner: std::sync::OnceLock::new(),
        })
    }

    /// Queues the project's hooks on `event` (nothing when it has none; never waits).
    pub(crate) fn fire_hooks(
        &self,
        event: &str,
        session: &crate::store::models::Session,
        data: serde_json::Value,
    ) {
        let settings = self.settings();
        let Some(list) = settings.hooks.get(&session.project_id) else {
            return;
        };
        for h in list.iter().filter(|h| h.event == event) {
            let place = matches!(h.target, hooks::Target::Command(_)).then(|| {
                let sb = settings
                    .project_sandbox
                    .get(&session.project_id)
                    .unwrap_or(&settings.sandbox);
                let workspace = self.workspace_dir(&session.org_id, &session.id);
                let mut home = workspace.clone().into_os_string();
                home.push(".home");
                hooks::Place {
                    sandbox: self.confinement.sandbox.clone(),
                    store: self.store.clone(),
                    network: sb.network,
                    limits: sb.limits.clone(),
                    workspace,
                    home: PathBuf::from(home),
                }
            });
            let runner = self
                .hook_runner
                .get_or_init(|| Arc::new(hooks::HookRunner::start(self.store.clone())));
            runner.fire(hooks::Job {
                hook: h.clone(),
                org_id: session.org_id.clone(),
                project_id: session.project_id.clone(),
                session_id: session.id.clone(),
                payload: hooks::payload(event, &session.id, &session.project_id, data.clone()),
                place,
            });
        }
    }

    /// Installs the set of orgs whose sessions and turns become webhook events.
    pub fn set_webhook_orgs(&self, orgs: Arc<crate::platform::webhooks::Subscribed>) {
        let _ = self.webhook_orgs.set(orgs);
    }

    /// Whether the org's sessions and turns become webhook events.
    pub(crate) fn webhook_org(&self, org_id: &str) -> bool {
        self.webhook_orgs.get().is_some_and(|s| s.contains(org_id))
    }

    /// The model gateway's hook that refuses calls of sessions whose budget is used up.
    pub fn budget_gate(&self) -> budget::BudgetGate {
        self.budget_gate.clone()
    }

    /// Replaces the reloadable settings.
    pub fn update_settings(&self, settings: RuntimeSettings) {
        self.journal.set_retention(settings.event_log_retention);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// The settings in force (shared, never cloned per event).
    fn settings(&self) -> Arc<RuntimeSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session's slot (its turn lock and running turn), created on first use.
    fn slot(&self, session_id: &str) -> Arc<slot::Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(session_id.to_string())
            .or_insert_with(|| Arc::new(slot::Slot::default()))
            .clone()
    }

    /// Forgets an idle slot nobody else holds, so the map does not grow with every session ever
    /// used. Clones are only made under the map lock, so the count is exact here.
    fn forget_slot(&self, session_id: &str, slot: Arc<slot::Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's.
        if Arc::strong_count(&slot) == 2 && slot.is_idle() {
            slots.remove(session_id);
        }
    }

    /// Stops the session's harness (blocking driver call, on the blocking pool) and ends its
    /// gateway token.
    pub(crate) async fn end_harness(
        &self,
        driver: &Arc<crate::drivers::LoadedDriver>,
        session_id: &str,
    ) {
        let (d, sid) = (driver.clone(), session_id.to_string());
        let _ = tokio::task::spawn_blocking(move || d.driver.end_session(&sid)).await;
        self.confinement.gateway.grants.revoke(session_id);
    }

    /// Live sessions (held in memory: a turn runs, is queued or is followed), running turns,
    /// warm harnesses and live gateway tokens, for metrics.
    pub fn gauges(&self) -> (usize, usize, usize, usize) {
        let (live, running) = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let running = slots.values().filter(|s| s.running().is_some()).count();
            (slots.len(), running)
        };
        (
            live,
            running,
            self.warm.len(),
            self.confinement.gateway.grants.len(),
        )
    }

    /// The slot, only if it exists (no turn has run here since start otherwise).
    fn existing_slot(&self, session_id: &str) -> Option<Arc<slot::Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(session_id).cloned()
    }
}

/// A harness-app problem for an API client: what is wrong, with paths relative to the app
/// folder (the host's own paths stay in the server log).
pub(crate) fn app_problem(app_dir: &Path, message: &str) -> RuntimeError {
    tracing::warn!(app = %app_dir.display(), problem = %message, "harness app is misconfigured");
    let mut shown = message.to_string();
    let mut prefixes = vec![app_dir.to_path_buf()];
    if let Ok(canonical) = app_dir.canonicalize() {
        prefixes.push(canonical);
    }
    for p in prefixes {
        let p = p.display().to_string();
        if p.is_empty() {
            continue;
        }
        shown = shown.replace(&format!("{p}/"), "").replace(&p, ".");
    }
    RuntimeError::Conflict(format!("the harness app is misconfigured: {shown}"))
}

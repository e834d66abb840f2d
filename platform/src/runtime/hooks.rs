//! A project's lifecycle hooks (`[[projects]] hooks`): on `session.created`, `message.received`
//! (before the turn and its policies), `message.completed` and `agent.handoff`, a webhook is
//! told (an event queued for one endpoint, delivered like every webhook) or a command runs in
//! the session's sandbox with the payload on stdin.
//!
//! Hooks observe and never alter a turn: firing one only queues it. One worker runs the queue in
//! order, a command at most its timeout; a full queue (`QUEUE` jobs) drops the newest hook and
//! says so in the project's log, so a slow hook never delays a turn.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::store::{self, Store};

/// The events a hook can be on.
pub const EVENTS: [&str; 4] = [
    "session.created",
    "message.received",
    "message.completed",
    "agent.handoff",
];

/// Hooks waiting to run at most.
const QUEUE: usize = 1024;

/// Where a hook goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One of the org's webhook endpoints, by name (or id).
    Webhook(String),
    /// A command in the session's sandbox.
    Command(Vec<String>),
}

/// A configured hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    /// One of [`EVENTS`].
    pub event: String,
    /// What it does.
    pub target: Target,
    /// A command's time limit.
    pub timeout: Duration,
    /// Whether a failure is logged (`on_failure = "log"`).
    pub log_failures: bool,
}

impl Hook {
    /// A hook from its configuration (validated before).
    pub fn from_config(h: &crate::config::HookConfig) -> Option<Hook> {
        let target = match (&h.webhook, &h.command) {
            (Some(w), _) => Target::Webhook(w.clone()),
            (None, Some(c)) if !c.is_empty() => Target::Command(c.clone()),
            _ => return None,
        };
        Some(Hook {
            event: h.event.clone(),
            target,
            timeout: Duration::from_secs(h.timeout_seconds.unwrap_or(10).max(1)),
            log_failures: h.on_failure.as_deref() != Some("ignore"),
        })
    }
}

/// Where a command hook runs: the session's sandbox (its tenant's uid, the project's network and
/// limits, the session's workspace and home).
pub(crate) struct Place {
    pub sandbox: Arc<crate::sandbox::SandboxHost>,
    pub store: Store,
    pub network: crate::sandbox::NetworkMode,
    pub limits: crate::sandbox::SandboxLimits,
    pub workspace: PathBuf,
    pub home: PathBuf,
}

/// One hook to run.
pub(crate) struct Job {
    pub hook: Hook,
    pub org_id: String,
    pub project_id: String,
    pub session_id: String,
    pub payload: Value,
    pub place: Option<Place>,
}

/// The queue of hooks and its worker.
pub(crate) struct HookRunner {
    tx: mpsc::Sender<Job>,
}

impl HookRunner {
    /// Starts the worker (on the current Tokio runtime).
    pub(crate) fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                run(&store, job).await;
            }
        });
        Self { tx }
    }

    /// Queues a hook; never waits.
    pub(crate) fn fire(&self, job: Job) {
        if let Err(mpsc::error::TrySendError::Full(job)) = self.tx.try_send(job) {
            tracing::warn!(project = %job.project_id, session = %job.session_id, hook = %job.hook.event,
                "hook dropped: {QUEUE} hooks are waiting already");
        }
    }
}

async fn run(store: &Store, job: Job) {
    let started = Instant::now();
    let outcome = match &job.hook.target {
        Target::Webhook(name) => webhook(store, &job, name).await,
        Target::Command(argv) => command(&job, argv.clone()).await,
    };
    let ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => tracing::info!(project = %job.project_id, session = %job.session_id,
            hook = %job.hook.event, ms, "hook ran"),
        Err(e) if job.hook.log_failures => tracing::warn!(project = %job.project_id,
            session = %job.session_id, hook = %job.hook.event, ms, error = %e, "hook failed"),
        Err(_) => {}
    }
}

/// Queues the payload as a `hook.<event>` event for the one endpoint.
async fn webhook(store: &Store, job: &Job, name: &str) -> Result<(), String> {
    let (org, name) = (job.org_id.clone(), name.to_string());
    let mut event = store::org_events::new_event(
        &job.org_id,
        &format!("hook.{}", job.hook.event),
        &job.payload,
    );
    // Delivered to this endpoint only, not fanned out to subscribers.
    event.fanned_out = true;
    store
        .write_async(move |c| {
            let Some(ep) = store::webhooks::list(c, &org)?
                .into_iter()
                .find(|e| e.name == name || e.id == name)
            else {
                return Ok(Err(format!("the org has no webhook endpoint `{name}`")));
            };
            store::org_events::insert(c, &event)?;
            store::webhooks::queue(
                c,
                &store::webhooks::Delivery::pending(&org, &event.id, &ep.id, event.created_at),
            )?;
            Ok(Ok(()))
        })
        .await
        .map_err(|e| e.to_string())?
}

/// Runs the command in the session's sandbox, the payload on stdin, killed past its timeout.
async fn command(job: &Job, argv: Vec<String>) -> Result<(), String> {
    let Some(place) = &job.place else {
        return Err("the session's sandbox cannot be prepared".into());
    };
    let (sandbox, store, org) = (
        place.sandbox.clone(),
        place.store.clone(),
        job.org_id.clone(),
    );
    let (network, limits, workspace, home) = (
        place.network,
        place.limits.clone(),
        place.workspace.clone(),
        place.home.clone(),
    );
    let (payload, event, timeout) = (
        job.payload.to_string(),
        job.hook.event.clone(),
        job.hook.timeout,
    );
    tokio::task::spawn_blocking(move || {
        let uid = sandbox
            .tenant_uid(&store, &org)
            .map_err(|e| format!("no sandbox for the tenant: {e}"))?;
        let spec = sandbox.spec(uid, network, limits);
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("KARTA_HOOK_EVENT", &event)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home);
        let opts = karta_driver_kit::sandbox::LaunchOptions {
            workspace,
            home,
            expose_port: None,
            stdin: true,
            stdout: false,
            stderr: false,
        };
        let mut h = karta_driver_kit::sandbox::launch(&spec, cmd, &opts)
            .map_err(|e| format!("cannot start `{}`: {e}", argv[0]))?;
        if let Some(mut stdin) = h.child().stdin.take() {
            let _ = stdin.write_all(payload.as_bytes());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match h.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("`{}` exited with {st}", argv[0])),
                Ok(None) if Instant::now() >= deadline => {
                    h.kill();
                    return Err(format!(
                        "`{}` ran past its {}s timeout",
                        argv[0],
                        timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The payload every hook gets: the event, the session and project, and what happened.
pub(crate) fn payload(event: &str, session_id: &str, project_id: &str, data: Value) -> Value {
    json!({
        "event": event,
        "session_id": session_id,
        "project_id": project_id,
        "at": chrono::Utc::now().to_rfc3339(),
        "data": data,
    })
}

/// Shared handle.
pub(crate) type Runner = Arc<HookRunner>;

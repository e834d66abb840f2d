//! The assembled application: configuration, store, drivers, runtime, and reload.

use std::sync::{Arc, RwLock};

use crate::config::{self, ConfigError, LoadOptions, PlatformConfig};
use crate::drivers::DriverRegistry;
use crate::platform::keys::KeyVerifier;
use crate::platform::tokens::TokenKeys;
use crate::reconcile::{self, Plan, ReconcileError};
use crate::runtime::journal::JournalLimits;
use crate::runtime::{Runtime, RuntimeSettings, TurnLimits};
use crate::store::{Store, StoreError};

/// Start-up and reload failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration cannot be applied.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// Everything a running server shares.
pub struct App {
    /// The store.
    pub store: Store,
    /// Registered drivers.
    pub drivers: Arc<DriverRegistry>,
    /// The session runtime.
    pub runtime: Arc<Runtime>,
    /// API-key verification.
    pub keys: Arc<KeyVerifier>,
    /// Session-token signing and verification.
    pub tokens: TokenKeys,
    /// The operator token for `/admin/v1` (from `KARTA_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    config: RwLock<Arc<PlatformConfig>>,
    load_options: LoadOptions,
    reload_lock: tokio::sync::Mutex<()>,
}

/// The environment harness processes get for the configured providers. A secret that cannot be
/// read is left out (and logged without its value).
fn provider_env(c: &PlatformConfig) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    for (name, p) in &c.providers {
        let prefix = match name.as_str() {
            "anthropic" => "ANTHROPIC",
            "openai" => "OPENAI",
            other => {
                tracing::warn!(provider = %other, "unknown provider ignored");
                continue;
            }
        };
        if let Some(secret) = &p.api_key {
            match secret.resolve() {
                Ok(v) => {
                    env.insert(format!("{prefix}_API_KEY"), v);
                }
                Err(e) => tracing::warn!(provider = %name, error = %e, "provider key unavailable"),
            }
        }
        if let Some(url) = &p.base_url {
            env.insert(format!("{prefix}_BASE_URL"), url.clone());
        }
    }
    env
}

fn runtime_settings(c: &PlatformConfig, store: &Store) -> RuntimeSettings {
    RuntimeSettings {
        provider_env: std::sync::Arc::new(provider_env(c)),
        turn_event_queue: c.runtime.turn_event_queue,
        replay_page_size: c.runtime.replay_page_size,
        turn_limits: TurnLimits {
            timeout: std::time::Duration::from_secs(c.runtime.turn_timeout_seconds),
            grace: std::time::Duration::from_secs(c.runtime.cancel_grace_seconds),
        },
        project_turn_limits: project_turn_limits(c, store),
        metadata_max_value_bytes: c.runtime.metadata_max_value_bytes,
        metadata_max_bytes: c.runtime.metadata_max_bytes,
        max_streams_per_session: c.runtime.max_streams_per_session.max(1),
        warm: crate::runtime::warm::WarmLimits {
            total: c.runtime.max_warm_harnesses.max(1),
            per_tenant: c.runtime.max_warm_harnesses_per_tenant.max(1),
        },
        data_dir: c.data_dir.clone(),
        event_log_retention: c.runtime.event_log_retention,
        input_timeout: std::time::Duration::from_secs(c.runtime.input_timeout_seconds),
    }
}

/// The turn limits of projects that set their own, by project id (looked up after reconcile).
fn project_turn_limits(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, TurnLimits> {
    let mut out = std::collections::HashMap::new();
    for p in c
        .projects
        .iter()
        .filter(|p| p.turn_timeout_seconds.is_some() || p.cancel_grace_seconds.is_some())
    {
        let found = store.read(|conn| {
            let Some(org) = crate::store::orgs::find_by_slug(conn, &p.tenant)? else {
                return Ok(None);
            };
            crate::store::projects::find_by_slug_any(conn, &org.id, &p.slug)
        });
        match found {
            Ok(Some(project)) => {
                let limits = TurnLimits {
                    timeout: std::time::Duration::from_secs(
                        p.turn_timeout_seconds
                            .unwrap_or(c.runtime.turn_timeout_seconds),
                    ),
                    grace: std::time::Duration::from_secs(
                        p.cancel_grace_seconds
                            .unwrap_or(c.runtime.cancel_grace_seconds),
                    ),
                };
                out.insert(project.id, limits);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(project = %p.slug, error = %e, "project turn limits not applied")
            }
        }
    }
    out
}

impl App {
    /// Loads the configuration, opens and migrates the store, applies the declared state and
    /// registers drivers (blocking).
    pub fn start(load_options: LoadOptions) -> Result<Arc<App>, AppError> {
        let cfg = config::load(&load_options)?;
        let store = Store::open(&cfg.database_url())?;
        let plan = reconcile::apply(&store, &cfg, "config")?;
        log_plan(&plan);
        let drivers = Arc::new(DriverRegistry::new());
        drivers.load_from_config(&cfg);
        let runtime = Arc::new(
            Runtime::new(
                store.clone(),
                drivers.clone(),
                runtime_settings(&cfg, &store),
                JournalLimits {
                    queue: cfg.runtime.journal_queue,
                    batch: cfg.runtime.journal_batch,
                },
            )
            .map_err(|e| StoreError::Task(format!("cannot start the event writer: {e}")))?,
        );
        match runtime.sweep_workspaces() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "stray session workspaces removed"),
            Err(e) => tracing::warn!(error = %e, "workspace sweep failed"),
        }
        let (tokens, generated) = TokenKeys::from_env();
        if generated {
            tracing::warn!(
                "KARTA_SESSION_TOKEN_SECRET is not set: session tokens are signed with a random \
                 secret and stop working when this process stops"
            );
        }
        let admin_token = std::env::var("KARTA_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Arc::new(App {
            keys: Arc::new(KeyVerifier::new(store.clone())),
            tokens,
            store,
            drivers,
            runtime,
            admin_token,
            config: RwLock::new(Arc::new(cfg)),
            load_options,
            reload_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<PlatformConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads every layer; on success applies it and swaps it in, on failure keeps the running
    /// configuration untouched.
    pub async fn reload(self: &Arc<Self>) -> Result<Plan, AppError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.reload_blocking())
            .await
            .map_err(|e| AppError::Store(StoreError::Task(e.to_string())))?
    }

    fn reload_blocking(&self) -> Result<Plan, AppError> {
        let started = std::time::Instant::now();
        let cfg = config::load(&self.load_options)?;
        let loaded = started.elapsed();
        let old = self.config();
        if cfg.data_dir != old.data_dir {
            // Live sessions' workspaces (and the plugin folder) are under the old one.
            return Err(AppError::Config(ConfigError::single(config::ConfigIssue {
                file: None,
                line: None,
                key: Some("data_dir".into()),
                message: format!(
                    "cannot change from {} to {} while Karta runs; restart to use another data folder",
                    old.data_dir.display(),
                    cfg.data_dir.display()
                ),
            })));
        }
        if cfg.database_url() != old.database_url() {
            tracing::warn!("database.url changed; the new database is used after a restart");
        }
        if cfg.server != old.server {
            tracing::warn!("[server] changed; listeners change after a restart");
        }
        let plan = reconcile::apply(&self.store, &cfg, "config")?;
        let applied = started.elapsed();
        log_plan(&plan);
        self.drivers.load_from_config(&cfg);
        self.runtime
            .update_settings(runtime_settings(&cfg, &self.store));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        tracing::info!(
            changes = plan.changes.len(),
            load_ms = loaded.as_millis() as u64,
            apply_ms = (applied - loaded).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "configuration reloaded"
        );
        Ok(plan)
    }
}

/// Changes logged one by one at most; a larger plan is summarized (its audit rows have all).
const LOGGED_CHANGES: usize = 50;

fn log_plan(plan: &Plan) {
    if plan.is_empty() {
        tracing::info!("configuration applied: no changes");
        return;
    }
    for c in plan.changes.iter().take(LOGGED_CHANGES) {
        tracing::info!(resource = c.resource, name = %c.name, action = ?c.action, "configuration change applied");
    }
    if plan.changes.len() > LOGGED_CHANGES {
        tracing::info!(
            more = plan.changes.len() - LOGGED_CHANGES,
            "more configuration changes applied (each has its audit-log entry)"
        );
    }
}

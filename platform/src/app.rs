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
    /// Harnesses cannot be confined as configured.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The model gateway cannot start.
    #[error("the model gateway cannot start: {0}")]
    Gateway(String),
    /// A BYOK master key is malformed.
    #[error(transparent)]
    Byok(#[from] crate::platform::byok::ByokError),
    /// The declared webhooks cannot be applied.
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// The gateway's listeners, bound at start (the runtime needs the port before serving).
pub struct GatewayListeners {
    /// For sandboxes (bound into them).
    pub unix: std::os::unix::net::UnixListener,
    /// For unsandboxed harnesses, on host loopback (only with `[sandbox] backend = "none"`:
    /// sandboxes reach the socket, and no host port is opened for nothing).
    pub tcp: Option<std::net::TcpListener>,
}

/// Everything a running server shares.
pub struct App {
    /// The store.
    pub store: Store,
    /// Registered drivers.
    pub drivers: Arc<DriverRegistry>,
    /// The session runtime.
    pub runtime: Arc<Runtime>,
    /// The model gateway.
    pub gateway: Arc<crate::gateway::Gateway>,
    /// Where harnesses run.
    pub sandbox: Arc<crate::sandbox::SandboxHost>,
    /// Failed authentications per address.
    pub auth_throttle: Arc<crate::http::throttle::AuthThrottle>,
    /// Tenants' request rates.
    pub rate_limits: Arc<crate::platform::limits::RateLimits>,
    /// Orgs' own model-provider keys (BYOK).
    pub model_keys: Arc<crate::platform::byok::ModelKeys>,
    /// Releases of projects.
    pub releases: Arc<crate::platform::releases::Releases>,
    /// Webhook endpoints and delivery.
    pub webhooks: Arc<crate::platform::webhooks::Webhooks>,
    /// The Managed Agents adapter's session logs.
    pub managed_log: Arc<crate::platform::managed_log::ManagedLog>,
    /// The adapters of projects that serve only some (by project id; absent: all).
    adapter_lists: RwLock<std::collections::HashMap<String, Vec<crate::config::Adapter>>>,
    /// The gateway's listeners until the server takes them.
    pub gateway_listeners: std::sync::Mutex<Option<GatewayListeners>>,
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

fn runtime_settings(
    c: &PlatformConfig,
    store: &Store,
    scoped: &[(String, crate::config::Limits)],
) -> RuntimeSettings {
    RuntimeSettings {
        sandbox: project_sandbox(c, &Default::default()),
        project_sandbox: project_sandboxes(c, store),
        message_policies: message_policies(c, store),
        concurrent_turns: limit_map(scoped, |l| l.concurrent_turns),
        concurrent_streams: limit_map(scoped, |l| l.concurrent_streams),
        budgets: budgets(c, store),
        prices: std::sync::Arc::new(crate::platform::pricing::PriceTable::new(&c.prices)),
        hooks: project_hooks(c, store),
        warm_harnesses: limit_map(scoped, |l| l.warm_harnesses),
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

fn project_sandbox(
    c: &PlatformConfig,
    p: &crate::config::ProjectSandbox,
) -> crate::runtime::ProjectSandbox {
    let (network, limits) = c.sandbox.for_project(p);
    crate::runtime::ProjectSandbox { network, limits }
}

/// The project's id, looked up after reconcile.
fn project_id(store: &Store, p: &crate::config::ProjectConfig) -> Option<String> {
    let found = store.read(|conn| {
        let Some(org) = crate::store::orgs::find_by_slug(conn, &p.tenant)? else {
            return Ok(None);
        };
        crate::store::projects::find_by_slug_any(conn, &org.id, &p.slug)
    });
    match found {
        Ok(found) => found.map(|project| project.id),
        Err(e) => {
            tracing::warn!(project = %p.slug, error = %e, "project settings not applied");
            None
        }
    }
}

/// The `limits` tables of tenants and projects that set any, by org id and project id.
fn scoped_limits(c: &PlatformConfig, store: &Store) -> Vec<(String, crate::config::Limits)> {
    let unset = crate::config::Limits::default();
    let mut out = Vec::new();
    for t in c.tenants.iter().filter(|t| t.limits != unset) {
        match store.read(|conn| crate::store::orgs::find_by_slug(conn, &t.slug)) {
            Ok(Some(org)) => out.push((org.id, t.limits.clone())),
            Ok(None) => {}
            Err(e) => tracing::warn!(tenant = %t.slug, error = %e, "tenant limits not applied"),
        }
    }
    for p in c.projects.iter().filter(|p| p.limits != unset) {
        if let Some(id) = project_id(store, p) {
            out.push((id, p.limits.clone()));
        }
    }
    out
}

/// Every budget: those set through the API, then the `[[budgets]]` of the configuration (which
/// win), by org id (a tenant's), project id or API key id.
fn budgets(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, crate::runtime::budget::Caps> {
    let cap = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
    let mut out: std::collections::HashMap<String, crate::runtime::budget::Caps> = store
        .read(crate::store::budgets::all)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "budgets set through the API not read");
            Vec::new()
        })
        .into_iter()
        .map(|r| {
            (
                r.scope_id,
                crate::runtime::budget::Caps {
                    input_tokens: cap(r.input_tokens),
                    output_tokens: cap(r.output_tokens),
                    total_tokens: cap(r.total_tokens),
                    cost_cents: cap(r.cost_cents),
                    reserve_tokens: cap(r.reserve_tokens),
                },
            )
        })
        .collect();
    out.extend(config_budgets(c, store));
    out
}

/// The `[[budgets]]` caps of the configuration, by scope id.
fn config_budgets(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, crate::runtime::budget::Caps> {
    let mut out = std::collections::HashMap::new();
    for b in &c.budgets {
        let caps = crate::runtime::budget::Caps {
            input_tokens: b.input_tokens,
            output_tokens: b.output_tokens,
            total_tokens: b.total_tokens,
            cost_cents: b.cost_cents,
            reserve_tokens: b.reserve_tokens,
        };
        let id = match (&b.api_key, &b.project) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(slug)) => c
                .projects
                .iter()
                .find(|p| p.tenant == b.tenant && &p.slug == slug)
                .and_then(|p| project_id(store, p)),
            (None, None) => store
                .read(|conn| crate::store::orgs::find_by_slug(conn, &b.tenant))
                .ok()
                .flatten()
                .map(|o| o.id),
        };
        match id {
            Some(id) => {
                out.insert(id, caps);
            }
            None => {
                tracing::warn!(tenant = %b.tenant, "budget not applied: its scope is not in the store")
            }
        }
    }
    out
}

/// The `adapters` lists of projects that set one, by project id.
fn adapter_lists(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, Vec<crate::config::Adapter>> {
    c.projects
        .iter()
        .filter(|p| p.adapters.is_some())
        .filter_map(|p| Some((project_id(store, p)?, p.adapters.clone()?)))
        .collect()
}

/// One limit of every scope that sets it (zero counts as one).
fn limit_map(
    scoped: &[(String, crate::config::Limits)],
    pick: impl Fn(&crate::config::Limits) -> Option<usize>,
) -> std::collections::HashMap<String, usize> {
    scoped
        .iter()
        .filter_map(|(id, l)| pick(l).map(|n| (id.clone(), n.max(1))))
        .collect()
}

/// The request rates of tenants and projects, by org id and project id.
fn scope_rates(
    scoped: &[(String, crate::config::Limits)],
) -> std::collections::HashMap<String, crate::platform::limits::Rates> {
    scoped
        .iter()
        .map(|(id, l)| {
            (
                id.clone(),
                (l.requests_per_minute_per_key, l.requests_per_minute_per_ip),
            )
        })
        .collect()
}

/// The compiled message policies of each project (a tenant's policies apply to all its
/// projects).
fn message_policies(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, Vec<Arc<crate::runtime::policy::MessagePolicy>>> {
    let mut out: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for p in &c.policies {
        let compiled = match crate::runtime::policy::MessagePolicy::compile(p) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::error!(policy = %p.name, error = %e, "policy not applied");
                continue;
            }
        };
        let ids = store.read(|conn| {
            let Some(org) = crate::store::orgs::find_by_slug(conn, &p.tenant)? else {
                return Ok(Vec::new());
            };
            match &p.project {
                Some(slug) => Ok(
                    crate::store::projects::find_by_slug_any(conn, &org.id, slug)?
                        .map(|x| vec![x.id])
                        .unwrap_or_default(),
                ),
                None => crate::store::projects::list_all_ids(conn, &org.id),
            }
        });
        match ids {
            Ok(ids) => {
                for id in ids {
                    out.entry(id).or_default().push(compiled.clone());
                }
            }
            Err(e) => tracing::warn!(policy = %p.name, error = %e, "policy not applied"),
        }
    }
    out
}

/// The sandbox settings of projects that set their own, by project id.
fn project_sandboxes(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, crate::runtime::ProjectSandbox> {
    c.projects
        .iter()
        .filter(|p| p.sandbox != crate::config::ProjectSandbox::default())
        .filter_map(|p| Some((project_id(store, p)?, project_sandbox(c, &p.sandbox))))
        .collect()
}

/// The turn limits of projects that set their own, by project id (looked up after reconcile).
/// Each project's lifecycle hooks, by project id.
fn project_hooks(
    c: &PlatformConfig,
    store: &Store,
) -> std::collections::HashMap<String, Vec<crate::runtime::hooks::Hook>> {
    let mut out = std::collections::HashMap::new();
    for p in c.projects.iter().filter(|p| !p.hooks.is_empty()) {
        if let Some(id) = project_id(store, p) {
            let hooks = p
                .hooks
                .iter()
                .filter_map(crate::runtime::hooks::Hook::from_config)
                .collect();
            out.insert(id, hooks);
        }
    }
    out
}

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

/// Refuses a configuration whose `[[drivers]] settings` miss the schema their driver gave,
/// with the file, line and key of each problem.
fn check_driver_settings(
    drivers: &DriverRegistry,
    cfg: &PlatformConfig,
    opts: &LoadOptions,
) -> Result<(), AppError> {
    let problems = drivers.check_settings(cfg);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AppError::Config(config::located(opts, problems)))
    }
}

impl App {
    /// Loads the configuration, opens and migrates the store, applies the declared state and
    /// registers drivers (blocking).
    pub fn start(load_options: LoadOptions) -> Result<Arc<App>, AppError> {
        let cfg = config::load(&load_options)?;
        let drivers = Arc::new(DriverRegistry::new());
        check_driver_settings(&drivers, &cfg, &load_options)?;
        // Files Karta makes (the database above all) are its own: harnesses run as other
        // users.
        // SAFETY: umask has no preconditions.
        unsafe {
            libc::umask(0o077);
        }
        let sandbox = Arc::new(crate::sandbox::SandboxHost::start(&cfg)?);
        if sandbox.backend() == crate::sandbox::SandboxBackend::None {
            tracing::warn!(
                "SANDBOX DISABLED ([sandbox] backend = \"none\"): harnesses run as Karta's own \
                 user with Karta's view of the machine; any agent with a shell can read other \
                 tenants' files and Karta's data. Use it only for trusted, single-tenant setups"
            );
        }
        let store = Store::open(&cfg.database_url())?;
        let gateway =
            Arc::new(crate::gateway::Gateway::new(store.clone(), &cfg).map_err(AppError::Gateway)?);
        let (current, previous) = crate::platform::byok::master_keys_from_env()?;
        let model_keys = Arc::new(crate::platform::byok::ModelKeys::new(
            store.clone(),
            current,
            previous,
        ));
        gateway.set_model_keys(model_keys.clone());
        let listeners = bind_gateway(
            &sandbox.gateway_socket(),
            sandbox.backend() == crate::sandbox::SandboxBackend::None,
        )?;
        if let Some(tcp) = &listeners.tcp {
            gateway.set_tcp_port(
                tcp.local_addr()
                    .map_err(|e| AppError::Gateway(e.to_string()))?
                    .port(),
            );
        }
        let actor = crate::store::audit::Actor::system("config");
        let plan = reconcile::apply(&store, &cfg, &actor)?;
        log_plan(&plan);
        let webhooks = Arc::new(crate::platform::webhooks::Webhooks::new(
            store.clone(),
            model_keys.clone(),
            &cfg,
        ));
        webhooks
            .apply_config(&cfg, &actor)
            .map_err(AppError::Webhooks)?;
        let scoped = scoped_limits(&cfg, &store);
        drivers.load_from_config(&cfg);
        let runtime = Arc::new(
            Runtime::new(
                store.clone(),
                drivers.clone(),
                runtime_settings(&cfg, &store, &scoped),
                JournalLimits {
                    queue: cfg.runtime.journal_queue,
                    batch: cfg.runtime.journal_batch,
                    cache_kib: cfg.runtime.journal_cache_kib,
                },
                crate::runtime::Confinement {
                    sandbox: sandbox.clone(),
                    gateway: gateway.clone(),
                },
            )
            .map_err(|e| StoreError::Task(format!("cannot start the event writer: {e}")))?,
        );
        runtime.set_webhook_orgs(webhooks.subscribed.clone());
        // A budget used up mid-turn stops the turn's next model call.
        gateway.set_gate(Arc::new(runtime.budget_gate()));
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
        let rate_limits = Arc::new(crate::platform::limits::RateLimits::default());
        rate_limits.configure(scope_rates(&scoped));
        let adapter_lists = RwLock::new(adapter_lists(&cfg, &store));
        let managed_log = Arc::new(crate::platform::managed_log::ManagedLog::new(
            store.clone(),
            cfg.runtime.event_log_retention,
        ));
        let releases = Arc::new(crate::platform::releases::Releases::new(
            store.clone(),
            &cfg.data_dir,
            cfg.releases.clone(),
        ));
        let admin_token = std::env::var("KARTA_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Arc::new(App {
            keys: Arc::new(KeyVerifier::new(store.clone())),
            tokens,
            store,
            drivers,
            runtime,
            gateway,
            sandbox,
            auth_throttle: Arc::new(crate::http::throttle::AuthThrottle::new(
                cfg.server.auth_failures_per_minute,
            )),
            rate_limits,
            adapter_lists,
            managed_log,
            releases,
            webhooks,
            model_keys,
            gateway_listeners: std::sync::Mutex::new(Some(listeners)),
            admin_token,
            config: RwLock::new(Arc::new(cfg)),
            load_options,
            reload_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Rebuilds the runtime's settings from the configuration in force and the store (after a
    /// change made through the API, such as a budget).
    pub fn refresh_runtime(&self) {
        let cfg = self.config();
        let scoped = scoped_limits(&cfg, &self.store);
        self.runtime
            .update_settings(runtime_settings(&cfg, &self.store, &scoped));
    }

    /// The scopes (org, project or key ids) whose budget the configuration declares.
    pub fn config_budget_scopes(&self) -> std::collections::HashSet<String> {
        config_budgets(&self.config(), &self.store)
            .into_keys()
            .collect()
    }

    /// Whether the project (by id) serves `adapter`.
    pub fn serves(&self, project_id: &str, adapter: crate::config::Adapter) -> bool {
        self.adapter_lists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(project_id)
            .is_none_or(|list| list.contains(&adapter))
    }

    /// Where configuration declares a tenant (or one of its projects): file and line.
    pub fn declared_at(
        &self,
        tenant: &str,
        project: Option<&str>,
    ) -> Option<(std::path::PathBuf, Option<usize>)> {
        config::declared_at(&self.load_options, tenant, project)
    }

    /// The options configuration is loaded with (for the operator's views of it).
    pub fn load_options(&self) -> &LoadOptions {
        &self.load_options
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
    /// `actor` is who asked (the operator's request, or the system on a signal), for the audit log.
    pub async fn reload(
        self: &Arc<Self>,
        actor: crate::store::audit::Actor,
    ) -> Result<Plan, AppError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let app = self.clone();
        let r = tokio::task::spawn_blocking(move || app.reload_blocking(&actor))
            .await
            .map_err(|e| AppError::Store(StoreError::Task(e.to_string())))
            .and_then(|r| r);
        crate::metrics::get()
            .reloads
            .get_or_create(&crate::metrics::ResultLabels {
                result: if r.is_ok() { "ok" } else { "error" }.into(),
            })
            .inc();
        r
    }

    fn reload_blocking(&self, actor: &crate::store::audit::Actor) -> Result<Plan, AppError> {
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
        // After the data folder check: its plugin folder is where libraries are opened from.
        check_driver_settings(&self.drivers, &cfg, &self.load_options)?;
        if cfg.database_url() != old.database_url() {
            tracing::warn!("database.url changed; the new database is used after a restart");
        }
        if cfg.server != old.server {
            tracing::warn!("[server] changed; listeners change after a restart");
        }
        if cfg.sandbox.backend != old.sandbox.backend
            || cfg.sandbox.bwrap != old.sandbox.bwrap
            || cfg.sandbox.uid_base != old.sandbox.uid_base
            || cfg.sandbox.cgroup_root != old.sandbox.cgroup_root
            || cfg.sandbox.gateway_port != old.sandbox.gateway_port
        {
            tracing::warn!(
                "[sandbox] backend, bwrap, uid_base, cgroup_root or gateway_port changed; they \
                 change after a restart (network and limits apply to new harnesses now)"
            );
        }
        let mut plan = reconcile::apply(&self.store, &cfg, actor)?;
        self.webhooks
            .apply_config(&cfg, actor)
            .map_err(AppError::Webhooks)?;
        // Policies live in the running config: recorded once nothing can refuse the reload.
        let policies = reconcile::policy_changes(&old.policies, &cfg.policies);
        reconcile::record_policy_changes(&self.store, &policies, actor)?;
        plan.changes.extend(policies);
        let applied = started.elapsed();
        log_plan(&plan);
        self.drivers.load_from_config(&cfg);
        let scoped = scoped_limits(&cfg, &self.store);
        self.runtime
            .update_settings(runtime_settings(&cfg, &self.store, &scoped));
        self.gateway.update(&cfg);
        self.rate_limits.configure(scope_rates(&scoped));
        *self
            .adapter_lists
            .write()
            .unwrap_or_else(|p| p.into_inner()) = adapter_lists(&cfg, &self.store);
        if plan
            .changes
            .iter()
            .any(|c| c.resource == "tenant" || c.resource == "api_key")
        {
            // A disabled tenant's keys stop working now, not when their cache entry expires.
            self.keys.invalidate_all();
            self.keys.forget_failures();
        }
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

/// Binds the gateway's Unix socket (any sandbox user may connect: a token is still needed) and,
/// when harnesses run unsandboxed, a loopback port.
fn bind_gateway(socket: &std::path::Path, tcp: bool) -> Result<GatewayListeners, AppError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| AppError::Gateway(format!("{}: {e}", socket.display()));
    let _ = std::fs::remove_file(socket);
    let unix = std::os::unix::net::UnixListener::bind(socket).map_err(fail)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).map_err(fail)?;
    let tcp = if tcp {
        Some(
            std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| AppError::Gateway(format!("cannot listen on loopback: {e}")))?,
        )
    } else {
        None
    };
    Ok(GatewayListeners { unix, tcp })
}

//! The platform's declarative configuration: types, layered loading, validation.
//!
//! Layers, later wins: built-in defaults -> `karta.platform.toml` -> `karta.platform.d/*.toml` and
//! `*.jsonc` in name order -> `karta.platform.<KARTA_ENV>.toml` -> `KARTA_...` environment
//! variables (double underscore nests) -> command-line flags. Arrays of resources (`[[tenants]]`,
//! `[[projects]]`, `[[drivers]]`) are concatenated across files so a drop-in file can add one.

mod error;
mod load;
mod locate;
mod secret;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ConfigIssue};
pub use load::{declared_at, load, located, resource_sources, LoadOptions, Overrides};
pub use secret::{Secret, SecretError};

/// The whole platform configuration after layering, with relative paths resolved.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// Listeners and stream settings.
    pub server: ServerConfig,
    /// Where state lives.
    pub database: DatabaseConfig,
    /// Karta's own folder (SQLite file, workspaces, installed harnesses, plugins).
    pub data_dir: PathBuf,
    /// Plugin discovery.
    pub plugins: PluginsConfig,
    /// Model provider credentials the platform injects into harness processes.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Harness drivers: settings for first-party ones, paths for plugins.
    pub drivers: Vec<DriverConfig>,
    /// Tenants (orgs).
    pub tenants: Vec<TenantConfig>,
    /// Projects: a harness-app folder served for one tenant.
    pub projects: Vec<ProjectConfig>,
    /// Session runtime settings.
    pub runtime: RuntimeConfig,
    /// How harness processes are confined.
    pub sandbox: SandboxConfig,
    /// The model gateway harnesses reach their providers through.
    pub gateway: GatewayConfig,
    /// `[adapters]`
    pub adapters: AdaptersConfig,
    /// Message policies attached to tenants or projects.
    pub policies: Vec<PolicyConfig>,
    /// `[[budgets]]`
    pub budgets: Vec<BudgetConfig>,
    /// `[[prices]]`: what model calls cost, for turns the harness does not cost itself.
    pub prices: Vec<PriceConfig>,
    /// `[releases]`: what a deployed archive may hold, and previews.
    pub releases: ReleasesConfig,
    /// `[[webhooks]]`: endpoints events are POSTed to, declared here.
    pub webhooks: Vec<WebhookConfig>,
    /// `[webhook_delivery]`: how webhooks are delivered.
    pub webhook_delivery: WebhookDeliveryConfig,
    /// API keys minted elsewhere, declared by hash (no secret in files).
    pub api_keys: Vec<ApiKeyConfig>,
}

/// `[[api_keys]]`: a key minted elsewhere (`karta keys mint`), declared by its prefix and hash.
/// Removing the entry revokes the key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    /// Unique within the tenant.
    pub name: String,
    /// The tenant's slug.
    pub tenant: String,
    /// `read`, `write`, `admin`.
    pub scopes: Vec<String>,
    /// The key's first 14 characters (`kt_live_` + 6; not secret).
    pub prefix: String,
    /// `sha256:<64 hex digits>` of the whole key, or an argon2id PHC string.
    pub hash: String,
}

/// `[[policies]]`: checks a message must pass before its turn starts. A violation is a 422
/// `policy_violation` and nothing reaches the harness.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Named in violations.
    pub name: String,
    /// The tenant it applies to (every project of it, unless `project` is set).
    pub tenant: String,
    /// One project of the tenant.
    pub project: Option<String>,
    /// Longest message, in characters.
    pub max_message_length: Option<usize>,
    /// Most messages (turns) in one session.
    pub max_messages_per_session: Option<u64>,
    /// Regular expressions a message must not match.
    pub deny_patterns: Vec<String>,
    /// How approvals of a tool are answered, by tool name (a trailing `*` matches a prefix):
    /// `prompt`, `deny`, `approve_once`, `approve_session` or `error`. It overrides the session's
    /// and the app's approval settings.
    pub tools: BTreeMap<String, crate::runtime::Policy>,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener: data plane and org API.
    pub listen: String,
    /// Operator listener (`/admin/v1`); bearer token from `KARTA_ADMIN_TOKEN`.
    pub admin_listen: String,
    /// Seconds between SSE keep-alive comments on idle streams.
    pub heartbeat_seconds: u64,
    /// Failed authentications an address may make per minute before its requests get 429.
    pub auth_failures_per_minute: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".into(),
            admin_listen: "127.0.0.1:8001".into(),
            heartbeat_seconds: 15,
            auth_failures_per_minute: 60,
        }
    }
}

/// `[database]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://path`; unset means `sqlite://<data_dir>/karta.db`.
    pub url: Option<String>,
}

/// `[plugins]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folders scanned for driver plugins (`*.so`); `<data_dir>/plugins` is always scanned.
    pub dirs: Vec<PathBuf>,
    /// Load every library in the plugin folders. Off by default: a library there loads only
    /// when a `[[drivers]]` entry names it (by `path`, or by the driver's `name`).
    pub trust_dirs: bool,
}

/// `[providers.<name>]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// The platform's key for this provider.
    pub api_key: Option<Secret>,
    /// Base URL override, e.g. a `karta mock-model` server for offline runs.
    pub base_url: Option<String>,
}

/// `[[drivers]]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriverConfig {
    /// The driver's name: a linked-in driver, or a drop-in plugin in a plugin folder (which
    /// this entry allows to load); checked against the driver's own name.
    pub name: Option<String>,
    /// Path to a plugin library (`.so`).
    pub path: Option<PathBuf>,
    /// Settings handed to the driver's constructor, checked against the JSON Schema the
    /// driver gives (`karta drivers` shows it).
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// `[[tenants]]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// URL-safe identifier.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Rate and concurrency limits of the tenant.
    pub limits: TenantLimits,
}

/// A tenant's or a project's `limits`. Past a rate the request gets 429 with `Retry-After`;
/// past a concurrency limit the turn or stream is refused the same way (warm harnesses past
/// their cap are stopped, least recently used idle one first, or the turn gets 503).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per minute per API key (or session token).
    pub requests_per_minute_per_key: Option<u32>,
    /// Requests per minute per client address.
    pub requests_per_minute_per_ip: Option<u32>,
    /// Turns running at once.
    pub concurrent_turns: Option<usize>,
    /// Event streams attached at once (`GET .../events`, resumed and streamed sends).
    pub concurrent_streams: Option<usize>,
    /// Harness processes kept warm at once (a tenant's replaces
    /// `runtime.max_warm_harnesses_per_tenant`).
    pub warm_harnesses: Option<usize>,
}

/// A tenant's `limits`.
pub type TenantLimits = Limits;

/// A project's `limits`.
pub type ProjectLimits = Limits;

/// `[[budgets]]`: hard caps on a tenant's (or one project's) usage per calendar month (UTC).
/// Past any cap, every turn-running route answers 402 `budget_exhausted` before anything runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// The tenant.
    pub tenant: String,
    /// One project of the tenant (the whole tenant when absent).
    pub project: Option<String>,
    /// One API key of the tenant, by id (`key_...`): a sub-limit of that key's own usage.
    pub api_key: Option<String>,
    /// Input tokens a month (cached ones included).
    pub input_tokens: Option<u64>,
    /// Output tokens a month.
    pub output_tokens: Option<u64>,
    /// Input plus output tokens a month.
    pub total_tokens: Option<u64>,
    /// Cost a month, in cents.
    pub cost_cents: Option<u64>,
    /// Tokens a starting turn holds against the caps until it ends (default: the scope's
    /// average turn this month, 1000 before its first).
    pub reserve_tokens: Option<u64>,
}

/// `[[prices]]`: a model's price per token from a day on (UTC). Calls the model gateway counted
/// are priced with it; a harness's own cost is used only when a call has no price here.
/// A price per token in micro-cents equals the price per million tokens in cents ($3 per million
/// is `300`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PriceConfig {
    /// `anthropic` or `openai`.
    pub provider: String,
    /// The model id as the provider answers it, or `*` for the provider's other models.
    pub model: String,
    /// Micro-cents per uncached input token.
    pub input: u64,
    /// Micro-cents per output token (reasoning included).
    pub output: u64,
    /// Micro-cents per input token read from the cache (default: the input price).
    pub cache_read: Option<u64>,
    /// Micro-cents per input token written to the cache (default: the input price).
    pub cache_write: Option<u64>,
    /// The first day (`YYYY-MM-DD`, UTC) the price applies; always when absent.
    pub effective_from: Option<chrono::NaiveDate>,
}

/// `[[projects]]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectConfig {
    /// The owning tenant's slug.
    pub tenant: String,
    /// URL-safe identifier, unique within the tenant.
    pub slug: String,
    /// The harness-app folder (served until the project's first release).
    pub path: PathBuf,
    /// No folder: the project serves only what is deployed to it (`karta deploy`); new
    /// sessions answer 409 until its first release.
    pub releases_only: bool,
    /// Driver name overriding auto-detection.
    pub harness: Option<String>,
    /// What a send does while a turn runs on the session.
    pub multitask: Multitask,
    /// This project's turn limit (`[runtime] turn_timeout_seconds` when absent).
    pub turn_timeout_seconds: Option<u64>,
    /// This project's cancel grace (`[runtime] cancel_grace_seconds` when absent).
    pub cancel_grace_seconds: Option<u64>,
    /// Lifecycle hooks: what to tell (a webhook) or run (a command in the session's sandbox)
    /// when a session is created, a message arrives or completes, or the agent changes.
    pub hooks: Vec<HookConfig>,
    /// This project's sandbox network and limits (`[sandbox]` where absent).
    pub sandbox: ProjectSandbox,
    /// The SDK-compatible adapters served for this project (others answer 404 on it); every
    /// adapter when absent.
    pub adapters: Option<Vec<Adapter>>,
    /// Concurrency limits of the project.
    pub limits: ProjectLimits,
}

impl ProjectConfig {
    /// Whether the project serves `adapter`.
    pub fn serves(&self, adapter: Adapter) -> bool {
        self.adapters.as_ref().is_none_or(|a| a.contains(&adapter))
    }
}

/// An SDK-compatible surface of a project.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// OpenAI Chat Completions.
    ChatCompletions,
    /// OpenAI Responses.
    Responses,
    /// Anthropic Managed Agents.
    ManagedAgents,
}

/// `[sandbox]`: how every harness process runs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `bubblewrap` (default) or `none` (no confinement; `karta serve` warns at start).
    pub backend: SandboxBackend,
    /// The `bwrap` executable (default: found on `PATH`).
    pub bwrap: Option<PathBuf>,
    /// Default network of a harness: `model-only` (default), `full` or `none`.
    pub network: NetworkMode,
    /// First host uid given to tenants' harnesses when Karta runs as root (tenant N gets
    /// `uid_base + N`, and the same gid).
    pub uid_base: u32,
    /// How many tenant uids there are.
    pub uid_count: u32,
    /// Memory of a harness and everything it starts, in MiB.
    pub memory_mb: Option<u64>,
    /// Processes and threads of a harness at once.
    pub processes: Option<u64>,
    /// CPU seconds per process.
    pub cpu_seconds: Option<u64>,
    /// Open files per process.
    pub open_files: Option<u64>,
    /// Largest file a process may write, in MiB.
    pub file_size_mb: Option<u64>,
    /// A delegated cgroup v2 folder for harness cgroups (default: found on cgroup v1 hosts).
    pub cgroup_root: Option<PathBuf>,
    /// The loopback port the gateway answers on inside a sandbox.
    pub gateway_port: u16,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: SandboxBackend::Bubblewrap,
            bwrap: None,
            network: NetworkMode::ModelOnly,
            uid_base: 200_000,
            uid_count: 65_536,
            memory_mb: Some(2048),
            processes: Some(512),
            cpu_seconds: None,
            open_files: Some(4096),
            file_size_mb: Some(4096),
            cgroup_root: None,
            gateway_port: 4100,
        }
    }
}

pub use karta_driver_kit::sandbox::{NetworkMode, SandboxBackend};

/// A project's `sandbox` table: what it overrides of `[sandbox]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectSandbox {
    /// The project's network.
    pub network: Option<NetworkMode>,
    /// Memory, in MiB.
    pub memory_mb: Option<u64>,
    /// Processes and threads.
    pub processes: Option<u64>,
    /// CPU seconds per process.
    pub cpu_seconds: Option<u64>,
    /// Open files per process.
    pub open_files: Option<u64>,
    /// Largest file, in MiB.
    pub file_size_mb: Option<u64>,
}

impl SandboxConfig {
    /// The limits and network of a project: its own where set, else the platform's.
    pub fn for_project(
        &self,
        p: &ProjectSandbox,
    ) -> (NetworkMode, karta_driver_kit::sandbox::SandboxLimits) {
        (
            p.network.unwrap_or(self.network),
            karta_driver_kit::sandbox::SandboxLimits {
                memory_mb: p.memory_mb.or(self.memory_mb),
                processes: p.processes.or(self.processes),
                cpu_seconds: p.cpu_seconds.or(self.cpu_seconds),
                open_files: p.open_files.or(self.open_files),
                file_size_mb: p.file_size_mb.or(self.file_size_mb),
            },
        )
    }
}

/// A project's lifecycle hook. Hooks observe and never alter a turn: they run after the fact, in
/// order, one at a time, and a slow one never delays a turn.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// `session.created`, `message.received` (before the turn and its policies),
    /// `message.completed` or `agent.handoff`.
    pub event: String,
    /// The name of one of the tenant's `[[webhooks]]` (or an API endpoint's id) to POST to.
    pub webhook: Option<String>,
    /// A command run in the session's sandbox (its workspace as the working folder; the
    /// payload on stdin and `KARTA_HOOK_EVENT` in the environment).
    pub command: Option<Vec<String>>,
    /// A command's time limit (default 10 s); it is killed past it.
    pub timeout_seconds: Option<u64>,
    /// `log` (default: a failure is logged in the project's log) or `ignore`.
    pub on_failure: Option<String>,
}

/// `[[webhooks]]`: an endpoint of a tenant, declared in configuration (API changes to it are
/// refused; its secret stays here).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The tenant.
    pub tenant: String,
    /// Unique within the tenant.
    pub name: String,
    /// `https://...` (plain `http` and private addresses only with `[webhook_delivery]
    /// development = true`).
    pub url: String,
    /// Event types (`*` for all).
    pub events: Vec<String>,
    /// The signing secret.
    pub secret: Option<Secret>,
    /// Whether it receives events (default true).
    pub enabled: Option<bool>,
}

/// `[webhook_delivery]`: how events reach endpoints.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookDeliveryConfig {
    /// Allow `http://` and loopback or private addresses (a receiver on the same machine while
    /// developing). Never in production: it opens the door to request forgery.
    pub development: bool,
    /// How often due deliveries are looked for, in milliseconds.
    pub poll_ms: u64,
    /// The first retry's delay (it doubles each time, with full jitter), in milliseconds.
    pub retry_base_ms: u64,
    /// The longest delay between retries, in seconds.
    pub retry_max_seconds: u64,
    /// After this long failing, a delivery is given up and its endpoint disabled, in hours.
    pub give_up_hours: u64,
    /// One attempt's time limit, in seconds.
    pub timeout_seconds: u64,
    /// Deliveries in flight per instance.
    pub concurrency: usize,
    /// How long a worker holds a claimed delivery, in seconds: a worker that dies mid-attempt
    /// has its deliveries retried by another once this has passed. Keep it above
    /// `timeout_seconds`.
    pub lease_seconds: u64,
    /// Events, deliveries and attempts are kept this many days, then removed (pending
    /// deliveries and the events they carry stay until they end).
    pub keep_days: u64,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        Self {
            development: false,
            poll_ms: 1000,
            retry_base_ms: 30_000,
            retry_max_seconds: 6 * 3600,
            give_up_hours: 72,
            timeout_seconds: 10,
            concurrency: 8,
            lease_seconds: 60,
            keep_days: 30,
        }
    }
}

/// `[releases]`: bounds on deployed archives and how long previews live.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    /// Largest upload (the compressed archive), in MiB.
    pub max_upload_mb: u64,
    /// Largest unpacked release, in MiB.
    pub max_unpacked_mb: u64,
    /// Largest file in a release, in MiB.
    pub max_file_mb: u64,
    /// Most files and folders in an archive.
    pub max_members: u64,
    /// Most unpacked bytes per compressed byte.
    pub max_ratio: u64,
    /// How long a preview serves, in seconds (a week).
    pub preview_ttl_seconds: u64,
    /// How often expired previews are swept, in seconds.
    pub sweep_seconds: u64,
    /// Production releases kept per project (the live one always is); older ones' files are
    /// removed and they are marked `expired`.
    pub keep_releases: usize,
    /// Uploads being received and unpacked at once; more answer 429.
    pub max_concurrent_publishes: usize,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        Self {
            max_upload_mb: 200,
            max_unpacked_mb: 1024,
            max_file_mb: 256,
            max_members: 50_000,
            max_ratio: 200,
            preview_ttl_seconds: 7 * 24 * 3600,
            sweep_seconds: 900,
            keep_releases: 20,
            max_concurrent_publishes: 2,
        }
    }
}

/// `[gateway]`: the model gateway.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Largest request body a harness may send, in MiB.
    pub max_body_mb: usize,
    /// How long one upstream call may take, in seconds.
    pub upstream_timeout_seconds: u64,
    /// Calls forwarded at once; more wait.
    pub max_concurrent_calls: usize,
    /// How long a finished turn waits for its model calls still in flight before it is metered,
    /// in milliseconds (a call that ends later is metered with the session's next turn).
    pub settle_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_mb: 32,
            upstream_timeout_seconds: 600,
            max_concurrent_calls: 256,
            settle_ms: 2000,
        }
    }
}

/// `[adapters]`: the SDK-compatible adapters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptersConfig {
    /// Days a stored Responses answer stays retrievable and continuable
    /// (`previous_response_id`); older ones are forgotten.
    pub stored_response_days: u32,
}

impl Default for AdaptersConfig {
    fn default() -> Self {
        Self {
            stored_response_days: 30,
        }
    }
}

/// What a second send does while a turn runs on the same session.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Multitask {
    /// Refuse it with 409 `session busy`.
    #[default]
    Reject,
    /// Run it after the running turn ends.
    Enqueue,
    /// Cancel the running turn, then run it.
    Interrupt,
}

impl Multitask {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Multitask::Reject => "reject",
            Multitask::Enqueue => "enqueue",
            Multitask::Interrupt => "interrupt",
        }
    }

    /// Parses the stored name (unknown values mean `reject`).
    pub fn parse(s: &str) -> Multitask {
        match s {
            "enqueue" => Multitask::Enqueue,
            "interrupt" => Multitask::Interrupt,
            _ => Multitask::Reject,
        }
    }
}

/// `[runtime]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Events kept per session for stream replay (older ones are pruned).
    pub event_log_retention: u64,
    /// How long a turn waits for an approval before the hidden-prompt policy decides.
    pub input_timeout_seconds: u64,
    /// Events a driver may queue ahead of a turn's pump before the driver's thread waits.
    pub turn_event_queue: usize,
    /// Events queued for the replay log's writer before turns wait for it.
    pub journal_queue: usize,
    /// Events the writer commits in one transaction at most.
    pub journal_batch: usize,
    /// The writer's SQLite page cache, in KiB (read at start).
    pub journal_cache_kib: u64,
    /// Events read from the replay log per query when a stream replays.
    pub replay_page_size: i64,
    /// How long a turn may run before it is cancelled (time paused for an approval not
    /// counted).
    pub turn_timeout_seconds: u64,
    /// How long a cancelled turn gets to end itself before Karta ends it and stops the harness.
    pub cancel_grace_seconds: u64,
    /// Largest metadata value of a session, in bytes of JSON.
    pub metadata_max_value_bytes: usize,
    /// Largest metadata of a session (all keys), in bytes of JSON.
    pub metadata_max_bytes: usize,
    /// Sessions whose harness may be running at once; past it the least recently used idle
    /// one is stopped, and when all are busy a new turn gets 503.
    pub max_warm_harnesses: usize,
    /// The same, per tenant.
    pub max_warm_harnesses_per_tenant: usize,
    /// Streams attached to one session at once (`GET .../events`, `Last-Event-ID`); more get 429.
    pub max_streams_per_session: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            event_log_retention: 10_000,
            input_timeout_seconds: 3600,
            turn_event_queue: 256,
            journal_queue: 4096,
            journal_batch: 512,
            journal_cache_kib: 16_384,
            replay_page_size: 500,
            turn_timeout_seconds: 1800,
            cancel_grace_seconds: 10,
            metadata_max_value_bytes: 4096,
            metadata_max_bytes: 65_536,
            max_warm_harnesses: 64,
            max_warm_harnesses_per_tenant: 32,
            max_streams_per_session: 16,
        }
    }
}

impl PlatformConfig {
    /// The database URL in force.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("karta.db").display()),
        }
    }

    /// Every folder scanned for plugins.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.data_dir.join("plugins")];
        dirs.extend(self.plugins.dirs.iter().cloned());
        dirs
    }
}

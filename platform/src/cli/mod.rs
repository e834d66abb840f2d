//! The `karta` command line.

mod pack;
pub mod remote;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::config::{self, LoadOptions, Overrides};
use crate::platform::keys::{self, Scope};
use crate::reconcile;
use crate::store::{Store, StoreError};

/// Karta: host harness applications behind one streaming session API.
#[derive(Parser, Debug)]
#[command(name = "karta", version, about)]
pub struct Cli {
    /// The platform configuration file.
    #[arg(long, global = true, env = "KARTA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: remote::ServerArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: public listener (data plane) and admin listener.
    Serve(ServeArgs),
    /// Check, plan or apply the declarative configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Manage org API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Run a fake model server (Anthropic Messages API) that answers from a script.
    MockModel(MockModelArgs),
    /// A tenant's metered usage per day this month (or `--from`/`--to`), with a bar chart.
    Usage(UsageArgs),
    /// Orgs' own model-provider keys (BYOK).
    Byok {
        #[command(subcommand)]
        action: ByokAction,
    },
    /// The drivers this configuration loads, as each describes itself in the handshake: name,
    /// version, origin, capabilities and the JSON Schema of its settings (JSON).
    Drivers,
    /// Install a harness CLI into Karta's data folder.
    Harness {
        #[command(subcommand)]
        action: HarnessAction,
    },
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

/// Flags of `karta usage`.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// The tenant's slug.
    #[arg(long)]
    pub tenant: String,
    /// First day, YYYY-MM-DD (default: the first of this month, UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today).
    #[arg(long)]
    pub to: Option<String>,
}

/// `karta byok ...`
#[derive(Subcommand, Debug)]
pub enum ByokAction {
    /// Re-seal every stored model key under the current master key (`KARTA_MASTER_KEY`); the
    /// old one must be in `KARTA_MASTER_KEY_PREVIOUS` meanwhile.
    RotateMaster,
}

/// Flags of `karta mock-model`.
#[derive(Args, Debug)]
pub struct MockModelArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Write the chosen port to this file.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// A JSON script of replies.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Append every request to this JSON-lines file.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// `karta harness ...`
#[derive(Subcommand, Debug)]
pub enum HarnessAction {
    /// Install the pinned version of a harness CLI (needs npm).
    Install {
        /// `claude-code` or `opencode`
        name: String,
    },
}

/// Flags of `karta serve` (the last configuration layer).
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Public listener address (overrides server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin listener address (overrides server.admin_listen).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Database URL (overrides database.url).
    #[arg(long)]
    pub database_url: Option<String>,
}

/// `karta config ...`
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate every layer; writes nothing.
    Check,
    /// Print the changes `apply` would make; writes nothing.
    Plan,
    /// Apply the configuration to the store.
    Apply,
}

/// `karta keys ...`
#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Create a key; the key is printed once, on the last line.
    Create {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated scopes: read, write, admin.
        #[arg(long, default_value = "read,write")]
        scopes: String,
    },
    /// Mint a key for `[[api_keys]]` without touching any database: prints the key (once),
    /// then the TOML that declares it by prefix and hash.
    Mint {
        /// The tenant's slug (for the printed TOML).
        #[arg(long)]
        tenant: String,
        /// A name for the key.
        #[arg(long, default_value = "gitops")]
        name: String,
        /// Comma-separated scopes.
        #[arg(long, default_value = "read,write")]
        scopes: String,
    },
    /// List a tenant's keys (never the secrets).
    List {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key for good.
    Revoke {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// The key's id (`key_...`).
        id: String,
    },
}

fn load_options(cli_config: Option<PathBuf>, overrides: Overrides) -> LoadOptions {
    LoadOptions {
        explicit: cli_config.is_some(),
        config_path: cli_config.unwrap_or_else(|| PathBuf::from("karta.platform.toml")),
        overrides,
    }
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Remote(cmd) => remote::run(&cli.server, cmd),
        Command::Serve(args) => {
            let opts = load_options(
                cli.config,
                Overrides {
                    listen: args.listen,
                    admin_listen: args.admin_listen,
                    database_url: args.database_url,
                },
            );
            let app = App::start(opts)?;
            actix_web::rt::System::new()
                .block_on(crate::http::serve(app))
                .context("server stopped")
        }
        Command::Config { action } => {
            let opts = load_options(cli.config, Overrides::default());
            let cfg = config::load(&opts)?;
            match action {
                ConfigAction::Check => {
                    let problems = crate::drivers::DriverRegistry::new().check_settings(&cfg);
                    if !problems.is_empty() {
                        return Err(config::located(&opts, problems).into());
                    }
                    println!(
                        "configuration is valid: {} tenant(s), {} project(s), {} driver entr{}",
                        cfg.tenants.len(),
                        cfg.projects.len(),
                        cfg.drivers.len(),
                        if cfg.drivers.len() == 1 { "y" } else { "ies" }
                    );
                }
                ConfigAction::Plan => {
                    let plan = Store::with_read_only_view(&cfg.database_url(), |c| {
                        reconcile::compute(c, &cfg).map_err(|e| match e {
                            reconcile::ReconcileError::Store(s) => s,
                            reconcile::ReconcileError::Conflict(m) => StoreError::Conflict(m),
                        })
                    })?;
                    print!("{plan}");
                }
                ConfigAction::Apply => {
                    let store = Store::open(&cfg.database_url())?;
                    let plan =
                        reconcile::apply(&store, &cfg, &crate::store::audit::Actor::system("cli"))?;
                    print!("{plan}");
                    if !plan.is_empty() {
                        println!("Applied.");
                    }
                }
            }
            Ok(())
        }
        Command::MockModel(args) => mock_model(args),
        Command::Harness {
            action: HarnessAction::Install { name },
        } => {
            let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
            let path = crate::harness::install(&name, &cfg.data_dir)?;
            println!("Installed {name}: {}", path.display());
            Ok(())
        }
        Command::Drivers => {
            let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
            let (drivers, refused) = crate::drivers::DriverRegistry::new().describe_all(&cfg);
            let drivers: Vec<serde_json::Value> = drivers
                .into_iter()
                .map(|(info, origin)| {
                    serde_json::json!({
                        "name": info.name,
                        "version": info.version,
                        "origin": match origin {
                            crate::drivers::DriverOrigin::Builtin => "builtin".to_string(),
                            crate::drivers::DriverOrigin::Plugin(p) => p.display().to_string(),
                        },
                        "capabilities": info.capabilities.names(),
                        "settings_schema": info.settings_schema,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "abi_version": karta_driver_api::ABI_VERSION,
                    "drivers": drivers,
                    "refused": refused,
                }))?
            );
            Ok(())
        }
        Command::Usage(args) => {
            let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
            let store = Store::open(&cfg.database_url())?;
            let today = chrono::Utc::now().date_naive();
            let from = args
                .from
                .unwrap_or_else(|| today.format("%Y-%m-01").to_string());
            let to = args
                .to
                .unwrap_or_else(|| today.format("%Y-%m-%d").to_string());
            for (flag, v) in [("--from", &from), ("--to", &to)] {
                if chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_err() {
                    anyhow::bail!("{flag} must be a day as YYYY-MM-DD, got `{v}`");
                }
            }
            let rows = store.read(|c| {
                let org = crate::store::orgs::get_enabled_by_slug(c, &args.tenant)?;
                crate::store::usage::daily(c, &org.id, None, &from, &to)
            })?;
            print!("{}", usage_chart(&rows));
            Ok(())
        }
        Command::Byok {
            action: ByokAction::RotateMaster,
        } => {
            let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
            let store = Store::open(&cfg.database_url())?;
            let (current, previous) = crate::platform::byok::master_keys_from_env()?;
            let keys = crate::platform::byok::ModelKeys::new(store, current, previous);
            let n = keys.rotate()?;
            println!(
                "Re-sealed {n} model key(s) under the current master key; \
                 KARTA_MASTER_KEY_PREVIOUS can be removed once every server has restarted."
            );
            Ok(())
        }
        Command::Keys { action } => match action {
            KeysAction::Create {
                tenant,
                name,
                scopes,
            } => {
                let mut parsed = Vec::new();
                for s in scopes.split(',').filter(|s| !s.trim().is_empty()) {
                    match Scope::parse(s) {
                        Some(sc) => parsed.push(sc),
                        None => bail!("unknown scope `{}` (use read, write, admin)", s.trim()),
                    }
                }
                if parsed.is_empty() {
                    bail!("--scopes names no scope");
                }
                let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
                let store = Store::open(&cfg.database_url())?;
                let (key, _) = keys::create(
                    &store,
                    keys::OrgRef::Slug(&tenant),
                    &name,
                    &parsed,
                    &crate::store::audit::Actor::system("cli"),
                )?;
                let scope_names: Vec<_> = key.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "Created API key {} for tenant `{tenant}` (scopes: {}). It is shown only once:",
                    key.id,
                    scope_names.join(", ")
                );
                println!("{}", key.plaintext);
                Ok(())
            }
            KeysAction::Mint {
                tenant,
                name,
                scopes,
            } => {
                let (key, prefix, hash) = keys::mint();
                let list: Vec<String> = scopes
                    .split(',')
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("\"{s}\""))
                    .collect();
                println!("[[api_keys]]");
                println!("name = \"{name}\"");
                println!("tenant = \"{tenant}\"");
                println!("scopes = [{}]", list.join(", "));
                println!("prefix = \"{prefix}\"");
                println!("hash = \"{hash}\"");
                println!();
                println!("# The key (shown only once; the TOML above holds no secret):");
                println!("{key}");
                Ok(())
            }
            KeysAction::List { tenant } => {
                let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
                let store = Store::open(&cfg.database_url())?;
                let rows = store.read(|c| {
                    let org = crate::store::orgs::get_enabled_by_slug(c, &tenant)?;
                    crate::store::keys::list_for_org(c, &org.id)
                })?;
                println!("ID\tNAME\tSCOPES\tKEY\tCREATED\tLAST USED\tREVOKED");
                let when = |t: Option<chrono::NaiveDateTime>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                for k in rows {
                    println!(
                        "{}\t{}\t{}\t{}...{}\t{}\t{}\t{}",
                        k.id,
                        k.name,
                        k.scopes,
                        k.lookup_prefix,
                        k.last4,
                        when(Some(k.created_at)),
                        when(k.last_used_at),
                        when(k.revoked_at)
                    );
                }
                Ok(())
            }
            KeysAction::Revoke { tenant, id } => {
                let cfg = config::load(&load_options(cli.config, Overrides::default()))?;
                let store = Store::open(&cfg.database_url())?;
                let org = store.read(|c| crate::store::orgs::get_enabled_by_slug(c, &tenant))?;
                let key = keys::revoke(
                    &store,
                    &org.id,
                    &id,
                    &crate::store::audit::Actor::system("cli"),
                )?;
                println!(
                    "Revoked API key {} ({}). Running servers refuse it within 5 seconds.",
                    key.id, key.name
                );
                Ok(())
            }
        },
    }
}

/// Usage per day with a bar of total tokens (the widest bar is 40 characters).
fn usage_chart(rows: &[crate::store::usage::DailyUsage]) -> String {
    let mut days: std::collections::BTreeMap<&str, crate::store::usage::Totals> =
        std::collections::BTreeMap::new();
    for r in rows {
        days.entry(r.day.as_str()).or_default().add(r);
    }
    let total = |t: &crate::store::usage::Totals| t.input_tokens + t.output_tokens;
    let widest = days.values().map(total).max().unwrap_or(0).max(1);
    let mut out = String::from("DAY         TURNS    INPUT   OUTPUT  COST(¢)\n");
    let mut sum = crate::store::usage::Totals::default();
    for (day, t) in &days {
        let bar = "#".repeat(((total(t) * 40).div_ceil(widest)) as usize);
        let cents = crate::platform::money::MicroCents(t.cost_micro_cents)
            .to_cents_ceil()
            .0;
        out.push_str(&format!(
            "{day} {:>6} {:>8} {:>8} {:>8}  {bar}\n",
            t.turns, t.input_tokens, t.output_tokens, cents
        ));
        sum.turns += t.turns;
        sum.input_tokens += t.input_tokens;
        sum.output_tokens += t.output_tokens;
        sum.cost_micro_cents += t.cost_micro_cents;
    }
    if days.is_empty() {
        out.push_str("(no usage in this range)\n");
    }
    out.push_str(&format!(
        "total      {:>6} {:>8} {:>8} {:>8}\n",
        sum.turns,
        sum.input_tokens,
        sum.output_tokens,
        crate::platform::money::MicroCents(sum.cost_micro_cents)
            .to_cents_ceil()
            .0
    ));
    out
}

fn mock_model(args: MockModelArgs) -> anyhow::Result<()> {
    use crate::mockmodel::{script::Script, MockState};
    let script = match &args.script {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Script::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => Script::default(),
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    if let Some(f) = &args.port_file {
        std::fs::write(f, port.to_string())?;
    }
    println!("PORT={port}");
    tracing::info!(%port, "mock model listening on http://127.0.0.1:{port}");
    actix_web::rt::System::new()
        .block_on(crate::mockmodel::serve(
            listener,
            MockState::new(script, args.log),
        ))
        .context("mock model stopped")
}

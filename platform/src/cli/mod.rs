//! The `karta` command line.

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
                    let plan = reconcile::apply(&store, &cfg, "cli")?;
                    print!("{plan}");
                    if !plan.is_empty() {
                        println!("Applied.");
                    }
                }
            }
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
                let key = keys::create(&store, &tenant, &name, &parsed)?;
                let scope_names: Vec<_> = key.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "Created API key {} for tenant `{tenant}` (scopes: {}). It is shown only once:",
                    key.id,
                    scope_names.join(", ")
                );
                println!("{}", key.plaintext);
                Ok(())
            }
        },
    }
}

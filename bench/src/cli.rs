//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Measures Karta (echo driver, no delay) side by side with a minimal actix-web handler.
///
/// Every request goes to 127.0.0.1; every loop is bounded in count and time.
#[derive(Parser, Debug)]
#[command(name = "karta-bench", version, about)]
pub struct Cli {
    /// Internal subcommands (the baseline server child).
    #[command(subcommand)]
    pub command: Option<Internal>,
    /// Flags of a benchmark run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands the bench uses on itself.
#[derive(Subcommand, Debug)]
pub enum Internal {
    /// Serve the baseline handler (run by the bench in a child process).
    #[command(hide = true)]
    Baseline {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Flags of a benchmark run.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The `karta` binary (default: `karta` next to this binary).
    #[arg(long)]
    pub karta: Option<PathBuf>,
    /// The echo driver plugin (default: `libkarta_driver_echo.so` next to this binary).
    #[arg(long)]
    pub echo_plugin: Option<PathBuf>,
    /// CI mode: a few seconds in total, small counts.
    #[arg(long)]
    pub quick: bool,
    /// Which store Karta runs on.
    #[arg(long, value_enum, default_value_t = DatabaseChoice::Sqlite)]
    pub database: DatabaseChoice,
    /// Run only these sections (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Append the markdown report to this file (it is always printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The store(s) to measure on.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseChoice {
    /// Embedded SQLite in a fresh data folder.
    Sqlite,
    /// A fresh PostgreSQL database (`KARTA_BENCH_PG_URL`, else postgres@127.0.0.1:5432).
    Postgres,
    /// SQLite, then PostgreSQL.
    Both,
}

/// A part of the benchmark.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Turn latency and throughput against the baseline.
    Turns,
    /// Memory per open SSE stream waiting for an approval.
    IdleStreams,
    /// Memory growth over many turns.
    Rss,
    /// `karta config apply` and live reload with many projects.
    Reconcile,
    /// What the harness sandbox costs per process start and per turn.
    Sandbox,
    /// A legitimate client's latency and memory under a flood of wrong keys.
    KeyFlood,
    /// OpenAI Chat Completions calls through the adapter against the baseline.
    Adapters,
}

impl Section {
    /// Every section, in report order.
    pub const ALL: [Section; 7] = [
        Section::Turns,
        Section::IdleStreams,
        Section::Rss,
        Section::Reconcile,
        Section::Sandbox,
        Section::KeyFlood,
        Section::Adapters,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Section::Turns => "turns",
            Section::IdleStreams => "idle-streams",
            Section::Rss => "rss",
            Section::Reconcile => "reconcile",
            Section::Sandbox => "sandbox",
            Section::KeyFlood => "key-flood",
            Section::Adapters => "adapters",
        }
    }
}

//! The `karta` binary.

use std::process::ExitCode;

use clap::Parser;

// glibc's allocator keeps per-thread arenas that it rarely returns (resident memory grew from
// 20 MB to over 1 GB under 50 concurrent sessions). jemalloc shares a few arenas between all
// threads and returns dirty pages after a short decay. (mimalloc returned memory too, but its
// per-thread heaps cost ~750 KiB for every driver thread parked on an approval: 10x the budget
// of an idle stream.)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> ExitCode {
    // The in-sandbox helper runs before anything else: no logging set-up, no clap.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sandbox-init") {
        return karta::sandbox::init::run(&args[2..]);
    }
    // The server log (filtered by KARTA_LOG), and each project's recent lines for `karta logs`
    // (info and above, whatever KARTA_LOG says).
    let server_log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("KARTA_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        );
    tracing_subscriber::registry()
        .with(server_log)
        .with(karta::logs::ProjectLayer.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .init();
    match karta::cli::run(karta::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error chain, without a backtrace: these are user-facing messages.
            eprintln!("error: {}", format!("{e:#}").trim_end());
            ExitCode::FAILURE
        }
    }
}

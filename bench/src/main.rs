//! `karta-bench`: measures Karta (echo driver, no delay) side by side with a minimal actix-web
//! handler, and prints a markdown report. All traffic goes to 127.0.0.1; every child process is
//! killed when the bench ends, also on error.

mod api;
mod baseline;
mod cli;
mod client;
mod karta;
mod load;
mod plan;
mod report;
mod sections;
mod stats;
mod system;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, DatabaseChoice, Internal, RunArgs, Section};
use crate::karta::{Binaries, Db};
use crate::plan::Plan;
use crate::report::Report;
use crate::sections::Ctx;

/// Worker threads of the load generator.
const LOAD_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Internal::Baseline { listen }) => baseline::serve(listen),
        None => bench(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("karta-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the bench binary lives (`target/<profile>`).
fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench binary")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the bench binary has no parent folder")
}

fn binaries(args: &RunArgs) -> anyhow::Result<Binaries> {
    let dir = own_dir()?;
    let bins = Binaries {
        karta: args.karta.clone().unwrap_or_else(|| dir.join("karta")),
        echo_plugin: args
            .echo_plugin
            .clone()
            .unwrap_or_else(|| dir.join("libkarta_driver_echo.so")),
    };
    system::require_file(&bins.karta, "the karta binary")?;
    system::require_file(&bins.echo_plugin, "the echo driver plugin")?;
    Ok(Binaries {
        karta: std::path::absolute(&bins.karta).context("karta path")?,
        echo_plugin: std::path::absolute(&bins.echo_plugin).context("plugin path")?,
    })
}

fn databases(choice: DatabaseChoice) -> Vec<Db> {
    match choice {
        DatabaseChoice::Sqlite => vec![Db::Sqlite],
        DatabaseChoice::Postgres => vec![Db::Postgres],
        DatabaseChoice::Both => vec![Db::Sqlite, Db::Postgres],
    }
}

fn bench(args: RunArgs) -> anyhow::Result<()> {
    let nofile = system::raise_nofile_limit()?;
    let ctx = Ctx {
        plan: Plan::new(args.quick),
        bins: binaries(&args)?,
        dbs: databases(args.database),
    };
    let sections: Vec<Section> = Section::ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
        .collect();
    let mut report = Report::new(args.out.clone());
    header(&mut report, &ctx, nofile);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(LOAD_THREADS)
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let mut failed = Vec::new();
    for section in sections {
        if let Err(e) = runtime.block_on(run_section(section, &ctx, &mut report)) {
            report.note(&format!("**{} failed:** {e:#}", section.name()));
            failed.push(section.name());
        }
    }
    // Stop the clients' connection tasks before the report is saved.
    drop(runtime);
    report.save()?;
    if !failed.is_empty() {
        anyhow::bail!("section(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn run_section(section: Section, ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    match section {
        Section::Turns => sections::turns::run(ctx, report).await,
        Section::IdleStreams => sections::idle_streams::run(ctx, report).await,
        Section::Rss => sections::rss::run(ctx, report).await,
        Section::Reconcile => sections::reconcile::run(ctx, report).await,
        Section::Sandbox => sections::sandbox::run(ctx, report).await,
        Section::KeyFlood => sections::key_flood::run(ctx, report).await,
        Section::Adapters => sections::adapters::run(ctx, report).await,
    }
}

fn header(report: &mut Report, ctx: &Ctx, nofile: u64) {
    report.push_raw("# Karta benchmark\n\n");
    let stores: Vec<&str> = ctx.dbs.iter().map(|d| d.name()).collect();
    report.note(&format!(
        "- machine: {}\n- mode: {}\n- store(s): {}\n- karta: `{}`\n- echo plugin: `{}`\n\
         - load generator: tokio, {LOAD_THREADS} threads, hyper 1 HTTP/1.1; open files limit {nofile}",
        system::machine_description(),
        if ctx.plan.quick { "quick" } else { "full" },
        stores.join(", "),
        ctx.bins.karta.display(),
        ctx.bins.echo_plugin.display(),
    ));
}

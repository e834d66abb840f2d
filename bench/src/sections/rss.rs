//! `rss`: Karta's memory after many non-streaming turns.

use std::sync::Arc;
use std::time::Duration;

use crate::karta::{Db, Karta};
use crate::load::{self, Limits, Worker};
use crate::report::{mib, Report};
use crate::sections::Ctx;

/// Longest the turns up to one mark may take.
const MARK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the section on every chosen store.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("rss");
    report.note(&format!(
        "Non-streaming turns from {} concurrent clients (one session each); Karta's VmRSS after \
         the sessions exist and at each cumulative turn count.",
        ctx.plan.rss_clients
    ));
    report.table(&[
        "store",
        "turns",
        "RSS (MiB)",
        "change vs previous mark",
        "req/s",
        "errors",
    ]);
    for &db in &ctx.dbs {
        measure(ctx, db, report).await?;
    }
    report.end_table();
    Ok(())
}

async fn measure(ctx: &Ctx, db: Db, report: &mut Report) -> anyhow::Result<()> {
    let mut karta = Karta::start(&ctx.bins, db, 0).await?;
    let (addr, key) = (karta.public, karta.key.clone());
    let mut workers = Worker::many(ctx.plan.rss_clients, || {
        Worker::karta(addr, Arc::clone(&key), false)
    })
    .await?;
    let mut previous = karta.rss_kib()?;
    report.row(&[
        db.name().into(),
        "0 (sessions created)".into(),
        mib(previous),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let mut done = 0;
    for &mark in &ctx.plan.rss_marks {
        let result = load::run(
            workers,
            Limits::counted(mark.saturating_sub(done), MARK_TIMEOUT),
        )
        .await?;
        done += result.samples.len() as u64;
        karta.check_running()?;
        let rss = karta.rss_kib()?;
        report.row(&[
            db.name().into(),
            done.to_string(),
            mib(rss),
            format!(
                "{:+.1} %",
                100.0 * (rss as f64 - previous as f64) / previous as f64
            ),
            format!("{:.0}", result.rps()),
            result.errors_cell(),
        ]);
        previous = rss;
        workers = result.workers;
    }
    Ok(())
}

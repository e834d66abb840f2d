//! `adapters`: non-streaming OpenAI Chat Completions calls (each a new session, one turn, and
//! the session closed after it) against the baseline handler, at 1 and 50 clients.

use std::sync::Arc;

use crate::baseline::Baseline;
use crate::karta::Karta;
use crate::load::{self, Limits, Worker};
use crate::report::{ms, Report};
use crate::sections::Ctx;
use crate::stats::Summary;

/// Runs the section on every chosen store.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("adapters");
    report.note(&format!(
        "Closed loop, one kept-alive connection per client, {:?} per measurement after {:?} of \
         warm-up. Each Karta request is `POST /v1/projects/hello/chat/completions` with one user \
         message, answered as one `chat.completion` (echo driver, `delay_ms = 0`): a new session, \
         one turn, and the session closed after it. Baseline as in `turns`. Latencies in ms.",
        ctx.plan.measure, ctx.plan.warmup
    ));
    let baseline = Baseline::start().await?;
    report.table(&[
        "store",
        "clients",
        "target",
        "req/s",
        "p50",
        "p99",
        "% of baseline",
        "errors",
    ]);
    for &db in &ctx.dbs {
        let karta = Karta::start(&ctx.bins, db, 0).await?;
        for &clients in &ctx.plan.clients {
            let limits = Limits::timed(ctx.plan.warmup, ctx.plan.measure);
            let workers = Worker::many(clients, || Worker::baseline(baseline.addr)).await?;
            let b = load::run(workers, limits.clone()).await?;
            let (addr, key) = (karta.public, karta.key.clone());
            let workers = Worker::many(clients, || Worker::chat(addr, Arc::clone(&key))).await?;
            let c = load::run(workers, limits).await?;
            let pct = if b.rps() > 0.0 {
                format!("{:.1} %", 100.0 * c.rps() / b.rps())
            } else {
                "n/a".into()
            };
            for (name, r, pct) in [
                ("baseline POST", &b, "-".to_string()),
                ("karta chat completion", &c, pct),
            ] {
                let lat = Summary::latency(&r.samples);
                report.row(&[
                    db.name().into(),
                    clients.to_string(),
                    name.into(),
                    format!("{:.0}", r.rps()),
                    ms(lat.p50),
                    ms(lat.p99),
                    pct,
                    r.errors_cell(),
                ]);
            }
        }
    }
    report.end_table();
    Ok(())
}

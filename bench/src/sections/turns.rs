//! `turns`: the baseline handler against Karta's non-streaming and streaming turns, at 1 and 50
//! concurrent clients.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::baseline::Baseline;
use crate::karta::{Db, Karta};
use crate::load::{self, Limits, LoadResult, Worker};
use crate::report::{ms, Report};
use crate::sections::Ctx;
use crate::stats::Summary;

/// What one client count measured.
struct Round {
    clients: usize,
    baseline: Measured,
    turn: Measured,
    stream: Measured,
}

/// The figures of one load run.
struct Measured {
    rps: f64,
    latency: Summary,
    first_event: Summary,
    errors: String,
}

impl Measured {
    fn of(r: &LoadResult) -> Measured {
        Measured {
            rps: r.rps(),
            latency: Summary::latency(&r.samples),
            first_event: Summary::first_event(&r.samples),
            errors: r.errors_cell(),
        }
    }
}

/// Runs the section on every chosen store.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("turns");
    report.note(&format!(
        "Closed loop, one kept-alive HTTP/1.1 connection per client, {:?} per measurement after \
         {:?} of warm-up. Baseline: actix-web, 2 workers, POST answering a fixed JSON body. \
         Karta: echo driver with `delay_ms = 0`; each client has its own session. Latencies in ms.",
        ctx.plan.measure, ctx.plan.warmup
    ));
    let baseline = Baseline::start().await?;
    for &db in &ctx.dbs {
        let karta = Karta::start(&ctx.bins, db, 0).await?;
        let mut rounds = Vec::new();
        for &clients in &ctx.plan.clients {
            rounds.push(round(ctx, baseline.addr, &karta, clients).await?);
        }
        table(report, db, &rounds);
        summary(report, db, &rounds);
    }
    Ok(())
}

async fn round(
    ctx: &Ctx,
    baseline: SocketAddr,
    karta: &Karta,
    clients: usize,
) -> anyhow::Result<Round> {
    let limits = Limits::timed(ctx.plan.warmup, ctx.plan.measure);
    let workers = Worker::many(clients, || Worker::baseline(baseline)).await?;
    let b = load::run(workers, limits.clone()).await?;
    let t = karta_run(karta, clients, false, &limits).await?;
    let s = karta_run(karta, clients, true, &limits).await?;
    Ok(Round {
        clients,
        baseline: Measured::of(&b),
        turn: Measured::of(&t),
        stream: Measured::of(&s),
    })
}

async fn karta_run(
    karta: &Karta,
    clients: usize,
    stream: bool,
    limits: &Limits,
) -> anyhow::Result<LoadResult> {
    let (addr, key) = (karta.public, karta.key.clone());
    let workers = Worker::many(clients, || Worker::karta(addr, Arc::clone(&key), stream)).await?;
    load::run(workers, limits.clone()).await
}

fn table(report: &mut Report, db: Db, rounds: &[Round]) {
    report.table(&[
        "store",
        "clients",
        "target",
        "req/s",
        "p50",
        "p99",
        "first event p50",
        "first event p99",
        "errors",
    ]);
    for r in rounds {
        let rows = [
            ("baseline POST", &r.baseline, false),
            ("karta turn", &r.turn, false),
            ("karta streamed turn", &r.stream, true),
        ];
        for (name, m, streamed) in rows {
            let fe = |v: u64| if streamed { ms(v) } else { "-".into() };
            report.row(&[
                db.name().into(),
                r.clients.to_string(),
                name.into(),
                format!("{:.0}", m.rps),
                ms(m.latency.p50),
                ms(m.latency.p99),
                fe(m.first_event.p50),
                fe(m.first_event.p99),
                m.errors.clone(),
            ]);
        }
    }
    report.end_table();
}

fn summary(report: &mut Report, db: Db, rounds: &[Round]) {
    let overhead = |k: &Measured, b: &Measured| {
        format!(
            "p50 {} ms, p99 {} ms",
            signed_ms(k.latency.p50, b.latency.p50),
            signed_ms(k.latency.p99, b.latency.p99)
        )
    };
    let pct = |k: &Measured, b: &Measured| {
        if b.rps > 0.0 {
            format!("{:.1} %", 100.0 * k.rps / b.rps)
        } else {
            "n/a".into()
        }
    };
    report.table(&["store", "figure", "karta turn", "karta streamed turn"]);
    if let Some(r) = rounds.iter().find(|r| r.clients == 1) {
        report.row(&[
            db.name().into(),
            "per-turn overhead vs baseline, 1 client".into(),
            overhead(&r.turn, &r.baseline),
            overhead(&r.stream, &r.baseline),
        ]);
    }
    if let Some(r) = rounds
        .iter()
        .max_by_key(|r| r.clients)
        .filter(|r| r.clients > 1)
    {
        report.row(&[
            db.name().into(),
            format!("req/s as % of baseline, {} clients", r.clients),
            pct(&r.turn, &r.baseline),
            pct(&r.stream, &r.baseline),
        ]);
    }
    report.end_table();
}

/// `a - b` microseconds as signed milliseconds.
/// `a - b` in milliseconds, signed.
pub(crate) fn signed_ms(a: u64, b: u64) -> String {
    format!("{:+.3}", (a as f64 - b as f64) / 1000.0)
}

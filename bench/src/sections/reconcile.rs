//! `reconcile`: `karta config apply` with many projects, and a live reload under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::karta::{self, Db, Karta, Workspace};
use crate::load::{self, Limits, LoadResult, Worker};
use crate::report::{ms, Report};
use crate::sections::Ctx;
use crate::stats::{micros, Sample, Summary};

/// Upper bound of the load that runs around the reload.
const RELOAD_LOAD_MAX: Duration = Duration::from_secs(900);

/// Runs the section on every chosen store.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("reconcile");
    report.note(
        "`karta config apply` (the CLI, a new process each time) on a fresh store: first with no \
         projects (runs the migrations), then with N projects of one tenant (all on one app \
         folder), then the same config again (a no-op). Times in seconds.",
    );
    report.table(&[
        "store",
        "projects",
        "first apply, no projects (s)",
        "apply creating them (s)",
        "no-op apply (s)",
    ]);
    for &db in &ctx.dbs {
        for &n in &ctx.plan.apply_projects {
            apply_row(ctx, db, n, report)?;
        }
    }
    report.end_table();
    report.note(&format!(
        "Live reload: one client runs streamed turns back to back; the config file is rewritten \
         with {} more projects and `POST /admin/v1/config/reload` is sent. Turn latencies in ms; \
         \"during\" is every turn overlapping the reload request.",
        ctx.plan.reload_projects
    ));
    report.table(&[
        "store",
        "projects added",
        "reload answer",
        "reload time (s)",
        "turns before",
        "p50 before",
        "worst before",
        "turns during",
        "p50 during",
        "worst during",
        "worst after",
        "errors",
    ]);
    for &db in &ctx.dbs {
        reload_row(ctx, db, report).await?;
    }
    report.end_table();
    Ok(())
}

fn apply_row(ctx: &Ctx, db: Db, projects: usize, report: &mut Report) -> anyhow::Result<()> {
    let ws = Workspace::new(&ctx.bins, db)?;
    let timed = tokio::task::block_in_place(|| -> anyhow::Result<[Duration; 3]> {
        ws.write_config(0)?;
        let first = ws.apply()?;
        ws.write_config(projects)?;
        let create = ws.apply()?;
        let noop = ws.apply()?;
        Ok([first, create, noop])
    })?;
    let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
    report.row(&[
        db.name().into(),
        projects.to_string(),
        secs(timed[0]),
        secs(timed[1]),
        secs(timed[2]),
    ]);
    Ok(())
}

/// Turns before, overlapping, and after `[t0, t1]` (microseconds since the run's origin).
fn split(samples: &[Sample], t0: u64, t1: u64) -> [Vec<Sample>; 3] {
    let mut parts: [Vec<Sample>; 3] = Default::default();
    for s in samples {
        let part = if s.end_us() < t0 {
            0
        } else if s.start_us > t1 {
            2
        } else {
            1
        };
        parts[part].push(*s);
    }
    parts
}

async fn reload_row(ctx: &Ctx, db: Db, report: &mut Report) -> anyhow::Result<()> {
    let mut karta = Karta::start(&ctx.bins, db, 0).await?;
    let worker = Worker::karta(karta.public, karta.key.clone(), true).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        warmup: ctx.plan.warmup,
        measure: RELOAD_LOAD_MAX,
        max_ops: u64::MAX,
        stop: Some(stop.clone()),
    };
    let load = tokio::spawn(load::run(vec![worker], limits));
    tokio::time::sleep(ctx.plan.warmup + ctx.plan.measure).await;
    karta.ws.write_config(ctx.plan.reload_projects)?;
    let t0 = Instant::now();
    let reloaded = karta::reload(karta.admin).await;
    let t1 = Instant::now();
    tokio::time::sleep(ctx.plan.warmup.max(Duration::from_secs(1))).await;
    stop.store(true, Ordering::Relaxed);
    let result: LoadResult = load.await??;
    karta.check_running()?;
    let (status, body, took) = reloaded?;
    let answer = if status.is_success() {
        status.as_u16().to_string()
    } else {
        format!("{status}: {}", body.replace('|', "/"))
    };
    let since = |t: Instant| micros(t.saturating_duration_since(result.origin));
    let [before, during, after] = split(&result.samples, since(t0), since(t1));
    let (b, d, a) = (
        Summary::latency(&before),
        Summary::latency(&during),
        Summary::latency(&after),
    );
    report.row(&[
        db.name().into(),
        ctx.plan.reload_projects.to_string(),
        answer,
        format!("{:.2}", took.as_secs_f64()),
        b.count.to_string(),
        ms(b.p50),
        ms(b.max),
        d.count.to_string(),
        ms(d.p50),
        ms(d.max),
        ms(a.max),
        result.errors_cell(),
    ]);
    Ok(())
}

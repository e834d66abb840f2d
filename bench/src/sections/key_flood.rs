//! `key-flood`: a legitimate client's latency and Karta's memory while 64 connections send
//! wrong API keys that share a real key's lookup prefix (each would cost an argon2 check),
//! against the same client with nobody flooding, in the same run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use crate::client::Conn;
use crate::karta::{Db, Karta};
use crate::load::{self, Limits, Worker};
use crate::report::{mib, ms, Report};
use crate::sections::Ctx;
use crate::stats::Summary;

/// Flooding connections.
const FLOODERS: usize = 64;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    unauthorized: AtomicU64,
    limited: AtomicU64,
}

/// A wrong key with the real key's lookup prefix (`kt_live_` + 6) and a fresh rest.
fn wrong_key(real: &str, n: u64) -> String {
    let tail: String = format!("{n:024}").chars().rev().collect();
    format!("{}{}", &real[..16], &tail)
}

/// Runs the section.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("key-flood");
    report.note(&format!(
        "One client reads its session (`GET /v1/sessions/{{id}}`, a valid key) for {:?} after \
         {:?} of warm-up: first alone, then while {FLOODERS} connections send wrong keys sharing \
         the real key's lookup prefix as fast as they are answered. Resident memory is sampled \
         every 100 ms. SQLite, `[server] auth_failures_per_minute` at its default (60).",
        ctx.plan.measure, ctx.plan.warmup
    ));
    let karta = Karta::start(&ctx.bins, Db::Sqlite, 0).await?;
    report.table(&[
        "phase",
        "req/s",
        "p50",
        "p99",
        "max RSS",
        "flood requests",
        "401",
        "429",
    ]);
    for flood in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        if flood {
            for i in 0..FLOODERS {
                let (stop, counts, key) = (stop.clone(), counts.clone(), karta.key.clone());
                let addr = karta.public;
                tasks.push(tokio::spawn(async move {
                    let Ok(mut conn) = Conn::connect(addr).await else {
                        return;
                    };
                    let mut n = (i as u64) << 32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let bad = wrong_key(&key, n);
                        match conn
                            .call(Method::GET, "/v1/sessions", Some(&bad), None)
                            .await
                        {
                            Ok((status, _)) => {
                                counts.sent.fetch_add(1, Ordering::Relaxed);
                                match status.as_u16() {
                                    401 => counts.unauthorized.fetch_add(1, Ordering::Relaxed),
                                    429 => counts.limited.fetch_add(1, Ordering::Relaxed),
                                    _ => 0,
                                };
                            }
                            Err(_) => {
                                conn.reset();
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }));
            }
        }
        let pid = karta.pid();
        let sampler_stop = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut max = 0;
            while !sampler_stop.load(Ordering::Relaxed) {
                if let Ok(kib) = crate::system::rss_kib(pid) {
                    max = max.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        });
        let limits = Limits::timed(ctx.plan.warmup, ctx.plan.measure);
        let (addr, key) = (karta.public, karta.key.clone());
        let workers = Worker::many(1, || Worker::reader(addr, key.clone())).await?;
        let r = load::run(workers, limits).await?;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let max_rss = sampler.await.unwrap_or(0);
        let lat = Summary::latency(&r.samples);
        report.row(&[
            if flood { "flood" } else { "alone" }.into(),
            format!("{:.0}", r.rps()),
            ms(lat.p50),
            ms(lat.p99),
            mib(max_rss),
            counts.sent.load(Ordering::Relaxed).to_string(),
            counts.unauthorized.load(Ordering::Relaxed).to_string(),
            counts.limited.load(Ordering::Relaxed).to_string(),
        ]);
    }
    report.end_table();
    Ok(())
}

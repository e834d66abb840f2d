//! `idle-streams`: Karta's memory per open SSE stream whose turn waits for an approval.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};

use crate::api;
use crate::client::{self, Conn};
use crate::karta::{Db, Karta};
use crate::report::{mib, Report};
use crate::sections::Ctx;
use crate::system;

/// Longest one stream may take to reach `input_required`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before reading the RSS with every stream open, so allocations settle.
const SETTLE: Duration = Duration::from_millis(500);

/// Share of the memory available at the start that Karta may grow by before the bench stops
/// creating sessions and opening streams (so a large count cannot exhaust the machine).
const MEMORY_SHARE: f64 = 0.5;
/// How often the memory guard reads Karta's RSS.
const GUARD_PERIOD: Duration = Duration::from_millis(100);

/// An open stream: its connection and the unread rest of its body.
struct HeldStream {
    _conn: Conn,
    _body: Incoming,
}

/// Runs the section on every chosen store.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("idle-streams");
    report.note(&format!(
        "Each stream is a streamed turn `[approve] hi` on its own session and connection, held \
         open after `input_required` (the echo driver then waits on a thread). Sessions are \
         created and streams opened {} at a time. RSS is Karta's VmRSS; per-stream figures are \
         (RSS with streams - RSS after creating the sessions) / streams.",
        ctx.plan.setup_concurrency
    ));
    report.table(&[
        "store",
        "streams",
        "RSS at start (MiB)",
        "RSS after sessions (MiB)",
        "RSS with streams (MiB)",
        "KiB per stream",
        "KiB per session + stream",
        "open time (s)",
    ]);
    for &db in &ctx.dbs {
        for &n in &ctx.plan.idle_streams {
            measure(ctx, db, n, report).await?;
        }
    }
    report.end_table();
    Ok(())
}

async fn measure(ctx: &Ctx, db: Db, n: usize, report: &mut Report) -> anyhow::Result<()> {
    let mut karta = Karta::start(&ctx.bins, db, 0).await?;
    let concurrency = ctx.plan.setup_concurrency;
    let start_rss = karta.rss_kib()?;
    let limit = start_rss + (MEMORY_SHARE * system::mem_available_kib()? as f64) as u64;
    let halt = Arc::new(AtomicBool::new(false));
    let guard = tokio::spawn(memory_guard(karta.pid(), limit, halt.clone()));
    let sessions = create_sessions(karta.public, karta.key.clone(), n, concurrency, &halt).await;
    let sessions_rss = karta.rss_kib()?;
    let opened = Instant::now();
    let streams = match sessions {
        Ok(s) => open_streams(karta.public, karta.key.clone(), s, concurrency, &halt).await,
        Err(e) => Err(e),
    };
    let open_time = opened.elapsed();
    let budget_hit = halt.swap(true, Ordering::Relaxed);
    guard.abort();
    let streams = streams?;
    if streams.is_empty() {
        bail!("no stream was opened (memory budget reached: {budget_hit})");
    }
    tokio::time::sleep(SETTLE).await;
    let streams_rss = karta.rss_kib()?;
    karta.check_running()?;
    let per = |from: u64| (streams_rss as f64 - from as f64) / streams.len() as f64;
    report.row(&[
        db.name().into(),
        if budget_hit {
            format!(
                "{} of {n} (stopped: Karta grew by {MEMORY_SHARE} of available memory)",
                streams.len()
            )
        } else {
            streams.len().to_string()
        },
        mib(start_rss),
        mib(sessions_rss),
        mib(streams_rss),
        format!("{:.1}", per(sessions_rss)),
        format!("{:.1}", per(start_rss)),
        format!("{:.1}", open_time.as_secs_f64()),
    ]);
    drop(streams);
    Ok(())
}

/// Sets `halt` once the process's RSS exceeds `limit_kib` (or cannot be read).
async fn memory_guard(pid: u32, limit_kib: u64, halt: Arc<AtomicBool>) {
    while !halt.load(Ordering::Relaxed) {
        if system::rss_kib(pid).map_or(true, |rss| rss > limit_kib) {
            halt.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(GUARD_PERIOD).await;
    }
}

/// Creates up to `n` sessions over `concurrency` connections (fewer once `halt` is set).
async fn create_sessions(
    addr: SocketAddr,
    key: Arc<str>,
    n: usize,
    concurrency: usize,
    halt: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (next, key, halt) = (next.clone(), key.clone(), halt.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await?;
                let mut ids = Vec::new();
                while !halt.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < n {
                    ids.push(api::create_session(&mut conn, &key).await?);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.map_err(|e| anyhow!("session task: {e}"))??);
    }
    Ok(ids)
}

/// Opens one approval-waiting stream per session, `concurrency` at a time (none more once `halt`
/// is set).
async fn open_streams(
    addr: SocketAddr,
    key: Arc<str>,
    sessions: Vec<String>,
    concurrency: usize,
    halt: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<HeldStream>> {
    let n = sessions.len();
    let sessions = Arc::new(sessions);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (next, key, sessions) = (next.clone(), key.clone(), sessions.clone());
            let halt = halt.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while !halt.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(sid) = sessions.get(i) else {
                        break;
                    };
                    let stream = tokio::time::timeout(OPEN_TIMEOUT, open_one(addr, &key, sid))
                        .await
                        .map_err(|_| {
                            anyhow!("stream {i} did not reach input_required in time")
                        })??;
                    held.push(stream);
                }
                anyhow::Ok(held)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.extend(t.await.map_err(|e| anyhow!("stream task: {e}"))??);
    }
    Ok(held)
}

async fn open_one(addr: SocketAddr, key: &str, sid: &str) -> anyhow::Result<HeldStream> {
    let mut conn = Conn::connect(addr).await?;
    let path = api::messages_path(sid);
    let body = Some(Bytes::from_static(api::APPROVAL_TURN));
    let resp = conn.send(Method::POST, &path, Some(key), body).await?;
    if resp.status() != StatusCode::OK {
        bail!("{path}: expected 200, got {}", resp.status());
    }
    let mut body = resp.into_body();
    client::read_until_line(&mut body, b"event: input_required")
        .await
        .with_context(|| format!("{path}: waiting for input_required"))?;
    Ok(HeldStream {
        _conn: conn,
        _body: body,
    })
}

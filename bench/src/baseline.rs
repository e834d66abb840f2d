//! The baseline: a minimal actix-web server whose POST handler answers a small fixed JSON body.
//! It runs in a child process (the bench binary re-executed) so it does not share the load
//! generator's runtime or cores' scheduling with it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::client::Conn;
use crate::system::{free_addr, ChildGuard};

/// Worker threads of the baseline server.
const WORKERS: usize = 2;
/// How long the baseline child may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

async fn answer(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"id":"msg_0","text":"echo: hello","status":"completed"}"#)
}

/// Serves the baseline on `listen` until killed (the hidden `baseline` subcommand).
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| App::new().default_service(web::post().to(answer)))
            .workers(WORKERS)
            .bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?
            .run()
            .await
            .context("baseline server stopped")
    })
}

/// The baseline server running in a child process; killed on drop.
pub struct Baseline {
    _child: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Baseline {
    /// Re-executes this binary as `karta-bench baseline --listen ADDR` and waits until it answers.
    pub async fn start() -> anyhow::Result<Baseline> {
        let addr = free_addr()?;
        let exe = std::env::current_exe().context("cannot locate the bench binary")?;
        let child = Command::new(exe)
            .arg("baseline")
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the baseline server")?;
        let mut guard = ChildGuard::new(child, "the baseline server");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            guard.check_running()?;
            if answers(addr).await {
                return Ok(Baseline {
                    _child: guard,
                    addr,
                });
            }
            if Instant::now() > deadline {
                bail!("the baseline server did not answer on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn answers(addr: SocketAddr) -> bool {
    let Ok(mut conn) = Conn::connect(addr).await else {
        return false;
    };
    let body = Some(Bytes::from_static(b"{}"));
    conn.call(Method::POST, "/", None, body)
        .await
        .is_ok_and(|(s, _)| s == StatusCode::OK)
}

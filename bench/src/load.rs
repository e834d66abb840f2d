//! The closed-loop load generator: one kept-alive connection per client, each client sending its
//! next request as soon as the previous answer is complete.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::api;
use crate::client::{self, Conn};
use crate::stats::{micros, Sample};

/// Longest a single request may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Hard cap on requests per client per run (the time limit normally ends a run long before).
const MAX_STEPS_PER_CLIENT: u64 = 10_000_000;
/// Pause after a failed request, so a broken server does not spin the client.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What a client sends.
enum Op {
    /// `POST /` to the baseline server.
    Baseline,
    /// A non-streaming turn on the client's session.
    Turn { path: String },
    /// A streaming turn on the client's session.
    Stream { path: String },
    /// `GET` of the client's session.
    Get { path: String },
    /// A non-streaming Chat Completions call (a new session each).
    Chat,
}

/// One simulated client: its connection and what it sends.
pub struct Worker {
    conn: Conn,
    op: Op,
    key: Arc<str>,
}

impl Worker {
    /// A client of the baseline server.
    pub async fn baseline(addr: SocketAddr) -> anyhow::Result<Worker> {
        Ok(Worker {
            conn: Conn::connect(addr).await?,
            op: Op::Baseline,
            key: Arc::from(""),
        })
    }

    /// A Karta client with its own new session; `stream` picks streaming turns.
    pub async fn karta(addr: SocketAddr, key: Arc<str>, stream: bool) -> anyhow::Result<Worker> {
        let mut conn = Conn::connect(addr).await?;
        let sid = api::create_session(&mut conn, &key).await?;
        let path = api::messages_path(&sid);
        let op = if stream {
            Op::Stream { path }
        } else {
            Op::Turn { path }
        };
        Ok(Worker { conn, op, key })
    }

    /// A client of the OpenAI Chat Completions adapter (non-streaming).
    pub async fn chat(addr: SocketAddr, key: Arc<str>) -> anyhow::Result<Worker> {
        Ok(Worker {
            conn: Conn::connect(addr).await?,
            op: Op::Chat,
            key,
        })
    }

    /// A Karta client reading its own new session (`GET /v1/sessions/{id}`): authentication
    /// and a store read, no turn.
    pub async fn reader(addr: SocketAddr, key: Arc<str>) -> anyhow::Result<Worker> {
        let mut conn = Conn::connect(addr).await?;
        let sid = api::create_session(&mut conn, &key).await?;
        Ok(Worker {
            conn,
            op: Op::Get {
                path: format!("/v1/sessions/{sid}"),
            },
            key,
        })
    }

    /// `n` clients built concurrently by `make`.
    pub async fn many<F, Fut>(n: usize, make: F) -> anyhow::Result<Vec<Worker>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Worker>> + Send + 'static,
    {
        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(make())).collect();
        let mut workers = Vec::with_capacity(n);
        for h in handles {
            workers.push(h.await.context("client setup task")??);
        }
        Ok(workers)
    }

    async fn step(&mut self, origin: Instant) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let first_event = match &self.op {
            Op::Baseline => {
                let body = Some(Bytes::from_static(br#"{"text":"hello"}"#));
                self.conn
                    .expect(StatusCode::OK, Method::POST, "/", None, body)
                    .await?;
                None
            }
            Op::Turn { path } => {
                let body = Some(Bytes::from_static(api::TURN));
                self.conn
                    .expect(StatusCode::OK, Method::POST, path, Some(&self.key), body)
                    .await?;
                None
            }
            Op::Chat => {
                let body = Some(Bytes::from_static(api::CHAT));
                self.conn
                    .expect(
                        StatusCode::OK,
                        Method::POST,
                        api::CHAT_PATH,
                        Some(&self.key),
                        body,
                    )
                    .await?;
                None
            }
            Op::Get { path } => {
                self.conn
                    .expect(StatusCode::OK, Method::GET, path, Some(&self.key), None)
                    .await?;
                None
            }
            Op::Stream { path } => {
                let body = Some(Bytes::from_static(api::STREAM_TURN));
                let resp = self
                    .conn
                    .send(Method::POST, path, Some(&self.key), body)
                    .await?;
                let status = resp.status();
                let mut body = resp.into_body();
                if status != StatusCode::OK {
                    bail!("{path}: expected 200, got {status}");
                }
                client::drain_sse(&mut body, start).await?.map(micros)
            }
        };
        Ok(Sample {
            start_us: micros(start.duration_since(origin)),
            latency_us: micros(start.elapsed()),
            first_event_us: first_event,
        })
    }
}

/// When a run stops: whichever limit is reached first.
#[derive(Clone)]
pub struct Limits {
    /// Requests before this much time has passed are not recorded.
    pub warmup: Duration,
    /// Recording stops after this much time (after the warm-up).
    pub measure: Duration,
    /// At most this many recorded requests, over all clients.
    pub max_ops: u64,
    /// Stops the run early when set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Limits {
    /// A timed run.
    pub fn timed(warmup: Duration, measure: Duration) -> Self {
        Limits {
            warmup,
            measure,
            max_ops: u64::MAX,
            stop: None,
        }
    }

    /// A run of `ops` requests, bounded by `max_time`.
    pub fn counted(ops: u64, max_time: Duration) -> Self {
        Limits {
            warmup: Duration::ZERO,
            measure: max_time,
            max_ops: ops,
            stop: None,
        }
    }
}

/// What a run measured.
pub struct LoadResult {
    /// The instant sample start times count from.
    pub origin: Instant,
    /// Recorded requests.
    pub samples: Vec<Sample>,
    /// Failed requests (including the warm-up).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// From the end of the warm-up to the last answer.
    pub window: Duration,
    /// The clients, to be used again.
    pub workers: Vec<Worker>,
}

impl LoadResult {
    /// Recorded requests per second.
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.samples.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// `errors` for a table cell, with the first error's message.
    pub fn errors_cell(&self) -> String {
        match &self.first_error {
            None => "0".into(),
            Some(e) => format!("{} (first: {})", self.errors, e.replace('|', "/")),
        }
    }
}

struct Shared {
    origin: Instant,
    measure_start: Instant,
    end: Instant,
    tickets: AtomicU64,
    limits: Limits,
}

#[derive(Default)]
struct ClientOutcome {
    samples: Vec<Sample>,
    errors: u64,
    first_error: Option<String>,
}

async fn drive(mut worker: Worker, shared: Arc<Shared>) -> (Worker, ClientOutcome) {
    let mut out = ClientOutcome::default();
    for _ in 0..MAX_STEPS_PER_CLIENT {
        let now = Instant::now();
        let stopped = shared
            .limits
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        if now >= shared.end || stopped {
            break;
        }
        let measuring = now >= shared.measure_start;
        if measuring && shared.tickets.fetch_add(1, Ordering::Relaxed) >= shared.limits.max_ops {
            break;
        }
        match tokio::time::timeout(STEP_TIMEOUT, worker.step(shared.origin)).await {
            Ok(Ok(s)) if measuring => out.samples.push(s),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => out.fail(format!("{e:#}")).await,
            Err(_) => {
                worker.conn.reset();
                out.fail(format!("no answer within {STEP_TIMEOUT:?}")).await;
            }
        }
    }
    (worker, out)
}

impl ClientOutcome {
    async fn fail(&mut self, msg: String) {
        self.errors += 1;
        self.first_error.get_or_insert(msg);
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}

/// Runs `workers` concurrently until a limit is reached.
pub async fn run(workers: Vec<Worker>, limits: Limits) -> anyhow::Result<LoadResult> {
    let origin = Instant::now();
    let measure_start = origin + limits.warmup;
    let shared = Arc::new(Shared {
        origin,
        measure_start,
        end: measure_start + limits.measure,
        tickets: AtomicU64::new(0),
        limits,
    });
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(drive(w, shared.clone())))
        .collect();
    let mut result = LoadResult {
        origin,
        samples: Vec::new(),
        errors: 0,
        first_error: None,
        window: Duration::ZERO,
        workers: Vec::new(),
    };
    for h in handles {
        let (worker, o) = h.await.map_err(|e| anyhow!("client task: {e}"))?;
        result.samples.extend(o.samples);
        result.errors += o.errors;
        if result.first_error.is_none() {
            result.first_error = o.first_error;
        }
        result.workers.push(worker);
    }
    result.window = Instant::now().saturating_duration_since(measure_start);
    Ok(result)
}

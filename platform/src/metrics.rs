//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Counters and histograms are updated where things happen (HTTP middleware, the turn's end, the
//! event writer, reloads, the model gateway); gauges (live turns, warm harnesses, subscribers,
//! database connections) are read when scraped. One process-wide set, like a logger.

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `route`, `method`, `status` of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/v1/sessions/{session_id}`), or `unmatched`.
    pub route: String,
    /// GET, POST, ...
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// `route` of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's pattern.
    pub route: String,
}

/// `driver`, `status` of a turn.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnLabels {
    /// The driver's name.
    pub driver: String,
    /// completed, failed, cancelled.
    pub status: String,
}

/// `driver` of a turn.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    /// The driver's name.
    pub driver: String,
}

/// `result` of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// `provider`, `status` of a model call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// anthropic, openai.
    pub provider: String,
    /// The HTTP status.
    pub status: u16,
}

/// Values read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Sessions held in memory: a turn runs, is queued or is followed.
    pub live_sessions: i64,
    /// Turns running now.
    pub running_turns: i64,
    /// Sessions whose harness may be warm.
    pub warm_harnesses: i64,
    /// SSE responses being streamed.
    pub sse_subscribers: i64,
    /// Database connections open.
    pub db_connections: i64,
    /// Of them, idle.
    pub db_idle_connections: i64,
    /// Live gateway tokens (sessions with a harness that may call a model).
    pub gateway_tokens: i64,
}

/// Every metric.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request latency.
    pub http_seconds: Family<RouteLabels, Histogram>,
    /// Turns ended.
    pub turns: Family<TurnLabels, Counter>,
    /// Turn duration.
    pub turn_seconds: Family<DriverLabels, Histogram>,
    /// Events committed to the replay log.
    pub event_log_writes: Counter,
    /// Event-writer batches that failed.
    pub event_log_failures: Counter,
    /// Event-writer batches written in one statement (PostgreSQL; the others take a
    /// transaction of a few).
    pub event_log_single_statement: Counter,
    /// Configuration reloads.
    pub reloads: Family<ResultLabels, Counter>,
    /// Model calls through the gateway.
    pub model_calls: Family<ModelLabels, Counter>,
    /// Turns whose harness-reported usage differs from what the gateway counted.
    pub usage_disagreements: Counter,
    live_sessions: Gauge,
    running_turns: Gauge,
    warm_harnesses: Gauge,
    sse_subscribers: Gauge,
    db_connections: Gauge,
    db_idle_connections: Gauge,
    gateway_tokens: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

fn turn_buckets() -> impl Iterator<Item = f64> {
    [
        0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    ]
    .into_iter()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("karta");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let turns = Family::<TurnLabels, Counter>::default();
        let turn_seconds = Family::<DriverLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(turn_buckets())
        });
        let m = Metrics {
            http_requests,
            http_seconds,
            turns,
            turn_seconds,
            event_log_writes: Counter::default(),
            event_log_failures: Counter::default(),
            event_log_single_statement: Counter::default(),
            reloads: Family::default(),
            model_calls: Family::default(),
            usage_disagreements: Counter::default(),
            live_sessions: Gauge::default(),
            running_turns: Gauge::default(),
            warm_harnesses: Gauge::default(),
            sse_subscribers: Gauge::default(),
            db_connections: Gauge::default(),
            db_idle_connections: Gauge::default(),
            gateway_tokens: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.http_seconds.clone(),
        );
        registry.register(
            "turns",
            "Turns ended, by driver and status",
            m.turns.clone(),
        );
        registry.register(
            "turn_duration_seconds",
            "Turn duration by driver",
            m.turn_seconds.clone(),
        );
        registry.register(
            "event_log_writes",
            "Events committed to the replay log",
            m.event_log_writes.clone(),
        );
        registry.register(
            "event_log_write_failures",
            "Event-writer batches not saved",
            m.event_log_failures.clone(),
        );
        registry.register(
            "event_log_single_statement_batches",
            "Event-writer batches written in one statement (PostgreSQL)",
            m.event_log_single_statement.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "model_calls",
            "Model calls through the gateway by provider and status",
            m.model_calls.clone(),
        );
        registry.register(
            "usage_disagreements",
            "Turns whose harness-reported usage differs from the gateway's count",
            m.usage_disagreements.clone(),
        );
        registry.register(
            "live_sessions",
            "Sessions held in memory: a turn runs, is queued or is followed",
            m.live_sessions.clone(),
        );
        registry.register(
            "running_turns",
            "Turns running now",
            m.running_turns.clone(),
        );
        registry.register(
            "warm_harnesses",
            "Sessions whose harness may be running",
            m.warm_harnesses.clone(),
        );
        registry.register(
            "sse_subscribers",
            "SSE responses being streamed",
            m.sse_subscribers.clone(),
        );
        registry.register(
            "db_connections",
            "Database connections open",
            m.db_connections.clone(),
        );
        registry.register(
            "db_idle_connections",
            "Database connections idle",
            m.db_idle_connections.clone(),
        );
        registry.register(
            "gateway_tokens",
            "Live model-gateway session tokens",
            m.gateway_tokens.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition, with the gauges set from `s`.
    pub fn render(&self, s: Snapshot) -> String {
        self.live_sessions.set(s.live_sessions);
        self.running_turns.set(s.running_turns);
        self.warm_harnesses.set(s.warm_harnesses);
        self.sse_subscribers.set(s.sse_subscribers);
        self.db_connections.set(s.db_connections);
        self.db_idle_connections.set(s.db_idle_connections);
        self.gateway_tokens.set(s.gateway_tokens);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

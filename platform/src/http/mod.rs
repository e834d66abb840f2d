//! actix-web: the public listener (data plane) and the admin listener (operator API).

pub mod adapters;
pub mod admin;
pub mod auth;
pub mod body;
pub mod data;
pub mod error;
pub mod gateway;
pub mod idempotency;
pub mod openapi;
pub mod org;
pub mod sse;
pub mod throttle;

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{middleware, web, HttpResponse, HttpServer};
use serde_json::json;

use crate::app::App;

/// The request's id (`x-request-id`), for handlers.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The audit actor of a request: who (`kind`, `id`), its request id and client address.
pub fn audit_actor(
    req: &actix_web::HttpRequest,
    kind: &str,
    id: &str,
) -> crate::store::audit::Actor {
    use actix_web::HttpMessage;
    crate::store::audit::Actor {
        kind: kind.into(),
        id: id.into(),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        remote_addr: req.peer_addr().map(|a| a.ip().to_string()),
    }
}

/// Largest request body accepted on the public listener.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Gives every response an `x-request-id`, 500 bodies the same id so a user can report it, and
/// the framework's own plain-text 413 a JSON body like every other error.
async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // An incoming id is honoured when it is a sane token, so a caller can trace its own request.
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .map(str::to_string)
        .unwrap_or_else(|| crate::store::new_id("req"));
    // A NUL in the path or query can reach no valid resource, and PostgreSQL refuses it in any
    // text parameter: a 400 here instead of a 500 from the store.
    let uri = req.uri().to_string();
    if uri.contains('\0') || uri.to_ascii_lowercase().contains("%00") {
        let body = json!({"detail": "NUL characters are not allowed in the URL"});
        let mut res = req.into_response(HttpResponse::BadRequest().json(body));
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), v);
        }
        return Ok(res.map_into_boxed_body());
    }
    // Handlers put it in the audit rows they write.
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(id.clone()));
    // Every line logged while serving the request (and by the turn it starts) carries the id.
    let span = tracing::info_span!("request", request_id = %id);
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let res = tracing::Instrument::instrument(next.call(req), span)
        .await?
        .map_into_boxed_body();
    record(&res, &method, started);
    let mut res = match res.status() {
        StatusCode::INTERNAL_SERVER_ERROR => {
            let body = json!({"detail": "internal error", "request_id": id});
            res.into_response(HttpResponse::InternalServerError().json(body))
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            let body =
                json!({"detail": format!("request body too large (limit {MAX_BODY_BYTES} bytes)")});
            res.into_response(HttpResponse::PayloadTooLarge().json(body))
        }
        _ => res,
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}

/// Counts the request by route pattern (never the raw path: ids would explode the label set).
fn record(res: &ServiceResponse<BoxBody>, method: &str, started: std::time::Instant) {
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let m = crate::metrics::get();
    m.http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route: route.clone(),
            method: method.to_string(),
            status: res.status().as_u16(),
        })
        .inc();
    m.http_seconds
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
}

/// `GET /metrics` (admin listener): Prometheus text.
async fn metrics(app: web::Data<App>) -> HttpResponse {
    let (live, running, warm, tokens) = app.runtime.gauges();
    let (conns, idle) = app.store.pool_state();
    let text = crate::metrics::get().render(crate::metrics::Snapshot {
        live_sessions: live as i64,
        running_turns: running as i64,
        warm_harnesses: warm as i64,
        sse_subscribers: sse::open_streams(),
        db_connections: i64::from(conns),
        db_idle_connections: i64::from(idle),
        gateway_tokens: tokens as i64,
    });
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

/// Turns off Nagle's algorithm on every accepted connection: SSE frames are small and
/// latency-bound, and with Nagle plus the client's delayed ACK a kept-alive stream's first event
/// waited about 40 ms.
fn no_delay(conn: &dyn std::any::Any, _ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"detail": "Not Found"}))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `/readyz`: 200 when the database answers with every migration applied and at least one
/// driver is registered; 503 naming what is not.
async fn ready(app: web::Data<App>) -> HttpResponse {
    let db = app.store.read_async(crate::store::migrations_pending).await;
    let (database, migrations) = match &db {
        Ok(false) => ("ok".to_string(), "ok".to_string()),
        Ok(true) => ("ok".to_string(), "pending".to_string()),
        Err(e) => (format!("unreachable: {e}"), "unknown".to_string()),
    };
    let drivers = app.drivers.list().len();
    let ok = matches!(db, Ok(false)) && drivers > 0;
    let body = json!({
        "status": if ok { "ready" } else { "not ready" },
        "checks": {
            "database": database,
            "migrations": migrations,
            "drivers": {"registered": drivers, "load_errors": app.drivers.load_errors()},
        },
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(body)
    }
}

/// Connections the model gateway holds at once.
const GATEWAY_MAX_CONNECTIONS: usize = 2048;

/// Binds both listeners and serves until the process is stopped. SIGHUP reloads the configuration.
pub async fn serve(app: Arc<App>) -> std::io::Result<()> {
    let cfg = app.config();
    let data = web::Data::from(app.clone());

    let public_data = data.clone();
    let public = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(public_data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .wrap(middleware::from_fn(request_id))
            .route("/healthz", web::get().to(health))
            .route("/readyz", web::get().to(ready))
            .route("/openapi.json", web::get().to(openapi::document))
            .configure(data::configure)
            .configure(org::configure)
            .configure(adapters::configure)
            .default_service(web::to(not_found))
    })
    .on_connect(no_delay)
    .bind(&cfg.server.listen)?;
    let admin_data = data.clone();
    let admin = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(admin_data.clone())
            .wrap(middleware::from_fn(request_id))
            .route("/healthz", web::get().to(health))
            .route("/readyz", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
            .configure(admin::configure)
            .default_service(web::to(not_found))
    })
    .on_connect(no_delay)
    .workers(1)
    .bind(&cfg.server.admin_listen)?;

    let listeners = app
        .gateway_listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| std::io::Error::other("the gateway's listeners are already in use"))?;
    let gateway_data = web::Data::from(app.gateway.clone());
    let max_body = app.gateway.max_body();
    let gateway_port = match &listeners.tcp {
        Some(t) => Some(t.local_addr()?.port()),
        None => None,
    };
    let gateway = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(gateway_data.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .configure(gateway::configure)
            .default_service(web::to(gateway::not_found))
    })
    .workers(1)
    // Sandboxes open a connection per model call at most; this bounds what a flood can hold.
    .max_connections(GATEWAY_MAX_CONNECTIONS)
    .client_request_timeout(std::time::Duration::from_secs(10))
    .listen_uds(listeners.unix)?;
    let gateway = match listeners.tcp {
        Some(tcp) => gateway.listen(tcp)?,
        None => gateway,
    };
    tracing::info!(port = ?gateway_port, "model gateway ready");
    let proxy_socket = app.sandbox.proxy_socket();
    let grants = app.gateway.grants.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::sandbox::proxy::serve(&proxy_socket, grants).await {
            tracing::error!(error = %e, "the egress proxy stopped; network = \"full\" sandboxes have no internet");
        }
    });
    for addr in public.addrs() {
        tracing::info!(%addr, "public listener (data plane) ready");
    }
    for addr in admin.addrs() {
        tracing::info!(%addr, "admin listener (operator API) ready");
    }
    if app.admin_token.is_none() {
        tracing::warn!("KARTA_ADMIN_TOKEN is not set: the admin API refuses every request");
    }

    let throttle = app.auth_throttle.clone();
    let limits = app.rate_limits.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            throttle.prune();
            limits.prune();
        }
    });

    tokio::spawn(app.releases.clone().sweep_forever());
    tokio::spawn(app.webhooks.clone().run());

    let reloader = app.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("SIGHUP handler unavailable; reload with POST /admin/v1/config/reload");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading configuration");
            match reloader
                .reload(crate::store::audit::Actor::system("sighup"))
                .await
            {
                Ok(_) => tracing::info!("configuration reloaded"),
                Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
            }
        }
    });

    let (a, b, c) = futures_util::future::join3(public.run(), admin.run(), gateway.run()).await;
    a.and(b).and(c)
}

//! The operator API on the admin listener: `/admin/v1/...`.

pub mod resources;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::{App, AppError};
use crate::drivers::DriverOrigin;
use crate::http::auth::Operator;
use crate::http::error::ApiError;
use crate::reconcile::ReconcileError;

/// Registers the admin routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1")
            .route("/config/reload", web::post().to(reload))
            .route("/drivers", web::get().to(drivers))
            .route("/config", web::get().to(config_view))
            .route("/config/plan", web::get().to(config_plan))
            .route("/audit", web::get().to(audit_export))
            .route(
                "/sessions/{session_id}/model_calls",
                web::get().to(model_calls),
            )
            .configure(resources::configure),
    );
}

/// `POST /admin/v1/config/reload`: 200 with the applied plan, 422 with every problem (the running
/// configuration stays).
async fn reload(
    app: web::Data<App>,
    _op: Operator,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let actor = crate::http::audit_actor(&req, "operator", "operator");
    let result = app.into_inner().reload(actor).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "reload refused, the running configuration stays");
    }
    match result {
        Ok(plan) => Ok(HttpResponse::Ok().json(json!({
            "applied": true,
            "changes": plan.changes,
            "summary": plan.to_string(),
        }))),
        Err(AppError::Config(e)) => Err(ApiError::Validation(
            e.issues
                .iter()
                .map(|i| {
                    let mut loc = vec!["config".to_string()];
                    if let Some(f) = &i.file {
                        loc.push(f.display().to_string());
                    }
                    if let Some(k) = &i.key {
                        loc.push(k.clone());
                    }
                    (loc, i.to_string(), "config_error".to_string())
                })
                .collect(),
        )),
        Err(AppError::Reconcile(ReconcileError::Conflict(m))) => Err(ApiError::invalid(
            vec!["config".into()],
            m,
            "config_conflict",
        )),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// Names of settings whose values are never shown.
fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "secret", "token", "password", "credential"]
        .iter()
        .any(|w| k.contains(w))
}

/// A copy of `v` with the values of secret-looking keys replaced.
fn redact(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let shown = if secret_name(k) && !x.is_object() && !x.is_null() {
                        json!("[redacted]")
                    } else if k == "env" && x.is_object() {
                        // An environment table (an ACP agent's, say) holds credentials under
                        // any name: only its names are shown.
                        serde_json::Value::Object(
                            x.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(n, _)| (n.clone(), json!("[redacted]")))
                                .collect(),
                        )
                    } else {
                        redact(x)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// A database URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:[redacted]{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `GET /admin/v1/drivers`: the registered drivers, their settings (secrets redacted) and what
/// the last load refused.
async fn drivers(app: web::Data<App>, _op: Operator) -> HttpResponse {
    let list: Vec<_> = app
        .drivers
        .list()
        .into_iter()
        .map(|(name, origin)| {
            let loaded = app.drivers.get(&name);
            let settings = loaded
                .as_ref()
                .map(|d| redact(d.settings()))
                .unwrap_or(serde_json::Value::Null);
            let mut d = json!({
                "name": name,
                "version": loaded.as_ref().and_then(|d| d.version.clone()),
                "abi_version": karta_driver_api::ABI_VERSION,
                "payload_version": karta_driver_api::PAYLOAD_VERSION,
                "capabilities": loaded.as_ref().map(|d| d.info.capabilities.names()),
                "settings_schema": loaded.as_ref().map(|d| d.info.settings_schema.clone()),
                "settings": settings,
            });
            match origin {
                DriverOrigin::Builtin => d["origin"] = json!("builtin"),
                DriverOrigin::Plugin(p) => {
                    d["origin"] = json!("plugin");
                    d["path"] = json!(p);
                }
            }
            d
        })
        .collect();
    HttpResponse::Ok().json(json!({ "drivers": list, "load_errors": app.drivers.load_errors() }))
}

/// `GET /admin/v1/config`: the configuration in force, merged from every layer, with secrets
/// redacted, and the file that declares each tenant and project.
async fn config_view(app: web::Data<App>, _op: Operator) -> Result<HttpResponse, ApiError> {
    let cfg = app.config();
    let mut v = serde_json::to_value(&*cfg).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(url) = cfg.database.url.as_deref() {
        v["database"]["url"] = json!(redact_url(url));
    }
    let v = redact(&v);
    let opts = app.load_options().clone();
    let sources = tokio::task::spawn_blocking(move || crate::config::resource_sources(&opts))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({ "config": v, "sources": sources })))
}

/// `GET /admin/v1/config/plan`: what a reload would change now (nothing is written).
async fn config_plan(app: web::Data<App>, _op: Operator) -> Result<HttpResponse, ApiError> {
    let opts = app.load_options().clone();
    let store = app.store.clone();
    let running = app.config();
    let planned = tokio::task::spawn_blocking(move || {
        let cfg = crate::config::load(&opts).map_err(AppError::Config)?;
        let mut plan = crate::reconcile::plan(&store, &cfg).map_err(AppError::Reconcile)?;
        plan.changes.extend(crate::reconcile::policy_changes(
            &running.policies,
            &cfg.policies,
        ));
        Ok::<_, AppError>(plan)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    match planned {
        Ok(plan) => Ok(HttpResponse::Ok().json(json!({
            "changes": plan.changes,
            "summary": plan.to_string(),
        }))),
        Err(AppError::Config(e)) => Err(ApiError::Validation(
            e.issues
                .iter()
                .map(|i| {
                    (
                        vec!["config".to_string()],
                        i.to_string(),
                        "config_error".to_string(),
                    )
                })
                .collect(),
        )),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `?since=&until=&org=` of the audit export.
#[derive(serde::Deserialize)]
struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
    org: Option<String>,
}

/// Entries read per query while exporting.
const EXPORT_PAGE: i64 = 1000;

/// `GET /admin/v1/audit`: the audit log across orgs (or of `org`), newest first, as JSON lines,
/// streamed page by page.
async fn audit_export(
    app: web::Data<App>,
    _op: Operator,
    q: web::Query<ExportQuery>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let time = crate::http::org::audit::time;
    let filter = crate::store::audit::AuditFilter {
        org_id: q.org.clone(),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        ..Default::default()
    };
    // The export itself is audited (spec 05 §5.1 `audit.exported`), before anything is sent.
    let actor = crate::http::audit_actor(&req, "operator", "operator");
    let details = json!({"org": q.org, "since": q.since, "until": q.until});
    let org = q.org.clone();
    app.store
        .write_async(move |c| {
            crate::store::audit::record_by(
                c,
                org.as_deref(),
                &actor,
                "audit.exported",
                org.as_deref().unwrap_or("*"),
                &details,
            )
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = app.store.clone();
    let pages = futures_util::stream::unfold(Some(filter), move |state| {
        let store = store.clone();
        async move {
            let filter = state?;
            let f = filter.clone();
            let rows = store
                .read_async(move |c| crate::store::audit::page(c, &f, EXPORT_PAGE))
                .await;
            match rows {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let mut out = String::new();
                    let next = (rows.len() as i64 == EXPORT_PAGE).then(|| {
                        crate::store::audit::AuditFilter {
                            before_id: rows.last().map(|r| r.id.clone()),
                            ..filter
                        }
                    });
                    for r in rows {
                        let event = crate::http::org::audit::AuditEvent::from(r);
                        out.push_str(&serde_json::to_string(&event).unwrap_or_default());
                        out.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(out)), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(pages))
}

/// One model call the gateway recorded.
#[derive(serde::Serialize)]
struct ModelCallDto {
    id: String,
    org_id: String,
    project_id: String,
    session_id: String,
    provider: String,
    model: String,
    status: i32,
    streamed: bool,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_creation_tokens: i64,
    latency_ms: i64,
    created_at: String,
}

/// Calls listed at most.
const MODEL_CALLS_PAGE: i64 = 1000;

/// `GET /admin/v1/sessions/{session_id}/model_calls`: every model call the session's harness
/// made through the gateway, oldest first (at most 1000).
async fn model_calls(
    app: web::Data<App>,
    _op: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sid = path.into_inner();
    let calls = app
        .store
        .read_async(move |c| {
            crate::store::model_calls::list_for_session(c, None, &sid, MODEL_CALLS_PAGE)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let list: Vec<ModelCallDto> = calls
        .into_iter()
        .map(|m| ModelCallDto {
            created_at: m
                .created_at
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            id: m.id,
            org_id: m.org_id,
            project_id: m.project_id,
            session_id: m.session_id,
            provider: m.provider,
            model: m.model,
            status: m.status,
            streamed: m.streamed,
            input_tokens: m.input_tokens,
            output_tokens: m.output_tokens,
            cache_read_tokens: m.cache_read_tokens,
            cache_creation_tokens: m.cache_creation_tokens,
            latency_ms: m.latency_ms,
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "model_calls": list })))
}

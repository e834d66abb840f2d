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
            .route(
                "/sessions/{session_id}/model_calls",
                web::get().to(model_calls),
            )
            .configure(resources::configure),
    );
}

/// `POST /admin/v1/config/reload`: 200 with the applied plan, 422 with every problem (the running
/// configuration stays).
async fn reload(app: web::Data<App>, _op: Operator) -> Result<HttpResponse, ApiError> {
    let result = app.into_inner().reload().await;
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

/// `GET /admin/v1/drivers`: the registered drivers.
async fn drivers(app: web::Data<App>, _op: Operator) -> HttpResponse {
    let list: Vec<_> = app
        .drivers
        .list()
        .into_iter()
        .map(|(name, origin)| match origin {
            DriverOrigin::Builtin => json!({"name": name, "origin": "builtin"}),
            DriverOrigin::Plugin(p) => json!({"name": name, "origin": "plugin", "path": p}),
        })
        .collect();
    HttpResponse::Ok().json(json!({ "drivers": list }))
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

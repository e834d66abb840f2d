//! The operator API on the admin listener: `/admin/v1/...`.

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
            .route("/drivers", web::get().to(drivers)),
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

//! `GET /v1/events`: the org's events (budget thresholds now), in the envelope webhooks deliver.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{page_limit, ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::org_events;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events", web::get().to(list));
}

/// Query of `GET /v1/events`.
#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events of this type (`budget.threshold_reached`, `budget.exhausted`).
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Events, 1 to 100 (default 50).
    limit: Option<i64>,
}

/// The org's events, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "`{\"data\": [event]}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 422, description = "`limit` is out of range", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let limit = page_limit(q.limit, 50, 100)?;
    let (org, ty) = (access.org().to_string(), q.event_type.clone());
    let rows = app
        .store
        .read_async(move |c| org_events::list(c, &org, ty.as_deref(), limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // The same envelope webhooks deliver.
    let data: Vec<Value> = rows
        .iter()
        .map(crate::platform::webhooks::envelope)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

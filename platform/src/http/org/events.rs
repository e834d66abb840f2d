//! `GET /v1/events`: the org's events (budget thresholds now), in the envelope webhooks deliver.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{page_limit, ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::org_events::{self, OrgEvent};

/// The envelope's `api_version`.
pub const API_VERSION: &str = "2026-01-01";

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

/// An event in its delivery envelope: `{id, type, created, org_id, api_version, data: {object}}`.
pub fn envelope(e: &OrgEvent) -> Value {
    let object: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
    json!({
        "id": e.id,
        "type": e.event_type,
        "created": e.created_at.and_utc().timestamp(),
        "org_id": e.org_id,
        "api_version": API_VERSION,
        "data": {"object": object},
    })
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
    let data: Vec<Value> = rows.iter().map(envelope).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

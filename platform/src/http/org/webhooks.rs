//! `/v1/webhook_endpoints` (admin scope) and the deliveries of an event (spec 05 §9).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::platform::webhooks::WebhookError;
use crate::store::webhooks::Endpoint;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/webhook_endpoints", web::post().to(create))
        .route("/v1/webhook_endpoints", web::get().to(list))
        .route("/v1/webhook_endpoints/{id}", web::patch().to(update))
        .route("/v1/webhook_endpoints/{id}", web::delete().to(delete))
        .route(
            "/v1/webhook_endpoints/{id}/rotate_secret",
            web::post().to(rotate),
        )
        .route("/v1/events/{id}/deliveries", web::get().to(deliveries))
        .route("/v1/events/{id}/redeliver", web::post().to(redeliver));
}

/// An endpoint (never its secret).
#[derive(Serialize, ToSchema)]
pub struct EndpointView {
    /// `whe_...`
    id: String,
    /// Its name (the declared name for configuration endpoints).
    name: String,
    /// Where events are POSTed.
    url: String,
    /// The event types it receives (`*`: all).
    event_types: Vec<String>,
    /// Whether it receives events.
    enabled: bool,
    /// Why Karta disabled it.
    disabled_reason: Option<String>,
    /// `config` or `api`.
    managed_by: String,
    /// Until when the secret before the last rotation still signs (RFC 3339).
    previous_secret_until: Option<String>,
    /// RFC 3339.
    created_at: String,
}

fn view(e: Endpoint) -> EndpointView {
    EndpointView {
        event_types: serde_json::from_str(&e.event_types).unwrap_or_default(),
        id: e.id,
        name: e.name,
        url: e.url,
        enabled: e.enabled,
        disabled_reason: e.disabled_reason,
        managed_by: e.managed_by,
        previous_secret_until: e.previous_secret_until.map(|t| t.and_utc().to_rfc3339()),
        created_at: e.created_at.and_utc().to_rfc3339(),
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(field, msg) => {
                ApiError::invalid(vec!["body".into(), field.into()], msg, "value_error")
            }
            WebhookError::NotFound => ApiError::NotFound("webhook endpoint not found".into()),
            e @ WebhookError::ConfigOwned => ApiError::Conflict(e.to_string()),
            e @ WebhookError::NoMasterKey => ApiError::Unavailable(e.to_string()),
            WebhookError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

/// `POST /v1/webhook_endpoints` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateBody {
    /// `https://...`
    url: String,
    /// Event types (`*` for all).
    event_types: Vec<String>,
    /// Default true.
    #[serde(default)]
    enabled: Option<bool>,
}

/// Creates an endpoint; the answer holds its signing secret (`whsec_...`), shown only once.
#[utoipa::path(
    post,
    path = "/v1/webhook_endpoints",
    tag = "webhooks",
    request_body = CreateBody,
    responses(
        (status = 201, description = "`{\"webhook_endpoint\": {...}, \"secret\": \"whsec_...\"}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 422, description = "A URL that is not https or not public, or an unknown event type", body = ValidationErrorBody),
        (status = 503, description = "No master key to seal the secret with", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: CreateBody = crate::http::body::parse(&body)?;
    let (e, secret) = app
        .webhooks
        .create(
            access.org(),
            &b.url,
            b.event_types,
            b.enabled.unwrap_or(true),
            super::keys::actor(&access, &req),
        )
        .await?;
    Ok(HttpResponse::Created().json(json!({"webhook_endpoint": view(e), "secret": secret})))
}

/// The org's endpoints.
#[utoipa::path(
    get,
    path = "/v1/webhook_endpoints",
    tag = "webhooks",
    responses(
        (status = 200, description = "`{\"data\": [endpoint]}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(app: web::Data<App>, access: Access) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let org = access.org().to_string();
    let rows = app
        .store
        .read_async(move |c| crate::store::webhooks::list(c, &org))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let data: Vec<EndpointView> = rows.into_iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// `PATCH /v1/webhook_endpoints/{id}` body.
#[derive(Deserialize, ToSchema)]
pub struct UpdateBody {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    /// Re-enabling clears `disabled_reason`.
    enabled: Option<bool>,
}

/// Changes an API endpoint (configuration endpoints answer 409).
#[utoipa::path(
    patch,
    path = "/v1/webhook_endpoints/{id}",
    tag = "webhooks",
    request_body = UpdateBody,
    params(("id" = String, Path, description = "`whe_...`")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Declared in the platform configuration", body = ErrorBody),
        (status = 422, description = "Invalid URL or event type", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: UpdateBody = crate::http::body::parse(&body)?;
    let e = app
        .webhooks
        .update(
            access.org(),
            &id,
            b.url,
            b.event_types,
            b.enabled,
            super::keys::actor(&access, &req),
        )
        .await?;
    Ok(HttpResponse::Ok().json(view(e)))
}

/// Deletes an API endpoint and its pending deliveries.
#[utoipa::path(
    delete,
    path = "/v1/webhook_endpoints/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "`whe_...`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Declared in the platform configuration", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    app.webhooks
        .delete(access.org(), &id, super::keys::actor(&access, &req))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST .../rotate_secret` body.
#[derive(Deserialize, ToSchema, Default)]
pub struct RotateBody {
    /// How long the old secret keeps signing beside the new one, in seconds (default 86400).
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

/// A new signing secret (shown once); the old one signs too for the overlap.
#[utoipa::path(
    post,
    path = "/v1/webhook_endpoints/{id}/rotate_secret",
    tag = "webhooks",
    request_body = RotateBody,
    params(("id" = String, Path, description = "`whe_...`")),
    responses(
        (status = 200, description = "`{\"webhook_endpoint\", \"secret\"}`", body = Object),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Declared in the platform configuration", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rotate(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: RotateBody = crate::http::body::parse(&body)?;
    let overlap =
        std::time::Duration::from_secs(b.overlap_seconds.unwrap_or(86_400).min(7 * 86_400));
    let (e, secret) = app
        .webhooks
        .rotate(
            access.org(),
            &id,
            overlap,
            super::keys::actor(&access, &req),
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({"webhook_endpoint": view(e), "secret": secret})))
}

/// An event's deliveries, each with its attempts (status, latency, error).
#[utoipa::path(
    get,
    path = "/v1/events/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "`evt_...`")),
    responses(
        (status = 200, description = "`{\"data\": [{\"id\", \"endpoint_id\", \"status\", \"attempts\": [...]}]}`", body = Object),
        (status = 404, description = "No such event", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn deliveries(
    app: web::Data<App>,
    access: Access,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let (org, id) = (access.org().to_string(), id.into_inner());
    let rows = app
        .store
        .read_async(move |c| {
            crate::store::org_events::get(c, &org, &id)?;
            crate::store::webhooks::deliveries_of(c, &org, &id)
        })
        .await
        .map_err(event_error)?;
    let t = |t: chrono::NaiveDateTime| t.and_utc().to_rfc3339();
    let data: Vec<_> = rows
        .into_iter()
        .map(|(d, attempts)| {
            json!({
                "id": d.id,
                "endpoint_id": d.endpoint_id,
                "status": d.status,
                "next_attempt_at": (d.status == "pending").then(|| t(d.next_attempt_at)),
                "delivered_at": d.delivered_at.map(t),
                "attempts": attempts.into_iter().map(|a| json!({
                    "attempt": a.attempt,
                    "status_code": a.status_code,
                    "latency_ms": a.latency_ms,
                    "error": a.error,
                    "at": t(a.created_at),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

fn event_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::NotFound => ApiError::NotFound("event not found".into()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `POST /v1/events/{id}/redeliver` body.
#[derive(Deserialize, ToSchema, Default)]
pub struct RedeliverBody {
    /// Only this endpoint's delivery (default: all of the event's).
    #[serde(default)]
    endpoint_id: Option<String>,
}

/// Sends an event again now (its deliveries queued again, attempts kept).
#[utoipa::path(
    post,
    path = "/v1/events/{id}/redeliver",
    tag = "webhooks",
    request_body = RedeliverBody,
    params(("id" = String, Path, description = "`evt_...`")),
    responses(
        (status = 202, description = "`{\"queued\": n}`", body = Object),
        (status = 404, description = "No such event or delivery", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    app: web::Data<App>,
    access: Access,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: RedeliverBody = crate::http::body::parse(&body)?;
    let (org, id) = (access.org().to_string(), id.into_inner());
    let n = app
        .store
        .write_async(move |c| {
            crate::store::org_events::get(c, &org, &id)?;
            crate::store::webhooks::redeliver(
                c,
                &org,
                &id,
                b.endpoint_id.as_deref(),
                crate::store::now(),
            )
        })
        .await
        .map_err(event_error)?;
    if n == 0 {
        return Err(ApiError::NotFound(
            "the event has no delivery to send again".into(),
        ));
    }
    Ok(HttpResponse::Accepted().json(json!({ "queued": n })))
}

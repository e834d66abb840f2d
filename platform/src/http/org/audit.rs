//! `GET /v1/audit_events`: the org's audit log, for admin keys.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::audit::AuditFilter;
use crate::store::models::AuditEntry;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/audit_events", web::get().to(list));
}

/// Query of `GET /v1/audit_events`.
#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// ISO-8601: entries at or after.
    since: Option<String>,
    /// ISO-8601: entries before.
    until: Option<String>,
    /// e.g. `api_key.created`.
    action: Option<String>,
    /// Who did it, e.g. `api_key:key_...`, `config`, `cli`.
    actor_id: Option<String>,
    /// The affected resource's id.
    resource_id: Option<String>,
    /// The affected resource's kind, e.g. `api_key`, `tenant`, `project`, `policy`.
    resource_type: Option<String>,
    /// 1 to 100, default 50.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One audit event (spec 05 §5.2).
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    /// `aud_...`, sortable by time.
    id: String,
    /// The org it belongs to (`null` for platform-wide changes).
    org_id: Option<String>,
    /// What happened, e.g. `api_key.revoked`.
    action: String,
    /// `api_key`, `user` (a session token's subject), `operator` or `system`.
    actor_type: String,
    /// Who did it: `api_key:key_...`, `user:<subject>`, `operator`, `config`, `cli`, ...
    actor_id: String,
    /// The end user behind a session token, when a user made the change.
    user_id: Option<String>,
    /// The request that did it.
    request_id: Option<String>,
    /// The client's address (`null` in an org's view of the operator's and the system's
    /// changes: the operator's network is not the tenant's to see).
    remote_ip: Option<String>,
    /// The affected resource's kind.
    resource_type: String,
    /// The affected resource.
    resource_id: String,
    /// SHA-256 of the state before the change (updates only).
    before_digest: Option<String>,
    /// SHA-256 of `metadata` (the state after the change).
    after_digest: Option<String>,
    /// Non-secret details.
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// ISO-8601.
    created_at: String,
}

/// A page, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// The events.
    data: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; `null` at the end.
    next_cursor: Option<String>,
}

impl From<AuditEntry> for AuditEvent {
    fn from(e: AuditEntry) -> Self {
        let user_id = (e.actor_type == "user")
            .then(|| e.actor.strip_prefix("user:").map(str::to_string))
            .flatten();
        AuditEvent {
            metadata: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
            created_at: e
                .created_at
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            resource_type: e
                .resource_type
                .unwrap_or_else(|| crate::store::audit::resource_type(&e.action).to_string()),
            id: e.id,
            org_id: e.org_id,
            action: e.action,
            actor_type: e.actor_type,
            actor_id: e.actor,
            user_id,
            request_id: e.request_id,
            remote_ip: e.remote_addr,
            before_digest: e.before_digest,
            after_digest: e.digest,
            resource_id: e.target,
        }
    }
}

impl AuditEvent {
    /// The event as the org sees it: only its own callers' addresses (API keys, session
    /// tokens' users); the operator's and the system's stay with them (the request id stays,
    /// for support to correlate).
    fn for_org(mut self) -> Self {
        if !matches!(self.actor_type.as_str(), "api_key" | "user") {
            self.remote_ip = None;
        }
        self
    }
}

/// An optional ISO-8601 query parameter, or a 422 naming it.
pub(crate) fn time(
    field: &str,
    v: &Option<String>,
) -> Result<Option<chrono::NaiveDateTime>, ApiError> {
    v.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.naive_utc())
                .map_err(|e| {
                    ApiError::invalid(
                        vec!["query".into(), field.into()],
                        format!("not an ISO-8601 time: {e}"),
                        "value_error",
                    )
                })
        })
        .transpose()
}

/// The org's audit events, newest first (`admin`).
#[utoipa::path(
    get,
    path = "/v1/audit_events",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = AuditPage),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not an API key with `admin`", body = ErrorBody),
        (status = 422, description = "A parameter is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let q = q.into_inner();
    let limit = crate::http::error::page_limit(q.limit, 50, 100)?;
    let filter = AuditFilter {
        org_id: Some(access.org().to_string()),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        action: q.action,
        actor: q.actor_id,
        target: q.resource_id,
        resource_type: q.resource_type,
        before_id: q.cursor,
    };
    let mut rows = app
        .store
        .read_async(move |c| crate::store::audit::page(c, &filter, limit + 1))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(AuditPage {
        data: rows
            .into_iter()
            .map(|r| AuditEvent::from(r).for_org())
            .collect(),
        next_cursor,
    }))
}

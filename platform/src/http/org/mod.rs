//! The org API on the public listener (API keys): session tokens and API keys.

pub mod audit;
pub mod budgets;
pub mod events;
pub mod keys;
pub mod logs;
pub mod model_keys;
pub mod projects;
pub mod releases;
pub mod usage;
pub mod webhooks;

use actix_web::{web, HttpResponse};
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::platform::tokens::{Claims, DEFAULT_TTL_SECONDS, PROJECT_SCOPE};

/// Registers the org routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    keys::configure(cfg);
    audit::configure(cfg);
    projects::configure(cfg);
    releases::configure(cfg);
    logs::configure(cfg);
    webhooks::configure(cfg);
    usage::configure(cfg);
    budgets::configure(cfg);
    events::configure(cfg);
    model_keys::configure(cfg);
    cfg.route(
        "/v1/projects/{project_ref}/session_tokens",
        web::post().to(mint_session_token),
    )
    // The original control plane's path, kept so existing backends work unchanged.
    .route(
        "/agent_projects/{project_ref}/session_tokens",
        web::post().to(mint_session_token),
    );
}

/// `POST .../session_tokens` body.
#[derive(Deserialize, ToSchema)]
pub struct MintBody {
    /// Bind the token to this end user: sessions it creates must carry `metadata.user_id` equal
    /// to it, and it reaches only those sessions.
    #[serde(default)]
    sub: Option<String>,
    /// Lifetime in seconds, 60 to 3600 (default 900).
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

/// The minted token.
#[derive(serde::Serialize, ToSchema)]
pub struct MintedToken {
    /// The JWT to hand to the browser.
    token: String,
    /// When it stops working (ISO-8601).
    expires_at: String,
    /// `{slug, id}` of the project it is valid for.
    #[schema(value_type = Object)]
    project: serde_json::Value,
}

/// Mint a session token for a project (API key with `write`).
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/session_tokens",
    tag = "session tokens",
    params(("project_ref" = String, Path, description = "The project's slug or id")),
    request_body = MintBody,
    responses(
        (status = 201, description = "Minted", body = MintedToken),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not a key with `write`", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn mint_session_token(
    app: web::Data<App>,
    access: Access,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Write)?;
    let b: MintBody = body::parse(&bytes)?;
    let ttl = b.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(60..=3600).contains(&ttl) {
        return Err(ApiError::invalid(
            vec!["body".into(), "ttl_seconds".into()],
            "must be between 60 and 3600",
            "value_error",
        ));
    }
    if b.sub
        .as_deref()
        .is_some_and(|s| s.is_empty() || s.len() > 256)
    {
        return Err(ApiError::invalid(
            vec!["body".into(), "sub".into()],
            "must be 1 to 256 characters",
            "value_error",
        ));
    }
    let project_id = access.scope().unwrap_or_default().to_string();
    let project = app.runtime.project(access.org(), &project_id).await?;
    let now = Utc::now().timestamp();
    let claims = Claims {
        org_id: access.org().to_string(),
        project_id: project.id.clone(),
        project_slug: project.slug.clone(),
        scope: PROJECT_SCOPE.into(),
        iat: now,
        exp: now + ttl,
        sub: b.sub,
    };
    let expires_at = Utc
        .timestamp_opt(claims.exp, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(HttpResponse::Created().json(json!({
        "token": app.tokens.mint(&claims),
        "expires_at": expires_at,
        "project": {"slug": project.slug, "id": project.id},
    })))
}

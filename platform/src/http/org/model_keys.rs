//! `/v1/model_keys/{provider}`: an org's own model-provider key (BYOK), for admin keys. The key
//! is sealed at rest and only its last four characters are ever shown.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::byok::{ByokError, KeyInfo, PROVIDERS};
use crate::platform::keys::Scope;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/model_keys/{provider}", web::put().to(put))
        .route("/v1/model_keys/{provider}", web::get().to(get))
        .route("/v1/model_keys/{provider}", web::delete().to(delete));
}

/// Path of the routes.
#[derive(Deserialize)]
pub struct ProviderPath {
    provider: String,
}

/// `PUT` body.
#[derive(Deserialize, ToSchema)]
pub struct PutModelKey {
    /// The provider's API key.
    api_key: Option<String>,
}

/// What is shown of a key.
#[derive(Serialize, ToSchema)]
pub struct ModelKeyView {
    /// `anthropic` or `openai`.
    provider: String,
    /// The key's last four characters.
    last4: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

impl From<KeyInfo> for ModelKeyView {
    fn from(k: KeyInfo) -> Self {
        let t = |d: chrono::NaiveDateTime| d.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true);
        ModelKeyView {
            provider: k.provider,
            last4: k.last4,
            created_at: t(k.created_at),
            updated_at: t(k.updated_at),
        }
    }
}

fn provider(p: &str) -> Result<&'static str, ApiError> {
    PROVIDERS.into_iter().find(|x| *x == p).ok_or_else(|| {
        ApiError::invalid(
            vec!["path".into(), "provider".into()],
            format!("must be one of {}, got `{p}`", PROVIDERS.join(", ")),
            "value_error",
        )
    })
}

fn byok_error(e: ByokError) -> ApiError {
    match e {
        ByokError::NoMasterKey => ApiError::Conflict(
            "BYOK is not enabled on this server: its operator must set KARTA_MASTER_KEY".into(),
        ),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Sets (or replaces) the org's key for a provider; its model calls use it from the next call on.
#[utoipa::path(
    put,
    path = "/v1/model_keys/{provider}",
    tag = "model_keys",
    params(("provider" = String, Path, description = "`anthropic` or `openai`")),
    request_body = PutModelKey,
    responses(
        (status = 200, description = "The key (last four characters only)", body = ModelKeyView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
        (status = 409, description = "BYOK is not enabled on this server", body = ErrorBody),
        (status = 422, description = "Unknown provider or missing key", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<ProviderPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Admin)?;
    let provider = provider(&path.provider)?;
    let b: PutModelKey = body::parse(&bytes)?;
    let secret = b
        .api_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| body::missing("api_key"))?;
    if secret.len() > 4096 || secret.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            vec!["body".into(), "api_key".into()],
            "must be one line of at most 4096 characters",
            "value_error",
        ));
    }
    let actor = super::keys::actor(&access, &req);
    let org = access.org().to_string();
    let last4 = crate::platform::byok::last4(&secret);
    let (_, info) = app
        .model_keys
        .put(access.org(), provider, &secret, move |c, replaced| {
            crate::store::audit::record_by(
                c,
                Some(&org),
                &actor,
                if replaced {
                    "model_key.replaced"
                } else {
                    "model_key.set"
                },
                provider,
                &serde_json::json!({"provider": provider, "last4": last4}),
            )
        })
        .await
        .map_err(byok_error)?;
    Ok(HttpResponse::Ok().json(ModelKeyView::from(info)))
}

/// What is shown of the org's key for a provider.
#[utoipa::path(
    get,
    path = "/v1/model_keys/{provider}",
    tag = "model_keys",
    params(("provider" = String, Path, description = "`anthropic` or `openai`")),
    responses(
        (status = 200, description = "The key (last four characters only)", body = ModelKeyView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
        (status = 404, description = "No key for this provider", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    app: web::Data<App>,
    access: Access,
    path: web::Path<ProviderPath>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Admin)?;
    let provider = provider(&path.provider)?;
    match app
        .model_keys
        .info(access.org(), provider)
        .await
        .map_err(byok_error)?
    {
        Some(k) => Ok(HttpResponse::Ok().json(ModelKeyView::from(k))),
        None => Err(ApiError::NotFound("no model key for this provider".into())),
    }
}

/// Removes the org's key for a provider; its calls go back to the platform's key.
#[utoipa::path(
    delete,
    path = "/v1/model_keys/{provider}",
    tag = "model_keys",
    params(("provider" = String, Path, description = "`anthropic` or `openai`")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
        (status = 404, description = "No key for this provider", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<ProviderPath>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Admin)?;
    let provider = provider(&path.provider)?;
    let actor = super::keys::actor(&access, &req);
    let org = access.org().to_string();
    let gone = app
        .model_keys
        .delete(access.org(), provider, move |c| {
            crate::store::audit::record_by(
                c,
                Some(&org),
                &actor,
                "model_key.deleted",
                provider,
                &serde_json::json!({"provider": provider}),
            )
        })
        .await
        .map_err(byok_error)?;
    if !gone {
        return Err(ApiError::NotFound("no model key for this provider".into()));
    }
    Ok(HttpResponse::NoContent().finish())
}

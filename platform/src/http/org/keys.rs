//! `/v1/api_keys`: an org's keys, managed with an admin key.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;
use crate::http::auth::{Access, Credential};
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::{self, KeyError, OrgRef, Scope};
use crate::store::models::ApiKey;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/api_keys", web::get().to(list))
        .route("/v1/api_keys", web::post().to(create))
        .route("/v1/api_keys/{key_id}", web::delete().to(revoke));
}

/// An API key as the org sees it: never the secret or its hash.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    /// `key_...`
    id: String,
    /// The name it was given.
    name: String,
    /// `read`, `write`, `admin` (nested: admin ⊇ write ⊇ read).
    scopes: Vec<String>,
    /// The key's first characters (`kt_live_` + 6), kept for lookup.
    prefix: String,
    /// Its last four characters.
    last4: String,
    /// ISO-8601.
    created_at: String,
    /// Last successful use (updated at most once a minute).
    last_used_at: Option<String>,
    /// When it was revoked (revocation is permanent).
    revoked_at: Option<String>,
}

fn iso(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            scopes: keys::stored_scopes(&k)
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            id: k.id,
            name: k.name,
            prefix: k.lookup_prefix,
            last4: k.last4,
            created_at: iso(k.created_at),
            last_used_at: k.last_used_at.map(iso),
            revoked_at: k.revoked_at.map(iso),
        }
    }
}

/// `POST /v1/api_keys` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateKeyBody {
    /// A name to recognise the key by (required, at most 200 characters).
    #[serde(default)]
    name: String,
    /// Scopes (default `["read", "write"]`).
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// The created key and its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    api_key: ApiKeyView,
    /// `kt_live_...`: store it now, it cannot be shown again.
    secret: String,
}

/// The org's keys.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Newest first, revoked ones included.
    data: Vec<ApiKeyView>,
}

/// Who a request's change is audited as.
pub(crate) fn actor(access: &Access, req: &HttpRequest) -> crate::store::audit::Actor {
    match &access.credential {
        Credential::Key(p) => {
            crate::http::audit_actor(req, "api_key", &format!("api_key:{}", p.key_id))
        }
        // A session token acts for its end user (spec 05 §5.2 `user_id`); one minted without
        // a subject is `user` with no id.
        Credential::Token(c) => match c.sub.as_deref() {
            Some(sub) => crate::http::audit_actor(req, "user", &format!("user:{sub}")),
            None => crate::http::audit_actor(req, "user", "user"),
        },
    }
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::NotFound | KeyError::UnknownTenant(_) => {
            ApiError::NotFound("key not found".into())
        }
        e @ KeyError::ConfigOwned(_) => ApiError::Conflict(e.to_string()),
        KeyError::BadName(m) => {
            ApiError::ValidationFailed(vec!["body".into(), "name".into()], m.into())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(key_error)
}

/// List the org's API keys (`read`).
#[utoipa::path(
    get,
    path = "/v1/api_keys",
    tag = "api keys",
    responses(
        (status = 200, description = "The org's keys, newest first", body = KeyList),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not an API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(app: web::Data<App>, access: Access) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let org = access.org().to_string();
    let rows = app
        .store
        .read_async(move |c| crate::store::keys::list_for_org(c, &org))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(KeyList {
        data: rows.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Create an API key (`admin`); the secret is in the answer only.
#[utoipa::path(
    post,
    path = "/v1/api_keys",
    tag = "api keys",
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = CreatedKey),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not an API key with `admin`", body = ErrorBody),
        (status = 422, description = "No name, or an unknown scope", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: CreateKeyBody = body::parse(&bytes)?;
    let names = b
        .scopes
        .unwrap_or_else(|| vec!["read".into(), "write".into()]);
    let mut scopes = Vec::new();
    for (i, s) in names.iter().enumerate() {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::ValidationFailed(
                vec!["body".into(), "scopes".into(), i.to_string()],
                format!("unknown scope `{s}` (use read, write or admin)"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::ValidationFailed(
            vec!["body".into(), "scopes".into()],
            "at least one scope is required".into(),
        ));
    }
    let (store, org, who) = (
        app.store.clone(),
        access.org().to_string(),
        actor(&access, &req),
    );
    let (issued, row) =
        blocking(move || keys::create(&store, OrgRef::Id(&org), &b.name, &scopes, &who)).await?;
    Ok(HttpResponse::Created().json(CreatedKey {
        api_key: row.into(),
        secret: issued.plaintext,
    }))
}

/// Revoke an API key for good (`admin`). It is refused from the next request on this instance,
/// and within 5 seconds (the verified-key cache) on others.
#[utoipa::path(
    delete,
    path = "/v1/api_keys/{key_id}",
    tag = "api keys",
    params(("key_id" = String, Path, description = "The key's id (`key_...`)")),
    responses(
        (status = 200, description = "Revoked (or already revoked)", body = ApiKeyView),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not an API key with `admin`", body = ErrorBody),
        (status = 404, description = "No such key in the org", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let id = path.into_inner();
    let (store, org, who) = (
        app.store.clone(),
        access.org().to_string(),
        actor(&access, &req),
    );
    let row = blocking(move || keys::revoke(&store, &org, &id, &who)).await?;
    // This instance refuses it from the next request on.
    app.keys.invalidate_all();
    Ok(HttpResponse::Ok().json(ApiKeyView::from(row)))
}

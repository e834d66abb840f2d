//! Releases of a project (spec 06 §3): publish an archive, list, show, roll back.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::platform::releases::{Publish, ReleaseError};
use crate::store::releases::Release;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/projects/{project_ref}/releases",
        web::post().to(publish),
    )
    .route("/v1/projects/{project_ref}/releases", web::get().to(list))
    .route(
        "/v1/projects/{project_ref}/releases/{version}",
        web::get().to(get),
    )
    .route(
        "/v1/projects/{project_ref}/rollback",
        web::post().to(rollback),
    );
}

/// A release.
#[derive(Serialize, ToSchema)]
pub struct ReleaseView {
    /// `rel_...`
    id: String,
    /// The project.
    project_id: String,
    /// 1, 2, ...
    version: i64,
    /// `v1`, `v2`, ...
    name: String,
    /// The commit (or the archive's SHA-256 when none was given).
    commit_sha: String,
    /// What the deployer said.
    message: String,
    /// `production` or `preview`.
    kind: String,
    /// `ready`, `active`, `superseded` or `expired`.
    status: String,
    /// `dockerfile`, `buildpack` or `file_copy` (detected; every kind runs its tree as is).
    build_kind: String,
    /// Always null: no image is built.
    image_ref: Option<String>,
    /// Files in the release.
    files: i64,
    /// Their bytes.
    size_bytes: i64,
    /// Where its sessions are created: the project's routes, or a preview's own prefix.
    url: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, when it last became active.
    activated_at: Option<String>,
    /// RFC 3339, when a preview stops serving.
    expires_at: Option<String>,
}

fn time(t: chrono::NaiveDateTime) -> String {
    t.and_utc().to_rfc3339()
}

fn view(r: Release, project_slug: &str) -> ReleaseView {
    let url = match r.kind.as_str() {
        "preview" => format!("/v1/projects/{project_slug}@v{}", r.version),
        _ => format!("/v1/projects/{project_slug}"),
    };
    ReleaseView {
        name: format!("v{}", r.version),
        id: r.id,
        project_id: r.project_id,
        version: r.version,
        commit_sha: r.commit_sha,
        message: r.message,
        kind: r.kind,
        status: r.status,
        build_kind: r.build_kind,
        image_ref: None,
        files: r.files,
        size_bytes: r.size_bytes,
        url,
        created_at: time(r.created_at),
        activated_at: r.activated_at.map(time),
        expires_at: r.expires_at.map(time),
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::Archive(a) => {
                ApiError::invalid(vec!["body".into()], a.to_string(), "archive_refused")
            }
            ReleaseError::App(m) => ApiError::invalid(vec!["body".into()], m, "invalid_app"),
            e @ ReleaseError::NoVersion(_) => ApiError::NotFound(e.to_string()),
            ReleaseError::NotActivatable(m) => ApiError::Conflict(m),
            ReleaseError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The route's project (by `{project_ref}`), with its slug.
async fn project(app: &App, access: &Access) -> Result<crate::store::models::Project, ApiError> {
    if access.preview.is_some() {
        return Err(ApiError::NotFound(
            "releases belong to the project, not to one of its previews".into(),
        ));
    }
    super::projects::scoped(app, access).await
}

/// Query of `POST .../releases`.
#[derive(Deserialize, IntoParams)]
pub struct PublishQuery {
    /// The commit the archive was built from (the archive's SHA-256 when absent); publishing
    /// the same commit again answers the release already made.
    commit_sha: Option<String>,
    /// What changed.
    message: Option<String>,
    /// A preview: served under `/v1/projects/<project>@v<N>` until it expires, never the
    /// project's live release.
    #[serde(default)]
    preview: bool,
    /// Make the release live at once (default `true`); `false` publishes it `ready`, to roll
    /// forward to later.
    activate: Option<bool>,
}

/// Writes the body to a new file in `dir`, at most `max` bytes; its path and SHA-256.
async fn receive(
    mut body: web::Payload,
    dir: std::path::PathBuf,
    max: u64,
) -> Result<(std::path::PathBuf, String), ApiError> {
    let path = dir.join(format!("{}.tar.gz", crate::store::new_id("upload")));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    let outcome = async {
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(ApiError::TooLarge(format!(
                    "the archive is larger than {} MiB ([releases] max_upload_mb)",
                    max >> 20
                )));
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        file.flush()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if size == 0 {
            return Err(ApiError::invalid(
                vec!["body".into()],
                "the body must be a .tar.gz of the harness app",
                "missing",
            ));
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => Ok((path, format!("{:x}", hash.finalize()))),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}

/// Publishes a release from a `.tar.gz` of the harness app (the body, `Content-Type:
/// application/gzip`): unpacked under guard, validated, numbered, and made the project's live
/// release (new sessions run it; running sessions keep theirs) unless it is a preview.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/releases",
    tag = "releases",
    params(("project_ref" = String, Path, description = "The project's slug or id"), PublishQuery),
    request_body(content_type = "application/gzip", description = "A .tar.gz of the harness app"),
    responses(
        (status = 201, description = "Published", body = ReleaseView),
        (status = 200, description = "That commit was published before: its release", body = ReleaseView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
        (status = 413, description = "Larger than `[releases] max_upload_mb`", body = ErrorBody),
        (status = 429, description = "`[releases] max_concurrent_publishes` are running", body = ErrorBody),
        (status = 422, description = "The archive was refused (the member and the rule) or the app is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    q: web::Query<PublishQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Write)?;
    let project = project(&app, &access).await?;
    let q = q.into_inner();
    if let Some(sha) = &q.commit_sha {
        if sha.is_empty() || sha.len() > 64 || !sha.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid(
                vec!["query".into(), "commit_sha".into()],
                "must be 1 to 64 letters and digits",
                "value_error",
            ));
        }
    }
    let Some(_slot) = app.releases.try_publish_slot() else {
        return Err(ApiError::TooMany(
            "other releases are being published; try again shortly ([releases] max_concurrent_publishes)".into(),
        ));
    };
    let incoming = app
        .releases
        .incoming()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (archive, digest) = receive(body, incoming, app.releases.max_upload_bytes()).await?;
    let slug = project.slug.clone();
    let result = app
        .releases
        .publish(
            Publish {
                project,
                archive: archive.clone(),
                digest,
                commit_sha: q.commit_sha,
                message: q.message.unwrap_or_default(),
                preview: q.preview,
                activate: q.activate.unwrap_or(true),
            },
            &app.runtime,
            super::keys::actor(&access, &req),
        )
        .await;
    let _ = tokio::fs::remove_file(&archive).await;
    let (release, created) = result?;
    let mut res = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(view(release, &slug)))
}

/// Query of `GET .../releases`.
#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Releases, 1 to 100 (default 50).
    limit: Option<i64>,
}

/// The project's releases, newest first.
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/releases",
    tag = "releases",
    params(("project_ref" = String, Path, description = "The project's slug or id"), ListQuery),
    responses(
        (status = 200, description = "`{\"releases\": [release]}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let limit = crate::http::error::page_limit(q.limit, 50, 100)?;
    let project = project(&app, &access).await?;
    let (org, pid) = (project.org_id.clone(), project.id.clone());
    let rows = app
        .store
        .read_async(move |c| crate::store::releases::list(c, &org, &pid, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let releases: Vec<ReleaseView> = rows.into_iter().map(|r| view(r, &project.slug)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "releases": releases })))
}

/// `v7` or `7`.
fn version(field: Vec<String>, v: &str) -> Result<i64, ApiError> {
    v.strip_prefix('v')
        .unwrap_or(v)
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("must be a version such as `v3` or `3`, got `{v}`"),
                "value_error",
            )
        })
}

/// One release by version (`v3` or `3`).
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/releases/{version}",
    tag = "releases",
    params(
        ("project_ref" = String, Path, description = "The project's slug or id"),
        ("version" = String, Path, description = "`v3` or `3`"),
    ),
    responses(
        (status = 200, description = "The release", body = ReleaseView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project or version", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    app: web::Data<App>,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let n = version(vec!["path".into(), "version".into()], &path.1)?;
    let project = project(&app, &access).await?;
    let (org, pid) = (project.org_id.clone(), project.id.clone());
    let r = app
        .store
        .read_async(move |c| crate::store::releases::get_version(c, &org, &pid, n))
        .await
        .map_err(|_| ApiError::NotFound(format!("the project has no release v{n}")))?;
    Ok(HttpResponse::Ok().json(view(r, &project.slug)))
}

/// `POST .../rollback` body.
#[derive(Deserialize, ToSchema)]
pub struct RollbackBody {
    /// The version to make live: `v7` or `7`.
    to: serde_json::Value,
}

/// Makes an earlier (or later) production release the project's live one, at once: new
/// sessions run it, running sessions keep theirs. Audited.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/rollback",
    tag = "releases",
    params(("project_ref" = String, Path, description = "The project's slug or id")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "`{\"project\", \"current_release\", \"previous_release\"}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 404, description = "No such project or version", body = ErrorBody),
        (status = 409, description = "The version is a preview or its files are gone", body = ErrorBody),
        (status = 422, description = "`to` is not a version", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Admin)?;
    let b: RollbackBody = crate::http::body::parse(&body)?;
    let to = match &b.to {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let n = version(vec!["body".into(), "to".into()], &to)?;
    let project = project(&app, &access).await?;
    let (current, previous) = app
        .releases
        .activate(
            &project.org_id,
            &project.id,
            n,
            super::keys::actor(&access, &req),
        )
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "project": project.slug,
        "current_release": view(current, &project.slug),
        "previous_release": previous.map(|p| view(p, &project.slug)),
    })))
}

//! `/admin/v1/tenants` and `/admin/v1/projects`: the operator's view and edits. Config-owned
//! rows answer 409 naming the file and line that declare them.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::Multitask;
use crate::http::auth::Operator;
use crate::http::body;
use crate::http::error::ApiError;
use crate::platform::resources::{self, NewProject, ProjectPatch, ResourceError};
use crate::store::audit::Actor;
use crate::store::models::{Org, Project};

/// Registers the routes (inside `/admin/v1`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tenants", web::get().to(list_tenants))
        .route("/tenants", web::post().to(create_tenant))
        .route("/tenants/{tenant_ref}", web::get().to(get_tenant))
        .route("/tenants/{tenant_ref}", web::patch().to(update_tenant))
        .route("/tenants/{tenant_ref}", web::delete().to(delete_tenant))
        .route("/projects", web::get().to(list_projects))
        .route("/projects", web::post().to(create_project))
        .route("/projects/{project_id}", web::get().to(get_project))
        .route("/projects/{project_id}", web::patch().to(update_project))
        .route("/projects/{project_id}", web::delete().to(delete_project));
}

fn iso(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Serialize)]
struct TenantDto {
    id: String,
    slug: String,
    name: String,
    managed_by: String,
    disabled_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Org> for TenantDto {
    fn from(o: Org) -> Self {
        TenantDto {
            id: o.id,
            slug: o.slug,
            name: o.name,
            managed_by: o.managed_by,
            disabled_at: o.disabled_at.map(iso),
            created_at: iso(o.created_at),
            updated_at: iso(o.updated_at),
        }
    }
}

#[derive(Serialize)]
struct ProjectDto {
    id: String,
    tenant_id: String,
    slug: String,
    path: String,
    harness: Option<String>,
    multitask: String,
    managed_by: String,
    disabled_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Project> for ProjectDto {
    fn from(p: Project) -> Self {
        ProjectDto {
            id: p.id,
            tenant_id: p.org_id,
            slug: p.slug,
            path: p.source_path,
            harness: p.harness,
            multitask: p.multitask,
            managed_by: p.managed_by,
            disabled_at: p.disabled_at.map(iso),
            created_at: iso(p.created_at),
            updated_at: iso(p.updated_at),
        }
    }
}

impl From<ResourceError> for ApiError {
    fn from(e: ResourceError) -> Self {
        match e {
            ResourceError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            ResourceError::Taken(m) => ApiError::Conflict(m),
            e @ ResourceError::ConfigOwned { .. } => ApiError::Conflict(e.to_string()),
            ResourceError::Invalid(field, m) => {
                ApiError::invalid(vec!["body".into(), field.into()], m, "value_error")
            }
            ResourceError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Runs a blocking resource operation with the app's config locator.
async fn run<T: Send + 'static>(
    app: &web::Data<App>,
    req: &HttpRequest,
    f: impl FnOnce(&App, resources::Locator<'_>, &Actor) -> Result<T, ResourceError> + Send + 'static,
) -> Result<T, ApiError> {
    let app: Arc<App> = app.clone().into_inner();
    let who = crate::http::audit_actor(req, "operator", "operator");
    tokio::task::spawn_blocking(move || {
        let locate = |t: &str, p: Option<&str>| app.declared_at(t, p);
        f(&app, &locate, &who)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::from)
}

/// `?limit=&cursor=` (and `tenant` for projects).
#[derive(Deserialize)]
struct PageQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    tenant: Option<String>,
}

fn limit(q: &PageQuery) -> Result<i64, ApiError> {
    crate::http::error::page_limit(q.limit, 50, 500)
}

async fn list_tenants(
    app: web::Data<App>,
    _op: Operator,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let n = limit(&q)?;
    let mut rows = app
        .store
        .read_async(move |c| crate::store::orgs::page(c, q.cursor.as_deref(), n + 1))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let more = rows.len() as i64 > n;
    rows.truncate(n as usize);
    let next = more.then(|| rows.last().map(|o| o.slug.clone())).flatten();
    let data: Vec<TenantDto> = rows.into_iter().map(TenantDto::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"data": data, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    slug: Option<String>,
    name: Option<String>,
    disabled: Option<bool>,
}

async fn create_tenant(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: TenantBody = body::parse(&bytes)?;
    let slug = b.slug.unwrap_or_default();
    let name = b.name.unwrap_or_else(|| slug.clone());
    let org = run(&app, &req, move |a, _, who| {
        resources::create_tenant(&a.store, &slug, &name, who)
    })
    .await?;
    Ok(HttpResponse::Created().json(TenantDto::from(org)))
}

async fn get_tenant(
    app: web::Data<App>,
    _op: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = path.into_inner();
    let org = app
        .store
        .read_async(move |c| crate::store::orgs::find_by_ref(c, &r))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    Ok(HttpResponse::Ok().json(TenantDto::from(org)))
}

async fn update_tenant(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: TenantBody = body::parse(&bytes)?;
    if b.slug.is_some() {
        return Err(ApiError::invalid(
            vec!["body".into(), "slug".into()],
            "a tenant's slug cannot change",
            "value_error",
        ));
    }
    let r = path.into_inner();
    let org = run(&app, &req, move |a, loc, who| {
        resources::update_tenant(&a.store, &r, b.name.as_deref(), b.disabled, loc, who)
    })
    .await?;
    app.keys.invalidate_all();
    app.keys.forget_failures();
    Ok(HttpResponse::Ok().json(TenantDto::from(org)))
}

async fn delete_tenant(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = path.into_inner();
    let deleted = run(&app, &req, move |a, loc, who| {
        resources::delete_tenant(&a.store, &r, loc, who)
    })
    .await?;
    app.keys.invalidate_all();
    Ok(HttpResponse::Ok().json(serde_json::json!({"deleted": deleted, "disabled": !deleted})))
}

async fn list_projects(
    app: web::Data<App>,
    _op: Operator,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let n = limit(&q)?;
    let mut rows = app
        .store
        .read_async(move |c| {
            let org = match &q.tenant {
                Some(t) => match crate::store::orgs::find_by_ref(c, t)? {
                    Some(o) => Some(o.id),
                    None => return Ok(Vec::new()),
                },
                None => None,
            };
            crate::store::projects::page(c, org.as_deref(), q.cursor.as_deref(), n + 1)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let more = rows.len() as i64 > n;
    rows.truncate(n as usize);
    let next = more.then(|| rows.last().map(|p| p.id.clone())).flatten();
    let data: Vec<ProjectDto> = rows.into_iter().map(ProjectDto::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"data": data, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    tenant: Option<String>,
    slug: Option<String>,
    path: Option<PathBuf>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "present")]
    harness: Option<Option<String>>,
    multitask: Option<Multitask>,
    disabled: Option<bool>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn create_project(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: ProjectBody = body::parse(&bytes)?;
    let required = |v: Option<String>, f: &str| {
        v.filter(|s| !s.is_empty()).ok_or_else(|| {
            ApiError::invalid(vec!["body".into(), f.into()], "is required", "missing")
        })
    };
    let tenant = required(b.tenant, "tenant")?;
    let slug = required(b.slug, "slug")?;
    let path = b.path.ok_or_else(|| {
        ApiError::invalid(vec!["body".into(), "path".into()], "is required", "missing")
    })?;
    let harness = b.harness.flatten();
    let multitask = b.multitask.unwrap_or_default();
    let p = run(&app, &req, move |a, _, who| {
        resources::create_project(
            &a.store,
            NewProject {
                tenant: &tenant,
                slug: &slug,
                path: &path,
                harness: harness.as_deref(),
                multitask,
            },
            who,
        )
    })
    .await?;
    Ok(HttpResponse::Created().json(ProjectDto::from(p)))
}

async fn get_project(
    app: web::Data<App>,
    _op: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let p = app
        .store
        .read_async(move |c| crate::store::projects::find_by_id(c, &id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound("project not found".into()))?;
    Ok(HttpResponse::Ok().json(ProjectDto::from(p)))
}

async fn update_project(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: ProjectBody = body::parse(&bytes)?;
    if b.tenant.is_some() || b.slug.is_some() {
        return Err(ApiError::invalid(
            vec!["body".into()],
            "a project's tenant and slug cannot change",
            "value_error",
        ));
    }
    let id = path.into_inner();
    let p = run(&app, &req, move |a, loc, who| {
        resources::update_project(
            &a.store,
            &id,
            ProjectPatch {
                path: b.path.as_deref(),
                harness: b.harness.as_ref().map(|h| h.as_deref()),
                multitask: b.multitask,
                disabled: b.disabled,
            },
            loc,
            who,
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(ProjectDto::from(p)))
}

async fn delete_project(
    app: web::Data<App>,
    _op: Operator,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let deleted = run(&app, &req, move |a, loc, who| {
        resources::delete_project(&a.store, &id, loc, who)
    })
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"deleted": deleted, "disabled": !deleted})))
}

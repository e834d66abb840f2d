//! `GET /v1/projects` and `GET /v1/projects/{project_ref}`: the org's projects with what their
//! apps define.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::models::Project;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/projects", web::get().to(list))
        .route("/v1/projects/{project_ref}", web::get().to(get));
}

/// A project.
#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    /// `prj_...`
    id: String,
    /// Unique in the org.
    slug: String,
    /// The driver serving it (`null` when none can).
    harness: Option<String>,
    /// The agents its app defines.
    #[schema(value_type = Vec<Object>)]
    agents: Vec<karta_driver_api::AgentInfo>,
    /// The skills its app ships.
    #[schema(value_type = Vec<Object>)]
    skills: Vec<karta_driver_api::SkillInfo>,
    /// The agent sessions start with.
    default_agent: Option<String>,
    /// SDK-compatible adapters enabled for it.
    adapters: Vec<String>,
    /// What a send does while a turn runs.
    multitask: String,
    /// The active release (`null` until releases exist).
    active_release: Option<String>,
}

/// A page of projects.
#[derive(Serialize, ToSchema)]
pub struct ProjectPage {
    /// By slug.
    data: Vec<ProjectView>,
    /// Pass as `cursor` for the next page; `null` at the end.
    next_cursor: Option<String>,
}

/// Query of `GET /v1/projects`.
#[derive(Deserialize, IntoParams)]
pub struct ProjectQuery {
    /// 1 to 100, default 20.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

async fn view(app: &App, org_slug: &str, p: Project) -> Result<ProjectView, ApiError> {
    let cfg = app.config();
    let adapters = cfg
        .projects
        .iter()
        .find(|c| c.tenant == org_slug && c.slug == p.slug)
        .map(|c| {
            const ALL: [crate::config::Adapter; 3] = [
                crate::config::Adapter::ChatCompletions,
                crate::config::Adapter::Responses,
                crate::config::Adapter::ManagedAgents,
            ];
            ALL.iter()
                .filter(|a| c.serves(**a))
                .map(|a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let (p, driver, discovery) = app.runtime.describe_project(p).await?;
    Ok(ProjectView {
        id: p.id,
        slug: p.slug,
        harness: driver,
        agents: discovery.agents,
        skills: discovery.skills,
        default_agent: discovery.default_agent,
        adapters,
        multitask: p.multitask,
        active_release: None,
    })
}

async fn org_slug(app: &App, org_id: &str) -> Result<String, ApiError> {
    let id = org_id.to_string();
    app.store
        .read_async(move |c| crate::store::orgs::find_by_ref(c, &id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(|o| o.slug)
        .ok_or_else(|| ApiError::NotFound("org not found".into()))
}

/// The org's enabled projects (`read`).
#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    params(ProjectQuery),
    responses(
        (status = 200, description = "A page of projects, by slug", body = ProjectPage),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "Not an API key", body = ErrorBody),
        (status = 422, description = "A parameter is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    q: web::Query<ProjectQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let limit = usize::try_from(crate::http::error::page_limit(q.limit, 20, 100)?).unwrap_or(20);
    let org = access.org().to_string();
    let all = app
        .store
        .read_async(move |c| crate::store::projects::list_enabled(c, &org))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let after = q.cursor.clone();
    let mut rest: Vec<Project> = all
        .into_iter()
        .filter(|p| after.as_deref().is_none_or(|a| p.slug.as_str() > a))
        .take(limit + 1)
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next_cursor = if more {
        rest.last().map(|p| p.slug.clone())
    } else {
        None
    };
    let slug = org_slug(&app, access.org()).await?;
    let mut data = Vec::with_capacity(rest.len());
    for p in rest {
        data.push(view(&app, &slug, p).await?);
    }
    Ok(HttpResponse::Ok().json(ProjectPage { data, next_cursor }))
}

/// The enabled project a `/v1/projects/{project_ref}/...` route names.
pub(crate) async fn scoped(
    app: &App,
    access: &Access,
) -> Result<crate::store::models::Project, ApiError> {
    let Some(project_id) = access.scope().map(str::to_string) else {
        return Err(ApiError::NotFound("project not found".into()));
    };
    let org = access.org().to_string();
    app.store
        .read_async(move |c| crate::store::projects::get_enabled(c, &org, &project_id))
        .await
        .map_err(|_| ApiError::NotFound("project not found".into()))
}

/// One project of the org, by slug or id (`read`; a session token for its own project).
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}",
    tag = "projects",
    params(("project_ref" = String, Path, description = "The project's slug or id")),
    responses(
        (status = 200, description = "The project", body = ProjectView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(app: web::Data<App>, access: Access) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let p = scoped(&app, &access).await?;
    let slug = org_slug(&app, access.org()).await?;
    Ok(HttpResponse::Ok().json(view(&app, &slug, p).await?))
}

//! `/v1/budgets`: an org's monthly caps set through the API (admin scope). Budgets declared in
//! the configuration (`[[budgets]]`) are listed too, and refuse API changes with 409.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::budgets::{self, BudgetRow};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/budgets", web::get().to(list))
        .route("/v1/budgets", web::put().to(put))
        .route("/v1/budgets", web::delete().to(delete));
}

/// `PUT /v1/budgets` body: the scope (the whole org unless `project` or `api_key`) and its
/// caps per calendar month (UTC). Absent caps are unlimited.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBudget {
    /// One project (slug or id).
    project: Option<String>,
    /// One API key of the org (`key_...`): a sub-limit of its own usage.
    api_key: Option<String>,
    /// Input tokens (cached ones included).
    input_tokens: Option<u64>,
    /// Output tokens.
    output_tokens: Option<u64>,
    /// Input plus output.
    total_tokens: Option<u64>,
    /// Cost in cents.
    cost_cents: Option<u64>,
    /// Tokens a starting turn holds against the caps until it ends.
    reserve_tokens: Option<u64>,
}

/// Which budget (`DELETE`).
#[derive(Deserialize, IntoParams)]
pub struct BudgetScope {
    /// One project (slug or id).
    project: Option<String>,
    /// One API key (`key_...`).
    api_key: Option<String>,
}

/// A budget as listed.
#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    /// `org`, `project` or `api_key`.
    scope: String,
    /// The org, project or key id.
    scope_id: String,
    /// Input tokens a month.
    input_tokens: Option<u64>,
    /// Output tokens a month.
    output_tokens: Option<u64>,
    /// Input plus output a month.
    total_tokens: Option<u64>,
    /// Cents a month.
    cost_cents: Option<u64>,
    /// `config` (change it in the files) or `api`.
    managed_by: String,
}

/// The scope id a request names (the org's own id by default), and its kind.
async fn scope_of(
    app: &App,
    access: &Access,
    project: Option<&str>,
    api_key: Option<&str>,
) -> Result<(String, &'static str), ApiError> {
    match (project, api_key) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            vec!["body".into(), "api_key".into()],
            "a budget is for the org, a project or an API key, not both",
            "value_error",
        )),
        (Some(p), None) => Ok((app.runtime.project_id(access.org(), p).await?, "project")),
        (None, Some(k)) => {
            let (org, key) = (access.org().to_string(), k.to_string());
            app.store
                .read_async(move |c| crate::store::keys::get(c, &org, &key))
                .await
                .map_err(|_| ApiError::NotFound("api key not found".into()))?;
            Ok((k.to_string(), "api_key"))
        }
        (None, None) => Ok((access.org().to_string(), "org")),
    }
}

fn kind_of(access: &Access, scope_id: &str) -> &'static str {
    if scope_id == access.org() {
        "org"
    } else if scope_id.starts_with("key_") {
        "api_key"
    } else {
        "project"
    }
}

/// The org's budgets: set through the API and declared in the configuration.
#[utoipa::path(
    get, path = "/v1/budgets", tag = "usage",
    responses((status = 200, description = "`{\"data\": [...]}`", body = [BudgetView]), (status = 401, description = "Missing or wrong credential", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(app: web::Data<App>, access: Access) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let org = access.org().to_string();
    let rows = app
        .store
        .read_async(move |c| budgets::for_org(c, &org))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let n = |v: Option<i64>| v.and_then(|x| u64::try_from(x).ok());
    let in_config = app.config_budget_scopes();
    let mut data: Vec<BudgetView> = Vec::new();
    for r in rows.iter().filter(|r| !in_config.contains(&r.scope_id)) {
        data.push(BudgetView {
            scope: kind_of(&access, &r.scope_id).into(),
            scope_id: r.scope_id.clone(),
            input_tokens: n(r.input_tokens),
            output_tokens: n(r.output_tokens),
            total_tokens: n(r.total_tokens),
            cost_cents: n(r.cost_cents),
            managed_by: "api".into(),
        });
    }
    // The configuration's, as the runtime applies them (those of this org's scopes).
    let org = access.org().to_string();
    let projects: Vec<String> = app
        .store
        .read_async(move |c| crate::store::projects::list_all_ids(c, &org))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for id in std::iter::once(access.org().to_string()).chain(projects) {
        if let (true, Some(caps)) = (in_config.contains(&id), app.runtime.budget_caps(&id)) {
            data.push(BudgetView {
                scope: kind_of(&access, &id).into(),
                scope_id: id,
                input_tokens: caps.input_tokens,
                output_tokens: caps.output_tokens,
                total_tokens: caps.total_tokens,
                cost_cents: caps.cost_cents,
                managed_by: "config".into(),
            });
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// Sets the caps of the org, one project or one API key; they apply to the next turn.
#[utoipa::path(
    put, path = "/v1/budgets", tag = "usage", request_body = PutBudget,
    responses(
        (status = 200, description = "The budget", body = BudgetView),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
        (status = 404, description = "No such project or key in the org", body = ErrorBody),
        (status = 409, description = "The configuration declares this budget", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Admin)?;
    let b: PutBudget = body::parse(&bytes)?;
    if [
        b.input_tokens,
        b.output_tokens,
        b.total_tokens,
        b.cost_cents,
    ]
    .iter()
    .all(Option::is_none)
    {
        return Err(ApiError::invalid(
            vec!["body".into()],
            "set at least one cap: input_tokens, output_tokens, total_tokens or cost_cents",
            "value_error",
        ));
    }
    let (scope_id, kind) =
        scope_of(&app, &access, b.project.as_deref(), b.api_key.as_deref()).await?;
    if app.config_budget_scopes().contains(&scope_id) {
        return Err(ApiError::Conflict(
            "this budget is declared in the configuration ([[budgets]]); change it there".into(),
        ));
    }
    let i = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let row = BudgetRow {
        org_id: access.org().to_string(),
        scope_id: scope_id.clone(),
        input_tokens: i(b.input_tokens),
        output_tokens: i(b.output_tokens),
        total_tokens: i(b.total_tokens),
        cost_cents: i(b.cost_cents),
        reserve_tokens: i(b.reserve_tokens),
        updated_at: crate::store::now(),
    };
    let actor = super::keys::actor(&access, &req);
    let details = json!({"scope": kind, "scope_id": scope_id, "input_tokens": b.input_tokens,
        "output_tokens": b.output_tokens, "total_tokens": b.total_tokens, "cost_cents": b.cost_cents});
    let stored = row.clone();
    app.store
        .write_async(move |c| {
            budgets::put(c, &stored)?;
            crate::store::audit::record_by(
                c,
                Some(&stored.org_id),
                &actor,
                "budget.set",
                &stored.scope_id,
                &details,
            )
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    app.refresh_runtime();
    Ok(HttpResponse::Ok().json(BudgetView {
        scope: kind.into(),
        scope_id,
        input_tokens: b.input_tokens,
        output_tokens: b.output_tokens,
        total_tokens: b.total_tokens,
        cost_cents: b.cost_cents,
        managed_by: "api".into(),
    }))
}

/// Removes a budget set through the API.
#[utoipa::path(
    delete, path = "/v1/budgets", tag = "usage", params(BudgetScope),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
        (status = 404, description = "No such budget", body = ErrorBody),
        (status = 409, description = "The configuration declares this budget", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    q: web::Query<BudgetScope>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Admin)?;
    let (scope_id, _) = scope_of(&app, &access, q.project.as_deref(), q.api_key.as_deref()).await?;
    if app.config_budget_scopes().contains(&scope_id) {
        return Err(ApiError::Conflict(
            "this budget is declared in the configuration ([[budgets]]); change it there".into(),
        ));
    }
    let actor = super::keys::actor(&access, &req);
    let org = access.org().to_string();
    let gone = app
        .store
        .write_async(move |c| {
            let gone = budgets::delete(c, &org, &scope_id)?;
            if gone {
                crate::store::audit::record_by(
                    c,
                    Some(&org),
                    &actor,
                    "budget.deleted",
                    &scope_id,
                    &json!({}),
                )?;
            }
            Ok(gone)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !gone {
        return Err(ApiError::NotFound("no budget for this scope".into()));
    }
    app.refresh_runtime();
    Ok(HttpResponse::NoContent().finish())
}

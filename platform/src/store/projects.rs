//! Projects.

use diesel::prelude::*;

use super::models::Project;
use super::schema::{projects, sessions};
use super::{Conn, OptionalRow, StoreError};

/// All projects managed by the platform config, enabled or not.
pub fn list_config_managed(c: &mut Conn) -> Result<Vec<Project>, StoreError> {
    Ok(projects::table
        .filter(projects::managed_by.eq("config"))
        .order((projects::org_id.asc(), projects::slug.asc()))
        .select(Project::as_select())
        .load(c)?)
}

/// The org's enabled projects.
pub fn list_enabled(c: &mut Conn, org_id: &str) -> Result<Vec<Project>, StoreError> {
    Ok(projects::table
        .filter(projects::org_id.eq(org_id))
        .filter(projects::disabled_at.is_null())
        .order(projects::slug.asc())
        .select(Project::as_select())
        .load(c)?)
}

/// An enabled project of the org, by slug or id.
pub fn get_enabled(c: &mut Conn, org_id: &str, reference: &str) -> Result<Project, StoreError> {
    projects::table
        .filter(projects::org_id.eq(org_id))
        .filter(projects::disabled_at.is_null())
        .filter(projects::slug.eq(reference).or(projects::id.eq(reference)))
        .select(Project::as_select())
        .first(c)
        .found()
}

/// A project of the org by id, enabled or not (sessions keep working on what they were pinned to
/// only while it is enabled; callers check).
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<Project, StoreError> {
    let q = projects::table
        .filter(projects::org_id.eq(org_id))
        .filter(projects::id.eq(id));
    match c {
        super::AnyConnection::Postgresql(pg) => q.select(Project::as_select()).first(pg).found(),
        // See `sessions::get`.
        super::AnyConnection::Sqlite(lite) => q.select(Project::as_select()).first(lite).found(),
    }
}

/// Inserts a project.
pub fn insert(c: &mut Conn, p: &Project) -> Result<(), StoreError> {
    diesel::insert_into(projects::table).values(p).execute(c)?;
    Ok(())
}

/// Updates the mutable fields of a project.
pub fn update(
    c: &mut Conn,
    id: &str,
    source_path: &str,
    harness: Option<&str>,
    multitask: &str,
    disabled_at: Option<chrono::NaiveDateTime>,
) -> Result<(), StoreError> {
    diesel::update(projects::table.find(id))
        .set((
            projects::source_path.eq(source_path),
            projects::harness.eq(harness),
            projects::multitask.eq(multitask),
            projects::disabled_at.eq(disabled_at),
            projects::updated_at.eq(super::now()),
        ))
        .execute(c)?;
    Ok(())
}

/// Whether sessions refer to the project (then it is disabled rather than deleted).
pub fn has_history(c: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let n: i64 = sessions::table
        .filter(sessions::project_id.eq(id))
        .count()
        .get_result(c)?;
    Ok(n > 0)
}

/// Deletes a project that has no history.
pub fn delete(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    diesel::delete(projects::table.find(id)).execute(c)?;
    Ok(())
}

/// A project of the org by slug, enabled or not.
pub fn find_by_slug_any(
    c: &mut Conn,
    org_id: &str,
    slug: &str,
) -> Result<Option<Project>, StoreError> {
    Ok(projects::table
        .filter(projects::org_id.eq(org_id))
        .filter(projects::slug.eq(slug))
        .select(Project::as_select())
        .first(c)
        .optional()?)
}

/// Ids of all the org's projects.
pub fn list_all_ids(c: &mut Conn, org_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(projects::table
        .filter(projects::org_id.eq(org_id))
        .select(projects::id)
        .load(c)?)
}

/// Deletes every project of the org (used when the org itself goes, having no history).
pub fn delete_all_for_org(c: &mut Conn, org_id: &str) -> Result<(), StoreError> {
    diesel::delete(projects::table.filter(projects::org_id.eq(org_id))).execute(c)?;
    Ok(())
}

/// All the org's projects, enabled or not.
pub fn list_all(c: &mut Conn, org_id: &str) -> Result<Vec<Project>, StoreError> {
    Ok(projects::table
        .filter(projects::org_id.eq(org_id))
        .select(Project::as_select())
        .load(c)?)
}

/// Inserts many projects with multi-row statements.
pub fn insert_many(c: &mut Conn, rows: &[Project]) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let q = diesel::insert_into(projects::table).values(chunk);
        super::execute_on_backend!(c, q)?;
    }
    Ok(())
}

/// (org id, slug) of every project, whoever manages it.
pub fn list_every_key(c: &mut Conn) -> Result<Vec<(String, String)>, StoreError> {
    Ok(projects::table
        .select((projects::org_id, projects::slug))
        .load(c)?)
}

/// Which of `ids` have sessions referring to them.
pub fn with_history(
    c: &mut Conn,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut out = std::collections::HashSet::new();
    for chunk in ids.chunks(500) {
        let found: Vec<String> = sessions::table
            .filter(sessions::project_id.eq_any(chunk))
            .select(sessions::project_id)
            .distinct()
            .load(c)?;
        out.extend(found);
    }
    Ok(out)
}

/// A page of projects (of one org, or all), by id, after `after` (exclusive).
pub fn page(
    c: &mut Conn,
    org_id: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Project>, StoreError> {
    let mut q = projects::table
        .order(projects::id.asc())
        .limit(limit)
        .select(Project::as_select())
        .into_boxed();
    if let Some(o) = org_id {
        q = q.filter(projects::org_id.eq(o.to_string()));
    }
    if let Some(a) = after {
        q = q.filter(projects::id.gt(a.to_string()));
    }
    Ok(q.load(c)?)
}

/// A project by id, of any org.
pub fn find_by_id(c: &mut Conn, id: &str) -> Result<Option<Project>, StoreError> {
    Ok(projects::table
        .filter(projects::id.eq(id))
        .select(Project::as_select())
        .first(c)
        .optional()?)
}

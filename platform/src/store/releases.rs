//! Releases of projects. The project's live release is its one `active` production release;
//! activating another is one transaction (the project's row locked on PostgreSQL, a partial
//! unique index as the backstop), so concurrent activations settle on one.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{projects, releases as r};
use super::{Conn, OptionalRow, StoreError};

/// One release.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = r)]
pub struct Release {
    /// `rel_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// The project.
    pub project_id: String,
    /// 1, 2, ... per project.
    pub version: i64,
    /// The commit it was built from (or the archive's digest).
    pub commit_sha: String,
    /// What the deployer said about it.
    pub message: String,
    /// `production` or `preview`.
    pub kind: String,
    /// `ready`, `active`, `superseded` or `expired`.
    pub status: String,
    /// `dockerfile`, `buildpack` or `file_copy`.
    pub build_kind: String,
    /// The extracted tree.
    pub path: String,
    /// Unpacked bytes.
    pub size_bytes: i64,
    /// Files in the tree.
    pub files: i64,
    /// When it was published.
    pub created_at: NaiveDateTime,
    /// When it last became active.
    pub activated_at: Option<NaiveDateTime>,
    /// When a preview stops serving.
    pub expires_at: Option<NaiveDateTime>,
}

/// Stores a release.
pub fn insert(c: &mut Conn, rel: &Release) -> Result<(), StoreError> {
    diesel::insert_into(r::table).values(rel).execute(c)?;
    Ok(())
}

/// Holds the project's row until the transaction ends (PostgreSQL; SQLite has one writer):
/// version allocation and activation of a project happen one at a time.
pub fn lock_project(c: &mut Conn, project_id: &str) -> Result<(), StoreError> {
    if let super::AnyConnection::Postgresql(pg) = c {
        projects::table
            .filter(projects::id.eq(project_id))
            .select(projects::id)
            .for_update()
            .first::<String>(pg)
            .found()?;
    }
    Ok(())
}

/// The next version number of the project (call [`lock_project`] first in the transaction).
pub fn next_version(c: &mut Conn, project_id: &str) -> Result<i64, StoreError> {
    let max: Option<i64> = r::table
        .filter(r::project_id.eq(project_id))
        .select(diesel::dsl::max(r::version))
        .first(c)?;
    Ok(max.unwrap_or(0) + 1)
}

/// The project's release of that commit and kind, if published already.
pub fn find_by_commit(
    c: &mut Conn,
    project_id: &str,
    commit_sha: &str,
    kind: &str,
) -> Result<Option<Release>, StoreError> {
    Ok(r::table
        .filter(r::project_id.eq(project_id))
        .filter(r::commit_sha.eq(commit_sha))
        .filter(r::kind.eq(kind))
        .filter(r::status.ne("expired"))
        .select(Release::as_select())
        .first(c)
        .optional()?)
}

/// The project's releases, newest first.
pub fn list(
    c: &mut Conn,
    org_id: &str,
    project_id: &str,
    limit: i64,
) -> Result<Vec<Release>, StoreError> {
    Ok(r::table
        .filter(r::org_id.eq(org_id))
        .filter(r::project_id.eq(project_id))
        .order(r::version.desc())
        .limit(limit)
        .select(Release::as_select())
        .load(c)?)
}

/// One release of the project by version.
pub fn get_version(
    c: &mut Conn,
    org_id: &str,
    project_id: &str,
    version: i64,
) -> Result<Release, StoreError> {
    r::table
        .filter(r::org_id.eq(org_id))
        .filter(r::project_id.eq(project_id))
        .filter(r::version.eq(version))
        .select(Release::as_select())
        .first(c)
        .found()
}

/// The project's active production release.
pub fn active(c: &mut Conn, project_id: &str) -> Result<Option<Release>, StoreError> {
    Ok(r::table
        .filter(r::project_id.eq(project_id))
        .filter(r::kind.eq("production"))
        .filter(r::status.eq("active"))
        .select(Release::as_select())
        .first(c)
        .optional()?)
}

/// Whether the project has any production release.
pub fn has_production(c: &mut Conn, project_id: &str) -> Result<bool, StoreError> {
    let n: i64 = r::table
        .filter(r::project_id.eq(project_id))
        .filter(r::kind.eq("production"))
        .count()
        .get_result(c)?;
    Ok(n > 0)
}

/// Makes `release_id` the project's active release; the one active before is superseded and
/// returned. Run in a write transaction.
pub fn activate(
    c: &mut Conn,
    project_id: &str,
    release_id: &str,
    now: NaiveDateTime,
) -> Result<Option<Release>, StoreError> {
    // One activation at a time per project: the second waits and then supersedes the first.
    lock_project(c, project_id)?;
    let previous = active(c, project_id)?;
    if previous.as_ref().is_some_and(|p| p.id == release_id) {
        return Ok(previous);
    }
    if let Some(p) = &previous {
        diesel::update(r::table.filter(r::id.eq(&p.id)))
            .set(r::status.eq("superseded"))
            .execute(c)?;
    }
    diesel::update(r::table.filter(r::id.eq(release_id)))
        .set((r::status.eq("active"), r::activated_at.eq(Some(now))))
        .execute(c)?;
    Ok(previous)
}

/// Previews past their expiry that still serve, oldest first.
pub fn expired_previews(
    c: &mut Conn,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Release>, StoreError> {
    Ok(r::table
        .filter(r::kind.eq("preview"))
        .filter(r::status.ne("expired"))
        .filter(r::expires_at.le(now))
        .order(r::expires_at.asc())
        .limit(limit)
        .select(Release::as_select())
        .load(c)?)
}

/// Marks a release expired (its tree is gone).
pub fn mark_expired(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    diesel::update(r::table.filter(r::id.eq(id)))
        .set(r::status.eq("expired"))
        .execute(c)?;
    Ok(())
}

/// A preview of the project by version that still serves.
pub fn live_preview(
    c: &mut Conn,
    project_id: &str,
    version: i64,
    now: NaiveDateTime,
) -> Result<Option<Release>, StoreError> {
    Ok(r::table
        .filter(r::project_id.eq(project_id))
        .filter(r::version.eq(version))
        .filter(r::kind.eq("preview"))
        .filter(r::status.ne("expired"))
        .filter(r::expires_at.gt(now))
        .select(Release::as_select())
        .first(c)
        .optional()?)
}

//! Tenants and projects managed through the operator API (`managed_by = 'api'`).
//!
//! Rows declared in configuration (`managed_by = 'config'`) belong to their files: the API
//! refuses to change them and says which file and line declare them. Rows made here are never
//! touched by a reload. Every change writes its audit row in the same transaction.

use std::path::{Path, PathBuf};

use crate::config::{validate::validate_slug, Multitask};
use crate::store::audit::Actor;
use crate::store::models::{Org, Project};
use crate::store::{self, audit, keys, orgs, projects, Conn, Store, StoreError};

/// Why an operator request cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// No such tenant or project.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The slug is taken.
    #[error("{0}")]
    Taken(String),
    /// Declared in configuration.
    #[error("{what} is declared in configuration{at}; change it there and reload")]
    ConfigOwned {
        /// e.g. `tenant \`acme\``.
        what: String,
        /// ` (file:line)` when known.
        at: String,
    },
    /// A field is invalid: (field, message).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where configuration declares a tenant (`project` = None) or project: `file:line`.
pub type Locator<'a> = &'a (dyn Fn(&str, Option<&str>) -> Option<(PathBuf, Option<usize>)> + Sync);

fn at(locator: Locator<'_>, tenant: &str, project: Option<&str>) -> String {
    match locator(tenant, project) {
        Some((file, Some(line))) => format!(" ({}:{line})", file.display()),
        Some((file, None)) => format!(" ({})", file.display()),
        None => String::new(),
    }
}

fn slug_ok(field: &'static str, slug: &str) -> Result<(), ResourceError> {
    validate_slug(slug).map_err(|e| {
        ResourceError::Invalid(
            field,
            e.message
                .map(|m| m.to_string())
                .unwrap_or_else(|| "invalid slug".into()),
        )
    })
}

fn org_by_ref(c: &mut Conn, reference: &str) -> Result<Org, ResourceError> {
    orgs::find_by_ref(c, reference)?.ok_or(ResourceError::NotFound("tenant"))
}

fn editable_org(org: &Org, locator: Locator<'_>) -> Result<(), ResourceError> {
    if org.managed_by == "config" {
        return Err(ResourceError::ConfigOwned {
            what: format!("tenant `{}`", org.slug),
            at: at(locator, &org.slug, None),
        });
    }
    Ok(())
}

/// Creates a tenant.
pub fn create_tenant(
    store: &Store,
    slug: &str,
    name: &str,
    actor: &Actor,
) -> Result<Org, ResourceError> {
    slug_ok("slug", slug)?;
    if name.trim().is_empty() {
        return Err(ResourceError::Invalid("name", "must not be empty".into()));
    }
    let now = store::now();
    let org = Org {
        id: store::new_id("org"),
        slug: slug.to_string(),
        name: name.trim().to_string(),
        managed_by: "api".into(),
        disabled_at: None,
        created_at: now,
        updated_at: now,
    };
    let row = org.clone();
    store
        .write(move |c| {
            if orgs::find_by_slug(c, &row.slug)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "tenant `{}` exists",
                    row.slug
                )));
            }
            orgs::insert(c, &row)?;
            audit::record_by(
                c,
                Some(&row.id),
                actor,
                "tenant.created",
                &row.id,
                &serde_json::json!({"slug": row.slug, "name": row.name}),
            )
        })
        .map_err(conflict)?;
    Ok(org)
}

fn conflict(e: StoreError) -> ResourceError {
    match e {
        StoreError::Conflict(m) => ResourceError::Taken(m),
        other => ResourceError::Store(other),
    }
}

/// Renames or disables/enables a tenant.
pub fn update_tenant(
    store: &Store,
    reference: &str,
    name: Option<&str>,
    disabled: Option<bool>,
    locator: Locator<'_>,
    actor: &Actor,
) -> Result<Org, ResourceError> {
    if name.is_some_and(|n| n.trim().is_empty()) {
        return Err(ResourceError::Invalid("name", "must not be empty".into()));
    }
    let org = store.read(|c| orgs::find_by_ref(c, reference))?;
    let org = org.ok_or(ResourceError::NotFound("tenant"))?;
    editable_org(&org, locator)?;
    let name = name
        .map(|n| n.trim().to_string())
        .unwrap_or(org.name.clone());
    let disabled_at = match disabled {
        Some(true) => org.disabled_at.or(Some(store::now())),
        Some(false) => None,
        None => org.disabled_at,
    };
    let id = org.id.clone();
    let before = serde_json::json!({"name": org.name, "disabled": org.disabled_at.is_some()});
    store.write(|c| {
        orgs::update(c, &id, &name, disabled_at)?;
        audit::record_change(
            c,
            Some(&id),
            actor,
            "tenant.updated",
            &id,
            Some(&before),
            &serde_json::json!({"name": name, "disabled": disabled_at.is_some()}),
        )
    })?;
    Ok(Org {
        name,
        disabled_at,
        ..org
    })
}

/// Deletes a tenant with no history, or disables one that has keys or sessions (its history
/// stays). Returns whether it was deleted.
pub fn delete_tenant(
    store: &Store,
    reference: &str,
    locator: Locator<'_>,
    actor: &Actor,
) -> Result<bool, ResourceError> {
    let org = store.read(|c| orgs::find_by_ref(c, reference))?;
    let org = org.ok_or(ResourceError::NotFound("tenant"))?;
    editable_org(&org, locator)?;
    let id = org.id.clone();
    Ok(store.write(|c| {
        let ids = projects::list_all_ids(c, &id)?;
        let history =
            keys::count_for_org(c, &id)? > 0 || !projects::with_history(c, &ids)?.is_empty();
        if history {
            orgs::update(c, &id, &org.name, org.disabled_at.or(Some(store::now())))?;
        } else {
            projects::delete_all_for_org(c, &id)?;
            orgs::delete(c, &id)?;
        }
        audit::record_by(
            c,
            Some(&id),
            actor,
            if history {
                "tenant.disabled"
            } else {
                "tenant.deleted"
            },
            &id,
            &serde_json::json!({"slug": org.slug}),
        )?;
        Ok(!history)
    })?)
}

/// What a new project is.
pub struct NewProject<'a> {
    /// Owning tenant (slug or id).
    pub tenant: &'a str,
    /// Its slug.
    pub slug: &'a str,
    /// The harness-app folder (absolute).
    pub path: &'a Path,
    /// Driver override.
    pub harness: Option<&'a str>,
    /// Double-texting behaviour.
    pub multitask: Multitask,
}

fn folder_ok(path: &Path) -> Result<String, ResourceError> {
    if !path.is_absolute() {
        return Err(ResourceError::Invalid(
            "path",
            "must be an absolute path".into(),
        ));
    }
    if !path.is_dir() {
        return Err(ResourceError::Invalid(
            "path",
            format!("{} is not a folder", path.display()),
        ));
    }
    Ok(path.display().to_string())
}

/// Creates a project.
pub fn create_project(
    store: &Store,
    p: NewProject<'_>,
    actor: &Actor,
) -> Result<Project, ResourceError> {
    let actor = actor.clone();
    slug_ok("slug", p.slug)?;
    let source_path = folder_ok(p.path)?;
    let (tenant, slug, harness, multitask) = (
        p.tenant.to_string(),
        p.slug.to_string(),
        p.harness.map(str::to_string),
        p.multitask,
    );
    store
        .write(move |c| {
            let org = org_by_ref(c, &tenant).map_err(|_| StoreError::NotFound)?;
            if projects::find_by_slug_any(c, &org.id, &slug)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "project `{}/{slug}` exists",
                    org.slug
                )));
            }
            let now = store::now();
            let row = Project {
                id: store::new_id("prj"),
                org_id: org.id.clone(),
                slug,
                source_path,
                harness,
                multitask: multitask.as_str().into(),
                managed_by: "api".into(),
                disabled_at: None,
                created_at: now,
                updated_at: now,
            };
            projects::insert(c, &row)?;
            audit::record_by(
                c,
                Some(&org.id),
                &actor,
                "project.created",
                &row.id,
                &serde_json::json!({"slug": row.slug, "path": row.source_path}),
            )?;
            Ok(row)
        })
        .map_err(|e| match e {
            StoreError::NotFound => ResourceError::NotFound("tenant"),
            other => conflict(other),
        })
}

fn project_by_id(
    store: &Store,
    id: &str,
    locator: Locator<'_>,
) -> Result<(Project, Org), ResourceError> {
    let found = store.read(|c| {
        let Some(p) = projects::find_by_id(c, id)? else {
            return Ok(None);
        };
        let org = orgs::find_by_ref(c, &p.org_id)?;
        Ok(org.map(|o| (p, o)))
    })?;
    let (p, org) = found.ok_or(ResourceError::NotFound("project"))?;
    if p.managed_by == "config" {
        return Err(ResourceError::ConfigOwned {
            what: format!("project `{}/{}`", org.slug, p.slug),
            at: at(locator, &org.slug, Some(&p.slug)),
        });
    }
    Ok((p, org))
}

/// What an update changes (absent fields stay).
#[derive(Default)]
pub struct ProjectPatch<'a> {
    /// New folder.
    pub path: Option<&'a Path>,
    /// New driver override (`Some(None)` clears it).
    pub harness: Option<Option<&'a str>>,
    /// New double-texting behaviour.
    pub multitask: Option<Multitask>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// Updates a project made through the API.
pub fn update_project(
    store: &Store,
    id: &str,
    patch: ProjectPatch<'_>,
    locator: Locator<'_>,
    actor: &Actor,
) -> Result<Project, ResourceError> {
    let actor = actor.clone();
    let (p, _) = project_by_id(store, id, locator)?;
    let source_path = match patch.path {
        Some(path) => folder_ok(path)?,
        None => p.source_path.clone(),
    };
    let harness = match patch.harness {
        Some(h) => h.map(str::to_string),
        None => p.harness.clone(),
    };
    let multitask = patch
        .multitask
        .map(|m| m.as_str().to_string())
        .unwrap_or(p.multitask.clone());
    let disabled_at = match patch.disabled {
        Some(true) => p.disabled_at.or(Some(store::now())),
        Some(false) => None,
        None => p.disabled_at,
    };
    let view = |p: &Project| {
        serde_json::json!({"path": p.source_path, "harness": p.harness,
            "multitask": p.multitask, "disabled": p.disabled_at.is_some()})
    };
    let before = view(&p);
    let row = Project {
        source_path,
        harness,
        multitask,
        disabled_at,
        ..p
    };
    let after = view(&row);
    let r = row.clone();
    store.write(move |c| {
        projects::update(
            c,
            &r.id,
            &r.source_path,
            r.harness.as_deref(),
            &r.multitask,
            r.disabled_at,
        )?;
        audit::record_change(
            c,
            Some(&r.org_id),
            &actor,
            "project.updated",
            &r.id,
            Some(&before),
            &after,
        )
    })?;
    Ok(row)
}

/// Deletes a project without sessions, or disables one that has them. Returns whether it was
/// deleted.
pub fn delete_project(
    store: &Store,
    id: &str,
    locator: Locator<'_>,
    actor: &Actor,
) -> Result<bool, ResourceError> {
    let actor = actor.clone();
    let (p, _) = project_by_id(store, id, locator)?;
    Ok(store.write(move |c| {
        let history = projects::has_history(c, &p.id)?;
        if history {
            projects::update(
                c,
                &p.id,
                &p.source_path,
                p.harness.as_deref(),
                &p.multitask,
                p.disabled_at.or(Some(store::now())),
            )?;
        } else {
            projects::delete(c, &p.id)?;
        }
        audit::record_by(
            c,
            Some(&p.org_id),
            &actor,
            if history {
                "project.disabled"
            } else {
                "project.deleted"
            },
            &p.id,
            &serde_json::json!({"slug": p.slug}),
        )?;
        Ok(!history)
    })?)
}

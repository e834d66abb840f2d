//! Reconcile: the desired state declared in the platform files -> the store.
//!
//! Only rows with `managed_by = 'config'` are ever touched; a plan lists create / update / delete
//! (or disable, for rows with history) per resource, and `apply` recomputes and applies it in one
//! transaction, recording each change in the audit log. Applying twice is a no-op.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::json;

use crate::config::PlatformConfig;
use crate::store::models::{Org, Project};
use crate::store::{self, orgs, projects, Conn, Store, StoreError};

/// What happens to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new row.
    Create,
    /// Changed fields (or re-enabled).
    Update,
    /// Removed from the files and without history: the row goes.
    Delete,
    /// Removed from the files but referenced by history: the row is disabled.
    Disable,
}

/// One planned change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happens.
    pub action: Action,
    /// `tenant` or `project`.
    pub resource: &'static str,
    /// `acme` or `acme/support-bot`.
    pub name: String,
    /// Changed fields: (field, old, new).
    pub fields: Vec<(String, Option<String>, Option<String>)>,
}

/// The change set that brings the store to the declared state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The changes, tenants first.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether the store already matches.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "No changes: the store matches the configuration.");
        }
        for c in &self.changes {
            let sign = match c.action {
                Action::Create => "+",
                Action::Update => "~",
                Action::Delete => "-",
                Action::Disable => "!",
            };
            writeln!(f, "{sign} {} {} ({:?})", c.resource, c.name, c.action)?;
            for (field, old, new) in &c.fields {
                writeln!(
                    f,
                    "    {field}: {} -> {}",
                    old.as_deref().unwrap_or("(none)"),
                    new.as_deref().unwrap_or("(none)")
                )?;
            }
        }
        let count = |a| self.changes.iter().filter(|c| c.action == a).count();
        writeln!(
            f,
            "Plan: {} to create, {} to update, {} to delete, {} to disable.",
            count(Action::Create),
            count(Action::Update),
            count(Action::Delete),
            count(Action::Disable)
        )
    }
}

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A declared resource collides with one created through the API.
    #[error("{0}")]
    Conflict(String),
}

fn diff(
    fields: &mut Vec<(String, Option<String>, Option<String>)>,
    name: &str,
    old: Option<&str>,
    new: Option<&str>,
) {
    if old != new {
        fields.push((name.into(), old.map(Into::into), new.map(Into::into)));
    }
}

/// Computes the plan against the store as seen through `c`.
pub fn compute(c: &mut Conn, cfg: &PlatformConfig) -> Result<Plan, ReconcileError> {
    let mut plan = Plan::default();
    let current_orgs: BTreeMap<String, Org> = orgs::list_config_managed(c)?
        .into_iter()
        .map(|o| (o.slug.clone(), o))
        .collect();
    let slug_of: BTreeMap<String, String> = current_orgs
        .values()
        .map(|o| (o.id.clone(), o.slug.clone()))
        .collect();

    for t in &cfg.tenants {
        match current_orgs.get(&t.slug) {
            None => {
                if orgs::find_by_slug(c, &t.slug)?.is_some() {
                    return Err(ReconcileError::Conflict(format!(
                        "tenant `{}` already exists and is managed through the API, not the configuration",
                        t.slug
                    )));
                }
                plan.changes.push(Change {
                    action: Action::Create,
                    resource: "tenant",
                    name: t.slug.clone(),
                    fields: vec![("name".into(), None, Some(t.name.clone()))],
                });
            }
            Some(o) => {
                let mut fields = Vec::new();
                diff(&mut fields, "name", Some(&o.name), Some(&t.name));
                if o.disabled_at.is_some() {
                    fields.push(("enabled".into(), Some("false".into()), Some("true".into())));
                }
                if !fields.is_empty() {
                    plan.changes.push(Change {
                        action: Action::Update,
                        resource: "tenant",
                        name: t.slug.clone(),
                        fields,
                    });
                }
            }
        }
    }

    let current_projects: BTreeMap<(String, String), Project> = projects::list_config_managed(c)?
        .into_iter()
        .filter_map(|p| {
            let org = slug_of.get(&p.org_id)?.clone();
            Some(((org, p.slug.clone()), p))
        })
        .collect();
    for p in &cfg.projects {
        let path = p.path.display().to_string();
        let key = (p.tenant.clone(), p.slug.clone());
        let name = format!("{}/{}", p.tenant, p.slug);
        match current_projects.get(&key) {
            None => plan.changes.push(Change {
                action: Action::Create,
                resource: "project",
                name,
                fields: vec![
                    ("path".into(), None, Some(path)),
                    ("harness".into(), None, p.harness.clone()),
                    ("multitask".into(), None, Some(p.multitask.as_str().into())),
                ],
            }),
            Some(cur) => {
                let mut fields = Vec::new();
                diff(&mut fields, "path", Some(&cur.source_path), Some(&path));
                diff(
                    &mut fields,
                    "harness",
                    cur.harness.as_deref(),
                    p.harness.as_deref(),
                );
                diff(
                    &mut fields,
                    "multitask",
                    Some(&cur.multitask),
                    Some(p.multitask.as_str()),
                );
                if cur.disabled_at.is_some() {
                    fields.push(("enabled".into(), Some("false".into()), Some("true".into())));
                }
                if !fields.is_empty() {
                    plan.changes.push(Change {
                        action: Action::Update,
                        resource: "project",
                        name,
                        fields,
                    });
                }
            }
        }
    }
    for ((org, slug), cur) in &current_projects {
        let declared = cfg
            .projects
            .iter()
            .any(|p| &p.tenant == org && &p.slug == slug);
        if !declared && cur.disabled_at.is_none() {
            let action = if projects::has_history(c, &cur.id)? {
                Action::Disable
            } else {
                Action::Delete
            };
            plan.changes.push(Change {
                action,
                resource: "project",
                name: format!("{org}/{slug}"),
                fields: vec![],
            });
        }
    }
    for (slug, cur) in &current_orgs {
        let declared = cfg.tenants.iter().any(|t| &t.slug == slug);
        if declared || cur.disabled_at.is_some() {
            continue;
        }
        // The org can go only when nothing refers to it once this plan's deletions are done.
        let prefix = format!("{slug}/");
        let deleted_here = plan
            .changes
            .iter()
            .filter(|ch| {
                ch.resource == "project"
                    && ch.action == Action::Delete
                    && ch.name.starts_with(&prefix)
            })
            .count();
        let projects_left = projects::list_all_ids(c, &cur.id)?.len() > deleted_here;
        let has_keys = store::keys::count_for_org(c, &cur.id)? > 0;
        plan.changes.push(Change {
            action: if projects_left || has_keys {
                Action::Disable
            } else {
                Action::Delete
            },
            resource: "tenant",
            name: slug.clone(),
            fields: vec![],
        });
    }
    Ok(plan)
}

/// Computes the plan without writing anything.
pub fn plan(store: &Store, cfg: &PlatformConfig) -> Result<Plan, ReconcileError> {
    let mut conn = store.conn()?;
    compute(&mut conn, cfg)
}

/// Computes and applies the plan in one transaction; returns what was applied.
pub fn apply(store: &Store, cfg: &PlatformConfig, actor: &str) -> Result<Plan, ReconcileError> {
    store
        .write(|c| {
            let plan = compute(c, cfg).map_err(|e| match e {
                ReconcileError::Store(s) => s,
                ReconcileError::Conflict(m) => StoreError::Conflict(m),
            })?;
            apply_changes(c, cfg, &plan, actor)?;
            Ok(plan)
        })
        .map_err(|e| match e {
            StoreError::Conflict(m) => ReconcileError::Conflict(m),
            other => ReconcileError::Store(other),
        })
}

fn apply_changes(
    c: &mut Conn,
    cfg: &PlatformConfig,
    plan: &Plan,
    actor: &str,
) -> Result<(), StoreError> {
    let now = store::now();
    // Tenants first (projects refer to them), deletions of tenants last.
    let ordered = plan
        .changes
        .iter()
        .filter(|ch| !(ch.resource == "tenant" && ch.action == Action::Delete))
        .chain(
            plan.changes
                .iter()
                .filter(|ch| ch.resource == "tenant" && ch.action == Action::Delete),
        );
    for ch in ordered {
        let org_id = match ch.resource {
            "tenant" => apply_tenant(c, cfg, ch, now)?,
            _ => apply_project(c, cfg, ch, now)?,
        };
        let details = json!({ "resource": ch.resource, "fields": ch.fields });
        store::audit::record(
            c,
            org_id.as_deref(),
            actor,
            &format!("config.{}.{}", ch.resource, action_name(ch.action)),
            &ch.name,
            &details,
        )?;
    }
    Ok(())
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Disable => "disable",
    }
}

fn apply_tenant(
    c: &mut Conn,
    cfg: &PlatformConfig,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Option<String>, StoreError> {
    let existing = orgs::find_by_slug(c, &ch.name)?;
    let declared = cfg.tenants.iter().find(|t| t.slug == ch.name);
    match (ch.action, existing, declared) {
        (Action::Create, _, Some(t)) => {
            let org = Org {
                id: store::new_id("org"),
                slug: t.slug.clone(),
                name: t.name.clone(),
                managed_by: "config".into(),
                disabled_at: None,
                created_at: now,
                updated_at: now,
            };
            orgs::insert(c, &org)?;
            Ok(Some(org.id))
        }
        (Action::Update, Some(o), Some(t)) => {
            orgs::update(c, &o.id, &t.name, None)?;
            Ok(Some(o.id))
        }
        (Action::Disable, Some(o), _) => {
            orgs::update(c, &o.id, &o.name, Some(now))?;
            Ok(Some(o.id))
        }
        (Action::Delete, Some(o), _) => {
            projects::delete_all_for_org(c, &o.id)?;
            orgs::delete(c, &o.id)?;
            Ok(None)
        }
        _ => Err(StoreError::Conflict(format!(
            "tenant `{}` changed while the plan was applied",
            ch.name
        ))),
    }
}

fn apply_project(
    c: &mut Conn,
    cfg: &PlatformConfig,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Option<String>, StoreError> {
    let (tenant, slug) = ch.name.split_once('/').unwrap_or((&ch.name, ""));
    let org = orgs::find_by_slug(c, tenant)?.ok_or(StoreError::NotFound)?;
    let existing = projects::find_by_slug_any(c, &org.id, slug)?;
    let declared = cfg
        .projects
        .iter()
        .find(|p| p.tenant == tenant && p.slug == slug);
    match (ch.action, existing, declared) {
        (Action::Create, None, Some(p)) => {
            projects::insert(
                c,
                &Project {
                    id: store::new_id("prj"),
                    org_id: org.id.clone(),
                    slug: p.slug.clone(),
                    source_path: p.path.display().to_string(),
                    harness: p.harness.clone(),
                    multitask: p.multitask.as_str().into(),
                    managed_by: "config".into(),
                    disabled_at: None,
                    created_at: now,
                    updated_at: now,
                },
            )?;
        }
        (Action::Update, Some(cur), Some(p)) => projects::update(
            c,
            &cur.id,
            &p.path.display().to_string(),
            p.harness.as_deref(),
            p.multitask.as_str(),
            None,
        )?,
        (Action::Disable, Some(cur), _) => projects::update(
            c,
            &cur.id,
            &cur.source_path,
            cur.harness.as_deref(),
            &cur.multitask,
            Some(now),
        )?,
        (Action::Delete, Some(cur), _) => projects::delete(c, &cur.id)?,
        _ => {
            return Err(StoreError::Conflict(format!(
                "project `{}` changed while the plan was applied",
                ch.name
            )))
        }
    }
    Ok(Some(org.id))
}

//! Reconcile: the desired state declared in the platform files -> the store.
//!
//! Only rows with `managed_by = 'config'` are ever touched; a plan lists create / update / delete
//! (or disable, for rows with history) per resource, and `apply` recomputes and applies it in
//! short transactions (one for an ordinary plan), recording each change in the audit log in the
//! same transaction. Applying twice is a no-op.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::json;

use crate::config::{ApiKeyConfig, PlatformConfig, PolicyConfig, ProjectConfig, TenantConfig};
use crate::store::models::{ApiKey, Org, Project};
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

/// The config-managed rows the plan was computed against, and every org's id by slug.
struct Current {
    orgs: BTreeMap<String, Org>,
    projects: BTreeMap<(String, String), Project>,
    org_ids: HashMap<String, String>,
    /// Declared keys by (tenant slug, name).
    keys: BTreeMap<(String, String), ApiKey>,
}

/// Adds the changes to declared API keys; returns the keys declared so far.
fn plan_keys(
    c: &mut Conn,
    cfg: &PlatformConfig,
    slug_of: &HashMap<&str, &str>,
    plan: &mut Plan,
) -> Result<BTreeMap<(String, String), ApiKey>, ReconcileError> {
    let current: BTreeMap<(String, String), ApiKey> = store::keys::list_config_managed(c)?
        .into_iter()
        .filter_map(|k| {
            let slug = slug_of.get(k.org_id.as_str())?.to_string();
            Some(((slug, k.name.clone()), k))
        })
        .collect();
    let mut declared = HashSet::new();
    for k in &cfg.api_keys {
        let key = (k.tenant.clone(), k.name.clone());
        let scopes = k.scopes.join(",");
        let name = format!("{}/{}", k.tenant, k.name);
        declared.insert(key.clone());
        match current.get(&key) {
            None => plan.changes.push(Change {
                action: Action::Create,
                resource: "api_key",
                name,
                fields: vec![],
            }),
            Some(row) => {
                let mut fields = Vec::new();
                if row.scopes != scopes {
                    fields.push((
                        "scopes".into(),
                        Some(row.scopes.clone()),
                        Some(scopes.clone()),
                    ));
                }
                let prefix = crate::platform::keys::lookup_prefix(&k.prefix);
                if row.lookup_prefix != prefix {
                    fields.push((
                        "prefix".into(),
                        Some(row.lookup_prefix.clone()),
                        Some(prefix.to_string()),
                    ));
                }
                if row.key_hash != k.hash {
                    // Hashes are not shown, only that one changed.
                    fields.push(("hash".into(), None, None));
                }
                if row.revoked_at.is_some() {
                    fields.push(("revoked".into(), Some("true".into()), Some("false".into())));
                }
                if !fields.is_empty() {
                    plan.changes.push(Change {
                        action: Action::Update,
                        resource: "api_key",
                        name,
                        fields,
                    });
                }
            }
        }
    }
    for (key, row) in &current {
        if !declared.contains(key) && row.revoked_at.is_none() {
            plan.changes.push(Change {
                action: Action::Disable,
                resource: "api_key",
                name: format!("{}/{}", key.0, key.1),
                fields: vec![],
            });
        }
    }
    Ok(current)
}

fn apply_key(
    c: &mut Conn,
    desired: &Desired<'_>,
    current: &Current,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Option<String>, StoreError> {
    let (tenant, name) = split_name(&ch.name);
    let key = (tenant.to_string(), name.to_string());
    match ch.action {
        Action::Create => {
            let k = desired
                .keys
                .get(&key)
                .ok_or_else(|| changed_under_us("api key", &ch.name))?;
            let org_id = current.org_ids.get(tenant).ok_or(StoreError::NotFound)?;
            let prefix = crate::platform::keys::lookup_prefix(&k.prefix);
            if store::keys::prefix_taken(c, prefix)? {
                return Err(StoreError::Conflict(format!(
                    "[[api_keys]] `{}`: another key already has the prefix `{prefix}`; mint a new key",
                    ch.name
                )));
            }
            store::keys::insert(
                c,
                &ApiKey {
                    id: store::new_id("key"),
                    org_id: org_id.clone(),
                    name: k.name.clone(),
                    lookup_prefix: crate::platform::keys::lookup_prefix(&k.prefix).to_string(),
                    key_hash: k.hash.clone(),
                    scopes: k.scopes.join(","),
                    created_at: now,
                    last_used_at: None,
                    revoked_at: None,
                    last4: String::new(),
                    managed_by: "config".into(),
                },
            )?;
            Ok(Some(org_id.clone()))
        }
        Action::Update => {
            let k = desired
                .keys
                .get(&key)
                .ok_or_else(|| changed_under_us("api key", &ch.name))?;
            let row = current
                .keys
                .get(&key)
                .ok_or_else(|| changed_under_us("api key", &ch.name))?;
            let prefix = crate::platform::keys::lookup_prefix(&k.prefix);
            store::keys::update_declared(c, &row.id, &k.scopes.join(","), &k.hash, prefix)?;
            Ok(Some(row.org_id.clone()))
        }
        _ => {
            let row = current
                .keys
                .get(&key)
                .ok_or_else(|| changed_under_us("api key", &ch.name))?;
            store::keys::revoke_by_id(c, &row.id)?;
            Ok(Some(row.org_id.clone()))
        }
    }
}

/// Changes applied per write transaction: a large reload never holds the database's write lock
/// for long, so turns keep streaming while it runs.
const APPLY_BATCH: usize = 250;

/// Computes the plan against the store as seen through `c`.
pub fn compute(c: &mut Conn, cfg: &PlatformConfig) -> Result<Plan, ReconcileError> {
    Ok(compute_state(c, cfg)?.0)
}

/// Computes the plan; every lookup is by key, so the work grows linearly with the resources.
fn compute_state(c: &mut Conn, cfg: &PlatformConfig) -> Result<(Plan, Current), ReconcileError> {
    let mut plan = Plan::default();
    let current_orgs: BTreeMap<String, Org> = orgs::list_config_managed(c)?
        .into_iter()
        .map(|o| (o.slug.clone(), o))
        .collect();
    let every_org = orgs::list_every_id_slug(c)?;
    let org_ids: HashMap<String, String> = every_org
        .iter()
        .map(|(id, slug)| (slug.clone(), id.clone()))
        .collect();
    let slug_of: HashMap<&str, &str> = every_org
        .iter()
        .map(|(id, slug)| (id.as_str(), slug.as_str()))
        .collect();

    for t in &cfg.tenants {
        match current_orgs.get(&t.slug) {
            None => {
                if org_ids.contains_key(&t.slug) {
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
            let org = slug_of.get(p.org_id.as_str())?.to_string();
            Some(((org, p.slug.clone()), p))
        })
        .collect();
    let every_project: HashSet<(String, String)> = projects::list_every_key(c)?
        .into_iter()
        .filter_map(|(org_id, slug)| Some((slug_of.get(org_id.as_str())?.to_string(), slug)))
        .collect();
    let mut declared: HashSet<(&str, &str)> = HashSet::with_capacity(cfg.projects.len());
    for p in &cfg.projects {
        declared.insert((p.tenant.as_str(), p.slug.as_str()));
        let path = p.path.display().to_string();
        let key = (p.tenant.clone(), p.slug.clone());
        let name = format!("{}/{}", p.tenant, p.slug);
        match current_projects.get(&key) {
            None => {
                if every_project.contains(&key) {
                    return Err(ReconcileError::Conflict(format!(
                        "project `{name}` already exists and is managed through the API, not the configuration"
                    )));
                }
                plan.changes.push(Change {
                    action: Action::Create,
                    resource: "project",
                    name,
                    fields: vec![
                        ("path".into(), None, Some(path)),
                        ("harness".into(), None, p.harness.clone()),
                        ("multitask".into(), None, Some(p.multitask.as_str().into())),
                    ],
                })
            }
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
    let removed: Vec<(&(String, String), &Project)> = current_projects
        .iter()
        .filter(|((org, slug), cur)| {
            !declared.contains(&(org.as_str(), slug.as_str())) && cur.disabled_at.is_none()
        })
        .collect();
    let removed_ids: Vec<String> = removed.iter().map(|(_, p)| p.id.clone()).collect();
    let with_history = projects::with_history(c, &removed_ids)?;
    // Projects deleted by this plan, per tenant slug.
    let mut deleted_per_org: HashMap<&str, usize> = HashMap::new();
    for ((org, slug), cur) in removed {
        let action = if with_history.contains(&cur.id) {
            Action::Disable
        } else {
            *deleted_per_org.entry(org.as_str()).or_default() += 1;
            Action::Delete
        };
        plan.changes.push(Change {
            action,
            resource: "project",
            name: format!("{org}/{slug}"),
            fields: vec![],
        });
    }
    let declared_tenants: HashSet<&str> = cfg.tenants.iter().map(|t| t.slug.as_str()).collect();
    for (slug, cur) in &current_orgs {
        if declared_tenants.contains(slug.as_str()) || cur.disabled_at.is_some() {
            continue;
        }
        // The org can go only when nothing refers to it once this plan's deletions are done.
        let deleted_here = deleted_per_org.get(slug.as_str()).copied().unwrap_or(0);
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
    let current_keys = plan_keys(c, cfg, &slug_of, &mut plan)?;
    Ok((
        plan,
        Current {
            orgs: current_orgs,
            projects: current_projects,
            org_ids,
            keys: current_keys,
        },
    ))
}

/// Computes the plan without writing anything.
pub fn plan(store: &Store, cfg: &PlatformConfig) -> Result<Plan, ReconcileError> {
    let mut conn = store.conn()?;
    compute(&mut conn, cfg)
}

/// Computes the plan and applies it: in one transaction when it has at most `APPLY_BATCH`
/// changes, else in transactions of that many, so the write lock is never held for long. Every
/// change is idempotent against the plan, so a failure part-way leaves a consistent prefix and
/// the next apply completes the rest. Returns what was applied.
pub fn apply(
    store: &Store,
    cfg: &PlatformConfig,
    actor: &store::audit::Actor,
) -> Result<Plan, ReconcileError> {
    let (plan, mut current) = {
        let mut conn = store.conn()?;
        compute_state(&mut conn, cfg)?
    };
    if plan.is_empty() {
        return Ok(plan);
    }
    let tenants: HashMap<&str, &TenantConfig> =
        cfg.tenants.iter().map(|t| (t.slug.as_str(), t)).collect();
    let declared: HashMap<(&str, &str), &ProjectConfig> = cfg
        .projects
        .iter()
        .map(|p| ((p.tenant.as_str(), p.slug.as_str()), p))
        .collect();
    // Tenants first (projects refer to them), deletions of tenants last.
    let ordered: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|ch| !(ch.resource == "tenant" && ch.action == Action::Delete))
        .chain(
            plan.changes
                .iter()
                .filter(|ch| ch.resource == "tenant" && ch.action == Action::Delete),
        )
        .collect();
    let desired = Desired {
        tenants: &tenants,
        projects: &declared,
        keys: cfg
            .api_keys
            .iter()
            .map(|k| ((k.tenant.clone(), k.name.clone()), k))
            .collect(),
    };
    for batch in ordered.chunks(APPLY_BATCH) {
        store
            .write(|c| apply_batch(c, batch, &desired, &mut current, actor))
            .map_err(|e| match e {
                StoreError::Conflict(m) => ReconcileError::Conflict(m),
                other => ReconcileError::Store(other),
            })?;
    }
    Ok(plan)
}

/// The declared resources by key.
struct Desired<'a> {
    tenants: &'a HashMap<&'a str, &'a TenantConfig>,
    projects: &'a HashMap<(&'a str, &'a str), &'a ProjectConfig>,
    keys: HashMap<(String, String), &'a ApiKeyConfig>,
}

fn apply_batch(
    c: &mut Conn,
    batch: &[&Change],
    desired: &Desired<'_>,
    current: &mut Current,
    actor: &store::audit::Actor,
) -> Result<(), StoreError> {
    let now = store::now();
    let mut new_projects: Vec<Project> = Vec::new();
    let mut audit = Vec::with_capacity(batch.len());
    for ch in batch {
        let org_id = if ch.resource == "tenant" {
            apply_tenant(c, desired, current, ch, now)?
        } else if ch.resource == "api_key" {
            apply_key(c, desired, current, ch, now)?
        } else if ch.action == Action::Create {
            let p = new_project(desired, current, ch, now)?;
            let org = p.org_id.clone();
            new_projects.push(p);
            Some(org)
        } else {
            apply_project(c, desired, current, ch, now)?
        };
        let details = json!({ "resource": ch.resource, "fields": ch.fields });
        let mut e = store::audit::entry_by(
            org_id.as_deref(),
            actor,
            &format!("config.{}.{}", ch.resource, action_name(ch.action)),
            &ch.name,
            &details,
        );
        e.before_digest = before_state(ch).map(|b| store::audit::digest(&b));
        audit.push(e);
    }
    projects::insert_many(c, &new_projects)?;
    store::audit::record_many(c, &audit)
}

/// What changes between two sets of `[[policies]]` (by tenant and name). Policies live in the
/// configuration only, not the store, so the running configuration is the "before".
pub fn policy_changes(before: &[PolicyConfig], after: &[PolicyConfig]) -> Vec<Change> {
    let key = |p: &PolicyConfig| format!("{}/{}", p.tenant, p.name);
    let text = |p: &PolicyConfig| serde_json::to_string(p).unwrap_or_default();
    let old: HashMap<String, &PolicyConfig> = before.iter().map(|p| (key(p), p)).collect();
    let new: HashMap<String, &PolicyConfig> = after.iter().map(|p| (key(p), p)).collect();
    let mut out = Vec::new();
    for p in after {
        let name = key(p);
        match old.get(&name) {
            None => out.push(Change {
                action: Action::Create,
                resource: "policy",
                name,
                fields: vec![],
            }),
            Some(o) if text(o) != text(p) => out.push(Change {
                action: Action::Update,
                resource: "policy",
                name,
                fields: vec![("policy".into(), Some(text(o)), Some(text(p)))],
            }),
            Some(_) => {}
        }
    }
    for p in before {
        if !new.contains_key(&key(p)) {
            out.push(Change {
                action: Action::Delete,
                resource: "policy",
                name: key(p),
                fields: vec![],
            });
        }
    }
    out
}

/// Records policy changes in the audit log (one transaction), each under its tenant's org.
pub fn record_policy_changes(
    store: &Store,
    changes: &[Change],
    actor: &store::audit::Actor,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    store.write(|c| {
        let mut rows = Vec::with_capacity(changes.len());
        for ch in changes {
            let (tenant, _) = split_name(&ch.name);
            let org = store::orgs::find_by_slug(c, tenant)?.map(|o| o.id);
            let mut e = store::audit::entry_by(
                org.as_deref(),
                actor,
                &format!("config.policy.{}", action_name(ch.action)),
                &ch.name,
                &json!({ "resource": ch.resource, "fields": ch.fields }),
            );
            e.before_digest = before_state(ch).map(|b| store::audit::digest(&b));
            rows.push(e);
        }
        store::audit::record_many(c, &rows)
    })
}

/// The changed fields' values before an update, for the audit row's `before_digest`.
fn before_state(ch: &Change) -> Option<serde_json::Value> {
    (ch.action == Action::Update).then(|| {
        ch.fields
            .iter()
            .map(|(field, before, _)| (field.clone(), json!(before)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    })
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Disable => "disable",
    }
}

fn changed_under_us(what: &str, name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "{what} `{name}` changed while the plan was applied"
    ))
}

fn apply_tenant(
    c: &mut Conn,
    desired: &Desired<'_>,
    current: &mut Current,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Option<String>, StoreError> {
    let existing = current.orgs.get(&ch.name);
    let declared = desired.tenants.get(ch.name.as_str());
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
            current.org_ids.insert(org.slug.clone(), org.id.clone());
            Ok(Some(org.id))
        }
        (Action::Update, Some(o), Some(t)) => {
            orgs::update(c, &o.id, &t.name, None)?;
            Ok(Some(o.id.clone()))
        }
        (Action::Disable, Some(o), _) => {
            orgs::update(c, &o.id, &o.name, Some(now))?;
            Ok(Some(o.id.clone()))
        }
        (Action::Delete, Some(o), _) => {
            projects::delete_all_for_org(c, &o.id)?;
            orgs::delete(c, &o.id)?;
            Ok(None)
        }
        _ => Err(changed_under_us("tenant", &ch.name)),
    }
}

fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((name, ""))
}

fn new_project(
    desired: &Desired<'_>,
    current: &Current,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Project, StoreError> {
    let (tenant, slug) = split_name(&ch.name);
    let org_id = current.org_ids.get(tenant).ok_or(StoreError::NotFound)?;
    let p = desired
        .projects
        .get(&(tenant, slug))
        .ok_or_else(|| changed_under_us("project", &ch.name))?;
    Ok(Project {
        id: store::new_id("prj"),
        org_id: org_id.clone(),
        slug: p.slug.clone(),
        source_path: p.path.display().to_string(),
        harness: p.harness.clone(),
        multitask: p.multitask.as_str().into(),
        managed_by: "config".into(),
        disabled_at: None,
        created_at: now,
        updated_at: now,
    })
}

fn apply_project(
    c: &mut Conn,
    desired: &Desired<'_>,
    current: &Current,
    ch: &Change,
    now: chrono::NaiveDateTime,
) -> Result<Option<String>, StoreError> {
    let (tenant, slug) = split_name(&ch.name);
    let existing = current
        .projects
        .get(&(tenant.to_string(), slug.to_string()));
    let declared = desired.projects.get(&(tenant, slug));
    match (ch.action, existing, declared) {
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
        _ => return Err(changed_under_us("project", &ch.name)),
    }
    Ok(existing.map(|p| p.org_id.clone()))
}

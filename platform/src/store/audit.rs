//! The append-only audit log.

use diesel::prelude::*;

use super::models::AuditEntry;
use super::schema::audit_log;
use super::{Conn, StoreError};

/// Who made a change, and the request it came with.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    /// `operator`, `api_key`, `system`.
    pub kind: String,
    /// The key id, `operator`, `cli`, `config`, ...
    pub id: String,
    /// The request id.
    pub request_id: Option<String>,
    /// The client's address.
    pub remote_addr: Option<String>,
}

impl Actor {
    /// A change made by Karta itself or its CLI (`id`: `cli`, `config`, ...).
    pub fn system(id: &str) -> Self {
        Actor {
            kind: "system".into(),
            id: id.into(),
            ..Default::default()
        }
    }
}

/// Appends an entry by `actor`; call inside the transaction that makes the change.
pub fn record_by(
    c: &mut Conn,
    org_id: Option<&str>,
    actor: &Actor,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> Result<(), StoreError> {
    record_change(c, org_id, actor, action, target, None, details)
}

/// Appends an entry for a change from `before` to `after` (both kept only as digests beside
/// `after` itself); call inside the transaction that makes the change.
pub fn record_change(
    c: &mut Conn,
    org_id: Option<&str>,
    actor: &Actor,
    action: &str,
    target: &str,
    before: Option<&serde_json::Value>,
    after: &serde_json::Value,
) -> Result<(), StoreError> {
    let mut e = entry_by(org_id, actor, action, target, after);
    e.before_digest = before.map(digest);
    diesel::insert_into(audit_log::table)
        .values(&e)
        .execute(c)?;
    Ok(())
}

/// A new entry by `actor`, stamped now.
pub fn entry_by(
    org_id: Option<&str>,
    actor: &Actor,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> AuditEntry {
    let mut e = entry(org_id, &actor.id, action, target, details);
    e.actor_type = actor.kind.clone();
    e.request_id = actor.request_id.clone();
    e.remote_addr = actor.remote_addr.clone();
    e
}

/// SHA-256 of a JSON value's text, in hex.
pub fn digest(v: &serde_json::Value) -> String {
    format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(v.to_string().as_bytes())
    )
}

/// The kind of thing an action is about: `api_key` for `api_key.created`, `project` for
/// `config.project.update`.
pub fn resource_type(action: &str) -> &str {
    let rest = action.strip_prefix("config.").unwrap_or(action);
    rest.split('.').next().unwrap_or(rest)
}

/// Appends an entry; call inside the transaction that makes the change.
pub fn record(
    c: &mut Conn,
    org_id: Option<&str>,
    actor: &str,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> Result<(), StoreError> {
    let entry = entry(org_id, actor, action, target, details);
    diesel::insert_into(audit_log::table)
        .values(&entry)
        .execute(c)?;
    Ok(())
}

/// Appends many entries with multi-row statements; call inside the transaction of the changes.
pub fn record_many(c: &mut Conn, entries: &[AuditEntry]) -> Result<(), StoreError> {
    for chunk in entries.chunks(500) {
        let q = diesel::insert_into(audit_log::table).values(chunk);
        super::execute_on_backend!(c, q)?;
    }
    Ok(())
}

/// A new entry, stamped now.
pub fn entry(
    org_id: Option<&str>,
    actor: &str,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> AuditEntry {
    let now = super::now();
    AuditEntry {
        // Time-ordered ids: a sortable timestamp, then randomness.
        id: format!(
            "aud_{}{}",
            now.and_utc().format("%Y%m%d%H%M%S%6f"),
            super::random_base62(8)
        ),
        org_id: org_id.map(str::to_string),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        details: details.to_string(),
        created_at: now,
        actor_type: if actor.starts_with("api_key:") {
            "api_key".into()
        } else if actor == "operator" {
            "operator".into()
        } else {
            "system".into()
        },
        request_id: None,
        remote_addr: None,
        digest: Some(digest(details)),
        resource_type: Some(resource_type(action).to_string()),
        before_digest: None,
    }
}

/// Entries for one org (or platform-wide when `org_id` is `None`), oldest first.
pub fn list(c: &mut Conn, org_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
    let q = audit_log::table
        .select(AuditEntry::as_select())
        .order(audit_log::id.asc());
    Ok(match org_id {
        Some(o) => q.filter(audit_log::org_id.eq(o)).load(c)?,
        None => q.load(c)?,
    })
}

/// Which entries a page holds.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this org's (`None`: every org, for the operator).
    pub org_id: Option<String>,
    /// At or after.
    pub since: Option<chrono::NaiveDateTime>,
    /// Before.
    pub until: Option<chrono::NaiveDateTime>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this kind of target.
    pub resource_type: Option<String>,
    /// Entries older than this id (the previous page's last).
    pub before_id: Option<String>,
}

/// A page of entries, newest first (ids sort by time).
pub fn page(c: &mut Conn, f: &AuditFilter, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let mut q = audit_log::table
        .select(AuditEntry::as_select())
        .order(audit_log::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(o) = &f.org_id {
        q = q.filter(audit_log::org_id.eq(o.clone()));
    }
    if let Some(t) = f.since {
        q = q.filter(audit_log::created_at.ge(t));
    }
    if let Some(t) = f.until {
        q = q.filter(audit_log::created_at.lt(t));
    }
    if let Some(a) = &f.action {
        q = q.filter(audit_log::action.eq(a.clone()));
    }
    if let Some(a) = &f.actor {
        q = q.filter(audit_log::actor.eq(a.clone()));
    }
    if let Some(t) = &f.target {
        q = q.filter(audit_log::target.eq(t.clone()));
    }
    if let Some(t) = &f.resource_type {
        // Rows from before the column (the table is append-only, so never backfilled) match
        // by their action's name; the type's own `_` must not be a wildcard there.
        let t_like = t
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        q = q.filter(
            audit_log::resource_type
                .eq(t.clone())
                .or(audit_log::resource_type.is_null().and(
                    audit_log::action
                        .like(format!("{t_like}.%"))
                        .escape('\\')
                        .or(audit_log::action
                            .like(format!("config.{t_like}.%"))
                            .escape('\\')),
                )),
        );
    }
    if let Some(id) = &f.before_id {
        q = q.filter(audit_log::id.lt(id.clone()));
    }
    Ok(q.load(c)?)
}

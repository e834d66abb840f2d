//! The append-only audit log.

use diesel::prelude::*;

use super::models::AuditEntry;
use super::schema::audit_log;
use super::{Conn, StoreError};

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

//! Org events (the webhook outbox): things that happened to an org that its builder may want
//! to hear about, such as a budget threshold crossed. Each is stored once per `dedupe_key`.

use diesel::prelude::*;

use super::schema::org_events as oe;
use super::{Conn, StoreError};

/// One event.
#[derive(Debug, Clone, Queryable, Insertable, PartialEq)]
#[diesel(table_name = oe)]
pub struct OrgEvent {
    /// `evt_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// `budget.threshold_reached`, `budget.exhausted`, ...
    pub event_type: String,
    /// What makes two notices of the same happening one event.
    pub dedupe_key: String,
    /// The event's object, JSON.
    pub payload: String,
    /// When it happened.
    pub created_at: chrono::NaiveDateTime,
}

/// Stores the event unless one with its `dedupe_key` is stored for the org. Whether it was new.
pub fn insert(c: &mut Conn, e: &OrgEvent) -> Result<bool, StoreError> {
    let n = super::execute_on_backend!(
        c,
        diesel::insert_into(oe::table)
            .values(e)
            .on_conflict((oe::org_id, oe::dedupe_key))
            .do_nothing()
    )?;
    Ok(n == 1)
}

/// The org's events, newest first, optionally of one type.
pub fn list(
    c: &mut Conn,
    org_id: &str,
    event_type: Option<&str>,
    limit: i64,
) -> Result<Vec<OrgEvent>, StoreError> {
    let mut q = oe::table.filter(oe::org_id.eq(org_id)).into_boxed();
    if let Some(t) = event_type {
        q = q.filter(oe::event_type.eq(t.to_string()));
    }
    Ok(q.order((oe::created_at.desc(), oe::id.desc()))
        .limit(limit)
        .load(c)?)
}

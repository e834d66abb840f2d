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
    /// Turned into webhook deliveries already.
    pub fanned_out: bool,
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

/// An event of the org by id.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<OrgEvent, StoreError> {
    use super::OptionalRow;
    oe::table
        .filter(oe::org_id.eq(org_id))
        .filter(oe::id.eq(id))
        .first(c)
        .found()
}

/// Events not yet turned into deliveries, oldest first.
pub fn pending_fan_out(c: &mut Conn, limit: i64) -> Result<Vec<OrgEvent>, StoreError> {
    Ok(oe::table
        .filter(oe::fanned_out.eq(false))
        .order(oe::created_at.asc())
        .limit(limit)
        .load(c)?)
}

/// Marks events as turned into deliveries.
pub fn mark_fanned_out(c: &mut Conn, ids: &[String]) -> Result<(), StoreError> {
    diesel::update(oe::table.filter(oe::id.eq_any(ids)))
        .set(oe::fanned_out.eq(true))
        .execute(c)?;
    Ok(())
}

/// A new event of `event_type` with `object` as its data, now (the caller inserts it in the
/// transaction of the change it reports).
pub fn new_event(org_id: &str, event_type: &str, object: &serde_json::Value) -> OrgEvent {
    let id = super::new_id("evt");
    OrgEvent {
        dedupe_key: id.clone(),
        id,
        org_id: org_id.to_string(),
        event_type: event_type.to_string(),
        payload: object.to_string(),
        created_at: super::now(),
        fanned_out: false,
    }
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

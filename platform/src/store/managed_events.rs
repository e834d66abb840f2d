//! The Managed Agents adapter's per-session log.

use diesel::prelude::*;

use super::schema::managed_events as me;
use super::{Conn, StoreError};

/// One entry: sequence number, type and the whole entry as JSON.
pub type Entry = (i64, String, String);

/// The session's last sequence number (0 when its log is empty).
pub fn last_seq(c: &mut Conn, session_id: &str) -> Result<i64, StoreError> {
    Ok(me::table
        .filter(me::session_id.eq(session_id))
        .select(diesel::dsl::max(me::seq))
        .first::<Option<i64>>(c)?
        .unwrap_or(0))
}

/// Appends entries (numbered by the caller, after [`last_seq`]) and forgets all but the last
/// `keep` of the session. Run in a write transaction.
pub fn append(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    entries: &[Entry],
    keep: i64,
) -> Result<(), StoreError> {
    let now = super::now();
    for (seq, kind, body) in entries {
        diesel::insert_into(me::table)
            .values((
                me::session_id.eq(session_id),
                me::org_id.eq(org_id),
                me::seq.eq(seq),
                me::event_type.eq(kind),
                me::body.eq(body),
                me::created_at.eq(now),
            ))
            .execute(c)?;
    }
    if let Some((last, _, _)) = entries.last() {
        diesel::delete(
            me::table
                .filter(me::session_id.eq(session_id))
                .filter(me::seq.le(last - keep)),
        )
        .execute(c)?;
    }
    Ok(())
}

/// The org's session's entries after `after`, oldest first, at most `limit`.
pub fn after(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    Ok(me::table
        .filter(me::org_id.eq(org_id))
        .filter(me::session_id.eq(session_id))
        .filter(me::seq.gt(after))
        .order(me::seq.asc())
        .limit(limit)
        .select((me::seq, me::event_type, me::body))
        .load(c)?)
}

/// The type of the session's last `session.status_*` entry.
pub fn last_status(c: &mut Conn, session_id: &str) -> Result<Option<String>, StoreError> {
    Ok(me::table
        .filter(me::session_id.eq(session_id))
        .filter(me::event_type.like("session.status_%"))
        .order(me::seq.desc())
        .select(me::event_type)
        .first(c)
        .optional()?)
}

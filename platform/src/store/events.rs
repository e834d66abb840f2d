//! The per-session event log behind stream replay.

use diesel::prelude::*;

use super::models::SessionEvent;
use super::schema::{session_events, sessions};
use super::{Conn, StoreError};

/// Appends one event and advances the session's sequence; prunes beyond `retention` events.
pub fn append(c: &mut Conn, ev: &SessionEvent, retention: u64) -> Result<(), StoreError> {
    diesel::insert_into(session_events::table)
        .values(ev)
        .execute(c)?;
    diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(&ev.org_id))
            .filter(sessions::id.eq(&ev.session_id)),
    )
    .set(sessions::last_seq.eq(ev.seq))
    .execute(c)?;
    let keep_from = ev.seq - retention as i64;
    // Pruning is cheap when there is nothing to prune; do it every 100 events.
    if keep_from > 0 && ev.seq % 100 == 0 {
        diesel::delete(
            session_events::table
                .filter(session_events::org_id.eq(&ev.org_id))
                .filter(session_events::session_id.eq(&ev.session_id))
                .filter(session_events::seq.le(keep_from)),
        )
        .execute(c)?;
    }
    Ok(())
}

/// Events of the org's session with `seq > after`, in order.
pub fn list_after(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    after: i64,
) -> Result<Vec<SessionEvent>, StoreError> {
    Ok(session_events::table
        .filter(session_events::org_id.eq(org_id))
        .filter(session_events::session_id.eq(session_id))
        .filter(session_events::seq.gt(after))
        .order(session_events::seq.asc())
        .select(SessionEvent::as_select())
        .load(c)?)
}

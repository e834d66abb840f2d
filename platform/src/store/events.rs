//! The per-session event log behind stream replay.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::cached::{bind_list, Cached, Fixed};
use super::models::SessionEvent;
use super::schema::session_events;
use super::{AnyConnection, Conn, StoreError};

/// Appends events (any sessions, each session's in sequence order) and advances each session's
/// `last_seq`; prunes a session's log beyond `retention` events (see [`insert_batch`]).
pub fn append_batch(
    c: &mut Conn,
    rows: &[&SessionEvent],
    retention: u64,
) -> Result<(), StoreError> {
    let highs = insert_batch(c, rows, retention)?;
    let writes = highs
        .into_iter()
        .map(|(k, high)| (k, super::sessions::TurnWrite::logged_to(high)))
        .collect();
    super::sessions::write_turns(c, &writes, super::now())
}

/// Inserts events (any sessions, each session's in sequence order) and answers each session's
/// highest sequence number in the batch, for the caller to store as its `last_seq` (with the
/// session's other writes, see [`super::sessions::write_turns`]). Prunes a session's log beyond
/// `retention` events whenever its sequence crosses a multiple of 100 (pruning every time would
/// cost a delete per event).
pub fn insert_batch(
    c: &mut Conn,
    rows: &[&SessionEvent],
    retention: u64,
) -> Result<BTreeMap<(String, String), i64>, StoreError> {
    if rows.is_empty() {
        return Ok(BTreeMap::new());
    }
    // (org, session) -> (lowest seq, highest seq) in this batch.
    let mut spans: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    match c {
        // One multi-row INSERT per chunk saves PostgreSQL a round trip per row.
        AnyConnection::Postgresql(pg) => {
            for chunk in rows.chunks(200) {
                diesel::insert_into(session_events::table)
                    .values(chunk.to_vec())
                    .execute(pg)?;
            }
        }
        // SQLite has no round trips: one cached prepared statement per row beats parsing a new
        // multi-row statement for every batch size.
        AnyConnection::Sqlite(lite) => {
            for row in rows {
                Cached(InsertEvent(row)).execute(lite)?;
            }
        }
    }
    for r in rows {
        let span = spans
            .entry((r.org_id.as_str(), r.session_id.as_str()))
            .or_insert((r.seq, r.seq));
        span.0 = span.0.min(r.seq);
        span.1 = span.1.max(r.seq);
    }
    for ((org, session), (low, high)) in &spans {
        let keep_from = high - retention as i64;
        if keep_from > 0 && high / 100 != (low - 1) / 100 {
            diesel::delete(
                session_events::table
                    .filter(session_events::org_id.eq(*org))
                    .filter(session_events::session_id.eq(*session))
                    .filter(session_events::seq.le(keep_from)),
            )
            .execute(c)?;
        }
    }
    Ok(spans
        .into_iter()
        .map(|((org, id), (_, high))| ((org.to_string(), id.to_string()), high))
        .collect())
}

/// Appends one event (see [`append_batch`]).
pub fn append(c: &mut Conn, ev: &SessionEvent, retention: u64) -> Result<(), StoreError> {
    append_batch(c, &[ev], retention)
}

/// Up to `limit` events of the org's session with `seq > after`, in order.
pub fn list_after(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<SessionEvent>, StoreError> {
    Ok(session_events::table
        .filter(session_events::org_id.eq(org_id))
        .filter(session_events::session_id.eq(session_id))
        .filter(session_events::seq.gt(after))
        .order(session_events::seq.asc())
        .limit(limit)
        .select(SessionEvent::as_select())
        .load(c)?)
}

/// `INSERT` of one event on SQLite (see [`super::cached`]).
struct InsertEvent<'a>(&'a SessionEvent);

impl Fixed for InsertEvent<'_> {
    type Key = InsertEvent<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Timestamp};
        let r = self.0;
        out.push_sql(
            "INSERT INTO session_events \
             (session_id, org_id, seq, event_type, payload, created_at) VALUES (",
        );
        bind_list!(out; Text => &r.session_id, Text => &r.org_id, BigInt => &r.seq,
            Text => &r.event_type, Text => &r.payload, Timestamp => &r.created_at);
        out.push_sql(")");
        Ok(())
    }
}

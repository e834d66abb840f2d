//! The per-session event log behind stream replay.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::models::SessionEvent;
use super::schema::{session_events, sessions};
use super::{AnyConnection, Conn, StoreError};

/// Appends events (any sessions, each session's in sequence order) and advances each session's
/// `last_seq`; prunes a session's log beyond `retention` events whenever its sequence crosses a
/// multiple of 100 (pruning every time would cost a delete per event).
pub fn append_batch(
    c: &mut Conn,
    rows: &[&SessionEvent],
    retention: u64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
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
                diesel::insert_into(session_events::table)
                    .values(*row)
                    .execute(lite)?;
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
    advance_last_seq(c, &spans)?;
    for ((org, session), (low, high)) in spans {
        let keep_from = high - retention as i64;
        if keep_from > 0 && high / 100 != (low - 1) / 100 {
            diesel::delete(
                session_events::table
                    .filter(session_events::org_id.eq(org))
                    .filter(session_events::session_id.eq(session))
                    .filter(session_events::seq.le(keep_from)),
            )
            .execute(c)?;
        }
    }
    Ok(())
}

/// Moves each session's `last_seq` up to the highest sequence of its span: one statement for
/// the whole batch on PostgreSQL (a round trip saved per session), one cached statement per
/// session on SQLite.
fn advance_last_seq(
    c: &mut Conn,
    spans: &BTreeMap<(&str, &str), (i64, i64)>,
) -> Result<(), StoreError> {
    match c {
        AnyConnection::Postgresql(pg) if spans.len() > 1 => {
            use diesel::sql_types::{Array, BigInt, Text};
            let orgs: Vec<&str> = spans.keys().map(|k| k.0).collect();
            let ids: Vec<&str> = spans.keys().map(|k| k.1).collect();
            let highs: Vec<i64> = spans.values().map(|v| v.1).collect();
            diesel::sql_query(
                "UPDATE sessions SET last_seq = v.high \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS v(org_id, id, high) \
                 WHERE sessions.org_id = v.org_id AND sessions.id = v.id \
                 AND sessions.last_seq < v.high",
            )
            .bind::<Array<Text>, _>(orgs)
            .bind::<Array<Text>, _>(ids)
            .bind::<Array<BigInt>, _>(highs)
            .execute(pg)?;
        }
        _ => {
            for ((org, session), (_, high)) in spans {
                diesel::update(
                    sessions::table
                        .filter(sessions::org_id.eq(*org))
                        .filter(sessions::id.eq(*session))
                        .filter(sessions::last_seq.lt(*high)),
                )
                .set(sessions::last_seq.eq(*high))
                .execute(c)?;
            }
        }
    }
    Ok(())
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

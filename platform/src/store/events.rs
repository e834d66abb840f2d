//! The per-session event log behind stream replay.
//!
//! The log stores a run of a session's consecutive events (at most [`MAX_RUN_EVENTS`]) in one
//! row, their envelopes one line each: a quick turn's events are one row, so the log's
//! `(session_id, seq)` index takes one entry a turn rather than one an event. With many
//! sessions appending at as many places in that index, its leaves split on nearly every turn
//! when every event had its own entry; that was the largest share of what the log wrote.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::Deserialize;

use super::cached::{bind_list, Cached, Fixed};
use super::models::{LogRun, SessionEvent};
use super::schema::session_log;
use super::{AnyConnection, Conn, StoreError};

/// The most events one row of the log holds. Reads rely on it to find the row that holds a
/// sequence number from the index alone.
pub const MAX_RUN_EVENTS: i64 = 64;

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
/// session's other writes, see [`super::sessions::write_turns`]). A session's consecutive
/// events go in runs of up to [`MAX_RUN_EVENTS`] a row. Prunes a session's log beyond
/// `retention` events whenever its sequence crosses a multiple of 100 (pruning every time would
/// cost a delete per event); a run that holds the boundary is kept whole.
pub fn insert_batch(
    c: &mut Conn,
    rows: &[&SessionEvent],
    retention: u64,
) -> Result<BTreeMap<(String, String), i64>, StoreError> {
    if rows.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut by_session: BTreeMap<(&str, &str), Vec<&SessionEvent>> = BTreeMap::new();
    for r in rows {
        by_session
            .entry((r.org_id.as_str(), r.session_id.as_str()))
            .or_default()
            .push(r);
    }
    let runs: Vec<LogRun> = by_session.values().flat_map(|evs| runs(evs)).collect();
    match c {
        // One multi-row INSERT per chunk saves PostgreSQL a round trip per row.
        AnyConnection::Postgresql(pg) => {
            for chunk in runs.chunks(200) {
                diesel::insert_into(session_log::table)
                    .values(chunk)
                    .execute(pg)?;
            }
        }
        // SQLite has no round trips: one cached prepared statement per row beats parsing a new
        // multi-row statement for every batch size.
        AnyConnection::Sqlite(lite) => {
            for run in &runs {
                Cached(InsertRun(run)).execute(lite)?;
            }
        }
    }
    let mut highs = BTreeMap::new();
    for ((org, session), evs) in &by_session {
        let low = evs.iter().map(|e| e.seq).min().unwrap_or_default();
        let high = evs.iter().map(|e| e.seq).max().unwrap_or_default();
        let keep_from = high - retention as i64;
        if keep_from > 0 && high / 100 != (low - 1) / 100 {
            diesel::delete(
                session_log::table
                    .filter(session_log::org_id.eq(*org))
                    .filter(session_log::session_id.eq(*session))
                    .filter(session_log::seq.le(keep_from))
                    .filter(session_log::last_seq.le(keep_from)),
            )
            .execute(c)?;
        }
        highs.insert((org.to_string(), session.to_string()), high);
    }
    Ok(highs)
}

/// One session's events (in sequence order) as log rows: each run of consecutive numbers, at
/// most [`MAX_RUN_EVENTS`] long. An envelope with a line break (never one of ours: they are
/// compact JSON) gets a row of its own, which is read whole.
fn runs(events: &[&SessionEvent]) -> Vec<LogRun> {
    let mut out: Vec<LogRun> = Vec::new();
    let mut open = false;
    for e in events {
        let alone = e.payload.contains('\n');
        match out.last_mut() {
            Some(run)
                if open
                    && !alone
                    && e.seq == run.last_seq + 1
                    && run.last_seq - run.seq + 1 < MAX_RUN_EVENTS =>
            {
                run.last_seq = e.seq;
                run.payload.push('\n');
                run.payload.push_str(&e.payload);
            }
            _ => {
                out.push(LogRun {
                    session_id: e.session_id.clone(),
                    seq: e.seq,
                    last_seq: e.seq,
                    org_id: e.org_id.clone(),
                    payload: e.payload.clone(),
                    created_at: e.created_at,
                });
                open = !alone;
            }
        }
    }
    out
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
    let limit = limit.max(0);
    // The row holding `after + 1` starts at most MAX_RUN_EVENTS - 1 before it.
    let rows: Vec<LogRun> = session_log::table
        .filter(session_log::org_id.eq(org_id))
        .filter(session_log::session_id.eq(session_id))
        .filter(session_log::seq.gt(after.saturating_sub(MAX_RUN_EVENTS)))
        .filter(session_log::last_seq.gt(after))
        .order(session_log::seq.asc())
        .limit(limit)
        .select(LogRun::as_select())
        .load(c)?;
    let mut out = Vec::new();
    for row in rows {
        for e in events_of(row) {
            if e.seq > after && (out.len() as i64) < limit {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// The events a row holds. A row whose lines do not match its numbers (it was not written
/// here) is skipped with a warning: replay reports the hole as a gap.
pub(crate) fn events_of(row: LogRun) -> Vec<SessionEvent> {
    let lines: Vec<&str> = if row.seq == row.last_seq {
        vec![row.payload.as_str()]
    } else {
        row.payload.split('\n').collect()
    };
    if lines.len() as i64 != row.last_seq - row.seq + 1 {
        tracing::warn!(session = %row.session_id, seq = row.seq, last_seq = row.last_seq,
            lines = lines.len(), "a log row's events do not match its sequence numbers; skipped");
        return Vec::new();
    }
    lines
        .into_iter()
        .zip(row.seq..)
        .map(|(line, seq)| SessionEvent {
            session_id: row.session_id.clone(),
            org_id: row.org_id.clone(),
            seq,
            event_type: type_of(line),
            payload: line.to_string(),
            created_at: row.created_at,
        })
        .collect()
}

/// An envelope's `type` (empty if it has none).
fn type_of(envelope: &str) -> String {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type", default)]
        kind: String,
    }
    serde_json::from_str::<Head>(envelope)
        .map(|h| h.kind)
        .unwrap_or_default()
}

/// The org's session's logged events whose envelope may contain `needle` (an SQL `LIKE`
/// pattern with `\` as its escape), for the caller to check exactly.
pub(crate) fn events_like(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    needle: &str,
) -> Result<Vec<SessionEvent>, StoreError> {
    let rows: Vec<LogRun> = session_log::table
        .filter(session_log::org_id.eq(org_id))
        .filter(session_log::session_id.eq(session_id))
        .filter(session_log::payload.like(needle).escape('\\'))
        .order(session_log::seq.asc())
        .select(LogRun::as_select())
        .load(c)?;
    Ok(rows.into_iter().flat_map(events_of).collect())
}

/// `INSERT` of one run on SQLite (see [`super::cached`]).
struct InsertRun<'a>(&'a LogRun);

impl Fixed for InsertRun<'_> {
    type Key = InsertRun<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Timestamp};
        let r = self.0;
        out.push_sql(
            "INSERT INTO session_log \
             (session_id, seq, last_seq, org_id, payload, created_at) VALUES (",
        );
        bind_list!(out; Text => &r.session_id, BigInt => &r.seq, BigInt => &r.last_seq,
            Text => &r.org_id, Text => &r.payload, Timestamp => &r.created_at);
        out.push_sql(")");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, payload: &str) -> SessionEvent {
        SessionEvent {
            session_id: "sess_1".into(),
            org_id: "org_1".into(),
            seq,
            event_type: String::new(),
            payload: payload.into(),
            created_at: crate::store::now(),
        }
    }

    #[test]
    fn runs_break_at_gaps_at_the_cap_and_around_an_envelope_with_a_line_break() {
        let mut evs: Vec<SessionEvent> =
            (1..=70).map(|q| ev(q, &format!("{{\"n\":{q}}}"))).collect();
        evs.push(ev(72, "{\"n\":72}"));
        evs.push(ev(73, "{\"text\":\n\"odd\"}"));
        evs.push(ev(74, "{\"n\":74}"));
        let refs: Vec<&SessionEvent> = evs.iter().collect();
        let rows = runs(&refs);
        let spans: Vec<(i64, i64)> = rows.iter().map(|r| (r.seq, r.last_seq)).collect();
        assert_eq!(spans, [(1, 64), (65, 70), (72, 72), (73, 73), (74, 74)]);
        // Read back, every event is its own envelope again, in order.
        let back: Vec<SessionEvent> = rows.into_iter().flat_map(events_of).collect();
        assert_eq!(
            back.iter().map(|e| &e.payload).collect::<Vec<_>>(),
            evs.iter().map(|e| &e.payload).collect::<Vec<_>>()
        );
        assert_eq!(
            back.iter().map(|e| e.seq).collect::<Vec<_>>(),
            evs.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_row_whose_lines_do_not_match_its_numbers_is_skipped_not_misnumbered() {
        let row = LogRun {
            session_id: "sess_1".into(),
            seq: 5,
            last_seq: 7,
            org_id: "org_1".into(),
            payload: "{\"type\":\"text\"}\n{\"type\":\"done\"}".into(),
            created_at: crate::store::now(),
        };
        assert!(events_of(row).is_empty());
        let row = LogRun {
            session_id: "sess_1".into(),
            seq: 5,
            last_seq: 6,
            org_id: "org_1".into(),
            payload: "{\"type\":\"text\"}\n{\"type\":\"done\"}".into(),
            created_at: crate::store::now(),
        };
        let back = events_of(row);
        assert_eq!(
            back.iter()
                .map(|e| (e.seq, e.event_type.as_str()))
                .collect::<Vec<_>>(),
            [(5, "text"), (6, "done")]
        );
    }
}

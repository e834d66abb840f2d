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

use super::cached::{bind_list, cached, cached_pg, Fixed};
use super::models::{LogRun, SessionEvent};
use super::schema::session_log;
use super::{AnyConnection, Conn, StoreError};

/// The most events one row of the log holds. Reads and the overlap check rely on it to find the
/// row that holds a sequence number from the index alone, so it may grow but never shrink (rows
/// longer than a smaller cap would be missed).
pub const MAX_RUN_EVENTS: i64 = 64;
const _: () = assert!(
    MAX_RUN_EVENTS == 64,
    "InsertRun and InsertRunsPg spell the cap out"
);

/// Appends events (any sessions, each session's in increasing sequence order; a number already
/// logged is a [`StoreError::Conflict`]) and advances each session's `last_seq`; prunes a
/// session's log beyond `retention` events (see [`insert_batch`]).
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

/// Inserts events (any sessions, each session's in increasing sequence order; a number already
/// logged is a [`StoreError::Conflict`]) and answers each session's
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
    let LogPlan { runs: all, spans } = plan(rows, retention)?;
    // A run is stored only if no stored run holds any of its numbers (the primary key sees only
    // first numbers): a turn that lost its claim to another instance cannot log under numbers
    // the other turn used. Its batch fails, and the retry isolates its entries.
    let inserted = match c {
        // One statement per chunk saves PostgreSQL a round trip per row.
        AnyConnection::Postgresql(pg) => {
            let mut n = 0;
            for chunk in all.chunks(200) {
                n += insert_runs_pg(pg, chunk)?;
            }
            n
        }
        // SQLite has no round trips: one cached prepared statement per row beats parsing a new
        // multi-row statement for every batch size.
        AnyConnection::Sqlite(lite) => {
            let mut n = 0;
            for run in &all {
                n += cached(InsertRun(run)).execute(lite)?;
            }
            n
        }
    };
    if inserted != all.len() {
        return Err(StoreError::Conflict(
            "an event's sequence number is already in the log".into(),
        ));
    }
    let mut highs = BTreeMap::new();
    for ((org, session), span) in spans {
        if let Some(keep_from) = span.prune_to {
            prune(c, &org, &session, keep_from)?;
        }
        highs.insert((org, session), span.high);
    }
    Ok(highs)
}

/// Deletes the session's log rows wholly at or below `keep_from` (see [`Span::prune_to`]).
pub fn prune(c: &mut Conn, org: &str, session: &str, keep_from: i64) -> Result<(), StoreError> {
    diesel::delete(
        session_log::table
            .filter(session_log::org_id.eq(org))
            .filter(session_log::session_id.eq(session))
            .filter(session_log::seq.le(keep_from))
            .filter(session_log::last_seq.le(keep_from)),
    )
    .execute(c)?;
    Ok(())
}

/// One session's share of a batch of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Its lowest sequence number in the batch.
    pub low: i64,
    /// Its highest, the session's `last_seq` once the batch is stored.
    pub high: i64,
    /// When the batch crosses a pruning point: the log's rows wholly at or below this number
    /// go (the session keeps `retention` events).
    pub prune_to: Option<i64>,
}

/// A batch of events as the log stores it (see [`plan`]).
#[derive(Debug)]
pub struct LogPlan {
    /// The rows to insert: runs of consecutive events.
    pub runs: Vec<LogRun>,
    /// Each (org, session)'s span.
    pub spans: BTreeMap<(String, String), Span>,
}

/// Groups events (any sessions) into log rows and per-session spans; a
/// [`StoreError::Conflict`] unless each session's numbers increase. A session's log is pruned
/// beyond `retention` events whenever its sequence crosses a multiple of 100 (pruning every
/// time would cost a delete per event); a run that holds the boundary is kept whole.
pub fn plan(rows: &[&SessionEvent], retention: u64) -> Result<LogPlan, StoreError> {
    let mut by_session: BTreeMap<(&str, &str), Vec<&SessionEvent>> = BTreeMap::new();
    for r in rows {
        by_session
            .entry((r.org_id.as_str(), r.session_id.as_str()))
            .or_default()
            .push(r);
    }
    let mut out = LogPlan {
        runs: Vec::new(),
        spans: BTreeMap::new(),
    };
    for ((org, session), evs) in &by_session {
        if evs.windows(2).any(|w| w[1].seq <= w[0].seq) {
            return Err(StoreError::Conflict(format!(
                "session {session}: events to log are not in increasing sequence order"
            )));
        }
        // Increasing (checked above): the first is the lowest, the last the highest.
        let (low, high) = match (evs.first(), evs.last()) {
            (Some(first), Some(last)) => (first.seq, last.seq),
            _ => continue,
        };
        out.runs.extend(runs(evs));
        let keep_from = high - retention as i64;
        let prune_to = (keep_from > 0 && high / 100 != (low - 1) / 100).then_some(keep_from);
        out.spans.insert(
            (org.to_string(), session.to_string()),
            Span {
                low,
                high,
                prune_to,
            },
        );
    }
    Ok(out)
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

/// Up to `limit` events of the org's session with `seq > after`, in order. Fewer only at the
/// log's end: a gap in the numbers (a batch that was not logged) is stepped over.
pub fn list_after(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<SessionEvent>, StoreError> {
    let limit = limit.max(0);
    let mut out = Vec::new();
    let mut from = after;
    while (out.len() as i64) < limit {
        // Without gaps the next `need` events are those numbered up to `from + need`: the rows
        // that hold them start at most MAX_RUN_EVENTS - 1 before `from + 1`.
        let need = limit - out.len() as i64;
        let to = from.saturating_add(need);
        let rows: Vec<LogRun> = session_log::table
            .filter(session_log::org_id.eq(org_id))
            .filter(session_log::session_id.eq(session_id))
            .filter(session_log::seq.gt(from.saturating_sub(MAX_RUN_EVENTS)))
            .filter(session_log::seq.le(to))
            .filter(session_log::last_seq.gt(from))
            .order(session_log::seq.asc())
            .select(LogRun::as_select())
            .load(c)?;
        for row in &rows {
            out.extend(events_in(row, from, limit - out.len() as i64));
        }
        if out.len() as i64 >= limit {
            break;
        }
        // Every event numbered up to `to` is read: go on from the next stored run (past a gap),
        // if there is one.
        let next: Option<i64> = session_log::table
            .filter(session_log::org_id.eq(org_id))
            .filter(session_log::session_id.eq(session_id))
            .filter(session_log::seq.gt(to))
            .select(diesel::dsl::min(session_log::seq))
            .first(c)?;
        match next {
            Some(n) => from = n - 1,
            None => break,
        }
    }
    Ok(out)
}

/// Up to `max` events of `row` numbered after `after` (the type read only for those).
fn events_in(row: &LogRun, after: i64, max: i64) -> Vec<SessionEvent> {
    let Some(lines) = lines_of(row) else {
        return Vec::new();
    };
    lines
        .into_iter()
        .zip(row.seq..)
        .filter(|(_, seq)| *seq > after)
        .take(max.max(0) as usize)
        .map(|(line, seq)| event(row, seq, line))
        .collect()
}

/// The events a row holds.
pub(crate) fn events_of(row: LogRun) -> Vec<SessionEvent> {
    events_in(&row, i64::MIN, i64::MAX)
}

/// A row's envelopes, one per number. A row whose lines do not match its numbers (it was not
/// written here) is skipped with a warning; replay steps over the hole.
fn lines_of(row: &LogRun) -> Option<Vec<&str>> {
    let lines: Vec<&str> = if row.seq == row.last_seq {
        vec![row.payload.as_str()]
    } else {
        row.payload.split('\n').collect()
    };
    if lines.len() as i64 != row.last_seq - row.seq + 1 {
        tracing::warn!(session = %row.session_id, seq = row.seq, last_seq = row.last_seq,
            lines = lines.len(), "a log row's events do not match its sequence numbers; skipped");
        return None;
    }
    Some(lines)
}

fn event(row: &LogRun, seq: i64, line: &str) -> SessionEvent {
    SessionEvent {
        session_id: row.session_id.clone(),
        org_id: row.org_id.clone(),
        seq,
        event_type: type_of(line),
        payload: line.to_string(),
        created_at: row.created_at,
    }
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

/// `INSERT` of one run on SQLite unless a stored run holds one of its numbers (see
/// [`super::cached`]); answers 1 or 0 rows.
struct InsertRun<'a>(&'a LogRun);

impl Fixed for InsertRun<'_> {
    type Key = InsertRun<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Timestamp};
        let r = self.0;
        out.push_sql(
            "INSERT INTO session_log \
             (session_id, seq, last_seq, org_id, payload, created_at) SELECT ",
        );
        bind_list!(out; Text => &r.session_id, BigInt => &r.seq, BigInt => &r.last_seq,
            Text => &r.org_id, Text => &r.payload, Timestamp => &r.created_at);
        out.push_sql(" WHERE NOT EXISTS (SELECT 1 FROM session_log WHERE session_id = ");
        out.push_bind_param::<Text, _>(&r.session_id)?;
        out.push_sql(" AND seq > ");
        out.push_bind_param::<BigInt, _>(&r.seq)?;
        // MAX_RUN_EVENTS, written out: the text is walked on every run (see the assertion).
        out.push_sql(" - 64 AND seq <= ");
        out.push_bind_param::<BigInt, _>(&r.last_seq)?;
        out.push_sql(" AND last_seq >= ");
        out.push_bind_param::<BigInt, _>(&r.seq)?;
        out.push_sql(")");
        Ok(())
    }
}

/// The PostgreSQL form of [`InsertRun`] for many runs in one statement; answers the rows stored.
fn insert_runs_pg(pg: &mut diesel::PgConnection, runs: &[LogRun]) -> Result<usize, StoreError> {
    Ok(cached_pg(InsertRunsPg(RunColumns::new(runs))).execute(pg)?)
}

/// Log rows as one array per column, for PostgreSQL's `unnest`.
pub(super) struct RunColumns<'a> {
    session_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    last_seqs: Vec<i64>,
    org_ids: Vec<&'a str>,
    payloads: Vec<&'a str>,
    created_at: Vec<chrono::NaiveDateTime>,
}

impl<'a> RunColumns<'a> {
    /// The columns of `runs`.
    pub(super) fn new(runs: &'a [LogRun]) -> Self {
        let col = |f: fn(&LogRun) -> &str| runs.iter().map(f).collect::<Vec<_>>();
        Self {
            session_ids: col(|r| &r.session_id),
            seqs: runs.iter().map(|r| r.seq).collect(),
            last_seqs: runs.iter().map(|r| r.last_seq).collect(),
            org_ids: col(|r| &r.org_id),
            payloads: col(|r| &r.payload),
            created_at: runs.iter().map(|r| r.created_at).collect(),
        }
    }

    /// Pushes `unnest(<the arrays>) AS <alias>(<the log's columns>)`.
    pub(super) fn walk_unnest<'b>(
        &'b self,
        out: &mut super::cached::Out<'_, 'b, diesel::pg::Pg>,
        alias: &'static str,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Text, Timestamp};
        out.push_sql("unnest(");
        bind_list!(out; Array<Text> => &self.session_ids, Array<BigInt> => &self.seqs,
            Array<BigInt> => &self.last_seqs, Array<Text> => &self.org_ids,
            Array<Text> => &self.payloads, Array<Timestamp> => &self.created_at);
        out.push_sql(") AS ");
        out.push_sql(alias);
        out.push_sql("(session_id, seq, last_seq, org_id, payload, created_at)");
        Ok(())
    }
}

/// [`insert_runs_pg`]'s statement.
struct InsertRunsPg<'a>(RunColumns<'a>);

impl Fixed<diesel::pg::Pg> for InsertRunsPg<'_> {
    type Key = InsertRunsPg<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO session_log (session_id, seq, last_seq, org_id, payload, created_at) \
             SELECT v.session_id, v.seq, v.last_seq, v.org_id, v.payload, v.created_at FROM ",
        );
        self.0.walk_unnest(&mut out, "v")?;
        // MAX_RUN_EVENTS, written out (see the assertion).
        out.push_sql(
            " WHERE NOT EXISTS (SELECT 1 FROM session_log l WHERE l.session_id = v.session_id \
             AND l.seq > v.seq - 64 AND l.seq <= v.last_seq AND l.last_seq >= v.seq)",
        );
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

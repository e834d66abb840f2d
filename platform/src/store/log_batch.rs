//! The replay-log writer's usual batch on PostgreSQL, in one statement.
//!
//! A batch written the long way (see `runtime::journal`) costs PostgreSQL six round trips:
//! `BEGIN`, the sessions locked, the events, the sessions written, the usage, `COMMIT`. Most
//! batches hold only events, turn openings, claims given back and usage with no budget or
//! webhook to check; those go here as one statement of data-modifying CTEs that commits on
//! its own, one round trip.
//!
//! The long way reads a session's participants under its lock and checks that no stored run
//! holds a new run's numbers. One statement sees the log as it was when the statement began,
//! so it decides differently: it locks the sessions first (a lock that waited on another
//! writer answers the row as that writer committed it) and stores nothing unless, for every
//! session, the batch's lowest number is above the locked `last_seq` (every stored run is at
//! or below it, as the log and `last_seq` are written together) and the participants list an
//! opening counted from is still the stored one. When it refuses, nothing is written and the
//! writer takes the long way, which knows what to do with each case.
//!
//! Planning this statement for its values took PostgreSQL about 0.4 ms, longer than running
//! it, so the writer runs it on a connection that plans it once
//! ([`super::Store::own_generic_connection`]). Its plan must therefore not depend on the
//! values: sessions are found by `id = ANY(…)` (an index scan, whatever the batch's size),
//! the inserts have no plan to choose, and pruning, whose best plan does depend on the values,
//! is left to a statement of its own on the writer's other connection.

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::cached::{bind_list, cached_pg, Fixed, FixedQuery, Out};
use super::events::{RunColumns, Span};
use super::models::LogRun;
use super::usage::InsertCountedPg;
use super::usage::UsageRecord;
use super::StoreError;

/// One session's writes in a batch.
#[derive(Clone, Debug, Default)]
pub struct SessionPart {
    /// Its events' span, if it has events in the batch.
    pub span: Option<Span>,
    /// A turn's opening: the participants list it counted from (as its claim read it) and the
    /// new list.
    pub participants: Option<(String, String)>,
    /// The agent a turn handed off to.
    pub agent: Option<String>,
    /// The owner whose claim is given back, if it still is that owner's.
    pub release: Option<String>,
}

/// Writes a batch in one statement: the log rows, each (org, session)'s part, the usage records
/// (those already stored are skipped) and their roll-ups. `Ok(false)` when the statement's
/// checks refuse the batch (a session gone, a run at or below its `last_seq`, participants
/// changed since the claim): then nothing is written. Pruning (a span's `prune_to`) is left to
/// the caller ([`super::events::prune`]): within this statement PostgreSQL planned it as a scan
/// of the whole log.
pub fn write(
    pg: &mut PgConnection,
    runs: &[LogRun],
    parts: &std::collections::BTreeMap<(String, String), SessionPart>,
    usage: &[&UsageRecord],
    now: chrono::NaiveDateTime,
) -> Result<bool, StoreError> {
    let text = |f: fn(&SessionPart) -> Option<&str>| -> Vec<Option<&str>> {
        parts.values().map(f).collect()
    };
    let span = |f: fn(&Span) -> i64| -> Vec<Option<i64>> {
        parts.values().map(|p| p.span.as_ref().map(f)).collect()
    };
    let stmt = BatchPg {
        org_ids: parts.keys().map(|k| k.0.as_str()).collect(),
        ids: parts.keys().map(|k| k.1.as_str()).collect(),
        lows: span(|s| s.low),
        highs: span(|s| s.high),
        priors: text(|p| p.participants.as_ref().map(|(old, _)| old.as_str())),
        participants: text(|p| p.participants.as_ref().map(|(_, new)| new.as_str())),
        agents: text(|p| p.agent.as_deref()),
        releases: text(|p| p.release.as_deref()),
        now,
        runs: RunColumns::new(runs),
        usage: InsertCountedPg::new(usage),
    };
    Ok(cached_pg(stmt).get_result::<bool>(pg)?)
}

/// [`write`]'s statement: one array per column of the sessions' parts, the runs and the usage.
struct BatchPg<'a> {
    org_ids: Vec<&'a str>,
    ids: Vec<&'a str>,
    lows: Vec<Option<i64>>,
    highs: Vec<Option<i64>>,
    priors: Vec<Option<&'a str>>,
    participants: Vec<Option<&'a str>>,
    agents: Vec<Option<&'a str>>,
    releases: Vec<Option<&'a str>>,
    now: chrono::NaiveDateTime,
    runs: RunColumns<'a>,
    usage: InsertCountedPg<'a>,
}

impl Fixed<Pg> for BatchPg<'_> {
    type Key = BatchPg<'static>;
    fn walk<'b>(&'b self, mut out: Out<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH s AS (SELECT * FROM unnest(");
        bind_list!(out; Array<Text> => &self.org_ids, Array<Text> => &self.ids,
            Array<Nullable<BigInt>> => &self.lows, Array<Nullable<BigInt>> => &self.highs,
            Array<Nullable<Text>> => &self.priors,
            Array<Nullable<Text>> => &self.participants, Array<Nullable<Text>> => &self.agents,
            Array<Nullable<Text>> => &self.releases);
        // Locked in id order, as every multi-row lock of sessions is; MATERIALIZED so the lock is
        // taken once, before anything below reads it. The sessions are found by `id = ANY`, not
        // by a join with `s`: the statement runs on a generic plan (see `write`), which must
        // not depend on how many sessions a batch holds.
        out.push_sql(
            ") AS s(org_id, id, low, high, prior, participants, agent, release)), \
             locked AS MATERIALIZED (SELECT org_id, id, last_seq, participants FROM sessions \
               WHERE id = ANY(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql(
            ") ORDER BY id FOR UPDATE), \
             verdict AS (SELECT (SELECT count(*) FROM s JOIN locked l \
                 ON l.org_id = s.org_id AND l.id = s.id) = (SELECT count(*) FROM s) \
               AND NOT EXISTS (SELECT 1 FROM s JOIN locked l \
                 ON l.org_id = s.org_id AND l.id = s.id \
                 WHERE s.low <= l.last_seq \
                   OR (s.prior IS NOT NULL AND s.prior IS DISTINCT FROM l.participants)) AS ok), \
             logged AS (INSERT INTO session_log \
               (session_id, seq, last_seq, org_id, payload, created_at) \
               SELECT * FROM ",
        );
        self.runs.walk_unnest(&mut out, "r")?;
        out.push_sql(
            " WHERE (SELECT ok FROM verdict)), \
             written AS (",
        );
        super::sessions::walk_turn_set(&mut out, &self.now)?;
        out.push_sql(" FROM s WHERE (SELECT ok FROM verdict) AND sessions.id = ANY(");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql(") AND sessions.org_id = s.org_id AND sessions.id = s.id), ");
        self.usage
            .walk_ctes(&mut out, " WHERE (SELECT ok FROM verdict)")?;
        out.push_sql(" SELECT ok FROM verdict");
        Ok(())
    }
}

impl FixedQuery<Pg> for BatchPg<'_> {
    type SqlType = diesel::sql_types::Bool;
}

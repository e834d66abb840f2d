//! Session handles. Every query takes the org.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::models::{Project, Session};
use super::schema::{projects, sessions};
use super::{Conn, OptionalRow, StoreError};

/// A partial update of a session; `None` fields are left alone, `Some(None)` clears a column.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = sessions)]
pub struct SessionPatch {
    pub status: Option<String>,
    pub current_agent: Option<String>,
    pub harness_session_id: Option<Option<String>>,
    pub metadata: Option<String>,
    pub participants: Option<String>,
    pub pending_input: Option<Option<String>>,
    pub approved_tools: Option<String>,
    pub updated_at: Option<NaiveDateTime>,
}

/// Inserts a session.
pub fn insert(c: &mut Conn, s: &Session) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table).values(s).execute(c)?;
    Ok(())
}

/// A session of the org; another org's session is `NotFound`.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<Session, StoreError> {
    let q = sessions::table
        .filter(sessions::org_id.eq(org_id))
        .filter(sessions::id.eq(id));
    match c {
        super::AnyConnection::Postgresql(pg) => q.select(Session::as_select()).first(pg).found(),
        // Straight on the SQLite connection: its query type alone finds the prepared statement
        // (through the multi-backend one, the SQL is built again on every run).
        super::AnyConnection::Sqlite(lite) => q.select(Session::as_select()).first(lite).found(),
    }
}

/// A session of the org with its project, in one statement (a turn reads both).
pub fn get_with_project(
    c: &mut Conn,
    org_id: &str,
    id: &str,
) -> Result<(Session, Project), StoreError> {
    let q = sessions::table
        .inner_join(
            projects::table.on(projects::id
                .eq(sessions::project_id)
                .and(projects::org_id.eq(sessions::org_id))),
        )
        .filter(sessions::org_id.eq(org_id))
        .filter(sessions::id.eq(id));
    match c {
        super::AnyConnection::Postgresql(pg) => q
            .select((Session::as_select(), Project::as_select()))
            .first(pg)
            .found(),
        // See `get`.
        super::AnyConnection::Sqlite(lite) => q
            .select((Session::as_select(), Project::as_select()))
            .first(lite)
            .found(),
    }
}

/// Applies a patch (and bumps `updated_at`).
pub fn update(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    mut patch: SessionPatch,
) -> Result<(), StoreError> {
    patch.updated_at = Some(super::now());
    let n = diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id)),
    )
    .set(&patch)
    .execute(c)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Filters for [`list`].
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only this project's sessions.
    pub project_id: Option<String>,
    /// Only sessions with this status.
    pub status: Option<String>,
    /// Keyset cursor: only sessions before (created_at, id) in newest-first order.
    pub before: Option<(NaiveDateTime, String)>,
}

/// The org's sessions, newest first.
pub fn list(
    c: &mut Conn,
    org_id: &str,
    f: &SessionFilter,
    limit: i64,
) -> Result<Vec<Session>, StoreError> {
    let mut q = sessions::table
        .filter(sessions::org_id.eq(org_id))
        .select(Session::as_select())
        .order((sessions::created_at.desc(), sessions::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(p) = &f.project_id {
        q = q.filter(sessions::project_id.eq(p.clone()));
    }
    if let Some(s) = &f.status {
        q = q.filter(sessions::status.eq(s.clone()));
    }
    if let Some((t, id)) = &f.before {
        q = q.filter(
            sessions::created_at
                .lt(*t)
                .or(sessions::created_at.eq(*t).and(sessions::id.lt(id.clone()))),
        );
    }
    Ok(q.load(c)?)
}

/// Whether the session's log holds an `input_required` event with this request id.
pub fn input_was_requested(
    c: &mut Conn,
    org_id: &str,
    session_id: &str,
    request_id: &str,
) -> Result<bool, StoreError> {
    // Escape LIKE's wildcards: `_` is legal in request ids.
    let escaped = request_id
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let needle = format!("%\"request_id\":\"{escaped}\"%");
    let exact = format!("\"request_id\":\"{request_id}\"");
    Ok(super::events::events_like(c, org_id, session_id, &needle)?
        .iter()
        .any(|e| e.event_type == "input_required" && e.payload.contains(&exact)))
}

/// Which of `ids` are sessions that are not closed (any org: used by the workspace sweep).
pub fn open_among(
    c: &mut Conn,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut open = std::collections::HashSet::new();
    for chunk in ids.chunks(500) {
        let found: Vec<String> = sessions::table
            .filter(sessions::id.eq_any(chunk))
            .filter(sessions::status.ne("closed"))
            .select(sessions::id)
            .load(c)?;
        open.extend(found);
    }
    Ok(open)
}

/// Claims the org's session's turn for `owner` until `until`, unless another owner holds a
/// lease that has not expired. True when the claim is `owner`'s.
pub fn acquire_turn(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<bool, StoreError> {
    // The session becomes `owner`'s until `until` unless another owner's lease still runs at
    // `now`. `ClaimPg` is the same statement on PostgreSQL, in text (diesel never keeps an
    // `UPDATE` prepared).
    let n = diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id))
            .filter(
                sessions::turn_owner
                    .is_null()
                    .or(sessions::turn_owner.eq(owner))
                    .or(sessions::turn_lease_until.lt(now)),
            ),
    )
    .set((
        sessions::turn_owner.eq(owner),
        sessions::turn_lease_until.eq(until),
    ))
    .execute(c)?;
    Ok(n == 1)
}

/// [`acquire_turn`] that answers the claimed session and its project (`None` when the project
/// is gone; the claim is made all the same). On PostgreSQL one statement, prepared once per
/// connection: the claim and both reads in one round trip. `None` when the claim is not
/// `owner`'s or the session does not exist.
pub fn acquire_turn_with_project(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Option<(Session, Option<Project>)>, StoreError> {
    let super::AnyConnection::Postgresql(pg) = c else {
        if !acquire_turn(c, org_id, id, owner, now, until)? {
            return Ok(None);
        }
        let s = get(c, org_id, id)?;
        return match super::projects::get(c, org_id, &s.project_id) {
            Ok(p) => Ok(Some((s, Some(p)))),
            Err(StoreError::NotFound) => Ok(Some((s, None))),
            Err(e) => Err(e),
        };
    };
    Ok(super::cached::cached_pg(ClaimPg {
        org_id,
        id,
        owner,
        now,
        until,
    })
    .get_result::<(Session, Option<Project>)>(pg)
    .optional()?)
}

/// [`acquire_turn_with_project`]'s statement on PostgreSQL.
struct ClaimPg<'a> {
    org_id: &'a str,
    id: &'a str,
    owner: &'a str,
    now: NaiveDateTime,
    until: NaiveDateTime,
}

impl super::cached::Fixed<diesel::pg::Pg> for ClaimPg<'_> {
    type Key = ClaimPg<'static>;
    fn walk<'b>(
        &'b self,
        mut out: super::cached::Out<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        use diesel::sql_types::{Text, Timestamp};
        // The select lists, as diesel prints them (so their order is the models' own).
        static COLUMNS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let columns = COLUMNS.get_or_init(|| {
            use diesel::query_builder::{QueryBuilder, QueryFragment};
            let mut qb = diesel::pg::PgQueryBuilder::default();
            Session::as_select()
                .to_sql(&mut qb, &diesel::pg::Pg)
                .and_then(|()| {
                    qb.push_sql(", ");
                    Project::as_select().to_sql(&mut qb, &diesel::pg::Pg)
                })
                .ok()
                .map(|()| qb.finish())
        });
        // Column lists hold no values to fail on.
        let Some(columns) = columns else {
            return Err(diesel::result::Error::QueryBuilderError(
                "cannot print the session and project columns".into(),
            ));
        };
        out.push_sql("WITH sessions AS (UPDATE sessions SET turn_owner = ");
        out.push_bind_param::<Text, _>(&self.owner)?;
        out.push_sql(", turn_lease_until = ");
        out.push_bind_param::<Timestamp, _>(&self.until)?;
        out.push_sql(" WHERE org_id = ");
        out.push_bind_param::<Text, _>(&self.org_id)?;
        out.push_sql(" AND id = ");
        out.push_bind_param::<Text, _>(&self.id)?;
        out.push_sql(" AND (turn_owner IS NULL OR turn_owner = ");
        out.push_bind_param::<Text, _>(&self.owner)?;
        out.push_sql(" OR turn_lease_until < ");
        out.push_bind_param::<Timestamp, _>(&self.now)?;
        out.push_sql(") RETURNING *) SELECT ");
        out.push_sql(columns);
        out.push_sql(
            " FROM sessions LEFT JOIN projects ON projects.id = sessions.project_id \
             AND projects.org_id = sessions.org_id",
        );
        Ok(())
    }
}

type SelectType<T> =
    <<T as Selectable<diesel::pg::Pg>>::SelectExpression as diesel::Expression>::SqlType;

impl super::cached::FixedQuery<diesel::pg::Pg> for ClaimPg<'_> {
    type SqlType = (
        SelectType<Session>,
        diesel::sql_types::Nullable<SelectType<Project>>,
    );
}

/// Extends `owner`'s claim; false when it is no longer `owner`'s.
pub fn renew_turn(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    owner: &str,
    until: NaiveDateTime,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id))
            .filter(sessions::turn_owner.eq(owner)),
    )
    .set(sessions::turn_lease_until.eq(until))
    .execute(c)?;
    Ok(n == 1)
}

/// Gives up `owner`'s claim (if it still is `owner`'s).
pub fn release_turn(c: &mut Conn, org_id: &str, id: &str, owner: &str) -> Result<(), StoreError> {
    diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id))
            .filter(sessions::turn_owner.eq(owner)),
    )
    .set((
        sessions::turn_owner.eq(None::<String>),
        sessions::turn_lease_until.eq(None::<NaiveDateTime>),
    ))
    .execute(c)?;
    Ok(())
}

/// Locks the org's session row until the transaction ends, so a read-modify-write of its JSON
/// columns (participants, metadata) cannot lose a concurrent one. PostgreSQL takes a row lock;
/// SQLite needs none (its write transactions begin IMMEDIATE, one at a time).
pub fn lock_row(c: &mut Conn, org_id: &str, id: &str) -> Result<(), StoreError> {
    if let super::AnyConnection::Postgresql(pg) = c {
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id))
            .select(sessions::id)
            .for_update()
            .first::<String>(pg)
            .found()?;
    }
    Ok(())
}

/// The org's session's participants (JSON), its row locked until the transaction ends on
/// PostgreSQL (one round trip for both), so the read-modify-write that follows loses nothing.
pub fn participants_for_update(c: &mut Conn, org_id: &str, id: &str) -> Result<String, StoreError> {
    let q = sessions::table
        .filter(sessions::org_id.eq(org_id))
        .filter(sessions::id.eq(id))
        .select(sessions::participants);
    match c {
        super::AnyConnection::Postgresql(pg) => q.for_update().first::<String>(pg).found(),
        // Straight on the SQLite connection: through the multi-backend one, the SQL is built
        // again on every run (see `super::cached`).
        super::AnyConnection::Sqlite(lite) => q.first::<String>(lite).found(),
    }
}

/// One session's share of an event-log batch. `None` leaves a column alone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TurnWrite {
    /// The highest sequence number logged (`last_seq` only moves up).
    pub last_seq: Option<i64>,
    /// The participants list a turn's opening computed (bumps `updated_at`).
    pub participants: Option<String>,
    /// The agent a turn handed off to (bumps `updated_at`).
    pub current_agent: Option<String>,
    /// The owner whose claim is given back, if it still is that owner's.
    pub release: Option<String>,
}

impl TurnWrite {
    /// Only `last_seq`, moved up to `seq` (the session's events are logged up to it).
    pub fn logged_to(seq: i64) -> Self {
        Self {
            last_seq: Some(seq),
            ..Default::default()
        }
    }
}

/// Applies a batch's session writes, keyed by (org, session): one statement for the whole batch
/// on PostgreSQL (a round trip per session saved), one per session on SQLite.
pub fn write_turns(
    c: &mut Conn,
    writes: &std::collections::BTreeMap<(String, String), TurnWrite>,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    // Every SET expression reads the row as it was, so the claim's two columns agree.
    match c {
        super::AnyConnection::Postgresql(pg) => {
            let col = |f: fn(&TurnWrite) -> Option<&str>| -> Vec<Option<&str>> {
                writes.values().map(f).collect()
            };
            super::cached::cached_pg(WriteTurnsPg {
                org_ids: writes.keys().map(|k| k.0.as_str()).collect(),
                ids: writes.keys().map(|k| k.1.as_str()).collect(),
                highs: writes.values().map(|w| w.last_seq).collect(),
                participants: col(|w| w.participants.as_deref()),
                agents: col(|w| w.current_agent.as_deref()),
                releases: col(|w| w.release.as_deref()),
                now,
            })
            .execute(pg)?;
        }
        super::AnyConnection::Sqlite(lite) => {
            for ((org, id), w) in writes {
                super::cached::cached(WriteTurn {
                    org,
                    id,
                    w,
                    now: &now,
                })
                .execute(lite)?;
            }
        }
    }
    Ok(())
}

/// [`write_turns`] on PostgreSQL: every session in one statement, one array per column.
struct WriteTurnsPg<'a> {
    org_ids: Vec<&'a str>,
    ids: Vec<&'a str>,
    highs: Vec<Option<i64>>,
    participants: Vec<Option<&'a str>>,
    agents: Vec<Option<&'a str>>,
    releases: Vec<Option<&'a str>>,
    now: NaiveDateTime,
}

impl super::cached::Fixed<diesel::pg::Pg> for WriteTurnsPg<'_> {
    type Key = WriteTurnsPg<'static>;
    fn walk<'b>(
        &'b self,
        mut out: super::cached::Out<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Nullable, Text};
        walk_turn_set(&mut out, &self.now)?;
        out.push_sql(" FROM unnest(");
        super::cached::bind_list!(out; Array<Text> => &self.org_ids, Array<Text> => &self.ids,
            Array<Nullable<BigInt>> => &self.highs, Array<Nullable<Text>> => &self.participants,
            Array<Nullable<Text>> => &self.agents, Array<Nullable<Text>> => &self.releases);
        out.push_sql(
            ") AS s(org_id, id, high, participants, agent, release) \
             WHERE sessions.org_id = s.org_id AND sessions.id = s.id",
        );
        Ok(())
    }
}

/// `UPDATE sessions SET` a turn's writes (see [`TurnWrite`]) from a row `s` with the columns
/// `high`, `participants`, `agent` and `release`, on PostgreSQL.
pub(super) fn walk_turn_set<'b>(
    out: &mut super::cached::Out<'_, 'b, diesel::pg::Pg>,
    now: &'b NaiveDateTime,
) -> diesel::QueryResult<()> {
    out.push_sql(
        "UPDATE sessions SET \
         last_seq = GREATEST(sessions.last_seq, COALESCE(s.high, sessions.last_seq)), \
         participants = COALESCE(s.participants, sessions.participants), \
         current_agent = COALESCE(s.agent, sessions.current_agent), \
         updated_at = CASE WHEN s.participants IS NULL AND s.agent IS NULL \
           THEN sessions.updated_at ELSE ",
    );
    out.push_bind_param::<diesel::sql_types::Timestamp, _>(now)?;
    out.push_sql(
        " END, \
         turn_owner = CASE WHEN sessions.turn_owner = s.release \
           THEN NULL ELSE sessions.turn_owner END, \
         turn_lease_until = CASE WHEN sessions.turn_owner = s.release \
           THEN NULL ELSE sessions.turn_lease_until END",
    );
    Ok(())
}

/// One session's [`TurnWrite`] on SQLite (see [`super::cached`]). Every SET expression reads
/// the row as it was, so the claim's two columns agree.
struct WriteTurn<'a> {
    org: &'a str,
    id: &'a str,
    w: &'a TurnWrite,
    now: &'a NaiveDateTime,
}

impl super::cached::Fixed for WriteTurn<'_> {
    type Key = WriteTurn<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> diesel::QueryResult<()> {
        use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
        let w = self.w;
        out.push_sql("UPDATE sessions SET last_seq = max(last_seq, coalesce(");
        out.push_bind_param::<Nullable<BigInt>, _>(&w.last_seq)?;
        out.push_sql(", last_seq)), participants = coalesce(");
        out.push_bind_param::<Nullable<Text>, _>(&w.participants)?;
        out.push_sql(", participants), current_agent = coalesce(");
        out.push_bind_param::<Nullable<Text>, _>(&w.current_agent)?;
        out.push_sql(", current_agent), updated_at = CASE WHEN ");
        out.push_bind_param::<Nullable<Text>, _>(&w.participants)?;
        out.push_sql(" IS NULL AND ");
        out.push_bind_param::<Nullable<Text>, _>(&w.current_agent)?;
        out.push_sql(" IS NULL THEN updated_at ELSE ");
        out.push_bind_param::<Timestamp, _>(self.now)?;
        out.push_sql(" END, turn_owner = CASE WHEN turn_owner = ");
        out.push_bind_param::<Nullable<Text>, _>(&w.release)?;
        out.push_sql(" THEN NULL ELSE turn_owner END, turn_lease_until = CASE WHEN turn_owner = ");
        out.push_bind_param::<Nullable<Text>, _>(&w.release)?;
        out.push_sql(" THEN NULL ELSE turn_lease_until END WHERE org_id = ");
        out.push_bind_param::<Text, _>(&self.org)?;
        out.push_sql(" AND id = ");
        out.push_bind_param::<Text, _>(&self.id)?;
        Ok(())
    }
}

/// Locks the sessions a replay-log batch writes and answers the participants of those in
/// `openings` (see [`participants_for_update_many`]). On PostgreSQL every session the batch logs
/// events for is locked too, before its events are inserted: another instance's writer then
/// waits, so the check that a sequence number is not logged yet (`events::insert_batch`) sees
/// its commit. SQLite's writer holds the database's write lock already.
pub fn lock_for_log(
    c: &mut Conn,
    logged: &[(&str, &str)],
    openings: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), String>, StoreError> {
    if matches!(c, super::AnyConnection::Sqlite(_)) {
        return participants_for_update_many(c, openings);
    }
    let mut keys: Vec<(&str, &str)> = logged.iter().chain(openings).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let mut lists = participants_for_update_many(c, &keys)?;
    lists.retain(|(org, id), _| openings.iter().any(|k| k.0 == org && k.1 == id));
    Ok(lists)
}

/// The participants of these (org, session) pairs, locked until the transaction ends (see
/// [`participants_for_update`]); a session that is gone is left out.
pub fn participants_for_update_many(
    c: &mut Conn,
    keys: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), String>, StoreError> {
    let mut out = std::collections::HashMap::new();
    match c {
        super::AnyConnection::Postgresql(pg) => {
            let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
            // One round trip; rows locked in id order, as every multi-row lock here is.
            let rows: Vec<(String, String, String)> = sessions::table
                .filter(sessions::id.eq_any(ids))
                .order(sessions::id)
                .select((sessions::org_id, sessions::id, sessions::participants))
                .for_update()
                .load(pg)?;
            for (org, id, p) in rows {
                if keys.iter().any(|k| k.0 == org && k.1 == id) {
                    out.insert((org, id), p);
                }
            }
        }
        super::AnyConnection::Sqlite(_) => {
            for (org, id) in keys {
                match participants_for_update(c, org, id) {
                    Ok(p) => {
                        out.insert((org.to_string(), id.to_string()), p);
                    }
                    Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

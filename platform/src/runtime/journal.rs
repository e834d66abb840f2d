//! The replay log's writer: one thread per instance that group-commits events.
//!
//! The live path never waits for the database: the pump broadcasts frames to subscribers first
//! and then queues them here, a run at a time (what the driver sent within a few
//! milliseconds; a quick turn's whole run goes with its `done`). The writer
//! takes everything queued (up to a batch of events) and writes it in one transaction, in a
//! fixed number of statements however many turns the batch holds: the events (pruning past the
//! retention), one write per session (its new `last_seq`, who sent a turn, a handoff, the claim a
//! finished turn gives back), the finished turns' usage records and roll-ups, then any other
//! update. The queue is bounded, so a database slower than the drivers pushes back on the pumps
//! (and the pumps on the drivers). On PostgreSQL a batch with nothing but those writes (no
//! other update, no budget threshold or webhook event to check) is first tried as one
//! statement that commits on its own (see [`log_batch`]): one round trip instead of six.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::meter::TurnUsage;
use crate::store::log_batch::{self, SessionPart};
use crate::store::models::SessionEvent;
use crate::store::sessions::{self, TurnWrite};
use crate::store::usage::UsageRecord;
use crate::store::{events, AnyConnection, Conn, Store, StoreError};

/// What a turn asks the writer to store beside its events. The common updates are data, so the
/// writer can merge a batch's session writes (its `last_seq`, participants, handoff, the claim
/// given back) into one statement per batch on PostgreSQL (one per session on SQLite) and its
/// usage into a few statements however many turns it holds.
pub(crate) enum SessionOp {
    /// A turn's opening: who sent it and, on a handoff, the agent it switched to.
    Opening(Opening),
    /// Gives a finished turn's claim on its session back, if it still is `owner`'s.
    Release {
        /// The session's org.
        org_id: String,
        /// The session.
        session_id: String,
        /// The claim's owner.
        owner: String,
    },
    /// A finished turn's usage records, budget thresholds and webhook event.
    Usage(Box<TurnUsage>),
    /// Any other update, run before the merged ones, in queue order. It may not read the event log
    /// or `last_seq`. `Fn`, not `FnOnce`: a batch whose transaction failed is run again with each
    /// entry isolated.
    Other(UpdateFn),
}

/// An update that is not one of the merged kinds (see [`SessionOp::Other`]).
pub(crate) type UpdateFn = Box<dyn Fn(&mut Conn) -> Result<(), StoreError> + Send>;

/// A turn's opening update (see [`SessionOp::Opening`]).
#[derive(Clone, Debug)]
pub(crate) struct Opening {
    /// The session's org.
    pub org_id: String,
    /// The session.
    pub session_id: String,
    /// Who sent the turn: a participant's name ...
    pub name: String,
    /// ... and kind (`user`, `agent`, ...), for one that joins with this message.
    pub kind: String,
    /// The agent the turn hands off to, when it is not the session's current one.
    pub agent: Option<String>,
    /// When the turn started.
    pub at: NaiveDateTime,
    /// The session's participants list as the turn's claim read it (PostgreSQL): the writer
    /// counts the turn into it without reading it again, unless it changed meanwhile.
    pub prior: Option<String>,
}

/// What one queue slot carries: a run of events of one turn (possibly none) and the updates
/// written in the same transaction after the batch's events.
struct Entry {
    /// Events in sequence order.
    rows: Vec<SessionEvent>,
    ops: Vec<SessionOp>,
    /// Who wants to know when it is committed.
    ack: Option<oneshot::Sender<()>>,
}

/// Queue sizes and retention of the writer.
#[derive(Clone, Copy, Debug)]
pub struct JournalLimits {
    /// Queue slots (a run of events or an update each) before pumps wait
    /// (`runtime.journal_queue`).
    pub queue: usize,
    /// Events written per transaction at most (`runtime.journal_batch`).
    pub batch: usize,
    /// The writer's SQLite page cache in KiB (`runtime.journal_cache_kib`).
    pub cache_kib: u64,
}

/// Handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Entry>,
    retention: Arc<AtomicU64>,
}

impl Journal {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store, limits: JournalLimits, retention: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let retention = Arc::new(AtomicU64::new(retention.max(1)));
        let r = retention.clone();
        let batch = limits.batch.max(1);
        let cache_kib = limits.cache_kib;
        std::thread::Builder::new()
            .name("karta-journal".into())
            .spawn(move || writer(store, rx, batch, cache_kib, r))?;
        Ok(Self { tx, retention })
    }

    /// Changes the number of events kept per session (a reload).
    pub fn set_retention(&self, events: u64) {
        self.retention.store(events.max(1), Ordering::Relaxed);
    }

    async fn send(&self, entry: Entry) -> bool {
        if self.tx.send(entry).await.is_err() {
            tracing::error!("the event writer is gone; events are not logged for replay");
            return false;
        }
        true
    }

    /// Queues a run of events; waits only while the queue is full.
    pub async fn append(&self, rows: Vec<SessionEvent>) {
        if !rows.is_empty() {
            self.append_then(rows, Vec::new()).await;
        }
    }

    /// Queues a run of events and `ops`, written in the same transaction after them; waits only
    /// while the queue is full.
    pub(crate) async fn append_then(&self, rows: Vec<SessionEvent>, ops: Vec<SessionOp>) {
        if rows.is_empty() && ops.is_empty() {
            return;
        }
        self.send(Entry {
            rows,
            ops,
            ack: None,
        })
        .await;
    }

    /// Queues a run of events (and `ops`, written in the same transaction after them) and waits
    /// until it and everything queued before it is committed.
    pub(crate) async fn append_durable(&self, rows: Vec<SessionEvent>, ops: Vec<SessionOp>) {
        let (ack, done) = oneshot::channel();
        let entry = Entry {
            rows,
            ops,
            ack: Some(ack),
        };
        if self.send(entry).await {
            // An error means the writer dropped the ack without committing (logged there).
            let _ = done.await;
        }
    }

    /// Queues a session update; it is committed with the next batch.
    pub(crate) async fn update(&self, op: SessionOp) {
        self.append_then(Vec::new(), vec![op]).await;
    }
}

/// The writer's connection: its own, so its page cache stays warm (see
/// [`Store::own_connection`]); opened again after a failed batch, the pool's meanwhile.
struct WriterConn {
    store: Store,
    cache_kib: u64,
    own: Option<Conn>,
    /// PostgreSQL's connection for batches in one statement, planned once (see
    /// [`Store::own_generic_connection`]); the long way keeps `own`, whose statements are
    /// planned for their values.
    single: Option<Conn>,
    /// When to try opening `single` again after it failed to open.
    single_retry: Option<Instant>,
}

impl WriterConn {
    fn write(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.own.is_none() {
            match self.store.own_connection(self.cache_kib) {
                Ok(c) => self.own = c,
                Err(e) => tracing::warn!(error = %e, "the event writer uses pooled connections"),
            }
        }
        let result = match &mut self.own {
            Some(c) => self.store.write_on(c, f),
            None => self.store.write(f),
        };
        if result.is_err() {
            // It may be the connection that broke.
            self.own = None;
        }
        result
    }

    /// Runs `f` on the writer's PostgreSQL connection for single statements, outside a
    /// transaction (each statement commits on its own); `Ok(None)` without running it on
    /// SQLite or while that connection cannot be opened (the long way then uses `own`).
    fn single<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        if self.store.backend() != crate::store::Backend::Postgres {
            return Ok(None);
        }
        if self.single.is_none() {
            if self.single_retry.is_some_and(|at| Instant::now() < at) {
                return Ok(None);
            }
            match self.store.own_generic_connection() {
                Ok(c) => {
                    self.single = c;
                    self.single_retry = None;
                }
                Err(e) => {
                    // Not on every batch: a database at its connection limit would slow each.
                    self.single_retry = Some(Instant::now() + SINGLE_RETRY);
                    tracing::warn!(error = %e, "the event writer writes the long way for now");
                }
            }
        }
        let Some(c) = &mut self.single else {
            return Ok(None);
        };
        let result = f(c);
        if result.as_ref().is_err_and(may_be_broken) {
            self.single = None;
        }
        result
    }

    /// Prunes sessions' logs on `own`, each delete committing on its own: its statements are
    /// planned for their values (see [`log_batch`]). A prune missed is done by the next one.
    fn prune(&mut self, prunes: &[Prune]) {
        if prunes.is_empty() {
            return;
        }
        if self.own.is_none() {
            self.own = self.store.own_connection(self.cache_kib).ok().flatten();
        }
        let Some(c) = &mut self.own else {
            return;
        };
        for ((org, session), keep_from) in prunes {
            if let Err(e) = events::prune(c, org, session, *keep_from) {
                tracing::warn!(session = %session, error = %e, "the log was not pruned");
                if may_be_broken(&e) {
                    self.own = None;
                    return;
                }
            }
        }
    }
}

/// A session's log to prune: (org, session) and the number up to which rows go.
type Prune = ((String, String), i64);

/// How long the writer goes the long way after its one-statement connection failed to open.
const SINGLE_RETRY: Duration = Duration::from_secs(5);

/// Whether a statement's error may come from a broken connection (rather than from the data:
/// a key taken, a row missing).
fn may_be_broken(e: &StoreError) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error};
    !matches!(
        e,
        StoreError::Conflict(_)
            | StoreError::NotFound
            | StoreError::Query(Error::DatabaseError(
                K::UniqueViolation
                    | K::ForeignKeyViolation
                    | K::NotNullViolation
                    | K::CheckViolation
                    | K::SerializationFailure,
                _
            ))
    )
}

fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Entry>,
    batch: usize,
    cache_kib: u64,
    retention: Arc<AtomicU64>,
) {
    let mut conn = WriterConn {
        store,
        cache_kib,
        own: None,
        single: None,
        single_retry: None,
    };
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut events = count(&first);
        entries.push(first);
        while events < batch {
            match rx.try_recv() {
                Ok(e) => {
                    events += count(&e);
                    entries.push(e);
                }
                Err(_) => break,
            }
        }
        let keep = retention.load(Ordering::Relaxed);
        let result = match conn.single(|c| write_in_one(c, &entries, keep)) {
            Ok(Some(prunes)) => {
                crate::metrics::get().event_log_single_statement.inc();
                conn.prune(&prunes);
                Ok(())
            }
            Ok(None) => write_long(&mut conn, &entries, keep),
            Err(e) => {
                tracing::warn!(error = %e, "event batch failed in one statement; written the long way");
                write_long(&mut conn, &entries, keep)
            }
        };
        match result {
            Ok(()) => {
                crate::metrics::get().event_log_writes.inc_by(events as u64);
            }
            Err(e) => {
                crate::metrics::get().event_log_failures.inc();
                // Subscribers already have these events; only replay loses them.
                tracing::error!(events, error = %e, "events not logged for replay");
            }
        }
        for e in entries.drain(..) {
            if let Some(ack) = e.ack {
                let _ = ack.send(());
            }
        }
    }
}

/// Writes a batch in a transaction of a few statements.
fn write_long(conn: &mut WriterConn, entries: &[Entry], keep: u64) -> Result<(), StoreError> {
    // Entries run plainly (a savepoint each costs PostgreSQL two round trips); if the batch
    // fails, it runs again with each entry in a savepoint, so one bad entry cannot cost the
    // others.
    conn.write(|c| write_batch(c, entries, keep, false))
        .or_else(|e| {
            tracing::warn!(error = %e, "event batch failed; retrying with each update isolated");
            conn.write(|c| write_batch(c, entries, keep, true))
        })
}

/// Writes a batch. With `isolate`, every entry (a run of events with its updates) goes in a
/// savepoint of its own, so one that fails costs only itself.
fn write_batch(
    c: &mut Conn,
    entries: &[Entry],
    keep: u64,
    isolate: bool,
) -> Result<(), StoreError> {
    if isolate {
        for e in entries {
            if let Err(e) = c.transaction(|c| write_entries(c, std::slice::from_ref(e), keep)) {
                tracing::error!(error = %e, "an event run or session update was not saved");
            }
        }
        return Ok(());
    }
    write_entries(c, entries, keep)
}

/// Writes entries in a fixed number of statements however many turns they hold (besides the
/// rare other updates): the other updates in queue order; all the events; one write per session
/// (`last_seq`, participants, handoff, claim given back; the participants read under lock
/// first); the usage of their finished turns. No update reads the log or `last_seq`.
fn write_entries(c: &mut Conn, entries: &[Entry], keep: u64) -> Result<(), StoreError> {
    let rows: Vec<&SessionEvent> = entries.iter().flat_map(|e| e.rows.iter()).collect();
    let (mut openings, mut releases, mut usage) = (Vec::new(), Vec::new(), Vec::new());
    for op in entries.iter().flat_map(|e| e.ops.iter()) {
        match op {
            // The others first, in queue order: a lease renewal queued before its turn's `done`
            // must not find the claim already given back.
            SessionOp::Other(f) => f(c)?,
            SessionOp::Opening(o) => openings.push(o),
            SessionOp::Release {
                org_id,
                session_id,
                owner,
            } => releases.push(((org_id.clone(), session_id.clone()), owner)),
            SessionOp::Usage(u) => usage.push(&**u),
        }
    }
    // Sessions are locked (and openings' participants read) before the events go in: see
    // `sessions::lock_for_log`.
    let logged = sorted_keys(
        rows.iter()
            .map(|r| (r.org_id.as_str(), r.session_id.as_str())),
    );
    let keys = sorted_keys(
        openings
            .iter()
            .map(|o| (o.org_id.as_str(), o.session_id.as_str())),
    );
    let mut lists = sessions::lock_for_log(c, &logged, &keys)?;
    let mut writes: BTreeMap<(String, String), TurnWrite> = events::insert_batch(c, &rows, keep)?
        .into_iter()
        .map(|(k, high)| (k, TurnWrite::logged_to(high)))
        .collect();
    // In queue order: two turns of one session in a batch count twice.
    for o in openings {
        let key = (o.org_id.clone(), o.session_id.clone());
        let Some(list) = lists.get_mut(&key) else {
            tracing::warn!(session = %o.session_id, "a turn's session is gone; its opening is not saved");
            continue;
        };
        *list = super::sessions::count_participant_turn(list, &o.name, &o.kind, o.at);
        let w = writes.entry(key).or_default();
        w.participants = Some(list.clone());
        if let Some(agent) = &o.agent {
            w.current_agent = Some(agent.clone());
        }
    }
    for (key, owner) in releases {
        writes.entry(key).or_default().release = Some(owner.clone());
    }
    sessions::write_turns(c, &writes, crate::store::now())?;
    if !usage.is_empty() {
        super::meter::store_batch(c, &usage)?;
    }
    Ok(())
}

/// Writes a batch in one statement that commits on its own (PostgreSQL, see
/// [`log_batch`]) when it holds nothing but events, openings counted from the participants
/// their claims read, claims given back and usage that needs no threshold check or webhook
/// event; answers the prunes due (see [`events::Span::prune_to`]). `Ok(None)` when it holds
/// something else or the statement refused it: nothing is written then.
fn write_in_one(
    c: &mut Conn,
    entries: &[Entry],
    keep: u64,
) -> Result<Option<Vec<Prune>>, StoreError> {
    let AnyConnection::Postgresql(pg) = c else {
        return Ok(None);
    };
    let mut parts: BTreeMap<(String, String), SessionPart> = BTreeMap::new();
    let mut usage: Vec<&UsageRecord> = Vec::new();
    for op in entries.iter().flat_map(|e| e.ops.iter()) {
        match op {
            SessionOp::Other(_) => return Ok(None),
            SessionOp::Opening(o) => {
                let Some(prior) = &o.prior else {
                    return Ok(None);
                };
                let part = parts
                    .entry((o.org_id.clone(), o.session_id.clone()))
                    .or_default();
                if part.participants.is_some() {
                    // Two turns of one session: the long way counts both.
                    return Ok(None);
                }
                let new = super::sessions::count_participant_turn(prior, &o.name, &o.kind, o.at);
                part.participants = Some((prior.clone(), new));
                part.agent = o.agent.clone();
            }
            SessionOp::Release {
                org_id,
                session_id,
                owner,
            } => {
                parts
                    .entry((org_id.clone(), session_id.clone()))
                    .or_default()
                    .release = Some(owner.clone());
            }
            SessionOp::Usage(u) => match u.records_alone() {
                Some(records) => usage.extend(records),
                None => return Ok(None),
            },
        }
    }
    let rows: Vec<&SessionEvent> = entries.iter().flat_map(|e| e.rows.iter()).collect();
    // Numbers out of order: the long way finds the entry that holds them.
    let Ok(plan) = events::plan(&rows, keep) else {
        return Ok(None);
    };
    for (key, span) in plan.spans {
        parts.entry(key).or_default().span = Some(span);
    }
    // A statement whose reply is lost after it committed is written again the long way: its
    // events then fail the overlap check and are not stored twice, but an opening sent without
    // events (a harness slow to say anything) would count its turn twice, as after a lost reply
    // to the long way's COMMIT.
    if !log_batch::write(pg, &plan.runs, &parts, &usage, crate::store::now())? {
        tracing::debug!("an event batch was refused in one statement; written the long way");
        return Ok(None);
    }
    Ok(Some(
        parts
            .into_iter()
            .filter_map(|(key, part)| Some((key, part.span?.prune_to?)))
            .collect(),
    ))
}

/// (org, session) pairs, sorted, each once.
fn sorted_keys<'a>(keys: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
    let mut keys: Vec<_> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn count(e: &Entry) -> usize {
    e.rows.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlatformConfig, ProjectConfig, TenantConfig};
    use crate::store::{orgs, projects, testkit};

    fn event(org: &str, session: &str, seq: i64) -> SessionEvent {
        SessionEvent {
            session_id: session.into(),
            org_id: org.into(),
            seq,
            event_type: "text".into(),
            payload: format!(r#"{{"type":"text","seq":{seq}}}"#),
            created_at: crate::store::now(),
        }
    }

    fn opening(org: &str, session: &str, prior: &str) -> SessionOp {
        SessionOp::Opening(Opening {
            org_id: org.into(),
            session_id: session.into(),
            name: "ann".into(),
            kind: "human".into(),
            agent: None,
            at: crate::store::now(),
            prior: Some(prior.into()),
        })
    }

    /// (name, turns) of a session's participants.
    fn participants(store: &Store, org: &str, id: &str) -> Vec<(String, u64)> {
        let s = store.read(|c| sessions::get(c, org, id)).unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_str(&s.participants).unwrap();
        list.iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["turns"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// On PostgreSQL a turn's opening is counted from the participants its claim read; when
    /// they changed meanwhile, the batch is written the long way, counted into the stored list.
    /// Batches in one statement still prune the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_opening_counts_into_participants_that_changed_since_its_claim() {
        let Some(pg) = testkit::temp_pg_database() else {
            return; // Unreachable PostgreSQL fails under CI (see `temp_pg_database`).
        };
        let store = Store::open(&pg.url).unwrap();
        let app =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-echo");
        let cfg = PlatformConfig {
            tenants: vec![TenantConfig {
                slug: "acme".into(),
                name: "Acme".into(),
                ..Default::default()
            }],
            projects: vec![ProjectConfig {
                tenant: "acme".into(),
                slug: "bot".into(),
                path: app.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        crate::reconcile::apply(&store, &cfg, &crate::store::audit::Actor::system("test")).unwrap();
        let org = store
            .read(|c| orgs::get_enabled_by_slug(c, "acme"))
            .unwrap()
            .id;
        let prj = store
            .read(|c| projects::get_enabled(c, &org, "bot"))
            .unwrap()
            .id;
        let now = crate::store::now();
        let session = testkit::session_row(&org, &prj, &app.display().to_string());
        let id = session.id.clone();
        store.write(|c| sessions::insert(c, &session)).unwrap();
        let limits = JournalLimits {
            queue: 16,
            batch: 64,
            cache_kib: 1024,
        };
        let journal = Journal::start(store.clone(), limits, 1000).unwrap();

        // Someone joins after the turn's claim read "[]".
        let bob = r#"[{"name":"bob","type":"human","turns":0}]"#;
        let mut writes = BTreeMap::new();
        writes.insert(
            (org.clone(), id.clone()),
            TurnWrite {
                participants: Some(bob.into()),
                ..Default::default()
            },
        );
        store
            .write(|c| sessions::write_turns(c, &writes, now))
            .unwrap();
        let in_one = || crate::metrics::get().event_log_single_statement.get();
        let before = in_one();
        let rows = (1..=3).map(|q| event(&org, &id, q)).collect();
        journal
            .append_durable(rows, vec![opening(&org, &id, "[]")])
            .await;
        assert_eq!(in_one(), before, "refused in one statement");
        assert_eq!(
            participants(&store, &org, &id),
            [("bob".to_string(), 0), ("ann".to_string(), 1)]
        );
        let s = store.read(|c| sessions::get(c, &org, &id)).unwrap();
        assert_eq!(s.last_seq, 3);

        // The next turn's claim reads the stored list: counted in one statement.
        let prior = s.participants.clone();
        let rows = (4..=5).map(|q| event(&org, &id, q)).collect();
        journal
            .append_durable(rows, vec![opening(&org, &id, &prior)])
            .await;
        assert_eq!(
            participants(&store, &org, &id),
            [("bob".to_string(), 0), ("ann".to_string(), 2)]
        );
        assert_eq!(in_one(), before + 1);
        let logged: Vec<i64> = store
            .read(|c| events::list_after(c, &org, &id, 0, 100))
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(logged, [1, 2, 3, 4, 5]);

        // A batch that crosses 100 prunes the log to the retention after its statement: rows
        // wholly at or below 95 go; the row of 70..=105 holds the boundary and stays whole.
        journal.set_retention(10);
        let prior = store
            .read(|c| sessions::get(c, &org, &id))
            .unwrap()
            .participants;
        let rows = (6..=105).map(|q| event(&org, &id, q)).collect();
        journal
            .append_durable(rows, vec![opening(&org, &id, &prior)])
            .await;
        assert_eq!(in_one(), before + 2);
        let logged: Vec<i64> = store
            .read(|c| events::list_after(c, &org, &id, 0, 1000))
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(logged, (70..=105).collect::<Vec<_>>());
    }
}

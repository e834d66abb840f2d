//! The SQL store: the only place SQL lives. PostgreSQL or embedded SQLite behind one connection
//! type; migrations are embedded and applied on open. Tenant-scoped queries take an org id.

pub mod audit;
pub mod budgets;
mod cached;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod log_batch;
pub mod managed_events;
pub mod model_calls;
pub mod model_keys;
pub mod models;
pub mod org_events;
pub mod orgs;
pub mod projects;
pub mod releases;
pub mod responses;
pub mod schema;
pub mod sessions;
pub mod testkit;
pub mod usage;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, Timelike, Utc};
use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Executes a query on whichever backend `c` is, building it for that backend: diesel builds
/// multi-row inserts per backend only, not for the multi-backend connection.
macro_rules! execute_on_backend {
    ($c:expr, $q:expr) => {
        match $c {
            $crate::store::AnyConnection::Postgresql(pg) => $q.execute(pg),
            $crate::store::AnyConnection::Sqlite(lite) => $q.execute(lite),
        }
    };
}
pub(crate) use execute_on_backend;

/// One connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    /// PostgreSQL.
    Postgresql(PgConnection),
    /// Embedded SQLite.
    Sqlite(SqliteConnection),
}

/// What store functions take.
pub type Conn = AnyConnection;

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// No connection could be had.
    #[error("database connection failed: {0}")]
    Pool(String),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The row does not exist (or belongs to another org).
    #[error("not found")]
    NotFound,
    /// The change conflicts with existing data.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Internal marker: a read-only view rolled its transaction back.
    #[error("rolled back")]
    RolledBack,
    /// A blocking task failed to run.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

#[derive(Clone, Debug)]
enum Target {
    Postgres(String),
    /// PostgreSQL connections whose commits do not wait for the WAL flush (see
    /// [`Store::claim_async`]).
    PostgresRelaxed(String),
    Sqlite(String),
}

/// Opens connections to the configured backend (r2d2 manager).
pub struct Manager(Target);

// busy_timeout first: the pool opens its connections concurrently, and a connection that meets
// another's lock before it has a timeout fails (or retries slowly) instead of waiting.
// No automatic checkpoints: SQLite runs them inside whichever commit crosses the threshold, so
// a turn's `done` waited for a whole checkpoint after a large reload; a background thread
// checkpoints instead (`checkpoint_in_background`).
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
     PRAGMA journal_size_limit = 67108864;";

/// PostgreSQL connections kept for turn claims (see [`Store::claim_async`]): a claim is one
/// short statement, so a few serve many concurrent turns.
const CLAIM_CONNECTIONS: u32 = 4;

/// How often the background thread checkpoints an SQLite WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// How long the final checkpoint pass waits for readers on an older snapshot before it gives up
/// until the next round; Karta's writers wait meanwhile.
const CHECKPOINT_READER_WAIT_MS: u32 = 20;

/// WAL frames (pages) left after a lock-free pass that the final pass may copy while writers wait.
const CHECKPOINT_LOCKED_FRAMES: i64 = 512;

/// What `PRAGMA wal_checkpoint` answers.
#[derive(diesel::QueryableByName)]
struct CheckpointResult {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    checkpointed: i32,
}

fn checkpoint(conn: &mut SqliteConnection, mode: &str) -> Result<CheckpointResult, StoreError> {
    use diesel::RunQueryDsl;
    Ok(diesel::sql_query(format!("PRAGMA wal_checkpoint({mode})")).get_result(conn)?)
}

/// Checkpoints an SQLite WAL every [`CHECKPOINT_EVERY`], until the last clone of the store is
/// gone. Lock-free (PASSIVE) passes copy what the log holds without blocking anyone. SQLite
/// starts a log over only when a commit begins after a checkpoint copied all of it and no reader
/// still reads it; under a steady stream of commits and reads that rarely happens by itself, and
/// the log grew without bound (1–2 GB in a minute of the bench) with every commit extending the
/// file. So once a pass leaves little behind (none, or at most [`CHECKPOINT_LOCKED_FRAMES`],
/// 2 MiB of 4 KiB pages, as of the pass's start), a final pass (RESTART) copies the rest with
/// Karta's writers held off by `write_lock`, and the next commit writes the log from its start.
/// The writers wait for that copy, two fsyncs under `synchronous = NORMAL`, and the final pass's
/// waits for readers still in the log (each up to [`CHECKPOINT_READER_WAIT_MS`]; a few tens of
/// milliseconds at worst, then the restart is left to the next round).
fn checkpoint_in_background(
    path: &str,
    alive: std::sync::Weak<()>,
    write_lock: Arc<parking_lot::FairMutex<()>>,
) -> Result<(), StoreError> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| StoreError::Pool(format!("cannot open {path}: {e}")))?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {CHECKPOINT_READER_WAIT_MS};"
    ))?;
    std::thread::Builder::new()
        .name("karta-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if alive.upgrade().is_none() {
                return;
            }
            for _ in 0..3 {
                let left = match checkpoint(&mut conn, "PASSIVE") {
                    // Another process is checkpointing: its turn.
                    Ok(r) if r.busy != 0 || r.log < 0 => break,
                    // The log is empty: it started over already.
                    Ok(r) if r.log == 0 => break,
                    Ok(r) => i64::from(r.log) - i64::from(r.checkpointed),
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                        break;
                    }
                };
                if left > CHECKPOINT_LOCKED_FRAMES {
                    continue;
                }
                // Even `left == 0` does not mean the next commit starts the log over: the counts
                // are the log as the pass began (commits made meanwhile are not in them), and a
                // commit restarts the log only if it began after everything was copied and no
                // reader holds a snapshot in it. Taking that for granted let the log grow to
                // 1 GB in the bench. The final pass copies the rest and waits for the readers.
                let _writers_wait = write_lock.lock();
                match checkpoint(&mut conn, "RESTART") {
                    // A reader on an older snapshot: the log starts over another time.
                    Ok(r) if r.busy != 0 => tracing::debug!("WAL restart postponed by a reader"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
                break;
            }
        })
        .map_err(|e| StoreError::Pool(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}

/// Settings of the pool's PostgreSQL connections (the claims' connections and the log writer's
/// one-statement connection use [`PG_GENERIC`]). Statements are prepared once per connection (see
/// [`cached`]), but planned on every run: a prepared statement's generic plan is fixed on its
/// sixth run from the statistics of that moment, and for the replay log's insert, made while
/// the log was small, that was a hash join over the whole log, 14 ms a batch once it had grown
/// (the array-bound statements have no values to plan with). Planning one of them takes tens of
/// microseconds; parsing, which the cache saves, about as much. (The setting needs PostgreSQL
/// 12 or later.)
const PG_SESSION: &str = "SET plan_cache_mode = force_custom_plan";

/// The session setting of PostgreSQL connections that run only statements whose plans do not
/// depend on their values: key lookups and the replay log's one-statement batch (see
/// [`Store::own_generic_connection`]). Planning is paid once per statement and connection.
const PG_GENERIC: &str = "SET plan_cache_mode = force_generic_plan";

impl ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<AnyConnection, r2d2::Error> {
        match &self.0 {
            Target::Postgres(url) => {
                let mut c = PgConnection::establish(url).map_err(r2d2::Error::ConnectionError)?;
                c.batch_execute(PG_SESSION)
                    .map_err(r2d2::Error::QueryError)?;
                Ok(AnyConnection::Postgresql(c))
            }
            Target::PostgresRelaxed(url) => {
                let mut c = PgConnection::establish(url).map_err(r2d2::Error::ConnectionError)?;
                // Only the claim's key lookups run here (see `Store::claim_async`).
                c.batch_execute(PG_GENERIC)
                    .map_err(r2d2::Error::QueryError)?;
                c.batch_execute("SET synchronous_commit = off")
                    .map_err(r2d2::Error::QueryError)?;
                Ok(AnyConnection::Postgresql(c))
            }
            Target::Sqlite(path) => {
                let mut c =
                    SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                c.batch_execute(SQLITE_PRAGMAS)
                    .map_err(r2d2::Error::QueryError)?;
                Ok(AnyConnection::Sqlite(c))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        false
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    /// PostgreSQL only: a few connections whose commits skip the WAL flush, for turn claims.
    claims: Option<Pool<Manager>>,
    backend: Backend,
    // SQLite allows one writer; serialising our own write transactions avoids SQLITE_BUSY on
    // lock upgrades inside this process (other processes wait on busy_timeout).
    // Fair (first come, first served): with an unfair lock a large reload re-took it between its
    // batches before the waiting event writer woke, and turns stalled for the whole reload.
    write_lock: Arc<parking_lot::FairMutex<()>>,
    // Keeps the SQLite checkpoint thread going while any clone of the store lives.
    _alive: Arc<()>,
    /// Where a connection of its own opens (see [`Store::own_connection`]); none for an
    /// in-memory database, where every connection is a database of its own.
    target: Option<Arc<Target>>,
}

/// A pooled connection.
pub type Pooled = PooledConnection<Manager>;

impl Store {
    /// Connections open and, of them, idle (for metrics).
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    /// Opens (creating the SQLite file and its folder when needed) and migrates the database.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// Runs `f` against the database as it would be after migrations, then rolls everything back:
    /// nothing is written (a missing SQLite file is not even created).
    pub fn with_read_only_view<T>(
        url: &str,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(path) = sqlite_path(url) {
            if path != ":memory:" && !Path::new(path).exists() {
                let store = Self::open(":memory:")?;
                return store.read(f);
            }
        }
        let store = Self::connect(url)?;
        let mut conn = store.conn()?;
        let c: &mut Conn = &mut conn;
        let mut out = None;
        let r = c.transaction::<(), StoreError, _>(|c| {
            run_migrations(c)?;
            out = Some(f(c)?);
            Err(StoreError::RolledBack)
        });
        match (r, out) {
            (Err(StoreError::RolledBack), Some(v)) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(()), _) => Err(StoreError::Task(
                "read-only view was not rolled back".into(),
            )),
        }
    }

    fn connect(url: &str) -> Result<Self, StoreError> {
        let (target, backend, size) = if let Some(path) = sqlite_path(url) {
            if let Some(dir) = Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Pool(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
            // Every connection to `:memory:` is its own database: keep exactly one.
            let size = if path == ":memory:" { 1 } else { 4 };
            if path != ":memory:" {
                // Switch a new file to WAL once, alone, before the pool opens connections.
                let mut first = SqliteConnection::establish(path)
                    .map_err(|e| StoreError::Pool(format!("cannot open {path}: {e}")))?;
                first
                    .batch_execute(SQLITE_PRAGMAS)
                    .map_err(|e| StoreError::Pool(format!("cannot configure {path}: {e}")))?;
            }
            (Target::Sqlite(path.to_string()), Backend::Sqlite, size)
        } else {
            (Target::Postgres(url.to_string()), Backend::Postgres, 8)
        };
        let claims = match &target {
            Target::Postgres(url) => Some(
                Pool::builder()
                    .max_size(CLAIM_CONNECTIONS)
                    .min_idle(Some(0))
                    .test_on_check_out(false)
                    .connection_timeout(Duration::from_secs(10))
                    .build_unchecked(Manager(Target::PostgresRelaxed(url.clone()))),
            ),
            _ => None,
        };
        let pool = Pool::builder()
            .max_size(size)
            // A broken connection shows up as a query error; testing each checkout with a
            // `SELECT 1` cost a round trip per query.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(10))
            .build(Manager(target.clone()))
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let alive = Arc::new(());
        let write_lock = Arc::new(parking_lot::FairMutex::new(()));
        if let Some(path) = sqlite_path(url).filter(|p| *p != ":memory:") {
            checkpoint_in_background(path, Arc::downgrade(&alive), write_lock.clone())?;
        }
        let own = match &target {
            Target::Sqlite(p) if p == ":memory:" => None,
            t => Some(Arc::new(t.clone())),
        };
        Ok(Self {
            pool,
            claims,
            backend,
            write_lock,
            _alive: alive,
            target: own,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let _guard = self.write_guard();
        let mut conn = self.conn()?;
        run_migrations(&mut conn)
    }

    /// A connection from the pool (blocking).
    pub fn conn(&self) -> Result<Pooled, StoreError> {
        self.pool.get().map_err(|e| StoreError::Pool(e.to_string()))
    }

    fn write_guard(&self) -> Option<parking_lot::FairMutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock()),
            Backend::Postgres => None,
        }
    }

    /// Runs `f` in one write transaction (blocking).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.write_guard();
        write_transaction(&mut *self.conn()?, f)
    }

    /// A connection outside the pool for a writer that keeps it for the life of the process
    /// (the replay log's). On SQLite it gets a page cache of `cache_kib` KiB that stays warm:
    /// SQLite empties a connection's cache whenever another connection wrote since its last
    /// transaction, so a writer taking pooled connections in turn read every page it needed
    /// from the file again. `None` for an in-memory database (one connection only).
    pub fn own_connection(&self, cache_kib: u64) -> Result<Option<Conn>, StoreError> {
        let Some(target) = &self.target else {
            return Ok(None);
        };
        let mut c = Manager((**target).clone())
            .connect()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        if let AnyConnection::Sqlite(lite) = &mut c {
            lite.batch_execute(&format!("PRAGMA cache_size = -{}", cache_kib.max(1)))?;
        }
        Ok(Some(c))
    }

    /// A PostgreSQL connection outside the pool that plans every prepared statement once, for
    /// values it does not know yet (`plan_cache_mode = force_generic_plan`): for statements
    /// whose best plan does not depend on their values, planning a large statement anew on every
    /// run (as the pool's connections do) costs more than running it. PostgreSQL plans again
    /// when a table's statistics change (`ANALYZE`). `None` on SQLite.
    pub fn own_generic_connection(&self) -> Result<Option<Conn>, StoreError> {
        let Some(Target::Postgres(url)) = self.target.as_deref() else {
            return Ok(None);
        };
        let mut c = PgConnection::establish(url).map_err(|e| StoreError::Pool(e.to_string()))?;
        c.batch_execute(PG_GENERIC)?;
        Ok(Some(AnyConnection::Postgresql(c)))
    }

    /// [`Store::write`] on a connection of the caller's (see [`Store::own_connection`]).
    pub fn write_on<T>(
        &self,
        c: &mut Conn,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.write_guard();
        write_transaction(c, f)
    }

    /// Runs a read `f` (blocking).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        f(&mut conn)
    }

    /// Runs a write transaction on the blocking pool, off the async workers.
    pub async fn write_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` (its statements commit one by one) on a connection whose commits do not wait
    /// for PostgreSQL's WAL flush, on the blocking pool. For a turn's claim on its session
    /// only: what a database crash (or a failover) can lose is a claim made in the last moments
    /// before it (PostgreSQL flushes within three times `wal_writer_delay`), which leaves that
    /// session unclaimed while its turn runs: a second instance could start a turn on it in
    /// that window. That narrow case is the price of not waiting for a flush on the way to every
    /// turn. On SQLite it is [`Store::write_async`]. Its connections plan each statement once
    /// (see [`Store::own_generic_connection`]): run only key lookups here.
    pub async fn claim_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(claims) = self.claims.clone() else {
            return self.write_async(f).await;
        };
        tokio::task::spawn_blocking(move || {
            let mut conn = claims.get().map_err(|e| StoreError::Pool(e.to_string()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs a read that takes microseconds (a row or two by key). On SQLite, when a pooled
    /// connection is free at once, it runs on the caller's thread: handing it to the blocking
    /// pool and back cost two thread wake-ups, more than the read itself. Otherwise (and on
    /// PostgreSQL, where a read waits for the network) it runs on the blocking pool.
    pub async fn read_quick<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.backend == Backend::Sqlite {
            if let Some(mut conn) = self.pool.try_get() {
                return f(&mut conn);
            }
        }
        self.read_async(f).await
    }

    /// Runs a read on the blocking pool, off the async workers.
    pub async fn read_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// `f` in one write transaction on `c` (the caller holds the store's write lock).
fn write_transaction<T>(
    c: &mut Conn,
    f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match c {
        AnyConnection::Sqlite(_) => immediate_transaction(c, f),
        AnyConnection::Postgresql(_) => c.transaction(f),
    }
}

/// An SQLite write transaction that takes the write lock when it begins (`BEGIN IMMEDIATE`):
/// a deferred one that read first and then wanted to write failed with SQLITE_BUSY at once when
/// another process (the CLI beside the server) had written meanwhile, instead of waiting.
fn immediate_transaction<T>(
    c: &mut Conn,
    f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    if let AnyConnection::Sqlite(lite) = &mut *c {
        AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN IMMEDIATE")?;
    }
    // Nested transactions inside `f` become savepoints: the multi-backend connection keeps the
    // SQLite connection's transaction state. A panic in `f` rolls back before it goes on, or
    // the pooled connection would keep the write lock.
    let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *c))) {
        Ok(out) => out,
        Err(panic) => {
            if let AnyConnection::Sqlite(lite) = &mut *c {
                let _ = AnsiTransactionManager::rollback_transaction(lite);
            }
            std::panic::resume_unwind(panic);
        }
    };
    let AnyConnection::Sqlite(lite) = c else {
        return out;
    };
    match out {
        Ok(v) => {
            AnsiTransactionManager::commit_transaction(lite)?;
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = AnsiTransactionManager::rollback_transaction(lite) {
                tracing::error!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

fn sqlite_path(url: &str) -> Option<&str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        None
    } else {
        Some(url.strip_prefix("sqlite://").unwrap_or(url))
    }
}

/// Whether the database lacks a migration this build knows (a readiness check).
pub fn migrations_pending(conn: &mut Conn) -> Result<bool, StoreError> {
    let r = match conn {
        AnyConnection::Postgresql(c) => c.has_pending_migration(PG_MIGRATIONS),
        AnyConnection::Sqlite(c) => c.has_pending_migration(SQLITE_MIGRATIONS),
    };
    r.map_err(|e| StoreError::Migration(e.to_string()))
}

fn run_migrations(conn: &mut Conn) -> Result<(), StoreError> {
    let r = match conn {
        AnyConnection::Postgresql(c) => c.run_pending_migrations(PG_MIGRATIONS).map(|_| ()),
        AnyConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()),
    };
    r.map_err(|e| StoreError::Migration(e.to_string()))
}

/// The current time as stored: UTC, microsecond precision (what PostgreSQL keeps).
pub fn now() -> NaiveDateTime {
    let t = Utc::now().naive_utc();
    t.with_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// A new id: `prefix_` followed by 22 base62 characters (about 131 bits of randomness).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_base62(22))
}

/// The base62 digits in ascending byte order (so fixed-width base62 numbers sort as numbers).
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new id that sorts byte-wise by creation time (to the millisecond, like a ULID): `prefix_`, 8 base62
/// characters of the Unix time in milliseconds, 14 random ones (about 83 bits). For rows written
/// at a high rate: their primary-key index grows at its end instead of at a random page per row
/// (on SQLite every such page is one more page in the commit's log).
pub fn new_sorted_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}{}",
        sortable_millis(Utc::now().naive_utc()),
        random_base62(14)
    )
}

/// `at` to the millisecond as 8 base62 characters that sort byte-wise by time (the front of
/// [`new_sorted_id`]).
pub fn sortable_millis(at: NaiveDateTime) -> String {
    let mut ms = u64::try_from(at.and_utc().timestamp_millis()).unwrap_or(0);
    let mut time = [b'0'; 8];
    for c in time.iter_mut().rev() {
        *c = BASE62[(ms % 62) as usize];
        ms /= 62;
    }
    String::from_utf8_lossy(&time).into_owned()
}

/// Random base62 text from the OS-seeded CSPRNG.
pub fn random_base62(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
}

/// Turns "no row" into [`StoreError::NotFound`].
pub(crate) trait OptionalRow<T> {
    fn found(self) -> Result<T, StoreError>;
}

impl<T> OptionalRow<T> for Result<T, diesel::result::Error> {
    fn found(self) -> Result<T, StoreError> {
        match self {
            Ok(v) => Ok(v),
            Err(diesel::result::Error::NotFound) => Err(StoreError::NotFound),
            Err(e) => Err(StoreError::Query(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_ids_sort_by_creation_time_and_look_like_other_ids() {
        let first = new_sorted_id("use");
        std::thread::sleep(Duration::from_millis(2));
        let second = new_sorted_id("use");
        assert!(first < second, "{first} sorts after {second}");
        for id in [&first, &second] {
            let suffix = id.strip_prefix("use_").expect("prefix");
            assert_eq!(suffix.len(), new_id("x").len() - 2, "{id}");
            assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        // Same millisecond: the random part keeps them apart.
        assert_ne!(new_sorted_id("use"), new_sorted_id("use"));
    }
}
